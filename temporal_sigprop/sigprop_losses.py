"""Local losses of temporal signal propagation (DESIGN.md, "Temporal signal propagation", point 3).

At layer ``l`` and step ``t`` the input rows give ``h`` (``[B, K]``, or ``[B, K, *spatial]`` for a
convolutional layer) and the target rows give ``s`` (``[R, K, ...]``: ``R = C`` class rows or
``R = B`` sample rows). With per-row normalisation (``normalize``) each row — at each position —
is divided by its L2 norm first: ``ĥ = h / ‖h‖``, ``ŝ = s / ‖s‖``. This never mixes rows, so
nothing of a target row leaks into an input row (a batch norm over the stacked rows would).

- **class-embedding CE** (class rows):   ``ℓ_i = CE(ĥ_i · ŝ_cᵀ / τ, y_i)``
- **batch-similarity CE**, multi-positive (sample rows):
  ``ℓ_i = −log Σ_{j: y_j = y_i} softmax_j(ĥ_i · ŝ_jᵀ / τ)``, over the target rows ``j`` that carry
  a label at this step
- **L2**:      ``ℓ_i = ‖ĥ_i − sg(ŝ_{m(i)})‖²``
- **cosine**:  ``ℓ_i = 1 − cos(h_i, sg(s_{m(i)}))``
  where ``m(i)`` is the target row matching input row ``i`` (its class row, or its own sample row)
  and ``sg`` stops the gradient: L2 and cosine with a live target side collapse both paths to one
  constant, so the learner refuses them without ``detach_target``.

Every function returns the loss **summed** over the scored input rows (label ≥ 0) and **averaged**
over spatial positions; the learner divides by the number of scored rows of the step.
Feature maps are compared position by position: each position is one K-vector.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def positions(t: torch.Tensor) -> torch.Tensor:
    """``[N, K] -> [N, 1, K]``, ``[N, K, *spatial] -> [N, P, K]``: one K-vector per position."""
    if t.dim() == 2:
        return t.unsqueeze(1)
    return t.flatten(2).transpose(1, 2)


def normalise_rows(t: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Per-row (per-position) L2 normalisation over the feature axis (dim 1); rows never mix."""
    return F.normalize(t, dim=1, eps=1e-6) if enabled else t


def similarity(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Dot products of every input row with every target row: ``[N, R]`` (vectors) or
    ``[N, P, R]`` (feature maps, per position)."""
    if h.dim() == 2:
        return h @ s.T
    return torch.einsum("npk,rpk->npr", positions(h), positions(s))


def _mean_positions(per_row_pos: torch.Tensor) -> torch.Tensor:
    return per_row_pos if per_row_pos.dim() == 1 else per_row_pos.mean(-1)


def class_embedding_ce(h: torch.Tensor, s: torch.Tensor, labels: torch.Tensor,
                       temperature: float) -> torch.Tensor:
    """Σ_i CE(h_i · s_classesᵀ / τ, y_i) over rows with ``labels ≥ 0``; ``s`` has one row per class."""
    logits = similarity(h, s) / temperature
    if logits.dim() == 2:
        return F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum")
    per = F.cross_entropy(logits.transpose(1, 2), labels[:, None].expand(-1, logits.shape[1]),
                          ignore_index=-1, reduction="none")  # [N, P]
    return per.mean(1).sum()


def batch_similarity_ce(h: torch.Tensor, s: torch.Tensor, labels: torch.Tensor,
                        target_labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Multi-positive CE: ``−log Σ_{same label} softmax(h · sᵀ / τ)`` summed over scored rows.

    Target rows with label −1 (no target at this step) are left out of the softmax.
    """
    logits = similarity(h, s) / temperature  # [N, R] or [N, P, R]
    valid = target_labels >= 0
    positive = (labels[:, None] == target_labels[None, :]) & valid[None, :]  # [N, R]
    if logits.dim() == 3:
        valid, positive = valid[None, None, :], positive[:, None, :]
    neg_inf = torch.finfo(logits.dtype).min
    all_ = torch.logsumexp(logits.masked_fill(~valid, neg_inf), dim=-1)
    pos = torch.logsumexp(logits.masked_fill(~positive, neg_inf), dim=-1)
    per = _mean_positions(all_ - pos)
    scored = (labels >= 0) & positive.flatten(1).any(1)
    return torch.where(scored, per, torch.zeros_like(per)).sum()


def matched_l2(h: torch.Tensor, s_matched: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_i ‖h_i − s_{m(i)}‖² (mean over positions) over scored rows; ``s_matched`` is detached."""
    per = _mean_positions((positions(h) - positions(s_matched)).pow(2).sum(-1))
    return torch.where(labels >= 0, per, torch.zeros_like(per)).sum()


def matched_cosine(h: torch.Tensor, s_matched: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_i (1 − cos(h_i, s_{m(i)})) (mean over positions) over scored rows."""
    per = _mean_positions(1 - F.cosine_similarity(positions(h), positions(s_matched), dim=-1,
                                                  eps=1e-6))
    return torch.where(labels >= 0, per, torch.zeros_like(per)).sum()


def class_scores(h: torch.Tensor, s: torch.Tensor, loss: str, temperature: float) -> torch.Tensor:
    """Nearest-class-row prediction scores ``[N, C]`` (mean over positions): similarity / τ for
    the CE and cosine losses, minus the squared distance for L2."""
    if loss == "l2":
        hp, sp = positions(h), positions(s)  # [N, P, K], [C, P, K]
        dist = (hp[:, None] - sp[None]).pow(2).sum(-1).mean(-1)  # [N, C]
        return -dist
    sim = similarity(h, s)
    if sim.dim() == 3:
        sim = sim.mean(1)
    return sim / temperature
