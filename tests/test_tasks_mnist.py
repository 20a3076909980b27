"""MNIST loaders (smnist, psmnist, moving_mnist_cls) on tiny fixtures in the real IDX format."""
from __future__ import annotations

import gzip
import hashlib
import io
import urllib.error

import numpy as np
import pytest
import torch

from tasks import DataError, get_task
from tasks import mnist
from tasks.mnist import read_idx, write_idx

N_TRAIN, N_TEST = 40, 12
FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def fixture_arrays():
    rng = np.random.RandomState(0)
    return {
        "train-images-idx3-ubyte": rng.randint(0, 256, (N_TRAIN, 28, 28)).astype(np.uint8),
        "train-labels-idx1-ubyte": (np.arange(N_TRAIN) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (N_TEST, 28, 28)).astype(np.uint8),
        "t10k-labels-idx1-ubyte": ((np.arange(N_TEST) + 3) % 10).astype(np.uint8),
    }


def write_fixture(folder, gz: bool):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fixture_arrays()
    for name, arr in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), arr)
    return arrays


@pytest.fixture(params=["raw", "gz"])
def mnist_dir(request, tmp_path):
    arrays = write_fixture(tmp_path / "mnist", gz=request.param == "gz")
    return tmp_path, arrays


def test_idx_round_trip_and_byte_layout(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03"  # magic: 0, 0, ubyte, 3 dimensions
    assert raw[4:16] == b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04"  # big-endian dims
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    wide = np.array([1, -2, 300000], dtype=np.int32)
    write_idx(tmp_path / "b.gz", wide)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), wide)


def test_smnist_shapes_and_values(mnist_dir):
    root, arrays = mnist_dir
    data = get_task("smnist", data_dir=root, normalize=False)
    assert data.source == "download" and data.kind == "sequence"
    assert data.input_shape == (784, 1) and data.num_classes == 10
    assert data.sizes() == {"train": 36, "val": 4, "test": N_TEST}
    images = arrays["t10k-images-idx3-ubyte"]
    x, y = data.test.tensors
    assert torch.allclose(x[..., 0], torch.tensor(images.reshape(N_TEST, 784) / 255.0).float())
    assert torch.equal(y, torch.tensor(arrays["t10k-labels-idx1-ubyte"], dtype=torch.int64))
    rows = get_task("smnist:pixels_per_step=28", data_dir=root)
    assert rows.input_shape == (28, 28)
    # normalized row-by-row test images are the images, standardised
    want = (torch.tensor(images / 255.0).float() - mnist.MEAN) / mnist.STD
    assert torch.allclose(rows.test.tensors[0], want, atol=1e-6)


def test_smnist_options(mnist_dir):
    root, _ = mnist_dir
    data = get_task("smnist:n_train=20,n_test=5,pixels_per_step=16", data_dir=root)
    assert data.sizes() == {"train": 18, "val": 2, "test": 5}
    assert data.input_shape == (49, 16)
    with pytest.raises(DataError, match="pixels_per_step"):
        get_task("smnist:pixels_per_step=10", data_dir=root)


def test_psmnist_is_a_fixed_permutation(mnist_dir):
    root, _ = mnist_dir
    plain = get_task("smnist", data_dir=root).test.tensors[0][..., 0]
    a = get_task("psmnist", data_dir=root, seed=0).test.tensors[0][..., 0]
    b = get_task("psmnist", data_dir=root, seed=4).test.tensors[0][..., 0]
    assert torch.equal(a, b)  # the permutation does not depend on the run seed
    assert not torch.equal(a, plain)
    assert torch.equal(a.sort(1).values, plain.sort(1).values)
    perm = torch.from_numpy(np.random.RandomState(0).permutation(784))
    assert torch.equal(a, plain[:, perm])
    c = get_task("psmnist:perm_seed=1", data_dir=root).test.tensors[0][..., 0]
    assert not torch.equal(a, c)


def test_moving_mnist_cls(mnist_dir):
    root, arrays = mnist_dir
    opts = dict(n_train=30, n_test=10, frames=10, visible=3, noise=0.0)
    data = get_task("moving_mnist_cls", data_dir=root, **opts)
    assert data.kind == "video" and data.input_shape == (10, 1, 32, 32)
    assert data.num_classes == 10 and data.source == "download"
    x, y = data.train.tensors
    on = x.flatten(2).amax(-1) > 0  # frames where the digit is on screen
    assert (on.sum(1) == 3).all()
    assert torch.equal(on.int().diff(dim=1).clamp(min=0).sum(1), (~on[:, 0]).int())  # one run
    assert set(data.test.tensors[1].tolist()) <= set(arrays["t10k-labels-idx1-ubyte"].tolist())
    again = get_task("moving_mnist_cls", data_dir=root, **opts)
    assert torch.equal(again.train.tensors[0], x)
    other = get_task("moving_mnist_cls", data_dir=root, data_seed=1, **opts)
    assert not torch.equal(other.test.tensors[0], data.test.tensors[0])


def test_static_metadata_matches(mnist_dir):
    from tasks.registry import get_entry

    root, _ = mnist_dir
    for name, extra in (("smnist", {}), ("psmnist", {}),
                        ("moving_mnist_cls", dict(n_train=4, n_test=2))):
        data = get_task(name, data_dir=root, **extra)
        entry = get_entry(name)
        assert data.input_shape == tuple(entry.input_shape) and data.num_classes == entry.classes


def test_torchvision_layout_and_env_var(tmp_path, monkeypatch):
    write_fixture(tmp_path / "MNIST" / "raw", gz=True)
    assert len(get_task("smnist", data_dir=tmp_path).test) == N_TEST
    monkeypatch.setenv("TSP_DATA_DIR", str(tmp_path))
    assert len(get_task("smnist").test) == N_TEST


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as info:
        get_task("psmnist", data_dir=tmp_path / "nowhere")
    msg = str(info.value)
    for name in FILES:
        assert name in msg
    assert str(tmp_path / "nowhere" / "mnist") in msg
    assert "--download" in msg and "tsp train --task psmnist" in msg
    assert mnist.MIRRORS[0] + "train-images-idx3-ubyte.gz" in msg


def test_one_missing_file_is_named(tmp_path):
    write_fixture(tmp_path / "mnist", gz=False)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as info:
        get_task("smnist", data_dir=tmp_path)
    assert "t10k-labels-idx1-ubyte" in str(info.value)
    assert "train-images-idx3-ubyte," not in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_file_is_named(tmp_path, gz):
    write_fixture(tmp_path / "mnist", gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / "mnist" / name
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError) as info:
        get_task("smnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("corruption", ["magic", "header", "trailing", "shape", "count",
                                        "label"])
def test_corrupt_files_are_named(tmp_path, corruption):
    arrays = write_fixture(tmp_path / "mnist", gz=False)
    folder = tmp_path / "mnist"
    name = "t10k-labels-idx1-ubyte" if corruption in ("count", "label") else \
        "t10k-images-idx3-ubyte"
    path = folder / name
    if corruption == "magic":
        path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    elif corruption == "header":
        path.write_bytes(path.read_bytes()[:9])
    elif corruption == "trailing":
        path.write_bytes(path.read_bytes() + b"\x00")
    elif corruption == "shape":
        write_idx(path, arrays[name][:, :14])
    elif corruption == "count":
        write_idx(path, arrays[name][:-1])
    elif corruption == "label":
        write_idx(path, np.full(N_TEST, 12, np.uint8))
    with pytest.raises(DataError) as info:
        get_task("smnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


def test_download_failure_is_clear(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(mnist.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as info:
        get_task("smnist", data_dir=tmp_path, download=True)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and mnist.MIRRORS[0] in msg
    assert str(tmp_path / "mnist") in msg
    assert not list((tmp_path / "mnist").glob("*.part"))  # no half-written files left


def test_download_verifies_size_and_md5(tmp_path, monkeypatch):
    source = tmp_path / "served"
    write_fixture(source, gz=True)
    served = {f"{name}.gz": (source / f"{name}.gz").read_bytes() for name in FILES}
    monkeypatch.setattr(mnist, "MNIST_FILES", {
        name: (len(served[name + ".gz"]), hashlib.md5(served[name + ".gz"]).hexdigest())
        for name in FILES})
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        body = served[url.rsplit("/", 1)[1]]
        if url.startswith(mnist.MIRRORS[0]) and "t10k-images" in url:
            body = body[:-5]  # a short read from the first mirror: must fall back
        return io.BytesIO(body)

    monkeypatch.setattr(mnist.urllib.request, "urlopen", fake_urlopen)
    data = get_task("smnist", data_dir=tmp_path / "root", download=True)
    assert len(data.test) == N_TEST
    assert any(c.startswith(mnist.MIRRORS[1]) for c in calls)
    assert sorted(p.name for p in (tmp_path / "root" / "mnist").iterdir()) == sorted(served)
    with gzip.open(tmp_path / "root" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        assert f.read() == gzip.decompress(served["t10k-images-idx3-ubyte.gz"])
