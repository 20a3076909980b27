"""What each model's ``--model-options`` accept, declared without torch.

Each model's extra options are the keyword-only parameters of its cell (``models.cells``) or
builder (``models.conv.build_convgru``): name, type, default and the range it accepts. They are
declared here, as plain data, so a run's model options are checked (and ``tsp train`` refuses a
bad one) before torch is imported. The cells take their rules from this table
(``LIFCell.option_rules``, ``conv.CONVGRU_OPTION_RULES``); the defaults stay readable in the
cells' signatures, and tests/test_cli_fast.py checks they are the defaults declared here.
"""

from __future__ import annotations

import difflib
from typing import NamedTuple

from .errors import ConfigError
from .names import MODEL_NAMES
from .validation import Rule, check_value


class ModelOption(NamedTuple):
    """One ``--model-options`` key: ``(type, default, Rule or None)``."""

    kind: type
    default: object
    rule: Rule | None


#: model name -> its options. A leak needs τ > 0, and the surrogate's slope must be positive for
#: the gradient to point the right way; a conv kernel, a downsampling factor and a stem width
#: beyond these sizes would not fit any frame this package builds.
MODEL_OPTIONS: dict[str, dict[str, ModelOption]] = {
    "rnn": {},
    "gru": {},
    "lstm": {},
    "lif": {
        "tau_mem": ModelOption(float, 10.0, Rule(gt=0)),
        "threshold": ModelOption(float, 1.0, Rule(gt=0)),
        "surrogate_slope": ModelOption(float, 5.0, Rule(gt=0)),
        "recurrent": ModelOption(bool, True, None),
    },
    "discrete": {},
    "mlp": {},
    "convgru": {
        "kernel_size": ModelOption(int, 3, Rule(ge=1, le=31)),
        "downsample": ModelOption(int, 4, Rule(ge=1, le=64)),
        "stem_channels": ModelOption(int, 16, Rule(ge=0, le=4096)),
    },
}
assert set(MODEL_OPTIONS) == set(MODEL_NAMES), "model_options.MODEL_OPTIONS is out of step with names"


def option_rules(model: str) -> dict[str, Rule]:
    """key -> Rule of the options of ``model`` that declare one (what the cells read)."""
    return {k: o.rule for k, o in MODEL_OPTIONS[model].items() if o.rule is not None}


def check_model_name(name: str) -> None:
    if name not in MODEL_OPTIONS:
        close = difflib.get_close_matches(str(name), MODEL_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint}; choose one of: {', '.join(MODEL_NAMES)}")


def model_option_specs(name: str) -> dict[str, tuple[type, object, object]]:
    """``--model-options`` a model takes: key -> (type, default, Rule or None)."""
    check_model_name(name)
    return {k: tuple(o) for k, o in MODEL_OPTIONS[name].items()}


def check_model_options(name: str, options: dict) -> dict:
    """The options converted and checked (exit 2 naming the key and what it accepts)."""
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
