"""Typed per-method options and the value coercion every setting shares.

Typed per-method options (``method.options``): one dataclass per method, registered with the method.

Each method declares a dataclass whose fields carry defaults and help text (built with :func:`option`) and an
optional ``validate()``. :func:`parse_options` turns the ``method.options`` mapping of a run config into that
dataclass: values are coerced to the field types exactly as other settings are, and an unknown key fails with a
one-line error naming the method, the key, a close match and every valid option. Settings resolution calls it, so a
bad option fails before anything is loaded, and the resolved config records every option with its value.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

import math

from .errors import RlptuneError


def option(default: Any, help: str):
    """A dataclass field with help text (lists and dicts get a factory)."""
    meta = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class NoOptions:
    """Methods without options of their own."""


def parse_options(cls: type, values: dict | None, method: str):
    """``cls`` filled from ``values`` (``method.options``), coerced and validated."""
    if not is_dataclass(cls):  # pragma: no cover - programming error
        raise TypeError(f"{cls!r} is not a dataclass")
    if isinstance(values, cls):
        values = dataclasses.asdict(values)
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            if not valid:
                raise RlptuneError(f"method.options: method {method!r} takes no options, got {key!r}")
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RlptuneError(f"method.options: unknown option {key!r} for method {method!r}{hint}; valid options: {', '.join(valid)}")
        kwargs[key] = coerce(value, hints[key], f"method.options.{key}")
    options = cls(**kwargs)
    check = getattr(options, "validate", None)  # optional by design: most options need no cross-field check
    if check is not None:
        check()
    return options


def options_dict(options: Any) -> dict[str, Any]:
    """Every option with its value, JSON/YAML-ready (what config.yaml records)."""
    return dataclasses.asdict(options)


def option_fields(cls: type) -> list[tuple[str, Any, str, Any]]:
    """(name, default, help, type) of every option of ``cls`` (for flags and `rlptune methods`)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, f.metadata.get("help", ""), hints[f.name]))
    return out


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the field's type, or fail naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)][0]
        return coerce(value, inner, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise RlptuneError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise RlptuneError(f"{where}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError, OverflowError):
            raise RlptuneError(f"{where}: expected an integer, got {value!r}") from None
    if annotation is float:
        if isinstance(value, bool):
            raise RlptuneError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise RlptuneError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise RlptuneError(f"{where}: expected a finite number, got {value!r}")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise RlptuneError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    if annotation is list or origin is list:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise RlptuneError(f"{where}: expected a list, got {value!r}")
        check_plain(value, where)
        return [str(v) if not isinstance(v, (int, float)) else v for v in value]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise RlptuneError(f"{where}: expected a mapping, got {value!r}")
        check_plain(value, where)
        return dict(value)
    return value


def check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Settings hold plain data: scalars, and lists / string-keyed mappings of them, a few levels deep at most."""
    if depth > 4:
        raise RlptuneError(f"{where}: nested too deeply (or refers to itself); expected plain values")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise RlptuneError(f"{where}: keys must be strings, got {key!r}")
            check_plain(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            check_plain(item, where, depth + 1)
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        raise RlptuneError(f"{where}: expected a plain value (text, number, true/false, list), got {type(value).__name__}")
