import math

import pytest
import torch

from temporal_sigprop import ConfigError, make_model
from temporal_sigprop.models import CELLS, LIFState
from temporal_sigprop.models.cells import LIFCell
from temporal_sigprop.models.estimators import sign_ste, spike

MODELS = ["rnn", "gru", "lstm", "lif", "discrete", "mlp"]


@pytest.mark.parametrize("name", MODELS)
def test_shapes_and_state(name):
    model = make_model(name, (7, 2, 3), hidden=5, layers=2, num_classes=4)
    x = torch.randn(3, 7, 2, 3)
    logits = model(x)
    assert logits.shape == (3, 7, 4)
    state = model.initial_state(3)
    assert len(state) == 2
    out, new_state = model.step(x[:, 0], state)
    assert out.shape == (3, 4)
    for s, s_new in zip(state, new_state):
        assert type(s) is type(s_new)
        for t in s_new:
            assert t.shape == (3, 5)


@pytest.mark.parametrize("name", MODELS)
def test_step_equals_drive_then_recur(name):
    cell = CELLS[name](3, 4)
    x = torch.randn(2, 3)
    state = cell.initial_state(2)
    out1, s1 = cell(x, state)
    out2, s2, _ = cell.recur(cell.drive(x), state)
    torch.testing.assert_close(out1, out2)


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError, match="gru.*lstm"):
        make_model("transformer", (5, 1))


def test_lif_dynamics_by_hand():
    cell = LIFCell(1, 1, tau_mem=2.0, threshold=1.0, recurrent=False)
    alpha = math.exp(-0.5)
    with torch.no_grad():
        cell.input_weight.fill_(1.0)
        cell.bias.zero_()
    inputs = [3.0, 3.0, 0.0, 1.0]
    v, z = 0.0, 0.0
    state = cell.initial_state(1)
    for value in inputs:
        out, state = cell(torch.tensor([[value]]), state)
        v = alpha * v * (1 - z) + (1 - alpha) * value
        z = float(v > 1.0)
        assert state.v.item() == pytest.approx(v, abs=1e-6)
        assert out.item() == z
    # 3·(1−e^{−1/2}) = 1.18 > θ spikes at step 1; the reset zeroes the potential at step 2.
    assert isinstance(state, LIFState)


def test_spikes_exactly_binary_and_surrogate_gradient():
    u = torch.randn(1000, dtype=torch.float64, requires_grad=True)
    z = spike(u)
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(z.detach(), (u > 0).double())
    (g,) = torch.autograd.grad(z.sum(), u)
    torch.testing.assert_close(g, 1 / (1 + 5 * u.detach().abs()) ** 2)


def test_estimators_in_forward_mode():
    u = torch.randn(50, dtype=torch.float64)
    v = torch.randn(50, dtype=torch.float64)
    out, tangent = torch.func.jvp(lambda a: spike(a), (u,), (v,))
    torch.testing.assert_close(tangent, v / (1 + 5 * u.abs()) ** 2)
    out, tangent = torch.func.jvp(sign_ste, (u,), (v,))
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    torch.testing.assert_close(tangent, v * (u.abs() <= 1).double())
    # torch.autograd.forward_ad agrees
    import torch.autograd.forward_ad as fwAD
    with fwAD.dual_level():
        dual = fwAD.make_dual(u, v)
        t2 = fwAD.unpack_dual(spike(dual)).tangent
    torch.testing.assert_close(t2, v / (1 + 5 * u.abs()) ** 2)
    # vmap + jacfwd
    jac = torch.func.vmap(torch.func.jacfwd(lambda a: spike(a)))(u[:, None])
    torch.testing.assert_close(jac.squeeze(), 1 / (1 + 5 * u.abs()) ** 2)


def test_lif_spikes_binary_in_model():
    model = make_model("lif", (20, 8), hidden=16, layers=2, num_classes=3)
    x = torch.rand(4, 20, 8) * 3
    state = model.initial_state(4)
    rates = []
    for t in range(20):
        _, state = model.step(x[:, t], state)
        for s in state:
            assert set(s.z.unique().tolist()) <= {0.0, 1.0}
            rates.append(s.z.mean().item())
    assert 0 < sum(rates) / len(rates) < 1


def test_mlp_is_stateless_t1():
    model = make_model("mlp", (1, 10), hidden=8, layers=3, num_classes=2)
    assert model.stateless
    assert model(torch.randn(5, 1, 10)).shape == (5, 1, 2)
