"""Layer-parallel sigprop: the layers as a pipeline over time, one rank per layer group.

    torchrun --nproc-per-node 2 -m temporal_sigprop train --method sigprop --layers 4 \\
        --layer-parallel ...

Why it is possible. Sigprop has no backward pass between layers: layer l at step t needs only
layer l−1's *detached* output at step t (the input rows and the target rows together), its own
state at t−1, and the step's labels. So the L layers split into G contiguous groups, one per
rank; at every step rank g receives the rows ``sg(out^{a−1}_t)`` [B + R, ...] from rank g−1,
runs its layers (``recur``, the local losses, one backward, its own optimizers' update when the
schedule says so), and sends ``sg(out^{b}_t)`` on to rank g+1 — no message ever goes backward.
While rank g works on step t, rank g−1 is already on step t+1: the T steps of a batch take
T + G − 1 stage-steps instead of G·T, the ideal (T + G − 1)/T of perfect division.
``--layer-parallel-chunk K`` sends the rows of K consecutive steps in one message (fewer, larger
messages where each costs a fixed latency; the pipeline then fills in (G − 1)·K steps).

What runs where. Rank 0 holds the first group and the target projection P (trained by layer 1's
loss: the target drive never leaves rank 0); the last rank holds the top group and the readout.
Every rank has the batch's labels (every rank reads the same batch), so labels never travel; only
one ``[B + R, *out_shape]`` tensor per step per group boundary does (``CommStats.p2p_bytes``;
``p2p_wait_seconds`` is the time a rank spent blocked on its messages).

Equality. Each layer's computation is the single-process learner's, operation for operation
(``cell.drive``, ``cell.recur``, ``SigProp._loss_rows`` and ``SigProp.layers_loss`` on its own
rows, the same step weights and counts, the clip and optimizer step of its own groups under the
same schedule: ``SigProp._due``; the rank's optimizers stepped as one merged fused Adam call,
``merged_adam.py``, which gives the numbers of stepping each), so the parameters after any number
of batches are exactly the single-process learner's on the CPU (tests/test_distributed.py checks
bit equality for every cell and the ConvGRU, for per-step updates and for ``every_k``, and a
2-epoch command-line run, resumed half way, against one process). The local losses of a group
are one stacked loss call over its layers, as ``layers_loss`` does over all layers in one
process; the sum's gradient reaching each layer is the same.

Epoch ends. Every rank keeps the whole model (only its own layers move); ``end_epoch`` broadcasts
each group's parameters and optimizer state from its owner, so that afterwards every rank holds
the complete learner: evaluation (``predict``: the whole stack, batches dealt to the ranks) and
rank 0's checkpoint are those of one process, and ``--resume`` starts every rank from it.

Supported: every cell, class or sample target rows, every loss, schedule, step weight and
prediction option, gradient clipping. Refused with the reason: ``--traces`` (its per-layer traces
are updated inside ``SigProp``'s own loop), ``--per-layer-backward`` (a memory option of that loop;
the gradients here are the same without it) and ``--single-optimizer`` (its one optimizer's state
would span the ranks).
"""

from __future__ import annotations

import collections
import math
import time

import torch
import torch.distributed as dist

from . import sigprop_losses as SL
from .errors import ConfigError
from .learner import Learner, tensor_bytes
from .losses import step_targets
from .merged_adam import STATE_MISSING, MergedAdamStep, step_each
from .sigprop import SigProp, StepLoss

#: messages kept in flight before the oldest is waited for (bounds the memory of queued rows)
SEND_WINDOW = 64


def layer_groups(layers: int, ranks: int) -> list[range]:
    """Contiguous layer groups, one per rank, sizes differing by at most one (larger first)."""
    base, extra = divmod(layers, ranks)
    groups, start = [], 0
    for r in range(ranks):
        stop = start + base + (r < extra)
        groups.append(range(start, stop))
        start = stop
    return groups


class LayerParallelSigProp(Learner):
    """A ``SigProp`` learner whose layer group ``world.rank`` runs on this rank (module docstring).

    Everything but ``train_batch`` (prediction, state, options, optimizers) is the wrapped
    learner's, which holds the whole model."""

    name = "sigprop"

    def __init__(self, learner: SigProp, world):
        if not isinstance(learner, SigProp):
            raise ConfigError(f"--layer-parallel runs sigprop only, not {learner.name!r}")
        o = learner.options
        refused = {"traces": "its per-layer eligibility traces are updated inside sigprop's own "
                             "loop", "per_layer_backward": "a memory option of sigprop's own loop "
                             "(the gradients here are the same without it)",
                   "single_optimizer": "its one optimizer's state would span the ranks"}
        for option, why in refused.items():
            if getattr(o, option):
                raise ConfigError(f"--layer-parallel does not take --{option.replace('_', '-')}: "
                                  f"{why}")
        layers = len(learner.model.cells)
        if world.size > layers:
            raise ConfigError(f"--layer-parallel puts one layer group on each rank: {world.size} "
                              f"ranks for {layers} layers; start at most {layers} processes or "
                              "use more --layers")
        super().__init__(learner.model, learner.cfg, learner.options)
        self.learner, self.world = learner, world
        self.groups = layer_groups(layers, world.size)
        self.layers = self.groups[world.rank]
        self.first, self.last = world.rank == 0, world.rank == world.size - 1
        # this rank's optimizers (sigprop keeps one per layer, P in layer 0's, and the readout's)
        self.keys = [f"layer{l}" for l in self.layers] + (["readout"] if self.last else [])
        #: time steps whose rows travel in one message
        self.chunk = world.layer_parallel_chunk
        self._merged, self._merged_why = None, "not planned yet"

    # ------------------------------------------------------------------ the wrapped learner
    def optimizers(self):
        return self.learner.optimizers()

    def own_parameters(self):
        return self.learner.own_parameters()

    def state_dict(self):
        return self.learner.state_dict()

    def load_state_dict(self, state):
        self.learner.load_state_dict(state)

    def gradient(self, x, y):
        return self.learner.gradient(x, y)

    @torch.no_grad()
    def predict(self, x):
        return self.learner.predict(x)

    # ------------------------------------------------------------------ the pipeline
    def _owner_of(self, key: str) -> int:
        if key == "readout":
            return self.world.size - 1
        layer = int(key.removeprefix("layer"))
        return next(r for r, g in enumerate(self.groups) if layer in g)

    def _plan_update(self):
        """This rank's optimizers as one merged fused Adam step where they allow it (the same
        numbers as stepping each, ``merged_adam.py``), as ``SigProp._plan_update`` does for all."""
        optimizers = self.learner.optimizers()
        self._merged, self._merged_why = MergedAdamStep.build([optimizers[k] for k in self.keys])

    def _update(self):
        """``SigProp._update`` for this rank's groups: clip each, then step the optimizers that
        received a gradient (one merged call once their state exists)."""
        learner = self.learner
        groups, optimizers = learner._groups, learner.optimizers()
        for key in self.keys:
            learner.clip(groups[key])
        plan = self._merged
        if plan is not None:
            plan.step([p.grad for p in plan.params])
            for p in plan.params:
                p.grad = None
        else:
            step_each(optimizers[key] for key in self.keys)
            if self._merged_why == STATE_MISSING:  # torch has just created it
                self._plan_update()
        learner.update_count += 1
        self.world.comm.updates += 1

    def _wait(self, request, what: str) -> None:
        """Wait for a point-to-point message (clear error on a dead or stuck peer), counting the
        time blocked (``CommStats.p2p_wait_seconds``)."""
        start = time.perf_counter()
        self.world._collective(what, request.wait)
        self.world.comm.p2p_wait_seconds += time.perf_counter() - start

    def _incoming_shape(self, rows: int, device, dtype) -> tuple:
        """The shape of the rows the rank below sends: layer a−1's output for ``rows`` rows."""
        below = self.model.cells[self.layers.start - 1]
        with torch.no_grad():
            drive = torch.zeros(1, *below.drive_shape, device=device, dtype=dtype)
            out, _, _ = below.recur(drive, below.initial_state(1, device=device, dtype=dtype))
        return (rows, *out.shape[1:])

    def train_batch(self, x, y):
        learner, world, o = self.learner, self.world, self.options
        cells = self.model.cells
        B, T = x.shape[:2]
        y = y.to(x.device)
        # --- labels, exactly as SigProp._run prepares them (every rank has the batch's labels)
        rows = learner._rows(y)
        compact = rows == "sample" and y.dim() == 1
        kind = "class" if rows == "class" or compact else "sample"
        C = learner.num_classes
        R = C if kind == "class" else B
        shift = None
        if compact:
            shift = torch.bincount(y.long(), minlength=C).to(x.dtype).log()
        local_targets = step_targets(y, T, "every" if o.local_steps == "every"
                                     else self.cfg.loss_at)
        readout_targets = step_targets(y, T, self.cfg.loss_at)
        row_t = step_targets(y, T, "every").T.contiguous()
        local_counts = (local_targets >= 0).sum(0).tolist()
        readout_counts = (readout_targets >= 0).sum(0).tolist()
        local_t = local_targets.T.contiguous()
        n = len(self.layers)  # this group's layers share one stacked loss call
        stacked_t = local_t.repeat(1, n) if n > 1 else local_t
        readout_t = readout_targets.T.contiguous()
        class_labels = torch.arange(C, device=x.device)
        frames = learner._frames(x) if self.first else None
        self._plan_update()  # once per batch: the lr schedule changes the optimizers' lr
        state = [cells[l].initial_state(B + R, device=x.device, dtype=x.dtype) for l in self.layers]
        self.state_bytes = (sum(tensor_bytes(s) for s in state) * R // (B + R)
                            + (R * math.prod(cells[0].drive_shape)
                               * learner.projection.element_size() if self.first else 0))

        # --- messages: the rows of K consecutive steps travel together (K = self.chunk); the
        # next message's receive is posted before the steps of the current one run
        K = self.chunk
        incoming = None
        if not self.first:
            shape = self._incoming_shape(B + R, x.device, x.dtype)

            def post(t):
                buf = torch.empty(min(K, T - t), *shape, device=x.device, dtype=x.dtype)
                return buf, world._collective(f"receive of steps {t}+ from rank "
                                              f"{world.rank - 1}", dist.irecv, buf,
                                              src=world.rank - 1, tag=t // K)
            incoming = post(0)
        sends, outgoing = collections.deque(), []

        readout_sum = torch.zeros((), device=x.device, dtype=x.dtype)
        local_sum = torch.zeros((), device=x.device, dtype=x.dtype)
        scored_steps, pending, updates = 0, False, 0
        for t in range(T):
            score_local = local_counts[t] > 0
            score_readout = self.last and readout_counts[t] > 0
            if kind == "class":
                target_labels = class_labels
            else:
                target_labels = row_t[t]
            masks = None
            if score_local and kind == "sample":
                masks = SL.similarity_masks(local_t[t], target_labels)
            weight = 2.0 * (t + 1) / (T + 1) if o.step_weight == "linear" else 1.0
            ctx = StepLoss(kind, local_t[t], masks, weight / max(local_counts[t], 1), shift,
                           stacked_t[t])
            if not self.first and t % K == 0:
                message, request = incoming
                self._wait(request, f"receive of steps {t}+ from rank {world.rank - 1}")
                if t + K < T:
                    incoming = post(t + K)
            total = None
            with torch.set_grad_enabled(score_local):  # no local loss: no graph needed
                if self.first:
                    if kind == "class":
                        target_drive = learner.projection
                    else:  # a step without a label gives its row a zero drive
                        target_drive = learner.projection[row_t[t].clamp_min(0)] * (
                            (row_t[t] >= 0).to(x.dtype).view(-1, *[1] * (
                                learner.projection.dim() - 1)))
                    drive = torch.cat([cells[0].drive(frames[t]), target_drive.to(x.dtype)])
                else:
                    drive = cells[self.layers.start].drive(message[t % K])
                zs = []
                for i, l in enumerate(self.layers):
                    out, new_state, local = cells[l].recur(drive, state[i])
                    state[i] = type(new_state)(*(s.detach() for s in new_state))
                    if score_local:
                        zs.append(learner._loss_rows(local, cells[l]))
                    out = out.detach()  # the layer above sees a constant
                    if l + 1 < self.layers.stop:
                        drive = cells[l + 1].drive(out)
                if zs:
                    total = learner.layers_loss(zs, B, ctx)
                    local_sum = local_sum + total.detach()
            if not self.last:  # on to the next group, K steps per message
                outgoing.append(out)
                if len(outgoing) == K or t == T - 1:
                    message_out = torch.stack(outgoing) if K > 1 else outgoing[0][None]
                    outgoing = []
                    sends.append(world._collective(
                        f"send of steps up to {t} to rank {world.rank + 1}", dist.isend,
                        message_out, dst=world.rank + 1, tag=t // K))
                    world.comm.p2p_messages += 1
                    world.comm.p2p_bytes += message_out.numel() * message_out.element_size()
                    if len(sends) > SEND_WINDOW:
                        self._wait(sends.popleft(), "send of rows")
            if score_readout:
                loss_o = learner.readout_step_loss(out[:B], readout_t[t], readout_counts[t])
                readout_sum = readout_sum + loss_o.detach()
                scored_steps += 1
                total = loss_o if total is None else total + loss_o
            if total is not None:
                total.backward()
                pending = True
            if pending and learner._due(t, T):
                self._update()
                updates += 1
                pending = False
        while sends:
            self._wait(sends.popleft(), "send of rows")
        return {"loss": readout_sum / max(scored_steps, 1),
                "local_loss": local_sum / max(sum(c > 0 for c in local_counts), 1) / n,
                "updates": updates}

    # ------------------------------------------------------------------ the harness's hooks
    def batch_loss(self, value: torch.Tensor) -> float:
        """The readout's loss, which the top group computes, on every rank."""
        self.world._collective("broadcast of the batch loss", dist.broadcast, value,
                               src=self.world.size - 1)
        return float(value.item())

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Every rank := the complete learner: each group's parameters, optimizer state and (from
        the top group) the update count, broadcast from the rank that trained them."""
        world, learner = self.world, self.learner
        groups, optimizers = learner._groups, learner.optimizers()
        for key in groups:
            owner = self._owner_of(key)
            params = [p for p in groups[key]]
            flat = torch.cat([p.detach().reshape(-1).to(world.device) for p in params])
            world._collective(f"broadcast of {key}'s parameters", dist.broadcast, flat, src=owner)
            offset = 0
            for p in params:
                p.copy_(flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
            state = world.broadcast_object(optimizers[key].state_dict() if world.rank == owner
                                           else None, src=owner,
                                           what=f"broadcast of {key}'s optimizer state")
            if world.rank != owner:
                optimizers[key].load_state_dict(state)
        learner.update_count = world.broadcast_object(learner.update_count, src=world.size - 1,
                                                      what="broadcast of the update count")
