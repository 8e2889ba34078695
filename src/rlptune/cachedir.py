"""The cache folder: what it holds, the bound on its feature entries, and clearing it (``rlptune cache``).

What rlptune keeps under the cache root ($RLPTUNE_CACHE, ~/.cache/rlptune, or ``train.cache_dir``):

- ``features/KEY.safetensors`` + ``KEY.json`` (KEY = 32 hex digits): the image features of one item list under one
  backbone. View 0 is the centre crop (kind ``features``), view v > 0 a seeded random crop (kind ``views``).
- ``locks/KEY.lock``: each entry's lock; ``locks/space.lock``: serialises writes against the bound.
- ``micro/WORLD/DATASET/``: rendered micro-suite images (kind ``micro``; a ``COMPLETE`` stamp says they are whole).
- ``content-hashes.json``: the memoised sha256 of image files (kind ``memo``).
- Leftovers: temporary files of interrupted writes, lock files of entries no longer there, a sidecar whose tensor
  file was removed, half-rendered micro datasets.

Few-shot draws are not cached here: each run folder keeps its own (``few_shot.json``).

**The bound** (``cache.max_gb``) covers the feature entries (centre-crop features and views), the part that grows
with every sweep. Recency is an entry's modification time, set when it is written and touched (one ``utime``) on
every read, so eviction removes the least recently *used* entry first. A new entry is written under
``space.lock`` only after least-recently-used entries were evicted until it fits, so the complete entries never
exceed the bound, not even for a moment, however many processes write; an entry that cannot fit (larger than the
bound, or the room is held by entries in use) is not written at all and the run goes on without caching it.

**Concurrency** reuses the per-key locks: a reader holds its entry's lock shared while it reads and touches it, a
writer holds it exclusively while it encodes and writes. Eviction and ``clear`` take an entry's lock without
waiting and skip entries someone holds, so an entry being read or written is never removed. They delete the tensor
file first (readers go by it alone, so a reader finds either the whole entry or none), then the sidecar, then the
lock file while still holding it; whoever locks checks afterwards that the lock file it holds is still the one at
the path (same inode), and retries on the new one otherwise.

**Safety**: deletion goes by name relative to a handle on the cache's own folders opened with ``O_NOFOLLOW``, so it
never leaves the cache folder and never follows a symbolic link (a linked sub-folder is neither evicted from nor
cleared). Only names rlptune writes are deleted; anything else is foreign and left alone (``info`` counts it).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import math
import os
import re
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from . import io
from .errors import RlptuneError

log = logging.getLogger(__name__)

#: Sizes are decimal: 1 GB = 10**9 bytes (``cache.max_gb``, ``cache.memory_gb``, what ``info`` prints).
GB = 10**9
#: Default bound: one ImageNet-scale base-to-new sweep's views take ~5 GB for a 512-wide backbone (ViT-B/16) and
#: ~7.4 GB for a 768-wide one (ViT-L/14); 20 GB keeps both, with their centre-crop features, side by side.
DEFAULT_MAX_GB = 20.0
#: Default bound of the in-memory view store (``cache.views=memory``), per process.
DEFAULT_MEMORY_GB = 2.0

FEATURES, LOCKS, MICRO, MEMO, SPACE_LOCK = "features", "locks", "micro", "content-hashes.json", "space.lock"
KINDS = ("features", "views", "micro", "memo", "leftovers")
KIND_TITLES = {
    "features": "centre-crop features",
    "views": "views (random crops)",
    "micro": "micro-suite images",
    "memo": "content-hash memo",
    "leftovers": "leftovers (interrupted writes, stale locks)",
}
#: Temporary files and folders without a lock to ask are leftovers only once this old (a write may be under way).
STALE_SECONDS = 3600

_ENTRY = re.compile(r"^([0-9a-f]{32})\.safetensors$")
_SIDECAR = re.compile(r"^([0-9a-f]{32})\.json$")
_ENTRY_TMP = re.compile(r"^\.([0-9a-f]{32})\.(?:safetensors|json)\.[A-Za-z0-9_]+\.tmp$")
_LOCK = re.compile(r"^([0-9a-f]{32})\.lock$")
_MEMO_TMP = re.compile(r"^\.content-hashes\.json\.[A-Za-z0-9_]+\.tmp$")
_WORLD = re.compile(r"^w\d+$")
_MICRO_FILE = re.compile(r"^(?:(?:train|val|test)/\d{2,}/\d{3,}\.png|classnames\.txt|COMPLETE)$")
_MICRO_TMP = re.compile(r"^\.(micro[A-Za-z0-9_-]*)\.[A-Za-z0-9_]+$")
_MICRO_STALE = re.compile(r"^\.(micro[A-Za-z0-9_-]*)\.stale\.[A-Za-z0-9_]+$")

_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


# -- locks ---------------------------------------------------------------------------------------------------------


def _acquire(name: str, dir_fd: int | None, mode: int, required: bool, where: Path) -> int | None:
    """An fd holding ``flock(mode)`` on the lock file ``name`` that is still the one at that name, or None."""
    while True:
        try:
            fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666, dir_fd=dir_fd)
        except OSError as exc:
            try:  # a read-only cache: an existing lock file can still be locked
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
            except OSError:
                if required:
                    raise RlptuneError(io.os_error_line(exc, where, "create the lock file")) from None
                return None
        try:
            fcntl.flock(fd, mode)
        except OSError as exc:
            os.close(fd)
            if isinstance(exc, BlockingIOError) or not required:
                return None
            raise RlptuneError(io.os_error_line(exc, where, "lock")) from None
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            now = None
        held = os.fstat(fd)
        if now is not None and (now.st_ino, now.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)  # the lock file was removed with its entry while we waited: lock the one there now


@contextlib.contextmanager
def entry_lock(
    folder: str | os.PathLike | int,
    name: str,
    *,
    shared: bool = False,
    wait: bool = True,
    required: bool = True,
    where: Path | None = None,
) -> Iterator[bool]:
    """Hold the lock file ``folder/name`` (``folder`` a path or an open folder fd) for a with-block; yields whether
    it is held. ``wait=False`` gives up at once if someone holds it; ``required=False`` yields False instead of
    raising when the lock cannot be had at all (a read-only cache folder). ``where`` names it in errors."""
    if isinstance(folder, int):
        dir_fd, where, target = folder, where or Path(name), name
    else:
        dir_fd, where = None, Path(folder) / name
        target = str(where)
    mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB)
    fd = _acquire(target, dir_fd, mode, required, where)
    try:
        yield fd is not None
    finally:
        if fd is not None:
            os.close(fd)


def lock_path(root: Path, key: str) -> tuple[Path, str]:
    """(folder, name) of the lock of entry ``key``."""
    return root / LOCKS, f"{key}.lock"


def touch(path: Path) -> None:
    """Mark an entry as used now (its recency for eviction); a read-only cache just keeps its old time."""
    try:
        os.utime(path)
    except OSError:
        pass


# -- folder handles ------------------------------------------------------------------------------------------------


def _open_folder(name: str | os.PathLike, dir_fd: int | None = None, follow: bool = False) -> int | None:
    """An fd on a folder (``O_NOFOLLOW`` unless ``follow``), or None when it is absent, a file or a link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | (0 if follow else os.O_NOFOLLOW)
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except OSError:
        return None


@contextlib.contextmanager
def _folder(name: str | os.PathLike, dir_fd: int | None = None, follow: bool = False) -> Iterator[int | None]:
    fd = _open_folder(name, dir_fd, follow)
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def _unlink(name: str, dir_fd: int) -> int:
    """Remove the regular file ``name`` in the folder ``dir_fd`` (never a link's target); the bytes it freed."""
    st = _lstat(name, dir_fd)
    if st is None or not stat.S_ISREG(st.st_mode):
        return 0
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return 0
    return st.st_size


# -- the bound -----------------------------------------------------------------------------------------------------


def _entry_sizes(features_fd: int) -> dict[str, tuple[int, int]]:
    """key -> (bytes of tensor file + sidecar, mtime_ns of the tensor file) of every complete entry."""
    out: dict[str, tuple[int, int]] = {}
    names = set(os.listdir(features_fd))
    for name in names:
        match = _ENTRY.match(name)
        st = _lstat(name, features_fd) if match else None
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        size = st.st_size
        side = _lstat(f"{match.group(1)}.json", features_fd) if f"{match.group(1)}.json" in names else None
        if side is not None and stat.S_ISREG(side.st_mode):
            size += side.st_size
        out[match.group(1)] = (size, st.st_mtime_ns)
    return out


def _remove_entry(features_fd: int, locks_fd: int, key: str, older_than_ns: int | None = None) -> int | None:
    """Delete entry ``key`` if nobody holds its lock (and, with ``older_than_ns``, if it is still that old);
    the bytes freed, or None when it was kept."""
    with entry_lock(locks_fd, f"{key}.lock", wait=False, required=False) as held:
        if not held:
            return None
        if older_than_ns is not None:
            st = _lstat(f"{key}.safetensors", features_fd)
            if st is not None and st.st_mtime_ns >= older_than_ns:
                return None  # read since it was listed
        freed = _unlink(f"{key}.safetensors", features_fd)  # first: readers go by this file alone
        freed += _unlink(f"{key}.json", features_fd)
        _unlink(f"{key}.lock", locks_fd)  # while held: later lockers see a new inode and retry
        return freed


def _make_room(features_fd: int, locks_fd: int, keep: str, needed: int, max_bytes: int) -> bool:
    """Evict least-recently-used entries (never ``keep``, never one in use) until ``needed`` more bytes fit."""
    for attempt in range(5):
        entries = _entry_sizes(features_fd)
        entries.pop(keep, None)  # about to be replaced
        total = sum(size for size, _ in entries.values())
        if total + needed <= max_bytes:
            return True
        for key, (size, _) in sorted(entries.items(), key=lambda kv: (kv[1][1], kv[0])):
            if _remove_entry(features_fd, locks_fd, key) is not None:
                total -= size
                if total + needed <= max_bytes:
                    return True
        time.sleep(0.02 * (attempt + 1))  # the rest is being read right now: readers hold their locks briefly
    return False


def store_entry(root: Path, key: str, files: Sequence[tuple[str, bytes]], max_bytes: int) -> bool:
    """Write one feature entry's files (``features/NAME``, tensor file first) atomically, after evicting
    least-recently-used entries until it fits under ``max_bytes``; False (nothing written) when it cannot fit.

    The caller holds the entry's own lock exclusively; this takes ``space.lock`` so that making room and writing
    are one step for every process.
    """
    needed = sum(len(data) for _, data in files)
    if needed > max_bytes:
        if max_bytes > 0:
            _warn_once(
                f"feature cache {root}: an entry of {human_bytes(needed)} is larger than cache.max_gb "
                f"({human_bytes(max_bytes)}); such entries are encoded every time instead of cached"
            )
        return False
    with _folder(root / FEATURES) as features_fd, _folder(root / LOCKS) as locks_fd:
        if features_fd is None or locks_fd is None:
            _warn_once(
                f"feature cache {root}: {FEATURES}/ or {LOCKS}/ is a symbolic link; rlptune never follows links "
                f"when it evicts, so it caches nothing there (point train.cache_dir at the real folder)"
            )
            return False
        with entry_lock(locks_fd, SPACE_LOCK, where=root / LOCKS / SPACE_LOCK):
            # a damaged entry of this key (the caller holds its lock) goes first, so it never counts twice
            _unlink(f"{key}.safetensors", features_fd)
            _unlink(f"{key}.json", features_fd)
            if not _make_room(features_fd, locks_fd, key, needed, max_bytes):
                _warn_once(f"feature cache {root}: full of entries in use; an entry was encoded but not cached")
                return False
            for name, data in files:
                io.write_bytes(root / FEATURES / name, data)
    return True


# -- inventory -----------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One thing in the cache that rlptune wrote (and ``clear`` may delete)."""

    kind: str
    name: str  # the key (features, views), WORLD/DATASET (micro), or the path in the cache (memo, leftovers)
    bytes: int
    mtime: float  # last read or write (features, views); when written (the rest)
    backbone: str | None = None
    dataset: str | None = None
    view: int | None = None
    seed: int | None = None
    precision: str | None = None
    files: list[str] = field(default_factory=list)  # paths in the cache folder
    key: str | None = None  # the lock that guards it (features, views, their leftovers)

    def to_json(self) -> dict[str, Any]:
        out = {"kind": self.kind, "name": self.name, "bytes": self.bytes, "last_used": _iso(self.mtime)}
        for attr in ("backbone", "dataset", "view", "seed", "precision"):
            if getattr(self, attr) is not None:
                out[attr] = getattr(self, attr)
        return out


@dataclass
class Inventory:
    root: Path
    exists: bool
    entries: list[Entry] = field(default_factory=list)
    foreign: list[tuple[str, int]] = field(default_factory=list)  # (path in the cache, bytes): never deleted


def cache_root(path: str | os.PathLike | None = None) -> Path:
    """The cache folder: ``path``, else $RLPTUNE_CACHE, else ~/.cache/rlptune."""
    return Path(path) if path else io.default_cache_dir()


def scan(root: str | os.PathLike | None = None) -> Inventory:
    """Everything under the cache folder, sorted into rlptune's entries (by kind) and foreign files."""
    root = cache_root(root)
    if root.exists() and not root.is_dir():
        raise RlptuneError(f"{root}: cache folder is a file, not a folder (train.cache_dir / $RLPTUNE_CACHE)")
    if not root.is_dir():
        return Inventory(root, exists=False)
    inv = Inventory(root, exists=True)
    for name in _listdir(root):
        path = root / name
        st = _lst(path)
        if st is None:
            continue  # removed while we looked
        if name == FEATURES and stat.S_ISDIR(st.st_mode):
            _scan_features(root, inv)
        elif name == LOCKS:
            continue  # after the entries: which locks belong to one
        elif name == MICRO and stat.S_ISDIR(st.st_mode):
            _scan_micro(root, inv)
        elif name == MEMO and stat.S_ISREG(st.st_mode):
            inv.entries.append(Entry("memo", name, st.st_size, st.st_mtime, files=[name]))
        elif _MEMO_TMP.match(name) and stat.S_ISREG(st.st_mode) and _stale(st):
            inv.entries.append(Entry("leftovers", name, st.st_size, st.st_mtime, files=[name]))
        else:
            _add_foreign(root, name, inv)
    locks = _lst(root / LOCKS)
    if locks is not None and stat.S_ISDIR(locks.st_mode):
        _scan_locks(root, inv)
    elif locks is not None:
        _add_foreign(root, LOCKS, inv)
    return inv


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError as exc:
        raise RlptuneError(io.os_error_line(exc, path, "read the cache folder")) from None


def _lst(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except OSError:
        return None


def _stale(st: os.stat_result) -> bool:
    return time.time() - st.st_mtime > STALE_SECONDS


def _add_foreign(root: Path, rel: str, inv: Inventory) -> None:
    """``rel`` and, for a real folder, every file under it (links are listed, never followed)."""
    path = root / rel
    st = _lst(path)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        inv.foreign.append((rel, st.st_size))
        return
    for folder, dirs, files in os.walk(path, followlinks=False):
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            full = Path(folder) / name
            try:
                size = full.lstat().st_size
            except OSError:
                continue
            inv.foreign.append((str(full.relative_to(root)), size))


def _read_manifest(features: Path, key: str) -> dict[str, Any]:
    """The entry's manifest: its JSON sidecar, else the copy in the tensor file's header; {} if neither reads."""
    for reader in (_sidecar_manifest, _header_manifest):
        try:
            data = reader(features, key)
        except (OSError, ValueError, UnicodeDecodeError, RecursionError, AttributeError, TypeError):
            data = None  # a damaged entry still counts; it just cannot say what it holds
        if isinstance(data, dict):
            return data
    return {}


def _sidecar_manifest(features: Path, key: str) -> Any:
    path = features / f"{key}.json"
    if path.is_symlink() or not path.is_file() or path.stat().st_size > 1 << 20:
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _header_manifest(features: Path, key: str) -> Any:
    with open(features / f"{key}.safetensors", "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if not 0 < size <= 1 << 24:
            return None
        header = json.loads(handle.read(size).decode("utf-8"))
    return json.loads((header.get("__metadata__") or {}).get("manifest", "null"))


def _scan_features(root: Path, inv: Inventory) -> None:
    features = root / FEATURES
    names = set(_listdir(features))
    claimed: set[str] = set()
    for name in sorted(names):
        match = _ENTRY.match(name)
        st = _lst(features / name) if match else None
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        key = match.group(1)
        size, files = st.st_size, [f"{FEATURES}/{name}"]
        claimed.add(name)
        side = _lst(features / f"{key}.json") if f"{key}.json" in names else None
        if side is not None and stat.S_ISREG(side.st_mode):
            size += side.st_size
            files.append(f"{FEATURES}/{key}.json")
            claimed.add(f"{key}.json")
        manifest = _read_manifest(features, key)
        view = manifest.get("view") if isinstance(manifest.get("view"), int) else None
        transform = manifest.get("transform") if isinstance(manifest.get("transform"), dict) else {}
        seed = transform.get("view_seed") if isinstance(transform.get("view_seed"), int) else None
        inv.entries.append(
            Entry(
                "views" if view else "features",
                key,
                size,
                st.st_mtime,
                backbone=str(manifest.get("backbone") or "unknown"),
                dataset=_str_or_none(manifest.get("dataset")),
                view=view,
                seed=seed,
                precision=_str_or_none(manifest.get("precision")),
                files=files,
                key=key,
            )
        )
    for name in sorted(names - claimed):
        st = _lst(features / name)
        if st is None:
            continue
        tmp, side = _ENTRY_TMP.match(name), _SIDECAR.match(name)
        if tmp and stat.S_ISREG(st.st_mode):
            inv.entries.append(
                Entry(
                    "leftovers",
                    f"{FEATURES}/{name}",
                    st.st_size,
                    st.st_mtime,
                    files=[f"{FEATURES}/{name}"],
                    key=tmp.group(1),
                )
            )
        elif side and stat.S_ISREG(st.st_mode) and "features_sha256" in _sidecar_or_empty(features, side.group(1)):
            inv.entries.append(
                Entry(
                    "leftovers",
                    f"{FEATURES}/{name}",
                    st.st_size,
                    st.st_mtime,
                    files=[f"{FEATURES}/{name}"],
                    key=side.group(1),
                )
            )
        else:
            _add_foreign(root, f"{FEATURES}/{name}", inv)


def _sidecar_or_empty(features: Path, key: str) -> dict:
    try:
        data = _sidecar_manifest(features, key)
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _scan_locks(root: Path, inv: Inventory) -> None:
    keys = {e.key for e in inv.entries if e.kind in ("features", "views")}
    for name in _listdir(root / LOCKS):
        st = _lst(root / LOCKS / name)
        match = _LOCK.match(name)
        if st is None:
            continue
        if name == SPACE_LOCK and stat.S_ISREG(st.st_mode):
            continue  # the writers' lock: kept
        if match and stat.S_ISREG(st.st_mode):
            if match.group(1) not in keys:
                inv.entries.append(
                    Entry(
                        "leftovers",
                        f"{LOCKS}/{name}",
                        st.st_size,
                        st.st_mtime,
                        files=[f"{LOCKS}/{name}"],
                        key=match.group(1),
                    )
                )
            continue  # an entry's own lock goes with it
        _add_foreign(root, f"{LOCKS}/{name}", inv)


def _scan_micro(root: Path, inv: Inventory) -> None:
    micro = root / MICRO
    for world in _listdir(micro):
        wpath = micro / world
        if not _WORLD.match(world) or wpath.is_symlink() or not wpath.is_dir():
            _add_foreign(root, f"{MICRO}/{world}", inv)
            continue
        for name in _listdir(wpath):
            path = wpath / name
            rel = f"{MICRO}/{world}/{name}"
            if path.is_symlink() or not path.is_dir():
                _add_foreign(root, rel, inv)
            elif _is_rendered(path, world, name):
                files, size, newest = _micro_files(root, path, inv)
                inv.entries.append(
                    Entry(
                        "micro",
                        f"{world}/{name}",
                        size,
                        (path / "COMPLETE").lstat().st_mtime,
                        dataset=name,
                        files=files,
                    )
                )
            elif (_MICRO_TMP.match(name) or _MICRO_STALE.match(name)) and _stale(path.lstat()):
                # a rendering that never finished, or an outdated one moved aside (``.NAME.stale.X/NAME``)
                stale = _MICRO_STALE.match(name)
                inner = path / stale.group(1) if stale else path
                if stale:
                    for child in _listdir(path):
                        if child != inner.name or inner.is_symlink() or not inner.is_dir():
                            _add_foreign(root, f"{rel}/{child}", inv)
                    if inner.is_symlink() or not inner.is_dir():
                        continue
                files, size, _ = _micro_files(root, inner, inv)
                inv.entries.append(Entry("leftovers", rel, size, path.lstat().st_mtime, files=files))
            else:
                _add_foreign(root, rel, inv)


def _is_rendered(path: Path, world: str, name: str) -> bool:
    """A micro dataset folder rlptune rendered: its ``COMPLETE`` stamp names the world and the dataset."""
    marker = path / "COMPLETE"
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 4096:
            return False
        return marker.read_text(encoding="utf-8").startswith(f"{world} {name} ")
    except (OSError, UnicodeDecodeError):
        return False


def _micro_files(root: Path, folder: Path, inv: Inventory) -> tuple[list[str], int, float]:
    """The files of a rendered micro dataset that its layout names (the rest is foreign), their bytes, newest mtime."""
    files, size, newest = [], 0, 0.0
    for current, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted(names) + [d for d in dirs if (Path(current) / d).is_symlink()]:
            full = Path(current) / name
            st = full.lstat()
            rel = full.relative_to(folder).as_posix()
            if stat.S_ISREG(st.st_mode) and _MICRO_FILE.match(rel):
                files.append(full.relative_to(root).as_posix())
                size += st.st_size
                newest = max(newest, st.st_mtime)
            else:
                inv.foreign.append((full.relative_to(root).as_posix(), st.st_size))
    files.sort(key=lambda p: (not p.endswith("/COMPLETE"), p))  # the stamp first: a loader then renders afresh
    return files, size, newest


# -- selection and clearing ----------------------------------------------------------------------------------------


def parse_days(value: Any, where: str = "--older-than") -> float:
    """A number of days >= 0 (``1``, ``1.5``, ``1e0``, `` 2 ``); anything else is one line naming ``where``."""
    try:
        days = float(str(value).strip()) if not isinstance(value, bool) else math.nan
    except ValueError:
        raise RlptuneError(f"{where} {value!r}: expected a number of days >= 0, e.g. 7 or 0.5") from None
    if not math.isfinite(days) or days < 0:
        raise RlptuneError(f"{where} {value!r}: expected a number of days >= 0, e.g. 7 or 0.5")
    return days


def select(
    inv: Inventory,
    kinds: Sequence[str] | None = None,
    backbone: str | None = None,
    older_than_days: float | None = None,
    now: float | None = None,
) -> list[Entry]:
    """The entries of ``kinds`` (all by default), of ``backbone`` (its identity or architecture name; only
    features and views have one) and not used for more than ``older_than_days``."""
    for kind in kinds or ():
        if kind not in KINDS:
            raise RlptuneError(f"--kind {kind!r}: expected one of {', '.join(KINDS)}")
    now = time.time() if now is None else now
    chosen = []
    for entry in inv.entries:
        if kinds and entry.kind not in kinds:
            continue
        if backbone is not None and not _backbone_matches(entry.backbone, backbone):
            continue
        if older_than_days is not None and entry.mtime > now - older_than_days * 86400:
            continue
        chosen.append(entry)
    return chosen


def _backbone_matches(identity: str | None, wanted: str) -> bool:
    return identity is not None and (identity == wanted or identity.split("@", 1)[0] == wanted)


@dataclass
class Cleared:
    removed: dict[str, list[int]] = field(default_factory=dict)  # kind -> [entries, bytes]
    in_use: int = 0
    foreign: int = 0

    @property
    def freed(self) -> int:
        return sum(b for _, b in self.removed.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "freed_bytes": self.freed,
            "removed": {k: {"entries": n, "bytes": b} for k, (n, b) in self.removed.items()},
            "kept_in_use": self.in_use,
            "foreign_files_left": self.foreign,
        }


def clear(
    inv: Inventory, entries: Sequence[Entry], older_than_days: float | None = None, now: float | None = None
) -> Cleared:
    """Delete ``entries`` (from :func:`select`); entries in use are kept, foreign files are never touched."""
    out = Cleared(foreign=len(inv.foreign))
    if not entries:
        return out
    now = time.time() if now is None else now
    cutoff_ns = int((now - older_than_days * 86400) * 1e9) if older_than_days is not None else None
    with _folder(inv.root, follow=True) as root_fd:
        if root_fd is None:
            return out
        with contextlib.ExitStack() as stack:
            features_fd = stack.enter_context(_folder(FEATURES, root_fd))
            if any(e.key for e in entries) and _lstat(LOCKS, root_fd) is None:
                with contextlib.suppress(OSError):  # a writer would make it too: its locks are what clear respects
                    os.mkdir(LOCKS, dir_fd=root_fd)
            locks_fd = stack.enter_context(_folder(LOCKS, root_fd))
            for entry in entries:
                freed = _clear_one(entry, root_fd, features_fd, locks_fd, cutoff_ns)
                if freed is None:
                    out.in_use += 1
                    continue
                count = out.removed.setdefault(entry.kind, [0, 0])
                count[0] += 1
                count[1] += freed
    return out


def _clear_one(
    entry: Entry, root_fd: int, features_fd: int | None, locks_fd: int | None, cutoff_ns: int | None
) -> int | None:
    if entry.kind in ("features", "views"):
        if features_fd is None or locks_fd is None:
            return None
        return _remove_entry(features_fd, locks_fd, entry.key or "", cutoff_ns)
    if entry.key is not None:  # a leftover of a feature entry: only while nobody holds that entry's lock
        if locks_fd is None:
            return None
        with entry_lock(locks_fd, f"{entry.key}.lock", wait=False, required=False) as held:
            if not held:
                return None
            whole = features_fd is not None and _lstat(f"{entry.key}.safetensors", features_fd) is not None
            if whole and entry.files[0].endswith(".json"):
                return None  # its tensor file came back: a whole entry again
            freed = sum(_unlink_under(root_fd, rel) for rel in entry.files)
            if not whole:
                _unlink(f"{entry.key}.lock", locks_fd)  # no entry left to guard (removed while held)
            return freed
    freed = sum(_unlink_under(root_fd, rel) for rel in entry.files)
    top = (
        f"{MICRO}/{entry.name}" if entry.kind == "micro" else entry.name if entry.name.startswith(f"{MICRO}/") else None
    )
    if top is not None:
        _remove_empty_folders(root_fd, top)
    return freed


@contextlib.contextmanager
def _parent_folder(root_fd: int, rel: str):
    """(folder fd, last name) of ``rel`` under the cache root, each folder on the way opened with O_NOFOLLOW;
    the fd is None when a folder on the way is missing or a link."""
    parts = rel.split("/")
    fds: list[int] = []
    try:
        current: int | None = root_fd
        for part in parts[:-1]:
            current = _open_folder(part, current)
            if current is None:
                break
            fds.append(current)
        yield current, parts[-1]
    finally:
        for fd in fds:
            os.close(fd)


def _unlink_under(root_fd: int, rel: str) -> int:
    """Remove the regular file at ``rel`` under the cache root, opening each folder on the way with O_NOFOLLOW."""
    with _parent_folder(root_fd, rel) as (folder, name):
        return 0 if folder is None else _unlink(name, folder)


def _remove_empty_folders(root_fd: int, top: str) -> None:
    """Remove the folders under (and including) ``top`` that are empty now, deepest first; links untouched."""

    def visit(parent_fd: int, name: str) -> None:
        fd = _open_folder(name, parent_fd)
        if fd is None:
            return
        try:
            for child in os.listdir(fd):
                st = _lstat(child, fd)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    visit(fd, child)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.rmdir(name, dir_fd=parent_fd)  # fails when not empty (foreign files stay, with their folders)

    with _parent_folder(root_fd, top) as (folder, name):
        if folder is not None:
            visit(folder, name)


# -- reporting -----------------------------------------------------------------------------------------------------


def human_bytes(count: int | float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count} B"  # pragma: no cover


def _iso(mtime: float) -> str:
    return datetime.datetime.fromtimestamp(mtime).isoformat(timespec="seconds")


def summary(inv: Inventory) -> dict[str, Any]:
    """Entries and bytes per kind and per backbone x kind, foreign files, and the bound: ``info --json``."""
    kinds = {k: {"entries": 0, "bytes": 0} for k in KINDS}
    backbones: dict[str, dict[str, dict[str, int]]] = {}
    for entry in inv.entries:
        kinds[entry.kind]["entries"] += 1
        kinds[entry.kind]["bytes"] += entry.bytes
        if entry.kind in ("features", "views"):
            row = backbones.setdefault(entry.backbone or "unknown", {}).setdefault(
                entry.kind, {"entries": 0, "bytes": 0}
            )
            row["entries"] += 1
            row["bytes"] += entry.bytes
    return {
        "root": str(inv.root),
        "exists": inv.exists,
        "total_bytes": sum(v["bytes"] for v in kinds.values()),
        "kinds": kinds,
        "backbones": backbones,
        "foreign": {"files": len(inv.foreign), "bytes": sum(b for _, b in inv.foreign)},
        "bound": {"setting": "cache.max_gb", "default_gb": DEFAULT_MAX_GB, "covers": ["features", "views"]},
        "few_shot_draws": "kept in each run folder (few_shot.json), not in the cache",
    }


def info_text(inv: Inventory) -> str:
    data = summary(inv)
    lines = [f"cache folder: {inv.root}" + ("" if inv.exists else " (does not exist yet: empty)")]
    lines.append(
        f"bound: cache.max_gb (default {DEFAULT_MAX_GB:g} GB) on centre-crop features + views; "
        f"least recently used evicted first"
    )
    lines.append("")
    lines.append(f"{'kind':<46}{'entries':>8}{'size':>11}")
    for kind in KINDS:
        row = data["kinds"][kind]
        lines.append(f"{KIND_TITLES[kind]:<46}{row['entries']:>8}{human_bytes(row['bytes']):>11}")
    lines.append(f"{'few-shot draws':<46}{'-':>8}{'-':>11}   (kept in each run folder as few_shot.json)")
    lines.append(f"{'total':<46}{'':>8}{human_bytes(data['total_bytes']):>11}")
    if data["backbones"]:
        lines.append("")
        width = max(len("backbone"), *(len(b) for b in data["backbones"])) + 2
        lines.append(f"{'backbone':<{width}}{'kind':<24}{'entries':>8}{'size':>11}")
        for backbone in sorted(data["backbones"]):
            for i, kind in enumerate(k for k in ("features", "views") if k in data["backbones"][backbone]):
                row = data["backbones"][backbone][kind]
                label = backbone if i == 0 else ""
                lines.append(
                    f"{label:<{width}}{KIND_TITLES[kind]:<24}{row['entries']:>8}{human_bytes(row['bytes']):>11}"
                )
    foreign = data["foreign"]
    if foreign["files"]:
        lines.append("")
        lines.append(f"not rlptune's (never deleted): {foreign['files']} file(s), {human_bytes(foreign['bytes'])}")
    return "\n".join(lines)


def ls_text(entries: Sequence[Entry]) -> str:
    if not entries:
        return "no matching cache entries"
    rows = [("last used", "size", "kind", "backbone", "dataset", "view", "seed", "name")]
    for e in sorted(entries, key=lambda e: (e.mtime, e.name)):
        rows.append(
            (
                _iso(e.mtime).replace("T", " "),
                human_bytes(e.bytes),
                e.kind,
                e.backbone or "-",
                e.dataset or "-",
                "-" if e.view is None else str(e.view),
                "-" if e.seed is None else str(e.seed),
                e.name,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {1, 5, 6}
    return "\n".join(
        "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))
        ).rstrip()
        for row in rows
    )


def cleared_text(result: Cleared) -> str:
    if not result.removed:
        line = "nothing to clear"
    else:
        parts = [f"{n} {KIND_TITLES[k].split(' (')[0]} ({human_bytes(b)})" for k, (n, b) in result.removed.items()]
        line = f"freed {human_bytes(result.freed)}: " + ", ".join(parts)
    if result.in_use:
        line += f"; {result.in_use} entr{'y' if result.in_use == 1 else 'ies'} in use kept"
    if result.foreign:
        line += f"; {result.foreign} file(s) not rlptune's left alone"
    return line


def run_command(
    action: str,
    root: str | None = None,
    kinds: Sequence[str] | None = None,
    backbone: str | None = None,
    older_than: Any = None,
    as_json: bool = False,
) -> str:
    """``rlptune cache info|ls|clear``: the text (or JSON) to print."""
    days = parse_days(older_than) if older_than is not None else None
    inv = scan(root)
    if action == "info":
        return json.dumps(summary(inv), indent=2) if as_json else info_text(inv)
    chosen = select(inv, kinds, backbone, days)
    if action == "ls":
        return json.dumps([e.to_json() for e in chosen], indent=2) if as_json else ls_text(chosen)
    if action == "clear":
        result = clear(inv, chosen, days)
        return json.dumps(result.to_json(), indent=2) if as_json else cleared_text(result)
    raise RlptuneError(f"cache {action!r}: expected info, ls or clear")  # pragma: no cover - argparse checks
