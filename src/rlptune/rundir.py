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
checked by :func:`settings_hash`). The marker file ``.rlptune-run.json`` in every run folder records the settings
hash.

Outputs never destroy inputs: :func:`check_output_folder` is the one rule every command that writes a folder
(``train``, sweeps, reports, the study, the demo, ``save_pretrained``) applies before it writes anything. A
non-empty folder that is not rlptune's own output of that kind, or a folder that is or holds the current directory,
the home directory, a filesystem root or an input (the data root ...), is refused with or without ``overwrite``:
``--overwrite`` replaces an rlptune run and nothing else.
"""

from __future__ import annotations

import glob

import errno
import fcntl
import fnmatch
import filecmp
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from . import __version__, io, registry
from .config import in_former_spelling
from .errors import RlptuneError
from .io import os_error_line

# -- the names in a run folder: the one place they are spelled (the on-disk format; tests keep them literal) ------
MARKER = ".rlptune-run.json"
MARKER_FORMAT = "rlptune-run/1"
#: Written last: its presence means the run is complete.
RESULT = "result.json"
#: The fully resolved settings (``rlptune train --config`` remakes the run from it).
CONFIG = "config.yaml"
#: Library versions, backbone identity, dataset, classes and world size, written when the run starts.
RUN_INFO = "run_info.json"
#: One JSON line per epoch (loss, accuracies, diagnostics).
METRICS = "metrics.jsonl"
#: The CSV logger's copy of the epoch records (``--logger csv``).
METRICS_CSV = "metrics.csv"
#: The TensorBoard logger's event folder (``--logger tensorboard``).
TENSORBOARD_DIR = "tensorboard"
#: The few-shot draw (which training images, per class).
FEW_SHOT = "few_shot.json"
#: The content hashes of the images the run read (checked on resume).
DATA_HASHES = "data_hashes.json"
#: The unreadable images dropped under ``data.image_policy=skip``.
SKIPPED_IMAGES = "skipped_images.json"
#: The trained adapter (a Hub-shaped folder with its model card).
ADAPTER_DIR = "adapter"
#: The resumable checkpoint's folder, and the checkpoint in it.
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT = Path(CHECKPOINT_DIR) / "last.safetensors"
#: where a search over candidates (``--auto``) keeps its candidates' checkpoints, one folder per step, each with a
#: ``progress.json`` written last: a staging folder holding one is resumable, as one holding :data:`CHECKPOINT` is
SEARCH_CHECKPOINTS = Path(CHECKPOINT_DIR) / "search"
#: What a resumed run takes over from a finished one: the checkpoint, the metric lines, the few-shot draw and the
#: record of the images it trained on (checked on resume, see rlptune.engine.datacheck).
RESUMABLE = (CHECKPOINT_DIR, METRICS, FEW_SHOT, DATA_HASHES)
#: Settings that change how a run is executed or logged but not its result (not part of the settings hash).
NON_RESULT_SETTINGS = {
    "backbone": ("device",),
    "train": ("checkpoint_every", "num_workers", "cache_dir", "log_diagnostics", "loggers"),
    "eval": ("batch_size", "top_k"),
}
#: Whole sections that never change a run's result (left out of the hash, so older runs keep their hashes).
NON_RESULT_SECTIONS = ("cache",)


def settings_hash(config_dict: Mapping[str, Any]) -> str:
    """A 16-hex-digit hash of every setting that affects a run's result (``config.to_dict()`` as input).

    Fields in :data:`NON_RESULT_SETTINGS` (device, workers, cache folder, checkpoint frequency, evaluation batch
    size ...) and the sections in :data:`NON_RESULT_SECTIONS` (the cache's bound and view store) are left out, so resuming on another device or with more workers is the same run.
    """
    relevant: dict[str, Any] = {}
    for section, values in in_former_spelling(config_dict).items():
        if section in NON_RESULT_SECTIONS:
            continue
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
    return (path / MARKER).is_file() or ((path / RUN_INFO).is_file() and (path / CONFIG).is_file())


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
        raise RlptuneError(
            f"{path}: corrupt result file (not UTF-8 text at byte {exc.start}); delete it to run again"
        ) from None
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
        raise RlptuneError(
            f"{path}: corrupt result file (expected a JSON object, got {type(data).__name__}); delete it to run again"
        )
    return data


def start_run_files(folder: str | os.PathLike, settings: Mapping[str, Any], info: Mapping[str, Any]) -> None:
    """A run's first files: its settings and run information, with any earlier result removed first (a run started
    or resumed in ``folder`` is not complete until it ends and writes :data:`RESULT` again)."""
    folder = Path(folder)
    (folder / RESULT).unlink(missing_ok=True)
    io.write_text(folder / CONFIG, yaml.safe_dump(dict(settings), sort_keys=False))
    io.write_json(folder / RUN_INFO, dict(info))


def write_result(folder: str | os.PathLike, result: Mapping[str, Any]) -> Path:
    """Write a run's result, atomically; call it last, after the adapter, because its presence means "complete"."""
    return io.write_json(Path(folder) / RESULT, dict(result))


# -- the one rule for output folders ------------------------------------------------------------------------------

#: What each kind of output folder is called in messages.
OUTPUT_LABELS = {
    "run": "run folder",
    "results": "results folder",
    "report": "report folder",
    "evidence": "study report folder",
    "demo": "demo folder",
    "adapter": "adapter folder",
}

#: The names rlptune writes at the top of each kind of output folder other than a run (shell patterns), and the
#: names of which one must be there for an existing folder to count as that kind (None: any of the first). A run is
#: recognised by its marker instead (:func:`is_run_directory`). A non-empty folder holding anything else is not
#: rlptune's: it is refused, because rlptune never writes over files it did not make.
OUTPUT_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "results": (
        ("few-shot", "base2new", "cross-dataset", "domain-gen", "tables", "failed-runs.log", ".submitit"),
        ("few-shot", "base2new", "cross-dataset", "domain-gen"),  # a sweep's first write is a run folder in one
    ),
    "report": (("report.md", "report.html", "tables", "figures", "comparisons.json", "analysis.json"), None),
    "evidence": (
        (
            "EVIDENCE.md",
            "evidence.json",
            "part[0-9]*_*.md",
            "part[0-9]*_*.csv",
            "part[0-9]*_*.json",
            "fig_*.png",
            "fig_*.svg",
        ),
        None,
    ),
    "demo": (
        (
            "runs",
            "report",
            "base2new.md",
            "base2new.csv",
            "base2new.json",
            "base2new_chart.png",
            "base2new_chart.svg",
            "base2new_table.md",
        ),
        None,
    ),
    "adapter": (  # rlptune_adapter.*, 0.1.0's (peft's) names, CLIP-LoRA's peft export, the model card and settings
        (
            "rlptune_adapter.json",
            "rlptune_adapter.safetensors",
            "adapter_config.json",
            "adapter_model.safetensors",
            "README.md",
            "training_config.yaml",
        ),
        ("rlptune_adapter.json", "rlptune_adapter.safetensors", "adapter_config.json", "adapter_model.safetensors"),
    ),
}

#: Entries that say nothing about whose folder it is: what operating systems and archive tools leave, and rlptune's
#: own bookkeeping beside a run folder (its lock, staging and old folders) or of an interrupted atomic write.
_IGNORED = (".DS_Store", "._*", "Thumbs.db", "desktop.ini", ".*.rlptune.lock", ".*.staging-*", ".*.old-*", ".*.tmp")


def check_output_file(path: str | os.PathLike, option: str, ours: Callable[[bytes], bool], what: str) -> Path:
    """Refuse a file output that would replace anything but an earlier output of the same kind (an input image, a
    user's file, a folder, a link): an output never destroys an input. ``ours(first_bytes)`` recognises an earlier
    output; call this before the work, so nothing runs in vain."""
    target = Path(path)
    if not str(path).strip():
        raise RlptuneError(f"{option}: the file name is empty; expected a path for {what}")
    if target.is_dir():
        raise RlptuneError(f"{target}: cannot write (it is a folder); {option} expects a file path for {what}")
    if target.exists() or target.is_symlink():
        try:
            with open(target, "rb") as handle:
                first = handle.read(4096)
        except OSError as exc:
            raise RlptuneError(f"{target}: cannot read the existing {option} file ({exc.strerror or exc})") from None
        if target.is_symlink() or not ours(first):
            raise RlptuneError(
                f"{target}: exists and is not {what} rlptune wrote; choose a new {option} file "
                f"(only an earlier one is replaced)"
            )
    return target


def check_output_folder(
    path: str | os.PathLike,
    *,
    kind: str = "run",
    inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    option: str = "-o/--output",
) -> Path:
    """Refuse an output folder whose use could destroy something that is not rlptune's; return it as an absolute path.

    Every command that replaces or fills a folder calls this before it writes anything, whatever ``--overwrite`` or
    ``--resume`` say, because ``--overwrite`` means "replace an rlptune run", never "delete this folder". Refused,
    in one line: an empty name (it would silently mean the current directory); a folder that is, or holds, the
    current directory, the home directory, a filesystem root or one of ``inputs`` (``(what, path)`` pairs such as
    ``("the data root (data.root)", root)``; symlinks are resolved, so a link to the data root is the data root); a
    file; and a non-empty folder that is not rlptune's output of this ``kind`` (see :data:`OUTPUT_LAYOUTS`).
    """
    if kind not in OUTPUT_LABELS:
        raise ValueError(f"unknown output kind {kind!r}")
    label = OUTPUT_LABELS[kind]
    if isinstance(path, (str, bytes)) and not path:
        raise RlptuneError(
            f"{option}: the {label} name is empty; expected a folder path (an empty path would mean "
            f"the current directory)"
        )
    shown = os.fspath(path)
    target = Path(os.path.abspath(shown))
    reason = _protected_reason(target, inputs)
    if reason is not None:
        raise RlptuneError(f"{shown}: output folder {reason}; {_advice(kind)}")
    if target.exists() and not target.is_dir():
        raise RlptuneError(
            f"{shown}: output path is a file, not a folder; choose a folder for the {'run' if kind == 'run' else label}"
        )
    if target.is_dir():
        foreign = _foreign_entries(Path(os.path.realpath(target)), kind)
        if foreign:
            raise RlptuneError(_not_ours_line(shown, kind, foreign))
    return target


def _advice(kind: str) -> str:
    return (
        "--overwrite replaces only rlptune run folders; choose a new output folder"
        if kind == "run"
        else "choose a new folder"
    )


def _not_ours_line(shown: str | os.PathLike, kind: str, foreign: list[str]) -> str:
    what = "an rlptune run" if kind == "run" else f"an rlptune {OUTPUT_LABELS[kind]}"
    return f"{shown}: folder is not empty and not {what} (holds {_shown(foreign)}); {_advice(kind)}"


def _protected_reason(target: Path, inputs: Iterable[tuple[str, str | os.PathLike | None]]) -> str | None:
    """Why ``target`` must not be an output folder (it is or holds a place named below), or None."""
    places: list[tuple[str, str | os.PathLike]] = []
    try:
        places.append(("the current directory", os.getcwd()))
    except OSError:
        pass  # a deleted current directory holds nothing to protect
    places.append(("the home directory", os.path.expanduser("~")))
    places += [(what, where) for what, where in inputs if where is not None and os.fspath(where) != ""]
    forms = _forms(target)
    for what, where in places:
        for place in _forms(Path(os.path.abspath(os.fspath(where)))):
            for form in forms:
                if place == form:
                    return f"is {what}"
                if form in place.parents:
                    return f"holds {what} at {os.path.abspath(os.fspath(where))}"
    real = Path(os.path.realpath(target))
    if os.path.ismount(real) or real.parent == real:
        return "is a filesystem root"
    return None


def _forms(path: Path) -> set[Path]:
    """A path as written (made absolute) and with every symlink resolved: either may be how a place is reached."""
    return {path, Path(os.path.realpath(path))}


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in _IGNORED)


def _foreign_entries(folder: Path, kind: str, depth: int = 1) -> list[str]:
    """The entries of ``folder`` that keep it from being rlptune's output of ``kind`` (empty: it is, or is empty)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        raise RlptuneError(os_error_line(exc, folder, "list the output folder")) from None
    if kind == "run":  # a run folder is replaced whole: every entry counts
        return [] if not names or is_run_directory(folder) else names
    names = [n for n in names if not _ignored(n)]
    if not names:
        return []
    allowed, signature = OUTPUT_LAYOUTS[kind]
    signature = signature or allowed
    if kind == "results":  # a sweep writes one folder per protocol: every registered one, plug-ins' included
        registered = tuple(registry.protocol_names())
        allowed, signature = (*allowed, *registered), (*signature, *registered)
    foreign = []
    for name in names:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in allowed):
            continue
        if depth > 0 and (folder / name).is_dir() and _is_rlptune_output(folder / name, depth - 1):
            continue  # a run or report kept inside (reproduce --results r -o r/report)
        foreign.append(name)
    if not foreign and not any(fnmatch.fnmatchcase(n, p) for n in names for p in signature):
        return names  # only names rlptune might write, but none that this kind always writes
    return foreign


def _is_rlptune_output(folder: Path, depth: int) -> bool:
    if is_run_directory(folder):
        return True
    try:
        return any(not _foreign_entries(folder, kind, depth) for kind in OUTPUT_LAYOUTS)
    except RlptuneError:
        return False


def holds_checkpoint(folder: Path) -> bool:
    """Whether ``folder`` (a run's staging folder) holds something to resume from: the trainer's checkpoint, or a
    search's saved candidates."""
    return (folder / CHECKPOINT).is_file() or any((folder / SEARCH_CHECKPOINTS).glob("*/progress.json"))


class RunDirectory:
    """Context manager that makes one run's writes to ``target`` all-or-nothing (see the module docstring).

    ``with RunDirectory(out, settings_hash(cfg), resume=..., overwrite=...) as run:`` write everything under
    ``run.staging`` (pre-filled with the checkpoint, metrics and few-shot draw when resuming), call
    ``run.commit()`` once the result is written. Leaving the block without a commit (an error, Ctrl-C) leaves
    ``target`` untouched and keeps the staging folder for ``--resume`` if it holds a checkpoint. An
    :class:`RlptuneError` leaving the block names files by their place in the run folder, not in staging.
    ``inputs`` are the run's inputs (``(what, path)`` pairs: the data root ...), which the run folder must neither be
    nor hold (:func:`check_output_folder`).
    """

    def __init__(
        self,
        target: str | os.PathLike,
        settings_hash: str,
        *,
        resume: bool,
        overwrite: bool,
        inputs: Iterable[tuple[str, str | os.PathLike | None]] = (),
    ) -> None:
        target = check_output_folder(target, kind="run", inputs=inputs)  # before the lock file or anything else
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
        self._keep_staging = False
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
        resumable = [p for p in stale if holds_checkpoint(p)]
        for path in stale:  # a staging folder without a checkpoint holds nothing worth resuming
            if path not in resumable:
                shutil.rmtree(path, ignore_errors=True)
        source: Path | None = None
        if entries and not is_run:  # checked in __init__; this holds for a folder made since, now that we hold the lock
            raise RlptuneError(_not_ours_line(target, "run", entries))

        if self.overwrite:
            for path in resumable:
                shutil.rmtree(path, ignore_errors=True)
        elif self.resume:
            matching = [p for p in resumable if recorded_hash(p) == self.settings_hash]
            if matching:
                source = matching[-1]  # the newest interrupted attempt with these settings
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
        if self.target.is_dir() and not is_run_directory(self.target) and os.listdir(self.target):
            # someone filled the folder while the run trained: never replace what is not a run
            self._keep_staging = True
            raise RlptuneError(
                f"{_not_ours_line(self.target, 'run', sorted(os.listdir(self.target)))} (the finished "
                f"run is kept in {self.staging.name})"
            )
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
            copies = (
                self.resumed_from == self.target
                and (self.target / RESULT).is_file()
                and _same_bytes(self.staging / CHECKPOINT, self.target / CHECKPOINT)
            )
            if (
                not self.committed
                and not self._keep_staging
                and self.staging.is_dir()
                and (copies or not holds_checkpoint(self.staging))
            ):
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


__all__ = [
    "RunDirectory",
    "check_output_folder",
    "settings_hash",
    "is_run_directory",
    "read_result",
    "recorded_hash",
    "start_run_files",
    "write_result",
    "os_error_line",
]
