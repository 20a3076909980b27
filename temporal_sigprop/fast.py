"""Fast execution of temporal sigprop: K time steps per chunk, one CUDA graph per chunk.

Why. Sigprop does a little work at every step of every layer (the step written out in sigprop.py's module
docstring): a batched cell step for the input and target rows, the local losses,
one backward one step deep, an optimizer step. On a GPU each of these is a handful of tiny kernels,
so ``SigProp._run`` is bound by kernel launches and Python (reference-figures.md: ≈4 ms per step
for a 2-layer GRU-256 at batch 128, where the arithmetic takes under a microsecond).

What. The same computation, cut into chunks of ``K`` consecutive steps:

    run_chunk(frames[t0 : t0+k], labels, scales[t0 : t0+k], state_{t0}, sums)  ->  state_{t0+k}, sums

    for each step t of the chunk (k ≤ K, static):
        d^1_t = [W_in x_t + b ; P]                               one batched call for both row kinds
        out^l, state^l_t, local^l = recur_l(d^l_t, sg(state^l_{t−1}));  d^{l+1}_t = drive(sg(out^l))
        L_t   = Σ_l ℓ_CE(local^l[:B], local^l[B:], y) · a_t  (+ CE(V sg(out^L[:B]) + v, y) · r_t)
        g     = ∂L_t/∂θ                                          one backward, one step deep
        θ    ← AdamW(θ, g)                                       every step (schedule every_step)
    sums += (Σ_t local, Σ_t readout);  flag |= ¬finite(sums)       NaN guard: a flag on the device

``a_t = w_t / n`` and ``r_t = 1/n`` (``n`` labelled rows, ``w_t`` the step weight) are per-step
*tensors* prepared once per batch, so the chunk contains no data-dependent Python control flow and
no host synchronisation: which steps score the readout is a static property of the chunk (its
length and whether it holds the sequence's last step), never of the data. That makes the chunk
capturable:

- **eager chunk function** (``run_chunk``): runs anywhere; each of its steps is the learner's
  own ``SigProp.step`` and ``SigProp.layers_loss`` (one implementation of the algorithm), and the
  CPU tests check that it gives exactly the parameters of ``SigProp.train_batch``.
- **CUDA graph** (``graph=True``, default on CUDA): static input buffers for K frames and the
  labels, static state buffers; each distinct chunk signature ``(B, k, readout steps)`` is run
  once eagerly on a side stream (warm-up: real training, not a dry run, so nothing is lost), then
  captured with ``torch.cuda.graph`` and replayed. Inputs stream into the static buffer chunk by
  chunk (``x`` may stay on the host); the NaN flag is read once per chunk (``nan_check``).

Optimizers. The runner owns **one** optimizer over all of the learner's parameters (AdamW's
update is per parameter, so one fused call over every group's tensors gives the same numbers as
one call per layer, with fewer launches), built with ``capturable=True`` in graph mode, whose
per-parameter state *is* the learner's state (the same dict objects, not a copy): the learner's
``state_dict`` (checkpoints), its ``gradient`` and an eager fallback batch always see the current
moments and step counts. The fused AdamW kernel does the same arithmetic with and without
``capturable``, so the graph path reproduces the learner's fused update (sigprop's default).

Supported: class target rows (or sample rows with sequence labels, which sigprop computes as
class rows plus a log-count shift), the CE local loss, update every step, local losses at every
labelled step, any cell, uniform or linear step weights, grad clipping. Anything else is refused
with a reason (``unsupported_reason``) and runs through ``SigProp.train_batch`` unchanged; per-step
labels ``y [B, T]`` fall back batch by batch.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .learner import Learner, scale_lr, tensor_bytes
from .sigprop import SigProp, StepLoss

NAN_CHECKS = ("chunk", "batch", "off")


#: SigProp options this module knows. An option added to SigPropOptions later is accepted only at
#: its default value (assumed to keep the old behaviour; tests/test_fast.py checks equality).
KNOWN_OPTIONS = frozenset({
    "target_rows", "loss", "temperature", "normalize", "detach_target", "projection",
    "projection_scale", "schedule", "update_k", "prediction", "spike_mode", "surrogate_width",
    "local_steps", "step_weight", "traces", "single_optimizer", "fused_optimizer",
    "per_layer_backward", "readout_lr_scale"})


# --------------------------------------------------------------------------- what is supported
def unsupported_reason(learner) -> str | None:
    """Why ``learner``'s configuration cannot run chunked (None if it can)."""
    if not isinstance(learner, SigProp):
        return f"the fast path implements sigprop only; {getattr(learner, 'name', learner)} runs eager"
    o, cfg = learner.options, learner.cfg
    for f in dataclasses.fields(o):
        if f.name not in KNOWN_OPTIONS and getattr(o, f.name) != f.default:
            return (f"--{f.name.replace('_', '-')} is newer than the fast path (only its default "
                    "is accepted)")
    if o.traces:
        return ("--traces computes per-row Jacobians with torch.func/vmap each step; the fast "
                "path implements the one-step local gradient only")
    if o.schedule != "every_step":
        return (f"--schedule {o.schedule}: the fast path implements update every step (the "
                "default); other schedules run eager")
    if o.loss != "ce":
        return f"--loss {o.loss}: the fast path implements the CE local loss (the default)"
    if o.local_steps == "placement" and cfg.loss_at != "every":
        return ("--local-steps placement with --loss-at last scores local losses at one step "
                "only; the fast path implements local losses at every labelled step")
    if o.target_rows not in ("auto", "class", "sample"):
        return f"--target-rows {o.target_rows} is unknown to the fast path"
    if o.step_weight not in ("uniform", "linear"):
        return f"--step-weight {o.step_weight} is unknown to the fast path"
    if cfg.grad_clip > 0 and not hasattr(learner, "_groups"):
        return "grad clipping needs the learner's per-layer parameter groups"
    kinds = {type(opt) for opt in learner.optimizers().values()}
    if len(kinds) != 1 or not kinds <= {torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD}:
        return f"optimizers {sorted(k.__name__ for k in kinds)} are unknown to the fast path"
    return None


def graph_reason(learner, device: torch.device | str) -> str | None:
    """Why the CUDA-graph path cannot run for ``learner`` on ``device`` (None if it can)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return "CUDA graphs need a CUDA device"
    for opt in learner.optimizers().values():
        for group in opt.param_groups:
            if isinstance(opt, torch.optim.Adam) and not group.get("fused"):
                # foreach AdamW keeps its step count on the host unless capturable, and the
                # capturable foreach arithmetic differs from the learner's: not the same update.
                return ("AdamW without --fused-optimizer keeps its step count on the host; the "
                        "CUDA graph path needs the fused optimizer (sigprop's default)")
    return None


def fast_path(learner, device, *, eager: bool = False, **options):
    """The harness's switch: ``(learner to train with, note)``. On CUDA, unless ``eager``, wrap a
    supported sigprop learner in ``FastSigProp``; otherwise return it unchanged with the reason."""
    device = torch.device(device)
    if not isinstance(learner, SigProp):
        return learner, "eager"
    if eager:
        return learner, "eager (--eager)"
    if device.type != "cuda":
        return learner, "eager (the fast path is for --device cuda)"
    reason = unsupported_reason(learner) or graph_reason(learner, device)
    if reason:
        return learner, f"eager: {reason}"
    fast = FastSigProp(learner, graph=True, **options)
    return fast, f"cuda-graph chunks of {fast.chunk} steps"


# --------------------------------------------------------------------------- the runner
@dataclass(frozen=True)
class _Batch:
    """What one batch's chunks need that depends on the labels, prepared once per batch."""
    steps: int
    local_scale: torch.Tensor  # [T] a_t = w_t / n   (float, the loss dtype)
    readout_scale: torch.Tensor  # [T] r_t = 1 / n
    readout_steps: frozenset  # steps whose readout loss is scored (static)
    shift: torch.Tensor | None  # [C] log n_c for sample rows with sequence labels, else None


class FastSigProp(Learner):
    """A SigProp learner run chunk by chunk (eager chunks, or CUDA graphs of them).

    ``FastSigProp(learner, chunk=64, graph=None, compile=False, nan_check="chunk")``:

    - ``chunk``: K, the steps per chunk (per CUDA graph); T need not be a multiple of K.
    - ``graph``: None = CUDA graphs when the model is on CUDA, else eager chunks; ``"simulate"``
      runs the graph path's buffers and signatures on any device with capture = keep the Python
      body (tests and dry runs).
    - ``compile``: wrap the per-step forward (cell steps + losses) in ``torch.compile`` (AOT
      autograd compiles its backward too); True for inductor's default mode, or a mode name.
    - ``nan_check``: read the device's non-finite flag after every chunk (``"chunk"``: stop at
      the first bad chunk and report a NaN loss), once per batch (``"batch"``) or never.
    - ``warmup``: eager runs of a chunk signature before it is captured.

    The learner protocol (``predict``, ``gradient``, ``state_dict``, optimizers) is the wrapped
    learner's; ``train_batch`` falls back to ``learner.train_batch`` (and says why in
    ``last_fallback``) for per-step labels, and in graph mode while saved-tensor hooks or a
    dispatch mode are active (the harness's memory and FLOP measurements on its first batches).
    """

    name = "sigprop"

    def __init__(self, learner: SigProp, chunk: int = 64, graph: bool | str | None = None,
                 compile: bool | str = False, nan_check: str = "chunk", warmup: int = 1):
        reason = unsupported_reason(learner)
        if reason:
            raise ValueError(f"fast sigprop cannot run this configuration: {reason}")
        if chunk < 1:
            raise ValueError(f"chunk must be ≥ 1, got {chunk}")
        if nan_check not in NAN_CHECKS:
            raise ValueError(f"nan_check must be one of {NAN_CHECKS}, got {nan_check!r}")
        super().__init__(learner.model, learner.cfg, learner.options)
        self.learner = learner
        self.chunk = chunk
        self.nan_check = nan_check
        self.warmup = max(int(warmup), 1)
        self.device = next(learner.model.parameters()).device
        if graph is None:
            graph = self.device.type == "cuda"
        self._backend = None
        if graph == "simulate":  # tests: the graph plumbing without a GPU
            self._backend = _SimulatedGraphs(self.device)
        elif graph:
            why = graph_reason(learner, self.device)
            if why:
                raise ValueError(f"fast sigprop cannot use CUDA graphs: {why}")
            self._backend = _CudaGraphs(self.device)
        self.graph = bool(graph)
        cells = learner.model.cells
        self._params = [p for opt in learner.optimizers().values()
                        for g in opt.param_groups for p in g["params"]]
        self._readout_params = set(learner.readout.parameters())
        self._optimizer = self._merged_optimizer(capturable=isinstance(self._backend, _CudaGraphs))
        self._state_fingerprint = None
        self._forward = self._step_forward
        if compile:  # True: inductor's default mode; a string: that mode (never "reduce-overhead":
            # its own CUDA graphs cannot nest in ours)
            mode = None if compile is True else compile
            self._forward = torch.compile(self._step_forward, dynamic=False, mode=mode)
        self.compiled = compile
        # graph mode: static buffers per (batch rows, dtype, frame shape); graphs per signature
        self._buffers: dict = {}
        self._graphs: dict = {}
        self._seen: dict = {}
        self._batch_cache: dict = {}
        self.last_fallback: str | None = None
        self._L = len(cells)

    # ------------------------------------------------------------------ optimizers
    def _merged_optimizer(self, capturable: bool):
        """One optimizer over every parameter of the learner's optimizers, groups with equal
        settings merged, sharing the learner's per-parameter state dicts."""
        opts = list(self.learner.optimizers().values())
        cls = type(opts[0])
        merged: dict = {}
        for opt in opts:
            for group in opt.param_groups:
                hyper = {k: v for k, v in group.items() if k != "params"}
                if capturable and "capturable" in hyper:
                    hyper["capturable"] = True
                hyper.setdefault("initial_lr", float(hyper["lr"]))
                key = repr(sorted(hyper.items(), key=lambda kv: kv[0]))
                merged.setdefault(key, (hyper, []))[1].extend(group["params"])
        groups = [{**hyper, "params": params} for hyper, params in merged.values()]
        if capturable:  # a captured float lr would be frozen into the graph; a tensor is read
            for group in groups:
                group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
        first = groups[0]
        flags = {k: first[k] for k in ("fused", "foreach", "capturable") if k in first}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "capturable but run uncaptured" (the warm-up)
            opt = cls(groups, lr=first["lr"], **flags)
        opt._warned_capturable_if_run_uncaptured = True
        self._link_state(opt)
        return opt

    def _link_state(self, opt=None) -> tuple:
        """Make the runner's optimizer state the learner's (same dict per parameter) and return
        a fingerprint of the state tensors: if it changes (e.g. ``load_state_dict`` replaced
        them), captured graphs point at stale tensors and are dropped."""
        opt = opt or self._optimizer
        for owner in self.learner.optimizers().values():
            for group in owner.param_groups:
                for p in group["params"]:
                    opt.state[p] = owner.state[p]
        return tuple((id(opt.state[p]),) + tuple(id(v) for v in opt.state[p].values())
                     for p in self._params)

    # ------------------------------------------------------------------ protocol (delegated)
    def gradient(self, x, y):
        return self.learner.gradient(x, y)

    @torch.no_grad()
    def predict(self, x):
        return self.learner.predict(x)

    def own_parameters(self):
        return self.learner.own_parameters()

    def optimizers(self):
        return self.learner.optimizers()

    def state_dict(self):
        return self.learner.state_dict()

    def load_state_dict(self, state):
        self.learner.load_state_dict(state)
        self._link_state()

    def set_lr_factor(self, factor: float) -> None:
        """The harness's schedule: the learner's optimizers and the merged one (whose lr is a
        device tensor when captured in a CUDA graph, updated in place)."""
        self.learner.set_lr_factor(factor)
        scale_lr(self._optimizer, factor)

    @property
    def update_count(self):
        return self.learner.update_count

    # ------------------------------------------------------------------ per batch
    def _fallback_reason(self, x, y) -> str | None:
        if y.dim() != 1:
            return "per-step labels y [B, T] need sample rows that follow each label history"
        if x.device != self.device and not (self.graph and x.device.type == "cpu"):
            return f"input on {x.device}, model on {self.device}"
        if self.graph:
            if torch._C._autograd._top_saved_tensors_default_hooks(False) is not None:
                return "saved-tensor hooks are active (memory measurement)"
            from torch.utils._python_dispatch import _get_current_dispatch_mode
            if _get_current_dispatch_mode() is not None:
                return "a dispatch mode is active (e.g. FLOP counting)"
        return None

    def _prepare(self, y, steps: int, dtype) -> _Batch | None:
        """Per-step scales (host arithmetic in double, as ``SigProp._run`` does, then rounded to
        the loss dtype once) and the readout steps; None if no row is labelled."""
        o, cfg = self.options, self.cfg
        count = int((y >= 0).sum())  # one host read per batch
        if count == 0:
            return None
        rows = o.target_rows
        compact = rows == "sample"  # sequence labels: sample rows == class rows + log n_c
        key = (steps, count, dtype, compact)
        cached = self._batch_cache.get(key)
        if cached is None:
            weights = [2.0 * (t + 1) / (steps + 1) if o.step_weight == "linear" else 1.0
                       for t in range(steps)]
            readout_steps = frozenset(range(steps)) if cfg.loss_at == "every" \
                else frozenset([steps - 1])
            local = torch.tensor([w / count for w in weights], dtype=dtype, device=self.device)
            readout = torch.tensor([1.0 / count if t in readout_steps else 0.0
                                    for t in range(steps)], dtype=dtype, device=self.device)
            cached = (local, readout, readout_steps)
            if len(self._batch_cache) > 16:
                self._batch_cache.clear()
            self._batch_cache[key] = cached
        local, readout, readout_steps = cached
        shift = None
        if compact:
            counts = torch.bincount(y.long(), minlength=self.learner.num_classes).to(dtype)
            shift = counts.log()
        return _Batch(steps, local, readout, readout_steps, shift)

    def train_batch(self, x, y):
        reason = self._fallback_reason(x, y)
        batch = None
        if reason is None:
            y = y.to(self.device).long()
            batch = self._prepare(y, x.shape[1], x.dtype)
            if batch is None:
                reason = "no labelled row in the batch"
        if reason is not None:
            self.last_fallback = reason
            stats = self.learner.train_batch(x.to(self.device), y.to(self.device))
            self.state_bytes = self.learner.state_bytes
            return stats
        self.last_fallback = None
        fingerprint = self._link_state()
        if fingerprint != self._state_fingerprint and self._graphs:
            self._graphs.clear()  # state tensors were replaced: captured pointers are stale
            self._seen.clear()
        return self._train_chunks(x, y, batch)

    def _train_chunks(self, x, y, batch: _Batch):
        learner, model = self.learner, self.model
        B, T = x.shape[:2]
        R = learner.num_classes
        frames = x.flatten(2) if model.flatten_input else x
        frames = frames.transpose(0, 1)  # time-major view [T, B, *F]
        if not self.graph:
            frames = frames.contiguous()
        state0 = model.initial_state(B + R, device=self.device, dtype=x.dtype)
        self.state_bytes = learner.state_bytes = self._state_bytes(state0, B, R)
        zero = torch.zeros((), device=self.device, dtype=x.dtype)
        sums = (zero, zero.clone(), torch.zeros((), device=self.device, dtype=torch.bool))
        if self.graph:
            bufs = self._static(B, x.dtype, frames.shape[2:], R)
            for buf, init in zip(bufs["state_flat"], _flatten(state0)):
                buf.copy_(init)
            bufs["labels"].copy_(y)
            if batch.shift is not None:
                bufs["shift"].copy_(batch.shift)
            for buf in bufs["sums"]:
                buf.zero_()
        state = state0
        steps_run = chunks = 0
        nonfinite = False
        for t0 in range(0, T, self.chunk):
            k = min(self.chunk, T - t0)
            readout_at = tuple(i for i in range(k) if t0 + i in batch.readout_steps)
            if self.graph:
                self._graph_chunk(bufs, frames[t0:t0 + k], batch, t0, k, readout_at)
                flag = bufs["sums"][2]
            else:
                state, sums = self.run_chunk(
                    frames[t0:t0 + k], y, batch.local_scale[t0:t0 + k],
                    batch.readout_scale[t0:t0 + k], batch.shift, state, sums, readout_at)
                flag = sums[2]
            steps_run += k
            chunks += 1
            if self.nan_check == "chunk" and bool(flag):  # one host read per chunk
                nonfinite = True
                break
        if self.graph:
            sums = tuple(b.clone() for b in bufs["sums"])
            self._state_fingerprint = self._link_state()
        if self.nan_check == "batch":
            nonfinite = bool(sums[2])
        learner.update_count += steps_run
        scored = sum(1 for t in batch.readout_steps if t < steps_run)
        loss = sums[1] / max(scored, 1)
        if nonfinite:
            loss = torch.full_like(loss, float("nan"))
        return {"loss": loss, "local_loss": sums[0] / max(steps_run, 1) / self._L,
                "updates": steps_run, "chunks": chunks, "nonfinite": nonfinite}

    def _state_bytes(self, state, B, R):
        """Learner-owned state, as ``SigProp`` counts it: the target rows' recurrent states and
        drive (the chunk's input buffer is input data, not learning state)."""
        rows_bytes = sum(tensor_bytes(s) for s in state) * R // (B + R)
        drive = R * math.prod(self.model.cells[0].drive_shape)
        return rows_bytes + drive * self.learner.projection.element_size()

    # ------------------------------------------------------------------ the eager chunk function
    def _step_forward(self, frame, state, labels, local_scale, readout_scale, shift,
                      score_readout: bool):
        """One step's forward (both row kinds, every layer) and its losses, through the
        learner's own ``step`` and ``layers_loss`` (class rows, the CE local loss, ``a_t`` a
        tensor): ``(total, local_total, readout_loss | None, state)``."""
        learner = self.learner
        B = frame.shape[0]
        out, new_states, rows = learner.step(frame, learner.projection, state, score=True)
        ctx = StepLoss("class", labels, None, local_scale, shift, labels)
        local_total = learner.layers_loss(rows, B, ctx)
        total, loss_o = local_total, None
        if score_readout:
            logits = learner.readout(out[:B])
            loss_o = F.cross_entropy(logits, labels, ignore_index=-1, reduction="sum") \
                * readout_scale
            total = total + loss_o
        return total, local_total, loss_o, tuple(new_states)

    def _update(self, grads):
        """One optimizer step with ``grads`` (None = not in this step's graph, skipped as the
        learner's optimizers skip a parameter without ``.grad``), then grads released."""
        for p, g in zip(self._params, grads):
            p.grad = g
        if self.cfg.grad_clip > 0:
            for group in self.learner._groups.values():
                self.learner.clip(group)
        self._optimizer.step()
        for p in self._params:
            p.grad = None

    def run_chunk(self, frames, labels, local_scale, readout_scale, shift, state, sums,
                  readout_at=()):
        """Train on ``k = len(frames)`` consecutive steps: what ``SigProp._run`` does for them.

        ``frames [k, B, *F]`` time-major; ``labels [B]`` (long, −1 = unlabelled);
        ``local_scale``/``readout_scale [k]`` the per-step loss scales ``a_t``, ``r_t``; ``shift``
        ``[C]`` or None; ``state`` per layer, rows ``[B + C]``; ``sums = (Σ local, Σ readout,
        non-finite flag)``; ``readout_at`` the chunk's steps that score the readout (static).
        Returns ``(state, sums)``. No host synchronisation, no data-dependent control flow.
        """
        local_sum, readout_sum, flag = sums
        params = self._params
        live = [p for p in params if p.requires_grad]
        for i in range(frames.shape[0]):
            score = i in readout_at
            total, local_total, loss_o, state = self._forward(
                frames[i], state, labels, local_scale[i], readout_scale[i], shift, score)
            local_sum = local_sum + local_total.detach()
            if loss_o is not None:
                readout_sum = readout_sum + loss_o.detach()
            wanted = [p for p in live if score or p not in self._readout_params]
            got = torch.autograd.grad(total, wanted, allow_unused=True)
            by_param = dict(zip(wanted, got))
            self._update([by_param.get(p) for p in params])
        flag = flag | ~torch.isfinite(local_sum + readout_sum)
        return state, (local_sum, readout_sum, flag)

    # ------------------------------------------------------------------ the CUDA graph wrapper
    def _static(self, B, dtype, frame_shape, R):
        key = (B, dtype, tuple(frame_shape))
        bufs = self._buffers.get(key)
        if bufs is None:
            dev = self.device
            state = self.model.initial_state(B + R, device=dev, dtype=dtype)
            bufs = {
                "frames": torch.zeros(self.chunk, B, *frame_shape, device=dev, dtype=dtype),
                "labels": torch.zeros(B, device=dev, dtype=torch.long),
                "local": torch.zeros(self.chunk, device=dev, dtype=dtype),
                "readout": torch.zeros(self.chunk, device=dev, dtype=dtype),
                "shift": torch.zeros(self.learner.num_classes, device=dev, dtype=dtype),
                "state": state,
                "state_flat": _flatten(state),
                "sums": (torch.zeros((), device=dev, dtype=dtype),
                         torch.zeros((), device=dev, dtype=dtype),
                         torch.zeros((), device=dev, dtype=torch.bool)),
            }
            self._buffers[key] = bufs
        return bufs

    @staticmethod
    def _stream_in(bufs, frames, k):
        """This chunk's frames into the static buffer. From the host: gathered into a pinned
        staging buffer (time-major), then copied asynchronously; the staging buffer is reused
        once the previous chunk's copy is done (an event, not a device-wide sync)."""
        dst = bufs["frames"][:k]
        if frames.device.type == "cpu" and dst.device.type == "cuda":
            if bufs.get("staging") is None:
                bufs["staging"] = torch.empty(bufs["frames"].shape, dtype=dst.dtype,
                                              pin_memory=True)
                bufs["copied"] = None
            if bufs["copied"] is not None:
                bufs["copied"].synchronize()
            staging = bufs["staging"][:k]
            staging.copy_(frames)
            dst.copy_(staging, non_blocking=True)
            bufs["copied"] = torch.cuda.Event()
            bufs["copied"].record()
        else:
            dst.copy_(frames, non_blocking=True)

    def _chunk_body(self, bufs, k, readout_at, has_shift):
        """The captured work: a chunk on the static buffers, results copied back into them."""
        state, sums = self.run_chunk(
            bufs["frames"][:k], bufs["labels"], bufs["local"][:k], bufs["readout"][:k],
            bufs["shift"] if has_shift else None, bufs["state"], bufs["sums"], readout_at)
        for buf, new in zip(bufs["state_flat"], _flatten(state)):
            buf.copy_(new)
        for buf, new in zip(bufs["sums"], sums):
            buf.copy_(new)

    def _graph_chunk(self, bufs, frames, batch: _Batch, t0, k, readout_at):
        self._stream_in(bufs, frames, k)
        bufs["local"][:k].copy_(batch.local_scale[t0:t0 + k])
        bufs["readout"][:k].copy_(batch.readout_scale[t0:t0 + k])
        has_shift = batch.shift is not None
        sig = (id(bufs), k, readout_at, has_shift)  # everything static about the chunk
        graph = self._graphs.get(sig)
        if graph is not None:
            graph()
            return
        seen = self._seen.get(sig, 0)
        self._seen[sig] = seen + 1
        body = lambda: self._chunk_body(bufs, k, readout_at, has_shift)  # noqa: E731
        if seen < self.warmup:
            self._backend.warm(body)  # a real chunk of training, computed eagerly
            return
        replay = self._backend.capture(body)
        self._graphs[sig] = replay
        replay()  # capture records, it does not run: now do this chunk's work


class _CudaGraphs:
    """Warm-up on a side stream, capture into a CUDA graph (``torch.cuda.graph``), replay."""

    def __init__(self, device):
        self.device = device
        self.pool = None

    def warm(self, body):
        # lazy initialisation (optimizer state, cuBLAS workspaces, compilation) must not happen
        # during capture; PyTorch's recipe runs it on a side stream first
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            body()
        torch.cuda.current_stream(self.device).wait_stream(side)

    def capture(self, body):
        graph = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        # Graphs share one pool: nothing allocated inside a capture outlives it (results are
        # copied into the static buffers), and replays never overlap.
        with torch.cuda.graph(graph, pool=self.pool):
            body()
        return graph.replay


class _SimulatedGraphs:
    """For tests without a GPU: "capture" keeps the body and "replay" reruns it on the static
    buffers, so the buffer plumbing (what flows between chunks only through static tensors, the
    signatures, warm-up then capture) is exercised on the CPU."""

    def __init__(self, device):
        self.captures = 0

    def warm(self, body):
        body()

    def capture(self, body):
        self.captures += 1
        return body


def _flatten(state) -> list[torch.Tensor]:
    return [t for layer in state for t in layer]


__all__ = ["FastSigProp", "fast_path", "unsupported_reason", "graph_reason", "NAN_CHECKS"]
