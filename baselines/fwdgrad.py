"""Forward gradient (Baydin et al. 2022, "Gradients without backpropagation").

For a random tangent v (one per parameter tensor, standard Gaussian), forward-mode AD carries the
tangent of every intermediate alongside its value, step by step through the sequence, and yields
the directional derivative of the loss

    d(v) = ⟨∇_θ L, v⟩ = jvp(L, θ; v)

in the same pass as the loss — no backward pass, no stored activations. Because E[v vᵀ] = I,

    g = (1/k) Σ_{i=1..k} d(v_i) v_i

is an unbiased estimate of ∇_θ L (its variance grows with the number of parameters p and shrinks
as 1/k). ``d(v)`` itself is exact: it equals ⟨g_BPTT, v⟩ to rounding (tested in float64).

Implementation:
- One forward pass computes the loss of the whole sequence: the model is stepped with
  ``model.step`` and the cross-entropy of each scored step is added to a running sum (summed CE /
  number of scored steps, exactly ``losses.sequence_loss``), so nothing of size T is kept — not
  even the logits.
- ``torch.func.jvp`` over ``torch.func.functional_call`` pushes the tangent through the pass. The
  whole thing runs under ``torch.no_grad()``: forward-mode AD needs no reverse graph, and without
  it autograd would record one that grows with T (every parameter requires grad).
- The k tangents are batched with ``torch.func.vmap`` over the tangent dimension (``vectorize``,
  default): one pass carries k tangents, k× the state tangents but one Python loop over time.
  ``vectorize=False`` loops over tangents (k passes; each tangent is drawn, used and added into g
  at once, so memory is that of one tangent); benchmarks/fmd.md ("e-prop and forward gradient")
  compares the two (vmap ≈ 2.5× faster at k = 4 on CPU).
- Cost note (torch 2.11): in forward mode, an op between a dual tensor and a plain one (a Python
  scalar, a ``detach()``-ed tensor, a constant) gives the plain operand an "efficient zero"
  tangent, and ops on those run through Python meta kernels — 0.1–0.5 ms each on CPU. The loss
  below avoids such ops; the LIF cell and the value-exact estimators (``hard + (soft −
  soft.detach())``, ``α·v``) have several per step, which is why fwdgrad on ``lif`` costs several
  times more per step than on ``gru``/``lstm``.
- Tangents come from the learner's own ``torch.Generator``, seeded once from the global RNG when
  the learner is built (so the run's one ``--seed`` fixes it) and saved in the checkpoint.

Memory: the tangents of the parameters (k·p) and of the state (k·B·n) beside the primal pass:
O(k·(p + B·n)) with vmap, O(p + B·n) with the loop; flat in T either way.
"""

from __future__ import annotations

import torch
from torch import nn

from temporal_sigprop.errors import ConfigError
from temporal_sigprop.learner import Learner, make_optimizer, tensor_bytes
from temporal_sigprop.method_options import ForwardGradientOptions  # declared torch-free there


class _SequenceLoss(nn.Module):
    """``loss(θ) = Σ_t CE(readout(h_t), y_t)[scored] / N``, stepping the model one frame at a
    time (a module, so that ``functional_call`` can substitute the parameters)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, targets, normaliser, scored_rows):
        model = self.model
        state = model.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        total = None
        for t in range(x.shape[1]):
            logits, state = model.step(x[:, t], state)
            rows = scored_rows[t]
            if rows is None:
                continue
            # CE of the scored rows by index_select/gather — not F.cross_entropy(ignore_index=…)
            # nor a product with a one-hot mask — so that every operand carries a tangent. (In
            # forward mode an op between a dual tensor and a plain one gives the plain one an
            # "efficient zero" tangent; in torch 2.11 ops on those run Python meta kernels,
            # 0.1–0.5 ms each on CPU — more than the whole step of a small model.)
            logp = torch.log_softmax(logits.index_select(0, rows), dim=-1)
            picked = logp.gather(1, targets[rows, t, None]).sum()
            total = picked if total is None else total + picked
        if total is None:  # nothing scored in this batch: loss 0, derivative 0
            return x.new_zeros(())
        return -total / normaliser


class ForwardGradient(Learner):
    name = "fwdgrad"
    Options = ForwardGradientOptions

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        if self.options.tangents < 1:
            raise ConfigError(f"--tangents must be ≥ 1, got {self.options.tangents}")
        self._loss_module = _SequenceLoss(model)
        self._generator = None
        # Drawn from the global RNG, which the harness seeds with the run's --seed.
        self._tangent_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.optimizer = make_optimizer(model.parameters(), self.cfg)

    # ------------------------------------------------------------------ tangents
    def generator(self, device) -> torch.Generator:
        device = torch.device(device)
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self._tangent_seed)
        return self._generator

    def sample_tangents(self, k: int | None = None) -> dict[str, torch.Tensor]:
        """k standard-Gaussian tangents per parameter: ``{name: [k, *shape]}``."""
        k = k or self.options.tangents
        params = self.named_model_parameters()
        gen = self.generator(next(iter(params.values())).device)
        return {n: torch.randn((k, *p.shape), generator=gen, device=p.device, dtype=p.dtype)
                for n, p in params.items()}

    # ------------------------------------------------------------------ forward mode
    def _jvp(self, x, targets, normaliser, scored_rows, params, tangent):
        def loss_fn(p):
            prefixed = {f"model.{n}": v for n, v in p.items()}
            return torch.func.functional_call(self._loss_module, prefixed,
                                              (x, targets, normaliser, scored_rows))
        return torch.func.jvp(loss_fn, (params,), (tangent,))

    @torch.no_grad()
    def _directional(self, x, y, tangents):
        """(loss, d [k]) with d_i = ⟨∇L, v_i⟩; tangents ``{name: [k, *shape]}``."""
        targets, normaliser = self.targets(y, x.shape[1])
        # A tensor of the model's dtype: dividing a dual tensor by a Python float gives (torch
        # 2.11) a float64 tangent for a float32 primal.
        normaliser = normaliser.to(x.dtype)
        # Which rows are scored at each step, decided once: no device sync inside the loop.
        scored = targets >= 0
        any_scored = scored.any(0).tolist()
        scored_rows = [scored[:, t].nonzero().squeeze(1) if any_scored[t] else None
                       for t in range(x.shape[1])]
        params = {n: p.detach() for n, p in self.named_model_parameters().items()}
        k = next(iter(tangents.values())).shape[0]
        if self.options.vectorize and k > 1:
            def one(v):
                return self._jvp(x, targets, normaliser, scored_rows, params, v)
            # The loss does not depend on the tangent: vmap returns it unbatched-broadcast.
            losses, d = torch.func.vmap(one, randomness="error")(tangents)
            loss = losses[0]
        else:
            d = []
            for i in range(k):
                loss, di = self._jvp(x, targets, normaliser, scored_rows, params,
                                     {n: v[i] for n, v in tangents.items()})
                d.append(di)
            d = torch.stack(d)
        carried = k if self.options.vectorize else 1
        state = self.model.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        self.state_bytes = tensor_bytes(tangents) + carried * tensor_bytes(state)
        return loss, d

    def directional_derivatives(self, x, y, tangents: dict[str, torch.Tensor]) -> torch.Tensor:
        """``d [k]``: the exact directional derivative of the batch loss along each tangent."""
        return self._directional(x, y, tangents)[1]

    @torch.no_grad()
    def _estimate(self, x, y):
        k = self.options.tangents
        if self.options.vectorize:
            tangents = self.sample_tangents(k)
            loss, d = self._directional(x, y, tangents)
            return loss, {n: torch.einsum("k,k...->...", d, v) / k for n, v in tangents.items()}
        # One tangent at a time, accumulated at once: O(p + B·n) beside the parameters, whatever
        # k. (The generator is drawn in a different order than for vmap, so the two modes with
        # one seed use different tangents.)
        grads = {n: torch.zeros_like(p) for n, p in self.named_model_parameters().items()}
        for _ in range(k):
            tangent = self.sample_tangents(1)
            loss, d = self._directional(x, y, tangent)
            for n, v in tangent.items():
                grads[n].add_(v[0], alpha=float(d[0]) / k)
        return loss, grads

    # ------------------------------------------------------------------ protocol
    def gradient(self, x, y):
        return self._estimate(x, y)[1]

    def train_batch(self, x, y):
        loss, grads = self._estimate(x, y)
        params = self.named_model_parameters()
        for n, p in params.items():
            p.grad = grads[n]
        self.clip(params.values())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss, "updates": 1}

    def state_dict(self):
        state = super().state_dict()
        if self._generator is not None:
            state["generator"] = {"device": str(self._generator.device),
                                  "state": self._generator.get_state()}
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        saved = state.get("generator")
        if saved is not None:
            self.generator(saved["device"]).set_state(saved["state"])
