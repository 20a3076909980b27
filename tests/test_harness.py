"""The shared harness and the CLI, run for real with tiny settings (cleanrl-style smoke tests)."""

import json
import math

import numpy as np
import pytest
import torch

from baselines.bptt import BPTT
from temporal_sigprop import ConfigError, NonFiniteLossError, train
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
    # Extending a finished run by an epoch: a constant lr (a cosine curve depends on --epochs).
    out = tmp_path / "run"
    tiny = {**TINY, "lr_schedule": "constant"}
    full = train(**{**tiny, "epochs": 3}, method="bptt", seed=1)
    train(**{**tiny, "epochs": 2}, method="bptt", seed=1, out=str(out))
    resumed = train(**{**tiny, "epochs": 3}, method="bptt", seed=1, out=str(out), resume=True)
    assert resumed["epochs"] == 3
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


def test_resume_refuses_changed_training_settings(tmp_path):
    """The checkpoint's optimizer state carries its lr (and its RNG its data order): resuming
    under another --lr or --seed would silently train with a mix of both."""
    out = tmp_path / "run"
    tiny = {**TINY, "lr_schedule": "constant", "epochs": 1}
    train(**tiny, method="bptt", seed=1, out=str(out))
    with pytest.raises(ConfigError, match=r"lr=0\.001 \(asked: 0\.002\).*another --out"):
        train(**{**tiny, "lr": 2e-3}, method="bptt", seed=1, out=str(out), resume=True)
    with pytest.raises(ConfigError, match=r"seed=1 \(asked: 2\)"):
        train(**tiny, method="bptt", seed=2, out=str(out), resume=True)
    # epochs, threads and output options may change
    resumed = train(**{**tiny, "epochs": 2}, method="bptt", seed=1, out=str(out), resume=True,
                    threads=1, eval_batch_size=7)
    assert resumed["epochs"] == 2


def test_resume_refuses_a_method_option_whose_default_changed(tmp_path):
    """A checkpoint records every option value, defaults included: a run trained when sigprop's
    temperature default was 1 is not continued at today's default without a word."""
    out = tmp_path / "run"
    tiny = {**TINY, "epochs": 1}
    train(**tiny, method="sigprop", seed=1, out=str(out))
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
    assert checkpoint["learner_options"]["temperature"] == 2.0
    checkpoint["learner_options"]["temperature"] = 1.0  # as an older version wrote it
    torch.save(checkpoint, out / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"sigprop option temperature=1\.0 \(now: 2\.0\)"):
        train(**{**tiny, "epochs": 2}, method="sigprop", seed=1, out=str(out), resume=True)
    resumed = train(**{**tiny, "epochs": 2}, method="sigprop", seed=1, out=str(out), resume=True,
                    options={"temperature": 1.0})
    assert resumed["epochs"] == 2


def _lrs(out):
    return [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_cosine_lr_schedule_decays_per_batch_and_constant_holds(tmp_path):
    cosine, constant = tmp_path / "cosine", tmp_path / "constant"
    train(**{**TINY, "epochs": 4}, method="sigprop", lr=2e-3, out=str(cosine))
    train(**{**TINY, "epochs": 4}, method="sigprop", lr=2e-3, out=str(constant),
          lr_schedule="constant")
    # 4 batches per epoch, 16 in all; the lr logged is the one the epoch's last batch used
    expected = [2e-3 * 0.5 * (1 + math.cos(math.pi * (4 * e - 1) / 16)) for e in (1, 2, 3, 4)]
    assert _lrs(cosine) == pytest.approx(expected, rel=1e-9)
    assert _lrs(constant) == [2e-3] * 4
    summary = json.loads((cosine / "summary.json").read_text())
    assert summary["lr_schedule"] == "cosine" and summary["lr"] == 2e-3


def test_interrupted_cosine_run_resumes_on_the_same_curve(tmp_path):
    out = tmp_path / "run"
    tiny = {**TINY, "epochs": 3, "lr_schedule": "cosine"}
    full = train(**tiny, method="bptt", seed=2, out=str(tmp_path / "full"))

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch, learner, task):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training(TrainConfig(**tiny, method="bptt", seed=2, out=str(out)),
                     on_epoch_end=stop_after_two)
    # the interruption came before epoch 2's checkpoint: the run resumes after epoch 1
    resumed = train(**tiny, method="bptt", seed=2, out=str(out), resume=True)
    assert _lrs(out) == _lrs(tmp_path / "full")
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert resumed["val_accuracy"] == full["val_accuracy"]


def test_unset_settings_take_the_methods_recommendation(tmp_path):
    sigprop = train(**TINY, method="sigprop", out=str(tmp_path / "s"))
    bptt = train(**TINY, method="bptt", out=str(tmp_path / "b"))
    assert (sigprop["lr_schedule"], sigprop["weight_decay"]) == ("cosine", 0.05)
    assert (bptt["lr_schedule"], bptt["weight_decay"]) == ("constant", 0.0)
    config = json.loads((tmp_path / "s" / "config.json").read_text())
    assert (config["lr_schedule"], config["weight_decay"]) == ("cosine", 0.05)
    # explicit values win, and reach the optimizers
    cfg = TrainConfig(**TINY, method="sigprop", weight_decay=0.0, lr_schedule="constant")
    assert (cfg.resolved().weight_decay, cfg.resolved().lr_schedule) == (0.0, "constant")
    assert cfg.learner_config().weight_decay == 0.0
    assert TrainConfig(method="sigprop").learner_config().weight_decay == 0.05


def test_unknown_lr_schedule_lists_the_choices():
    with pytest.raises(ConfigError, match="cosine, constant"):
        train(**TINY, method="bptt", lr_schedule="step")


def test_tasks_json(capsys):
    assert main(["tasks", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["name"] for r in rows}
    assert {"mnist1d", "cue_recall"} <= names
    for r in rows:
        assert set(r) >= {"name", "kind", "input_shape", "classes", "source", "description"}
        assert r["kind"] in ("sequence", "audio", "video")
        assert r["source"] in ("offline", "download", "user")
