"""Method-specific settings (``method.options``), validated by one small dataclass per method.

Each method that takes options declares a dataclass whose fields carry defaults and help text (built with
:func:`option`) and an optional ``validate()``. :func:`parse_options` turns the ``method.options`` mapping of a
run config into that dataclass: values are coerced to the field types exactly as other settings are, and an
unknown key fails with a one-line error naming the method, the key, a close match and every valid option with
its help. Defaults live in the dataclass (not in the preset YAML), so ``--set method.options.x=…`` only ever
overrides the options it names.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from typing import Any

from ..errors import RlptuneError


def option(default: Any, help: str):
    """A dataclass field with help text (lists and dicts get a factory)."""
    meta = {"help": help}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def describe_options(cls: type) -> str:
    """``name (default …): help`` for every option of ``cls``, one per line."""
    lines = []
    for f in fields(cls):
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"{f.name} (default {default!r}): {f.metadata.get('help', '')}")
    return "\n".join(lines)


def parse_options(cls: type, values: dict | None, method: str):
    """``cls`` filled from ``values`` (``method.options``), coerced and validated."""
    from ..config import _coerce

    if not is_dataclass(cls):  # pragma: no cover - programming error
        raise TypeError(f"{cls!r} is not a dataclass")
    values = dict(values or {})
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listing = "; ".join(f"{f.name}: {f.metadata.get('help', '')}" for f in fields(cls)) or "none"
            raise RlptuneError(f"method.options: unknown option {key!r} for method {method!r}{hint}; valid options: {listing}")
        kwargs[key] = _coerce(value, hints[key], f"method.options.{key}")
    options = cls(**kwargs)
    check = getattr(options, "validate", None)
    if check is not None:
        check()
    return options


def reject_options(values: dict | None, method: str) -> None:
    if values:
        raise RlptuneError(f"method.options: method {method!r} takes no options, got {', '.join(map(repr, values))}")
