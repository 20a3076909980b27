"""``tsp``: the command line, generated from the config dataclasses.

    tsp train --task mnist1d --model gru --method bptt --hidden 128 --layers 2 --epochs 20 --out runs/x
    tsp tasks [--json]
    tsp doctor

Every field of ``TrainConfig`` is a flag; every field of every method's ``Options`` is a flag too,
accepted only with a method that has it. Bad input exits with code 2 and a one-line message, never
a traceback; a diverged run exits with code 3.

Nothing here imports torch until a command needs it: the parsers are built from torch-free
declarations (``config.py``, ``method_options.py``, ``model_options.py``, ``subcommands.py``,
``tasks.registry``), and a run's settings are checked against them (``check_before_loading``)
before the harness is imported, so ``--help``, ``tsp tasks`` and every usage error answer at once.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import json
import sys
import textwrap
import typing

from .config import TrainConfig, check_before_loading
from .errors import ConfigError, NonFiniteLossError
from .method_options import option_owners, options_class
from .names import METHOD_NAMES

EXIT_BAD_INPUT = 2
EXIT_DIVERGED = 3


def field_docs(cls) -> dict[str, str]:
    """The one-line docstring written under each dataclass field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def _flag_type(annotation):
    """argparse type for a dataclass field annotation (str | None → str, etc.)."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # noqa: S307 - our own annotations
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if args else annotation
    return base if base in (int, float, str, bool) else None


def _add_dataclass_flags(parser, cls, *, skip=(), defaults=True, help_prefix=None) -> list[str]:
    """One flag per field of ``cls`` (``--snake-case``), its help the field's docstring."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        kind = _flag_type(hints[f.name])
        if f.name in skip or kind is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if defaults and f.default is not dataclasses.MISSING else None
        help_text = (help_prefix(f.name) if help_prefix else "") + docs.get(f.name, "")
        if f.default is not dataclasses.MISSING and f.default is not None:
            help_text += f" (default: {f.default})"
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=kind, default=default, help=help_text)
        added.append(f.name)
    return added


class _Parser(argparse.ArgumentParser):
    """A usage error is one line (the usage of ``tsp train`` alone is dozens), naming the command
    and where to look; exit code 2 as argparse's own."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tsp", description="Temporal credit assignment: BPTT, forward-mode differentiation "
                                "and temporal signal propagation on one harness.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train one task/model/method")
    _add_dataclass_flags(train, TrainConfig, skip=("options", "model_options"), defaults=True)
    method_group = train.add_argument_group(
        "method options", "each applies only to the methods named in brackets")
    owners = option_owners(METHOD_NAMES)
    clash = sorted(set(owners) & {f.name for f in dataclasses.fields(TrainConfig)})
    if clash:  # a programming error in a learner, caught by every CLI test
        raise RuntimeError(f"method options {clash} clash with TrainConfig fields; rename them")
    seen: set[str] = set()
    for method in METHOD_NAMES:
        added = _add_dataclass_flags(method_group, options_class(method), defaults=False,
                                     skip=seen, help_prefix=lambda n: f"[{', '.join(owners[n])}] ")
        seen.update(added)
    train.add_argument("--model-options", default="", metavar="KEY=VALUE,...",
                       help="extra cell options, e.g. tau_mem=20 for lif or downsample=2,"
                            "stem_channels=0 for convgru")
    train.set_defaults(handler=_cmd_train, _option_names=sorted(seen))

    tasks = sub.add_parser("tasks", help="list the tasks")
    tasks.add_argument("--json", action="store_true", help="print the list as JSON")
    tasks.set_defaults(handler=_cmd_tasks)

    doctor = sub.add_parser("doctor", help="check that torch, torchaudio and the optional "
                                           "components load; exit 1 naming the fix if not")
    doctor.set_defaults(handler=_cmd_doctor)

    from .subcommands import add_bench_parser, add_compare_parser  # torch-free, as this module
    add_compare_parser(sub)
    add_bench_parser(sub)
    return parser


def _cmd_train(args) -> int:
    options = {name: getattr(args, name) for name in args._option_names
               if getattr(args, name) is not None}
    valid = {f.name for f in dataclasses.fields(options_class(args.method))}
    wrong = sorted(set(options) - valid)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        owners = option_owners(METHOD_NAMES)
        whose = sorted({m for w in wrong for m in owners.get(w, [])})
        raise ConfigError(f"{flags} does not apply to method {args.method!r} (an option of "
                          f"{', '.join(whose)}); its options are: "
                          f"{', '.join(sorted(valid)) or 'none'}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"options", "model_options"}
    cfg = TrainConfig(**{k: getattr(args, k) for k in fields}, options=options,
                      model_options=parse_key_values(args.model_options, "--model-options"))
    check_before_loading(cfg)  # every usage error is refused here, before torch is imported
    from .harness import run_training

    summary = run_training(
        cfg, on_record=lambda record, loop: _print_epoch(record, loop, cfg.epochs))
    keys = ("task", "model", "method", "val_accuracy", "test_accuracy_at_best_val",
            "time_per_step_ms", "training_memory_bytes")
    if summary.get("rank", 0) == 0:  # under torchrun, one summary on stdout (rank 0's)
        print(json.dumps({k: summary[k] for k in keys}, indent=2))
    return 0


def _print_epoch(record: dict, loop: dict, epochs: int) -> None:
    """One line per epoch on stderr (stdout carries the summary JSON)."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    for key, label in (("val_accuracy", "val"), ("test_accuracy", "test")):
        if record.get(key) is not None:
            parts.append(f"{label} {100 * record[key]:.2f} %")
    line = "  ".join(parts)
    if loop.get("best_epoch", -1) > 0:
        line += f"  (best val {100 * loop['best_val']:.2f} % at epoch {loop['best_epoch']})"
    print(line, file=sys.stderr, flush=True)


def parse_key_values(text: str, flag: str) -> dict:
    """``"a=1,b=x"`` → ``{"a": 1, "b": "x"}``, each value read as task options are
    (``tasks.registry.parse_value``: ints, floats, true/false, none; else a string)."""
    from tasks.registry import parse_value

    result = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE pairs separated by commas, got {item!r}")
        if key in result:
            raise ConfigError(f"{flag}: {key!r} given twice")
        result[key] = parse_value(value.strip())
    return result


def _cmd_tasks(args) -> int:
    from tasks import list_tasks
    rows = list_tasks()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [("TASK", "KIND", "SHAPE (T×...)", "CLASSES", "SOURCE", "DESCRIPTION")]
    table += [(r["name"], r["kind"], "×".join(str(s) for s in r["input_shape"]),
               str(r["classes"]), r["source"], r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(5)]
    for row in table:
        cells = [row[i].rjust(widths[i]) if i == 3 else row[i].ljust(widths[i]) for i in range(5)]
        print("  ".join(cells + [row[5]]))
    print("\nTask options go after a colon (cue_recall:delay=60); archive sets take "
          "uea:NAME / ucr:NAME from --data-dir; your own arrays: file:PATH.npz.")
    return 0


def _cmd_doctor(args) -> int:
    from .doctor import run_doctor
    return run_doctor()


def _refuse_unknown(parser: argparse.ArgumentParser, args, extra: list[str]) -> None:
    """Unknown arguments, reported by the subcommand they were given to, with a suggestion."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    target = sub.choices.get(getattr(args, "command", None), parser) if sub else parser
    known = [opt for action in target._actions for opt in action.option_strings]
    words = []
    for item in extra:
        flag = item.split("=", 1)[0]
        close = difflib.get_close_matches(flag, known, n=1) if flag.startswith("-") else []
        words.append(f"{item} (did you mean {close[0]}?)" if close else item)
    target.error(f"unrecognized argument{'s' if len(extra) > 1 else ''}: {', '.join(words)}")


def main(argv=None) -> int:
    from tasks.common import DataError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_unknown(parser, args, extra)
    try:
        return args.handler(args)
    except (ConfigError, DataError) as err:
        print(f"tsp: error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as err:
        print(f"tsp: training stopped: {_one_line(err)}", file=sys.stderr)
        return EXIT_DIVERGED


def _one_line(err: Exception) -> str:
    """The message on one line: a user's value (a path, a task option) may hold line breaks."""
    return str(err).replace("\r", "\\r").replace("\n", "\\n")


if __name__ == "__main__":
    sys.exit(main())
