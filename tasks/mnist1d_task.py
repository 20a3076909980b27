"""MNIST-1D (Greydanus & Kobak, 2020), generated offline by its published procedure.

The ``mnist1d`` package's ``make_dataset`` with its default arguments yields the standard
dataset: 5000 signals of length 40, split 4000 train / 1000 test, 10 classes. We never call its
``get_dataset`` (that one tries to download a pickle). The 40 positions of a signal are read as
40 time steps with one feature each: ``x [N, 40, 1]``.

Generation is seeded by the package's own argument ``seed`` (42 for the standard dataset;
option ``data_seed``). Our run ``seed`` only chooses the validation samples, carved from the
4000 training signals. ``make_dataset`` reseeds Python's and NumPy's *global* RNGs; we save and
restore both around the call so building a task never changes global random state.
"""
from __future__ import annotations

import functools
import random

import numpy as np
import torch
from einops import rearrange

from .base import DataError, TaskData, make_task_data
from .cache import cached_tensors

__all__ = ["mnist1d_arrays", "build_mnist1d"]

STANDARD_SEED = 42  # mnist1d.data.get_dataset_args().seed: the published dataset


@functools.lru_cache(maxsize=4)
def mnist1d_arrays(data_seed: int = STANDARD_SEED):
    """``(x_train, y_train, x_test, y_test)`` as read-only float32/int64 numpy arrays.

    Generation takes seconds, so the arrays are kept on disk (``tasks.cache``, keyed by
    ``data_seed``, the mnist1d version and this file) and in memory (they are immutable).
    """
    tensors = cached_tensors("mnist1d", {"data_seed": int(data_seed)},
                             lambda: _generate(int(data_seed)), sources=(__file__,),
                             packages=("mnist1d",))
    out = []
    for key in ("x", "y", "x_test", "y_test"):
        arr = tensors[key].numpy()
        arr.setflags(write=False)
        out.append(arr)
    return tuple(out)


def _generate(data_seed: int) -> dict:
    """The mnist1d package's ``make_dataset`` with the published arguments, as tensors."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
        from mnist1d.utils import ObjectView
    except ImportError as exc:  # pragma: no cover - mnist1d is a declared dependency
        raise DataError(
            f"task 'mnist1d' needs the mnist1d package ({exc}); install it: pip install mnist1d"
        ) from exc
    args = get_dataset_args(as_dict=True)
    args["seed"] = int(data_seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(ObjectView(args))
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: torch.from_numpy(np.ascontiguousarray(data[key], dtype=dtype))
            for key, dtype in (("x", np.float32), ("y", np.int64), ("x_test", np.float32),
                               ("y_test", np.int64))}


def build_mnist1d(*, seed=0, data_dir=None, download=False, data_seed=STANDARD_SEED,
                  val_fraction=0.1) -> TaskData:
    """The standard MNIST-1D task, ``x [N, 40, 1]``, 10 classes, label per sequence."""
    x_train, y_train, x_test, y_test = mnist1d_arrays(int(data_seed))

    def xy(x, y):  # copy: tensors handed out must not alias the cached arrays
        x = rearrange(torch.tensor(x), "n t -> n t 1")  # one feature per time step
        return x, torch.tensor(y)

    standard = data_seed == STANDARD_SEED
    return make_task_data(
        name="mnist1d", kind="sequence", num_classes=10, label_kind="sequence",
        train=xy(x_train, y_train), test=xy(x_test, y_test),
        val_fraction=val_fraction, seed=seed,
        description=("MNIST-1D" + (" (standard dataset)" if standard else
                                   f" regenerated with data_seed={data_seed}")
                     + ": 40-step 1-D signals of 10 digit templates, 4000 train / 1000 test, "
                       "validation carved from train"),
        info=dict(data_seed=data_seed),
    )
