"""The arithmetic of a run, apart from the loop that follows it: batches per epoch (DDP included), the learning
rate of every step, the optimiser and the seeds of each epoch.

The learning-rate schedule is Dassl's, exactly: ``warmup_epochs`` W at a constant ``warmup_lr``, then a cosine whose
count starts after the warm-up, lr(e) = min_lr + ½·(lr − min_lr)·(1 + cos(π·(e − W) / epochs)) — epoch W runs at the
full rate. With ``schedule_unit = step`` (CLIP-LoRA) the cosine runs over the steps instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import RlptuneError
from .distributed import DistContext


def learning_rate(settings, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The learning rate of ``step`` of ``epoch`` (0-based) under Dassl's constant warm-up + cosine (see above)."""
    if epoch < settings.warmup_epochs:
        return settings.warmup_lr
    if settings.scheduler == "constant":
        return settings.lr
    if settings.schedule_unit == "step":
        total = max(total_steps(settings, steps_per_epoch) - settings.warmup_epochs * steps_per_epoch, 1)
        t = (epoch - settings.warmup_epochs) * steps_per_epoch + step
    else:
        total = max(settings.epochs, 1)
        t = epoch - settings.warmup_epochs
    return settings.min_lr + 0.5 * (settings.lr - settings.min_lr) * (1.0 + math.cos(math.pi * t / total))


def total_steps(settings, steps_per_epoch: int) -> int:
    """Optimiser steps of the whole run: ``iterations`` when set, else epochs × steps per epoch."""
    return settings.iterations if settings.iterations > 0 else settings.epochs * steps_per_epoch


def total_epochs(settings, steps_per_epoch: int) -> int:
    """Epochs the loop runs: ``epochs``, or enough (the last one cut short) to make ``iterations`` steps."""
    if settings.iterations > 0:
        return math.ceil(settings.iterations / max(steps_per_epoch, 1))
    return settings.epochs


def make_optimizer(params, settings) -> torch.optim.Optimizer:
    """SGD with momentum (the papers') or AdamW (CLIP-LoRA), over the trainable tensors."""
    params = list(params)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise RlptuneError(f"train.optimizer {settings.optimizer!r}: expected sgd or adamw")


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    """The seed of one random stream (1: dropout masks, 2: shuffle order) of one epoch: a resumed run redraws the
    same numbers as the uninterrupted one."""
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


@dataclass(frozen=True)
class Batching:
    """How one epoch walks the training set: ``count`` images in global batches of ``batch``, the first ``stop``
    of the shuffled order used (a short last batch is dropped under DDP or when a full batch fits)."""

    count: int
    batch: int
    stop: int
    steps_per_epoch: int
    epochs_total: int
    steps_total: int


def plan_batches(settings, count: int, ddp: DistContext) -> Batching:
    """The batch arithmetic of a run; under DDP the global batch is split evenly over the ranks (equal shards on
    every rank, so the mean of rank means is the global mean), and a batch that cannot be split is one line."""
    batch = min(settings.batch_size, count)
    drop_last = count >= settings.batch_size
    if ddp.enabled:
        if settings.batch_size % ddp.world_size:
            raise RlptuneError(
                f"train.batch_size {settings.batch_size} is the global batch and must be divisible by the "
                f"{ddp.world_size} processes"
            )
        batch = (batch // ddp.world_size) * ddp.world_size
        if batch == 0:
            raise RlptuneError(f"{count} training images cannot be split over {ddp.world_size} processes")
        drop_last = True
    stop = (count // batch) * batch if drop_last else count
    steps_per_epoch = max(1, -(-stop // batch))
    return Batching(
        count,
        batch,
        stop,
        steps_per_epoch,
        total_epochs(settings, steps_per_epoch),
        total_steps(settings, steps_per_epoch),
    )


__all__ = [
    "Batching",
    "epoch_seed",
    "learning_rate",
    "make_optimizer",
    "plan_batches",
    "total_epochs",
    "total_steps",
]
