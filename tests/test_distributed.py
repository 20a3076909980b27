"""Data-parallel and layer-parallel training with torch.distributed (gloo, CPU, 2 ranks).

Each test starts its ranks as subprocesses of this file (``python tests/test_distributed.py
SCENARIO RANK PORT DIR``) on a free port chosen here, bounds them by a timeout, and compares what
rank 0 saved with the same computation in this process.
"""

from __future__ import annotations

import json
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
STEPS, FEATURES, CLASSES = 6, 3, 4

METHODS = {
    # grad_clip small enough to act on every update: clipping must see the global gradient
    "bptt": dict(cfg=dict(lr=1e-2, grad_clip=0.05), options={}),
    "sigprop": dict(cfg=dict(lr=1e-2, loss_at="every"), options=dict(target_rows="class")),
    "snap1": dict(cfg=dict(lr=1e-2), options=dict(update_every=2)),
}


# ---------------------------------------------------------------------------- shared pieces
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data(seed=0, per_step=False):
    g = torch.Generator().manual_seed(seed)
    n = sum(BATCHES)
    x = torch.randn(n, STEPS, FEATURES, generator=g, dtype=torch.float64)
    if per_step:  # labels on some steps only (-1 elsewhere), changing within a sequence
        y = torch.randint(0, CLASSES, (n, STEPS), generator=g)
        y[:, ::3] = -1
        return x, y
    y = torch.randint(0, CLASSES, (n,), generator=g)
    return x, y


def build(method, seed=0, layers=2, cfg=None, options=None):
    from temporal_sigprop import LearnerConfig, make_learner, make_model
    torch.manual_seed(seed)
    spec = METHODS[method]
    model = make_model("gru", (STEPS, FEATURES), hidden=6, layers=layers,
                       num_classes=CLASSES).double()
    return make_learner(method, model, LearnerConfig(**{**spec["cfg"], **(cfg or {})}),
                        **{**spec["options"], **(options or {})})


def batches(x, y):
    start = 0
    for size in BATCHES:
        yield x[start:start + size], y[start:start + size]
        start += size


def parameters(learner) -> dict:
    out = {f"model.{n}": p.detach().clone() for n, p in learner.model.named_parameters()}
    out.update({f"own.{i}": p.detach().clone() for i, p in enumerate(learner.own_parameters())})
    return out


def train_one_process(method, rows=None, **extra):
    """The reference: one process, full global batches (or only ``rows`` of each)."""
    learner = build(method, **extra)
    x, y = data()
    losses = []
    for xb, yb in batches(x, y):
        if rows is not None:
            xb, yb = xb[rows(xb.shape[0])], yb[rows(yb.shape[0])]
        losses.append(float(learner.train_batch(xb, yb)["loss"]))
    return parameters(learner), losses


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def run_ranks(scenario: str, tmp_path: Path, *, timeout=60, world=2, extra_env=None,
              expect_ok=True):
    """Start ``world`` ranks of ``scenario``; returns (rank 0's result, elapsed seconds)."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
    procs = [subprocess.Popen([sys.executable, str(HERE), scenario, str(r), str(port),
                               str(tmp_path), str(world)], env=env, stdout=subprocess.PIPE,
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
    result = tmp_path / "rank0.pt"
    return (torch.load(result, weights_only=False) if result.exists() else None), elapsed, outputs


# ---------------------------------------------------------------------------- the workers
def _init(rank, port, world_size, timeout=30.0, **kw):
    import datetime

    import torch.distributed as dist

    from temporal_sigprop.distributed import World
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout))
    return World(rank=rank, size=world_size, backend="gloo", timeout=timeout, owns_group=True,
                 **kw)


def _worker_data_parallel(rank, port, out, world_size, mode="allreduce", method="bptt"):
    from temporal_sigprop.harness import evaluate
    world = _init(rank, port, world_size, mode=mode, local_sgd_every=2)
    learner = build(method)
    x, y = data()
    cfg = SimpleNamespace(loss_at=learner.cfg.loss_at, batch_size=8, max_batches=0)
    learner = world.attach(learner, x, cfg)
    losses = []
    for xb, yb in batches(x, y):
        xs, ys = world.shard(xb, yb)
        losses.append(world.batch_loss(learner.train_batch(xs, ys)["loss"]))
    world.end_epoch(learner)
    # evaluation dealt round-robin (3 batches over 2 ranks) must equal one process's
    dataset = torch.utils.data.TensorDataset(x, y)
    sharded = world.evaluate(learner, dataset, 9, "cpu")
    whole = evaluate(learner, dataset, 9, torch.device("cpu"))
    if rank == 0:
        torch.save({"params": parameters(learner), "losses": losses, "sharded_eval": sharded,
                    "eval": whole, "comm": world.describe()["communication"]}, out / "rank0.pt")
    world.close()


def _worker_failure(rank, port, out, world_size, how):
    from temporal_sigprop.distributed import DistributedError
    world = _init(rank, port, world_size, timeout=4.0)
    learner = build("bptt")
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
            learner.train_batch(*world.shard(xb, yb))
    except DistributedError as err:
        torch.save({"error": str(err), "waited": time.monotonic() - start}, out / "rank0.pt")
        raise SystemExit(3)
    raise SystemExit("no error")


#: layer-parallel cases: (sigprop options, learner config, per-step labels, steps per message)
LAYER_PARALLEL = {
    "every_step": ({}, {}, False, 1),
    "every_k": ({"schedule": "every_k", "update_k": 4}, {"loss_at": "every", "grad_clip": 0.05},
                False, 1),
    "per_step_labels": ({"prediction": "readout"}, {"loss_at": "every"}, True, 1),
    "four_steps_per_message": ({}, {}, False, 4),  # T = 6: messages of 4 and 2 steps
}


def train_layer_parallel_reference(case):
    """One process, the plain SigProp learner, 4 layers."""
    options, cfg, per_step, _ = LAYER_PARALLEL[case]
    learner = build("sigprop", layers=4, cfg=cfg, options={"target_rows": "sample", **options})
    x, y = data(per_step=per_step)
    losses = [float(learner.train_batch(xb, yb)["loss"]) for xb, yb in batches(x, y)]
    return learner, losses, learner.predict(x)


def _worker_layer_parallel(rank, port, out, world_size, case):
    options, cfg, per_step, chunk = LAYER_PARALLEL[case]
    world = _init(rank, port, world_size, layer_parallel=True, layer_parallel_chunk=chunk)
    learner = build("sigprop", layers=4, cfg=cfg, options={"target_rows": "sample", **options})
    x, y = data(per_step=per_step)
    executor = world.attach(learner, x, SimpleNamespace(loss_at=learner.cfg.loss_at,
                                                        batch_size=8, max_batches=0))
    losses = [world.batch_loss(executor.train_batch(xb, yb)["loss"]) for xb, yb in batches(x, y)]
    world.end_epoch(executor)
    if rank == 0:
        torch.save({"state": executor.state_dict(), "losses": losses,
                    "predict": executor.predict(x), "comm": world.describe()["communication"]},
                   out / "rank0.pt")
    world.close()


def _worker(scenario, rank, port, out, world_size):
    torch.set_num_threads(1)
    kind, _, arg = scenario.partition(":")
    if kind == "dp":
        mode, method = arg.split(",")
        _worker_data_parallel(rank, port, out, world_size, mode, method)
    elif kind == "lp":
        _worker_layer_parallel(rank, port, out, world_size, arg)
    elif kind == "fail":
        _worker_failure(rank, port, out, world_size, arg)
    else:
        raise SystemExit(f"unknown scenario {scenario}")


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_ranks_half_batch_equal_one_process_full_batch(method, tmp_path):
    result, _, _ = run_ranks(f"dp:allreduce,{method}", tmp_path)
    reference, losses = train_one_process(method)
    assert max_difference(result["params"], reference) < TOL
    assert result["losses"] == pytest.approx(losses, rel=1e-12, abs=1e-12)
    # positive control: one process on the first half of each batch is visibly different
    half, _ = train_one_process(method, rows=lambda n: slice(0, (n + 1) // 2))
    assert max_difference(half, reference) > 1e3 * TOL
    comm = result["comm"]
    # exactly one bucketed all-reduce per update (one dtype), sigprop's per-step updates included
    assert comm["gradient_allreduces"] == comm["updates"] > 0
    if method == "sigprop":
        assert comm["updates"] == STEPS * len(BATCHES)
    # evaluation batches dealt to the ranks give exactly one process's figures
    assert result["sharded_eval"] == result["eval"]


def test_local_sgd_differs_from_allreduce_but_stays_close(tmp_path):
    local, _, _ = run_ranks("dp:local_sgd,sigprop", tmp_path)
    (tmp_path / "rank0.pt").unlink()
    reduced, _, _ = run_ranks("dp:allreduce,sigprop", tmp_path)
    start = parameters(build("sigprop"))
    gap = max_difference(local["params"], reduced["params"])
    assert gap > 1e3 * TOL, "local SGD should not equal the all-reduced update"
    # close: its parameters moved in the direction the all-reduced updates took them (18 Adam
    # steps from the start, each rank on 4 of 8 rows; measured cosine 0.82)
    flat = lambda p: torch.cat([v.flatten() for v in p.values()])
    moved_local = flat(local["params"]) - flat(start)
    moved_reduced = flat(reduced["params"]) - flat(start)
    assert torch.nn.functional.cosine_similarity(moved_local, moved_reduced, dim=0) > 0.6
    # it trained: the batch loss fell as under all-reduce
    assert local["losses"][-1] < local["losses"][0]
    comm = local["comm"]
    assert comm["gradient_allreduces"] == 0
    # every 2 of the 18 updates, plus the epoch end
    assert comm["parameter_averages"] == STEPS * len(BATCHES) // 2 + 1


@pytest.mark.parametrize("how", ["dies", "stuck"])
def test_a_failed_rank_stops_the_job_with_a_clear_error(how, tmp_path):
    result, elapsed, outputs = run_ranks(f"fail:{how}", tmp_path, timeout=60, expect_ok=False)
    assert result is not None, outputs[0][-3000:]
    message = result["error"]
    assert "rank 0 of 2" in message and "--dist-timeout 4 s" in message
    # within the collective timeout (4 s) and some slack, not a hang
    assert result["waited"] < 4 + 10, result
    assert elapsed < 50


@pytest.mark.parametrize("case", sorted(LAYER_PARALLEL))
def test_layer_parallel_equals_one_process_exactly(case, tmp_path):
    result, _, _ = run_ranks(f"lp:{case}", tmp_path)
    reference, losses, predicted = train_layer_parallel_reference(case)
    # bit for bit: parameters, optimizer moments and step counts, update count, predictions
    assert_same(result["state"], reference.state_dict())
    assert torch.equal(result["predict"], predicted)
    assert result["losses"] == losses
    # positive control: the reference itself moved (a learner that never stepped would pass)
    assert not torch.equal(reference.model.cells[3].input_weight,
                           build("sigprop", layers=4).model.cells[3].input_weight)
    # one [K, B + R, H] message per K steps, forward only (rank 0 sends; layers 0-1 | 2-3)
    comm, chunk = result["comm"], LAYER_PARALLEL[case][3]
    assert comm["p2p_messages"] == -(-STEPS // chunk) * len(BATCHES)
    rows = sum(b + (CLASSES if not LAYER_PARALLEL[case][2] else b) for b in BATCHES)
    assert comm["p2p_bytes"] == rows * STEPS * 6 * 8


def test_refusals_name_the_problem_and_the_fix(monkeypatch):
    from temporal_sigprop.config import TrainConfig
    from temporal_sigprop.distributed import (
        _check_batches,
        _check_scored_steps,
        setup,
        shard_bounds,
    )
    from temporal_sigprop.errors import ConfigError
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
    # per-step labels scored at different steps in different shards are refused
    y = torch.full((4, 5), -1)
    y[:2, 1] = 0
    y[2:, 3] = 1
    with pytest.raises(ConfigError, match="different steps"):
        _check_scored_steps(y, shard_bounds(4, 2), 5, "every")
    y[:2, 3] = 2
    y[2:, 1] = 3
    _check_scored_steps(y, shard_bounds(4, 2), 5, "every")


def torchrun_train(out: Path, *args, timeout=120):
    """``torchrun --nproc-per-node 2 -m temporal_sigprop train ...`` on a free port."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
               "-m", "temporal_sigprop", "train", *CLI_RUN, "--out", str(out), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


#: a small real run: 180 training sequences in batches of 32 (the last one, 20, splits 10/10)
CLI_RUN = ("--task", "cue_recall:delay=5,n_train=200,n_test=100", "--model", "gru", "--hidden",
           "16", "--layers", "2", "--batch-size", "32", "--no-progress")


@pytest.mark.parametrize("mode", ["allreduce", pytest.param("local_sgd", marks=pytest.mark.slow)])
def test_torchrun_cli_rank0_writes_and_resume_equals_uninterrupted(mode, tmp_path):
    # a constant lr: a cosine curve is drawn over --epochs, so 1 + 1 epochs would follow another
    flags = ("--method", "sigprop", "--dp-mode", mode, "--local-sgd-every", "3",
             "--lr-schedule", "constant")
    torchrun_train(tmp_path / "whole", *flags, "--epochs", "2")
    torchrun_train(tmp_path / "parts", *flags, "--epochs", "1")
    torchrun_train(tmp_path / "parts", *flags, "--epochs", "2", "--resume")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    # rank 0 alone writes: one metrics line per epoch (two writers would append two), the files
    # of one run and nothing else
    for run in (whole, parts):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        assert {"config.json", "metrics.jsonl", "summary.json", "checkpoint.pt"} <= \
            {f.name for f in run.iterdir()}
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["parallel"].startswith(f"data ({mode}")
    # the resumed 2-rank run is the uninterrupted one, bit for bit
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


if __name__ == "__main__":
    scenario, rank, port, out, world_size = sys.argv[1:6]
    _worker(scenario, int(rank), int(port), Path(out), int(world_size))
