"""temporal_sigprop: temporal credit assignment — BPTT, forward-mode differentiation and
temporal signal propagation on one harness."""

from .errors import ConfigError, IncompatibleError, NonFiniteLossError
from .names import METHOD_NAMES, MODEL_NAMES
from .registry import make_learner

__version__ = "0.1.0"

# Resolved on first use: they import torch, and importing the package (the command line, a check
# of a run's settings) must not.
_LAZY = {"make_model": ".models", "Learner": ".learner", "LearnerConfig": ".learner"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_task(spec, **kwargs):
    """Load a task by name (see ``tsp tasks``); lazily imports the ``tasks`` package."""
    from tasks import get_task as _get_task
    return _get_task(spec, **kwargs)


def train(cfg=None, **overrides):
    """Train one run through the shared harness and return its summary dict."""
    from .harness import TrainConfig, run_training
    cfg = cfg or TrainConfig(**overrides)
    return run_training(cfg)


__all__ = ["make_model", "make_learner", "get_task", "train", "Learner", "LearnerConfig",
           "ConfigError", "IncompatibleError", "NonFiniteLossError", "MODEL_NAMES", "METHOD_NAMES"]
