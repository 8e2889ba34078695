"""Per-epoch metric loggers people already read: TensorBoard scalars and a CSV, next to the always-written JSONL.

``make_loggers(["tensorboard", "csv"], run_dir)`` returns one :class:`MetricLogger` that fans each epoch record
(the dict the trainer appends to ``metrics.jsonl``: ``epoch``, ``lr``, ``loss``, ``train_acc``, optional
``val_acc``, extra per-step averages and ``diagnostics``) out to every named logger. Loggers are registered by
name (:func:`register_logger`), so a new one is a class, not a branch.

* ``csv`` — ``metrics.csv``: one row per epoch; columns ``epoch, lr, loss, train_acc, val_acc`` then any other
  numeric fields in name order. The whole file is rewritten atomically each epoch, so a killed run never leaves a
  half row, and a resumed run that logs epoch e again replaces epoch e and everything after it.
* ``tensorboard`` — event files under ``tensorboard/`` (``tensorboard --logdir RUN_DIR``): ``lr``,
  ``loss/train``, ``accuracy/train``, ``accuracy/val``, other numeric fields as ``train/<name>`` and each prompt's
  ``id_k`` / ``effective_rank`` as ``diagnostics/<prompt>/<name>``. ``torch.utils.tensorboard`` (and the
  ``tensorboard`` package behind it) is imported only when this logger is asked for.
"""

from __future__ import annotations

import csv
import difflib
import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rlptune import io as rio
from rlptune.errors import RlptuneError
from rlptune.rundir import METRICS_CSV, TENSORBOARD_DIR

__all__ = ["CsvLogger", "MetricLogger", "TensorBoardLogger", "available_loggers", "make_loggers", "register_logger"]

# the fixed leading CSV columns, in the order a reader expects them
CSV_COLUMNS = ("epoch", "lr", "loss", "train_acc", "val_acc")
_TENSORBOARD_TAGS = {"lr": "lr", "loss": "loss/train", "train_acc": "accuracy/train", "val_acc": "accuracy/val"}


def _number(value: Any) -> int | float | None:
    """A finite int or float (not bool), keeping its type, else None: only numbers are logged as scalars."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(float(value)) else None


class MetricLogger:
    """Receives one record per finished epoch; ``close()`` flushes. The base class logs nothing."""

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Log one epoch's record (``epoch`` is 1-based, as in metrics.jsonl)."""

    def close(self) -> None:
        """Flush and release files; further ``log_epoch`` calls are not expected."""

    def __enter__(self) -> "MetricLogger":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_REGISTRY: dict[str, Callable[[Path], MetricLogger]] = {}


def register_logger(name: str) -> Callable[[type], type]:
    """Class decorator: make a logger available to ``--logger NAME``; the class is built as ``cls(run_dir)``."""

    def wrap(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_loggers() -> list[str]:
    return sorted(_REGISTRY)


class _AllLoggers(MetricLogger):
    """Fans every call out to each logger, in the order they were named."""

    def __init__(self, loggers: Sequence[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_epoch(record)

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()


def make_loggers(names: Sequence[str], run_dir: str | Path) -> MetricLogger:
    """One logger writing to every named backend under ``run_dir`` (no names: a logger that does nothing).

    Unknown names fail at once, before training, with the available names and a did-you-mean.
    """
    run_dir = Path(run_dir)
    wanted = list(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    for name in wanted:
        if name not in _REGISTRY:
            close = difflib.get_close_matches(name, available_loggers(), n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RlptuneError(
                f"--logger: unknown logger {name!r} (expected a comma-separated list of: "
                f"{', '.join(available_loggers())}; metrics.jsonl is always written){hint}"
            )
    return _AllLoggers([_REGISTRY[name](run_dir) for name in wanted])


@register_logger("csv")
class CsvLogger(MetricLogger):
    """``metrics.csv`` for spreadsheets and pandas; rewritten atomically each epoch (small: one row per epoch)."""

    def __init__(self, run_dir: Path, filename: str = METRICS_CSV) -> None:
        self.path = Path(run_dir) / filename
        self.rows: list[dict[str, int | float]] = self._read_existing()

    def _read_existing(self) -> list[dict[str, int | float]]:
        """Rows of a previous (resumed) run's file, so resuming keeps the epochs before the resume point."""
        if not self.path.is_file():
            return []
        try:
            reader = csv.DictReader(io.StringIO(self.path.read_text(encoding="utf-8")))
            rows = [{k: _parse(v) for k, v in row.items() if k and v not in (None, "")} for row in reader]
        except (OSError, ValueError, csv.Error) as exc:
            raise RlptuneError(f"{self.path}: cannot read the existing metrics CSV to continue it ({exc})") from None
        return [row for row in rows if "epoch" in row]

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        row = {key: number for key, value in record.items() if (number := _number(value)) is not None}
        epoch = row.get("epoch")
        if epoch is not None:  # a replayed epoch (resume) replaces itself and everything logged after it
            self.rows = [r for r in self.rows if r.get("epoch", -math.inf) < epoch]
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        extra = sorted({key for row in self.rows for key in row} - set(CSV_COLUMNS))
        columns = [*CSV_COLUMNS, *extra]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for row in self.rows:
            writer.writerow(["" if row.get(c) is None else repr(row[c]) for c in columns])
        rio.write_text(self.path, buffer.getvalue())


def _parse(text: str) -> int | float:
    """A CSV cell back as the number it was written from (ints stay ints: epoch, steps)."""
    try:
        return int(text)
    except ValueError:
        return float(text)


@register_logger("tensorboard")
class TensorBoardLogger(MetricLogger):
    """TensorBoard event files under ``RUN_DIR/tensorboard``, one scalar per metric per epoch."""

    def __init__(self, run_dir: Path, subdir: str = TENSORBOARD_DIR) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RlptuneError(
                "--logger tensorboard: the tensorboard package is not installed (pip install tensorboard)"
            ) from None
        self.log_dir = Path(run_dir) / subdir
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        step = int(record.get("epoch", 0))
        for key, value in record.items():
            number = _number(value)
            if number is None or key == "epoch":
                continue
            self.writer.add_scalar(_TENSORBOARD_TAGS.get(key, f"train/{key}"), number, global_step=step)
        for prompt, parts in _diagnostic_scalars(record.get("diagnostics")).items():
            for name, number in parts.items():
                self.writer.add_scalar(f"diagnostics/{prompt}/{name}", number, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _diagnostic_scalars(diagnostics: Any) -> dict[str, dict[str, float]]:
    """``{prompt: {"id_k": .., "effective_rank": .., "id_k_delta": ..}}`` from a record's ``diagnostics``
    (``{name: {"P": {...}, "delta": {...}}}`` or one ``{"P", "delta"}``)."""
    if not isinstance(diagnostics, Mapping):
        return {}
    named = {"prompt": diagnostics} if "P" in diagnostics else diagnostics
    out: dict[str, dict[str, float]] = {}
    for prompt, parts in named.items():
        if not isinstance(parts, Mapping):
            continue
        scalars: dict[str, float] = {}
        for part, suffix in (("P", ""), ("delta", "_delta")):
            values = parts.get(part)
            if not isinstance(values, Mapping):
                continue
            for key in ("id_k", "effective_rank"):
                number = _number(values.get(key))
                if number is not None:
                    scalars[key + suffix] = number
        if scalars:
            out[str(prompt)] = scalars
    return out
