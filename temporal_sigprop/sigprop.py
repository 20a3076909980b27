"""Temporal signal propagation: forward-only learning for recurrent, spiking and video networks.

The target travels forward *with* the input, through the
same layers and the same recurrent connections, one step at a time; every layer learns from a local
loss as soon as the forward pass reaches it. No backward pass through time, none across layers.

Step ``t`` of a batch of ``B`` sequences, a stack of ``L`` cells, ``R`` target rows:

    signal      d^1_t = [ W_in x_t + b  ;  P c_t ]                 [B + R, drive]   (rows, not features)
    layer l     out^l_t, state^l_t, local^l_t = recur_l(d^l_t, sg(state^l_{t−1}))   one batched call
                d^{l+1}_t = drive_{l+1}(sg(out^l_t))
    local loss  L^l_t = loss(local^l_t[:B], local^l_t[B:], labels_t) / (#scored rows at t)
    readout     L^o_t = CE(V · sg(out^L_t[:B]) + v, y_t) / (#scored rows at t)      (scored steps)
    update      ∇ of Σ_l L^l_t + L^o_t — one backward, one step deep; optimizer step(s) per schedule

``sg`` = stop-gradient (detach). Because every layer's input and previous state are constants, the
gradient of the summed losses w.r.t. layer l's parameters is the gradient of ``L^l_t`` alone: one
``backward`` of the sum equals L separate ones and costs less. ``P`` (the projection of the target
``c_t`` — one-hot per class, ``[C, *drive_shape]``) is trained by the first layer's loss only.

Target rows (``target_rows``):
- ``class``: ``R = C`` rows, row c carries class c at every step (``c_t = e_c``); the class-embedding
  CE scores ``h · s_classesᵀ / τ`` — per sequence labels only.
- ``sample``: ``R = B`` rows, row i carries sample i's label ``y_i`` (or ``y_{i,t}`` for per-step
  labels: the row follows the sample's label history; a step without a label gets a zero drive);
  multi-positive batch-similarity CE over the rows that share the current label. With sequence
  labels the B rows are exact copies of the C class rows (same drive, start and weights), so they
  are computed as C rows and the loss becomes the class CE with logits shifted by ``log n_c``
  (``n_c`` rows of class c in the batch) — equal values and gradients (tested), 1.1× not 2× rows.
  This is the default: on MNIST-1D it beat plain class rows by about 3 points (3 seeds each).

Local loss: raw dot products ``h · s / τ`` with ``τ = 2`` by default (``normalize`` divides each row
by its norm first — per row, so the two kinds of row never share statistics; then use τ ≈ 0.1).
Measured on MNIST-1D and a cue-recall task (benchmarks/sigprop.md): raw products learned at least
as well, and more reliably on the cue task. τ = 2 rather than 1: with an update at every step the
sharper logits of τ = 1 let one GRU seed in five stall for 15 epochs (88.9 % at the end); at τ = 2
the five seeds end within 1.4 points (94.2 ± 0.6 % vs 92.8 ± 2.4 %), and the audio and ConvGRU
video tasks gain too (the dense-GRU video task loses 2.6 points).

Loss placement (``cfg.loss_at`` and ``local_steps``). Sigprop's local loss is naturally at every
step: the target is present at every step, and each step's one-step local gradient is all a layer
ever learns from. So by default (``local_steps="every"``) every layer's local loss is scored at
every *labelled* step whatever ``loss_at`` says, and ``loss_at`` decides only which steps train the
readout (``last``: the final step, the prediction the harness scores; ``every``: the anytime
readout). ``local_steps="placement"`` scores the local losses only where ``loss_at`` scores, e.g.
only the final step for ``last`` — then a layer can credit earlier steps only through ``traces``.

Prediction (``prediction``). By default the class whose target row is nearest: the C class rows
run beside the input rows through the same layers, and the top layer's similarities ``h·s_c/τ``
are the logits — what the local losses train, so nothing else has to learn. The linear readout
(``prediction="readout"``) learns only where ``loss_at`` scores (once per sequence for ``last``)
while the layers under it move at every step; on MNIST-1D it trailed the nearest row by 0.5–1.7
points on every trained model checked, and a linear readout refitted to convergence on the frozen
features matched the nearest row (benchmarks/sigprop.md).

Temporal traces (``traces=True``): per-layer SnAp-1 eligibility traces, inside the layer only.
For every differentiable state component ``k`` of layer l (h; h and c for lstm; v for lif — never
the spike) and every parameter entry ``θ_j`` feeding unit ``i(j)`` (row ``r`` of a ``[G·H, …]``
matrix feeds unit ``r mod H``; column ``r`` of ``P``):

    e^k_t[n, j] = Σ_m D^{km}_t[n, i(j)] · e^m_{t−1}[n, j]  +  I^k_t[n, j]
    D^{km}_t[n, i] = ∂state^k_{t,i} / ∂state^m_{t−1,i}         (diagonal of the one-step Jacobian)
    I^k_t[n, j]   = ∂state^k_{t,i(j)} / ∂θ_j = ∂(Σ_i state^k_{t,i}) / ∂θ_j    (θ_j feeds one unit)
    g_θ(t)        = Σ_n Σ_i δ_t[n, i] · e^{local}_t[n, j]·[i = i(j)],   δ_t = ∂L^l_t / ∂local^l_t

per row ``n`` (input and target rows alike). ``I`` is a per-row vector–Jacobian product and ``D``
a per-row forward Jacobian, both by ``torch.func`` on the cell's own ``drive``/``recur`` (vmap over
rows); the layer's input and the other layers stay constants, so credit still never crosses a
layer, and memory is O((B + R)·p_l) per layer, flat in T. With a diagonal recurrence the traces are
exact (tested); otherwise they drop the off-diagonal paths, as SnAp-1 does.

Spiking cells: the spike is never differentiated. ``spike_mode="voltage"`` puts the loss on
``local = v``; ``"surrogate"`` on ``σ((v − θ)/width)``, a smooth compartment computed beside the
spike from ``v``, not through it. The upper layers see the (detached) spikes. Discrete cells: the
loss acts on the pre-activation (the cell's ``local``).

Execution. With class rows (also sample rows with sequence labels) and the CE local loss, on the
CPU, a step's gradients are written out (``sigprop_closed_form.py``: the same derivative kernels
autograd's nodes call, on the same operands, so the same bits — tests/test_sigprop_golden.py)
instead of recording a graph and running the autograd engine over it, and go straight into the
merged fused AdamW update: 1.9–3× less time per step at the bench's sizes, below BPTT's per step
up to hidden 64 (benchmarks/sigprop_speed.md). Other configurations, and batches under the memory meter or the
FLOP counter, run the autograd loop below.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .method_options import SIGPROP_CHOICES, SigPropOptions  # noqa: F401 - declared torch-free there
from .learner import Learner, tensor_bytes
from .losses import step_targets
from .models.cells import ElmanCell, GRUCell, LIFCell, LSTMCell
from . import sigprop_losses as SL
from .merged_adam import STATE_MISSING, MergedAdamStep, step_each
from . import sigprop_closed_form as CF


Options = SigPropOptions

_CHOICES = SIGPROP_CHOICES  # one declaration, beside the options

#: differentiable state components carried by the temporal traces (never a spike or a sign).
_TRACED_FIELDS = {ElmanCell: ("h",), GRUCell: ("h",), LSTMCell: ("h", "c"), LIFCell: ("v",)}
#: how a traced component mixes units: (state field, recurrent matrix [G·H, H], what is added to
#: U·state — the drive, or the GRU's recurrent bias). lif's recurrent matrix acts on the spikes,
#: which are not traced, so its traced v only decays elementwise.
_MIXING = {ElmanCell: ("h", "recurrent_weight", "drive"),
           GRUCell: ("h", "recurrent_weight", "recurrent_bias"),
           LSTMCell: ("h", "recurrent_weight", "drive")}


class StepLoss(NamedTuple):
    """What one step's local loss needs besides the rows, prepared outside the layer loop."""
    rows: str
    """'class' (R = C class rows; also sample rows with sequence labels) or 'sample'."""
    labels: torch.Tensor
    """[B] the input rows' labels at this step (−1: not scored)."""
    masks: tuple | None
    """Batch-similarity masks (``similarity_masks``) for sample rows, else None."""
    scale: float | torch.Tensor
    """The step weight over the number of scored rows at this step (a_t)."""
    shift: torch.Tensor | None
    """[C] log n_c when sample rows are computed as class rows, else None."""
    stacked: torch.Tensor
    """``labels`` repeated once per layer (the class CE of all layers in one call), or ``labels``."""


def _detach(state):
    return type(state)(*(t.detach() for t in state))


class SigProp(Learner):
    """Temporal signal propagation (see the module docstring for the equations)."""

    name = "sigprop"
    Options = SigPropOptions
    # With an update at every step (40 per MNIST-1D sequence) a constant lr oscillates late in
    # training and the local losses over-fit: the decay and the weight decay fix both
    # (benchmarks/sigprop.md, "The defaults now").
    recommended = {"lr_schedule": "cosine", "weight_decay": 0.05}

    def __init__(self, model, cfg=None, options=None):
        super().__init__(model, cfg, options)
        o = self.options
        self._check_options()
        first = model.cells[0]
        ref = next(model.parameters())
        self.num_classes = model.num_classes
        init = torch.randn(self.num_classes, *first.drive_shape, device=ref.device,
                           dtype=ref.dtype) * o.projection_scale
        # P: row c is the drive that class c's one-hot produces (a bias-free Linear on one-hots).
        self.projection = nn.Parameter(init) if o.projection == "learned" else init
        self.readout = copy.deepcopy(model.readout)  # learner-owned; same kind (pooled for maps)
        self.readout.reset_parameters()
        self._groups = {f"layer{l}": [p for p in cell.parameters() if p.requires_grad]
                        for l, cell in enumerate(model.cells)}
        if o.projection == "learned":
            self._groups["layer0"].append(self.projection)
        self._groups["readout"] = list(self.readout.parameters())
        lr_of = {k: self.cfg.lr * (o.readout_lr_scale if k == "readout" else 1.0)
                 for k in self._groups}
        if o.single_optimizer:
            self._optimizers = {"all": self._make_optimizer(
                [{"params": g, "lr": lr_of[k]} for k, g in self._groups.items()])}
        else:
            self._optimizers = {k: self._make_optimizer([{"params": g, "lr": lr_of[k]}])
                                for k, g in self._groups.items()}
        self._traces = _Traces(self) if o.traces else None
        self._merged, self._merged_why = None, "not planned yet"
        # the exact one-step gradients without autograd (sigprop_closed_form.py), or why not
        self._closed_why = CF.unsupported_reason(self)
        self._closed = CF.ClosedFormStep(self) if self._closed_why is None else None
        self._merged_aligned = False  # the merged plan's parameters in the closed form's order
        #: number of optimizer-step events (all layers together) since construction
        self.update_count = 0

    # ------------------------------------------------------------------ configuration
    def _check_options(self):
        o, model = self.options, self.model
        for field, choices in _CHOICES.items():
            if getattr(o, field) not in choices:
                raise ConfigError(f"sigprop --{field.replace('_', '-')} must be one of "
                                  f"{', '.join(choices)}; got {getattr(o, field)!r}")
        if o.temperature <= 0:
            raise ConfigError(f"sigprop --temperature must be > 0, got {o.temperature}")
        if o.readout_lr_scale <= 0:
            raise ConfigError(f"sigprop --readout-lr-scale must be > 0, got {o.readout_lr_scale}")
        if o.update_k < 1:
            raise ConfigError(f"sigprop --update-k must be ≥ 1, got {o.update_k}")
        if o.surrogate_width <= 0:
            raise ConfigError(f"sigprop --surrogate-width must be > 0, got {o.surrogate_width}")
        if o.loss in ("l2", "cosine") and not o.detach_target:
            raise ConfigError(
                f"sigprop loss {o.loss!r} needs --detach-target: with a live target side both "
                "paths collapse to the same constant and the loss is zero for a useless network")
        if o.detach_target and o.projection == "learned":
            raise ConfigError(
                "sigprop --detach-target with --projection learned: P would receive no gradient "
                "(it is trained only through the target side); use --projection fixed")
        if o.spike_mode == "surrogate" and not any(isinstance(c, LIFCell) for c in model.cells):
            raise ConfigError("sigprop --spike-mode surrogate applies to spiking (lif) cells only")
        if o.traces:
            for cell in model.cells:
                if type(cell) not in _TRACED_FIELDS:
                    why = ("its state is sign(a), which is never differentiated, so traces equal "
                           "the one-step local gradient") if cell.__class__.__name__ == "DiscreteCell" \
                        else ("traces are implemented for dense rnn, gru, lstm and lif cells, where "
                              "each weight row feeds one unit (a conv kernel feeds many)")
                    raise ConfigError(f"sigprop --traces is not available for "
                                      f"{cell.__class__.__name__}: {why}")
            if o.per_layer_backward:
                raise ConfigError("sigprop --traces computes its own per-layer gradients; "
                                  "--per-layer-backward does not apply")

    def _make_optimizer(self, params):
        cfg = self.cfg
        kw = {"fused": True} if self.options.fused_optimizer else {"foreach": True}
        if cfg.optimizer == "adam":
            return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **kw)

    def _rows(self, y: torch.Tensor) -> str:
        rows = self.options.target_rows
        if rows == "class" and y.dim() == 2:
            raise ConfigError(
                "sigprop --target-rows class needs one label per sequence: with per-step labels "
                "a class row cannot follow a sample's label history; use --target-rows sample")
        return rows

    # ------------------------------------------------------------------ protocol
    def own_parameters(self):
        own = [self.projection] if isinstance(self.projection, nn.Parameter) else []
        return own + list(self.readout.parameters())

    def optimizers(self):
        return self._optimizers

    def state_dict(self):
        state = super().state_dict()
        state["projection"] = self.projection.detach().clone()  # also when fixed (random)
        state["update_count"] = self.update_count
        return state

    def load_state_dict(self, state):
        super().load_state_dict(state)
        with torch.no_grad():
            self.projection.copy_(state["projection"])
        self.update_count = state.get("update_count", 0)

    def train_batch(self, x, y):
        return self._run(x, y, apply=True)

    def gradient(self, x, y):
        """The summed local gradients (layers, P, readout) over the whole sequence, with the
        parameters held fixed; nothing applied. Learner parameters are prefixed ``learner.``."""
        named = dict(self.named_model_parameters())
        if isinstance(self.projection, nn.Parameter):
            named["learner.projection"] = self.projection
        named.update({f"learner.readout.{n}": p for n, p in self.readout.named_parameters()})
        saved = {n: p.grad for n, p in named.items()}
        for p in named.values():
            p.grad = None
        try:
            self._run(x, y, apply=False)
            return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
                    for n, p in named.items()}
        finally:
            for n, p in named.items():
                p.grad = saved[n]

    @torch.no_grad()
    def predict(self, x):
        """Logits ``[B, T, C]`` at every step: the readout, or similarity to the class rows
        (computed with the same weights in the same batched call)."""
        B, T = x.shape[:2]
        nearest = self.options.prediction == "nearest"
        cells = self.model.cells
        frames = self._frames(x)
        state = self.model.initial_state(B + (self.num_classes if nearest else 0),
                                         device=x.device, dtype=x.dtype)
        state = list(state)
        logits = []
        for t in range(T):
            drive = cells[0].drive(frames[t])
            if nearest:
                drive = torch.cat([drive, self.projection.to(drive.dtype)])
            for l, cell in enumerate(cells):
                out, state[l], local = cell.recur(drive, state[l])
                if l + 1 < len(cells):
                    drive = cells[l + 1].drive(out)
            if nearest:
                z = SL.normalise_rows(self._loss_rows(local, cells[-1]), self.options.normalize)
                logits.append(SL.class_scores(z[..., :B, :], z[..., B:, :], self.options.loss,
                                              1.0 / self.options.temperature))
            else:
                logits.append(self.readout(out))
        return torch.stack(logits, 1)

    # ------------------------------------------------------------------ the forward-only loop
    def _frames(self, x):
        """Per-step first-layer inputs, time-major and contiguous (hoisted out of the loop)."""
        if self.model.flatten_input:
            x = x.flatten(2)
        return x.transpose(0, 1).contiguous()

    def _loss_rows(self, local, cell):
        """What the local loss compares, as rows ``[..., N, K]`` (``rows_last``): ``local``, or for
        lif in surrogate mode the compartment ``σ((v − θ)/width)`` computed from v beside the spike."""
        if self.options.spike_mode == "surrogate" and isinstance(cell, LIFCell):
            local = torch.sigmoid((local - cell.threshold) / self.options.surrogate_width)
        return SL.rows_last(local)

    def step(self, frame, target_drive, state, score: bool, on_rows=None):
        """One time step of both row kinds through every layer (module docstring, "signal" and
        "layer l"): ``d¹ = [drive_1(x_t); target drive]``, then per layer one batched
        ``recur_l(d^l, sg(state^l))`` and ``d^{l+1} = drive_{l+1}(sg(out^l))``.

        Returns ``(sg(out^L), new states (detached), loss rows per layer)``; the rows (what the
        local loss compares, ``_loss_rows``) only if ``score``. ``on_rows(z)``, if given, takes
        each layer's rows as soon as they exist instead (per-layer backward). The CUDA-graph
        fast path (fast.py) runs its chunks through this same function.
        """
        cells = self.model.cells
        if target_drive.dtype != frame.dtype:
            target_drive = target_drive.to(frame.dtype)
        drive = torch.cat([cells[0].drive(frame), target_drive])
        new_states, rows = [], []
        for l, cell in enumerate(cells):
            out, new_state, local = cell.recur(drive, state[l])
            new_states.append(_detach(new_state))  # the next step sees a constant
            if score:
                z = self._loss_rows(local, cell)
                if on_rows is None:
                    rows.append(z)
                else:
                    on_rows(z)
            out = out.detach()  # the layer above sees a constant
            if l + 1 < len(cells):
                drive = cells[l + 1].drive(out)
        return out, new_states, rows

    def layers_loss(self, rows, B, ctx: StepLoss):
        """The summed local losses of one step's per-layer ``rows``: one batched loss call where
        the layers' shapes agree — a plain sum over the stacked dim, so each layer still gets
        only its own gradient — else one call per layer."""
        if len(rows) > 1 and all(z.shape == rows[0].shape for z in rows):
            return self._scored(torch.stack(rows), B, ctx, len(rows))
        total = self._scored(rows[0], B, ctx, 1)  # (not sum(): its 0 + is one more graph node)
        for z in rows[1:]:
            total = total + self._scored(z, B, ctx, 1)
        return total

    def _local_loss(self, z, B, ctx: StepLoss):
        """Σ over scored input rows (and leading dims: stacked layers, positions) of the local
        loss on rows ``z [..., B + R, K]``, divided by the step's scored count and positions."""
        o = self.options
        rows, labels, masks, scale, shift, stacked = ctx
        z = SL.normalise_rows(z, o.normalize)
        h, s = z.split([B, z.shape[-2] - B], dim=-2)  # one op (its backward: one cat)
        if o.detach_target:
            s = s.detach()
        if o.loss == "ce":
            if rows == "class":
                flat = stacked if z.dim() == 3 and stacked.shape[0] == z.shape[0] * B else labels
                loss = SL.class_embedding_ce(h, s, flat, 1.0 / o.temperature, shift)
            else:
                loss = SL.batch_similarity_ce(h, s, masks, 1.0 / o.temperature)
        else:
            matched = s.index_select(-2, labels.clamp_min(0)) if rows == "class" else s
            loss = (SL.matched_l2 if o.loss == "l2" else SL.matched_cosine)(h, matched, labels)
        return loss * scale

    def _scored(self, z, B, ctx, layers: int):
        """``_local_loss`` of rows ``z`` that stack ``layers`` layers, averaged over positions."""
        positions = z.numel() // (z.shape[-1] * z.shape[-2] * layers)
        return self._local_loss(z, B, ctx) * (1.0 / positions) if positions > 1 else \
            self._local_loss(z, B, ctx)

    def _due(self, t: int, steps: int) -> bool:
        o = self.options
        if o.schedule == "every_step":
            return True
        if o.schedule == "every_k":
            return (t + 1) % o.update_k == 0 or t == steps - 1
        return t == steps - 1

    def readout_step_loss(self, top_rows, targets, count):
        """The readout's cross-entropy at one scored step, summed over the input rows and divided
        by that step's scored-row count (``L^o_t`` in the module docstring)."""
        with torch.enable_grad():
            logits = self.readout(top_rows)
            return F.cross_entropy(logits, targets, ignore_index=-1,
                                   reduction="sum") * (1.0 / count)

    def _update(self, grads=None):
        """One optimizer-step event. ``grads`` (the closed form's, aligned with its ``params``) go
        straight into the merged update where there is one and nothing clips them; otherwise
        they become ``.grad`` and the step is the usual one."""
        plan = self._merged
        if grads is not None:
            if plan is not None and self._merged_aligned and self.cfg.grad_clip <= 0:
                plan.step(grads)  # in place on the optimizers' state (inference mode allows it)
                self.update_count += 1
                return
            # the closed form runs in inference mode: optimizer state created now, clipping and
            # step hooks (data parallel) must see ordinary tensors
            with torch.inference_mode(False):
                for p, g in zip(self._closed.params, grads):
                    if g is not None:
                        p.grad = g.clone() if g.is_inference() else g
                return self._update()
        for name, group in self._groups.items():
            self.clip(group)
        if plan is not None:  # one fused call on the optimizers' own state (merged_adam.py)
            plan.step([p.grad for p in plan.params])
            for p in plan.params:
                p.grad = None
        else:
            step_each(self._optimizers.values())
            if self._merged_why == STATE_MISSING:  # torch has just created it
                self._plan_update()
        self.update_count += 1

    def _plan_update(self):
        """Once per batch (and after the first steps create the optimizer state): the merged
        fused update of every optimizer, or None where they must be stepped as usual."""
        self._merged, self._merged_why = MergedAdamStep.build(self._optimizers.values())
        if self._closed is not None:
            self._closed.refresh()
        self._merged_aligned = (self._merged is not None and self._closed is not None
                                and len(self._merged.params) == len(self._closed.params)
                                and all(a is b for a, b in zip(self._merged.params,
                                                               self._closed.params)))

    def _run(self, x, y, apply: bool):
        o = self.options
        model = self.model
        B, T = x.shape[:2]
        L = len(model.cells)
        y = y.to(x.device)
        rows = self._rows(y)
        # Sample rows that follow *sequence* labels are exact copies of the class rows (same drive
        # P_c at every step, same zero start, same weights), so they are computed once per class:
        # the batch-similarity CE over B copies equals the class-embedding CE with logits shifted
        # by log n_c (n_c = rows of class c in the batch), gradients included.
        compact = rows == "sample" and y.dim() == 1
        kind = "class" if rows == "class" or compact else "sample"
        R = self.num_classes if kind == "class" else B
        shift = None
        if compact:
            counts = torch.bincount(y.long(), minlength=self.num_classes).to(x.dtype)
            shift = counts.log()  # -inf for an absent class: never a candidate
        # Everything label-related is prepared once per batch, not per step.
        local_targets = step_targets(y, T, "every" if o.local_steps == "every" else self.cfg.loss_at)
        readout_targets = step_targets(y, T, self.cfg.loss_at)
        row_labels = step_targets(y, T, "every")  # what the sample rows carry at each step
        local_counts = (local_targets >= 0).sum(0).tolist()
        readout_counts = (readout_targets >= 0).sum(0).tolist()
        local_t = local_targets.T.contiguous()
        # labels for all layers' rows stacked in one loss call (class CE flattens the layers)
        stacked_t = local_t.repeat(1, L) if L > 1 else local_t
        readout_t = readout_targets.T.contiguous()
        row_t = row_labels.T.contiguous()
        row_mask = (row_t >= 0).unsqueeze(-1).to(x.dtype)
        row_index = row_t.clamp_min(0)
        class_labels = torch.arange(self.num_classes, device=x.device)
        frames = self._frames(x)
        state = list(model.initial_state(B + R, device=x.device, dtype=x.dtype))
        self.state_bytes = self._state_bytes(state, B, R)

        traces = self._traces
        if traces is not None:
            traces.reset(B + R, x.device, x.dtype)
        readout_sum = torch.zeros((), device=x.device, dtype=x.dtype)
        local_sum = torch.zeros((), device=x.device, dtype=x.dtype)
        scored_steps, pending, updates = 0, False, 0
        if apply:
            self._plan_update()

        def backward_now(z):  # --per-layer-backward: frees this layer's graph at once
            nonlocal local_sum, pending
            loss_l = self._scored(z, B, ctx, 1)  # this step's ctx
            loss_l.backward()
            local_sum = local_sum + loss_l.detach()
            pending = True

        # per-step views made once (one unbind each, not a select per step)
        frame_at, local_at, stacked_at, readout_at = (
            v.unbind(0) for v in (frames, local_t, stacked_t, readout_t))
        if kind == "sample":
            row_at, mask_at, index_at = (v.unbind(0) for v in (row_t, row_mask, row_index))
            drive_view = (-1, *[1] * (self.projection.dim() - 1))
        linear = o.step_weight == "linear"
        if kind == "class" and self._closed_form_now(x):
            return self._run_closed_form(
                frame_at, local_at, stacked_at, readout_at, local_counts, readout_counts, shift,
                state, B, T, L, apply, linear)
        per_layer = backward_now if o.per_layer_backward else None
        one = torch.ones((), device=x.device, dtype=x.dtype)  # d total / d total
        for t in range(T):
            score_local = local_counts[t] > 0
            score_readout = readout_counts[t] > 0
            if kind == "class":
                target_drive, target_labels = self.projection, class_labels
            else:
                # a step without a label gives its row a zero drive
                target_drive = self.projection[index_at[t]] * mask_at[t].view(drive_view)
                target_labels = row_at[t]
            masks = None
            if score_local and kind == "sample":
                masks = SL.similarity_masks(local_at[t], target_labels)
            weight = 2.0 * (t + 1) / (T + 1) if linear else 1.0
            ctx = StepLoss(kind, local_at[t], masks, weight / max(local_counts[t], 1), shift,
                           stacked_at[t])
            total = None
            if traces is not None:
                traces.step(frame_at[t], target_drive, target_labels, state, B, ctx, score_local)
                out, pending = traces.top_out, pending or score_local
            else:
                with torch.set_grad_enabled(score_local):  # no local loss: no graph needed
                    out, state, zs = self.step(frame_at[t], target_drive, state, score_local,
                                               per_layer)
                    if zs:
                        total = self.layers_loss(zs, B, ctx)
                        local_sum = local_sum + total.detach()
            if score_readout:
                loss_o = self.readout_step_loss(out[:B], readout_at[t], readout_counts[t])
                readout_sum = readout_sum + loss_o.detach()
                scored_steps += 1
                total = loss_o if total is None else total + loss_o
            if total is not None:  # one backward for every layer's loss and the readout's
                _backward(total, one)
                pending = True
            if apply and pending and self._due(t, T):
                self._update()
                updates += 1
                pending = False
        if traces is not None:
            local_sum = traces.local_sum
        return {"loss": readout_sum / max(scored_steps, 1),
                "local_loss": local_sum / max(sum(c > 0 for c in local_counts), 1) / L,
                "updates": updates}

    def _closed_form_now(self, x) -> bool:
        """The closed-form step applies to this configuration and batch, and nothing is watching
        autograd: the memory meter's saved-tensor hooks and the FLOP counter's dispatch mode
        measure the autograd graph, so their batches run through it (the same numbers either
        way). CPU, float32/float64 only: that is where its bits were checked against autograd's
        (a half-precision op rounds a Python scalar differently from a 0-dim tensor)."""
        if self._closed is None or self._closed.replaced():
            return False
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return False
        if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
            return False
        from torch.utils._python_dispatch import _get_current_dispatch_mode
        return _get_current_dispatch_mode() is None

    def _run_closed_form(self, frame_at, local_at, stacked_at, readout_at, local_counts,
                         readout_counts, shift, state, B, T, L, apply, linear):
        """``_run``'s loop for class rows with the gradients written out (sigprop_closed_form.py):
        the same forward, losses, gradients, accumulation and updates, bit for bit."""
        closed = self._closed
        closed.refresh()
        ref = frame_at[0]
        consts = closed.constants(ref.dtype, ref.device)
        # a_t and 1/n_t as 0-dim tensors of the loss dtype, made once per batch: the losses'
        # factors and what autograd's MulBackward hands the CE (the float rounded to the dtype)
        scales = torch.tensor([(2.0 * (t + 1) / (T + 1) if linear else 1.0) / max(c, 1)
                               for t, c in enumerate(local_counts)],
                              dtype=ref.dtype, device=ref.device).unbind(0)
        readout_scales = torch.tensor([1.0 / c if c else 0.0 for c in readout_counts],
                                      dtype=ref.dtype, device=ref.device).unbind(0)
        target_drive = self.projection.detach()
        if target_drive.dtype != ref.dtype:
            target_drive = target_drive.to(ref.dtype)
        params = closed.params
        # gradients already held (autograd would add to them) are taken over
        pending_grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        held = any(g is not None for g in pending_grads)
        due = [apply and self._due(t, T) for t in range(T)]
        readout_sum = torch.zeros((), device=ref.device, dtype=ref.dtype)
        local_sum = torch.zeros((), device=ref.device, dtype=ref.dtype)
        scored_steps, updates = 0, 0
        pending = False  # as in _run: an update needs a backward since the last one
        step = closed.step
        # inference mode: no version counters or view tracking (≈ 15 % less per op than
        # no_grad); what leaves this loop is made an ordinary tensor (_update, the end below)
        with torch.inference_mode():
            for t in range(T):
                score_local = local_counts[t] > 0
                score_readout = readout_counts[t] > 0
                out, state, loss_l, loss_o, grads = step(
                    frame_at[t], target_drive, state, B, local_at[t], stacked_at[t], shift,
                    scales[t], score_local, readout_at[t],
                    readout_scales[t] if score_readout else None, consts)
                if score_local or score_readout:
                    if score_local:
                        local_sum = local_sum + loss_l
                    if score_readout:
                        readout_sum = readout_sum + loss_o
                        scored_steps += 1
                    if held:  # what AccumulateGrad does: add to the held gradient
                        pending_grads = [a if g is None else g if a is None else a + g
                                         for a, g in zip(pending_grads, grads)]
                    else:
                        pending_grads, held = grads, True
                    pending = True
                if pending and due[t]:
                    self._update(pending_grads)
                    updates += 1
                    pending, held = False, False
        if held:  # not applied (gradient(), or no update due after the last labelled step)
            for p, g in zip(params, pending_grads):
                p.grad = None if g is None else g.clone()
        return {"loss": readout_sum / max(scored_steps, 1),
                "local_loss": local_sum / max(sum(c > 0 for c in local_counts), 1) / L,
                "updates": updates}

    def _state_bytes(self, state, B, R):
        """Learner-owned state: the target rows' recurrent states and drive (+ traces)."""
        rows_bytes = sum(tensor_bytes(s) for s in state) * R // (B + R)
        drive_bytes = R * math.prod(self.model.cells[0].drive_shape) * self.projection.element_size()
        trace_bytes = self._traces.bytes_for(B + R) if self._traces is not None else 0
        return rows_bytes + drive_bytes + trace_bytes


class _Traces:
    """Per-layer SnAp-1 eligibility traces (module docstring, "Temporal traces").

    The diagonal ``D^{km}_i = ∂state^k_{t,i}/∂state^m_{t−1,i}`` costs a few forward-mode products
    per row, not H: a forward product with tangent ``1`` on component m gives the row sums
    ``Σ_j ∂state^k_i/∂state^m_j``; where m mixes units through a recurrent matrix ``U [G·H, H]``
    (``_MIXING``) the off-diagonal part is known in closed form,
    ``Σ_g a^k_{g,i} · (Σ_j U[gH+i, j] − U[gH+i, i])`` with ``a^k_{g,i} = ∂state^k_i/∂(U·state)_{gH+i}``
    (one forward product per gate block g, with tangent 1 on that block of whatever adds to
    ``U·state``: the drive, or the GRU's recurrent bias), and is subtracted.
    """

    def __init__(self, learner: SigProp):
        self.learner = learner
        self.cells = learner.model.cells
        self.fields = [_TRACED_FIELDS[type(c)] for c in self.cells]
        # the parameters each layer traces, and the axis of each that indexes its drive rows
        self.params = []
        for l, cell in enumerate(self.cells):
            named = {n: p for n, p in cell.named_parameters() if p.requires_grad}
            axes = {n: 0 for n in named}
            if l == 0 and isinstance(learner.projection, nn.Parameter):
                named["__projection"], axes["__projection"] = learner.projection, 1
            self.params.append((named, axes))
        self.e = None
        self.local_sum = None
        self.top_out = None

    def bytes_for(self, rows: int) -> int:
        return sum(rows * len(f) * sum(p.numel() * p.element_size() for p in named.values())
                   for f, (named, _) in zip(self.fields, self.params))

    def reset(self, rows, device, dtype):
        self.e = [{k: {n: torch.zeros(rows, *p.shape, device=device, dtype=dtype)
                       for n, p in named.items()} for k in fields}
                  for fields, (named, _) in zip(self.fields, self.params)]
        self.local_sum = torch.zeros((), device=device, dtype=dtype)

    @staticmethod
    def _unit_view(d, shape, axis, hidden):
        """``d [N, H]`` (per row, per unit) broadcast over a parameter ``[N, *shape]`` whose
        ``axis`` indexes drive rows (gate-major: drive row r feeds unit r mod H)."""
        d = d.repeat(1, shape[axis] // hidden)
        view = [d.shape[0]] + [1] * len(shape)
        view[1 + axis] = shape[axis]
        return d.reshape(view)

    def _row_fn(self, l):
        """One row's step of layer l as a pure function of (params, input, target one-hot,
        is-target flag, traced state, other state, drive probe) → traced state components."""
        cell, fields = self.cells[l], self.fields[l]
        state_type = cell.state_type

        def fn(params, inp, target_onehot, is_target, traced, untraced, probe):
            cell_params = {n: p for n, p in params.items() if n != "__projection"}
            drive = _functional(cell, cell_params, "drive", inp[None])
            if "__projection" in params:
                target_drive = (target_onehot @ params["__projection"].flatten(1))[None]
                drive = torch.where(is_target, target_drive, drive)
            drive = drive + probe
            values = dict(untraced)
            values.update(dict(zip(fields, traced)))
            state = state_type(*(values[f][None] for f in state_type._fields))
            _, new_state, _ = _functional(cell, cell_params, "recur", drive, state)
            return tuple(getattr(new_state, f)[0] for f in fields)

        return fn

    def row_jacobians(self, l, inp_rows, onehot, is_target, traced, untraced):
        """Per row: the immediate terms ``I^k`` ({param: [N, *shape]} for each traced component
        k) and the diagonals ``D^{km}`` ([N, H]) of layer l's step."""
        cell, fields = self.cells[l], self.fields[l]
        named, _ = self.params[l]
        params = {n: p.detach() for n, p in named.items()}
        fn = self._row_fn(l)
        K, H = len(fields), cell.hidden_size
        drive_size = cell.drive_size
        ref = traced[0]
        mixing = _MIXING.get(type(cell))
        if mixing is not None:
            field, weight, source = mixing
            U = params[weight]
            G = U.shape[0] // H
            blocks = U.reshape(G, H, H)
            off = blocks.sum(-1) - blocks.diagonal(dim1=1, dim2=2)  # [G, H]
            gate_tangents = torch.eye(G, dtype=ref.dtype, device=ref.device).repeat_interleave(H, 1)

        def per_row(inp_r, oh_r, it_r, traced_r, untraced_r):
            probe = traced_r[0].new_zeros(drive_size)
            outs, vjp_fn = torch.func.vjp(
                lambda p: fn(p, inp_r, oh_r, it_r, traced_r, untraced_r, probe), params)
            immediate = [vjp_fn(tuple(torch.ones_like(o) if i == k else torch.zeros_like(o)
                                      for i, o in enumerate(outs)))[0] for k in range(K)]
            diag = [[None] * K for _ in range(K)]
            for m in range(K):
                def f_m(tr_m, m=m):
                    tr = list(traced_r)
                    tr[m] = tr_m
                    return fn(params, inp_r, oh_r, it_r, tuple(tr), untraced_r, probe)

                _, sums = torch.func.jvp(f_m, (traced_r[m],), (torch.ones_like(traced_r[m]),))
                for k in range(K):
                    diag[k][m] = sums[k]
            if mixing is not None:
                m = fields.index(field)
                for g in range(G):
                    if source == "drive":
                        _, a = torch.func.jvp(
                            lambda pr: fn(params, inp_r, oh_r, it_r, traced_r, untraced_r, pr),
                            (probe,), (gate_tangents[g],))
                    else:
                        _, a = torch.func.jvp(
                            lambda b: fn({**params, source: b}, inp_r, oh_r, it_r, traced_r,
                                         untraced_r, probe), (params[source],), (gate_tangents[g],))
                    for k in range(K):
                        diag[k][m] = diag[k][m] - a[k] * off[g]
            return immediate, diag

        in_dims = (0, 0 if onehot is not None else None, 0 if is_target is not None else None, 0, 0)
        with torch.no_grad(), _saved_tensor_hooks_suspended():
            return torch.func.vmap(per_row, in_dims=in_dims)(inp_rows, onehot, is_target, traced,
                                                             untraced)

    def step(self, frame, target_drive, target_labels, state, B, ctx, score):
        """Advance every layer one step, update its traces, and put the trace gradients of the
        local losses into ``.grad`` (the readout's loss is handled by the caller)."""
        learner, cells = self.learner, self.cells
        rows = ctx.rows
        N = B + target_drive.shape[0]
        C = learner.num_classes
        inp = out = None
        for l, cell in enumerate(cells):
            named, axes = self.params[l]
            fields = self.fields[l]
            st = state[l]
            with torch.no_grad():
                if l == 0:
                    drive = torch.cat([cell.drive(frame), target_drive.detach().to(frame.dtype)])
                    inp_rows = torch.cat([frame, frame.new_zeros(N - B, *frame.shape[1:])])
                    onehot = frame.new_zeros(N, C)
                    if rows == "class":
                        onehot[B:] = torch.eye(C, dtype=frame.dtype, device=frame.device)
                    else:
                        onehot[B:] = (F.one_hot(target_labels.clamp_min(0), C).to(frame.dtype)
                                      * (target_labels >= 0).unsqueeze(1).to(frame.dtype))
                    is_target = torch.zeros(N, 1, dtype=torch.bool, device=frame.device)
                    is_target[B:] = True
                else:
                    drive = cell.drive(inp)
                    inp_rows, onehot, is_target = inp, None, None
                out, new_state, local = cell.recur(drive, st)
            traced = tuple(getattr(st, f) for f in fields)
            untraced = {f: getattr(st, f) for f in st._fields if f not in fields}
            immediate, diag = self.row_jacobians(l, inp_rows, onehot, is_target, traced, untraced)
            with torch.no_grad():
                hidden = cell.hidden_size
                e_prev, new_e = self.e[l], {}
                for k, fk in enumerate(fields):
                    new_e[fk] = {}
                    for n, p in named.items():
                        acc = immediate[k][n]
                        for m, fm in enumerate(fields):
                            acc = acc + self._unit_view(diag[k][m], p.shape, axes[n], hidden) \
                                * e_prev[fm][n]
                        new_e[fk][n] = acc
                self.e[l] = new_e
            state[l] = _detach(new_state)
            if score:
                field = next(f for f in fields if getattr(new_state, f) is local)
                leaf = local.detach().requires_grad_()
                with torch.enable_grad():
                    loss = learner._scored(learner._loss_rows(leaf, cell), B, ctx, 1)
                    (delta,) = torch.autograd.grad(loss, leaf)
                self.local_sum = self.local_sum + loss.detach()
                with torch.no_grad():
                    for n, p in named.items():
                        g = (self._unit_view(delta, p.shape, axes[n], hidden)
                             * self.e[l][field][n]).sum(0)
                        p.grad = g if p.grad is None else p.grad + g
            inp = out.detach()
        self.top_out = out.detach()


def _backward(total: torch.Tensor, one: torch.Tensor) -> None:
    """``total.backward(one)``. For a plain tensor outside functorch transforms straight into the
    autograd engine: ``Tensor.backward``'s Python (argument normalisation, the tensor-subclass
    dispatch this case does not need) cost more than a small step's whole backward pass
    (≈ 25 µs of ≈ 40 µs on a one-node graph, measured on the 2-core CPU)."""
    if type(total) is torch.Tensor and _run_backward is not None \
            and not torch._C._are_functorch_transforms_active():
        _run_backward((total,), (one,), False, False, (), True, True)
    else:
        total.backward(one)


#: the engine entry ``torch.autograd.backward`` ends in: (outputs, grads, retain_graph,
#: create_graph, inputs, allow_unreachable, accumulate_grad); None if this torch lacks it
_run_backward = getattr(torch.autograd.graph, "_engine_run_backward", None)


@contextlib.contextmanager
def _saved_tensor_hooks_suspended():
    """Lift any saved-tensor hooks (e.g. the harness's memory meter) while torch.func builds the
    per-row vector–Jacobian products: torch.func refuses to run under such hooks. What it saves
    lives only inside one layer-step; the traces it produces are counted in ``state_bytes``."""
    stack = []
    while (top := torch._C._autograd._top_saved_tensors_default_hooks(False)) is not None:
        stack.append(top)
        torch._C._autograd._pop_saved_tensors_default_hooks()
    try:
        yield
    finally:
        for pack, unpack in reversed(stack):
            torch._C._autograd._push_saved_tensors_default_hooks(pack, unpack)


def _functional(module, params, method, *args):
    """Call ``module.<method>(*args)`` with ``params`` substituted (torch.func-compatible)."""
    from torch.nn.utils.stateless import _reparametrize_module
    with _reparametrize_module(module, params, strict=False):
        return getattr(module, method)(*args)


__all__ = ["SigProp", "SigPropOptions", "Options"]
