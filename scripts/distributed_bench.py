"""Data-parallel and layer-parallel training on the CPU (gloo): time, accuracy, bytes sent.

    python scripts/distributed_bench.py dp      # 1 process vs 2 ranks: all-reduce vs local SGD
    python scripts/distributed_bench.py lp      # layer-parallel sigprop: 1 vs 2 ranks, T = 1000
    python scripts/distributed_bench.py lp --steps 200 --repeats 1     # a quick look

``dp`` runs the real command line (``tsp train``, under ``torchrun --nproc-per-node 2`` for the
2-rank rows) on MNIST-1D and prints, per run, the test accuracy at the best validation epoch, the
time per step (rank 0's timed training batches / T), the wall time of the whole command, the
updates and the bytes rank 0 put into all-reduces.

``lp`` times one training batch of a 4-layer GRU stack (sigprop, every-step updates) at T steps:
``SigProp.train_batch`` in one process, the layer-parallel executor in one process (one group:
the same code without communication) and under 2 ranks (layers 0-1 | 2-3), and prints the
speed-up of 2 ranks over the 1-rank executor beside the ideal pipeline bound
G·T / (T + G − 1), and the bytes sent per step.

Every rank uses one intra-op thread. Speed figures are ratios within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


# ---------------------------------------------------------------------------- data parallel
def run_dp(args) -> None:
    common = ["--task", "mnist1d", "--model", "gru", "--hidden", str(args.hidden), "--layers", "2",
              "--epochs", str(args.epochs), "--batch-size", "100", "--seed", str(args.seed),
              "--threads", "1", "--no-progress"]
    runs = []
    for method in args.methods:
        runs.append((method, "1 process", []))
        runs.append((method, "2 ranks allreduce", ["--dp-mode", "allreduce"]))
        for k in args.local_sgd_every:
            runs.append((method, f"2 ranks local_sgd K={k}",
                         ["--dp-mode", "local_sgd", "--local-sgd-every", str(k)]))
    print(f"{'method':8} {'run':26} {'test@best val':>13} {'ms/step':>8} {'wall s':>7} "
          f"{'updates':>8} {'MiB all-reduced':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (method, label, flags) in enumerate(runs):
            out = Path(tmp) / f"run{i}"
            train = ["-m", "temporal_sigprop", "train", "--method", method, *common, *flags,
                     "--out", str(out)]
            if label == "1 process":
                command = [sys.executable, *train]
            else:
                command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
                           *train]
            start = time.perf_counter()
            done = subprocess.run(command, check=False, env=env(), capture_output=True,
                                  text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                print(f"{method:8} {label:26} failed:\n{done.stderr[-2000:]}")
                continue
            s = json.loads((out / "summary.json").read_text())
            comm = s.get("communication", {})
            mib = comm.get("allreduce_bytes", 0) / 2**20
            updates = comm.get("updates", "")
            print(f"{method:8} {label:26} {100 * s['test_accuracy_at_best_val']:12.1f}% "
                  f"{s['time_per_step_ms']:8.3f} {wall:7.1f} {updates:>8} {mib:16.1f}",
                  flush=True)


# ---------------------------------------------------------------------------- layer parallel
def _lp_learner(args):
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    torch.manual_seed(0)
    model = make_model("gru", (args.steps, args.features), hidden=args.hidden, layers=args.layers,
                       num_classes=10)
    return make_learner("sigprop", model, LearnerConfig(lr=1e-3))


def _lp_data(args):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.features, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    return x, y


def _time(fn, repeats: int) -> float:
    fn()  # warm-up: optimizer state, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def lp_worker(args) -> None:
    """One rank of the 2-rank run (started by torchrun): prints rank 0's time as JSON."""
    import datetime

    import torch.distributed as dist

    from temporal_sigprop.distributed import World
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), backend="gloo",
                  timeout=600, layer_parallel=True, layer_parallel_chunk=args.chunk,
                  owns_group=True)
    learner = _lp_learner(args)
    x, y = _lp_data(args)
    executor = world.attach(learner, x, argparse.Namespace(loss_at="last", batch_size=args.batch,
                                                           max_batches=0))

    def batch():
        dist.barrier()  # both ranks start the batch together
        executor.train_batch(x, y)
        dist.barrier()

    seconds = _time(batch, args.repeats)
    if world.rank == 0:
        print(json.dumps({"seconds": seconds, "p2p_bytes": world.comm.p2p_bytes,
                          "p2p_messages": world.comm.p2p_messages}), flush=True)
    world.close()


def run_lp(args) -> None:
    from temporal_sigprop.distributed import World
    from temporal_sigprop.layer_parallel import LayerParallelSigProp
    torch.set_num_threads(1)
    x, y = _lp_data(args)
    learner = _lp_learner(args)
    plain = _time(lambda: learner.train_batch(x, y), args.repeats)
    one_rank = LayerParallelSigProp(_lp_learner(args), World())
    single = _time(lambda: one_rank.train_batch(x, y), args.repeats)
    T, G = args.steps, 2
    calls = args.repeats + 1
    print(f"sigprop {args.layers}×GRU-{args.hidden}, batch {args.batch}, T = {T}, every-step "
          f"updates, best of {args.repeats} batches (ms per batch, ms per step)")
    print(f"  SigProp.train_batch, 1 process         {1e3 * plain:9.1f} {1e3 * plain / T:8.3f}")
    print(f"  layer-parallel executor, 1 rank        {1e3 * single:9.1f} {1e3 * single / T:8.3f}")
    for chunk in args.chunks:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), __file__,
                   "lp-worker", "--steps", str(args.steps), "--hidden", str(args.hidden),
                   "--layers", str(args.layers), "--batch", str(args.batch), "--features",
                   str(args.features), "--repeats", str(args.repeats), "--chunk", str(chunk)]
        done = subprocess.run(command, check=False, env=env(), capture_output=True,
                              text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        two = json.loads(done.stdout.strip().splitlines()[-1])
        ideal = G * T / (T + (G - 1) * chunk)  # the pipeline fills in (G − 1)·K steps
        print(f"  layer-parallel executor, 2 ranks, K={chunk:<3} {1e3 * two['seconds']:9.1f} "
              f"{1e3 * two['seconds'] / T:8.3f}   speed-up over 1 rank "
              f"{single / two['seconds']:.2f}× (ideal G·T/(T+(G−1)K) = {ideal:.3f}×, "
              f"{single / two['seconds'] / ideal:.0%} of it); {two['p2p_bytes'] / (calls * T):.0f}"
              f" bytes and {two['p2p_messages'] / (calls * T):.3g} messages per step", flush=True)
    print(f"  (B + R) × H × 4 = ({args.batch} + 10) × {args.hidden} × 4 = "
          f"{(args.batch + 10) * args.hidden * 4} bytes per step and group boundary; no message "
          "goes backward")


# ---------------------------------------------------------------------------- scale on paper
def _conv_forward_flops(channels: int, layers: int, positions: int, in_channels: int,
                        first_kernel: int, kernel: int) -> int:
    """Multiply-adds × 2 of one sample's step of the ConvGRU stack: drive and recurrent convs."""
    c3 = 3 * channels
    first = 2 * c3 * in_channels * first_kernel ** 2 * positions
    upper = (layers - 1) * 2 * c3 * channels * kernel ** 2 * positions
    recurrent = layers * 2 * c3 * channels * kernel ** 2 * positions
    return first + upper + recurrent


def _conv_measure(method: str, size: int, channels: int, layers: int, batch: int, steps: int,
                  downsample: int) -> dict:
    """The harness's measurements (``training_memory_bytes``, ``flops_per_step``) of one batch."""
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    from temporal_sigprop.measure import count_flops, train_batch_memory
    torch.manual_seed(0)
    model = make_model("convgru", (steps, 3, size, size), hidden=channels, layers=layers,
                       num_classes=10, downsample=downsample)
    learner = make_learner(method, model, LearnerConfig())
    x = torch.randn(batch, steps, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    saved, own, _ = train_batch_memory(learner, x, y)
    flops, _ = count_flops(learner.train_batch, x, y)
    cell = model.cells[0]
    positions = size // downsample * (size // downsample)
    params = sum(p.numel() for p in model.parameters()) + sum(
        p.numel() for p in learner.own_parameters())
    rows = batch + (10 if method == "sigprop" else 0)  # sigprop: + C class rows
    forward = rows * _conv_forward_flops(channels, layers, positions, 3, cell.first_kernel,
                                         cell.kernel_size)
    return {"memory": saved + own, "flops_per_step": flops / steps, "params": params,
            "positions": positions, "rows": rows, "forward": forward}


def run_scale(args) -> None:
    """Measure per-unit constants at small sizes, then extrapolate to the target model."""
    torch.set_num_threads(1)
    base = dict(size=32, channels=8, layers=2, batch=4, steps=8, downsample=2)
    variants = [{}, {"steps": 16}, {"channels": 16}, {"size": 64}, {"layers": 3}, {"batch": 8}]
    constants = {}
    print("measured (harness: training_memory_bytes, flops_per_step), ConvGRU, 3-channel frames, "
          "downsample 2, 10 classes")
    print(f"{'method':8} {'frame':>5} {'C':>3} {'L':>2} {'B':>2} {'T':>3} {'memory B':>11} "
          f"{'FLOPs/step':>11} {'mem/unit':>9} {'FLOPs/fwd':>9}")
    for method in ("bptt", "sigprop"):
        per_unit, ratio = [], []
        for change in variants:
            c = {**base, **change}
            m = _conv_measure(method, **c)
            # BPTT keeps every step: bytes per (sequence · step · layer · channel · position);
            # sigprop keeps one step of every layer for its rows: per (row·layer·channel·pos)
            unit = (c["batch"] * c["steps"] if method == "bptt" else m["rows"]) \
                * c["layers"] * c["channels"] * m["positions"]
            per_unit.append(m["memory"] / unit)
            ratio.append(m["flops_per_step"] / m["forward"])
            print(f"{method:8} {c['size']:>5} {c['channels']:>3} {c['layers']:>2} "
                  f"{c['batch']:>2} {c['steps']:>3} {m['memory']:>11} "
                  f"{m['flops_per_step']:>11.4g} {per_unit[-1]:>9.2f} {ratio[-1]:>9.2f}",
                  flush=True)
        constants[method] = (max(per_unit), max(ratio))
    # ----- the target, extrapolated with the largest measured constants
    S, C, L, B, T, K = args.frame, args.channels, args.conv_layers, args.conv_batch, \
        args.conv_steps, 10
    s, k = 2, 3
    P = (S // s) ** 2
    first_kernel = 2 * s
    theta = 3 * C * (3 * first_kernel ** 2 + C * k * k + 1) + (L - 1) * 3 * C * (C * k * k + 1) \
        + L * 3 * C * (C * k * k + 1) + (C + 1) * K  # drives, recurrent convs, readout
    proj = K * 3 * C * P  # sigprop's target projection: one drive map per class
    fwd = _conv_forward_flops(C, L, P, 3, first_kernel, k)
    gib = 2 ** 30
    print(f"\ntarget: {L}-layer ConvGRU, {S}×{S}×3 frames, downsample {s} → {S // s}×{S // s} "
          f"maps, C = {C}, batch {B}, T = {T}, {K} classes; fp32")
    print(f"  parameters {theta / 1e6:.2f} M (+ sigprop's projection P {proj / 1e6:.2f} M); "
          f"weights + grads + Adam moments = 16 bytes per parameter")
    print(f"  input batch {B * T * 3 * S * S * 4 / gib:.1f} GiB (a method that streams the frames "
          f"— sigprop, truncated BPTT — needs {B * 3 * S * S * 4 / 2**20:.1f} MiB of it per "
          "step)")
    beta, rho_b = constants["bptt"]
    sigma, rho_s = constants["sigprop"]
    bptt_step = beta * B * L * C * P
    sig_mem = sigma * (B + K) * L * C * P
    print(f"  BPTT    activation memory {beta:.1f} B/unit × B·T·L·C·P = "
          f"{bptt_step * T / gib:,.0f} "
          f"GiB at T = {T} ({bptt_step / gib:.2f} GiB per step)")
    for gpu in (80, 141):
        fit = (gpu * gib - 16 * theta) / bptt_step
        print(f"          steps that fit one {gpu} GiB GPU: {fit:,.0f} (truncation k ≤ that); "
              f"with the {L} layers on {L} ranks (layer parallel) {fit * L:,.0f}")
    print(f"  sigprop memory {sigma:.1f} B/unit × (B + {K})·L·C·P = {sig_mem / gib:.2f} GiB, "
          "any T; "
          f"+ {16 * (theta + proj) / gib:.2f} GiB weights/grads/moments; per rank of {L} layer "
          f"groups {sig_mem / L / gib:.2f} + {16 * (theta + proj) / L / gib:.2f} GiB")
    print(f"  FLOPs per step: BPTT {rho_b:.2f} × forward = {rho_b * B * fwd:.3g}; sigprop "
          f"{rho_s:.2f} × forward on B + {K} rows = {rho_s * (B + K) * fwd:.3g}")
    ring = lambda n, nbytes: 2 * (n - 1) / n * nbytes
    for n in (8, 64):
        print(f"  data parallel over {n} ranks (ring all-reduce, bytes sent per rank per step): "
              f"BPTT {ring(n, 4 * theta) / T:,.0f} (one update per sequence); sigprop every step "
              f"{ring(n, 4 * (theta + proj)) / 2**20:,.1f} MiB, every_k k=100 "
              f"{ring(n, 4 * (theta + proj)) / 100 / 2**20:,.2f} MiB, local SGD K=100 likewise")
    print(f"  layer parallel, sigprop: {(B + K) * C * P * 4 / 2**20:,.1f} MiB per step per group "
          f"boundary, forward only; BPTT pipelined by layers would send the same forward plus "
          f"as much backward and keep its T steps of activations")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("dp", "lp", "lp-worker", "scale"))
    parser.add_argument("--methods", nargs="+", default=["sigprop", "bptt"])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--local-sgd-every", type=int, nargs="+", default=[8, 40])
    parser.add_argument("--hidden", type=int, default=None)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 32],
                        help="lp: steps per message to measure")
    parser.add_argument("--chunk", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=int, default=128, help="scale: frame side")
    parser.add_argument("--channels", type=int, default=64, help="scale: ConvGRU channels")
    parser.add_argument("--conv-layers", type=int, default=8, help="scale: ConvGRU layers")
    parser.add_argument("--conv-batch", type=int, default=32, help="scale: batch")
    parser.add_argument("--conv-steps", type=int, default=10_000, help="scale: T")
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = 64 if args.what == "dp" else 128
    {"dp": run_dp, "lp": run_lp, "lp-worker": lp_worker, "scale": run_scale}[args.what](args)


if __name__ == "__main__":
    main()
