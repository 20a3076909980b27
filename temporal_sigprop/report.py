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


def task_labels(specs) -> dict[str, str]:
    """Short names for task specs: the task's name (``cue_recall``) where no other spec of the
    report has that name, else the whole spec. The settings table maps each label to its spec."""
    specs = list(dict.fromkeys(specs))
    names = [s.split(":", 1)[0] for s in specs]
    return {s: (n if names.count(n) == 1 else s) for s, n in zip(specs, names)}


def groups(cells: list[dict]) -> list[tuple[str, str, list[dict]]]:
    """Cells grouped by (task, model), in preset order, with the task's short label."""
    labels = task_labels(c["task"] for c in cells)
    order: dict[tuple, list] = {}
    for c in cells:
        order.setdefault((c["task"], c["model"]), []).append(c)
    return [(labels[t], m, cs) for (t, m), cs in order.items()]


def winner(cells: list[dict]) -> dict:
    """Best and runner-up by mean test accuracy, and whether the best is ahead by more than the
    seed spread (non-overlapping mean ± std, at least two seeds each)."""
    ok = sorted((c for c in cells if c["status"] == "ok" and c.get("test_accuracy_mean") is not None),
                key=lambda c: -c["test_accuracy_mean"])
    if not ok:
        return {"best": None, "second": None, "decided": False, "why": "no method finished"}
    if len(ok) == 1:
        return {"best": ok[0], "second": None, "decided": False, "why": "only one method finished"}
    best, second = ok[0], ok[1]
    if best.get("test_accuracy_std") is None or second.get("test_accuracy_std") is None:
        return {"best": best, "second": second, "decided": False,
                "why": "fewer than two seeds: no spread to compare against"}
    gap = (best["test_accuracy_mean"] - best["test_accuracy_std"]) - \
          (second["test_accuracy_mean"] + second["test_accuracy_std"])
    return {"best": best, "second": second, "decided": gap > 0,
            "why": "" if gap > 0 else "within the seed spread"}


def _clearly_below(cells: list[dict], best: dict | None) -> list[dict]:
    """Finished methods whose mean + std lies under the best's mean − std (≥ 2 seeds each)."""
    if best is None or best.get("test_accuracy_std") is None:
        return []
    floor = best["test_accuracy_mean"] - best["test_accuracy_std"]
    below = [c for c in cells if c is not best and c["status"] == "ok"
             and c.get("test_accuracy_std") is not None
             and c["test_accuracy_mean"] + c["test_accuracy_std"] < floor]
    return sorted(below, key=lambda c: -c["test_accuracy_mean"])


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
    budget = len(cells[0]["lr_candidates"]) if cells else 0
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
            out.append(f"{where}: no method finished.")
        elif w["decided"]:
            out.append(
                f"{where}: {best['method']} is ahead — {acc_text(best['test_accuracy_mean'], best['test_accuracy_std'])}% "
                f"test accuracy vs {second['method']} {acc_text(second['test_accuracy_mean'], second['test_accuracy_std'])}%, "
                f"more than the seed spread.")
        elif second is None:
            out.append(f"{where}: only {best['method']} finished "
                       f"({acc_text(best['test_accuracy_mean'], best['test_accuracy_std'])}%).")
        else:
            out.append(
                f"{where}: no method is ahead by more than the seed spread"
                f"{'' if w['why'] == 'within the seed spread' else ' (' + w['why'] + ')'}; highest means "
                f"{best['method']} {acc_text(best['test_accuracy_mean'], best['test_accuracy_std'])}% and "
                f"{second['method']} {acc_text(second['test_accuracy_mean'], second['test_accuracy_std'])}%.")
        below = [c for c in _clearly_below(group, best) if c is not second or not w["decided"]]
        if below:
            out[-1] += (f" Below {best['method']} by more than the seed spread: " + ", ".join(
                f"{c['method']} {acc_text(c['test_accuracy_mean'], c['test_accuracy_std'])}%"
                for c in below) + ".")
    edge = [c for c in cells if c["status"] == "ok" and c.get("lr_at_edge")]
    if edge:
        out.append(f"{len(edge)} of {sum(c['status'] == 'ok' for c in cells)} finished pairs chose "
                   f"a learning rate at the edge of their candidates (a wider search might change "
                   f"their numbers): " + ", ".join(
                       f"{m} {side} on {n} task(s)" for (m, side), n in _count(
                           (c["method"], c["lr_at_edge"]) for c in edge).items()) + ".")
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
            out.append(f"Time per step relative to BPTT at T = {steps} (bench, measured in one "
                       f"go): " + ", ".join(f"{r['method']} {ratio(r['time_ratio_bptt'])}"
                                            for r in at) + ".")
    if stopped:
        out.append("Not measured in the bench: " + ", ".join(stopped) + ".")
    return out


# ============================================================================ sections


def accuracy_table(cells: list[dict]) -> Table:
    rows, starts = [], []
    for task, model, group in groups(cells):
        starts.append(len(rows))
        w = winner(group)
        for c in group:
            lr = (f"{lr_text(c['chosen_lr'])} of {{{', '.join(lr_text(x) for x in c['lr_candidates'])}}}"
                  if c.get("chosen_lr") is not None
                  else f"– of {{{', '.join(lr_text(x) for x in c['lr_candidates'])}}}")
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
                if c.get("lr_at_edge"):
                    notes.append(f"chosen lr is the {c['lr_at_edge']} candidate")
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
                 "(the two mean ± std intervals do not overlap; needs ≥ 2 seeds each). The lr column "
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
                    line.append(f"{ms(r.get('time_per_step_ms'))} ms · "
                                f"{human_bytes(r.get('training_memory_bytes'))} · "
                                f"{si(r.get('flops_per_step'))}")
                else:
                    line.append(Cell({"oom": "out of memory"}.get(r["status"], r["status"]),
                                     muted=True))
            body.append(line)
        fixed = mine[0]
        other = (f"hidden {fixed['hidden']}" if sweep == "length" else f"T = {fixed['steps']}")
        tables.append(Table(["method"] + [f"{label} = {s}" for s in sizes], body,
                            f"Per point: time per step · training memory · FLOPs per step "
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
        if plots.alignment_curves(group, f"{task} — {model}: alignment with the BPTT gradient",
                                  out / name):
            figs["alignment"].append(Figure(name, f"Gradient alignment on {task} ({model})."))
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
    if preset.get("description"):
        doc.append(("p", preset["description"]))
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
                     f"on a named, otherwise idle device."))

    doc.append(("h2", "Scaling"))
    bench = results.get("bench") or {}
    rows = bench.get("rows") or []
    if rows:
        doc.append(("p", f"From tsp bench ({bench.get('source')}): one training batch of random "
                         f"data per point, every method on the same model; a point that cannot "
                         f"be measured is marked, not dropped."))
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
            lines.append(f"  {task:<16} {model:<8} {c['method']:<8} {text}")
    lines += ["", f"report: {out / 'report.html'} (and report.md, results.csv, results.json)"]
    return "\n".join(lines)
