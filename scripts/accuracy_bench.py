"""Accuracy benchmark: one task, several models × methods × loss placements, several seeds.

    python scripts/accuracy_bench.py --task mnist1d --models gru lstm --hidden 128 --layers 2 \
        --methods bptt tbptt sigprop --options tbptt:k=1 --loss-at last --seeds 0 1 2 \
        --epochs 40 --lr 1e-3 --out runs/acc

Every run goes through the shared harness (``temporal_sigprop.train``) and writes its own folder
(a finished run is read back, not rerun, so an interrupted bench resumes); the script prints
mean ± std over seeds of the test accuracy at the best validation epoch and at the last epoch,
with time per step and training memory, and writes the table to OUT/table.md. Weight decay and
the lr schedule are each method's recommendation unless given.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from temporal_sigprop import train
from temporal_sigprop.cli import parse_key_values
from temporal_sigprop.harness import LR_SCHEDULES
from temporal_sigprop.io import atomic_write_text


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mnist1d")
    p.add_argument("--models", "--model", nargs="+", default=["gru"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--methods", nargs="+", default=["bptt"])
    p.add_argument("--loss-at", nargs="+", default=["last", "every"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="for every method (default: each method's recommendation)")
    p.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                   help="for every method (default: each method's recommendation)")
    p.add_argument("--options", nargs="*", default=[],
                   help="METHOD:KEY=VALUE,... method options, e.g. tbptt:k=1")
    p.add_argument("--out", default="runs/accuracy")
    args = p.parse_args()

    method_options = {}
    for item in args.options:
        method, _, kv = item.partition(":")
        method_options[method] = parse_key_values(kv, "--options")
    rows = []
    for model in args.models:
        for method in args.methods:
            options = method_options.get(method, {})
            label = method + "".join(f" {k}={v}" for k, v in options.items())
            for loss_at in args.loss_at:
                results = [_run(args, model, method, options, loss_at, seed) for seed in args.seeds]
                best = [100 * r["test_accuracy_at_best_val"] for r in results]
                last = [100 * r["test_accuracy"] for r in results]
                rows.append((model, label, loss_at, _mean_std(best), _mean_std(last),
                             statistics.mean(r["time_per_step_ms"] for r in results),
                             statistics.mean(r["training_memory_bytes"] for r in results) / 2**20,
                             results[0]["lr_schedule"], results[0]["weight_decay"]))
    header = (f"{args.task}, {args.layers}×{args.hidden}, batch {args.batch_size}, "
              f"{args.epochs} epochs, lr {args.lr}, seeds {args.seeds}\n\n"
              "| model | method | loss at | test acc. at best val (%) | final test acc. (%) | "
              "time/step (ms) | training memory (MiB) | lr schedule | weight decay |\n"
              "|---|---|---|---|---|---|---|---|---|\n")
    table = header + "".join(
        f"| {mo} | {m} | {la} | {b} | {f} | {t:.2f} | {mem:.2f} | {sch} | {wd} |\n"
        for mo, m, la, b, f, t, mem, sch, wd in rows)
    print(table)
    atomic_write_text(Path(args.out) / "table.md", table)


def _run(args, model, method, options, loss_at, seed) -> dict:
    out = Path(args.out) / f"{model}-{method}-{loss_at}-s{seed}"
    if (out / "summary.json").exists():  # finished earlier: read back, not rerun
        summary = json.loads((out / "summary.json").read_text())
    else:
        summary = train(task=args.task, model=model, method=method, hidden=args.hidden,
                        layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
                        lr=args.lr, weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
                        seed=seed, loss_at=loss_at, options=options, out=str(out),
                        progress=False, resume=True)
    print(json.dumps({k: summary[k] for k in (
        "model", "method", "loss_at", "seed", "best_epoch", "test_accuracy_at_best_val",
        "test_accuracy", "time_per_step_ms", "training_memory_bytes")}), flush=True)
    return summary


def _mean_std(values) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


if __name__ == "__main__":
    main()
