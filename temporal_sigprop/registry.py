"""The method registry and the method × model compatibility table.

Entries are named lazily ("module:Class" strings resolved on first use), so importing the package
never imports ``baselines``. A new method is added here, not in the harness or the report.

This module imports no torch: the command line checks a method, its options and its pairing with
a model here before anything heavy is loaded (``make_learner`` loads the learner).
"""

from __future__ import annotations

import difflib
import importlib
from typing import TYPE_CHECKING

from .errors import ConfigError, IncompatibleError
from .method_options import build_options
from .names import METHOD_NAMES, METHODS

if TYPE_CHECKING:  # learner.py imports torch
    from .learner import Learner, LearnerConfig

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


def check_pair(method: str, model: str) -> None:
    """IncompatibleError naming why ``method`` cannot train ``model`` (nothing if it can)."""
    reason = incompatibility(method, model)
    if reason:
        raise IncompatibleError(f"{method} cannot train {model}: {reason}")


def make_learner(method: str, model, cfg: LearnerConfig | None = None, **options) -> Learner:
    """Build a learner by name for ``model``; ``options`` go to the method's ``Options``."""
    from .learner import LearnerConfig

    cls = learner_class(method)
    check_pair(method, getattr(model, "name", ""))
    return cls(model, cfg or LearnerConfig(), build_options(method, options, cls.Options))
