"""The tasks a server answers: adapter folders on disk, their scoring tensors in a memory-bounded LRU.

A *task* is one adapter folder ``<adapters>/<name>/``. Adapters stay on disk; what is kept in memory is what
scoring needs, computed once when the task is first used (or at start with ``--preload``):

* frozen-image methods (CoOp, RLP, KgCoOp, deep text prompts, text LoRA, linear probe, zero-shot): the method's
  merged scores are an affine map of the frozen image features, ``logits = f @ W + b``; ``W`` (e, C) and ``b``
  (C) are read off the merged method itself (``logits`` of the identity and of zero) and verified on random
  features. A 100-class task on a 512-wide CLIP is 200 KB. Requests of all such tasks share one image-tower batch.
* image-conditioned methods (CoCoOp): frozen image tower, but the class features depend on the image; the
  merged method is kept and scores its requests' features (the image-tower batch is still shared).
* image-tower methods (``needs_image_tower``: MaPLe, IVLP, deep vision prompts, vision LoRA): the merged method is
  kept and its requests are batched per task, since their image features differ from task to task.

Uploaded adapters are written to a hidden staging folder, loaded against the server's backbone (safetensors +
JSON only, identity checked, tensor names and shapes checked by the loader) and only then renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import io
from ..backbones.identity import backbone_mismatch
from ..engine.adapter import ADAPTER_CONFIG, ADAPTER_MODEL, adapter_files, load_adapter, read_adapter_config
from ..errors import RlptuneError

log = logging.getLogger("rlptune.serve")

#: A task name: letters, digits, ``_ . -``; starts with a letter or digit (so never ``..`` or a hidden name).
#: ``\Z``, not ``$``: ``$`` also matches before a final newline, and ``nl\n`` would become a folder name.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")

_AFFINE_TOLERANCE = 1e-4


def check_task_name(name: str) -> str:
    """``name`` if it is a safe folder name inside the adapters folder, else a one-line error."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or ".." in name:
        raise RlptuneError(
            f"task name {str(name)[:80]!r}: expected 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


class TaskConflict(RlptuneError):
    """The adapters folder holds something under this name that the server does not serve: it is never touched."""


def _not_served(name: str) -> TaskConflict:
    return TaskConflict(
        f"task {name!r}: the adapters folder holds a {name!r} entry that this server does not serve (skipped at start, "
        f"or added since; see the server log); it is never replaced or deleted: move it away on the server, or choose another name"
    )


def _check_upload_json(config_bytes: bytes) -> None:
    """Refuse what would break a JSON parser before the loader sees it (it reports the rest with its own line)."""
    try:
        json.loads(config_bytes)
    except RecursionError:
        raise RlptuneError(f"{ADAPTER_CONFIG}: not valid JSON (nested too deeply)") from None
    except UnicodeDecodeError as exc:
        raise RlptuneError(f"{ADAPTER_CONFIG}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError:
        return  # the loader names line and column
    except ValueError as exc:  # an integer too long to convert
        raise RlptuneError(f"{ADAPTER_CONFIG}: not valid JSON ({' '.join(str(exc).split())[:120]})") from None


@dataclass(frozen=True)
class TaskInfo:
    """What ``GET /v1/tasks`` shows about a task (read from its rlptune_adapter.json)."""

    name: str
    method: str
    classnames: tuple[str, ...]
    identity: str

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "classes": list(self.classnames),
            "num_classes": len(self.classnames),
            "backbone": self.identity,
        }


@dataclass
class LoadedTask:
    """A task ready to score: an affine map of frozen features, or the merged method itself."""

    info: TaskInfo
    kind: str  # "affine" | "conditioned" | "image_tower"
    weight: torch.Tensor | None = None  # (e, C): logits = features @ weight + bias
    bias: torch.Tensor | None = None  # (C,)
    method: Any = None  # merged Method for "conditioned" and "image_tower"
    nbytes: int = 0

    @property
    def shares_image_tower(self) -> bool:
        return self.kind != "image_tower"

    @torch.no_grad()
    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of image features (B, e): frozen features, or this task's own for image-tower tasks."""
        if self.kind == "affine":
            return features.to(self.weight.dtype) @ self.weight + self.bias
        return self.method.logits(features)


def _own_bytes(method, backbone) -> int:
    """Bytes of the method's tensors that are not the backbone's (a LoRA copy shares the frozen weights)."""
    shared = {p.data_ptr() for p in backbone.model.parameters()} | {b.data_ptr() for b in backbone.model.buffers()}
    seen: set[int] = set()
    total = 0
    for tensor in list(method.parameters()) + list(method.buffers()):
        ptr = tensor.data_ptr()
        if ptr in shared or ptr in seen:
            continue
        seen.add(ptr)
        total += tensor.numel() * tensor.element_size()
    return total


@torch.no_grad()
def image_feature_width(backbone) -> int:
    """Width e of the backbone's image features (one tiny forward pass)."""
    blank = torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=backbone.device)
    return int(backbone.encode_image(blank).shape[-1])


def _not_finite(info: TaskInfo) -> RlptuneError:
    return RlptuneError(
        f"adapter of task {info.name!r}: its logits are not finite (NaN or inf) on this backbone; "
        f"its tensors are damaged or too large (a diverged training run)"
    )


@torch.no_grad()
def prepare_task(info: TaskInfo, method, backbone, width: int) -> LoadedTask:
    """Merge the method and keep what scoring needs (see the module docstring).

    Raises :class:`RlptuneError` when the adapter's logits are not finite: finite tensors can still overflow
    (a prompt times 1e30), and such a task could only ever answer NaN probabilities.
    """
    method.eval()
    method.merge()
    if method.needs_image_tower or not method.normalize_features:  # the linear probe scores raw features
        blank = torch.zeros(1, 3, backbone.image_size, backbone.image_size, device=backbone.device)
        if not torch.isfinite(method.logits(method.encode_images(blank))).all():
            raise _not_finite(info)
        return LoadedTask(info, "image_tower", method=method, nbytes=_own_bytes(method, backbone))
    device = backbone.device
    eye = torch.eye(width, device=device)
    bias = method.logits(torch.zeros(1, width, device=device))[0].float()
    weight = (method.logits(eye).float() - bias).contiguous()
    generator = torch.Generator().manual_seed(0)
    probe = torch.nn.functional.normalize(torch.randn(8, width, generator=generator), dim=-1).to(device)
    expected = method.logits(probe).float()
    if not (torch.isfinite(bias).all() and torch.isfinite(weight).all() and torch.isfinite(expected).all()):
        raise _not_finite(info)  # (and so the tolerance below is always a finite number)
    affine = probe @ weight + bias
    if torch.isfinite(affine).all() and torch.allclose(
        expected, affine, rtol=_AFFINE_TOLERANCE, atol=_AFFINE_TOLERANCE * float(expected.abs().max().clamp(min=1.0))
    ):
        return LoadedTask(info, "affine", weight=weight, bias=bias, nbytes=(weight.numel() + bias.numel()) * 4)
    return LoadedTask(info, "conditioned", method=method, nbytes=_own_bytes(method, backbone))


class TaskRegistry:
    """Adapter folders by name, and a least-recently-used cache of loaded tasks bounded in bytes. Thread-safe."""

    def __init__(self, root: str | Path, backbone, cache_bytes: int) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise RlptuneError(f"{self.root}: adapters folder not found (create it, or pass --adapters DIR)")
        self.backbone = backbone
        self.width = image_feature_width(backbone)
        self.cache_bytes = int(cache_bytes)
        self._infos: dict[str, TaskInfo] = {}
        self._cache: OrderedDict[str, LoadedTask] = OrderedDict()
        self._cached_bytes = 0
        self._generation: dict[str, int] = {}
        self._lock = threading.RLock()
        self._load_locks: dict[str, threading.Lock] = {}
        self.loads = 0
        self.evictions = 0
        self.skipped: list[str] = []

    # -- the folder -----------------------------------------------------------------------------------------
    def scan(self) -> list[str]:
        """Index every adapter folder; folders that cannot be served are skipped with one line each (returned)."""
        skipped = []
        infos = {}
        for path in sorted(self.root.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue
            try:
                check_task_name(path.name)
                self._check_real_folder(path)
                infos[path.name] = self._read_info(path, path.name)
            except RlptuneError as exc:
                skipped.append(str(exc))
        with self._lock:
            self._infos = infos
        for line in skipped:
            log.warning("skipped adapter: %s", line)
        self.skipped = skipped
        return skipped

    def _read_info(self, folder: Path, name: str) -> TaskInfo:
        payload = read_adapter_config(folder)
        identity = payload["backbone"]["identity"]
        differs = backbone_mismatch(payload["backbone"], self.backbone, str(adapter_files(folder)[0]))
        if differs is not None:
            raise RlptuneError(
                f"{folder}: adapter was trained on backbone {identity}, but this server runs {self.backbone.identity}: {differs}"
            )
        model_path = adapter_files(folder)[1]  # rlptune's names, or 0.1.0's
        if not model_path.is_file():
            raise RlptuneError(f"{folder}: missing {model_path.name}")
        return TaskInfo(name, payload["method"], tuple(payload["classnames"]), identity)

    def _check_real_folder(self, path: Path) -> None:
        """A served task is a real folder directly inside the adapters folder: never a link to one elsewhere."""
        if path.is_symlink():
            raise RlptuneError(
                f"{path}: is a symbolic link; the server serves only real folders inside {self.root} (copy the adapter in)"
            )
        if path.resolve().parent != self.root.resolve():
            raise RlptuneError(f"{path}: resolves outside the adapters folder {self.root}")

    def folder(self, name: str) -> Path:
        """The task's folder, guaranteed to lie directly inside the adapters folder."""
        check_task_name(name)
        path = self.root / name
        if path.is_symlink():
            raise _not_served(name)
        if path.resolve().parent != self.root.resolve():
            raise RlptuneError(f"task name {name!r} resolves outside the adapters folder")
        return path

    # -- lookup ---------------------------------------------------------------------------------------------
    def infos(self) -> list[TaskInfo]:
        with self._lock:
            return [self._infos[n] for n in sorted(self._infos)]

    def info(self, name: str) -> TaskInfo | None:
        with self._lock:
            return self._infos.get(name)

    def __len__(self) -> int:
        return len(self._infos)

    @property
    def cached(self) -> int:
        return len(self._cache)

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes

    def cached_task(self, name: str) -> LoadedTask | None:
        """The task if it is in memory (marked as recently used), else None; never touches the disk."""
        with self._lock:
            task = self._cache.get(name)
            if task is not None:
                self._cache.move_to_end(name)
            return task

    def get(self, name: str) -> LoadedTask:
        """The loaded task (loaded from disk on a miss). Raises KeyError for an unknown task."""
        with self._lock:
            task = self._cache.get(name)
            if task is not None:
                self._cache.move_to_end(name)
                return task
            if name not in self._infos:
                raise KeyError(name)
            load_lock = self._load_locks.setdefault(name, threading.Lock())
        with load_lock:
            with self._lock:
                task = self._cache.get(name)
                if task is not None:
                    self._cache.move_to_end(name)
                    return task
                info = self._infos.get(name)
                generation = self._generation.get(name, 0)
            if info is None:
                raise KeyError(name)
            method = load_adapter(self.folder(name), self.backbone)
            task = prepare_task(info, method, self.backbone, self.width)
            with self._lock:
                if self._generation.get(name, 0) == generation and name in self._infos:
                    self._insert(name, task)
                self.loads += 1
            return task

    def _insert(self, name: str, task: LoadedTask) -> None:
        old = self._cache.pop(name, None)
        if old is not None:
            self._cached_bytes -= old.nbytes
        self._cache[name] = task
        self._cached_bytes += task.nbytes
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes
            self.evictions += 1

    def preload(self) -> int:
        """Load every task (until the cache is full); returns how many are cached.

        A task that cannot be loaded is skipped with one log line and no longer served, as :meth:`scan` does
        with folders it cannot read: one bad adapter never stops the server.
        """
        for info in self.infos():
            try:
                self.get(info.name)
            except RlptuneError as exc:
                with self._lock:
                    self._infos.pop(info.name, None)
                    self._generation[info.name] = self._generation.get(info.name, 0) + 1
                log.warning("skipped adapter: %s", exc)
                self.skipped.append(str(exc))
                continue
            except KeyError:
                continue  # removed meanwhile
            if self._cached_bytes >= self.cache_bytes:
                break
        return self.cached

    # -- changes --------------------------------------------------------------------------------------------
    def _check_replaceable(self, name: str, target: Path) -> bool:
        """True when ``target`` holds a served task to replace, False when nothing is there; else TaskConflict.

        Only a folder this server serves may be replaced or deleted: an adapter of another backbone, a broken
        one, a link or a user's file under the same name stays byte-identical. Call with the lock held.
        """
        exists = os.path.lexists(target)
        if exists and (name not in self._infos or target.is_symlink() or not target.is_dir()):
            raise _not_served(name)
        return exists

    def install(self, name: str, config_bytes: bytes, model_bytes: bytes) -> tuple[TaskInfo, bool]:
        """Validate an uploaded adapter against the backbone, then put it in place; (info, replaced an old one).

        Raises :class:`TaskConflict` (nothing is touched) when the name is taken by a folder this server does
        not serve.
        """
        target = self.folder(name)
        with self._lock:
            self._check_replaceable(name, target)  # answer early; checked again before the swap
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            try:
                _check_upload_json(config_bytes)
                io.write_bytes(staging / ADAPTER_CONFIG, config_bytes)
                io.write_bytes(staging / ADAPTER_MODEL, model_bytes)
                info = self._read_info(staging, name)
                method = load_adapter(staging, self.backbone)
                task = prepare_task(info, method, self.backbone, self.width)
            except RlptuneError as exc:
                message = str(exc).replace(str(staging / ADAPTER_CONFIG), ADAPTER_CONFIG)
                message = message.replace(str(staging / ADAPTER_MODEL), ADAPTER_MODEL).replace(
                    str(staging), "uploaded adapter"
                )
                raise RlptuneError(message) from None
            with self._lock:
                replaced = self._check_replaceable(name, target)
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                if replaced:
                    target.rename(trash)
                try:
                    staging.rename(target)
                except OSError:
                    if replaced:
                        trash.rename(target)
                    raise _not_served(name) from None  # created on disk meanwhile: left as it is
                self._generation[name] = self._generation.get(name, 0) + 1
                self._infos[name] = info
                self._insert(name, task)
            if replaced:
                shutil.rmtree(trash, ignore_errors=True)
            return info, replaced
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def remove(self, name: str) -> None:
        """Delete the task's folder and forget it. Raises KeyError when there is no such task (nothing is
        touched), TaskConflict when its folder was replaced on disk by something the server does not serve."""
        check_task_name(name)
        with self._lock:
            if name not in self._infos:
                raise KeyError(name)
            target = self.folder(name)
            if os.path.lexists(target):
                if target.is_symlink() or not target.is_dir():
                    raise _not_served(name)
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                target.rename(trash)
            else:
                trash = None  # removed on disk already: only forget it
            self._infos.pop(name)
            self._generation[name] = self._generation.get(name, 0) + 1
            old = self._cache.pop(name, None)
            if old is not None:
                self._cached_bytes -= old.nbytes
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
