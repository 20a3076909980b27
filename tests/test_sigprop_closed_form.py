"""Sigprop's closed-form one-step gradients (sigprop_closed_form.py) against autograd, bit for bit."""

import copy
import io

import pytest
import torch

from temporal_sigprop import LearnerConfig, make_learner, make_model
from temporal_sigprop import sigprop_closed_form as CF
from temporal_sigprop.measure import count_flops, train_batch_memory


def _pair(rng, name="gru", layers=2, hidden=7, steps=6, classes=4, dtype=torch.float64,
          cfg=None, **options):
    """Two identical learners: one trains through the closed form, one through autograd."""
    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    learners = []
    for closed in (True, False):
        torch.manual_seed(seed)
        model = make_model(name, (steps, 3), hidden=hidden, layers=layers,
                           num_classes=classes).to(dtype)
        learner = make_learner("sigprop", model, LearnerConfig(lr=1e-2, **(cfg or {})), **options)
        if not closed:
            learner._closed = None  # the autograd path, as for any configuration it lacks
        learners.append(learner)
    assert learners[0]._closed is not None, learners[0]._closed_why
    return learners


def _batch(rng, learner, batch=5, classes=4, scale=1.0):
    model = learner.model
    dtype = next(model.parameters()).dtype
    x = scale * torch.randn(batch, *model.input_shape, generator=rng, dtype=dtype)
    return x, torch.randint(0, classes, (batch,), generator=rng)


def _tensors(learner):
    state = [v for opt in learner.optimizers().values() for s in opt.state.values()
             for v in s.values() if torch.is_tensor(v)]
    return [p.detach() for p in [*learner.model.parameters(), *learner.own_parameters()]] + state


def _assert_bit_equal(a, b):
    ta, tb = _tensors(a), _tensors(b)
    assert len(ta) == len(tb)
    for u, v in zip(ta, tb):
        assert u.dtype == v.dtype and torch.equal(u, v)


def _closed_steps(monkeypatch):
    calls = []
    step = CF.ClosedFormStep.step
    monkeypatch.setattr(CF.ClosedFormStep, "step",
                        lambda self, *a, **k: calls.append(1) or step(self, *a, **k))
    return calls


CASES = {
    "gru1": dict(name="gru", layers=1),
    "gru2_last": dict(name="gru", cfg=dict(loss_at="last")),
    "gru2_every_k_clip": dict(name="gru", cfg=dict(loss_at="every", grad_clip=0.05),
                              schedule="every_k", update_k=4),
    "gru2_sequence_sgd": dict(name="gru", cfg=dict(loss_at="every", optimizer="sgd"),
                              schedule="sequence"),
    "gru2_class_rows_linear_weight": dict(name="gru", cfg=dict(loss_at="every", weight_decay=0.1),
                                          target_rows="class", step_weight="linear",
                                          readout_lr_scale=3.0),
    "gru2_detached_fixed_target": dict(name="gru", cfg=dict(loss_at="every"),
                                       detach_target=True, projection="fixed"),
    "gru2_placement_single_foreach": dict(name="gru", cfg=dict(loss_at="last"),
                                          local_steps="placement", single_optimizer=True,
                                          fused_optimizer=False),
    "gru1_one_row_one_unit": dict(name="gru", layers=1, hidden=1, batch=1),
    "lstm3": dict(name="lstm", layers=3, cfg=dict(loss_at="every")),
    "rnn2": dict(name="rnn", cfg=dict(loss_at="every"), temperature=0.7),
    "lif2_voltage": dict(name="lif", cfg=dict(loss_at="every"), input_scale=3.0),
    "lif2_surrogate": dict(name="lif", cfg=dict(loss_at="last"), spike_mode="surrogate",
                           surrogate_width=0.3, input_scale=3.0),
    "discrete2": dict(name="discrete", cfg=dict(loss_at="every")),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_closed_form_trains_bit_for_bit_as_autograd(case, dtype, rng, monkeypatch):
    options = dict(CASES[case])
    batch, input_scale = options.pop("batch", 5), options.pop("input_scale", 1.0)
    closed, plain = _pair(rng, dtype=dtype, **options)
    calls = _closed_steps(monkeypatch)
    for _ in range(3):
        x, y = _batch(rng, closed, batch=batch, scale=input_scale)
        a, b = closed.train_batch(x, y), plain.train_batch(x, y)
        assert torch.equal(a["loss"], b["loss"]) and torch.equal(a["local_loss"], b["local_loss"])
        assert a["updates"] == b["updates"]
    _assert_bit_equal(closed, plain)
    x, y = _batch(rng, closed, batch=batch, scale=input_scale)
    ga, gb = closed.gradient(x, y), plain.gradient(x, y)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)
    # positive control: the first learner really ran the closed form (3 batches + gradient())
    assert len(calls) == 4 * closed.model.input_shape[0]


def test_the_comparison_sees_a_wrong_gradient(rng, monkeypatch):
    """Positive control for the comparison: a gradient off by one ulp in one entry is caught."""
    closed, plain = _pair(rng, layers=1)
    bias_grad = CF._bias_grad

    def nudged(grad):
        g = bias_grad(grad).clone()
        g.view(-1)[0] = torch.nextafter(g.view(-1)[0], torch.tensor(float("inf"), dtype=g.dtype))
        return g

    monkeypatch.setattr(CF, "_bias_grad", nudged)
    x, y = _batch(rng, closed)
    closed.train_batch(x, y)
    plain.train_batch(x, y)
    with pytest.raises(AssertionError):
        _assert_bit_equal(closed, plain)


@pytest.mark.parametrize("options, model, words", [
    (dict(traces=True), "gru", "traces"),
    (dict(per_layer_backward=True), "gru", "per-layer"),
    (dict(loss="l2", detach_target=True, projection="fixed"), "gru", "loss l2"),
    (dict(normalize=True), "gru", "normalize"),
    ({}, "convgru", "readout"),
    ({}, "mlp", "MLPCell"),
])
def test_configurations_without_a_closed_form_use_autograd_and_say_why(options, model, words):
    shape = (4, 1, 6, 6) if model == "convgru" else ((1, 3) if model == "mlp" else (4, 3))
    net = make_model(model, shape, hidden=2 if model == "convgru" else 5, layers=2, num_classes=3)
    learner = make_learner("sigprop", net, LearnerConfig(), **options)
    assert learner._closed is None and words in learner._closed_why


def test_per_step_labels_half_precision_and_replaced_methods_use_autograd(rng, monkeypatch):
    closed, _ = _pair(rng)
    calls = _closed_steps(monkeypatch)
    x, _ = _batch(rng, closed)
    y_steps = torch.randint(-1, 4, (x.shape[0], x.shape[1]), generator=rng)
    closed.train_batch(x, y_steps)  # sample rows that follow each label history
    y = y_steps[:, 0].clamp_min(0)
    recur = closed.model.cells[1].recur
    monkeypatch.setattr(closed.model.cells[1], "recur", lambda d, s: recur(d, s))
    closed.train_batch(x, y)
    half, _ = _pair(rng, dtype=torch.bfloat16)
    half.train_batch(x.to(torch.bfloat16), y)
    assert calls == []
    monkeypatch.undo()
    calls = _closed_steps(monkeypatch)
    closed.train_batch(x, y)  # positive control: the closed form again
    assert len(calls) == x.shape[1]


def test_memory_and_flop_measurements_see_the_autograd_graph(rng, monkeypatch):
    closed, plain = _pair(rng, dtype=torch.float32)
    calls = _closed_steps(monkeypatch)
    x, y = _batch(rng, closed)
    saved_closed, own_closed, _ = train_batch_memory(closed, x, y)
    saved_plain, own_plain, _ = train_batch_memory(plain, x, y)
    assert saved_closed == saved_plain > 0 and own_closed == own_plain
    flops_closed, _ = count_flops(closed.train_batch, x, y)
    flops_plain, _ = count_flops(plain.train_batch, x, y)
    assert flops_closed == flops_plain > 0
    assert calls == []
    _assert_bit_equal(closed, plain)


def test_a_deep_copy_and_a_checkpoint_train_on_exactly(rng):
    """The closed form keys nothing by object identity across copies; the merged update's packed
    step counts survive torch.save/torch.load."""
    learner, _ = _pair(rng, dtype=torch.float32)
    for _ in range(2):
        learner.train_batch(*_batch(rng, learner))
    steps = [s["step"] for opt in learner.optimizers().values() for s in opt.state.values()]
    assert steps[0]._base is not None and all(s._base is steps[0]._base for s in steps)
    copied = copy.deepcopy(learner)
    buffer = io.BytesIO()
    torch.save(learner.state_dict(), buffer)
    buffer.seek(0)
    restored = copy.deepcopy(learner)
    restored.load_state_dict(torch.load(buffer))
    for _ in range(2):
        x, y = _batch(rng, learner)
        for one in (learner, copied, restored):
            one.train_batch(x, y)
    _assert_bit_equal(learner, copied)
    _assert_bit_equal(learner, restored)
    assert float(steps[0]) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_of_different_widths_score_one_loss_call_each(rng, dtype, monkeypatch):
    """Layers whose rows cannot be stacked (widths 5 and 7): one CE per layer, summed."""
    from temporal_sigprop.models.cells import GRUCell, LSTMCell
    from temporal_sigprop.models.stack import SequenceModel

    seed = int(torch.randint(0, 2**31, (1,), generator=rng))
    learners = []
    for closed in (True, False):
        torch.manual_seed(seed)
        model = SequenceModel("mixed", (6, 3), [GRUCell(3, 5), LSTMCell(5, 7)], 4).to(dtype)
        learner = make_learner("sigprop", model, LearnerConfig(lr=1e-2, loss_at="every"))
        if not closed:
            learner._closed = None
        learners.append(learner)
    calls = _closed_steps(monkeypatch)
    for _ in range(2):
        x, y = _batch(rng, learners[0])
        a, b = (one.train_batch(x, y) for one in learners)
        assert torch.equal(a["local_loss"], b["local_loss"])
    _assert_bit_equal(*learners)
    assert len(calls) == 2 * 6
