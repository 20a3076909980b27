"""Backpropagation through time, full and truncated.

BPTT unrolls the whole sequence, keeps every step's activations for the backward pass (memory
grows with T), and updates once per sequence. TBPTT(k) cuts the graph every k steps: the state is
carried forward but detached, each chunk's loss is backpropagated through that chunk only, and (by
default) the parameters are updated after every chunk — online, with credit reaching at most k
steps back. With k ≥ T it is BPTT; with k = 1 no credit crosses a time step.
"""

from __future__ import annotations

import torch

from temporal_sigprop.errors import ConfigError
from temporal_sigprop.learner import Learner, make_optimizer
from temporal_sigprop.losses import sequence_loss
from temporal_sigprop.method_options import TBPTTOptions  # declared torch-free there


def _detach_state(state):
    return tuple(type(s)(*(t.detach() for t in s)) for s in state)


class BPTT(Learner):
    name = "bptt"

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        self.optimizer = make_optimizer(model.parameters(), self.cfg)

    def _loss(self, x, y):
        logits = self.model(x)
        targets, normaliser = self.targets(y, x.shape[1])
        return sequence_loss(logits, targets, normaliser)

    def gradient(self, x, y):
        params = self.named_model_parameters()
        loss = self._loss(x, y)
        grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(p))
                for (n, p), g in zip(params.items(), grads)}

    def train_batch(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._loss(x, y)
        loss.backward()
        self.clip(self.model.parameters())
        self.optimizer.step()
        return {"loss": loss.detach(), "updates": 1}


class TBPTT(Learner):
    name = "tbptt"
    Options = TBPTTOptions

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        if self.options.k < 1:
            raise ConfigError(f"--k must be ≥ 1, got {self.options.k}")
        self.optimizer = make_optimizer(model.parameters(), self.cfg)

    def _chunks(self, x, y):
        """Yield each chunk's loss; the state crosses chunk borders detached."""
        steps = x.shape[1]
        targets, normaliser = self.targets(y, steps)
        state = self.model.initial_state(x.shape[0], device=x.device, dtype=x.dtype)
        for start in range(0, steps, self.options.k):
            stop = min(start + self.options.k, steps)
            state = _detach_state(state)
            logits = []
            for t in range(start, stop):
                out, state = self.model.step(x[:, t], state)
                logits.append(out)
            chunk_targets = targets[:, start:stop]
            if (chunk_targets >= 0).any():
                yield sequence_loss(torch.stack(logits, 1), chunk_targets, normaliser)

    def gradient(self, x, y):
        params = self.named_model_parameters()
        total = {n: torch.zeros_like(p) for n, p in params.items()}
        for loss in self._chunks(x, y):
            grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
            for n, g in zip(params, grads):
                if g is not None:
                    total[n] += g
        return total

    def train_batch(self, x, y):
        self.optimizer.zero_grad(set_to_none=True)
        total, updates = 0.0, 0
        for loss in self._chunks(x, y):
            loss.backward()
            total = total + loss.detach()
            if self.options.update_every_chunk:
                self.clip(self.model.parameters())
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                updates += 1
        if not self.options.update_every_chunk:
            self.clip(self.model.parameters())
            self.optimizer.step()
            updates = 1
        return {"loss": total if isinstance(total, torch.Tensor) else torch.tensor(total),
                "updates": updates}
