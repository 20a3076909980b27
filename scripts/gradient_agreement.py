"""How close each method's gradient is to BPTT's, on one batch of a real task.

    python scripts/gradient_agreement.py --task uea:JapaneseVowels --model gru --hidden 32 \
        --layers 1 2 --methods snap1 tbptt eprop --loss-at last --batch 32

Every learner starts from the same weights (the model is built under one seed for each method)
and computes ``learner.gradient(x, y)`` on the same first ``--batch`` training sequences; the
parameters are not changed. For each method and depth it prints the relative L2 distance
``|g - g_bptt| / |g_bptt|`` over all parameters and their cosine. An approximation that equals
BPTT here (distance ~0) computes BPTT's gradient; one far from it but learning as well is a
finding about the task, not the method. Sigprop is left out by default: its gradient is of local
losses, not of the readout loss, so a distance to BPTT says nothing about its correctness.
"""

from __future__ import annotations

import argparse

import torch

from temporal_sigprop import LearnerConfig, get_task, make_learner, make_model
from temporal_sigprop.errors import IncompatibleError
from temporal_sigprop.names import LOSS_PLACEMENTS


def agreement(reference: dict, other: dict) -> tuple[float, float]:
    """(relative L2 distance, cosine) between two gradients given as ``{name: tensor}``."""
    names = sorted(reference)
    missing = [n for n in names if n not in other]
    if missing:
        raise ValueError(f"gradient lacks parameters {missing[:3]} that BPTT's has")
    ref = torch.cat([reference[n].reshape(-1) for n in names]).double()
    got = torch.cat([other[n].reshape(-1) for n in names]).double()
    norm = ref.norm()
    if norm == 0:
        raise ValueError("BPTT's gradient is zero on this batch; pick another batch or task")
    cosine = float(ref @ got / (norm * got.norm())) if got.norm() > 0 else 0.0
    return float((got - ref).norm() / norm), cosine


def gradients(task, model_name: str, methods: list[str], *, hidden: int, layers: int,
              loss_at: str, batch: int, seed: int) -> dict[str, dict]:
    """Each method's gradient on the task's first ``batch`` training sequences, same weights
    (a method that cannot train the model gets the reason, a string, instead)."""
    x, y = task.train.tensors
    x, y = x[:batch], y[:batch]
    out = {}
    for method in ["bptt", *[m for m in methods if m != "bptt"]]:
        torch.manual_seed(seed)
        model = make_model(model_name, task.input_shape, hidden=hidden, layers=layers,
                           num_classes=task.num_classes)
        try:
            learner = make_learner(method, model, LearnerConfig(loss_at=loss_at))
        except IncompatibleError as err:  # e.g. e-prop has no GRU form: say so, go on
            out[method] = str(err)
            continue
        out[method] = learner.gradient(x, y)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="uea:JapaneseVowels", help="task name (tsp tasks)")
    parser.add_argument("--model", default="gru", help="model name")
    parser.add_argument("--methods", nargs="+", default=["snap1", "tbptt", "eprop"],
                        help="methods compared with BPTT")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units per layer")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="depths to try")
    parser.add_argument("--loss-at", default="last", choices=LOSS_PLACEMENTS,
                        help="where the readout loss is taken")
    parser.add_argument("--batch", type=int, default=32, help="training sequences in the batch")
    parser.add_argument("--seed", type=int, default=0, help="seed of the task split and weights")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task = get_task(args.task, seed=args.seed)
    print(f"task {args.task}, model {args.model}, hidden {args.hidden}, loss at {args.loss_at}, "
          f"batch {args.batch}, seed {args.seed}")
    print("| layers | method | rel. L2 distance to BPTT | cosine |")
    print("|---|---|---|---|")
    for layers in args.layers:
        grads = gradients(task, args.model, args.methods, hidden=args.hidden, layers=layers,
                          loss_at=args.loss_at, batch=args.batch, seed=args.seed)
        for method in args.methods:
            if method == "bptt":
                continue
            if isinstance(grads[method], str):
                print(f"| {layers} | {method} | not run: {grads[method]} | |")
                continue
            dist, cos = agreement(grads["bptt"], grads[method])
            print(f"| {layers} | {method} | {dist:.4f} | {cos:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
