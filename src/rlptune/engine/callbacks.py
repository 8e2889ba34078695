"""What happens at the end of every epoch, as separate units behind one small interface.

The trainer's step loop hands each epoch's record (a dict: epoch, lr, loss, train_acc, steps ...) to its callbacks in
order; each may add fields to it, write it, or stop the run by raising:

1. :class:`Validation` — ``val_acc`` on the validation split at the validation epochs, the best epoch kept with
   ``select_best``, and the monitors (e.g. ``new_acc``);
2. :class:`~rlptune.engine.divergence.DivergenceGuard` — the effective prompts must be finite;
3. :class:`History` — the record joins the run's :class:`TrainState`;
4. :class:`MetricsLog` — diagnostics, the ``metrics.jsonl`` line and the optional loggers (rank 0 only);
5. :class:`Checkpointing` — the resumable checkpoint (rank 0 only);
6. :class:`ProgressBar` — the terminal's bar (rank 0 only, on a terminal).

When the loop ends, ``on_train_end`` runs in reverse order (the bar closes before the best epoch is restored).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch

from .. import io
from ..analysis.spectrum import prompt_diagnostics
from .adapter import save_checkpoint
from .features import ImageItems


class EpochCallback(Protocol):
    """The interface: called after every epoch (0-based ``epoch``) with its record, and once when training ends."""

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None: ...

    def on_train_end(self) -> None: ...


@dataclass
class TrainState:
    """What the loop hands back: per-epoch records and the last epoch completed."""

    records: list[dict[str, Any]] = field(default_factory=list)
    epochs_done: int = 0
    resumed_from: int | None = None
    seconds: float = 0.0
    best: tuple[int, float, dict] | None = None  # (epoch, validation accuracy, trained tensors) with select_best


def prompt_diagnostics_for(method) -> dict[str, Any]:
    """Singular-value diagnostics of every prompt of the method (ID_1, effective rank …), JSON-ready."""
    out = {}
    for name, (effective, initial) in method.prompt_matrices().items():
        out[name] = prompt_diagnostics(effective, initial)
    return out


class Validation:
    """``val_acc`` at the validation epochs (every ``val_every``-th and the last), the best epoch's tensors kept with
    ``select_best`` (restored when training ends), and the monitors: extra scores that may switch the method's
    classes or merge its prompt, so the training state is restored after each."""

    def __init__(
        self,
        method,
        backbone,
        settings,
        epochs_total: int,
        val,
        state: TrainState,
        monitors: Mapping[str, Callable[[], float]],
        log: Callable[[str], None],
    ) -> None:
        self.method, self.backbone, self.settings = method, backbone, settings
        self.epochs_total, self.val, self.state = epochs_total, val, state
        self.monitors, self.log = dict(monitors), log

    def is_validation_epoch(self, epoch: int) -> bool:
        every = self.settings.val_every
        return bool(every) and ((epoch + 1) % every == 0 or epoch + 1 == self.epochs_total)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if not self.is_validation_epoch(epoch):
            return
        state = self.state
        if self.val is not None:
            record["val_acc"] = self.accuracy()
            if self.settings.select_best and (state.best is None or record["val_acc"] > state.best[1]):
                state.best = (epoch + 1, record["val_acc"], self.method.adapter_state())
        for key, monitor in self.monitors.items():
            record[key] = monitor()
            self.method.unmerge()
            self.method.train()

    @torch.no_grad()
    def accuracy(self) -> float:
        """Top-1 (%) of the current prompts on the validation inputs (centre-crop features, or images)."""
        inputs, labels = self.val
        method = self.method
        was_training = method.training
        method.eval()
        with self.backbone.autocast():
            text = method.class_features()
            if isinstance(inputs, ImageItems):
                chunks = [
                    method.encode_images(torch.stack([inputs[i][0] for i in range(s, min(s + 64, len(inputs)))]))
                    for s in range(0, len(inputs), 64)
                ]
                feats = torch.cat(chunks)
            else:
                feats = inputs.to(self.backbone.device)
            preds = method.scores(feats, text).argmax(-1).cpu()
        method.train(was_training)
        return 100.0 * float((preds == labels).float().mean())

    def on_train_end(self) -> None:
        if self.settings.select_best and self.state.best is not None:
            epoch_kept, accuracy, tensors = self.state.best
            self.method.load_adapter_state(tensors, f"epoch {epoch_kept}")
            self.log(f"kept epoch {epoch_kept} (best validation accuracy {accuracy:.2f}%)")


class History:
    """Adds each epoch's record to the run's state (every rank keeps it)."""

    def __init__(self, state: TrainState) -> None:
        self.state = state

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.state.records.append(record)
        self.state.epochs_done = epoch + 1

    def on_train_end(self) -> None:
        """Nothing to finish."""


class MetricsLog:
    """The one writer of the epoch records: prompt diagnostics (``log_diagnostics``), a ``metrics.jsonl`` line and
    every configured logger (TensorBoard, CSV)."""

    def __init__(self, method, path: Path, loggers: Sequence[Any], diagnostics: bool) -> None:
        self.method, self.path, self.loggers, self.diagnostics = method, path, list(loggers), diagnostics

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        if self.diagnostics:
            found = prompt_diagnostics_for(self.method)
            if found:
                record["diagnostics"] = found
        self.write(record)

    def write(self, record: dict[str, Any]) -> None:
        io.append_jsonl(self.path, record)
        for logger in self.loggers:
            logger.log_epoch(record)

    def on_train_end(self) -> None:
        """Nothing to finish: the loggers are closed by whoever made them."""


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop metric lines of epochs after the checkpoint (a resumed run re-runs them), atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("epoch", 0) <= epochs_done:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a torn last line from a kill mid-write
    io.write_text(path, "".join(k + "\n" for k in keep))


class Checkpointing:
    """A resumable checkpoint (tensors, optimiser, epoch) every ``every`` epochs and after the last (0: never)."""

    def __init__(self, path: Path, method, optimizer, config, every: int, epochs_total: int) -> None:
        self.path, self.method, self.optimizer, self.config = path, method, optimizer, config
        self.every, self.epochs_total = every, epochs_total

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        last = epoch + 1 == self.epochs_total
        if self.every and ((epoch + 1) % self.every == 0 or last):
            save_checkpoint(self.path, self.method, self.optimizer, epoch + 1, self.config)

    def on_train_end(self) -> None:
        """Nothing to finish: the last epoch's checkpoint is written by on_epoch_end."""


class ProgressBar:
    """tqdm's bar on stderr, one tick per epoch with the loss and training accuracy (started at a resumed epoch)."""

    def __init__(self, epochs_total: int, start: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=epochs_total, initial=start, desc="train", unit="epoch", file=sys.stderr)

    def on_epoch_end(self, epoch: int, record: dict[str, Any]) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")

    def on_train_end(self) -> None:
        self.bar.close()


__all__ = [
    "Checkpointing",
    "EpochCallback",
    "History",
    "MetricsLog",
    "ProgressBar",
    "TrainState",
    "Validation",
    "prompt_diagnostics_for",
    "truncate_metrics",
]
