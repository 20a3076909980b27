"""temporal_sigprop: temporal credit assignment — BPTT, forward-mode differentiation and
temporal signal propagation on one harness."""

from .errors import ConfigError, IncompatibleError, NonFiniteLossError
from .learner import Learner, LearnerConfig
from .models import MODEL_NAMES, make_model
from .registry import METHOD_NAMES, make_learner

__version__ = "0.1.0"


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
