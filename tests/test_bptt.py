import pytest
import torch

from temporal_sigprop import LearnerConfig, make_learner, make_model
from temporal_sigprop.losses import sequence_loss, step_targets
from temporal_sigprop.measure import SavedTensorMeter

CELLS = ["rnn", "gru", "lstm", "lif", "discrete"]


def _setup(name, rng, steps=9, layers=2, per_step=False):
    model = make_model(name, (steps, 3), hidden=6, layers=layers, num_classes=4).double()
    x = torch.randn(5, steps, 3, generator=rng, dtype=torch.float64) * 2
    if per_step:
        y = torch.randint(-1, 4, (5, steps), generator=rng)
    else:
        y = torch.randint(0, 4, (5,), generator=rng)
    return model, x, y


def _rel(a, b):
    num = sum(((a[n] - b[n]) ** 2).sum() for n in a).sqrt()
    den = sum((b[n] ** 2).sum() for n in b).sqrt()
    return (num / den).item()


@pytest.mark.parametrize("loss_at", ["last", "every"])
@pytest.mark.parametrize("name", CELLS)
def test_tbptt_k_ge_T_equals_bptt_and_k1_differs(name, loss_at, rng):
    model, x, y = _setup(name, rng)
    cfg = LearnerConfig(loss_at=loss_at)
    g_bptt = make_learner("bptt", model, cfg).gradient(x, y)
    g_full = make_learner("tbptt", model, cfg, k=x.shape[1]).gradient(x, y)
    g_long = make_learner("tbptt", model, cfg, k=100).gradient(x, y)
    g_one = make_learner("tbptt", model, cfg, k=1).gradient(x, y)
    assert _rel(g_full, g_bptt) < 1e-12
    assert _rel(g_long, g_bptt) < 1e-12
    assert _rel(g_one, g_bptt) > 1e-3


@pytest.mark.parametrize("per_step", [False, True])
def test_gradient_is_autograd_of_summed_loss(per_step, rng):
    model, x, y = _setup("gru", rng, per_step=per_step)
    learner = make_learner("bptt", model, LearnerConfig(loss_at="every"))
    grads = learner.gradient(x, y)
    targets = step_targets(y, x.shape[1], "every")
    loss = torch.nn.functional.cross_entropy(model(x).reshape(-1, 4), targets.reshape(-1),
                                             ignore_index=-1)
    expected = torch.autograd.grad(loss, list(model.parameters()))
    for (name, _), e in zip(model.named_parameters(), expected):
        torch.testing.assert_close(grads[name], e, rtol=1e-12, atol=1e-14)
    # gradient() applies nothing
    before = [p.clone() for p in model.parameters()]
    learner.gradient(x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_lr_reaches_the_optimizer(rng):
    model, x, y = _setup("rnn", rng)
    moved = []
    for lr in (1e-3, 1e-2):
        m = make_model("rnn", (9, 3), hidden=6, layers=2, num_classes=4).double()
        m.load_state_dict(model.state_dict())
        learner = make_learner("bptt", m, LearnerConfig(lr=lr, optimizer="sgd"))
        grads = learner.gradient(x, y)
        learner.train_batch(x, y)
        # one plain SGD step moves each parameter by exactly lr · gradient
        for (name, p), p0 in zip(m.named_parameters(), model.parameters()):
            torch.testing.assert_close(p0 - p, lr * grads[name])
        moved.append(sum((p0 - p).detach().abs().sum() for p, p0 in zip(m.parameters(), model.parameters())))
    assert (moved[1] / moved[0]).item() == pytest.approx(10, rel=1e-6)


def test_k_reaches_tbptt_updates(rng):
    model, x, y = _setup("gru", rng, steps=12)
    for k, chunks in ((1, 12), (5, 3), (12, 1)):
        stats = make_learner("tbptt", model, LearnerConfig(loss_at="every"), k=k).train_batch(x, y)
        assert stats["updates"] == chunks


def _bptt_memory(steps):
    model = make_model("gru", (steps, 3), hidden=16, layers=2, num_classes=4)
    learner = make_learner("bptt", model, LearnerConfig(loss_at="every"))
    x, y = torch.randn(8, steps, 3), torch.randint(0, 4, (8,))
    with SavedTensorMeter(exclude=[*model.parameters(), x]) as meter:
        learner.train_batch(x, y)
    assert meter.live == 0  # everything freed after backward
    return meter.peak


def test_bptt_memory_grows_linearly_with_T():
    peaks = [_bptt_memory(t) for t in (20, 40, 80)]
    per_step = [(peaks[1] - peaks[0]) / 20, (peaks[2] - peaks[1]) / 40]
    assert per_step[0] > 0
    assert per_step[1] == pytest.approx(per_step[0], rel=0.02)
    assert peaks[2] / peaks[0] > 3.5


def test_loss_placement_targets():
    y = torch.tensor([2, 0])
    last = step_targets(y, 3, "last")
    assert last.tolist() == [[-1, -1, 2], [-1, -1, 0]]
    every = step_targets(y, 3, "every")
    assert every.tolist() == [[2, 2, 2], [0, 0, 0]]
    logits = torch.randn(2, 3, 4)
    full = sequence_loss(logits, every)
    n = (every >= 0).sum()
    parts = sequence_loss(logits[:, :2], every[:, :2], n) + sequence_loss(logits[:, 2:], every[:, 2:], n)
    torch.testing.assert_close(full, parts)


def test_update_every_chunk_off_applies_once_per_sequence(rng):
    model, x, y = _setup("gru", rng, steps=12)
    learner = make_learner("tbptt", model, LearnerConfig(loss_at="every", optimizer="sgd", lr=0.1),
                           k=4, update_every_chunk=False)
    grads = learner.gradient(x, y)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert learner.train_batch(x, y)["updates"] == 1
    for n, p in model.named_parameters():  # one SGD step along the summed chunk gradients
        torch.testing.assert_close(before[n] - p.detach(), 0.1 * grads[n])
