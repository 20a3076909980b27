"""Cost of e-prop and forward gradients against BPTT: learning memory vs T and time per step.

    OMP_NUM_THREADS=1 python scripts/fmd_cost_eprop_fwdgrad.py --model lif --hidden 64 \
        --lengths 25,50,100 --tangents 4

For every method and sequence length it prints, as a markdown table:

- ``learning bytes``: the training memory (docs/design.md) — the peak live bytes autograd saves for backward
  (``measure.train_batch_memory``, as the harness measures it: parameters and input excluded)
  plus the learner's own state (``learner.state_bytes``: eligibility vectors, tangents).
- ``alloc peak``: an independent check — the peak of all CPU tensor allocations during one
  ``train_batch`` (the profiler's memory events summed in time order, net of what existed before),
  which also counts temporaries, gradients and optimizer state.
- ``ms/step`` and ``× bptt``: median wall time of ``train_batch`` divided by T, over ``--repeats``
  rounds in which the methods are interleaved (this machine is shared; ratios from one run only).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from temporal_sigprop import LearnerConfig, make_learner, make_model
from temporal_sigprop.measure import train_batch_memory
from temporal_sigprop.measure import allocation_peak

METHODS = {
    "bptt": {},
    "eprop": {},
    "eprop (presynaptic)": {"lif_trace": "presynaptic"},  # lif only: traces per input unit
    "fwdgrad (vmap)": {"vectorize": True},
    "fwdgrad (loop)": {"vectorize": False},
}




def build(method, args, steps):
    torch.manual_seed(args.seed)
    model = make_model(args.model, (steps, args.features), hidden=args.hidden, layers=args.layers,
                       num_classes=args.classes)
    options = dict(METHODS[method])
    name = method.split(" ")[0]
    if name == "fwdgrad":
        options["tangents"] = args.tangents
    learner = make_learner(name, model, LearnerConfig(loss_at=args.loss_at), **options)
    x = torch.randn(args.batch, steps, args.features)
    y = torch.randint(0, args.classes, (args.batch,))
    return model, learner, x, y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="lif")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lengths", default="25,50,100")
    parser.add_argument("--tangents", type=int, default=4)
    parser.add_argument("--loss-at", default="every")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of: " + ", ".join(METHODS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lengths = [int(s) for s in args.lengths.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    if args.model != "lif":  # lif_trace changes nothing for other cells
        methods = [m for m in methods if m != "eprop (presynaptic)"]

    rows = {}
    for steps in lengths:
        setups = {m: build(m, args, steps) for m in methods}
        for method, (model, learner, x, y) in setups.items():
            learner.train_batch(x, y)  # warm-up (lazy initialisation, optimizer state)
            saved, own, _ = train_batch_memory(learner, x, y)
            learning = saved + own
            alloc = allocation_peak(lambda: learner.train_batch(x, y))
            rows[method, steps] = {"learning": learning, "alloc": alloc, "times": []}
        for _ in range(args.repeats):  # interleaved, so that load on the machine hits all alike
            for method, (model, learner, x, y) in setups.items():
                start = time.perf_counter()
                learner.train_batch(x, y)
                rows[method, steps]["times"].append((time.perf_counter() - start) / steps)

    print(f"model {args.model}, hidden {args.hidden}, layers {args.layers}, batch {args.batch}, "
          f"features {args.features}, classes {args.classes}, loss_at {args.loss_at}, "
          f"tangents {args.tangents}, threads {args.threads}, torch {torch.__version__}, CPU")
    print()
    print("| method | T | learning bytes | alloc peak bytes | ms/step (median) | × bptt |")
    print("|---|---|---|---|---|---|")
    for steps in lengths:
        base = statistics.median(rows["bptt", steps]["times"]) if "bptt" in methods else None
        for method in methods:
            r = rows[method, steps]
            ms = statistics.median(r["times"])
            ratio = f"{ms / base:.2f}" if base else "—"
            print(f"| {method} | {steps} | {r['learning']:,} | {r['alloc']:,} | {1e3 * ms:.2f} "
                  f"| {ratio} |")


if __name__ == "__main__":
    main()
