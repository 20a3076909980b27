"""A model is a stack of cells plus a linear readout, applied step by step.

    h^0_t = flatten(x_t)
    h^l_t, s^l_t = cell_l(h^{l−1}_t, s^l_{t−1})          l = 1 … L
    logits_t = readout(h^L_t)

Learners drive the stack either whole (``forward``: logits for every step) or one step at a time
(``step``), and may go through the cells themselves (``cells[l].drive`` / ``cells[l].recur``) when
they need each layer on its own, as sigprop and the FMD baselines do.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .cells import Cell

State = tuple  # one NamedTuple per layer


class SequenceModel(nn.Module):
    def __init__(self, name: str, input_shape: tuple, cells: list[Cell], num_classes: int,
                 flatten_input: bool = True, readout: nn.Module | None = None):
        super().__init__()
        self.name = name
        self.input_shape = tuple(input_shape)  # (T, *features)
        self.cells = nn.ModuleList(cells)
        self.num_classes = num_classes
        self.flatten_input = flatten_input
        # ``readout`` maps the top layer's output to logits. Default: a Linear on [B, hidden].
        # A model may pass its own, which must still be an ``nn.Linear`` (subclass) so that
        # ``readout.weight``/``readout.bias`` mean the same everywhere (e.g. convgru's
        # ``GlobalPoolLinear`` averages a feature map over positions, then applies the Linear).
        self.readout = readout if readout is not None else nn.Linear(cells[-1].hidden_size,
                                                                     num_classes)

    @property
    def layers(self) -> int:
        return len(self.cells)

    @property
    def stateless(self) -> bool:
        return all(len(c.state_type._fields) == 0 for c in self.cells)

    def initial_state(self, batch: int, *, device=None, dtype=None) -> State:
        return tuple(c.initial_state(batch, device=device, dtype=dtype) for c in self.cells)

    def frame(self, x_t: torch.Tensor) -> torch.Tensor:
        """One step of input as the first cell wants it (features flattened unless convolutional)."""
        return rearrange(x_t, "b ... -> b (...)") if self.flatten_input else x_t

    def step(self, x_t: torch.Tensor, state: State):
        """One time step of the whole stack: ``logits_t, state_t``."""
        h = self.frame(x_t)
        new_state = []
        for cell, s in zip(self.cells, state):
            h, s = cell(h, s)
            new_state.append(s)
        return self.readout(h), tuple(new_state)

    def forward(self, x: torch.Tensor, state: State | None = None) -> torch.Tensor:
        """Logits for every step, ``[B, T, C]``, from ``x [B, T, *features]``."""
        if state is None:
            state = self.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        logits = []
        for t in range(x.shape[1]):
            out, state = self.step(x[:, t], state)
            logits.append(out)
        return torch.stack(logits, dim=1)
