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
import functools
import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable

import yaml

from .errors import RlptuneError

#: The largest finite float32: settings end up in float32 tensors, where anything larger is inf.
FLOAT32_MAX = 3.4028234663852886e38

# Upper bounds of the counts (inclusive; docs/RELIABILITY.md lists them per field). Far above any real run, low
# enough that a slip (an extra digit, ``1.0e+32``) is one line before anything is allocated or trains for years.
MAX_EPOCHS = 100_000  # epochs, warm-up epochs, validation / checkpoint intervals
MAX_STEPS = 100_000_000  # optimisation steps (train.iterations)
MAX_BATCH = 1_000_000  # images per batch or per text-tower call
MAX_SHOTS = 1_000_000  # images per class
MAX_TOKENS = 4096  # prompt tokens, ranks, bottleneck ratios (CLIP's text context is 77, widths under 2,048)
MAX_LAYERS = 1024  # prompted layers of a tower
MAX_CLASSES = 10_000_000  # class chunks, top-k labels
MAX_VIEWS = 10_000  # cached augmented views
MAX_WORKERS = 1024  # image-loading processes
MAX_ITERATIONS = 1_000_000  # solver iterations
MAX_SEED = 2**63 - 1  # seeds go to torch.manual_seed (int64)


@functools.lru_cache(maxsize=None)
def type_hints(cls: type) -> dict[str, Any]:
    """``typing.get_type_hints(cls)``, once per class (it compiles every string annotation on each call, and
    settings are resolved field by field)."""
    return typing.get_type_hints(cls)


def option(
    default: Any,
    help: str,
    low: int | float | None = None,
    high: int | float | None = None,
    choices: tuple | None = None,
    shared: str | None = None,
):
    """A dataclass field with help text (lists and dicts get a factory); ``low``/``high`` bound a number (inclusive,
    checked by :func:`check_ranges` whatever the value's spelling); ``choices`` lists the values a text may take;
    ``shared`` names the knob several methods declare (the ``*_option()`` helpers below), which the former
    spelling ``method.<name>`` sets."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "shared": shared}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class NoOptions:
    """Methods without options of their own."""


def parse_options(
    cls: type,
    values: dict | None,
    method: str,
    where: str = "method.options",
    owner: str = "method",
    field_prefix: str | None = None,
):
    """``cls`` filled from ``values`` (``method.options``), coerced and validated.

    ``where`` / ``owner`` name the mapping and what declares it in messages (a prompt kind's options:
    ``prompt.options``, ``prompt kind``); ``field_prefix`` names each option in value and bound messages (default
    ``where``; a prompt kind's options keep their short names, ``prompt.rank``)."""
    if not is_dataclass(cls):  # pragma: no cover - programming error
        raise TypeError(f"{cls!r} is not a dataclass")
    prefix = where if field_prefix is None else field_prefix
    if isinstance(values, cls):
        values = dataclasses.asdict(values)
    values = dict(values or {})
    hints = type_hints(cls)
    valid = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            if not valid:
                raise RlptuneError(f"{where}: {owner} {method!r} takes no options, got {key!r}")
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.4)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RlptuneError(
                f"{where}: unknown option {key!r} for {owner} {method!r}{hint}; valid options: {', '.join(valid)}"
            )
        kwargs[key] = coerce(value, hints[key], f"{prefix}.{key}")
        choices = next(f.metadata.get("choices") for f in fields(cls) if f.name == key)
        if choices and kwargs[key] not in choices:
            raise RlptuneError(f"{prefix}.{key}: expected one of {', '.join(choices)}, got {kwargs[key]!r}")
    options = cls(**kwargs)
    settle_numbers(options, prefix)  # defaults and values built in Python get what YAML and flags get
    check = getattr(options, "validate", None)  # optional by design: most options need no cross-field check
    if check is not None:
        check()
    check_ranges(options, prefix)
    return options


def parse_kind_options(cls: type, values: dict | None, kind: str):
    """A prompt kind's options (``prompt.options``) as ``cls``: each is named ``prompt.<option>`` in messages, the
    short spelling users type (``prompt.rank must be >= 1``), whichever spelling gave it."""
    return parse_options(cls, values, kind, where="prompt.options", owner="prompt kind", field_prefix="prompt")


def options_dict(options: Any) -> dict[str, Any]:
    """Every option with its value, JSON/YAML-ready (what config.yaml records)."""
    return dataclasses.asdict(options)


def option_fields(cls: type) -> list[tuple[str, Any, str, Any]]:
    """(name, default, help, type) of every option of ``cls`` (for flags and `rlptune methods`)."""
    hints = type_hints(cls)
    out = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, default, f.metadata.get("help", ""), hints[f.name]))
    return out


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or a command-line string) to the field's type, or fail naming the field.

    A number means the same whatever its spelling and route: text (a flag, a quoted YAML value) is first read as
    :func:`read_setting_text` reads a YAML file or ``--set`` value, then as Python reads a number ('1e3', 'NaN',
    '-Infinity'), so ``epochs: 1.0e+3``, ``--set train.epochs=1e3`` and ``--epochs 1_000`` are all 1000, and
    ``nan``/``inf`` are refused in every spelling (ranges are checked by :func:`check_ranges`).
    """
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        if inner in (int, float):  # '~', 'null', ' none ' unset a number whatever the route
            settled = _settled_text(value) if isinstance(value, str) else value
            if settled is None or (isinstance(settled, str) and settled.strip().lower() in ("none", "null", "")):
                return None
        elif value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return coerce(value, inner, where)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise RlptuneError(f"{where}: expected true or false, got {shown(value)}")
    if annotation is int:
        return _integer(value, where)
    if annotation is float:
        return _real(value, where)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise RlptuneError(f"{where}: expected a string, got {type(value).__name__}")
        return str(value)
    if annotation is list or origin is list:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, (list, tuple)):
            raise RlptuneError(f"{where}: expected a list, got {shown(value)}")
        check_plain(value, where)
        return [str(v) if not isinstance(v, (int, float)) else v for v in value]
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise RlptuneError(f"{where}: expected a mapping, got {shown(value)}")
        check_plain(value, where)
        return dict(value)
    return value


def int_flag(flag: str, low: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for an integer flag that reads its text as a settings field does (:func:`coerce`):
    ``3``, ``3.0``, ``3e0`` and ``1_000`` mean the same on every route, and a bad one raises :class:`RlptuneError`
    (one ``rlptune: error:`` line naming the flag), never argparse's usage message."""

    def read(text: str) -> int:
        value = coerce(text, int, flag)
        if low is not None and value < low:
            raise RlptuneError(f"{flag} must be >= {low}, got {value}")
        return value

    read.__name__ = "integer"
    return read


class SettingsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that YAML 1.1's surprising integers stay text: a leading zero (``017`` is 15 in
    YAML 1.1, 17 to everyone else), base 60 (``1:30`` is 90) and integers too long to convert. A number field then
    reads the text as a decimal (17) or refuses it in one line, the same for a file, ``--set`` and a flag."""


def _yaml_int(loader: SettingsLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    digits = str(text).replace("_", "").lstrip("+-")
    if ":" in digits or (len(digits) > 1 and digits[0] == "0" and digits[1] not in "xXbB"):
        return text
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:  # more digits than Python converts (4300)
        return text


def _yaml_float(loader: SettingsLoader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    return text if ":" in str(text) else yaml.SafeLoader.construct_yaml_float(loader, node)


SettingsLoader.add_constructor("tag:yaml.org,2002:int", _yaml_int)
SettingsLoader.add_constructor("tag:yaml.org,2002:float", _yaml_float)


def read_setting_text(raw: str) -> Any:
    """A ``--set``/``--grid`` value (or a flag's text) as a YAML file would read it; unparsable text stays text."""
    try:
        return yaml.load(raw, Loader=SettingsLoader)  # noqa: S506 - a SafeLoader subclass
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError, TypeError):
        return raw


def _settled_text(value: Any) -> Any:
    """Text read as YAML until it stops changing (``"'7'"`` -> ``'7'`` -> 7), so a value quoted once more on one
    route than on another still means the same."""
    for _ in range(8):
        if not isinstance(value, str):
            return value
        read = read_setting_text(value)
        if isinstance(read, str) and read == value:
            return value
        value = read
    return value


def _python_number(text: str) -> int | float | None:
    """Text YAML does not read as a number, read as Python would ('1e3', '1.0e3', 'NaN', '-Infinity'); ASCII only."""
    text = text.strip()
    if not text or not text.isascii():
        return None
    try:
        return int(text, 10)
    except ValueError:
        pass
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


#: Integers beyond this many bits are refused before anything formats or compares them (a 5,000-digit count).
_MAX_INT_BITS = 1000


def _integer(original: Any, where: str) -> int:
    value = _settled_text(original) if isinstance(original, str) else original
    if isinstance(value, str):
        value = _python_number(value)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if value.bit_length() > _MAX_INT_BITS:
            raise RlptuneError(f"{where}: expected an integer of at most 300 digits, got {shown(original)}")
        return value
    raise RlptuneError(f"{where}: expected an integer, got {shown(original)}")


def _real(original: Any, where: str) -> float:
    value = _settled_text(original) if isinstance(original, str) else original
    if isinstance(value, str):
        value = _python_number(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):
            raise RlptuneError(f"{where}: expected a finite number, got {shown(original)}")
        return number
    raise RlptuneError(f"{where}: expected a number, got {shown(original)}")


def shown(value: Any) -> str:
    """A value for a one-line message: long text is cut, huge integers are given by their size, never in full."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() <= 53:
            return str(value)
        if value.bit_length() <= _MAX_INT_BITS:
            return f"{float(value):.6g}"
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    if isinstance(value, float):
        return repr(value)
    text = repr(value)
    if len(text) <= 60:
        return text
    if isinstance(value, str):
        return f"{value[:20]!r}… ({len(value)} characters)"
    return f"{text[:50]}…"


def numeric_type(annotation: Any) -> type | None:
    """int or float for a number field (``Optional`` ones included), else None."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Union and len(args) == 1:
        annotation = args[0]
    return annotation if annotation in (int, float) else None


def settle_numbers(obj: Any, prefix: str) -> None:
    """Every number field of the dataclass ``obj`` coerced in place: a value set in Python (``epochs=1e3``,
    ``lr="nan"``) is read exactly as the same value from YAML or a flag."""
    hints = type_hints(type(obj))
    for f in fields(obj):
        if numeric_type(hints[f.name]) is not None:
            object.__setattr__(obj, f.name, coerce(getattr(obj, f.name), hints[f.name], f"{prefix}.{f.name}"))


def check_ranges(obj: Any, prefix: str) -> None:
    """The declared bounds (field metadata ``low``/``high``) of every number field of ``obj``, and float32's range
    for every float (what the settings become in the tensors); one line naming the field."""
    hints = type_hints(type(obj))
    for f in fields(obj):
        kind = numeric_type(hints[f.name])
        value = getattr(obj, f.name)
        if kind is None or value is None:
            continue
        where = f"{prefix}.{f.name}"
        if kind is float and abs(value) > FLOAT32_MAX:
            raise RlptuneError(f"{where} {value:g} is beyond float32's range")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if low is not None and value < low:
            raise RlptuneError(f"{where} must be >= {low}, got {shown(value)}")
        if high is not None and value > high:
            raise RlptuneError(f"{where} must be <= {high}, got {shown(value)}")


def check_template(template: Any, where: str) -> str:
    """A class-prompt template must be a string with one ``{}`` for the class name and nothing else to fill."""
    if not isinstance(template, str) or "{}" not in template:
        raise RlptuneError(
            f"{where}: template {template!r} must contain {{}} where the class name goes, e.g. 'a photo of a {{}}.'"
        )
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError):
        raise RlptuneError(
            f"{where}: template {template!r} has braces other than one {{}} for the class name (write {{{{ }}}} for a literal brace)"
        ) from None
    return template


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
        raise RlptuneError(
            f"{where}: expected a plain value (text, number, true/false, list), got {type(value).__name__}"
        )


# Option fields that several methods declare, each method the ones it honours (a method that does not declare one
# refuses it: nothing is silently ignored). Until 0.2 they were ``method.*`` settings every method carried;
# :mod:`rlptune.config` still reads that spelling, and their flags (``--csc``, ``--text-chunk`` …) stay.


def class_specific_option():
    return option(
        False, "one context per class (CoOp's CSC); cannot transfer to unseen classes", shared="class_specific"
    )


def class_token_position_option():
    return option(
        "end",
        "where the class name goes: end | middle | front",
        choices=("end", "middle", "front"),
        shared="class_token_position",
    )


def text_chunk_option():
    return option(
        0,
        "encode class prompts in chunks of this many classes (0 = all at once) to bound memory",
        low=0,
        high=MAX_CLASSES,
        shared="text_chunk",
    )


def checkpoint_text_option():
    return option(
        False, "activation checkpointing in the text tower (less memory, more compute)", shared="checkpoint_text"
    )


def shared_prefix_option():
    return option(
        True,
        "encode the start token + shared context once per step and only each class's own tokens per class "
        "(prefix caching; exact; used when the class token is at the end and the context is shared)",
        shared="shared_prefix",
    )


def templates_option():
    return option(["a photo of a {}."], "zero-shot templates ({} = class name); several = ensemble", shared="templates")


def use_dataset_template_option():
    return option(False, "zero-shot: use the dataset's hand-crafted template instead", shared="use_dataset_template")
