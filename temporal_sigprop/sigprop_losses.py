"""Local losses of temporal signal propagation (the table in sigprop.py's module docstring).

At layer ``l`` and step ``t`` the input rows give ``h`` and the target rows give ``s`` (``R = C``
class rows or ``R = B`` sample rows). Every function here takes **row vectors with any leading
dims**: ``h [..., N, K]``, ``s [..., R, K]``. A feature map ``[N, K, H, W]`` becomes
``[H·W, N, K]`` (``rows_last``: each position one K-vector, compared position by position), and the
learner stacks the layers of a stack along another leading dim, so one call scores every layer
(and position) of a step: the terms never interact — the loss is a plain sum over the leading
dims — so the gradient reaching layer l is that of layer l's own loss.

With per-row normalisation (``normalize``) each row (at each position) is divided by its L2 norm:
``ĥ = h / ‖h‖``, ``ŝ = s / ‖s‖``. This never mixes rows, so nothing of a target row leaks into an
input row (a batch norm over the stacked rows would).

- **class-embedding CE** (class rows):   ``ℓ_i = CE(ĥ_i · ŝ_cᵀ / τ, y_i)``
- **batch-similarity CE**, multi-positive (sample rows):
  ``ℓ_i = −log Σ_{j: y_j = y_i} softmax_j(ĥ_i · ŝ_jᵀ / τ)``, over the target rows ``j`` that carry
  a label at this step (``valid``)
- **L2**:      ``ℓ_i = ‖ĥ_i − sg(ŝ_{m(i)})‖²``
- **cosine**:  ``ℓ_i = 1 − cos(h_i, sg(s_{m(i)}))``
  where ``m(i)`` is the target row matching input row ``i`` (its class row, or its own sample row)
  and ``sg`` stops the gradient: L2 and cosine with a live target side collapse both paths to one
  constant, so the learner refuses them without ``detach_target``.

Every function returns the loss **summed** over the leading dims and the scored input rows
(label ≥ 0); the learner divides by the number of scored rows of the step and by the number of
positions of a feature map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rows_last(t: torch.Tensor) -> torch.Tensor:
    """``[N, K] -> [N, K]``; a feature map ``[N, K, *spatial] -> [P, N, K]`` (one K-vector per
    position, positions leading)."""
    if t.dim() == 2:
        return t
    return t.flatten(2).permute(2, 0, 1)


def normalise_rows(z: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    """Per-row L2 normalisation over the feature axis (last dim); rows never mix."""
    if not enabled:
        return z
    return z / z.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def class_embedding_ce(h, s, labels, inv_temperature: float, shift=None):
    """Σ CE(h · s_classesᵀ / τ + shift, y) over leading dims and rows with ``labels ≥ 0``.

    ``shift = log n_c`` turns it into the batch-similarity CE over ``n_c`` identical copies of
    each class row (−inf drops an absent class)."""
    logits = (h @ s.transpose(-1, -2)) * inv_temperature  # [..., N, C]
    if shift is not None:
        logits = logits + shift
    rows = logits.numel() // logits.shape[-1]
    # ``labels`` are per row [N] (repeated over the leading dims here) or already [lead·N]
    targets = labels.repeat(rows // labels.shape[0]) if rows != labels.shape[0] else labels
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, ignore_index=-1,
                           reduction="sum")


def similarity_masks(labels: torch.Tensor, target_labels: torch.Tensor):
    """For batch-similarity CE: ``(valid [R], positive [N, R], scored [N])`` — the target rows
    that carry a label, the same-label pairs, and the input rows with at least one positive."""
    valid = target_labels >= 0
    positive = (labels[:, None] == target_labels[None, :]) & valid[None, :]
    scored = (labels >= 0) & positive.any(1)
    return valid, positive, scored


def batch_similarity_ce(h, s, masks, inv_temperature: float):
    """Multi-positive CE ``−log Σ_{same label} softmax(h · sᵀ / τ)``, summed over leading dims and
    scored rows. ``masks`` from ``similarity_masks`` (hoisted: constant for sequence labels)."""
    valid, positive, scored = masks
    logits = (h @ s.transpose(-1, -2)) * inv_temperature  # [..., N, R]
    neg = torch.finfo(logits.dtype).min
    all_ = torch.logsumexp(logits.masked_fill(~valid, neg), dim=-1)
    pos = torch.logsumexp(logits.masked_fill(~positive, neg), dim=-1)
    return ((all_ - pos) * scored).sum()


def matched_l2(h, s_matched, labels):
    """Σ ‖h_i − s_{m(i)}‖² over leading dims and scored rows (``s_matched`` already detached)."""
    per = (h - s_matched).pow(2).sum(-1)
    return (per * (labels >= 0)).sum()


def matched_cosine(h, s_matched, labels):
    """Σ (1 − cos(h_i, s_{m(i)})) over leading dims and scored rows."""
    per = 1 - F.cosine_similarity(h, s_matched, dim=-1, eps=1e-6)
    return (per * (labels >= 0)).sum()


def class_scores(h, s, loss: str, inv_temperature: float):
    """Nearest-class-row prediction scores ``[N, C]`` from ``h [..., N, K]``, ``s [..., C, K]``
    (mean over leading dims, i.e. positions): similarity / τ for the CE and cosine losses, minus
    the squared distance for L2."""
    if loss == "l2":
        scores = -torch.cdist(h, s).pow(2)
    else:
        scores = (h @ s.transpose(-1, -2)) * inv_temperature
    return scores.reshape(-1, *scores.shape[-2:]).mean(0)
