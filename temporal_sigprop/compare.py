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
- **A grid that brackets the choice**: a rate chosen at the edge of the candidates tried adds one
  more candidate a grid step beyond that edge and the choice is made again, at most
  ``lr_search.widen`` times (the same bound for every method; ``CellSearch``). A pair still at
  the edge after that is recorded as not tuned (``lr_tuned: false``) and the report names no
  winner from it.
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
import datetime as _dt
import dataclasses
import hashlib
import json
import math
import os
import re
import shlex
import statistics
import sys
import time
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

from .subcommands import DEFAULT_PRESET, PRESET_NAMES, check_preset_name  # noqa: F401 - re-exported

#: TrainConfig fields a preset may set (globally or per task). The rest are the matrix's axes
#: (task, model, method, seed, lr), per-method/model options, or belong to the compare itself.
SETTABLE = ("hidden", "layers", "epochs", "batch_size", "loss_at", "optimizer", "weight_decay",
            "lr_schedule",
            "grad_clip", "device", "threads", "data_dir", "download", "max_batches",
            "eval_batch_size")
#: TrainConfig fields that do not change a run's result (left out of the cache key).
NOT_IN_KEY = ("out", "progress", "wandb", "wandb_project", "wandb_group", "resume", "data_dir", "eager",
              "cache", "cache_dir",
              "download", "overwrite")
PRESET_KEYS = ("name", "description", "defaults", "models", "methods", "seeds", "lr_search",
               "method_options", "model_options", "tasks", "alignment", "bench")
TASK_KEYS = ("spec", "models", "overrides", "method_options", "skip")
#: How many learning rates a pair may add beyond its grid's edge (``lr_search.widen``): enough to
#: walk two grid steps past it, few enough that the run count stays bounded (see ``CellSearch``).
DEFAULT_LR_WIDENINGS = 2


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
        check_preset_name(path)
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
        except RecursionError:  # json's decoder recurses once per nested list/object
            raise ConfigError(f"preset {path}: JSON nested too deeply to read; a preset is a "
                              "few levels of objects and lists") from None
        except OSError as err:
            raise ConfigError(f"preset {path} cannot be read ({err.strerror or err})") from None
        if isinstance(raw, dict):
            raw.setdefault("name", path.stem)
    return validate_preset(raw)


#: Deepest nesting of objects/lists a preset may have (the schema needs 5): copying or checking
#: a far deeper one would exhaust Python's recursion limit.
MAX_PRESET_DEPTH = 32


def _depth(value) -> int:
    """How deeply lists and dicts nest in ``value`` (counted without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            if level <= MAX_PRESET_DEPTH:
                stack.extend((v, level + 1) for v in (item.values() if isinstance(item, dict)
                                                      else item))
    return deepest


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
    ``lr_search``: ``{"lrs": {"default": [...], "<method>": [...]}, "widen": 2}`` — every
        method's list has the same length (the budget); ``widen`` (default
        ``DEFAULT_LR_WIDENINGS``) is how many candidates a pair may add beyond its grid's edge
        when its choice lands there (see ``CellSearch``), the same bound for every method.
    ``method_options``: ``{"<method>": {option: value}}`` (the method's ``Options`` fields).
    ``model_options``: ``{"<model>": {option: value}}`` (cell keyword arguments).
    ``tasks``: list of task specs (``"cue_recall:delay=20"``) or objects ``{"spec", "models",
        "overrides": {SETTABLE fields}, "method_options": {...}, "skip": {"<method>": "why"}}``.
    ``alignment``: ``{"epochs": [0, "mid", "last", ...], "batches": 2}`` or null (off).
    ``bench``: ``tsp bench`` settings (BenchConfig fields) or null (no scaling section).
    """
    _require(isinstance(raw, dict), "must be a JSON object")
    _require(_depth(raw) <= MAX_PRESET_DEPTH, f"nested more than {MAX_PRESET_DEPTH} levels deep; "
                                              "a preset is a few levels of objects and lists")
    unknown = sorted(set(raw) - set(PRESET_KEYS))
    _require(not unknown, f"unknown key(s) {', '.join(unknown)}; valid: {', '.join(PRESET_KEYS)}")
    p = copy.deepcopy(raw)
    p.setdefault("name", "custom")
    p.setdefault("description", "")
    for key in ("name", "description"):
        _require(isinstance(p[key], str), f"{key} must be text, got {p[key]!r:.60}")
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
    _require(isinstance(lr, dict) and set(lr) <= {"lrs", "widen"},
             "lr_search must be {\"lrs\": {...}, \"widen\": n}")
    widen = lr.setdefault("widen", DEFAULT_LR_WIDENINGS)
    _require(isinstance(widen, int) and not isinstance(widen, bool) and 0 <= widen <= 10,
             f"lr_search.widen must be an integer from 0 to 10 (extra candidates beyond the "
             f"grid's edge), got {widen!r:.40}")
    lrs = lr.setdefault("lrs", {})
    _require(isinstance(lrs, dict), "lr_search.lrs must be an object {\"default\": [...], "
                                    "\"<method>\": [...]}")
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
        _require(isinstance(t["models"], list) and t["models"]
                 and all(isinstance(m, str) for m in t["models"])
                 and len(set(t["models"])) == len(t["models"]),
                 f"tasks[{i}].models must be a non-empty list of distinct model names")
        t.setdefault("overrides", {})
        t.setdefault("method_options", {})
        t.setdefault("skip", {})
        _check_settings(f"tasks[{i}].overrides", t["overrides"])
        _check_method_options(f"tasks[{i}].method_options", t["method_options"])
        _require(isinstance(t["skip"], dict), f"tasks[{i}].skip must be an object "
                                              "{\"<method>\": \"why\"}")
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
        _require(isinstance(align["epochs"], list), "alignment.epochs must be a list")
        _require(isinstance(align["batches"], int) and not isinstance(align["batches"], bool)
                 and align["batches"] >= 1, "alignment.batches must be an integer ≥ 1")
        _require(all(e in ("mid", "last") or (isinstance(e, int) and not isinstance(e, bool)
                                               and e >= 0)
                     for e in align["epochs"]), "alignment.epochs: integers, 'mid' or 'last'")
    if p.get("bench") is not None:
        from .bench import bench_config_from

        _require(isinstance(p["bench"], dict), "bench must be an object of tsp bench settings "
                                               "or null")
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
                        "widen": preset["lr_search"].get("widen", DEFAULT_LR_WIDENINGS),
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
    """Runs a cell makes unless its search widens (each widening adds one)."""
    if cell["reason"]:
        return 0
    return len(cell["lrs"]) + len(cell["seeds"]) - 1


def widened_lr(tried: list[float], side: str) -> float:
    """The candidate one grid step beyond the ``side`` ('largest' or 'smallest') edge of the rates
    ``tried``: the step is the ratio between the edge and its neighbour, and the result is rounded
    (in log scale) to the nearest of 1, 2, 3 or 5 × a power of ten (0.1 after 0.03 → 0.3;
    0.003 before 0.01 → 0.001; 0.3 after 0.1 → 1) unless rounding would not move past the edge."""
    values = sorted(set(tried))
    if len(values) < 2:
        raise ValueError("widening needs at least two tried learning rates")
    edge, neighbour = (values[-1], values[-2]) if side == "largest" else (values[0], values[1])
    raw = edge * (edge / neighbour)
    decade = math.floor(math.log10(raw))
    nice = min((m * 10.0 ** e for e in (decade, decade + 1) for m in (1, 2, 3, 5)),
               key=lambda v: abs(math.log(v / raw)))
    nice = float(f"{nice:.12g}")  # 3 × 10^-3 as 0.003, not 0.0030000000000000005
    beyond = nice > edge if side == "largest" else nice < edge
    return nice if beyond and nice not in values else raw


def lr_edge(search: list[dict], chosen: dict | None) -> str | None:
    """'largest' / 'smallest' when no tried candidate lies beyond the chosen rate on that side
    (a candidate beyond that diverged brackets it: the rate is then not at the edge); None for a
    rate inside the tried range or a one-candidate grid."""
    tried = [r["lr"] for r in search]
    if chosen is None or len(set(tried)) < 2:
        return None
    if chosen["lr"] == max(tried):
        return "largest"
    if chosen["lr"] == min(tried):
        return "smallest"
    return None


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

#: Per run: the test split's labelled count and most frequent class's share, which the report's
#: chance level needs and a summary does not hold.
TASK_STATS_FILE = "task_stats.json"


def run_label(cfg: TrainConfig) -> str:
    return f"{cfg.task} {cfg.model} {cfg.method} lr={cfg.lr:g} seed={cfg.seed}"


def test_label_stats(task) -> dict:
    """Labelled test items and the most frequent class's share of them (the accuracy of always
    answering that class: the chance level of an imbalanced test split)."""
    y = task.test.tensors[1].reshape(-1)
    y = y[y >= 0]
    n = int(y.numel())
    majority = float(torch.bincount(y.long()).max()) / n if n else None
    return {"test_labels": n, "majority_fraction": majority, "num_classes": task.num_classes}


class EpochHook:
    """The harness's ``on_epoch_end`` for a compare run: the alignment probe (if any), the
    progress notice, and the test split's label statistics (written once per run folder).
    Nothing here draws random numbers, so the run is the one it would be without the hook."""

    def __init__(self, probe, notify, stats_path: Path):
        self.probe, self.notify, self.stats_path = probe, notify, stats_path

    def __call__(self, epoch: int, learner, task) -> None:
        if not self.stats_path.exists():
            atomic_write_json(self.stats_path, test_label_stats(task))
        if self.probe is not None:
            self.probe(epoch, learner, task)
        if self.notify and epoch > 0:
            self.notify("epoch", epoch)


class Runner:
    """Runs (or reads back) single runs into OUT/runs/<name>/ and returns their outcomes."""

    def __init__(self, out: Path, *, wandb=None, wandb_project="temporal_sigprop",
                 wandb_group=None, progress=True, keep_going=False, alignment_batches=2,
                 notify=None):
        self.out, self.progress, self.keep_going = Path(out), progress, keep_going
        self.wandb, self.wandb_project, self.wandb_group = wandb, wandb_project, wandb_group
        self.alignment_batches = alignment_batches
        #: ``notify(event, *args)``: "start" (label, epochs) when a run begins training and
        #: "epoch" (epoch,) after each of its epochs — what the comparison's progress lines show
        self.notify = notify

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
        started = time.perf_counter()
        if not cached:
            if self.notify:
                self.notify("start", run_label(cfg), cfg.epochs)
            summary = self._train(cfg, folder, alignment_epochs)
        outcome = self._outcome(cfg, folder, summary, role, cached)
        outcome["wall_seconds"] = 0.0 if cached else time.perf_counter() - started
        return outcome

    def _train(self, cfg: TrainConfig, folder: Path, alignment_epochs: list[int]) -> dict:
        probe = (AlignmentProbe(folder / "alignment.jsonl", alignment_epochs,
                                self.alignment_batches, cfg.batch_size)
                 if alignment_epochs else None)
        hook = EpochHook(probe, self.notify, folder / TASK_STATS_FILE)
        try:
            # looked up on the module so tests (and tools) can observe/replace it; every run
            # of the matrix resumes by design, so a fresh start is not announced
            with run_files.quiet_fresh_starts():
                return harness.run_training(cfg, on_epoch_end=hook)
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
            stats = _read_json(folder / TASK_STATS_FILE) or {}
            outcome["test_labels"] = stats.get("test_labels")
            outcome["majority_fraction"] = stats.get("majority_fraction")
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


def _seed_configs(cell: dict, lr: float) -> list[TrainConfig]:
    return [dataclasses.replace(cell["base"], lr=lr, seed=seed) for seed in cell["seeds"][1:]]


def _mark_chosen(search: list[dict]) -> dict | None:
    chosen = _select_lr(search)
    for outcome in search:
        outcome["chosen"] = chosen is not None and outcome is chosen
    return chosen


class CellSearch:
    """One cell's runs, decided as their outcomes arrive — the same rule whether runs go one
    after another or in worker processes:

    1. the learning-rate grid with the first seed;
    2. if the best candidate (validation accuracy) is at the edge of the rates tried, one more
       candidate one grid step beyond that edge (``widened_lr``), then the choice is made again;
       at most ``cell["widen"]`` such candidates, the same bound for every method. A pair whose
       choice is still at the edge afterwards is "not tuned" (the report says so and names no
       winner from it);
    3. the other seeds at the chosen rate.

    ``start()`` and ``record()`` return the runs to launch next as ``(role, slot, config)``.
    """

    def __init__(self, cell: dict):
        self.cell = cell
        self.search: list[dict | None] = []
        self.seed_runs: list[dict | None] = []
        self.widened: list[float] = []
        self.outstanding = 0
        self.refused = False  # a size the learner refuses: the other candidates would be too
        self.done = bool(cell["reason"])

    def start(self) -> list[tuple[str, int, TrainConfig]]:
        if self.done:
            return []
        lrs = self.cell["lrs"]
        self.search = [None] * len(lrs)
        self.outstanding = len(lrs)
        return [("search", i, dataclasses.replace(self.cell["base"], lr=lr))
                for i, lr in enumerate(lrs)]

    def record(self, role: str, slot: int, outcome: dict) -> list[tuple[str, int, TrainConfig]]:
        self.outstanding -= 1
        if role == "seed":
            self.seed_runs[slot] = {**outcome, "chosen": True}
            self.done = self.outstanding == 0
            return []
        self.search[slot] = outcome
        if outcome["status"] in ("n/a", "oom"):
            self.refused = True
        if self.outstanding:
            return []
        chosen = None if self.refused else _mark_chosen(self.search)
        if chosen is None:  # refused, or every candidate diverged/failed: no seed runs
            self.done = True
            return []
        side = lr_edge(self.search, chosen)
        if side and len(self.widened) < self.cell["widen"]:
            lr = widened_lr([r["lr"] for r in self.search], side)
            self.widened.append(lr)
            self.search.append(None)
            self.outstanding = 1
            return [("search", len(self.search) - 1, dataclasses.replace(self.cell["base"], lr=lr))]
        configs = _seed_configs(self.cell, chosen["lr"])
        self.seed_runs = [None] * len(configs)
        self.outstanding = len(configs)
        self.done = not configs
        return [("seed", j, cfg) for j, cfg in enumerate(configs)]

    def runs(self) -> list[dict]:
        return [r for r in self.search + self.seed_runs if r is not None]

    def remaining(self) -> int:
        """Runs still to finish as planned now (a later widening may add one)."""
        if self.done:
            return 0
        if not self.search:
            return planned_runs(self.cell)
        if self.seed_runs:
            return self.outstanding
        return self.outstanding + len(self.cell["seeds"]) - 1


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return (f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}")


class _MatrixBar(tqdm):
    """The whole comparison's line: tqdm's bar with this module's own clock text (elapsed and
    the estimate of the time left, which tqdm's rate-based ETA gets wrong when runs differ in
    cost by 100×)."""

    clock = ""

    @property
    def format_dict(self):
        return {**super().format_dict, "clock": self.clock}


class Progress:
    """The comparison's progress: one line for the whole matrix (runs done of total, elapsed,
    an estimate of the time left) above one line per running training (its name and epoch).

    The estimate: each run still to go is expected to take as long as the finished runs of its
    own cell (same task, model and method: their cost differs mostly by those), else of its
    task, else of all finished runs; runs read back from an earlier compare do not count. The
    sum, less what the running ones have already spent, is divided by the jobs running at once.
    """

    def __init__(self, searches: list[CellSearch], *, jobs: int, desc: str, enabled: bool,
                 after: str = ""):
        self.searches, self.jobs = searches, jobs
        self.after = after  # what follows the runs (the bench), whose time is not estimated
        self.enabled = enabled
        disable = None if enabled else True
        self.started_at = time.perf_counter()
        self.durations: dict[tuple, list[float]] = {}
        self.running: dict[object, dict] = {}  # token → {ci, since, slot}
        # a worker's notices travel apart from its result and may arrive after it
        self.ended: set = set()
        self.cached = 0
        self.done = 0
        self.bar = _MatrixBar(total=self.total(), desc=desc, unit="run", position=0,
                              disable=disable, dynamic_ncols=True,
                              bar_format="{desc}: {n_fmt}/{total_fmt} runs |{bar}| {clock}")
        self.lines = [tqdm(total=1, position=i + 1, leave=False, disable=disable,
                           dynamic_ncols=True, bar_format="  {desc}") for i in range(jobs)]
        self.free = list(range(jobs))
        self.refresh()

    def total(self) -> int:
        return self.done + sum(s.remaining() for s in self.searches)

    def _key(self, ci: int, depth: int) -> tuple:
        cell = self.searches[ci].cell
        return (cell["task"], cell["model"], cell["method"])[:depth]

    def estimate(self, ci: int) -> float | None:
        for depth in (3, 1, 0):
            key = self._key(ci, depth)
            values = [d for k, ds in self.durations.items() if k[:depth] == key for d in ds]
            if values:
                return statistics.fmean(values)
        return None

    def eta(self) -> float | None:
        now = time.perf_counter()
        work = 0.0
        for ci, search in enumerate(self.searches):
            left = search.remaining() - sum(r["ci"] == ci for r in self.running.values())
            if left > 0:
                each = self.estimate(ci)
                if each is None:
                    return None
                work += left * each
        for run in self.running.values():
            each = self.estimate(run["ci"])
            if each is None:
                return None
            work += max(each - (now - run["since"]), 0.0)
        return work / max(1, min(self.jobs, len(self.running) or self.jobs))

    def refresh(self) -> None:
        elapsed = time.perf_counter() - self.started_at
        self.bar.total = self.total()
        self.bar.n = self.done
        read_back = f" ({self.cached} read back)" if self.cached else ""
        remaining = self.bar.total - self.done
        eta = ("done" if remaining == 0 else
               f"about {_clock(self.eta())} left{', ' + self.after if self.after else ''}")
        self.bar.clock = f"elapsed {_clock(elapsed)}, {eta}{read_back}"
        self.bar.refresh()

    def event(self, token, ci: int, event: str, *args) -> None:
        """A run's notice: 'start' (label, epochs) or 'epoch' (epoch,)."""
        if token in self.ended:
            return
        if event == "start":
            label, epochs = args
            slot = self.free.pop(0) if self.free else None
            self.running[token] = {"ci": ci, "since": time.perf_counter(), "slot": slot,
                                   "epochs": epochs, "label": label}
            if slot is not None:
                self.lines[slot].set_description_str(f"{label}: epoch 0/{epochs}")
        elif event == "epoch" and token in self.running:
            run = self.running[token]
            if run["slot"] is not None:
                self.lines[run["slot"]].set_description_str(
                    f"{run['label']}: epoch {args[0]}/{run['epochs']}")
        self.refresh()

    def finished(self, token, ci: int, outcome: dict) -> None:
        run = self.running.pop(token, None)
        if token is not None:
            self.ended.add(token)
        if run is not None and run["slot"] is not None:
            self.lines[run["slot"]].set_description_str("")
            self.free.append(run["slot"])
            self.free.sort()
        self.done += 1
        if outcome.get("cached"):
            self.cached += 1
        elif outcome.get("wall_seconds") is not None and outcome["status"] != "n/a":
            self.durations.setdefault(self._key(ci, 3), []).append(outcome["wall_seconds"])

    def close(self) -> None:
        self.refresh()
        for line in self.lines:
            line.close()
        self.bar.close()


def run_cells(cells: list[dict], runner: Runner, jobs: int = 1, *, progress: bool = True,
              desc: str = "compare", after: str = "") -> list[list[dict]]:
    """Every cell's runs (see ``CellSearch``). ``jobs > 1`` runs that many trainings at once in
    worker processes (search runs of all cells first; a cell's next runs as soon as the outcomes
    they depend on are in)."""
    searches = [CellSearch(c) for c in cells]
    bar = Progress(searches, jobs=max(1, jobs), desc=desc, enabled=progress, after=after)
    try:
        if jobs > 1:
            _run_parallel(searches, runner, bar, jobs)
        else:
            _run_serial(searches, runner, bar)
    finally:
        bar.close()
    return [s.runs() for s in searches]


def _run_serial(searches: list[CellSearch], runner: Runner, bar: Progress) -> None:
    for ci, search in enumerate(searches):
        queue = search.start()
        while queue:
            role, slot, cfg = queue.pop(0)
            if role == "search" and search.refused:
                # the size, not the learning rate, is refused: every candidate would be too
                search.done = True
                break
            token = (ci, role, slot)
            runner.notify = lambda event, *args, _t=token, _ci=ci: bar.event(_t, _ci, event, *args)
            outcome = runner.run(cfg, role, search.cell["alignment_epochs"] if role == "search"
                                 else [])
            new = search.record(role, slot, outcome)
            bar.finished(token, ci, outcome)
            queue.extend(new)
            bar.refresh()
    runner.notify = None


_WORKER_QUEUE = None


def _init_worker(queue) -> None:
    global _WORKER_QUEUE
    _WORKER_QUEUE = queue


def _worker_run(runner_kwargs: dict, cfg: TrainConfig, role: str, alignment_epochs, token) -> dict:
    """One run in a worker process (its own Runner; no inner progress bars). Its notices go
    back to the parent's progress lines through the queue the pool was started with."""
    queue = _WORKER_QUEUE
    notify = None if queue is None else (lambda event, *args: queue.put((token, event, args)))
    return Runner(**runner_kwargs, notify=notify).run(cfg, role, alignment_epochs)


def _run_parallel(searches: list[CellSearch], runner: Runner, bar: Progress, jobs: int) -> None:
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    kwargs = {**runner.kwargs(), "progress": False}
    # spawn, not fork: a forked child inherits torch's thread pools in an undefined state
    context = multiprocessing.get_context("spawn")
    notices = context.Queue()
    pending: dict = {}

    def submit(ci, launches):
        for role, slot, cfg in launches:
            token = (ci, role, slot)
            align = searches[ci].cell["alignment_epochs"] if role == "search" else []
            pending[pool.submit(_worker_run, kwargs, cfg, role, align, token)] = token

    def drain():
        while True:
            try:
                token, event, args = notices.get_nowait()
            except queue_mod.Empty:
                return
            bar.event(token, token[0], event, *args)

    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_init_worker,
                             initargs=(notices,)) as pool:
        try:
            for ci, search in enumerate(searches):
                submit(ci, search.start())
            while pending:
                done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                drain()
                for future in done:
                    token = pending.pop(future)
                    ci, role, slot = token
                    outcome = future.result()
                    submit(ci, searches[ci].record(role, slot, outcome))
                    bar.finished(token, ci, outcome)
                bar.refresh()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


# ============================================================================ aggregation


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(cell: dict, runs: list[dict]) -> dict:
    """One row of the results: the chosen setting's seeds, their mean ± std and costs."""
    search = [r for r in runs if r["role"] == "search"]
    tried = [r["lr"] for r in search] or list(cell["lrs"])
    out = {"task": cell["task"], "model": cell["model"], "method": cell["method"],
           "loss_at": cell["base"].loss_at, "lr_candidates": tried, "lr_grid": list(cell["lrs"]),
           "lr_widened": [lr for lr in tried if lr not in cell["lrs"]],
           "lr_widen_limit": cell.get("widen", 0), "seeds": cell["seeds"],
           "options": cell["base"].options, "method_options": _resolved_options(cell)}
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
    # still at the edge after the widenings the preset allows: the search did not bracket the
    # rate, so this pair is "not tuned" (the report names no winner from it)
    out["lr_at_edge"] = lr_edge(search, next((r for r in search if r.get("chosen")), chosen[0]))
    out["lr_tuned"] = out["lr_at_edge"] is None
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
    out["num_classes"] = first.get("num_classes")
    out["sizes"] = {k: first.get(k) for k in ("hidden", "layers", "batch_size", "threads", "device")}
    out["test_labels"] = first.get("test_labels")
    out["majority_fraction"] = first.get("majority_fraction")
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


def _resolved_options(cell: dict) -> dict:
    """Every option value the method ran with, its defaults included (the report quotes them,
    e.g. fwdgrad's number of tangents)."""
    if incompatibility(cell["method"], cell["model"]):
        return dict(cell["base"].options)
    try:
        return dataclasses.asdict(build_options(learner_class(cell["method"]),
                                                dict(cell["base"].options)))
    except (ConfigError, TypeError):
        return dict(cell["base"].options)


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
    _remove_stale_temporaries(out)
    atomic_write_json(out / "preset.json", preset)
    preset_hash = hashlib.sha256(json.dumps(preset, sort_keys=True).encode()).hexdigest()[:8]
    group = f"compare-{preset['name']}-{_slug(out.resolve().name)}-{preset_hash}"
    cells = plan(preset)
    runner = Runner(out, wandb=wandb, wandb_project=wandb_project, wandb_group=group,
                    progress=progress, keep_going=keep_going,
                    alignment_batches=(preset["alignment"] or {}).get("batches", 0))
    started, load_start = time.perf_counter(), _load_average()
    started_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    per_cell = run_cells(cells, runner, jobs, progress=progress,
                         desc=f"compare {preset['name']}",
                         after="then the bench" if bench and preset.get("bench") and not bench_csv
                         else "")
    runs_seconds = time.perf_counter() - started
    rows = [aggregate(cell, runs) for cell, runs in zip(cells, per_cell)]
    all_runs = [r for runs in per_cell for r in runs]
    trained = sum(not r["cached"] for r in all_runs)

    threads = preset["defaults"].get("threads", TrainConfig.threads)
    bench_rows, bench_source = _bench_rows(preset, out, bench_csv, bench, progress, threads)
    wall = time.perf_counter() - started
    results = {
        "preset": preset,
        "command": command or reproduce_command(preset, out),
        "environment": environment(threads=threads, with_git=True),
        "counts": {"runs": len(all_runs), "trained": trained, "cached": len(all_runs) - trained,
                   "jobs": jobs, "widened": sum(len(r.get("lr_widened") or []) for r in rows)},
        # this invocation's own machine and clock (not the preset's text): what the header shows
        "timing": {"started": started_at, "wall_seconds": wall, "runs_seconds": runs_seconds,
                   "bench_seconds": wall - runs_seconds, "jobs": jobs, "threads": threads,
                   "usable_cores": usable_cores(), "cpu_count": os.cpu_count(),
                   "load_average_start": load_start, "load_average_end": _load_average(),
                   "train_seconds_sum": sum(r.get("wall_seconds") or 0.0 for r in all_runs)},
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


def _load_average() -> list[float] | None:
    """1-, 5- and 15-minute load averages (None where the OS has none): how busy the machine was."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


#: What a compare writes beside its runs (each atomically, through a ``.NAME.*.tmp`` file).
REPORT_FILES = ("preset.json", "results.json", "results.csv", "report.md", "report.html")


def _remove_stale_temporaries(out: Path) -> None:
    """Remove the temporaries a compare killed mid-write left (``io.atomic_write_bytes``); this
    run rewrites every report file. Only the compare's own names: ``out`` may hold other files."""
    patterns = [(out, f".{name}.*.tmp") for name in REPORT_FILES]
    patterns += [(out / "bench", f".{name}.*.tmp") for name in ("bench.csv", "bench.json")]
    patterns += [(folder, ".*.png.*.tmp") for folder in (out / "plots", out / "bench" / "plots")]
    for folder, pattern in patterns:
        for stale in folder.glob(pattern):
            try:
                stale.unlink()
            except OSError:
                pass


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
# The flags are declared torch-free in subcommands.py (so `tsp compare --help` answers at once).
from .subcommands import add_compare_parser  # noqa: E402,F401 - re-exported


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
