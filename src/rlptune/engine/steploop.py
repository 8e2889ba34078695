"""The step loop: one epoch of optimiser steps over the shuffled training set, and the epoch's record.

Everything random in epoch e (shuffle order, dropout masks) is seeded from (seed, e), so a run resumed after epoch e
draws what the uninterrupted run would. Under DDP each global batch is split evenly over the ranks and the epoch's
sums (loss, correct, seen) are reduced over them before the record is made. fp16 runs through a gradient scaler
whose scale and skipped steps are recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..methods.base import Batch
from .distributed import DistContext
from .divergence import DivergenceGuard
from .features import ImageItems
from .schedule import Batching, epoch_seed, learning_rate


@dataclass
class EpochSums:
    """Running sums of one epoch, weighted by batch size."""

    loss: float = 0.0
    correct: int = 0
    seen: int = 0
    steps: int = 0
    skipped: int = 0
    logged: dict[str, float] = field(default_factory=dict)


class StepLoop:
    """Runs the optimiser steps of one epoch at a time; everything it needs is fixed for the run."""

    def __init__(
        self,
        method,
        step_module,
        optimizer,
        params: list,
        labels: torch.Tensor,
        batching: Batching,
        settings,
        backbone,
        ddp: DistContext,
        guard: DivergenceGuard,
        scaler: torch.amp.GradScaler | None,
    ) -> None:
        self.method, self.step_module, self.optimizer, self.params = method, step_module, optimizer, params
        self.labels, self.batching, self.settings, self.backbone = labels, batching, settings, backbone
        self.ddp, self.guard, self.scaler = ddp, guard, scaler
        self.device = backbone.device

    def run_epoch(self, epoch: int, feats: torch.Tensor | None, images: ImageItems | None) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based) on ``feats`` (frozen features) or ``images``; return its record."""
        settings, b, method = self.settings, self.batching, self.method
        method.train()
        method.on_epoch_start(epoch)
        torch.manual_seed(epoch_seed(settings.seed, epoch, 1))  # dropout masks of this epoch (same on every rank)
        order = torch.randperm(b.count, generator=torch.Generator().manual_seed(epoch_seed(settings.seed, epoch, 2)))
        sums = EpochSums()
        lr = learning_rate(settings, epoch, 0, b.steps_per_epoch)
        for step, start_idx in enumerate(range(0, b.stop, b.batch)):
            if epoch * b.steps_per_epoch + step >= b.steps_total:
                break  # ``iterations`` reached inside the last epoch
            lr = learning_rate(settings, epoch, step, b.steps_per_epoch)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = self.ddp.shard(order[start_idx : start_idx + b.batch])
            self.step(epoch, step, idx, feats, images, lr, sums)
        method.on_epoch_end(epoch)
        return self.record(epoch, lr, sums)

    def step(self, epoch: int, step: int, idx: torch.Tensor, feats, images, lr: float, sums: EpochSums) -> None:
        """One optimiser step on the items ``idx``, checked for divergence before and after the update."""
        y = self.labels[idx].to(self.device)
        with self.backbone.autocast():
            if feats is not None:
                inputs = Batch(labels=y, features=feats[idx].to(self.device), epoch=epoch, step=step)
            else:
                batch = torch.stack([images[int(i)][0] for i in idx]).to(self.device)
                inputs = Batch(labels=y, images=batch, epoch=epoch, step=step)
            loss, logits, logs = self.step_module(inputs)
            loss = loss.float()
        self.guard.check_loss(loss, epoch, sums.steps, lr)
        self.optimizer.zero_grad(set_to_none=True)
        scaler = self.scaler
        if scaler is not None:
            scale = scaler.get_scale()
            scaler.scale(loss).backward()
            scaler.step(self.optimizer)
            scaler.update()
            sums.skipped += int(scaler.get_scale() < scale)  # inf/nan gradients: the scaler skipped this step
        else:
            loss.backward()
            self.optimizer.step()
        self.guard.check_tensors(self.params, epoch, sums.steps, lr)
        sums.loss += float(loss.detach()) * len(idx)
        for key, value in logs.items():
            sums.logged[key] = sums.logged.get(key, 0.0) + float(value) * len(idx)
        sums.correct += int((logits.detach().argmax(-1) == y).sum())
        sums.seen += len(idx)
        sums.steps += 1

    def record(self, epoch: int, lr: float, sums: EpochSums) -> dict[str, Any]:
        """The epoch's record: means over every rank's images (DDP reduces the sums first)."""
        total_loss, correct, seen = sums.loss, sums.correct, sums.seen
        if self.ddp.enabled:
            device = self.device if self.ddp.backend == "nccl" else torch.device("cpu")
            total_loss, correct, seen = self.ddp.all_reduce_sum([total_loss, correct, seen], device=device)
            correct, seen = int(round(correct)), int(round(seen))
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": lr,
            "loss": total_loss / max(seen, 1),
            "train_acc": 100.0 * correct / max(seen, 1),
            "steps": sums.steps,
        }
        record.update({k: v / max(seen, 1) for k, v in sums.logged.items()})
        if self.scaler is not None:  # fp16: the loss scale in use and the steps it skipped (overflowed gradients)
            record["grad_scale"] = float(self.scaler.get_scale())
            record["skipped_steps"] = sums.skipped
        return record


__all__ = ["EpochSums", "StepLoop"]
