"""Models: cells (step functions with NamedTuple state), stacks and ``make_model``."""

from __future__ import annotations

import difflib
import importlib
import math

from ..errors import ConfigError
from ..names import MODEL_NAMES as _NAMES
from ..model_options import MODEL_OPTIONS, check_model_options, model_option_specs  # noqa: F401 - re-exported
from .cells import CELLS, Cell, HiddenState, LIFState, LSTMState, NoState
from .stack import SequenceModel

#: model name -> builder. Builders outside this module are named lazily ("module:function").
MODEL_BUILDERS: dict[str, str] = {
    **{name: "temporal_sigprop.models:build_cell_stack" for name in CELLS},
    "convgru": "temporal_sigprop.models.conv:build_convgru",
}
MODEL_NAMES = tuple(MODEL_BUILDERS)
assert set(MODEL_NAMES) == set(_NAMES), "names.MODEL_NAMES is out of step with the builders"


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
        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; choose one of: {', '.join(MODEL_NAMES)}")
    if layers < 1 or hidden < 1:
        raise ConfigError(f"--layers and --hidden must be ≥ 1 (got layers={layers}, hidden={hidden})")
    cell_options = check_model_options(name, cell_options)
    builder = _resolve(MODEL_BUILDERS[name])
    try:
        return builder(name, tuple(input_shape), hidden, layers, num_classes, **cell_options)
    except (RuntimeError, MemoryError) as err:
        # e.g. --hidden 60000 on a small machine: the allocator's error, said plainly
        if isinstance(err, MemoryError) or "alloc" in str(err).lower():
            raise ConfigError(f"not enough memory to build {name} with --hidden {hidden} and "
                              f"--layers {layers}; use a smaller model") from None
        raise


__all__ = ["make_model", "check_model_options", "model_option_specs", "MODEL_NAMES", "SequenceModel", "Cell", "CELLS", "HiddenState",
           "LSTMState", "LIFState", "NoState"]
