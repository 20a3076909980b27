"""e-prop and forward gradients: exact where they must be, approximate where they should be, no
graph and memory flat in T."""


import pytest
import torch

from temporal_sigprop import LearnerConfig, make_learner, make_model
from temporal_sigprop.errors import ConfigError, IncompatibleError
from temporal_sigprop.measure import SavedTensorMeter
from temporal_sigprop.measure import allocation_peak as _allocation_peak

from baselines.eprop import EProp
from baselines.fwdgrad import ForwardGradient

FEATURES, CLASSES = 3, 4


def _model(name, rng, steps, layers=1, hidden=6, zero_recurrent=False, **cell_options):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    model = make_model(name, (steps, FEATURES), hidden=hidden, layers=layers, num_classes=CLASSES,
                       **cell_options).double()
    if zero_recurrent:
        with torch.no_grad():
            for cell in model.cells:
                cell.recurrent_weight.zero_()
    return model


def _batch(rng, steps, batch=5, per_step=False, dtype=torch.float64):
    x = torch.randn(batch, steps, FEATURES, generator=rng, dtype=dtype) * 2
    if per_step:
        y = torch.randint(-1, CLASSES, (batch, steps), generator=rng)
        y[0, -1] = 1  # at least one label at the last step, so "last" scores something
    else:
        y = torch.randint(0, CLASSES, (batch,), generator=rng)
    return x, y


def _rel(a, b):
    num = sum(((a[n] - b[n]) ** 2).sum() for n in b).sqrt()
    den = sum((b[n] ** 2).sum() for n in b).sqrt()
    return (num / den).item()


def _spikes(model, x):
    """Total number of spikes of every layer over the batch (so LIF tests are not vacuous)."""
    total, h = 0.0, None
    with torch.no_grad():
        state = model.initial_state(x.shape[0], dtype=x.dtype)
        for t in range(x.shape[1]):
            h = model.frame(x[:, t])
            new = []
            for cell, s in zip(model.cells, state):
                h, s = cell(h, s)
                total += float(h.sum())
                new.append(s)
            state = tuple(new)
    return total


def _case(name, rng, steps, *, layers=1, hidden=6, batch=5, per_step=False, input_scale=1.0,
          zero_recurrent=False, **cell_options):
    """A model and a batch; for lif, redrawn (both) until the stack spikes at least once, so a
    spiking test is never vacuous (an unlucky draw of 3 stacked LIF layers at T = 1 stays silent
    about 1 time in 250)."""
    for _ in range(100):
        model = _model(name, rng, steps, layers=layers, hidden=hidden,
                       zero_recurrent=zero_recurrent, **cell_options)
        x, y = _batch(rng, steps, batch=batch, per_step=per_step)
        x = x * input_scale
        if name != "lif" or _spikes(model, x) > 0:
            return model, x, y
    raise AssertionError("no spiking LIF case in 100 draws")




# ====================================================================================== e-prop
@pytest.mark.parametrize("loss_at", ["last", "every"])
@pytest.mark.parametrize("case", ["lif_no_recurrent", "lif_zero_recurrent", "rnn_zero_recurrent",
                                  "lstm_zero_recurrent", "rnn_2_layers_zero_recurrent"])
def test_eprop_equals_bptt_without_recurrent_connections(case, loss_at, rng):
    """Without connections between neurons, the only temporal path from a weight to the loss runs
    through the neuron's own implicit state, which the eligibility vector carries exactly; with a
    zero recurrent matrix even that matrix's gradient Σ_t δ_t h_{t−1}ᵀ is exact (no path through
    time is multiplied by anything but zero)."""
    steps = 11
    layers = 2 if "2_layers" in case else 1
    name = case.split("_")[0]
    options = {"recurrent": False} if case == "lif_no_recurrent" else {}
    model, x, y = _case(name, rng, steps, layers=layers, zero_recurrent="zero" in case,
                        per_step=(loss_at == "every"), **options)
    cfg = LearnerConfig(loss_at=loss_at)
    g_bptt = make_learner("bptt", model, cfg).gradient(x, y)
    g_eprop = make_learner("eprop", model, cfg, feedback="symmetric").gradient(x, y)
    assert set(g_eprop) == set(g_bptt)
    assert _rel(g_eprop, g_bptt) < 1e-10
    if name == "lif":
        assert _spikes(model, x) > 0
        # the reset term is exercised: dropping it (the paper's treatment) changes the gradient
        g_reset = make_learner("eprop", model, cfg, lif_trace="reset").gradient(x, y)
        assert _rel(g_reset, g_bptt) > 1e-6


@pytest.mark.parametrize("name", ["rnn", "lstm", "lif"])
def test_eprop_equals_bptt_for_stacks_at_one_step(name, rng):
    """At T = 1 nothing crosses time: the same-step backprop through the stack is all there is."""
    model, x, y = _case(name, rng, 1, layers=3, batch=8, input_scale=2.0)
    g_bptt = make_learner("bptt", model).gradient(x, y)
    g_eprop = make_learner("eprop", model).gradient(x, y)
    assert _rel(g_eprop, g_bptt) < 1e-10
    if name == "lif":
        assert _spikes(model, x) > 0


@pytest.mark.parametrize("name", ["rnn", "lstm", "lif"])
def test_eprop_differs_from_bptt_with_recurrent_connections(name, rng):
    model = _model(name, rng, 12)
    with torch.no_grad():  # make sure the recurrent matrix matters
        model.cells[0].recurrent_weight.mul_(3.0)
    x, y = _batch(rng, 12)
    cfg = LearnerConfig(loss_at="every")
    g_bptt = make_learner("bptt", model, cfg).gradient(x, y)
    g_eprop = make_learner("eprop", model, cfg).gradient(x, y)
    assert _rel(g_eprop, g_bptt) > 1e-4
    # ...but the readout's gradient stays exact, and the estimate points the same way
    torch.testing.assert_close(g_eprop["readout.weight"], g_bptt["readout.weight"],
                               rtol=1e-10, atol=1e-12)
    flat = lambda g: torch.cat([g[n].flatten() for n in sorted(g_bptt)])  # noqa: E731
    assert torch.nn.functional.cosine_similarity(flat(g_eprop), flat(g_bptt), dim=0) > 0


def test_eprop_random_feedback_differs_and_is_saved(rng):
    model = _model("lif", rng, 10, recurrent=False)
    x, y = _batch(rng, 10)
    cfg = LearnerConfig(loss_at="every")
    symmetric = make_learner("eprop", model, cfg).gradient(x, y)
    learner = make_learner("eprop", model, cfg, feedback="random")
    random = learner.gradient(x, y)
    assert _rel(random, symmetric) > 1e-3
    torch.testing.assert_close(random["readout.weight"], symmetric["readout.weight"])
    # the feedback matrix is a fixed, learner-owned parameter that the checkpoint holds
    (feedback,) = learner.own_parameters()
    assert not feedback.requires_grad and feedback.shape == model.readout.weight.shape
    assert not any(n.startswith("learner.") for n in random)
    state = learner.state_dict()
    other = make_learner("eprop", model, cfg, feedback="random")
    assert not torch.equal(other.feedback, learner.feedback)
    other.load_state_dict(state)
    assert torch.equal(other.feedback, learner.feedback)
    assert _rel(other.gradient(x, y), random) < 1e-14


@pytest.mark.parametrize("name", ["rnn", "lif", "lstm"])
def test_eprop_train_batch_reduces_loss(name, rng):
    model = _model(name, rng, 6, hidden=16)
    x, _ = _batch(rng, 6, batch=16)
    y = x.sum(1).argmax(-1)  # learnable: the channel with the largest total input
    learner = make_learner("eprop", model, LearnerConfig(lr=2e-2, loss_at="every"))
    first = float(learner.train_batch(x, y)["loss"])
    for _ in range(40):
        stats = learner.train_batch(x, y)
    assert stats["updates"] == 1
    assert float(stats["loss"]) < 0.8 * first  # measured 0.46–0.66 for lif over 10 seeds


def test_eprop_online_updates(rng):
    model = _model("lstm", rng, 6)
    x, y = _batch(rng, 6)
    cfg = LearnerConfig(lr=1e-2, loss_at="every")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    online = make_learner("eprop", model, cfg, update_every=2)
    g_fixed = online.gradient(x, y)  # gradient() holds the parameters fixed whatever the option
    assert _rel(g_fixed, make_learner("eprop", model, cfg).gradient(x, y)) < 1e-14
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert online.train_batch(x, y)["updates"] == 3
    last = make_learner("eprop", model, LearnerConfig(loss_at="last"), update_every=2)
    assert last.train_batch(x, y)["updates"] == 1  # only steps with a scored label trigger one
    with pytest.raises(ConfigError, match="update-every"):
        make_learner("eprop", model, update_every=-1)


@pytest.mark.parametrize("name,options", [("lif", {}), ("lif", {"lif_trace": "presynaptic"}),
                                          ("lstm", {}), ("rnn", {})])
def test_eprop_memory_flat_in_T_and_no_graph(name, options, rng):
    peaks, states = [], []
    for steps in (6, 12, 24):
        model = _model(name, rng, steps, hidden=8)
        x, y = _batch(rng, steps, batch=4)
        learner = make_learner("eprop", model, LearnerConfig(loss_at="every"), **options)
        with SavedTensorMeter(exclude=[*model.parameters(), x]) as meter:
            stats = learner.train_batch(x, y)
        assert meter.peak == 0 and stats["loss"].grad_fn is None
        states.append(learner.state_bytes)
        peaks.append(_allocation_peak(lambda: learner.gradient(x, y)))
    assert len(set(states)) == 1
    if name != "rnn":
        assert states[0] > 0
    # allocations grow only by the per-step label tensor (int64 [B, T]): 8·B bytes per step
    assert peaks[2] - peaks[0] <= 8 * 4 * 18 + 256, peaks


def test_eprop_presynaptic_traces_are_smaller(rng):
    model = _model("lif", rng, 5, hidden=8)
    x, y = _batch(rng, 5)
    exact = make_learner("eprop", model)
    shared = make_learner("eprop", model, lif_trace="presynaptic")
    g_exact, g_shared = exact.gradient(x, y), shared.gradient(x, y)
    assert shared.state_bytes * 4 < exact.state_bytes  # O(B·(I+H)) vs O(B·H·(I+H))
    assert _rel(g_shared, g_exact) > 1e-6


def test_allocation_peak_sees_bptt_growth(rng):
    """The memory check above can fail: BPTT's allocations grow with T under the same meter."""
    peaks = []
    for steps in (6, 24):
        model = _model("lstm", rng, steps, hidden=8)
        x, y = _batch(rng, steps, batch=4)
        learner = make_learner("bptt", model, LearnerConfig(loss_at="every"))
        peaks.append(_allocation_peak(lambda: learner.gradient(x, y)))
    assert peaks[1] > 2 * peaks[0]


@pytest.mark.parametrize("name", ["gru", "discrete", "mlp", "convgru"])
def test_eprop_refuses_other_cells(name, rng):
    if name == "convgru":
        model = make_model(name, (3, 1, 6, 6), hidden=2, num_classes=3)
    else:
        model = _model(name, rng, 4)
    with pytest.raises(IncompatibleError, match="rnn, lif and lstm"):
        make_learner("eprop", model)
    with pytest.raises(IncompatibleError, match="rnn, lif and lstm"):
        EProp(model)


def test_eprop_rejects_unknown_options(rng):
    model = _model("rnn", rng, 4)
    with pytest.raises(ConfigError, match="symmetric, random"):
        make_learner("eprop", model, feedback="direct")
    with pytest.raises(ConfigError, match="exact, reset, presynaptic"):
        make_learner("eprop", model, lif_trace="none")


# ============================================================================ forward gradient
@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "lif", "discrete"])
def test_directional_derivative_equals_bptt(name, layers, vectorize, rng):
    steps = 7
    model, x, y = _case(name, rng, steps, layers=layers, hidden=5, per_step=(layers == 2))
    cfg = LearnerConfig(loss_at="every")
    g = make_learner("bptt", model, cfg).gradient(x, y)
    learner = make_learner("fwdgrad", model, cfg, tangents=3, vectorize=vectorize)
    tangents = {n: torch.randn((3, *p.shape), generator=rng, dtype=p.dtype)
                for n, p in learner.named_model_parameters().items()}
    d = learner.directional_derivatives(x, y, tangents)
    expected = torch.stack([sum((g[n] * v[i]).sum() for n, v in tangents.items())
                            for i in range(3)])
    g_norm = sum((t ** 2).sum() for t in g.values()).sqrt()
    v_norm = torch.stack([sum((v[i] ** 2).sum() for v in tangents.values()).sqrt()
                          for i in range(3)])
    assert ((d - expected).abs() / (g_norm * v_norm)).max() < 1e-10
    if name == "lif":
        assert _spikes(model, x) > 0


def test_directional_derivative_equals_bptt_convgru(rng):
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))
    model = make_model("convgru", (3, 1, 6, 6), hidden=2, layers=1, num_classes=3).double()
    x = torch.randn(2, 3, 1, 6, 6, generator=rng, dtype=torch.float64)
    y = torch.randint(0, 3, (2,), generator=rng)
    g = make_learner("bptt", model).gradient(x, y)
    learner = make_learner("fwdgrad", model, tangents=2)
    v = learner.sample_tangents()
    d = learner.directional_derivatives(x, y, v)
    expected = torch.stack([sum((g[n] * v[n][i]).sum() for n in g) for i in range(2)])
    torch.testing.assert_close(d, expected, rtol=1e-10, atol=1e-12)


def test_forward_gradient_is_mean_of_d_times_v_and_unbiased(rng):
    model = _model("rnn", rng, 5, hidden=3)
    x, y = _batch(rng, 5, batch=6)
    cfg = LearnerConfig(loss_at="every")
    g = make_learner("bptt", model, cfg).gradient(x, y)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
    torch.manual_seed(seed)  # the tangent generator is seeded from the global RNG (the run's seed)
    learner = make_learner("fwdgrad", model, cfg, tangents=2000)
    estimate = learner.gradient(x, y)
    # same seed, same tangents: g_hat = (1/k) Σ d_i v_i
    torch.manual_seed(seed)
    twin = make_learner("fwdgrad", model, cfg, tangents=2000)
    v = twin.sample_tangents()
    d = twin.directional_derivatives(x, y, v)
    for n in g:
        torch.testing.assert_close(estimate[n], torch.einsum("k,k...->...", d, v[n]) / 2000)
    flat = lambda t: torch.cat([t[n].flatten() for n in sorted(g)])  # noqa: E731
    p = flat(g).numel()
    cosine = torch.nn.functional.cosine_similarity(flat(estimate), flat(g), dim=0)
    # E[cos] ≈ (1 + (p + 1)/k)^(-1/2) ≈ 0.99 here; one tangent is near-orthogonal in p dims
    assert p < 60 and cosine > 0.9
    one = make_learner("fwdgrad", model, cfg, tangents=1).gradient(x, y)
    assert torch.nn.functional.cosine_similarity(flat(one), flat(g), dim=0) < cosine


def test_forward_gradient_loop_accumulates_one_tangent_at_a_time(rng):
    model = _model("gru", rng, 4, hidden=3)
    x, y = _batch(rng, 4)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng))
    torch.manual_seed(seed)
    learner = make_learner("fwdgrad", model, tangents=3, vectorize=False)
    estimate = learner.gradient(x, y)
    assert learner.state_bytes < 2 * sum(p.numel() * 8 for p in model.parameters())  # one tangent
    torch.manual_seed(seed)
    twin = make_learner("fwdgrad", model, tangents=3, vectorize=False)
    expected = {n: torch.zeros_like(g) for n, g in estimate.items()}
    for _ in range(3):
        v = twin.sample_tangents(1)
        d = twin.directional_derivatives(x, y, v)
        for n in expected:
            expected[n] += d[0] * v[n][0] / 3
    assert _rel(estimate, expected) < 1e-12


def test_forward_gradient_keeps_no_graph(rng):
    model = _model("lstm", rng, 8, layers=2)
    x, y = _batch(rng, 8)
    learner = make_learner("fwdgrad", model, LearnerConfig(loss_at="every"), tangents=3)
    seen = []
    model.readout.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    with SavedTensorMeter(exclude=[*model.parameters(), x]) as meter:
        stats = learner.train_batch(x, y)
        grads = learner.gradient(x, y)
    assert meter.peak == 0
    assert seen and not any(seen)
    assert stats["loss"].grad_fn is None and not stats["loss"].requires_grad
    assert all(t.grad_fn is None for t in grads.values())


@pytest.mark.parametrize("vectorize", [True, False])
def test_forward_gradient_memory_flat_in_T(vectorize, rng):
    peaks, states = [], []
    for steps in (4, 8, 16):
        model = _model("rnn", rng, steps, hidden=8)
        x, y = _batch(rng, steps, batch=4)
        learner = make_learner("fwdgrad", model, LearnerConfig(loss_at="every"), tangents=3,
                               vectorize=vectorize)
        learner.gradient(x, y)
        states.append(learner.state_bytes)
        peaks.append(_allocation_peak(lambda: learner.gradient(x, y)))
    assert len(set(states)) == 1 and states[0] > 0
    # growth: labels (8·B bytes per step) and the per-step index of scored rows (8·B)
    assert peaks[2] - peaks[0] <= 2 * 8 * 4 * 12 + 512, peaks


def test_forward_gradient_trains_and_keeps_dtype(rng):
    model = _model("gru", rng, 5, hidden=4).float()
    x, _ = _batch(rng, 5, batch=8, dtype=torch.float32)
    y = x.sum(1).argmax(-1)
    learner = make_learner("fwdgrad", model, LearnerConfig(lr=3e-2, loss_at="every"),
                           tangents=64)
    assert all(g.dtype == torch.float32 for g in learner.gradient(x, y).values())
    first = float(learner.train_batch(x, y)["loss"])
    for _ in range(40):
        stats = learner.train_batch(x, y)
    assert float(stats["loss"]) < 0.8 * first


def test_forward_gradient_generator_is_checkpointed(rng):
    model = _model("rnn", rng, 4)
    x, y = _batch(rng, 4)
    learner = make_learner("fwdgrad", model, tangents=2)
    learner.gradient(x, y)
    state = learner.state_dict()
    after = learner.sample_tangents()
    other = make_learner("fwdgrad", model, tangents=2)  # global RNG moved on: another seed
    assert not torch.equal(other.sample_tangents()["readout.bias"], after["readout.bias"])
    other.load_state_dict(state)
    again = other.sample_tangents()
    assert all(torch.equal(after[n], again[n]) for n in after)


def test_forward_gradient_rejects_zero_tangents(rng):
    with pytest.raises(ConfigError, match="tangents"):
        ForwardGradient(_model("rnn", rng, 3), options=ForwardGradient.Options(tangents=0))
