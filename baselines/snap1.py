"""SnAp-1 (Menick et al. 2021): RTRL's influence kept only where a parameter acts on its own unit.

Which entries are kept. Every parameter entry of a stateful cell *writes to exactly one unit* of
its own layer within a step: row ``r`` of ``input_weight`` / ``bias`` / ``recurrent_weight`` /
``recurrent_bias`` (shape ``[G·H, ·]``, G gate blocks of H rows, as ``chunk(G)`` splits them) feeds
unit ``u(r) = r mod H`` — for a GRU, ``U_r[i, :]`` feeds the reset gate ``r_i``, which acts only on
``n_i`` and so ``h_i``; for an LSTM, the four rows of unit i feed ``c_i`` and ``h_i``. SnAp-1 keeps
the influence of entry ``θ_k`` on *all state tensors of unit u(k) in its own layer* (``h_i`` and
``c_i`` for lstm, ``z_i`` and ``v_i`` for lif) and drops everything else: the influence on other
units of the layer (which the recurrent matrix spreads from step 2 on) and on other layers. Per
sample and per parameter entry that is F numbers (F state tensors per unit): traces
``J̃[b, f, r, c]`` of the parameter's own shape times F, O(B·F·p) in all, flat in T.

Update (per layer l, per step t). With ``D̃_t[f, e, i] = ∂s_t[f, i] / ∂s_{t−1}[e, i]`` (the unit-
diagonal blocks of the layer's state Jacobian) and ``M_t`` the immediate ∂s_t/∂θ (exactly
unit-sparse for these cells, so nothing of it is dropped):

    J̃_t[f, r, c] = Σ_e D̃_t[f, e, u(r)] · J̃_{t−1}[e, r, c] + M_t[f, r, c]
    g_θ += Σ_{b, f} ∂L_t/∂s^l_t[b, f, u(r)] · J̃_t[b, f, r, c]      (readout: its direct gradient)

This is the masked RTRL recursion ``J̃_t = (D_t J̃_{t−1} + M_t) ⊙ mask``: for an entry kept by the
mask only the same unit's diagonal block of ``D_t`` meets a nonzero of ``J̃_{t−1}``. The error
``∂L_t/∂s^l_t`` comes from one reverse pass through step t of the stack (the layers above l and
the readout, *no* backpropagation through time); it is nonzero only on the field the cell outputs
(``h``, or lif's ``z``) — the state tensors are independent coordinates, so lstm's ``c`` is
reached only through ``J̃`` (no double counting through ``h_t = o ⊙ tanh(c_t)``). Stateless layers
(``mlp``) get their same-step gradient directly, which is exact.

When it is exact. One layer whose recurrent matrix is diagonal (``U = diag`` per gate block; any
cell): no unit ever feeds another, the full influence is unit-sparse and SnAp-1 = RTRL for *every*
parameter, off-diagonal recurrent entries included (their influence, too, stays on the unit they
write to). With a full recurrent matrix, or with 2+ layers (lower layers' parameters move upper
layers' states, which SnAp-1 drops), it is an approximation.

How the immediate Jacobians are computed (generic, no per-cell formulas). A cell's only cross-unit
operation within a step is its recurrent matmul ``P = U · o_{t−1}`` on its output field (``o = h``
or lif's ``z``); ``P`` lands in the recurrent bias's slot if the cell has one (GRU: ``r ⊙ (U_n h +
c_n)``), else it adds to the drive (rnn, lstm, lif, discrete). Compute ``P`` outside, put it into
that slot (``d' = d + P`` or ``c' = c + P``, per sample) and call the cell's own ``recur`` through
``functional_call`` with ``U := 0``: same values, but now a *unit-local* function ``φ(d', c', s)``.
A unit-local function's Jacobian is block-diagonal over units, so a reverse pass from output state
tensor f with a cotangent of ones returns ``∂s[f,i]/∂(every input of unit i)`` for all units at
once: ``∂s[f,i]/∂d'[gH+i]`` (``δ_d``), ``∂s[f,i]/∂c'[gH+i]`` (``δ_c``) and ``∂s[f,i]/∂s_{t−1}[e,i]``
(``E``: the paths that do not pass through U). F reverse passes (1 for rnn/gru/discrete, 2 for
lstm/lif) per layer and step — O(B·p) like a forward step — and the derivatives of lif's surrogate
and discrete's STE come from the cells themselves. (Forward mode would need G (+G) + F ``jvp``
probes, one per gate block and state tensor, for the same numbers.) Then, per unit i and gate g:

    ∂s[f,i]/∂W_in[gH+i, j] = δ_d[g][f,i] · x_j        ∂s[f,i]/∂b[gH+i] = δ_d[g][f,i]
    ∂s[f,i]/∂U[gH+i, j]    = δ_U[g][f,i] · o_{t−1,j}   (δ_U = δ_c with a recurrent bias, else δ_d)
    ∂s[f,i]/∂c[gH+i]       = δ_c[g][f,i]
    D̃[f,e,i] = E[f,e,i] + [e = o] Σ_g δ_U[g][f,i] · U[gH+i, i]

The assumptions (the recurrent matmul is the only cross-unit op, reads the output field, and lands
in the drive or the recurrent bias; state is one H-vector per tensor; parameters are
``[G·H, ·]``) hold for every cell in ``models.cells``; a cell that breaks the checkable ones (other
parameters, convolutional state, output not a state field) is refused with the reason, and
``tests/test_rtrl_snap.py`` checks the result against the masked dense recursion for every cell.

Cost per step: traces O(B·F·p) memory, flat in T; time O(B·F²·p) for the trace update plus one
forward and F + 1 reverse passes of a single step. ``update_every = k > 0`` applies the gradient
every k steps during the sequence and keeps the traces (the online setting SnAp is meant for).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange, repeat
from torch import nn
from torch.func import functional_call

from temporal_sigprop.errors import ConfigError, IncompatibleError
from temporal_sigprop.learner import Learner, make_optimizer
from temporal_sigprop.method_options import SnAp1Options  # declared torch-free there

from .fmd_common import (OnlineUpdates, detach_state, output_field, split_parameters,
                         state_bytes_of, step_loss)

_KNOWN = ("input_weight", "bias", "recurrent_weight", "recurrent_bias")


class _Recur(nn.Module):
    """Calls ``cell.recur`` so that ``functional_call`` can substitute the cell's parameters."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def forward(self, drive, state):
        return self.cell.recur(drive, state)


@dataclass
class _LayerPlan:
    """What SnAp-1 needs to know about one layer (found by inspecting the cell, once)."""
    layer: int
    stateful: bool
    out: int            # index of the output state field (the one U reads and the layer sends up)
    fields: int         # F: state tensors per unit
    hidden: int         # H
    gates: int          # G: gate blocks of the drive
    names: dict         # local name -> full name (trainable parameters only)
    has_u: bool
    has_c: bool


class SnAp1(Learner):
    name = "snap1"
    Options = SnAp1Options

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        if self.options.update_every < 0:
            raise ConfigError(f"--update-every must be ≥ 0, got {self.options.update_every}")
        self.stack_params, self.direct_params = split_parameters(model)
        self.plans = [self._plan(layer, cell) for layer, cell in enumerate(model.cells)]
        self._recur = [_Recur(cell) for cell in model.cells]
        self.optimizer = make_optimizer(model.parameters(), self.cfg)

    def _plan(self, layer: int, cell) -> _LayerPlan:
        prefix = f"cells.{layer}."
        local = {n: p for n, p in cell.named_parameters()}
        names = {n: prefix + n for n, p in local.items() if p.requires_grad}
        stateful = len(cell.state_type._fields) > 0
        out = -1
        if stateful:
            why = None
            extra = sorted(set(local) - set(_KNOWN))
            if any(tuple(t.shape) != (1, cell.hidden_size) for t in cell.initial_state(1)):
                why = ("its state is not one vector of hidden_size units per sample (a "
                       "convolutional cell shares each weight across positions, which the "
                       "per-unit traces here do not cover)")
            elif (out := output_field(cell)) < 0:
                why = "its output is not one of its state tensors"
            elif extra:
                why = f"it has parameters SnAp-1 has no unit map for: {', '.join(extra)}"
            else:
                h = cell.hidden_size
                for n, p in local.items():
                    if p.shape[0] % h or p.dim() != (1 if "bias" in n else 2) or (
                            n == "recurrent_weight" and p.shape[1] != h):
                        why = f"parameter {n} of shape {tuple(p.shape)} is not [G·H, ·]"
                if "recurrent_weight" in local and "recurrent_bias" not in local \
                        and local["recurrent_weight"].shape[0] != cell.drive_size:
                    why = "its recurrent term does not add to the drive"
            if why:
                raise IncompatibleError(f"snap1 cannot train {getattr(self.model, 'name', '?')}: "
                                        f"layer {layer} ({type(cell).__name__}): {why}")
        return _LayerPlan(layer=layer, stateful=stateful, out=out,
                          fields=len(cell.state_type._fields), hidden=cell.hidden_size,
                          gates=getattr(cell, "gates", 1), names=names,
                          has_u=getattr(cell, "recurrent_weight", None) is not None,
                          has_c=getattr(cell, "recurrent_bias", None) is not None)

    # ------------------------------------------------------------------ immediate Jacobians
    def _local_derivatives(self, plan: _LayerPlan, inp, s_prev):
        """Per-unit derivatives of one layer's step at ``(inp, s_prev)``, from the unit-local ``φ``.

        Returns, in the row layout of a ``[G·H, ·]`` parameter (row r ↔ unit r mod H):
        ``δ_d [B, F, G·H]``, ``δ_U`` (None without U), ``δ_c`` (None without recurrent bias), and
        the unit-diagonal state Jacobian ``D̃ [B, F, F, H]``, ``D̃[:, f, e, i] = ∂s[f,i]/∂s_{t−1}[e,i]``.
        """
        cell = self.model.cells[plan.layer]
        d = cell.drive(inp)
        swap = {}
        primals = [d]
        if plan.has_u:
            u = cell.recurrent_weight
            p = torch.nn.functional.linear(s_prev[plan.out], u)
            swap["cell.recurrent_weight"] = torch.zeros_like(u)
            if plan.has_c:
                primals.append(cell.recurrent_bias + p)  # c' = c + U o: GRU's r ⊙ (U_n h + c_n)
            else:
                primals[0] = d + p                         # d' = d + U o
        primals += list(s_prev)
        first_field = 2 if plan.has_c else 1

        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(True) for t in primals]
            # Views, not the leaves themselves, go into the module: hooks on module inputs (e.g.
            # FlopCounterMode's module tracker) cannot handle leaves under autograd.grad.
            args = [t.view_as(t) for t in leaves]
            params = dict(swap)
            if plan.has_c:
                params["cell.recurrent_bias"] = args[1]
            state = cell.state_type(*args[first_field:])
            _, new, _ = functional_call(self._recur[plan.layer], params, (args[0], state))
            # φ is unit-local, so its Jacobian is block-diagonal over units: a ones cotangent on
            # output tensor f returns ∂s[f, i]/∂(every input of unit i) for all units at once.
            # The output field goes last: it depends on the whole step, so the last pass walks
            # (and frees) every node of the graph.
            order = [f for f in range(plan.fields) if f != plan.out] + [plan.out]
            per_field = [None] * plan.fields
            for f in order:
                grads = torch.autograd.grad(new[f], leaves, torch.ones_like(new[f]),
                                            retain_graph=f != plan.out, allow_unused=True)
                per_field[f] = [torch.zeros_like(x) if g is None else g
                                for g, x in zip(grads, leaves)]
        delta_d = torch.stack([g[0] for g in per_field], dim=1)                   # [B, F, GH]
        delta_c = torch.stack([g[1] for g in per_field], dim=1) if plan.has_c else None
        diag = torch.stack([torch.stack(g[first_field:], dim=1) for g in per_field], dim=1)
        delta_u = None
        if plan.has_u:
            delta_u = delta_c if plan.has_c else delta_d
            h = plan.hidden
            u_diag = torch.diagonal(rearrange(cell.recurrent_weight, "(g i) j -> g i j", i=h),
                                    dim1=1, dim2=2)                       # [G, H]: U[gH+i, i]
            diag[:, :, plan.out] += (rearrange(delta_u, "b f (g h) -> b f g h", h=h)
                                     * u_diag).sum(2)
        return delta_d, delta_u, delta_c, diag

    def _update_traces(self, plan, traces, inp, s_prev):
        """``J̃ ← D̃ J̃ + M`` for every trainable parameter of one stateful layer."""
        delta_d, delta_u, delta_c, diag = self._local_derivatives(plan, inp, s_prev)
        o_prev = s_prev[plan.out]
        cell = self.model.cells[plan.layer]
        d_rows = {}
        for local, full in plan.names.items():
            g = getattr(cell, local).shape[0] // plan.hidden
            if local == "input_weight":
                m = delta_d[..., None] * inp[:, None, None, :]
            elif local == "bias":
                m = delta_d[..., None].clone()
            elif local == "recurrent_weight":
                m = delta_u[..., None] * o_prev[:, None, None, :]
            else:  # recurrent_bias
                m = delta_c[..., None].clone()
            if g not in d_rows:  # D̃ at each row's unit
                d_rows[g] = repeat(diag, "b f e h -> b f e (g h) 1", g=g)
            old = traces.get(full)
            if old is None:
                traces[full] = m  # J̃_0 = 0
            elif plan.fields == 1:
                traces[full] = old.mul_(d_rows[g][:, :, 0]).add_(m)  # in place: no second copy
            else:
                for f in range(plan.fields):
                    for e in range(plan.fields):
                        m[:, f].addcmul_(d_rows[g][:, f, e], old[:, e])
                traces[full] = m
            self._workspace = max(self._workspace, m.numel() * m.element_size())

    # ------------------------------------------------------------------ the sequence
    @torch.no_grad()
    def _run(self, x, y, acc: OnlineUpdates):
        batch, steps = x.shape[:2]
        targets, normaliser = self.targets(y, steps)
        state = self.model.initial_state(batch, device=x.device, dtype=x.dtype)
        traces: dict[str, torch.Tensor] = {}
        self._workspace = 0
        total = x.new_zeros(())
        stateless_params = {full: self.stack_params[full] for plan in self.plans
                            if not plan.stateful for full in plan.names.values()}
        for t in range(steps):
            scored = bool((targets[:, t] >= 0).any())
            # One step of the stack; with a graph only when the step is scored (its error is
            # needed at every layer's output, through the layers above, this step only).
            # The graph holds only what the error needs: stateful layers run with detached
            # parameters (their gradient comes from the traces) and the first stateful output
            # is a leaf, so every recorded node lies between the loss and a requested input.
            inputs, outs, new_state = [], [], []
            with torch.set_grad_enabled(scored):
                h = self.model.frame(x[:, t])
                for plan, cell, s in zip(self.plans, self.model.cells, state):
                    inputs.append(h.detach())
                    if plan.stateful and scored:
                        frozen = {k: v.detach() for k, v in cell.named_parameters()}
                        h, s_new = functional_call(cell, frozen, (h, s))
                        if not h.requires_grad:
                            leaf = h.detach().requires_grad_(True)
                            outs.append(leaf)
                            # a view goes on: module hooks (FlopCounterMode) reject leaf inputs
                            h = leaf.view_as(leaf)
                        else:
                            outs.append(h)
                    else:
                        h, s_new = cell(h, s)
                        outs.append(h)
                    new_state.append(s_new)
                logits = self.model.readout(h)
            # Traces: J̃_t from J̃_{t−1}, the layer's input at t and its state at t−1.
            for plan, inp, s_prev in zip(self.plans, inputs, state):
                if plan.stateful and plan.names:
                    self._update_traces(plan, traces, inp, s_prev)
            if scored:
                with torch.enable_grad():
                    loss = step_loss(logits, targets[:, t], normaliser)
                    wrt_out = [outs[p.layer] for p in self.plans if p.stateful]
                    direct = {**self.direct_params, **stateless_params}
                    grads = torch.autograd.grad(loss, wrt_out + list(direct.values()),
                                                allow_unused=True)
                total += loss.detach()
                g_out = dict(zip([p.layer for p in self.plans if p.stateful], grads))
                for name, g in zip(direct, grads[len(wrt_out):]):
                    if g is not None:
                        acc.add(name, g)
                for plan in self.plans:
                    if not plan.stateful or g_out.get(plan.layer) is None:
                        continue
                    err = g_out[plan.layer]                          # ∂L_t/∂o^l_t  [B, H]
                    for full in plan.names.values():
                        tr = traces[full][:, plan.out]                # [B, R, C]
                        err_rows = repeat(err, "b h -> b (g h)", g=tr.shape[1] // plan.hidden)
                        acc.add(full, torch.einsum("br,brc->rc", err_rows, tr))
                acc.scored()
            state = detach_state(new_state)
            del new_state, outs, logits  # free this step's graph before the next is built
            acc.step_done(t)
        self.state_bytes = (sum(tr.numel() * tr.element_size() for tr in traces.values())
                            + self._workspace + 2 * state_bytes_of(state))
        return total

    def gradient(self, x, y):
        params = {**self.stack_params, **self.direct_params}
        acc = OnlineUpdates(params, None, None, apply=False)
        self._run(x, y, acc)
        out = {n: torch.zeros_like(p) for n, p in self.named_model_parameters().items()}
        out.update(acc.grads)
        return out

    def train_batch(self, x, y):
        params = {**self.stack_params, **self.direct_params}
        acc = OnlineUpdates(params, self.optimizer, self.clip, every=self.options.update_every)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._run(x, y, acc)
        acc.finish()
        return {"loss": loss, "updates": acc.updates}
