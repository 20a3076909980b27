"""Sequential handwritten digits, read pixel by pixel or row by row (offline, generated in seconds).

``seq_digits`` (kind 'sequence', 10 classes). A handwritten digit on a ``side × side`` canvas is
read as a sequence:

- ``order=pixel``: one pixel per step in raster order, ``x [N, side², 1]`` (T = 256 at the
  default ``side=16``): the sequential-MNIST setting. The class is revealed late: the top rows
  of most digits look alike, and the rows that tell a 3 from an 8 or a 9 come after step 100, so
  whatever the first half of the sequence showed must be carried for well over 100 steps.
- ``order=row``: one row per step, ``x [N, side, side]`` (T = 16): the short, wide version.

Every sample is a glyph drawn from a pool of real handwriting (the glyphs of ``video_digits``:
scikit-learn's bundled 8x8 digits, 1797 samples of 43 writers, upsampled to 16x16; drawn
strokes without scikit-learn), put through a random affine distortion (rotation ±``rotate``
degrees, scale 0.85–1.15, shift up to ``shift`` pixels) and Gaussian pixel noise, so the
training set holds many distinct images. Test samples come from a disjoint fifth of the glyph
pool (handwriting the network never saw). Classes are balanced.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import DataError, TaskData, make_task_data, torch_generator
from .cache import cached_tensors
from .video import GLYPH_SIDE, digit_glyphs, sample_from_pool, split_glyph_pool

__all__ = ["ORDERS", "seq_digits_arrays", "build_seq_digits"]

ORDERS = ("pixel", "row")


def _distort(glyphs: torch.Tensor, side: int, *, rotate: float, shift: float,
             generator: torch.Generator) -> torch.Tensor:
    """Random rotation, scale and shift of ``glyphs [n, g, g]``, resampled to ``[n, side, side]``."""
    n = glyphs.shape[0]
    angle = math.radians(rotate) * (2 * torch.rand(n, generator=generator) - 1)
    scale = 0.85 + 0.3 * torch.rand(n, generator=generator)
    # affine_grid works in normalised coordinates ([-1, 1] spans the canvas): a shift of
    # ``shift`` pixels is 2 * shift / side there.
    offset = (2 * torch.rand(n, 2, generator=generator) - 1) * (2.0 * shift / side)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, offset[:, 0]], -1),
                         torch.stack([sin, cos, offset[:, 1]], -1)], 1)  # [n, 2, 3]
    grid = F.affine_grid(theta, (n, 1, side, side), align_corners=False)
    return F.grid_sample(glyphs[:, None], grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)[:, 0].clamp(0, 1)


def seq_digits_arrays(n: int, *, order: str, side: int, noise: float, rotate: float,
                      shift: float, split: str, generator: torch.Generator):
    """``x`` (``[n, side², 1]`` for pixel order, ``[n, side, side]`` for row order) and ``y [n]``."""
    glyphs, glyph_labels, _ = digit_glyphs()
    pool = split_glyph_pool(glyph_labels)[split]
    labels = torch.arange(n) % 10  # balanced classes, then shuffled
    labels = labels[torch.randperm(n, generator=generator)]
    picked = glyphs[pool[sample_from_pool(glyph_labels[pool], labels, generator)]]
    images = _distort(picked, side, rotate=rotate, shift=shift, generator=generator)
    if noise > 0:
        images = images + noise * torch.randn(images.shape, generator=generator)
    x = images.reshape(n, side * side, 1) if order == "pixel" else images
    return x.contiguous(), labels


def build_seq_digits(*, seed=0, data_dir=None, download=False, order="pixel", side=GLYPH_SIDE,
                     n_train=4000, n_test=1000, noise=0.05, rotate=12.0, shift=1.5,
                     data_seed=0, val_fraction=0.1) -> TaskData:
    """Handwritten digits read one pixel (``order=pixel``) or one row (``order=row``) per step."""
    name = "seq_digits"
    if order not in ORDERS:
        raise DataError(f"task {name!r}: order must be one of {', '.join(ORDERS)} (got {order!r})")
    if not 8 <= side <= 64:
        raise DataError(f"task {name!r}: side must be between 8 and 64 pixels (got {side})")
    if n_train < 10 or n_test < 1:
        raise DataError(f"task {name!r}: need n_train >= 10 and n_test >= 1 "
                        f"(got {n_train}, {n_test})")
    for option, value in (("noise", noise), ("rotate", rotate), ("shift", shift)):
        if not (math.isfinite(value) and value >= 0):
            raise DataError(f"task {name!r}: {option} must be finite and >= 0 (got {value})")
    source = digit_glyphs()[2]

    def generate():
        out = {}
        for split, count in (("train", n_train), ("test", n_test)):
            out[f"{split}_x"], out[f"{split}_y"] = seq_digits_arrays(
                count, order=order, side=side, noise=noise, rotate=rotate, shift=shift,
                split=split, generator=torch_generator(data_seed, name, split))
        return out

    # The images depend on these options and the glyph source only (the run seed picks the
    # validation carve afterwards), so one cache entry serves every seed.
    arrays = cached_tensors(name, dict(order=order, side=side, n_train=n_train, n_test=n_test,
                                       noise=noise, rotate=rotate, shift=shift,
                                       data_seed=data_seed, glyphs=source),
                            generate, sources=(__file__,), packages=("scikit-learn",))
    splits = {split: (arrays[f"{split}_x"], arrays[f"{split}_y"]) for split in ("train", "test")}
    steps = side * side if order == "pixel" else side
    return make_task_data(
        name=name, kind="sequence", num_classes=10, label_kind="sequence",
        train=splits["train"], test=splits["test"], val_fraction=val_fraction, seed=seed,
        description=(f"handwritten digits ({source}) on a {side}x{side} canvas, read one "
                     f"{order} per step (T = {steps}); test handwriting unseen in training"),
        info=dict(order=order, side=side, noise=noise, rotate=rotate, shift=shift,
                  data_seed=data_seed, glyphs=source),
    )
