"""Sigprop's one-step gradients written out, bit for bit what autograd computes, without autograd.

Why. Every layer of sigprop learns from a loss one step deep (sigprop.py's module docstring): per
step a cell step, a local loss, the readout's loss, one backward pass over a graph of ≈ 30 small
nodes, one optimizer step. At the bench's sizes (GRU-32, batch 8, CPU) the arithmetic is
microseconds and the time went to machinery: the autograd engine alone took a third of a step,
recording the graph in the forward pass much of the rest (benchmarks/sigprop_speed.md has the
profile). The backward of such a short graph is short to write down.

What. The forward pass of a step runs without autograd and keeps what its backward needs; the
backward is the chain of the *same* derivative kernels, on the same operands with the same memory
layouts, that autograd's nodes would call for this graph:

    CE sum:        dlogp = nll_loss_backward(g, logp, y);   dlogits = _log_softmax_backward_data(dlogp, logp)
    h·sᵀ/τ (+ log n_c):  dA = dlogits · (1/τ);  dh = dA·s,  ds = dAᵀ·h   (bmm for stacked layers)
    split, stack:  cat, unbind
    gru:  dn = dh⊙(1−u), du = −(dh⊙n) + dh⊙h₋, dpre_n = tanh_backward(dn, n), dr = dpre_n⊙g_n,
          dg_n = dpre_n⊙r, dpre_{r,u} = sigmoid_backward(dr|du, r|u)
    lstm: dtc = dh⊙σ(o), dc = tanh_backward(dtc, tanh c), … , dpre = cat(di, df, dg, do)
    rnn:  dpre = tanh_backward(dh, h);   lif: dcurrent = dv·(1 − α);   discrete: da = d(local)
    linear x·Wᵀ + b (addmm):   dW = dᵀ·x,   db = Σ_rows d;   recurrent h·Uᵀ (mm):  dU = dᵀ·h

where ``g`` is the loss's weight (``a_t``, or ``1/n`` for the readout) as a 0-dim tensor, the
derivative that autograd's ``MulBackward`` would hand down from ``loss · a_t``. A sum of two
gradient contributions (``du``) is the engine's accumulation (IEEE addition commutes, so the order
of arrival does not matter). Floating-point results equal autograd's exactly: the golden runs
(tests/test_sigprop_golden.py, float32 and float64 hashes) and the per-step comparison in
tests/test_sigprop_closed_form.py check it for every supported cell and option.

When (``unsupported_reason``). Dense rnn, gru, lstm, lif and discrete cells used as their classes
define them (an instance whose ``drive``/``recur`` was replaced runs through autograd), an
``nn.Linear`` readout, the CE local loss with class rows (also sample rows with sequence labels,
which sigprop computes as class rows plus ``log n_c``), without ``normalize``, traces or per-layer
backward; on the CPU in float32 or float64 (where its bits were checked). Anything else, and any
batch while saved-tensor hooks (the harness's memory meter) or a dispatch mode (FLOP counting) are
active, runs through autograd as before: the memory and FLOP figures keep measuring the autograd
graph, whose saved tensors are what this path keeps too.
"""

from __future__ import annotations

import torch
from torch import nn

from .models.cells import Cell, DiscreteCell, ElmanCell, GRUCell, LIFCell, LSTMCell


def _kernel(op):
    """The C++ entry of an aten operator overload (its Python ``__call__`` only forwards to it:
    ≈ 1 µs a call, 7 calls a step); the overload itself where torch does not expose it."""
    return getattr(op, "_op", op)


_sigmoid_backward = _kernel(torch.ops.aten.sigmoid_backward.default)
_tanh_backward = _kernel(torch.ops.aten.tanh_backward.default)
_nll_forward = _kernel(torch.ops.aten.nll_loss_forward.default)
_nll_backward = _kernel(torch.ops.aten.nll_loss_backward.default)
_linear = torch.nn.functional.linear
_SUM = 2  # torch's reduction enum: sum
_IGNORE = -1


def unsupported_reason(learner) -> str | None:
    """Why ``learner``'s configuration needs autograd (None if the closed form applies)."""
    o = learner.options
    if o.traces:
        return "--traces computes its own per-layer gradients"
    if o.per_layer_backward:
        return "--per-layer-backward is a memory option of the autograd path"
    if o.loss != "ce":
        return f"--loss {o.loss}: the closed form implements the CE local loss"
    if o.normalize:
        return "--normalize: the closed form implements raw dot products"
    if type(learner.readout) is not nn.Linear:
        return "the readout is not a plain nn.Linear"
    for cell in learner.model.cells:
        kind = type(cell)
        if kind not in _CELLS:
            return f"{kind.__name__} has no closed-form step"
        if kind.drive is not Cell.drive:
            return f"{kind.__name__} has its own drive"
    return _replaced(learner)


def _replaced(learner) -> str | None:
    """A method replaced on an instance (a test's spy, a user's patch) is honoured by autograd
    only: which of the cells' ``drive``/``recur`` or the readout's ``forward`` is."""
    if "forward" in vars(learner.readout):
        return "the readout's forward was replaced"
    for cell in learner.model.cells:
        if "drive" in vars(cell) or "recur" in vars(cell):
            return f"{type(cell).__name__}'s drive or recur was replaced"
    return None


# --------------------------------------------------------------------------- matrix products
def _mm_grad_mat1(grad, mat1, mat2):
    """∂(mat1 @ mat2)/∂mat1 · grad as autograd's ``mm_mat1_backward`` computes it (a column-major
    mat1 gets a column-major gradient: another product order, hence other bits)."""
    if mat1.stride(0) == 1 and mat1.stride(1) == mat1.shape[0]:
        return mat2.mm(grad.t()).t()
    return grad.mm(mat2.t())


def _mm_grad_mat2(grad, mat1, mat2):
    """∂(mat1 @ mat2)/∂mat2 · grad as autograd's ``mm_mat2_backward`` computes it."""
    if mat2.stride(0) == 1 and mat2.stride(1) == mat2.shape[0]:
        return grad.t().mm(mat1).t()
    return mat1.t().mm(grad)


def _weight_grad(grad, inp, weight):
    """Gradient of ``weight`` in ``inp @ weight.T`` (``F.linear``'s addmm, or ``@ W.T``'s mm):
    the product's mat2 is ``weight.t()``, column-major for a contiguous weight, so autograd
    computes ``(gradᵀ·inp)ᵀ`` and transposes it back: ``gradᵀ·inp``."""
    if weight.is_contiguous():
        return grad.t().mm(inp)
    return _mm_grad_mat2(grad, inp, weight.t()).t()


def _bias_grad(grad):
    """The engine's ``sum_to`` of a broadcast bias's gradient (a sum over the rows; keepdim or
    not is the same reduction)."""
    return grad.sum(0)


# --------------------------------------------------------------------------- cells
# forward(cell, own, drive, state, consts) -> (out, new_state, local, saved)
# backward(cell, own, saved, d_local, consts) -> (d_drive, [gradient of each of ``own``])
# ``own``: the cell's parameters beyond the drive's (``_own_parameters``), looked up once a batch
# ``consts``: 0-dim tensors of the step's dtype (``_Constants``): a Python float in an op is a
# wrapped scalar that each call converts to the tensor's dtype; the converted value gives the
# same bits and saves that conversion.

def _gru_forward(cell, own, drive, state, consts):
    h_prev = state.h
    d_r, d_u, d_n = drive.chunk(3, dim=-1)
    g_r, g_u, g_n = _linear(h_prev, own[0], own[1]).chunk(3, dim=-1)
    r = torch.sigmoid(d_r + g_r)
    u = torch.sigmoid(d_u + g_u)
    n = torch.tanh(d_n + r * g_n)
    one_minus_u = consts.one - u
    h = one_minus_u * n + u * h_prev
    return h, type(state)(h), h, (h_prev, r, u, n, g_n, one_minus_u)


def _gru_backward(cell, own, saved, dh, consts):
    h_prev, r, u, n, g_n, one_minus_u = saved
    dn = dh * one_minus_u
    du = dh * h_prev - dh * n  # bit for bit −(dh⊙n) + dh⊙h₋ (rsub's backward, then the sum)
    dpre_n = _tanh_backward(dn, n)
    dr = dpre_n * g_n
    dg_n = dpre_n * r
    dpre_r = _sigmoid_backward(dr, r)
    dpre_u = _sigmoid_backward(du, u)
    d_drive = torch.cat([dpre_r, dpre_u, dpre_n], -1)
    d_rec = torch.cat([dpre_r, dpre_u, dg_n], -1)
    return d_drive, [_weight_grad(d_rec, h_prev, own[0]), _bias_grad(d_rec)]


def _lstm_forward(cell, own, drive, state, consts):
    h_prev = state.h
    pre = drive + h_prev @ own[0].T
    i, f, g, o = pre.chunk(4, dim=-1)
    sf, si, tg = torch.sigmoid(f), torch.sigmoid(i), torch.tanh(g)
    c = sf * state.c + si * tg
    so = torch.sigmoid(o)
    tc = torch.tanh(c)
    h = so * tc
    return h, type(state)(h, c), h, (h_prev, state.c, si, sf, tg, so, tc)


def _lstm_backward(cell, own, saved, dh, consts):
    h_prev, c_prev, si, sf, tg, so, tc = saved
    dso = dh * tc
    dc = _tanh_backward(dh * so, tc)
    dsf = dc * c_prev
    dsi = dc * tg
    dtg = dc * si
    dpre = torch.cat([_sigmoid_backward(dsi, si), _sigmoid_backward(dsf, sf),
                      _tanh_backward(dtg, tg), _sigmoid_backward(dso, so)], -1)
    return dpre, [_weight_grad(dpre, h_prev, own[0])]


def _recur_forward(cell, own, drive, state, consts):
    """Cells whose backward needs only the state and the output: their own ``recur``."""
    out, new_state, local = cell.recur(drive, state)
    return out, new_state, local, (state, out)


def _elman_backward(cell, own, saved, dh, consts):
    state, h = saved
    dpre = _tanh_backward(dh, h)
    return dpre, [_weight_grad(dpre, state.h, own[0])]


def _discrete_backward(cell, own, saved, da, consts):
    state, _ = saved  # local = the pre-activation a = drive + h₋ Uᵀ: the sign is not differentiated
    return da, [_weight_grad(da, state.h, own[0])]


def _lif_backward(cell, own, saved, dv, consts):
    state, _ = saved  # v = α v₋ (1 − z₋) + (1 − α)(drive + z₋ Wᵀ): the spike z is not differentiated
    d_current = dv * consts.of(1 - cell.alpha)
    if not own:  # no recurrent weight
        return d_current, []
    return d_current, [_weight_grad(d_current, state.z, own[0])]


def _own_parameters(cell):
    """The parameters a cell's backward returns gradients for, in that order (beyond the drive's
    ``input_weight`` and ``bias``)."""
    if type(cell) is GRUCell:
        return [cell.recurrent_weight, cell.recurrent_bias]
    return [cell.recurrent_weight] if cell.recurrent_weight is not None else []


_CELLS = {
    GRUCell: (_gru_forward, _gru_backward),
    LSTMCell: (_lstm_forward, _lstm_backward),
    ElmanCell: (_recur_forward, _elman_backward),
    DiscreteCell: (_recur_forward, _discrete_backward),
    LIFCell: (_recur_forward, _lif_backward),
}


class _Constants:
    """0-dim tensors of one dtype and device: ``one``, ``inv_temperature``, and ``of(value)``."""

    def __init__(self, dtype, device, inv_temperature):
        self.dtype, self.device = dtype, device
        self._made = {}
        self.one = self.of(1.0)
        self.inv_temperature = self.of(inv_temperature)

    def of(self, value: float) -> torch.Tensor:
        made = self._made.get(value)
        if made is None:
            made = self._made[value] = torch.tensor(value, dtype=self.dtype, device=self.device)
        return made


# --------------------------------------------------------------------------- the step
class ClosedFormStep:
    """One sigprop step (forward, local losses, readout loss) and its exact gradients.

    ``params`` is the learner's parameter order (its optimizers' param groups); ``step`` returns
    the gradients as a list aligned with it (None: not in this step's graph)."""

    def __init__(self, learner):
        self.learner = learner
        o = learner.options
        self.cells = list(learner.model.cells)
        self.readout = learner.readout
        self.refresh()
        self.inv_temperature = 1.0 / o.temperature
        self.detach_target = o.detach_target
        self.surrogate = o.spike_mode == "surrogate"
        self.width = o.surrogate_width
        self._constants = {}

    def refresh(self):
        """Look the parameters up and where their gradients go (once a batch: a module attribute
        costs ≈ 0.4 µs a lookup; and nothing keyed by ``id`` survives a deep copy)."""
        learner = self.learner
        self.params = [p for group in learner._groups.values() for p in group]
        where = {id(p): i for i, p in enumerate(self.params)}
        frozen = len(self.params)  # requires_grad False: in no group, its gradient is dropped

        def at(p):
            return where.get(id(p), frozen)

        self.projection_at = where.get(id(learner.projection))
        # per layer: the cell, its forward and backward, its input weight and bias, its own
        # parameters, and where their gradients go
        self.layers = [(cell, *_CELLS[type(cell)], cell.input_weight, cell.bias,
                        _own_parameters(cell), at(cell.input_weight), at(cell.bias),
                        [at(p) for p in _own_parameters(cell)]) for cell in self.cells]
        readout = self.readout
        self.readout_params = (readout.weight, readout.bias)
        self.readout_at = (at(readout.weight), at(readout.bias))

    def replaced(self) -> bool:
        """Whether a method the closed form stands in for was replaced since (checked a batch)."""
        return _replaced(self.learner) is not None

    def constants(self, dtype, device) -> _Constants:
        key = (dtype, device)
        made = self._constants.get(key)
        if made is None:
            made = self._constants[key] = _Constants(dtype, device, self.inv_temperature)
        return made

    def _class_ce(self, z, B, labels, shift, scale, consts):
        """``SigProp._local_loss`` (class rows, CE) on ``z [(L,) N, K]``: ``loss · a_t`` and what
        its backward needs."""
        h, s = z.split_with_sizes([B, z.shape[-2] - B], dim=-2)
        s_t = s.transpose(-1, -2)
        # ``h @ s_t`` is mm for one layer's rows, bmm for stacked layers (matmul's own choice)
        logits = (h.mm(s_t) if h.dim() == 2 else h @ s_t) * consts.inv_temperature
        if shift is not None:
            logits = logits + shift
        flat = logits if logits.dim() == 2 else logits.view(-1, logits.shape[-1])
        logp = torch._log_softmax(flat, 1, False)
        loss, total_weight = _nll_forward(logp, labels, None, _SUM, _IGNORE)
        return loss * scale, (h, s, s_t, logits.shape, logp, labels, total_weight)

    def _class_ce_backward(self, g, kept, consts):
        h, s, s_t, shape, logp, labels, total_weight = kept
        d_logp = _nll_backward(g, logp, labels, None, _SUM, _IGNORE, total_weight)
        d_flat = torch._log_softmax_backward_data(d_logp, logp, 1, logp.dtype)
        d_prod = (d_flat if len(shape) == 2 else d_flat.view(shape)) * consts.inv_temperature
        if h.dim() == 2:
            # mm's backward: h (row-major) gets grad·(s_tᵀ = s); s_t (column-major: s's rows are
            # contiguous) gets (gradᵀ·h)ᵀ, transposed back to s by the transpose's backward
            if h.stride(0) == 1 and h.stride(1) == h.shape[0]:
                d_h = _mm_grad_mat1(d_prod, h, s_t)
            else:
                d_h = d_prod.mm(s)
            if self.detach_target:
                d_s = None
            elif s_t.stride(0) == 1 and s_t.stride(1) == s_t.shape[0]:
                d_s = d_prod.t().mm(h)
            else:
                d_s = _mm_grad_mat2(d_prod, h, s_t).t()
        else:
            d_h = d_prod.bmm(s_t.transpose(1, 2))
            d_s = None if self.detach_target else h.transpose(1, 2).bmm(d_prod).transpose(-1, -2)
        if d_s is None:  # the split's backward fills a missing part with zeros
            d_s = torch.zeros(s_t.transpose(-1, -2).shape, dtype=d_h.dtype, device=d_h.device)
        return torch.cat([d_h, d_s], dim=-2)

    def step(self, frame, target_drive, state, B, labels, stacked, shift, scale, score_local: bool,
             readout_targets, readout_scale, consts):
        """Returns ``(top out, new states, local loss · a_t | None, readout loss | None, grads)``.

        ``scale`` is ``a_t`` as a 0-dim tensor of the loss dtype: the loss's factor and the
        gradient autograd hands the CE from ``loss · a_t``; ``readout_scale`` (``1/n_t``,
        likewise) or None where the readout is not scored."""
        layers = self.layers
        drive = torch.cat([_linear(frame, layers[0][3], layers[0][4]), target_drive])
        inputs, saved, rows, kept_rows, new_states = [frame], [], [], [], []
        surrogate = self.surrogate
        last = len(layers) - 1
        out = None
        for l, (cell, forward, _, _, _, own, _, _, _) in enumerate(layers):
            out, new_state, local, keep = forward(cell, own, drive, state[l], consts)
            new_states.append(new_state)
            saved.append(keep)
            if score_local:
                if surrogate and type(cell) is LIFCell:  # SigProp._loss_rows: σ((v − θ)/w)
                    local = torch.sigmoid((local - cell.threshold) / consts.of(self.width))
                    kept_rows.append(local)
                else:
                    kept_rows.append(None)
                rows.append(local)
            if l < last:
                inputs.append(out)
                nxt = layers[l + 1]
                drive = _linear(out, nxt[3], nxt[4])
        grads = [None] * (len(self.params) + 1)  # the last slot takes frozen parameters' grads
        local_total = None
        if score_local:
            if last > 0 and all(z.shape == rows[0].shape for z in rows):
                local_total, kept = self._class_ce(torch.stack(rows), B, stacked, shift, scale,
                                                   consts)
                d_rows = self._class_ce_backward(scale, kept, consts).unbind(0)
            else:
                d_rows = []
                for z in rows:
                    loss, kept = self._class_ce(z, B, labels, shift, scale, consts)
                    local_total = loss if local_total is None else local_total + loss
                    d_rows.append(self._class_ce_backward(scale, kept, consts))
            for l, (cell, _, backward, weight, _, own_params, at_w, at_b, at_own) \
                    in enumerate(layers):
                d_local = d_rows[l]
                if kept_rows[l] is not None:  # through σ((v − θ)/w)
                    d_local = _sigmoid_backward(d_local, kept_rows[l]) / consts.of(self.width)
                d_drive, own = backward(cell, own_params, saved[l], d_local, consts)
                if l == 0:
                    d_inputs = d_drive[:B]
                    if self.projection_at is not None:
                        grads[self.projection_at] = d_drive[B:]
                else:
                    d_inputs = d_drive
                grads[at_w] = _weight_grad(d_inputs, inputs[l], weight)
                grads[at_b] = _bias_grad(d_inputs)
                for i, g in zip(at_own, own):
                    grads[i] = g
        readout_loss = None
        if readout_scale is not None:
            weight, bias = self.readout_params
            top = out[:B]
            logp = torch._log_softmax(_linear(top, weight, bias), 1, False)
            loss, total_weight = _nll_forward(logp, readout_targets, None, _SUM, _IGNORE)
            readout_loss = loss * readout_scale
            d_logp = _nll_backward(readout_scale, logp, readout_targets, None, _SUM, _IGNORE,
                                   total_weight)
            d_logits = torch._log_softmax_backward_data(d_logp, logp, 1, logp.dtype)
            grads[self.readout_at[0]] = _weight_grad(d_logits, top, weight)
            grads[self.readout_at[1]] = _bias_grad(d_logits)
        grads.pop()
        return out, new_states, local_total, readout_loss, grads


__all__ = ["ClosedFormStep", "unsupported_reason"]
