"""Models: cells (step functions with NamedTuple state), stacks and ``make_model``."""

from __future__ import annotations

import difflib
import importlib
import inspect
import math

from ..errors import ConfigError
from ..names import MODEL_NAMES as _NAMES
from ..validation import check_value
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


def model_option_specs(name: str) -> dict[str, tuple[type, object, object]]:
    """``--model-options`` a model takes: key -> (type, default, Rule or None), read from its
    cell's (or builder's) keyword-only parameters and its declared ``option_rules``."""
    if name == "convgru":
        from .conv import CONVGRU_OPTION_RULES, build_convgru
        target, rules = build_convgru, CONVGRU_OPTION_RULES
    else:
        target, rules = CELLS[name].__init__, getattr(CELLS[name], "option_rules", {})
    specs = {}
    for param in inspect.signature(target).parameters.values():
        if param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is not param.empty:
            specs[param.name] = (type(param.default), param.default, rules.get(param.name))
    return specs


def check_model_options(name: str, options: dict) -> dict:
    """The options converted and checked (exit 2 naming the key and what it accepts)."""
    if name not in MODEL_BUILDERS:
        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; choose one of: {', '.join(MODEL_NAMES)}")
    specs = model_option_specs(name)
    listed = ", ".join(f"{k} (default {d!r})" for k, (_, d, _) in specs.items()) or "none"
    checked_options = {}
    for key, value in options.items():
        if key not in specs:
            close = difflib.get_close_matches(str(key), list(specs), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"model {name!r} has no option {key!r}{hint} (--hidden, --layers "
                              f"and the task set the sizes); its options are: {listed}")
        kind, _, rule = specs[key]
        checked_options[key] = check_value(key, value, kind, rule,
                                           label=f"--model-options {key}")
    return checked_options


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
