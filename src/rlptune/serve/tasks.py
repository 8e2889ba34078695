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

import logging
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
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_AFFINE_TOLERANCE = 1e-4


def check_task_name(name: str) -> str:
    """``name`` if it is a safe folder name inside the adapters folder, else a one-line error."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name) or ".." in name:
        raise RlptuneError(
            f"task name {str(name)[:80]!r}: expected 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class TaskInfo:
    """What ``GET /v1/tasks`` shows about a task (read from its rlptune_adapter.json)."""

    name: str
    method: str
    classnames: tuple[str, ...]
    identity: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "method": self.method, "classes": list(self.classnames), "num_classes": len(self.classnames), "backbone": self.identity}


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


@torch.no_grad()
def prepare_task(info: TaskInfo, method, backbone, width: int) -> LoadedTask:
    """Merge the method and keep what scoring needs (see the module docstring)."""
    method.eval()
    method.merge()
    if method.needs_image_tower or not method.normalize_features:  # the linear probe scores raw features
        return LoadedTask(info, "image_tower", method=method, nbytes=_own_bytes(method, backbone))
    device = backbone.device
    eye = torch.eye(width, device=device)
    bias = method.logits(torch.zeros(1, width, device=device))[0].float()
    weight = (method.logits(eye).float() - bias).contiguous()
    generator = torch.Generator().manual_seed(0)
    probe = torch.nn.functional.normalize(torch.randn(8, width, generator=generator), dim=-1).to(device)
    expected = method.logits(probe).float()
    affine = probe @ weight + bias
    if torch.allclose(expected, affine, rtol=_AFFINE_TOLERANCE, atol=_AFFINE_TOLERANCE * float(expected.abs().max().clamp(min=1.0))):
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
            raise RlptuneError(f"{folder}: adapter was trained on backbone {identity}, but this server runs {self.backbone.identity}: {differs}")
        model_path = adapter_files(folder)[1]  # rlptune's names, or 0.1.0's
        if not model_path.is_file():
            raise RlptuneError(f"{folder}: missing {model_path.name}")
        return TaskInfo(name, payload["method"], tuple(payload["classnames"]), identity)

    def folder(self, name: str) -> Path:
        """The task's folder, guaranteed to lie directly inside the adapters folder."""
        check_task_name(name)
        path = self.root / name
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
        """Load every task (until the cache is full); returns how many are cached."""
        for info in self.infos():
            self.get(info.name)
            if self._cached_bytes >= self.cache_bytes:
                break
        return self.cached

    # -- changes --------------------------------------------------------------------------------------------
    def install(self, name: str, config_bytes: bytes, model_bytes: bytes) -> tuple[TaskInfo, bool]:
        """Validate an uploaded adapter against the backbone, then put it in place; (info, replaced an old one)."""
        target = self.folder(name)
        staging = self.root / f".staging-{uuid.uuid4().hex}"
        try:
            io.write_bytes(staging / ADAPTER_CONFIG, config_bytes)
            io.write_bytes(staging / ADAPTER_MODEL, model_bytes)
            try:
                info = self._read_info(staging, name)
                method = load_adapter(staging, self.backbone)
                task = prepare_task(info, method, self.backbone, self.width)
            except RlptuneError as exc:
                message = str(exc).replace(str(staging / ADAPTER_CONFIG), ADAPTER_CONFIG)
                message = message.replace(str(staging / ADAPTER_MODEL), ADAPTER_MODEL).replace(str(staging), "uploaded adapter")
                raise RlptuneError(message) from None
            with self._lock:
                replaced = target.exists()
                trash = self.root / f".trash-{uuid.uuid4().hex}"
                if replaced:
                    target.rename(trash)
                staging.rename(target)
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
        """Delete the task's folder and forget it. Raises KeyError when there is no such task."""
        target = self.folder(name)
        with self._lock:
            if name not in self._infos:
                raise KeyError(name)
            trash = self.root / f".trash-{uuid.uuid4().hex}"
            target.rename(trash)
            self._infos.pop(name)
            self._generation[name] = self._generation.get(name, 0) + 1
            old = self._cache.pop(name, None)
            if old is not None:
                self._cached_bytes -= old.nbytes
        shutil.rmtree(trash, ignore_errors=True)
