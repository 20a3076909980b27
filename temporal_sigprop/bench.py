"""``tsp bench``: how each method's cost grows with sequence length and width.

    tsp bench --model gru --hidden 32 --batch-size 8 --lengths 16 64 256 1024 4096 --out runs/bench

For one model, every method (default: all registered) trains one batch of random data at each
point of two sweeps — sequence length T (hidden fixed) and hidden size (T fixed) — and reports,
per point, with the same code the harness uses (``temporal_sigprop.measure``):

- ``time_per_step_ms``: median wall time of a few ``train_batch`` calls, divided by T;
- ``training_memory_bytes``: peak live bytes autograd saved beyond parameters and input, plus the
  learner's own state (``learner.state_bytes``) — the definition in docs/design.md;
- ``flops_per_step``: counted by ``torch.utils.flop_counter`` (matmuls/convolutions), divided by T;

and the ratios of each to BPTT at the same point, measured in this run. A point that cannot be
measured is kept and marked: ``n/a`` (the registry's compatibility table, or the learner refused
the size at construction), ``oom`` (allocation failed, or the memory predicted from the previous
point exceeds ``--memory-budget-gb``), ``too slow`` (one batch took, or is predicted from the
growth between earlier points to take, longer than ``--time-budget``), ``error`` (the learner
raised; the message is kept). Larger points of a method that was too slow, out of memory or in
error are marked the same way without running.

Absolute times depend on the machine and on what else runs on it; compare ratios from one run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import statistics
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import ConfigError, IncompatibleError
from .io import atomic_write_bytes, atomic_write_json
from .learner import LearnerConfig
from .measure import count_flops, timer, train_batch_memory
from .models import make_model
from .config import BenchConfig  # noqa: F401 - declared torch-free there; re-exported
from .registry import METHOD_NAMES, incompatibility, make_learner

BENCH_COLUMNS = (
    "sweep", "model", "method", "steps", "hidden", "layers", "batch_size", "status", "reason",
    "time_per_step_ms", "time_ratio_bptt", "training_memory_bytes", "memory_ratio_bptt",
    "saved_tensor_peak_bytes", "learner_state_bytes", "flops_per_step", "flops_ratio_bptt",
    "params", "learner_params", "timed_repeats", "device", "threads",
)
STATUSES = ("ok", "n/a", "oom", "too slow", "error")


def _is_oom(err: BaseException) -> bool:
    if isinstance(err, MemoryError):
        return True
    oom_type = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(err, oom_type):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def measure_point(cfg: BenchConfig, method: str, steps: int, hidden: int) -> dict:
    """Build a fresh model and learner and measure one point (may raise; see ``run_bench``)."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, (steps, cfg.input_size), hidden, cfg.layers, cfg.classes).to(device)
    learner = make_learner(method, model, LearnerConfig(loss_at=cfg.loss_at),
                           **cfg.method_options.get(method, {}))
    x = torch.randn(cfg.batch_size, steps, cfg.input_size, device=device)
    y = torch.randint(0, cfg.classes, (cfg.batch_size,), device=device)
    # 1) memory (also the warm-up; the meter's hooks slow it, so it is not timed)
    with timer(device) as warm:
        saved, own, _ = train_batch_memory(learner, x, y)
    row = {"saved_tensor_peak_bytes": saved, "learner_state_bytes": own,
           "training_memory_bytes": saved + own,
           "params": sum(p.numel() for p in model.parameters()),
           "learner_params": sum(p.numel() for p in learner.own_parameters()),
           "warm_seconds": warm["seconds"]}
    if warm["seconds"] > cfg.time_budget:
        return {**row, "status": "too slow",
                "reason": f"one batch took {warm['seconds']:.1f} s > budget {cfg.time_budget:g} s"}
    # 2) FLOPs, counted (the counter's dispatch slows it: not timed either)
    flops, _ = count_flops(learner.train_batch, x, y)
    row["flops_per_step"] = flops / steps
    # 3) time: median of a few plain calls, stopping early when the budget is spent
    times = []
    for _ in range(max(1, cfg.repeats)):
        with timer(device) as elapsed:
            learner.train_batch(x, y)
        times.append(elapsed["seconds"])
        if sum(times) > cfg.time_budget:
            break
    row["time_per_step_ms"] = 1000 * statistics.median(times) / steps
    row["timed_repeats"] = len(times)
    row["seconds_per_batch"] = statistics.median(times)
    return {**row, "status": "ok", "reason": ""}


def _predict(history: list[tuple[int, float]], size: int, floor_exponent: float) -> float | None:
    """Extrapolate a cost to ``size`` from the last two measured (size, cost) points, with a
    power law whose exponent is at least ``floor_exponent``."""
    if not history:
        return None
    (s1, c1) = history[-1]
    exponent = floor_exponent
    if len(history) >= 2:
        s0, c0 = history[-2]
        if c0 > 0 and c1 > 0 and s1 != s0:
            exponent = max(floor_exponent, math.log(c1 / c0) / math.log(s1 / s0))
    return c1 * (size / s1) ** exponent


def _sweep_points(cfg: BenchConfig):
    for steps in sorted(cfg.lengths):
        yield "length", steps, cfg.hidden
    for hidden in sorted(cfg.hiddens):
        yield "hidden", cfg.hidden_length, hidden


def run_bench(cfg: BenchConfig, out: str | os.PathLike | None = None, progress: bool = True,
              echo=print) -> list[dict]:
    """Measure every (method, point); write OUT/bench.csv, OUT/bench.json and OUT/plots/*.png."""
    for method in cfg.methods:
        if method not in METHOD_NAMES:
            raise ConfigError(f"unknown method {method!r}; choose one of: {', '.join(METHOD_NAMES)}")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    points = list(_sweep_points(cfg))
    rows: list[dict] = []
    bar = tqdm(total=len(points) * len(cfg.methods), desc="bench", disable=None if progress else True)
    # Points outer, methods inner: every method is measured at a point before the next point,
    # so a change of machine load between the two hurts the ratios at most one point, not a
    # whole method's block. Rows are put back in method order at the end.
    state = {method: dict(reason=incompatibility(method, cfg.model),
                          blocked={},  # sweep -> (status, reason) once it fails
                          time_hist={"length": [], "hidden": []},
                          mem_hist={"length": [], "hidden": []})
             for method in cfg.methods}
    for sweep, steps, hidden in points:
        for method in cfg.methods:
            reason, blocked = state[method]["reason"], state[method]["blocked"]
            time_hist, mem_hist = state[method]["time_hist"], state[method]["mem_hist"]
            size = steps if sweep == "length" else hidden
            base = {"sweep": sweep, "model": cfg.model, "method": method, "steps": steps,
                    "hidden": hidden, "layers": cfg.layers, "batch_size": cfg.batch_size,
                    "device": cfg.device, "threads": torch.get_num_threads()}
            bar.set_postfix_str(f"{method} {sweep} T={steps} H={hidden}")
            if reason:
                row = {"status": "n/a", "reason": reason}
            elif sweep in blocked:
                status, why = blocked[sweep]
                row = {"status": status, "reason": f"not run: {why} at a smaller size"}
            else:
                # Time grows at least linearly in T and in hidden (quadratically for matmuls, but
                # the per-step overhead dominates small sizes: the measured exponent decides).
                t_est = _predict(time_hist[sweep], size, 1.0)
                m_est = _predict(mem_hist[sweep], size, 1.0 if sweep == "length" else 0.0)
                if t_est is not None and t_est > cfg.time_budget:
                    row = {"status": "too slow", "reason": f"predicted {t_est:.0f} s per batch "
                           f"> budget {cfg.time_budget:g} s (from the smaller sizes)"}
                elif m_est is not None and m_est > cfg.memory_budget_gb * 2**30:
                    row = {"status": "oom", "reason": f"predicted {m_est / 2**30:.1f} GiB "
                           f"> budget {cfg.memory_budget_gb:g} GiB (from the smaller sizes)"}
                else:
                    try:
                        row = measure_point(cfg, method, steps, hidden)
                    except IncompatibleError as err:
                        row = {"status": "n/a", "reason": str(err)}
                    except ImportError:
                        raise  # a method that does not import is a bug, never a data point
                    except Exception as err:  # noqa: BLE001 - kept visible as a marked point
                        status = "oom" if _is_oom(err) else "error"
                        row = {"status": status, "reason": f"{type(err).__name__}: {err}"[:300]}
                        if status == "error":
                            blocked[sweep] = ("error", row["reason"])
                    finally:
                        if cfg.device.startswith("cuda"):
                            torch.cuda.empty_cache()
                if row["status"] == "ok":
                    time_hist[sweep].append((size, row["seconds_per_batch"]))
                    mem_hist[sweep].append((size, max(row["training_memory_bytes"], 1)))
                elif row["status"] in ("too slow", "oom"):
                    blocked[sweep] = (row["status"], row["reason"])
            rows.append({**dict.fromkeys(BENCH_COLUMNS), **base, **row})  # every column, always
            bar.update()
    bar.close()
    order = {method: i for i, method in enumerate(cfg.methods)}
    rows.sort(key=lambda r: order[r["method"]])  # stable: points stay in sweep order
    add_ratios(rows)
    if out is not None:
        write_bench(rows, cfg, out)
    if echo:
        echo(format_table(rows))
    return rows


def add_ratios(rows: list[dict]) -> None:
    """Each measured point divided by BPTT at the same point (same run, same machine)."""
    ref = {(r["sweep"], r["steps"], r["hidden"]): r for r in rows
           if r["method"] == "bptt" and r["status"] == "ok"}
    for r in rows:
        b = ref.get((r["sweep"], r["steps"], r["hidden"]))
        for key, ratio in (("time_per_step_ms", "time_ratio_bptt"),
                           ("training_memory_bytes", "memory_ratio_bptt"),
                           ("flops_per_step", "flops_ratio_bptt")):
            value = r.get(key)
            r[ratio] = (value / b[key] if b is not None and r["status"] == "ok" and value is not None
                        and b.get(key) else None)


def read_bench_csv(path) -> list[dict]:
    """Rows of a bench.csv with numbers parsed back (empty cells → None)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k, v in raw.items():
                if v == "":
                    row[k] = None
                elif k in ("sweep", "model", "method", "status", "reason", "device"):
                    row[k] = v
                else:
                    number = float(v)
                    row[k] = int(number) if number.is_integer() and k in (
                        "steps", "hidden", "layers", "batch_size", "params", "learner_params",
                        "timed_repeats", "threads", "training_memory_bytes",
                        "saved_tensor_peak_bytes", "learner_state_bytes") else number
            rows.append(row)
    return rows


def rows_to_csv(rows: list[dict], columns=BENCH_COLUMNS) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buffer.getvalue()


def write_bench(rows: list[dict], cfg: BenchConfig, out) -> None:
    from . import plots

    out = Path(out)
    atomic_write_bytes(out / "bench.csv", rows_to_csv(rows).encode("utf-8"))
    atomic_write_json(out / "bench.json", {"config": cfg.key(), "rows": rows})
    what = f"{cfg.model}, {cfg.layers} layer(s), batch {cfg.batch_size}, {cfg.device}, " \
           f"{torch.get_num_threads()} thread(s)"
    plots.scaling(rows, "length", f"cost against sequence length ({what}, hidden {cfg.hidden})",
                  out / "plots" / "scaling_length.png")
    plots.scaling(rows, "hidden", f"cost against hidden size ({what}, T = {cfg.hidden_length})",
                  out / "plots" / "scaling_hidden.png")


def _fmt(value, kind) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value:.3g}"
    if kind == "bytes":
        return f"{value / 2**20:.3g}"
    if kind == "ratio":
        return f"×{value:.2g}"
    return f"{value:.3g}"


def format_table(rows: list[dict]) -> str:
    """Plain-text table of the run: per point, time/step, memory, FLOPs and ratios to BPTT."""
    lines = [f"{'sweep':<7}{'T':>6}{'H':>6}  {'method':<9}{'status':<9}{'ms/step':>9}{'×bptt':>8}"
             f"{'MiB':>10}{'×bptt':>8}{'FLOPs/step':>12}{'×bptt':>8}"]
    for r in rows:
        lines.append(
            f"{r['sweep']:<7}{r['steps']:>6}{r['hidden']:>6}  {r['method']:<9}{r['status']:<9}"
            f"{_fmt(r.get('time_per_step_ms'), 'ms'):>9}{_fmt(r.get('time_ratio_bptt'), 'ratio'):>8}"
            f"{_fmt(r.get('training_memory_bytes'), 'bytes'):>10}"
            f"{_fmt(r.get('memory_ratio_bptt'), 'ratio'):>8}"
            f"{_fmt(r.get('flops_per_step'), 'n'):>12}{_fmt(r.get('flops_ratio_bptt'), 'ratio'):>8}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- CLI
# The flags are declared torch-free in subcommands.py (so `tsp bench --help` answers at once).
from .subcommands import add_bench_parser  # noqa: E402,F401 - re-exported


def bench_config_from(settings: dict) -> BenchConfig:
    """A BenchConfig from a dict (a preset's ``bench`` section), refusing unknown keys."""
    names = {f.name for f in dataclasses.fields(BenchConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise ConfigError(f"unknown bench setting(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(names))}")
    return BenchConfig(**settings)


def _cmd_bench(args) -> int:
    settings: dict = {}
    if args.preset:
        from .compare import load_preset

        settings.update(load_preset(args.preset).get("bench") or {})
    settings.update({f.name: getattr(args, f.name) for f in dataclasses.fields(BenchConfig)
                     if f.name != "method_options" and getattr(args, f.name) is not None})
    cfg = bench_config_from(settings)
    run_bench(cfg, args.out, progress=args.progress)
    print(f"\nwrote {Path(args.out) / 'bench.csv'} and {Path(args.out) / 'plots'}/*.png "
          f"(threads: {torch.get_num_threads()}; compare the ratios, not absolute times)")
    return 0
