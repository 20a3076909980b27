"""The training harness shared by every learner: data, seeding, loop, evaluation, measurement,
logging and checkpoints. Methods differ only inside ``learner.train_batch``.

Outputs of a run with ``out`` set (docs/design.md, "Outputs of a run"):
    config.json      the TrainConfig
    metrics.jsonl    one line per evaluation (always written)
    summary.json     the final figures (keys listed in SUMMARY_KEYS)
    checkpoint.pt    learner state + loop state after the last good epoch (written atomically)
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import METHOD_DEFAULTS, RESUMABLE_CHANGES, TrainConfig  # noqa: F401 - re-exported
from .distributed import setup as setup_distributed
from .environment import environment
from .names import LR_SCHEDULES  # noqa: F401 - re-exported
from .errors import ConfigError, NonFiniteLossError
from .io import append_jsonl, atomic_torch_save, atomic_write_json
from .learner import cosine_lr_factor
from .losses import accuracy_per_step
from .measure import count_flops, peak_rss_bytes, timer, train_batch_memory
from .models import make_model
from . import run_files
from .errors import IncompatibleError
from .learner import build_options
from .models import check_model_options
from .registry import incompatibility, learner_class, make_learner

SUMMARY_KEYS = (
    "task", "model", "method", "seed", "epochs", "loss_at", "val_accuracy", "test_accuracy",
    "test_accuracy_at_best_val", "train_seconds", "time_per_step_ms", "training_memory_bytes",
    "cuda_peak_bytes", "peak_rss_bytes", "params", "learner_params", "flops_per_step", "device",
    "threads", "torch_version",
)


def seed_everything(seed: int) -> torch.Generator:
    """The one place where randomness is seeded; returns the generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def iterate_batches(dataset, batch_size: int, generator: torch.Generator | None = None,
                    limit: int = 0):
    """Batches of a TensorDataset by slicing its tensors (shuffled when a generator is given)."""
    x, y = dataset.tensors
    n = x.shape[0]
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    count = math.ceil(n / batch_size)
    if limit:
        count = min(count, limit)
    for i in range(count):
        idx = order[i * batch_size:(i + 1) * batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(learner, dataset, batch_size: int, device: torch.device) -> dict:
    """Accuracy at the final step (sequence labels) or over labelled steps (per-step labels),
    and the anytime curve: accuracy of each step's prediction."""
    correct_steps = total_steps = None
    final_correct = final_total = 0
    per_step_labels = dataset.tensors[1].dim() == 2
    for x, y in iterate_batches(dataset, batch_size):
        x, y = x.to(device), y.to(device)
        logits = learner.predict(x)
        c, n = accuracy_per_step(logits, y)
        correct_steps = c if correct_steps is None else correct_steps + c
        total_steps = n if total_steps is None else total_steps + n
        if not per_step_labels:
            final_correct += (logits[:, -1].argmax(-1) == y).sum().item()
            final_total += y.shape[0]
    if per_step_labels:
        final_correct, final_total = correct_steps.sum().item(), total_steps.sum().item()
    anytime = (correct_steps.double() / total_steps.clamp_min(1)).tolist()
    return {"accuracy": final_correct / max(final_total, 1), "anytime": anytime}


@torch.no_grad()
def spike_rate(model, x: torch.Tensor) -> float | None:
    """Mean firing rate of all spiking layers on ``x`` (None for non-spiking models)."""
    if model.name != "lif":
        return None
    state = model.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
    total, count = 0.0, 0
    for t in range(x.shape[1]):
        h = model.frame(x[:, t])
        new_state = []
        for cell, s in zip(model.cells, state):
            h, s = cell(h, s)
            new_state.append(s)
            total += h.sum().item()
            count += h.numel()
        state = tuple(new_state)
    return total / max(count, 1)


class _WandbLogger:
    """wandb as a plug-in: imported only when asked, never required."""

    def __init__(self, cfg: TrainConfig):
        import wandb  # lazy on purpose: wandb is slow to import and off by default
        self._wandb = wandb
        self.run = wandb.init(project=cfg.wandb_project, group=cfg.wandb_group, mode=cfg.wandb,
                              config=dataclasses.asdict(cfg), dir=cfg.out,
                              reinit="finish_previous")  # a bool here is deprecated (wandb 0.19+)

    def log(self, record: dict) -> None:
        self.run.log({k: v for k, v in record.items() if isinstance(v, (int, float))})

    def finish(self, summary: dict) -> None:
        self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float))})
        self.run.finish()


def run_training(cfg: TrainConfig, on_epoch_end=None, on_record=None) -> dict:
    """Train one (task, model, method, seed) and return the summary dict.

    ``on_epoch_end(epoch, learner, task)``, if given, is called once before training on a fresh
    start (epoch 0) and after each epoch's evaluation, before its checkpoint (``tsp compare``
    measures gradient alignment there); it must leave the learner and the RNG as it found them.
    ``on_record(record, loop)``, if given, receives each epoch's metrics line and the loop state
    (best validation so far) on the writing rank (``tsp train`` prints a line per epoch).
    """
    from tasks import get_task  # the harness is the only consumer of the tasks package
    from tasks.registry import check_task_spec

    cfg = cfg.resolved()  # config.json and the summary record the values actually used
    cfg, world = setup_distributed(cfg)  # under torchrun; ranks > 0 get no --out, wandb, bars
    # Everything that can be refused is refused before any data is built or file written.
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    reason = incompatibility(cfg.method, cfg.model)
    if reason:
        raise IncompatibleError(f"{cfg.method} cannot train {cfg.model}: {reason}")
    check_task_spec(cfg.task)
    build_options(learner_class(cfg.method), cfg.options)
    model_options = check_model_options(cfg.model, cfg.model_options)
    out = Path(cfg.out) if cfg.out else None
    checkpoint_path = out / "checkpoint.pt" if out else None
    resuming = out is not None and run_files.claim_folder(
        out, dataclasses.asdict(cfg), resume=cfg.resume, overwrite=cfg.overwrite,
        echo=lambda line: print(line, file=sys.stderr))
    checkpoint = run_files.load_checkpoint(checkpoint_path, map_location=cfg.device) \
        if resuming else None

    device = torch.device(cfg.device)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    data_generator = seed_everything(cfg.seed)

    task = get_task(cfg.task, data_dir=cfg.data_dir, download=cfg.download, seed=cfg.seed,
                    cache=cfg.cache, cache_dir=cfg.cache_dir)
    _check_task_data(task, cfg.task)
    model = make_model(cfg.model, task.input_shape, cfg.hidden, cfg.layers, task.num_classes,
                       **model_options).to(device)
    learner = make_learner(cfg.method, model, cfg.learner_config(), **cfg.options)
    execution = "eager"
    if device.type == "cuda":  # sigprop's CUDA-graph chunks unless --eager (fast.py)
        from .fast import fast_path
        learner, execution = fast_path(learner, device, eager=cfg.eager)
    learner = world.attach(learner, task.train, cfg)  # data/layer parallel (distributed.py)
    steps = task.input_shape[0]

    loop = {"epoch": 0, "global_step": 0, "best_val": -1.0, "best_epoch": -1,
            "test_at_best_val": None, "timed_seconds": 0.0, "timed_batches": 0,
            "saved_tensor_peak": None, "learner_state_bytes": None, "flops_per_step": None,
            "last_val": None, "last_test": None, "anytime": None}
    if out:
        if checkpoint is not None:
            _check_resumable(checkpoint, cfg, learner, checkpoint_path)
            run_files.restore(learner, checkpoint, data_generator, checkpoint_path)
            loop = checkpoint["loop"]
            # a kill between an epoch's metrics line and its checkpoint leaves a line that
            # the resumed run will write again: keep only the checkpoint's epochs
            run_files.truncate_metrics(out / "metrics.jsonl", loop["epoch"])
        else:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        with run_files.writing(out / "config.json"):
            atomic_write_json(out / "config.json", dataclasses.asdict(cfg))
    loop = world.start(learner, loop, data_generator)  # every rank from rank 0's state
    loop["execution"] = execution
    logger = _WandbLogger(cfg) if cfg.wandb else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    if on_epoch_end is not None and loop["epoch"] == 0:
        on_epoch_end(0, learner, task)
    batches_per_epoch = math.ceil(len(task.train) / cfg.batch_size)
    if cfg.max_batches:
        batches_per_epoch = min(batches_per_epoch, cfg.max_batches)
    total_batches = batches_per_epoch * cfg.epochs
    for epoch in range(loop["epoch"] + 1, cfg.epochs + 1):
        batches = iterate_batches(task.train, cfg.batch_size, data_generator, cfg.max_batches)
        bar = tqdm(batches, total=batches_per_epoch,
                   desc=f"{cfg.method} epoch {epoch}/{cfg.epochs}",
                   disable=None if cfg.progress else True, leave=False)
        losses = []
        for x, y in bar:
            x, y = world.shard(x, y)  # this rank's rows of the global batch
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if cfg.lr_schedule == "cosine":
                # Per batch, from the global step, so a resumed run continues the same curve.
                learner.set_lr_factor(cosine_lr_factor(loop["global_step"], total_batches))
            overflow = None
            try:
                if loop["saved_tensor_peak"] is None:
                    # First batch: measure peak live saved tensors (hooks slow it: not timed).
                    saved, own, stats = train_batch_memory(learner, x, y)
                    loop["saved_tensor_peak"], loop["learner_state_bytes"] = saved, own
                elif loop["flops_per_step"] is None:
                    flops, stats = count_flops(learner.train_batch, x, y)
                    loop["flops_per_step"] = flops / steps
                else:
                    with timer(device) as elapsed:
                        stats = learner.train_batch(x, y)
                    loop["timed_seconds"] += elapsed["seconds"]
                    loop["timed_batches"] += 1
            except RuntimeError as err:
                # torch refuses an optimizer scalar beyond float32 (e.g. Adam's step size
                # lr / bias correction at --lr 1e300): the update diverged before it was made
                if "without overflow" not in str(err):
                    raise
                overflow = f"an update beyond float32's range ({err}; is --lr far too large?)"
            loop["global_step"] += 1
            if overflow:
                loss, problem = math.nan, overflow
            else:
                loss = world.batch_loss(stats["loss"])  # the global batch's, same on every rank
                # A finite loss can still come with a non-finite gradient, which the update
                # writes into the weights: check the parameters too (one reduction, one sync).
                problem = (f"non-finite loss ({loss})" if not math.isfinite(loss)
                           else _non_finite_parameters(learner))
            if problem:
                message = (f"{problem} at epoch {epoch}, step {loop['global_step']}"
                           f" of {cfg.method} on {cfg.task}")
                if checkpoint_path and checkpoint_path.exists():
                    message += f"; the last good checkpoint is {checkpoint_path}"
                if out:
                    atomic_write_json(out / "summary.json", {
                        **_summary(cfg, task, model, learner, loop, device, steps),
                        "status": "diverged", "error": message})
                raise NonFiniteLossError(message, loop["global_step"])
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.3f}")

        world.end_epoch(learner)  # replicas agree (local SGD: averaged) before eval/checkpoint
        val = world.evaluate(learner, task.val, cfg.eval_batch_size, device)
        test = world.evaluate(learner, task.test, cfg.eval_batch_size, device)
        loop.update(epoch=epoch, last_val=val["accuracy"], last_test=test["accuracy"],
                    anytime=test["anytime"])
        if val["accuracy"] > loop["best_val"]:  # model selection on validation only
            loop.update(best_val=val["accuracy"], best_epoch=epoch,
                        test_at_best_val=test["accuracy"])
        record = {"epoch": epoch, "step": loop["global_step"],
                  "train_loss": float(np.mean(losses)) if losses else None,
                  "val_accuracy": val["accuracy"], "test_accuracy": test["accuracy"],
                  "lr": _current_lr(learner), "train_seconds": loop["timed_seconds"],
                  "peak_rss_bytes": peak_rss_bytes(),
                  **_cuda_memory(device)}
        if on_record is not None and world.is_writer:
            on_record(record, loop)
        if on_epoch_end is not None:
            on_epoch_end(epoch, learner, task)
        if out:
            problem = _non_finite_parameters(learner, optimizer_state=True)
            if problem:  # never let a bad state overwrite the last good checkpoint
                raise NonFiniteLossError(
                    f"{problem} after epoch {epoch} of {cfg.method} on {cfg.task}; the last good "
                    f"checkpoint is {checkpoint_path}", loop["global_step"])
            with run_files.writing(out / "metrics.jsonl"):
                append_jsonl(out / "metrics.jsonl", record)
            with run_files.writing(checkpoint_path):
                atomic_torch_save(checkpoint_path, {
                    "learner": learner.state_dict(), "loop": loop,
                    "data_generator": data_generator.get_state(),
                    "torch_rng": torch.get_rng_state(), "config": dataclasses.asdict(cfg),
                    # every option value, defaults included: a default that changes between
                    # versions must not slip into a resumed run unnoticed
                    "learner_options": dataclasses.asdict(learner.options)})
        if logger:
            logger.log(record)

    summary = _summary(cfg, task, model, learner, loop, device, steps)
    summary.update(world.describe())  # ranks and communication, under torchrun only
    world.close()
    if out:
        with run_files.writing(out / "summary.json"):
            atomic_write_json(out / "summary.json", summary)
    if logger:
        logger.finish(summary)
    return summary


def _check_task_data(task, spec: str) -> None:
    """Refuse data no run can use, before training starts (exit 2, not a traceback or a NaN):
    an empty split (evaluation and model selection need samples; e.g. val_fraction=0) and
    non-finite inputs (e.g. a generator option such as noise=1e308, beyond float32)."""
    from tasks import DataError

    for split in ("train", "val", "test"):
        x = getattr(task, split).tensors[0]
        if x.shape[0] == 0:
            raise DataError(f"task {spec!r}: its {split} split is empty (a run needs samples in "
                            "train, val and test; e.g. give val_fraction > 0)")
        if x.is_floating_point():
            # in blocks of rows: a whole-split mask would cost a quarter of the data's memory
            bad = sum(int((~torch.isfinite(x[i:i + 4096])).sum()) for i in range(0, len(x), 4096))
            if bad:
                raise DataError(f"task {spec!r}: its {split} inputs hold {bad} NaN/inf value(s) "
                                "(beyond float32's range); check the task's options (e.g. noise)")


def _check_resumable(checkpoint: dict, cfg: TrainConfig, learner, path: Path) -> None:
    """Refuse to resume ``path`` under settings other than those it was trained with: the run's
    config, and the method's options with their defaults (which a newer version may change)."""
    saved, asked = checkpoint.get("config", {}), dataclasses.asdict(cfg)
    saved_options = checkpoint.get("learner_options") or {}
    options = dataclasses.asdict(learner.options)
    # the option values in effect decide, not how they were spelt (unset or given)
    may_change = RESUMABLE_CHANGES + (("options",) if saved_options else ())
    changed = [f"{name}={saved[name]!r} (asked: {asked[name]!r})" for name in asked
               if name not in may_change and name in saved and saved[name] != asked[name]]
    changed += [f"{cfg.method} option {name}={saved_options[name]!r} (now: {options[name]!r})"
                for name in options
                if name in saved_options and saved_options[name] != options[name]]
    if changed:
        raise ConfigError(
            f"cannot resume {path}: it was trained with {', '.join(changed)}. Resume with the "
            "same settings (only --epochs, --device, --threads, --eval-batch-size and output "
            "options may change), or start a fresh run in another --out")


def _non_finite_parameters(learner, optimizer_state: bool = False) -> str | None:
    """What is non-finite among the learner's parameters (and optimizer state), or None."""
    named = [*learner.model.named_parameters(),
             *((f"learner.{i}", p) for i, p in enumerate(learner.own_parameters()))]
    tensors = [p.detach() for _, p in named]
    if optimizer_state:
        for opt_name, opt in learner.optimizers().items():
            for state in opt.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and value.is_floating_point():
                        named.append((f"{opt_name} optimizer {key}", value))
                        tensors.append(value)
    if not tensors:
        return None
    if torch.nn.utils.get_total_norm(tensors, foreach=True).isfinite():
        return None
    for name, tensor in named:  # only on failure: find which one, for the message
        if not torch.isfinite(tensor).all():
            return f"non-finite values in {name}"
    return "non-finite parameters"


def _current_lr(learner) -> float | None:
    """The learning rate of the learner's first optimizer group (all share the schedule)."""
    for opt in learner.optimizers().values():
        return float(opt.param_groups[0]["lr"])
    return None


def _cuda_memory(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return {"cuda_peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
            "cuda_peak_reserved_bytes": torch.cuda.max_memory_reserved(device)}


def _summary(cfg, task, model, learner, loop, device, steps) -> dict:
    env = environment(device, torch.get_num_threads())
    timed = loop["timed_batches"]
    per_batch = loop["timed_seconds"] / timed if timed else None
    saved, own = loop["saved_tensor_peak"], loop["learner_state_bytes"]
    val_x = task.val.tensors[0][: cfg.eval_batch_size].to(device)
    return {
        "task": cfg.task, "model": cfg.model, "method": cfg.method, "seed": cfg.seed,
        "epochs": loop["epoch"], "loss_at": cfg.loss_at,
        "val_accuracy": loop["best_val"] if loop["best_epoch"] > 0 else None,
        "test_accuracy": loop["last_test"],
        "test_accuracy_at_best_val": loop["test_at_best_val"],
        "train_seconds": loop["timed_seconds"],
        "time_per_step_ms": 1000 * per_batch / steps if per_batch is not None else None,
        "training_memory_bytes": (saved + own) if saved is not None else None,
        "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_rss_bytes": peak_rss_bytes(),
        "params": sum(p.numel() for p in model.parameters()),
        "learner_params": sum(p.numel() for p in learner.own_parameters()),
        "flops_per_step": loop["flops_per_step"],
        "device": env["device"], "threads": env["threads"], "torch_version": env["torch_version"],
        # beyond the required keys
        "status": "ok", "best_epoch": loop["best_epoch"], "steps": steps,
        "label_kind": task.label_kind, "kind": task.kind, "num_classes": task.num_classes,
        "hidden": cfg.hidden, "layers": cfg.layers, "batch_size": cfg.batch_size, "lr": cfg.lr,
        "lr_schedule": cfg.lr_schedule, "weight_decay": cfg.weight_decay,
        "options": cfg.options, "saved_tensor_peak_bytes": saved, "learner_state_bytes": own,
        "last_val_accuracy": loop["last_val"], "anytime_test_accuracy": loop["anytime"],
        "spike_rate": spike_rate(model, val_x),
        "device_name": env["device_name"], "torchaudio_version": env["torchaudio_version"],
        "cpu_count": env["cpu_count"], "execution": loop.get("execution", "eager"),
    }


def load_summary(path) -> dict:
    return json.loads(Path(path).read_text())
