"""The training loop: cached features in, a trained prompt out, every epoch logged and checkpointed.

Determinism by construction: everything random in epoch e (shuffle order, dropout masks) is seeded from
(seed, e), so a run resumed from the checkpoint after epoch e continues exactly as the uninterrupted run would
(bitwise on CPU). The learning-rate schedule is Dassl's, exactly: ``warmup_epochs`` W at a constant ``warmup_lr``,
then a cosine whose count starts after the warm-up, lr(e) = min_lr + ½·(lr − min_lr)·(1 + cos(π·(e − W) / epochs)) —
epoch W runs at the full rate. With ``schedule_unit = step`` (CLIP-LoRA) the cosine runs over the steps instead.

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

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from .. import __version__, io
from ..backbones import Backbone, eval_transform, train_transform
from ..data.items import DatasetSplits
from ..analysis.spectrum import prompt_diagnostics
from ..errors import RlptuneError
from ..methods.base import Batch, ClosedFormData
from .adapter import load_checkpoint, save_adapter, save_checkpoint
from .distributed import DistContext, current, wrap_for_training
from .evaluate import classification_metrics
from .features import FeatureCache, ImageItems, encode_items
from .hub import write_model_card


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
    params = list(params)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise RlptuneError(f"train.optimizer {settings.optimizer!r}: expected sgd or adamw")


def epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + stream * 104_729) % (2**63 - 1)


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
        self.checkpoint_path = self.output_dir / "checkpoint" / "last.safetensors"
        self.metrics_path = self.output_dir / "metrics.jsonl"
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
                self.backbone, self.splits, self.splits.train, view=view, num_workers=settings.num_workers,
                augment=self.augment(), view_seed=settings.seed,
            )

    def centre_features(self, items) -> torch.Tensor:
        with self.dist.main_first():
            return self.cache.get_or_encode(self.backbone, self.splits, items, view=0, num_workers=self.config.train.num_workers,
                                            normalize=self.method.normalize_features)

    # -- loop ----------------------------------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> TrainState:
        settings = self.config.train
        method = self.method
        ddp = self.dist
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
        for name, p in method.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                raise RlptuneError(
                    f"trainable tensor {name} is {p.dtype}; trainable prompts must be fp32 (low precision comes from autocast)"
                )
        optimizer = make_optimizer(params, settings)
        count = len(labels)
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
            drop_last = True  # equal shards on every rank: the mean of rank means is the global mean
        stop = (count // batch) * batch if drop_last else count
        steps_per_epoch = max(1, -(-stop // batch))
        epochs_total = total_epochs(settings, steps_per_epoch)
        steps_total = total_steps(settings, steps_per_epoch)

        start = 0
        if resume and self.checkpoint_path.is_file():
            meta = load_checkpoint(self.checkpoint_path, method, optimizer, self.config)
            start = int(meta["epoch"])
            state.resumed_from = start
            if ddp.is_main:
                self._truncate_metrics(start)
                self.log(f"resuming after epoch {start} from {self.checkpoint_path}")
        elif self.metrics_path.exists() and ddp.is_main:  # a fresh start, or a resume with no checkpoint yet
            self.metrics_path.unlink()

        t0 = time.perf_counter()
        image_loader = self._image_loader() if method.needs_image_tower else None
        val = self._validation_inputs() if settings.val_every and self.splits.val else None
        device = self.backbone.device
        step_module = wrap_for_training(method, ddp)
        # fp16 autocast: gradients of fp32 prompts through fp16 activations underflow without loss scaling
        scaler = None
        if self.backbone.precision == "fp16" and device.type in ("cuda", "cpu"):
            scaler = torch.amp.GradScaler(device.type)
        self.scaler = scaler
        method.on_train_start(epochs_total, steps_per_epoch)

        bar = None
        if self.progress and ddp.is_main:
            from tqdm import tqdm

            bar = tqdm(total=epochs_total, initial=start, desc="train", unit="epoch", file=sys.stderr)
        for epoch in range(start, epochs_total):
            if image_loader is not None:
                if settings.augment:  # a fresh crop per image and epoch
                    image_loader.view, image_loader.view_seed = epoch + 1, settings.seed
                feats = None
            else:
                feats = self.epoch_features(epoch)  # before seeding: encoding (a cache miss) may draw from the global RNG
            method.train()
            method.on_epoch_start(epoch)
            torch.manual_seed(epoch_seed(settings.seed, epoch, 1))  # dropout masks of this epoch (same on every rank)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch_seed(settings.seed, epoch, 2)))
            total_loss, correct, seen, steps, skipped = 0.0, 0, 0, 0, 0
            logged: dict[str, float] = {}
            lr = learning_rate(settings, epoch, 0, steps_per_epoch)
            for step, start_idx in enumerate(range(0, stop, batch)):
                if epoch * steps_per_epoch + step >= steps_total:
                    break  # ``iterations`` reached inside the last epoch
                lr = learning_rate(settings, epoch, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                idx = ddp.shard(order[start_idx : start_idx + batch])
                y = labels[idx].to(device)
                with self.backbone.autocast():
                    if feats is not None:
                        inputs = Batch(labels=y, features=feats[idx].to(device), epoch=epoch, step=step)
                    else:
                        images = torch.stack([image_loader[int(i)][0] for i in idx]).to(device)
                        inputs = Batch(labels=y, images=images, epoch=epoch, step=step)
                    loss, logits, logs = step_module(inputs)
                    loss = loss.float()
                if not torch.isfinite(loss):
                    raise RlptuneError(
                        f"training diverged: non-finite loss at epoch {epoch + 1}, step {steps + 1} (lr {lr:g}); "
                        f"the last good checkpoint is {self.checkpoint_path if self.checkpoint_path.exists() else 'none'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scale = scaler.get_scale()
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    skipped += int(scaler.get_scale() < scale)  # inf/nan gradients: the scaler skipped this step
                else:
                    loss.backward()
                    optimizer.step()
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    self._diverged(f"the trainable tensors became non-finite in the update at epoch {epoch + 1}, step {steps + 1}", lr)
                total_loss += float(loss.detach()) * len(idx)
                for key, value in logs.items():
                    logged[key] = logged.get(key, 0.0) + float(value) * len(idx)
                correct += int((logits.detach().argmax(-1) == y).sum())
                seen += len(idx)
                steps += 1
            method.on_epoch_end(epoch)
            if ddp.enabled:
                total_loss, correct, seen = ddp.all_reduce_sum([total_loss, correct, seen], device=self._reduce_device())
                correct, seen = int(round(correct)), int(round(seen))
            record: dict[str, Any] = {
                "epoch": epoch + 1,
                "lr": lr,
                "loss": total_loss / max(seen, 1),
                "train_acc": 100.0 * correct / max(seen, 1),
                "steps": steps,
            }
            record.update({k: v / max(seen, 1) for k, v in logged.items()})
            if scaler is not None:  # fp16: the loss scale in use and the steps it skipped (overflowed gradients)
                record["grad_scale"] = float(scaler.get_scale())
                record["skipped_steps"] = skipped
            validation_epoch = bool(settings.val_every) and ((epoch + 1) % settings.val_every == 0 or epoch + 1 == epochs_total)
            if val is not None and validation_epoch:
                record["val_acc"] = self._validation_accuracy(val)
                if settings.select_best and (state.best is None or record["val_acc"] > state.best[1]):
                    state.best = (epoch + 1, record["val_acc"], method.adapter_state())
            if validation_epoch:
                for key, monitor in self.monitors.items():
                    record[key] = monitor()
                    method.unmerge()
                    method.train()
            # the effective prompts (e.g. P_fr + P_A @ P_B) can overflow while their factors are finite: never log
            # diagnostics of, or checkpoint, a diverged prompt
            for name, (effective, _) in method.prompt_matrices().items():
                if not bool(torch.isfinite(effective).all()):
                    self._diverged(f"prompt {name!r} became non-finite during epoch {epoch + 1}", lr)
            state.records.append(record)
            state.epochs_done = epoch + 1
            if ddp.is_main:  # the one writer
                if settings.log_diagnostics:
                    diagnostics = prompt_diagnostics_for(method)
                    if diagnostics:
                        record["diagnostics"] = diagnostics
                io.append_jsonl(self.metrics_path, record)
                for logger in self.loggers:
                    logger.log_epoch(record)
                last = epoch + 1 == epochs_total
                if settings.checkpoint_every and ((epoch + 1) % settings.checkpoint_every == 0 or last):
                    save_checkpoint(self.checkpoint_path, method, optimizer, epoch + 1, self.config)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
        if bar is not None:
            bar.close()
        if settings.select_best and state.best is not None:
            epoch_kept, accuracy, tensors = state.best
            method.load_adapter_state(tensors, f"epoch {epoch_kept}")
            self.log(f"kept epoch {epoch_kept} (best validation accuracy {accuracy:.2f}%)")
        state.seconds = time.perf_counter() - t0
        method.eval()
        return state

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
            io.append_jsonl(self.metrics_path, record)
            for logger in self.loggers:
                logger.log_epoch(record)
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

    @torch.no_grad()
    def _validation_accuracy(self, val) -> float:
        inputs, labels = val
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

    def _diverged(self, what: str, lr: float) -> None:
        last = self.checkpoint_path if self.checkpoint_path.exists() else "none"
        raise RlptuneError(f"training diverged: {what} (lr {lr:g}); the last good checkpoint is {last}")

    def _reduce_device(self) -> torch.device:
        return self.backbone.device if self.dist.backend == "nccl" else torch.device("cpu")

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

    def _truncate_metrics(self, epochs_done: int) -> None:
        """Drop metric lines of epochs after the checkpoint (they will be re-run), atomically."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epochs_done:
                    keep.append(line)
            except json.JSONDecodeError:
                break  # a torn last line from a kill mid-write
        io.write_text(self.metrics_path, "".join(k + "\n" for k in keep))


def evaluate_split(method, splits: DatasetSplits, split: str, cache: FeatureCache, batch_size: int = 128, num_workers: int = 0) -> dict:
    """Metrics of ``method`` on one split (features from the cache when the image tower is untouched)."""
    items = splits.split(split)
    if not items:
        raise RlptuneError(f"dataset {splits.name!r}: the {split} split is empty")
    labels = torch.tensor([it.label for it in items])
    method.eval()
    if method.needs_image_tower:
        feats = encode_items(method.backbone, splits, items, 0, batch_size, num_workers, encoder=method.encode_images)
    else:
        feats = cache.get_or_encode(method.backbone, splits, items, view=0, batch_size=batch_size, num_workers=num_workers,
                                    normalize=method.normalize_features)
    with torch.no_grad():
        method.merge()
        preds = torch.cat(
            [method.logits(feats[i : i + 4096].to(method.backbone.device)).argmax(-1).cpu() for i in range(0, len(feats), 4096)]
        )
    # per_class is in class order; its names beside it, so result.json and eval --json say which class is which
    return {**classification_metrics(preds, labels, len(method.classnames)), "per_class_names": list(method.classnames)}


def library_versions() -> dict[str, str]:
    import open_clip
    import torchvision

    return {
        "rlptune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "python": sys.version.split()[0],
    }


def finish_run(output_dir: Path, method, config, state: TrainState, metrics: dict, extra: dict | None = None) -> dict:
    """Save the adapter, then write result.json last (atomically): its presence means the run is complete."""
    save_adapter(output_dir / "adapter", method, config)
    result = {
        "method": method.registered_name,
        "dataset": extra.get("dataset") if extra else None,
        "seed": config.train.seed,
        "shots": config.data.shots,
        "backbone": method.backbone.identity,
        "trainable_params": method.num_trainable(),
        "epochs": state.epochs_done,
        **({"selected_epoch": state.best[0]} if state.best is not None else {}),
        "train_seconds": round(state.seconds, 3),
        "metrics": metrics,
        "prompt_diagnostics": prompt_diagnostics_for(method),
        "versions": library_versions(),
        **(extra or {}),
    }
    io.write_json(output_dir / "result.json", result)
    write_model_card(output_dir / "adapter", result=result)  # a Hub-shaped adapter: its README.md model card
    return result
