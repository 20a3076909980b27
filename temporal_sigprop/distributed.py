"""Training across processes with PyTorch's own engine: ``torch.distributed``, launched by torchrun.

    torchrun --nproc-per-node 4 -m temporal_sigprop train --method sigprop ...      # one node
    torchrun --nnodes 2 --node-rank R --nproc-per-node 8 --rdzv-backend static \\
             --rdzv-endpoint HOST:29500 -m temporal_sigprop train ...    # several; R = 0, 1

(the static rendezvous puts global rank 0, the writer, on node 0; torchrun's elastic c10d
rendezvous numbers the ranks itself, so the writer may be any node.)

``tsp train`` sees torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), initialises the default process group — gloo on the CPU, NCCL
with one GPU per local rank on CUDA — with ``--dist-timeout`` on every collective, and trains in
one of two ways. Without torchrun (or with one process) nothing here changes a run.

Data parallel (the default; every method). Every rank holds the whole learner. Each global batch
(the same batches in the same order as one process with the same seed: every rank draws the same
permutation) is cut into contiguous shards, one per rank, whose sizes differ by at most one row.
Every update of every learner becomes an update of the global batch:

- ``--dp-mode allreduce``: right before an update's gradients are clipped and applied, the
  gradients of every parameter of every optimizer the learner owns (``learner.optimizers()``) go
  into one flat buffer per dtype, each rank's scaled by its share of the batch's rows (b_r / B),
  and are summed by **one** all-reduce: the mean gradient of the global batch, also when the last
  batch's shards differ in size. Sigprop's per-step updates (an optimizer per layer) thus cost one
  bucketed all-reduce per update, not one per tensor or per layer.
- ``--dp-mode local_sgd --local-sgd-every K``: each rank steps on its own shard's gradients; the
  parameters are averaged (one bucketed all-reduce) every K updates, and parameters and optimizer
  state at the end of every epoch, so the replicas leave every epoch identical.

The seam. Every learner clips (``Learner.clip``) and then steps its optimizers once an update's
gradients are complete. The averager wraps the learner's ``clip`` — clipping then acts on the
global gradient, as in one process — and adds a step pre-hook to each optimizer (for a learner
that steps without clipping). The first of these calls that sees gradients it has not seen
before (tracked per tensor by identity and version counter) performs the update's one all-reduce.

What equals one process: parameters after any number of batches match those of one process on the
global batch up to float rounding (the order of summation), for every learner whose loss is a sum
over sequences divided by the scored count — bptt, tbptt, rtrl, snap1, eprop, fwdgrad (every rank
draws the same tangents: same seed) and sigprop with ``--target-rows class``. Two cases differ by
construction and are documented, not hidden:

- sigprop's default sample rows compare each row with the rows of *its own batch* (the log-count
  shift log n_c; the batch-similarity CE of per-step labels). Under data parallel that batch is the
  rank's shard, as in one process at the per-rank batch size; the gradients are still averaged.
- per-step labels with unlabelled steps: each shard normalises by its own scored count and shards
  are weighted by rows, which equals one process when the labelled steps split across the shards
  in proportion to their rows. Shards scored at *different* steps are refused: the learners update
  at scored steps, and every rank must take the same updates.

Files and state: only rank 0 writes (config, metrics, summary, checkpoint, wandb) and shows
progress bars. At the start rank 0's learner and loop state — fresh, or read from ``--resume``'s
checkpoint — is broadcast to every rank, so a resumed N-rank run continues exactly like an
uninterrupted one and no other rank needs the output folder (several nodes need no shared file
system). Evaluation batches are dealt round-robin to the ranks and the correct/label counts
all-reduced: the same batches as one process, so the same metrics. The batch loss is the
row-weighted all-reduce of the shards' losses, so metrics and the non-finite check agree on every
rank.

Failures: every collective waits at most ``--dist-timeout`` seconds. A rank that dies or stops
makes the others raise :class:`DistributedError` naming the rank, the operation and the timeout
(a dead peer's closed connection is usually seen at once, a stuck one after the timeout); the job
stops instead of hanging.

Layer parallel (``--layer-parallel``, sigprop only): one rank per layer group, the step's rows
streamed forward by point-to-point sends (``layer_parallel.py``).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import os
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .errors import ConfigError
from .losses import accuracy_per_step, step_targets

DP_MODES = ("allreduce", "local_sgd")


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, stopped, or diverged."""


@dataclass
class CommStats:
    """What this rank sent through collectives and point-to-point sends."""
    updates: int = 0
    """Updates synchronised (gradient all-reduces) or counted (local SGD)."""
    gradient_allreduces: int = 0
    """Bucketed gradient all-reduces (one per update and dtype)."""
    parameter_averages: int = 0
    """Parameter averages (local SGD, and every epoch end)."""
    allreduce_bytes: int = 0
    """Bytes of the buffers this rank put into all-reduces (all of them: gradients, parameter
    averages, batch losses, evaluation counts, replica checks)."""
    gradient_bytes: int = 0
    """Of those, the gradient buffers (4 or 8 bytes × (parameters + parameter tensors): the
    gradients and one 'has a gradient' flag per tensor)."""
    average_bytes: int = 0
    """Of those, the parameter (and epoch-end optimizer state) averages."""
    p2p_messages: int = 0
    """Point-to-point sends (layer parallel)."""
    p2p_bytes: int = 0
    """Bytes of those sends."""
    p2p_wait_seconds: float = 0.0
    """Seconds this rank spent blocked waiting for point-to-point messages to arrive or leave
    (layer parallel): the pipeline's bubbles, an unbalanced split, or the transport's latency."""


class World:
    """This process's place in the job: rank, size, backend, and the collectives it uses.

    ``World()`` is the single process (every method is then a no-op or the plain computation);
    ``setup`` builds the one for a torchrun job.
    """

    def __init__(self, rank: int = 0, size: int = 1, local_rank: int = 0,
                 backend: str | None = None, timeout: float = 300.0,
                 device: torch.device | str = "cpu", mode: str = "allreduce",
                 local_sgd_every: int = 8, layer_parallel: bool = False,
                 layer_parallel_chunk: int = 1, owns_group: bool = False):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.backend, self.timeout = backend, timeout
        self.device = torch.device(device)
        self.mode, self.local_sgd_every, self.layer_parallel = mode, local_sgd_every, layer_parallel
        self.layer_parallel_chunk = layer_parallel_chunk
        self.owns_group = owns_group
        self.comm = CommStats()
        self._sync = None  # the data-parallel averager or the layer-parallel executor
        self._share = 1.0  # this rank's share of the current batch's rows
        self.loss_at = "last"

    # ------------------------------------------------------------------ identity
    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes files, logs and shows progress."""
        return self.rank == 0

    def describe(self) -> dict:
        """What the summary records about the job (nothing for one process)."""
        if not self.active:
            return {}
        kind = (f"layer ({self.size} layer groups)" if self.layer_parallel else
                f"data ({self.mode}" + (f", average every {self.local_sgd_every} updates)"
                                         if self.mode == "local_sgd" else ")"))
        return {"world_size": self.size, "rank": self.rank, "parallel": kind,
                "backend": self.backend, "communication": dataclasses.asdict(self.comm)}

    # ------------------------------------------------------------------ collectives
    def _collective(self, what: str, fn, *args, **kwargs):
        """Run one collective; turn a failure (a dead peer, a timeout) into a clear error."""
        try:
            return fn(*args, **kwargs)
        except RuntimeError as err:
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} failed ({type(err).__name__}: "
                f"{str(err).strip().splitlines()[0] if str(err).strip() else 'no message'}). "
                f"Another rank has died, stopped or fallen out of step (collectives wait at most "
                f"--dist-timeout {self.timeout:g} s); look for the first error in the other "
                "ranks' output"
            ) from err

    def all_reduce(self, tensor: torch.Tensor, what: str, op=dist.ReduceOp.SUM) -> torch.Tensor:
        """In place; ``tensor`` on the communication device (CPU for gloo, this GPU for NCCL)."""
        self._collective(what, dist.all_reduce, tensor, op=op)
        self.comm.allreduce_bytes += tensor.numel() * tensor.element_size()
        return tensor

    def broadcast_object(self, obj, src: int = 0, what: str = "broadcast"):
        """``obj`` from rank ``src`` on every rank (``torch.save`` bytes; tensors arrive on CPU)."""
        if not self.active:
            return obj
        if self.rank == src:
            buffer = io.BytesIO()
            torch.save(obj, buffer)
            data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
            size = torch.tensor([data.numel()], dtype=torch.int64)
        else:
            size = torch.zeros(1, dtype=torch.int64)
        size = size.to(self.device)
        self._collective(what, dist.broadcast, size, src=src)
        if self.rank != src:
            data = torch.empty(int(size.item()), dtype=torch.uint8)
        data = data.to(self.device)
        self._collective(what, dist.broadcast, data, src=src)
        if self.rank == src:
            return obj
        return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu",
                          weights_only=False)

    # ------------------------------------------------------------------ the harness's hooks
    def attach(self, learner, train_set, cfg):
        """Make ``learner`` train as part of the job; returns the learner to train with (the
        layer-parallel executor under ``--layer-parallel``, else ``learner`` itself)."""
        if not self.active:
            return learner
        self.loss_at = cfg.loss_at
        if self.layer_parallel:
            from .layer_parallel import LayerParallelSigProp
            executor = LayerParallelSigProp(learner, self)
            self._sync = executor
            return executor
        _check_batches(len(train_set), cfg.batch_size, cfg.max_batches, self.size)
        self._sync = GradientAverager(learner, self)
        return learner

    def start(self, learner, loop: dict, data_generator: torch.Generator) -> dict:
        """Every rank continues from rank 0's state (fresh, or resumed from its checkpoint):
        learner, loop counters, data order and RNG. Returns the loop state."""
        if not self.active:
            return loop
        state = None
        if self.is_writer:
            state = {"learner": learner.state_dict(), "loop": loop,
                     "data_generator": data_generator.get_state(),
                     "torch_rng": torch.get_rng_state()}
        state = self.broadcast_object(state, what="broadcast of rank 0's starting state")
        if not self.is_writer:
            learner.load_state_dict(state["learner"])
            data_generator.set_state(state["data_generator"])
            torch.set_rng_state(state["torch_rng"])
        return state["loop"]

    def shard(self, x: torch.Tensor, y: torch.Tensor):
        """This rank's contiguous rows of a global batch (all of it under layer parallel)."""
        if not self.active or self.layer_parallel:
            return x, y
        bounds = shard_bounds(x.shape[0], self.size)
        if y.dim() == 2:
            _check_scored_steps(y, bounds, x.shape[1], self.loss_at)
        start, stop = bounds[self.rank]
        self._share = (stop - start) / x.shape[0]
        self._sync.share = self._share
        return x[start:stop], y[start:stop]

    def batch_loss(self, loss) -> float:
        """The global batch's loss: the row-weighted sum of the shards' (layer parallel: the
        top layer group's readout loss), the same number on every rank."""
        if not self.active:
            return float(loss)
        value = torch.as_tensor(loss, dtype=torch.float64).detach().reshape(1).to(self.device)
        if self.layer_parallel:
            return self._sync.batch_loss(value)
        return float(self.all_reduce(value * self._share, "all-reduce of the batch loss").item())

    def end_epoch(self, learner) -> None:
        """Before evaluation and the checkpoint: make every rank's learner the same full state."""
        if self.active:
            self._sync.end_epoch()

    def evaluate(self, learner, dataset, batch_size: int, device) -> dict:
        """``harness.evaluate`` with its batches dealt round-robin to the ranks and the counts
        all-reduced (the same batches as one process, hence the same figures)."""
        from .harness import evaluate, iterate_batches
        if not self.active:
            return evaluate(learner, dataset, batch_size, device)
        x_all, y_all = dataset.tensors
        steps = x_all.shape[1]
        per_step_labels = y_all.dim() == 2
        counts = torch.zeros(2 * steps + 2, dtype=torch.float64)
        with torch.no_grad():
            for i, (x, y) in enumerate(iterate_batches(dataset, batch_size)):
                if i % self.size != self.rank:
                    continue
                x, y = x.to(device), y.to(device)
                logits = learner.predict(x)
                correct, labelled = accuracy_per_step(logits, y)
                counts[:steps] += correct.cpu()
                counts[steps:2 * steps] += labelled.cpu()
                if not per_step_labels:
                    counts[-2] += (logits[:, -1].argmax(-1) == y).sum().item()
                    counts[-1] += y.shape[0]
        counts = self.all_reduce(counts.to(self.device), "all-reduce of evaluation counts").cpu()
        correct, labelled = counts[:steps], counts[steps:2 * steps]
        if per_step_labels:
            final_correct, final_total = correct.sum().item(), labelled.sum().item()
        else:
            final_correct, final_total = counts[-2].item(), counts[-1].item()
        anytime = (correct / labelled.clamp_min(1)).tolist()
        return {"accuracy": final_correct / max(final_total, 1), "anytime": anytime}

    def close(self) -> None:
        """Destroy the process group if ``setup`` created it."""
        if self.owns_group and dist.is_initialized():
            # every rank done communicating before any tears its connections down (a rank
            # leaving while a peer still reads from it can abort the peer)
            self._collective("barrier before closing", dist.barrier)
            dist.destroy_process_group()
        self.owns_group = False


# ---------------------------------------------------------------------------- setting up
def setup(cfg):
    """``(cfg for this rank, World)``: under torchrun, the process group is initialised and the
    ranks other than 0 run without files, wandb or progress bars; otherwise ``(cfg, World())``."""
    _check_options(cfg)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        if cfg.layer_parallel:
            raise ConfigError(
                "--layer-parallel runs one process per layer group under torchrun, e.g. "
                "`torchrun --nproc-per-node 2 -m temporal_sigprop train --method sigprop "
                "--layer-parallel ...`; this process is not part of a torchrun job (WORLD_SIZE "
                "is unset or 1)")
        return cfg, World()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = cfg.device.startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"local rank {local_rank} has no GPU: this node has "
                              f"{torch.cuda.device_count()}; start at most that many processes "
                              "per node (--nproc-per-node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=cfg.dist_timeout))
    world = World(rank=rank, size=size, local_rank=local_rank, backend=backend,
                  timeout=cfg.dist_timeout, device=device, mode=cfg.dp_mode,
                  local_sgd_every=cfg.local_sgd_every, layer_parallel=cfg.layer_parallel,
                  layer_parallel_chunk=cfg.layer_parallel_chunk,
                  owns_group=owns)
    changes = {"device": str(device) if cuda else cfg.device,
               # the CUDA-graph fast path captures the optimizer step, where the gradient
               # all-reduce happens; the eager path runs it at every update
               "eager": True}
    if not world.is_writer:
        changes.update(out=None, wandb=None, progress=False)
    return dataclasses.replace(cfg, **changes), world


def _check_options(cfg) -> None:
    if cfg.dp_mode not in DP_MODES:
        raise ConfigError(f"unknown --dp-mode {cfg.dp_mode!r}; choose one of: "
                          f"{', '.join(DP_MODES)}")
    if cfg.local_sgd_every < 1:
        raise ConfigError(f"--local-sgd-every must be ≥ 1, got {cfg.local_sgd_every}")
    if not cfg.dist_timeout > 0:
        raise ConfigError(f"--dist-timeout must be > 0 seconds, got {cfg.dist_timeout}")
    if cfg.layer_parallel_chunk < 1:
        raise ConfigError(f"--layer-parallel-chunk must be ≥ 1, got {cfg.layer_parallel_chunk}")
    if cfg.layer_parallel and cfg.method != "sigprop":
        raise ConfigError(f"--layer-parallel applies to sigprop only (its layers learn without a "
                          f"backward pass between them); {cfg.method!r} runs data parallel")


def shard_bounds(rows: int, size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each rank's contiguous shard; the first ``rows % size`` get one more."""
    base, extra = divmod(rows, size)
    bounds, start = [], 0
    for r in range(size):
        stop = start + base + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def _check_batches(n: int, batch_size: int, max_batches: int, size: int) -> None:
    """Every batch the run will see must give each rank at least one sequence."""
    last = n % batch_size
    reaches_last = not max_batches or max_batches * batch_size >= n
    smallest = min(batch_size, n) if not (last and reaches_last) else min(last, batch_size)
    if smallest < size:
        raise ConfigError(
            f"data parallel over {size} ranks needs at least {size} sequences in every batch, but "
            f"{'the last' if last and reaches_last and batch_size >= size else 'a'} batch holds "
            f"{smallest} (training split {n}, --batch-size {batch_size}); choose a --batch-size of "
            f"at least {size} whose last batch (split mod batch size) is 0 or at least {size}, "
            "or use fewer ranks")


def _check_scored_steps(y, bounds, steps: int, loss_at: str) -> None:
    """Per-step labels: every shard must be scored at the same steps (the learners update at
    scored steps, and every rank must take the same updates)."""
    for placement in sorted({"every", loss_at}):
        scored = step_targets(y, steps, placement) >= 0
        patterns = [scored[a:b].any(0) for a, b in bounds]
        for r, pattern in enumerate(patterns[1:], 1):
            if not torch.equal(pattern, patterns[0]):
                where = (pattern != patterns[0]).nonzero().flatten()[:5].tolist()
                raise ConfigError(
                    f"data parallel: the shards of a batch of per-step labels are scored at "
                    f"different steps (rank 0 and rank {r} differ at steps {where}, loss at "
                    f"{placement}); the learners update at scored steps and every rank must take "
                    "the same updates — train this task in one process, or label every sequence "
                    "at the same steps")


# ---------------------------------------------------------------------------- data parallel
def _unique_parameters(optimizers) -> list[torch.nn.Parameter]:
    seen, params = set(), []
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
    return params


def _by_dtype(tensors) -> dict:
    buckets: dict = {}
    for i, t in enumerate(tensors):
        buckets.setdefault(t.dtype, []).append(i)
    return buckets


@dataclass
class _Event:
    """A local-SGD update in progress: the optimizers still to step."""
    pending: set = field(default_factory=set)


class GradientAverager:
    """Data parallel for any learner, at the optimizer-step seam (module docstring)."""

    def __init__(self, learner, world: World):
        self.learner, self.world = learner, world
        self.optimizers = list(learner.optimizers().values())
        if not self.optimizers:
            raise ConfigError(f"{learner.name} owns no optimizer: nothing to synchronise across "
                              "ranks")
        self.params = _unique_parameters(self.optimizers)
        self.buckets = _by_dtype(self.params)
        self.share = 1.0 / world.size
        self._marks = [None] * len(self.params)
        self._event: _Event | None = None
        self._updates_since_average = 0
        original_clip = learner.clip

        def clip(params):
            # the update's gradients are complete: average them first, so that the clip (and
            # everything after it) sees the global gradient, as in one process
            self.before_update()
            original_clip(params)
            self._mark()  # clipping rewrote them in place: not new gradients

        learner.clip = clip
        for opt in self.optimizers:
            opt.register_step_pre_hook(lambda opt, args, kwargs: self.before_update())
            opt.register_step_post_hook(lambda opt, args, kwargs: self._stepped(opt))

    # -------------------------------------------------------------- which gradients are new
    def _fresh(self) -> bool:
        for p, mark in zip(self.params, self._marks):
            g = p.grad
            if g is not None and (mark is None or mark[0]() is not g or mark[1] != g._version):
                return True
        return False

    def _mark(self) -> None:
        self._marks = [None if p.grad is None else (weakref.ref(p.grad), p.grad._version)
                       for p in self.params]

    # -------------------------------------------------------------- the update
    def before_update(self) -> None:
        if not self._fresh():
            return
        if self.world.mode == "allreduce":
            self._allreduce_gradients()
        else:
            self._close_event()  # one left open by an optimizer that had gradients but did not step
            self._event = _Event({id(opt) for opt in self.optimizers
                                  if any(p.grad is not None for g in opt.param_groups
                                         for p in g["params"])})
        self.world.comm.updates += 1
        self._mark()

    @torch.no_grad()
    def _allreduce_gradients(self) -> None:
        """One bucketed all-reduce (per dtype) of every parameter's share-weighted gradient and a
        'has a gradient' count per parameter (a parameter no rank has a gradient for stays
        ``None``, so optimizers that skip it still skip it)."""
        world = self.world
        for dtype, index in self.buckets.items():
            params = [self.params[i] for i in index]
            grads = [p.grad.reshape(-1) if p.grad is not None
                     else torch.zeros(p.numel(), dtype=dtype, device=p.device) for p in params]
            present = torch.tensor([p.grad is not None for p in params], dtype=dtype)
            flat = torch.cat([g.to(world.device) for g in grads] + [present.to(world.device)])
            numel = flat.numel() - len(params)
            flat[:numel].mul_(self.share)
            world.all_reduce(flat, f"gradient all-reduce of update {world.comm.updates + 1}")
            world.comm.gradient_allreduces += 1
            world.comm.gradient_bytes += flat.numel() * flat.element_size()
            has_grad = flat[numel:].tolist()
            offset = 0
            for p, count in zip(params, has_grad):
                view = flat[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
                if count == 0:
                    continue
                if p.grad is None:
                    p.grad = view.to(p.device, copy=True)
                else:
                    p.grad.copy_(view)

    # -------------------------------------------------------------- local SGD
    def _stepped(self, opt) -> None:
        if self._event is None:
            return
        self._event.pending.discard(id(opt))
        if not self._event.pending:
            self._close_event()

    def _close_event(self) -> None:
        if self._event is None:
            return
        self._event = None
        self._updates_since_average += 1
        if self._updates_since_average % self.world.local_sgd_every == 0:
            self.average(self.params, "parameter average (local SGD)")

    @torch.no_grad()
    def average(self, tensors, what: str) -> None:
        """Every rank's ``tensors`` := their mean over the ranks (one all-reduce per dtype)."""
        world = self.world
        tensors = list(tensors)
        for index in _by_dtype(tensors).values():
            chosen = [tensors[i] for i in index]
            flat = torch.cat([t.reshape(-1).to(world.device) for t in chosen])
            world.all_reduce(flat, what)
            world.comm.average_bytes += flat.numel() * flat.element_size()
            flat.div_(world.size)
            offset = 0
            for t in chosen:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        world.comm.parameter_averages += 1

    # -------------------------------------------------------------- epoch end
    def _state_tensors(self) -> list[torch.Tensor]:
        """Everything that must agree across replicas: parameters, floating buffers, the
        learner's own tensors and the optimizers' floating state (moments, step counts)."""
        learner = self.learner
        tensors = list(learner.model.parameters()) + [
            b for b in learner.model.buffers() if b.is_floating_point()]
        seen = {id(t) for t in tensors}
        tensors += [p for p in self.params + list(learner.own_parameters()) if id(p) not in seen]
        for opt in self.optimizers:
            for state in opt.state.values():
                tensors += [v for v in state.values()
                            if torch.is_tensor(v) and v.is_floating_point()]
        return tensors

    def end_epoch(self) -> None:
        if self.world.mode == "local_sgd":
            self._close_event()
            self.average(self._state_tensors(), "epoch-end average of parameters and optimizer "
                                                "state (local SGD)")
            self._updates_since_average = 0
        else:
            self.check_replicas()

    @torch.no_grad()
    def check_replicas(self) -> None:
        """Raise unless every rank holds the same state (one small all-reduce of checksums)."""
        world = self.world
        tensors = [t.detach().double() for t in self._state_tensors()]
        sums = torch.stack([t.sum() for t in tensors] + [t.square().sum() for t in tensors])
        both = torch.cat([sums, -sums]).to(world.device)
        world.all_reduce(both, "replica check", op=dist.ReduceOp.MAX)
        top, bottom = both[:len(sums)], -both[len(sums):]
        if not torch.equal(top, bottom):
            raise DistributedError(
                f"rank {world.rank}: the replicas' parameters or optimizer states differ after "
                "the epoch; every rank must take the same updates (a learner stepped on one rank "
                "only?)")
