"""The installed environment: the lock, a torchaudio that cannot load, and ``tsp doctor``.

A broken torchaudio is simulated the way it fails in practice: a ``torchaudio`` package earlier on
the path whose import raises the linker's OSError (what torchaudio 2.11.1 does beside torch 2.11.0)
or ImportError (not installed). Each check runs the real entry point in a subprocess, so nothing
the test process already imported can hide the failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from temporal_sigprop.doctor import LOCK_FILE, lock_mismatches, parse_lock
from temporal_sigprop.environment import environment

ROOT = Path(__file__).resolve().parent.parent
LINKER_ERROR = ("/site-packages/torchaudio/lib/libtorchaudio.so: undefined symbol: "
                "torch_exception_get_what_without_backtrace")
TINY_TRAIN = ["train", "--model", "gru", "--method", "bptt", "--hidden", "8", "--layers", "1",
              "--epochs", "1", "--batch-size", "20", "--no-progress"]


@pytest.fixture(params=["broken", "missing"])
def bad_torchaudio(request, tmp_path):
    """PYTHONPATH with a ``torchaudio`` whose import fails like a mismatched or absent one."""
    package = tmp_path / "shadow" / "torchaudio"
    package.mkdir(parents=True)
    error = (f"raise OSError({LINKER_ERROR!r})" if request.param == "broken"
             else "raise ModuleNotFoundError(\"No module named 'torchaudio'\")")
    (package / "__init__.py").write_text(error + "\n")
    return request.param, str(tmp_path / "shadow")


def _tsp(args, shadow, cwd, timeout=300):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([shadow, str(ROOT)]),
           "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "temporal_sigprop", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_the_shadow_really_breaks_the_import(bad_torchaudio, tmp_path):
    """Positive control: without this the tests below would pass against a working torchaudio."""
    _, shadow = bad_torchaudio
    env = {**os.environ, "PYTHONPATH": shadow}
    done = subprocess.run([sys.executable, "-c", "import torchaudio"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and ("OSError" in done.stderr or "ModuleNotFound" in done.stderr)


def test_non_audio_training_and_task_list_work_without_torchaudio(bad_torchaudio, tmp_path):
    _, shadow = bad_torchaudio
    out = tmp_path / "run"
    done = _tsp([*TINY_TRAIN, "--task", "cue_recall:delay=3,n_train=60,n_test=20",
                 "--out", str(out)], shadow, tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok"
    assert "torchaudio_version" in summary  # read from metadata, never by importing it
    listed = _tsp(["tasks", "--json"], shadow, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "audio_keywords" in {row["name"] for row in json.loads(listed.stdout)}


def test_audio_task_exits_2_naming_versions_and_fix(bad_torchaudio, tmp_path):
    kind, shadow = bad_torchaudio
    done = _tsp([*TINY_TRAIN, "--task", "audio_keywords:n_train=20,n_test=10"], shadow, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    message = done.stderr
    assert "torchaudio" in message and "To fix" in message and "requirements.lock" in message
    assert "installed: torch " in message  # the versions, from metadata
    assert ("undefined symbol" if kind == "broken" else "No module named") in message


def test_doctor_fails_naming_the_fix_when_torchaudio_cannot_load(bad_torchaudio, tmp_path):
    _, shadow = bad_torchaudio
    done = _tsp(["doctor"], shadow, tmp_path, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "BROKEN torchaudio" in done.stdout
    assert "fix torchaudio:" in done.stdout and "requirements.lock" in done.stdout


def test_doctor_passes_here(tmp_path):
    done = subprocess.run([sys.executable, "-m", "temporal_sigprop", "doctor"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout
    for name in ("torch", "torchaudio", "matplotlib", "h5py", "wandb", "threads"):
        assert name in done.stdout


def test_environment_record_does_not_import_torchaudio(monkeypatch):
    # ``sys.modules[name] = None`` makes any import of it raise ImportError.
    monkeypatch.setitem(sys.modules, "torchaudio", None)
    record = environment("cpu", 1)
    assert record["torch_version"] and record["threads"] == 1
    assert "torchaudio_version" in record


def test_installed_versions_match_the_lock():
    """CI installs with the lock; a version that drifted from it fails here, by name."""
    assert LOCK_FILE.is_file()
    pins = parse_lock()
    for name in ("torch", "torchaudio", "numpy", "einops", "pytest"):
        assert name in pins, f"{name} is not pinned in {LOCK_FILE.name}"
    assert lock_mismatches() == []


def test_torch_and_torchaudio_are_one_exact_pair_everywhere():
    """pyproject.toml, the lock and what is installed name the same torch/torchaudio pair."""
    text = (ROOT / "pyproject.toml").read_text()
    pins = parse_lock()
    for name in ("torch", "torchaudio"):
        assert f'"{name}=={pins[name]}"' in text, f"pyproject.toml must pin {name}=={pins[name]}"


def test_lock_check_reports_a_drifted_version(tmp_path):
    """Positive control for the lock comparison: a pin that cannot match is reported."""
    lock = tmp_path / "requirements.lock"
    lock.write_text("numpy==0.0.1\n    # via something\nnever-installed-package==1.0 ; "
                    "sys_platform == 'nowhere'\n")
    assert parse_lock(lock) == {"numpy": "0.0.1"}  # markers that do not apply are skipped
    assert [m.split()[0] for m in lock_mismatches(lock)] == ["numpy"]
