"""Temporal sigprop study: run option variants through the shared harness and print a table.

    OMP_NUM_THREADS=1 python scripts/sigprop_study.py --variants default,sequence --epochs 5
    OMP_NUM_THREADS=1 python scripts/sigprop_study.py --list
    OMP_NUM_THREADS=1 python scripts/sigprop_study.py --explore --variants every10-sample --epochs 40
    OMP_NUM_THREADS=1 python scripts/sigprop_study.py --bench --variants default,single-opt

Every variant is one ``temporal_sigprop.train(...)`` call (task, model, width and depth shared;
``--task``/``--model``/``--hidden``/``--layers``/``--epochs``/``--seeds``/``--loss-at``/``--lr``
set them), written under ``--out/<variant>-s<seed>/``; the table lists test accuracy per epoch
(from ``metrics.jsonl``), the final and best-validation test accuracy, and time per step.
``--explore`` is the quick loop used while exploring (no harness; both predictions, readout and
nearest class row, after every epoch); ``--bench`` times a step against BPTT (interleaved
repeats) and measures training memory at three sequence lengths. The figures quoted in
``benchmarks/sigprop.md`` come from this script; the exact command is printed at the top of its
output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from temporal_sigprop.harness import LR_SCHEDULES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

# variant name -> (sigprop options, overrides of the harness config)
VARIANTS: dict[str, tuple[dict, dict]] = {
    "default": ({}, {}),
    # the best found on MNIST-1D (benchmarks/sigprop.md): 4 updates per 40-step sequence
    "every10-sample": ({"schedule": "every_k", "update_k": 10, "target_rows": "sample"},
                       {"lr": 2e-3}),
    "every10-class": ({"schedule": "every_k", "update_k": 10, "target_rows": "class"},
                      {"lr": 2e-3}),
    "every10-sample-wd": ({"schedule": "every_k", "update_k": 10, "target_rows": "sample"},
                          {"lr": 2e-3, "weight_decay": 0.01}),
    "every10-sample-nearest": ({"schedule": "every_k", "update_k": 10, "target_rows": "sample",
                                "prediction": "nearest"}, {"lr": 2e-3}),
    "every10-sample-norm": ({"schedule": "every_k", "update_k": 10, "target_rows": "sample",
                             "normalize": True, "temperature": 0.1}, {"lr": 2e-3}),
    "norm-tau0.1": ({"normalize": True, "temperature": 0.1}, {}),
    "norm-tau0.3": ({"normalize": True, "temperature": 0.3}, {}),
    "norm-tau1": ({"normalize": True, "temperature": 1.0}, {}),
    "tau3": ({"temperature": 3.0}, {}),
    "sequence": ({"schedule": "sequence"}, {}),
    "sequence-sample-lr3e-3": ({"schedule": "sequence", "target_rows": "sample"}, {"lr": 3e-3}),
    "every20-sample-lr3e-3": ({"schedule": "every_k", "update_k": 20, "target_rows": "sample"},
                              {"lr": 3e-3}),
    "linear-weight": ({"step_weight": "linear"}, {}),
    "sequence-lr3e-3": ({"schedule": "sequence"}, {"lr": 3e-3}),
    "every10": ({"schedule": "every_k", "update_k": 10}, {}),
    "lr3e-4": ({}, {"lr": 3e-4}),
    "lr3e-3": ({}, {"lr": 3e-3}),
    "fixed-P": ({"projection": "fixed"}, {}),
    "P-scale0.1": ({"projection_scale": 0.1}, {}),
    "sample-rows": ({"target_rows": "sample"}, {}),
    "nearest": ({"prediction": "nearest"}, {}),
    "placement": ({"local_steps": "placement"}, {}),
    "loss-every": ({}, {"loss_at": "every"}),
    "cosine": ({"loss": "cosine", "detach_target": True, "projection": "fixed"}, {}),
    "l2": ({"loss": "l2", "detach_target": True, "projection": "fixed"}, {}),
    "traces": ({"traces": True}, {}),
    "traces-placement": ({"traces": True, "local_steps": "placement"}, {}),
    "single-opt": ({"single_optimizer": True}, {}),
    "foreach-opt": ({"fused_optimizer": False}, {}),
    "per-layer-backward": ({"per_layer_backward": True}, {}),
}


def run_variant(name, args, seed):
    from temporal_sigprop import train

    options, overrides = VARIANTS[name]
    out = Path(args.out) / f"{name}-s{seed}"
    cfg = dict(task=args.task, model=args.model, method="sigprop", hidden=args.hidden,
               layers=args.layers, epochs=args.epochs, seed=seed, loss_at=args.loss_at,
               lr=args.lr, batch_size=args.batch_size, threads=args.threads,
               weight_decay=args.weight_decay, lr_schedule=args.lr_schedule,
               max_batches=args.max_batches, out=str(out), progress=False,
               options={**options, **json.loads(args.options)})
    cfg.update(overrides)
    summary = train(**cfg)
    curve = [json.loads(line)["test_accuracy"]
             for line in (out / "metrics.jsonl").read_text().splitlines()]
    return summary, curve


def explore(args, name, seed):
    """The exploration loop (no harness): train on the task's training split, and after every
    epoch print the test accuracy at the last step with *both* predictions (readout and nearest
    class row), so one run shows both. ``--options`` JSON is added to the variant's options."""
    import time

    import torch

    from tasks import get_task
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    from temporal_sigprop.sigprop import SigProp

    torch.set_num_threads(args.threads)
    options, overrides = VARIANTS[name]
    options = {**options, **json.loads(args.options)}
    lr = overrides.get("lr", args.lr)
    task = get_task(args.task, seed=seed)
    x_train, y_train = task.train.tensors
    x_test, y_test = task.test.tensors
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    model = make_model(args.model, task.input_shape, args.hidden, args.layers, task.num_classes)
    decay = args.weight_decay if args.weight_decay is not None \
        else SigProp.recommended["weight_decay"]
    cfg = LearnerConfig(lr=lr, loss_at=args.loss_at,
                        weight_decay=overrides.get("weight_decay", decay))
    learner = make_learner("sigprop", model, cfg, **options)
    start, curve = time.perf_counter(), []
    for epoch in range(1, args.epochs + 1):
        perm = torch.randperm(len(x_train), generator=order)
        for i in range(0, len(x_train), args.batch_size):
            idx = perm[i:i + args.batch_size]
            learner.train_batch(x_train[idx], y_train[idx])
        accs = {}
        for mode in ("readout", "nearest"):
            keep, learner.options.prediction = learner.options.prediction, mode
            logits = learner.predict(x_test)
            learner.options.prediction = keep
            accs[mode] = (logits[:, -1].argmax(-1) == y_test).float().mean().item()
        curve.append(accs)
        print(f"  {name} seed {seed} epoch {epoch}: test readout {accs['readout']:.3f} "
              f"nearest {accs['nearest']:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return curve


def bench(args):
    """Time per step (interleaved repeats, median) of BPTT and sigprop variants on one model and
    batch, and training memory (saved-tensor peak + learner state) at three sequence lengths."""
    import time

    import torch

    from temporal_sigprop import LearnerConfig, make_learner, make_model
    from temporal_sigprop.measure import SavedTensorMeter

    torch.set_num_threads(args.threads)
    steps, features, batch = args.bench_steps, 1, args.batch_size
    names = ["bptt"] + args.variants.split(",")
    torch.manual_seed(0)
    x = torch.randn(batch, steps, features)
    y = torch.randint(0, 10, (batch,))
    learners = {}
    for name in names:
        model = make_model(args.model, (steps, features), args.hidden, args.layers, 10)
        cfg = LearnerConfig(lr=args.lr, loss_at=args.loss_at)
        learners[name] = (make_learner("bptt", model, cfg) if name == "bptt" else
                          make_learner("sigprop", model, cfg, **VARIANTS[name][0]))
    times = {name: [] for name in names}
    for learner in learners.values():  # warm-up
        learner.train_batch(x, y)
    for _ in range(args.repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.train_batch(x, y)
            times[name].append((time.perf_counter() - start) / steps * 1e3)
    base = statistics.median(times["bptt"])
    print(f"\n{args.model}-{args.hidden}x{args.layers}, B={batch}, T={steps}, threads={args.threads}, "
          f"{args.repeats} interleaved repeats (median ms per time step)")
    print("| learner | ms/step | ratio to bptt |\n|---|---|---|")
    for name in names:
        med = statistics.median(times[name])
        print(f"| {name} | {med:.3f} | {med / base:.2f} |")
    print("\n| learner | " + " | ".join(f"memory T={t}" for t in args.memory_steps) + " | ratio |")
    print("|---|" + "---|" * (len(args.memory_steps) + 1))
    for name in names:
        mem = []
        for t in args.memory_steps:
            torch.manual_seed(0)
            model = make_model(args.model, (t, features), args.hidden, args.layers, 10)
            cfg = LearnerConfig(lr=args.lr, loss_at=args.loss_at)
            learner = (make_learner("bptt", model, cfg) if name == "bptt" else
                       make_learner("sigprop", model, cfg, **VARIANTS[name][0]))
            xt = torch.randn(8, t, features)
            with SavedTensorMeter(exclude=[*model.parameters(), *learner.own_parameters(), xt]) as m:
                learner.train_batch(xt, torch.randint(0, 10, (8,)))
            mem.append(m.peak + learner.state_bytes)
        print(f"| {name} | " + " | ".join(str(v) for v in mem) + f" | {max(mem) / min(mem):.2f} |")


def _ms(value) -> str:
    return "—" if value is None else f"{value:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="default")
    parser.add_argument("--task", default="mnist1d")
    parser.add_argument("--model", default="gru")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--loss-at", default="last")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--weight-decay", type=float, default=None,
                        help="default: sigprop's recommendation (SigProp.recommended)")
    parser.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                        help="harness runs only (default: sigprop's recommendation); the "
                             "--explore loop keeps the lr constant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-batches", type=int, default=0)
    parser.add_argument("--out", default="runs/sigprop_study")
    parser.add_argument("--list", action="store_true", help="list the variants and exit")
    parser.add_argument("--explore", action="store_true",
                        help="own loop (no harness), both predictions after every epoch")
    parser.add_argument("--options", default="{}", help="JSON added to the variant's options (harness runs and --explore)")
    parser.add_argument("--bench", action="store_true",
                        help="time per step vs BPTT and memory vs T instead of training")
    parser.add_argument("--bench-steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--memory-steps", type=lambda s: [int(v) for v in s.split(",")],
                        default=[250, 1000, 4000])
    args = parser.parse_args(argv)
    if args.list:
        for name, (options, overrides) in VARIANTS.items():
            print(f"{name:20s} options={options} overrides={overrides}")
        return 0
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.bench:
        print("command: OMP_NUM_THREADS=%s python %s" % (os.environ.get("OMP_NUM_THREADS", "?"),
                                                         " ".join(sys.argv)))
        bench(args)
        return 0
    print("command: OMP_NUM_THREADS=%s python %s" % (os.environ.get("OMP_NUM_THREADS", "?"),
                                                     " ".join(sys.argv)), flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.explore:
        for name in args.variants.split(","):
            for seed in seeds:
                explore(args, name, seed)
        return 0
    rows = []
    for name in args.variants.split(","):
        finals, bests, curves, times = [], [], [], []
        for seed in seeds:
            summary, curve = run_variant(name, args, seed)
            finals.append(summary["test_accuracy"])
            bests.append(summary["test_accuracy_at_best_val"])
            curves.append(curve)
            if summary["time_per_step_ms"] is not None:  # None: no batch was timed (tiny runs)
                times.append(summary["time_per_step_ms"])
            print(f"  {name} seed {seed}: test per epoch "
                  + " ".join(f"{a:.3f}" for a in curve)
                  + f" | final {summary['test_accuracy']:.3f} | at best val "
                  f"{summary['test_accuracy_at_best_val']:.3f} | {_ms(summary['time_per_step_ms'])} "
                  f"ms/step | memory {summary['training_memory_bytes']} B", flush=True)
        rows.append((name, finals, bests, times))

    def fmt(v):
        return f"{statistics.mean(v):.3f}" + (f" ± {statistics.stdev(v):.3f}" if len(v) > 1 else "")

    print("\n| variant | final test acc | test acc at best val | ms/step |")
    print("|---|---|---|---|")
    for name, finals, bests, times in rows:
        print(f"| {name} | {fmt(finals)} | {fmt(bests)} | "
              f"{_ms(statistics.mean(times) if times else None)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
