"""Path safety: every image path read from a split file, CSV or few-shot cache stays inside the dataset root.

The rule (see ``docs/DATASETS.md``): a path listed in a file must be relative, must not contain a ``..``
component, and must not resolve - through symlinks - to a location outside the dataset root. The root itself may
be a symlink (CoOp's own instructions suggest linking ``$DATA/<dataset>`` to an existing copy); it is resolved
first and everything below it is checked against the resolved root.

Directories that rlptune lists itself (image folders, ImageNet class folders) are trusted: the rule is about
paths that come from a file somebody else may have written.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PureWindowsPath

from ..errors import RlptuneError

_WINDOWS_ABS = re.compile(r"^[A-Za-z]:[\\/]")


def normalize_rel(rel: object, source: str | os.PathLike, entry: str) -> str:
    """Check the syntax of a relative path from ``source`` and return it in POSIX form (no ``./``, no ``//``).

    Raises :class:`RlptuneError` naming ``source`` and ``entry`` for a non-string, empty, absolute or ``..`` path.
    """
    if not isinstance(rel, str):
        raise RlptuneError(f"{source}: {entry}: image path must be a string, got {type(rel).__name__}")
    if not rel.strip():
        raise RlptuneError(f"{source}: {entry}: image path is empty")
    if "\x00" in rel:
        raise RlptuneError(f"{source}: {entry}: image path {rel!r} contains a NUL character")
    if (
        rel.startswith(("/", "\\"))
        or os.path.isabs(rel)
        or _WINDOWS_ABS.match(rel)
        or (os.name == "nt" and PureWindowsPath(rel).drive)
    ):
        raise RlptuneError(
            f"{source}: {entry}: image path {rel!r} is absolute; expected a path relative to the dataset root"
        )
    if any(p == ".." for p in rel.replace("\\", "/").split("/")):
        raise RlptuneError(
            f"{source}: {entry}: image path {rel!r} contains '..'; paths must stay inside the dataset root"
        )
    seps = "/\\" if os.sep == "\\" else "/"
    parts = [p for p in _split(rel, seps) if p not in ("", ".")]
    if not parts:
        raise RlptuneError(f"{source}: {entry}: image path {rel!r} names the dataset root, not an image")
    return "/".join(parts)


def _split(text: str, seps: str) -> list[str]:
    for sep in seps[1:]:
        text = text.replace(sep, seps[0])
    return text.split(seps[0])


def real_root(root: str | os.PathLike) -> Path:
    """The resolved dataset root; raises if it does not exist or is not a folder."""
    try:
        resolved = Path(os.path.realpath(os.fspath(root)))
        ok = resolved.is_dir()
    except (OSError, ValueError) as exc:
        raise RlptuneError(f"{root}: cannot read the dataset root ({exc})") from None
    if not ok:
        if resolved.exists():
            raise RlptuneError(f"{root}: dataset root is not a folder")
        raise RlptuneError(f"{root}: dataset root does not exist")
    return resolved


class PathChecker:
    """Checks many paths from one ``source`` against one root, resolving each folder only once.

    :meth:`check` returns ``(clean relative path, exists as a file)`` or raises :class:`RlptuneError`.
    """

    def __init__(self, root: str | os.PathLike, source: str | os.PathLike, resolved_root: Path | None = None):
        self.root = Path(root)
        self.source = source
        base = str(resolved_root if resolved_root is not None else real_root(root))
        self._base = base
        self._prefix = base if base.endswith(os.sep) else base + os.sep
        self._dirs: dict[str, str] = {"": base}

    def _inside(self, real: str) -> bool:
        return real == self._base or real.startswith(self._prefix)

    def _escape(self, clean: str, entry: str) -> RlptuneError:
        return RlptuneError(
            f"{self.source}: {entry}: image path {clean!r} leads outside the dataset root {self.root} through a symlink"
        )

    def check(self, rel: object, entry: str) -> tuple[str, bool]:
        clean, real = self.locate(rel, entry)
        return clean, real is not None

    def locate(self, rel: object, entry: str) -> tuple[str, str | None]:
        """``(clean relative path, the file it reaches)``: the file as a path relative to the resolved root (the
        clean path itself unless a symlink leads elsewhere inside the root), or ``None`` when no file is there."""
        clean = normalize_rel(rel, self.source, entry)
        parent, _, name = clean.rpartition("/")
        try:
            real_parent = self._dirs.get(parent)
            if real_parent is None:
                real_parent = os.path.realpath(os.path.join(self._base, parent))
                self._dirs[parent] = real_parent
            if not self._inside(real_parent):
                raise self._escape(clean, entry)
            full = os.path.join(real_parent, name)
            try:
                st = os.lstat(full)
            except (FileNotFoundError, NotADirectoryError):
                return clean, None
            if stat.S_ISLNK(st.st_mode):
                full = os.path.realpath(full)
                if not self._inside(full):
                    raise self._escape(clean, entry)
                if not os.path.isfile(full):
                    return clean, None
            elif not stat.S_ISREG(st.st_mode):
                return clean, None
            return clean, self.relative(full)
        except RlptuneError:
            raise
        except (OSError, ValueError, UnicodeError) as exc:
            raise RlptuneError(f"{self.source}: {entry}: cannot resolve image path {clean!r} ({exc})") from None

    def relative(self, real: str) -> str:
        """A resolved path as a POSIX path relative to the resolved root (unchanged if it lies outside)."""
        if not real.startswith(self._prefix):
            return real
        rel = real[len(self._prefix) :]
        return rel.replace(os.sep, "/") if os.sep != "/" else rel


def resolve_inside(
    root: str | os.PathLike,
    rel: object,
    source: str | os.PathLike,
    entry: str = "entry",
    *,
    must_exist: bool = False,
    resolved_root: Path | None = None,
) -> Path:
    """Join ``rel`` (read from ``source``) onto ``root`` and check that it stays inside the root.

    Rejects absolute paths, ``..`` components and symlinks that lead outside the (resolved) root, with a one-line
    :class:`RlptuneError` naming ``source`` and ``entry``. With ``must_exist`` the target must be a file.
    ``resolved_root`` lets a caller checking many entries resolve the root once (see :func:`real_root`; or use
    :class:`PathChecker`). Returns the joined (unresolved) path under ``root``.
    """
    clean, exists = PathChecker(root, source, resolved_root).check(rel, entry)
    if must_exist and not exists:
        raise RlptuneError(f"{source}: {entry}: image {clean!r} not found under {root}")
    return Path(root) / clean
