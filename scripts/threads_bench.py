"""Intra-op threads for the per-step loop: time one training batch with 1 and 2 threads.

    python scripts/threads_bench.py [--methods bptt sigprop] [--hidden 128] [--batch 100] [--steps 40]

Prints ms per time step (fastest of --repeats interleaved rounds) for each method and thread count,
and the 2-thread/1-thread ratio measured in the same run. The figures in benchmarks/threads.md
come from this script.
"""

from __future__ import annotations

import argparse
import time

import torch

from temporal_sigprop import LearnerConfig, make_learner, make_model


def time_batch(method, threads, args, x, y, model_state):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = make_model("gru", (args.steps, 1), hidden=args.hidden, layers=args.layers,
                       num_classes=10)
    model.load_state_dict(model_state)
    learner = make_learner(method, model, LearnerConfig(lr=1e-3, loss_at="every"))
    learner.train_batch(x, y)  # warm-up
    start = time.perf_counter()
    learner.train_batch(x, y)
    return (time.perf_counter() - start) * 1000 / args.steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["bptt", "sigprop"])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    torch.manual_seed(0)
    x, y = torch.randn(args.batch, args.steps, 1), torch.randint(0, 10, (args.batch,))
    state = make_model("gru", (args.steps, 1), hidden=args.hidden, layers=args.layers,
                       num_classes=10).state_dict()
    best = {(m, t): float("inf") for m in args.methods for t in (1, 2)}
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        for m in args.methods:
            for t in (1, 2):
                best[m, t] = min(best[m, t], time_batch(m, t, args, x, y, state))
    print(f"GRU-{args.hidden} × {args.layers} layers, batch {args.batch}, T={args.steps}, "
          f"torch {torch.__version__}, fastest of {args.repeats}")
    print(f"{'method':<10} {'1 thread ms/step':>17} {'2 threads ms/step':>18} {'2t / 1t':>8}")
    for m in args.methods:
        print(f"{m:<10} {best[m, 1]:>17.3f} {best[m, 2]:>18.3f} {best[m, 2] / best[m, 1]:>8.2f}")


if __name__ == "__main__":
    main()
