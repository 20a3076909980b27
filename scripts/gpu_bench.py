"""Per-step cost of learning on one device: cuDNN GRU vs our BPTT vs sigprop (eager, chunked,
CUDA-graph fast path), µs per time step and peak GPU memory, all measured in one run.

    python scripts/gpu_bench.py                                  # the GPU run (B=128, H=256, T=1000, 4000)
    python scripts/gpu_bench.py --quick --device cpu             # a CPU dry run with tiny sizes

Workload (issue 7): a 2-layer GRU, hidden 256, batch 128, 40 input features, 10 classes, the
loss placement of --loss-at (default: last step), Adam. Rows:

  cudnn_infer     nn.GRU forward under no_grad (cuDNN on CUDA)
  cudnn_bptt      nn.GRU + Linear readout, backward through the sequence, one (fused) Adam step
  bptt            our BPTT learner (elementary-op GRU cells, per-step Python loop)
  sigprop_eager   SigProp.train_batch (update every step, the default schedule)
  sigprop_chunks  FastSigProp, eager chunk function (no graph)
  sigprop_graph   FastSigProp, CUDA graphs of --chunk steps (input on the GPU)
  sigprop_stream  the same, input streamed from pinned host memory chunk by chunk
  sigprop_compile the same as sigprop_graph with the step's forward (and backward) compiled
  sigprop_chunks_compile  (only with --rows) the eager chunk function with the step compiled

Time budget: each (row, T) gets about --budget seconds of timed work. Per-step learners whose full
sequence would not fit are timed on the first n steps (n ≥ 2 chunks) and the per-step time is
extrapolated (their cost per step does not depend on T; the row says so, and its peak memory is
then the peak at n steps). BPTT rows always run the full T (their memory grows with T); they use
fewer repeats instead. Peak memory is torch.cuda.max_memory_allocated during the timed calls,
everything included (parameters, optimizer state, the input batch on the GPU: B·T·F·4 bytes);
peak reserved is printed beside it because a CUDA graph's working memory lives in its private
pool (reserved, not "allocated" during replay). The compile rows run after everything else, and
the table is printed before them too, so a slow compilation never costs the other figures.
Also printed: aten ops per step of sigprop's step by phase (forward / backward / optimizer), and
on CUDA the kernels per step (torch.profiler), which is what bounds the GPU time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections import Counter

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from temporal_sigprop import LearnerConfig, make_learner, make_model  # noqa: E402
from temporal_sigprop.fast import FastSigProp, graph_reason  # noqa: E402

ROWS = ("cudnn_infer", "cudnn_bptt", "bptt", "sigprop_eager", "sigprop_chunks", "sigprop_graph",
        "sigprop_stream", "sigprop_compile")
EXTRA_ROWS = ("sigprop_chunks_compile",)  # only with --rows
LABELS = {
    "cudnn_infer": "cuDNN nn.GRU inference",
    "cudnn_bptt": "cuDNN nn.GRU BPTT",
    "bptt": "our BPTT",
    "sigprop_eager": "sigprop eager",
    "sigprop_chunks": "sigprop chunk fn (eager)",
    "sigprop_graph": "sigprop fast path (graph)",
    "sigprop_stream": "sigprop fast, host input",
    "sigprop_compile": "sigprop fast + compile",
    "sigprop_chunks_compile": "sigprop chunk fn + compile",
}
PER_STEP = {"sigprop_eager", "sigprop_chunks", "sigprop_graph", "sigprop_stream",
            "sigprop_compile", "sigprop_chunks_compile"}
COMPILED = ("sigprop_compile", "sigprop_chunks_compile")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class NA(Exception):
    """A row that cannot run here (the message says why)."""


# --------------------------------------------------------------------------- the variants
def build(row, args, T, device):
    """Return ``(step(x, y), x_on_host)``: a callable that trains (or infers) on one batch."""
    torch.manual_seed(0)
    F_, H, C = args.features, args.hidden, args.classes
    cfg = LearnerConfig(lr=1e-3, loss_at=args.loss_at)
    if row in ("cudnn_infer", "cudnn_bptt"):
        gru = nn.GRU(F_, H, num_layers=args.layers, batch_first=True).to(device)
        head = nn.Linear(H, C).to(device)
        if row == "cudnn_infer":
            gru.eval()

            @torch.no_grad()
            def infer(x, y):
                out, _ = gru(x)
                return head(out[:, -1])
            return infer, False
        params = [*gru.parameters(), *head.parameters()]
        kw = {"fused": True} if device.type == "cuda" else {"foreach": True}
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, **kw)

        def bptt_step(x, y):
            out, _ = gru(x)
            if args.loss_at == "last":
                loss = nn.functional.cross_entropy(head(out[:, -1]), y)
            else:
                logits = head(out)
                loss = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat_interleave(T))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return bptt_step, False
    model = make_model("gru", (T, F_), hidden=H, layers=args.layers, num_classes=C).to(device)
    if row == "bptt":
        return make_learner("bptt", model, cfg).train_batch, False
    learner = make_learner("sigprop", model, cfg)
    if row == "sigprop_eager":
        return learner.train_batch, False
    if row in ("sigprop_chunks", "sigprop_chunks_compile"):
        fast = FastSigProp(learner, chunk=args.chunk, graph=False,
                           compile=row == "sigprop_chunks_compile")
        return fast.train_batch, False
    why = graph_reason(learner, device)
    graph = True
    if why and device.type != "cuda" and args.simulate_graphs:
        graph = "simulate"  # dry run of this script's graph rows: capture = keep the Python body
    elif why:
        raise NA("needs CUDA" if device.type != "cuda" else why)
    fast = FastSigProp(learner, chunk=args.chunk, graph=graph, compile=row == "sigprop_compile")
    return fast.train_batch, row == "sigprop_stream"


def timed(step, x, y, device):
    sync(device)
    start = time.perf_counter()
    out = step(x, y)
    if isinstance(out, dict):
        out = out["loss"]
    sync(device)
    elapsed = time.perf_counter() - start
    if isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
        raise RuntimeError("non-finite loss")
    return elapsed


def measure(row, args, T, device):
    """µs per step, peak bytes (or None), steps timed, note."""
    step, host_input = build(row, args, T, device)
    g = torch.Generator().manual_seed(1)
    x_host = torch.randn(args.batch, T, args.features, generator=g)
    y_host = torch.randint(0, args.classes, (args.batch,), generator=g)
    if host_input:
        x, y = (x_host.pin_memory() if device.type == "cuda" else x_host), y_host
    else:
        x, y = x_host.to(device), y_host.to(device)
    del x_host
    budget = args.budget
    notes = []
    owner = getattr(step, "__self__", None)
    if type(getattr(owner, "_backend", None)).__name__ == "_SimulatedGraphs":
        notes.append("SIMULATED capture (CPU dry run, not a graph time)")
    if row in PER_STEP:
        warm_calls = 2 if row in ("sigprop_graph", "sigprop_stream", "sigprop_compile") else 1
        n0 = min(T, 2 * args.chunk)
        start = time.perf_counter()
        for _ in range(warm_calls):  # warm-up (and graph capture) on the probe length
            timed(step, x[:, :n0], y, device)
        if row in COMPILED:
            notes.append(f"warm-up+compile {time.perf_counter() - start:.0f} s")
        per_step = timed(step, x[:, :n0], y, device) / n0
        n = T
        if per_step * T * args.repeats > budget:
            n = max(n0, int(budget / (per_step * args.repeats)) // args.chunk * args.chunk)
            n = min(n, T)
        if n != n0:
            for _ in range(warm_calls):  # new chunk signatures at length n
                timed(step, x[:, :n], y, device)
        repeats = args.repeats
        if n < T:
            notes.append(f"timed on the first {n} of {T} steps, per-step extrapolated; "
                         f"peak at {n} steps")
    else:
        n = T
        first = timed(step, x, y, device)  # warm-up
        repeats = max(1, min(args.repeats, int(budget / max(first, 1e-9))))
        if repeats < args.repeats:
            notes.append(f"{repeats} repeat(s) (budget)")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    best = min(timed(step, x[:, :n], y, device) for _ in range(repeats))
    peak = None
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
    if host_input:
        notes.append("input on the host" + (" (pinned)" if device.type == "cuda" else ""))
    return best * 1e6 / n, peak, n, "; ".join(notes)


def interleaved(rows, args, T, device):
    """Round-robin timing on a shared, noisy machine: build every row, warm each up, then time one
    call of each row per round (full T), --repeats rounds; the fastest call per row counts. Load
    changes then hit every row alike, so the ratios hold even when absolute times drift."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, T, args.features, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    steps = {}
    for row in rows:
        try:
            step, _ = build(row, args, T, device)
        except NA as why:
            print(f"T={T:<5} {LABELS[row]:<26} n/a — {why}")
            continue
        for _ in range(2 if row in ("sigprop_graph", "sigprop_stream", "sigprop_compile") else 1):
            timed(step, x, y, device)
        steps[row] = step
    best = {row: float("inf") for row in steps}
    for _ in range(args.repeats):
        for row, step in steps.items():
            best[row] = min(best[row], timed(step, x, y, device))
    ref = best.get(rows[0])
    for row in steps:
        per = best[row] * 1e6 / T
        ratio = f"  × {rows[0]}: {best[row] / ref:.3f}" if ref else ""
        print(f"T={T:<5} {LABELS[row]:<26} {per:10.1f} µs/step{ratio}  (fastest of "
              f"{args.repeats} interleaved rounds)", flush=True)


# --------------------------------------------------------------------------- op / kernel counts
class _OpCounter(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts non-view aten ops (each one is at least one kernel launch on a GPU), by phase."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.by_op = Counter()
        self.in_optimizer = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        # views and profiler markers launch nothing
        if not func.is_view and name not in ("detach", "alias") \
                and not name.startswith("_record_function"):
            phase = "optimizer" if self.in_optimizer else \
                "backward" if torch._C._current_graph_task_id() != -1 else "forward"
            self.counts[phase] += 1
            self.by_op[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn, steps):
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    counter = _OpCounter()

    def pre(*_):
        counter.in_optimizer = True

    def post(*_):
        counter.in_optimizer = False
    h1, h2 = register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)
    try:
        with counter:
            fn()
    finally:
        h1.remove()
        h2.remove()
    return {k: v / steps for k, v in counter.counts.items()}, counter.by_op


def count_kernels(fn, steps):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels) / steps


def op_counts(args, device):
    """Ops (and on CUDA kernels) per step of sigprop's step, eager and as the chunk function."""
    T = min(16, args.steps[0])
    lines = []
    for row in ("sigprop_eager", "sigprop_chunks"):
        step, _ = build(row, args, T, device)
        g = torch.Generator().manual_seed(2)
        x = torch.randn(args.batch, T, args.features, generator=g).to(device)
        y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
        step(x, y)  # warm-up (optimizer state)
        counts, by_op = count_ops(lambda: step(x, y), T)
        total = sum(counts.values())
        line = (f"{LABELS[row]:<26} aten ops/step {total:6.1f}  (forward {counts['forward']:.1f}, "
                f"backward {counts['backward']:.1f}, optimizer {counts['optimizer']:.1f})")
        if device.type == "cuda":
            try:
                line += f"  CUDA kernels/step {count_kernels(lambda: step(x, y), T):.1f}"
            except Exception as err:  # noqa: BLE001 - a report, not a test
                line += f"  (kernel count failed: {err})"
        lines.append(line)
        if row == "sigprop_eager":
            top = ", ".join(f"{k} {v / T:.1f}" for k, v in by_op.most_common(12))
            lines.append(f"{'':<26} most frequent per step: {top}")
    return lines


# --------------------------------------------------------------------------- main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 4000],
                        help="sequence lengths T (default: 1000 4000)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--features", type=int, default=40)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--loss-at", default="last", choices=("last", "every"))
    parser.add_argument("--chunk", type=int, default=64, help="steps per CUDA graph (K)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="intra-op CPU threads")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls; the fastest counts")
    parser.add_argument("--budget", type=float, default=10.0,
                        help="seconds of timed work per row and T (slow rows are truncated)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS + EXTRA_ROWS)
    parser.add_argument("--no-compile", action="store_true", help="skip the compile rows")
    parser.add_argument("--sweep-chunk", type=int, nargs="*", default=[16, 256],
                        help="extra sigprop_graph rows at the first T with these K (default 16 256)")
    parser.add_argument("--no-counts", action="store_true", help="skip the op/kernel counts")
    parser.add_argument("--interleave", action="store_true",
                        help="time the --rows round-robin at full T and print ratios to the "
                             "first row (for a shared, noisy machine); no table, no budget")
    parser.add_argument("--max-seconds", type=float, default=420.0,
                        help="start no new row after this many seconds (unattended runs)")
    parser.add_argument("--simulate-graphs", action="store_true",
                        help="without CUDA: run the graph rows with a simulated capture (a dry "
                             "run of the script's logic; the times are not graph times)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a dry run (B=8, H=16, T=24 and 48, chunk 8)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.hidden, args.steps, args.chunk = 8, 16, [24, 48], 8
        args.budget, args.repeats = min(args.budget, 2.0), min(args.repeats, 2)
    rows = [r for r in args.rows if not (args.no_compile and r in COMPILED)]
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"# gpu_bench: {name}, torch {torch.__version__}, device {device}, "
          f"{torch.get_num_threads()} CPU thread(s)")
    print(f"# GRU {args.layers}×{args.hidden}, batch {args.batch}, {args.features} features, "
          f"{args.classes} classes, loss at {args.loss_at}, chunk K={args.chunk}, "
          f"T={args.steps}, fastest of ≤{args.repeats}, budget {args.budget:g} s/row", flush=True)
    if args.interleave:
        for T in args.steps:
            interleaved(rows, args, T, device)
        return 0
    if not args.no_counts:
        try:
            for line in op_counts(args, device):
                print("# " + line, flush=True)
        except Exception as err:  # noqa: BLE001
            print(f"# op counts failed: {err!r}", flush=True)

    # jobs: (result key, row kind, T, chunk); the compile rows last, after a first table, so a
    # slow or failing compilation cannot cost the other figures
    jobs = [((row, T), row, T, args.chunk) for T in args.steps for row in rows
            if row not in COMPILED]
    if "sigprop_graph" in rows and (device.type == "cuda" or args.simulate_graphs):
        jobs += [((f"sigprop fast path K={K}", args.steps[0]), "sigprop_graph", args.steps[0], K)
                 for K in args.sweep_chunk]
    late = [((row, T), row, T, args.chunk) for T in args.steps for row in rows
            if row in COMPILED]
    results = {}
    began = time.perf_counter()
    for batch_of_jobs in (jobs, late):
        for key, row, T, chunk in batch_of_jobs:
            run_job(results, key, row, T, argparse.Namespace(**{**vars(args), "chunk": chunk}),
                    device, began)
        print_table(results, args, name, [j[0] for j in jobs + late])
    return 0


def run_job(results, key, row, T, args, device, began):
    start = time.perf_counter()
    if start - began > args.max_seconds:
        results[key] = (None, None, f"skipped: past --max-seconds {args.max_seconds:g}")
    else:
        try:
            us, peak, n, note = measure(row, args, T, device)
            results[key] = (us, peak, note)
        except NA as why:
            results[key] = (None, None, f"n/a — {why}")
        except Exception as err:  # noqa: BLE001 - one failing row must not lose the others
            traceback.print_exc(limit=3)
            results[key] = (None, None, f"failed: {type(err).__name__}: {err}"[:160])
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
    us, peak, note = results[key]
    shown = f"{us:10.1f} µs/step" if us is not None else " " * 16
    mem = f"{peak[0] / 2**20:9.1f} MiB (reserved {peak[1] / 2**20:.1f})" if peak is not None else ""
    label = LABELS.get(key[0], key[0])
    print(f"T={T:<5} {label:<26} {shown} {mem}  {note}  [{time.perf_counter() - start:.1f} s]",
          flush=True)


def print_table(results, args, name, keys):
    print()
    print(f"## {name}, B={args.batch}, H={args.hidden}, {args.layers} layers, "
          f"{args.features} features, loss at {args.loss_at}, K={args.chunk} unless named")
    print("| T | what | µs per step | × cuDNN BPTT | peak GPU memory (allocated) | × cuDNN BPTT "
          "| peak reserved | note |")
    print("|---|---|---|---|---|---|---|---|")
    for key in keys:
        if key not in results:
            continue
        row, T = key
        ref_us, ref_peak, _ = results.get(("cudnn_bptt", T), (None, None, ""))
        us, peak, note = results[key]
        t_ratio = f"{us / ref_us:.2f}" if us is not None and ref_us else "—"
        m_ratio = f"{peak[0] / ref_peak[0]:.4f}" if peak is not None and ref_peak else "—"
        us_s = f"{us:.1f}" if us is not None else "n/a"
        mem = f"{peak[0] / 2**30:.3f} GiB" if peak is not None else "—"
        res = f"{peak[1] / 2**30:.3f} GiB" if peak is not None else "—"
        print(f"| {T} | {LABELS.get(row, row)} | {us_s} | {t_ratio} | {mem} | {m_ratio} | {res} "
              f"| {note} |")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
