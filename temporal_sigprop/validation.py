"""One validation layer for every value a user gives: declared with the option, checked in one place.

An option declares what it accepts beside its default, as dataclass field metadata::

    hidden: int = checked(128, ge=1, le=65536)
    lr: float = checked(1e-3, gt=0)                 # floats must be finite unless finite=False
    loss_at: str = checked("last", choices=("last", "every"))

and ``validate(obj)`` (called by the config dataclasses' ``__post_init__``) checks every field of
``obj``: its type from the annotation (an ``int`` field refuses ``2.5`` and ``True``; a ``float``
field takes an int and stores a float; ``X | None`` also takes None), then the declared rule.
The command line, the Python API and presets all build these dataclasses, so they all get the
same checks and the same messages; a failure is a :class:`ConfigError` (exit 2 on the command
line) that names the option, the value and what is accepted.

Nothing here imports torch, so the checks run before any heavy import or data set is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
from dataclasses import dataclass

from .errors import ConfigError

#: Largest seed accepted: torch's generators take 64-bit seeds; numpy's legacy one 32-bit (the
#: harness reduces it modulo 2**32).
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Rule:
    """What one option accepts (beyond its type)."""

    ge: float | None = None
    """Smallest value allowed."""
    gt: float | None = None
    """Values must be strictly above this."""
    le: float | None = None
    """Largest value allowed."""
    choices: tuple | None = None
    """The only values allowed."""
    finite: bool = True
    """Floats must be finite (no NaN, no ±inf)."""

    def describe(self) -> str:
        if self.choices is not None:
            return "one of: " + ", ".join(map(str, self.choices))
        parts = [f"{sign} {_number(bound)}" for sign, bound in
                 ((">", self.gt), ("≥", self.ge), ("≤", self.le)) if bound is not None]
        return " and ".join(parts) if parts else "a finite number"


def _number(value) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def checked(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, **rule):
    """A dataclass field whose value must satisfy ``Rule(**rule)``."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"rule": Rule(**rule)})
    return dataclasses.field(default=default, metadata={"rule": Rule(**rule)})


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


@functools.lru_cache(maxsize=None)
def _field_types(cls) -> dict[str, tuple[type, bool]]:
    """field name -> (base type, None allowed), from the class's annotations."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        optional = type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if args else hint
        out[f.name] = (typing.get_origin(base) or base, optional)
    return out


def check_value(name: str, value, kind: type, rule: Rule | None = None, *, optional=False,
                label=None):
    """``value`` converted to ``kind`` and checked against ``rule``; ConfigError otherwise.

    ``label`` is how the option is named in the message (default: its flag, ``--name``).
    """
    label = label or flag_name(name)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{label} needs a value ({_kind_text(kind)})")
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{label} must be true or false, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                value = int(value)
            else:
                raise ConfigError(f"{label} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(f"{label}={value} is beyond the range of a float") from None
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{label} must be a string, got {value!r}")
    elif kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{label} must be a mapping of names to values, got {value!r}")
    if rule is None:
        rule = Rule()
    if rule.choices is not None and value not in rule.choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in rule.choices], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {label} {value!r}{hint}; choose one of: "
                          f"{', '.join(map(str, rule.choices))}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and rule.finite and not math.isfinite(value):
            raise ConfigError(f"{label} must be a finite number, got {value}")
        bad = ((rule.ge is not None and value < rule.ge) or (rule.gt is not None and value <= rule.gt)
               or (rule.le is not None and value > rule.le))
        if bad:
            shown = value if abs(value) < 1e15 else f"{value:.3g}"
            raise ConfigError(f"{label} must be {rule.describe()}, got {shown}")
    return value


def _kind_text(kind) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a mapping"}.get(kind, getattr(kind, "__name__", str(kind)))


def validate(obj, *, label=None) -> None:
    """Check (and normalise in place, e.g. int → float) every field of the dataclass ``obj``.

    ``label(name)`` names a field in messages (default ``--field-name``).
    """
    types = _field_types(type(obj))
    for f in dataclasses.fields(obj):
        kind, optional = types[f.name]
        if kind not in (int, float, str, bool, dict):
            continue
        value = getattr(obj, f.name)
        checked_value = check_value(f.name, value, kind, f.metadata.get("rule"),
                                    optional=optional, label=label(f.name) if label else None)
        if checked_value is not value:
            object.__setattr__(obj, f.name, checked_value)
