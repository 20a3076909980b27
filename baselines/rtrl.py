"""Exact real-time recurrent learning (Williams & Zipser 1989) for a whole stack of cells.

State and parameters. ``s_t`` is the whole stack's state, flattened per sample (all layers, all
state tensors: lstm's ``h, c``, lif's ``z, v``; ``n`` entries, see ``fmd_common.StateLayout``).
``θ`` are the recurrent stack's parameters (every ``cells.*`` tensor, ``p`` entries); the readout
acts on the current step only. One step of the stack is ``s_t = f(s_{t−1}, x_t; θ)`` — an upper
layer's state depends on the lower layers' parameters through the same step, so one ``f`` for the
whole stack gets that right without any per-layer bookkeeping.

Influence (per sample, ``[B, n, p]``), carried forward from ``J_0 = 0``:

    J_t = ∂s_t/∂θ = D_t · J_{t−1} + M_t,     D_t = ∂f/∂s_{t−1}  [B, n, n],   M_t = ∂f/∂θ  [B, n, p]

Gradient, accumulated online. The loss of step t is a function of ``(s_{t−1}, x_t, θ, readout)``
through one step of the stack and the readout, so

    dL_t/dθ = ∂L_t/∂θ |_{s_{t−1} fixed}  +  ∂L_t/∂s_{t−1} · J_{t−1}

Both terms come from one ordinary reverse pass through that single step (the state enters as a
leaf): the first is "direct" (it includes the readout and θ's effect inside step t), the second
contracts the per-sample error on the state with the carried influence. This equals
``∂L_t/∂s_t · J_t + ∂L_t/∂θ_direct`` (substitute ``J_t = D_t J_{t−1} + M_t``) but needs no
assumption about how the output is read from the state, so it covers every cell (stateless
``mlp`` included: ``n = 0``, nothing is carried, the gradient is the direct term). With θ fixed
over the sequence, ``Σ_t dL_t/dθ`` *is* BPTT's gradient (float64: ~1e-15 relative).

How the Jacobians are computed, and why. ``D_t`` and ``M_t`` come from
``vmap(jacrev(f_one_sample, argnums=(θ, s)), in_dims=(None, 0, 0))``: ``f_one_sample`` is a pure
function (``functional_call`` of each cell) of one sample's flat state and frame; ``jacrev``
returns the full per-sample Jacobians, n vector–Jacobian products batched by vmap, with the cells'
own surrogate (lif) and straight-through (discrete) derivatives since those are written as
value-exact estimators that every autodiff mode sees. The alternative — ``jvp`` vmapped over p
parameter tangents, propagating ``J_{t−1}`` as the state tangent — never materialises ``M_t`` but
costs p forward passes per step (one per parameter entry, each a dense matmul of a one-hot
tangent), ≈ g·(n+d_in)/n times more arithmetic than the ``D_t · J_{t−1}`` product that dominates
here, and would need a p × p tangent basis or chunking. Reverse mode costs n backward passes
(O(B·n·p), the size of ``M_t`` itself); the update ``J ← M + D·J`` is one ``baddbmm`` per
parameter tensor, written into ``M_t``'s storage — O(B·n²·p) time, the cost of RTRL.

Memory. The influence is ``B·n·p`` entries. Before allocating anything the learner computes that
size (batch included) and raises ``IncompatibleError`` if it exceeds ``max_influence_bytes``
(checked at construction for one sample, and at every call for the actual batch). The per-step
``M_t`` has the size of the influence and is alive beside it, so the peak is ≈ twice the
influence; ``state_bytes`` reports influence + ``M_t`` + ``D_t`` + the carried state (flat in T).

Online variant. ``update_every = k > 0`` applies the accumulated gradient every k steps and keeps
the influence ``J`` (Williams & Zipser's real-time version): the parameters change during the
sequence, so ``J`` mixes Jacobians taken at different parameters and the result is no longer the
gradient of the sequence loss. ``gradient()`` always holds the parameters fixed (exact).
"""

from __future__ import annotations

import torch
from torch.func import functional_call, jacrev, vmap

from temporal_sigprop.errors import ConfigError, IncompatibleError
from temporal_sigprop.learner import Learner, make_optimizer
from temporal_sigprop.method_options import RTRLOptions  # declared torch-free there

from .fmd_common import (OnlineUpdates, StateLayout, cell_parameters, detach_state,
                         saved_tensor_hooks_suspended, split_parameters, step_loss)



def _format_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if b < 1024 or unit == "PiB":
            return f"{b:.1f} {unit}" if unit != "B" else f"{int(b)} B"
        b /= 1024
    return f"{b:.1f} PiB"


class RTRL(Learner):
    name = "rtrl"
    Options = RTRLOptions

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        if self.options.update_every < 0:
            raise ConfigError(f"--update-every must be ≥ 0, got {self.options.update_every}")
        self.layout = StateLayout(model)
        self.stack_params, self.direct_params = split_parameters(model)
        #: p: entries of the recurrent stack's parameters (the influence's last dimension)
        self.p = sum(t.numel() for t in self.stack_params.values())
        dtype = next(model.parameters()).dtype
        self.check_memory(1, dtype)  # refuse at once if not even one sample fits
        self.optimizer = make_optimizer(model.parameters(), self.cfg)
        #: bytes of the influence alone in the last call (state_bytes adds the workspace)
        self.influence_bytes = 0

    # ------------------------------------------------------------------ memory
    def memory_needed(self, batch: int, dtype=torch.float32) -> dict[str, int]:
        """Bytes of the influence ``[B, n, p]``, the per-step Jacobians and the state."""
        es = torch.empty((), dtype=dtype).element_size()
        n = self.layout.n
        influence = batch * n * self.p * es
        return {"influence": influence,
                "workspace": influence + batch * n * n * es,  # M_t (same size) and D_t
                "state": batch * n * es}

    def check_memory(self, batch: int, dtype=torch.float32) -> None:
        need = self.memory_needed(batch, dtype)["influence"]
        if need > self.options.max_influence_bytes:
            raise IncompatibleError(
                f"exact RTRL needs {_format_bytes(need)} for the influence of "
                f"{getattr(self.model, 'name', 'this model')} "
                f"(batch {batch} × state n={self.layout.n} × parameters p={self.p}, "
                f"{torch.empty((), dtype=dtype).element_size()} bytes each; about twice that at "
                f"peak with the per-step Jacobian), over max_influence_bytes="
                f"{_format_bytes(self.options.max_influence_bytes)}; use snap1 or fwdgrad, or a "
                f"smaller batch/hidden size")

    # ------------------------------------------------------------------ one step's Jacobians
    def _stack_step_one(self, params, s_flat, x_t):
        """One sample, no batch dim: flat state ``[n]``, frame ``[*F]`` → new flat state ``[n]``."""
        state = self.layout.unflatten(s_flat[None])
        h = self.model.frame(x_t[None])
        new_state = []
        for layer, cell in enumerate(self.model.cells):
            h, s = functional_call(cell, cell_parameters(params, layer), (h, state[layer]))
            new_state.append(s)
        new = self.layout.flatten(new_state)[0]
        return new, new

    def jacobians(self, x_t, state):
        """Per-sample ``D_t = ∂s_t/∂s_{t−1}`` ``[B, n, n]``, ``M_t = {name: ∂s_t/∂θ [B, n, numel]}``
        and the new flat state ``[B, n]``, at the model's current parameters."""
        params = {k: v.detach() for k, v in self.stack_params.items()}
        s_flat = self.layout.flatten(state)
        jac = vmap(jacrev(self._stack_step_one, argnums=(0, 1), has_aux=True),
                   in_dims=(None, 0, 0))
        with saved_tensor_hooks_suspended():  # jacrev refuses to run under a memory meter's hooks
            (m, d), new_flat = jac(params, s_flat, x_t)
        batch, n = s_flat.shape
        return d, {k: v.reshape(batch, n, -1) for k, v in m.items()}, new_flat

    # ------------------------------------------------------------------ one step's loss
    def _loss_grads(self, x_t, state, targets_t, normaliser):
        """``L_t``, ``∂L_t/∂θ`` with ``s_{t−1}`` held fixed (all params), and ``∂L_t/∂s_{t−1}``."""
        all_params = {**self.stack_params, **self.direct_params}
        with torch.enable_grad():
            leaf = None
            if self.layout.n:
                leaf = self.layout.flatten(state).detach().requires_grad_(True)
                state = self.layout.unflatten(leaf)
            logits, _ = self.model.step(x_t, state)
            loss = step_loss(logits, targets_t, normaliser)
            inputs = list(all_params.values()) + ([leaf] if leaf is not None else [])
            grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        g_params = {n: g for n, g in zip(all_params, grads) if g is not None}
        g_state = grads[-1] if leaf is not None else None
        if g_state is None and leaf is not None:
            g_state = torch.zeros_like(leaf)
        return loss.detach(), g_params, g_state

    # ------------------------------------------------------------------ the sequence
    @torch.no_grad()
    def _run(self, x, y, acc: OnlineUpdates):
        batch, steps = x.shape[:2]
        self.check_memory(batch, x.dtype)
        targets, normaliser = self.targets(y, steps)
        state = self.model.initial_state(batch, device=x.device, dtype=x.dtype)
        n = self.layout.n
        # J_0 = 0: the initial state does not depend on θ.
        influence = {k: x.new_zeros(batch, n, p.numel()) for k, p in self.stack_params.items()} \
            if n else {}
        need = self.memory_needed(batch, x.dtype)
        self.influence_bytes = need["influence"]
        self.state_bytes = need["influence"] + need["workspace"] + need["state"]
        total = x.new_zeros(())
        for t in range(steps):
            x_t = x[:, t]
            if (targets[:, t] >= 0).any():
                loss, g_params, g_state = self._loss_grads(x_t, state, targets[:, t], normaliser)
                total += loss
                for name, g in g_params.items():
                    acc.add(name, g)
                if n and t > 0:  # J_0 = 0: nothing to contract at the first step
                    for name, j in influence.items():
                        acc.add(name, torch.einsum("bn,bnk->k", g_state, j))
                acc.scored()
            if n:
                d, m, new_flat = self.jacobians(x_t, state)
                for name in influence:
                    # J_t = M_t + D_t J_{t−1}, written into M_t's storage (no third copy);
                    # out= rather than baddbmm_, which torch's FLOP counter does not see.
                    influence[name] = (torch.baddbmm(m[name], d, influence[name], out=m[name])
                                       if t > 0 else m[name])
                del d, m
                state = detach_state(self.layout.unflatten(new_flat))
            acc.step_done(t)
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
