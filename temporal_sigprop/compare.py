"""``tsp compare``: one honest comparison of learning rules — a matrix of runs and a report.

    tsp compare                       # the 'quick' preset: offline tasks, ≤ 20 min on 2 CPU cores
    tsp compare --preset full --device cuda --out runs/full
    tsp compare --preset my_preset.json --wandb offline

A preset (JSON; ``presets/{smoke,quick,full}.json`` ship with the package) names tasks × models ×
methods × seeds and the shared training settings. Every cell of the matrix is run through the same
harness (``run_training``), each run in its own folder. Fair by construction:

- **One loss placement** for every method of a task (``loss_at`` is a shared setting; a method
  cannot override it).
- **The same learning-rate budget for every method**: each method gets a list of candidate
  learning rates, all lists of the same length (methods may differ in *where* the candidates are,
  e.g. a method known to want smaller steps, never in *how many*). Each candidate trains with the
  first seed; the one with the best validation accuracy (ties: lower final training loss) is
  chosen, then the other seeds train at it. The first seed's search run at the chosen rate *is*
  that seed's run (same configuration, so it is not run twice). Test accuracy is reported at the
  epoch of best validation accuracy; the test split never selects anything.
- Pairs that cannot run are kept: the registry's compatibility table or a learner refusing the
  size at construction gives "n/a — why"; a preset may also skip a pair, with its reason, shown
  the same way. A run whose loss becomes NaN/inf is "diverged at step N".

Resumable: a run's folder is named by a hash of its full configuration; a finished run is read
back instead of trained, and an interrupted one continues from its checkpoint
(``run_training(resume=True)``). So a compare that was stopped picks up where it stopped.

Gradient alignment: in the first seed's runs, at a few epochs (0 = initialisation), the learner's
update direction ``learner.gradient(x, y)`` is compared with the exact BPTT gradient of the same
model on the same fixed training batches (cosine over the model parameters both name), on the
live training trajectory, with the RNG state restored afterwards so training is unaffected.

Outputs (all written atomically): ``OUT/report.md``, ``OUT/report.html`` (self-contained),
``OUT/plots/*.png``, ``OUT/results.csv`` (one row per run), ``OUT/results.json`` (everything the
report shows), ``OUT/preset.json`` (the resolved preset), ``OUT/runs/*/`` and ``OUT/bench/``.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import statistics
import sys
from importlib import resources
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import harness, run_files
from .environment import environment
from .errors import ConfigError, IncompatibleError, NonFiniteLossError
from .config import usable_cores
from .harness import TrainConfig
from .io import append_jsonl, atomic_write_json
from .learner import LearnerConfig, build_options
from .models import check_model_options
from .registry import METHOD_NAMES, incompatibility, learner_class, make_learner

PRESET_NAMES = ("smoke", "quick", "full")
DEFAULT_PRESET = "quick"

#: TrainConfig fields a preset may set (globally or per task). The rest are the matrix's axes
#: (task, model, method, seed, lr), per-method/model options, or belong to the compare itself.
SETTABLE = ("hidden", "layers", "epochs", "batch_size", "loss_at", "optimizer", "weight_decay",
            "lr_schedule",
            "grad_clip", "device", "threads", "data_dir", "download", "max_batches",
            "eval_batch_size")
#: TrainConfig fields that do not change a run's result (left out of the cache key).
NOT_IN_KEY = ("out", "progress", "wandb", "wandb_project", "wandb_group", "resume", "data_dir", "eager",
              "download", "overwrite")
PRESET_KEYS = ("name", "description", "defaults", "models", "methods", "seeds", "lr_search",
               "method_options", "model_options", "tasks", "alignment", "bench")
TASK_KEYS = ("spec", "models", "overrides", "method_options", "skip")


# ============================================================================ presets


def load_preset(name_or_path: str | os.PathLike | dict) -> dict:
    """A preset by name (``smoke``, ``quick``, ``full``), by JSON path, or as a dict; validated
    and normalised (see ``validate_preset`` for the schema)."""
    if isinstance(name_or_path, dict):
        raw = copy.deepcopy(name_or_path)
    elif str(name_or_path) in PRESET_NAMES:
        text = resources.files("temporal_sigprop").joinpath(
            f"presets/{name_or_path}.json").read_text(encoding="utf-8")
        raw = json.loads(text)
    else:
        path = Path(name_or_path)
        if not path.exists():
            close = difflib.get_close_matches(str(name_or_path), PRESET_NAMES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"preset {str(name_or_path)!r}{hint} is neither one of "
                              f"{', '.join(PRESET_NAMES)} nor an existing JSON file")
        if not path.is_file():
            raise ConfigError(f"preset {path} is not a regular file (a folder, pipe or device); "
                              "name a JSON file")
        try:
            raw = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"preset {path}: not UTF-8 text ({err.reason} at byte "
                              f"{err.start}); save it as UTF-8 JSON") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"preset {path}: not valid JSON ({err})") from None
        except OSError as err:
            raise ConfigError(f"preset {path} cannot be read ({err.strerror or err})") from None
        if isinstance(raw, dict):
            raw.setdefault("name", path.stem)
    return validate_preset(raw)


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(f"preset: {message}")


def _check_settings(where: str, settings: dict) -> None:
    _require(isinstance(settings, dict), f"{where} must be an object")
    unknown = sorted(set(settings) - set(SETTABLE))
    _require(not unknown, f"{where}: unknown or not settable field(s) {', '.join(unknown)}; "
                          f"settable: {', '.join(SETTABLE)}")
    try:  # the values follow TrainConfig's own rules (types, ranges, choices)
        TrainConfig(**settings)
    except ConfigError as err:
        raise ConfigError(f"preset: {where}: {err}") from None
    except TypeError as err:
        raise ConfigError(f"preset: {where}: {err}") from None


def validate_preset(raw: dict) -> dict:
    """Check a preset and fill defaults. The schema (every key but ``tasks`` optional):

    ``name``, ``description``: text.
    ``defaults``: TrainConfig fields for every run (``SETTABLE``), e.g. epochs, hidden, layers,
        batch_size, loss_at, max_batches, threads, device.
    ``models``, ``methods``: lists of names; ``seeds``: list of ints (the first one searches lr).
    ``lr_search``: ``{"lrs": {"default": [...], "<method>": [...]}}`` — every method's list has
        the same length (the budget).
    ``method_options``: ``{"<method>": {option: value}}`` (the method's ``Options`` fields).
    ``model_options``: ``{"<model>": {option: value}}`` (cell keyword arguments).
    ``tasks``: list of task specs (``"cue_recall:delay=20"``) or objects ``{"spec", "models",
        "overrides": {SETTABLE fields}, "method_options": {...}, "skip": {"<method>": "why"}}``.
    ``alignment``: ``{"epochs": [0, "mid", "last", ...], "batches": 2}`` or null (off).
    ``bench``: ``tsp bench`` settings (BenchConfig fields) or null (no scaling section).
    """
    _require(isinstance(raw, dict), "must be a JSON object")
    unknown = sorted(set(raw) - set(PRESET_KEYS))
    _require(not unknown, f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(PRESET_KEYS)}")
    p = copy.deepcopy(raw)
    p.setdefault("name", "custom")
    p.setdefault("description", "")
    p.setdefault("defaults", {})
    _check_settings("defaults", p["defaults"])
    p.setdefault("models", ["gru"])
    p.setdefault("methods", list(METHOD_NAMES))
    p.setdefault("seeds", [0, 1, 2])
    for key in ("models", "methods", "seeds"):
        _require(isinstance(p[key], list) and p[key], f"{key} must be a non-empty list")
        _require(len(set(map(str, p[key]))) == len(p[key]), f"{key} has duplicates")
    for m in p["methods"]:
        _require(m in METHOD_NAMES, f"unknown method {m!r}; choose from {', '.join(METHOD_NAMES)}")
    _require(all(isinstance(s, int) and not isinstance(s, bool) for s in p["seeds"]),
             "seeds must be integers")
    for seed in p["seeds"]:
        try:
            TrainConfig(seed=seed)
        except ConfigError as err:
            raise ConfigError(f"preset: seeds: {err}") from None

    lr = p.setdefault("lr_search", {})
    _require(isinstance(lr, dict) and set(lr) <= {"lrs"}, "lr_search must be {\"lrs\": {...}}")
    lrs = lr.setdefault("lrs", {})
    lrs.setdefault("default", [1e-3])
    for key, values in lrs.items():
        _require(key == "default" or key in METHOD_NAMES,
                 f"lr_search.lrs: {key!r} is neither 'default' nor a method")
        _require(isinstance(values, list) and values and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf
            for v in values),
            f"lr_search.lrs.{key} must be a non-empty list of positive, finite numbers")
        _require(len(set(values)) == len(values), f"lr_search.lrs.{key} has duplicates")
    budget = {len(lrs.get(m, lrs["default"])) for m in p["methods"]}
    _require(len(budget) == 1, "every method must get the same number of learning rates "
                               f"(the same search budget); got {sorted(budget)} — lists: "
                               + ", ".join(f"{m}: {lrs.get(m, lrs['default'])}" for m in p["methods"]))

    p.setdefault("method_options", {})
    p.setdefault("model_options", {})
    _check_method_options("method_options", p["method_options"])
    _require(isinstance(p["model_options"], dict), "model_options must be an object")
    for model, opts in p["model_options"].items():
        _require(isinstance(opts, dict), f"model_options.{model} must be an object")
        try:
            check_model_options(model, opts)
        except ConfigError as err:
            raise ConfigError(f"preset: model_options: {err}") from None

    _require(isinstance(p.get("tasks"), list) and p["tasks"], "tasks must be a non-empty list")
    tasks = []
    for i, t in enumerate(p["tasks"]):
        _require(isinstance(t, (str, dict)), f"tasks[{i}] must be a task spec string or an object")
        t = {"spec": t} if isinstance(t, str) else dict(t)
        _require(isinstance(t.get("spec"), str) and t["spec"], f"tasks[{i}] needs a 'spec' string")
        bad = sorted(set(t) - set(TASK_KEYS))
        _require(not bad, f"tasks[{i}]: unknown key(s) {', '.join(bad)}; valid: {', '.join(TASK_KEYS)}")
        t.setdefault("models", p["models"])
        t.setdefault("overrides", {})
        t.setdefault("method_options", {})
        t.setdefault("skip", {})
        _check_settings(f"tasks[{i}].overrides", t["overrides"])
        _check_method_options(f"tasks[{i}].method_options", t["method_options"])
        for m, why in t["skip"].items():
            _require(m in METHOD_NAMES and isinstance(why, str) and why,
                     f"tasks[{i}].skip maps a method to the reason it is skipped")
        _check_task_name(t["spec"])
        tasks.append(t)
    p["tasks"] = tasks

    align = p.setdefault("alignment", {"epochs": [0, "mid", "last"], "batches": 2})
    if align is not None:
        _require(isinstance(align, dict) and set(align) <= {"epochs", "batches"},
                 "alignment must be {\"epochs\": [...], \"batches\": n} or null")
        align.setdefault("epochs", [0, "mid", "last"])
        align.setdefault("batches", 2)
        _require(all(e in ("mid", "last") or (isinstance(e, int) and e >= 0)
                     for e in align["epochs"]), "alignment.epochs: integers, 'mid' or 'last'")
    if p.get("bench") is not None:
        from .bench import bench_config_from

        bench_config_from(p["bench"])  # validates the keys
    else:
        p["bench"] = None
    return p


def _check_method_options(where: str, options: dict) -> None:
    _require(isinstance(options, dict), f"{where} must be an object")
    for method, opts in options.items():
        _require(method in METHOD_NAMES, f"{where}: unknown method {method!r}")
        _require(isinstance(opts, dict), f"{where}.{method} must be an object")
        # Imports the learner: a method that fails to import is a bug and stops the compare here.
        build_options(learner_class(method), dict(opts))


def _check_task_name(spec: str) -> None:
    from tasks import parse_task_spec
    from tasks.registry import get_entry

    name, _ = parse_task_spec(spec)
    get_entry(name)  # DataError with the valid names if unknown


def apply_overrides(preset: dict, *, tasks=None, models=None, methods=None, seeds=None,
                    epochs=None, device=None, threads=None, max_batches=None) -> dict:
    """The command line's narrowing of a preset (a new, re-validated preset)."""
    p = copy.deepcopy(preset)
    if tasks:
        known = {t["spec"]: t for t in p["tasks"]}
        p["tasks"] = [known.get(s, {"spec": s}) for s in tasks]
        for t in p["tasks"]:
            if models:
                t["models"] = list(models)
    if models:
        p["models"] = list(models)
        for t in p["tasks"]:
            t["models"] = list(models)
    if methods:
        p["methods"] = list(methods)
    if seeds:
        p["seeds"] = list(seeds)
    for key, value in (("epochs", epochs), ("device", device), ("threads", threads),
                       ("max_batches", max_batches)):
        if value is not None:
            p["defaults"][key] = value
            for t in p["tasks"]:
                t["overrides"].pop(key, None)
            if key in ("device", "threads") and p.get("bench"):
                p["bench"][key] = value  # the scaling runs where the training runs
    if methods and p.get("bench") and "methods" in p["bench"]:
        p["bench"]["methods"] = [m for m in p["bench"]["methods"] if m in methods]
    return validate_preset(p)


# ============================================================================ planning


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:60]


def run_key(cfg: TrainConfig, extras: dict) -> str:
    """Hash of everything that determines a run's result."""
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_IN_KEY}
    text = json.dumps({"train": fields, "extras": extras}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_folder(cfg: TrainConfig, extras: dict) -> str:
    return (f"{_slug(cfg.task)}-{cfg.model}-{cfg.method}-lr{cfg.lr:g}-s{cfg.seed}-"
            f"{run_key(cfg, extras)}")


def _alignment_epochs(spec: dict | None, epochs: int) -> list[int]:
    if not spec:
        return []
    out = set()
    for e in spec["epochs"]:
        value = {"mid": epochs // 2, "last": epochs}.get(e, e)
        if 0 <= value <= epochs:
            out.add(value)
    return sorted(out)


def plan(preset: dict) -> list[dict]:
    """The cells of the matrix (task × model × method), each with its runs' configurations."""
    cells = []
    first_seed = preset["seeds"][0]
    lrs = preset["lr_search"]["lrs"]
    for task in preset["tasks"]:
        settings = {**preset["defaults"], **task["overrides"]}
        for model in task["models"]:
            for method in preset["methods"]:
                cell = {"task": task["spec"], "model": model, "method": method,
                        "reason": None, "lrs": list(lrs.get(method, lrs["default"])),
                        "seeds": list(preset["seeds"])}
                reason = incompatibility(method, model)
                if reason:
                    cell["reason"] = reason
                elif method in task["skip"]:
                    cell["reason"] = f"skipped by the preset: {task['skip'][method]}"
                options = {**preset["method_options"].get(method, {}),
                           **task["method_options"].get(method, {})}
                base = TrainConfig(task=task["spec"], model=model, method=method,
                                   seed=first_seed, options=options,
                                   model_options=dict(preset["model_options"].get(model, {})),
                                   **settings)
                cell["base"] = base
                cell["alignment_epochs"] = _alignment_epochs(preset["alignment"], base.epochs)
                cells.append(cell)
    return cells


def planned_runs(cell: dict) -> int:
    if cell["reason"]:
        return 0
    return len(cell["lrs"]) + len(cell["seeds"]) - 1


# ============================================================================ running


class AlignmentProbe:
    """``on_epoch_end`` callback: cosine between the learner's update direction and BPTT's exact
    gradient on fixed training batches, at the chosen epochs; one JSON line per epoch.

    Only parameters of the model that both gradients name are compared (a learner's own
    parameters, ``learner.*``, have no BPTT counterpart). The RNG state is saved and restored so
    the training trajectory is the one it would have been without the probe.
    """

    def __init__(self, path: Path, epochs: list[int], batches: int, batch_size: int):
        self.path, self.epochs, self.batches, self.batch_size = path, set(epochs), batches, batch_size

    def __call__(self, epoch: int, learner, task) -> None:
        if epoch == 0:
            self.path.unlink(missing_ok=True)  # a fresh start: earlier lines are stale
        if epoch not in self.epochs:
            return
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            record = self.measure(epoch, learner, task)
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        append_jsonl(self.path, record)

    def measure(self, epoch: int, learner, task) -> dict:
        device = next(learner.model.parameters()).device
        reference = make_learner("bptt", learner.model, LearnerConfig(loss_at=learner.cfg.loss_at))
        x_all, y_all = task.train.tensors
        cosines, per_param = [], {}
        for b in range(self.batches):
            x = x_all[b * self.batch_size:(b + 1) * self.batch_size].to(device)
            y = y_all[b * self.batch_size:(b + 1) * self.batch_size].to(device)
            if x.shape[0] == 0:
                break
            try:
                mine = learner.gradient(x, y)
            except NotImplementedError:
                return {"epoch": epoch, "cosine": None,
                        "reason": f"{learner.name}.gradient() is not implemented"}
            exact = reference.gradient(x, y)
            shared = sorted(n for n in set(mine) & set(exact) if not n.startswith("learner."))
            if not shared:
                return {"epoch": epoch, "cosine": None,
                        "reason": "no model parameter is named by both gradients"}
            a = torch.cat([mine[n].detach().reshape(-1).double() for n in shared])
            e = torch.cat([exact[n].detach().reshape(-1).double() for n in shared])
            cosines.append(_cosine(a, e))
            for n in shared:
                per_param.setdefault(n, []).append(
                    _cosine(mine[n].detach().reshape(-1).double(), exact[n].detach().reshape(-1).double()))
        valid = [c for c in cosines if c is not None]
        return {"epoch": epoch,
                "cosine": statistics.fmean(valid) if valid else None,
                "cosine_std": statistics.stdev(valid) if len(valid) > 1 else 0.0,
                "batches": len(cosines), "parameters": len(per_param),
                "per_parameter": {n: (statistics.fmean([c for c in v if c is not None])
                                      if any(c is not None for c in v) else None)
                                  for n, v in per_param.items()},
                "reason": None if valid else "a gradient was zero"}


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float | None:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return None
    return float((a @ b) / (na * nb))


def _is_oom(err: BaseException) -> bool:
    from .bench import _is_oom as bench_is_oom

    return bench_is_oom(err)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return rows


def _finished(summary: dict | None, cfg: TrainConfig) -> bool:
    if not summary:
        return False
    status = summary.get("status")
    if status in ("diverged", "n/a", "oom"):
        return True
    return status == "ok" and summary.get("epochs") == cfg.epochs


_STEP_RE = re.compile(r"step (\d+)")


class Runner:
    """Runs (or reads back) single runs into OUT/runs/<name>/ and returns their outcomes."""

    def __init__(self, out: Path, *, wandb=None, wandb_project="temporal_sigprop",
                 wandb_group=None, progress=True, keep_going=False, alignment_batches=2):
        self.out, self.progress, self.keep_going = Path(out), progress, keep_going
        self.wandb, self.wandb_project, self.wandb_group = wandb, wandb_project, wandb_group
        self.alignment_batches = alignment_batches

    def kwargs(self) -> dict:
        """What a worker process needs to build the same runner."""
        return {"out": self.out, "wandb": self.wandb, "wandb_project": self.wandb_project,
                "wandb_group": self.wandb_group, "progress": self.progress,
                "keep_going": self.keep_going, "alignment_batches": self.alignment_batches}

    def run(self, cfg: TrainConfig, role: str, alignment_epochs: list[int]) -> dict:
        extras = {"alignment": {"epochs": alignment_epochs, "batches": self.alignment_batches}
                  } if alignment_epochs else {}
        name = run_folder(cfg, extras)
        folder = self.out / "runs" / name
        cfg = dataclasses.replace(cfg, out=str(folder), resume=True, progress=self.progress,
                                  wandb=self.wandb, wandb_project=self.wandb_project,
                                  wandb_group=self.wandb_group)
        summary = _read_json(folder / "summary.json")
        cached = _finished(summary, cfg)
        if not cached:
            summary = self._train(cfg, folder, alignment_epochs)
        return self._outcome(cfg, folder, summary, role, cached)

    def _train(self, cfg: TrainConfig, folder: Path, alignment_epochs: list[int]) -> dict:
        probe = (AlignmentProbe(folder / "alignment.jsonl", alignment_epochs,
                                self.alignment_batches, cfg.batch_size)
                 if alignment_epochs else None)
        try:
            # looked up on the module so tests (and tools) can observe/replace it; every run
            # of the matrix resumes by design, so a fresh start is not announced
            with run_files.quiet_fresh_starts():
                return harness.run_training(cfg, on_epoch_end=probe)
        except IncompatibleError as err:
            summary = {"status": "n/a", "reason": str(err)}
        except NonFiniteLossError as err:
            summary = {**(_read_json(folder / "summary.json") or {}), "status": "diverged",
                       "diverged_step": err.step, "error": str(err)}
        except ImportError:
            raise  # a method that does not import is a bug, never an n/a
        except Exception as err:  # noqa: BLE001
            if _is_oom(err):
                summary = {"status": "oom", "reason": f"out of memory: {err}"[:400]}
            elif self.keep_going:
                summary = {"status": "error", "reason": f"{type(err).__name__}: {err}"[:400]}
                atomic_write_json(folder / "error.json", summary)  # not a cached outcome
                return summary
            else:
                raise
        atomic_write_json(folder / "summary.json", summary)
        return summary

    def _outcome(self, cfg, folder, summary, role, cached) -> dict:
        status = summary.get("status", "error")
        outcome = {"task": cfg.task, "model": cfg.model, "method": cfg.method, "seed": cfg.seed,
                   "lr": cfg.lr, "role": role, "status": status, "cached": cached,
                   "run_dir": str(folder.relative_to(self.out)), "reason": summary.get("reason")}
        if status == "diverged":
            step = summary.get("diverged_step")
            if step is None:
                match = _STEP_RE.search(summary.get("error", ""))
                step = int(match.group(1)) if match else None
            outcome["diverged_step"] = step
            outcome["reason"] = f"diverged at step {step}"
        if status == "ok":
            keep = ("val_accuracy", "test_accuracy", "test_accuracy_at_best_val", "best_epoch",
                    "epochs", "train_seconds", "time_per_step_ms", "training_memory_bytes",
                    "saved_tensor_peak_bytes", "learner_state_bytes", "cuda_peak_bytes",
                    "peak_rss_bytes", "params", "learner_params", "flops_per_step", "spike_rate",
                    "steps", "num_classes", "label_kind", "kind", "loss_at", "hidden", "layers",
                    "batch_size", "options", "lr_schedule", "weight_decay", "device",
                    "device_name", "threads",
                    "torch_version", "torchaudio_version", "cpu_count", "anytime_test_accuracy")
            outcome.update({k: summary.get(k) for k in keep})
            metrics = _read_jsonl(folder / "metrics.jsonl")
            by_epoch = {m["epoch"]: m for m in metrics}
            outcome["curve"] = [{"epoch": e, "val_accuracy": by_epoch[e].get("val_accuracy"),
                                 "train_seconds": by_epoch[e].get("train_seconds"),
                                 "train_loss": by_epoch[e].get("train_loss")}
                                for e in sorted(by_epoch)]
            outcome["final_train_loss"] = outcome["curve"][-1]["train_loss"] if metrics else None
            align = {r["epoch"]: r for r in _read_jsonl(folder / "alignment.jsonl")}
            outcome["alignment"] = [align[e] for e in sorted(align)]
        return outcome


def _select_lr(search: list[dict]) -> dict | None:
    """Best validation accuracy; ties → lower final training loss, then the earlier candidate."""
    ok = [r for r in search if r["status"] == "ok" and r.get("val_accuracy") is not None]
    if not ok:
        return None

    def key(item):
        i, r = item
        loss = r.get("final_train_loss")
        return (-r["val_accuracy"], loss if loss is not None and math.isfinite(loss) else math.inf, i)

    return min(enumerate(ok), key=key)[1]


def _search_configs(cell: dict) -> list[TrainConfig]:
    return [dataclasses.replace(cell["base"], lr=lr) for lr in cell["lrs"]]


def _seed_configs(cell: dict, lr: float) -> list[TrainConfig]:
    return [dataclasses.replace(cell["base"], lr=lr, seed=seed) for seed in cell["seeds"][1:]]


def _mark_chosen(search: list[dict]) -> dict | None:
    chosen = _select_lr(search)
    for outcome in search:
        outcome["chosen"] = chosen is not None and outcome is chosen
    return chosen


def run_cells(cells: list[dict], runner: Runner, bar, jobs: int = 1) -> list[list[dict]]:
    """Every cell's runs: the learning-rate search with the first seed, then the other seeds at
    the chosen rate. ``jobs > 1`` runs that many trainings at once in worker processes (search
    runs of all cells first; a cell's seed runs as soon as its search is complete)."""
    if jobs > 1:
        return _run_cells_parallel(cells, runner, bar, jobs)
    results = []
    for cell in cells:
        runs: list[dict] = []
        results.append(runs)
        if cell["reason"]:
            continue
        for i, cfg in enumerate(_search_configs(cell)):
            _describe(bar, cfg)
            runs.append(runner.run(cfg, "search", cell["alignment_epochs"]))
            bar.update()
            if runs[-1]["status"] in ("n/a", "oom"):
                # the size, not the learning rate, is refused: every candidate would be too
                bar.update(planned_runs(cell) - i - 1)
                break
        else:
            chosen = _mark_chosen(runs)
            if chosen is None:  # every candidate diverged (or failed): no seed runs
                bar.update(len(cell["seeds"]) - 1)
                continue
            for cfg in _seed_configs(cell, chosen["lr"]):
                _describe(bar, cfg)
                runs.append({**runner.run(cfg, "seed", []), "chosen": True})
                bar.update()
    return results


def _describe(bar, cfg: TrainConfig) -> None:
    bar.set_postfix_str(f"{cfg.task} {cfg.model} {cfg.method} lr={cfg.lr:g} seed={cfg.seed}",
                        refresh=True)


def _worker_run(runner_kwargs: dict, cfg: TrainConfig, role: str, alignment_epochs) -> dict:
    """One run in a worker process (its own Runner; no inner progress bars)."""
    return Runner(**runner_kwargs).run(cfg, role, alignment_epochs)


def _run_cells_parallel(cells, runner: Runner, bar, jobs: int) -> list[list[dict]]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    kwargs = {**runner.kwargs(), "progress": False}
    search: list[list] = [[None] * len(c["lrs"]) if not c["reason"] else [] for c in cells]
    seeds: list[list] = [[] for _ in cells]
    pending = {}
    # spawn, not fork: a forked child inherits torch's thread pools in an undefined state
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            for ci, cell in enumerate(cells):
                if cell["reason"]:
                    continue
                for i, cfg in enumerate(_search_configs(cell)):
                    future = pool.submit(_worker_run, kwargs, cfg, "search",
                                         cell["alignment_epochs"])
                    pending[future] = (ci, "search", i)
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    ci, role, i = pending.pop(future)
                    outcome = future.result()
                    bar.update()
                    bar.set_postfix_str(f"{len(pending)} queued or running", refresh=True)
                    if role == "seed":
                        seeds[ci][i] = {**outcome, "chosen": True}
                        continue
                    search[ci][i] = outcome
                    if any(o is None for o in search[ci]):
                        continue
                    cell = cells[ci]
                    chosen = None if any(o["status"] in ("n/a", "oom") for o in search[ci]) \
                        else _mark_chosen(search[ci])
                    if chosen is None:
                        bar.update(len(cell["seeds"]) - 1)
                        continue
                    configs = _seed_configs(cell, chosen["lr"])
                    seeds[ci] = [None] * len(configs)
                    for j, cfg in enumerate(configs):
                        pending[pool.submit(_worker_run, kwargs, cfg, "seed", [])] = (ci, "seed", j)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [a + b for a, b in zip(search, seeds)]


# ============================================================================ aggregation


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(cell: dict, runs: list[dict]) -> dict:
    """One row of the results: the chosen setting's seeds, their mean ± std and costs."""
    out = {"task": cell["task"], "model": cell["model"], "method": cell["method"],
           "loss_at": cell["base"].loss_at, "lr_candidates": cell["lrs"], "seeds": cell["seeds"],
           "options": cell["base"].options}
    out["lr_search"] = [{"lr": r["lr"], "status": r["status"], "val_accuracy": r.get("val_accuracy"),
                         "final_train_loss": r.get("final_train_loss"), "reason": r.get("reason"),
                         "run_dir": r["run_dir"]}
                        for r in runs if r["role"] == "search"]
    if cell["reason"]:
        return {**out, "status": "n/a", "reason": cell["reason"], "n_ok": 0}
    refused = [r for r in runs if r["status"] in ("n/a", "oom")]
    if refused:
        why = refused[0]["reason"] or refused[0]["status"]
        return {**out, "status": "n/a", "reason": why, "n_ok": 0}
    chosen = [r for r in runs if r.get("chosen")]
    if not chosen:
        diverged = [r for r in runs if r["status"] == "diverged"]
        errors = [r for r in runs if r["status"] == "error"]
        if diverged and not errors:
            steps = ", ".join(f"lr {r['lr']:g}: step {r['diverged_step']}" for r in diverged)
            first = min(r["diverged_step"] or 0 for r in diverged)
            reason = (f"diverged at step {first}" if len(diverged) == 1
                      else f"diverged at every learning rate tried ({steps})")
            return {**out, "status": "diverged", "reason": reason, "n_ok": 0}
        why = "; ".join(r["reason"] or r["status"] for r in errors or runs)
        return {**out, "status": "error", "reason": why, "n_ok": 0}
    ok = [r for r in chosen if r["status"] == "ok"]
    out["chosen_lr"] = chosen[0]["lr"]
    lrs = cell["lrs"]
    out["lr_at_edge"] = (None if len(lrs) < 2 else "largest" if out["chosen_lr"] == max(lrs)
                         else "smallest" if out["chosen_lr"] == min(lrs) else None)
    out["runs"] = [{"seed": r["seed"], "status": r["status"], "reason": r.get("reason"),
                    "run_dir": r["run_dir"], "test_accuracy_at_best_val": r.get("test_accuracy_at_best_val"),
                    "val_accuracy": r.get("val_accuracy")} for r in chosen]
    out["n_ok"] = len(ok)
    notes = []
    bad = [r for r in chosen if r["status"] != "ok"]
    if bad:
        notes.append(f"{len(bad)}/{len(chosen)} seeds " + ", ".join(
            f"{r['reason'] or r['status']} (seed {r['seed']})" for r in bad))
    if not ok:
        return {**out, "status": "diverged" if all(r["status"] == "diverged" for r in bad) else "error",
                "reason": "; ".join(notes), "n_ok": 0}
    test = [r["test_accuracy_at_best_val"] for r in ok]
    val = [r["val_accuracy"] for r in ok]
    out["test_accuracy_mean"], out["test_accuracy_std"] = _mean_std(test)
    out["val_accuracy_mean"], out["val_accuracy_std"] = _mean_std(val)
    out["test_accuracy_seeds"] = test
    times = [r["time_per_step_ms"] for r in ok if r.get("time_per_step_ms") is not None]
    first = ok[0]
    out["cost"] = {
        "time_per_step_ms": statistics.median(times) if times else None,
        "training_memory_bytes": max((r["training_memory_bytes"] for r in ok
                                      if r.get("training_memory_bytes") is not None), default=None),
        "saved_tensor_peak_bytes": first.get("saved_tensor_peak_bytes"),
        "learner_state_bytes": first.get("learner_state_bytes"),
        "cuda_peak_bytes": max((r["cuda_peak_bytes"] for r in ok if r.get("cuda_peak_bytes")),
                               default=None),
        "flops_per_step": first.get("flops_per_step"),
        "params": first.get("params"), "learner_params": first.get("learner_params"),
        "spike_rate": (statistics.fmean([r["spike_rate"] for r in ok])
                       if all(r.get("spike_rate") is not None for r in ok) else None),
        "steps": first.get("steps"),
    }
    # the schedule and weight decay each method ran with (its recommendation unless the preset set them)
    out["lr_schedule"], out["weight_decay"] = first.get("lr_schedule"), first.get("weight_decay")
    out["curves"] = [r.get("curve") or [] for r in ok]
    out["anytime"] = [r["anytime_test_accuracy"] for r in ok if r.get("anytime_test_accuracy")]
    first_seed = [r for r in chosen if r["seed"] == cell["seeds"][0] and r["status"] == "ok"]
    out["alignment"] = first_seed[0].get("alignment", []) if first_seed else []
    out["status"] = "ok"
    out["reason"] = "; ".join(notes) or None
    return out


# ============================================================================ environment


# ============================================================================ the command


def run_compare(preset: dict | str, out: str | os.PathLike, *, wandb: str | None = None,
                wandb_project: str = "temporal_sigprop", progress: bool = True,
                keep_going: bool = False, bench_csv: str | None = None, bench: bool = True,
                command: str | None = None, jobs: int = 1, echo=print) -> dict:
    """Run (or read back) every run of the preset's matrix and write the report into ``out``.

    Returns the results dict that is also written to OUT/results.json.
    """
    from . import report

    preset = load_preset(preset)
    if wandb not in (None, "offline", "online"):
        raise ConfigError(f"--wandb must be offline or online, got {wandb!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "preset.json", preset)
    preset_hash = hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()[:8]
    group = f"compare-{preset['name']}-{_slug(out.resolve().name)}-{preset_hash}"
    cells = plan(preset)
    runner = Runner(out, wandb=wandb, wandb_project=wandb_project, wandb_group=group,
                    progress=progress, keep_going=keep_going,
                    alignment_batches=(preset["alignment"] or {}).get("batches", 0))
    total = sum(planned_runs(c) for c in cells)
    with tqdm(total=total, desc=f"compare {preset['name']}", unit="run",
              disable=None if progress else True, position=0) as bar:
        per_cell = run_cells(cells, runner, bar, jobs)
    rows = [aggregate(cell, runs) for cell, runs in zip(cells, per_cell)]
    all_runs = [r for runs in per_cell for r in runs]
    trained = sum(not r["cached"] for r in all_runs)

    threads = preset["defaults"].get("threads", TrainConfig.threads)
    bench_rows, bench_source = _bench_rows(preset, out, bench_csv, bench, progress, threads)
    results = {
        "preset": preset,
        "command": command or reproduce_command(preset, out),
        "environment": environment(threads=threads, with_git=True),
        "counts": {"runs": len(all_runs), "trained": trained, "cached": len(all_runs) - trained,
                   "jobs": jobs},
        "cells": rows,
        "runs": [{k: v for k, v in r.items() if k not in ("curve", "anytime_test_accuracy",
                                                          "alignment")} for r in all_runs],
        "bench": {"source": bench_source, "rows": bench_rows,
                  "config": (preset.get("bench") or None)},
    }
    report.write_report(results, out)
    if echo:
        echo(report.console_summary(results, out))
    return results


def reproduce_command(preset: dict, out: Path) -> str:
    """The command that reruns this compare: the shipped preset's name if the preset is exactly
    that one, else the resolved copy saved in OUT/preset.json."""
    shipped = preset["name"] in PRESET_NAMES and load_preset(preset["name"]) == preset
    name = preset["name"] if shipped else str(out / "preset.json")
    return f"tsp compare --preset {shlex.quote(name)} --out {shlex.quote(str(out))}"


def _bench_rows(preset, out: Path, bench_csv, bench: bool, progress, threads):
    """Scaling rows: read from a bench CSV, or measured with the preset's bench settings (cached
    in OUT/bench/ by a hash of those settings)."""
    from . import bench as bench_mod

    if bench_csv:
        return bench_mod.read_bench_csv(bench_csv), str(bench_csv)
    if not bench or not preset.get("bench"):
        return [], None
    settings = dict(preset["bench"])
    settings.setdefault("threads", threads)
    settings.setdefault("methods", list(preset["methods"]))  # the methods of the comparison
    cfg = bench_mod.bench_config_from(settings)
    folder = out / "bench"
    saved = _read_json(folder / "bench.json")
    if saved and saved.get("config") == json.loads(json.dumps(cfg.key())):
        return saved["rows"], "bench/bench.csv (cached)"
    rows = bench_mod.run_bench(cfg, folder, progress=progress, echo=None)
    return rows, "bench/bench.csv"


# ---------------------------------------------------------------------------------- CLI


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="run a matrix of tasks × models × methods × seeds and write a report",
        description="Run a preset's matrix (tasks × models × methods × seeds) with the same "
                    "loss placement and the same learning-rate search budget for every method, "
                    "and write OUT/report.html, report.md, results.csv, results.json and plots. "
                    "Finished runs are cached under OUT and skipped on a re-run.")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"{', '.join(PRESET_NAMES)} or a JSON file (default: {DEFAULT_PRESET})")
    parser.add_argument("--out", default=None, help="output folder (default: runs/compare-PRESET)")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these task specs")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="these seeds")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every task")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="at most this many batches per epoch (every task)")
    parser.add_argument("--device", default=None, help="cpu or cuda (every run)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads")
    parser.add_argument("--wandb", choices=("offline", "online"), default=None,
                        help="log every run to one wandb project, grouped by this compare")
    parser.add_argument("--wandb-project", default="temporal_sigprop", help="wandb project")
    parser.add_argument("--bench-csv", default=None,
                        help="read the scaling section from this bench.csv instead of running it")
    parser.add_argument("--no-bench", dest="bench", action="store_false",
                        help="no scaling measurement (the section says so)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trainings run at once in worker processes (each with --threads "
                             "threads; default: the usable CPU cores); times per step get "
                             "noisier when jobs share cores")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a run that raises an error and go on (exit code 1 at the end)")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render the report from OUT/results.json without running anything")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    parser.set_defaults(handler=_cmd_compare)
    return parser


def _cmd_compare(args) -> int:
    from . import report

    cores = usable_cores()
    if args.jobs is not None and not 1 <= args.jobs <= cores:
        raise ConfigError(f"--jobs must be between 1 and the {cores} usable CPU core(s), got "
                          f"{args.jobs}")
    jobs = args.jobs or cores
    preset = load_preset(args.preset)
    out = Path(args.out or f"runs/compare-{preset['name']}")
    if args.report_only:
        results = _read_json(out / "results.json")
        if results is None:
            raise ConfigError(f"--report-only: {out / 'results.json'} does not exist")
        report.write_report(results, out)
        print(report.console_summary(results, out))
        return 0
    preset = apply_overrides(preset, tasks=args.tasks, models=args.models, methods=args.methods,
                             seeds=args.seeds, epochs=args.epochs, device=args.device,
                             threads=args.threads, max_batches=args.max_batches)
    command = "tsp " + shlex.join(["compare", *_argv_of(args, out)])
    results = run_compare(preset, out, wandb=args.wandb, wandb_project=args.wandb_project,
                          progress=args.progress, keep_going=args.keep_going,
                          bench_csv=args.bench_csv, bench=args.bench, command=command,
                          jobs=jobs)
    return 1 if any(c["status"] == "error" for c in results["cells"]) else 0


def _argv_of(args, out: Path) -> list[str]:
    """The flags that reproduce this compare (canonical order)."""
    argv = ["--preset", str(args.preset), "--out", str(out)]
    for name in ("tasks", "models", "methods", "seeds"):
        value = getattr(args, name)
        if value:
            argv += [f"--{name}", *map(str, value)]
    for name in ("epochs", "max_batches", "device", "threads", "bench_csv", "jobs"):
        value = getattr(args, name)
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    if not args.bench:
        argv.append("--no-bench")
    return argv


def main(argv=None) -> int:  # ``python -m temporal_sigprop.compare``
    parser = argparse.ArgumentParser(prog="tsp")
    add_compare_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["compare", *(sys.argv[1:] if argv is None else argv)])
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
