"""Data-parallel training with ``torchrun``: one process per device, DistributedDataParallel, one writer.

Launch::

    torchrun --nproc_per_node=N --no-python rlptune train ...     # or: torchrun ... -m rlptune train ...

``torchrun`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``; :func:`init_from_env`
then joins the process group (nccl when training on CUDA, gloo on CPU) and pins each process to its GPU
(``cuda:LOCAL_RANK``). What every rank does:

- **Same global order, sharded batches.** Every rank draws the same seeded permutation of the training set each
  epoch; each global batch of ``train.batch_size`` items is split into ``world_size`` equal contiguous shards and
  rank r trains on shard r. ``batch_size`` must be divisible by the number of processes, and incomplete batches
  are dropped, so every shard has the same size: then each rank's loss is the mean over its shard, DDP averages
  the gradients over ranks, and the update equals the single-process update on the whole global batch
  (tested to 1e-5 against one process).
- **Same randomness.** Dropout masks are seeded per epoch on every rank identically (the prompt is shared).
- **One writer.** Rank 0 writes metrics, checkpoints, the adapter and ``result.json``; other ranks wait at
  barriers. Rank 0 builds the image-feature cache (and the few-shot split file) first; the others then read it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel
import torch.distributed as dist
from torch import nn

from ..errors import RlptuneError

__all__ = ["DistContext", "current", "init_from_env", "is_launched", "wrap_for_training"]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among ``world_size`` processes (1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. builds a cache), then the other ranks run it (and read the cache)."""
        if self.enabled and not self.is_main:
            dist.barrier()
        try:
            yield
        finally:
            if self.enabled and self.is_main:
                dist.barrier()

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous, equal-sized share of a global batch of indices."""
        if not self.enabled:
            return batch
        size = len(batch) // self.world_size
        if size * self.world_size != len(batch):
            raise RlptuneError(
                f"a global batch of {len(batch)} cannot be split evenly over {self.world_size} processes"
            )
        return batch[self.rank * size : (self.rank + 1) * size]

    def all_reduce_sum(self, values: Sequence[float], device: torch.device | str = "cpu") -> list[float]:
        """Element-wise sums over ranks (float64), for logging totals."""
        if not self.enabled:
            return [float(v) for v in values]
        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.tolist()


def is_launched() -> bool:
    """True when started by torchrun (or any launcher setting WORLD_SIZE > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def current() -> DistContext:
    """The process group this process belongs to (a one-process context when none is initialised)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext()
    return DistContext(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
        backend=str(dist.get_backend()),
    )


def init_from_env(device: str = "auto", timeout_minutes: float = 60.0) -> DistContext:
    """Join the process group described by torchrun's environment (no-op when not launched or already joined).

    ``device`` is the run's ``backbone.device``: training on CUDA uses nccl and pins this process to
    ``cuda:LOCAL_RANK``; on CPU it uses gloo.
    """
    if not is_launched():
        return current()
    if not dist.is_available():
        raise RlptuneError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if dist.is_initialized():
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda"))
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RlptuneError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, init_method="env://", timeout=datetime.timedelta(minutes=timeout_minutes))
    return current()


def training_device(device: str, context: DistContext) -> str:
    """The device this rank trains on: ``cuda:LOCAL_RANK`` for a CUDA run under torchrun, else ``device``."""
    if context.enabled and torch.cuda.is_available() and (device == "auto" or str(device).startswith("cuda")):
        return f"cuda:{context.local_rank}"
    return device


class _Step(nn.Module):
    """What DDP wraps: the method, with ``forward(batch)`` = its training step as (loss, logits, logs)."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch):
        out = self.method.training_step(batch)
        return out.loss, out.logits, out.logs


def wrap_for_training(method: nn.Module, context: DistContext) -> nn.Module:
    """A module whose ``forward(batch)`` runs ``method.training_step(batch)``: DDP-wrapped when distributed.

    Rank 0's trainable tensors are broadcast at construction (all ranks start equal); gradients are averaged
    across ranks in backward. Buffers (class-token embeddings, frozen prompt parts) are identical by
    construction and are not re-broadcast each step.
    """
    module = _Step(method)
    if not context.enabled:
        return module
    device = next((p.device for p in method.parameters() if p.requires_grad), torch.device("cpu"))
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(
        module, device_ids=ids, output_device=ids[0] if ids else None, broadcast_buffers=False
    )
