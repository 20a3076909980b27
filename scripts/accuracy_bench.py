"""Accuracy benchmark: one task × model, several methods and loss placements, several seeds.

    python scripts/accuracy_bench.py --task mnist1d --model gru --hidden 128 --layers 2 \
        --methods bptt --loss-at last every --seeds 0 1 2 --epochs 15 --lr 2e-3 --out runs/acc

Every run goes through the shared harness (``temporal_sigprop.train``) and writes its own folder;
the script prints mean ± std over seeds of the test accuracy at the best validation epoch, with
time per step and training memory, and writes the table to OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from temporal_sigprop import train
from temporal_sigprop.cli import parse_key_values
from temporal_sigprop.io import atomic_write_text


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist1d")
    p.add_argument("--model", default="gru")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["bptt"])
    p.add_argument("--loss-at", nargs="+", default=["last", "every"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--options", nargs="*", default=[],
                   help="METHOD:KEY=VALUE,... method options, e.g. tbptt:k=1")
    p.add_argument("--out", default="runs/accuracy")
    args = p.parse_args()

    method_options = {}
    for item in args.options:
        method, _, kv = item.partition(":")
        method_options[method] = parse_key_values(kv, "--options")
    rows = []
    for method in args.methods:
        label = method + "".join(f" {k}={v}" for k, v in method_options.get(method, {}).items())
        for loss_at in args.loss_at:
            results = []
            for seed in args.seeds:
                out = Path(args.out) / f"{method}-{loss_at}-s{seed}"
                summary = train(task=args.task, model=args.model, method=method,
                                hidden=args.hidden, layers=args.layers, epochs=args.epochs,
                                batch_size=args.batch_size, lr=args.lr, seed=seed,
                                loss_at=loss_at, options=method_options.get(method, {}),
                                out=str(out), progress=False)
                results.append(summary)
                print(json.dumps({k: summary[k] for k in (
                    "method", "loss_at", "seed", "best_epoch", "test_accuracy_at_best_val",
                    "time_per_step_ms", "training_memory_bytes")}), flush=True)
            acc = [100 * r["test_accuracy_at_best_val"] for r in results]
            rows.append((label, loss_at, statistics.mean(acc),
                         statistics.stdev(acc) if len(acc) > 1 else 0.0,
                         statistics.mean(r["time_per_step_ms"] for r in results),
                         statistics.mean(r["training_memory_bytes"] for r in results) / 2**20))
    header = (f"{args.task}, {args.model} {args.layers}×{args.hidden}, batch {args.batch_size}, "
              f"{args.epochs} epochs, lr {args.lr}, seeds {args.seeds}\n\n"
              "| method | loss at | test acc. at best val (%) | time/step (ms) | training memory (MiB) |\n"
              "|---|---|---|---|---|\n")
    table = header + "".join(f"| {m} | {la} | {a:.1f} ± {s:.1f} | {t:.2f} | {mem:.2f} |\n"
                             for m, la, a, s, t, mem in rows)
    print(table)
    atomic_write_text(Path(args.out) / "table.md", table)


if __name__ == "__main__":
    main()
