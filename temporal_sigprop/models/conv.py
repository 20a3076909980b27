"""Convolutional GRU for video: ``convgru``.

A stack of convolutional GRU cells (Shi et al. 2015's ConvLSTM idea with GRU gates; Ballas et
al. 2016) over frames ``x_t [B, C_in, H, W]``, then global average pooling and a linear readout:

    d_t     = conv(x_t; W_in) + b                       drive, [B, 3C, H', W']
    g_t     = conv(h_{t−1}; U) + c                      recurrent term, same padding, stride 1
    r = σ(d_r + g_r),  u = σ(d_u + g_u)                 (the blocks of 3C are r, u, n in that order)
    n = tanh(d_n + r ⊙ g_n),   h_t = (1 − u) ⊙ n + u ⊙ h_{t−1}        h_t: [B, C, H', W']
    logits_t = W_out · mean_{positions} h^L_t + b_out

This is PyTorch's GRU gate convention (``r`` multiplies the recurrent term of ``n`` including its
bias), with every matrix product replaced by a convolution. Written from ``F.conv2d``,
``sigmoid`` and ``tanh`` only, so reverse mode, ``torch.func.jvp``/``jacfwd``/``vmap`` and
``torch.autograd.forward_ad`` all work.

**Encoder in front.** The first layer's ``drive`` may downsample: with ``downsample = s > 1`` its
convolution has stride ``s`` (kernel ``2s``), e.g. 32×32 frames → 16×16 (s = 2) or 8×8 (s = 4)
feature maps; with ``stem_channels = S > 0`` the drive is a two-convolution encoder
``conv(relu(conv_s(x_t)), W_in)`` (the first one strided). The encoder is stateless and lives
*inside* layer 1's drive, so the model stays a pure stack of cells and ``drive`` stays the one
place the input enters. Upper layers' drives are stride-1 convolutions of the layer below's h.

**For learners** (sigprop, FMD): a ``ConvGRUCell`` follows the ``Cell`` protocol —
``drive(x_t)``, ``recur(drive, state) -> (out, state, local)``, ``initial_state``,
``state_type = HiddenState`` — with these shape attributes:

- ``drive_shape = (3C, H', W')``: one sample's drive. Sigprop's target rows replace
  ``drive(x_t)`` by a projection of the target to a feature map of this shape, e.g.
  ``Linear(K, math.prod(cell.drive_shape))(c_t).view(-1, *cell.drive_shape)``;
  ``drive_size = math.prod(drive_shape)`` (for dense cells ``drive_shape == (drive_size,)``).
- ``out_shape = (C, H', W')``: one sample's ``out``/``local``/``h`` (``local`` is ``h``).
- ``hidden_size = C`` (channels: the readout's input after pooling), ``input_size`` = the number
  of entries of one sample's input, ``frame_shape`` = its shape ``(C_in, H, W)``.

A local loss on a feature map is computed **per position and averaged** (sigprop on video):
``as_positions(h)`` gives ``[B, H'·W', C]`` (each position a C-vector); e.g. class-embedding
logits per position ``einsum('bpc,kpc->bpk', as_positions(h), as_positions(s)) / τ``, cross-
entropy at each position, mean over positions. ``model.readout`` is a ``GlobalPoolLinear`` (an
``nn.Linear`` on ``[B, C]`` that first averages ``[B, C, H', W']`` over positions), so
``model.readout(h)`` works on a feature map and ``readout.weight`` is ``[classes, C]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..errors import ConfigError
from ..model_options import option_rules
from .cells import Cell, HiddenState
from .stack import SequenceModel


def conv_out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial size after a convolution (PyTorch's formula, dilation 1)."""
    return (size + 2 * padding - kernel) // stride + 1


def as_positions(feature_map: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, H·W, C]``: each spatial position as one C-vector (per-position losses)."""
    return rearrange(feature_map, "b c h w -> b (h w) c")


class ConvGRUCell(Cell):
    """Convolutional GRU cell, state ``HiddenState(h)`` with ``h [B, C, H', W']``.

        d = conv_{stride s}(x_t; W_in) + b            (or conv(relu(conv_s(x_t; W_stem) + b_stem)))
        [g_r, g_u, g_n] = conv(h_{t−1}; U) + c
        r = σ(d_r + g_r), u = σ(d_u + g_u), n = tanh(d_n + r ⊙ g_n)
        h_t = (1 − u) ⊙ n + u ⊙ h_{t−1};     out = local = h_t

    Shapes (one sample): input ``frame_shape = (C_in, H, W)``; ``drive_shape = (3C, H', W')`` —
    what a target projection must produce to stand in for ``drive(x_t)``; ``out_shape =
    (C, H', W')``. ``drive_size``/``input_size`` are the entry counts of one sample's drive/input;
    ``hidden_size`` is the channel count C. ``H' = H // s`` for frames divisible by ``s``.

    Parameters: ``input_weight [3C, C_in or S, k_in, k_in]``, ``bias [3C]``,
    ``recurrent_weight [3C, C, k, k]``, ``recurrent_bias [3C]``, and with a stem
    ``stem_weight [S, C_in, 2s or k, …]``, ``stem_bias [S]``.
    """

    gates = 3

    def __init__(self, in_channels: int, hidden_channels: int, frame_hw: tuple[int, int], *,
                 kernel_size: int = 3, downsample: int = 1, stem_channels: int = 0):
        # Cell.__init__ would allocate a dense input matrix; a conv cell owns conv kernels instead.
        nn.Module.__init__(self)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"convgru kernel_size must be odd and ≥ 1 (same padding), got {kernel_size}")
        if downsample < 1:
            raise ConfigError(f"convgru downsample must be ≥ 1, got {downsample}")
        if stem_channels < 0:
            raise ConfigError(f"convgru stem_channels must be ≥ 0, got {stem_channels}")
        height, width = frame_hw
        self.in_channels = in_channels
        self.hidden_channels = hidden_channels
        self.kernel_size = kernel_size
        self.downsample = downsample
        self.frame_shape = (in_channels, height, width)

        # The (possibly strided) first convolution of the drive. Stride s uses kernel 2s so that
        # every pixel is seen (a stride-s kernel smaller than s would skip pixels).
        k0 = kernel_size if downsample == 1 else 2 * downsample
        self.first_kernel, self.first_stride = k0, downsample
        self.first_padding = (k0 - downsample + 1) // 2
        h_out = conv_out_size(height, k0, downsample, self.first_padding)
        w_out = conv_out_size(width, k0, downsample, self.first_padding)
        if h_out < 1 or w_out < 1:
            raise ConfigError(f"convgru downsample={downsample} leaves no pixels of a "
                              f"{height}×{width} frame")

        c3 = self.gates * hidden_channels
        if stem_channels > 0:
            self.stem_weight = nn.Parameter(torch.empty(stem_channels, in_channels, k0, k0))
            self.stem_bias = nn.Parameter(torch.empty(stem_channels))
            self.input_weight = nn.Parameter(torch.empty(c3, stem_channels, kernel_size, kernel_size))
        else:
            self.stem_weight = self.stem_bias = None
            self.input_weight = nn.Parameter(torch.empty(c3, in_channels, k0, k0))
        self.bias = nn.Parameter(torch.empty(c3))
        self.recurrent_weight = nn.Parameter(torch.empty(c3, hidden_channels, kernel_size, kernel_size))
        self.recurrent_bias = nn.Parameter(torch.empty(c3))

        self.hidden_size = hidden_channels
        self.input_size = in_channels * height * width
        self._drive_shape = (c3, h_out, w_out)
        self._out_shape = (hidden_channels, h_out, w_out)
        self.drive_size = math.prod(self._drive_shape)
        self.reset_parameters()

    @property
    def drive_shape(self) -> tuple:
        return self._drive_shape

    @property
    def out_shape(self) -> tuple:
        return self._out_shape

    def reset_parameters(self) -> None:
        # PyTorch's conv default: U(±1/√fan_in) for each kernel and its bias.
        pairs = [(self.input_weight, self.bias), (self.recurrent_weight, self.recurrent_bias)]
        if self.stem_weight is not None:
            pairs.append((self.stem_weight, self.stem_bias))
        for weight, bias in pairs:
            bound = 1.0 / math.sqrt(math.prod(weight.shape[1:]))
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def initial_state(self, batch: int, *, device=None, dtype=None) -> HiddenState:
        return HiddenState(torch.zeros(batch, *self._out_shape, device=device, dtype=dtype))

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W] -> [B, 3C, H', W']``: the only place the input enters."""
        if self.stem_weight is not None:
            x = torch.relu(F.conv2d(x, self.stem_weight, self.stem_bias,
                                    stride=self.first_stride, padding=self.first_padding))
            return F.conv2d(x, self.input_weight, self.bias, padding=self.kernel_size // 2)
        return F.conv2d(x, self.input_weight, self.bias, stride=self.first_stride,
                        padding=self.first_padding)

    def recur(self, drive: torch.Tensor, state: HiddenState):
        d_r, d_u, d_n = drive.chunk(3, dim=1)
        g_r, g_u, g_n = F.conv2d(state.h, self.recurrent_weight, self.recurrent_bias,
                                 padding=self.kernel_size // 2).chunk(3, dim=1)
        r = torch.sigmoid(d_r + g_r)
        u = torch.sigmoid(d_u + g_u)
        n = torch.tanh(d_n + r * g_n)
        h = (1 - u) * n + u * state.h
        return h, HiddenState(h), h


class GlobalPoolLinear(nn.Linear):
    """``logits = W · mean_{positions} h + b``: an ``nn.Linear`` on ``[B, C]`` that first averages
    a feature map ``[B, C, *spatial]`` over its positions (a ``[B, C]`` input passes straight to
    the Linear). ``weight [classes, C]`` and ``bias`` are those of an ordinary readout."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() > 2:
            h = h.flatten(2).mean(-1)
        return super().forward(h)


#: What each ``--model-options`` key of convgru accepts, declared torch-free in model_options.py.
CONVGRU_OPTION_RULES = option_rules("convgru")


def build_convgru(name: str, input_shape, hidden: int, layers: int, num_classes: int, *,
                  kernel_size: int = 3, downsample: int = 4, stem_channels: int = 16) -> SequenceModel:
    """A ``layers``-deep ConvGRU stack with ``hidden`` channels per layer on frames
    ``input_shape = (T, C_in, H, W)``; layer 1's drive downsamples by ``downsample`` (through a
    ``stem_channels``-wide conv encoder if > 0); readout = global average pool + Linear.

    Defaults (``downsample=4``, ``stem_channels=16``: 32×32 frames → 8×8 maps behind a two-conv
    encoder) learnt fastest of the settings tried on ``video_digits`` (BPTT, hidden 16, 300 steps,
    one seed: 8×8 with stem > 8×8 without > 16×16 with stem) and cost ~4× less per step than 16×16.
    """
    if len(input_shape) != 4:
        raise ConfigError(f"convgru needs video input (T, C, H, W); this task's input shape is "
                          f"{tuple(input_shape)} — use a sequence model (rnn, gru, lstm, ...)")
    _, channels, height, width = input_shape
    cells = [ConvGRUCell(channels, hidden, (height, width), kernel_size=kernel_size,
                         downsample=downsample, stem_channels=stem_channels)]
    for _ in range(layers - 1):
        cells.append(ConvGRUCell(hidden, hidden, cells[-1].out_shape[1:], kernel_size=kernel_size))
    return SequenceModel(name, input_shape, cells, num_classes, flatten_input=False,
                         readout=GlobalPoolLinear(hidden, num_classes))


__all__ = ["ConvGRUCell", "GlobalPoolLinear", "build_convgru", "as_positions", "conv_out_size"]
