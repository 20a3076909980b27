"""The task registry: names, static metadata, option parsing and lazy builders.

A task is added by one ``register_task(TaskEntry(...))`` call; the harness, the CLI and the
report only use ``get_task`` / ``list_tasks``. Entries name their builder as a
``"module:function"`` string that is imported on first use, so listing tasks never imports
heavy modules or generates data.

Builder contract: ``builder(*, seed, data_dir, download, **options) -> TaskData`` where
``options`` are the task's own options (defaults already filled in when the entry declares them).
A builder whose generation takes seconds wraps it in ``tasks.cache.cached_tensors``; ``get_task``
says whether (and where) to cache for the duration of the call.

This module imports no numpy or torch (nor ``tasks.base``, ``tasks.archive``): ``tsp tasks`` and
the check of a task spec run before anything heavy is loaded. The table below is the one
declaration of each task's name, kind, shape, classes, source and options; the builders receive
these options and a test checks that what they build has the declared shape and classes.
"""
from __future__ import annotations

import difflib
import functools
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import cache as data_cache
from .common import KINDS, SOURCES, DataError

if TYPE_CHECKING:  # the real import is in get_task: tasks.base needs torch
    from .base import TaskData

__all__ = [
    "TaskEntry",
    "register_task",
    "get_task",
    "list_tasks",
    "task_names",
    "parse_task_spec",
    "parse_value",
    "FILE_PREFIX",
    "FILE_ENTRY",
    "get_entry",
    "TaskFamily",
    "register_family",
    "family_prefixes",
    "check_task_spec",
]

FILE_PREFIX = "file:"

# Options every generated task accepts the same way, described once for error messages.
COMMON_OPTION_HELP = {
    "val_fraction": "fraction of the training part held out for validation (seeded by --seed)",
    "data_seed": "seed of the data generator (fixed by default so every run sees the same data)",
    "n_train": "number of training samples generated/used, validation included",
    "n_test": "number of test samples",
}


@dataclass(frozen=True)
class TaskEntry:
    """One registered task.

    ``input_shape`` and ``classes`` are the values for the default options (what ``tsp tasks``
    shows); options such as ``delay`` may change them. ``options`` maps each option to its
    default; ``None`` means the builder validates its own options (used for builders written
    elsewhere whose option set the registry does not mirror).
    """

    name: str
    kind: str
    builder: str | Callable[..., TaskData]  # "module:function" or a callable
    input_shape: tuple
    classes: int
    source: str
    description: str
    options: dict[str, Any] | None = field(default_factory=dict)
    label_kind: str = "sequence"
    #: Largest value of a numeric option (sizes that would otherwise exhaust memory); the
    #: builder checks lower bounds and the relations between options.
    limits: dict[str, float] = field(default_factory=dict)
    # A data set of a family (``uea:NAME``): its NAME, passed to the builder first, by position.
    member: str | None = None
    # Static facts beyond the listing's keys, for reports (the archive sets' published
    # reference accuracies under "reference"); reading them loads nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self) -> Callable[..., TaskData]:
        if callable(self.builder):
            fn = self.builder
        else:
            module, _, attr = self.builder.partition(":")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise DataError(
                    f"task {self.name!r}: cannot load its builder {self.builder!r} ({exc})"
                ) from exc
        # Bound by position so the builder's keyword options stay its whole signature.
        return fn if self.member is None else functools.partial(fn, self.member)

    def as_dict(self) -> dict:
        """The ``tsp tasks --json`` schema (docs/design.md, "Names")."""
        return {
            "name": self.name,
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "classes": self.classes,
            "source": self.source,
            "description": self.description,
            **self.extra,
        }


@dataclass(frozen=True)
class TaskFamily:
    """A prefix that names many data sets: ``PREFIX:NAME`` or ``PREFIX:NAME:key=value,...``.

    Sets known in advance (those that ship offline) are registered by their full name with
    ``register_task`` and listed; any other NAME gets an entry on the fly from :meth:`entry`
    (its shape is known only once its files are read).
    """

    prefix: str
    """The part before the first ':' (``uea``)."""
    kind: str
    """The kind of every set of the family."""
    builder: str
    """``"module:function"``, called as ``function(NAME, *, seed, data_dir, download, **opts)``."""
    options: dict[str, Any]
    """The options every set takes, with their defaults."""
    description: str
    """What the family is, for listings and error messages."""
    example: str
    """A set name to show in messages."""

    def entry(self, member: str) -> TaskEntry:
        """The entry of a set that was not registered by name (read from --data-dir)."""
        return TaskEntry(f"{self.prefix}:{member}", self.kind, self.builder, (), 0, "download",
                         f"{self.description}: set {member}", dict(self.options), member=member)


_REGISTRY: dict[str, TaskEntry] = {}
_FAMILIES: dict[str, TaskFamily] = {}


def register_family(family: TaskFamily) -> TaskFamily:
    if family.kind not in KINDS:
        raise ValueError(f"task family {family.prefix!r}: kind must be one of {KINDS}")
    if not family.prefix or ":" in family.prefix or "," in family.prefix:
        raise ValueError(f"task family prefix {family.prefix!r} may not be empty or contain "
                         f"':' or ','")
    if family.prefix in _FAMILIES or family.prefix in _REGISTRY or family.prefix == "file":
        raise ValueError(f"task family {family.prefix!r} is already registered")
    _FAMILIES[family.prefix] = family
    return family


def family_prefixes() -> list[str]:
    return list(_FAMILIES)


def register_task(entry: TaskEntry, *, replace: bool = False) -> TaskEntry:
    if entry.kind not in KINDS:
        raise ValueError(f"task {entry.name!r}: kind must be one of {KINDS}")
    if entry.source not in SOURCES:
        raise ValueError(f"task {entry.name!r}: source must be one of {SOURCES}")
    prefix, colon, member = entry.name.partition(":")
    if colon:  # a named set of a family: PREFIX:MEMBER
        if prefix not in _FAMILIES or not member or ":" in member or entry.member != member:
            raise ValueError(f"task name {entry.name!r}: only a registered family's set may "
                             f"contain ':' (PREFIX:NAME, with member=NAME)")
    if "," in entry.name or not entry.name or entry.name in _FAMILIES:
        raise ValueError(f"task name {entry.name!r} may not be empty, contain ',' or be a "
                         f"family prefix")
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"task {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def task_names() -> list[str]:
    return list(_REGISTRY)


def list_tasks() -> list[dict]:
    """Static metadata of every registered task; nothing is generated or loaded."""
    return [e.as_dict() for e in _REGISTRY.values()]


# --------------------------------------------------------------------------------------------
# Spec parsing


def parse_value(text: str):
    """``'60'`` -> 60, ``'0.5'``/``'1e-3'`` -> float, ``'true'``/``'false'`` -> bool,
    ``'none'`` -> None, anything else stays a string."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_task_spec(spec: str) -> tuple[str, dict]:
    """Split ``name`` / ``name:key=value,key=value`` / ``file:PATH.npz`` into ``(name, options)``.

    For ``file:`` everything after the prefix is the path, verbatim (paths may contain ':' or
    ','); it comes back as ``('file', {'path': PATH})``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"empty task spec {spec!r}; valid tasks: {_valid_names_text()}")
    if spec.lstrip().startswith(FILE_PREFIX):
        # verbatim: a file name may end in whitespace (stripping it named another file)
        path = spec.lstrip()[len(FILE_PREFIX):]
        if not path:
            raise DataError("task spec 'file:' needs a path, e.g. file:data/my_task.npz")
        return "file", {"path": path}
    spec = spec.strip()
    name, sep, rest = spec.partition(":")
    if name.strip() in _FAMILIES:  # PREFIX:NAME[:options]
        family = _FAMILIES[name.strip()]
        member, sep, rest = rest.partition(":")
        member = member.strip()
        if not member or "=" in member or "," in member:
            raise DataError(
                f"task spec {spec!r}: {family.prefix}: needs a data set name first, "
                f"{family.prefix}:NAME or {family.prefix}:NAME:key=value (e.g. "
                f"{family.prefix}:{family.example}); {family.description}")
        name = f"{family.prefix}:{member}"
    options: dict = {}
    if sep and rest.strip():
        for item in rest.split(","):
            if not item.strip():
                continue
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise DataError(
                    f"task spec {spec!r}: option {item!r} is not key=value "
                    f"(write e.g. {name}:delay=60,n_train=2000)"
                )
            if key in options:
                raise DataError(f"task spec {spec!r}: option {key!r} given twice")
            options[key] = parse_value(value.strip())
    return name.strip(), options


def _valid_names_text() -> str:
    families = "".join(f", {f.prefix}:NAME ({f.description})" for f in _FAMILIES.values())
    return ", ".join(_REGISTRY) + families + f", or {FILE_PREFIX}PATH.npz"


def _entry(name: str) -> TaskEntry:
    if name == "file":
        return FILE_ENTRY
    prefix, colon, member = name.partition(":")
    if name not in _REGISTRY and colon and prefix in _FAMILIES:
        return _FAMILIES[prefix].entry(member)
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown task {name!r}{hint}; valid tasks: {_valid_names_text()}")
    return _REGISTRY[name]


def get_entry(name: str) -> TaskEntry:
    """The registry entry of a task name (``'file'`` for ``file:PATH``); DataError if unknown."""
    return _entry(name)


def _check_options(entry: TaskEntry, given: dict) -> dict:
    """Fill defaults, refuse unknown keys and values of the wrong type."""
    if entry.options is None:  # the builder validates its own options
        return dict(given)
    unknown = sorted(set(given) - set(entry.options))
    if unknown:
        listed = ", ".join(f"{k} (default {v!r})" for k, v in entry.options.items()) or "none"
        raise DataError(
            f"task {entry.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {listed}"
        )
    out = dict(entry.options)
    for key, value in given.items():
        default = entry.options[key]
        out[key] = _coerce(entry.name, key, value, default)
        limit = entry.limits.get(key)
        if limit is not None and isinstance(out[key], (int, float)) and out[key] > limit:
            raise DataError(f"task {entry.name!r}: option {key}={out[key]!r} is above its "
                            f"limit {limit!r} (a data set that large would not fit in memory)")
    return out


def check_task_spec(spec: str) -> tuple[str, dict]:
    """Parse ``spec`` and check its task name and options without building any data (so a bad
    spec is refused at once); returns ``(name, options with defaults)``."""
    name, options = parse_task_spec(spec)
    entry = _entry(name)
    return name, _check_options(entry, options)


def _coerce(task: str, key: str, value, default):
    bad = DataError(
        f"task {task!r}: option {key}={value!r} should be a {type(default).__name__} "
        f"(default {default!r})"
    )
    if default is None:  # no declared type
        return value
    if value is None:
        raise bad
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise bad
    if isinstance(default, int):
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise bad from None
            if value != value or value in (float("inf"), float("-inf")):
                raise DataError(f"task {task!r}: option {key}={value!r} must be a finite number")
            return value
        raise bad
    if isinstance(default, str):
        return str(value)
    return value


def get_task(spec: str, *, data_dir=None, download: bool = False, seed: int = 0,
             cache: bool = True, cache_dir=None, **overrides):
    """Build a task from its spec, e.g. ``get_task('cue_recall:delay=60', seed=1)``.

    ``overrides`` are task options given as keyword arguments; they win over options in the
    spec. ``seed`` is the run seed: it controls the validation split (and nothing of the test
    split); data generation has its own ``data_seed`` option where the task is generated.
    ``cache=False`` neither reads nor writes the on-disk cache of generated data
    (``tasks.cache``); ``cache_dir`` is its folder (default: ``$TSP_CACHE_DIR``, else the user's
    cache folder).
    """
    from .base import TaskData

    name, options = parse_task_spec(spec)
    options.update(overrides)
    entry = _entry(name)
    options = _check_options(entry, options)
    builder = entry.resolve()
    try:
        with data_cache.settings(cache, cache_dir):
            data = builder(seed=int(seed), data_dir=data_dir, download=bool(download), **options)
    except MemoryError:
        raise DataError(f"task {name!r}: not enough memory to build it with options "
                        f"{options}; use smaller sizes") from None
    if not isinstance(data, TaskData):
        raise DataError(f"task {name!r}: builder returned {type(data).__name__}, not TaskData")
    return data.check()


# --------------------------------------------------------------------------------------------
# Built-in tasks. Option dicts are the single source of truth for option names and defaults
# (tests check that each builder's signature agrees); input_shape/classes are for the defaults.

_SYNTH_SIZES = dict(n_train=2000, n_test=500)
#: Upper limits shared by the generated tasks: sizes far beyond these would exhaust memory.
_SIZE_LIMITS = dict(n_train=1_000_000, n_test=1_000_000)

_BUILTIN = [
    TaskEntry(
        "mnist1d", "sequence", "tasks.mnist1d_task:build_mnist1d", (40, 1), 10, "offline",
        "MNIST-1D (standard 4000/1000 split, generated offline): 40 steps x 1 feature",
        dict(data_seed=42, val_fraction=0.1), limits=dict(val_fraction=0.9),
    ),
    TaskEntry(
        "cue_recall", "sequence", "tasks.synthetic:build_cue_recall", (22, 6), 4, "offline",
        "delayed cue recall: a one-hot cue at step 0, `delay` noisy steps, recall at the end; "
        "label = cue",
        dict(delay=20, classes=4, **_SYNTH_SIZES, noise=0.1, distractors=0.0, data_seed=0,
             val_fraction=0.1),
        limits=dict(delay=100_000, classes=1000, **_SIZE_LIMITS),
    ),
    TaskEntry(
        "cue_recall_steps", "sequence", "tasks.synthetic:build_cue_recall_steps", (28, 6), 4,
        "offline",
        "delayed cue recall with per-step labels: `episodes` x (cue, delay, recall window); "
        "label = current cue on recall steps, -1 elsewhere",
        dict(delay=10, classes=4, episodes=2, recall_len=3, **_SYNTH_SIZES, noise=0.1,
             distractors=0.0, data_seed=0, val_fraction=0.1),
        label_kind="step",
        limits=dict(delay=100_000, classes=1000, episodes=1000, recall_len=100_000,
                    **_SIZE_LIMITS),
    ),
    TaskEntry(
        "pulse_count", "sequence", "tasks.synthetic:build_pulse_count", (30, 2), 6, "offline",
        "count the pulses on channel 0 over the whole sequence, ignoring channel 1",
        dict(length=30, classes=6, **_SYNTH_SIZES, noise=0.1, data_seed=0, val_fraction=0.1),
        limits=dict(length=1_000_000, classes=1000, **_SIZE_LIMITS),
    ),
    TaskEntry(
        "video_digits", "video", "tasks.video:build_video_digits", (20, 1, 32, 32), 10,
        "offline",
        "two moving handwritten digits per clip, both on screen at the end; label = the "
        "digit that appeared first",
        dict(frames=20, size=32, n_train=2000, n_test=500, noise=0.05, data_seed=0,
             val_fraction=0.1),
        limits=dict(frames=10_000, size=1024, **_SIZE_LIMITS),
    ),
    TaskEntry(
        "seq_digits", "sequence", "tasks.sequential_digits:build_seq_digits", (256, 1), 10,
        "offline",
        "handwritten digits read one pixel per step (T = 256; order=row: 16 rows of 16); the "
        "class is revealed late; test handwriting unseen",
        dict(order="pixel", side=16, n_train=4000, n_test=1000, noise=0.05, rotate=12.0,
             shift=1.5, data_seed=0, val_fraction=0.1),
        limits=dict(side=64, **_SIZE_LIMITS),
    ),
    TaskEntry(
        "cue_recall_long", "sequence", "tasks.synthetic:build_cue_recall_long", (252, 6), 4,
        "offline",
        "cue_recall with a 250-step delay (T = 252): the cue must be carried 251 steps",
        dict(delay=250, classes=4, **_SYNTH_SIZES, noise=0.1, distractors=0.0, data_seed=0,
             val_fraction=0.1),
        limits=dict(delay=100_000, classes=1000, **_SIZE_LIMITS),
    ),
    TaskEntry(
        "smnist", "sequence", "tasks.mnist:build_smnist", (784, 1), 10, "download",
        "sequential MNIST, pixel by pixel (pixels_per_step=28: row by row); needs the MNIST "
        "files (--download)",
        dict(pixels_per_step=1, normalize=True, n_train=0, n_test=0, val_fraction=0.1),
    ),
    TaskEntry(
        "psmnist", "sequence", "tasks.mnist:build_psmnist", (784, 1), 10, "download",
        "permuted sequential MNIST (one fixed pixel permutation); needs the MNIST files",
        dict(pixels_per_step=1, normalize=True, n_train=0, n_test=0, val_fraction=0.1,
             perm_seed=0),
    ),
    TaskEntry(
        "moving_mnist_cls", "video", "tasks.mnist:build_moving_mnist_cls", (20, 1, 32, 32), 10,
        "download",
        "one moving MNIST digit, on screen for a few frames at a random time; label = digit; "
        "needs the MNIST files",
        dict(frames=20, size=32, digit_size=20, visible=5, noise=0.05, n_train=4000,
             n_test=1000, data_seed=0, val_fraction=0.1),
        limits=dict(frames=10_000, size=1024, **_SIZE_LIMITS),
    ),
    # Built in tasks/audio.py (its own owner). options=None: that builder checks its own options.
    # The metadata mirrors tasks.audio.AUDIO_TASK_INFO without importing it (a test keeps the
    # two in step).
    TaskEntry(
        "audio_keywords", "audio", "tasks.audio:build_audio_keywords", (51, 40), 10, "offline",
        "procedural keywords: synthetic 16 kHz speech-like waveforms, each class an ordered "
        "sequence of 3 sound units; 40 log-mel bands",
        None,
    ),
    TaskEntry(
        "speech_commands", "audio", "tasks.audio:build_speech_commands", (63, 40), 35,
        "download",
        "Google Speech Commands v2 (35 words, official splits), 1 s clips, 40 log-mel bands; "
        "needs the dataset (--download)",
        None,
    ),
    TaskEntry(
        "shd", "audio", "tasks.audio:build_shd", (100, 700), 20, "download",
        "Spiking Heidelberg Digits: 700-channel spike trains binned into 10 ms frames (1 s), "
        "20 spoken digits; needs the dataset (--download)",
        None,
    ),
]
for _e in _BUILTIN:
    register_task(_e)

# UCR/UEA archive families; the sets that ship offline (inside the aeon package) are listed by
# name, from tasks.archive_sets (plain data: importing it reads no file and loads no torch).
from .archive_sets import ARCHIVES as _ARCHIVES, DEFAULT_OPTIONS as _ARCHIVE_OPTIONS  # noqa: E402
from .archive_sets import OFFLINE_SETS as _ARCHIVE_SETS  # noqa: E402

for _prefix, _example in (("uea", "JapaneseVowels"), ("ucr", "GunPoint")):
    register_family(TaskFamily(
        _prefix, "sequence", f"tasks.archive:build_{_prefix}", dict(_ARCHIVE_OPTIONS),
        f"a set of the {_ARCHIVES[_prefix].title} from --data-dir or --download",
        _example))
for _spec, _set in _ARCHIVE_SETS.items():
    _prefix, _, _member = _spec.partition(":")
    register_task(TaskEntry(
        _spec, "sequence", f"tasks.archive:build_{_prefix}", _set["input_shape"],
        _set["classes"], "offline",
        f"{_set['description']}; official {_set['sizes'][0]}/{_set['sizes'][1]} split; ships "
        f"with the aeon package", dict(_ARCHIVE_OPTIONS), member=_member,
        extra={"reference": [dict(r) for r in _set["reference"]]}))

# ``file:PATH.npz`` is not a named task (it has no fixed shape), so it is not in list_tasks().
FILE_ENTRY = TaskEntry(
    "file", "sequence", "tasks.npz:build_file", (), 0, "user",
    "a user's own arrays: file:PATH.npz with x [N,T,F...], y [N] or [N,T]",
    dict(path="", val_fraction=0.1, test_fraction=0.2),
)
