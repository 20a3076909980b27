"""``tsp compare`` end to end on the smoke preset, plus the paths a real matrix meets rarely:
a diverged run, a learner refusing a size, a method that does not import, an interrupted run."""

import argparse
import csv
import json
import math
import re
import statistics

import pytest
import torch

from baselines.bptt import BPTT, TBPTT
from temporal_sigprop import bench, compare, harness, registry, report
from temporal_sigprop.errors import ConfigError, IncompatibleError
from temporal_sigprop.harness import TrainConfig

TINY_TASK = "cue_recall:delay=3,n_train=120,n_test=60"


def _importable(method: str) -> bool:
    """Methods still being written do not import yet; the test runs the ones that exist (the
    compare itself treats an import failure as a bug — see test_import_failure_is_a_bug)."""
    try:
        registry.learner_class(method)
        return True
    except ImportError:
        return False


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    preset = compare.load_preset("smoke")
    methods = [m for m in preset["methods"] if _importable(m)]
    preset = compare.apply_overrides(preset, methods=methods)
    out = tmp_path_factory.mktemp("smoke")
    results = compare.run_compare(preset, out, progress=False, echo=None)
    return preset, out, results


def _md_table(md: str, header_start: str) -> tuple[list[str], list[list[str]]]:
    lines = md.splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    header = [c.strip() for c in lines[i].strip("|").split(" | ")]
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    return header, rows


def test_smoke_writes_every_file_and_the_tables_have_every_pair(smoke):
    preset, out, results = smoke
    for name in ("report.md", "report.html", "results.csv", "results.json", "preset.json"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.rglob(".*.tmp"))  # atomic writes leave no temporaries
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    for prefix in ("curves_", "anytime_", "alignment_", "scaling_length", "scaling_hidden"):
        assert any(p.startswith(prefix) for p in pngs), (prefix, pngs)

    pairs = [(t["spec"], m, meth) for t in preset["tasks"] for m in t["models"]
             for meth in preset["methods"]]
    assert [(c["task"], c["model"], c["method"]) for c in results["cells"]] == pairs
    md = (out / "report.md").read_text()
    header, rows = _md_table(md, "| task | model | method | lr")
    assert header[:4] == ["task", "model", "method", "lr (chosen of candidates)"]
    assert "test accuracy %" in header and "val accuracy %" in header
    labels = report.task_labels(t["spec"] for t in preset["tasks"])
    assert labels == {"mnist1d": "mnist1d", preset["tasks"][1]["spec"]: "cue_recall"}
    assert [(r[0], r[1], r[2]) for r in rows] == [(labels[t], m, x) for t, m, x in pairs]
    test_col = header.index("test accuracy %")
    for row, cell in zip(rows, results["cells"]):
        if cell["status"] == "n/a":
            assert row[test_col].startswith("n/a — ") and len(row[test_col]) > 10, row
        else:
            assert cell["status"] == "ok", cell.get("reason")
            shown = row[test_col].strip("*")
            assert shown.endswith(" (at chance)") == report.chance(cell)["at_chance"], shown
            assert shown.split(" ★")[0].removesuffix(" (at chance)") == report.acc_text(
                cell["test_accuracy_mean"], cell["test_accuracy_std"])
    # the incompatible pair is there with its reason, in the report and in the CSV
    eprop = [c for c in results["cells"] if c["method"] == "eprop"]
    assert eprop and all(c["status"] == "n/a" and "e-prop" in c["reason"] for c in eprop)
    with open(out / "results.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r for r in csv_rows if r["method"] == "eprop" and r["status"] == "n/a" and r["reason"]]
    assert len([r for r in csv_rows if r["status"] == "ok"]) == len(results["runs"])
    # each method's own lr schedule and weight decay, in the CSV and in the accuracy table
    ran = {(r["method"], r["lr_schedule"], r["weight_decay"]) for r in csv_rows if r["status"] == "ok"}
    assert ("sigprop", "cosine", "0.05") in ran and ("bptt", "constant", "0.0") in ran
    assert ", cosine, wd 0.05 |" in md

    for section in ("## Summary", "## Accuracy", "## Learning curves", "## Cost", "## Scaling",
                    "## Gradient alignment", "## Environment", "tsp compare --preset"):
        assert section in md, section
    # the header describes this run (machine, threads, jobs, wall time), before any preset text
    header = md.split("## Summary")[0]
    assert "This run: " in header and "1 intra-op thread(s)" in header
    assert "1 training(s) at once" in header and "wall time " in header
    assert header.index("This run: ") < header.index("Preset “smoke”")
    timing = results["timing"]
    assert timing["jobs"] == 1 and timing["wall_seconds"] > 0 and timing["usable_cores"] >= 1
    cost_header, cost_rows = _md_table(md, "| task | model | method | ms / step")
    assert {"training memory", "FLOPs / step", "spike rate"} <= set(cost_header)
    assert len(cost_rows) == len(pairs)


def test_html_is_self_contained_with_every_plot_embedded(smoke):
    _, out, _ = smoke
    page = (out / "report.html").read_text()
    figures = (out / "report.md").read_text().count("](plots/")
    assert figures >= 5
    assert page.count('src="data:image/png;base64,') == figures
    assert 'src="plots/' not in page and "<script" not in page


def test_summary_numbers_match_results_json(smoke):
    _, out, results = smoke
    saved = json.loads((out / "results.json").read_text())
    summary = " ".join(saved["summary"])
    assert saved["summary"] == results["summary"]
    cells = {(c["task"], c["model"], c["method"]): c for c in saved["cells"]}
    quoted = re.findall(r"(\w+) (\d+\.\d) ± (\d+\.\d)%", summary)
    assert quoted, summary
    for method, mean, std in quoted:
        matches = [c for c in cells.values() if c["method"] == method and c["status"] == "ok"
                   and report.acc_text(c["test_accuracy_mean"], c["test_accuracy_std"])
                   == f"{mean} ± {std}"]
        assert matches, (method, mean, std)
    # and results.json's means are the means of the runs it lists
    for c in saved["cells"]:
        if c["status"] != "ok":
            continue
        seeds = [r["test_accuracy_at_best_val"] for r in saved["runs"]
                 if (r["task"], r["model"], r["method"]) == (c["task"], c["model"], c["method"])
                 and r.get("chosen") and r["status"] == "ok"]
        assert len(seeds) == c["n_ok"] == len(c["seeds"])
        assert math.isclose(statistics.fmean(seeds), c["test_accuracy_mean"])
        assert math.isclose(statistics.stdev(seeds), c["test_accuracy_std"])
        assert f"{len(c['lr_grid'])} candidate(s)" in summary


def test_same_search_budget_and_choice_on_validation(smoke):
    _, _, results = smoke
    budgets = {len(c["lr_grid"]) for c in results["cells"]}
    assert len(budgets) == 1
    limit = results["preset"]["lr_search"]["widen"]
    for c in results["cells"]:
        if c["status"] != "ok":
            continue
        search = c["lr_search"]
        # the grid, then at most `widen` candidates beyond its edge, all tried with the first seed
        assert [s["lr"] for s in search] == c["lr_candidates"] == c["lr_grid"] + c["lr_widened"]
        assert len(c["lr_widened"]) <= limit
        best = max(s["val_accuracy"] for s in search if s["status"] == "ok")
        chosen = next(s for s in search if s["lr"] == c["chosen_lr"])
        assert chosen["val_accuracy"] == best
        # a pair is "not tuned" exactly when its choice is still at the edge of what it tried
        tried = c["lr_candidates"]
        at_edge = c["chosen_lr"] in (min(tried), max(tried))
        assert c["lr_tuned"] is not at_edge
        if not c["lr_tuned"]:
            assert len(c["lr_widened"]) == limit
    placements = {c["loss_at"] for c in results["cells"]}
    assert len(placements) == 1


def test_alignment_is_recorded_and_bptt_agrees_with_itself(smoke):
    _, _, results = smoke
    bptt = [c for c in results["cells"] if c["method"] == "bptt"]
    assert bptt
    for c in bptt:
        epochs = [p["epoch"] for p in c["alignment"]]
        assert epochs[0] == 0 and epochs[-1] == results["preset"]["defaults"]["epochs"]
        assert all(abs(p["cosine"] - 1.0) < 1e-6 for p in c["alignment"])


def test_second_run_is_served_from_the_cache(smoke, monkeypatch):
    preset, out, first = smoke

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(harness, "run_training", no_training)
    monkeypatch.setattr(bench, "measure_point", no_training)
    again = compare.run_compare(preset, out, progress=False, echo=None)
    assert again["counts"]["trained"] == 0 and again["counts"]["cached"] == again["counts"]["runs"]
    for a, b in zip(first["cells"], again["cells"]):
        assert a.get("test_accuracy_mean") == b.get("test_accuracy_mean")

    # the command line's --report-only re-renders from results.json alone
    parser = argparse.ArgumentParser()
    compare.add_compare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", "--preset", "smoke", "--out", str(out), "--report-only"])
    (out / "report.html").unlink()
    assert args.handler(args) == 0
    assert (out / "report.html").exists()


def _tiny_preset(methods, lrs, **extra):
    return {"name": "tiny", "defaults": {"epochs": 1, "hidden": 4, "layers": 1, "batch_size": 40,
                                         "loss_at": "last"},
            "models": ["gru"], "methods": methods, "seeds": [0, 1],
            "lr_search": {"lrs": lrs}, "tasks": [TINY_TASK], "alignment": None, "bench": None,
            **extra}


def test_diverged_and_refused_pairs_are_reported_not_dropped(tmp_path, monkeypatch):
    original = BPTT.train_batch

    def nan_at_big_lr(self, x, y):
        stats = original(self, x, y)
        if self.cfg.lr >= 0.5:
            stats["loss"] = torch.tensor(float("nan"))
        return stats

    def refuse(self, model, cfg=None, options=None):
        raise IncompatibleError("tbptt cannot train gru: pretend the state is too big")

    monkeypatch.setattr(BPTT, "train_batch", nan_at_big_lr)
    monkeypatch.setattr(TBPTT, "__init__", refuse)
    preset = _tiny_preset(["bptt", "tbptt"], {"default": [0.5, 0.01]})
    preset["tasks"] = [TINY_TASK, {"spec": TINY_TASK.replace("delay=3", "delay=4")}]
    preset["lr_search"]["lrs"]["bptt"] = [0.5, 0.01]
    preset["lr_search"]["widen"] = 0  # this test is about divergence, not the grid's edge
    results = compare.run_compare(preset, tmp_path, progress=False, echo=None)
    cells = {(c["task"], c["method"]): c for c in results["cells"]}
    ok = cells[(TINY_TASK, "bptt")]
    assert ok["status"] == "ok" and ok["chosen_lr"] == 0.01
    assert ok["lr_search"][0]["status"] == "diverged"
    assert "step 1" in ok["lr_search"][0]["reason"]
    refused = cells[(TINY_TASK, "tbptt")]
    assert refused["status"] == "n/a" and "too big" in refused["reason"]
    md = (tmp_path / "report.md").read_text()
    assert "n/a — tbptt cannot train gru: pretend the state is too big" in md

    # every candidate diverges → "diverged at step N"
    monkeypatch.setattr(BPTT, "train_batch", lambda self, x, y: {
        **original(self, x, y), "loss": torch.tensor(float("inf"))})
    results = compare.run_compare(_tiny_preset(["bptt"], {"default": [0.02]}), tmp_path / "b",
                                  progress=False, echo=None)
    (cell,) = results["cells"]
    assert cell["status"] == "diverged" and cell["reason"] == "diverged at step 1"
    assert "diverged at step 1" in (tmp_path / "b" / "report.md").read_text()


def test_import_failure_is_a_bug_not_na(tmp_path, monkeypatch):
    monkeypatch.setitem(registry.METHODS, "ghost", "baselines.no_such_module:Ghost")
    monkeypatch.setattr(compare, "METHOD_NAMES", (*registry.METHOD_NAMES, "ghost"))
    with pytest.raises(ImportError):
        compare.run_compare(_tiny_preset(["ghost"], {"default": [0.01]}), tmp_path,
                            progress=False, echo=None)


def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig(task=TINY_TASK, model="gru", method="bptt", hidden=4, layers=1, epochs=2,
                      batch_size=40, lr=0.01)
    real = harness.run_training
    calls = []

    def interrupted(cfg, on_epoch_end=None):
        calls.append(cfg)

        def stop(epoch, learner, task):
            if epoch == 2:  # after epoch 1's checkpoint, before epoch 2's
                raise KeyboardInterrupt
        return real(cfg, on_epoch_end=stop)

    runner = compare.Runner(tmp_path, progress=False)
    monkeypatch.setattr(harness, "run_training", interrupted)
    with pytest.raises(KeyboardInterrupt):
        runner.run(cfg, "search", [])
    (folder,) = (tmp_path / "runs").iterdir()
    assert torch.load(folder / "checkpoint.pt", weights_only=False)["loop"]["epoch"] == 1
    first_line = (folder / "metrics.jsonl").read_text().splitlines()[0]

    resumed = []
    monkeypatch.setattr(harness, "run_training",
                        lambda cfg, on_epoch_end=None: resumed.append(cfg) or real(cfg, on_epoch_end))
    outcome = runner.run(cfg, "search", [])
    assert resumed and resumed[0].resume and resumed[0].out == str(folder)
    assert outcome["status"] == "ok" and outcome["epochs"] == 2
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2] and lines[0] == first_line


@pytest.mark.parametrize("change, words", [
    (lambda p: p["lr_search"]["lrs"].update(bptt=[0.1, 0.01, 0.001]), ["same number"]),
    (lambda p: p.update(colour="red"), ["colour"]),
    (lambda p: p.update(methods=["bptt", "magic"]), ["magic", "sigprop"]),
    (lambda p: p["defaults"].update(lr=0.1), ["lr", "settable"]),
    (lambda p: p["defaults"].update(loss_at="middle"), ["last", "every"]),
    (lambda p: p.update(method_options={"tbptt": {"kk": 3}}), ["kk", "k"]),
    (lambda p: p.update(tasks=["nope"]), ["mnist1d"]),
])
def test_bad_presets_are_refused_with_the_choices(change, words):
    preset = _tiny_preset(["bptt", "tbptt"], {"default": [0.1, 0.01]})
    change(preset)
    with pytest.raises((ConfigError, ValueError)) as info:
        compare.load_preset(preset)
    for word in words:
        assert word in str(info.value)


def test_presets_ship_and_a_user_path_loads(tmp_path):
    for name in compare.PRESET_NAMES:
        p = compare.load_preset(name)
        assert p["name"] == name and p["tasks"] and p["bench"]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(_tiny_preset(["bptt"], {"default": [0.01]})))
    assert compare.load_preset(str(path))["methods"] == ["bptt"]


def test_winner_needs_more_than_the_seed_spread():
    def cell(method, mean, std):
        return {"method": method, "status": "ok", "test_accuracy_mean": mean,
                "test_accuracy_std": std}

    assert report.winner([cell("a", 0.9, 0.01), cell("b", 0.8, 0.01)])["decided"]
    assert not report.winner([cell("a", 0.9, 0.06), cell("b", 0.8, 0.05)])["decided"]
    assert not report.winner([cell("a", 0.9, None), cell("b", 0.5, None)])["decided"]
    w = report.winner([cell("a", 0.7, 0.0), {"method": "c", "status": "n/a"}])
    assert w["best"]["method"] == "a" and not w["decided"]


def test_quick_preset_has_real_data_an_eprop_model_and_no_stale_timings():
    from temporal_sigprop.registry import incompatibility

    preset = compare.load_preset("quick")
    specs = [t["spec"] for t in preset["tasks"]]
    assert any(s.startswith(("uea:", "ucr:")) for s in specs), specs  # a real archive set
    assert "cue_recall:delay=30,n_train=1000,n_test=500" not in specs  # the saturated one
    eprop_pairs = [(t["spec"], m) for t in preset["tasks"] for m in t["models"]
                   if not incompatibility("eprop", m) and "eprop" not in t["skip"]]
    assert eprop_pairs and "eprop" in preset["methods"]
    assert preset["lr_search"]["widen"] >= 1
    # the description states no timings (this run's own wall time is in the report's header)
    assert not re.search(r"\d\s*(min|minutes|s|seconds|h)\b", preset["description"]), \
        preset["description"]
