"""On-disk cache of generated data sets: a task generated once is read back on later runs.

Generating some offline tasks takes seconds per run (MNIST-1D through the ``mnist1d`` package,
the rendered ``video_digits`` clips, the ``audio_keywords`` log-mel features), and every run of a
``tsp compare`` matrix needs the same arrays again. A builder wraps its generation step in
:func:`cached_tensors`; the first call stores the tensors, later calls read them.

Key. An entry is named by a SHA-256 of everything the arrays depend on: the task, the generation
options (those that shape the arrays — never the run ``seed`` or ``val_fraction``, which only pick
the validation carve made afterwards, so one entry serves every seed), the installed versions of
the packages the generator uses (``temporal-sigprop``, ``torch``, ``numpy`` and the builder's own,
e.g. ``mnist1d``), and the text of the generator's source files — an edit to the generator makes
a new entry instead of reading stale data.

Folder, first found wins: ``--cache-dir``; ``$TSP_CACHE_DIR``; ``$XDG_CACHE_HOME/temporal_sigprop/
generated``; ``~/.cache/temporal_sigprop/generated``. ``--no-cache`` (or ``TSP_NO_CACHE=1``)
neither reads nor writes it. The folder may be deleted at any time.

Safety. Entries are written to a temporary file in the same folder and renamed into place, so a
reader never sees half an entry; they are read with ``torch.load(weights_only=True)`` (tensors and
plain containers only) and must carry their own key. An entry that cannot be read, or is not what
its name says, is reported in one line and built again; a folder that cannot be written costs the
cache, not the run.
"""
from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import os
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Callable

__all__ = ["ENV_DIR", "ENV_OFF", "cache_folder", "cache_enabled", "settings", "entry_key",
           "cached_tensors"]

ENV_DIR = "TSP_CACHE_DIR"
"""Environment variable naming the cache folder (``--cache-dir`` wins over it)."""
ENV_OFF = "TSP_NO_CACHE"
"""Environment variable that turns the cache off when set to anything but '' or '0'."""

#: Bumped when the layout of an entry changes (part of every key).
FORMAT = 1
#: Packages every generator depends on; their versions are part of every key.
BASE_PACKAGES = ("temporal-sigprop", "torch", "numpy")

# (enabled, folder) for builders called inside ``settings(...)``; get_task sets it per call so
# the builder contract (seed, data_dir, download, options) stays as it is.
_SETTINGS: contextvars.ContextVar[tuple[bool, str | None]] = contextvars.ContextVar(
    "tsp_data_cache", default=(True, None))


@contextlib.contextmanager
def settings(enabled: bool = True, cache_dir: str | os.PathLike | None = None):
    """Within the block, :func:`cached_tensors` uses (or skips) the cache in ``cache_dir``."""
    token = _SETTINGS.set((bool(enabled), None if cache_dir is None else os.fspath(cache_dir)))
    try:
        yield
    finally:
        _SETTINGS.reset(token)


def cache_folder(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where entries live (see the module docstring for the order)."""
    if cache_dir is None:
        cache_dir = _SETTINGS.get()[1]
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]).expanduser()
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(home).expanduser() / "temporal_sigprop" / "generated"


def cache_enabled() -> bool:
    """False under ``--no-cache`` or ``TSP_NO_CACHE``."""
    return _SETTINGS.get()[0] and os.environ.get(ENV_OFF, "") in ("", "0")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def entry_key(task: str, options: dict, *, sources=(), packages=()) -> str:
    """The hex SHA-256 that names the entry of ``task`` generated with ``options``."""
    described = {
        "format": FORMAT,
        "task": task,
        "options": options,
        "packages": {p: _version(p) for p in (*BASE_PACKAGES, *packages)},
        "sources": {Path(s).name: hashlib.sha256(Path(s).read_bytes()).hexdigest()
                    for s in sources},
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _notice(message: str) -> None:
    print(f"tsp: {message}", file=sys.stderr)


def _read(path: Path, key: str) -> dict:
    import torch

    entry = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(entry, dict) or entry.get("key") != key:
        raise ValueError("its recorded key does not match its name")
    tensors = entry.get("tensors")
    if not isinstance(tensors, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise ValueError("it does not hold named tensors")
    return tensors


def _write(path: Path, key: str, tensors: dict) -> None:
    """Atomically: a temporary file in the same folder, fsync, rename (as ``temporal_sigprop.io``
    does; ``tasks`` imports nothing of that package)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"key": key, "tensors": tensors}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached_tensors(task: str, options: dict, make: Callable[[], dict], *, sources=(),
                   packages=()) -> dict:
    """``make()`` (a dict of name -> CPU tensor), read from the cache when an entry exists.

    ``options`` are the generation options (JSON-able), ``sources`` the generator's source files
    and ``packages`` the distributions it uses beyond ``BASE_PACKAGES``: all are part of the key.
    """
    if not cache_enabled():
        return make()
    key = entry_key(task, options, sources=sources, packages=packages)
    path = cache_folder() / f"{task}-{key[:24]}.pt"
    if path.exists():
        try:
            return _read(path, key)
        except Exception as err:  # any unreadable entry: say so once, build it again
            _notice(f"data cache entry {path} is unreadable ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else 'no detail'}); building it again")
    tensors = make()
    try:
        _write(path, key, {k: v.contiguous() for k, v in tensors.items()})
    except OSError as err:
        _notice(f"could not write the data cache entry {path} ({err.strerror or err}); "
                f"continuing without it (--no-cache or --cache-dir to silence this)")
    return tensors
