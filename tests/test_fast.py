"""The chunked / CUDA-graph execution of sigprop (temporal_sigprop/fast.py): nothing it does may
change what is learned. CPU tests run the eager chunk function (and the graph path's buffer
plumbing with a simulated capture); the CUDA tests run real graphs and are skipped without one."""

import copy
import shutil

import pytest
import torch

from temporal_sigprop import LearnerConfig, make_learner, make_model
from temporal_sigprop.cli import build_parser
from temporal_sigprop.fast import FastSigProp, fast_path, graph_reason, unsupported_reason
from temporal_sigprop.harness import TrainConfig

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _pair(rng, name="gru", steps=10, dtype=torch.float64, loss_at="every", lr=1e-2,
          optimizer="adam", grad_clip=0.0, device="cpu", chunk=3, graph=False, **options):
    """An eager SigProp learner and a FastSigProp over an exact copy of it."""
    shape = {"convgru": (steps, 1, 8, 8), "mlp": (1, 5)}.get(name, (steps, 5))
    hidden = 3 if name == "convgru" else 12
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=rng)))
    model = make_model(name, shape, hidden=hidden, layers=2, num_classes=4).to(device, dtype)
    cfg = LearnerConfig(lr=lr, loss_at=loss_at, optimizer=optimizer, grad_clip=grad_clip)
    eager = make_learner("sigprop", model, cfg, **options)
    fast = FastSigProp(copy.deepcopy(eager), chunk=chunk, graph=graph)
    return eager, fast


def _batch(rng, model, batch=6, dtype=torch.float64, device="cpu"):
    x = torch.randn(batch, *model.input_shape, generator=rng, dtype=dtype).to(device)
    y = torch.randint(0, 4, (batch,), generator=rng).to(device)
    return x, y


def _params(learner):
    return list(learner.model.parameters()) + list(learner.own_parameters())


def _max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(_params(a), _params(b), strict=True))


def _train_both(rng, eager, fast, batches=2, **kw):
    for _ in range(batches):
        x, y = _batch(rng, eager.model, dtype=next(eager.model.parameters()).dtype, **kw)
        a, b = eager.train_batch(x, y), fast.train_batch(x, y)
    return a, b


# --------------------------------------------------------------------------- eager chunk function
@pytest.mark.parametrize("loss_at", ["last", "every"])
@pytest.mark.parametrize("chunk", [1, 3, 4, 16])  # 3 and 4 do not divide T = 10; 16 > T
def test_chunks_equal_train_batch_exactly_in_float64(rng, chunk, loss_at):
    eager, fast = _pair(rng, chunk=chunk, loss_at=loss_at)
    a, b = _train_both(rng, eager, fast)
    assert fast.last_fallback is None
    for p, q in zip(_params(eager), _params(fast.learner), strict=True):
        assert torch.equal(p, q)  # the same operations in the same order: bit for bit
    assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["local_loss"], b["local_loss"])
    assert b["updates"] == a["updates"] == 10 and b["chunks"] == -(-10 // chunk)
    assert fast.learner.update_count == eager.update_count == 20
    # the optimizer state is the learner's own (shared, not copied)
    for opt_a, opt_b in zip(eager.optimizers().values(), fast.optimizers().values()):
        for pa, pb in zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"]):
            for key, value in opt_a.state[pa].items():
                assert torch.equal(value, opt_b.state[pb][key])


@pytest.mark.parametrize("chunk", [4, 7])
def test_chunks_equal_train_batch_in_float32(rng, chunk):
    eager, fast = _pair(rng, dtype=torch.float32, chunk=chunk, loss_at="last", lr=3e-3)
    _train_both(rng, eager, fast, batches=3)
    for p, q in zip(_params(eager), _params(fast.learner), strict=True):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, options", [
    ("rnn", {}), ("lstm", {}), ("lif", {}), ("lif", {"spike_mode": "surrogate"}),
    ("discrete", {}), ("mlp", {}), ("convgru", {}),
    ("gru", {"target_rows": "sample"}), ("gru", {"step_weight": "linear"}),
    ("gru", {"projection": "fixed"}), ("gru", {"single_optimizer": True}),
    ("gru", {"fused_optimizer": False}), ("gru", {"normalize": True, "temperature": 0.1}),
    ("gru", {"normalize": False, "temperature": 0.5}),
    ("gru", {"projection": "fixed", "detach_target": True}),
    ("gru", {"readout_lr_scale": 10.0}), ("gru", {"readout_lr_scale": 10.0, "single_optimizer": True}),
])
def test_chunks_equal_train_batch_across_cells_and_options(rng, name, options):
    eager, fast = _pair(rng, name=name, steps=7, **options)
    _train_both(rng, eager, fast)
    assert fast.last_fallback is None
    assert _max_diff(eager, fast.learner) == 0.0


@pytest.mark.parametrize("kw", [{"grad_clip": 0.05}, {"optimizer": "sgd", "lr": 0.1}])
def test_chunks_equal_train_batch_with_clipping_and_sgd(rng, kw):
    eager, fast = _pair(rng, steps=7, **kw)
    _train_both(rng, eager, fast)
    assert _max_diff(eager, fast.learner) == 0.0


def test_per_step_labels_fall_back_to_the_eager_learner(rng):
    eager, fast = _pair(rng, steps=6)
    x, _ = _batch(rng, eager.model)
    y = torch.randint(-1, 4, (6, 6), generator=rng)
    a, b = eager.train_batch(x, y), fast.train_batch(x, y)
    assert "per-step labels" in fast.last_fallback
    assert _max_diff(eager, fast.learner) == 0.0 and torch.equal(a["loss"], b["loss"])


def test_checkpoint_round_trip_and_mixing_with_eager_batches(rng):
    """The runner's optimizer state is the learner's: a checkpoint taken from the fast path
    resumes an eager learner, and eager batches in between see the current moments."""
    eager, fast = _pair(rng, steps=8, chunk=3)
    _train_both(rng, eager, fast, batches=1)
    x, y = _batch(rng, eager.model)
    eager.train_batch(x, y)
    fast.learner.train_batch(x, y)  # an eager batch on the wrapped learner
    resumed = copy.deepcopy(eager)
    # deep copies, as torch.save/torch.load give: Optimizer.load_state_dict keeps the very
    # tensors it is handed, so two learners loading one in-memory dict would share moments
    resumed.load_state_dict(copy.deepcopy(fast.state_dict()))
    fast.load_state_dict(copy.deepcopy(fast.state_dict()))  # new state tensors: must relink
    x, y = _batch(rng, eager.model)
    for learner in (eager, resumed, fast):
        learner.train_batch(x, y)
    assert _max_diff(eager, resumed) == 0.0 and _max_diff(eager, fast.learner) == 0.0


# --------------------------------------------------------------------------- NaN guard
def test_nan_flag_is_set_on_the_device_and_read_once_per_chunk(rng):
    eager, fast = _pair(rng, steps=9, chunk=3, dtype=torch.float32)
    x, y = _batch(rng, eager.model, dtype=torch.float32)
    # the flag itself: run_chunk sets it on the device, without a host read
    B, R = x.shape[0], fast.learner.num_classes
    state = fast.learner.model.initial_state(B + R, dtype=x.dtype)
    zero = torch.zeros(())
    sums = (zero, zero.clone(), torch.zeros((), dtype=torch.bool))
    scale = torch.ones(3) / B
    frames = torch.randn(3, B, 5, generator=rng)
    good = fast.run_chunk(frames, y, scale, scale, None, state, sums)[1][2]
    assert good.dtype == torch.bool and good.dim() == 0 and not good
    frames[1, 0, 0] = float("inf")
    assert fast.run_chunk(frames, y, scale, scale, None, state, sums)[1][2]
    # train_batch reads it after every chunk and stops at the first bad one
    fast = _pair(rng, steps=9, chunk=3, dtype=torch.float32)[1]
    stats = fast.train_batch(x, y)
    assert not stats["nonfinite"] and torch.isfinite(stats["loss"])
    x[:, 4] = float("nan")  # inside the second chunk
    stats = fast.train_batch(x, y)
    assert stats["nonfinite"] and torch.isnan(stats["loss"])
    assert stats["chunks"] == 2 and stats["updates"] == 6


def test_nan_check_once_per_batch_runs_every_chunk(rng):
    learner = _pair(rng, steps=9, dtype=torch.float32)[0]
    fast = FastSigProp(learner, chunk=3, nan_check="batch")
    x, y = _batch(rng, learner.model, dtype=torch.float32)
    x[:, 1] = float("nan")
    stats = fast.train_batch(x, y)
    assert stats["nonfinite"] and stats["chunks"] == 3


# --------------------------------------------------------------------------- refusals and switch
@pytest.mark.parametrize("options, words", [
    ({"traces": True}, ["--traces"]),
    ({"schedule": "every_k"}, ["every_k", "every step"]),
    ({"schedule": "sequence"}, ["sequence"]),
    ({"loss": "l2", "detach_target": True, "projection": "fixed"}, ["l2", "CE"]),
    ({"local_steps": "placement"}, ["placement"]),
])
def test_unsupported_configurations_are_refused_with_reasons(rng, options, words):
    model = make_model("gru", (5, 3), hidden=6, layers=2, num_classes=3)
    learner = make_learner("sigprop", model, LearnerConfig(loss_at="last"), **options)
    reason = unsupported_reason(learner)
    assert reason and all(w in reason for w in words), reason
    with pytest.raises(ValueError, match="cannot run"):
        FastSigProp(learner)
    same, note = fast_path(learner, "cuda")
    assert same is learner and note.startswith("eager") and ("CUDA" in note or words[0] in note)


def test_an_option_newer_than_the_fast_path_is_accepted_only_at_its_default():
    import dataclasses

    from temporal_sigprop.sigprop import SigPropOptions

    @dataclasses.dataclass
    class Newer(SigPropOptions):
        brand_new: int = 0
        """An option the fast path does not know."""

    model = make_model("gru", (5, 3), hidden=6, layers=1, num_classes=3)
    learner = make_learner("sigprop", model)
    learner.options = Newer()
    assert unsupported_reason(learner) is None
    learner.options = Newer(brand_new=1)
    assert "--brand-new" in unsupported_reason(learner)


def test_other_methods_and_cpu_stay_eager():
    model = make_model("gru", (5, 3), hidden=6, layers=1, num_classes=3)
    bptt = make_learner("bptt", model)
    assert "sigprop only" in unsupported_reason(bptt)
    assert fast_path(bptt, "cuda") == (bptt, "eager")
    sig = make_learner("sigprop", model)
    assert unsupported_reason(sig) is None
    assert fast_path(sig, "cpu") == (sig, "eager (the fast path is for --device cuda)")
    assert fast_path(sig, "cuda", eager=True) == (sig, "eager (--eager)")
    if not torch.cuda.is_available():
        assert "CUDA" in graph_reason(sig, "cuda")
        with pytest.raises(ValueError, match="CUDA"):
            FastSigProp(sig, graph=True)


def test_cli_has_the_eager_switch():
    assert TrainConfig().eager is False
    args = build_parser().parse_args(["train", "--method", "sigprop", "--device", "cuda",
                                      "--eager"])
    assert args.eager is True
    assert build_parser().parse_args(["train"]).eager is False


def test_lr_schedule_reaches_the_chunked_optimizer(rng):
    """The harness sets the lr before every batch (cosine): the runner's merged optimizer must
    follow, or the fast path would train at the initial lr."""
    eager, fast = _pair(rng, chunk=4)
    unscheduled = copy.deepcopy(eager)
    for factor in (1.0, 0.5, 0.1):
        eager.set_lr_factor(factor), fast.set_lr_factor(factor)
        x, y = _batch(rng, eager.model)
        eager.train_batch(x, y), fast.train_batch(x, y), unscheduled.train_batch(x, y)
        assert _max_diff(eager, fast.learner) == 0.0
    assert all(g["lr"] == pytest.approx(1e-3) for g in fast._optimizer.param_groups)
    assert _max_diff(eager, unscheduled) > 1e-4  # the schedule did change what was learned


# --------------------------------------------------------------------------- graph plumbing
@pytest.mark.parametrize("loss_at", ["last", "every"])
def test_simulated_graph_path_equals_eager(rng, loss_at):
    """Static buffers, signatures, warm-up then capture: replays of the captured body see the
    next chunk's data only through the static buffers (as a CUDA graph would)."""
    eager, fast = _pair(rng, steps=10, chunk=4, graph="simulate", loss_at=loss_at,
                        dtype=torch.float32)
    _train_both(rng, eager, fast, batches=3)
    assert fast.last_fallback is None
    assert _max_diff(eager, fast.learner) == 0.0
    # chunks 4, 4, 2: signatures (4, no readout), (2, readout at its end) for 'last'
    assert fast._backend.captures == 2
    x, y = _batch(rng, eager.model, batch=3, dtype=torch.float32)  # a smaller last batch
    eager.train_batch(x, y), fast.train_batch(x, y)
    assert _max_diff(eager, fast.learner) == 0.0 and len(fast._buffers) == 2


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compiled_step_learns_what_the_eager_learner_learns(rng):
    """``compile=True`` wraps the per-step forward (the learner's own ``step`` and
    ``layers_loss``) in torch.compile; the fused kernels may round differently, nothing else."""
    eager, fast = _pair(rng, chunk=4, loss_at="last")
    fast = FastSigProp(fast.learner, chunk=4, graph=False, compile=True)
    _train_both(rng, eager, fast)
    assert fast.last_fallback is None
    assert _max_diff(eager, fast.learner) < 1e-10


# --------------------------------------------------------------------------- CUDA
@cuda
@pytest.mark.parametrize("chunk", [4, 16])
def test_cuda_graph_equals_eager_chunks_and_train_batch(rng, chunk):
    eager, graphed = _pair(rng, steps=20, chunk=chunk, dtype=torch.float32, loss_at="last",
                           device="cuda", graph=True, lr=3e-3)
    chunked = FastSigProp(copy.deepcopy(eager), chunk=chunk, graph=False)
    for _ in range(3):  # batch 1: warm-up, batch 2: capture, batch 3: replay only
        x, y = _batch(rng, eager.model, dtype=torch.float32, device="cuda")
        eager.train_batch(x, y), chunked.train_batch(x, y), graphed.train_batch(x, y)
    assert graphed._graphs and graphed.last_fallback is None
    for p, q, r in zip(_params(eager), _params(chunked.learner), _params(graphed.learner)):
        torch.testing.assert_close(r, q, rtol=1e-6, atol=1e-7)  # graph == its eager chunks
        torch.testing.assert_close(r, p, rtol=1e-5, atol=1e-6)  # == the learner, to rounding


@cuda
def test_cuda_graph_replays_follow_the_lr_schedule(rng):
    eager, graphed = _pair(rng, steps=12, chunk=4, dtype=torch.float32, loss_at="last",
                           device="cuda", graph=True, lr=3e-3)
    for factor in (1.0, 0.3, 0.05):  # captured once, replayed at three learning rates
        eager.set_lr_factor(factor), graphed.set_lr_factor(factor)
        _train_both(rng, eager, graphed, batches=1, device="cuda")
        torch.testing.assert_close(_params(graphed.learner), _params(eager), rtol=1e-4, atol=1e-5)
    assert torch.is_tensor(graphed._optimizer.param_groups[0]["lr"])


@cuda
def test_cuda_graph_streams_host_inputs_and_flags_nan(rng):
    eager, graphed = _pair(rng, steps=12, chunk=4, dtype=torch.float32, device="cuda",
                           graph=True)
    for _ in range(3):
        x, y = _batch(rng, eager.model, dtype=torch.float32)  # stays on the host
        eager.train_batch(x.cuda(), y.cuda())
        graphed.train_batch(x, y)
    assert _max_diff(eager, graphed.learner) < 1e-5
    x, y = _batch(rng, eager.model, dtype=torch.float32)
    x[:, 5] = float("nan")
    stats = graphed.train_batch(x, y)
    assert stats["nonfinite"] and stats["chunks"] == 2


@cuda
def test_cuda_harness_uses_the_fast_path_unless_eager():
    from temporal_sigprop import train
    common = dict(task="cue_recall:delay=3,n_train=60,n_test=30", model="gru", hidden=8,
                  layers=2, epochs=2, batch_size=20, method="sigprop", device="cuda",
                  progress=False)
    fast, slow = train(**common), train(**common, eager=True)
    assert fast["execution"].startswith("cuda-graph") and slow["execution"].startswith("eager")
    assert fast["val_accuracy"] == pytest.approx(slow["val_accuracy"], abs=0.05)
