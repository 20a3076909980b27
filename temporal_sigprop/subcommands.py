"""The flags of ``tsp compare`` and ``tsp bench``, and the checks that can answer before torch.

Their code (``compare.py``, ``bench.py``) imports torch; their parsers live here, without it, so
``tsp compare --help``, ``tsp bench --help`` and their usage errors answer at once. A parser's
handler imports the command's module only when the command runs; before that it refuses unknown
presets, methods, models and task specs with the same messages ``tsp train`` gives.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import os
from pathlib import Path

from .errors import ConfigError

#: The presets that ship with the package (``presets/NAME.json``).
PRESET_NAMES = ("smoke", "quick", "full")
DEFAULT_PRESET = "quick"


def check_preset_name(name_or_path) -> None:
    """ConfigError (with a suggestion) unless ``name_or_path`` is a shipped preset or exists."""
    if str(name_or_path) in PRESET_NAMES or Path(name_or_path).exists():
        return
    close = difflib.get_close_matches(str(name_or_path), PRESET_NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"preset {str(name_or_path)!r}{hint} is neither one of "
                      f"{', '.join(PRESET_NAMES)} nor an existing JSON file")


def _check_names(*, methods=None, models=None, tasks=None) -> None:
    """The names a compare or bench was narrowed to, checked torch-free."""
    from tasks.registry import check_task_spec

    from .method_options import options_class
    from .model_options import check_model_name

    for method in methods or ():
        options_class(method)
    for model in models or ():
        check_model_name(model)
    for spec in tasks or ():
        check_task_spec(spec)


@contextlib.contextmanager
def _data_cache_environment(enabled: bool, cache_dir: str | None):
    """``--no-cache`` / ``--cache-dir`` for every run of a compare, worker processes included
    (they inherit the environment); the variables are restored afterwards."""
    from tasks.cache import ENV_DIR, ENV_OFF

    changes = {ENV_OFF: None if enabled else "1", ENV_DIR: cache_dir}
    saved = {name: os.environ.get(name) for name, value in changes.items() if value is not None}
    os.environ.update({name: value for name, value in changes.items() if value is not None})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------------ compare


def add_compare_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "compare", help="run a matrix of tasks × models × methods × seeds and write a report",
        description="Run a preset's matrix (tasks × models × methods × seeds) with the same "
                    "loss placement and the same learning-rate search budget for every method, "
                    "and write OUT/report.html, report.md, results.csv, results.json and plots. "
                    "Finished runs are cached under OUT and skipped on a re-run.")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"{', '.join(PRESET_NAMES)} or a JSON file (default: {DEFAULT_PRESET})")
    parser.add_argument("--out", default=None, help="output folder (default: runs/compare-PRESET)")
    parser.add_argument("--tasks", nargs="+", default=None, help="only these task specs")
    parser.add_argument("--models", nargs="+", default=None, help="only these models")
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="these seeds")
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every task")
    parser.add_argument("--max-batches", type=int, default=None,
                        help="at most this many batches per epoch (every task)")
    parser.add_argument("--device", default=None, help="cpu or cuda (every run)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op CPU threads")
    parser.add_argument("--wandb", choices=("offline", "online"), default=None,
                        help="log every run to one wandb project, grouped by this compare")
    parser.add_argument("--wandb-project", default="temporal_sigprop", help="wandb project")
    parser.add_argument("--bench-csv", default=None,
                        help="read the scaling section from this bench.csv instead of running it")
    parser.add_argument("--no-bench", dest="bench", action="store_false",
                        help="no scaling measurement (the section says so)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="trainings run at once in worker processes (each with --threads "
                             "threads; default: the usable CPU cores); times per step get "
                             "noisier when jobs share cores")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a run that raises an error and go on (exit code 1 at the end)")
    parser.add_argument("--report-only", action="store_true",
                        help="re-render the report from OUT/results.json without running anything")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    parser.add_argument("--no-cache", dest="cache", action="store_false",
                        help="neither read nor write the on-disk cache of generated data sets "
                             "(see tsp train --help, --cache-dir)")
    parser.add_argument("--cache-dir", default=None,
                        help="folder of the generated-data cache (default: $TSP_CACHE_DIR, else "
                             "~/.cache/temporal_sigprop/generated)")
    parser.set_defaults(handler=_run_compare)
    return parser


def _run_compare(args) -> int:
    check_preset_name(args.preset)
    _check_names(methods=args.methods, models=args.models, tasks=args.tasks)
    from .compare import _cmd_compare

    with _data_cache_environment(args.cache, args.cache_dir):
        return _cmd_compare(args)


# ------------------------------------------------------------------------------------ bench


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    from .cli import field_docs
    from .config import BenchConfig

    parser = subparsers.add_parser(
        "bench", help="time, memory and FLOPs against sequence length and hidden size",
        description="How each method's cost grows with sequence length and width: time per "
                    "step, training memory and FLOPs of one batch, and their ratios to BPTT, "
                    "measured in one run (compare the ratios, not absolute times).")
    docs = field_docs(BenchConfig)
    defaults = BenchConfig()
    for f in dataclasses.fields(BenchConfig):
        if f.name == "method_options":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{docs.get(f.name, '')} (default: {shown})"
        # default None: a flag given explicitly wins over --preset, which wins over the default
        if isinstance(default, list):
            kind = str if f.name == "methods" else int
            parser.add_argument(flag, dest=f.name, nargs="+", type=kind, default=None,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=type(default), default=None,
                                help=help_text)
    parser.add_argument("--preset", default=None,
                        help="start from the bench settings of a compare preset (smoke, quick, "
                             "full or a JSON path); flags given explicitly still win")
    parser.add_argument("--out", default="runs/bench", help="output folder (default: runs/bench)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")
    parser.set_defaults(handler=_run_bench)
    return parser


def _run_bench(args) -> int:
    if args.preset:
        check_preset_name(args.preset)
    _check_names(methods=args.methods, models=[args.model] if args.model else None)
    from .bench import _cmd_bench

    return _cmd_bench(args)
