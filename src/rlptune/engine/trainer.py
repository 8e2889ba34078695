"""The training loop: cached features in, a trained prompt out, every epoch logged and checkpointed.

Determinism by construction: everything random in epoch e (shuffle order, dropout masks) is seeded from
(seed, e), so a run resumed from the checkpoint after epoch e continues exactly as the uninterrupted run would
(bitwise on CPU). The learning-rate schedule is CoOp's (Dassl's): ``warmup_epochs`` at a constant ``warmup_lr``,
then cosine annealing per epoch, lr(e) = ½·lr·(1 + cos(π·e / epochs)).

Precision: every forward (text and image side) runs under the backbone's autocast (bf16/fp16 on GPU, nothing on
fp32); trainable tensors must be fp32 (checked), so there are no low-precision master weights, and fp16 uses a
gradient scaler. Under ``torchrun`` the step runs through DistributedDataParallel with each global batch split
evenly over the ranks and rank 0 as the only writer (see :mod:`rlptune.engine.distributed`).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__, io
from ..backbones import Backbone, train_transform
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from .adapter import load_checkpoint, save_adapter, save_checkpoint
from .distributed import DistContext, current, wrap_for_training
from .evaluate import classification_metrics
from .features import FeatureCache, ImageItems


def learning_rate(settings, epoch: int) -> float:
    """CoOp's per-epoch schedule: constant warm-up, then cosine (or constant) over all epochs."""
    if epoch < settings.warmup_epochs:
        return settings.warmup_lr
    if settings.scheduler == "constant":
        return settings.lr
    return 0.5 * settings.lr * (1.0 + math.cos(math.pi * epoch / max(settings.epochs, 1)))


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


def prompt_diagnostics_for(method) -> dict[str, Any]:
    """Singular-value diagnostics of every prompt of the method (ID_1, effective rank …), JSON-ready."""
    try:
        from ..analysis.spectrum import prompt_diagnostics
    except ImportError:  # analysis module not installed in a stripped build
        return {}
    out = {}
    for name, (current, initial) in method.prompt_matrices().items():
        out[name] = prompt_diagnostics(current, initial)
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
    ) -> None:
        self.config = config
        self.method = method
        self.backbone: Backbone = method.backbone
        self.splits = splits
        self.output_dir = Path(output_dir)
        self.cache = cache or FeatureCache(config.train.cache_dir)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.checkpoint_path = self.output_dir / "checkpoint" / "last.safetensors"
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.dist: DistContext = current()

    # -- data ------------------------------------------------------------------------------------------------
    def train_views(self) -> list[torch.Tensor]:
        """Cached image features of the training items, one tensor per augmented view (or the centre crop)."""
        settings = self.config.train
        views = range(1, settings.aug_views + 1) if settings.aug_views > 0 else [0]
        with self.dist.main_first():  # rank 0 builds the cache, the other ranks then read it
            return [
                self.cache.get_or_encode(
                    self.backbone, self.splits, self.splits.train, view=v, num_workers=settings.num_workers, augment=self.augment()
                )
                for v in views
            ]

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
        if hasattr(method, "fit_custom"):  # closed-form / non-gradient methods (e.g. the linear probe)
            return method.fit_custom(self, state)
        params = [p for p in method.parameters() if p.requires_grad]
        if settings.epochs == 0 or not params:
            return state
        for name, p in method.named_parameters():
            if p.requires_grad and p.dtype != torch.float32:
                raise RlptuneError(
                    f"trainable tensor {name} is {p.dtype}; trainable prompts must be fp32 (low precision comes from autocast)"
                )
        optimizer = make_optimizer(params, settings)
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
        if method.needs_image_tower:
            views, image_loader = None, self._image_loader()
        else:
            views, image_loader = self.train_views(), None
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
        device = self.backbone.device
        step_module = wrap_for_training(method, ddp)
        scaler = None
        if self.backbone.precision == "fp16" and device.type == "cuda":
            scaler = torch.amp.GradScaler("cuda")

        epochs = range(start, settings.epochs)
        bar = None
        if self.progress and ddp.is_main:
            from tqdm import tqdm

            bar = tqdm(total=settings.epochs, initial=start, desc="train", unit="epoch", file=sys.stderr)
        for epoch in epochs:
            lr = learning_rate(settings, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            method.train()
            torch.manual_seed(epoch_seed(settings.seed, epoch, 1))  # dropout masks of this epoch (same on every rank)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch_seed(settings.seed, epoch, 2)))
            stop = (count // batch) * batch if drop_last else count
            total_loss, correct, seen, steps = 0.0, 0, 0, 0
            if views is not None:
                feats = views[epoch % len(views)]
            for start_idx in range(0, stop, batch):
                idx = ddp.shard(order[start_idx : start_idx + batch])
                with self.backbone.autocast():
                    if views is not None:
                        x = feats[idx].to(device)
                    else:
                        x = method.encode_images(torch.stack([image_loader[int(i)][0] for i in idx]).to(device))
                    y = labels[idx].to(device)
                    logits = step_module(x)
                    loss = method.loss(logits.float(), y)
                if not torch.isfinite(loss):
                    raise RlptuneError(
                        f"training diverged: non-finite loss at epoch {epoch + 1}, step {steps + 1} (lr {lr:g}); "
                        f"the last good checkpoint is {self.checkpoint_path if self.checkpoint_path.exists() else 'none'}"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if not all(bool(torch.isfinite(p).all()) for p in params):
                    self._diverged(f"the trainable tensors became non-finite in the update at epoch {epoch + 1}, step {steps + 1}", lr)
                total_loss += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(-1) == y).sum())
                seen += len(idx)
                steps += 1
            if ddp.enabled:
                total_loss, correct, seen = ddp.all_reduce_sum([total_loss, correct, seen], device=self._reduce_device())
                correct, seen = int(round(correct)), int(round(seen))
            record = {
                "epoch": epoch + 1,
                "lr": lr,
                "loss": total_loss / max(seen, 1),
                "train_acc": 100.0 * correct / max(seen, 1),
                "steps": steps,
            }
            # the effective prompts (e.g. P_fr + P_A @ P_B) can overflow while their factors are finite: never log
            # diagnostics of, or checkpoint, a diverged prompt
            for name, (current, _) in method.prompt_matrices().items():
                if not bool(torch.isfinite(current).all()):
                    self._diverged(f"prompt {name!r} became non-finite during epoch {epoch + 1}", lr)
            state.records.append(record)
            state.epochs_done = epoch + 1
            if ddp.is_main:  # the one writer
                if settings.log_diagnostics:
                    diagnostics = prompt_diagnostics_for(method)
                    if diagnostics:
                        record["diagnostics"] = diagnostics
                io.append_jsonl(self.metrics_path, record)
                last = epoch + 1 == settings.epochs
                if settings.checkpoint_every and ((epoch + 1) % settings.checkpoint_every == 0 or last):
                    save_checkpoint(self.checkpoint_path, method, optimizer, epoch + 1, self.config)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['train_acc']:.1f}")
        if bar is not None:
            bar.close()
        state.seconds = time.perf_counter() - t0
        method.eval()
        return state

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
        return ImageItems(self.splits, self.splits.train, train_transform(self.backbone, crop_scale=(crop, 1.0), flip=flip))

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
        from .features import encode_items

        feats = encode_items(method.backbone, splits, items, 0, batch_size, num_workers, encoder=method.encode_images)
    else:
        feats = cache.get_or_encode(method.backbone, splits, items, view=0, batch_size=batch_size, num_workers=num_workers)
    with torch.no_grad():
        method.merge()
        preds = torch.cat(
            [method.logits(feats[i : i + 4096].to(method.backbone.device)).argmax(-1).cpu() for i in range(0, len(feats), 4096)]
        )
    return classification_metrics(preds, labels, len(method.classnames))


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
        "train_seconds": round(state.seconds, 3),
        "metrics": metrics,
        "prompt_diagnostics": prompt_diagnostics_for(method),
        "versions": library_versions(),
        **(extra or {}),
    }
    io.write_json(output_dir / "result.json", result)
    return result
