"""The method registry and the method × model compatibility table.

Entries are named lazily ("module:Class" strings resolved on first use), so importing the package
never imports ``baselines``. A new method is added here, not in the harness or the report.
"""

from __future__ import annotations

import difflib
import importlib

from .errors import ConfigError, IncompatibleError
from .learner import Learner, LearnerConfig, build_options

from .names import METHOD_NAMES, METHODS  # noqa: E402 - the names live torch-free

_EPROP_CELLS = ("rnn", "lif", "lstm")
#: (method, model) -> why the pair cannot run. Pairs not listed run (learners may still refuse a
#: configuration at construction, e.g. RTRL when the influence does not fit in memory).
INCOMPATIBLE: dict[tuple[str, str], str] = {
    **{("eprop", m): "e-prop is defined for rnn, lif and lstm cells (Bellec et al. 2020)"
       for m in ("gru", "discrete", "mlp", "convgru")},
    ("rtrl", "convgru"): "exact RTRL's influence of a conv-recurrent stack (B·n·p entries) does not "
                         "fit in memory; use fwdgrad",
    ("snap1", "convgru"): "SnAp-1's per-unit traces assume each weight feeds one unit; a conv weight "
                          "is shared by every position of its channel; use fwdgrad",
}


def learner_class(method: str) -> type[Learner]:
    if method not in METHODS:
        close = difflib.get_close_matches(str(method), METHOD_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown method {method!r}{hint}; choose one of: "
                          f"{', '.join(METHOD_NAMES)}")
    module, _, attr = METHODS[method].partition(":")
    return getattr(importlib.import_module(module), attr)


def incompatibility(method: str, model: str) -> str | None:
    """Why ``method`` cannot train ``model``, or None if it can."""
    return INCOMPATIBLE.get((method, model))


def make_learner(method: str, model, cfg: LearnerConfig | None = None, **options) -> Learner:
    """Build a learner by name for ``model``; ``options`` go to the method's ``Options``."""
    cls = learner_class(method)
    reason = incompatibility(method, getattr(model, "name", ""))
    if reason:
        raise IncompatibleError(f"{method} cannot train {model.name}: {reason}")
    return cls(model, cfg or LearnerConfig(), build_options(cls, options))
