"""e-prop: eligibility traces × learning signals (Bellec et al. 2020, "A solution to the learning
dilemma for recurrent networks of spiking neurons", Nat. Commun. 11:3625, with its Supplementary).

The exact gradient of a loss E = Σ_t E_t(out_t) factorises as (the paper's eq. 1)

    dE/dW_ji = Σ_t  dE/dz_j^t · [dz_j^t/dW_ji]_local

e-prop replaces the *total* derivative dE/dz_j^t (which includes the influence of z_j^t on every
later step through the network) by its *partial* — the error that reaches neuron j at step t from
the readout at step t — and keeps, per synapse, only the path through the neuron's own implicit
state (the membrane potential v of a LIF neuron, the cell state c of an LSTM unit):

    eligibility vector   ε_ji^t = ∂h_j^t/∂h_j^{t−1} · ε_ji^{t−1} + ∂h_j^t/∂W_ji      (forward, per synapse)
    eligibility trace    e_ji^t = ∂z_j^t/∂h_j^t · ε_ji^t
    learning signal      L_j^t  = Σ_k B_jk (π_k^t − y*_k^t)                          (scored steps only)
    update direction     ΔW_ji  = Σ_t L_j^t e_ji^t

with π^t = softmax(logits_t), y*^t the one-hot target and the loss normalised exactly as
``losses.sequence_loss`` does (summed CE / number of scored steps). ``B = W_outᵀ`` is symmetric
e-prop (the default); ``feedback="random"`` uses a fixed random B (random e-prop), a learner-owned
parameter saved in the checkpoint. The readout gets its exact gradient Σ_t (π^t − y*^t) h_tᵀ.

Per cell (rows r of the pre-activation, ``x̃`` the presynaptic activity of a synapse: the layer
input for ``input_weight``, 1 for ``bias``, the layer's previous output for ``recurrent_weight``):

- ``lif`` (v_t = α v_{t−1}(1 − z_{t−1}) + (1 − α) i_t, z_t = H(v_t − θ), ψ_t = surrogate'(v_t − θ)):
  ε_t = a_t ε_{t−1} + (1 − α) x̃_t,   e_t = ψ_t ε_t, with ``lif_trace`` choosing a_t:
    * ``exact``: a_t = α (1 − z_{t−1} − v_{t−1} ψ_{t−1}) — the neuron's own reset differentiated
      through its pseudo-derivative, i.e. the full ∂v_t/∂v_{t−1} of one neuron. With no recurrent
      connections this is the exact gradient (tested against BPTT to ~1e-12 in float64).
    * ``reset``: a_t = α (1 − z_{t−1}) — z_{t−1} treated as an observable, as the paper does
      (its subtractive reset contributes no term; this cell's multiplicative one gates the leak).
    * ``presynaptic``: a_t = α — the paper's LIF form, ε = low-pass filtered presynaptic activity,
      one trace per *presynaptic* unit shared by all postsynaptic neurons: O(B·(I + H)) memory
      instead of O(B·p). It ignores the reset entirely.
- ``rnn`` (h_t = tanh(W x̃_t)): h is both the state and the output, so there is no implicit
  variable: ε_t = x̃_t (the presynaptic activity itself, no recursion) and e_t = (1 − h_t²) x̃_t.
- ``lstm`` (Supplementary, "e-prop for LSTMs"): the implicit variable is the cell state c.
  For the weights of gates i, f, g:
      ε_t = σ(f_t) ε_{t−1} + κ_t x̃_t,   κ_t = σ'(i)tanh(g) | σ'(f) c_{t−1} | σ(i) tanh'(g)
      e_t = σ(o_t) tanh'(c_t) ε_t
  and for the output gate, which has no memory: e_t = σ'(o_t) tanh(c_t) x̃_t.

Stacks: traces per layer; the learning signal reaches lower layers by backpropagation through the
stack *at the same step* (∂out^{l+1}_t/∂out^l_t with every state_{t−1} held fixed), never through
time — the same rule as SnAp-1 (baselines/snap1.py). With random feedback, B replaces W_outᵀ at the top
only; lower layers receive the top signal through the true weights of the layers above.

When e-prop is exact: one layer whose neurons receive no recurrent input from other neurons
(``lif`` with ``recurrent=False``, or a zero recurrent matrix for ``rnn``/``lstm``: then h_{t−1}
influences h_t through no path, so even the recurrent weights' gradient — Σ_t δ_t h_{t−1}ᵀ — is
exact), and any stack at T = 1. Recurrent connections make it an approximation (the paths through
other neurons' future states are dropped).

Documented omissions:
- The paper low-pass filters the traces (F_κ) because its readout is leaky (y_t = κ y_{t−1} + …).
  Our readout is memoryless (logits_t = W_out h_t + b), for which κ = 0 is the exact form, so the
  filter is omitted.
- Adaptive thresholds (ALIF) are not part of the ``lif`` cell, so their second eligibility vector
  is not implemented.

Updates: once per sequence by default (the sum over the sequence with parameters fixed — what
``gradient()`` always returns); ``update_every = k`` applies the running sum every k steps while
the traces carry on across updates (online e-prop, as in the paper; no longer the gradient of one
fixed-parameter sequence loss).

Everything runs under ``torch.no_grad`` step by step: no graph, nothing stored across time. Memory:
the eligibility vectors, O(B·p) per layer (B·S·(I + H + 1) entries for a layer with S rows that
carry an implicit variable; none for ``rnn``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import repeat
from torch import nn

from temporal_sigprop.errors import ConfigError, IncompatibleError
from temporal_sigprop.learner import Learner, make_optimizer, tensor_bytes
from temporal_sigprop.models.cells import ElmanCell, LIFCell, LSTMCell
from temporal_sigprop.method_options import FEEDBACK_KINDS, LIF_TRACES, EPropOptions  # declared torch-free there

from .fmd_common import OnlineUpdates

_REFUSAL = "e-prop is defined for rnn, lif and lstm cells (Bellec et al. 2020)"


class _Local(NamedTuple):
    """One layer's local derivatives at one step (rows = pre-activation rows, S leading rows carry
    an implicit variable ĥ: LIF's v, LSTM's c for gates i, f, g)."""

    decay: torch.Tensor | float | None   # [B, S] or scalar: ∂ĥ_t/∂ĥ_{t−1}
    inject: torch.Tensor | float | None  # [B, S] or scalar: ∂ĥ_t/∂(pre-activation row)
    readout: torch.Tensor | None         # [B, S]: ∂out_t/∂ĥ_t (LIF: the pseudo-derivative ψ_t)
    direct: torch.Tensor | None          # [B, R − S]: ∂out_t/∂(pre-activation) of memoryless rows


def _pseudo_derivative(cell: LIFCell, v: torch.Tensor) -> torch.Tensor:
    """ψ = ∂z/∂v as every autodiff mode sees it for ``estimators.spike``: the derivative of
    ``fast_sigmoid_primitive``, 1 / (1 + slope·|v − θ|)². Written out because differentiating the
    estimator here (a jvp per step) costs more than the whole trace update; the e-prop = BPTT
    tests fail if the two ever disagree."""
    return (1.0 + cell.surrogate_slope * (v - cell.threshold).abs()).square().reciprocal()


def _lif_local(cell: LIFCell, drive, prev, new, mode: str) -> _Local:
    alpha = cell.alpha
    psi = _pseudo_derivative(cell, new.v)
    if mode == "presynaptic":
        decay = alpha
    elif mode == "reset":
        decay = alpha * (1 - prev.z)
    else:  # exact: ∂v_t/∂v_{t−1} = α(1 − z_{t−1}) − α v_{t−1} ∂z_{t−1}/∂v_{t−1}
        decay = alpha * (1 - prev.z - prev.v * _pseudo_derivative(cell, prev.v))
    return _Local(decay, 1 - alpha, psi, None)


def _rnn_local(cell: ElmanCell, drive, prev, new, mode: str) -> _Local:
    return _Local(None, None, None, 1 - new.h * new.h)


def _lstm_local(cell: LSTMCell, drive, prev, new, mode: str) -> _Local:
    # The gate pre-activations are not part of the state: recompute them (one extra H×4H matmul).
    pre = drive + prev.h @ cell.recurrent_weight.T
    i, f, g, o = pre.chunk(4, dim=-1)
    si, sf, so, tg, tc = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g), torch.tanh(new.c)
    decay = repeat(sf, "b h -> b (k h)", k=3)
    inject = torch.cat([si * (1 - si) * tg, sf * (1 - sf) * prev.c, si * (1 - tg * tg)], dim=-1)
    readout = repeat(so * (1 - tc * tc), "b h -> b (k h)", k=3)
    direct = so * (1 - so) * tc
    return _Local(decay, inject, readout, direct)


#: cell type -> (local derivatives, number of leading rows with an implicit variable, previous output)
_KERNELS = {
    LIFCell: (_lif_local, lambda c: c.hidden_size, lambda s: s.z),
    ElmanCell: (_rnn_local, lambda c: 0, lambda s: s.h),
    LSTMCell: (_lstm_local, lambda c: 3 * c.hidden_size, lambda s: s.h),
}


class EProp(Learner):
    name = "eprop"
    Options = EPropOptions

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        for cell in model.cells:
            if type(cell) not in _KERNELS:
                raise IncompatibleError(f"eprop cannot train {getattr(model, 'name', '?')} "
                                        f"({type(cell).__name__}): {_REFUSAL}")
        if self.options.feedback not in FEEDBACK_KINDS:
            raise ConfigError(f"unknown --feedback {self.options.feedback!r}; choose one of: "
                              f"{', '.join(FEEDBACK_KINDS)}")
        if self.options.update_every < 0:
            raise ConfigError(f"--update-every must be ≥ 0, got {self.options.update_every}")
        if self.options.lif_trace not in LIF_TRACES:
            raise ConfigError(f"unknown --lif-trace {self.options.lif_trace!r}; choose one of: "
                              f"{', '.join(LIF_TRACES)}")
        readout = model.readout.weight  # [C, H]
        self.feedback = None
        if self.options.feedback == "random":
            # Fixed random feedback (random e-prop), scaled like a readout so that learning signals
            # have the symmetric version's magnitude; never trained, saved with the learner.
            self.feedback = nn.Parameter(
                torch.randn(readout.shape, device=readout.device, dtype=readout.dtype)
                / math.sqrt(readout.shape[1]), requires_grad=False)
        self.optimizer = make_optimizer(model.parameters(), self.cfg)

    def own_parameters(self):
        return [self.feedback] if self.feedback is not None else []

    # ------------------------------------------------------------------ the forward pass
    @torch.no_grad()
    def _run(self, x, y, acc: OnlineUpdates):
        """One pass over the sequence, adding Σ_t L_t e_t into ``acc.grads``; returns the loss.

        ``acc`` applies the sum every ``update_every`` steps (online: the traces carry on across
        updates, as in the paper) or not at all (``gradient()``: parameters fixed)."""
        model = self.model
        batch, steps = x.shape[:2]
        targets, normaliser = self.targets(y, steps)
        grads = acc.grads
        feedback = (model.readout.weight if self.feedback is None
                    else self.feedback.to(model.readout.weight))
        state = model.initial_state(batch, device=x.device, dtype=x.dtype)
        ones = torch.ones(batch, 1, device=x.device, dtype=x.dtype)
        traces = [dict() for _ in model.cells]  # layer -> {param name: ε}
        loss = x.new_zeros(())
        any_scored = (targets >= 0).any(0).tolist()  # decided once: no device sync per step

        for t in range(steps):
            # ---- forward through the stack, collecting each layer's local derivatives
            h = model.frame(x[:, t])
            layers, new_state = [], []
            for cell, prev in zip(model.cells, state):
                local_fn, _, prev_out = _KERNELS[type(cell)]
                drive = cell.drive(h)
                out, new, _ = cell.recur(drive, prev)
                presyn = {"input_weight": h, "bias": ones}
                if getattr(cell, "recurrent_weight", None) is not None:
                    presyn["recurrent_weight"] = prev_out(prev)
                layers.append((local_fn(cell, drive, prev, new, self.options.lif_trace), presyn))
                new_state.append(new)
                h = out
            logits = model.readout(h)

            # ---- readout error at scored steps: ∂E/∂logits_t = (π_t − y*_t) / N
            tgt = targets[:, t]
            scored = tgt >= 0
            err = None
            if any_scored[t]:
                logp = torch.log_softmax(logits, dim=-1)
                onehot = F.one_hot(tgt.clamp_min(0), logits.shape[-1]).to(logits.dtype)
                mask = scored.to(logits.dtype)[:, None]
                loss = loss - (logp * onehot * mask).sum() / normaliser
                err = (logp.exp() - onehot) * mask / normaliser
                grads["readout.weight"] += err.T @ h
                grads["readout.bias"] += err.sum(0)
                acc.scored()

            # ---- traces (every step) and Σ_t L_t e_t (scored steps), top layer down
            signal = err @ feedback if err is not None else None  # L_t = B (π_t − y*_t): [B, H]
            for index in reversed(range(len(model.cells))):
                cell = model.cells[index]
                local, presyn = layers[index]
                rows = _KERNELS[type(cell)][1](cell)
                signal_rows = (repeat(signal, "b h -> b (k h)", k=cell.gates)
                               if signal is not None else None)
                for pname, p in presyn.items():
                    name = f"cells.{index}.{pname}"
                    g = grads[name].view(cell.drive_size, -1)
                    if rows:
                        eps = self._update_trace(traces[index], pname, local, p, rows)
                        if signal_rows is not None:
                            coeff = signal_rows[:, :rows] * local.readout
                            if eps.dim() == 2:  # shared presynaptic trace
                                g[:rows] += coeff.T @ eps
                            else:  # Σ_b over ε stored [S, B, I]: a batched matmul, no copy
                                g[:rows] += torch.einsum("sb,sbi->si", coeff.T.contiguous(), eps)
                    if rows < cell.drive_size and signal_rows is not None:
                        g[rows:] += (signal_rows[:, rows:] * local.direct).T @ p
                # same-step backprop to the layer below: ∂out_t/∂(pre-activation) · W_in
                if index > 0 and signal_rows is not None:
                    parts = [local.readout * local.inject] if rows else []
                    if rows < cell.drive_size:
                        parts.append(local.direct)
                    d_pre = torch.cat(parts, dim=-1)  # [B, R]
                    signal = (signal_rows * d_pre) @ cell.input_weight
            state = tuple(new_state)
            acc.step_done(t)

        self.state_bytes = tensor_bytes([list(tr.values()) for tr in traces])
        return loss

    @staticmethod
    def _update_trace(store: dict, pname: str, local: _Local, p: torch.Tensor, rows: int):
        """ε_t = decay ⊙ ε_{t−1} + inject ⊙ x̃_t, in place (allocated once per sequence).

        Per-synapse traces are stored ``[S, B, I]`` (row, sample, presynaptic unit): the weight
        update Σ_b L·ψ·ε is then a batched matmul over rows without a copy (about 6× faster on
        CPU than contracting a ``[B, S, I]`` layout). Shared presynaptic traces are ``[B, I]``."""
        shared = not isinstance(local.decay, torch.Tensor)
        eps = store.get(pname)
        if eps is None:
            shape = (p.shape[0], p.shape[1]) if shared else (rows, p.shape[0], p.shape[1])
            eps = store[pname] = p.new_zeros(shape)
        if shared:  # one trace per presynaptic unit: ε = α ε + (1 − α) x̃
            eps.mul_(local.decay).add_(p, alpha=local.inject)
        else:
            eps.mul_(local.decay.T.contiguous().unsqueeze(-1))
            if isinstance(local.inject, torch.Tensor):
                eps.addcmul_(local.inject.T.contiguous().unsqueeze(-1), p.unsqueeze(0))
            else:
                eps.add_(p.unsqueeze(0), alpha=local.inject)
        return eps

    # ------------------------------------------------------------------ protocol
    def gradient(self, x, y):
        acc = OnlineUpdates(self.named_model_parameters(), None, None, apply=False)
        self._run(x, y, acc)
        return acc.grads

    def train_batch(self, x, y):
        acc = OnlineUpdates(self.named_model_parameters(), self.optimizer, self.clip,
                            every=self.options.update_every)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._run(x, y, acc)
        acc.finish()
        return {"loss": loss, "updates": acc.updates}
