"""UCR/UEA archive tasks: ``uea:NAME`` (multivariate archive), ``ucr:NAME`` (univariate).

Two task families over the archive's data sets, one task per set, named ``uea:NAME`` /
``ucr:NAME`` with the archive's own spelling (``uea:JapaneseVowels``, ``ucr:GunPoint``); options
go after a second colon: ``uea:BasicMotions:val_fraction=0.25``.

**Splits.** Test = the archive's official ``NAME_TEST.ts``, never used for selection. Validation
is carved from the official ``NAME_TRAIN.ts``, stratified by class (``val_fraction`` of each
class, at least one case of a class with two or more), chosen by the run seed; train is the rest.
Archive training sets are small (20-300 cases is common), so the default ``val_fraction`` is
0.2 rather than the 0.1 of the generated tasks: a handful of validation cases would make "test
accuracy at best validation" a coin toss.

**Where the files come from**, first found wins:

1. ``DATA/<Folder>/NAME/NAME_TRAIN.ts`` and ``NAME_TEST.ts``, where ``DATA`` is ``--data-dir``
   (else ``$TSP_DATA_DIR``, else ``~/.cache/temporal_sigprop``) and ``<Folder>`` is
   ``Multivariate_ts`` for ``uea:`` and ``Univariate_ts`` for ``ucr:`` — the layout of the
   archive's bulk zips (``Multivariate2018_ts.zip``, ``Univariate2018_ts.zip``), which can be
   unpacked into ``DATA`` as they are. ``DATA/NAME/NAME_TRAIN.ts`` is accepted too.
2. The copy shipped inside the ``aeon`` package (its ``datasets/data/NAME/`` folder), for the
   sets in :data:`OFFLINE_SETS`. aeon is located with ``importlib.util.find_spec`` and never
   imported (its import takes seconds and pulls in numba); only its data files are read.
3. ``--download`` fetches the archive's per-set zip, :func:`archive_url`, and keeps its two
   ``.ts`` files in the folder of point 1. The archive's data sets are published for research
   use (cite the archive papers); nothing is redistributed here.

A missing set raises :class:`DataError` naming both files, the folder and how to get them.

**The .ts format** (read by :func:`read_ts`, our own parser): ``#`` comment lines, then header
tags (case-insensitive) ``@problemName``, ``@timeStamps``, ``@missing``, ``@univariate``,
``@dimension(s)``, ``@equalLength``, ``@seriesLength``, ``@classLabel true L1 L2 ...`` and
``@data``; after ``@data`` one case per line, its dimensions separated by ``:``, the values of a
dimension by ``,``, the class label last; ``?`` (or ``NaN``) marks a missing value. Time-stamped
data (``@timeStamps true``) and regression files (``@targetLabel``, ``@classLabel false``) are
refused with a DataError, as is any malformed line (the message names the file and line).

**From file to tensors** (:func:`prepare`), in this order:

* *Class labels* map to ``0..K-1`` in the order of the training file's ``@classLabel`` list
  (string labels such as ``Standing``/``Running`` are fine); a test label outside that list is
  an error.
* *Trailing missing values* — steps at the end of a case where every channel is missing — are
  padding that some archive files use for variable-length series: they are cut off, so the case
  is shorter.
* *Other missing values* are forward-filled from the channel's last observed value (causal: a
  recurrent learner only ever sees the past); values before a channel's first observation
  become 0 after normalisation, i.e. the training mean.
* *Normalisation* (``normalize``, default on): each channel is standardised with the mean and
  standard deviation of its observed values in the training part (validation and test excluded;
  a constant channel keeps scale 1).
* *Variable length*: every case is **left-padded with zeros** (after normalisation) to
  ``T`` = the longest case over train and test, so the final step is every series' real last
  observation. The harness's ``--loss-at last`` scores that final step, and the zeros before a
  short series are the training mean, which a recurrent net reads as "nothing yet". Cases of
  equal length are left as they are.

``TaskData.info`` records the files read, the lengths before padding, the normalisation
statistics and the published reference accuracies (:data:`OFFLINE_SETS`).
"""
from __future__ import annotations

import functools
import importlib.util
import math
import re
import shutil
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .base import DataError, TaskData, data_root, make_task_data, torch_generator

__all__ = [
    "ARCHIVES",
    "OFFLINE_SETS",
    "Archive",
    "TsFile",
    "read_ts",
    "archive_url",
    "archive_folder",
    "aeon_data_folder",
    "find_archive_files",
    "check_name",
    "download_archive_set",
    "prepare",
    "stratified_split",
    "build_uea",
    "build_ucr",
]


# The archives, the offline sets and their reference accuracies are plain data, declared
# torch-free in tasks.archive_sets (the registry lists them without importing this module).
from .archive_sets import ARCHIVES, DEFAULT_OPTIONS, OFFLINE_SETS, Archive  # noqa: E402,F401

#: The archive's per-set zips (the same address aeon's own loader downloads from).
DOWNLOAD_URL = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"

# A set name as the archive spells it; also keeps names from reaching outside the data folder.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


# --------------------------------------------------------------------------------------------
# The .ts format


@dataclass
class TsFile:
    """The contents of one ``.ts`` file."""

    path: Path
    """The file read."""
    problem_name: str
    """``@problemName`` (empty if absent)."""
    class_labels: tuple
    """The ``@classLabel`` list in file order (empty if the header lists none)."""
    series: list
    """One float64 array ``[channels, length]`` per case; NaN = missing value."""
    labels: list
    """One class label (a string, as written) per case."""
    header: dict
    """Every header tag, lower-cased, with the rest of its line."""

    @property
    def channels(self) -> int:
        return int(self.series[0].shape[0])

    @property
    def lengths(self) -> list:
        return [int(s.shape[1]) for s in self.series]


_BOOL = {"true": True, "false": False}


def _fail(path, line_no, what) -> DataError:
    where = f"{str(path)!r}" + (f", line {line_no}" if line_no else "")
    return DataError(f"malformed .ts file {where}: {what}")


def _header_bool(path, line_no, tag, value) -> bool:
    word = value.split()[0].lower() if value.split() else ""
    if word not in _BOOL:
        raise _fail(path, line_no, f"@{tag} must be true or false, got {value!r}")
    return _BOOL[word]


def _header_int(path, line_no, tag, value) -> int:
    try:
        number = int(value.split()[0])
    except (ValueError, IndexError):
        raise _fail(path, line_no, f"@{tag} must be a whole number, got {value!r}") from None
    if number < 1:
        raise _fail(path, line_no, f"@{tag} must be at least 1, got {number}")
    return number


def _parse_values(path, line_no, text, dim) -> np.ndarray:
    out = []
    for item in text.split(","):
        item = item.strip()
        if item == "?":
            out.append(math.nan)
            continue
        try:
            value = float(item)
        except ValueError:
            shown = item if item else "an empty value"
            raise _fail(path, line_no, f"dimension {dim + 1}: {shown!r} is not a number "
                                       "(missing values are written '?')") from None
        if math.isinf(value):
            raise _fail(path, line_no, f"dimension {dim + 1}: infinite value {item!r}")
        out.append(value)
    return np.asarray(out, dtype=np.float64)


def read_ts(path) -> TsFile:
    """Parse a classification ``.ts`` file (module docstring); DataError on anything malformed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")  # comments may be Latin-1
    except OSError as exc:
        raise DataError(f"cannot read .ts file {str(path)!r} ({exc})") from exc
    header: dict = {}
    flags: dict = {}
    class_labels: tuple = ()
    dims_declared = None
    series, labels = [], []
    in_data = False
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise _fail(path, line_no, f"expected a header tag (@...) or @data before "
                                           f"the data, got {line[:40]!r}")
            tag, _, value = line[1:].partition(" ")
            tag, value = tag.lower(), value.strip()
            header[tag] = value
            if tag == "data":
                in_data = True
            elif tag in ("timestamps", "missing", "univariate", "equallength"):
                flags[tag] = _header_bool(path, line_no, tag, value)
                if tag == "timestamps" and flags[tag]:
                    raise _fail(path, line_no, "@timeStamps true: time-stamped values are "
                                               "not supported; give plain values per step")
            elif tag in ("dimension", "dimensions"):
                dims_declared = _header_int(path, line_no, tag, value)
            elif tag == "serieslength":
                flags["serieslength"] = _header_int(path, line_no, tag, value)
            elif tag == "targetlabel" and value.split()[:1] == ["true"]:
                raise _fail(path, line_no, "@targetLabel true: a regression problem; only "
                                           "classification files (@classLabel true ...) load")
            elif tag == "classlabel":
                words = value.split()
                if not words or not _header_bool(path, line_no, tag, words[0]):
                    raise _fail(path, line_no, "@classLabel false: the cases have no class "
                                               "labels; classification needs @classLabel true")
                class_labels = tuple(words[1:])
                if len(set(class_labels)) != len(class_labels):
                    raise _fail(path, line_no, f"@classLabel lists a label twice: "
                                               f"{list(class_labels)}")
            continue
        # one case: dim_1 : dim_2 : ... : label
        fields = line.split(":")
        if len(fields) < 2:
            raise _fail(path, line_no, "a case needs at least one dimension and a class "
                                       "label, separated by ':'")
        label = fields[-1].strip()
        if not label:
            raise _fail(path, line_no, "empty class label after the last ':'")
        if class_labels and label not in class_labels:
            raise _fail(path, line_no, f"class label {label!r} is not in the @classLabel "
                                       f"list {list(class_labels)}")
        values = [_parse_values(path, line_no, f, d) for d, f in enumerate(fields[:-1])]
        want_dims = dims_declared or (series[0].shape[0] if series else len(values))
        if flags.get("univariate") and dims_declared is None:
            want_dims = 1
        if len(values) != want_dims:
            source = ("@dimensions" if dims_declared else "@univariate true"
                      if flags.get("univariate") else "the first case")
            raise _fail(path, line_no, f"{len(values)} dimension(s), but {source} says "
                                       f"{want_dims}")
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise _fail(path, line_no, f"the dimensions of one case have different lengths "
                                       f"{[len(v) for v in values]}")
        if flags.get("equallength") and "serieslength" in flags:
            if lengths != {flags["serieslength"]}:
                raise _fail(path, line_no, f"length {lengths.pop()}, but @equalLength true "
                                           f"with @seriesLength {flags['serieslength']}")
        series.append(np.stack(values))
        labels.append(label)
    if not in_data:
        raise _fail(path, 0, "no @data line: not a .ts file, or cut short")
    if not series:
        raise _fail(path, 0, "no cases after @data")
    if flags.get("equallength") and "serieslength" not in flags:
        if len({s.shape[1] for s in series}) != 1:
            raise _fail(path, 0, "@equalLength true, but the cases differ in length")
    return TsFile(path=path, problem_name=header.get("problemname", ""),
                  class_labels=class_labels, series=series, labels=labels, header=header)


@functools.lru_cache(maxsize=16)
def _read_ts_cached(path: str, size: int, mtime_ns: int) -> TsFile:
    data = read_ts(path)
    for s in data.series:  # shared by every caller: make accidental writes fail loudly
        s.setflags(write=False)
    return data


def _load(path: Path) -> TsFile:
    stat = path.stat()
    return _read_ts_cached(str(path), stat.st_size, stat.st_mtime_ns)


# --------------------------------------------------------------------------------------------
# Finding and downloading the files


def archive_url(name: str) -> str:
    """The address of the archive's zip for one set."""
    return DOWNLOAD_URL.format(name=name)


def archive_folder(archive: str, name: str, data_dir=None) -> Path:
    """``DATA/<Folder>/NAME``: where a set's files are looked for first and downloaded to."""
    return data_root(data_dir) / ARCHIVES[archive].folder / name


def aeon_data_folder() -> Path | None:
    """aeon's bundled ``datasets/data`` folder, found without importing aeon; None if absent."""
    try:
        spec = importlib.util.find_spec("aeon")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    return folder if folder.is_dir() else None


def _file_names(name):
    return f"{name}_TRAIN.ts", f"{name}_TEST.ts"


def _candidate_folders(archive, name, data_dir):
    folders = [archive_folder(archive, name, data_dir), data_root(data_dir) / name]
    if f"{archive}:{name}" in OFFLINE_SETS:
        aeon = aeon_data_folder()
        if aeon is not None:
            folders.append(aeon / name)
    return folders


def _missing_message(archive: str, name: str, data_dir) -> str:
    spec = f"{archive}:{name}"
    info = ARCHIVES[archive]
    train, test = _file_names(name)
    folder = archive_folder(archive, name, data_dir)
    others = [str(p) for p in _candidate_folders(archive, name, data_dir)[1:]]
    lines = [
        f"task {spec!r}: archive files {train} and {test} not found in {folder}"
        + (f" (also looked in {', '.join(others)})" if others else "") + ".",
        f"Get them with: tsp train --task {spec} --download [--data-dir DIR] ..., or download "
        f"{archive_url(name)} and put its {train} and {test} into {folder}; the "
        f"{info.title}'s {info.bulk_zip} unpacks into DIR as DIR/{info.folder}/NAME/.",
    ]
    if spec in OFFLINE_SETS and aeon_data_folder() is None:
        lines.append(f"{spec} also ships inside the aeon package, which is not installed: "
                     "pip install -c requirements.lock -e . in the project folder "
                     "(or pip install aeon).")
    hint = _did_you_mean(archive, name)
    if hint:
        lines.append(hint)
    lines.append("Sets that ship offline (with aeon): " + ", ".join(OFFLINE_SETS) + ".")
    return "\n".join(lines)


def _did_you_mean(archive, name):
    for spec in OFFLINE_SETS:
        member = spec.partition(":")[2]
        if member.lower() == name.lower() and spec != f"{archive}:{name}":
            return f"Did you mean {spec!r}? (set names are case-sensitive; uea: is the " \
                   f"multivariate archive, ucr: the univariate one)"
    return ""


def find_archive_files(archive: str, name: str, data_dir=None) -> tuple[Path, Path]:
    """``(train, test)`` paths of a set, from the first folder that has both (module docstring)."""
    check_name(archive, name)
    train, test = _file_names(name)
    for folder in _candidate_folders(archive, name, data_dir):
        if (folder / train).is_file() and (folder / test).is_file():
            return folder / train, folder / test
    raise DataError(_missing_message(archive, name, data_dir))


def check_name(archive: str, name: str) -> None:
    """DataError unless ``archive`` is known and ``name`` looks like an archive set name."""
    if archive not in ARCHIVES:
        raise DataError(f"unknown archive {archive!r}; choose one of {list(ARCHIVES)}")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise DataError(
            f"{archive}:{name!r} is not an archive set name: names are letters, digits, '_' "
            f"and '-' (e.g. {archive}:{'JapaneseVowels' if archive == 'uea' else 'GunPoint'})")


def download_archive_set(archive: str, name: str, data_dir=None, timeout: float = 120.0) -> Path:
    """Fetch :func:`archive_url` and keep ``NAME_TRAIN.ts``/``NAME_TEST.ts`` in the set's folder."""
    check_name(archive, name)
    folder = archive_folder(archive, name, data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    url = archive_url(name)
    wanted = _file_names(name)
    fix = (f"download {url} by hand and put its {wanted[0]} and {wanted[1]} into {folder}, "
           "or point --data-dir / TSP_DATA_DIR at a folder that has them")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        zip_path = Path(tmp) / f"{name}.zip"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(zip_path, "wb") as f:
                shutil.copyfileobj(resp, f, length=1 << 20)
        except OSError as exc:  # URLError, HTTPError and timeouts are OSErrors
            raise DataError(f"could not download {url} ({exc}); {fix}") from exc
        # The site answers an unknown name with an HTML page, not an HTTP error.
        if not zipfile.is_zipfile(zip_path):
            raise DataError(f"{url} did not return a zip file: is {name!r} a set of the "
                            f"{ARCHIVES[archive].title} (names are case-sensitive)? Or {fix}")
        with zipfile.ZipFile(zip_path) as zf:
            members = {Path(m).name: m for m in zf.namelist() if not m.endswith("/")}
            missing = [w for w in wanted if w not in members]
            if missing:
                raise DataError(f"the zip from {url} has no {', '.join(missing)} (it holds "
                                f"{sorted(members)[:12]}); {fix}")
            for file_name in wanted:
                part = Path(tmp) / (file_name + ".part")
                with zf.open(members[file_name]) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst, length=1 << 20)
                part.replace(folder / file_name)
    return folder


def _locate(archive, name, data_dir, download):
    try:
        return find_archive_files(archive, name, data_dir)
    except DataError:
        if not download:
            raise
    download_archive_set(archive, name, data_dir)
    return find_archive_files(archive, name, data_dir)


# --------------------------------------------------------------------------------------------
# From parsed files to tensors


def _class_order(train: TsFile, test: TsFile) -> tuple:
    if train.class_labels:
        order = train.class_labels
    else:  # no list in the header: the labels seen in training, numbers in numeric order
        seen = sorted(set(train.labels))
        try:
            order = tuple(sorted(seen, key=float))
        except ValueError:
            order = tuple(seen)
    unknown = sorted(set(test.labels) - set(order))
    if unknown:
        raise DataError(f"{str(test.path)!r} has class label(s) {unknown} that the training "
                        f"file {str(train.path)!r} does not list (its classes: {list(order)})")
    return order


def _strip_trailing_missing(s: np.ndarray) -> np.ndarray:
    observed = ~np.isnan(s).all(axis=0)
    if not observed.any():
        return s[:, :0]
    return s[:, : int(np.flatnonzero(observed)[-1]) + 1]


def _forward_fill(s: np.ndarray) -> np.ndarray:
    """Each NaN takes the channel's last observed value; NaNs before the first one stay NaN."""
    s = s.copy()
    for row in s:
        idx = np.where(~np.isnan(row), np.arange(row.size), -1)
        np.maximum.accumulate(idx, out=idx)
        filled = idx >= 0
        row[filled] = row[idx[filled]]
    return s


def stratified_split(labels: np.ndarray, fraction: float, seed_parts: tuple):
    """Boolean mask of the validation cases: ``round(fraction * n_c)`` of each class ``c``.

    A class with at least two cases gives at least one (when ``fraction > 0``) and keeps at
    least one for training. The draw is a permutation per class from one seeded generator.
    """
    if not 0.0 <= fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {fraction}")
    gen = torch_generator(*seed_parts)
    mask = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        else:
            k = min(k, len(idx) - 1)
        if k > 0:
            pick = torch.randperm(len(idx), generator=gen)[:k].numpy()
            mask[idx[pick]] = True
    return mask


def prepare(train: TsFile, test: TsFile, *, spec: str, seed: int, val_fraction: float,
            normalize: bool) -> tuple[dict, dict]:
    """``({split: (x, y)}, facts)`` from the two parsed files (module docstring, in order)."""
    if train.channels != test.channels:
        raise DataError(f"{str(train.path)!r} has {train.channels} dimension(s) but "
                        f"{str(test.path)!r} has {test.channels}")
    order = _class_order(train, test)
    index = {label: i for i, label in enumerate(order)}
    cases = {}
    for split, f in (("train", train), ("test", test)):
        series = [_strip_trailing_missing(s) for s in f.series]
        empty = [i for i, s in enumerate(series) if s.shape[1] == 0]
        if empty:
            raise DataError(f"{str(f.path)!r}: case(s) {[i + 1 for i in empty[:5]]} (counted "
                            f"from 1 after @data) have no observed value at all")
        cases[split] = (series, np.array([index[label] for label in f.labels], dtype=np.int64))
    val_mask = stratified_split(cases["train"][1], val_fraction, (seed, spec, "val"))
    all_train, y_all = cases["train"]
    parts = {
        "train": ([s for s, v in zip(all_train, val_mask) if not v], y_all[~val_mask]),
        "val": ([s for s, v in zip(all_train, val_mask) if v], y_all[val_mask]),
        "test": cases["test"],
    }
    channels = train.channels
    mean, std = np.zeros(channels), np.ones(channels)
    if normalize:  # statistics of the observed training values (before any filling)
        observed = np.concatenate(parts["train"][0], axis=1)
        seen = ~np.isnan(observed)
        count = seen.sum(axis=1)
        values = np.where(seen, observed, 0.0)
        has = count > 0  # a channel never observed in training keeps mean 0, scale 1
        mean[has] = values[has].sum(axis=1) / count[has]
        var = np.where(seen, (observed - mean[:, None]) ** 2, 0.0).sum(axis=1)
        std[has] = np.sqrt(var[has] / count[has])
        std[~(std > 0)] = 1.0  # a constant channel is only shifted
    steps = max(s.shape[1] for split in ("train", "test") for s in cases[split][0])
    out = {}
    for split, (series, y) in parts.items():
        x = np.zeros((len(series), steps, channels), dtype=np.float32)
        for i, s in enumerate(series):
            z = (_forward_fill(s) - mean[:, None]) / std[:, None]
            # NaN left before a channel's first observation becomes 0 = the training mean
            x[i, steps - s.shape[1]:] = np.nan_to_num(z, nan=0.0).T
        out[split] = (torch.from_numpy(x), torch.from_numpy(y))
    lengths = [s.shape[1] for split in ("train", "test") for s in cases[split][0]]
    facts = dict(
        classes=list(order), steps=steps, channels=channels,
        length_range=[int(min(lengths)), int(max(lengths))],
        official_sizes={"train": len(train.series), "test": len(test.series)},
        missing_values=int(sum(np.isnan(s).sum() for f in (train, test) for s in f.series)),
        normalization=dict(mean=mean.tolist(), std=std.tolist()) if normalize else None,
    )
    return out, facts


def _build(archive: str, name: str, *, seed, data_dir, download, val_fraction,
           normalize) -> TaskData:
    spec = f"{archive}:{name}"
    train_path, test_path = _locate(archive, name, data_dir, download)
    splits, facts = prepare(_load(train_path), _load(test_path), spec=spec, seed=seed,
                            val_fraction=val_fraction, normalize=normalize)
    offline = OFFLINE_SETS.get(spec)
    aeon = aeon_data_folder()
    from_aeon = aeon is not None and aeon in train_path.parents
    lo, hi = facts["length_range"]
    if offline is not None:
        description = offline["description"]
    else:
        description = (f"{ARCHIVES[archive].title} set {name}: {facts['channels']} channel(s), "
                       + (f"{hi} steps" if lo == hi else f"{lo}-{hi} steps, left-padded to "
                                                         f"{hi}"))
    description += (f"; official {facts['official_sizes']['train']}/"
                    f"{facts['official_sizes']['test']} train/test split, validation carved "
                    f"from train ({val_fraction:.0%}, stratified, run seed)")
    return make_task_data(
        name=spec, kind="sequence", num_classes=len(facts["classes"]), label_kind="sequence",
        train=splits["train"], val=splits["val"], test=splits["test"], seed=seed,
        description=description, source="offline" if offline is not None else "download",
        info=dict(facts, files=[str(train_path), str(test_path)],
                  origin="aeon package data" if from_aeon else "data folder",
                  val_fraction=val_fraction, normalize=normalize,
                  reference=list(offline["reference"]) if offline else []),
    )


def build_uea(name, /, *, seed=0, data_dir=None, download=False, val_fraction=0.2,
              normalize=True) -> TaskData:
    """``uea:NAME``: a set of the UEA multivariate archive (module docstring)."""
    return _build("uea", name, seed=seed, data_dir=data_dir, download=download,
                  val_fraction=val_fraction, normalize=normalize)


def build_ucr(name, /, *, seed=0, data_dir=None, download=False, val_fraction=0.2,
              normalize=True) -> TaskData:
    """``ucr:NAME``: a set of the UCR univariate archive (module docstring)."""
    return _build("ucr", name, seed=seed, data_dir=data_dir, download=download,
                  val_fraction=val_fraction, normalize=normalize)
