"""Loss placement, shared by every method so that comparisons are fair.

Every label layout is first expanded to per-step targets ``[B, T]`` with ``-1`` on the steps that
are not scored:

- ``y [B]``, ``loss_at="last"``: the sequence label at the final step only;
- ``y [B]``, ``loss_at="every"``: the sequence label at every step (the anytime setting);
- ``y [B, T]`` (the task's own per-step labels, ``-1`` = none): every labelled step for
  ``"every"``, only the final step for ``"last"``.

The loss of a batch is the summed cross-entropy over scored steps divided by the number of scored
steps of the *whole* sequence, so that losses (and gradients) of chunks of the sequence add up to
the loss of the sequence: TBPTT, RTRL and sigprop all rely on that.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_PLACEMENTS = ("last", "every")


def step_targets(y: torch.Tensor, steps: int, loss_at: str) -> torch.Tensor:
    """Per-step targets ``[B, T]`` (long, ``-1`` = not scored) from ``y [B]`` or ``y [B, T]``."""
    if loss_at not in LOSS_PLACEMENTS:
        raise ValueError(f"loss_at must be one of {LOSS_PLACEMENTS}, got {loss_at!r}")
    y = y.long()
    if y.dim() == 1:
        targets = y[:, None].expand(-1, steps).clone()
    elif y.dim() == 2 and y.shape[1] == steps:
        targets = y.clone()
    else:
        raise ValueError(f"labels y must be [B] or [B, T={steps}], got {tuple(y.shape)}")
    if loss_at == "last":
        targets[:, :-1] = -1
    return targets


def scored_count(targets: torch.Tensor) -> torch.Tensor:
    """Number of scored steps (at least 1, so an all-unlabelled batch gives loss 0, not NaN)."""
    return (targets >= 0).sum().clamp_min(1)


def summed_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the scored entries of ``logits [..., C]`` / ``targets [...]``."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-1, reduction="sum")


def sequence_loss(logits: torch.Tensor, targets: torch.Tensor,
                  normaliser: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy of ``logits [B, t, C]`` against ``targets [B, t]``.

    Pass the whole sequence's ``scored_count`` as ``normaliser`` when ``logits`` cover only a chunk.
    """
    if normaliser is None:
        normaliser = scored_count(targets)
    return summed_ce(logits, targets) / normaliser


def accuracy_per_step(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Correct counts and label counts at each step: the anytime curve's numerators/denominators.

    With sequence labels ``y [B]`` every step is judged against the sequence label.
    """
    steps = logits.shape[1]
    targets = step_targets(y, steps, "every")
    correct = ((logits.argmax(-1) == targets) & (targets >= 0)).sum(0)
    return correct, (targets >= 0).sum(0)
