"""A run killed with SIGKILL at a random moment and continued with ``--resume`` ends exactly
where an uninterrupted run with the same seed ends; so does a compare killed while it writes its
report; a full disk during a checkpoint write keeps the previous checkpoint and exits 2.

Each killed run is a real ``python -m temporal_sigprop train`` process. The package has no hook
that slows or announces its writes, so the kills land where chance puts them: either at a random
moment after a random number of epochs has been written, or the instant a checkpoint temporary
(``.checkpoint.pt.*.tmp``) is seen, which lands inside the write. Every interrupted process is
resumed (and may be killed again) until the run completes; then

- ``metrics.jsonl``, ``summary.json`` and the checkpoint (every tensor of the learner and its
  optimizers, the data-order and torch RNG states, the loop state) equal the uninterrupted run's,
  except the fields that measure the process rather than the training: wall-clock times
  (``train_seconds``, ``time_per_step_ms``; ``timed_seconds`` in the checkpoint's loop state)
  and process memory (``peak_rss_bytes``, ``cuda_peak_*``); ``config.json`` and the checkpoint's
  config differ only in ``out`` and ``resume``;
- no ``*.tmp`` file remains.

The uninterrupted reference runs in this process (through ``cli.main``); the same seed gives the
same numbers in another process, which the comparison checks on the way.

``TSP_KILL_SEED`` fixes the kill schedule (default: a fresh one, printed on failure);
``TSP_KILL_ROUNDS`` sets the kills per method in the slow test (default 2); with
``TSP_KILL_STATS=PATH`` every method appends one JSON line of what its kills hit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from temporal_sigprop import harness
from temporal_sigprop import io as tsp_io
from temporal_sigprop.cli import main

TASK = "cue_recall:delay=2,n_train=40,n_test=20"
EPOCHS = 6
METHOD_MODELS = {"bptt": ("gru", []), "tbptt": ("gru", ["--k", "2"]), "rtrl": ("rnn", []),
                 "snap1": ("gru", []), "eprop": ("lstm", []), "fwdgrad": ("gru", []),
                 "sigprop": ("gru", [])}
TIMING_KEYS = {"train_seconds", "time_per_step_ms", "peak_rss_bytes", "cuda_peak_bytes",
               "cuda_peak_allocated_bytes", "cuda_peak_reserved_bytes"}
FOLDER_KEYS = {"out", "resume"}  # where the run was written and how it was started
KILL_SEED = int(os.environ.get("TSP_KILL_SEED") or random.SystemRandom().randrange(2**32))
KILL_ROUNDS = int(os.environ.get("TSP_KILL_ROUNDS", "2"))
STATS_PATH = os.environ.get("TSP_KILL_STATS")
PROCESS_SECONDS = 300


def train_argv(method: str, out: Path, epochs: int = EPOCHS) -> list[str]:
    model, extra = METHOD_MODELS[method]
    # seed 3, three batches per epoch; the method's own lr schedule (cosine for sigprop: the
    # curve must continue across a resume) and its other defaults
    return ["train", "--task", TASK, "--model", model, "--method", method, "--hidden", "4",
            "--layers", "1", "--epochs", str(epochs), "--batch-size", "12", "--eval-batch-size",
            "64", "--seed", "3", "--no-progress", "--out", str(out), *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "WANDB_MODE": "disabled"}


def _quiet_main(argv) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(argv)


# ------------------------------------------------------------------ what "identical" means

def _metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in path.read_text().splitlines()]


def _summary(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in TIMING_KEYS}


def _config(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in FOLDER_KEYS}


def _checkpoint(path: Path) -> dict:
    state = torch.load(path, weights_only=False)
    state["loop"] = {k: v for k, v in state["loop"].items() if k != "timed_seconds"}
    state["config"] = {k: v for k, v in state["config"].items() if k not in FOLDER_KEYS}
    return state


def assert_same(a, b, where="") -> None:
    """Exact equality of nested dicts/lists/tensors (tensors: same dtype, shape and values)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        assert torch.is_tensor(a) and torch.is_tensor(b), where
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys {set(a) ^ set(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(got: Path, want: Path) -> None:
    assert_same(_metrics(got / "metrics.jsonl"), _metrics(want / "metrics.jsonl"), "metrics")
    assert_same(_summary(got / "summary.json"), _summary(want / "summary.json"), "summary")
    assert_same(_config(got / "config.json"), _config(want / "config.json"), "config")
    assert_same(_checkpoint(got / "checkpoint.pt"), _checkpoint(want / "checkpoint.pt"),
                "checkpoint")
    leftovers = sorted(p.name for p in got.rglob("*.tmp"))
    assert not leftovers, leftovers


# ------------------------------------------------------------------ killing a run

def _epochs_written(metrics: Path) -> int:
    try:
        return metrics.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _checkpoint_epoch(path: Path):
    try:
        return torch.load(path, weights_only=False)["loop"]["epoch"]
    except FileNotFoundError:
        return 0
    except Exception:  # noqa: BLE001 - a checkpoint caught half-renamed cannot exist (atomic)
        return "unreadable"


def kill_and_resume(method: str, out: Path, rng: random.Random, kills: int) -> dict:
    """Start the run, SIGKILL it ``kills`` times at random moments (each restart resumes), then
    resume it to completion. Returns what the kills hit."""
    command = [sys.executable, "-m", "temporal_sigprop", *train_argv(method, out), "--resume"]
    metrics = out / "metrics.jsonl"
    seen = {"kills": 0, "finished before the kill": 0, "inside a checkpoint write": 0,
            "metrics ahead of checkpoint": 0, "before the first checkpoint": 0,
            "kill epochs": []}
    for _ in range(kills):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=_env(), cwd=out.parent)
        mode = rng.choice(["moment", "temporary"])
        target = rng.randint(min(_epochs_written(metrics), EPOCHS - 1), EPOCHS - 1)
        delay = rng.uniform(0, 0.05)
        deadline = time.monotonic() + PROCESS_SECONDS
        while proc.poll() is None and time.monotonic() < deadline:
            if mode == "temporary" and any(out.glob(".checkpoint.pt.*.tmp")):
                break  # inside the write: kill now
            if mode == "moment" and _epochs_written(metrics) >= target and \
                    (out / "config.json").exists():
                time.sleep(delay)
                break
            time.sleep(0.001)
        if proc.poll() is not None:  # it finished first
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode(errors="replace")
            seen["finished before the kill"] += 1
            continue
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        seen["kills"] += 1
        epoch = _checkpoint_epoch(out / "checkpoint.pt")
        seen["kill epochs"].append(epoch)
        if any(out.glob(".checkpoint.pt.*.tmp")):
            seen["inside a checkpoint write"] += 1
        if epoch == 0:
            seen["before the first checkpoint"] += 1
        elif isinstance(epoch, int) and _epochs_written(metrics) > epoch:
            seen["metrics ahead of checkpoint"] += 1
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=out.parent,
                          timeout=PROCESS_SECONDS)
    assert done.returncode == 0, done.stderr
    return seen


def _check_methods(methods, tmp_path: Path, kills: int) -> None:
    references = {}
    for method in methods:  # uninterrupted, in this process
        references[method] = tmp_path / f"{method}-reference"
        assert _quiet_main(train_argv(method, references[method])) == 0

    def one(index_method):
        index, method = index_method
        out = tmp_path / f"{method}-killed"
        out.mkdir()
        rng = random.Random(KILL_SEED + index)
        return method, kill_and_resume(method, out, rng, kills)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, enumerate(methods)))
    for method, seen in results:
        note = f"{method}: kill seed {KILL_SEED}, {seen}"
        try:
            assert_same_run(tmp_path / f"{method}-killed", references[method])
        except AssertionError as err:
            raise AssertionError(f"{note}: {err}") from None
        _record("train", {"method": method, **seen, "identical": True})


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    """The fast subset: one kill each for BPTT and sigprop (cosine lr across the resume)."""
    _check_methods(["bptt", "sigprop"], tmp_path, kills=1)


@pytest.mark.slow
def test_every_other_method_survives_repeated_kills(tmp_path):
    """The other five methods (each with its own model), killed KILL_ROUNDS times each."""
    _check_methods([m for m in METHOD_MODELS if m not in ("bptt", "sigprop")], tmp_path,
                   kills=KILL_ROUNDS)


def test_comparison_detects_a_different_run(tmp_path):
    """Positive control for assert_same_run: another seed must not pass as the same run."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert _quiet_main(train_argv("bptt", a, epochs=2)) == 0
    assert _quiet_main([*train_argv("bptt", b, epochs=2), "--seed", "4"]) == 0  # last wins
    with pytest.raises(AssertionError):
        assert_same_run(b, a)


# ------------------------------------------------------------------ a full disk

def test_full_disk_during_a_checkpoint_write(tmp_path, monkeypatch, capsys):
    """The disk fills while epoch 3's checkpoint is being written (half of it is on disk):
    exit 2 saying the previous checkpoint is intact, epoch 2's checkpoint untouched, no
    temporary left; once there is space, --resume finishes the run exactly as if nothing had
    happened (epoch 3's metrics line, written before the failed checkpoint, is not doubled)."""
    reference = tmp_path / "reference"
    assert _quiet_main(train_argv("bptt", reference, epochs=4)) == 0

    out = tmp_path / "run"
    real_save, real_fdopen = harness.atomic_torch_save, os.fdopen
    saves, disk_full, before = {"n": 0}, {"on": False}, {}

    def counting_save(path, obj):
        saves["n"] += 1
        if saves["n"] == 3:
            before["bytes"] = Path(path).read_bytes()
            disk_full["on"] = True
        try:
            real_save(path, obj)
        finally:
            disk_full["on"] = False

    def filling_fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        if disk_full["on"] and "w" in mode:
            raw_write = handle.write

            def write(data):
                raw_write(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            handle.write = write
        return handle

    monkeypatch.setattr(harness, "atomic_torch_save", counting_save)
    monkeypatch.setattr(tsp_io.os, "fdopen", filling_fdopen)
    code = main(train_argv("bptt", out, epochs=4))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "No space left on device" in err and "intact" in err
    assert (out / "checkpoint.pt").read_bytes() == before["bytes"]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["loop"]["epoch"] == 2
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert _epochs_written(out / "metrics.jsonl") == 3  # the fault, as set up

    monkeypatch.setattr(tsp_io.os, "fdopen", real_fdopen)
    monkeypatch.setattr(harness, "atomic_torch_save", real_save)
    assert _quiet_main([*train_argv("bptt", out, epochs=4), "--resume"]) == 0
    assert_same_run(out, reference)


# ------------------------------------------------------------------ a compare killed mid-report

COMPARE_PRESET = {
    "name": "kill", "tasks": [TASK], "models": ["gru"], "methods": ["bptt", "sigprop"],
    "seeds": [0], "defaults": {"epochs": 2, "hidden": 4, "layers": 1, "batch_size": 20,
                               "max_batches": 2, "threads": 1},
    "lr_search": {"lrs": {"default": [0.01]}}, "alignment": None, "bench": None,
}
#: results.json fields that describe the process, not the comparison: the machine, the clock
#: and the load ("environment", "timing", "wall_seconds"), the command (it names the out
#: folder), how many runs were read back instead of trained (a rerun reads them all back), the
#: summary sentences (they quote speed ratios) and the timing/memory figures.
RESULT_NOISE = {"environment", "timing", "wall_seconds", "command", "counts", "cached",
                "summary"} | TIMING_KEYS


def _report_data(path: Path):
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in RESULT_NOISE}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(json.loads(path.read_text()))


def _complete_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data[-12:-8] == b"\0\0\0\0" \
        and data[-8:-4] == b"IEND"


#: Moments inside the report write to kill at: the first plot on disk, results.json written,
#: report.md written, report.html's temporary seen (each file is written in this order).
REPORT_STAGES = {
    "first plot": lambda out: any((out / "plots").glob("*.png")),
    "results.json": lambda out: (out / "results.json").exists(),
    "report.md": lambda out: (out / "report.md").exists(),
    "report.html temporary": lambda out: any(out.glob(".report.html.*.tmp")),
}


def _kill_compare_at(stage: str, tmp_path: Path, flags: list[str], reference: Path) -> dict:
    out = tmp_path / f"killed at {stage}"
    proc = subprocess.Popen([sys.executable, "-m", "temporal_sigprop", "compare", *flags,
                             "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(), cwd=tmp_path)
    reached = REPORT_STAGES[stage]
    deadline = time.monotonic() + PROCESS_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        if out.exists() and reached(out):
            break
        time.sleep(0.0005)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    if not killed:
        assert proc.returncode == 0, err.decode(errors="replace")
    written = sorted(p.name for p in out.iterdir())
    # rerun: every run is read back from its folder, and the report is written again
    assert _quiet_main(["compare", *flags, "--out", str(out)]) == 0
    assert_same(_report_data(out / "results.json"), _report_data(reference / "results.json"),
                f"results.json (killed at {stage}: {killed}, files then: {written})")
    for name in ("report.md", "report.html", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    pngs = sorted((out / "plots").glob("*.png"))
    assert pngs and all(_complete_png(p) for p in pngs), pngs
    assert {p.name for p in pngs} == {p.name for p in (reference / "plots").glob("*.png")}
    assert not list(out.rglob("*.tmp"))
    return {"stage": stage, "killed": killed, "files then": written}


def _compare_setup(tmp_path: Path):
    preset = tmp_path / "kill.json"
    preset.write_text(json.dumps(COMPARE_PRESET))
    flags = ["--preset", str(preset), "--jobs", "1", "--no-progress", "--no-bench"]
    reference = tmp_path / "reference"
    assert _quiet_main(["compare", *flags, "--out", str(reference)]) == 0
    return flags, reference


def _record(kind: str, seen: dict) -> None:
    if STATS_PATH:
        with open(STATS_PATH, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": kind, "seed": KILL_SEED, **seen}) + "\n")


def test_compare_killed_while_writing_its_report(tmp_path):
    flags, reference = _compare_setup(tmp_path)
    stage = random.Random(KILL_SEED).choice(sorted(REPORT_STAGES))
    _record("compare", _kill_compare_at(stage, tmp_path, flags, reference))


@pytest.mark.slow
def test_compare_killed_at_every_stage_of_its_report(tmp_path):
    flags, reference = _compare_setup(tmp_path)
    for stage in REPORT_STAGES:
        _record("compare", _kill_compare_at(stage, tmp_path, flags, reference))


def test_compare_rerun_removes_the_temporaries_a_kill_left(tmp_path):
    """Found by the kill tests: a compare killed inside results.csv's write left its temporary,
    and the rerun kept it. The rerun removes the compare's own temporaries, nothing else."""
    flags, out = _compare_setup(tmp_path)
    stale = [out / ".results.csv.k1ll3d.tmp", out / ".report.html.k1ll3d.tmp",
             out / "plots" / ".curves_cue_recall_gru.png.k1ll3d.tmp"]
    for path in stale:
        path.write_bytes(b"half a write")
    foreign = out / ".my-notes.tmp"  # not a file the compare writes
    foreign.write_text("keep me")
    assert _quiet_main(["compare", *flags, "--out", str(out)]) == 0
    assert not [p for p in stale if p.exists()]
    assert foreign.read_text() == "keep me"
