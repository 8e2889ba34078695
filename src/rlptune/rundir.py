"""Run directories as transactions: a run either replaces its folder completely or leaves it exactly as it was.

A run never writes into its output folder. It writes into a fresh *staging* folder beside it
(``.<name>.staging-<pid>``); only when it has finished does :meth:`RunDirectory.commit` swap the staging folder
in (rename the old folder away, rename staging onto the target, delete the old one). A run that fails or is
interrupted leaves the target byte-identical, and keeps its staging folder when it holds a checkpoint, so
``--resume`` continues from there.

While a run is in use it is locked: ``fcntl.flock`` on a sibling lock file ``.<name>.rlptune.lock`` (a sibling,
not a file inside the folder, because the folder itself is renamed on commit). A second writer gets one line
naming the holder's pid instead of interleaving its epochs with the first.

Reuse is explicit: a folder holding a finished run needs ``overwrite`` (or ``resume`` with the same settings,
checked by :func:`settings_hash`), and a non-empty folder that is not an rlptune run is only replaced with
``overwrite``. The marker file ``.rlptune-run.json`` in every run folder records the settings hash.
"""

from __future__ import annotations

import glob

import errno
import fcntl
import filecmp
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping

from . import __version__, io
from .errors import RlptuneError
from .io import os_error_line

MARKER = ".rlptune-run.json"
MARKER_FORMAT = "rlptune-run/1"
RESULT = "result.json"
CHECKPOINT = Path("checkpoint") / "last.safetensors"
#: What a resumed run takes over from a finished one: the checkpoint, the metric lines, the few-shot draw and the
#: record of the images it trained on (checked on resume, see rlptune.engine.datacheck).
RESUMABLE = ("checkpoint", "metrics.jsonl", "few_shot.json", "data_hashes.json")
#: Settings that change how a run is executed or logged but not its result (not part of the settings hash).
NON_RESULT_SETTINGS = {
    "backbone": ("device",),
    "train": ("checkpoint_every", "num_workers", "cache_dir", "log_diagnostics", "loggers"),
    "eval": ("batch_size", "top_k"),
}


def settings_hash(config_dict: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of every setting that affects a run's result (``config.to_dict()`` as input).

    Fields in :data:`NON_RESULT_SETTINGS` (device, workers, cache folder, checkpoint frequency, evaluation batch
    size ...) are left out, so resuming on another device or with more workers is the same run.
    """
    relevant: dict[str, Any] = {}
    for section, values in config_dict.items():
        if isinstance(values, Mapping):
            dropped = NON_RESULT_SETTINGS.get(section, ())
            relevant[section] = {k: v for k, v in values.items() if k not in dropped}
        else:
            relevant[section] = values
    payload = json.dumps(relevant, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def is_run_directory(path: Path) -> bool:
    """True for a folder rlptune wrote: it has the run marker, or (runs from before the marker) run_info.json
    and config.yaml."""
    return (path / MARKER).is_file() or ((path / "run_info.json").is_file() and (path / "config.yaml").is_file())


def recorded_hash(path: Path) -> str | None:
    """The settings hash in a run folder's marker (None for runs from before the marker or a damaged marker)."""
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = data.get("settings_hash") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def read_result(run: str | os.PathLike) -> dict[str, Any]:
    """A finished run's ``result.json`` as a dict; a missing, unreadable or corrupt one is a one-line error naming
    it (sweeps and reports meet results written by other processes, or damaged on disk)."""
    path = Path(run)
    if path.is_dir():
        path = path / RESULT
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RlptuneError(f"{path}: no result file (the run has not finished)") from None
    except UnicodeDecodeError as exc:
        raise RlptuneError(f"{path}: corrupt result file (not UTF-8 text at byte {exc.start}); delete it to run again") from None
    except OSError as exc:
        raise RlptuneError(os_error_line(exc, path, "read the result file")) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RlptuneError(
            f"{path}: corrupt result file (not valid JSON at line {exc.lineno}, column {exc.colno}); delete it to "
            f"run again"
        ) from None
    except RecursionError:
        raise RlptuneError(f"{path}: corrupt result file (JSON nested too deeply); delete it to run again") from None
    if not isinstance(data, dict):
        raise RlptuneError(f"{path}: corrupt result file (expected a JSON object, got {type(data).__name__}); delete it to run again")
    return data


class RunDirectory:
    """Context manager that makes one run's writes to ``target`` all-or-nothing (see the module docstring).

    ``with RunDirectory(out, settings_hash(cfg), resume=..., overwrite=...) as run:`` write everything under
    ``run.staging`` (pre-filled with the checkpoint, metrics and few-shot draw when resuming), call
    ``run.commit()`` once the result is written. Leaving the block without a commit (an error, Ctrl-C) leaves
    ``target`` untouched and keeps the staging folder for ``--resume`` if it holds a checkpoint. An
    :class:`RlptuneError` leaving the block names files by their place in the run folder, not in staging.
    """

    def __init__(self, target: str | os.PathLike, settings_hash: str, *, resume: bool, overwrite: bool) -> None:
        target = Path(os.path.abspath(os.fspath(target)))
        if target.is_symlink() and target.is_dir():
            target = Path(os.path.realpath(target))  # replace what the link points at, keep the link
        if not target.name or target.name in (".", ".."):
            raise RlptuneError(f"{target}: not usable as a run directory (expected a folder name)")
        self.target = target
        self.settings_hash = settings_hash
        self.resume = resume
        self.overwrite = overwrite
        self.staging = target.parent / f".{target.name}.staging-{os.getpid()}"
        self.lock_path = target.parent / f".{target.name}.rlptune.lock"
        self.resumed_from: Path | None = None  # the folder a resumed run took its checkpoint from
        self.committed = False
        self._lock_fd: int | None = None

    # -- entering: lock, check, stage -------------------------------------------------------------------------

    def __enter__(self) -> "RunDirectory":
        self._check_target_kind()
        self._lock()
        try:
            self._recover_interrupted_commit()
            self._prepare_staging()
        except BaseException as exc:
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def _check_target_kind(self) -> None:
        target = self.target
        if target.exists() and not target.is_dir():
            raise RlptuneError(f"{target}: output path is a file, not a folder; choose a folder for the run")
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise RlptuneError(f"{target}: output path is under {parent}, which is a file, not a folder")
                break
        if str(target).startswith("/proc/") or str(target).startswith("/sys/"):
            raise RlptuneError(f"{target}: output path is inside a kernel file system; choose a folder on a disk")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RlptuneError(os_error_line(exc, target.parent, "create the output folder's parent")) from None

    def _lock(self) -> None:
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise RlptuneError(os_error_line(exc, self.lock_path, "create the run's lock file")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise RlptuneError(os_error_line(exc, self.lock_path, "lock the run directory")) from None
            holder = _read_holder(self.lock_path)
            raise RlptuneError(
                f"{self.target}: run directory is in use by another rlptune process (pid {holder}); wait for it "
                f"to finish or choose another output folder"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is a courtesy for the message; the lock itself holds
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
            except OSError:
                pass
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _old_folders(self) -> list[Path]:
        return sorted(self.target.parent.glob(f".{_glob_escape(self.target.name)}.old-*"))

    def _stale_stagings(self) -> list[Path]:
        found = self.target.parent.glob(f".{_glob_escape(self.target.name)}.staging-*")
        return sorted((p for p in found if p.is_dir()), key=lambda p: (p.stat().st_mtime, p.name))

    def _recover_interrupted_commit(self) -> None:
        """A commit killed between its two renames left the old run as ``.<name>.old-<pid>``: put it back (no
        target) or finish deleting it (the new target is in place)."""
        for old in self._old_folders():
            if not self.target.exists():
                os.rename(old, self.target)
            else:
                shutil.rmtree(old, ignore_errors=True)

    def _prepare_staging(self) -> None:
        target = self.target
        exists = target.is_dir()
        entries = sorted(os.listdir(target)) if exists else []
        is_run = exists and is_run_directory(target)
        finished = is_run and (target / RESULT).is_file()
        stale = self._stale_stagings()
        resumable = [p for p in stale if (p / CHECKPOINT).is_file()]
        for path in stale:  # a staging folder without a checkpoint holds nothing worth resuming
            if path not in resumable:
                shutil.rmtree(path, ignore_errors=True)
        source: Path | None = None

        if self.overwrite:
            for path in resumable:
                shutil.rmtree(path, ignore_errors=True)
        elif self.resume:
            matching = [p for p in resumable if recorded_hash(p) == self.settings_hash]
            if matching:
                source = matching[-1]  # the newest interrupted attempt with these settings
            elif entries and not is_run:
                raise RlptuneError(
                    f"{target}: not an rlptune run directory (holds {_shown(entries)}); nothing to resume"
                )
            elif is_run:
                recorded = recorded_hash(target)
                if recorded is not None and recorded != self.settings_hash:
                    raise RlptuneError(
                        f"{target}: run was made with other settings (settings hash {recorded}, this run "
                        f"{self.settings_hash}); resume it with the same settings, or use --overwrite or another "
                        f"output folder"
                    )
                source = target
            elif resumable:
                first = resumable[-1]
                raise RlptuneError(
                    f"{first}: interrupted run was made with other settings (settings hash {recorded_hash(first)}, "
                    f"this run {self.settings_hash}); resume it with the same settings or use --overwrite"
                )
        else:
            if resumable:
                raise RlptuneError(
                    f"{target}: an interrupted run of this folder is kept in {resumable[-1].name}; use --resume to "
                    f"continue it or --overwrite to start over"
                )
            if finished:
                raise RlptuneError(
                    f"{target}: holds a finished run ({RESULT}); use --overwrite to replace it, --resume to "
                    f"continue it with the same settings, or another output folder"
                )
            if is_run:
                raise RlptuneError(
                    f"{target}: holds an unfinished run; use --resume to continue it or --overwrite to start over"
                )
            if entries:
                raise RlptuneError(
                    f"{target}: folder is not empty and not an rlptune run (holds {_shown(entries)}); use "
                    f"--overwrite to replace it or choose a new folder"
                )

        if self.staging.exists() and source != self.staging:  # leftovers of an earlier process with our pid
            shutil.rmtree(self.staging)
        try:
            if source is not None and source != target:
                if source != self.staging:
                    os.rename(source, self.staging)  # continue the interrupted attempt itself
            else:
                self.staging.mkdir()
                if source is not None:
                    for name in RESUMABLE:
                        _copy_entry(source / name, self.staging / name)
            self._write_marker()
        except OSError as exc:
            raise RlptuneError(os_error_line(exc, self.staging, "create the run's staging folder")) from None
        self.resumed_from = source

    def _write_marker(self) -> None:

        io.write_json(
            self.staging / MARKER,
            {"format": MARKER_FORMAT, "settings_hash": self.settings_hash, "library_version": __version__},
        )

    # -- leaving: commit or keep --------------------------------------------------------------------------------

    def commit(self) -> None:
        """Swap the finished staging folder in for the target (the old target is deleted only afterwards)."""
        if self._lock_fd is None or self.committed:
            raise RuntimeError("RunDirectory.commit() outside its with-block or twice")
        old = self.target.parent / f".{self.target.name}.old-{os.getpid()}"
        try:
            _fsync_dir(self.staging)
            if self.target.exists():
                os.rename(self.target, old)
            try:
                os.rename(self.staging, self.target)
            except BaseException:
                if old.exists() and not self.target.exists():
                    os.rename(old, self.target)
                raise
            _fsync_dir(self.target.parent)
        except OSError as exc:
            raise RlptuneError(os_error_line(exc, self.target, "replace the run directory")) from None
        self.committed = True
        shutil.rmtree(old, ignore_errors=True)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            # nothing to resume from, or only a copy of the checkpoint the finished target still holds (a refused
            # --resume of a finished run leaves no interrupted attempt behind; one that trained further does)
            copies = (self.resumed_from == self.target and (self.target / RESULT).is_file()
                      and _same_bytes(self.staging / CHECKPOINT, self.target / CHECKPOINT))
            if not self.committed and self.staging.is_dir() and (copies or not (self.staging / CHECKPOINT).is_file()):
                shutil.rmtree(self.staging, ignore_errors=True)
            if isinstance(exc, RlptuneError) and exc.args and str(self.staging) in str(exc.args[0]):
                # the user knows the run folder, not the staging folder: name the file where it belongs
                exc.args = (str(exc.args[0]).replace(str(self.staging), str(self.target)),)
        finally:
            self._unlock()


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _glob_escape(name: str) -> str:

    return glob.escape(name)


def _shown(entries: list[str], limit: int = 3) -> str:
    shown = ", ".join(repr(e) for e in entries[:limit])
    more = f" and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{shown}{more}"


def _copy_entry(source: Path, dest: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, dest)
    elif source.is_file():
        shutil.copy2(source, dest)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_holder(lock_path: Path) -> str:
    """The pid the lock holder wrote (it writes it right after locking; a short wait covers that gap)."""
    for _ in range(20):
        try:
            text = lock_path.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"


__all__ = ["RunDirectory", "settings_hash", "is_run_directory", "read_result", "recorded_hash", "os_error_line"]
