"""Custom data: a split JSON in the CoOp format, or a CSV of (path, label).

Split JSON (the format of CoOp's ``split_zhou_<Name>.json``)::

    {"train": [["cat/001.jpg", 0, "cat"], ...], "val": [...], "test": [...]}

Keys other than ``train``/``val``/``test`` are an error; a missing key is an empty split. Paths are relative to
the dataset root (by default the JSON file's folder), labels run ``0..n-1`` and each label has exactly one class
name.

CSV: a header row with at least ``path`` and ``label`` columns and optionally ``split`` (``train``/``val``/
``test``); each of them once (a second ``label`` column is an error, never silently ignored). ``label`` is either a
class name, or an integer label (ASCII digits with an optional sign: ``-1``, ``+2``, ``007`` = ``7``) - then a
classnames file (one name per line, or JSON) names the classes; without one the integers themselves are used as
names, with a warning. Without a ``split`` column the rows are split per class with a seeded stratified split
(default 50/20/30, as the CoOp toolkit splits DTD).

Both formats obey the one rule of every loader (``DatasetSplits.validate``): an image (after path normalisation,
and through symlinks) is listed under one label and in one split, and every class has a training image.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import RlptuneError
from .common import (
    DEFAULT_FRACTIONS,
    DEFAULT_TEMPLATE,
    SPLIT_NAMES,
    Entry,
    build_splits,
    check_entry,
    read_json_file,
    read_name_list,
    read_text,
    stratified_split,
)
from .items import DatasetSplits

log = logging.getLogger(__name__)


def parse_split_object(obj: object, source: str | os.PathLike) -> dict[str, list[Entry]]:
    """Check the structure and entry types of a loaded split JSON object; return entries per split."""
    if not isinstance(obj, dict):
        raise RlptuneError(f"{source}: expected a JSON object with keys train, val, test; got a {type(obj).__name__}")
    unknown = [k for k in obj if k not in SPLIT_NAMES]
    if unknown:
        raise RlptuneError(
            f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected only train, val, test"
        )
    out: dict[str, list[Entry]] = {}
    for split in SPLIT_NAMES:
        raw = obj.get(split, [])
        if not isinstance(raw, list):
            raise RlptuneError(f"{source}: {split!r} must be a list of entries, got a {type(raw).__name__}")
        entries = []
        for i, value in enumerate(raw):
            where = f"{split}[{i}]"
            path, label, classname = check_entry(value, source, where)
            entries.append((path, label, classname, where))
        out[split] = entries
    return out


def load_split_json(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    check_files: bool = True,
) -> DatasetSplits:
    """Load a CoOp-format split JSON; item paths are relative to ``root`` (default: the JSON file's folder)."""
    path = Path(path)
    obj = read_json_file(path, "split file")
    entries = parse_split_object(obj, path)
    return build_splits(
        entries,
        name=name or path.stem,
        root=Path(root) if root is not None else path.parent,
        source=path,
        template=template,
        check_files=check_files,
    )


def load_csv(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    classnames: str | os.PathLike | Sequence[str] | Mapping[int, str] | None = None,
    name: str | None = None,
    template: str = DEFAULT_TEMPLATE,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 1,
    check_files: bool = True,
) -> DatasetSplits:
    """Load a CSV with ``path``, ``label`` and optional ``split`` columns (see the module docstring).

    ``classnames``: a file (text, one name per line; or JSON list / ``{label: name}``), a list, or a mapping from
    integer label to name. With a list, its order is the label order and every class needs at least one image.
    """
    path = Path(path)
    text = read_text(path, "CSV file")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as exc:
        raise RlptuneError(f"{path}: not a readable CSV ({exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise RlptuneError(f"{path}: CSV file is empty; expected a header row with columns path,label[,split]")
    header = [c.strip().lower() for c in rows[0]]
    columns: dict[str, int] = {}
    for index, column in enumerate(header):
        if column not in ("path", "label", "split"):
            continue
        if column in columns:
            first = columns[column]
            raise RlptuneError(
                f"{path}: header has two {column!r} columns ({rows[0][first].strip()!r} in column {first + 1} and "
                f"{rows[0][index].strip()!r} in column {index + 1}); keep one, the other would be ignored"
            )
        columns[column] = index
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        found = ", ".join(repr(c) for c in rows[0]) or "none"
        raise RlptuneError(
            f"{path}: missing column(s) {', '.join(missing)}; found columns {found}; expected path,label[,split]"
        )

    records: list[tuple[str, str, str | None, str]] = []
    for number, row in enumerate(rows[1:], 2):
        where = f"line {number}"
        if len(row) != len(header):
            raise RlptuneError(f"{path}: {where}: expected {len(header)} fields, got {len(row)}")
        img = row[columns["path"]].strip()
        label = row[columns["label"]].strip()
        if not img:
            raise RlptuneError(f"{path}: {where}: empty path")
        if not label:
            raise RlptuneError(f"{path}: {where}: empty label")
        split = None
        if "split" in columns:
            split = row[columns["split"]].strip().lower()
            if split not in SPLIT_NAMES:
                raise RlptuneError(f"{path}: {where}: split {split!r} is not one of train, val, test")
        records.append((img, label, split, where))
    if not records:
        raise RlptuneError(f"{path}: CSV has a header but no rows")

    labels_seen: dict[str, tuple[str, str]] = {}  # image -> (label, line): an image has one label
    for img, label, _split, where in records:
        first = labels_seen.setdefault(img, (label, where))
        if first[0] != label:
            raise RlptuneError(
                f"{path}: {where}: image {img!r} is labelled {label!r} but {first[1]} labels it {first[0]!r}; an image "
                f"has one label"
            )
    names = _resolve_classnames(classnames)
    labelled = _label_records(records, names, path, classnames)
    classlist = [labelled["classes"][i] for i in range(len(labelled["classes"]))]

    entries: dict[str, list[Entry]] = {s: [] for s in SPLIT_NAMES}
    if "split" in columns:
        for (img, _lab, split, where), label in zip(records, labelled["labels"]):
            entries[split].append((img, label, classlist[label], where))
    else:
        where_of = {}
        groups: dict[int, list[str]] = {}
        for (img, _lab, _split, where), label in zip(records, labelled["labels"]):
            groups.setdefault(label, []).append(img)
            where_of.setdefault((img, label), where)
        drawn = stratified_split(sorted(groups.items()), fractions, seed)
        for split in SPLIT_NAMES:
            entries[split] = [(img, label, classlist[label], where_of[img, label]) for img, label in drawn[split]]
    return build_splits(
        entries,
        name=name or path.stem,
        root=Path(root) if root is not None else path.parent,
        source=path,
        template=template,
        check_files=check_files,
        classnames=classlist,
    )


def _resolve_classnames(classnames: object) -> list[str] | dict[int, str] | None:
    if classnames is None:
        return None
    if isinstance(classnames, (str, os.PathLike)):
        return read_name_list(classnames)
    if isinstance(classnames, Mapping):
        try:
            return {int(k): str(v) for k, v in classnames.items()}
        except (TypeError, ValueError):
            raise RlptuneError("classnames mapping: expected integer labels as keys") from None
    if isinstance(classnames, Sequence):
        return [str(c) for c in classnames]
    raise RlptuneError(f"classnames: expected a file, a list or a mapping, got {type(classnames).__name__}")


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _as_int(text: str) -> int | None:
    """The integer a label spells (``-1``, ``+2``, ``007``: one rule for every sign and leading zeros), or None.

    Only ASCII digits count: ``int()`` would also read ``'1_0'`` and Arabic-Indic digits, which are class names."""
    return int(text) if _INTEGER.fullmatch(text) else None


def _label_records(records, names, path, names_source) -> dict:
    ints = [_as_int(lab) for _img, lab, _s, _w in records]
    use_ints = all(v is not None for v in ints) and not (
        isinstance(names, list) and any(lab in names for _i, lab, _s, _w in records)
    )
    src = names_source if isinstance(names_source, (str, os.PathLike)) else "classnames"
    if isinstance(names, list):
        if use_ints:
            for (_img, lab, _s, where), value in zip(records, ints):
                if not 0 <= value < len(names):
                    raise RlptuneError(
                        f"{path}: {where}: label {lab} is out of range for {src} ({len(names)} class names)"
                    )
            return {"labels": ints, "classes": dict(enumerate(names))}
        index = {n: i for i, n in enumerate(names)}
        labels = []
        for _img, lab, _s, where in records:
            if lab not in index:
                raise RlptuneError(f"{path}: {where}: class {lab!r} is not in {src}")
            labels.append(index[lab])
        return {"labels": labels, "classes": dict(enumerate(names))}
    if use_ints:
        present = sorted(set(ints))
        if isinstance(names, dict):
            for (_img, _lab, _s, where), value in zip(records, ints):
                if value not in names:
                    raise RlptuneError(f"{path}: {where}: label {value} has no name in {src}")
            classes = [names[v] for v in present]
        else:
            classes = [str(v) for v in present]
            spellings: dict[int, set[str]] = {}
            for (_img, lab, _s, _w), value in zip(records, ints):
                spellings.setdefault(value, set()).add(lab)
            merged = next((sorted(v) for v in spellings.values() if len(v) > 1), None)
            log.warning(
                "%s: integer labels without a classnames file; the numbers are used as class names (%s)%s",
                path,
                ", ".join(repr(c) for c in classes[:5]) + (", ..." if len(classes) > 5 else ""),
                f"; {' and '.join(repr(m) for m in merged[:3])} are one class" if merged else "",
            )
        remap = {v: i for i, v in enumerate(present)}
        return {"labels": [remap[v] for v in ints], "classes": dict(enumerate(classes))}
    if isinstance(names, dict):
        raise RlptuneError(f"{path}: labels are class names, but {src} maps integer labels to names")
    classes = sorted({lab for _img, lab, _s, _w in records})
    index = {n: i for i, n in enumerate(classes)}
    return {"labels": [index[lab] for _img, lab, _s, _w in records], "classes": dict(enumerate(classes))}
