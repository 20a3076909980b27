"""MNIST from its IDX files: sequential, permuted sequential and moving-MNIST classification.

Files (raw or ``.gz``): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``. They are looked for in
``DATA/mnist/``, ``DATA/`` and ``DATA/MNIST/raw/`` (torchvision's layout), where ``DATA`` is
``--data-dir``, else ``$TSP_DATA_DIR``, else ``~/.cache/temporal_sigprop``. ``--download``
fetches the ``.gz`` files into ``DATA/mnist/`` from a public mirror and checks size and MD5.

``smnist`` — sequential MNIST: an image read pixel by pixel in raster order, ``pixels_per_step``
    pixels per step (default 1: ``x [N, 784, 1]``; 28 gives the row-by-row ``[N, 28, 28]``).
``psmnist`` — the same after one fixed random permutation of the 784 pixels (``perm_seed``),
    which destroys locality: dependencies span the whole sequence.
``moving_mnist_cls`` — our own moving-MNIST *classification* set (the public Moving MNIST has no
    labels). A clip of ``frames`` frames of ``1 x size x size`` shows one MNIST digit, resized to
    ``digit_size`` pixels, moving with a random direction and speed and bouncing off the edges.
    It is on screen only during ``visible`` consecutive frames starting at a random frame; the
    other frames hold only pixel noise. **Label: the digit.** Since the digit may appear
    anywhere in the clip, including the first frames, the net has to watch the whole clip and
    carry what it saw to the end; the final frames alone are usually empty. Train/validation
    clips use digits from the training file, test clips digits from the test file.

Images are scaled to [0, 1] and, with ``normalize`` (default), standardised with the usual MNIST
mean/std (0.1307, 0.3081). ``n_train``/``n_test`` = 0 means "all" for smnist/psmnist (a
smaller number takes the first samples of each file, for quick runs).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import math
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from .base import DataError, TaskData, data_root, make_task_data, torch_generator
from .video import Sprites, random_motion, render_clips

__all__ = [
    "MNIST_FILES",
    "MIRRORS",
    "read_idx",
    "write_idx",
    "mnist_folder",
    "find_mnist_files",
    "download_mnist",
    "load_mnist",
    "build_smnist",
    "build_psmnist",
    "build_moving_mnist_cls",
]

# name -> (size in bytes of the .gz, md5 of the .gz): what the mirrors serve
MNIST_FILES = {
    "train-images-idx3-ubyte": (9912422, "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte": (28881, "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte": (1648877, "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte": (4542, "ec29112dd5afa0611ce80d1b7f02629c"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MEAN, STD = 0.1307, 0.3081


# IDX type codes (third byte of the magic number) -> numpy dtype (big-endian on disk)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}


# --------------------------------------------------------------------------------------------
# IDX format


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw, or gzip if the name ends in ``.gz``).

    Layout: two zero bytes, a type code, the number of dimensions ``d``, then ``d`` big-endian
    uint32 sizes and the data, big-endian. Anything else (bad magic, truncated data, trailing
    bytes, a broken gzip stream) raises DataError naming the file.
    """
    path = Path(path)
    fix = f"delete {str(path)!r} and download it again (--download)"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file {str(path)!r} ({exc}): corrupt or truncated; "
                        f"{fix}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        magic = raw[:4].hex() or "missing"
        raise DataError(f"{str(path)!r} is not an IDX file (magic number {magic}, expected "
                        f"0000 + type code + ndim); {fix}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header; {fix}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    want = math.prod(dims) * dtype.itemsize
    have = len(raw) - header
    if have != want:
        what = "truncated" if have < want else "has trailing bytes"
        raise DataError(f"IDX file {str(path)!r} {what}: {have} data bytes, expected {want} "
                        f"for shape {list(dims)}; {fix}")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # native byte order, writable copy


def write_idx(path, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip if the name ends in ``.gz``). Used by tests/fixtures."""
    array = np.asarray(array)
    code = _IDX_CODES[array.dtype.newbyteorder("=")]
    data = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.astype(_IDX_DTYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


# --------------------------------------------------------------------------------------------
# Locating, downloading and loading the files


def mnist_folder(data_dir=None) -> Path:
    """Where MNIST is downloaded to (and looked for first): ``DATA/mnist``."""
    return data_root(data_dir) / "mnist"


def _candidates(data_dir):
    root = data_root(data_dir)
    return [root / "mnist", root, root / "MNIST" / "raw"]


def _how_to(data_dir, missing, task="smnist") -> str:
    folder = mnist_folder(data_dir)
    urls = "\n".join(f"  {MIRRORS[0]}{name}.gz" for name in missing)
    return (
        f"MNIST files missing: {', '.join(missing)} (raw or .gz) in {folder} "
        f"(also looked in {', '.join(str(p) for p in _candidates(data_dir)[1:])}).\n"
        f"Get them with: tsp train --task {task} --download [--data-dir DIR] ..., or "
        f"download by hand into {folder}:\n{urls}\n"
        f"(mirror: {MIRRORS[1]}); or point --data-dir / TSP_DATA_DIR at a folder that has them."
    )


def find_mnist_files(data_dir=None, task: str = "smnist") -> dict:
    """``{name: path}`` for the four files; DataError with the how-to if any is absent."""
    found, missing = {}, []
    for name in MNIST_FILES:
        path = next((folder / f for folder in _candidates(data_dir)
                     for f in (name, name + ".gz") if (folder / f).is_file()), None)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise DataError(_how_to(data_dir, missing, task))
    return found


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_mnist(data_dir=None, timeout: float = 60.0) -> Path:
    """Fetch the four ``.gz`` files into ``DATA/mnist`` (skipping good ones); checks size/MD5."""
    folder = mnist_folder(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (size, md5) in MNIST_FILES.items():
        dest = folder / f"{name}.gz"
        if dest.is_file() and dest.stat().st_size == size and _md5(dest) == md5:
            continue
        errors = []
        for mirror in MIRRORS:
            url = f"{mirror}{name}.gz"
            part = dest.with_suffix(".gz.part")
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp, open(part, "wb") as f:
                    while block := resp.read(1 << 20):
                        f.write(block)
                got = part.stat().st_size
                if got != size or _md5(part) != md5:
                    raise OSError(f"got {got} bytes / md5 {_md5(part)}, expected {size} / {md5}")
                part.replace(dest)
                break
            except OSError as exc:  # URLError, HTTPError, timeouts are OSErrors
                errors.append(f"{url}: {exc}")
                part.unlink(missing_ok=True)
        else:
            raise DataError(
                f"could not download MNIST file {name}.gz into {folder}:\n  "
                + "\n  ".join(errors)
                + f"\nDownload it by hand from one of those URLs into {folder}, or point "
                  f"--data-dir / TSP_DATA_DIR at a folder that has the MNIST files."
            )
    return folder


def load_mnist(data_dir=None, download: bool = False, task: str = "smnist"):
    """``(x_train uint8 [N, 28, 28], y_train int64 [N], x_test, y_test)`` from the IDX files."""
    try:
        files = find_mnist_files(data_dir, task)
    except DataError:
        if not download:
            raise
        download_mnist(data_dir)
        files = find_mnist_files(data_dir, task)
    # cache on (path, size, mtime) so a replaced file is re-read
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
    return _load_mnist_cached(key)


@functools.lru_cache(maxsize=2)
def _load_mnist_cached(key):
    paths = {Path(p).name.removesuffix(".gz"): Path(p) for p, _, _ in key}
    out = []
    for split in ("train", "t10k"):
        img_path = paths[f"{split}-images-idx3-ubyte"]
        lab_path = paths[f"{split}-labels-idx1-ubyte"]
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataError(f"{str(img_path)!r}: expected uint8 images [N, 28, 28], got "
                            f"{images.dtype} {list(images.shape)}")
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataError(f"{str(lab_path)!r}: expected uint8 labels [N], got "
                            f"{labels.dtype} {list(labels.shape)}")
        if len(labels) != len(images):
            raise DataError(f"{str(lab_path)!r} has {len(labels)} labels but {str(img_path)!r} "
                            f"has {len(images)} images")
        if len(labels) and labels.max() > 9:
            raise DataError(f"{str(lab_path)!r}: label {labels.max()} is not a digit 0-9")
        images.setflags(write=False)
        out += [images, labels.astype(np.int64)]
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Sequential and permuted sequential MNIST


def _pixels(images: np.ndarray, normalize: bool) -> torch.Tensor:
    x = torch.tensor(images, dtype=torch.float32) / 255.0
    return (x - MEAN) / STD if normalize else x


def _subset(x, y, n):
    return (x[:n], y[:n]) if n else (x, y)


def _build_sequential(name, *, seed, data_dir, download, pixels_per_step, normalize, n_train,
                      n_test, val_fraction, perm_seed=None) -> TaskData:
    if pixels_per_step < 1 or 784 % pixels_per_step:
        divisors = [d for d in range(1, 785) if 784 % d == 0]
        raise DataError(f"task {name!r}: pixels_per_step must divide 784, got "
                        f"{pixels_per_step}; choose one of {divisors}")
    if n_train < 0 or n_test < 0:
        raise DataError(f"task {name!r}: n_train/n_test must be >= 0 (0 = all)")
    x_train, y_train, x_test, y_test = load_mnist(data_dir, download, name)
    perm = None
    if perm_seed is not None:
        # one fixed permutation of the 784 pixel positions, the same for every image and run
        perm = torch.from_numpy(np.random.RandomState(perm_seed).permutation(784))
    splits = {}
    for split, (xs, ys, n) in {"train": (x_train, y_train, n_train),
                               "test": (x_test, y_test, n_test)}.items():
        xs, ys = _subset(xs, ys, n)
        x = rearrange(_pixels(xs, normalize), "n h w -> n (h w)")  # raster order
        if perm is not None:
            x = x[:, perm]
        x = rearrange(x, "n (t p) -> n t p", p=pixels_per_step)
        splits[split] = (x, torch.from_numpy(ys))
    T = 784 // pixels_per_step
    what = "permuted sequential" if perm is not None else "sequential"
    return make_task_data(
        name=name, kind="sequence", num_classes=10, label_kind="sequence",
        train=splits["train"], test=splits["test"], val_fraction=val_fraction, seed=seed,
        description=(f"{what} MNIST: {T} steps of {pixels_per_step} pixel(s)"
                     + (f", fixed pixel permutation (perm_seed={perm_seed})" if perm is not None
                        else "") + "; validation carved from the 60k training images"),
        source="download",
        info=dict(pixels_per_step=pixels_per_step, normalize=normalize, perm_seed=perm_seed),
    )


def build_smnist(*, seed=0, data_dir=None, download=False, pixels_per_step=1, normalize=True,
                 n_train=0, n_test=0, val_fraction=0.1) -> TaskData:
    """Sequential MNIST (pixels in raster order)."""
    return _build_sequential("smnist", seed=seed, data_dir=data_dir, download=download,
                             pixels_per_step=pixels_per_step, normalize=normalize,
                             n_train=n_train, n_test=n_test, val_fraction=val_fraction)


def build_psmnist(*, seed=0, data_dir=None, download=False, pixels_per_step=1, normalize=True,
                  n_train=0, n_test=0, val_fraction=0.1, perm_seed=0) -> TaskData:
    """Permuted sequential MNIST (one fixed pixel permutation from ``perm_seed``)."""
    return _build_sequential("psmnist", seed=seed, data_dir=data_dir, download=download,
                             pixels_per_step=pixels_per_step, normalize=normalize,
                             n_train=n_train, n_test=n_test, val_fraction=val_fraction,
                             perm_seed=perm_seed)


# --------------------------------------------------------------------------------------------
# Moving-MNIST classification


def moving_mnist_arrays(images: np.ndarray, labels: np.ndarray, n: int, *, frames: int,
                        size: int, digit_size: int, visible: int, noise: float,
                        generator: torch.Generator):
    """``x [n, frames, 1, size, size]`` and ``y [n]`` from random digits of ``images``."""
    idx = torch.randint(len(images), (n,), generator=generator)
    digits = torch.tensor(images[idx.numpy()], dtype=torch.float32)[:, None] / 255.0
    # resize once with antialiasing; the renderer then samples it at 1:1 scale
    glyph = F.interpolate(digits, size=(digit_size, digit_size), mode="bilinear",
                          antialias=True, align_corners=False)[:, 0]
    side = torch.full((n,), float(digit_size))
    start, velocity = random_motion(n, side, size, generator, speed=(1.0, 3.0))
    onset = torch.randint(0, frames - visible + 1, (n,), generator=generator)
    sprite = Sprites(glyph, side, start, velocity, torch.zeros(n), onset, onset + visible)
    x = render_clips([sprite], frames, size)
    if noise > 0:
        x += noise * torch.randn(x.shape, generator=generator)
    return x, torch.from_numpy(labels[idx.numpy()])


def build_moving_mnist_cls(*, seed=0, data_dir=None, download=False, frames=20, size=32,
                           digit_size=20, visible=5, noise=0.05, n_train=4000, n_test=1000,
                           data_seed=0, val_fraction=0.1) -> TaskData:
    """Moving-MNIST classification of our own construction (module docstring)."""
    name = "moving_mnist_cls"
    if not 1 <= visible <= frames:
        raise DataError(f"task {name!r}: visible must be in [1, frames={frames}], got {visible}")
    if not 4 <= digit_size <= size:
        raise DataError(f"task {name!r}: digit_size must be in [4, size={size}], got "
                        f"{digit_size}")
    if n_train < 2 or n_test < 1:
        raise DataError(f"task {name!r}: need n_train >= 2 and n_test >= 1")
    x_train, y_train, x_test, y_test = load_mnist(data_dir, download, name)
    opts = dict(frames=frames, size=size, digit_size=digit_size, visible=visible, noise=noise)
    splits = {
        split: moving_mnist_arrays(imgs, labs, n, generator=torch_generator(data_seed, name,
                                                                            split), **opts)
        for split, imgs, labs, n in (("train", x_train, y_train, n_train),
                                     ("test", x_test, y_test, n_test))
    }
    return make_task_data(
        name=name, kind="video", num_classes=10, label_kind="sequence",
        train=splits["train"], test=splits["test"], val_fraction=val_fraction, seed=seed,
        description=(f"{frames} frames of 1x{size}x{size}: one moving MNIST digit, on screen "
                     f"for {visible} consecutive frames at a random time; label = the digit"),
        source="download", info=dict(opts, data_seed=data_seed),
    )
