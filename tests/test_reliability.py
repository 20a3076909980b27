"""Reliability: bad input never reaches a traceback, a "good" checkpoint is good, and a killed run
leaves nothing written twice. One test (or case) per fault found by probing the command line as a
hostile user would; each failed before its fix.

Bad input is driven through the real entry point (``cli.main``) in-process: an exception that
escaped would fail the test with its traceback, so ``== 2`` also proves there was none.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.bptt import BPTT
from temporal_sigprop import NonFiniteLossError, train
from temporal_sigprop import harness
from temporal_sigprop.cli import main
from temporal_sigprop.harness import TrainConfig, run_training

TASK = "cue_recall:delay=3,n_train=120,n_test=40"
TINY = ["--task", TASK, "--model", "gru", "--hidden", "6", "--layers", "1", "--epochs", "1",
        "--batch-size", "40", "--no-progress"]
TINY_KW = dict(task=TASK, model="gru", hidden=6, layers=1, batch_size=40, progress=False,
               lr_schedule="constant")


def _exit_code(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _assert_clean_refusal(code, err, *words):
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("tsp")]
    assert lines, err
    for word in words:
        assert word in err, (word, err)


# ------------------------------------------------------------------ F1: a "good" checkpoint is good

def test_non_finite_gradient_with_finite_loss_stops_before_the_checkpoint(tmp_path, monkeypatch):
    """A finite loss with an infinite gradient turns the weights to NaN through Adam (inf/inf);
    the run must stop at that batch and keep the previous epoch's checkpoint."""
    out = tmp_path / "run"
    calls = {"n": 0}
    original = BPTT.train_batch

    def poisoned(self, x, y):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2 (3 batches per epoch), second batch
            self.model.cells[0].input_weight.register_hook(lambda g: g * float("inf"))
        return original(self, x, y)

    monkeypatch.setattr(BPTT, "train_batch", poisoned)
    cfg = TrainConfig(**{**TINY_KW, "epochs": 3}, method="bptt", out=str(out))
    with pytest.raises(NonFiniteLossError, match="non-finite values in cells.0.input_weight.*step 5"):
        run_training(cfg)
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["loop"]["epoch"] == 1
    for tensor in state["learner"]["model"].values():
        assert torch.isfinite(tensor).all()
    for opt in state["learner"]["optimizers"].values():
        for per_param in opt["state"].values():
            assert all(torch.isfinite(v).all() for v in per_param.values() if torch.is_tensor(v))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # no line from NaN weights


def test_finite_run_is_not_flagged(tmp_path):
    """Positive control for the check above: the same run without the poison finishes."""
    summary = train(**{**TINY_KW, "epochs": 2}, method="bptt", out=str(tmp_path / "ok"))
    assert summary["status"] == "ok"


def test_npz_values_beyond_float32_are_bad_input_not_divergence(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(60, 5, 3))
    x[3, 2, 1] = 1e300  # finite in float64, inf in float32
    y = (x[:, 0, 0] > 0).astype(np.int64)
    np.savez(tmp_path / "big.npz", x=x, y=y)
    code, err = _exit_code(["train", *TINY, "--task", f"file:{tmp_path / 'big.npz'}"], capsys)
    _assert_clean_refusal(code, err, "float32", "'x'")
    x = x.astype(np.longdouble)
    x[3, 2, 1] = np.longdouble("1e4000") if np.finfo(np.longdouble).max > 1e4000 else np.inf
    np.savez(tmp_path / "long.npz", x=x, y=y)
    code, err = _exit_code(["train", *TINY, "--task", f"file:{tmp_path / 'long.npz'}"], capsys)
    _assert_clean_refusal(code, err, "'x'")


# ------------------------------------------------------------------ F2: nothing written twice

def test_kill_between_metrics_and_checkpoint_leaves_no_duplicate_epoch(tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(**{**TINY_KW, "epochs": 3}, method="bptt", seed=4, out=str(full))

    out = tmp_path / "run"
    real_save = harness.atomic_torch_save
    saves = {"n": 0}

    def killed_on_second(path, obj):
        saves["n"] += 1
        if saves["n"] == 2:  # epoch 2's metrics line is written, its checkpoint is not
            (Path(path).parent / f".{Path(path).name}.abc123.tmp").write_bytes(b"half")
            raise KeyboardInterrupt
        real_save(path, obj)

    monkeypatch.setattr(harness, "atomic_torch_save", killed_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig(**{**TINY_KW, "epochs": 3}, method="bptt", seed=4, out=str(out)))
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # the fault, set up
    monkeypatch.setattr(harness, "atomic_torch_save", real_save)
    train(**{**TINY_KW, "epochs": 3}, method="bptt", seed=4, out=str(out), resume=True)

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    expected = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(lines, expected):
        assert got["val_accuracy"] == want["val_accuracy"]
        assert got["train_loss"] == want["train_loss"]
    assert not list(out.glob(".*.tmp"))  # the interrupted write's temporary is gone


# ------------------------------------------------------------------ F3: damaged checkpoints

def _finished_run(tmp_path) -> Path:
    out = tmp_path / "run"
    code = main(["train", *TINY, "--method", "bptt", "--out", str(out)])
    assert code == 0
    return out


def _flip_bytes(path: Path, count: int = 64) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong dict", "tensor",
                                    "wrong shape", "directory", "flipped bytes"])
def test_damaged_checkpoint_is_refused_naming_the_file(damage, tmp_path, capsys):
    out = _finished_run(tmp_path)
    capsys.readouterr()
    ckpt = out / "checkpoint.pt"
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(4096))
    elif damage == "wrong dict":
        torch.save({"weights": torch.zeros(3)}, ckpt)
    elif damage == "tensor":
        torch.save(torch.zeros(3), ckpt)
    elif damage == "wrong shape":
        state = torch.load(ckpt, weights_only=False)
        key = next(iter(state["learner"]["model"]))
        state["learner"]["model"][key] = torch.zeros(2, 2)
        torch.save(state, ckpt)
    elif damage == "directory":
        ckpt.unlink()
        ckpt.mkdir()
    elif damage == "flipped bytes":
        _flip_bytes(ckpt)
    code, err = _exit_code(["train", *TINY, "--epochs", "2", "--method", "bptt", "--out",
                            str(out), "--resume"], capsys)
    _assert_clean_refusal(code, err, str(ckpt), "--overwrite")


def test_undamaged_checkpoint_resumes(tmp_path, capsys):
    """Positive control for the checks above."""
    out = _finished_run(tmp_path)
    assert main(["train", *TINY, "--epochs", "2", "--method", "bptt", "--out", str(out),
                 "--resume"]) == 0


# ------------------------------------------------------------------ F4: one run per folder

def test_fresh_run_refuses_a_folder_holding_another_run(tmp_path, capsys):
    out = _finished_run(tmp_path)
    before = (out / "summary.json").read_text()
    code, err = _exit_code(["train", *TINY, "--method", "sigprop", "--out", str(out)], capsys)
    _assert_clean_refusal(code, err, "already holds a run", "--overwrite", "--resume")
    assert (out / "summary.json").read_text() == before  # nothing of the old run touched
    assert main(["train", *TINY, "--method", "sigprop", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "sigprop"
    assert json.loads((out / "config.json").read_text())["method"] == "sigprop"


def test_resume_into_an_empty_folder_says_it_starts_fresh(tmp_path, capsys):
    code, err = _exit_code(["train", *TINY, "--out", str(tmp_path / "new"), "--resume"], capsys)
    assert code == 0 and "starting a fresh run" in err


def test_resume_refuses_a_folder_of_another_run_without_checkpoint(tmp_path, capsys):
    out = _finished_run(tmp_path)
    (out / "checkpoint.pt").unlink()
    code, err = _exit_code(["train", *TINY, "--method", "sigprop", "--out", str(out),
                            "--resume"], capsys)
    _assert_clean_refusal(code, err, "already holds a run")


# ------------------------------------------------------------------ F5-F7: bad values, exit 2

def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _npz(tmp_path, name, **arrays) -> str:
    np.savez(tmp_path / name, **arrays)
    return f"file:{tmp_path / name}"


X = np.random.default_rng(0).normal(size=(60, 5, 3)).astype(np.float32)
Y = (X[:, 0, 0] > 0).astype(np.int64)

BAD_TRAIN_FLAGS = [
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-1"], "--batch-size"),
    (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--eval-batch-size", "-1"], "--eval-batch-size"),
    (["--lr", "-1"], "--lr"), (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"),
    (["--lr", "inf"], "--lr"), (["--lr", "1e400"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--weight-decay", "inf"], "--weight-decay"),
    (["--seed", "1" * 70], "--seed"), (["--seed", "-3"], "--seed"),
    (["--device", "foo"], "--device"), (["--device", "mps"], "--device"),
    (["--device", "meta"], "--device"),
    (["--model-options", "hidden_size=5"], "hidden_size"),
    (["--model", "lif", "--model-options", "tau_mem=0"], "tau_mem"),
    (["--model", "lif", "--model-options", "tau_mem=abc"], "tau_mem"),
    (["--model", "lif", "--model-options", "tau_mem=-5"], "tau_mem"),
    (["--model", "lif", "--model-options", "recurrent=maybe"], "recurrent"),
    (["--model", "lif", "--model-options", "threshold=nan"], "threshold"),
    (["--hidden", "10000000"], "--hidden"), (["--hidden", "0"], "--hidden"),
    (["--task", "cue_recall:delay=100000000"], "delay"),
    (["--epochs", "-1"], "--epochs"), (["--epochs", "0"], "--epochs"),
    (["--max-batches", "-1"], "--max-batches"),
    (["--grad-clip", "-1"], "--grad-clip"), (["--grad-clip", "nan"], "--grad-clip"),
    (["--grad-clip", "inf"], "--grad-clip"),
    (["--threads", "-1"], "--threads"), (["--threads", "10000"], "--threads"),
    (["--method", "sigprop", "--temperature", "inf"], "--temperature"),
    (["--method", "sigprop", "--temperature", "nan"], "--temperature"),
    (["--method", "sigprop", "--projection-scale", "nan"], "--projection-scale"),
    (["--method", "eprop"], "e-prop"),
    (["--method", "sigprop", "--temperature", "0"], "--temperature"),
    (["--method", "sigprop", "--projection-scale", "0"], "--projection-scale"),
    (["--method", "tbptt", "--k", "0"], "--k"),
    (["--data-dir", " "], "--data-dir"),
]


@pytest.mark.parametrize("flags, word", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_bad_flag_values_exit_2(flags, word, tmp_path, capsys):
    code, err = _exit_code(["train", *TINY, *flags, "--out", str(tmp_path / "o")], capsys)
    _assert_clean_refusal(code, err, word)
    assert not (tmp_path / "o" / "summary.json").exists()


def test_empty_out_is_refused_not_a_silent_run_that_writes_nothing(capsys):
    code, err = _exit_code(["train", *TINY, "--out", ""], capsys)
    _assert_clean_refusal(code, err, "--out")


@pytest.mark.parametrize("where", ["a file", "/dev/null", "/proc", "over-long"])
def test_unwritable_out_exits_2(where, tmp_path, capsys):
    target = {"a file": _write(tmp_path / "f.txt", b"x"), "/dev/null": "/dev/null",
              "/proc": "/proc/tsp-run", "over-long": str(tmp_path / ("x" * 300))}[where]
    code, err = _exit_code(["train", *TINY, "--out", target], capsys)
    _assert_clean_refusal(code, err, "--out")


def _bad_npz_files(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (task spec, a word the message must contain)."""
    cases = {
        "labels 1e9": (_npz(tmp_path, "a.npz", x=X, y=np.full(60, 10**9)), "'y'"),
        "timedelta labels": (_npz(tmp_path, "b.npz", x=X, y=Y.astype("timedelta64[s]")), "'y'"),
        "no features": (_npz(tmp_path, "c.npz", x=X[:, :, :0], y=Y), "features"),
        "train labels all -1": (_npz(tmp_path, "d.npz", x=X, y=np.full((60, 5), -1),
                                     x_test=X, y_test=np.zeros((60, 5), np.int64)), "-1"),
        "uint64 label": (_npz(tmp_path, "e.npz", x=X, y=np.full(60, 2**63 + 5, np.uint64)),
                         str(2**63 + 5)),
    }
    # a zip member that is not an array, and one whose CRC is wrong
    with zipfile.ZipFile(tmp_path / "f.npz", "w") as z:
        z.writestr("x.npy", b"not an array")
        z.writestr("y.npy", b"nor this")
    cases["non-npy members"] = (f"file:{tmp_path / 'f.npz'}", "'x'")
    np.savez(tmp_path / "g.npz", x=X, y=Y)
    data = bytearray((tmp_path / "g.npz").read_bytes())
    data[200] ^= 0xFF  # inside x's data: its CRC no longer matches
    (tmp_path / "g.npz").write_bytes(bytes(data))
    cases["crc-corrupt"] = (f"file:{tmp_path / 'g.npz'}", "'x'")
    # a header that declares an enormous shape over a few bytes of data
    import io
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (10**12, 5, 3)})
    with zipfile.ZipFile(tmp_path / "h.npz", "w") as z:
        z.writestr("x.npy", np.lib.format.magic(1, 0) + header.getvalue() + b"\0" * 64)
        z.writestr("y.npy", _npy_bytes(Y))
    cases["huge declared shape"] = (f"file:{tmp_path / 'h.npz'}", "'x'")
    return cases


def _npy_bytes(array) -> bytes:
    import io
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_bad_npz_files_exit_2_naming_the_array(tmp_path, capsys):
    for name, (spec, word) in _bad_npz_files(tmp_path).items():
        code, err = _exit_code(["train", *TINY, "--task", spec], capsys)
        assert code == 2 and "Traceback" not in err, (name, err)
        assert word in err, (name, err)


@pytest.mark.parametrize("content", ["text", "gzip", "random", "npy"])
def test_files_that_are_not_npz_never_suggest_unsafe_loading(content, tmp_path, capsys):
    path = tmp_path / "data.npz"
    if content == "text":
        path.write_text("x,y\n1,2\n")
    elif content == "gzip":
        path.write_bytes(gzip.compress(b"hello" * 100))
    elif content == "random":
        path.write_bytes(os.urandom(2048))
    else:
        np.save(tmp_path / "a.npy", X)
        (tmp_path / "a.npy").rename(path)
    code, err = _exit_code(["train", *TINY, "--task", f"file:{path}"], capsys)
    _assert_clean_refusal(code, err, "npz")
    assert "pickle" not in err and "unsafe" not in err


def test_fifo_as_npz_path_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    done = subprocess.run([sys.executable, "-m", "temporal_sigprop", *["train", *TINY,
                           "--task", f"file:{fifo}"]], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and "regular file" in done.stderr


# ------------------------------------------------------------------ presets, compare, bench

PRESET_BODIES = {
    "a list": b"[1, 2, 3]", "a string": b'"quick"', "null": b"null",
    "latin-1": '{"name": "caf\xe9", "tasks": ["cue_recall"]}'.encode("latin-1"),
    "epochs abc": b'{"tasks": ["cue_recall"], "defaults": {"epochs": "abc"}}',
    "epochs -1": b'{"tasks": ["cue_recall"], "defaults": {"epochs": -1}}',
    "batch_size 0": b'{"tasks": ["cue_recall"], "defaults": {"batch_size": 0}}',
    "lr inf": b'{"tasks": ["cue_recall"], "lr_search": {"lrs": {"default": [1e400]}}}',
    "task not a spec": b'{"tasks": [42]}',
    "bad model option": b'{"tasks": ["cue_recall"], "model_options": {"lif": {"tau_mem": 0}}}',
}


@pytest.mark.parametrize("body", list(PRESET_BODIES), ids=list(PRESET_BODIES))
def test_bad_presets_exit_2(body, tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_bytes(PRESET_BODIES[body])
    code, err = _exit_code(["compare", "--preset", str(path), "--out", str(tmp_path / "c")],
                           capsys)
    _assert_clean_refusal(code, err, "preset")


def test_preset_that_is_a_directory_exits_2(tmp_path, capsys):
    code, err = _exit_code(["compare", "--preset", str(tmp_path), "--out", str(tmp_path / "c")],
                           capsys)
    _assert_clean_refusal(code, err, "preset")


@pytest.mark.parametrize("jobs", ["0", "-1", "1000"])
def test_compare_jobs_out_of_range_exit_2(jobs, tmp_path, capsys):
    code, err = _exit_code(["compare", "--preset", "smoke", "--jobs", jobs, "--out",
                            str(tmp_path / "c")], capsys)
    _assert_clean_refusal(code, err, "--jobs")


@pytest.mark.parametrize("flags", [["--model", "foo"], ["--hidden", "0"], ["--lengths", "0"],
                                   ["--lengths", "-5"], ["--time-budget", "-1"],
                                   ["--batch-size", "0"], ["--repeats", "0"]],
                         ids=lambda f: " ".join(f))
def test_bad_bench_flags_exit_2(flags, tmp_path, capsys):
    code, err = _exit_code(["bench", *flags, "--out", str(tmp_path / "b")], capsys)
    _assert_clean_refusal(code, err)


# ------------------------------------------------------------------ a full disk

def test_full_disk_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    out = _finished_run(tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    from temporal_sigprop import io as tsp_io

    real_fdopen = os.fdopen

    def full_disk(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        if "w" in mode:
            def refuse(data):
                raise OSError(28, "No space left on device")
            handle.write = refuse
        return handle

    monkeypatch.setattr(tsp_io.os, "fdopen", full_disk)
    code, err = _exit_code(["train", *TINY, "--epochs", "2", "--method", "bptt", "--out",
                            str(out), "--resume"], capsys)
    _assert_clean_refusal(code, err, "No space left on device", "intact")
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not list(out.glob(".*.tmp"))


def test_compare_runs_do_not_announce_their_fresh_starts(tmp_path, capsys):
    """tsp compare resumes every run by design: the notice above would repeat for each one."""
    from temporal_sigprop.run_files import quiet_fresh_starts

    with quiet_fresh_starts():
        code, err = _exit_code(["train", *TINY, "--out", str(tmp_path / "new"), "--resume"],
                               capsys)
    assert code == 0 and "starting a fresh run" not in err
