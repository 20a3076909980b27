"""A user's own arrays: ``--task file:PATH.npz``.

Arrays in the file (``numpy.savez``/``savez_compressed``):

* ``x`` float ``[N, T, F...]`` (rank >= 3; a scalar per step is ``[N, T, 1]``), ``y`` integer
  ``[N]`` (a label per sequence) or ``[N, T]`` (a label per step, ``-1`` = no label there);
* optional ``x_val``/``y_val`` and ``x_test``/``y_test``, same per-sample shapes.

Missing splits are carved from ``x``/``y``: the test split first (``test_fraction``, with a fixed
seed so every run seed sees the same test set), then validation (``val_fraction``, seeded by the
run seed). The description says what was carved. ``num_classes`` is the largest label over all
splits plus one. A rank-5 ``x`` (``[N, T, C, H, W]``) is a video task, anything else a sequence
task.

Every problem raises ``DataError`` naming the file, the array and the expected shape.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import DataError, TaskData, make_task_data, split_off

__all__ = ["KNOWN_ARRAYS", "load_npz_arrays", "build_file"]

KNOWN_ARRAYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")
FORMAT_HELP = (
    "expected arrays x [N, T, F...] (float) and y [N] or [N, T] (int, -1 = no label at a step), "
    "optionally x_val/y_val and x_test/y_test; write it with "
    "numpy.savez(PATH, x=x.astype('float32'), y=y.astype('int64'))"
)
TEST_SPLIT_SEED = 0  # the carved test split must not change with the run seed
ZIP_MAGIC = b"PK\x03\x04"  # every .npz is a zip archive
NPY_MAGIC = b"\x93NUMPY"


def load_npz_arrays(path) -> dict:
    """Read and validate the arrays; returns ``{split: (x, y)}`` for the splits present."""
    path = Path(path).expanduser()
    where = f"file {str(path)!r}"
    if not path.exists():
        raise DataError(f"{where} does not exist; {FORMAT_HELP}")
    if path.is_dir():
        raise DataError(f"{where} is a folder, not an .npz file; {FORMAT_HELP}")
    if not path.is_file():  # a FIFO or device would block or never end
        raise DataError(f"{where} is not a regular file (a pipe, socket or device); save the "
                        f"arrays to a file first; {FORMAT_HELP}")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise DataError(f"{where} cannot be read ({exc.strerror or exc})") from None
    if magic != ZIP_MAGIC:
        # np.load would try to unpickle anything that is neither .npy nor .npz: say what the
        # file is not, rather than hint at unsafe loading
        what = "a single .npy array" if magic == NPY_MAGIC[:4] else (
            "empty" if not magic else f"not an .npz archive (it starts with {magic!r})")
        raise DataError(f"{where} is {what}; {FORMAT_HELP}")
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{where} is not a readable .npz file ({exc}); {FORMAT_HELP}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{where} holds a single array, not an .npz archive; {FORMAT_HELP}")
    with npz:
        names = list(npz.files)
        # Arrays that look like ours but are not (x_valid, y_train, ...) are almost surely
        # typos that would silently change the splits: refuse them.
        typos = [n for n in names if n not in KNOWN_ARRAYS and n[:2] in ("x_", "y_")]
        if typos:
            raise DataError(
                f"{where}: unknown array(s) {typos}; the accepted names are {list(KNOWN_ARRAYS)}"
            )
        for must in ("x", "y"):
            if must not in names:
                raise DataError(
                    f"{where}: missing array {must!r} (found {names}); {FORMAT_HELP}"
                )
        arrays = {}
        for split, suffix in (("train", ""), ("val", "_val"), ("test", "_test")):
            xn, yn = "x" + suffix, "y" + suffix
            if (xn in names) != (yn in names):
                have, miss = (xn, yn) if xn in names else (yn, xn)
                raise DataError(f"{where}: array {have!r} is present but {miss!r} is missing")
            if xn in names:
                arrays[split] = (_read_member(npz, xn, where), _read_member(npz, yn, where))
    _validate(where, arrays)
    return arrays


#: Largest array accepted (bytes, as declared by the member's header): beyond this the file is
#: almost surely damaged, and reading it would exhaust memory before saying so.
MAX_ARRAY_BYTES = 16 * 2**30
#: Most classes a label array may imply (the readout has one output per class).
MAX_CLASSES = 100_000


def _read_member(npz, name: str, where: str) -> np.ndarray:
    """One array of the archive, refusing damage with a message instead of a traceback."""
    try:
        with npz.zip.open(name + ".npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read_header(member)
    except KeyError:
        raise DataError(f"{where}: member {name!r} is not a .npy array; {FORMAT_HELP}") from None
    except Exception as exc:  # noqa: BLE001 - any header damage
        raise DataError(f"{where}: array {name!r} has an unreadable header ({exc}); re-save the "
                        f"file; {FORMAT_HELP}") from None
    if dtype.hasobject:
        raise DataError(f"{where}: array {name!r} holds Python objects (dtype {dtype}), which "
                        f"are not read (it would need pickle); store plain numeric arrays")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if declared > MAX_ARRAY_BYTES:
        raise DataError(f"{where}: array {name!r} declares shape {list(shape)} ({declared:,} "
                        f"bytes), more than the {MAX_ARRAY_BYTES:,} accepted: the file is "
                        f"damaged or too large to train on")
    try:
        return npz[name]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as exc:
        raise DataError(f"{where}: array {name!r} cannot be read ({type(exc).__name__}: {exc}); "
                        f"the file is damaged: re-save it; {FORMAT_HELP}") from None
    except Exception as exc:  # noqa: BLE001 - zlib/CRC errors of a damaged member
        raise DataError(f"{where}: array {name!r} cannot be read ({type(exc).__name__}: {exc}); "
                        f"the file is damaged: re-save it") from None


def _validate(where: str, arrays: dict) -> None:
    ref = None  # (per-sample x shape, label rank) of the training arrays
    for split, (x, y) in arrays.items():
        suffix = "" if split == "train" else f"_{split}"
        xn, yn = "x" + suffix, "y" + suffix
        if x.ndim < 3:
            raise DataError(
                f"{where}: array {xn!r} has shape {list(x.shape)}; expected [N, T, F...] "
                f"(rank >= 3). For one feature per step add an axis: {xn}[..., None]"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(
                f"{where}: array {xn!r} has dtype {x.dtype}; expected a float dtype. Integer "
                f"inputs are refused so that nothing is scaled silently: convert with "
                f"{xn}.astype('float32') (and scale it as you mean to)"
            )
        if y.dtype.kind not in "iu":  # (timedelta64 counts as an integer subtype in numpy)
            raise DataError(
                f"{where}: array {yn!r} has dtype {y.dtype}; expected integer class labels "
                f"(convert with {yn}.astype('int64'))"
            )
        n, t = x.shape[0], x.shape[1]
        if n == 0 or t == 0:
            raise DataError(f"{where}: array {xn!r} has shape {list(x.shape)}: no samples/steps")
        if 0 in x.shape[2:]:
            raise DataError(f"{where}: array {xn!r} has shape {list(x.shape)}: no features per "
                            f"step; expected [N, T, F...] with every F >= 1")
        if y.ndim not in (1, 2):
            raise DataError(
                f"{where}: array {yn!r} has shape {list(y.shape)}; expected [N] (label per "
                f"sequence) or [N, T] (label per step)"
            )
        if y.shape[0] != n:
            raise DataError(
                f"{where}: array {yn!r} has {y.shape[0]} samples but {xn!r} has {n}; "
                f"expected {yn} of shape [{n}]" + (f" or [{n}, {t}]" if y.ndim == 2 else "")
            )
        if y.ndim == 2 and y.shape[1] != t:
            raise DataError(
                f"{where}: array {yn!r} has shape {list(y.shape)}; per-step labels need "
                f"[N, T] = [{n}, {t}] to match {xn!r}"
            )
        if not np.isfinite(x).all():
            bad = int((~np.isfinite(x)).sum())
            raise DataError(f"{where}: array {xn!r} contains {bad} NaN/inf value(s)")
        # training runs in float32: a value that is finite in float64 may not be after the cast
        with np.errstate(over="ignore"):
            beyond = int((~np.isfinite(x.astype(np.float32))).sum())
        if beyond:
            raise DataError(f"{where}: array {xn!r} has {beyond} value(s) beyond float32's range "
                            f"(|x| > {np.finfo(np.float32).max:.3g}), which training (float32) "
                            f"cannot represent; rescale the inputs")
        hi = int(y.max())
        if hi >= MAX_CLASSES:
            raise DataError(f"{where}: array {yn!r} has label {hi}, which would mean {hi + 1:,} "
                            f"classes (at most {MAX_CLASSES:,}); labels are class indices 0..C-1")
        lo = int(y.min())
        if lo < -1:
            raise DataError(
                f"{where}: array {yn!r} has label {lo}; labels must be >= 0 (or -1 for "
                f"'no label at this step' in per-step labels [N, T])"
            )
        if y.ndim == 1 and lo == -1:
            raise DataError(
                f"{where}: array {yn!r} has label -1, which only per-step labels [N, T] may "
                f"use (a per-sequence label [N] is needed for every sample)"
            )
        if split == "train":
            ref = (x.shape[1:], y.ndim)
        else:
            if x.shape[1:] != ref[0]:
                raise DataError(
                    f"{where}: array {xn!r} has per-sample shape {list(x.shape[1:])}, but 'x' "
                    f"has {list(ref[0])}; every split needs the same [T, F...]"
                )
            if y.ndim != ref[1]:
                raise DataError(
                    f"{where}: array {yn!r} has rank {y.ndim} but 'y' has rank {ref[1]}; all "
                    f"splits need the same label kind ([N] or [N, T])"
                )
    if max(int(y.max()) for _, y in arrays.values()) < 0:
        raise DataError(f"{where}: every label is -1; nothing to learn")
    if int(arrays["train"][1].max()) < 0:
        raise DataError(f"{where}: every training label (array 'y') is -1; nothing to learn from")


def build_file(*, seed=0, data_dir=None, download=False, path="", val_fraction=0.1,
               test_fraction=0.2) -> TaskData:
    """Load ``file:PATH.npz`` (see the module docstring)."""
    if not path:
        raise DataError("task 'file' needs a path: --task file:PATH.npz")
    arrays = load_npz_arrays(path)
    tensors = {s: (torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(
        np.asarray(y, dtype=np.int64))) for s, (x, y) in arrays.items()}
    notes = []
    train = tensors["train"]
    if "test" not in tensors:
        if not 0 < test_fraction < 1:
            raise DataError(f"no x_test/y_test in {path!r} and test_fraction={test_fraction}; "
                            f"give a test split or a test_fraction in (0, 1)")
        train, tensors["test"] = split_off(*train, test_fraction, (TEST_SPLIT_SEED, "file",
                                                                   "test"), what="test")
        notes.append(f"test split carved from x/y ({test_fraction:.0%}, fixed seed)")
    if "val" not in tensors:
        train, tensors["val"] = split_off(*train, val_fraction, (seed, "file", "val"))
        notes.append(f"validation split carved from x/y ({val_fraction:.0%}, run seed)")
    num_classes = max(int(y.max()) for _, y in tensors.values()) + 1
    x = tensors["train"][0]
    label_kind = "step" if tensors["train"][1].ndim == 2 else "sequence"
    desc = (f"user arrays from {path}: x {list(x.shape[1:])} per sample, {num_classes} classes, "
            f"labels per {'step' if label_kind == 'step' else 'sequence'}")
    if notes:
        desc += "; " + "; ".join(notes)
    return make_task_data(
        name=f"file:{path}", kind="video" if x.ndim == 5 else "sequence",
        num_classes=num_classes, label_kind=label_kind, train=train, val=tensors["val"],
        test=tensors["test"], seed=seed, description=desc, source="user",
        info=dict(path=str(path), carved=notes),
    )
