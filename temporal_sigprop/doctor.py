"""``tsp doctor``: is this environment able to run the package? Short, in the spirit of
``python -m torch.utils.collect_env``, but every component is *loaded*, not only looked up: a
torchaudio whose extension was built for another torch has metadata and a version, and still
fails on import.

Prints one line per component and exits 1 (naming the fix) when a required component, or an
optional one that is installed, does not load. Optional components that are absent are listed,
with the command that installs them, and do not fail the check.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.optional_imports import describe_load_error

from .environment import installed_version

#: The lock that pins every version (present in a source checkout; see README, "Installing").
LOCK_FILE = Path(__file__).resolve().parent.parent / "requirements.lock"
REINSTALL = "pip install -c requirements.lock -e '.[dev]'  (in the project folder)"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    optional: bool = False
    warn: bool = False
    """Works, but not as the project pins it (reported, does not fail the check)."""


def _load(module: str, exercise=None):
    """Import ``module`` (and run ``exercise(module)``): (ok, what failed or the elapsed ms)."""
    start = time.perf_counter()
    try:
        mod = importlib.import_module(module)
        if exercise is not None:
            exercise(mod)
    except Exception as err:  # noqa: BLE001 - any failure to load is what we report
        return False, describe_load_error(err)
    return True, f"loads in {1000 * (time.perf_counter() - start):.0f} ms"


def _torchaudio_features(torchaudio) -> None:
    """Run the one computation the audio tasks need, so the compiled extension is exercised."""
    import torch
    torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=400, n_mels=40)(
        torch.zeros(1, 1600))


def _matplotlib_agg(matplotlib) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401 - the report draws with pyplot


def check_torch() -> list[Check]:
    ok, detail = _load("torch")
    version = installed_version("torch")
    if not ok:
        return [Check("torch", False, f"{version}: {detail}", f"reinstall: {REINSTALL}")]
    import torch
    cuda_build = torch.version.cuda or "none (CPU build)"
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        devices = f"CUDA available: {names}"
    else:
        devices = "CUDA not available (runs on the CPU)"
    return [Check("torch", True, f"{torch.__version__}, CUDA build {cuda_build}; {devices}")]


def check_torchaudio() -> Check:
    version = installed_version("torchaudio")
    if version is None:
        return Check("torchaudio", False, "not installed (the audio tasks need it)",
                     f"install the pinned pair: {REINSTALL}")
    ok, detail = _load("torchaudio", _torchaudio_features)
    if ok:
        return Check("torchaudio", True, f"{version}, extension {detail}")
    return Check("torchaudio", False,
                 f"{version} does not load beside torch {installed_version('torch')} ({detail})",
                 "torchaudio's extension is built for one torch release; install the pair the "
                 f"project pins: {REINSTALL}")


#: (module, distribution, what it is for, exercise)
REQUIRED = (("numpy", "numpy", "arrays", None), ("einops", "einops", "reshapes", None),
            ("mnist1d", "mnist1d", "the mnist1d task", None),
            ("sklearn", "scikit-learn", "video_digits' digit images", None),
            ("tqdm", "tqdm", "progress bars", None),
            ("matplotlib", "matplotlib", "report plots", _matplotlib_agg),
            ("h5py", "h5py", "the shd task (HDF5)", None))
OPTIONAL = (("wandb", "wandb", "--wandb offline|online", "pip install -c requirements.lock "
             "-e '.[wandb]'"),
            ("pytest", "pytest", "the tests", "pip install -c requirements.lock -e '.[dev]'"),
            ("hypothesis", "hypothesis", "the fuzz tests",
             "pip install -c requirements.lock -e '.[dev]'"))


def check_packages() -> list[Check]:
    checks = []
    for module, dist, purpose, exercise in REQUIRED:
        version = installed_version(dist)
        ok, detail = _load(module, exercise) if version else (False, "not installed")
        checks.append(Check(module, ok, f"{version or '-'} ({purpose}): {detail}",
                            "" if ok else f"reinstall: {REINSTALL}"))
    for module, dist, purpose, how in OPTIONAL:
        version = installed_version(dist)
        if version is None:
            checks.append(Check(module, True, f"not installed (optional, for {purpose}): {how}",
                                optional=True))
            continue
        ok, detail = _load(module)
        checks.append(Check(module, ok, f"{version} (optional, for {purpose}): {detail}",
                            "" if ok else f"reinstall: {how}", optional=True))
    return checks


def parse_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """``name -> version`` of the lock's entries whose environment markers match this machine."""
    from packaging.markers import Marker
    from packaging.utils import canonicalize_name

    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or "==" not in line:
            continue
        requirement, _, marker = line.partition(";")
        name, _, version = requirement.partition("==")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        pins[canonicalize_name(name.strip())] = version.strip()
    return pins


def lock_mismatches(path: Path = LOCK_FILE) -> list[str]:
    """Installed packages whose version differs from the lock's pin ("name installed (lock)")."""
    out = []
    for name, pinned in parse_lock(path).items():
        installed = installed_version(name)
        # torch reports a local build label (2.11.0+cu130); the pin is the public version
        if installed is not None and installed.split("+")[0] != pinned.split("+")[0]:
            out.append(f"{name} {installed} (lock: {pinned})")
    return out


def check_lock() -> Check:
    if not LOCK_FILE.is_file():
        return Check("lock", True, "no requirements.lock beside the package (not a source "
                                   "checkout); versions not compared", optional=True)
    try:
        wrong = lock_mismatches()
    except ImportError:
        return Check("lock", True, "cannot compare without the 'packaging' module", optional=True)
    if wrong:
        return Check("lock", True, f"{len(wrong)} installed version(s) differ from "
                                    f"{LOCK_FILE.name}: {', '.join(wrong[:6])}"
                                    f"{' …' if len(wrong) > 6 else ''}; to match it: {REINSTALL}",
                     warn=True)
    return Check("lock", True, f"installed versions match {LOCK_FILE.name}")


def thread_line() -> str:
    import torch
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
                    if k in os.environ) or "OMP_NUM_THREADS unset"
    return (f"threads: torch intra-op {torch.get_num_threads()}, inter-op "
            f"{torch.get_num_interop_threads()}; {usable} usable cores of {os.cpu_count()}; {env} "
            "(tsp train uses --threads, default 1)")


def run_doctor(stream=None) -> int:
    stream = stream or sys.stdout
    print(f"python: {platform.python_version()} ({sys.executable}) on {platform.platform()}",
          file=stream)
    checks = check_torch()
    if checks[0].ok:
        checks += [check_torchaudio(), *check_packages(), check_lock()]
    for c in checks:
        mark = "BROKEN" if not c.ok else "warn" if c.warn else "ok"
        print(f"{mark:<6} {c.name:<11} {c.detail}", file=stream)
    if checks[0].ok:
        print(thread_line(), file=stream)
    broken = [c for c in checks if not c.ok]
    for c in broken:
        print(f"fix {c.name}: {c.fix}", file=stream)
    if broken:
        print(f"{len(broken)} problem(s) found", file=stream)
        return 1
    print("all components load", file=stream)
    return 0
