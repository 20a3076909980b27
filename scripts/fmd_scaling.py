"""How exact RTRL's memory and time grow with the hidden size, beside SnAp-1 and BPTT.

    OMP_NUM_THREADS=1 python scripts/fmd_scaling.py --cells rnn gru --sizes 8 16 32 64 128 \
        --batch 4 --steps 20

For one-layer models of hidden size n (input features ``--features``, loss at every step) and each
method it measures one batch of random data:

- ``learn MiB``: the training memory (docs/design.md), with the harness's own code
  (``measure.train_batch_memory``): peak live bytes autograd saves for backward (parameters and
  input excluded) + ``learner.state_bytes`` (RTRL: influence B·n·p + the per-step Jacobians
  ∂f/∂θ and ∂f/∂s that live beside it + state; SnAp-1: traces B·F·p + one parameter's immediate
  Jacobian + state).
- ``alloc MiB``: an independent check — the peak of all CPU tensor allocations during one
  ``train_batch`` (profiler memory events in time order, net of what was live before); it also
  counts temporaries, gradients and optimizer state.
- ``MFLOP/step``: counted, not timed: matmul-type FLOPs from torch's flop registry plus one per
  output element of every pointwise op (torch's own counter sees only matmuls, which would leave
  out SnAp-1's elementwise trace update).
- ``ms/step``: the fastest of ``--reps`` rounds (in which the methods are interleaved) of
  ``train_batch`` wall time / T — on a shared machine other jobs only ever add time; the medians
  go to stderr. Compare within one run.

Then the slope of log(cost) against log(n), fitted over all sizes and over the largest three.
Expected asymptotics (p ≈ g·n² parameters): RTRL memory n³ and time n⁴; SnAp-1 memory and time n²;
BPTT memory n (B·T·n saved activations), time n². RTRL is skipped at a size where one batch is
predicted (from the previous size, × 2^4.5) to take longer than ``--rtrl-max-seconds``.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

from temporal_sigprop.errors import IncompatibleError
from temporal_sigprop.learner import LearnerConfig
from temporal_sigprop.measure import train_batch_memory
from temporal_sigprop.models import make_model
from temporal_sigprop.registry import make_learner
from temporal_sigprop.measure import allocation_peak

METHODS = ("bptt", "snap1", "rtrl")
MiB = 2 ** 20


class FlopCount(TorchDispatchMode):
    """Matmul-type FLOPs (torch's flop registry) + 1 per output element of each pointwise op."""

    def __init__(self):
        super().__init__()
        self.matmul = 0
        self.pointwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        counter = flop_registry.get(packet)
        if counter is None and packet.__name__.endswith("_"):  # in-place (baddbmm_, addmm_...)
            counter = flop_registry.get(getattr(torch.ops.aten, packet.__name__[:-1], None))
        if counter is not None:
            def shape(t):
                return t.shape if isinstance(t, torch.Tensor) else t
            self.matmul += counter(*tree_map(shape, args), **tree_map(shape, kwargs),
                                   out_val=tree_map(shape, out))
        elif torch.Tag.pointwise in func.tags and isinstance(out, torch.Tensor):
            self.pointwise += out.numel()
        return out

    @property
    def total(self) -> int:
        return self.matmul + self.pointwise




def slope(sizes, values) -> float:
    pts = [(math.log(n), math.log(v)) for n, v in zip(sizes, values) if v and v > 0]
    if len(pts) < 2:
        return float("nan")
    xs, ys = zip(*pts)
    return float(np.polyfit(xs, ys, 1)[0])


def measure_cell(cell, args):
    rows = {}
    rtrl_last_seconds = None
    for n in args.sizes:
        torch.manual_seed(args.seed)
        base = make_model(cell, (args.steps, args.features), hidden=n, layers=1,
                          num_classes=args.classes)
        x = torch.randn(args.batch, args.steps, args.features)
        y = torch.randint(0, args.classes, (args.batch,))
        learners, row = {}, {}
        for method in METHODS:
            if method == "rtrl" and rtrl_last_seconds is not None \
                    and rtrl_last_seconds * 2 ** 4.5 > args.rtrl_max_seconds:
                row[method] = {"skip": f"predicted {rtrl_last_seconds * 2 ** 4.5:.0f} s/batch "
                                       f"> --rtrl-max-seconds {args.rtrl_max_seconds:g}"}
                continue
            model = copy.deepcopy(base)
            try:
                learner = make_learner(method, model, LearnerConfig(loss_at="every"))
            except IncompatibleError as e:
                row[method] = {"skip": str(e)}
                continue
            learner.train_batch(x, y)  # warm-up
            saved, state, _ = train_batch_memory(learner, x, y)
            with FlopCount() as fc:
                learner.train_batch(x, y)
            alloc = allocation_peak(lambda: learner.train_batch(x, y))
            learners[method] = learner
            row[method] = {"learn": saved + state, "saved": saved, "state": state,
                           "alloc": alloc, "flops": fc.total / args.steps, "times": []}
        for _ in range(args.reps):  # interleaved rounds
            for method, learner in learners.items():
                start = time.perf_counter()
                learner.train_batch(x, y)
                row[method]["times"].append(time.perf_counter() - start)
        for method in learners:
            # min over rounds: other jobs on a shared machine only ever add time
            row[method]["ms"] = min(row[method]["times"]) / args.steps * 1e3
            row[method]["ms_median"] = statistics.median(row[method]["times"]) / args.steps * 1e3
        if "rtrl" in learners:
            rtrl_last_seconds = min(row["rtrl"]["times"])
        rows[n] = row
        print(f"  {cell} n={n}: " + ", ".join(
            f"{m} {r['ms']:.2f} (median {r['ms_median']:.2f}) ms/step" if "ms" in r
            else f"{m} skipped" for m, r in row.items()),
            file=sys.stderr, flush=True)
    return rows


def report(cell, rows, args):
    sizes = list(rows)
    p = {n: sum(q.numel() for q in make_model(cell, (args.steps, args.features), hidden=n,
                                              layers=1, num_classes=args.classes)
                .cells.parameters()) for n in sizes}
    print(f"\n### {cell}, 1 layer, B={args.batch}, T={args.steps}, {args.features} input "
          f"features, loss at every step, float32, {torch.get_num_threads()} thread(s)\n")
    head = ["n", "p (stack)"]
    for what in ("learn MiB", "alloc MiB", "MFLOP/step", "ms/step"):
        head += [f"{m} {what}" for m in METHODS]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))

    def cell_value(n, m, key, scale=1.0, fmt="{:.3g}"):
        r = rows[n][m]
        return "skipped" if "skip" in r else fmt.format(r[key] / scale)

    for n in sizes:
        vals = [str(n), str(p[n])]
        vals += [cell_value(n, m, "learn", MiB) for m in METHODS]
        vals += [cell_value(n, m, "alloc", MiB) for m in METHODS]
        vals += [cell_value(n, m, "flops", 1e6) for m in METHODS]
        vals += [cell_value(n, m, "ms", 1.0, "{:.2f}") for m in METHODS]
        print("| " + " | ".join(vals) + " |")
    skipped = {(n, m): rows[n][m]["skip"] for n in sizes for m in METHODS if "skip" in rows[n][m]}
    for (n, m), why in skipped.items():
        print(f"\n{m} at n={n} skipped: {why}")
    print("\nlog-log slope of cost against n (all sizes / largest three measured):\n")
    print("| method | learn bytes | alloc bytes | FLOPs | time |")
    print("|---|---|---|---|---|")
    for m in METHODS:
        ok = [n for n in sizes if "skip" not in rows[n][m]]
        fits = []
        for key in ("learn", "alloc", "flops", "ms"):
            vals = [rows[n][m][key] for n in ok]
            fits.append(f"{slope(ok, vals):.2f} / {slope(ok[-3:], vals[-3:]):.2f}")
        print(f"| {m} | " + " | ".join(fits) + " |")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cells", nargs="+", default=["rnn", "gru"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rtrl-max-seconds", type=float, default=120.0,
                    help="skip RTRL at a size predicted to take longer than this per batch")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, cpu, threads={torch.get_num_threads()}; command: "
          f"python scripts/fmd_scaling.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    for cell in args.cells:
        report(cell, measure_cell(cell, args), args)


if __name__ == "__main__":
    main()
