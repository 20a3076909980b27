"""Gradient estimators for non-differentiable units, valid in every autodiff mode.

Both estimators use the *value-exact* form

    y = hard(u) + (soft(u) - soft(u).detach())

The forward value is exactly ``hard(u)`` (``a - a`` is exactly zero in floating point), while
reverse mode, ``torch.func.jvp``/``jacfwd``/``vmap`` and ``torch.autograd.forward_ad`` all see the
derivative of ``soft`` (``detach`` drops the tangent in forward mode as it drops the gradient in
reverse mode). No custom ``autograd.Function`` is needed, so nothing breaks under functorch
transforms.
"""

from __future__ import annotations

import torch


def fast_sigmoid_primitive(u: torch.Tensor, slope: float) -> torch.Tensor:
    """A smooth function whose derivative is SuperSpike's surrogate ``1 / (1 + slope·|u|)²``."""
    return u / (1.0 + slope * u.abs())


def spike(u: torch.Tensor, slope: float = 5.0) -> torch.Tensor:
    """Heaviside step ``H(u)`` (exactly 0/1) with the fast-sigmoid surrogate derivative."""
    soft = fast_sigmoid_primitive(u, slope)
    hard = (u > 0).to(u.dtype)
    return hard + (soft - soft.detach())


def sign_ste(u: torch.Tensor) -> torch.Tensor:
    """``sign(u)`` in {-1, +1} (0 maps to +1) with the clipped straight-through estimator.

    The derivative is that of ``hardtanh``: 1 inside [-1, 1], 0 outside (Bengio et al. 2013).
    """
    soft = torch.nn.functional.hardtanh(u)
    hard = torch.where(u >= 0, torch.ones_like(u), -torch.ones_like(u))
    return hard + (soft - soft.detach())
