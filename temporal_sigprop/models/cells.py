"""Recurrent cells as step functions with explicit NamedTuple state.

Every cell computes

    out_t, state_t = cell(x_t, state_{t-1})

and splits that step in two, because temporal signal propagation needs the split:

    drive_t = cell.drive(x_t)                    # W_in x_t + b: the input's pre-activation term
    out_t, state_t, local_t = cell.recur(drive_t, state_{t-1})

``drive`` is the only place the input enters; sigprop's target rows replace it by a projection of
the target. ``local_t`` is what a local loss may act on without differentiating a hard unit: the
output for smooth cells, the membrane potential for ``lif`` and the pre-activation for
``discrete``.

All cells are written from elementary tensor ops (no fused ``nn.GRUCell`` kernels): forward-mode
AD needs their formulas, and RTRL needs their per-step Jacobians.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..model_options import option_rules

from .estimators import sign_ste, spike


class HiddenState(NamedTuple):
    h: torch.Tensor


class LSTMState(NamedTuple):
    h: torch.Tensor
    c: torch.Tensor


class LIFState(NamedTuple):
    z: torch.Tensor  # spikes of the previous step, exactly 0/1
    v: torch.Tensor  # membrane potential


class NoState(NamedTuple):
    """The state of a stateless cell (``mlp``): nothing is carried across steps."""


class Cell(nn.Module):
    """Base class: ``drive`` (input term) + ``recur`` (everything that involves the state)."""

    state_type: type = HiddenState
    #: number of gate blocks in the drive (drive_size = gates * hidden_size)
    gates: int = 1

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.drive_size = self.gates * hidden_size
        self.input_weight = nn.Parameter(torch.empty(self.drive_size, input_size))
        self.bias = nn.Parameter(torch.zeros(self.drive_size))

    @property
    def drive_shape(self) -> tuple:
        """Shape of one sample's drive (``(drive_size,)`` here; ``(3C, H, W)`` for convgru):
        what a target projection must produce to replace ``drive(x_t)``."""
        return (self.drive_size,)

    @property
    def out_shape(self) -> tuple:
        """Shape of one sample's output ``out_t`` (and of ``local_t``)."""
        return (self.hidden_size,)

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def initial_state(self, batch: int, *, device=None, dtype=None):
        zeros = torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)
        return self.state_type(*([zeros] * len(self.state_type._fields)))

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.input_weight, self.bias)

    def recur(self, drive: torch.Tensor, state):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state):
        out, new_state, _ = self.recur(self.drive(x), state)
        return out, new_state


class ElmanCell(Cell):
    """``h_t = tanh(W_in x_t + b + W_rec h_{t-1})``."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.recurrent_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.reset_parameters()

    def recur(self, drive, state: HiddenState):
        h = torch.tanh(drive + state.h @ self.recurrent_weight.T)
        return h, HiddenState(h), h


class GRUCell(Cell):
    """Gated recurrent unit (Cho et al. 2014), PyTorch's gate convention.

        r = σ(d_r + U_r h + c_r),  u = σ(d_u + U_u h + c_u)
        n = tanh(d_n + r ⊙ (U_n h + c_n)),   h_t = (1 − u) ⊙ n + u ⊙ h_{t−1}
    where ``d = W_in x_t + b`` is the drive.
    """

    gates = 3

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.recurrent_weight = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        self.recurrent_bias = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    def recur(self, drive, state: HiddenState):
        d_r, d_u, d_n = drive.chunk(3, dim=-1)
        g_r, g_u, g_n = torch.nn.functional.linear(
            state.h, self.recurrent_weight, self.recurrent_bias).chunk(3, dim=-1)
        r = torch.sigmoid(d_r + g_r)
        u = torch.sigmoid(d_u + g_u)
        n = torch.tanh(d_n + r * g_n)
        h = (1 - u) * n + u * state.h
        return h, HiddenState(h), h


class LSTMCell(Cell):
    """Long short-term memory (Hochreiter & Schmidhuber 1997), gates i, f, g, o.

        [i, f, g, o] = d + U h_{t−1};  c_t = σ(f) ⊙ c_{t−1} + σ(i) ⊙ tanh(g);  h_t = σ(o) ⊙ tanh(c_t)
    """

    state_type = LSTMState
    gates = 4

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.recurrent_weight = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        self.reset_parameters()
        with torch.no_grad():  # forget-gate bias 1: remember by default (Jozefowicz et al. 2015)
            self.bias[hidden_size:2 * hidden_size].fill_(1.0)

    def recur(self, drive, state: LSTMState):
        pre = drive + state.h @ self.recurrent_weight.T
        i, f, g, o = pre.chunk(4, dim=-1)
        c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, LSTMState(h, c), h


class LIFCell(Cell):
    """Leaky integrate-and-fire neurons with recurrent spikes and reset to zero.

        i_t = W_in x_t + b + W_rec z_{t−1}
        v_t = α · v_{t−1} · (1 − z_{t−1}) + (1 − α) · i_t        (leak α = exp(−dt/τ_mem); reset)
        z_t = H(v_t − θ)                                          (spike, exactly 0/1)

    The spike's derivative is the fast-sigmoid surrogate (``estimators.spike``) in every autodiff
    mode. ``local`` is the membrane potential ``v_t`` (sigprop's voltage mode).
    """

    state_type = LIFState
    #: What each ``--model-options`` key accepts, declared torch-free in model_options.py.
    option_rules = option_rules("lif")

    def __init__(self, input_size: int, hidden_size: int, *, tau_mem: float = 10.0,
                 threshold: float = 1.0, surrogate_slope: float = 5.0, recurrent: bool = True):
        super().__init__(input_size, hidden_size)
        self.alpha = math.exp(-1.0 / tau_mem)
        self.threshold = threshold
        self.surrogate_slope = surrogate_slope
        self.recurrent = recurrent
        self.recurrent_weight = nn.Parameter(torch.empty(hidden_size, hidden_size)) if recurrent else None
        self.reset_parameters()
        with torch.no_grad():
            # Inputs strong enough to reach threshold within a few steps: without spikes no
            # surrogate gradient flows and nothing learns.
            nn.init.normal_(self.input_weight, 0.0, 3.0 / math.sqrt(input_size))
            self.bias.zero_()

    def recur(self, drive, state: LIFState):
        current = drive
        if self.recurrent_weight is not None:
            current = current + state.z @ self.recurrent_weight.T
        v = self.alpha * state.v * (1 - state.z) + (1 - self.alpha) * current
        z = spike(v - self.threshold, self.surrogate_slope)
        return z, LIFState(z, v), v


class DiscreteCell(Cell):
    """Binary (±1) recurrent units with a straight-through estimator.

        a_t = W_in x_t + b + W_rec h_{t−1};   h_t = sign(a_t)   (clipped STE derivative)

    ``local`` is the pre-activation ``a_t``: sigprop's loss never differentiates the sign.
    """

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.recurrent_weight = nn.Parameter(torch.empty(hidden_size, hidden_size))
        self.reset_parameters()

    def recur(self, drive, state: HiddenState):
        a = drive + state.h @ self.recurrent_weight.T
        h = sign_ste(a)
        return h, HiddenState(h), a


class MLPCell(Cell):
    """A stateless layer ``h_t = relu(W x_t + b)``: the seed's feed-forward setting (T = 1)."""

    state_type = NoState

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size)
        self.reset_parameters()
        nn.init.kaiming_uniform_(self.input_weight, a=math.sqrt(5))

    def initial_state(self, batch: int, *, device=None, dtype=None):
        return NoState()

    def recur(self, drive, state: NoState):
        h = torch.relu(drive)
        return h, NoState(), h


CELLS: dict[str, type[Cell]] = {
    "rnn": ElmanCell,
    "gru": GRUCell,
    "lstm": LSTMCell,
    "lif": LIFCell,
    "discrete": DiscreteCell,
    "mlp": MLPCell,
}
