"""``tsp bench``: the CSV's columns, the ratios to BPTT, and points that are marked, not dropped."""

import argparse
import csv

import pytest

from temporal_sigprop import bench
from temporal_sigprop.bench import BENCH_COLUMNS, BenchConfig, read_bench_csv, run_bench

TINY = dict(model="gru", hidden=4, batch_size=2, input_size=3, lengths=[4, 16],
            hiddens=[4, 8], hidden_length=6, repeats=1, time_budget=30.0)


def test_bench_writes_csv_plots_and_ratios(tmp_path):
    cfg = BenchConfig(methods=["bptt", "tbptt", "eprop"], method_options={"tbptt": {"k": 2}},
                      **TINY)
    rows = run_bench(cfg, tmp_path, progress=False, echo=None)
    with open(tmp_path / "bench.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == BENCH_COLUMNS
        written = list(reader)
    points = len(TINY["lengths"]) + len(TINY["hiddens"])
    assert len(written) == len(rows) == 3 * points  # every (method, point), none dropped
    for name in ("scaling_length.png", "scaling_hidden.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000
    by = {(r["method"], r["sweep"], r["steps"], r["hidden"]): r for r in rows}
    for r in rows:
        if r["method"] == "eprop":  # e-prop is not defined for GRU: n/a with the reason
            assert r["status"] == "n/a" and "e-prop" in r["reason"]
            continue
        assert r["status"] == "ok"
        assert r["time_per_step_ms"] > 0 and r["flops_per_step"] > 0 and r["params"] > 0
        if r["method"] == "bptt":
            assert r["time_ratio_bptt"] == r["memory_ratio_bptt"] == r["flops_ratio_bptt"] == 1.0
        else:
            ref = by[("bptt", r["sweep"], r["steps"], r["hidden"])]
            assert r["memory_ratio_bptt"] == pytest.approx(
                r["training_memory_bytes"] / ref["training_memory_bytes"])
    # BPTT keeps every step: its memory grows with T; TBPTT(k=2) keeps 2 steps: it does not
    short, long = by[("bptt", "length", 4, 4)], by[("bptt", "length", 16, 4)]
    assert long["training_memory_bytes"] > 3 * short["training_memory_bytes"]
    t_short, t_long = by[("tbptt", "length", 4, 4)], by[("tbptt", "length", 16, 4)]
    assert t_long["training_memory_bytes"] == t_short["training_memory_bytes"]
    # the CSV reads back to the same numbers
    back = read_bench_csv(tmp_path / "bench.csv")
    assert [(r["method"], r["status"], r["training_memory_bytes"]) for r in back] == \
        [(r["method"], r["status"], r["training_memory_bytes"]) for r in rows]


def test_too_slow_and_out_of_memory_points_are_marked(tmp_path):
    slow = run_bench(BenchConfig(methods=["bptt"], **{**TINY, "time_budget": 1e-9}), None,
                     progress=False, echo=None)
    assert [r["status"] for r in slow] == ["too slow"] * 4
    assert "budget" in slow[0]["reason"] and "not run" in slow[1]["reason"]

    big = run_bench(BenchConfig(methods=["bptt"], **{**TINY, "memory_budget_gb": 1e-6}), None,
                    progress=False, echo=None)
    length = [r for r in big if r["sweep"] == "length"]
    assert length[0]["status"] == "ok"  # nothing to predict from: measured
    assert length[1]["status"] == "oom" and "predicted" in length[1]["reason"]


def test_oom_raised_by_a_learner_is_marked(tmp_path, monkeypatch):
    def boom(cfg, method, steps, hidden):
        if steps > 4:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return real(cfg, method, steps, hidden)

    real = bench.measure_point
    monkeypatch.setattr(bench, "measure_point", boom)
    rows = run_bench(BenchConfig(methods=["bptt"], **TINY), None, progress=False, echo=None)
    statuses = {(r["sweep"], r["steps"]): r["status"] for r in rows}
    assert statuses[("length", 4)] == "ok" and statuses[("length", 16)] == "oom"


def test_cli_takes_a_preset_and_explicit_flags_win(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_bench_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "b"
    args = parser.parse_args(["bench", "--preset", "smoke", "--methods", "bptt", "tbptt",
                              "--lengths", "4", "8", "--hiddens", "4", "--out", str(out),
                              "--no-progress"])
    assert args.handler(args) == 0
    rows = read_bench_csv(out / "bench.csv")
    assert {r["method"] for r in rows} == {"bptt", "tbptt"}
    assert sorted({r["steps"] for r in rows if r["sweep"] == "length"}) == [4, 8]
    assert {r["batch_size"] for r in rows} == {4}  # from the smoke preset's bench settings
    printed = capsys.readouterr().out
    assert "×bptt" in printed and "bench.csv" in printed
