"""seq_digits: shapes, determinism, balance, and that the class really is revealed late."""
import pytest
import torch

from tasks import get_task
from tasks.base import DataError
from tasks.sequential_digits import build_seq_digits

SMALL = dict(n_train=400, n_test=200)


def test_pixel_order_is_one_pixel_per_step():
    data = build_seq_digits(order="pixel", **SMALL)
    x, y = data.train.tensors
    assert data.input_shape == (256, 1) and x.shape[1:] == (256, 1)
    assert data.num_classes == 10 and y.min() >= 0 and y.max() <= 9


def test_row_order_reads_the_same_images_row_by_row():
    pixel = build_seq_digits(order="pixel", **SMALL)
    row = build_seq_digits(order="row", **SMALL)
    assert row.input_shape == (16, 16)
    # same generator stream: the same images, only laid out differently
    assert torch.equal(pixel.test.tensors[0].reshape(-1, 16, 16), row.test.tensors[0])


def test_same_options_same_data_and_other_data_seed_other_data():
    a = build_seq_digits(**SMALL).test.tensors[0]
    assert torch.equal(a, build_seq_digits(**SMALL).test.tensors[0])
    assert not torch.equal(a, build_seq_digits(data_seed=1, **SMALL).test.tensors[0])


def test_classes_are_balanced():
    counts = build_seq_digits(**SMALL).test.tensors[1].bincount(minlength=10)
    assert counts.min() == counts.max() == 20


def _centroid_accuracy(data, steps):
    """Nearest class mean using only the first ``steps`` pixels: how much the prefix tells."""
    x, y = data.train.tensors
    xt, yt = data.test.tensors
    means = torch.stack([x[y == c, :steps, 0].mean(0) for c in range(10)])
    return (torch.cdist(xt[:, :steps, 0], means).argmin(1) == yt).float().mean().item()


def test_the_class_is_revealed_late():
    data = build_seq_digits(n_train=2000, n_test=500)
    first_quarter, whole = _centroid_accuracy(data, 64), _centroid_accuracy(data, 256)
    # positive control: the whole image does tell the class (chance is 0.1) ...
    assert whole > 0.5
    # ... the first quarter of the sequence much less so
    assert first_quarter < whole - 0.25


def test_registered_and_options_go_through_get_task():
    data = get_task("seq_digits:order=row,n_train=100,n_test=50", seed=0)
    assert data.input_shape == (16, 16) and data.name == "seq_digits"


@pytest.mark.parametrize("options, message", [
    (dict(order="column"), "order must be one of pixel, row"),
    (dict(side=4), "side must be between"),
    (dict(noise=float("nan")), "noise must be finite"),
    (dict(n_train=3), "n_train >= 10"),
])
def test_bad_options_name_the_option(options, message):
    with pytest.raises(DataError, match=message):
        build_seq_digits(**{**SMALL, **options})


def test_cue_recall_long_carries_the_cue_over_250_steps():
    data = get_task("cue_recall_long:n_train=40,n_test=20", seed=0)
    x, y = data.test.tensors
    assert data.input_shape == (252, 6) and x.shape[1] == 252
    # the cue sits at step 0 only: its channel there is the label
    assert torch.equal(x[:, 0, :4].argmax(-1), y)
