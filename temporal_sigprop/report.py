"""The comparison report, rendered from ``results.json`` alone (``tsp compare`` writes it).

    write_report(results, out)   →  OUT/report.md, OUT/report.html, OUT/plots/*.png,
                                    OUT/results.json, OUT/results.csv

The report is built once as a small list of blocks (headings, paragraphs, tables, figures) and
rendered twice: Markdown (figures linked from ``plots/``) and one self-contained HTML file (the
same figures embedded as base64 PNG). Every sentence of the summary at the top is generated from
the numbers in ``results.json`` — nothing is hard-coded — and the rule for naming a winner is the
one stated in the report: the best mean must beat the next by more than the seed spread (the
mean ± std intervals of the two do not overlap, with at least two seeds each).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from . import plots
from .io import atomic_write_json, atomic_write_text

# ============================================================================ formatting


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def acc_text(mean, std) -> str:
    """``92.1 ± 0.8`` (percent); without a std (one seed) just the mean."""
    if mean is None:
        return "–"
    return f"{pct(mean)} ± {pct(std)}" if std is not None else pct(mean)


def human_bytes(b) -> str:
    if b is None:
        return "–"
    b = float(b)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(b) < 1024 or unit == "TiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.3g} {unit}"
        b /= 1024
    return str(b)


def si(x) -> str:
    if x is None:
        return "–"
    x = float(x)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.3g}"


def ms(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def ratio(x) -> str:
    return "–" if x is None else f"×{x:.2g}" if x < 10 else f"×{x:.0f}"


def lr_text(x) -> str:
    return f"{x:g}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_")[:60]


# ============================================================================ document model


@dataclass
class Cell:
    text: str
    bold: bool = False
    muted: bool = False


@dataclass
class Table:
    headers: list
    rows: list
    caption: str = ""
    group_starts: tuple = ()  # indices of rows that begin a new task/model group (a rule above)


@dataclass
class Figure:
    path: str  # relative to OUT
    caption: str


def _cell(c) -> Cell:
    return c if isinstance(c, Cell) else Cell(str(c))


# ============================================================================ analysis


#: Task families whose name has two parts, ``archive:SET`` (options follow a second colon).
ARCHIVE_PREFIXES = ("uea", "ucr")


def task_name(spec: str) -> str:
    """The task's name in a spec, without its options: ``cue_recall`` in
    ``cue_recall:delay=3``, ``uea:JapaneseVowels`` in ``uea:JapaneseVowels:val_fraction=0.25``;
    a ``file:PATH`` spec is its own name. (Parsed here, not by ``tasks``, so that rendering a
    report imports no data code.)"""
    head, _, rest = spec.partition(":")
    if head in ARCHIVE_PREFIXES and rest:
        return f"{head}:{rest.split(':', 1)[0]}"
    return spec if head == "file" else head


def task_labels(specs) -> dict[str, str]:
    """Short names for task specs: the task's name (``cue_recall``, ``uea:JapaneseVowels``)
    where no other spec of the report has that name, else the whole spec. The settings table maps
    each label to its spec."""
    specs = list(dict.fromkeys(specs))
    names = [task_name(s) for s in specs]
    return {s: (n if names.count(n) == 1 else s) for s, n in zip(specs, names)}


def groups(cells: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """Cells grouped by (task, model), in preset order, with the task's short label."""
    labels = task_labels(c["task"] for c in cells)
    order: dict[tuple, list] = {}
    for c in cells:
        order.setdefault((c["task"], c["model"]), []).append(c)
    return [(labels[t], m, cs) for (t, m), cs in order.items()]


def tuned(cell: dict) -> bool:
    """False for a finished pair whose chosen learning rate is still at the edge of the rates it
    tried after the widenings the preset allows (compare.CellSearch): its accuracy may be far
    from its best, so it is never a winner and no claim is made against it."""
    if "lr_tuned" in cell:
        return cell["lr_tuned"] is not False
    return not cell.get("lr_at_edge")  # results written before widening: an edge is not tuned


def _finished(cells: list[dict]) -> list[dict]:
    return sorted((c for c in cells if c["status"] == "ok"
                   and c.get("test_accuracy_mean") is not None),
                  key=lambda c: -c["test_accuracy_mean"])


def winner(cells: list[dict]) -> dict:
    """Best and runner-up by mean test accuracy among the tuned pairs, and whether the best is
    ahead by more than the seed spread (non-overlapping mean ± std, at least two seeds each).

    A pair that is not tuned (``tuned``) is never the best; if one has a higher mean than the
    best tuned pair, nothing is decided. A best that is at chance (``chance``) is not a winner.
    """
    done = _finished(cells)
    ok = [c for c in done if tuned(c)]
    untuned = [c for c in done if not tuned(c)]
    if not ok:
        why = ("no method finished" if not done else
               "no finished method was tuned (each chose a learning rate at the edge of its "
               "widened grid)")
        return {"best": None, "second": None, "decided": False, "why": why}
    best = ok[0]
    above = [c for c in untuned if c["test_accuracy_mean"] >= best["test_accuracy_mean"]]
    if len(ok) == 1:
        return {"best": best, "second": None, "decided": False, "why": "only one method finished"
                if not untuned else "only one finished method was tuned"}
    second = ok[1]
    if best.get("test_accuracy_std") is None or second.get("test_accuracy_std") is None:
        return {"best": best, "second": second, "decided": False,
                "why": "fewer than two seeds: no spread to compare against"}
    gap = (best["test_accuracy_mean"] - best["test_accuracy_std"]) - \
          (second["test_accuracy_mean"] + second["test_accuracy_std"])
    if gap > 0 and above:
        return {"best": best, "second": second, "decided": False,
                "why": f"{', '.join(c['method'] for c in above)} (not tuned) has a mean as high"}
    if gap > 0 and chance(best)["at_chance"]:
        return {"best": best, "second": second, "decided": False, "why": "the best is at chance"}
    return {"best": best, "second": second, "decided": gap > 0,
            "why": "" if gap > 0 else "within the seed spread"}


def _clearly_below(cells: list[dict], best: dict | None) -> list[dict]:
    """Tuned finished methods whose mean + std lies under the best's mean − std (≥ 2 seeds
    each). Pairs that were not tuned are left out: a claim against them would be about the
    search, not the method."""
    if best is None or best.get("test_accuracy_std") is None:
        return []
    floor = best["test_accuracy_mean"] - best["test_accuracy_std"]
    below = [c for c in cells if c is not best and c["status"] == "ok" and tuned(c)
             and c.get("test_accuracy_std") is not None
             and c["test_accuracy_mean"] + c["test_accuracy_std"] < floor]
    return sorted(below, key=lambda c: -c["test_accuracy_mean"])


#: Where a run records neither its test split's size nor its class balance (runs made before
#: task_stats.json existed), the margin around 1/classes used instead of a binomial one.
FALLBACK_CHANCE_MARGIN = 0.02


def chance(cell: dict) -> dict:
    """Whether a finished pair is at chance: its mean test accuracy is no more than ``margin``
    above the chance level.

    Chance level: the share of the test split's most frequent class (what always answering that
    class scores; 1/classes on a balanced split), else 1/classes. Margin: the larger of the seed
    spread (std) and two binomial standard errors of the chance level over the labelled test
    items, sqrt(p(1 − p)/n).
    """
    mean = cell.get("test_accuracy_mean")
    classes = cell.get("num_classes")
    if cell.get("status") != "ok" or mean is None or not classes:
        return {"at_chance": False, "level": None, "margin": None, "basis": None}
    level = cell.get("majority_fraction")
    basis = "the most frequent test class's share"
    if level is None:
        level, basis = 1.0 / classes, f"1/{classes} classes"
    elif abs(level - 1.0 / classes) < 1e-9:
        basis = f"1/{classes} classes, a balanced test split"
    n = cell.get("test_labels")
    margins = [cell.get("test_accuracy_std") or 0.0]
    if n:
        margins.append(2.0 * math.sqrt(level * (1.0 - level) / n))
    else:
        margins.append(FALLBACK_CHANCE_MARGIN)
    margin = max(margins)
    return {"at_chance": mean <= level + margin, "level": level, "margin": margin,
            "basis": basis, "test_labels": n}


def _option(cell: dict, name: str, default=None):
    return (cell.get("method_options") or {}).get(name, (cell.get("options") or {}).get(name,
                                                                                       default))


def expected_fwdgrad_cosine(cell: dict) -> tuple[float, int, int] | None:
    """(expected cosine, K, P) of a forward gradient with K standard-Gaussian tangents over P
    parameters with the true gradient: of order sqrt(K/P) for K ≪ P (the estimate keeps the
    gradient's component along K random directions out of P; the rest is noise). A simulation
    with random gradients gives 0.025 for P = 1000, K = 1 and 0.087 for K = 8 (sqrt(K/P): 0.032,
    0.089)."""
    k = _option(cell, "tangents")
    p = (cell.get("cost") or {}).get("params")
    if cell.get("method") != "fwdgrad" or not k or not p:
        return None
    return math.sqrt(k / p), int(k), int(p)


def _last_cosine(cell: dict) -> float | None:
    points = [p for p in cell.get("alignment") or [] if p.get("cosine") is not None]
    return points[-1]["cosine"] if points else None


#: A cosine with the BPTT gradient at or above this means the method's update points where
#: BPTT's does: failing to learn is then not its approximation's fault.
CLOSE_TO_BPTT = 0.9


def chance_reason(cell: dict) -> str:
    """The likely reason a pair is at chance, from what the method is and what the run measured."""
    method = cell["method"]
    steps = (cell.get("cost") or {}).get("steps")
    measured = _last_cosine(cell)
    seen = f"; measured cosine with the BPTT gradient {measured:.3f}" if measured is not None else ""
    lr = cell.get("chosen_lr")
    grid = ", ".join(lr_text(x) for x in cell.get("lr_candidates") or [])
    if method != "bptt" and measured is not None and measured >= CLOSE_TO_BPTT:
        return (f"its update is close to the BPTT gradient (cosine {measured:.3f}), so the "
                f"method's approximation is not what failed: the budget or the learning rate "
                f"(chosen {lr:g} of {{{grid}}}) did not suffice here — compare bptt's row")
    if method == "fwdgrad":
        exp = expected_fwdgrad_cosine(cell)
        if exp:
            cos, k, p = exp
            return (f"a forward gradient from K = {k} random tangent(s) is unbiased but its "
                    f"variance grows with the parameter count: over P = {p:,} parameters its "
                    f"expected cosine with the true gradient is about √(K/P) ≈ {cos:.3f}{seen}, "
                    f"so each update is mostly noise (more tangents, --tangents, or far more "
                    f"updates would be needed)")
        return "a forward gradient's variance grows with the parameter count" + seen
    if method == "tbptt":
        k = _option(cell, "k")
        if k and steps and k < steps:
            return (f"truncation at k = {k} of T = {steps} steps: no credit reaches an input "
                    f"more than {k} steps before a loss{seen}")
    if method == "eprop":
        return ("e-prop keeps each unit's own eligibility trace and drops credit through the "
                "recurrent weights of other units" + seen)
    if method == "snap1":
        return ("SnAp-1 keeps only the diagonal of the influence (a parameter's effect on its "
                "own unit) and drops credit through other units" + seen)
    if method == "sigprop":
        one_step = ("; with traces off each layer's update is a one-step gradient, so nothing "
                    "teaches a layer to keep information for a label that arrives many steps "
                    "after its cue (see --traces)"
                    if _option(cell, "traces") is False else "")
        return ("sigprop learns from layer-local losses on the projected target, not from the "
                "task loss's gradient" + (one_step or "; at these settings they did not give a "
                                          "classifier") + seen)
    return (f"no candidate learning rate learned at this budget (chosen {lr:g} of {{{grid}}}); "
            f"more epochs or a larger model may be needed"
            if lr is not None else "did not learn at this budget")


def _ref(cells: list[dict]) -> dict | None:
    return next((c for c in cells if c["method"] == "bptt" and c["status"] == "ok"), None)


def _cost_ratio(cell, ref, key):
    if not ref or cell["status"] != "ok":
        return None
    a, b = (cell.get("cost") or {}).get(key), (ref.get("cost") or {}).get(key)
    return a / b if a is not None and b else None


def _placement_text(loss_at: str) -> str:
    return {"last": "at the last step", "every": "at every step"}.get(loss_at, loss_at)


def summary_sentences(results: dict) -> list[str]:
    """The plain-language summary, generated from the numbers."""
    cells = results["cells"]
    preset = results["preset"]
    out = []
    methods = preset["methods"]
    labels = task_labels(c["task"] for c in cells)
    tasks = list(dict.fromkeys(labels[c["task"]] for c in cells))
    models = sorted({c["model"] for c in cells})
    placements = sorted({c["loss_at"] for c in cells})
    budget = len(cells[0].get("lr_grid") or cells[0]["lr_candidates"]) if cells else 0
    seeds = preset["seeds"]
    counts = results.get("counts", {})
    out.append(
        f"{len(methods)} method(s) ({', '.join(methods)}) on {len(tasks)} task(s) "
        f"({', '.join(tasks)}; sizes and options in the settings table) with model(s) "
        f"{', '.join(models)}; the loss "
        f"{' / '.join(_placement_text(p) for p in placements)} for every method; "
        f"{len(seeds)} seed(s) per setting; each method's learning rate chosen on validation "
        f"from {budget} candidate(s) with seed {seeds[0]}. "
        f"{counts.get('trained', 0)} run(s) trained now, {counts.get('cached', 0)} read back "
        f"from earlier.")
    for task, model, group in groups(cells):
        w = winner(group)
        where = f"On {task} ({model})"
        best, second = w["best"], w["second"]
        if best is None:
            out.append(f"{where}: {w['why']}.")
        elif w["decided"]:
            out.append(
                f"{where}: {best['method']} is ahead — {acc_text(best['test_accuracy_mean'], best['test_accuracy_std'])}% "
                f"test accuracy vs {second['method']} {acc_text(second['test_accuracy_mean'], second['test_accuracy_std'])}%, "
                f"more than the seed spread.")
        elif second is None:
            out.append(f"{where}: {w['why']} — {best['method']} "
                       f"{acc_text(best['test_accuracy_mean'], best['test_accuracy_std'])}%.")
        else:
            out.append(
                f"{where}: no method is ahead by more than the seed spread"
                if w["why"] == "within the seed spread" else
                f"{where}: no winner is named ({w['why']})")
            out[-1] += (
                f"; highest means "
                f"{best['method']} {acc_text(best['test_accuracy_mean'], best['test_accuracy_std'])}% and "
                f"{second['method']} {acc_text(second['test_accuracy_mean'], second['test_accuracy_std'])}%.")
        below = ([] if best is None or chance(best)["at_chance"] else
                 [c for c in _clearly_below(group, best) if c is not second or not w["decided"]])
        if below:
            out[-1] += (f" Below {best['method']} by more than the seed spread: " + ", ".join(
                f"{c['method']} {acc_text(c['test_accuracy_mean'], c['test_accuracy_std'])}%"
                for c in below) + ".")
    out.extend(_lr_search_sentences(cells, labels))
    out.extend(_chance_sentences(cells, labels))
    na = [c for c in cells if c["status"] == "n/a"]
    if na:
        by_pair: dict = {}
        for c in na:
            by_pair.setdefault((c["method"], c["model"]), []).append(labels[c["task"]])
        every = len(tasks)
        out.append(f"{len(na)} method × model × task combination(s) could not run (n/a; each "
                   f"reason is in the accuracy table): " + "; ".join(
                       f"{m} × {model} on " + ("every task" if len(ts) == every and every > 1
                                              else ", ".join(ts))
                       for (m, model), ts in by_pair.items()) + ".")
    bad = [c for c in cells if c["status"] in ("diverged", "error")]
    if bad:
        out.append("Did not finish: " + "; ".join(
            f"{c['method']} on {labels[c['task']]} ({c['reason']})" for c in bad) + ".")
    for task, model, group in groups(cells):
        ref = _ref(group)
        if not ref:
            continue
        mem = [(c["method"], _cost_ratio(c, ref, "training_memory_bytes")) for c in group
               if c["method"] != "bptt"]
        mem = [(m, r) for m, r in mem if r is not None]
        if mem:
            out.append(f"Training memory relative to BPTT on {task} ({model}, T = "
                       f"{ref['cost'].get('steps')}): " + ", ".join(f"{m} {ratio(r)}" for m, r in mem)
                       + ".")
        break  # one task is enough for the summary; the cost table has all
    out.extend(_scaling_sentences(results.get("bench", {}).get("rows") or []))
    align = []
    for task, model, group in groups(cells):
        for c in group:
            points = [p for p in c.get("alignment") or [] if p.get("cosine") is not None]
            if points and c["method"] != "bptt":
                align.append(f"{c['method']} {points[-1]['cosine']:.2f} (epoch {points[-1]['epoch']})")
        if align:
            out.append(f"Cosine between each method's update and the exact BPTT gradient, last "
                       f"measured epoch, on {task} ({model}): " + ", ".join(align) + ".")
            break
    return out


def _lr_search_sentences(cells: list[dict], labels: dict) -> list[str]:
    """What the learning-rate search did beyond its grid: widened pairs, and pairs left at the
    edge ("not tuned": no winner is named from them and no claim is made against them)."""
    done = [c for c in cells if c["status"] == "ok"]
    widened = [c for c in done if c.get("lr_widened")]
    untuned = [c for c in done if not tuned(c)]
    out = []
    if widened:
        out.append(f"{len(widened)} of {len(done)} finished pairs chose a learning rate at the "
                   f"edge of their grid and searched one grid step further, the same rule for "
                   f"every method: " + "; ".join(
                       f"{c['method']} on {labels[c['task']]} ({c['model']}) +"
                       f"{', '.join(lr_text(x) for x in c['lr_widened'])} → {lr_text(c['chosen_lr'])}"
                       for c in widened) + ".")
    if untuned:
        limit = max((c.get("lr_widen_limit") or 0) for c in untuned)
        after = (f"after {limit} widening(s)" if limit else "(the preset allows no widening)")
        out.append(f"Not tuned — the chosen learning rate is still at the edge of the rates "
                   f"tried {after}, so these pairs are excluded from winners: " + ", ".join(
                       f"{c['method']} on {labels[c['task']]} ({c['model']}, "
                       f"{c['lr_at_edge']} {lr_text(c['chosen_lr'])})" for c in untuned) + ".")
    return out


def _chance_sentences(cells: list[dict], labels: dict) -> list[str]:
    out = []
    for task, model, group in groups(cells):
        low = [c for c in group if chance(c)["at_chance"]]
        if not low:
            continue
        done = [c for c in group if c["status"] == "ok"]
        level = chance(low[0])
        head = (f"On {task} ({model}) every finished method is at chance"
                if len(low) == len(done) and len(done) > 1 else f"At chance on {task} ({model})")
        out.append(f"{head} (chance level {pct(level['level'])}%, {level['basis']}; margin: seed "
                   f"spread or two binomial standard errors): " + "; ".join(
                       f"{c['method']} {acc_text(c['test_accuracy_mean'], c['test_accuracy_std'])}"
                       f"% — {chance_reason(c)}" for c in low) + ".")
    return out


def _count(items) -> dict:
    counts: dict = {}
    for item in items:
        counts[item] = counts.get(item, 0) + 1
    return counts


def _scaling_sentences(rows: list[dict]) -> list[str]:
    rows = [r for r in rows if r.get("sweep") == "length"]
    if not rows:
        return []
    growth, stopped = [], []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["steps"])
        ok = [r for r in mine if r["status"] == "ok" and r.get("training_memory_bytes")]
        if len(ok) >= 2:
            growth.append(f"{method} ×{ok[-1]['training_memory_bytes'] / ok[0]['training_memory_bytes']:.3g}"
                          f" (T {ok[0]['steps']}→{ok[-1]['steps']})")
        failed = [r for r in mine if r["status"] != "ok"]
        if failed and failed[0]["status"] != "n/a":
            stopped.append(f"{method} {failed[0]['status']} from T = {failed[0]['steps']}")
        elif failed and len(failed) == len(mine):
            stopped.append(f"{method} n/a")
    out = []
    if growth:
        out.append("Scaling with sequence length (bench): training memory grew " +
                   ", ".join(growth) + ".")
    ref = [r for r in rows if r["method"] == "bptt" and r["status"] == "ok"]
    if ref:
        steps = max(r["steps"] for r in ref)
        at = [r for r in rows if r["steps"] == steps and r["method"] != "bptt"
              and r["status"] == "ok" and r.get("time_ratio_bptt") is not None]
        if at:
            r0 = at[0]
            out.append(f"Time per step relative to BPTT at T = {steps} (bench: {r0['model']} "
                       f"hidden {r0['hidden']}, batch {r0['batch_size']}, {r0['threads']} "
                       f"thread(s), {r0['device']}; measured in one go): " + ", ".join(
                           f"{r['method']} {ratio(r['time_ratio_bptt'])}" for r in at) + ".")
    if stopped:
        out.append("Not measured in the bench: " + ", ".join(stopped) + ".")
    return out


def _point(r: dict) -> str:
    return f"T = {r['steps']}, hidden {r['hidden']}"


def ratio_ranges(rows: list[dict]) -> list[str]:
    """Per method, the lowest and highest time-per-step ratio to BPTT over every measured bench
    point, each with the sizes it was measured at: a ratio holds at its sizes, not in general
    (at small sizes per-step overheads dominate, at large ones the arithmetic)."""
    out = []
    ok = [r for r in rows if r["status"] == "ok" and r.get("time_ratio_bptt") not in (None, "")
          and r["method"] != "bptt"]
    for method in dict.fromkeys(r["method"] for r in ok):
        mine = sorted((r for r in ok if r["method"] == method),
                      key=lambda r: float(r["time_ratio_bptt"]))
        low, high = mine[0], mine[-1]
        if low is high:
            out.append(f"{method} {ratio(float(low['time_ratio_bptt']))} at {_point(low)}")
        else:
            out.append(f"{method} from {ratio(float(low['time_ratio_bptt']))} ({_point(low)}) to "
                       f"{ratio(float(high['time_ratio_bptt']))} ({_point(high)})")
    return out


def run_header(results: dict) -> str:
    """This invocation's machine, parallelism and clock (never the preset's text)."""
    env = results.get("environment") or {}
    timing = results.get("timing") or {}
    counts = results.get("counts") or {}
    cpu = env.get("cpu_name") or env.get("device_name") or "unknown CPU"
    cores = timing.get("usable_cores")
    total = timing.get("cpu_count") or env.get("cpu_count")
    machine = (f"{cpu}, {cores} usable of {total} logical cores" if cores and total and cores != total
               else f"{cpu}, {total or '?'} logical cores")
    gpu = next((r.get("device_name") for r in results.get("runs", [])
                if str(r.get("device", "")).startswith("cuda")), None)
    threads = timing.get("threads", env.get("threads"))
    jobs = timing.get("jobs", counts.get("jobs", 1))
    parts = [f"This run: {machine}" + (f", GPU {gpu}" if gpu else ""),
             f"{threads} intra-op thread(s) per training, {jobs} training(s) at once"]
    wall = timing.get("wall_seconds")
    if wall is None:
        parts.append("wall time not recorded (results written before this report recorded it)")
    else:
        bench = timing.get("bench_seconds")
        runs = timing.get("runs_seconds")
        parts.append(f"wall time {_duration(wall)}: {counts.get('runs', 0)} runs "
                     f"({counts.get('trained', 0)} trained, {counts.get('cached', 0)} read back "
                     f"from earlier)" + (f" in {_duration(runs)}" if runs is not None else "")
                     + (f", then the bench in {_duration(bench)}" if bench and bench >= 1 else "")
                     + " (report writing not included)")
    load = [x for x in (timing.get("load_average_start"), timing.get("load_average_end")) if x]
    if len(load) == 2:
        parts.append(f"load average (1 min) {load[0][0]:g} at the start, {load[1][0]:g} at the end")
    if timing.get("started"):
        parts.append(f"started {timing['started']}")
    return "; ".join(parts) + "."


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    m, s = divmod(seconds, 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _load_note(results: dict) -> str:
    """A warning when the machine was busier than its cores while this compare ran: the bench's
    times then share the cores with other work."""
    timing = results.get("timing") or {}
    cores = timing.get("usable_cores")
    loads = [x[0] for x in (timing.get("load_average_start"), timing.get("load_average_end")) if x]
    if not cores or not loads or max(loads) <= cores:
        return ""
    return (f" The machine was busier than its {cores} usable core(s) during this compare (load "
            f"average {', '.join(f'{x:g}' for x in loads)} at the start and end), so these times "
            f"shared the cores with other work: read ratios between neighbouring points as noisy.")


def measured_at(cells: list[dict]) -> list[str]:
    """Per task × model, the sizes the cost table's ratios were measured at."""
    out = []
    for task, model, group in groups(cells):
        ref = _ref(group) or next((c for c in group if c["status"] == "ok"), None)
        if ref is None:
            continue
        size = ref.get("sizes") or {}
        cost = ref.get("cost") or {}
        out.append(f"{task} ({model}): hidden {size.get('hidden', '?')} × {size.get('layers', '?')} "
                   f"layer(s), batch {size.get('batch_size', '?')}, T = {cost.get('steps', '?')}, "
                   f"{size.get('threads', '?')} thread(s), {size.get('device', '?')}")
    return out


def alignment_notes(cells: list[dict]) -> list[str]:
    """What each method's cosine with the BPTT gradient can and cannot mean, with this run's
    numbers where there are any."""
    methods = {c["method"] for c in cells if any(p.get("cosine") is not None
                                                  for p in c.get("alignment") or [])}
    notes = []
    if "bptt" in methods:
        notes.append("bptt against itself: the probe's check (1.000).")
    if "rtrl" in methods:
        notes.append("rtrl computes the same gradient forward in time: ≈ 1 up to rounding.")
    approx = [m for m in ("tbptt", "snap1", "eprop") if m in methods]
    if approx:
        notes.append(f"{', '.join(approx)}: approximations of the gradient (truncated in time, or "
                     f"dropping credit through other units); 1 − cosine measures what they leave "
                     f"out.")
    fwd = sorted((expected_fwdgrad_cosine(c) for c in cells
                  if c["method"] == "fwdgrad" and expected_fwdgrad_cosine(c)), key=lambda e: e[2])
    if fwd:
        ks = sorted({k for _, k, _ in fwd})
        k_text = ", ".join(map(str, ks))
        if len(fwd) == 1 or fwd[0][2] == fwd[-1][2]:
            cos, _, p = fwd[0]
            where = f"P = {p:,} parameters its expected cosine is of order √(K/P) ≈ {cos:.3f}"
        else:
            where = (f"P = {fwd[0][2]:,} to {fwd[-1][2]:,} parameters (by task and model) its "
                     f"expected cosine is of order √(K/P) ≈ {fwd[-1][0]:.3f} to {fwd[0][0]:.3f}")
        notes.append(f"fwdgrad: unbiased but noisy — with K = {k_text} random tangent(s) over "
                     f"{where}; a cosine near that is the estimator working as designed (the "
                     f"dashed line in its colour).")
    sig = [c for c in cells if c["method"] == "sigprop"]
    if "sigprop" in methods:
        values = [p["cosine"] for c in sig for p in c.get("alignment") or []
                  if p.get("cosine") is not None]
        seen = (f" (here from {min(values):.2f} to {max(values):.2f})" if values else "")
        notes.append(f"sigprop is not a gradient estimator: each layer follows the gradient of its "
                     f"own local loss on a projected target, not of the BPTT loss, so its update "
                     f"need not align with the BPTT gradient. A cosine near 0 or below"
                     f"{seen} is expected and says nothing about whether it learns — its accuracy "
                     f"does.")
    return notes


# ============================================================================ sections


def accuracy_table(cells: list[dict]) -> Table:
    rows, starts = [], []
    for task, model, group in groups(cells):
        starts.append(len(rows))
        w = winner(group)
        for c in group:
            tried = ", ".join(lr_text(x) for x in sorted(c["lr_candidates"]))
            lr = f"{lr_text(c['chosen_lr']) if c.get('chosen_lr') is not None else '–'} of {{{tried}}}"
            if c.get("lr_schedule") and c["lr_schedule"] != "constant":
                lr += f", {c['lr_schedule']}"
            if c.get("weight_decay"):
                lr += f", wd {c['weight_decay']:g}"
            if c["status"] == "ok":
                star = w["decided"] and w["best"] is c
                test = Cell(acc_text(c["test_accuracy_mean"], c["test_accuracy_std"]) + (" ★" if star else ""),
                            bold=star)
                val = acc_text(c["val_accuracy_mean"], c["val_accuracy_std"])
                seeds = f"{c['n_ok']}/{len(c['seeds'])}"
                notes = [c["reason"]] if c.get("reason") else []
                level = chance(c)
                if level["at_chance"]:
                    test.text += " (at chance)"
                    notes.append(f"at chance (level {pct(level['level'])}%, margin "
                                 f"{pct(level['margin'])}): {chance_reason(c)}")
                if c.get("lr_widened"):
                    notes.append("grid widened by " + ", ".join(lr_text(x) for x in c["lr_widened"]))
                if not tuned(c):
                    notes.append(f"not tuned: the chosen lr is still the {c['lr_at_edge']} "
                                 f"candidate; excluded from winners")
                note = "; ".join(notes)
            elif c["status"] == "n/a":
                test = Cell(f"n/a — {c['reason']}", muted=True)
                val, seeds, note = "–", "–", ""
            else:
                test = Cell(c["reason"] or c["status"], muted=True)
                val, seeds, note = "–", "0/" + str(len(c["seeds"])), ""
            rows.append([task, model, c["method"], lr, test, val, seeds, note])
    return Table(["task", "model", "method", "lr (chosen of candidates)", "test accuracy %",
                  "val accuracy %", "seeds ok", "note"], rows,
                 "Test accuracy at the epoch of best validation accuracy, mean ± std over seeds "
                 "(sample std). ★ = ahead of the next method by more than the seed spread "
                 "(the two mean ± std intervals do not overlap; needs ≥ 2 seeds each; never a pair "
                 "that is not tuned or is at chance). At chance: the mean is within the seed "
                 "spread or two binomial standard errors of the most frequent test class's share. "
                 "An lr chosen at the edge of the rates tried adds one more candidate a grid step "
                 "beyond it (a bounded number of times); a pair still at the edge is not tuned. "
                 "The lr column lists every candidate tried and "
                 "adds a method's lr schedule and weight decay where they are not constant and 0.",
                 tuple(starts))


def cost_table(cells: list[dict]) -> Table:
    rows, starts = [], []
    for task, model, group in groups(cells):
        starts.append(len(rows))
        ref = _ref(group)
        for c in group:
            cost = c.get("cost") or {}
            if c["status"] != "ok":
                rows.append([task, model, c["method"], Cell(c["status"], muted=True)] + ["–"] * 9)
                continue
            params = f"{si(cost.get('params'))}"
            if cost.get("learner_params"):
                params += f" + {si(cost['learner_params'])}"
            spike = "–" if cost.get("spike_rate") is None else f"{cost['spike_rate']:.3f}"
            rows.append([task, model, c["method"], ms(cost.get("time_per_step_ms")),
                         ratio(_cost_ratio(c, ref, "time_per_step_ms")),
                         human_bytes(cost.get("training_memory_bytes")),
                         ratio(_cost_ratio(c, ref, "training_memory_bytes")),
                         human_bytes(cost.get("cuda_peak_bytes")) if cost.get("cuda_peak_bytes") else "–",
                         si(cost.get("flops_per_step")),
                         ratio(_cost_ratio(c, ref, "flops_per_step")), params,
                         human_bytes(cost.get("learner_state_bytes")), spike])
    return Table(["task", "model", "method", "ms / step", "× bptt", "training memory", "× bptt",
                  "CUDA peak", "FLOPs / step", "× bptt", "params (model + learner)",
                  "learner state", "spike rate"], rows,
                 "Time per step: wall time of a training batch / T, median over seeds. "
                 "Training memory: peak "
                 "live bytes autograd saved beyond parameters and input, plus the learner's own "
                 "state (largest over seeds). FLOPs counted by torch.utils.flop_counter "
                 "(matmuls and convolutions). Spike rate: mean firing rate (lif only).",
                 tuple(starts))


def bench_tables(rows: list[dict]) -> list[Table]:
    tables = []
    for sweep, key, label in (("length", "steps", "T"), ("hidden", "hidden", "hidden")):
        mine = [r for r in rows if r.get("sweep") == sweep]
        if not mine:
            continue
        sizes = sorted({r[key] for r in mine})
        body = []
        for method in dict.fromkeys(r["method"] for r in mine):
            line = [method]
            for size in sizes:
                r = next((r for r in mine if r["method"] == method and r[key] == size), None)
                if r is None:
                    line.append("–")
                elif r["status"] == "ok":
                    rel = r.get("time_ratio_bptt")
                    rel = "" if rel in (None, "") or method == "bptt" else f" ({ratio(float(rel))})"
                    line.append(f"{ms(r.get('time_per_step_ms'))} ms{rel} · "
                                f"{human_bytes(r.get('training_memory_bytes'))} · "
                                f"{si(r.get('flops_per_step'))}")
                else:
                    line.append(Cell({"oom": "out of memory"}.get(r["status"], r["status"]),
                                     muted=True))
            body.append(line)
        fixed = mine[0]
        other = (f"hidden {fixed['hidden']}" if sweep == "length" else f"T = {fixed['steps']}")
        tables.append(Table(["method"] + [f"{label} = {s}" for s in sizes], body,
                            f"Per point: time per step (× BPTT's at the same point) · "
                            f"training memory · FLOPs per step "
                            f"({fixed['model']}, {other}, batch {fixed['batch_size']}, "
                            f"{fixed['device']}, {fixed['threads']} thread(s)). Reasons for the "
                            f"unmeasured points: below."))
    return tables


def bench_failures(rows: list[dict]) -> list[str]:
    seen, out = set(), []
    for r in rows:
        if r["status"] == "ok":
            continue
        key = (r["method"], r["sweep"], r["status"])
        if key in seen:
            continue
        seen.add(key)
        size = f"T = {r['steps']}" if r["sweep"] == "length" else f"hidden {r['hidden']}"
        out.append(f"{r['method']}, {r['sweep']} sweep from {size}: {r['status']} — {r['reason']}")
    return out


def alignment_table(cells: list[dict]) -> Table | None:
    epochs = sorted({p["epoch"] for c in cells for p in c.get("alignment") or []})
    if not epochs:
        return None
    rows, starts = [], []
    for task, model, group in groups(cells):
        starts.append(len(rows))
        for c in group:
            points = {p["epoch"]: p for p in c.get("alignment") or []}
            if c["status"] != "ok":
                rows.append([task, model, c["method"]] + [Cell(c["status"], muted=True)] * len(epochs))
                continue
            line = [task, model, c["method"]]
            for e in epochs:
                p = points.get(e)
                if p is None:
                    line.append("–")
                elif p.get("cosine") is None:
                    line.append(Cell(f"n/a — {p.get('reason')}", muted=True))
                else:
                    line.append(f"{p['cosine']:.3f}" + (f" ± {p['cosine_std']:.2f}"
                                                        if p.get("cosine_std") else ""))
            rows.append(line)
    return Table(["task", "model", "method"] + [f"epoch {e}" for e in epochs], rows,
                 "Cosine between the method's update direction (learner.gradient) and the exact "
                 "BPTT gradient of the same model on the same fixed training batches, on the "
                 "first seed's run at the chosen learning rate (mean ± std over batches; model "
                 "parameters both gradients name). Epoch 0 = initialisation. bptt against "
                 "itself is the check that the probe works (1.000).", tuple(starts))


def settings_table(results: dict) -> Table:
    preset = results["preset"]
    labels = task_labels(t["spec"] for t in preset["tasks"])
    rows = []
    for t in preset["tasks"]:
        settings = {**preset["defaults"], **t["overrides"]}
        text = ", ".join(f"{k}={v}" for k, v in settings.items())
        skip = "; ".join(f"{m}: {why}" for m, why in t["skip"].items())
        rows.append([labels[t["spec"]], t["spec"], ", ".join(t["models"]),
                     text or "harness defaults", skip or "–"])
    return Table(["task", "spec (name:options)", "models", "shared settings (every method)",
                  "skipped by the preset"], rows)


def method_table(results: dict) -> Table:
    preset = results["preset"]
    lrs = preset["lr_search"]["lrs"]
    rows = []
    for m in preset["methods"]:
        options = preset["method_options"].get(m, {})
        per_task = {t["spec"]: t["method_options"][m] for t in preset["tasks"]
                    if m in t["method_options"]}
        text = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        if per_task:
            text += "; " + "; ".join(f"{t}: " + ", ".join(f"{k}={v}" for k, v in o.items())
                                     for t, o in per_task.items())
        rows.append([m, ", ".join(lr_text(x) for x in lrs.get(m, lrs["default"])), text])
    return Table(["method", "learning-rate candidates", "options"], rows)


def environment_table(results: dict) -> Table:
    env = results.get("environment", {})
    runs = [r for r in results.get("runs", []) if r.get("device_name")]
    devices = sorted({r.get("device") for r in runs if r.get("device")}) or [env.get("device", "–")]
    gpu = next((r.get("device_name") for r in runs if str(r.get("device")).startswith("cuda")),
               None)
    device = ", ".join(devices) + (f" ({gpu})" if gpu else "")
    rows = [["device of the runs", device],
            ["CPU", env.get("cpu_name") or env.get("device_name") or "–"],
            ["torch / torchaudio", f"{env.get('torch_version')} / {env.get('torchaudio_version')}"],
            ["python", f"{env.get('python_version')} on {env.get('platform')}"],
            ["CPUs / intra-op threads", f"{env.get('cpu_count')} / {env.get('threads')}"],
            ["trainings at once (--jobs)", str((results.get("timing") or {}).get(
                "jobs", (results.get("counts") or {}).get("jobs", 1)))],
            ["wall time", _duration((results.get("timing") or {}).get("wall_seconds"))],
            ["git commit", (env.get("git_commit") or "unknown (not a git checkout or no commit)")
             + (" (with uncommitted changes)" if env.get("git_dirty") else "")],
            ["date (UTC)", env.get("date", "–")]]
    return Table(["", ""], rows)


# ============================================================================ figures


def make_figures(results: dict, out: Path) -> dict[str, list[Figure]]:
    """Write OUT/plots/*.png; returns the figures per section."""
    figs: dict[str, list[Figure]] = {"curves": [], "anytime": [], "alignment": [], "scaling": []}
    for task, model, group in groups(results["cells"]):
        slug = f"{_slug(task)}_{model}"
        placement = _placement_text(group[0]["loss_at"])
        name = f"plots/curves_{slug}.png"
        if plots.learning_curves(group, f"{task} — {model}: validation accuracy (mean ± std over "
                                        f"seeds, loss {placement})", out / name):
            figs["curves"].append(Figure(name, f"Learning curves on {task} ({model}): validation "
                                               f"accuracy against epoch and against training time."))
        name = f"plots/anytime_{slug}.png"
        if plots.anytime_curves(group, f"{task} — {model}: accuracy of the prediction at each "
                                       f"step (test, last epoch)", out / name):
            figs["anytime"].append(Figure(name, f"Anytime accuracy on {task} ({model}): the "
                                                f"prediction made after each step, scored against "
                                                f"the label (test split, model after the last "
                                                f"epoch, mean ± std over seeds)."))
        name = f"plots/alignment_{slug}.png"
        expected = {c["method"]: expected_fwdgrad_cosine(c)[0] for c in group
                    if expected_fwdgrad_cosine(c)}
        note = ("sigprop is not a gradient estimator: its layers follow local losses, not the "
                "BPTT loss, so a cosine near 0 is expected." if any(
                    c["method"] == "sigprop" and c.get("alignment") for c in group) else "")
        if plots.alignment_curves(group, f"{task} — {model}: alignment with the BPTT gradient",
                                  out / name, expected=expected, note=note):
            figs["alignment"].append(Figure(name, f"Gradient alignment on {task} ({model}): "
                                                  f"cosine with the exact BPTT gradient over "
                                                  f"training; see the notes above for what each "
                                                  f"method's value can mean."))
    rows = (results.get("bench") or {}).get("rows") or []
    if rows:
        r0 = rows[0]
        what = f"{r0['model']}, batch {r0['batch_size']}, {r0['device']}, {r0['threads']} thread(s)"
        for sweep, label in (("length", "sequence length"), ("hidden", "hidden size")):
            name = f"plots/scaling_{sweep}.png"
            if plots.scaling(rows, sweep, f"cost against {label} ({what})", out / name):
                figs["scaling"].append(Figure(
                    name, f"Training memory, time per step and FLOPs per step against {label} "
                          f"(log–log). Hollow markers on the top edge: points not measured "
                          f"(too slow, out of memory, n/a)."))
    return figs


# ============================================================================ document


def build_document(results: dict, figs: dict) -> list:
    preset = results["preset"]
    cells = results["cells"]
    doc: list = [("h1", f"temporal_sigprop comparison — preset “{preset['name']}”")]
    doc.append(("p", run_header(results)))
    if preset.get("description"):
        doc.append(("p", f"Preset “{preset['name']}”: {preset['description']}"))
    doc.append(("h2", "Summary"))
    doc.append(("ul", results["summary"]))
    doc.append(("p", "Reproduce with:"))
    doc.append(("pre", results["command"]))

    doc.append(("h2", "Accuracy"))
    doc.append(accuracy_table(cells))

    doc.append(("h2", "Learning curves"))
    doc.extend(("figure", f) for f in figs["curves"])
    if not figs["curves"]:
        doc.append(("p", "No finished runs to plot."))
    doc.append(("h2", "Accuracy along the sequence (anytime)"))
    placements = ", ".join(sorted({_placement_text(c['loss_at']) for c in cells}))
    doc.append(("p", f"Training placed the loss {placements}. With the loss at the last step only, "
                     f"early predictions are not trained and are expected near chance."))
    doc.extend(("figure", f) for f in figs["anytime"])

    doc.append(("h2", "Cost"))
    doc.append(cost_table(cells))
    jobs = (results.get("counts") or {}).get("jobs", 1)
    how = ("one after another" if jobs == 1 else
           f"{jobs} at a time (each sharing the machine with the others)")
    doc.append(("p", f"Times come from the training runs, executed {how} on one machine; with "
                     f"other processes running they are noisy — the scaling section measures all "
                     f"methods at the same points in one go. Absolute times mean something only "
                     f"on a named, otherwise idle device. The × bptt ratios hold at the sizes they "
                     f"were measured at, which are: " + "; ".join(measured_at(cells)) + "."))

    doc.append(("h2", "Scaling"))
    bench = results.get("bench") or {}
    rows = bench.get("rows") or []
    if rows:
        doc.append(("p", f"From tsp bench ({bench.get('source')}): one training batch of random "
                         f"data per point, every method on the same model; a point that cannot "
                         f"be measured is marked, not dropped."))
        ranges = ratio_ranges(rows)
        if ranges:
            doc.append(("p", "Time per step relative to BPTT over the bench's points (each ratio "
                             "holds at its own sizes; per-step overheads weigh most at small "
                             "widths and batches): " + "; ".join(ranges) + "."
                        + _load_note(results)))
        doc.extend(("figure", f) for f in figs["scaling"])
        doc.extend(bench_tables(rows))
        failures = bench_failures(rows)
        if failures:
            doc.append(("ul", failures))
    else:
        doc.append(("p", "Not measured in this report (no bench settings in the preset, or "
                         "--no-bench). Run `tsp bench` and pass --bench-csv to include it."))

    doc.append(("h2", "Gradient alignment"))
    table = alignment_table(cells)
    if table is None:
        doc.append(("p", "Not measured (the preset's alignment is off)."))
    else:
        doc.append(("p", "How to read the cosines:"))
        doc.append(("ul", alignment_notes(cells)))
        doc.extend(("figure", f) for f in figs["alignment"])
        doc.append(table)

    doc.append(("h2", "Settings"))
    doc.append(("p", "The same loss placement and the same number of learning-rate candidates "
                     "for every method; the learning rate is chosen on the validation split with "
                     f"seed {preset['seeds'][0]}, whose run at the chosen rate is also that seed's "
                     f"reported run; seeds: {', '.join(map(str, preset['seeds']))}."))
    doc.append(settings_table(results))
    doc.append(method_table(results))

    doc.append(("h2", "Environment"))
    doc.append(environment_table(results))
    doc.append(("p", "The resolved preset is saved as preset.json beside this report; every run's "
                     "folder (runs/) holds its config.json, metrics.jsonl, summary.json and "
                     "checkpoint."))
    return doc


# ============================================================================ renderers


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(doc: list) -> str:
    lines: list[str] = []
    for block in doc:
        if isinstance(block, Table):
            lines.append("| " + " | ".join(_md_escape(str(h)) for h in block.headers) + " |")
            lines.append("|" + "---|" * len(block.headers))
            for row in block.rows:
                cells = []
                for c in map(_cell, row):
                    text = _md_escape(c.text)
                    cells.append(f"**{text}**" if c.bold and text else text)
                lines.append("| " + " | ".join(cells) + " |")
            if block.caption:
                lines += ["", f"*{block.caption}*"]
            lines.append("")
            continue
        kind = block[0]
        if kind == "h1":
            lines += [f"# {block[1]}", ""]
        elif kind == "h2":
            lines += [f"## {block[1]}", ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "ul":
            lines += [f"- {item}" for item in block[1]] + [""]
        elif kind == "pre":
            lines += ["```", block[1], "```", ""]
        elif kind == "figure":
            f = block[1]
            lines += [f"![{f.caption}]({f.path})", "", f"*{f.caption}*", ""]
    return "\n".join(lines).rstrip() + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1150px; padding: 0 1em; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .88em; }
th, td { border: 1px solid #d0d0d0; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
tr.group td { border-top: 2px solid #888; }
td.muted { color: #777; font-style: italic; } td.bold { font-weight: 700; }
caption { caption-side: bottom; text-align: left; color: #555; font-size: .92em; padding-top: .4em; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { color: #555; font-size: .92em; }
pre { background: #f5f5f5; padding: .6em; overflow-x: auto; }
code { background: #f5f5f5; padding: 0 .2em; }
"""


def _inline_html(text: str) -> str:
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _cell_html(text: str) -> str:
    """Escaped cell text that may wrap after the separators of a task spec (a,b:c=d)."""
    return re.sub(r"([,:=])(?=\S)", r"\1<wbr>", html.escape(text))


def render_html(doc: list, out: Path, title: str) -> str:
    parts = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
             f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style></head><body>"]
    for block in doc:
        if isinstance(block, Table):
            parts.append("<table>")
            if block.caption:
                parts.append(f"<caption>{_inline_html(block.caption)}</caption>")
            if any(str(h) for h in block.headers):
                parts.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>"
                                                     for h in block.headers) + "</tr></thead>")
            parts.append("<tbody>")
            for index, row in enumerate(block.rows):
                cells = []
                for c in map(_cell, row):
                    cls = " ".join(k for k, on in (("bold", c.bold), ("muted", c.muted)) if on)
                    cells.append(f"<td class=\"{cls}\">{_cell_html(c.text)}</td>" if cls
                                 else f"<td>{_cell_html(c.text)}</td>")
                rule = " class=\"group\"" if index and index in block.group_starts else ""
                parts.append(f"<tr{rule}>" + "".join(cells) + "</tr>")
            parts.append("</tbody></table>")
            continue
        kind = block[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_inline_html(block[1])}</p>")
        elif kind == "ul":
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in block[1]) + "</ul>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "figure":
            f = block[1]
            data = base64.b64encode((out / f.path).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt=\"{html.escape(f.caption)}\" "
                         f"src=\"data:image/png;base64,{data}\"><figcaption>"
                         f"{html.escape(f.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ============================================================================ files

CSV_COLUMNS = ("task", "model", "method", "seed", "lr", "lr_schedule", "weight_decay", "role",
               "chosen", "status", "reason",
               "val_accuracy", "test_accuracy_at_best_val", "test_accuracy", "best_epoch",
               "epochs", "loss_at", "time_per_step_ms", "training_memory_bytes",
               "cuda_peak_bytes", "flops_per_step", "params", "learner_params", "spike_rate",
               "train_seconds", "run_dir")


def results_csv(results: dict) -> str:
    """One row per run, plus one row (no seed) per pair that could not run at all."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for r in results["runs"]:
        writer.writerow({k: "" if r.get(k) is None else r.get(k) for k in CSV_COLUMNS})
    for c in results["cells"]:
        if c["status"] == "n/a" and not c.get("runs") and not any(
                r["task"] == c["task"] and r["model"] == c["model"] and r["method"] == c["method"]
                for r in results["runs"]):
            writer.writerow({"task": c["task"], "model": c["model"], "method": c["method"],
                             "status": "n/a", "reason": c["reason"], "loss_at": c["loss_at"]})
    return buffer.getvalue()


def write_report(results: dict, out) -> None:
    """Write every output file of a compare into ``out`` (atomically, each file)."""
    out = Path(out)
    results["summary"] = summary_sentences(results)
    figs = make_figures(results, out)
    doc = build_document(results, figs)
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.csv", results_csv(results))
    atomic_write_text(out / "report.md", render_markdown(doc))
    title = f"temporal_sigprop comparison — {results['preset']['name']}"
    atomic_write_text(out / "report.html", render_html(doc, out, title))


def console_summary(results: dict, out) -> str:
    """What ``tsp compare`` prints at the end."""
    out = Path(out)
    lines = ["", *[f"• {s}" for s in results["summary"]], ""]
    for task, model, group in groups(results["cells"]):
        for c in group:
            text = (acc_text(c.get("test_accuracy_mean"), c.get("test_accuracy_std")) + " %"
                    if c["status"] == "ok" else f"{c['status']} — {c['reason']}")
            if c["status"] == "ok":
                flags = (["at chance"] if chance(c)["at_chance"] else []) + (
                    [f"not tuned (lr {lr_text(c['chosen_lr'])} at the {c['lr_at_edge']} edge)"]
                    if not tuned(c) else [])
                text += f"  [{'; '.join(flags)}]" if flags else ""
            lines.append(f"  {task:<16} {model:<8} {c['method']:<8} {text}")
    lines += ["", f"report: {out / 'report.html'} (and report.md, results.csv, results.json)"]
    return "\n".join(lines)
