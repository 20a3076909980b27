"""Property-based fuzzing of what a user hands the package: npz files, ``tsp train`` flag values
and ``tsp compare`` presets. Every case runs the real entry point (``cli.main``) in this process
with tiny settings, and is judged by one oracle:

- the test computes, on its own, whether the generated input is valid (from the documented
  format and the declared rules: an int flag is parsed as Python's ``int()`` parses it and must
  lie in its range, floats must be finite, labels are class indices, ...), and expects exit 0
  for a valid input and exit 2 for an invalid one. An invalid input that exits 0 is a *silent
  success* and fails the test like a traceback does;
- a run that is valid but numerically extreme (``--lr 1e30``) may instead stop with exit 3 (the
  documented "diverged" code); a few inputs whose verdict the docs leave open (a flipped byte in
  a zip field nobody checks, a UTF-8 BOM before JSON) may exit 0 or 2 — never anything else;
- exit 2 and 3 come with one message line (``tsp...``) and no traceback; exit 1, an escaped
  exception or a case running past its deadline (``TSP_FUZZ_CASE_SECONDS``, default 60 s,
  enforced with SIGALRM) fail;
- nothing is created or modified outside the case's ``--out`` folder: each case gets its own
  folder tree (input files, an empty working directory that the case runs in, the out folder),
  which is snapshotted (type, size, mtime of every entry) before and after.

Profiles (tests/conftest.py): ``fast`` (default; derandomized, so CI sees the same cases every
run) and ``long`` (``HYPOTHESIS_PROFILE=long``, ten times the cases, fresh random ones). With
``TSP_FUZZ_STATS=PATH`` every case appends one JSON line (family, expected, exit code, verdict)
to PATH; ``benchmarks/reliability.md`` was written from those lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import stat
import tempfile
import time
import traceback
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from temporal_sigprop.cli import main  # noqa: E402
from temporal_sigprop.config import TrainConfig, usable_cores  # noqa: E402
from temporal_sigprop.registry import METHOD_NAMES, learner_class  # noqa: E402

# ============================================================================ expectations

OK = frozenset({0})
BAD = frozenset({2})
OK_OR_DIVERGED = frozenset({0, 3})
OK_OR_BAD = frozenset({0, 2})
ANY_CLEAN = frozenset({0, 2, 3})


def combine(*expectations) -> frozenset:
    """One refused value refuses the run (every check runs before training); otherwise each
    value may widen what the run is allowed to end with."""
    if any(e == BAD for e in expectations):
        return BAD
    allowed = set(OK)
    for e in expectations:
        allowed |= e
    return frozenset(allowed)


# ============================================================================ running one case

CASE_SECONDS = float(os.environ.get("TSP_FUZZ_CASE_SECONDS", "60"))
STATS_PATH = os.environ.get("TSP_FUZZ_STATS")


class CaseTimeout(BaseException):
    """Raised by SIGALRM in a case that runs past its deadline (a hang)."""


@dataclasses.dataclass
class Outcome:
    code: object  # the exit code, "timeout" or "exception"
    stdout: str
    stderr: str
    seconds: float
    escaped: list
    error: str | None


def _snapshot(root: Path) -> dict:
    """Every entry under ``root``: files by (type, size, mtime), folders by type only (a folder's
    mtime changes whenever an entry inside it is added)."""
    entries = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            kind = stat.S_IFMT(info.st_mode)
            entries[path] = (kind,) if stat.S_ISDIR(info.st_mode) else (
                kind, info.st_size, info.st_mtime_ns)
    return entries


def _inside(path: str, folder: bytes | None) -> bool:
    """Compared as the file system's bytes: an argv string holding surrogate escapes
    ('\\udcc6\\udc80') and the name os.walk decodes ('ƀ') are the same folder."""
    path = os.fsencode(os.path.realpath(path))
    return folder is not None and (path == folder or path.startswith(folder.rstrip(b"/") + b"/"))


def run_case(argv: list[str], root: Path, out: str | None) -> Outcome:
    """``cli.main(argv)`` run in ``root/cwd`` with captured output and a deadline."""
    cwd = root / "cwd"
    cwd.mkdir(exist_ok=True)
    allowed = os.fsencode(os.path.realpath(out)) if out else None
    before = _snapshot(root)
    previous_dir = os.getcwd()
    stdout, stderr = io.StringIO(), io.StringIO()

    def on_alarm(signum, frame):
        raise CaseTimeout

    previous_handler = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
    start = time.perf_counter()
    error = None
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit_:
                code = exit_.code if exit_.code is not None else 0
    except CaseTimeout:
        code = "timeout"
    except BaseException:  # noqa: BLE001 - anything that escapes main is what we look for
        code, error = "exception", traceback.format_exc()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        os.chdir(previous_dir)
        torch.set_num_threads(1)  # a case's --threads must not leak into the next
    seconds = time.perf_counter() - start
    after = _snapshot(root)
    # the out folder's missing parents may be created (mkdir -p), nothing else outside it
    parents = {os.fsencode(p) for p in Path(os.fsdecode(allowed)).parents} if allowed else set()
    escaped = sorted(p for p in set(before) | set(after)
                     if before.get(p) != after.get(p) and not _inside(p, allowed)
                     and not (p not in before and os.fsencode(os.path.realpath(p)) in parents
                              and after[p] == (stat.S_IFDIR,)))
    return Outcome(code, stdout.getvalue(), stderr.getvalue(), seconds, escaped, error)


def _message_lines(err: str) -> list[str]:
    """stderr without argparse's usage block (``usage: ...`` and its indented continuation)."""
    lines, kept, in_usage = err.split("\n"), [], False
    for line in lines:
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and (line.startswith(" ") or not line.strip()):
            continue
        in_usage = False
        if line.strip():
            kept.append(line)
    return kept


def verdict(outcome: Outcome, expected: frozenset) -> str | None:
    """What is wrong with the outcome, or None."""
    if outcome.code == "exception":
        return "traceback"
    if outcome.code == "timeout":
        return "hang"
    if outcome.escaped:
        return "wrote outside --out"
    if "Traceback (most recent call last)" in outcome.stderr:
        return "traceback"
    if outcome.code not in expected:
        if outcome.code == 0 and 2 in expected:
            return "silent success"
        if outcome.code == 2 and 0 in expected:
            return "valid input refused"
        return f"exit {outcome.code}"
    if outcome.code in (2, 3):
        lines = _message_lines(outcome.stderr)
        marker = "error:" if outcome.code == 2 else "training stopped:"
        # notices such as "tsp: no checkpoint in ... yet" may precede the one message line
        if not lines or not lines[-1].startswith("tsp") or marker not in lines[-1] \
                or not all(line.startswith("tsp") for line in lines):
            return "message is not one 'tsp...' line"
    return None


FAMILY_STATS: list[dict] = []


def judge(family: str, argv, outcome: Outcome, expected: frozenset, check_success=None) -> None:
    problem = verdict(outcome, expected)
    if problem is None and outcome.code == 0 and check_success is not None:
        problem = check_success()
    record = {"family": family, "expected": sorted(expected), "code": outcome.code,
              "problem": problem, "seconds": round(outcome.seconds, 3)}
    if STATS_PATH:
        with open(STATS_PATH, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    assert problem is None, (
        f"{problem}: exit {outcome.code}, expected {sorted(expected)}\nargv: {argv!r}\n"
        f"stderr:\n{outcome.stderr[-3000:]}\n{outcome.error or ''}\nescaped: {outcome.escaped}")


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@contextlib.contextmanager
def case_root(base: Path):
    root = Path(tempfile.mkdtemp(dir=base))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _examples(weight: float) -> int:
    """This test's share of the profile's budget (settings().max_examples is the profile's)."""
    return max(1, int(settings().max_examples * weight))


# ============================================================================ shared strategies

# Text a user can pass on a command line or in JSON: any character but NUL (argv strings cannot
# hold one) and line breaks (a line break inside a value is a separate, known case below),
# plus the surrogate escapes Python decodes undecodable argv bytes into.
_TEXT_CHARS = st.one_of(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\n\r"),
    st.sampled_from([chr(c) for c in range(0xDC80, 0xDD00, 7)]),
)
junk_text = st.text(_TEXT_CHARS, max_size=12)
SPECIAL_NUMBER_TEXTS = ["", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "-1e400",
                        "1e-400", "0", "-0", "+3", " 3 ", "3.0", "1_000", "0x10", "1e3", "٣",
                        "9" * 30, "9" * 5000, "None", "true", "2**8", "1/2", "½"]


def _ascii_digits_to_arabic_indic(text: str) -> str:
    return text.translate({ord(d): chr(0x0660 + int(d)) for d in "0123456789"})


#: Whether one part of a case (a flag, an array, the file) is made wrong: one time in eight, so
#: about half the cases are valid throughout and the rest wrong in one or two places (hypothesis
#: also favours the first choice, False). The oracle judges each value itself either way.
fault = st.sampled_from([False] * 7 + [True])

_INT_WRITINGS = {"plain": str, "spaces": lambda v: f" {v}\t", "underscores": lambda v: f"{v:_}",
                 "arabic": lambda v: _ascii_digits_to_arabic_indic(str(v))}


def _written(numbers):
    """Ints written as Python's ``int()`` (argparse's type=int) reads them, several ways."""
    return st.tuples(numbers, st.sampled_from(sorted(_INT_WRITINGS))).map(
        lambda p: _INT_WRITINGS[p[1]](p[0]))


def int_texts(lo: int, hi: int | None, *, cheap: int | None = None, wrong: bool = False):
    """Texts of ints in [lo, cheap or hi], or (wrong) of ints outside [lo, hi] and of things
    that are not ints at all."""
    if not wrong:
        top = cheap if cheap is not None else hi if hi is not None else lo + 10**6
        return st.one_of(st.integers(lo, top).map(str), _written(st.integers(lo, top)))
    outside = [st.integers(min_value=lo - 2**70, max_value=lo - 1)]
    if hi is not None:
        outside.append(st.integers(min_value=hi + 1, max_value=hi + 2**70))
    return st.one_of(_written(st.one_of(*outside)), st.floats().map(repr),
                     st.sampled_from(SPECIAL_NUMBER_TEXTS), junk_text)


def float_texts(low: float = -10.0, high: float = 10.0, *, wrong: bool = False):
    """Texts of floats in [low, high], or (wrong) of anything a float flag may be handed."""
    if not wrong:
        texts = [st.floats(low, high).map(repr), st.floats(low, high).map(str)]
        if math.ceil(low) <= math.floor(high):
            texts.append(st.integers(math.ceil(low), math.floor(high)).map(str))
        return st.one_of(*texts)
    return st.one_of(st.floats().map(repr), st.floats(-1e6, 0).map(repr),
                     st.sampled_from(SPECIAL_NUMBER_TEXTS), junk_text)


def parse_int(text: str):
    try:
        return int(text)
    except ValueError:
        return None


def parse_float(text: str):
    try:
        return float(text)
    except ValueError:
        return None


# ============================================================================ (a) npz files

NPZ_TRAIN = ["--model", "gru", "--method", "bptt", "--hidden", "4", "--layers", "1", "--epochs",
             "1", "--max-batches", "1", "--batch-size", "8", "--eval-batch-size", "64",
             "--no-progress"]
TINY_TRAIN = ["train", "--task", "cue_recall:delay=2,n_train=40,n_test=20", *NPZ_TRAIN]
KNOWN_ARRAYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")
MAX_CLASSES = 100_000  # the documented limit on labels (tasks/npz.py)
FLOAT32_MAX = float(np.finfo(np.float32).max)

X_GOOD_DTYPES = ["float32", "float64", "float16", "longdouble"]
X_BAD_DTYPES = ["int64", "uint8", "bool", "complex64", "object", "U3", "timedelta64[s]", "struct"]
Y_GOOD_DTYPES = ["int64", "int32", "int8", "int16", "uint8", "uint16", "uint32", "uint64"]
Y_BAD_DTYPES = ["bool", "float32", "float64", "object", "U2", "timedelta64[s]"]
X_EXTREMES = [1e7, -1e7, 3.0e38, 1e-45, 5e-324, -0.0]  # valid, some beyond float16
X_BAD_VALUES = [np.nan, np.inf, -np.inf, 1e300, -1e300, 3.5e38, -3.5e38]
LABEL_BAD = [-2, -(2**31), MAX_CLASSES, 2**31, 2**63 - 1]


def _as_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        if dtype == "struct":
            out = np.zeros(values.shape, dtype=[("a", "f4")])
            out["a"] = values
            return out
        if dtype == "object":
            return values.astype(object)
        if dtype.startswith("U"):
            return values.astype(str).astype(dtype)
        if dtype.startswith("timedelta"):
            return np.nan_to_num(values).astype(np.int64).astype(dtype)
        if np.dtype(dtype).kind in "iub" and values.dtype.kind == "f":
            values = np.nan_to_num(values, posinf=0, neginf=0)
        return values.astype(dtype)


@st.composite
def x_arrays(draw, n: int, per_sample: tuple, wrong: bool):
    """``x [n, *per_sample]``; wrong: a bad rank, an empty axis, a non-float dtype or values."""
    how = draw(st.sampled_from(["rank", "empty", "dtype", "values"])) if wrong else None
    shape = (n, *per_sample)
    if how == "rank":
        shape = draw(st.sampled_from([(), (n,), (n, per_sample[0])]))
    elif how == "empty":
        axis = draw(st.integers(0, len(shape) - 1))
        shape = shape[:axis] + (0,) + shape[axis + 1:]
    element = st.floats(-3, 3, width=32)
    if how == "values":
        element = st.one_of(element, st.sampled_from(X_BAD_VALUES))
    elif draw(st.sampled_from([False] * 5 + [True])):
        element = st.one_of(element, st.sampled_from(X_EXTREMES))
    values = draw(hnp.arrays(np.float64, shape, elements=element))
    if how == "values" and values.size:
        values.flat[draw(st.integers(0, values.size - 1))] = draw(st.sampled_from(X_BAD_VALUES))
    dtype = draw(st.sampled_from(X_BAD_DTYPES if how == "dtype" else X_GOOD_DTYPES))
    return _as_dtype(values, dtype)


@st.composite
def y_arrays(draw, n: int, steps: int, per_step: bool, wrong: bool):
    """Labels ``[n]`` or ``[n, steps]`` (-1 = none at a step); wrong: a bad shape, dtype or
    label."""
    how = draw(st.sampled_from(["shape", "dtype", "label"])) if wrong else None
    shape = (n, steps) if per_step else (n,)
    if how == "shape":
        shape = draw(st.sampled_from([(), (n + 1,), (max(n - 1, 0),), (n, steps + 1),
                                      (n, 1, 1), (n, steps, 2), (0,)]))
    values = draw(hnp.arrays(np.int64, shape, elements=st.integers(-1 if per_step else 0, 3)))
    if how == "label" and values.size:
        bad = draw(st.sampled_from(LABEL_BAD + ([] if per_step else [-1])))
        values.flat[draw(st.integers(0, values.size - 1))] = bad
    dtype = draw(st.sampled_from(Y_BAD_DTYPES if how == "dtype" else Y_GOOD_DTYPES))
    if how == "label" and dtype == "uint64" and draw(st.booleans()):
        return np.full(shape, 2**63 + 5, dtype=np.uint64)
    return _as_dtype(values, dtype)


@st.composite
def npz_contents(draw) -> dict:
    """Arrays for an npz file, each part well-formed unless a fault is drawn for it."""
    n = draw(st.sampled_from([8, 12, 3, 4, 6, 1, 2]))  # 1 and 2 leave too few to carve splits
    steps = draw(st.integers(1, 4))
    features = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=3)))
    per_sample = (steps, *features)
    per_step = draw(st.sampled_from([False, False, False, True]))
    arrays = {"x": draw(x_arrays(n, per_sample, draw(fault))),
              "y": draw(y_arrays(n, steps, per_step, draw(fault)))}
    for suffix in ("_val", "_test"):
        if draw(st.sampled_from([False, False, True])):
            vn = draw(st.integers(1, 4))
            how = draw(st.sampled_from(["shape", "label rank", "half", "arrays"])) \
                if draw(fault) else None
            shape = (steps + 1, *features) if how == "shape" else per_sample
            arrays["x" + suffix] = draw(x_arrays(vn, shape, how == "arrays"
                                                 and draw(st.booleans())))
            arrays["y" + suffix] = draw(y_arrays(vn, steps, per_step != (how == "label rank"),
                                                 how == "arrays"))
            if how == "half":
                del arrays[draw(st.sampled_from(["x", "y"])) + suffix]
    if draw(fault):
        if draw(st.booleans()):
            del arrays[draw(st.sampled_from(["x", "y"]))]
        else:  # a near-miss name, which would silently change the splits
            arrays[draw(st.sampled_from(["x_valid", "y_train", "x_tst"]))] = np.arange(3)
    if draw(st.sampled_from([False] * 3 + [True])):  # other members are ignored
        arrays[draw(st.sampled_from(["meta", "notes", "X"]))] = draw(st.sampled_from(
            [np.arange(3), np.array(["a"]), np.array([{"k": 1}], dtype=object)]))
    return arrays


def expect_npz(arrays: dict) -> frozenset:
    """The documented format (tasks/npz.py, README "Tasks"), checked independently."""
    names = set(arrays)
    if any(n not in KNOWN_ARRAYS and n[:2] in ("x_", "y_") for n in names):
        return BAD  # a near-miss name (x_valid) would silently change the splits
    if not {"x", "y"} <= names:
        return BAD
    splits = {}
    for suffix in ("", "_val", "_test"):
        present = ("x" + suffix in names, "y" + suffix in names)
        if present[0] != present[1]:
            return BAD
        if present[0]:
            splits[suffix] = (arrays["x" + suffix], arrays["y" + suffix])
    reference = None
    extreme = False
    for suffix, (x, y) in splits.items():
        if x.dtype.hasobject or y.dtype.hasobject:
            return BAD
        if x.ndim < 3 or x.dtype.kind != "f" or y.dtype.kind not in "iu":
            return BAD
        n, steps = x.shape[:2]
        if n == 0 or steps == 0 or 0 in x.shape[2:]:
            return BAD
        if y.ndim not in (1, 2) or y.shape[0] != n or (y.ndim == 2 and y.shape[1] != steps):
            return BAD
        with np.errstate(all="ignore"):
            magnitude = np.abs(x.astype(np.longdouble))
        if not np.isfinite(magnitude).all() or magnitude.max() > FLOAT32_MAX:
            return BAD
        labels = [int(v) for v in y.reshape(-1)]
        if max(labels) >= MAX_CLASSES or min(labels) < -1 or (y.ndim == 1 and min(labels) == -1):
            return BAD
        if reference is None:
            reference = (x.shape[1:], y.ndim)
        elif (x.shape[1:], y.ndim) != reference:
            return BAD
        extreme |= bool(magnitude.max() > 1e6)
    if max(int(y.max()) for _, y in splits.values()) < 0 or int(splits[""][1].max()) < 0:
        return BAD
    # carving (README: test 20 %, then validation 10 %, round(fraction * N), at least one)
    n = splits[""][0].shape[0]
    for suffix, fraction in (("_test", 0.2), ("_val", 0.1)):
        if suffix not in splits:
            k = max(1, int(round(fraction * n)))
            if n - k < 1:
                return BAD
            n -= k
    # huge but float32-representable inputs may overflow inside the network: divergence
    return OK_OR_DIVERGED if extreme else OK


def _member_data_span(path: Path, names: tuple[str, ...]):
    """(start, end) of the stored bytes of one of ``names``' members, or None."""
    with zipfile.ZipFile(path) as archive:
        infos = [i for i in archive.infolist() if i.filename[:-4] in names]
    if not infos:
        return None
    info = infos[0]
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len)
    return start, start + info.compress_size


@st.composite
def npz_files(draw, folder: Path):
    """A file on disk for ``--task file:PATH``: (path, expectation)."""
    name = draw(st.text(_TEXT_CHARS.filter(lambda c: c != "/"), min_size=1, max_size=20))
    suffix = draw(st.sampled_from([".npz", ".npz", "", ".NPZ", ".npz.bak"]))
    path = folder / (name + suffix)
    assume(name not in (".", "..") and len(os.fsencode(path.name)) <= 255)
    kind = draw(st.sampled_from(["not npz", "missing", "folder"])) if draw(fault) else "arrays"
    if kind == "missing":
        return path, BAD
    if kind == "folder":
        path.mkdir()
        return path, BAD
    if kind == "not npz":
        data = draw(st.one_of(
            st.binary(max_size=300), st.just(b""), st.just(b"PK\x03\x04" + b"\0" * 40),
            st.sampled_from([b"x,y\n1,2\n", b"\x1f\x8b\x08\x00garbage", b"\x93NUMPY\x01\x00"])))
        path.write_bytes(data)
        return path, BAD
    arrays = draw(npz_contents())
    expected = expect_npz(arrays)
    save = np.savez_compressed if draw(st.booleans()) else np.savez
    with open(path, "wb") as f:
        save(f, **arrays)
    damage = draw(st.sampled_from(["truncate", "flip member", "flip anywhere"])) \
        if draw(fault) else "none"
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
        expected = BAD
    elif damage == "flip member":
        span = _member_data_span(path, ("x", "y"))
        if span is None or span[0] == span[1]:
            return path, expected
        at = draw(st.integers(span[0], span[1] - 1))
        data[at] ^= draw(st.integers(1, 255))
        expected = BAD  # the member's CRC-32 no longer matches (any single-byte change)
    elif damage == "flip anywhere":
        at = draw(st.integers(0, len(data) - 1))
        data[at] ^= draw(st.integers(1, 255))
        # a byte of a field zip readers ignore (a date, a version) changes nothing; any other
        # byte makes the file unreadable — it can never make a bad file good
        expected = expected | BAD
    path.write_bytes(bytes(data))
    return path, expected


@settings(max_examples=_examples(2.2))
@given(data=st.data())
def test_fuzz_npz_files(data, fuzz_base):
    with case_root(fuzz_base) as root:
        inputs = root / "in"
        inputs.mkdir()
        path, expected = data.draw(npz_files(inputs))
        out = root / "out" / "run"
        argv = ["train", "--task", f"file:{path}", *NPZ_TRAIN, "--out", str(out)]
        note(f"expected {sorted(expected)}")
        outcome = run_case(argv, root, str(out))

        def summary_written():
            summary = json.loads((out / "summary.json").read_text())
            return None if summary.get("status") == "ok" else f"summary status {summary}"

        judge("npz", argv, outcome, expected, summary_written)


# ============================================================================ (b) tsp train flags

#: Values a task option takes when it is not made wrong (what the builders' docs allow).
TASK_GOOD = {"delay": st.integers(0, 6), "classes": st.integers(2, 6),
             "n_train": st.integers(2, 60), "n_test": st.integers(1, 40),
             "episodes": st.integers(1, 2), "recall_len": st.integers(1, 3),
             "length": st.integers(2, 10), "data_seed": st.integers(-2**70, 2**70),
             "noise": st.floats(0, 20), "distractors": st.floats(0, 1),
             "val_fraction": st.floats(0.01, 0.5)}
TASK_FLOAT_OPTIONS = ("noise", "distractors", "val_fraction")


def _task_option_value(key: str, wrong: bool):
    """(text, typed value) of a task option as ``key=TEXT``; the typed value is what the
    documented reading (ints, floats, true/false, else a string) gives."""
    typed = lambda values: values.map(  # noqa: E731
        lambda v: (("true" if v else "false") if isinstance(v, bool) else repr(v), v))
    if not wrong:
        return typed(TASK_GOOD[key])
    numbers = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True,
                                                              allow_infinity=True),
                        st.floats(-5, 0), st.floats(0.5, 2), st.integers(-3, 0))
    junk = st.text(st.characters(whitelist_categories=("Ll", "Lu")), min_size=1,
                   max_size=6).filter(lambda t: t.lower() not in {
                       "true", "false", "yes", "no", "on", "off", "none", "null", "nan", "inf",
                       "infinity"}).map(lambda t: (t, t))
    return st.one_of(typed(numbers), typed(st.booleans()), junk)


def _expect_task_option(key: str, value) -> frozenset:
    """What a task option accepts (its documented type, bounds and limits)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return BAD
    if key not in TASK_FLOAT_OPTIONS:
        if isinstance(value, float) and not value.is_integer():
            return BAD
        value = int(value)
        lower = {"delay": 0, "classes": 2, "n_train": 2, "n_test": 1, "episodes": 1,
                 "recall_len": 1, "length": 1}.get(key)
        upper = {"delay": 100_000, "classes": 1000, "n_train": 1_000_000, "n_test": 1_000_000,
                 "episodes": 1000, "recall_len": 100_000, "length": 1_000_000}.get(key)
        bad = (lower is not None and value < lower) or (upper is not None and value > upper)
        return BAD if bad else OK
    value = float(value)
    if not math.isfinite(value):
        return BAD
    if key == "noise":
        if value < 0:
            return BAD
        if value <= 20:
            return OK
        if value <= 1e30:
            return OK_OR_DIVERGED
        return ANY_CLEAN if value <= 3.5e38 else BAD  # beyond float32: non-finite inputs
    if key == "distractors":
        return OK if 0 <= value <= 1 else BAD
    return OK if 0 < value < 1 else BAD  # val_fraction; 0 leaves no validation split


def _task_cost_ok(task: str, options: dict) -> bool:
    steps = {"cue_recall": options.get("delay", 0) + 2,
             "cue_recall_steps": options.get("episodes", 1) * (1 + options.get("delay", 0)
                                                               + options.get("recall_len", 1)),
             "pulse_count": options.get("length", 0)}[task]
    return (max(options.get("n_train", 0), options.get("n_test", 0)) <= 200 and steps <= 12
            and options.get("classes", 4) <= 50)


TASK_BASE = {"cue_recall": dict(delay=2, n_train=40, n_test=20),
             "cue_recall_steps": dict(delay=1, n_train=24, n_test=12, episodes=1, recall_len=2),
             "pulse_count": dict(length=4, classes=3, n_train=24, n_test=12)}
TASK_KEYS = {"cue_recall": ["delay", "classes", "n_train", "n_test", "noise", "distractors",
                            "data_seed", "val_fraction"],
             "cue_recall_steps": ["delay", "episodes", "recall_len", "n_train", "noise",
                                  "val_fraction"],
             "pulse_count": ["length", "classes", "n_train", "noise", "val_fraction"]}
KNOWN_TASK_PREFIXES = ("cue_recall", "cue_recall_steps", "pulse_count", "mnist1d", "file", "uea",
                       "ucr", "audio_keywords", "video_digits", "smnist", "psmnist",
                       "moving_mnist_cls", "speech_commands", "shd")


@st.composite
def task_specs(draw):
    """(spec, expectation, label kind, training samples)."""
    if draw(fault):
        kind = draw(st.sampled_from(["junk name", "file missing", "empty", "unknown option",
                                     "option"]))
    else:
        kind = "good"
    if kind == "junk name":
        name = draw(st.text(_TEXT_CHARS, min_size=1, max_size=10))
        assume(not name.strip().split(":")[0].startswith(KNOWN_TASK_PREFIXES))
        return name, BAD, "sequence", 40
    if kind == "file missing":
        return "file:/nonexistent/tsp-fuzz.npz", BAD, "sequence", 40
    if kind == "empty":
        return draw(st.sampled_from(["", " ", "file:", ":"])), BAD, "sequence", 40
    task = draw(st.sampled_from(sorted(TASK_BASE)))
    options = dict(TASK_BASE[task])
    texts = {k: repr(v) for k, v in options.items()}
    expectations = []
    wrong_key = draw(st.sampled_from(TASK_KEYS[task])) if kind == "option" else None
    keys = draw(st.lists(st.sampled_from(TASK_KEYS[task]), unique=True, max_size=2))
    for key in keys + ([wrong_key] if wrong_key and wrong_key not in keys else []):
        text, value = draw(_task_option_value(key, key == wrong_key))
        case = _expect_task_option(key, value)
        expectations.append(case)
        texts[key] = text
        if case != BAD:
            options[key] = float(value) if key in TASK_FLOAT_OPTIONS else int(value)
    if kind == "unknown option":
        texts[draw(st.sampled_from(["speed", "n_trian", "Delay"]))] = "1"
        expectations.append(BAD)
    expected = combine(*expectations)
    if expected != BAD:
        assume(_task_cost_ok(task, options))
        if task == "pulse_count" and options["length"] < options.get("classes", 6) - 1:
            expected = BAD  # documented: length >= classes - 1 to fit the pulses
        n_train, fraction = options["n_train"], options.get("val_fraction", 0.1)
        if n_train - max(1, int(round(fraction * n_train))) < 1:
            expected = BAD  # no training sample left after carving the validation split
    spec = task + ":" + ",".join(f"{k}={t}" for k, t in texts.items())
    return spec, expected, "step" if task == "cue_recall_steps" else "sequence", \
        options.get("n_train", 40)


def _option_fields(method: str) -> dict:
    return {f.name: f for f in dataclasses.fields(learner_class(method).Options)}


ALL_OPTIONS = sorted({name for m in METHOD_NAMES for name in _option_fields(m)})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_tokens(name: str, text: str) -> list[str]:
    """``--flag TEXT``, or ``--flag=TEXT`` where TEXT starts with '-' (argparse would take it
    for a flag otherwise) or is empty."""
    if not text or text.startswith("-"):
        return [f"{_flag(name)}={text}"]
    return [_flag(name), text]


def _int_case(text: str, lo: int, hi: int | None, cheap: int | None = None):
    value = parse_int(text)
    if value is None or value < lo or (hi is not None and value > hi):
        return BAD
    if cheap is not None and value > cheap:
        return None  # valid but too costly to run here
    return OK


def _float_case(text: str, *, gt=None, ge=None, tame: float | None = None, either_at=None):
    """BAD unless finite and in range; beyond ``tame`` a valid value may diverge (exit 3)."""
    value = parse_float(text)
    if value is None or not math.isfinite(value):
        return BAD
    if (gt is not None and value <= gt) or (ge is not None and value < ge):
        return BAD if either_at is None or not either_at(value) else OK_OR_BAD
    if tame is not None and (abs(value) > tame or (gt == 0 and value < 1 / tame)):
        return OK_OR_DIVERGED
    return OK


CORES = usable_cores()
#: TrainConfig flags with simple values: name -> (texts, wrong texts, text -> expectation).
#: The ranges are the documented ones (README "Command line", `tsp train --help`); "cheap"
#: bounds keep valid runs tiny (a valid --hidden 60000 is not run here).
SIMPLE_FLAGS = {
    "hidden": (int_texts(1, 65536, cheap=6), int_texts(1, 65536, wrong=True),
               lambda t: _int_case(t, 1, 65536, 6)),
    "layers": (int_texts(1, 64, cheap=2), int_texts(1, 64, wrong=True),
               lambda t: _int_case(t, 1, 64, 2)),
    "epochs": (int_texts(1, 10**6, cheap=2), int_texts(1, 10**6, wrong=True),
               lambda t: _int_case(t, 1, 10**6, 2)),
    "batch_size": (int_texts(1, 10**7), int_texts(1, 10**7, wrong=True),
                   lambda t: _int_case(t, 1, 10**7)),
    "eval_batch_size": (int_texts(1, 10**7), int_texts(1, 10**7, wrong=True),
                        lambda t: _int_case(t, 1, 10**7)),
    "seed": (int_texts(0, 2**63 - 1), int_texts(0, 2**63 - 1, wrong=True),
             lambda t: _int_case(t, 0, 2**63 - 1)),
    "threads": (int_texts(0, CORES), int_texts(0, CORES, wrong=True),
                lambda t: _int_case(t, 0, CORES)),
    "max_batches": (int_texts(0, None), int_texts(0, None, wrong=True),
                    lambda t: _int_case(t, 0, None)),
    "local_sgd_every": (int_texts(1, None), int_texts(1, None, wrong=True),
                        lambda t: _int_case(t, 1, None)),
    "layer_parallel_chunk": (int_texts(1, None), int_texts(1, None, wrong=True),
                             lambda t: _int_case(t, 1, None)),
    "lr": (float_texts(1e-5, 0.1), float_texts(wrong=True),
           lambda t: _float_case(t, gt=0, tame=0.1)),
    "weight_decay": (float_texts(0, 1), float_texts(wrong=True),
                     lambda t: _float_case(t, ge=0, tame=1.0)),
    "grad_clip": (float_texts(0, 1e6), float_texts(wrong=True), lambda t: _float_case(t, ge=0)),
    "dist_timeout": (float_texts(1e-3, 1e6), float_texts(wrong=True),
                     lambda t: _float_case(t, gt=0)),
}
CHOICE_FLAGS = {
    "lr_schedule": ("cosine", "constant"), "loss_at": ("last", "every"),
    "optimizer": ("adam", "sgd"), "dp_mode": ("allreduce", "local_sgd"),
    "wandb": (),  # valid values import wandb (seconds): only refused values are fuzzed here
}
FREE_TEXT_FLAGS = ("data_dir", "cache_dir", "wandb_project", "wandb_group")
PATH_FLAGS = ("data_dir", "cache_dir")  # free text, except that an empty path means nothing
BOOL_FLAGS = ("eager", "download", "cache", "overwrite", "resume", "progress", "layer_parallel")
SPECIAL_FLAGS = ("task", "model", "method", "device", "out", "options", "model_options")
EPROP_MODELS = ("rnn", "lif", "lstm")  # README: "e-prop is defined for rnn/lif/lstm"
SEQUENCE_MODELS = ("rnn", "gru", "lstm", "lif", "discrete", "mlp")
MAX_BATCHES_PER_CASE = 40  # keeps a valid case well under a second


def _wrong_choice_texts(choices):
    near = [c.upper() for c in choices] + [f" {c}" for c in choices] + [c[:-1] for c in choices]
    return st.one_of(st.sampled_from(near or ["x"]), junk_text).filter(lambda t: t not in choices)


def _device_case(text: str):
    if text == "cpu":
        return OK
    if text in ("cuda", "cuda:0"):
        return OK if torch.cuda.is_available() else BAD
    if text.startswith("cuda:") and text[5:].isascii() and text[5:].isdigit():
        return OK_OR_BAD if torch.cuda.is_available() else BAD
    return BAD


def _known_flags() -> set[str]:
    fields = [f.name for f in dataclasses.fields(TrainConfig)] + ALL_OPTIONS + ["help",
                                                                                 "model_options"]
    return {_flag(n) for n in fields} | {"--no-" + n.replace("_", "-") for n in fields}


KNOWN_FLAGS = _known_flags()
SIGPROP_CHOICES = {"target_rows": ("sample", "class"), "loss": ("ce", "l2", "cosine"),
                   "projection": ("learned", "fixed"),
                   "schedule": ("every_step", "every_k", "sequence"),
                   "prediction": ("nearest", "readout"), "spike_mode": ("voltage", "surrogate"),
                   "local_steps": ("every", "placement"), "step_weight": ("uniform", "linear"),
                   "feedback": ("symmetric", "random"),
                   "lif_trace": ("exact", "reset", "presynaptic")}


@st.composite
def option_text(draw, name: str, wrong: bool):
    """(text, expectation) of a method option's value (the options' documented meaning: counts
    are ≥ 1 or ≥ 0, scales and temperatures positive and finite)."""
    if name in ("k", "update_k"):
        text = draw(int_texts(1, None, cheap=50, wrong=wrong))
        return text, _int_case(text, 1, None)
    if name == "update_every":
        text = draw(int_texts(0, None, cheap=50, wrong=wrong))
        return text, _int_case(text, 0, None)
    if name == "tangents":
        text = draw(int_texts(1, None, cheap=4, wrong=wrong))
        return text, _int_case(text, 1, None, 4)
    if name == "max_influence_bytes":
        text = draw(int_texts(2**26, 2**62) if not wrong else int_texts(1, 2**62, wrong=True))
        value = parse_int(text)
        # too small for this model's influence is refused, naming the bytes needed
        return text, (BAD if value is None or value <= 0 else OK if value >= 2**26
                      else OK_OR_BAD)
    if name in ("temperature", "surrogate_width", "readout_lr_scale"):
        text = draw(float_texts(0.05, 20, wrong=wrong))
        return text, _float_case(text, gt=0, tame=1e3)
    if name == "projection_scale":
        text = draw(float_texts(0.05, 20, wrong=wrong))
        # a negative or zero std is not ruled out by the docs (a sign flip / no projection)
        return text, _float_case(text, gt=0, tame=1e3, either_at=lambda v: True)
    if name in SIGPROP_CHOICES:
        choices = SIGPROP_CHOICES[name]
        text = draw(_wrong_choice_texts(choices) if wrong else st.sampled_from(choices))
        return text, (OK if text in choices else BAD)
    return None, None  # an option this table does not know: not fuzzed


@st.composite
def method_option_tokens(draw, method: str, model: str, label_kind: str):
    """Tokens of 0-3 method options (mostly the method's own) and their expectations."""
    own = sorted(_option_fields(method)) if method in METHOD_NAMES else []
    tokens, expectations, chosen = [], [], {}
    names = draw(st.lists(st.sampled_from(own), unique=True, max_size=3)) if own else []
    for name in names:
        if _option_fields(method)[name].type in (bool, "bool"):
            value = draw(st.booleans())
            tokens.append(_flag(name) if value else "--no-" + name.replace("_", "-"))
            chosen[name] = value
            continue
        text, case = draw(option_text(name, draw(fault)))
        if case is None:
            continue
        tokens += _value_tokens(name, text)
        expectations.append(case)
        if case != BAD:
            chosen[name] = text
    if method in METHOD_NAMES and draw(fault):  # another method's option
        foreign = sorted(set(ALL_OPTIONS) - set(own))
        tokens += _value_tokens(draw(st.sampled_from(foreign)), "1")
        expectations.append(BAD)
    if method == "sigprop":  # requirements the options' docs and messages state
        detach = chosen.get("detach_target", False)
        if chosen.get("loss", "ce") in ("l2", "cosine") and not detach:
            expectations.append(BAD)  # "these two need --detach-target"
        if detach and chosen.get("projection", "learned") == "learned":
            expectations.append(BAD)  # P is trained only through the target side
        if chosen.get("target_rows") == "class" and label_kind == "step":
            expectations.append(BAD)  # "class ... sequence labels only"
        if chosen.get("spike_mode") == "surrogate" and model != "lif":
            expectations.append(BAD)  # "lif only"
        if chosen.get("traces") and model in ("discrete", "mlp"):
            expectations.append(BAD)  # traces: dense rnn, gru, lstm and lif cells
        if chosen.get("traces") and chosen.get("per_layer_backward"):
            expectations.append(BAD)
    return tokens, expectations


@st.composite
def model_option_text(draw, model: str):
    """(--model-options TEXT, expectation): lif's float options must be positive and finite,
    ``recurrent`` true or false; no other model (and no other key) takes options."""
    lif_floats = ("tau_mem", "threshold", "surrogate_slope")
    if draw(st.sampled_from([False, False, True])):  # free text
        text = draw(st.text(_TEXT_CHARS, max_size=10))
        items = [i.strip() for i in text.split(",") if i.strip()]
        assume(not any(i.partition("=")[0].strip() in lif_floats + ("recurrent",)
                       for i in items))
        return text, (OK if not items else BAD)  # nothing but commas and spaces: no options
    pairs, expectations = [], []
    for key in draw(st.lists(st.sampled_from(lif_floats + ("recurrent", "hidden_size")),
                             unique=True, min_size=1, max_size=2)):
        if key == "recurrent":
            value = draw(st.sampled_from(["true", "false", "1", "maybe"]))
            case = OK if value in ("true", "false") else BAD
        elif key == "hidden_size":
            value, case = "5", BAD
        else:
            value = draw(float_texts(0.5, 20, wrong=draw(fault)).filter(
                lambda t: "," not in t and "=" not in t))
            word = value.strip().lower()
            number = None if word in ("true", "false", "yes", "no", "on", "off", "none",
                                      "null") else parse_float(value.strip())
            if number is None or not math.isfinite(number) or number <= 0:
                case = BAD
            elif 1e-3 <= number <= 1e3:
                case = OK
            else:  # an extreme time constant, threshold or slope may diverge
                case = OK_OR_DIVERGED
        pairs.append(f"{key}={value}")
        expectations.append(case if model == "lif" else BAD)
    return ",".join(pairs), combine(*expectations)


@st.composite
def out_folders(draw, root: Path, overwrite: bool):
    """(--out value or None, expectation)."""
    outs = root / "out"
    outs.mkdir(exist_ok=True)
    kind = draw(st.sampled_from(["a file", "under a file", "dev null", "another run",
                                 "long name"])) if draw(fault) else \
        draw(st.sampled_from(["fresh"] * 5 + ["none"]))
    if kind == "none":
        return None, OK
    if kind == "fresh":
        name = draw(st.text(_TEXT_CHARS.filter(lambda c: c != "/"), min_size=1, max_size=20))
        assume(name != ".." and len(os.fsencode(name)) <= 255)
        return str(outs / name), OK
    if kind == "long name":
        return str(outs / ("n" * draw(st.integers(256, 400)))), BAD
    if kind == "dev null":
        return "/dev/null", BAD
    if kind in ("a file", "under a file"):
        blocker = outs / "file.txt"
        blocker.write_text("not a folder")
        return str(blocker if kind == "a file" else blocker / "run"), BAD
    other = outs / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"method": "someone else's"}))
    (other / "metrics.jsonl").write_text("")
    return str(other), (OK if overwrite else BAD)


@st.composite
def train_cases(draw, root: Path):
    """(argv, expectation, out folder or None): every part valid unless a fault is drawn."""
    expectations, tokens = [], []
    if draw(fault):
        method = draw(st.sampled_from(["backprop", "BPTT", " sigprop", "", "sig prop"]))
        expectations.append(BAD)
    else:
        method = draw(st.sampled_from(list(METHOD_NAMES)))
    if draw(fault):
        model = draw(st.sampled_from(["convgru", "transformer", "GRU", ""]))
        expectations.append(BAD)  # convgru needs video input; the rest are not models
    else:
        model = draw(st.sampled_from(list(SEQUENCE_MODELS)))
        if method == "eprop" and model not in EPROP_MODELS:
            expectations.append(BAD)
    tokens += _value_tokens("method", method) + _value_tokens("model", model)

    if draw(st.booleans()):
        spec, task_expect, label_kind, n_train = draw(task_specs())
    else:
        spec, task_expect, label_kind, n_train = (
            "cue_recall:delay=2,n_train=40,n_test=20", OK, "sequence", 40)
    tokens += _value_tokens("task", spec)
    expectations.append(task_expect)

    values = {"hidden": "4", "layers": "1", "epochs": "1", "max_batches": "1",
              "batch_size": "8", "eval_batch_size": "64"}
    names = draw(st.lists(st.sampled_from(sorted(SIMPLE_FLAGS) + sorted(CHOICE_FLAGS)
                                          + list(FREE_TEXT_FLAGS) + ["device"]
                                          + list(BOOL_FLAGS)), unique=True, max_size=4))
    for name in names:
        wrong = draw(fault)
        if name in SIMPLE_FLAGS:
            good, bad, expect = SIMPLE_FLAGS[name]
            text = draw(bad if wrong else good)
            case = expect(text)
            assume(case is not None)
            values[name] = text  # replaces the tiny default: one occurrence of each flag
            expectations.append(case)
        elif name in CHOICE_FLAGS:
            choices = CHOICE_FLAGS[name]
            text = draw(_wrong_choice_texts(choices) if wrong or not choices
                        else st.sampled_from(choices))
            assume(text not in ("offline", "online") or choices)
            tokens += _value_tokens(name, text)
            expectations.append(OK if text in choices else BAD)
        elif name in FREE_TEXT_FLAGS:
            text = draw(junk_text)
            tokens += _value_tokens(name, text)
            if name in PATH_FLAGS and not text.strip():
                expectations.append(BAD)  # an empty folder path is refused (config.py)
        elif name == "device":
            text = draw(st.one_of(st.sampled_from(["cuda", "cuda:0", "cuda:7", "CPU", "mps",
                                                   "meta", "cpu:0", "cuda:-1"]), junk_text)
                        if wrong else st.just("cpu"))
            tokens += _value_tokens(name, text)
            expectations.append(_device_case(text))
        elif wrong:  # a boolean flag given a value
            tokens.append(f"{_flag(name)}={draw(junk_text)}")
            expectations.append(BAD)
        elif draw(st.booleans()):
            tokens.append(_flag(name))
            if name == "layer_parallel":
                expectations.append(BAD)  # needs torchrun (and sigprop)
        else:
            tokens.append("--no-" + name.replace("_", "-"))
    if combine(*expectations) != BAD:  # the cost of a valid run: epochs × batches per epoch
        epochs, batch = parse_int(values["epochs"]), parse_int(values["batch_size"])
        per_epoch, limit = math.ceil(n_train * 0.9 / batch), parse_int(values["max_batches"])
        assume(epochs * (min(per_epoch, limit) if limit else per_epoch) <= MAX_BATCHES_PER_CASE)
    for name, text in values.items():
        tokens += _value_tokens(name, text)

    option_tokens, option_expectations = draw(method_option_tokens(method, model, label_kind))
    tokens += option_tokens
    expectations += option_expectations
    if draw(st.sampled_from([False] * 5 + [True])):
        text, case = draw(model_option_text(model))
        tokens += _value_tokens("model_options", text)
        expectations.append(case)
    if draw(fault):  # an unknown flag or a stray word
        word = draw(st.one_of(
            st.from_regex(r"--[a-z][a-z-]{0,12}", fullmatch=True).filter(
                lambda w: not any(k.startswith(w) for k in KNOWN_FLAGS)),
            st.sampled_from(["--hiden", "--epoch-s", "--lerning-rate", "extra", "-x"])))
        tokens.append(word)
        expectations.append(BAD)

    out, out_expect = draw(out_folders(root, "--overwrite" in tokens))
    if out is not None:
        tokens += _value_tokens("out", out)
    expectations.append(out_expect)
    return ["train", *tokens, "--no-progress"], combine(*expectations), out


@settings(max_examples=_examples(2.4))
@given(data=st.data())
def test_fuzz_train_flags(data, fuzz_base):
    with case_root(fuzz_base) as root:
        argv, expected, out = data.draw(train_cases(root))
        note(f"expected {sorted(expected)}")
        outcome = run_case(argv, root, out)

        def summary_written():
            if out is None or out.startswith("/dev/"):
                return None
            path = Path(out) / "summary.json"
            if not path.exists():
                return f"exit 0 but no {path}"
            status = json.loads(path.read_text()).get("status")
            return None if status == "ok" else f"summary status {status}"

        judge("train flags", argv, outcome, expected, summary_written)


def test_a_value_with_a_line_break_keeps_the_message_on_one_line(tmp_path):
    """A line break in a user's value (here a path) is escaped where the message is printed."""
    blocker = tmp_path / "out" / "a\nb"
    blocker.parent.mkdir()
    blocker.write_text("a file, not a folder")
    argv = [*TINY_TRAIN, "--out", str(blocker)]
    outcome = run_case(argv, tmp_path, str(blocker))
    assert outcome.code == 2
    assert verdict(outcome, BAD) is None, outcome.stderr


def test_every_train_flag_and_method_option_is_fuzzed():
    """A flag added to TrainConfig or to a method's Options must get a row in the tables above
    (else the fuzzer would never hand it a bad value)."""
    fuzzed = {*SIMPLE_FLAGS, *CHOICE_FLAGS, *FREE_TEXT_FLAGS, *BOOL_FLAGS, *SPECIAL_FLAGS}
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= fuzzed
    for method in METHOD_NAMES:
        for name, field in _option_fields(method).items():
            known = field.type in (bool, "bool") or name in (
                "k", "update_k", "update_every", "tangents", "max_influence_bytes",
                "temperature", "surrogate_width", "readout_lr_scale", "projection_scale",
                *SIGPROP_CHOICES)
            assert known, f"{method} option {name} is not in option_text"


def test_oracle_catches_a_silent_success(tmp_path):
    """The judge must fail a valid-looking exit 0 on input the oracle calls invalid."""
    outcome = run_case(TINY_TRAIN, tmp_path, None)
    assert outcome.code == 0
    assert verdict(outcome, BAD) == "silent success"
    assert verdict(outcome, OK) is None


# ============================================================================ (c) compare presets

TINY_PRESET = {
    "name": "fuzz", "tasks": ["cue_recall:delay=2,n_train=40,n_test=20"], "models": ["gru"],
    "methods": ["bptt"], "seeds": [0],
    "defaults": {"epochs": 1, "hidden": 4, "layers": 1, "batch_size": 20, "max_batches": 1,
                 "threads": 1, "eval_batch_size": 64},
    "lr_search": {"lrs": {"default": [0.01]}}, "alignment": None, "bench": None,
}
SETTABLE = ("hidden", "layers", "epochs", "batch_size", "loss_at", "optimizer", "weight_decay",
            "lr_schedule", "grad_clip", "device", "threads", "data_dir", "download",
            "max_batches", "eval_batch_size")
def _json_containers(children):
    return st.one_of(st.lists(children, max_size=3),
                     st.dictionaries(st.text(_TEXT_CHARS, max_size=6), children, max_size=3))


json_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
              st.text(_TEXT_CHARS, max_size=8)),
    _json_containers, max_leaves=6)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _expect_setting(name: str, value) -> frozenset:
    """A preset setting as TrainConfig declares it (same rules as the flags)."""
    ints = {"hidden": (1, 65536, 6), "layers": (1, 64, 2), "epochs": (1, 10**6, 2),
            "batch_size": (1, 10**7, None), "threads": (0, CORES, None),
            "max_batches": (0, None, None), "eval_batch_size": (1, 10**7, None)}
    if name in ints:
        lo, hi, cheap = ints[name]
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)  # 2.0 is the integer 2 in JSON
        if not _is_int(value) or value < lo or (hi is not None and value > hi):
            return BAD
        return None if cheap is not None and value > cheap else OK
    if name in ("weight_decay", "grad_clip"):
        if value is None and name == "weight_decay":
            return OK
        if not _is_number(value) or not math.isfinite(float(value)) or value < 0:
            return BAD
        return OK if value <= 1 else OK_OR_DIVERGED
    choices = {"loss_at": ("last", "every"), "optimizer": ("adam", "sgd"),
               "lr_schedule": ("cosine", "constant", None), "device": ("cpu",)}
    if name in choices:
        return OK if isinstance(value, (str, type(None))) and value in choices[name] else BAD
    if name == "data_dir":
        return OK if isinstance(value, (str, type(None))) else BAD
    if name == "download":
        return OK if isinstance(value, bool) else BAD
    raise AssertionError(name)


@st.composite
def setting_values(draw, name: str):
    good = {"hidden": st.integers(1, 6), "layers": st.integers(1, 2), "epochs": st.integers(1, 2),
            "batch_size": st.integers(1, 10**7), "threads": st.integers(0, CORES),
            "max_batches": st.integers(0, 3), "eval_batch_size": st.integers(1, 10**7),
            "weight_decay": st.floats(0, 1), "grad_clip": st.floats(0, 1e6),
            "loss_at": st.sampled_from(["last", "every"]),
            "optimizer": st.sampled_from(["adam", "sgd"]),
            "lr_schedule": st.sampled_from(["cosine", "constant", None]),
            "device": st.just("cpu"), "data_dir": st.text(_TEXT_CHARS, max_size=8),
            "download": st.booleans()}[name]
    wrong = st.one_of(st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.none(),
                      st.text(_TEXT_CHARS, max_size=6), st.sampled_from([2.5, -1, 0, 1e400]),
                      json_junk)
    return draw(st.one_of(good, good, wrong))


def _expect_lr_list(values) -> frozenset:
    if not isinstance(values, list) or not values:
        return BAD
    if not all(_is_number(v) and 0 < v < math.inf for v in values):
        return BAD
    if len(set(values)) != len(values):
        return BAD
    return OK


@st.composite
def preset_mutation(draw, preset: dict, key: str) -> frozenset:
    """Change ``preset[key]`` (in place); returns the expectation of the change."""
    methods = preset["methods"]
    if key in ("name", "description"):
        value = draw(st.one_of(st.text(_TEXT_CHARS, max_size=20), json_junk))
        preset[key] = value
        return OK if isinstance(value, str) else BAD  # schema: text
    if key == "defaults":
        if draw(st.integers(0, 5)) == 0:
            preset[key] = draw(json_junk.filter(lambda v: not isinstance(v, dict)))
            return BAD
        expectations = []
        for name in draw(st.lists(st.sampled_from(SETTABLE + ("lr", "seed", "tasks", "bogus")),
                                  unique=True, min_size=1, max_size=3)):
            if name not in SETTABLE:
                preset[key][name] = 1
                expectations.append(BAD)  # not settable in a preset
                continue
            value = draw(setting_values(name))
            case = _expect_setting(name, value)
            assume(case is not None)
            preset[key][name] = value
            expectations.append(case)
        return combine(*expectations)
    if key in ("models", "methods"):
        names = ["gru", "rnn", "lstm", "lif"] if key == "models" else list(METHOD_NAMES)
        value = draw(st.one_of(
            st.lists(st.sampled_from(names), min_size=1, max_size=2, unique=True),
            st.lists(st.sampled_from(names), min_size=2, max_size=2),  # maybe duplicates
            st.just([]), st.sampled_from([["convgru"], ["nope"], [3], "gru"]), json_junk))
        preset[key] = value
        if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value):
            return BAD
        if not all(isinstance(v, str) and v in names for v in value):
            return BAD
        return OK
    if key == "seeds":
        value = draw(st.one_of(
            st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=2, unique=True),
            st.lists(st.one_of(st.integers(-5, 5), st.integers(2**63 - 2, 2**64), st.floats(),
                               st.booleans()), min_size=1, max_size=2),
            st.just([]), json_junk))
        preset[key] = value
        if not isinstance(value, list) or not value or len(set(map(str, value))) != len(value):
            return BAD
        return OK if all(_is_int(s) and 0 <= s <= 2**63 - 1 for s in value) else BAD
    if key == "lr_search":
        shape = draw(st.sampled_from(["default", "per method", "junk", "lrs junk", "extra key"]))
        if shape == "junk":
            preset[key] = draw(json_junk.filter(lambda v: not isinstance(v, dict)))
            return BAD
        if shape == "lrs junk":
            preset[key] = {"lrs": draw(json_junk.filter(lambda v: not isinstance(v, dict)))}
            return BAD
        if shape == "extra key":
            preset[key] = {"lrs": {"default": [0.01]}, "budget": 3}
            return BAD
        lists = st.one_of(st.lists(st.floats(1e-4, 0.05), min_size=1, max_size=2),
                          st.lists(st.one_of(st.floats(), st.integers(-3, 3), st.booleans(),
                                             st.text(max_size=3)), max_size=2))
        lrs = {"default": draw(lists)}
        expectations = [_expect_lr_list(lrs["default"])]
        if shape == "per method":
            method = draw(st.sampled_from(list(METHOD_NAMES) + ["nope"]))
            lrs[method] = draw(lists)
            expectations.append(_expect_lr_list(lrs[method]) if method in METHOD_NAMES else BAD)
        preset[key] = {"lrs": lrs}
        if combine(*expectations) != BAD and isinstance(methods, list):
            budget = {len(lrs.get(m, lrs["default"])) for m in methods if isinstance(m, str)}
            if len(budget) != 1:
                expectations.append(BAD)  # every method the same number of learning rates
        # a huge lr is allowed by the schema: such a run diverges, which compare reports
        return combine(*expectations)
    if key == "method_options":
        method = draw(st.sampled_from(["tbptt", "sigprop", "fwdgrad", "eprop", "bptt", "nope"]))
        option, good, bad = {
            "tbptt": ("k", st.integers(1, 6), st.one_of(st.integers(-3, 0), st.booleans(),
                                                        st.text(max_size=2), st.floats())),
            "sigprop": ("temperature", st.floats(0.5, 4), st.one_of(st.floats(max_value=0),
                                                                   st.just(float("nan")),
                                                                   st.text(max_size=2))),
            "fwdgrad": ("tangents", st.integers(1, 3), st.integers(-3, 0)),
            "eprop": ("feedback", st.sampled_from(["symmetric", "random"]),
                      st.sampled_from(["Symmetric", "none", ""])),
            "bptt": ("k", st.nothing(), st.integers(1, 3)),  # bptt has no options
            "nope": ("k", st.nothing(), st.integers(1, 3)),
        }[method]
        value = draw(st.one_of(good, bad))
        preset[key] = {method: {option: value}}
        if method in ("bptt", "nope"):
            return BAD
        valid = {"tbptt": lambda v: (_is_int(v) and v >= 1) or (
                     isinstance(v, float) and v.is_integer() and 1 <= v < 2**53),
                 "sigprop": lambda v: _is_number(v) and math.isfinite(v) and v > 0,
                 "fwdgrad": lambda v: _is_int(v) and v >= 1,
                 "eprop": lambda v: v in ("symmetric", "random")}[method](value)
        if valid:
            return OK
        # refused at load by the option's declared rule, or, where the method checks it when it
        # is built, when a run uses it (an unused method's option may pass unnoticed)
        return BAD if _surely_runs(preset, method) else OK_OR_BAD
    if key == "model_options":
        model, value = draw(st.sampled_from([
            ("lif", {"tau_mem": 5.0}), ("lif", {"tau_mem": 0}), ("lif", {"tau_mem": "x"}),
            ("gru", {}), ("gru", {"x": 1}), ("nope", {}), ("lif", 3), ("lif", {"recurrent": 1}),
            ("lif", {"threshold": float("nan")})]))
        preset[key] = {model: value}
        good = (model == "lif" and value == {"tau_mem": 5.0}) or (model == "gru" and value == {})
        return OK if good else BAD
    if key == "tasks":
        tiny = TINY_PRESET["tasks"][0]
        shape = draw(st.sampled_from(["object", "object", "string", "junk", "bad spec", "empty"]))
        if shape == "empty":
            preset[key] = draw(st.sampled_from([[], {}, None, "cue_recall"]))
            return BAD
        if shape == "junk":
            preset[key] = [draw(json_junk.filter(lambda v: not isinstance(v, (str, dict))))]
            return BAD
        if shape == "string":
            preset[key] = [tiny]
            return OK
        if shape == "bad spec":
            spec = draw(st.sampled_from(["cue_recall:delay=-1,n_train=40,n_test=20",
                                         "cue_recall:nokey=1", "no_such_task", "",
                                         "cue_recall:delay=2,n_train=40,n_test=20,val_fraction=0",
                                         "file:/nonexistent.npz"]))
            preset[key] = [spec]
            if spec in ("no_such_task", ""):
                return BAD  # the name is checked when the preset loads
            # the options are checked when a run builds the task: only if something runs
            return BAD if any(_surely_runs(preset, m) for m in methods) else OK_OR_BAD
        entry, expectations = {"spec": tiny}, []
        for part in draw(st.lists(st.sampled_from(["overrides", "skip", "models", "junk key",
                                                   "method_options", "spec"]),
                                  unique=True, max_size=2)):
            if part == "overrides":
                name = draw(st.sampled_from(SETTABLE))
                value = draw(setting_values(name))
                case = _expect_setting(name, value)
                assume(case is not None)
                entry["overrides"] = {name: value}
                expectations.append(case)
            elif part == "skip":
                why = draw(st.one_of(st.just("too slow"), json_junk))
                entry["skip"] = {draw(st.sampled_from(["bptt", "nope"])): why}
                ok = isinstance(why, str) and why and "nope" not in entry["skip"]
                expectations.append(OK if ok else BAD)
            elif part == "models":
                value = draw(st.one_of(st.just(["rnn"]), st.just([]), json_junk))
                entry["models"] = value
                ok = isinstance(value, list) and value and all(
                    isinstance(m, str) and m in SEQUENCE_MODELS for m in value) \
                    and len(set(value)) == len(value)
                expectations.append(OK if ok else BAD)
            elif part == "junk key":
                entry["spek"] = tiny
                expectations.append(BAD)
            elif part == "method_options":
                entry["method_options"] = draw(st.sampled_from([{"tbptt": {"k": 2}}, {"x": {}},
                                                                 {"tbptt": {"k": 0}}, []]))
                good = entry["method_options"] == {"tbptt": {"k": 2}}
                expectations.append(OK if good else BAD if (
                    _surely_runs(preset, "tbptt") or not isinstance(entry["method_options"], dict)
                    or "x" in entry["method_options"]) else OK_OR_BAD)
            else:
                entry["spec"] = draw(json_junk.filter(lambda v: not isinstance(v, str)))
                expectations.append(BAD)
        preset[key] = [entry]
        return combine(*expectations)
    if key == "alignment":
        value = draw(st.one_of(
            st.none(),
            st.fixed_dictionaries({"epochs": st.lists(st.one_of(
                st.integers(0, 3), st.sampled_from(["mid", "last"])), max_size=3),
                "batches": st.integers(1, 2)}),
            st.fixed_dictionaries({"epochs": st.one_of(json_junk, st.lists(json_junk,
                                                                           max_size=2)),
                                   "batches": st.one_of(st.integers(-2, 2), json_junk)}),
            json_junk))
        preset[key] = value
        if value is None:
            return OK
        if not isinstance(value, dict) or not set(value) <= {"epochs", "batches"}:
            return BAD
        epochs, batches = value.get("epochs", [0]), value.get("batches", 2)
        ok = (isinstance(epochs, list)
              and all(e in ("mid", "last") or (_is_int(e) and e >= 0) for e in epochs)
              and _is_int(batches) and batches >= 1)
        return OK if ok else BAD
    if key == "bench":
        value = draw(st.one_of(st.none(), st.just({}), st.just({"hidden": 0}),
                               st.just({"no_such_setting": 1}), json_junk))
        preset[key] = value
        return OK if value is None or value == {} else BAD
    if key == "unknown key":
        preset[draw(st.sampled_from(["taks", "epochs", "extra"]))] = 1
        return BAD
    raise AssertionError(key)


def _surely_runs(preset: dict, method: str) -> bool:
    """Whether the (so far valid) preset surely trains ``method`` on some model."""
    if method not in preset.get("methods", []) or any(
            isinstance(t, dict) and "models" in t for t in preset.get("tasks", [])):
        return False
    models = preset.get("models", [])
    return method != "eprop" or (isinstance(models, list)
                                 and any(m in EPROP_MODELS for m in models))


PRESET_KEYS = ("name", "description", "defaults", "models", "methods", "seeds", "lr_search",
               "method_options", "model_options", "tasks", "alignment", "bench", "unknown key")


@st.composite
def preset_files(draw, folder: Path):
    """(path of a preset file, expectation)."""
    kind = draw(st.sampled_from(["preset"] * 8 + ["not an object", "bytes"]))
    path = folder / "preset.json"
    if kind == "not an object":
        path.write_text(json.dumps(draw(json_junk.filter(lambda v: not isinstance(v, dict)))))
        return path, BAD
    if kind == "bytes":
        path.write_bytes(draw(st.binary(max_size=200)))
        try:
            json.loads(path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return path, BAD
        assume(False)  # random bytes that happen to be JSON text: judged above
    preset = json.loads(json.dumps(TINY_PRESET))
    expectations = []
    keys = draw(st.lists(st.sampled_from(PRESET_KEYS), unique=True, max_size=2))
    # the matrix first: other verdicts (the lr budget, unused options) depend on it
    for key in sorted(keys, key=lambda k: {"methods": 0, "models": 1, "tasks": 2}.get(k, 3)):
        expectations.append(draw(preset_mutation(preset, key)))
    expected = combine(*expectations)
    text = json.dumps(preset, ensure_ascii=draw(st.booleans()))
    data = text.encode("utf-8", errors="surrogatepass")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(preset, ensure_ascii=False)):
        # a lone surrogate: escaped, JSON that Python reads (whether such a string is usable
        # text the docs leave open); raw, bytes that are not UTF-8
        expected = (expected | BAD) if text.isascii() else BAD
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["bad byte", "truncate", "bom", "deep",
                                                     "latin-1"]))
    if encoding == "bad byte":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80",
                                                 b"\xf8\x88\x80\x80\x80", b"\x80"])) + data[at:]
        expected = BAD
    elif encoding == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
        expected = BAD
    elif encoding == "bom":
        data = b"\xef\xbb\xbf" + data
        expected = expected | BAD  # JSON may ignore a BOM; refusing it is fine too
    elif encoding == "deep":
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        data = data[:-1] + b', "description": ' + b"[" * depth + b"]" * depth + b"}"
        expected = BAD  # description must be text (and this deep it is not even readable)
    elif encoding == "latin-1" and not text.isascii():
        data = text.encode("latin-1", errors="replace")
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            expected = BAD
    path.write_bytes(data)
    return path, expected


@settings(max_examples=_examples(0.8))
@given(data=st.data())
def test_fuzz_compare_presets(data, fuzz_base):
    with case_root(fuzz_base) as root:
        inputs = root / "in"
        inputs.mkdir()
        path, expected = data.draw(preset_files(inputs))
        out = root / "out" / "compare"
        argv = ["compare", "--preset", str(path), "--out", str(out), "--jobs", "1",
                "--no-progress", "--no-bench"]
        note(f"expected {sorted(expected)}; preset bytes {path.read_bytes()[:2000]!r}")
        outcome = run_case(argv, root, str(out))

        def report_written():
            missing = [n for n in ("results.json", "report.html", "report.md")
                       if not (out / n).exists()]
            return f"exit 0 without {missing}" if missing else None

        judge("presets", argv, outcome, expected, report_written)


# ============================================================================ faults found



def _npz_named(root: Path, name: str) -> str:
    rng = np.random.default_rng(0)
    (root / "in").mkdir(exist_ok=True)
    path = root / "in" / name
    with open(path, "wb") as f:
        np.savez(f, x=rng.normal(size=(8, 3, 2)).astype(np.float32), y=rng.integers(0, 3, 8))
    return f"file:{path}"


#: name -> (argv for cli.main given the case folder, expected exit code). Each failed before its
#: fix (a traceback, a silent success or a wrong verdict); the fuzzer found them.
FOUND = {
    # tasks/registry.py stripped the whole spec, so a file name ending in whitespace named
    # another file (here: the folder it is in)
    "npz name ending in NEL": (lambda r: [*TINY_TRAIN, "--task", _npz_named(r, "a\x85")], 0),
    "npz name ending in a space": (lambda r: [*TINY_TRAIN, "--task", _npz_named(r, "a.npz ")],
                                   0),
    # harness: Adam's step size overflowed float32 inside torch (RuntimeError traceback)
    "lr 1e300": (lambda r: [*TINY_TRAIN, "--lr", "1e300"], 3),
    # harness: an empty validation split crashed the evaluation (AttributeError traceback)
    "val_fraction=0": (lambda r: [*TINY_TRAIN, "--task",
                                  "cue_recall:delay=2,n_train=40,n_test=20,val_fraction=0"], 2),
    # harness: noise beyond float32 made inf inputs, reported as a divergence (exit 3)
    "noise=1e308": (lambda r: [*TINY_TRAIN, "--task",
                               "cue_recall:delay=2,n_train=40,n_test=20,noise=1e308"], 2),
}
#: preset changes (compare.validate_preset / load_preset): each was a traceback or a silent
#: success before
FOUND_PRESETS = {
    "description not text": {"description": [[1]]},
    "name not text": {"name": 3},
    "lrs a list": {"lr_search": {"lrs": [0.01]}},
    "alignment epochs a number": {"alignment": {"epochs": 5}},
    "alignment epochs true": {"alignment": {"epochs": [True]}},
    "alignment batches 0": {"alignment": {"epochs": [0], "batches": 0}},
    "bench a number": {"bench": 5},
    "bench false": {"bench": False},
    "bench a list": {"bench": []},
    "task models null": {"tasks": [{"spec": TINY_PRESET["tasks"][0], "models": None}]},
    "task models empty": {"tasks": [{"spec": TINY_PRESET["tasks"][0], "models": []}]},
    "task skip a list": {"tasks": [{"spec": TINY_PRESET["tasks"][0], "skip": []}]},
}


@pytest.mark.parametrize("name", list(FOUND), ids=list(FOUND))
def test_found_by_fuzzing_train(name, tmp_path):
    build, code = FOUND[name]
    argv = build(tmp_path)
    out = tmp_path / "out" / "run"
    outcome = run_case([*argv, "--out", str(out)], tmp_path, str(out))
    assert verdict(outcome, frozenset({code})) is None, (outcome.code, outcome.stderr,
                                                         outcome.error)


#: lists nested this deep in a preset: copying one (validate_preset's deepcopy) or json's
#: decoder itself recursed past Python's limit (RecursionError traceback)
NESTED = {"nested 1000 deep": 1000, "nested 100000 deep": 100_000}


@pytest.mark.parametrize("name", [*FOUND_PRESETS, *NESTED], ids=[*FOUND_PRESETS, *NESTED])
def test_found_by_fuzzing_presets(name, tmp_path):
    path = tmp_path / "preset.json"
    if name in FOUND_PRESETS:
        path.write_text(json.dumps({**TINY_PRESET, **FOUND_PRESETS[name]}))
    else:
        deep = "[" * NESTED[name] + "]" * NESTED[name]
        path.write_text(json.dumps(TINY_PRESET)[:-1] + f', "description": {deep}}}')
    out = tmp_path / "out"
    outcome = run_case(["compare", "--preset", str(path), "--out", str(out), "--jobs", "1",
                        "--no-progress", "--no-bench"], tmp_path, str(out))
    assert verdict(outcome, BAD) is None, (outcome.code, outcome.stderr, outcome.error)


def test_tiny_preset_is_valid(tmp_path):
    """Positive control for the preset cases above: the preset they change runs."""
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(TINY_PRESET))
    out = tmp_path / "out"
    outcome = run_case(["compare", "--preset", str(path), "--out", str(out), "--jobs", "1",
                        "--no-progress", "--no-bench"], tmp_path, str(out))
    assert verdict(outcome, OK) is None, (outcome.code, outcome.stderr, outcome.error)
