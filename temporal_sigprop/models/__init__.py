"""Models: cells (step functions with NamedTuple state), stacks and ``make_model``."""

from __future__ import annotations

import importlib
import math

from ..errors import ConfigError
from .cells import CELLS, Cell, HiddenState, LIFState, LSTMState, NoState
from .stack import SequenceModel

#: model name -> builder. Builders outside this module are named lazily ("module:function").
MODEL_BUILDERS: dict[str, str] = {
    **{name: "temporal_sigprop.models:build_cell_stack" for name in CELLS},
    "convgru": "temporal_sigprop.models.conv:build_convgru",
}
MODEL_NAMES = tuple(MODEL_BUILDERS)


def _resolve(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def build_cell_stack(name: str, input_shape, hidden: int, layers: int, num_classes: int,
                     **cell_options) -> SequenceModel:
    features = math.prod(input_shape[1:])
    cell_cls = CELLS[name]
    cells, size = [], features
    for _ in range(layers):
        cells.append(cell_cls(size, hidden, **cell_options))
        size = hidden
    return SequenceModel(name, input_shape, cells, num_classes)


def make_model(name: str, input_shape, hidden: int = 128, layers: int = 1, num_classes: int = 10,
               **cell_options) -> SequenceModel:
    """Build a model by name: ``input_shape`` is ``(T, *features)`` of one sample."""
    if name not in MODEL_BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")
    if layers < 1 or hidden < 1:
        raise ConfigError(f"--layers and --hidden must be ≥ 1 (got layers={layers}, hidden={hidden})")
    builder = _resolve(MODEL_BUILDERS[name])
    try:
        return builder(name, tuple(input_shape), hidden, layers, num_classes, **cell_options)
    except TypeError as err:
        if "unexpected keyword" not in str(err):
            raise
        raise ConfigError(f"model {name!r} does not take option(s) {sorted(cell_options)}: {err}"
                          ) from None


__all__ = ["make_model", "MODEL_NAMES", "SequenceModel", "Cell", "CELLS", "HiddenState",
           "LSTMState", "LIFState", "NoState"]
