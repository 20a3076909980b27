"""The report's guards against misreading a comparison, each on synthetic inputs where the right
answer is known: an lr chosen at the edge of the grid widens it (and a pair still at the edge is
"not tuned" and never a winner), a method at chance is labelled with its likely reason, the
alignment section says what sigprop's cosine means, the speed figures name their sizes, and the
header describes this run rather than the preset."""

import math
import re

import pytest

from temporal_sigprop import compare, harness, report
from temporal_sigprop.harness import TrainConfig

TASK = "cue_recall:delay=3,n_train=120,n_test=60"


# ----------------------------------------------------------------------------- lr widening


@pytest.mark.parametrize("tried, side, expected", [
    ([0.01, 0.03, 0.1], "largest", 0.3),
    ([0.01, 0.03, 0.1], "smallest", 0.003),
    ([0.003, 0.01], "smallest", 0.001),
    ([0.01, 0.03, 0.1, 0.3], "largest", 1.0),
    ([0.001, 0.002, 0.004], "largest", 0.01),
])
def test_widened_lr_is_one_grid_step_beyond_the_edge(tried, side, expected):
    lr = compare.widened_lr(tried, side)
    assert math.isclose(lr, expected)
    assert (lr > max(tried)) if side == "largest" else (lr < min(tried))


def _cell(lrs, widen, seeds=(0, 1, 2), method="bptt"):
    return {"task": TASK, "model": "gru", "method": method, "reason": None, "lrs": list(lrs),
            "widen": widen, "seeds": list(seeds), "alignment_epochs": [],
            "base": TrainConfig(task=TASK, model="gru", method=method, hidden=4, layers=1,
                                epochs=1)}


def _drive(cell, val_of_lr):
    """Play a CellSearch to the end with outcomes whose validation accuracy is val_of_lr(lr)."""
    search = compare.CellSearch(cell)
    queue = search.start()
    launched = []
    while queue:
        role, slot, cfg = queue.pop(0)
        launched.append((role, cfg.lr, cfg.seed))
        outcome = {"lr": cfg.lr, "seed": cfg.seed, "role": role, "status": "ok",
                   "val_accuracy": val_of_lr(cfg.lr), "test_accuracy_at_best_val": 0.5,
                   "final_train_loss": 1.0, "run_dir": f"runs/{role}-{cfg.lr:g}-{cfg.seed}"}
        queue.extend(search.record(role, slot, outcome))
    assert search.done and search.remaining() == 0
    return search, launched


def test_an_edge_choice_widens_the_grid_until_it_is_bracketed():
    # best at 0.1, just beyond the grid's top (0.03): one widening brackets it
    peak = {0.01: 0.5, 0.03: 0.6, 0.1: 0.7, 0.3: 0.4}
    search, launched = _drive(_cell([0.01, 0.03], widen=2), lambda lr: peak[lr])
    assert search.widened == [0.1, 0.3]  # 0.1 was the new edge, so 0.3 was tried too
    assert [lr for role, lr, _ in launched if role == "seed"] == [0.1, 0.1]
    chosen = next(r for r in search.search if r.get("chosen"))
    assert chosen["lr"] == 0.1 and compare.lr_edge(search.search, chosen) is None


def test_an_inside_choice_does_not_widen():
    search, launched = _drive(_cell([0.01, 0.03, 0.1], widen=2),
                              lambda lr: {0.01: 0.5, 0.03: 0.9, 0.1: 0.6}[lr])
    assert search.widened == [] and len(launched) == 3 + 2


def test_the_widening_is_bounded_and_leaves_the_pair_not_tuned():
    # accuracy keeps rising with the lr: two widenings, then the seeds run at the edge
    search, launched = _drive(_cell([0.01, 0.03], widen=2), lambda lr: lr)
    assert len(search.widened) == 2 and len(launched) == 2 + 2 + 2
    row = compare.aggregate(search.cell, search.runs())
    assert row["lr_widened"] == search.widened and row["lr_tuned"] is False
    assert row["lr_at_edge"] == "largest" and row["chosen_lr"] == max(row["lr_candidates"])
    # a preset that allows no widening marks the edge pair not tuned at once
    search, launched = _drive(_cell([0.01, 0.03], widen=0), lambda lr: lr)
    assert search.widened == [] and not compare.aggregate(search.cell, search.runs())["lr_tuned"]


def test_a_diverged_candidate_beyond_brackets_the_choice():
    def outcome(lr):
        return {"lr": lr, "status": "diverged" if lr > 0.05 else "ok",
                "val_accuracy": None if lr > 0.05 else lr}
    assert compare.lr_edge([outcome(0.01), outcome(0.03), outcome(0.1)], outcome(0.03)) is None
    assert compare.lr_edge([outcome(0.01), outcome(0.03)], outcome(0.03)) == "largest"


def _summary(cfg, val):
    return {"status": "ok", "epochs": cfg.epochs, "val_accuracy": val,
            "test_accuracy_at_best_val": val, "test_accuracy": val, "num_classes": 4,
            "params": 100, "steps": 5, "time_per_step_ms": 1.0, "training_memory_bytes": 10}


def test_compare_widens_and_names_no_winner_from_an_untuned_pair(tmp_path, monkeypatch):
    """End to end through run_compare with a fake trainer: bptt's accuracy peaks at 0.1 (one
    grid step above its grid), tbptt's keeps rising with the lr — so tbptt ends at the edge of
    its widened grid with the highest mean, and must not be named the winner."""
    def fake_training(cfg, on_epoch_end=None):
        if cfg.method == "bptt":
            val = {0.01: 0.50, 0.03: 0.60, 0.1: 0.70, 0.3: 0.30}[cfg.lr] + 0.001 * cfg.seed
        else:
            val = min(0.99, 0.6 + cfg.lr) + 0.001 * cfg.seed
        return _summary(cfg, val)

    monkeypatch.setattr(harness, "run_training", fake_training)
    preset = {"name": "edge", "defaults": {"epochs": 1, "hidden": 4, "layers": 1},
              "models": ["gru"], "methods": ["bptt", "tbptt"], "seeds": [0, 1],
              "lr_search": {"lrs": {"default": [0.01, 0.03]}, "widen": 2},
              "tasks": [TASK], "alignment": None, "bench": None}
    results = compare.run_compare(preset, tmp_path, progress=False, echo=None)
    cells = {c["method"]: c for c in results["cells"]}
    bptt, tbptt = cells["bptt"], cells["tbptt"]
    assert bptt["lr_widened"] == [0.1, 0.3] and bptt["chosen_lr"] == 0.1 and bptt["lr_tuned"]
    assert tbptt["lr_widened"] == [0.1, 0.3] and tbptt["chosen_lr"] == 0.3
    assert tbptt["lr_tuned"] is False and tbptt["test_accuracy_mean"] > bptt["test_accuracy_mean"]
    assert results["counts"]["widened"] == 4 and results["counts"]["runs"] == 2 * (4 + 1)
    # recorded in results: every search run, widened ones included, has its own folder
    assert sorted(r["lr"] for r in results["runs"] if r["method"] == "tbptt"
                  and r["role"] == "search") == [0.01, 0.03, 0.1, 0.3]

    w = report.winner(results["cells"])
    assert w["best"] is not tbptt and not w["decided"] and "tuned" in w["why"]
    md = (tmp_path / "report.md").read_text()
    assert " ★" not in "".join(line for line in md.splitlines() if line.startswith("| cue_recall"))
    tbptt_row = next(line for line in md.splitlines() if line.startswith("| cue_recall | gru | tbptt"))
    assert "not tuned" in tbptt_row and "excluded from winners" in tbptt_row
    assert "Not tuned" in " ".join(results["summary"])


def test_winner_positive_control_and_untuned_exclusion():
    def cell(method, mean, std, **extra):
        return {"method": method, "status": "ok", "test_accuracy_mean": mean,
                "test_accuracy_std": std, "num_classes": 2, "lr_tuned": True, **extra}
    tuned_pair = [cell("a", 0.9, 0.01), cell("b", 0.7, 0.01)]
    assert report.winner(tuned_pair)["decided"] and report.winner(tuned_pair)["best"]["method"] == "a"
    # the same numbers with the best not tuned: it is not named, and b cannot be named either
    untuned = [cell("a", 0.9, 0.01, lr_tuned=False, lr_at_edge="largest"), cell("b", 0.7, 0.01),
               cell("c", 0.6, 0.01)]
    w = report.winner(untuned)
    assert w["best"]["method"] == "b" and not w["decided"]
    # an untuned pair below the best does not stop a decision, and is not claimed "below"
    below = [cell("a", 0.9, 0.01), cell("b", 0.7, 0.01),
             cell("c", 0.5, 0.01, lr_tuned=False, lr_at_edge="smallest")]
    assert report.winner(below)["decided"]
    assert [c["method"] for c in report._clearly_below(below, below[0])] == ["b"]


# ----------------------------------------------------------------------------- chance


def _finished_cell(method, mean, std, *, classes=4, majority=0.25, n=500, params=4713,
                   options=None, alignment=None):
    return {"method": method, "status": "ok", "test_accuracy_mean": mean,
            "test_accuracy_std": std, "num_classes": classes, "majority_fraction": majority,
            "test_labels": n, "method_options": options or {}, "cost": {"params": params,
                                                                        "steps": 29},
            "alignment": alignment or [], "chosen_lr": 0.003, "lr_candidates": [0.001, 0.003]}


def test_chance_is_detected_with_a_binomial_margin_and_a_positive_control():
    at = report.chance(_finished_cell("bptt", 0.27, 0.005))  # 25 % ± 2·1.9 %
    assert at["at_chance"] and math.isclose(at["margin"], 2 * math.sqrt(0.25 * 0.75 / 500))
    assert not report.chance(_finished_cell("bptt", 0.40, 0.01))["at_chance"]
    # the seed spread widens the margin; the most frequent class sets the level
    assert report.chance(_finished_cell("bptt", 0.33, 0.10))["at_chance"]
    assert report.chance(_finished_cell("bptt", 0.30, 0.005, majority=0.30))["at_chance"]
    assert not report.chance(_finished_cell("bptt", 0.40, 0.005, majority=0.30))["at_chance"]
    # without test statistics: 1/classes and a fixed margin
    old = {**_finished_cell("bptt", 0.26, 0.0), "majority_fraction": None, "test_labels": None}
    assert report.chance(old)["at_chance"] and report.chance(old)["level"] == 0.25


def test_fwdgrad_at_chance_is_explained_with_its_parameter_and_tangent_counts():
    cell = _finished_cell("fwdgrad", 0.112, 0.01, classes=9, majority=0.111, n=370,
                          options={"tangents": 1},
                          alignment=[{"epoch": 8, "cosine": 0.012}])
    assert report.chance(cell)["at_chance"]
    why = report.chance_reason(cell)
    assert "K = 1" in why and "P = 4,713" in why and f"{math.sqrt(1 / 4713):.3f}" in why
    assert "0.012" in why  # the run's own measured cosine
    assert report.expected_fwdgrad_cosine(cell)[0] == pytest.approx(math.sqrt(1 / 4713))


def test_chance_label_reaches_the_accuracy_table_and_summary():
    cells = [{**_finished_cell("bptt", 0.95, 0.01), "task": TASK, "model": "gru",
              "loss_at": "every", "lr_candidates": [0.01], "seeds": [0, 1], "n_ok": 2,
              "val_accuracy_mean": 0.9, "val_accuracy_std": 0.0, "chosen_lr": 0.01,
              "lr_tuned": True},
             {**_finished_cell("fwdgrad", 0.25, 0.01, options={"tangents": 2}), "task": TASK,
              "model": "gru", "loss_at": "every", "lr_candidates": [0.01], "seeds": [0, 1],
              "n_ok": 2, "val_accuracy_mean": 0.25, "val_accuracy_std": 0.0, "chosen_lr": 0.01,
              "lr_tuned": True}]
    rows = report.accuracy_table(cells).rows
    fwd = next(r for r in rows if r[2] == "fwdgrad")
    assert "(at chance)" in fwd[4].text and "K = 2" in fwd[-1]
    bptt = next(r for r in rows if r[2] == "bptt")
    assert "at chance" not in bptt[4].text and "★" in bptt[4].text
    summary = " ".join(report._chance_sentences(cells, report.task_labels([TASK])))
    assert "fwdgrad" in summary and "bptt" not in summary.split("):", 1)[1]


# ----------------------------------------------------------------------------- alignment, speed


def test_alignment_notes_say_what_sigprops_cosine_means():
    cells = [{"method": m, "alignment": [{"epoch": 0, "cosine": c}], "cost": {"params": 900},
              "method_options": {"tangents": 4}}
             for m, c in (("bptt", 1.0), ("sigprop", -0.04), ("fwdgrad", 0.05))]
    notes = " ".join(report.alignment_notes(cells))
    assert "sigprop is not a gradient estimator" in notes and "-0.04" in notes
    assert "K = 4" in notes and "P = 900" in notes
    assert "sigprop" not in " ".join(report.alignment_notes(cells[:1]))


def _bench_row(method, steps, hidden, ratio_to_bptt, sweep="length"):
    return {"sweep": sweep, "model": "gru", "method": method, "steps": steps, "hidden": hidden,
            "batch_size": 8, "status": "ok", "time_per_step_ms": ratio_to_bptt,
            "time_ratio_bptt": ratio_to_bptt, "training_memory_bytes": 100,
            "flops_per_step": 10, "device": "cpu", "threads": 1}


def test_speed_ratios_name_the_sizes_they_hold_at():
    rows = [_bench_row("bptt", 64, 32, 1.0), _bench_row("sigprop", 64, 32, 4.2),
            _bench_row("bptt", 1024, 32, 1.0), _bench_row("sigprop", 1024, 32, 0.7),
            _bench_row("sigprop", 64, 128, 3.4, sweep="hidden")]
    (text,) = report.ratio_ranges(rows)
    assert text == "sigprop from ×0.7 (T = 1024, hidden 32) to ×4.2 (T = 64, hidden 32)"
    sentences = " ".join(report._scaling_sentences(rows))
    assert re.search(r"T = 1024 \(bench: gru hidden 32, batch 8, 1 thread", sentences)
    cell = {"task": TASK, "model": "gru", "method": "bptt", "status": "ok",
            "sizes": {"hidden": 16, "layers": 1, "batch_size": 100, "threads": 1,
                      "device": "cpu"}, "cost": {"steps": 7}}
    assert report.measured_at([cell]) == [
        "cue_recall (gru): hidden 16 × 1 layer(s), batch 100, T = 7, 1 thread(s), cpu"]


# ----------------------------------------------------------------------------- header, progress


def test_header_is_this_runs_machine_and_clock_not_the_preset():
    results = {"preset": {"name": "quick", "description": "took 8 min somewhere else"},
               "environment": {"cpu_name": "Test CPU 9000", "cpu_count": 4, "threads": 1},
               "timing": {"wall_seconds": 725.4, "bench_seconds": 30.0, "jobs": 2,
                          "threads": 1, "usable_cores": 2, "cpu_count": 4,
                          "load_average_start": [1.0, 1.0, 1.0],
                          "load_average_end": [2.5, 2.0, 1.0], "started": "2026-01-01T00:00"},
               "counts": {"runs": 10, "trained": 8, "cached": 2}, "runs": []}
    header = report.run_header(results)
    assert "Test CPU 9000, 2 usable of 4 logical cores" in header
    assert "1 intra-op thread(s) per training, 2 training(s) at once" in header
    assert "wall time 12 min 5 s: 10 runs (8 trained, 2 read back" in header
    assert "8 min" not in header
    del results["timing"]
    assert "wall time not recorded" in report.run_header(results)


def test_progress_estimates_the_time_left_from_finished_runs_of_the_same_cell():
    cells = [_cell([0.01, 0.03], widen=0, seeds=(0, 1)),
             {**_cell([0.01, 0.03], widen=0, seeds=(0, 1)), "method": "sigprop"}]
    searches = [compare.CellSearch(c) for c in cells]
    bar = compare.Progress(searches, jobs=2, desc="test", enabled=False)
    assert bar.total() == 6 and bar.eta() is None  # nothing measured yet
    launches = [searches[0].start(), searches[1].start()]
    role, slot, cfg = launches[0][0]
    bar.event("t0", 0, "start", "run", 1)
    outcome = {"lr": cfg.lr, "status": "ok", "val_accuracy": 0.5, "cached": False,
               "wall_seconds": 10.0}
    searches[0].record(role, slot, outcome)
    bar.finished("t0", 0, outcome)
    # 5 runs left; cell 0 at 10 s each, cell 1 (no run yet) at the mean of all finished: 10 s
    assert bar.total() == 6 and bar.done == 1
    assert bar.eta() == pytest.approx(5 * 10.0 / 2)
    cached = {"lr": 0.03, "status": "ok", "val_accuracy": 0.4, "cached": True,
              "wall_seconds": 0.0}
    searches[1].record("search", 0, cached)
    bar.finished(None, 1, cached)
    assert bar.cached == 1 and bar.eta() == pytest.approx(4 * 10.0 / 2)  # read back: no estimate
    bar.close()


def test_a_busy_machine_is_named_beside_the_bench_ratios():
    busy = {"timing": {"usable_cores": 2, "load_average_start": [3.1, 2, 1],
                       "load_average_end": [2.5, 2, 1]}}
    assert "busier than its 2 usable core(s)" in report._load_note(busy)
    idle = {"timing": {"usable_cores": 2, "load_average_start": [0.4, 0, 0],
                       "load_average_end": [1.9, 0, 0]}}
    assert report._load_note(idle) == "" and report._load_note({}) == ""
