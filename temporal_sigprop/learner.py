"""The learner protocol that every method implements, and the shared pieces they all use.

    learner = make_learner("sigprop", model, LearnerConfig(lr=1e-3, loss_at="every"), **options)
    stats = learner.train_batch(x, y)        # dict: loss, updates, ...
    logits = learner.predict(x)              # [B, T, C]: a prediction at every step
    grads = learner.gradient(x, y)           # {name: tensor}: update direction, nothing applied
    learner.state_dict() / load_state_dict() # model + learner's own parameters + optimizers

Common settings live in ``LearnerConfig``; each method's own settings live in its ``Options``
dataclass, declared torch-free in ``method_options.py`` (the CLI turns every field into a flag, so
each field needs a one-line docstring).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .losses import scored_count, step_targets
from .method_options import NoOptions, build_options as _build_method_options
from .names import LOSS_PLACEMENTS, OPTIMIZERS
from .validation import checked, validate


@dataclass
class LearnerConfig:
    lr: float = checked(1e-3, gt=0)
    """Learning rate of the optimizer(s)."""
    loss_at: str = checked("last", choices=LOSS_PLACEMENTS)
    """Loss placement: 'last' (final step) or 'every' (every step; the anytime setting)."""
    optimizer: str = checked("adam", choices=OPTIMIZERS)
    """Optimizer: 'adam' or 'sgd' (foreach implementations)."""
    weight_decay: float = checked(0.0, ge=0)
    """Decoupled weight decay (AdamW) or L2 (SGD)."""
    grad_clip: float = checked(0.0, ge=0)
    """Clip the gradient norm of each update to this value; 0 turns clipping off."""

    def __post_init__(self):
        validate(self)


def make_optimizer(params, cfg: LearnerConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if cfg.optimizer == "adam":
        # AdamW with weight_decay=0 is Adam; foreach: one kernel per op over all tensors.
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def scale_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """Each param group's lr := ``factor`` × its initial lr (kept in ``initial_lr``, as torch's
    LR schedulers do, so it is saved with the optimizer). A tensor lr (captured in a CUDA graph)
    is updated in place."""
    for group in optimizer.param_groups:
        base = group.setdefault("initial_lr", float(group["lr"]))
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(base * factor)
        else:
            group["lr"] = base * factor


def cosine_lr_factor(batch: int, total: int) -> float:
    """Cosine decay from 1 at the first batch towards 0 after the last: ½(1 + cos(π·batch/total))."""
    return 0.5 * (1.0 + math.cos(math.pi * min(batch, total) / max(total, 1)))


class Learner:
    """Base class. Subclasses set ``name`` and ``Options`` and implement ``train_batch`` and
    ``gradient``; ``predict`` defaults to running the model with no learning."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    #: Harness settings this method uses when a run leaves them unset (harness.METHOD_DEFAULTS).
    recommended: ClassVar[dict] = {}

    def __init__(self, model: nn.Module, cfg: LearnerConfig | None = None, options=None):
        self.model = model
        self.cfg = cfg or LearnerConfig()
        self.options = options if options is not None else self.Options()
        #: bytes of learner-owned state (influence, traces, target-path states) at its peak in the
        #: last train_batch; the harness adds it to the saved-tensor peak.
        self.state_bytes = 0

    # ------------------------------------------------------------------ protocol
    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        raise NotImplementedError

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def own_parameters(self) -> list[nn.Parameter]:
        """Parameters that belong to the learner, not to the model (counted separately)."""
        return []

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"main": self.optimizer} if hasattr(self, "optimizer") else {}

    def set_lr_factor(self, factor: float) -> None:
        """Set every optimizer's learning rate to ``factor`` × its initial one (the harness's
        schedule calls this before each batch)."""
        for opt in self.optimizers().values():
            scale_lr(opt, factor)

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "own": [p.detach().clone() for p in self.own_parameters()],
            "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for p, saved in zip(self.own_parameters(), state["own"], strict=True):
                p.copy_(saved)
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])

    # ------------------------------------------------------------------ helpers
    def targets(self, y: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-step targets under this learner's loss placement, and their normaliser."""
        targets = step_targets(y, steps, self.cfg.loss_at)
        return targets, scored_count(targets)

    def named_model_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def clip(self, params) -> None:
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(list(params), self.cfg.grad_clip, foreach=True)


def build_options(learner_cls: type[Learner], options: dict):
    """``learner_cls.Options(**options)``, refusing unknown keys (with the list of valid ones) and
    values outside the rules declared beside each option (``method_options.build_options``)."""
    return _build_method_options(learner_cls.name, options, learner_cls.Options)


def tensor_bytes(*tensors) -> int:
    """Bytes held by tensors (nested tuples/lists/NamedTuples allowed; None ignored)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        if isinstance(t, torch.Tensor):
            total += t.numel() * t.element_size()
        elif isinstance(t, dict):
            total += tensor_bytes(*t.values())
        else:
            total += tensor_bytes(*t)
    return total
