"""Shared types and helpers for the task package.

Everything here is data only: no model, learner or harness code, and nothing from
``temporal_sigprop`` or ``baselines`` is imported (the import graph is a tree, see docs/design.md).

Conventions every builder follows:

* ``x`` is float32 ``[N, T, *features]`` (batch first, time second).
* ``y`` is int64, either ``[N]`` (one label per sequence, ``label_kind='sequence'``) or ``[N, T]``
  (one label per step, ``label_kind='step'``, ``-1`` where a step carries no label).
* Randomness comes from local generators (``torch.Generator`` / ``numpy.random.RandomState``)
  derived from explicit seeds, never from global RNG state, so a task is a pure function of its
  spec and seed.
* The validation split is carved from the training part; the test split is never used for
  selection.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

__all__ = [
    "DataError",
    "TaskData",
    "KINDS",
    "LABEL_KINDS",
    "SOURCES",
    "derive_seed",
    "torch_generator",
    "split_off",
    "make_task_data",
    "data_root",
]

# Declared torch-free in tasks.common, so the registry and the command line need no torch.
from .common import KINDS, LABEL_KINDS, SOURCES, DataError  # noqa: E402,F401 - re-exported


@dataclass
class TaskData:
    """A task ready for training: three splits plus the metadata the harness needs.

    ``train``/``val``/``test`` are ``TensorDataset(x, y)`` with ``x`` float32 ``[N, T, *F]`` and
    ``y`` int64 ``[N]`` (``label_kind='sequence'``) or ``[N, T]`` (``label_kind='step'``, ``-1`` =
    no label at that step).
    """

    name: str
    kind: str  # 'sequence' | 'audio' | 'video'
    input_shape: tuple  # (T, *features) of one sample
    num_classes: int
    label_kind: str  # 'sequence' | 'step'
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    description: str = ""
    source: str = "offline"  # 'offline' | 'download' | 'user'
    # Free-form facts about how the data was made (options used, split sizes, ...); the harness
    # may copy it into config.json. Not part of the required interface.
    info: dict = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return int(self.input_shape[0])

    def sizes(self) -> dict:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def check(self) -> "TaskData":
        """Verify the invariants above; raise DataError naming the split and array at fault.

        Cheap (a few reductions), so ``get_task`` runs it on every builder's output, including
        builders written elsewhere (audio).
        """
        if self.kind not in KINDS:
            raise DataError(f"task {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.label_kind not in LABEL_KINDS:
            raise DataError(
                f"task {self.name!r}: label_kind {self.label_kind!r} is not one of {LABEL_KINDS}"
            )
        if self.source not in SOURCES:
            raise DataError(f"task {self.name!r}: source {self.source!r} is not one of {SOURCES}")
        self.input_shape = tuple(int(s) for s in self.input_shape)
        for split in ("train", "val", "test"):
            ds = getattr(self, split)
            if not isinstance(ds, TensorDataset) or len(ds.tensors) != 2:
                raise DataError(f"task {self.name!r}: {split} must be a TensorDataset(x, y)")
            x, y = ds.tensors
            where = f"task {self.name!r}, {split} split"
            if x.dtype != torch.float32:
                raise DataError(f"{where}: x has dtype {x.dtype}, expected torch.float32")
            if tuple(x.shape[1:]) != self.input_shape:
                raise DataError(
                    f"{where}: x has per-sample shape {tuple(x.shape[1:])}, expected "
                    f"input_shape {self.input_shape}"
                )
            if y.dtype != torch.int64:
                raise DataError(f"{where}: y has dtype {y.dtype}, expected torch.int64")
            want = (x.shape[0],) if self.label_kind == "sequence" else (x.shape[0], x.shape[1])
            if tuple(y.shape) != tuple(want):
                raise DataError(
                    f"{where}: y has shape {tuple(y.shape)}, expected {list(want)} for "
                    f"label_kind={self.label_kind!r}"
                )
            if y.numel():
                lo = -1 if self.label_kind == "step" else 0
                if int(y.min()) < lo or int(y.max()) >= self.num_classes:
                    raise DataError(
                        f"{where}: labels span [{int(y.min())}, {int(y.max())}], expected "
                        f"[{lo}, {self.num_classes - 1}]"
                    )
        return self

    def __repr__(self) -> str:  # the default dataclass repr would print whole datasets
        return (
            f"TaskData(name={self.name!r}, kind={self.kind!r}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes}, label_kind={self.label_kind!r}, "
            f"sizes={self.sizes()}, source={self.source!r})"
        )


# --------------------------------------------------------------------------------------------
# Seeds and splits


def derive_seed(*parts) -> int:
    """A 63-bit seed from a tuple of ints/strings, e.g. ``derive_seed(seed, 'cue_recall', 'test')``.

    Streams that must not overlap (train vs test generation, the val split) get different
    ``parts``; strings are hashed with crc32 so the result does not depend on PYTHONHASHSEED.
    """
    words = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) % (2**32) for p in parts]
    return int(np.random.SeedSequence(words).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def torch_generator(*parts) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(*parts)``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def split_off(x: torch.Tensor, y: torch.Tensor, fraction: float, seed_parts: tuple, what="val"):
    """Carve ``round(fraction * N)`` random samples out of ``(x, y)``.

    Returns ``(x_rest, y_rest), (x_part, y_part)``. Both keep the original order of samples (the
    permutation only picks *which* samples go where), so the result is reproducible and cheap.
    """
    n = x.shape[0]
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"{what}_fraction must be in [0, 1), got {fraction}")
    k = int(round(fraction * n))
    if fraction > 0 and k == 0:
        k = 1
    if n - k < 1:
        raise DataError(
            f"cannot carve a {what} split of {k} samples out of {n}: too few samples "
            f"(give more data or lower {what}_fraction)"
        )
    perm = torch.randperm(n, generator=torch_generator(*seed_parts))
    part = torch.zeros(n, dtype=torch.bool)
    part[perm[:k]] = True
    return (x[~part], y[~part]), (x[part], y[part])


def make_task_data(
    *,
    name: str,
    kind: str,
    num_classes: int,
    label_kind: str,
    train: tuple,
    test: tuple,
    val: tuple | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    description: str = "",
    source: str = "offline",
    info: dict | None = None,
) -> TaskData:
    """Assemble a checked ``TaskData`` from ``(x, y)`` pairs.

    If ``val`` is None it is carved from ``train`` with ``val_fraction``; the carve depends on
    ``seed`` (the run seed) and the task name only.
    """
    if val is None:
        train, val = split_off(train[0], train[1], val_fraction, (seed, name, "val"))
    x_train = train[0]
    data = TaskData(
        name=name,
        kind=kind,
        input_shape=tuple(x_train.shape[1:]),
        num_classes=int(num_classes),
        label_kind=label_kind,
        train=TensorDataset(*_as_xy(*train)),
        val=TensorDataset(*_as_xy(*val)),
        test=TensorDataset(*_as_xy(*test)),
        description=description,
        source=source,
        info=dict(info or {}),
    )
    data.info.setdefault("sizes", data.sizes())
    return data.check()


def _as_xy(x, y):
    x = torch.as_tensor(x)
    y = torch.as_tensor(y)
    return x.to(torch.float32).contiguous(), y.to(torch.int64).contiguous()


# --------------------------------------------------------------------------------------------
# Where real datasets live


def data_root(data_dir=None) -> Path:
    """The root folder for downloaded/real datasets.

    ``data_dir`` (the CLI's ``--data-dir``) wins, then the environment variable ``TSP_DATA_DIR``,
    then ``~/.cache/temporal_sigprop``. Each dataset uses a subfolder (``mnist/``, ...).
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("TSP_DATA_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "temporal_sigprop"
