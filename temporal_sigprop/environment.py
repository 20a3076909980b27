"""Where a figure was measured: the one record of the run environment (summaries and reports).

Package versions come from their installed metadata (``importlib.metadata``), never from importing
the package: an optional package that is absent or cannot load (a torchaudio built for another
torch) must not stop a run from writing its summary. ``tsp doctor`` is what checks that each one
actually loads.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import torch

#: Packages whose versions a record lists (distribution names).
RECORDED_PACKAGES = ("torch", "torchaudio", "numpy", "einops")


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` from its metadata, or None if absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The processor's marketing name where the OS tells it, else the architecture."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_revision(root: Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding the package, or (None, None) outside one."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True,
                                text=True, timeout=10)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


def environment(device: torch.device | str | None = None, threads: int | None = None, *,
                with_git: bool = False) -> dict:
    """The machine, software and settings a measurement ran under.

    ``device`` defaults to CUDA when available (a comparison's machine), else the CPU;
    ``threads`` to torch's current intra-op thread count.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    versions = {name: installed_version(name) for name in RECORDED_PACKAGES}
    record = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else cpu_name(),
        "cpu_name": cpu_name(),
        "threads": threads if threads else torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": versions["torch"] or torch.__version__,
        "torchaudio_version": versions["torchaudio"],
        "numpy_version": versions["numpy"],
        "einops_version": versions["einops"],
        "python_version": platform.python_version(),
        "platform": platform.platform(),
    }
    if with_git:
        record["git_commit"], record["git_dirty"] = git_revision()
    return record
