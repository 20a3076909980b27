"""The shared harness and the CLI, run for real with tiny settings (cleanrl-style smoke tests)."""

import json

import numpy as np
import pytest
import torch

from baselines.bptt import BPTT
from temporal_sigprop import NonFiniteLossError, train
from temporal_sigprop.cli import main
from temporal_sigprop.harness import SUMMARY_KEYS, TrainConfig, run_training

TINY = dict(task="cue_recall:delay=5,n_train=200,n_test=100", model="gru", hidden=16, layers=1,
            epochs=2, batch_size=50, progress=False)


def test_cli_smoke_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--task", TINY["task"], "--model", "gru", "--method", "tbptt", "--k", "3",
                 "--hidden", "16", "--layers", "1", "--epochs", "2", "--batch-size", "50",
                 "--lr", "0.003", "--out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    for key in ("val_accuracy", "test_accuracy", "test_accuracy_at_best_val", "time_per_step_ms",
                "training_memory_bytes", "flops_per_step", "params", "peak_rss_bytes"):
        assert summary[key] is not None and summary[key] >= 0, key
    assert summary["method"] == "tbptt" and summary["epochs"] == 2
    config = json.loads((out / "config.json").read_text())
    assert config["lr"] == 0.003 and config["options"] == {"k": 3}  # flags reach the config
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[-1])["epoch"] == 2
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["loop"]["epoch"] == 2
    assert "val_accuracy" in capsys.readouterr().out


def test_same_seed_same_metrics():
    a = train(**TINY, method="bptt", seed=3)
    b = train(**TINY, method="bptt", seed=3)
    c = train(**TINY, method="bptt", seed=4)
    for key in ("val_accuracy", "test_accuracy", "anytime_test_accuracy", "flops_per_step",
                "training_memory_bytes"):
        assert a[key] == b[key], key
    assert (a["val_accuracy"], a["anytime_test_accuracy"]) != (c["val_accuracy"], c["anytime_test_accuracy"])


@pytest.mark.parametrize("argv, words", [
    (["--task", "nope"], ["mnist1d"]),
    (["--model", "transformer"], ["gru", "lstm", "lif"]),
    (["--method", "magic"], ["bptt", "sigprop", "rtrl"]),
    (["--method", "bptt", "--k", "3"], ["--k", "bptt"]),
    (["--method", "eprop", "--model", "gru"], ["e-prop", "lstm"]),
    (["--loss-at", "middle"], ["last", "every"]),
])
def test_bad_names_exit_2_with_choices(argv, words, capsys, tmp_path):
    base = ["train", "--task", "cue_recall:n_train=50,n_test=20", "--epochs", "1", "--hidden", "4"]
    with_defaults = base + argv
    code = main(with_defaults)
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    for word in words:
        assert word in err


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"file:{path}"


@pytest.mark.parametrize("case, expect", [
    ("missing_y", "y"),
    ("x_rank", "x"),
    ("mismatched_n", "y"),
    ("int_x", "x"),
    ("label_range", "y"),
    ("nan_x", "x"),
])
def test_npz_errors_exit_2_naming_the_array(case, expect, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, size=20)
    arrays = {"x": x, "y": y}
    if case == "missing_y":
        arrays.pop("y")
    elif case == "x_rank":
        arrays["x"] = x[:, :, 0]
    elif case == "mismatched_n":
        arrays["y"] = y[:10]
    elif case == "int_x":
        arrays["x"] = (x * 10).astype(np.int64)
    elif case == "label_range":
        arrays["y"] = y - 5
    elif case == "nan_x":
        arrays["x"] = x.copy()
        arrays["x"][3, 2, 1] = np.nan
    spec = _write_npz(tmp_path / "d.npz", **arrays)
    code = main(["train", "--task", spec, "--epochs", "1", "--hidden", "4", "--layers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"'{expect}'" in err or f"`{expect}`" in err or f" {expect} " in err or f"{expect}:" in err


def test_npz_task_trains(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 5, 3)).astype(np.float32)
    y = (x[:, 0, 0] > 0).astype(np.int64)
    spec = _write_npz(tmp_path / "ok.npz", x=x, y=y)
    summary = train(task=spec, model="rnn", method="bptt", hidden=8, layers=1, epochs=1,
                    batch_size=20, progress=False)
    assert summary["num_classes"] == 2


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    original = BPTT.train_batch

    def flaky(self, x, y):
        calls["n"] += 1
        stats = original(self, x, y)
        if calls["n"] == 6:  # epoch 2 (4 batches per epoch), second batch
            stats["loss"] = torch.tensor(float("nan"))
        return stats

    monkeypatch.setattr(BPTT, "train_batch", flaky)
    cfg = TrainConfig(**{**TINY, "epochs": 3}, method="bptt", out=str(out))
    with pytest.raises(NonFiniteLossError, match="step 6") as info:
        run_training(cfg)
    assert info.value.step == 6
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["loop"]["epoch"] == 1  # the last good epoch
    assert all(torch.isfinite(t).all() for t in state["learner"]["model"].values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and "step 6" in summary["error"]
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_resume_continues_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    full = train(**{**TINY, "epochs": 3}, method="bptt", seed=1)
    train(**{**TINY, "epochs": 2}, method="bptt", seed=1, out=str(out))
    resumed = train(**{**TINY, "epochs": 3}, method="bptt", seed=1, out=str(out), resume=True)
    assert resumed["epochs"] == 3
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_tasks_json(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"mnist1d", "cue_recall"} <= names
    for r in rows:
        assert set(r) >= {"name", "kind", "input_shape", "classes", "source", "description"}
        assert r["kind"] in ("sequence", "audio", "video")
        assert r["source"] in ("offline", "download", "user")
