"""The procedural video task (video_digits) and the shared clip renderer."""
from __future__ import annotations

import sys

import pytest
import torch

from tasks import DataError, get_task
from tasks import video
from tasks.base import torch_generator
from tasks.registry import get_entry
from tasks.video import Sprites, bounce, render_clips

SMALL = dict(n_train=40, n_test=20)


def test_shapes_kind_and_metadata():
    data = get_task("video_digits", **SMALL)
    entry = get_entry("video_digits")
    assert data.kind == "video" == entry.kind and data.source == "offline"
    assert data.input_shape == (20, 1, 32, 32) == tuple(entry.input_shape)
    assert data.num_classes == 10 == entry.classes and data.label_kind == "sequence"
    assert data.sizes() == {"train": 36, "val": 4, "test": 20}
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and torch.isfinite(x).all()
    small = get_task("video_digits:frames=10,size=24", **SMALL)
    assert small.input_shape == (10, 1, 24, 24)


def test_deterministic_per_seed():
    a = get_task("video_digits", seed=0, **SMALL)
    b = get_task("video_digits", seed=0, **SMALL)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)
    c = get_task("video_digits", seed=1, **SMALL)  # run seed: another validation split only
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    d = get_task("video_digits", data_seed=1, **SMALL)
    assert not torch.equal(a.test.tensors[0], d.test.tensors[0])


def test_labels_balanced():
    x, y = video.video_digits_arrays(600, frames=8, size=16, noise=0.0, split="train",
                                     generator=torch_generator(0, "balance"))
    counts = torch.bincount(y, minlength=10)
    assert counts.sum() == 600 and counts.min() >= 35 and counts.max() <= 85


def test_first_digit_appears_first_and_both_stay():
    frames = 12
    x, y, meta = video.video_digits_arrays(200, frames=frames, size=32, noise=0.0, split="test",
                                           generator=torch_generator(0, "order"),
                                           return_meta=True)
    assert torch.equal(meta["first"], y)
    assert (meta["second"] != meta["first"]).all()  # the distractor is always another class
    q = frames // 4
    on_a, on_b = meta["onset_first"], meta["onset_second"]
    assert (on_a <= q).all() and (on_b >= on_a + 2).all() and (on_b <= frames - q).all()
    ink = x.flatten(2).amax(-1) > 0  # [n, T]: anything on screen
    t = torch.arange(frames)
    assert torch.equal(ink, t[None] >= on_a[:, None])  # from A's onset to the end


def test_glyphs_and_fallback(monkeypatch):
    glyphs, labels, source = video.digit_glyphs()
    assert glyphs.shape[1:] == (16, 16) and glyphs.min() >= 0 and glyphs.max() <= 1
    assert set(labels.tolist()) == set(range(10))
    pools = video.split_glyph_pool(labels)
    assert not set(pools["train"].tolist()) & set(pools["test"].tolist())
    # without scikit-learn: drawn strokes, and the description says so
    video.digit_glyphs.cache_clear()
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    try:
        g, l, src = video.digit_glyphs()
        assert "strokes" in src and g.shape[1:] == (16, 16) and len(l) == 1800
        assert torch.bincount(l).tolist() == [180] * 10
        data = get_task("video_digits", n_train=10, n_test=5)
        assert "strokes" in data.description
    finally:
        video.digit_glyphs.cache_clear()


def test_renderer_places_glyph_at_its_centre():
    g = torch.zeros(1, 8, 8)
    g[0, 3:5, 3:5] = 1.0  # a blob at the glyph centre
    sp = Sprites(g, torch.tensor([8.0]), torch.tensor([[10.0, 20.0]]), torch.tensor([[1.0, 0.0]]),
                 torch.zeros(1), torch.tensor([0]), torch.tensor([3]))
    clip = render_clips([sp], frames=4, size=32)[0, :, 0]
    assert clip[3].sum() == 0  # past its offset
    ys, xs = torch.meshgrid(torch.arange(32.0) + 0.5, torch.arange(32.0) + 0.5, indexing="ij")
    for t in range(3):
        m = clip[t] / clip[t].sum()
        assert abs(float((m * xs).sum()) - (10 + t)) < 0.05  # x moves at 1 px/frame
        assert abs(float((m * ys).sum()) - 20) < 0.05


def test_bounce_stays_inside():
    pos = torch.linspace(-50, 80, 500)
    out = bounce(pos, torch.tensor(4.0), torch.tensor(28.0))
    assert out.min() >= 4 and out.max() <= 28
    assert torch.allclose(bounce(torch.tensor([30.0]), torch.tensor(4.0), torch.tensor(28.0)),
                          torch.tensor([26.0]))


@pytest.mark.parametrize("spec", ["video_digits:frames=4", "video_digits:size=8",
                                  "video_digits:noise=-1", "video_digits:n_train=1"])
def test_bad_options(spec):
    with pytest.raises(DataError):
        get_task(spec, n_test=5)
