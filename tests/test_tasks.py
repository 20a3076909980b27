"""Tests for the task registry, MNIST-1D, the synthetic tasks and user .npz files."""
from __future__ import annotations

import inspect
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

import tasks
from tasks import DataError, TaskData, get_task, list_tasks, parse_task_spec
from tasks import registry
from tasks.registry import TaskEntry

TINY = dict(n_train=60, n_test=20)


def rows(t: torch.Tensor) -> set:
    """Samples as hashable byte strings (to test disjointness of splits)."""
    return {r.numpy().tobytes() for r in t.reshape(len(t), -1)}


def rng_states():
    return random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()


@pytest.fixture(scope="module")
def mnist1d_fresh():
    """MNIST-1D generated once for this module, from an empty cache, watching global RNGs."""
    from tasks.mnist1d_task import mnist1d_arrays

    mnist1d_arrays.cache_clear()  # force a real generation (about a second)
    before = rng_states()
    data = get_task("mnist1d", seed=1)
    return data, before, rng_states()


# --------------------------------------------------------------------------------------------
# Registry


def test_list_tasks_schema_and_no_data_generated(monkeypatch):
    def boom(self):
        raise AssertionError(f"list_tasks resolved the builder of {self.name}")

    monkeypatch.setattr(TaskEntry, "resolve", boom)
    listed = list_tasks()
    json.dumps(listed)  # the `tsp tasks --json` payload must serialise as is
    names = [t["name"] for t in listed]
    assert names == list(tasks.TASK_NAMES)
    for want in ("mnist1d", "cue_recall", "cue_recall_steps", "pulse_count", "video_digits",
                 "smnist", "psmnist", "moving_mnist_cls", "audio_keywords", "speech_commands",
                 "shd"):
        assert want in names
    for t in listed:
        assert set(t) - {"reference"} == {"name", "kind", "input_shape", "classes", "source",
                                          "description"}
        assert t["kind"] in ("sequence", "audio", "video")
        assert t["source"] in ("offline", "download", "user")
        assert isinstance(t["input_shape"], list) and len(t["input_shape"]) >= 2
        assert all(isinstance(s, int) and s > 0 for s in t["input_shape"])
        assert isinstance(t["classes"], int) and t["classes"] >= 2
        assert t["description"]
    assert {t["name"]: t["kind"] for t in listed}["audio_keywords"] == "audio"


def test_unknown_task_lists_every_name():
    with pytest.raises(DataError) as info:
        get_task("no_such_task")
    assert not isinstance(info.value, KeyError)
    for name in tasks.TASK_NAMES:
        assert name in str(info.value)
    assert "file:PATH.npz" in str(info.value)


def test_unknown_option_lists_the_task_options():
    with pytest.raises(DataError) as info:
        get_task("cue_recall:dealy=5")
    msg = str(info.value)
    assert "dealy" in msg and "delay" in msg and "n_train" in msg


@pytest.mark.parametrize("spec, want", [
    ("mnist1d", ("mnist1d", {})),
    ("cue_recall:delay=60,n_train=2000", ("cue_recall", {"delay": 60, "n_train": 2000})),
    ("x:a=0.5,b=true,c=False,d=hello,e=1e-3,f=none", (
        "x", {"a": 0.5, "b": True, "c": False, "d": "hello", "e": 1e-3, "f": None})),
    (" cue_recall : delay = 3 , ", ("cue_recall", {"delay": 3})),
    ("file:/data/a:b,c=1.npz", ("file", {"path": "/data/a:b,c=1.npz"})),
])
def test_parse_task_spec(spec, want):
    assert parse_task_spec(spec) == want


@pytest.mark.parametrize("spec", ["", "cue_recall:delay", "cue_recall:=3",
                                  "cue_recall:delay=1,delay=2", "file:"])
def test_bad_specs(spec):
    with pytest.raises(DataError):
        parse_task_spec(spec)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
                       st.one_of(st.integers(-10**6, 10**6), st.booleans()), max_size=5))
def test_spec_round_trip(options):
    spec = "task:" + ",".join(f"{k}={v}" for k, v in options.items())
    assert parse_task_spec(spec) == ("task", options)


def test_option_types_are_checked_and_coerced():
    with pytest.raises(DataError, match="delay"):
        get_task("cue_recall:delay=2.5", **TINY)
    with pytest.raises(DataError, match="delay"):
        get_task("cue_recall", delay="long", **TINY)
    with pytest.raises(DataError, match="delay"):
        get_task("cue_recall:delay=none", **TINY)
    with pytest.raises(DataError, match="noise"):
        get_task("cue_recall:noise=true", **TINY)
    data = get_task("cue_recall:noise=0,delay=4.0", **TINY)  # int -> float, 4.0 -> 4
    assert data.input_shape == (6, 6)


def test_overrides_win_over_spec():
    data = get_task("cue_recall:delay=3", delay=7, **TINY)
    assert data.input_shape[0] == 7 + 2


def test_builder_defaults_match_registry_options():
    """The registry's option dicts are the truth; builders must agree with them."""
    for entry in [*registry._REGISTRY.values(), registry.FILE_ENTRY]:
        if entry.options is None or entry.kind == "audio":
            continue
        params = inspect.signature(entry.resolve()).parameters
        for key in ("seed", "data_dir", "download"):
            assert key in params, (entry.name, key)
        got = {k: p.default for k, p in params.items()
               if k not in ("seed", "data_dir", "download")}
        assert got == entry.options, entry.name


@pytest.mark.parametrize("name", ["mnist1d", "cue_recall", "cue_recall_steps", "pulse_count"])
def test_static_metadata_matches_built_data(name, mnist1d_fresh):
    entry = registry.get_entry(name)
    data = get_task(name)
    assert data.input_shape == tuple(entry.input_shape)
    assert data.num_classes == entry.classes
    assert data.kind == entry.kind and data.source == entry.source
    assert data.label_kind == entry.label_kind


def test_get_task_checks_builder_output(monkeypatch):
    def bad_builder(*, seed, data_dir, download, **opts):
        x = torch.zeros(4, 3, 2, dtype=torch.float64)  # wrong dtype
        ds = TensorDataset(x, torch.zeros(4, dtype=torch.int64))
        return TaskData("bad", "sequence", (3, 2), 2, "sequence", ds, ds, ds)

    monkeypatch.setitem(registry._REGISTRY, "bad", TaskEntry(
        "bad", "sequence", bad_builder, (3, 2), 2, "offline", "test", None))
    with pytest.raises(DataError, match="float32"):
        get_task("bad:anything=1")


# --------------------------------------------------------------------------------------------
# MNIST-1D


def test_mnist1d_shapes_and_splits():
    data = get_task("mnist1d")
    assert data.kind == "sequence" and data.label_kind == "sequence"
    assert data.input_shape == (40, 1) and data.num_classes == 10
    assert data.sizes() == {"train": 3600, "val": 400, "test": 1000}
    x, y = data.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.unique().tolist()) == set(range(10))
    assert not rows(data.val.tensors[0]) & rows(x)  # validation is disjoint from train
    # the standard dataset: same test set whatever the run seed
    other = get_task("mnist1d", seed=3)
    assert torch.equal(other.test.tensors[0], data.test.tensors[0])
    assert not torch.equal(other.val.tensors[0], data.val.tensors[0])
    both = torch.cat([x, data.val.tensors[0]])
    assert rows(both) == rows(torch.cat([other.train.tensors[0], other.val.tensors[0]]))


def test_mnist1d_is_deterministic_and_leaves_global_rng_alone(mnist1d_fresh):
    a, before, after = mnist1d_fresh
    assert after[0] == before[0]
    assert np.array_equal(after[1], before[1])
    assert torch.equal(after[2], before[2])
    b = get_task("mnist1d", seed=1)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)
    a.train.tensors[0][0, 0, 0] = 1e6  # handed-out tensors must not alias the cache
    assert get_task("mnist1d", seed=1).train.tensors[0][0, 0, 0] != 1e6


# --------------------------------------------------------------------------------------------
# Synthetic tasks


@pytest.mark.parametrize("spec, shape, classes, label_kind", [
    ("cue_recall:delay=5", (7, 6), 4, "sequence"),
    ("cue_recall:delay=5,classes=3,distractors=0.3", (7, 5), 3, "sequence"),
    ("cue_recall_steps:delay=4,episodes=3,recall_len=2", (21, 6), 4, "step"),
    ("pulse_count:length=12,classes=5", (12, 2), 5, "sequence"),
])
def test_synthetic_shapes_and_determinism(spec, shape, classes, label_kind):
    a = get_task(spec, seed=0, **TINY)
    assert a.input_shape == shape and a.num_classes == classes and a.label_kind == label_kind
    assert a.sizes() == {"train": 54, "val": 6, "test": 20}
    b = get_task(spec, seed=0, **TINY)
    for split in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, split).tensors, getattr(b, split).tensors):
            assert torch.equal(ta, tb)
    # the run seed moves the validation split, not the data
    c = get_task(spec, seed=1, **TINY)
    assert torch.equal(a.test.tensors[0], c.test.tensors[0])
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    assert rows(torch.cat([a.train.tensors[0], a.val.tensors[0]])) == rows(
        torch.cat([c.train.tensors[0], c.val.tensors[0]]))
    assert not rows(a.val.tensors[0]) & rows(a.train.tensors[0])
    # data_seed changes the data
    d = get_task(spec, seed=0, data_seed=1, **TINY)
    assert not torch.equal(a.test.tensors[0], d.test.tensors[0])


def test_cue_recall_construction():
    data = get_task("cue_recall:delay=6,noise=0", n_train=200, n_test=10)
    x, y = data.train.tensors
    classes = 4
    assert torch.equal(x[:, 0, :classes].argmax(1), y)  # the cue is the label
    assert (x[:, 0, classes] == 1).all() and (x[:, 1:, classes] == 0).all()  # cue marker
    assert (x[:, -1, classes + 1] == 1).all() and (x[:, :-1, classes + 1] == 0).all()
    assert (x[:, 1:-1] == 0).all()  # silent delay without noise and distractors
    assert torch.bincount(y, minlength=classes).min() > 20


def test_cue_recall_steps_labels_carry_minus_one():
    data = get_task("cue_recall_steps:delay=3,episodes=2,recall_len=2,noise=0", **TINY)
    x, y = data.train.tensors
    assert y.shape == x.shape[:2]
    flag = x[..., 4 + 1] == 1
    assert torch.equal(y >= 0, flag)  # labels exactly on the recall steps
    assert (y[~flag] == -1).all()
    episode_len = 1 + 3 + 2
    for e in range(2):
        cue = x[:, e * episode_len, :4].argmax(1)
        window = y[:, e * episode_len + 4: (e + 1) * episode_len]
        assert torch.equal(window, cue[:, None].expand_as(window))


def test_pulse_count_counts_channel_zero():
    data = get_task("pulse_count:length=10,classes=4,noise=0", n_train=300, n_test=10)
    x, y = data.train.tensors
    assert torch.equal(x[..., 0].sum(1).long(), y)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.bincount(y, minlength=4).min() > 40


@pytest.mark.parametrize("spec", ["cue_recall:classes=1", "cue_recall:delay=-1",
                                  "cue_recall_steps:recall_len=0", "pulse_count:length=2",
                                  "cue_recall:val_fraction=1.0", "cue_recall:n_train=1"])
def test_synthetic_bad_options(spec):
    with pytest.raises(DataError):
        get_task(spec, n_test=5)


# --------------------------------------------------------------------------------------------
# User arrays (file:PATH.npz)

rng = np.random.RandomState(0)
X = rng.randn(30, 5, 3).astype(np.float32)
Y = (np.arange(30) % 3).astype(np.int64)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_npz_round_trip_with_all_splits(tmp_path):
    xv, yv = rng.randn(8, 5, 3), np.array([0, 1, 2, 0, 1, 2, 0, 1])  # float64 is accepted
    xt, yt = rng.randn(6, 5, 3).astype(np.float32), np.array([0, 1, 2, 3, 0, 1])
    path = write_npz(tmp_path / "d.npz", x=X, y=Y, x_val=xv, y_val=yv, x_test=xt, y_test=yt)
    data = get_task(f"file:{path}")
    assert data.source == "user" and data.kind == "sequence" and data.label_kind == "sequence"
    assert data.input_shape == (5, 3)
    assert data.num_classes == 4  # max label over all splits (3 only in test) + 1
    assert torch.equal(data.train.tensors[0], torch.from_numpy(X))
    assert torch.equal(data.train.tensors[1], torch.from_numpy(Y))
    assert torch.allclose(data.val.tensors[0], torch.from_numpy(xv).float())
    assert data.test.tensors[0].dtype == torch.float32 and len(data.test) == 6


def test_npz_carves_missing_splits(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=X, y=Y)
    a = get_task(f"file:{path}", seed=0)
    assert a.sizes() == {"train": 22, "val": 2, "test": 6}
    assert "test split carved" in a.description and "validation split carved" in a.description
    b = get_task(f"file:{path}", seed=5, val_fraction=0.25)
    assert torch.equal(a.test.tensors[0], b.test.tensors[0])  # test carve ignores the run seed
    assert len(b.val) == 6
    all_rows = rows(torch.from_numpy(X))
    parts = [rows(s.tensors[0]) for s in (a.train, a.val, a.test)]
    assert set().union(*parts) == all_rows and sum(map(len, parts)) == len(all_rows)


def test_npz_per_step_labels_and_video(tmp_path):
    y = np.tile(np.array([-1, -1, 0, 1, 2]), (30, 1))
    data = get_task(f"file:{write_npz(tmp_path / 'a.npz', x=X, y=y)}")
    assert data.label_kind == "step" and data.num_classes == 3
    assert (data.train.tensors[1] == -1).any()
    xv = rng.rand(10, 4, 1, 6, 6).astype(np.float32)
    data = get_task(f"file:{write_npz(tmp_path / 'v.npz', x=xv, y=np.arange(10) % 2)}")
    assert data.kind == "video" and data.input_shape == (4, 1, 6, 6)


NPZ_ERRORS = {
    "missing x": (dict(y=Y), "'x'"),
    "missing y": (dict(x=X), "'y'"),
    "x rank 2": (dict(x=X[..., 0], y=Y), "'x'"),
    "x integer": (dict(x=X.astype(np.int32), y=Y), "'x'"),
    "x bool": (dict(x=X > 0, y=Y), "'x'"),
    "y float": (dict(x=X, y=Y.astype(np.float32)), "'y'"),
    "y rank 3": (dict(x=X, y=Y[:, None, None]), "'y'"),
    "N mismatch": (dict(x=X, y=Y[:-1]), "'y'"),
    "per-step T mismatch": (dict(x=X, y=np.zeros((30, 4), np.int64)), "'y'"),
    "label below -1": (dict(x=X, y=np.where(Y == 0, -2, Y)), "'y'"),
    "-1 in sequence labels": (dict(x=X, y=np.where(Y == 0, -1, Y)), "'y'"),
    "all labels -1": (dict(x=X, y=np.full((30, 5), -1)), "-1"),
    "NaN in x": (dict(x=np.where(X > 2, np.nan, X), y=Y), "'x'"),
    "inf in x_test": (dict(x=X, y=Y, x_test=np.full((2, 5, 3), np.inf), y_test=Y[:2]),
                      "'x_test'"),
    "val features differ": (dict(x=X, y=Y, x_val=X[:, :, :2], y_val=Y), "'x_val'"),
    "val steps differ": (dict(x=X, y=Y, x_val=X[:, :4], y_val=Y), "'x_val'"),
    "val label rank differs": (dict(x=X, y=Y, x_val=X, y_val=np.zeros((30, 5), np.int64)),
                               "'y_val'"),
    "x_val without y_val": (dict(x=X, y=Y, x_val=X), "'y_val'"),
    "y_test without x_test": (dict(x=X, y=Y, y_test=Y), "'x_test'"),
    "typo in array name": (dict(x=X, y=Y, x_valid=X, y_valid=Y), "x_valid"),
    "no samples": (dict(x=X[:0], y=Y[:0]), "'x'"),
    "object array": (dict(x=np.array([X[0], X[1][:2]], dtype=object), y=Y[:2]), "pickle"),
}


@pytest.mark.parametrize("case", list(NPZ_ERRORS))
def test_npz_errors_name_the_array(tmp_path, case):
    arrays, needle = NPZ_ERRORS[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as info:
        get_task(f"file:{path}")
    assert needle in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("case", ["missing", "folder", "text", "npy", "truncated"])
def test_npz_bad_files_name_the_file(tmp_path, case):
    path = tmp_path / "data.npz"
    if case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("x,y\n1,2\n")
    elif case == "npy":
        with open(path, "wb") as f:
            np.save(f, X)
    elif case == "truncated":
        np.savez(path, x=X, y=Y)
        path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError) as info:
        get_task(f"file:{path}")
    assert str(path) in str(info.value)


def test_npz_too_small_to_carve(tmp_path):
    path = write_npz(tmp_path / "d.npz", x=X[:1], y=Y[:1])
    with pytest.raises(DataError, match="too few samples"):
        get_task(f"file:{path}")


def test_audio_metadata_mirrors_the_audio_module():
    audio = pytest.importorskip("tasks.audio")
    for name, info in audio.AUDIO_TASK_INFO.items():
        entry = registry.get_entry(name)
        assert entry.kind == info["kind"] and entry.source == info["source"], name
        assert list(entry.input_shape) == list(info["input_shape"]), name
        assert entry.classes == info["classes"], name
