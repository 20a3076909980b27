"""Shared pieces of the forward-mode (FMD) baselines: state layout, parameters, online updates.

Self-contained helpers that RTRL and SnAp-1 use, and that e-prop and forward gradients may use:

- ``StateLayout``: the whole stack's state (a tuple of per-layer NamedTuples, e.g. lstm's ``h, c``
  and lif's ``z, v``) as one flat vector per sample, ``[B, n]``, and back. RTRL's influence is
  indexed by this flat coordinate.
- ``split_parameters``: the model's trainable parameters split into the recurrent stack
  (``cells.*``, whose influence on the state must be carried forward) and the rest (the readout,
  which acts on the current step only and gets its gradient directly).
- ``cell_parameters``: one cell's slice of a flat ``{name: tensor}`` dict, with the cell-local
  names that ``torch.func.functional_call(cell, ...)`` expects.
- ``step_loss``: the loss of one step under the shared placement (summed CE / the whole sequence's
  scored count, so the per-step losses add up to ``losses.sequence_loss``).
- ``OnlineUpdates``: an accumulated gradient that is applied every k steps during the sequence
  (online) or once at the end, and counts the updates it applied.
- ``output_field``: which state field a cell sends upward (and to itself): ``h`` for rnn/gru/lstm/
  discrete, ``z`` for lif; None for stateless cells.
- ``saved_tensor_hooks_suspended``: runs a block without the active saved-tensor hooks (a memory
  meter's), which ``torch.func``'s reverse-mode transforms (``jacrev``, ``vjp``, ``grad``) refuse.

Nothing here depends on a particular learning rule; nothing imports other baselines.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from temporal_sigprop.losses import summed_ce


# ---------------------------------------------------------------------------- state layout
@dataclass(frozen=True)
class _FieldSpec:
    layer: int
    name: str
    shape: tuple  # per-sample shape of this state tensor (e.g. (H,))
    offset: int   # start of this field in the flat vector

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class StateLayout:
    """The stack state as one flat vector per sample.

    Order: layer-major, then the NamedTuple's fields in order, then the field's entries. For a
    2-layer lstm with hidden size H: ``[h¹ (H), c¹ (H), h² (H), c² (H)]``, so ``n = 4H``.
    """

    def __init__(self, model):
        probe = model.initial_state(1)
        self.state_types = [type(s) for s in probe]
        self.fields: list[_FieldSpec] = []
        offset = 0
        for layer, s in enumerate(probe):
            for name, t in zip(s._fields, s):
                spec = _FieldSpec(layer, name, tuple(t.shape[1:]), offset)
                self.fields.append(spec)
                offset += spec.size
        #: state entries per sample, all layers together
        self.n = offset

    def layer_slice(self, layer: int) -> slice:
        """Where one layer's state lies in the flat vector."""
        own = [f for f in self.fields if f.layer == layer]
        if not own:
            return slice(0, 0)
        return slice(own[0].offset, own[-1].offset + own[-1].size)

    def flatten(self, state) -> torch.Tensor:
        """``tuple of NamedTuples [B, ...]`` → ``[B, n]`` (an empty ``[B, 0]`` if stateless)."""
        parts = [rearrange(t, "b ... -> b (...)") for s in state for t in s]
        if not parts:
            raise ValueError("a stateless stack has no flat state; check layout.n first")
        return torch.cat(parts, dim=1)

    def unflatten(self, flat: torch.Tensor) -> tuple:
        """``[B, n]`` → tuple of per-layer NamedTuples, views into ``flat``."""
        per_layer: list[list[torch.Tensor]] = [[] for _ in self.state_types]
        for f in self.fields:
            chunk = flat[:, f.offset:f.offset + f.size]
            per_layer[f.layer].append(chunk.reshape(flat.shape[0], *f.shape))
        return tuple(cls(*fields) for cls, fields in zip(self.state_types, per_layer))


def detach_state(state) -> tuple:
    return tuple(type(s)(*(t.detach() for t in s)) for s in state)


def state_bytes_of(state) -> int:
    return sum(t.numel() * t.element_size() for s in state for t in s)


# ---------------------------------------------------------------------------- parameters
def split_parameters(model) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Trainable parameters as ``(recurrent stack ``cells.*``, everything else (readout))``.

    Names are those of ``model.named_parameters()``, so gradients can be returned under them.
    """
    stack, direct = {}, {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (stack if name.startswith("cells.") else direct)[name] = p
    return stack, direct


def cell_parameters(params: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    """``{"cells.{layer}.x": t}`` → ``{"x": t}``, what ``functional_call(cells[layer])`` takes."""
    prefix = f"cells.{layer}."
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def output_field(cell) -> int | None:
    """Index of the state field that the cell outputs (``out is new_state[k]``), None if stateless.

    For every cell in ``models.cells`` the output is one of the state fields (rnn/gru/lstm/discrete
    ``h``, lif ``z``) and the recurrent weight reads that same field.
    """
    if len(cell.state_type._fields) == 0:
        return None
    p = next(cell.parameters())
    with torch.no_grad():
        state = cell.initial_state(1, device=p.device, dtype=p.dtype)
        drive = torch.zeros(1, cell.drive_size, device=p.device, dtype=p.dtype)
        out, new_state, _ = cell.recur(drive, state)
    for k, t in enumerate(new_state):
        if t is out:
            return k
    return -1  # stateful, but the output is computed from the state rather than being a field


@contextmanager
def saved_tensor_hooks_suspended():
    """Pop every active saved-tensor hook pair for the block and push them back afterwards.

    ``torch.func.{jacrev, vjp, grad}`` raise under saved-tensor hooks (torch 2.11), and the
    harness meters memory with such hooks. The tensors a transform saves are freed inside the
    call, so the meter misses only that transient workspace — learners that use the transforms
    count their Jacobian workspace in ``state_bytes`` instead. Uses torch's internal hook stack
    (``torch._C._autograd._{top,pop,push}_saved_tensors_default_hooks``), the one
    ``torch.autograd.graph.saved_tensors_hooks`` itself pushes to.
    """
    autograd = torch._C._autograd
    stack = []
    while (top := autograd._top_saved_tensors_default_hooks(True)) is not None:
        stack.append(top)
        autograd._pop_saved_tensors_default_hooks()
    try:
        yield
    finally:
        for pack, unpack in reversed(stack):
            autograd._push_saved_tensors_default_hooks(pack, unpack)


# ---------------------------------------------------------------------------- losses and updates
def step_loss(logits_t: torch.Tensor, targets_t: torch.Tensor, normaliser) -> torch.Tensor:
    """The loss of one step: summed CE over its scored samples / the whole sequence's count."""
    return summed_ce(logits_t, targets_t) / normaliser


class OnlineUpdates:
    """A gradient accumulated over steps, applied every ``every`` steps (online) or at the end.

    ``grads`` holds the running sum under the model's parameter names. ``step_done(t)`` is called
    after step t; it applies (and resets) the sum when ``every > 0`` and ``(t+1) % every == 0``
    and at least one step since the last update was scored. ``finish()`` applies what is left.
    ``updates`` counts the optimizer steps taken. With ``every == 0`` and ``apply=False`` it is a
    plain accumulator (``gradient()``: parameters held fixed, nothing applied).
    """

    def __init__(self, params: dict[str, nn.Parameter], optimizer, clip_fn, *, every: int = 0,
                 apply: bool = True):
        self.params = params
        self.optimizer = optimizer
        self.clip_fn = clip_fn
        self.every = every if apply else 0
        self.apply = apply
        self.grads = {n: torch.zeros_like(p) for n, p in params.items()}
        self.pending = False  # a scored step contributed since the last update
        self.updates = 0

    def add(self, name: str, g: torch.Tensor) -> None:
        self.grads[name].add_(g.reshape(self.grads[name].shape))

    def scored(self) -> None:
        self.pending = True

    def _apply_now(self) -> None:
        for n, p in self.params.items():
            p.grad = self.grads[n].clone()
        self.clip_fn(self.params.values())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for g in self.grads.values():
            g.zero_()
        self.pending = False
        self.updates += 1

    def step_done(self, t: int) -> None:
        if self.every > 0 and (t + 1) % self.every == 0 and self.pending:
            self._apply_now()

    def finish(self) -> None:
        if self.apply and self.pending:
            self._apply_now()
