"""Many candidates for the price of few: K prompts of one seed trained side by side, their text steps batched.

``--auto`` (:mod:`rlptune.engine.auto`) trains a grid of candidates (rank × crop scale × dropout). Run one by one,
K candidates cost K runs. For the methods whose whole trainable state is one context shared by the classes (CoOp,
RLP: a frozen image tower, cross-entropy on the class logits) almost all of that cost is the text tower, and the
candidates of one seed differ only in their prompts and in which fresh crop they read. Here they share:

* **the data**: all candidates of one seed read the same shuffle order per epoch, and those of one crop scale the
  same fresh view (one feature-cache entry per (crop scale, epoch), as every run of the seed would read);
* **the text step**: the K contexts go through the text tower in one pass
  (:meth:`rlptune.text.PromptedClassText.encode_contexts`: K cached prefixes, the classes' own tokens packed once per
  prefix), and one backward pass serves every candidate (their losses are summed; no parameter reaches another
  candidate's loss, so each gradient is its own).

Each candidate keeps its own optimiser and learning-rate schedule (the trainer's :func:`learning_rate`), and its own
dropout random stream: the global generator state is swapped in before its prompt is drawn and saved after, so
candidate k draws exactly the masks its separate run draws (that run seeds the generator at every epoch with
:func:`epoch_seed` and draws one mask per step). The adapters therefore equal the separate runs' up to the float
rounding of batched products (tested in ``tests/test_candidates_batched.py``; measured in
``benchmarks/auto_candidates.py``).

Methods with other losses, per-class contexts or a prompted image tower do not take this path: :func:`batchable`
says so and :mod:`rlptune.engine.auto` trains their candidates one at a time with the normal trainer.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from .. import io
from ..errors import RlptuneError
from ..methods.base import Method
from ..methods.coop import CoOp
from .adapter import load_checkpoint, save_checkpoint
from .features import FeatureCache
from .schedule import epoch_seed, learning_rate, make_optimizer, total_epochs


def batchable(method: Method) -> bool:
    """True when ``method``'s candidates can train batched: CoOp's class features and loss with one shared context."""
    return (
        isinstance(method, CoOp)
        and type(method).training_step is Method.training_step
        and type(method).class_features is CoOp.class_features
        and not method.needs_image_tower
        and not method.closed_form
        and method.prompt.initial.dim() == 2
    )


@dataclass
class CandidateRun:
    """One candidate's training: its settings, method and optimiser, and what validation saw per epoch."""

    name: str
    config: Any
    method: Method
    optimizer: torch.optim.Optimizer | None = None
    rng: torch.Tensor | None = None  # the candidate's dropout stream (CPU generator state)
    cuda_rng: torch.Tensor | None = None
    curve: list[float] = field(default_factory=list)  # validation accuracy (%) after each epoch
    correct: list[torch.Tensor] = field(default_factory=list)  # per epoch: which validation items it got right
    losses: list[float] = field(default_factory=list)
    best: tuple[int, float, dict] | None = None  # (epoch, accuracy, adapter tensors)
    stopped: str | None = None  # why it stopped early (diverged)


def _crop_of(config) -> tuple[float, bool]:
    return config.train.crop_scale, config.train.flip


def _features(cache: FeatureCache, config, backbone, splits, items, epoch: int, flip_ok: bool) -> torch.Tensor:
    """The frozen features ``Trainer.epoch_features`` reads at ``epoch`` for this candidate's crop settings."""
    settings = config.train
    if not settings.augment:
        return cache.get_or_encode(backbone, splits, items, view=0, num_workers=settings.num_workers)
    view = (epoch % settings.aug_views) + 1 if settings.aug_views > 0 else epoch + 1
    return cache.get_or_encode(
        backbone,
        splits,
        items,
        view=view,
        num_workers=settings.num_workers,
        augment=(settings.crop_scale, settings.flip and flip_ok),
        view_seed=settings.seed,
    )


def _swap_rng(run: CandidateRun, device: torch.device) -> None:
    """Make ``run``'s dropout stream the global one (its state saved back by :func:`_save_rng`)."""
    torch.set_rng_state(run.rng)
    if device.type == "cuda" and run.cuda_rng is not None:
        torch.cuda.set_rng_state(run.cuda_rng, device)


def _save_rng(run: CandidateRun, device: torch.device) -> None:
    run.rng = torch.get_rng_state()
    if device.type == "cuda":
        run.cuda_rng = torch.cuda.get_rng_state(device)


def train_batched(
    runs: Sequence[CandidateRun],
    splits,
    train_items: Sequence,
    val_items: Sequence,
    cache: FeatureCache,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    checkpoints: Path | None = None,
) -> float:
    """Train every candidate of ``runs`` (one seed, one method, one class list) together; fill their curves.

    ``train_items`` train and ``val_items`` (centre crops; may be empty) are scored after every epoch. The features of
    a fresh view are read for the whole training split and indexed, so a fold of it reads the same crops as the full
    split. ``stop_after`` ends the loop after that many epochs (the learning-rate schedule still counts the full
    ``train.epochs``). ``checkpoints``: a folder where every candidate's state is saved at epoch ends (at most every
    :data:`CHECKPOINT_SECONDS`, and after the last epoch) and from which a killed search resumes, exactly: each epoch
    seeds its own shuffle and dropout streams, so the state at an epoch's end is all that carries over. Returns the
    wall seconds.
    """
    if not runs:
        return 0.0
    t0 = time.perf_counter()
    first = runs[0]
    backbone = first.method.backbone
    seed = first.config.train.seed
    text_module = _prepare(runs)
    index = _split_index(splits, train_items)
    labels = torch.tensor([it.label for it in train_items])
    val_labels = torch.tensor([it.label for it in val_items])
    val_feats = (
        cache.get_or_encode(backbone, splits, list(val_items), view=0, num_workers=first.config.train.num_workers)
        if val_items
        else None
    )
    count = len(labels)
    batch, stop, steps_per_epoch = _batches(first.config.train, count)
    epochs = max(total_epochs(run.config.train, steps_per_epoch) for run in runs)
    if stop_after is not None:
        epochs = min(epochs, stop_after)
    start = _resume(runs, checkpoints, log) if checkpoints is not None else 0
    saved = time.perf_counter()
    for epoch in range(start, epochs):
        active = [r for r in runs if r.stopped is None and epoch < total_epochs(r.config.train, steps_per_epoch)]
        if not active:
            break
        views = _epoch_views(active, cache, backbone, splits, epoch, index)
        torch.manual_seed(epoch_seed(seed, epoch, 1))  # every separate run seeds its dropout masks so per epoch
        for run in active:
            _save_rng(run, backbone.device)
            run.method.train()
        order = torch.randperm(count, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch, 2)))
        totals = [0.0] * len(active)
        for step, start in enumerate(range(0, stop, batch)):
            idx = order[start : start + batch]
            _step(active, backbone, text_module, views, idx, labels, (epoch, step, steps_per_epoch), totals)
        _end_epoch(active, totals, count, epoch)
        if val_feats is not None:
            _validate(active, text_module, val_feats, val_labels, epoch, backbone)
        if log is not None and (epoch + 1) % 50 == 0:
            log(f"auto: epoch {epoch + 1}/{epochs} of {len(active)} candidates")
        if checkpoints is not None and (epoch + 1 == epochs or time.perf_counter() - saved >= CHECKPOINT_SECONDS):
            _save_progress(runs, checkpoints, epoch + 1)
            saved = time.perf_counter()
    for run in runs:
        run.method.eval()
    return time.perf_counter() - t0


def _prepare(runs: Sequence[CandidateRun]) -> Any:
    """Check the candidates can share one loop, give each its optimizer, and give all the first one's text module
    (one set of class-token buffers: the same classes and context layout); returns that module."""
    first = runs[0]
    seed = first.config.train.seed
    for run in runs:
        if run.config.train.seed != seed or run.config.train.batch_size != first.config.train.batch_size:
            raise RlptuneError("batched candidates must share train.seed and train.batch_size")
        if not batchable(run.method):
            raise RlptuneError(f"method {run.method.registered_name!r} cannot train its candidates batched")
        run.method.unmerge()
        params = [p for p in run.method.parameters() if p.requires_grad]
        run.optimizer = make_optimizer(params, run.config.train)
    text_module = first.method.text
    for run in runs[1:]:
        if run.method.classnames != first.method.classnames or run.method.n_ctx != first.method.n_ctx:
            raise RlptuneError("batched candidates must share the class list and prompt.n_ctx")
        run.method.text = text_module
    return text_module


def _split_index(splits, train_items: Sequence) -> torch.Tensor:
    """Where each training item sits in the training split (features are read for the whole split and indexed)."""
    position = {id(item): i for i, item in enumerate(splits.train)}
    try:
        return torch.tensor([position[id(item)] for item in train_items], dtype=torch.long)
    except KeyError:
        raise RlptuneError("candidate training items must come from the training split") from None


def _batches(settings, count: int) -> tuple[int, int, int]:
    """(batch, where the epoch stops, steps per epoch): a short last batch is dropped only when a full one fits."""
    batch = min(settings.batch_size, count)
    stop = (count // batch) * batch if count >= settings.batch_size else count
    return batch, stop, max(1, -(-stop // batch))


def _view_key(config) -> tuple:
    """Which features a candidate trains on: candidates with the same crop and augmentation share one view."""
    return (_crop_of(config), config.train.augment, config.train.aug_views)


def _epoch_views(
    active: Sequence[CandidateRun], cache: FeatureCache, backbone, splits, epoch: int, index: torch.Tensor
) -> dict[tuple, torch.Tensor]:
    """This epoch's training features per view, read before the epoch is seeded (as the trainer: encoding a view
    may draw from the global generator)."""
    views: dict[tuple, torch.Tensor] = {}
    for run in active:
        key = _view_key(run.config)
        if key not in views:
            views[key] = _features(cache, run.config, backbone, splits, splits.train, epoch, splits.hflip_invariant)[
                index
            ]
    return views


def _step(
    active: Sequence[CandidateRun],
    backbone,
    text_module,
    views: dict[tuple, torch.Tensor],
    idx: torch.Tensor,
    labels: torch.Tensor,
    when: tuple[int, int, int],
    totals: list[float],
) -> None:
    """One optimisation step of every active candidate: one text pass for all, one backward of the summed losses,
    a step for each candidate still finite (a non-finite loss stops that candidate only). ``when`` is (epoch, step,
    steps per epoch), what the learning-rate schedule reads."""
    epoch, step, steps_per_epoch = when
    device = backbone.device
    y = labels[idx].to(device)
    prompts = []
    for run in active:
        lr = learning_rate(run.config.train, epoch, step, steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        _swap_rng(run, device)
        prompts.append(run.method.prompt())  # this candidate's dropout mask, from its own stream
        _save_rng(run, device)
    with backbone.autocast():
        text = F.normalize(text_module.encode_contexts(torch.stack(prompts)), dim=-1)  # (K, C, e)
        losses = []
        for k, run in enumerate(active):
            logits = run.method.scores(views[_view_key(run.config)][idx].to(device), text[k])
            losses.append(F.cross_entropy(logits.float(), y))
    for run in active:
        run.optimizer.zero_grad(set_to_none=True)
    torch.stack(losses).sum().backward()
    for k, run in enumerate(active):
        loss = float(losses[k].detach())
        if run.stopped is None and not (loss == loss and abs(loss) != float("inf")):
            run.stopped = f"diverged: non-finite loss at epoch {epoch + 1}, step {step + 1}"
        if run.stopped is None:
            run.optimizer.step()
            totals[k] += loss * len(idx)


def _end_epoch(active: Sequence[CandidateRun], totals: list[float], count: int, epoch: int) -> None:
    """Stop a candidate whose prompt became non-finite, and record every active candidate's mean loss."""
    for k, run in enumerate(active):
        run.method.eval()
        if run.stopped is None and not all(bool(torch.isfinite(p).all()) for p in run.method.parameters()):
            run.stopped = f"diverged: non-finite prompt after epoch {epoch + 1}"
        run.losses.append(totals[k] / max(count, 1))


@torch.no_grad()
def _validate(
    active: Sequence[CandidateRun], text_module, feats: torch.Tensor, labels: torch.Tensor, epoch: int, backbone
) -> None:
    """Centre-crop validation of every active candidate in one text pass (dropout off)."""
    live = [r for r in active if r.stopped is None]
    if not live:
        return
    with backbone.autocast():
        prompts = torch.stack([r.method.prompt() for r in live])  # eval mode: no dropout, no random draws
        text = F.normalize(text_module.encode_contexts(prompts), dim=-1)
        for k, run in enumerate(live):
            preds = run.method.scores(feats.to(backbone.device), text[k]).argmax(-1).cpu()
            right = preds == labels
            accuracy = 100.0 * float(right.float().mean())
            run.curve.append(accuracy)
            run.correct.append(right)
            if run.best is None or accuracy > run.best[1]:
                run.best = (epoch + 1, accuracy, run.method.adapter_state())


#: Seconds between checkpoints of a batched search (saving K small states every epoch would cost more than it saves).
CHECKPOINT_SECONDS = 30.0
_PROGRESS = "progress.json"


def _save_progress(runs: Sequence[CandidateRun], folder: Path, epochs_done: int) -> None:
    """Each candidate's prompt and optimiser (a trainer checkpoint) and best state, then one progress file naming the
    epoch they all reached: written last, so a search killed mid-save resumes from the previous complete set."""
    for k, run in enumerate(runs):
        history = {
            "curve": run.curve,
            "losses": run.losses,
            "correct": ["".join("1" if bool(c) else "0" for c in right) for right in run.correct],
            "best": list(run.best[:2]) if run.best is not None else None,
            "stopped": run.stopped,
        }
        save_checkpoint(folder / f"{k}.safetensors", run.method, run.optimizer, epochs_done, run.config, history)
        if run.best is not None:
            io.write_safetensors(folder / f"{k}.best.safetensors", run.best[2])
    io.write_json(folder / _PROGRESS, {"epochs": epochs_done, "candidates": [run.name for run in runs]})


def _resume(runs: Sequence[CandidateRun], folder: Path, log: Callable[[str], None] | None) -> int:
    """Restore every candidate from ``folder`` (see :func:`_save_progress`); the epochs they had done (0: none)."""
    from safetensors.torch import load_file

    path = folder / _PROGRESS
    if not path.is_file():
        return 0
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise RlptuneError(f"{path}: unreadable search progress; delete {folder} to start the search over") from None
    if progress.get("candidates") != [run.name for run in runs]:
        raise RlptuneError(f"{path}: saved for other candidates; delete {folder} to start the search over")
    epochs = int(progress["epochs"])
    for k, run in enumerate(runs):
        meta = _history(folder / f"{k}.safetensors")
        if meta["stopped"] is None:  # a diverged candidate's prompt is not finite, and it trains no further
            meta = load_checkpoint(folder / f"{k}.safetensors", run.method, run.optimizer, run.config)
        if meta["epoch"] != epochs:
            raise RlptuneError(f"{folder / f'{k}.safetensors'}: epoch {meta['epoch']}, the search's is {epochs}")
        run.curve, run.losses, run.stopped = list(meta["curve"]), list(meta["losses"]), meta["stopped"]
        run.correct = [torch.tensor([c == "1" for c in right], dtype=torch.bool) for right in meta["correct"]]
        if meta["best"] is not None:
            best = load_file(str(folder / f"{k}.best.safetensors"))
            run.best = (int(meta["best"][0]), float(meta["best"][1]), best)
    if log is not None:
        log(f"auto: resumed {len(runs)} candidates after epoch {epochs} ({folder})")
    return epochs


def _history(path: Path) -> dict[str, Any]:
    """A candidate checkpoint's metadata (its epoch and history), read without loading its tensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return json.loads((handle.metadata() or {})["rlptune_checkpoint"])
    except Exception:  # noqa: BLE001 - safetensors raises several types for a missing or damaged file
        raise RlptuneError(f"{path}: unreadable candidate checkpoint; delete {path.parent} to start over") from None


__all__ = ["CandidateRun", "batchable", "train_batched"]
