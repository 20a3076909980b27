"""A run's folder (``--out``): which run it holds, its checkpoint, and nothing written twice.

Files of a run: ``config.json``, ``metrics.jsonl`` (one line per finished epoch),
``summary.json`` and ``checkpoint.pt``. The rules that keep them one run's, and whole:

- **One run per folder.** A fresh run refuses a folder that holds another run's files, unless
  ``overwrite`` is set (then those files are removed first). ``resume`` continues from the
  checkpoint; with no checkpoint yet it says so and starts fresh — but still refuses a folder
  whose ``config.json`` describes a different run.
- **The checkpoint is verified before use.** It is a zip archive (``torch.save``) whose members
  each carry a CRC-32; ``torch.load`` does not check them, so a flipped byte would load as
  silently wrong RNG state or weights. :func:`load_checkpoint` checks every CRC, then the
  structure, and turns any damage into a :class:`CheckpointError` (exit 2) naming the file and
  what to do.
- **Metrics and checkpoint agree.** An epoch's metrics line is appended before its checkpoint is
  written, so a run killed between the two would, on resume, redo that epoch and write its line
  twice; :func:`truncate_metrics` keeps only the lines of epochs the checkpoint holds (and drops
  a half-written last line).
- **No debris.** Atomic writes go through ``.NAME.*.tmp`` files (``io.atomic_write_bytes``); a
  kill mid-write leaves one behind, which :func:`remove_stale_temporaries` removes at the next
  start.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import tempfile
import zipfile
from pathlib import Path

from .errors import ConfigError

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt")
CHECKPOINT_KEYS = ("learner", "loop", "data_generator", "torch_rng", "config")
LOOP_KEYS = ("epoch", "global_step", "best_val", "best_epoch")


#: Whether ``claim_folder`` says so when ``resume`` finds no checkpoint. ``tsp compare`` resumes
#: every run of its matrix by design, so it turns the notice off (``quiet_fresh_starts``).
_ANNOUNCE_FRESH_STARTS = contextvars.ContextVar("announce_fresh_starts", default=True)


@contextlib.contextmanager
def quiet_fresh_starts():
    token = _ANNOUNCE_FRESH_STARTS.set(False)
    try:
        yield
    finally:
        _ANNOUNCE_FRESH_STARTS.reset(token)


class CheckpointError(ConfigError):
    """A checkpoint that cannot be trusted (damaged, foreign or from an incompatible run)."""


class OutputError(ConfigError):
    """An --out folder that cannot be written, or that holds another run."""


def _what_to_do(path: Path) -> str:
    return (f"--resume cannot continue from it; start a fresh run in another --out, or pass "
            f"--overwrite to replace the run in {path.parent}")


@contextlib.contextmanager
def writing(path: Path):
    """Turn a failed write (a full disk, a folder made read-only) into an OutputError that
    says the previous file is intact (atomic writes replace it only once complete)."""
    try:
        yield
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; the previous version of "
                          "the file, if any, is intact. Free space (or fix the folder) and rerun "
                          "with --resume") from None


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove that a file can be written there (exit 2 if not)."""
    try:
        if out.exists() and not out.is_dir():
            raise OutputError(f"--out {out} exists and is not a folder; name a folder")
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot write to --out {out}: {err.strerror or err}; choose a "
                          "folder you can write to") from None


def remove_stale_temporaries(out: Path) -> list[Path]:
    """Remove ``.NAME.*.tmp`` files that an interrupted atomic write of a run file left."""
    removed = []
    for name in RUN_FILES:
        for stale in out.glob(f".{name}.*.tmp"):
            try:
                stale.unlink()
                removed.append(stale)
            except OSError:
                pass
    return removed


def held_run_files(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def clear_run(out: Path) -> None:
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            raise OutputError(f"{path} is a folder; remove it by hand (--overwrite replaces only "
                              "files)")
        path.unlink(missing_ok=True)


def claim_folder(out: Path, config: dict, *, resume: bool, overwrite: bool, echo) -> bool:
    """Apply the one-run-per-folder rule; True when a checkpoint should be resumed."""
    check_writable(out)
    remove_stale_temporaries(out)
    checkpoint = out / "checkpoint.pt"
    held = held_run_files(out)
    if overwrite:
        clear_run(out)
        return False
    if resume and checkpoint.exists():
        return True
    if not held:
        if resume and _ANNOUNCE_FRESH_STARTS.get():
            echo(f"tsp: no checkpoint in {out} yet: starting a fresh run there")
        return False
    if resume and _same_run(out / "config.json", config):
        # this run's own folder, killed before its first checkpoint
        if _ANNOUNCE_FRESH_STARTS.get():
            echo(f"tsp: no checkpoint in {out} yet: starting this run afresh")
        clear_run(out)
        return False
    raise OutputError(
        f"--out {out} already holds a run ({', '.join(held)})"
        + (" of other settings" if resume else "")
        + "; pass --resume to continue it, --overwrite to replace it, or choose another --out")


def _same_run(config_path: Path, config: dict) -> bool:
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return False
    ignore = {"resume", "overwrite", "out", "progress", "epochs"}
    return isinstance(saved, dict) and all(
        saved.get(k) == v for k, v in config.items() if k not in ignore)


def load_checkpoint(path: Path, map_location=None) -> dict:
    """The checkpoint at ``path``, verified; CheckpointError on any damage."""
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file; {_what_to_do(path)}")
    try:
        with zipfile.ZipFile(path) as archive:
            bad_member = archive.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged (not a readable archive: {err}); "
                              f"{_what_to_do(path)}") from None
    except Exception as err:  # zlib/struct errors from a mangled archive  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is damaged ({type(err).__name__}: {err}); "
                              f"{_what_to_do(path)}") from None
    if bad_member is not None:
        raise CheckpointError(f"checkpoint {path} is damaged (member {bad_member} fails its "
                              f"CRC-32 check); {_what_to_do(path)}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - whatever unpickling raises, the file is unusable
        raise CheckpointError(f"checkpoint {path} cannot be loaded ({type(err).__name__}: "
                              f"{err}); {_what_to_do(path)}") from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        found = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {path} is not a tsp training checkpoint (expected "
                              f"keys {list(CHECKPOINT_KEYS)}, found {found}); {_what_to_do(path)}")
    loop = state["loop"]
    if not isinstance(loop, dict) or any(k not in loop for k in LOOP_KEYS):
        raise CheckpointError(f"checkpoint {path} has no usable loop state; {_what_to_do(path)}")
    if not isinstance(state["config"], dict) or not isinstance(state["learner"], dict):
        raise CheckpointError(f"checkpoint {path} has no usable config/learner state; "
                              f"{_what_to_do(path)}")
    return state


def restore(learner, state: dict, data_generator, path: Path) -> None:
    """Load a verified checkpoint into the learner and the RNGs; CheckpointError if it does
    not fit (another model size, another method's state)."""
    import torch

    try:
        learner.load_state_dict(state["learner"])
        data_generator.set_state(state["data_generator"])
        torch.set_rng_state(state["torch_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} does not fit this run ({first}); "
                              f"{_what_to_do(path)}") from None


def truncate_metrics(path: Path, last_epoch: int) -> int:
    """Keep the metrics lines of epochs ≤ ``last_epoch`` (the checkpoint's), drop the rest and
    any unreadable line; returns how many lines were dropped. Rewritten atomically."""
    from .io import atomic_write_text

    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("epoch", 1 << 60)) <= last_epoch
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    return dropped
