"""One fused Adam(W) update over the parameters of several torch optimizers, on their own state.

Why. Sigprop takes an optimizer step at every time step. ``torch.optim.AdamW(fused=True).step()``
spends about 100 µs per call on the CPU in Python around its two kernels (the profiler's
``record_function``, step hooks, the walk over param groups and state dicts, grouping tensors by
device), and sigprop calls one optimizer per layer plus the readout's: at small sizes that was a
third of a time step.

What. The same two kernels torch's fused path runs — ``_foreach_add_`` on the per-parameter step
counts, then ``_fused_adamw_`` (``_fused_adam_`` for Adam) — called directly on the optimizers'
own state tensors (``exp_avg``, ``exp_avg_sq``, ``step``), with the param groups whose settings
agree (lr, betas, eps, weight decay, device, dtype) merged into one call. The update is
elementwise per parameter, with each parameter's own step count, so the numbers are exactly those
of calling every optimizer's ``step()`` (tests/test_sigprop.py checks bit equality), and the
optimizers' ``state_dict`` stays the truth (checkpoints, ``load_state_dict``).

When. ``MergedAdamStep.build(optimizers)`` reads the optimizers as they are (call it again after
anything changes them: the lr schedule, ``load_state_dict``) and returns ``(plan, None)``, or
``(None, why)`` where the optimizers must be stepped as usual: not torch's ``Adam``/``AdamW``,
not ``fused=True``, amsgrad, capturable or differentiable, a tensor lr, a gradient scaler
attached, step hooks (the optimizer's or global ones) or a replaced ``step``, a non-contiguous
parameter, or state that does not exist yet (``why == STATE_MISSING``: torch creates it at a
parameter's first step, so build again after it).

Step counts. torch keeps one 0-dim ``step`` tensor per parameter and its fused path increments
them with ``_foreach_add_``, which on the CPU is one ``add_`` per tensor (≈ 10 µs per update for
sigprop's 7 tensors, 3 % of a small step). ``build`` therefore gathers the counts into one 1-D
tensor and makes each ``state["step"]`` a view of its element (values unchanged; the optimizer's
own ``step()``, ``state_dict`` and checkpoints see ordinary 0-dim float tensors), so a complete
update increments them all with one ``add_``. Counts that are already such views are reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim import optimizer as _optim_module

#: ``build``'s reason when some parameter has no optimizer state yet (build again after a step).
STATE_MISSING = "optimizer state not created yet"


@dataclass
class _Segment:
    """Parameters stepped by one kernel call: equal settings, one device and dtype."""
    index: list
    """Positions of the segment's parameters in ``MergedAdamStep.params``."""
    params: list
    """The parameters."""
    exp_avgs: list
    """Their ``exp_avg`` state tensors (updated in place)."""
    exp_avg_sqs: list
    """Their ``exp_avg_sq`` state tensors (updated in place)."""
    steps: list
    """Their ``step`` counts (0-dim tensors, incremented in place)."""
    kernel: object
    """``torch._fused_adamw_`` (decoupled weight decay) or ``torch._fused_adam_``."""
    settings: dict
    """The kernel's keyword arguments (lr, betas, eps, weight decay, maximize, amsgrad)."""


class MergedAdamStep:
    """``step(grads)``: what each optimizer's ``step()`` does with those gradients (see module)."""

    def __init__(self, params: list, segments: list[_Segment], steps: torch.Tensor | None = None):
        self.params = params
        """Every parameter of the optimizers, in their param-group order."""
        self.segments = segments
        self._all_steps = [s for seg in segments for s in seg.steps]
        self._steps = steps  # the step counts as one tensor (views of it in the states), or None

    @classmethod
    def build(cls, optimizers) -> tuple[MergedAdamStep | None, str | None]:
        if _optim_module._global_optimizer_pre_hooks or _optim_module._global_optimizer_post_hooks:
            return None, "global optimizer step hooks are registered"
        params, merged = [], {}
        for opt in optimizers:
            if type(opt) not in (torch.optim.Adam, torch.optim.AdamW):
                return None, f"{type(opt).__name__} is not torch's Adam or AdamW"
            if "step" in vars(opt):
                return None, "the optimizer's step was replaced"
            if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
                return None, "the optimizer has step hooks"
            if getattr(opt, "grad_scale", None) is not None or getattr(opt, "found_inf", None) is not None:
                return None, "a gradient scaler is attached"
            for group in opt.param_groups:
                if not group.get("fused") or group.get("amsgrad") or group.get("capturable") \
                        or group.get("differentiable"):
                    return None, "only fused Adam(W) without amsgrad/capturable/differentiable"
                if not isinstance(group["lr"], float):
                    return None, "a tensor learning rate"
                beta1, beta2 = group["betas"]
                if not isinstance(beta1, float) or not isinstance(beta2, float):
                    return None, "tensor betas"
                for p in group["params"]:
                    state = opt.state.get(p)
                    if not state or "exp_avg" not in state:
                        return None, STATE_MISSING
                    if not p.is_contiguous():
                        return None, "a non-contiguous parameter"
                    key = (group["decoupled_weight_decay"], group["lr"], beta1, beta2,
                           group["eps"], group["weight_decay"], group["maximize"], p.device,
                           p.dtype)
                    merged.setdefault(key, []).append(len(params))
                    params.append((p, state))
        steps = _packed_steps([state for _, state in params])
        segments = []
        for key, index in merged.items():
            decoupled, lr, beta1, beta2, eps, weight_decay, maximize, _, _ = key
            chosen = [params[i] for i in index]
            segments.append(_Segment(
                index=index, params=[p for p, _ in chosen],
                exp_avgs=[s["exp_avg"] for _, s in chosen],
                exp_avg_sqs=[s["exp_avg_sq"] for _, s in chosen],
                steps=[s["step"] for _, s in chosen],
                kernel=torch._fused_adamw_ if decoupled else torch._fused_adam_,
                settings=dict(amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                              weight_decay=weight_decay, eps=eps, maximize=maximize,
                              grad_scale=None, found_inf=None)))
        return cls([p for p, _ in params], segments, steps), None

    def step(self, grads) -> None:
        """Update every parameter whose gradient (``grads``, aligned with ``params``) is not None;
        a None is skipped, as torch's optimizers skip a parameter without ``.grad``."""
        if torch.is_grad_enabled():
            with torch.no_grad():
                return self._step(grads)
        return self._step(grads)

    def _step(self, grads) -> None:
        complete = True
        for g in grads:
            if g is None:
                complete = False
                break
        if complete:  # every parameter updated (plain loops: this runs at every time step)
            if self._steps is not None:
                self._steps.add_(1)
            else:
                torch._foreach_add_(self._all_steps, 1)
            for seg in self.segments:
                g = [grads[i] for i in seg.index]
                seg.kernel(seg.params, _contiguous(g), seg.exp_avgs, seg.exp_avg_sqs, [],
                           seg.steps, **seg.settings)
            return
        for seg in self.segments:
            g = [grads[i] for i in seg.index]
            keep = [k for k, t in enumerate(g) if t is not None]
            if not keep:
                continue
            steps = [seg.steps[k] for k in keep]
            torch._foreach_add_(steps, 1)
            seg.kernel([seg.params[k] for k in keep], _contiguous([g[k] for k in keep]),
                       [seg.exp_avgs[k] for k in keep], [seg.exp_avg_sqs[k] for k in keep], [],
                       steps, **seg.settings)


def step_each(optimizers) -> None:
    """Step and clear each optimizer in turn (the path when one merged step does not apply).

    An optimizer whose parameters got no gradient (the readout's, on the steps its loss does not
    score: 39 of 40 for --loss-at last) would skip them anyway; not calling it is the same update
    without its Python overhead.
    """
    for opt in optimizers:
        if all(p.grad is None for g in opt.param_groups for p in g["params"]):
            continue
        opt.step()
        opt.zero_grad(set_to_none=True)


def _contiguous(grads: list) -> list:
    """The fused kernels read raw memory: a gradient laid out unlike its (contiguous) parameter
    is made contiguous first, as ``.grad`` accumulation would have."""
    for g in grads:
        if not g.is_contiguous():
            return [t.contiguous() for t in grads]
    return grads


def _packed_steps(states: list[dict]) -> torch.Tensor | None:
    """One 1-D tensor holding every state's ``step`` count, each ``state["step"]`` a view of its
    element (module docstring, "Step counts"); None where the counts are not alike 0-dim tensors
    (then each is incremented on its own)."""
    steps = [state["step"] for state in states]
    first = steps[0]
    base = first._base
    if (base is not None and base.dim() == 1 and base.numel() == len(steps)
            and all(s._base is base and s.storage_offset() == i for i, s in enumerate(steps))):
        return base  # packed by an earlier build
    if any(not torch.is_tensor(s) or s.dim() != 0 or s.dtype != first.dtype
           or s.device != first.device or s.requires_grad for s in steps):
        return None
    if len({id(s) for s in steps}) != len(steps):
        return None  # a count shared by two parameters: keep torch's own layout
    packed = torch.stack([s.detach() for s in steps])
    for i, state in enumerate(states):
        state["step"] = packed[i]
    return packed


__all__ = ["MergedAdamStep", "STATE_MISSING", "step_each"]
