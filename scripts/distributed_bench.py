"""Data-parallel and layer-parallel training on the CPU (gloo), and the scale-on-paper projection.

    python scripts/distributed_bench.py dp      # 1 process vs 2 ranks: all-reduce vs local SGD
    python scripts/distributed_bench.py lp      # layer-parallel sigprop: 1 vs 2 ranks, T = 1000
    python scripts/distributed_bench.py lp --steps 200 --repeats 1     # a quick look
    python scripts/distributed_bench.py scale   # per-layer costs measured, projected to a big model

``dp`` runs the real command line (``tsp train``, under ``torchrun --nproc-per-node 2`` for the
2-rank rows) on MNIST-1D and prints, per run, the test accuracy at the best validation epoch, the
time per step (rank 0's timed training batches / T), the wall time of the whole command, the
updates, and the bytes of one update's gradient all-reduce beside the formula
4 · (parameters + parameter tensors) (float32 gradients plus one 'has a gradient' flag each).

``lp`` times one training batch of a 4-layer GRU stack (sigprop, every-step updates) at T steps:
``SigProp.train_batch`` in one process, the layer-parallel executor in one process (one group:
the same code without communication) and under 2 ranks (layers 0-1 | 2-3) for several steps per
message K, and prints the speed-up beside the ideal pipeline bound G·T / (T + (G − 1)·K), the
bytes sent per step beside the formula (B + R)·H·4, and the time each rank spent blocked on its
messages.

``scale`` measures a small ConvGRU with the package's own meters (``measure.train_batch_memory``
and ``measure.count_flops``, what the harness records as ``training_memory_bytes`` and
``flops_per_step``) at a grid of sizes, fits the stated linear law, and projects every method's
memory, compute and communication per step to a model that does not fit one GPU.

Every rank uses one intra-op thread. Speed figures are ratios within one run of this script, and
each line carries the 1-minute load average (as ``uptime`` prints it) when it was measured: on a
shared machine they are upper bounds of the overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


def load() -> str:
    """The 1-, 5- and 15-minute load averages, as ``uptime`` prints them."""
    return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def torchrun(ranks: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(free_port())]


# ---------------------------------------------------------------------------- data parallel
def _method_flags(spec: str) -> list[str]:
    """``sigprop`` or ``sigprop:target-rows=class,...`` → the ``tsp train`` flags."""
    method, _, extra = spec.partition(":")
    flags = ["--method", method]
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        flags += [f"--{key}", value]
    return flags


def _gradient_buffer_bytes(spec: str, hidden: int) -> int:
    """4 · (parameters + parameter tensors) of the learner's optimizers (MNIST-1D: T = 40, one
    feature, 10 classes; 2 layers), built here the way the harness builds it."""
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    method, _, extra = spec.partition(":")
    options = dict(item.partition("=")[::2] for item in filter(None, extra.split(",")))
    options = {k.replace("-", "_"): v for k, v in options.items()}
    model = make_model("gru", (40, 1), hidden=hidden, layers=2, num_classes=10)
    learner = make_learner(method, model, LearnerConfig(), **options)
    params = {id(p): p for opt in learner.optimizers().values() for g in opt.param_groups
              for p in g["params"]}
    return 4 * (sum(p.numel() for p in params.values()) + len(params))


def run_dp(args) -> None:
    common = ["--task", "mnist1d", "--model", "gru", "--hidden", str(args.hidden), "--layers", "2",
              "--epochs", str(args.epochs), "--batch-size", "100", "--seed", str(args.seed),
              "--threads", "1", "--no-progress"]
    runs = []
    for spec in args.methods:
        runs.append((spec, "1 process", []))
        runs.append((spec, "2 ranks allreduce", ["--dp-mode", "allreduce"]))
        for k in args.local_sgd_every:
            runs.append((spec, f"2 ranks local_sgd K={k}",
                         ["--dp-mode", "local_sgd", "--local-sgd-every", str(k)]))
    print(f"MNIST-1D, 2×GRU-{args.hidden}, batch 100 (2 ranks: 50 rows each), {args.epochs} "
          f"epochs, seed {args.seed}, 1 thread per process")
    print(f"{'method':26} {'run':24} {'test@bestval':>12} {'ms/step':>8} {'wall s':>7} "
          f"{'updates':>7} {'B/update':>9} {'formula':>9} {'MiB avg':>8}  load before → after")
    with tempfile.TemporaryDirectory() as tmp:
        for i, (spec, label, flags) in enumerate(runs):
            out = Path(tmp) / f"run{i}"
            train = ["-m", "temporal_sigprop", "train", *_method_flags(spec), *common, *flags,
                     "--out", str(out)]
            command = [sys.executable, *train] if label == "1 process" else [*torchrun(2), *train]
            before = load()
            start = time.perf_counter()
            done = subprocess.run(command, check=False, env=env(), capture_output=True,
                                  text=True)
            wall = time.perf_counter() - start
            if done.returncode:
                print(f"{spec:26} {label:24} failed:\n{done.stderr[-2000:]}")
                continue
            s = json.loads((out / "summary.json").read_text())
            comm = s.get("communication", {})
            per_update = (comm["gradient_bytes"] // comm["gradient_allreduces"]
                          if comm.get("gradient_allreduces") else None)
            formula = _gradient_buffer_bytes(spec, args.hidden) if per_update else None
            if per_update is not None and per_update != formula:
                raise SystemExit(f"{spec} {label}: {per_update} bytes per gradient all-reduce, "
                                 f"the formula says {formula}")
            updates = comm.get("updates", "")
            print(f"{spec:26} {label:24} {100 * s['test_accuracy_at_best_val']:11.1f}% "
                  f"{s['time_per_step_ms']:8.3f} {wall:7.1f} {updates:>7} "
                  f"{per_update or '':>9} {formula or '':>9} "
                  f"{comm.get('average_bytes', 0) / 2**20:8.1f}  {before} → {load()}",
                  flush=True)


# ---------------------------------------------------------------------------- layer parallel
CLASSES = 10


def _lp_learner(args):
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    torch.manual_seed(0)
    model = make_model("gru", (args.steps, args.features), hidden=args.hidden, layers=args.layers,
                       num_classes=CLASSES)
    return make_learner("sigprop", model, LearnerConfig(lr=1e-3))


def _lp_data(args):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.steps, args.features, generator=g)
    y = torch.randint(0, CLASSES, (args.batch,), generator=g)
    return x, y


def _times(fn, repeats: int) -> list[dict]:
    """Per call, after one warm-up call (optimizer state, allocator): wall seconds and this
    process's CPU seconds (all its threads: gloo's included). On a machine other jobs share, the
    wall time grows with their load; the CPU time is the work this process did."""
    fn()
    times = []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        times.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
    return times


def _best(times: list[dict]) -> dict:
    return min(times, key=lambda t: t["wall"])


def lp_worker(args) -> None:
    """One rank of a 2-rank run (started by torchrun): writes its figures as JSON."""
    import datetime

    import torch.distributed as dist

    from temporal_sigprop.distributed import World
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=600))
    world = World(rank=dist.get_rank(), size=dist.get_world_size(), backend="gloo",
                  timeout=600, layer_parallel=True, layer_parallel_chunk=args.chunk,
                  owns_group=True)
    executor = world.attach(_lp_learner(args), None, argparse.Namespace(loss_at="last"))
    x, y = _lp_data(args)
    waits = []

    def batch():
        before = world.comm.p2p_wait_seconds
        executor.train_batch(x, y)
        waits.append(world.comm.p2p_wait_seconds - before)

    dist.barrier()
    batch()  # warm-up: optimizer state, allocator
    times = []
    for _ in range(args.repeats):
        dist.barrier()  # both ranks start the batch together
        wall, cpu, main = time.perf_counter(), time.process_time(), time.thread_time()
        batch()
        main = time.thread_time() - main
        dist.barrier()  # the batch ends when the last rank is done
        times.append({"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
                      "main": main, "wait": waits[-1]})
    # one file per rank: the ranks' standard outputs interleave under torchrun
    (Path(args.result_dir) / f"rank{world.rank}.json").write_text(json.dumps({
        "times": times, "p2p_bytes": world.comm.p2p_bytes,
        "p2p_messages": world.comm.p2p_messages, "batches": len(times) + 1}))
    world.close()


def run_lp(args) -> None:
    from temporal_sigprop.distributed import World
    from temporal_sigprop.layer_parallel import LayerParallelSigProp, layer_groups
    torch.set_num_threads(1)
    x, y = _lp_data(args)
    T, G, B, H = args.steps, 2, args.batch, args.hidden
    groups = layer_groups(args.layers, G)
    print(f"sigprop {args.layers}×GRU-{H}, batch {B}, {args.features} features, T = {T}, "
          f"every-step updates; the fastest of {args.repeats} batches after a warm-up; "
          f"2 ranks: layers {'|'.join(f'{g.start}-{g.stop - 1}' for g in groups)}; "
          "CPU = the process's CPU time (all threads)")
    print(f"  {'run':38} {'wall ms/step':>12} {'CPU ms/step':>12}")
    learner = _lp_learner(args)
    before = load()
    plain = _best(_times(lambda: learner.train_batch(x, y), args.repeats))
    print(f"  {'SigProp.train_batch, 1 process':38} {1e3 * plain['wall'] / T:12.3f} "
          f"{1e3 * plain['cpu'] / T:12.3f}   {before} → {load()}")
    one_rank = LayerParallelSigProp(_lp_learner(args), World())
    before = load()
    single = _best(_times(lambda: one_rank.train_batch(x, y), args.repeats))
    print(f"  {'layer-parallel executor, 1 rank':38} {1e3 * single['wall'] / T:12.3f} "
          f"{1e3 * single['cpu'] / T:12.3f}   {before} → {load()}")
    formula = (B + CLASSES) * H * 4  # sequence labels: the sample rows run as C class rows
    for chunk in args.chunks:
        with tempfile.TemporaryDirectory() as results:
            command = [*torchrun(2), __file__, "lp-worker", "--steps", str(T), "--hidden",
                       str(H), "--layers", str(args.layers), "--batch", str(B), "--features",
                       str(args.features), "--repeats", str(args.repeats), "--chunk", str(chunk),
                       "--result-dir", results]
            before = load()
            done = subprocess.run(command, check=False, env=env(), capture_output=True,
                                  text=True)
            if done.returncode:
                raise SystemExit(done.stderr[-3000:])
            ranks = [json.loads((Path(results) / f"rank{r}.json").read_text())
                     for r in range(G)]
        # the fastest batch (both ranks measured the same batches between barriers)
        i = min(range(args.repeats), key=lambda j: ranks[0]["times"][j]["wall"])
        wall = max(r["times"][i]["wall"] for r in ranks)
        cpu = [r["times"][i]["cpu"] for r in ranks]
        sender = ranks[0]
        per_step = sender["p2p_bytes"] / (sender["batches"] * T)
        if per_step != formula or ranks[-1]["p2p_bytes"]:
            raise SystemExit(f"K={chunk}: {per_step} bytes per step sent forward, "
                             f"{ranks[-1]['p2p_bytes']} backward; the formula says {formula}")
        ideal = G * T / (T + (G - 1) * chunk)  # the pipeline fills in (G − 1)·K steps
        waits = ", ".join(f"{100 * r['times'][i]['wait'] / r['times'][i]['wall']:.0f} %"
                          for r in ranks)
        mains = ", ".join(f"{1e3 * r['times'][i]['main'] / T:.3f}" for r in ranks)
        label = f"layer-parallel executor, 2 ranks, K={chunk}"
        print(f"  {label:38} {1e3 * wall / T:12.3f} "
              f"{' + '.join(f'{1e3 * c / T:.3f}' for c in cpu):>12}   {before} → {load()}")
        print(f"      wall speed-up {single['wall'] / wall:.2f}× over the 1-rank executor "
              f"({single['wall'] / wall / ideal:.0%} of the ideal G·T/(T+(G−1)K) = "
              f"{ideal:.3f}×), {plain['wall'] / wall:.2f}× over SigProp.train_batch; work "
              f"split: the busier rank's CPU is {max(cpu) / single['cpu']:.0%} of the 1-rank "
              f"executor's (bound with a free core per rank {single['cpu'] / max(cpu):.2f}×); "
              f"main-thread CPU ms/step (rank 0, 1): {mains}; "
              f"time blocked on messages (rank 0, 1): {waits}; "
              f"{per_step:.0f} bytes/step = (B + R)·H·4 = ({B} + {CLASSES})·{H}·4 ✓, "
              f"{sender['p2p_messages'] / (sender['batches'] * T):.3g} messages/step, none "
              "backward", flush=True)


# ---------------------------------------------------------------------------- scale on paper
SCALE_METHODS = ("bptt", "tbptt", "fwdgrad", "sigprop")
SCALE_OPTIONS = {"tbptt": {"k": 2}}
#: the measured grid: batch B, layers L, steps T, positions P (frame side F, stride 2: P = (F/2)²)
GRID = {"B": (2, 4), "L": (2, 3), "T": (4, 8), "F": (16, 32)}
#: a point outside the grid, measured to check the extrapolation
HELD_OUT = {"B": 3, "L": 4, "T": 12, "F": 48}


def _conv_learner(method, layers, channels, frame, steps):
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    torch.manual_seed(0)
    model = make_model("convgru", (steps, 3, frame, frame), hidden=channels, layers=layers,
                       num_classes=CLASSES, downsample=2, stem_channels=0)
    return make_learner(method, model, LearnerConfig(loss_at="every"),
                        **SCALE_OPTIONS.get(method, {}))


def _conv_measure(method, channels, B, L, T, F) -> dict:
    """``training_memory_bytes`` and FLOPs of one batch, measured as the harness measures."""
    from temporal_sigprop.measure import count_flops, train_batch_memory
    learner = _conv_learner(method, L, channels, F, T)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, 3, F, F, generator=g)
    y = torch.randint(0, CLASSES, (B,), generator=g)
    saved, own, _ = train_batch_memory(learner, x, y)
    flops, _ = count_flops(learner.train_batch, x, y)
    return {"memory": saved + own, "flops": flops}


def _parameters(learner) -> tuple[int, int]:
    """(parameters the optimizers update, parameter tensors) of a learner."""
    params = {id(p): p for opt in learner.optimizers().values() for g in opt.param_groups
              for p in g["params"]}
    return sum(p.numel() for p in params.values()), len(params)


VARIABLES = ("B", "L", "T", "P")


def _multilinear(corners: dict) -> dict:
    """The coefficients c_S of f = Σ_S c_S · Π_{v ∈ S} v (S ⊆ {B, L, T, P}) through the 16
    corner values ``corners[(B, L, T, P)]`` of a 2⁴ grid: exact for a cost that is linear in each
    variable while the others are fixed (activations ∝ rows · layers · steps · positions, a
    layer's parameters and states ∝ layers, ...)."""
    lows = [min(k[i] for k in corners) for i in range(4)]
    highs = [max(k[i] for k in corners) for i in range(4)]
    coefficients = {}
    for mask in range(16):
        subset = tuple(VARIABLES[i] for i in range(4) if mask >> i & 1)
        # solve by expanding f(x) = Σ_corner f(corner) Π_i w_i(x_i) in monomials
        total = 0.0
        for corner, value in corners.items():
            term = value
            for i in range(4):
                lo, hi, is_high = lows[i], highs[i], corner[i] == highs[i]
                # w_i = (x − lo)/(hi − lo) or (hi − x)/(hi − lo): slope ±1/(hi−lo), constant
                slope = (1 if is_high else -1) / (hi - lo)
                const = (-lo if is_high else hi) / (hi - lo)
                term *= slope if mask >> i & 1 else const
            total += term
        coefficients[subset] = total
    return coefficients


def _evaluate(coefficients: dict, point: dict) -> float:
    return sum(c * math.prod(point[v] for v in subset) for subset, c in coefficients.items())


def run_scale(args) -> None:
    """Measure a 2⁴ grid of small ConvGRUs per method, fit the multilinear law, check it on a
    held-out point, and project memory, FLOPs and communication per step to the target."""
    torch.set_num_threads(1)
    C = args.channels
    k0 = SCALE_OPTIONS["tbptt"]["k"]
    print(f"measured: ConvGRU with {C} channels (the target's), 3×3 kernels, 3-channel frames, "
          f"stride-2 first conv (kernel 4), no stem, {CLASSES} classes, fp32, loss at every "
          f"step, tbptt k = {k0}; memory = training_memory_bytes (peak live saved tensors + the "
          f"learner's state), FLOPs = torch.utils.flop_counter over one train_batch; {load()}")
    laws, held = {}, {}
    for method in SCALE_METHODS:
        values = {"memory": {}, "flops": {}}
        for B in GRID["B"]:
            for L in GRID["L"]:
                for T in GRID["T"]:
                    for F in GRID["F"]:
                        m = _conv_measure(method, C, B, L, T, F)
                        key = (B, L, T, (F // 2) ** 2)
                        values["memory"][key], values["flops"][key] = m["memory"], m["flops"]
        laws[method] = {what: _multilinear(v) for what, v in values.items()}
        h = HELD_OUT
        held[method] = _conv_measure(method, C, h["B"], h["L"], h["T"], h["F"])
        lo, hi = min(values["memory"]), max(values["memory"])
        print(f"  {method:8} grid corners: memory {values['memory'][lo]:,} … "
              f"{values['memory'][hi]:,} B, FLOPs/batch {values['flops'][lo]:.4g} … "
              f"{values['flops'][hi]:.4g}", flush=True)
    point = {"B": HELD_OUT["B"], "L": HELD_OUT["L"], "T": HELD_OUT["T"],
             "P": (HELD_OUT["F"] // 2) ** 2}
    print(f"\nheld-out check at B = {point['B']}, L = {point['L']}, T = {point['T']}, "
          f"P = {point['P']} (outside the grid): law / measured")
    for method in SCALE_METHODS:
        ratios = [_evaluate(laws[method][w], point) / held[method][w] for w in ("memory", "flops")]
        print(f"  {method:8} memory {ratios[0]:.4f}   FLOPs {ratios[1]:.4f}")

    S, L, B, T, k = args.frame, args.conv_layers, args.conv_batch, args.conv_steps, args.k
    target = {"B": B, "L": L, "T": T, "P": (S // 2) ** 2}
    P = target["P"]
    gib, mib = 2 ** 30, 2 ** 20
    print(f"\nlaw: cost = Σ_S c_S · Π_(v∈S) v over S ⊆ {{B, L, T, P}}; the terms that make up "
          f"≥ 99 % of each cost at the target (B = {B}, L = {L}, T = {T}, P = {P}):")
    for method in SCALE_METHODS:
        for what in ("memory", "flops"):
            coefficients = laws[method][what]
            total = _evaluate(coefficients, target)
            terms = sorted(((c * math.prod(target[v] for v in subset), subset, c)
                            for subset, c in coefficients.items()), key=lambda t: -abs(t[0]))
            shown, acc = [], 0.0
            for value, subset, c in terms:
                shown.append(f"{c:.4g}·{'·'.join(subset) or '1'}")
                acc += value
                if abs(acc) >= 0.99 * abs(total):
                    break
            unit = "B" if what == "memory" else "FLOPs/batch"
            print(f"  {method:8} {what:6} ≈ {' + '.join(shown)}  [{unit}]")

    memory = {m: _evaluate(laws[m]["memory"], target) for m in SCALE_METHODS}
    flops = {m: _evaluate(laws[m]["flops"], target) / T for m in SCALE_METHODS}
    # tbptt keeps k steps whatever T: BPTT's law at T = k (checked at the measured size)
    check = [_evaluate(laws["bptt"]["memory"], {"B": b, "L": l, "T": k0, "P": p})
             / _evaluate(laws["tbptt"]["memory"], {"B": b, "L": l, "T": t, "P": p})
             for b, l, t, p in [(2, 2, 8, 64), (4, 3, 8, 256)]]
    print(f"\ncheck: BPTT's law at T = {k0} / tbptt(k = {k0}) at T = 8: "
          + ", ".join(f"{c:.3f}" for c in check) + " (small and large grid corner)")
    memory["tbptt"] = _evaluate(laws["bptt"]["memory"], {**target, "T": k})

    print(f"\ntarget: {L}-layer ConvGRU, {C} channels, {S}×{S}×3 frames → {S // 2}×{S // 2} "
          f"maps (P = {P}), batch {B}, T = {T}, {CLASSES} classes, fp32")
    params = {m: _parameters(_conv_learner(m, L, C, S, 1)) for m in ("bptt", "sigprop")}
    n, tensors = params["bptt"]
    n_s, tensors_s = params["sigprop"]
    print(f"  parameters (counted on the built model): {n / 1e6:.3f} M in {tensors} tensors; "
          f"sigprop {n_s / 1e6:.3f} M in {tensors_s} (+ the target projection {CLASSES}×3C×P "
          f"= {CLASSES * 3 * C * P / 1e6:.3f} M and its readout); weights + gradients + Adam "
          "moments: 16 bytes per parameter")
    print(f"  {'method':12} {'learning memory':>16} {'weights etc.':>13} {'FLOPs/step':>11}")
    for method in SCALE_METHODS:
        label = f"tbptt k={k}" if method == "tbptt" else method
        weights = 16 * (n_s if method == "sigprop" else n)
        print(f"  {label:12} {memory[method] / gib:>12,.2f} GiB {weights / gib:>9.3f} GiB "
              f"{flops[method]:>11.3g}")
    per_step = (memory["bptt"] - _evaluate(laws["bptt"]["memory"], {**target, "T": 0})) / T
    print(f"  BPTT keeps {per_step / gib:.3f} GiB per step of this model")
    for gpu in args.gpu_gib:
        fit = (gpu * gib - 16 * n) / per_step
        print(f"  one {gpu} GiB GPU: BPTT keeps ≤ {fit:,.0f} steps (truncation k ≤ that); with "
              f"one GPU per layer ({L} GPUs) ≤ {fit * L:,.0f}; sigprop needs "
              f"{(memory['sigprop'] + 16 * n_s) / gib:.2f} GiB at any T")
    from temporal_sigprop.registry import INCOMPATIBLE
    state = L * C * P
    print(f"  rtrl: n/a — {INCOMPATIBLE[('rtrl', 'convgru')]} (B·n·p·4 = {B}·{state:,}·{n:,}·4 "
          f"= {B * state * n * 4 / 2 ** 40:,.0f} TiB)")
    print(f"  snap1: n/a — {INCOMPATIBLE[('snap1', 'convgru')]}")

    grad = {m: 4 * ((n_s + tensors_s) if m == "sigprop" else (n + tensors)) for m in SCALE_METHODS}
    ring = lambda ranks, nbytes: 2 * (ranks - 1) / ranks * nbytes
    print(f"  data parallel, bytes each rank sends per step (ring all-reduce, 2(N−1)/N × buffer "
          f"of 4·(parameters + tensors) = {grad['bptt'] / mib:.2f} MiB, sigprop "
          f"{grad['sigprop'] / mib:.2f} MiB, once per update):")
    for ranks in args.dp_ranks:
        per = {"bptt (1 update / T steps)": ring(ranks, grad["bptt"]) / T,
               f"tbptt (1 / {k})": ring(ranks, grad["tbptt"]) / k,
               "fwdgrad (1 / T)": ring(ranks, grad["fwdgrad"]) / T,
               "sigprop every step": ring(ranks, grad["sigprop"]),
               f"sigprop every_k {args.every} or local SGD K={args.every}":
                   ring(ranks, grad["sigprop"]) / args.every}
        print(f"    N = {ranks}: " + "; ".join(f"{name} {v / mib:,.4g} MiB"
                                                for name, v in per.items()))
    boundary = (B + CLASSES) * C * P * 4
    print(f"  layer parallel, sigprop: (B + R)·C·P·4 = ({B} + {CLASSES})·{C}·{P}·4 = "
          f"{boundary / mib:.1f} MiB per step per group boundary, forward only (a layer pipeline "
          f"of BPTT: B·C·P·4 = {B * C * P * 4 / mib:.1f} MiB forward and as much backward, "
          "and its T steps kept)")
    one_layer = {"B": B, "L": 1, "T": T, "P": P}
    two_layers = {**one_layer, "L": 2}
    layer_memory = (_evaluate(laws["sigprop"]["memory"], two_layers)
                    - _evaluate(laws["sigprop"]["memory"], one_layer))
    layer_flops = (_evaluate(laws["sigprop"]["flops"], two_layers)
                   - _evaluate(laws["sigprop"]["flops"], one_layer)) / T
    print(f"  projection, one GPU per layer ({L} ranks), sigprop: an upper layer needs "
          f"{layer_memory / gib:.2f} GiB learning memory (the law's L-slope) + "
          f"{16 * (n_s - CLASSES * 3 * C * P) / L / gib:.3f} GiB weights etc. (rank 0 also "
          f"the projection, {16 * CLASSES * 3 * C * P / gib:.3f} GiB) and {layer_flops:.3g} "
          f"FLOPs per step; pipeline bound {L}·T/(T + {L} − 1) = {L * T / (T + L - 1):.4f}× one "
          f"GPU; it sends {boundary / mib:.1f} MiB per step to the next")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("dp", "lp", "lp-worker", "scale"))
    parser.add_argument("--methods", nargs="+", default=["sigprop", "bptt"],
                        help="dp: methods, optionally with flags: sigprop:target-rows=class")
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
    parser.add_argument("--result-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--frame", type=int, default=128, help="scale: frame side")
    parser.add_argument("--channels", type=int, default=64, help="scale: ConvGRU channels")
    parser.add_argument("--conv-layers", type=int, default=8, help="scale: ConvGRU layers")
    parser.add_argument("--conv-batch", type=int, default=32, help="scale: batch")
    parser.add_argument("--conv-steps", type=int, default=10_000, help="scale: T")
    parser.add_argument("--k", type=int, default=50, help="scale: tbptt truncation")
    parser.add_argument("--every", type=int, default=100,
                        help="scale: sigprop every_k / local SGD period")
    parser.add_argument("--dp-ranks", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--gpu-gib", type=int, nargs="+", default=[80, 141])
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = 64 if args.what == "dp" else 128
    {"dp": run_dp, "lp": run_lp, "lp-worker": lp_worker, "scale": run_scale}[args.what](args)


if __name__ == "__main__":
    main()
