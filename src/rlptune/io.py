"""Atomic file writes: a result or checkpoint is either the old version or the complete new one.

Every file rlptune writes goes through here: write to a temporary file in the same folder, flush and fsync,
then ``os.replace`` (atomic on POSIX and Windows). A killed process never leaves a half-written file behind.
"""

from __future__ import annotations

import fcntl

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch

from .errors import RlptuneError


def default_cache_dir() -> Path:
    """Where caches live: $RLPTUNE_CACHE, else ~/.cache/rlptune (feature cache, micro-suite images)."""
    env = os.environ.get("RLPTUNE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "rlptune"


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` then move the temporary file onto ``path`` atomically."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        writer(tmp)
        # mkstemp makes 0600 and some writers (safetensors) recreate the file: results get the umask's mode
        os.chmod(tmp, 0o666 & ~_UMASK)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # full disk, read-only folder, a file where a folder should be ...
            raise RlptuneError(os_error_line(exc, path, "write")) from None
        raise
    return path


def os_error_line(exc: OSError, path: str | os.PathLike, action: str = "write") -> str:
    """One line for an OS error while doing ``action`` on ``path``, saying why in words (full disk, read-only ...)."""
    reasons = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "read-only file system",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOTDIR: "a parent of it is a file, not a folder",
        errno.EEXIST: "a file is in the way of a folder",
        errno.EISDIR: "it is a folder",
        errno.ENAMETOOLONG: "the name is too long",
    }
    reason = reasons.get(exc.errno or 0) or " ".join(str(exc.strerror or exc).split()).lower()
    return f"{path}: cannot {action} ({reason})"


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(path, _write)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def write_safetensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save tensors (contiguous CPU copies) as safetensors, atomically."""
    from safetensors.torch import save_file

    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(clean, tmp, metadata=dict(metadata or {})))


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON line; each line is written with a single write call and flushed."""
    path = Path(path)
    line = json.dumps(dict(record), default=_json_default) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise RlptuneError(os_error_line(exc, path, "write")) from None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if missing) for a with-block; a second process
    waits its turn. Used so processes that need the same cache entry build it once."""

    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise RlptuneError(os_error_line(exc, path, "create the lock file")) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
