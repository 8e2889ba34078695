"""The training loop: cached features in, a trained prompt out, every epoch logged and checkpointed.

:class:`Trainer` puts the parts together: the run's arithmetic (:mod:`rlptune.engine.schedule`: batches, DDP
shards, Dassl's learning-rate schedule), the step loop (:mod:`rlptune.engine.steploop`), the divergence checks
(:mod:`rlptune.engine.divergence`) and the end-of-epoch callbacks (:mod:`rlptune.engine.callbacks`: validation and
best-epoch selection, the metric log, checkpoints, the progress bar).

Determinism by construction: everything random in epoch e (shuffle order, dropout masks) is seeded from
(seed, e), so a run resumed from the checkpoint after epoch e continues exactly as the uninterrupted run would
(bitwise on CPU).

Augmentation is the official one by default: frozen-image methods see, at every epoch, the features of a new random
resized crop and flip of every training image, drawn from the run's seed (view e + 1 of the feature cache), so a sweep
encodes each (backbone, image, seed, epoch) once and every method and setting shares it; ``aug_views = K`` cycles K
cached views instead (faster, measurably less faithful).

Precision: every forward (text and image side) runs under the backbone's autocast (bf16/fp16, nothing on fp32;
``auto`` is resolved before the run, see :mod:`rlptune.backbones.precision`); trainable tensors must be fp32
(checked), so there are no low-precision master weights, and fp16 uses a gradient scaler (its scale and the steps it
skipped are logged per epoch as ``grad_scale`` and ``skipped_steps``). Under ``torchrun`` the step runs through DistributedDataParallel with each global batch split
evenly over the ranks and rank 0 as the only writer (see :mod:`rlptune.engine.distributed`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from ..backbones import Backbone, eval_transform, train_transform
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from ..methods.base import ClosedFormData
from ..rundir import CHECKPOINT, METRICS
from .adapter import load_checkpoint
from .callbacks import (
    Checkpointing,
    EpochCallback,
    History,
    MetricsLog,
    ProgressBar,
    TrainState,
    Validation,
    truncate_metrics,
)
from .distributed import DistContext, current, wrap_for_training
from .divergence import DivergenceGuard
from .features import FeatureCache, ImageItems
from .schedule import Batching, make_optimizer, plan_batches
from .steploop import StepLoop


def check_trainable_dtypes(method) -> None:
    """Trainable tensors must be fp32: low precision comes from autocast, never from the master weights."""
    for name, p in method.named_parameters():
        if p.requires_grad and p.dtype != torch.float32:
            raise RlptuneError(
                f"trainable tensor {name} is {p.dtype}; trainable prompts must be fp32 (low precision comes from autocast)"
            )


class Trainer:
    """Train ``method`` on ``splits.train`` following ``config.train``; outputs go to ``output_dir``."""

    def __init__(
        self,
        config,
        method,
        splits: DatasetSplits,
        output_dir: str | Path,
        cache: FeatureCache | None = None,
        log: Callable[[str], None] | None = None,
        progress: bool | None = None,
        loggers: Sequence[Any] = (),
        monitors: Mapping[str, Callable[[], float]] | None = None,
    ) -> None:
        self.config = config
        self.method = method
        self.backbone: Backbone = method.backbone
        self.splits = splits
        self.output_dir = Path(output_dir)
        self.cache = cache or FeatureCache.from_config(config)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.checkpoint_path = self.output_dir / CHECKPOINT
        self.metrics_path = self.output_dir / METRICS
        self.dist: DistContext = current()
        self.loggers: list = list(loggers or [])
        # extra scores logged at the validation epochs (e.g. new-class accuracy under base-to-new); a monitor may
        # switch the method's classes or merge its prompt, so the trainer restores the training state after it
        self.monitors: dict[str, Callable[[], float]] = dict(monitors or {})
        self.scaler: torch.amp.GradScaler | None = None  # fp16 only, set by fit (inspected by benchmarks/gpu_check.py)

    # -- data ------------------------------------------------------------------------------------------------
    def epoch_features(self, epoch: int) -> torch.Tensor:
        """Frozen image features of the training items for ``epoch``: a fresh augmented view per epoch (the official
        recipe), one of ``aug_views`` cached views, cycled, when that opt-in is set."""
        settings = self.config.train
        if not settings.augment:
            return self.centre_features(self.splits.train)
        view = (epoch % settings.aug_views) + 1 if settings.aug_views > 0 else epoch + 1
        with self.dist.main_first():  # rank 0 builds the cache, the other ranks then read it
            return self.cache.get_or_encode(
                self.backbone,
                self.splits,
                self.splits.train,
                view=view,
                num_workers=settings.num_workers,
                augment=self.augment(),
                view_seed=settings.seed,
            )

    def centre_features(self, items) -> torch.Tensor:
        with self.dist.main_first():
            return self.cache.get_or_encode(
                self.backbone,
                self.splits,
                items,
                view=0,
                num_workers=self.config.train.num_workers,
                normalize=self.method.normalize_features,
            )

    # -- loop ----------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainState:
        """Train (or fit in closed form), resuming after the checkpoint's epoch with ``resume``; the method is left
        in eval mode with the last epoch's prompts (or the best validation epoch's with ``select_best``)."""
        settings = self.config.train
        method = self.method
        if not self.splits.train:
            raise RlptuneError(f"dataset {self.splits.name!r}: the training split is empty")
        labels = torch.tensor([it.label for it in self.splits.train])
        state = TrainState()
        method.unmerge()  # merged (inference) class features must never stand in for the trainable path
        if method.closed_form:
            return self._fit_closed_form(labels, state)
        params = [p for p in method.parameters() if p.requires_grad]
        if (settings.epochs == 0 and settings.iterations == 0) or not params:
            return state
        check_trainable_dtypes(method)
        optimizer = make_optimizer(params, settings)
        batching = plan_batches(settings, len(labels), self.dist)
        start = self._start_epoch(resume, optimizer, state)
        t0 = time.perf_counter()
        image_loader = self._image_loader() if method.needs_image_tower else None
        val = self._validation_inputs() if settings.val_every and self.splits.val else None
        guard = DivergenceGuard(self.checkpoint_path, method)
        loop = self._step_loop(optimizer, params, labels, batching, guard)
        method.on_train_start(batching.epochs_total, batching.steps_per_epoch)
        callbacks = self._callbacks(batching, start, val, state, guard, optimizer)
        self._run_epochs(loop, callbacks, range(start, batching.epochs_total), image_loader)
        state.seconds = time.perf_counter() - t0
        method.eval()
        return state

    def _step_loop(
        self, optimizer, params: list, labels: torch.Tensor, batching: Batching, guard: DivergenceGuard
    ) -> StepLoop:
        """The epoch's optimisation steps over the method as this process trains it (wrapped for DDP when on)."""
        method = self.method
        return StepLoop(
            method,
            wrap_for_training(method, self.dist),
            optimizer,
            params,
            labels,
            batching,
            self.config.train,
            self.backbone,
            self.dist,
            guard,
            self._grad_scaler(),
        )

    def _run_epochs(self, loop: StepLoop, callbacks: list, epochs: range, image_loader: ImageItems | None) -> None:
        """Each epoch's steps, then every end-of-epoch unit in order; after the last, the units' ends in reverse."""
        for epoch in epochs:
            record = loop.run_epoch(epoch, self._epoch_inputs(epoch, image_loader), image_loader)
            for callback in callbacks:
                callback.on_epoch_end(epoch, record)
        for callback in reversed(callbacks):
            callback.on_train_end()

    def _start_epoch(self, resume: bool, optimizer, state: TrainState) -> int:
        """The first epoch to run: after the checkpoint's when resuming from one (its later metric lines dropped),
        else 0 (and an earlier metrics file removed)."""
        if resume and self.checkpoint_path.is_file():
            meta = load_checkpoint(self.checkpoint_path, self.method, optimizer, self.config)
            start = int(meta["epoch"])
            state.resumed_from = start
            if self.dist.is_main:
                truncate_metrics(self.metrics_path, start)
                self.log(f"resuming after epoch {start} from {self.checkpoint_path}")
            return start
        if self.metrics_path.exists() and self.dist.is_main:  # a fresh start, or a resume with no checkpoint yet
            self.metrics_path.unlink()
        return 0

    def _grad_scaler(self) -> torch.amp.GradScaler | None:
        """fp16 autocast: gradients of fp32 prompts through fp16 activations underflow without loss scaling."""
        device = self.backbone.device
        scaler = None
        if self.backbone.precision == "fp16" and device.type in ("cuda", "cpu"):
            scaler = torch.amp.GradScaler(device.type)
        self.scaler = scaler
        return scaler

    def _callbacks(
        self, batching: Batching, start: int, val, state: TrainState, guard: DivergenceGuard, optimizer
    ) -> list[EpochCallback]:
        """The end-of-epoch units in their order (see :mod:`rlptune.engine.callbacks`); rank 0 is the one writer."""
        settings = self.config.train
        callbacks: list[EpochCallback] = [
            Validation(
                self.method, self.backbone, settings, batching.epochs_total, val, state, self.monitors, self.log
            ),
            guard,
            History(state),
        ]
        if self.dist.is_main:
            callbacks.append(MetricsLog(self.method, self.metrics_path, self.loggers, settings.log_diagnostics))
            callbacks.append(
                Checkpointing(
                    self.checkpoint_path,
                    self.method,
                    optimizer,
                    self.config,
                    settings.checkpoint_every,
                    batching.epochs_total,
                )
            )
            if self.progress:
                callbacks.append(ProgressBar(batching.epochs_total, start))
        return callbacks

    def _epoch_inputs(self, epoch: int, image_loader: ImageItems | None) -> torch.Tensor | None:
        """The epoch's frozen features, or None when the method reads images (then the loader moves to the epoch's
        fresh crop). Called before the epoch is seeded: encoding (a cache miss) may draw from the global RNG."""
        if image_loader is None:
            return self.epoch_features(epoch)
        if self.config.train.augment:  # a fresh crop per image and epoch
            image_loader.view, image_loader.view_seed = epoch + 1, self.config.train.seed
        return None

    def _fit_closed_form(self, labels: torch.Tensor, state: TrainState) -> TrainState:
        """Methods fitted in closed form (the linear probe) get centre-crop features; one record is logged."""
        if self.config.train.epochs == 0:
            return state
        t0 = time.perf_counter()
        data = ClosedFormData(self.centre_features(self.splits.train).cpu(), labels, log=self.log)
        if self.splits.val:
            data.val_features = self.centre_features(self.splits.val).cpu()
            data.val_labels = torch.tensor([it.label for it in self.splits.val])
        record = {"epoch": 1, **self.method.fit_closed_form(data)}
        self.method.unmerge()
        if self.dist.is_main:
            if self.metrics_path.exists():
                self.metrics_path.unlink()
            MetricsLog(self.method, self.metrics_path, self.loggers, diagnostics=False).write(record)
        state.records.append(record)
        state.epochs_done = 1
        state.seconds = time.perf_counter() - t0
        self.method.eval()
        return state

    def _validation_inputs(self):
        """What per-epoch validation needs, prepared once: centre-crop features (or images) and labels."""
        items = self.splits.val
        labels = torch.tensor([it.label for it in items])
        if self.method.needs_image_tower:
            return ImageItems(self.splits, items, eval_transform(self.backbone)), labels
        return self.centre_features(items), labels

    def augment(self) -> tuple[float, bool]:
        """(smallest crop fraction, flip): the settings, with flip off for datasets whose labels a mirror changes."""
        settings = self.config.train
        return (settings.crop_scale, settings.flip and self.splits.hflip_invariant)

    def _image_loader(self) -> ImageItems:
        crop, flip = self.augment()
        if not self.config.train.augment:
            return ImageItems(self.splits, self.splits.train, eval_transform(self.backbone))
        transform = train_transform(self.backbone, crop_scale=(crop, 1.0), flip=flip)
        return ImageItems(self.splits, self.splits.train, transform, view=1, view_seed=self.config.train.seed)
