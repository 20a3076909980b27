"""Data-parallel and layer-parallel training with torch.distributed (gloo, CPU, 2 ranks).

Each launch starts its ranks as subprocesses of this file (``python tests/test_distributed.py
SCENARIO RANK PORT DIR WORLD``) on a free port chosen here, bounded by a timeout. Starting a
process costs seconds (importing torch), so one launch runs every case of a kind in one process
group and saves each case's result; the tests compare those with the same computation in this
process. The command-line tests run ``torchrun ... -m temporal_sigprop train`` as a user would.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

# Float64 models: the only difference between N ranks × B/N rows and one process × B rows is the
# order in which per-sequence gradient terms are summed (and the exact ×1/2 of each half), so the
# parameters agree to round-off: ~1e-16 relative per operation, grown by a few dozen Adam steps
# (whose first steps are ≈ lr·sign(g) and so do not amplify it) — 1e-10 leaves a wide margin
# while any real difference in the update (a wrong weight, a missing or doubled all-reduce, a
# clip of the local instead of the global gradient) moves parameters by ~lr = 1e-2.
TOL = 1e-10
BATCHES = (8, 8, 7)  # the last global batch splits 4/3 across 2 ranks: weights 4/7 and 3/7
STEPS, FEATURES, CLASSES, HIDDEN = 6, 3, 4, 6
FRAME = (1, 8, 8)  # ConvGRU frames: downsample 2 → 4×4 maps of HIDDEN // 2 channels
#: a low threshold and a short membrane time: spikes reach the top of a 4-layer LIF stack within
#: these 6 steps (at the defaults none does, and the upper layers would learn nothing)
MODEL_OPTIONS = {"lif": dict(threshold=0.1, tau_mem=2.0)}

#: data-parallel cases: (method, model, learner config, method options). Clipping small enough to
#: act on every update (it must see the global gradient); online learners update every 2 steps.
DP_CASES = {
    "bptt": ("bptt", "gru", dict(grad_clip=0.05), {}),
    "tbptt": ("tbptt", "gru", dict(grad_clip=0.05, loss_at="every"), dict(k=2)),
    "rtrl": ("rtrl", "gru", dict(grad_clip=0.05, loss_at="every"), dict(update_every=2)),
    "snap1": ("snap1", "gru", dict(grad_clip=0.05, loss_at="every"), dict(update_every=2)),
    "eprop": ("eprop", "lstm", dict(grad_clip=0.05, loss_at="every"), dict(update_every=2)),
    "fwdgrad": ("fwdgrad", "gru", {}, dict(tangents=2)),  # every rank draws the same tangents
    "sigprop": ("sigprop", "gru", dict(loss_at="every"), dict(target_rows="class")),
    "sigprop_every_k": ("sigprop", "gru", dict(loss_at="every", grad_clip=0.05),
                        dict(target_rows="class", schedule="every_k", update_k=4)),
}
LOCAL_SGD_EVERY = 2


# ---------------------------------------------------------------------------- shared pieces
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data(seed=0, per_step=False, frames=False):
    g = torch.Generator().manual_seed(seed)
    n = sum(BATCHES)
    x = torch.randn(n, STEPS, *(FRAME if frames else (FEATURES,)), generator=g,
                    dtype=torch.float64)
    if per_step:  # labels on some steps only (-1 elsewhere), changing within a sequence
        y = torch.randint(0, CLASSES, (n, STEPS), generator=g)
        y[:, ::3] = -1
        return x, y
    return x, torch.randint(0, CLASSES, (n,), generator=g)


def make(method, model="gru", layers=2, cfg=None, options=None, seed=0):
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    torch.manual_seed(seed)
    if model == "convgru":
        net = make_model("convgru", (STEPS, *FRAME), hidden=HIDDEN // 2, layers=layers,
                         num_classes=CLASSES, downsample=2, stem_channels=0)
    else:
        net = make_model(model, (STEPS, FEATURES), hidden=HIDDEN, layers=layers,
                         num_classes=CLASSES, **MODEL_OPTIONS.get(model, {}))
    return make_learner(method, net.double(), LearnerConfig(**{"lr": 1e-2, **(cfg or {})}),
                        **(options or {}))


def make_dp(case):
    method, model, cfg, options = DP_CASES[case]
    return make(method, model, cfg=cfg, options=options)


def batches(x, y):
    start = 0
    for size in BATCHES:
        yield x[start:start + size], y[start:start + size]
        start += size


def parameters(learner) -> dict:
    out = {f"model.{n}": p.detach().clone() for n, p in learner.model.named_parameters()}
    out.update({f"own.{i}": p.detach().clone() for i, p in enumerate(learner.own_parameters())})
    return out


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def assert_same(a, b, where="state"):
    """Equal nested state dicts: tensors bit for bit."""
    if torch.is_tensor(a):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def run_ranks(scenario: str, folder: Path, *, timeout=120, world=2, expect_ok=True):
    """Start ``world`` ranks of ``scenario``; returns (rank 0's result, elapsed s, outputs)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(HERE), scenario, str(r), str(port),
                               str(folder), str(world)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(world)]
    start = time.monotonic()
    outputs = []
    try:
        for r, p in enumerate(procs):
            remaining = max(timeout - (time.monotonic() - start), 1)
            try:
                outputs.append(p.communicate(timeout=remaining if r == 0 or expect_ok else 2)[0])
            except subprocess.TimeoutExpired:
                if expect_ok or r == 0:
                    raise
                p.kill()  # a rank the scenario left stuck
                outputs.append(p.communicate()[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - start
    if expect_ok:
        for r, (p, out) in enumerate(zip(procs, outputs)):
            assert p.returncode == 0, f"rank {r} failed:\n{out[-4000:]}"
    result = folder / "rank0.pt"
    return (torch.load(result, weights_only=False) if result.exists() else None), elapsed, outputs


# ---------------------------------------------------------------------------- the workers
def _init_group(rank, port, world_size, timeout=60.0):
    import datetime

    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout))


def _world(rank, world_size, timeout=60.0, owns_group=False, **kw):
    from temporal_sigprop.distributed import World
    return World(rank=rank, size=world_size, backend="gloo", timeout=timeout,
                 owns_group=owns_group, **kw)


def _close_group():
    import torch.distributed as dist
    dist.barrier()
    dist.destroy_process_group()


class AllReduceCounter:
    """Counts the all-reduce calls that reach ``torch.distributed`` (and their bytes) while
    ``active``: a count independent of the package's own ``CommStats``."""

    def __init__(self):
        import torch.distributed as dist
        self.calls, self.sizes, self.active = 0, [], False
        self._original = dist.all_reduce
        dist.all_reduce = self._counted

    def _counted(self, tensor, *args, **kwargs):
        if self.active:
            self.calls += 1
            self.sizes.append(tensor.numel() * tensor.element_size())
        return self._original(tensor, *args, **kwargs)


def _dp_case(rank, world_size, case, mode, counter):
    from temporal_sigprop.harness import evaluate
    world = _world(rank, world_size, mode=mode, local_sgd_every=LOCAL_SGD_EVERY)
    learner = make_dp(case)
    x, y = data()
    cfg = SimpleNamespace(loss_at=learner.cfg.loss_at, batch_size=8, max_batches=0)
    learner = world.attach(learner, x, cfg)
    losses, calls, sizes = [], [], []
    for xb, yb in batches(x, y):
        xs, ys = world.shard(xb, yb)
        counter.active, counter.calls, counter.sizes = True, 0, []
        stats = learner.train_batch(xs, ys)
        counter.active = False
        calls.append(counter.calls)
        sizes += counter.sizes
        losses.append(world.batch_loss(stats["loss"]))
    world.end_epoch(learner)
    # evaluation dealt round-robin (3 batches over 2 ranks) must equal one process's
    dataset = torch.utils.data.TensorDataset(x, y)
    return {"params": parameters(learner), "losses": losses, "calls": calls, "sizes": sizes,
            "sharded_eval": world.evaluate(learner, dataset, 9, "cpu"),
            "eval": evaluate(learner, dataset, 9, torch.device("cpu")),
            "comm": world.describe()["communication"]}


def _worker_data_parallel(rank, port, out, world_size):
    counter = AllReduceCounter()
    _init_group(rank, port, world_size)
    results = {case: _dp_case(rank, world_size, case, "allreduce", counter) for case in DP_CASES}
    results["local_sgd"] = _dp_case(rank, world_size, "sigprop", "local_sgd", counter)
    if rank == 0:
        torch.save(results, out / "rank0.pt")
    _close_group()


def _worker_failure(rank, port, out, world_size, how):
    """Rank 1 dies (or stops answering) in its third batch; rank 0 must raise, not hang."""
    from temporal_sigprop.distributed import DistributedError
    kind, _, how = how.partition(",")
    layer_parallel = kind == "lp"
    _init_group(rank, port, world_size, timeout=4.0)
    world = _world(rank, world_size, timeout=4.0, owns_group=True, layer_parallel=layer_parallel)
    learner = make("sigprop", layers=2) if layer_parallel else make("bptt")
    x, y = data()
    learner = world.attach(learner, x, SimpleNamespace(loss_at="last", batch_size=8,
                                                       max_batches=0))
    start = None
    try:
        for i in range(1000):
            xb, yb = x[:8], y[:8]
            if rank == 1 and i == 2:
                if how == "dies":
                    os._exit(17)
                time.sleep(120)  # stuck: alive, but never reaches the next collective
            start = time.monotonic()
            world.batch_loss(learner.train_batch(*world.shard(xb, yb))["loss"])
    except DistributedError as err:
        torch.save({"error": str(err), "waited": time.monotonic() - start}, out / "rank0.pt")
        raise SystemExit(3)
    raise SystemExit("no error")


#: layer-parallel cases: cell, sigprop options, learner config, per-step labels, steps/message
LP_SCHEDULES = {
    "every_step": ({}, {}),
    "every_k": ({"schedule": "every_k", "update_k": 4}, {"loss_at": "every", "grad_clip": 0.05}),
}
LP_CASES = {
    **{f"{cell}-{name}": (cell, options, cfg, False, 1)
       for cell in ("rnn", "gru", "lstm", "lif", "discrete", "convgru")
       for name, (options, cfg) in LP_SCHEDULES.items()},
    "gru-per_step_labels": ("gru", {"prediction": "readout"}, {"loss_at": "every"}, True, 1),
    "gru-class_rows": ("gru", {"target_rows": "class"}, {}, False, 1),
    "lif-surrogate": ("lif", {"spike_mode": "surrogate"}, {}, False, 1),
    "gru-four_steps_per_message": ("gru", {}, {}, False, 4),  # T = 6: messages of 4 and 2
}


def make_lp(case):
    cell, options, cfg, _, _ = LP_CASES[case]
    return make("sigprop", cell, layers=4, cfg=cfg, options={"target_rows": "sample", **options})


def lp_data(case):
    cell, _, _, per_step, _ = LP_CASES[case]
    return data(per_step=per_step, frames=cell == "convgru")


def train_layer_parallel_reference(case):
    """One process, the plain SigProp learner, 4 layers."""
    learner = make_lp(case)
    x, y = lp_data(case)
    losses = [float(learner.train_batch(xb, yb)["loss"]) for xb, yb in batches(x, y)]
    return learner, losses, learner.predict(x)


def _worker_layer_parallel(rank, port, out, world_size):
    _init_group(rank, port, world_size)
    results = {}
    for case, (_, _, _, _, chunk) in LP_CASES.items():
        world = _world(rank, world_size, layer_parallel=True, layer_parallel_chunk=chunk)
        learner = make_lp(case)
        x, y = lp_data(case)
        executor = world.attach(learner, x, SimpleNamespace(loss_at=learner.cfg.loss_at,
                                                            batch_size=8, max_batches=0))
        losses = [world.batch_loss(executor.train_batch(xb, yb)["loss"])
                  for xb, yb in batches(x, y)]
        world.end_epoch(executor)
        results[case] = {"state": executor.state_dict(), "losses": losses,
                         "predict": executor.predict(x), "comm": world.describe()["communication"]}
    if rank == 0:
        torch.save(results, out / "rank0.pt")
    _close_group()


def _worker(scenario, rank, port, out, world_size):
    torch.set_num_threads(1)
    kind, _, arg = scenario.partition(":")
    if kind == "dp":
        _worker_data_parallel(rank, port, out, world_size)
    elif kind == "lp":
        _worker_layer_parallel(rank, port, out, world_size)
    elif kind == "fail":
        _worker_failure(rank, port, out, world_size, arg)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


# ---------------------------------------------------------------------------- data parallel
@pytest.fixture(scope="module")
def dp_results(tmp_path_factory):
    """One 2-rank launch: every data-parallel case, then sigprop under local SGD."""
    return run_ranks("dp", tmp_path_factory.mktemp("dp"), timeout=240)[0]


def train_one_process(case, rows=None):
    """The reference: one process, full global batches (or only ``rows`` of each)."""
    learner = make_dp(case)
    x, y = data()
    losses, updates = [], []
    for xb, yb in batches(x, y):
        if rows is not None:
            xb, yb = xb[rows(xb.shape[0])], yb[rows(yb.shape[0])]
        stats = learner.train_batch(xb, yb)
        losses.append(float(stats["loss"]))
        updates.append(int(stats["updates"]))
    return parameters(learner), losses, updates, learner


@pytest.mark.parametrize("case", sorted(DP_CASES))
def test_two_ranks_half_batch_equal_one_process_full_batch(case, dp_results):
    result = dp_results[case]
    reference, losses, updates, learner = train_one_process(case)
    assert max_difference(result["params"], reference) < TOL
    assert result["losses"] == pytest.approx(losses, rel=1e-12, abs=1e-12)
    # positive control: one process on the first half of each batch is visibly different
    half, _, _, _ = train_one_process(case, rows=lambda n: slice(0, (n + 1) // 2))
    assert max_difference(half, reference) > 1e3 * TOL
    # counted at torch.distributed itself: exactly one all-reduce per update, all parameters of
    # all optimizers (every layer's, for sigprop) in one flat float64 buffer, plus one
    # 'has a gradient' flag per tensor
    assert result["calls"] == updates and sum(updates) > 0
    params = {id(p): p for opt in learner.optimizers().values()
              for g in opt.param_groups for p in g["params"]}
    assert len(params) > 2  # one all-reduce per tensor would show as more calls
    bucket = 8 * (sum(p.numel() for p in params.values()) + len(params))
    assert set(result["sizes"]) == {bucket}
    assert result["comm"]["gradient_allreduces"] == result["comm"]["updates"] == sum(updates)
    method, _, _, options = DP_CASES[case]
    if method == "sigprop":  # per-step updates: T per batch; every_k (k = 4, T = 6): steps 4, 6
        per_batch = 2 if options.get("schedule") == "every_k" else STEPS
        assert updates == [per_batch] * len(BATCHES)
    # evaluation batches dealt to the ranks give exactly one process's figures
    assert result["sharded_eval"] == result["eval"]


def test_local_sgd_differs_from_allreduce_but_stays_close(dp_results):
    local, reduced = dp_results["local_sgd"], dp_results["sigprop"]
    start = parameters(make_dp("sigprop"))
    gap = max_difference(local["params"], reduced["params"])
    assert gap > 1e3 * TOL, "local SGD should not equal the all-reduced update"
    # close: its parameters moved in the direction the all-reduced updates took them (18 Adam
    # steps from the start, each rank on 4 of 8 rows)
    flat = lambda p: torch.cat([v.flatten() for v in p.values()])
    moved_local = flat(local["params"]) - flat(start)
    moved_reduced = flat(reduced["params"]) - flat(start)
    assert torch.nn.functional.cosine_similarity(moved_local, moved_reduced, dim=0) > 0.6
    assert local["losses"][-1] < local["losses"][0]  # it trained
    comm = local["comm"]
    assert comm["gradient_allreduces"] == 0
    # every 2 of the 18 updates, plus the epoch end
    updates = STEPS * len(BATCHES)
    assert comm["parameter_averages"] == updates // LOCAL_SGD_EVERY + 1
    # inside training: only the averages (the one at the epoch end comes after)
    assert sum(local["calls"]) == updates // LOCAL_SGD_EVERY


@pytest.mark.parametrize("how", ["dp,dies", "dp,stuck", "lp,dies", "lp,stuck"])
def test_a_failed_rank_stops_the_job_with_a_clear_error(how, tmp_path):
    result, elapsed, outputs = run_ranks(f"fail:{how}", tmp_path, timeout=60, expect_ok=False)
    assert result is not None, outputs[0][-3000:]
    message = result["error"]
    assert "rank 0 of 2" in message and "--dist-timeout 4 s" in message
    # within the collective timeout (4 s) and some slack, not a hang
    assert result["waited"] < 4 + 10, result
    assert elapsed < 50


# ---------------------------------------------------------------------------- layer parallel
@pytest.fixture(scope="module")
def lp_results(tmp_path_factory):
    """One 2-rank launch: every layer-parallel case (4 layers: ranks hold layers 0-1 | 2-3)."""
    return run_ranks("lp", tmp_path_factory.mktemp("lp"), timeout=240)[0]


@pytest.mark.parametrize("case", list(LP_CASES))
def test_layer_parallel_equals_one_process_exactly(case, lp_results):
    result = lp_results[case]
    reference, losses, predicted = train_layer_parallel_reference(case)
    # bit for bit: parameters, optimizer moments and step counts, update count, predictions
    assert_same(result["state"], reference.state_dict())
    assert torch.equal(result["predict"], predicted)
    assert result["losses"] == losses
    # positive control: the reference's bottom and top layers moved (a learner that never
    # stepped, or a rank that never trained its group, would pass the equality above)
    fresh = make_lp(case)
    for layer in (0, 3):
        assert any(not torch.equal(p, q) for p, q in zip(
            reference.model.cells[layer].parameters(), fresh.model.cells[layer].parameters()))
    # one [K, B + R, *out] message per K steps, forward only (rank 0 sends; layers 0-1 | 2-3)
    cell, options, _, per_step, chunk = LP_CASES[case]
    comm = result["comm"]
    assert comm["p2p_messages"] == -(-STEPS // chunk) * len(BATCHES)
    compact = not per_step  # sequence labels: sample rows run as C class rows
    rows = sum(b + (CLASSES if compact else b) for b in BATCHES)
    out = math.prod(reference.model.cells[1].out_shape)
    assert comm["p2p_bytes"] == rows * STEPS * out * 8
    # the schedule was the one asked for: updates per batch (every_k, k = 4, T = 6: after steps
    # 4 and 6; per-step labels: only the 4 labelled steps of 6 update)
    per_batch = 2 if options.get("schedule") == "every_k" else 4 if per_step else STEPS
    assert reference.update_count == per_batch * len(BATCHES)


def test_refusals_name_the_problem_and_the_fix(monkeypatch):
    from temporal_sigprop.config import TrainConfig
    from temporal_sigprop.distributed import (
        _check_batches,
        _check_scored_steps,
        setup,
        shard_bounds,
    )
    from temporal_sigprop.errors import ConfigError
    from temporal_sigprop.layer_parallel import LayerParallelSigProp, layer_groups
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="under torchrun"):
        setup(TrainConfig(method="sigprop", layer_parallel=True))
    with pytest.raises(ConfigError, match="sigprop only"):
        setup(TrainConfig(method="bptt", layer_parallel=True))
    cfg, world = setup(TrainConfig())  # one process: nothing changes
    assert cfg == TrainConfig() and not world.active and world.is_writer
    # a last batch of 1 sequence cannot feed 2 ranks; 180 = 5 × 32 + 20 can
    with pytest.raises(ConfigError, match="last batch"):
        _check_batches(161, 32, 0, 2)
    _check_batches(180, 32, 0, 2)
    _check_batches(161, 32, 5, 2)  # --max-batches 5 never reaches the short batch
    assert shard_bounds(7, 2) == [(0, 4), (4, 7)] and shard_bounds(5, 3) == [(0, 2), (2, 4), (4, 5)]
    assert layer_groups(3, 2) == [range(0, 2), range(2, 3)]
    # per-step labels scored at different steps in different shards are refused
    y = torch.full((4, 5), -1)
    y[:2, 1] = 0
    y[2:, 3] = 1
    with pytest.raises(ConfigError, match="different steps"):
        _check_scored_steps(y, shard_bounds(4, 2), 5, "every")
    y[:2, 3] = 2
    y[2:, 1] = 3
    _check_scored_steps(y, shard_bounds(4, 2), 5, "every")
    # layer parallel: more ranks than layers, options of sigprop's own loop, another method
    three_ranks = SimpleNamespace(size=3, rank=0, layer_parallel_chunk=1)
    with pytest.raises(ConfigError, match="at most 2 processes"):
        LayerParallelSigProp(make("sigprop", layers=2), three_ranks)
    two_ranks = SimpleNamespace(size=2, rank=0, layer_parallel_chunk=1)
    with pytest.raises(ConfigError, match="--traces"):
        LayerParallelSigProp(make("sigprop", layers=2, options={"traces": True}), two_ranks)
    with pytest.raises(ConfigError, match="sigprop only"):
        LayerParallelSigProp(make("bptt", layers=2), two_ranks)


# ---------------------------------------------------------------------------- the command line
#: a small real run: 180 training sequences in batches of 32 (the last one, 20, splits 10/10)
CLI_RUN = ("--task", "cue_recall:delay=5,n_train=200,n_test=100", "--model", "gru", "--hidden",
           "16", "--batch-size", "32", "--no-progress", "--method", "sigprop",
           # a constant lr: a cosine curve is drawn over --epochs, so 1 + 1 epochs would
           # follow another curve than 2
           "--lr-schedule", "constant")


def tsp_train(out: Path, *args, ranks=2, timeout=120):
    """``torchrun --nproc-per-node 2 -m temporal_sigprop train ...`` on a free port (or one
    plain process for ``ranks=1``)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())] \
        if ranks > 1 else [sys.executable]
    command = [*launcher, "-m", "temporal_sigprop", "train", *CLI_RUN, "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def assert_resumed_equals_whole(whole: Path, parts: Path):
    """Rank 0 alone wrote each run folder, and ``parts`` (1 epoch, then ``--resume`` to 2) ends
    where ``whole`` (2 epochs) does: learner state bit for bit, loop state and metrics."""
    for run in (whole, parts):
        # one metrics line per epoch (two writers would append two), the files of one run
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        assert {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= \
            {f.name for f in run.iterdir()}
    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(parts / "checkpoint.pt", weights_only=False)
    assert_same(a["learner"], b["learner"])
    for key in ("epoch", "global_step", "best_val", "last_val", "last_test", "anytime"):
        assert a["loop"][key] == b["loop"][key], key
    metrics = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
               for run in (whole, parts)]
    for x, y in zip(*metrics):
        for key in ("train_loss", "val_accuracy", "test_accuracy", "lr"):
            assert x[key] == y[key], key


@pytest.mark.parametrize("mode", ["allreduce", pytest.param("local_sgd", marks=pytest.mark.slow)])
def test_torchrun_data_parallel_rank0_writes_and_resume_equals_uninterrupted(mode, tmp_path):
    flags = ("--layers", "2", "--dp-mode", mode, "--local-sgd-every", "3")
    done = tsp_train(tmp_path / "whole", *flags, "--epochs", "2")
    # one summary on stdout (rank 0's) and one line per epoch on stderr, not one per rank
    assert done.stdout.count('"test_accuracy_at_best_val"') == 1, done.stdout
    assert done.stderr.count("epoch 2/2") == 1, done.stderr
    tsp_train(tmp_path / "parts", *flags, "--epochs", "1")
    tsp_train(tmp_path / "parts", *flags, "--epochs", "2", "--resume")
    assert_resumed_equals_whole(tmp_path / "whole", tmp_path / "parts")
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["parallel"].startswith(f"data ({mode}")


def test_torchrun_layer_parallel_resumed_equals_one_process(tmp_path):
    """3 layers on 2 ranks (layers 0-1 | 2): the layer-parallel job trains 1 epoch, is resumed,
    and ends bit for bit where an uninterrupted layer-parallel job does, and where one plain
    process does up to float32 rounding. Bit equality with the plain process held on an AVX-512
    machine but not on an AVX2 one (layer 2 differed by 2e-7): the CPU kernels sum in an order
    that depends on the ISA and the operand shapes, which differ between the two executors; the
    exact equivalence of the two is tested in float64 above."""
    flags = ("--layers", "3")
    tsp_train(tmp_path / "one", *flags, "--epochs", "2", ranks=1)
    tsp_train(tmp_path / "whole", *flags, "--layer-parallel", "--epochs", "2")
    tsp_train(tmp_path / "parts", *flags, "--layer-parallel", "--epochs", "1")
    tsp_train(tmp_path / "parts", *flags, "--layer-parallel", "--epochs", "2", "--resume")
    assert_resumed_equals_whole(tmp_path / "whole", tmp_path / "parts")
    one = torch.load(tmp_path / "one" / "checkpoint.pt", weights_only=False)["learner"]["model"]
    parts = torch.load(tmp_path / "parts" / "checkpoint.pt", weights_only=False)["learner"]["model"]
    assert one.keys() == parts.keys()
    for name in one:
        torch.testing.assert_close(parts[name], one[name], rtol=1e-5, atol=1e-5, msg=name)
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["parallel"].startswith("layer (2")
    # the resumed job's rank 0 sent each step's rows once, forward: epoch 2's 6 batches of
    # (sequences + 4 class rows) × T = 7 steps × 16 float32 (cue_recall:delay=5 has 4 classes)
    sequences, batches_, steps, classes = 180, 6, 7, 4
    assert summary["communication"]["p2p_bytes"] == \
        (sequences + batches_ * classes) * steps * 16 * 4
    assert summary["communication"]["p2p_messages"] == batches_ * steps

if __name__ == "__main__":
    scenario, rank, port, out, world_size = sys.argv[1:6]
    _worker(scenario, int(rank), int(port), Path(out), int(world_size))
