"""Shared pieces of the loaders: reading small text/JSON files, turning checked entries into
:class:`DatasetSplits`, a seeded stratified split, and listing image files. Public: the methods, the engine and the
CLI check class lists with :func:`check_unique_classnames` and :func:`read_class_list`."""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..errors import RlptuneError
from .items import DatasetSplits, Item
from .paths import PathChecker, normalize_rel

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_TEMPLATE = "a photo of a {}."
DEFAULT_FRACTIONS = (0.5, 0.2, 0.3)

#: File name endings treated as images when rlptune lists a folder itself.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif"}
)

# One entry as the loaders pass it around: (relative path, label, class name, where it came from).
Entry = tuple[str, int, str, str]

log = logging.getLogger(__name__)

#: Names that archive tools and operating systems leave in folders (compared case-insensitively); never images or
#: classes. Every name starting with ``.`` (``._cat.jpg``, ``.DS_Store``, ``.Trashes``, ``.git``) is left out too.
LEFTOVER_NAMES = frozenset(
    name.casefold()
    for name in (
        "__MACOSX",
        ".DS_Store",
        "Thumbs.db",
        "ehthumbs.db",
        "desktop.ini",
        ".Trashes",
        ".Spotlight-V100",
        ".fseventsd",
        ".TemporaryItems",
        "$RECYCLE.BIN",
        "System Volume Information",
        "@eaDir",
        "Icon\r",
    )
)


def is_leftover(name: str) -> bool:
    """A file or folder name that archive tools or operating systems leave behind (or any hidden name)."""
    return name.startswith(".") or name.casefold() in LEFTOVER_NAMES


class Leftovers:
    """The leftovers one loader skipped while walking its folders, reported in one warning line."""

    def __init__(self, base: str | os.PathLike):
        self.base = Path(base)
        self.count = 0
        self.first: str | None = None

    def add(self, path: str | os.PathLike, is_dir: bool = False) -> None:
        if self.first is None:
            try:
                shown = Path(os.path.relpath(path, self.base)).as_posix()
            except ValueError:
                shown = Path(path).as_posix()
            self.first = shown + ("/" if is_dir else "")
        self.count += 1

    def warn(self, root: str | os.PathLike) -> None:
        if self.count:
            log.warning(
                "%s: ignored %d file(s) and folder(s) that archive tools and operating systems leave (__MACOSX, ._*, "
                ".DS_Store, Thumbs.db, desktop.ini, hidden names), first %r",
                root,
                self.count,
                self.first,
            )


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise RlptuneError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise RlptuneError(f"{path}: expected a {what}, found a folder") from None
    except OSError as exc:
        raise RlptuneError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise RlptuneError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def read_json_file(path: str | os.PathLike, what: str = "JSON file") -> object:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RlptuneError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise RlptuneError(f"{path}: JSON nested too deeply") from None


def check_entry(raw: object, source: str | os.PathLike, where: str) -> tuple[str, int, str]:
    """Check one ``[relative path, label, class name]`` entry's types (not yet the path's safety)."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        shown = _short(raw)
        raise RlptuneError(f"{source}: {where}: expected [relative path, label, class name], got {shown}")
    path, label, classname = raw
    if not isinstance(path, str):
        raise RlptuneError(f"{source}: {where}: image path must be a string, got {_short(path)}")
    if isinstance(label, bool) or not isinstance(label, int):
        raise RlptuneError(f"{source}: {where}: label must be an integer, got {_short(label)}")
    if label < 0:
        raise RlptuneError(f"{source}: {where}: label must be >= 0, got {label}")
    if not isinstance(classname, str) or not classname.strip():
        raise RlptuneError(f"{source}: {where}: class name must be a non-empty string, got {_short(classname)}")
    return path, label, classname


def _short(value: object, limit: int = 60) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prompt_key(name: str) -> str:
    """The form a class name takes in a prompt, for telling names apart: case-folded, ``_`` as a space, runs of
    whitespace as one space. Two names with the same key give identical prompts, so a model cannot separate them."""
    return " ".join(name.replace("_", " ").casefold().split())


def check_unique_classnames(names: Sequence[str], source: str | os.PathLike, what: str = "class names") -> None:
    """One-line error listing the names that collide after :func:`prompt_key` (``'red' = 'Red' = 'RED'``)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(prompt_key(name), []).append(name)
    colliding = [group for key, group in groups.items() if len(group) > 1]
    if not colliding:
        return
    shown = "; ".join(
        " = ".join(repr(n) for n in group[:4]) + (" = ..." if len(group) > 4 else "") for group in colliding[:3]
    )
    more = f" and {len(colliding) - 3} more group(s)" if len(colliding) > 3 else ""
    raise RlptuneError(
        f"{source}: {what} collide after prompt normalisation (case, '_' and spaces ignored), so their prompts are "
        f"identical: {shown}{more}; rename or merge them"
    )


def read_class_list(value: str, flag: str = "--classes") -> list[str]:
    """A class list given on the command line: a file with one name per line, or comma-separated names.

    Empty lists, repeated names and names that collide after prompt normalisation are one-line errors; a value
    too long to be a file name is read as a list (never an OS error)."""
    shown = value if len(value) <= 60 else value[:57] + "..."
    try:
        is_file = Path(value).is_file()
    except (OSError, ValueError):  # longer than a file name can be, or a NUL byte
        is_file = False
    if is_file:
        names = [line.strip() for line in read_text(value, "classes file").splitlines() if line.strip()]
    else:
        names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise RlptuneError(f"{flag} {shown!r}: expected a comma-separated list or a file with one class per line")
    repeated = _repeated(names)
    if repeated:
        raise RlptuneError(f"{flag} {shown!r}: class {repeated[0]!r} is listed more than once")
    check_unique_classnames(names, f"{flag} {shown!r}", "classes")
    return names


def _repeated(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def build_splits(
    entries: Mapping[str, Sequence[Entry]],
    *,
    name: str,
    root: str | os.PathLike,
    source: str | os.PathLike,
    template: str = DEFAULT_TEMPLATE,
    check_paths: bool = True,
    check_files: bool = True,
    classnames: Sequence[str] | None = None,
    unique_names: bool = True,
    same_file: Mapping[str, str] | None = None,
) -> DatasetSplits:
    """Turn per-split entries into validated :class:`DatasetSplits`.

    Checks that every label maps to one class name and every class name to one label, that labels run
    ``0..n-1`` without gaps, that every path stays inside ``root`` (``check_paths``) and that every listed image
    exists (``check_files``; one error summarises all missing files). ``classnames`` fixes the class list when the
    caller knows it (every class must still have at least one image). ``unique_names=False`` allows two labels
    to share a class name (ImageNet's list has such pairs in some versions). Then the one rule of every loader
    (:meth:`DatasetSplits.validate`: an image has one label and one split, every class has a training image),
    with each entry's place in ``source`` in the message; ``same_file`` (listed folders) maps paths reached through
    a symlink to the file they reach (checked paths are resolved here).
    """
    label_name: dict[int, tuple[str, str]] = {}
    name_label: dict[str, tuple[int, str]] = {}
    total = 0
    for split in SPLIT_NAMES:
        for _path, label, cname, where in entries.get(split, ()):
            total += 1
            seen = label_name.get(label)
            if seen is None:
                label_name[label] = (cname, where)
            elif seen[0] != cname:
                raise RlptuneError(
                    f"{source}: {where}: label {label} has class name {cname!r} but {seen[1]} gave it {seen[0]!r}"
                )
            other = name_label.get(cname)
            if other is None or not unique_names:
                name_label[cname] = (label, where)
            elif other[0] != label:
                raise RlptuneError(
                    f"{source}: {where}: class name {cname!r} has label {label} but {other[1]} gave it label {other[0]}"
                )
    if total == 0:
        raise RlptuneError(f"{source}: no images listed (train, val and test are all empty)")
    if classnames is not None:
        classnames = list(classnames)
        for label, (cname, where) in label_name.items():
            if label >= len(classnames) or classnames[label] != cname:
                raise RlptuneError(f"{source}: {where}: label {label} / class {cname!r} is not in the class list")
        missing = [c for i, c in enumerate(classnames) if i not in label_name]
        if missing:
            raise RlptuneError(f"{source}: class {missing[0]!r} has no images ({len(missing)} such classes)")
    else:
        n = max(label_name) + 1
        if len(label_name) != n:
            gap = next(i for i in range(n) if i not in label_name)
            raise RlptuneError(
                f"{source}: label {gap} has no images; labels must run 0..{len(label_name) - 1} without gaps "
                f"(largest label found: {n - 1})"
            )
        classnames = [label_name[i][0] for i in range(n)]
    if unique_names:
        check_unique_classnames(classnames, source)

    checker = PathChecker(root, source) if (check_paths or check_files) else None
    out: dict[str, list[Item]] = {}
    places: dict[str, list[str]] = {}
    links: dict[str, str] = dict(same_file or {})
    missing_files: list[tuple[str, str]] = []
    for split in SPLIT_NAMES:
        items = []
        wheres = []
        for path, label, cname, where in entries.get(split, ()):
            if checker is not None:
                path, real = checker.locate(path, where)
                if real is None:
                    if check_files:
                        missing_files.append((where, path))
                elif real != path:
                    links[path] = real
            else:
                path = normalize_rel(path, source, where)
            items.append(Item(path, label, cname))
            wheres.append(where)
        out[split] = items
        places[split] = wheres
    if missing_files:
        where, path = missing_files[0]
        raise RlptuneError(
            f"{source}: {len(missing_files)} of {total} listed images are missing under {root}, first at "
            f"{where}: {path!r}"
        )
    splits = DatasetSplits(name=name, root=Path(root), classnames=classnames, template=template, **out)
    return splits.validate(source, where=places, same_file=links)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        ft, fv, fs = (float(f) for f in fractions)
    except (TypeError, ValueError):
        raise RlptuneError(
            f"split fractions {fractions!r}: expected three numbers (train, val, test) that sum to 1"
        ) from None
    if min(ft, fv, fs) < 0 or ft <= 0 or abs(ft + fv + fs - 1.0) > 1e-6:
        raise RlptuneError(
            f"split fractions {fractions!r}: expected (train, val, test) >= 0 with train > 0, summing to 1"
        )
    return ft, fv, fs


def stratified_split(
    groups: Iterable[tuple[int, Sequence[str]]], fractions: Sequence[float], seed: int
) -> dict[str, list[tuple[str, int]]]:
    """Split each class's paths into train/val/test with one seeded RNG, class by class in the order given.

    Per class (as the CoOp toolkit splits DTD): sort the paths, shuffle them, take ``round(n * train)`` for train
    (at least one), then ``round(n * val)`` for val, the rest for test. Deterministic for a seed.
    """
    ft, fv, _ = check_fractions(fractions)
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLIT_NAMES}
    for label, paths in groups:
        paths = sorted(paths)
        rng.shuffle(paths)
        n = len(paths)
        n_train = max(1, round(n * ft)) if n else 0
        n_val = min(round(n * fv), n - n_train)
        out["train"].extend((p, label) for p in paths[:n_train])
        out["val"].extend((p, label) for p in paths[n_train : n_train + n_val])
        out["test"].extend((p, label) for p in paths[n_train + n_val :])
    return out


def list_images(
    folder: Path,
    base: Path,
    *,
    recursive: bool = True,
    leftovers: Leftovers | None = None,
    same_file: dict[str, str] | None = None,
) -> list[str]:
    """Image files under ``folder`` as sorted POSIX paths relative to ``base``.

    Leftovers of archive tools and operating systems (:func:`is_leftover`: ``__MACOSX/``, ``._*``, ``.DS_Store``,
    hidden names) are skipped and counted in ``leftovers``. Symlinked folders below ``folder`` are not followed.
    ``same_file`` receives, for each listed path that reaches its file through a symlink, the path of that file
    (relative to the resolved ``base`` when inside it), so that two paths to one file can be told apart from two
    files.
    """
    found: list[str] = []
    real_base = os.path.realpath(base)
    prefix = real_base if real_base.endswith(os.sep) else real_base + os.sep
    pending = [str(folder)]
    try:
        while pending:  # depth first, in name order (the first leftover named in the warning is always the same)
            current = pending.pop()
            real_dir = os.path.realpath(current)
            plain_dir = os.path.normpath(os.path.join(real_base, os.path.relpath(current, base)))
            with os.scandir(current) as scan:
                entries = sorted(scan, key=lambda e: e.name)
            below = []
            for entry in entries:
                if is_leftover(entry.name):
                    if leftovers is not None:
                        leftovers.add(entry.path, entry.is_dir(follow_symlinks=False))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    below.append(entry.path)
                    continue
                if os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS or not entry.is_file():
                    continue
                rel = Path(os.path.relpath(entry.path, base)).as_posix()
                found.append(rel)
                if same_file is not None and (entry.is_symlink() or real_dir != plain_dir):
                    real = os.path.realpath(entry.path)
                    key = real[len(prefix) :].replace(os.sep, "/") if real.startswith(prefix) else real
                    if key != rel:
                        same_file[rel] = key
            if recursive:
                pending.extend(reversed(below))
    except OSError as exc:
        raise RlptuneError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None
    return sorted(found)


def list_subdirs(folder: Path, leftovers: Leftovers | None = None) -> list[str]:
    """The sub-folder names of ``folder`` (symlinks to folders included), sorted; leftovers of archive tools and
    operating systems are skipped and counted in ``leftovers``."""
    try:
        names = []
        with os.scandir(folder) as scan:
            for entry in sorted(scan, key=lambda e: e.name):
                if is_leftover(entry.name):
                    if leftovers is not None:
                        leftovers.add(entry.path, entry.is_dir())
                elif entry.is_dir():
                    names.append(entry.name)
        return sorted(names)
    except OSError as exc:
        raise RlptuneError(f"{folder}: cannot list folder ({exc.strerror or exc})") from None


def read_name_list(path: str | os.PathLike) -> list[str] | dict[int, str]:
    """A classnames file: ``.json`` (a list of names, or ``{"<int label>": name}``) or text, one name per line."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json_file(path, "classnames file")
        if isinstance(data, list) and data and all(isinstance(x, str) and x.strip() for x in data):
            return [x.strip() for x in data]
        if isinstance(data, dict) and data:
            out: dict[int, str] = {}
            for key, value in data.items():
                try:
                    index = int(key)
                except ValueError:
                    index = -1
                if index < 0 or not isinstance(value, str) or not value.strip():
                    raise RlptuneError(
                        f"{path}: entry {key!r}: expected a non-negative integer key and a non-empty class name"
                    )
                out[index] = value.strip()
            return out
        raise RlptuneError(f"{path}: expected a JSON list of class names or an object {{label: class name}}")
    lines = read_text(path, "classnames file").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise RlptuneError(f"{path}: line {number} is empty; expected one class name per line")
        names.append(line.strip())
    if not names:
        raise RlptuneError(f"{path}: classnames file is empty")
    return names


def read_folder_names(path: str | os.PathLike) -> dict[str, str]:
    """``<folder> <class name>`` per line (ImageNet's ``classnames.txt``) or a JSON object folder -> name."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json_file(path, "classnames file")
        if not isinstance(data, dict) or not all(isinstance(v, str) and v.strip() for v in data.values()):
            raise RlptuneError(f"{path}: expected a JSON object {{folder name: class name}}")
        return {str(k): v.strip() for k, v in data.items()}
    mapping: dict[str, str] = {}
    for number, line in enumerate(read_text(path, "classnames file").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(" ")
        if len(parts) < 2 or not " ".join(parts[1:]).strip():
            raise RlptuneError(f"{path}: line {number}: expected '<folder> <class name>', got {line.strip()!r}")
        if parts[0] in mapping:
            raise RlptuneError(f"{path}: line {number}: folder {parts[0]!r} is listed twice")
        mapping[parts[0]] = " ".join(parts[1:]).strip()
    if not mapping:
        raise RlptuneError(f"{path}: classnames file is empty")
    return mapping
