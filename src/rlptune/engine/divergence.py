"""Divergence checks: a non-finite loss, trainable tensors or effective prompt stops the run with one line that
names where it happened, the learning rate and the last good checkpoint.

The effective prompts (e.g. P_fr + P_A @ P_B) can overflow while their factors are finite, so they are checked at
every epoch's end, before diagnostics are logged or a checkpoint is written: a diverged prompt is never saved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from ..errors import RlptuneError


class DivergenceGuard:
    """Raises :class:`RlptuneError` on the first non-finite number of ``method``'s training; ``checkpoint_path`` is
    named as the way back. An end-of-epoch callback (see :mod:`rlptune.engine.callbacks`) and the step loop's check."""

    def __init__(self, checkpoint_path: Path, method) -> None:
        self.checkpoint_path = checkpoint_path
        self.method = method

    def fail(self, what: str, lr: float) -> None:
        last = self.checkpoint_path if self.checkpoint_path.exists() else "none"
        raise RlptuneError(f"training diverged: {what} (lr {lr:g}); the last good checkpoint is {last}")

    def check_loss(self, loss: torch.Tensor, epoch: int, step: int, lr: float) -> None:
        """Before the update: a non-finite loss would poison every trainable tensor (``step`` is 0-based)."""
        if not torch.isfinite(loss):
            self.fail(f"non-finite loss at epoch {epoch + 1}, step {step + 1}", lr)

    def check_tensors(self, params: Iterable[torch.Tensor], epoch: int, step: int, lr: float) -> None:
        """After the update: an overflowing step leaves non-finite tensors behind a finite loss."""
        if not all(bool(torch.isfinite(p).all()) for p in params):
            self.fail(
                f"the trainable tensors became non-finite in the update at epoch {epoch + 1}, step {step + 1}", lr
            )

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        """The effective prompts after epoch ``epoch`` (0-based), before anything is written."""
        for name, (effective, _) in self.method.prompt_matrices().items():
            if not bool(torch.isfinite(effective).all()):
                self.fail(f"prompt {name!r} became non-finite during epoch {epoch + 1}", record["lr"])

    def on_train_end(self) -> None:
        """Nothing to finish."""


__all__ = ["DivergenceGuard"]
