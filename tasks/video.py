"""Procedural video: moving handwritten digits, rendered offline with torch in seconds.

``video_digits`` (kind 'video', ``x [N, T, 1, S, S]``, default ``T=20``, ``S=32``, 10 classes).
    Each clip shows two handwritten digits of *different* classes. Digit A appears first (onset
    in the first quarter of the clip), digit B at least two frames later (and before the last
    quarter); once on screen, both stay until the end. **Label: the class of A, the digit that
    appeared first.** The final frames show both digits, so the answer is one of the two on
    screen, but only the clip's past tells which: a net that recognises digits without memory
    tops out near 50%, and the rest needs the order of appearance carried from the first
    frames to the end. Classes are balanced (A's class is uniform, B's class uniform among the
    other nine).

    Everything else varies per digit: handwriting (a glyph drawn from a pool of real samples),
    size (3/8 to 9/16 of the frame), rotation (+-15 degrees), start position, speed
    (0.5-2 px/frame) and direction (uniform angle); digits bounce off the frame edges. Gaussian
    pixel noise (``noise``) is added. Glyphs are scikit-learn's bundled 8x8 handwritten digits
    (``sklearn.datasets.load_digits``, 1797 samples from 43 writers, offline), upsampled to
    16x16; test clips draw from a disjoint fifth of the glyph samples (unseen samples). Without
    scikit-learn the glyphs are drawn strokes (seven-segment skeletons with random jitter, slant
    and thickness) and the description says so.

The renderer (``render_clips``) is shared with ``moving_mnist_cls`` in ``tasks/mnist.py``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from .base import DataError, TaskData, make_task_data, torch_generator
from .cache import cached_tensors

__all__ = [
    "Sprites",
    "bounce",
    "render_clips",
    "digit_glyphs",
    "video_digits_arrays",
    "build_video_digits",
]

GLYPH_SIDE = 16  # glyphs are stored at this resolution and resampled when rendered


@dataclass
class Sprites:
    """One moving glyph per clip; every field has the clip index first."""

    glyph: torch.Tensor  # [N, h, w] intensities in [0, 1]
    side: torch.Tensor  # [N] rendered side length of the glyph box, pixels
    start: torch.Tensor  # [N, 2] centre (x, y) at frame 0, pixels
    velocity: torch.Tensor  # [N, 2] pixels per frame
    angle: torch.Tensor  # [N] rotation, radians
    onset: torch.Tensor  # [N] first frame the glyph is visible
    offset: torch.Tensor  # [N] first frame it is no longer visible (exclusive)


def bounce(pos: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Reflect unconstrained positions into ``[lo, hi]``, as a ball bouncing between walls."""
    span = (hi - lo).clamp_min(1e-6)
    u = torch.remainder(pos - lo, 2 * span)
    return lo + span - (u - span).abs()


def render_clips(sprites: list[Sprites], frames: int, size: int, chunk: int = 256):
    """Render ``[N, frames, 1, size, size]`` clips; overlapping glyphs combine by max.

    Each glyph moves linearly from ``start`` with ``velocity`` and bounces so that its box stays
    inside the frame. Rendering is one ``grid_sample`` per chunk of clips: for every frame an
    affine map from frame coordinates to glyph coordinates (scale, rotation, translation).
    """
    n = sprites[0].glyph.shape[0]
    t = torch.arange(frames, dtype=torch.float32)
    out = torch.zeros(n, frames, 1, size, size)
    # normalised (x, y) coordinates of the pixel centres, as F.affine_grid(align_corners=False)
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * 2 / size - 1
    base = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1)  # [H, W, (x, y)]
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        for sp in sprites:
            side = sp.side[sl]
            half = side / 2
            # centre per frame [b, T, 2], kept inside [half, size - half] by bouncing
            path = sp.start[sl, None, :] + sp.velocity[sl, None, :] * t[None, :, None]
            centre = bounce(path, half[:, None, None], size - half[:, None, None])
            # affine_grid maps output (frame) normalised coords u in [-1, 1] to input (glyph)
            # normalised coords: pixel X = (u + 1) * size / 2 and glyph coord = (X - c) / half,
            # rotated by -angle so the glyph appears rotated by +angle.
            cos, sin = torch.cos(sp.angle[sl]), torch.sin(sp.angle[sl])
            rot = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)
            lin = rot * (size / side)[:, None, None]  # [b, 2, 2]
            shift = (size - 2 * centre) / side[:, None, None]  # [b, T, 2]
            trans = torch.einsum("bij,btj->bti", rot, shift)
            # The linear part is the same for every frame of a clip: apply it to the pixel grid
            # once, then add the per-frame translation (cheaper than F.affine_grid per frame).
            spatial = torch.einsum("bij,hwj->bhwi", lin, base)  # [b, H, W, 2]
            grid = spatial[:, None] + trans[:, :, None, None, :]  # [b, T, H, W, 2]
            grid = rearrange(grid, "b t h w i -> (b t) h w i")
            glyph = repeat(sp.glyph[sl], "b h w -> (b t) 1 h w", t=frames)
            img = F.grid_sample(glyph, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)
            img = rearrange(img, "(b t) c h w -> b t c h w", t=frames)
            visible = (t[None, :] >= sp.onset[sl, None]) & (t[None, :] < sp.offset[sl, None])
            img = img * visible[:, :, None, None, None]
            out[sl] = torch.maximum(out[sl], img)
    return out


# --------------------------------------------------------------------------------------------
# Glyphs


@functools.lru_cache(maxsize=1)
def digit_glyphs():
    """``(glyphs [M, 16, 16] in [0, 1], labels [M], source)`` of handwritten digits.

    scikit-learn's 8x8 digits upsampled (bicubic, clamped), or drawn strokes without it.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        glyphs, labels = stroke_glyphs(per_class=180, generator=torch_generator(0, "strokes"))
        return glyphs, labels, "drawn strokes (scikit-learn not installed)"
    digits = load_digits()
    small = torch.tensor(digits.images, dtype=torch.float32) / 16.0  # [M, 8, 8], 0..16 -> 0..1
    big = F.interpolate(small[:, None], size=(GLYPH_SIDE, GLYPH_SIDE), mode="bicubic",
                        align_corners=False).clamp(0, 1)[:, 0]
    return big, torch.tensor(digits.target, dtype=torch.int64), "scikit-learn 8x8 digits"


# Seven-segment skeletons on a unit box (x right, y down): segments as (x0, y0, x1, y1).
_SEG = {
    "a": (0.2, 0.1, 0.8, 0.1), "b": (0.8, 0.1, 0.8, 0.5), "c": (0.8, 0.5, 0.8, 0.9),
    "d": (0.2, 0.9, 0.8, 0.9), "e": (0.2, 0.5, 0.2, 0.9), "f": (0.2, 0.1, 0.2, 0.5),
    "g": (0.2, 0.5, 0.8, 0.5),
}
_DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc",
                   "abcdefg", "abcdfg"]


def stroke_glyphs(per_class: int, generator: torch.Generator, side: int = GLYPH_SIDE):
    """Fallback glyphs: seven-segment digits with jittered endpoints, slant and stroke width."""
    glyphs, labels = [], []
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    pix = torch.stack([xs, ys], -1).float().add(0.5).div(side)  # pixel centres in [0, 1]
    for digit, names in enumerate(_DIGIT_SEGMENTS):
        seg = torch.tensor([_SEG[s] for s in names])  # [S, 4]
        m = per_class
        jitter = 0.06 * torch.randn(m, *seg.shape, generator=generator)
        slant = 0.25 * (torch.rand(m, 1, generator=generator) - 0.5)
        p = (seg[None] + jitter).view(m, -1, 2, 2)  # [m, S, 2 ends, xy]
        p[..., 0] += slant[:, :, None] * (0.5 - p[..., 1])  # shear: x shifts with height
        a, b = p[:, :, 0], p[:, :, 1]  # [m, S, 2]
        # distance from every pixel to every segment
        ab = b - a
        ap = pix[None, None] - a[:, :, None, None]  # [m, S, H, W, 2]
        h = ((ap * ab[:, :, None, None]).sum(-1) / (ab * ab).sum(-1)[..., None, None]
             .clamp_min(1e-6)).clamp(0, 1)
        d = (ap - h[..., None] * ab[:, :, None, None]).norm(dim=-1).amin(1)  # [m, H, W]
        width = 0.02 + 0.03 * torch.rand(m, 1, 1, generator=generator)
        glyphs.append((1 - (d - width) * side).clamp(0, 1))
        labels.append(torch.full((m,), digit))
    return torch.cat(glyphs), torch.cat(labels)


def split_glyph_pool(labels: torch.Tensor, test_fraction: float = 0.2):
    """Fixed split of glyph indices into train/test pools (unseen handwriting at test)."""
    perm = torch.randperm(len(labels), generator=torch_generator(0, "glyph_pool"))
    k = int(round(test_fraction * len(labels)))
    return {"test": perm[:k].sort().values, "train": perm[k:].sort().values}


def sample_from_pool(pool_labels: torch.Tensor, classes: torch.Tensor, generator):
    """For each requested class, the index (into the pool) of a random glyph of that class."""
    out = torch.empty_like(classes)
    for c in classes.unique().tolist():
        members = (pool_labels == c).nonzero().flatten()
        want = classes == c
        pick = torch.randint(len(members), (int(want.sum()),), generator=generator)
        out[want] = members[pick]
    return out


def random_motion(n: int, side: torch.Tensor, size: int, generator, speed=(0.5, 2.0)):
    """Start centre inside the frame, and a velocity of random direction and speed."""
    half = side[:, None] / 2
    start = half + torch.rand(n, 2, generator=generator) * (size - 2 * half)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    v = speed[0] + (speed[1] - speed[0]) * torch.rand(n, generator=generator)
    velocity = torch.stack([torch.cos(angle), torch.sin(angle)], -1) * v[:, None]
    return start, velocity


def _randint(lo: torch.Tensor, hi: torch.Tensor, generator) -> torch.Tensor:
    """Uniform integers in ``[lo, hi]`` (inclusive), elementwise."""
    u = torch.rand(lo.shape, generator=generator)
    return lo + (u * (hi - lo + 1).float()).floor().long().clamp_max(hi - lo)


# --------------------------------------------------------------------------------------------
# video_digits


def video_digits_arrays(n: int, *, frames: int, size: int, noise: float, split: str,
                        generator: torch.Generator, return_meta: bool = False):
    """Generate ``x [n, frames, 1, size, size]`` and ``y [n]`` (class of the first digit).

    With ``return_meta`` also a dict of the hidden variables (classes and onsets of both
    digits), for tests and plots.
    """
    glyphs, glyph_labels, _ = digit_glyphs()
    pool = split_glyph_pool(glyph_labels)[split]
    pool_labels = glyph_labels[pool]

    first = torch.randint(10, (n,), generator=generator)
    # second digit: uniform over the other nine classes
    second = (first + 1 + torch.randint(9, (n,), generator=generator)) % 10

    # A appears in the first quarter, B at least two frames later and before the last quarter;
    # both then stay until the end, so the final frames show both and only the past tells
    # which came first.
    q = max(frames // 4, 1)
    on_a = torch.randint(0, q + 1, (n,), generator=generator)
    on_b = _randint(on_a + 2, torch.full((n,), frames - q).maximum(on_a + 2), generator)
    off_a = off_b = torch.full((n,), frames)

    sprites = []
    for cls, on, off in ((first, on_a, off_a), (second, on_b, off_b)):
        idx = pool[sample_from_pool(pool_labels, cls, generator)]
        side = size * (0.375 + 0.1875 * torch.rand(n, generator=generator))
        start, velocity = random_motion(n, side, size, generator)
        angle = math.radians(15) * (2 * torch.rand(n, generator=generator) - 1)
        sprites.append(Sprites(glyphs[idx], side, start, velocity, angle, on, off))
    x = render_clips(sprites, frames, size)
    if noise > 0:
        x += noise * torch.randn(x.shape, generator=generator)
    if return_meta:
        return x, first, dict(first=first, second=second, onset_first=on_a, onset_second=on_b)
    return x, first


def build_video_digits(*, seed=0, data_dir=None, download=False, frames=20, size=32,
                       n_train=2000, n_test=500, noise=0.05, data_seed=0,
                       val_fraction=0.1) -> TaskData:
    """Which digit appeared first, in clips of two moving handwritten digits (module docstring)."""
    name = "video_digits"
    if frames < 8:
        raise DataError(f"task {name!r}: frames must be >= 8 (got {frames}) to fit two onsets")
    if size < 16:
        raise DataError(f"task {name!r}: size must be >= 16 pixels (got {size})")
    if n_train < 2 or n_test < 1:
        raise DataError(f"task {name!r}: need n_train >= 2 and n_test >= 1")
    if noise < 0:
        raise DataError(f"task {name!r}: noise must be >= 0, got {noise}")
    source = digit_glyphs()[2]

    def generate() -> dict:
        out = {}
        for split, n in (("train", n_train), ("test", n_test)):
            out[f"{split}_x"], out[f"{split}_y"] = video_digits_arrays(
                n, frames=frames, size=size, noise=noise, split=split,
                generator=torch_generator(data_seed, name, split))
        return out

    # Rendering takes seconds; the clips depend on these options and the glyph source only (the
    # run seed picks the validation carve afterwards), so one cache entry serves every seed.
    arrays = cached_tensors(name, dict(frames=frames, size=size, n_train=n_train, n_test=n_test,
                                       noise=noise, data_seed=data_seed, glyphs=source),
                            generate, sources=(__file__,), packages=("scikit-learn",))
    splits = {split: (arrays[f"{split}_x"], arrays[f"{split}_y"]) for split in ("train", "test")}
    return make_task_data(
        name=name, kind="video", num_classes=10, label_kind="sequence",
        train=splits["train"], test=splits["test"], val_fraction=val_fraction, seed=seed,
        description=(f"{frames} frames of 1x{size}x{size}: two moving handwritten digits "
                     f"({source}); both stay on screen to the end; label = the digit that "
                     f"appeared first"),
        info=dict(frames=frames, size=size, noise=noise, data_seed=data_seed, glyphs=source),
    )
