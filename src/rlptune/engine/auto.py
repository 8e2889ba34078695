"""``--auto``: rank and recipe chosen from the data, and never worse than zero-shot on validation.

For the configured method a small grid of candidates is trained — rank r ∈ ``auto.ranks`` and dropout ∈
``auto.dropouts`` (the kinds that search them, low-rank prompts: a full-rank prompt has neither), crop scale ∈
``auto.crop_scales`` (methods that train on augmented crops) — each for the recipe's epochs, scored on validation
after every epoch; each candidate's epoch is the one with its best validation accuracy, and the candidate with the
best such accuracy is kept (ties: the earlier in grid order, i.e. the smaller rank).

**Validation** is the run's validation split when every class has at least ``auto.min_val_per_class`` images there;
otherwise ``auto.folds``-fold cross-validation over the training shots (stratified by class, drawn from the seed):
every candidate trains once per fold, each shot is scored once, the pooled per-epoch curves choose, and the chosen
candidate is retrained on all shots up to its chosen epoch.

**The guard.** The zero-shot prompt is a member of RLP's family (``P_B = 0``: the folded prompt equals ``P_fr``), so
the chosen candidate must beat it. With b = validation images the candidate gets right and the starting prompt
gets wrong, w = the reverse, and n images, the margin is (b − w)/n and its paired (McNemar) standard error is
√(b + w − (b − w)²/n)/n. The candidate is kept only if margin > 0 and margin > z × SE, where z = Φ⁻¹(1 − α/K) is the
one-sided bound at ``auto.alpha`` (0.05) shared by the K candidates (Bonferroni: the best of K is picked on the same
images; 2.64 for the default 12) or ``auto.margin_z`` when set. Otherwise ``--auto`` returns the starting prompt
(for RLP and any prompt initialised from the hand-crafted text, exactly the zero-shot prompt — checked and
recorded) and says so in one line. So its validation accuracy is at or above
zero-shot's by construction. The epoch choice adds optimism the bound does not correct (docs/AUTO.md).

**Rank from the spectrum** (``auto.rank_rule = spectrum | both``): a short full-rank run of the same context
(``auto.spectrum_epochs``), the singular values of its update ΔP = P − P_init, and the smallest r whose top-r
energy share reaches ``auto.energy``. ``spectrum`` trains only that rank; ``both`` trains the grid and records the
spectrum's rank beside the validation choice.

Candidates of CoOp-shaped methods train batched (:mod:`rlptune.engine.candidates`); the others one by one with the
normal trainer. ``result.json`` records everything under ``"auto"``: the validation used, every candidate's curve,
the choice, the baseline, the margin and the rule.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import io
from ..config import former_prompt
from ..analysis import stats
from ..analysis.spectrum import singular_values
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from ..rundir import METRICS, SEARCH_CHECKPOINTS
from ..methods import Method, build_method
from ..prompts import prompt_layout
from .candidates import CandidateRun, batchable, train_batched
from .distributed import current
from .features import FeatureCache, encode_items
from .trainer import Trainer, TrainState

#: What ``result.json``'s ``auto.rule`` says (the guard, in one sentence).
GUARD_RULE = (
    "keep the best candidate only if its validation margin over the starting prompt is > 0 and > z paired "
    "(McNemar) standard errors sqrt(b + w - (b - w)^2 / n) / n, z = Phi^-1(1 - alpha / K) for K candidates "
    "(one-sided, Bonferroni; or auto.margin_z); else return the starting prompt"
)


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``correct``/``n`` in percent (:func:`rlptune.analysis.stats.wilson_interval`)."""
    if n <= 0:
        return (0.0, 100.0)
    low, high = stats.wilson_interval(correct, n, z)
    return (100.0 * low, 100.0 * high)


def paired_margin(candidate: torch.Tensor, baseline: torch.Tensor, z: float) -> dict[str, Any]:
    """The guard's numbers for per-image correctness vectors of a candidate and the baseline (see the module doc)."""
    n = int(candidate.numel())
    b = int((candidate & ~baseline).sum())
    w = int((~candidate & baseline).sum())
    margin = (b - w) / n if n else 0.0
    se = math.sqrt(max(b + w - (b - w) ** 2 / n, 0.0)) / n if n else 0.0
    keep = margin > 0 and margin > z * se
    return {"n": n, "b": b, "w": w, "margin": 100.0 * margin, "se": 100.0 * se, "z": z, "beats_zero_shot": keep}


def guard_z(auto_settings, candidates: int) -> float:
    """The guard's z: ``auto.margin_z`` when set, else the one-sided Bonferroni bound Φ⁻¹(1 − alpha / candidates)
    (the best of K candidates is chosen on the same images, so one comparison's bound would be too lenient)."""
    if auto_settings.margin_z is not None:
        return float(auto_settings.margin_z)
    return NormalDist().inv_cdf(1.0 - auto_settings.alpha / max(candidates, 1))


def candidate_grid(config) -> list[dict[str, dict[str, Any]]]:
    """The candidates' settings ({section: {field: value}}) in grid order: rank, then crop scale, then dropout."""
    a = config.auto
    searchable = prompt_layout(config.prompt.kind).searchable  # the kind says what a search may vary
    current = former_prompt(asdict(config.prompt))  # the kind's values; 0.2's defaults for a kind without them
    ranks = a.ranks if "rank" in searchable else [current["rank"]]
    dropouts = a.dropouts if "dropout" in searchable else [current["dropout"]]
    crops = a.crop_scales if config.train.augment else [config.train.crop_scale]
    grid = []
    for r in ranks:
        for c in crops:
            for p in dropouts:
                grid.append({"prompt": {"rank": int(r), "dropout": float(p)}, "train": {"crop_scale": float(c)}})
    return grid


def candidate_name(settings: dict[str, dict[str, Any]]) -> str:
    return (
        f"r{settings['prompt']['rank']}-crop{settings['train']['crop_scale']:g}-drop{settings['prompt']['dropout']:g}"
    )


def base_config(config):
    """The run's settings with ``auto`` off (what each candidate varies)."""
    base = copy.deepcopy(config)
    base.auto.enabled = False
    return base


def with_settings(config, settings: dict[str, dict[str, Any]]):
    """``config`` with a candidate's settings; its ``prompt`` values the kind searches go into the kind's options
    (a kind without them only carries the grid's record of its fixed values)."""
    out = copy.deepcopy(config)
    prompt_fields = {f.name for f in fields(out.prompt)}
    searchable = prompt_layout(out.prompt.kind).searchable
    for section, values in settings.items():
        for key, value in values.items():
            if section == "prompt" and key not in prompt_fields:
                if key in searchable:
                    out.prompt.options = {**out.prompt.options, key: value}
                continue
            setattr(getattr(out, section), key, value)
    return out


def validation_folds(splits: DatasetSplits, config) -> tuple[str, list[tuple[list, list]]]:
    """(description, [(train items, validation items)]): the validation split when every class has enough images
    there, else ``auto.folds`` stratified folds over the training items."""
    need = config.auto.min_val_per_class
    per_class = [0] * splits.num_classes
    for item in splits.val:
        per_class[item.label] += 1
    if splits.val and min(per_class) >= need:
        return (
            f"the validation split ({len(splits.val)} images, >= {need} per class)",
            [(list(splits.train), list(splits.val))],
        )
    k = config.auto.folds
    if len(splits.train) < 2 * k:
        raise RlptuneError(
            f"auto: the validation split has fewer than auto.min_val_per_class={need} images in some class and "
            f"{len(splits.train)} training images are too few for auto.folds={k} folds"
        )
    generator = torch.Generator().manual_seed(config.train.seed)
    fold_of: dict[int, int] = {}
    by_class: dict[int, list[int]] = {}
    for i, item in enumerate(splits.train):
        by_class.setdefault(item.label, []).append(i)
    offset = 0  # each class starts where the previous one stopped: with 1 shot per class no fold is left empty
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        for j, position in enumerate(order):
            fold_of[members[position]] = (offset + j) % k
        offset += len(members)
    folds = []
    for f in range(k):
        val = [it for i, it in enumerate(splits.train) if fold_of[i] == f]
        train = [it for i, it in enumerate(splits.train) if fold_of[i] != f]
        folds.append((train, val))
    return (
        f"{k}-fold cross-validation over the {len(splits.train)} training images (the validation split has fewer "
        f"than {need} images in some class)",
        folds,
    )


def _build(config, backbone, splits: DatasetSplits) -> Method:
    """The method as a separate run builds it: the global generators seeded from ``train.seed`` first."""
    seed = config.train.seed  # as rlptune.engine.pipeline.seed_everything (pipeline dispatches here: no import back)
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return build_method(config, backbone, splits.classnames, splits.template)


@torch.no_grad()
def predictions(method: Method, splits: DatasetSplits, items: Sequence, cache: FeatureCache) -> torch.Tensor:
    """Predicted labels of ``items`` (centre crops) with the method as it is now (dropout off)."""
    was_training = method.training
    method.eval()
    method.unmerge()
    backbone = method.backbone
    if method.needs_image_tower:
        feats = encode_items(backbone, splits, list(items), 0, 64, 0, encoder=method.encode_images)
    else:
        feats = cache.get_or_encode(backbone, splits, list(items), view=0, normalize=method.normalize_features)
    with backbone.autocast():
        text = method.class_features()
        preds = method.scores(feats.to(backbone.device), text).argmax(-1).cpu()
    method.train(was_training)
    return preds


def _train_sequential(
    runs: list[CandidateRun],
    splits: DatasetSplits,
    train_items,
    val_items,
    cache: FeatureCache,
    scratch: Path,
    log: Callable[[str], None],
    stop_after: int | None = None,
) -> float:
    """Candidates one by one with the normal trainer; a monitor records validation after every epoch."""
    t0 = time.perf_counter()
    fold = replace(splits, train=list(train_items), val=[])  # the trainer's own validation is the monitor below
    labels = torch.tensor([it.label for it in val_items])
    for run in runs:
        cfg = copy.deepcopy(run.config)
        cfg.train.val_every, cfg.train.select_best, cfg.train.checkpoint_every = 1, False, 0
        cfg.train.log_diagnostics, cfg.train.loggers = False, []
        if stop_after is not None:
            cfg.train.epochs = stop_after  # a retrain to the chosen epoch (the schedule runs over those epochs)
        epoch = [0]

        def monitor(run=run, epoch=epoch) -> float:
            epoch[0] += 1
            if not val_items:
                return 0.0
            right = predictions(run.method, fold, val_items, cache) == labels
            accuracy = 100.0 * float(right.float().mean())
            run.curve.append(accuracy)
            run.correct.append(right)
            if run.best is None or accuracy > run.best[1]:
                run.best = (epoch[0], accuracy, run.method.adapter_state())
            return accuracy

        folder = scratch / run.name
        trainer = Trainer(
            cfg, run.method, fold, folder, cache=cache, log=log, progress=False, monitors={"auto_val": monitor}
        )
        try:
            state = trainer.fit()
        except RlptuneError as exc:
            run.stopped = str(exc)
            continue
        run.losses = [r["loss"] for r in state.records]
        shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - t0


def _train(
    runs, splits, train_items, val_items, cache, scratch, log, stop_after=None, checkpoints: Path | None = None
) -> float:
    """Train ``runs``: batched when they can (saved in ``checkpoints``, so a killed search resumes there), else one
    by one with the trainer (a killed search trains those candidates again)."""
    if all(batchable(r.method) for r in runs) and all(r.config.train.iterations == 0 for r in runs):
        return train_batched(
            runs, splits, train_items, val_items, cache, stop_after=stop_after, log=log, checkpoints=checkpoints
        )
    return _train_sequential(runs, splits, train_items, val_items, cache, scratch, log, stop_after)


def spectrum_rank(
    config,
    backbone,
    splits: DatasetSplits,
    cache: FeatureCache,
    scratch: Path,
    log: Callable[[str], None],
    checkpoints: Path | None = None,
) -> dict[str, Any]:
    """A short full-rank run of the same context; the smallest rank holding ``auto.energy`` of its update."""
    a = config.auto
    cfg = copy.deepcopy(config)
    cfg.method.name = "coop"
    cfg.prompt.kind = prompt_layout(config.prompt.kind).spectrum_kind
    cfg.prompt.options = {}  # the spectrum kind's own defaults (the full-rank run has neither rank nor dropout)
    cfg.train.epochs = a.spectrum_epochs or max(1, config.train.epochs // 4)
    cfg.train.warmup_epochs = min(cfg.train.warmup_epochs, max(cfg.train.epochs - 1, 0))
    run = CandidateRun("spectrum", cfg, _build(cfg, backbone, splits))
    seconds = _train([run], splits, splits.train, [], cache, scratch, log, checkpoints=checkpoints)
    effective, initial = run.method.prompt_matrices()["ctx"]
    sigma = singular_values(effective - initial).double()
    energy = sigma * sigma
    total = float(energy.sum())
    shares = (energy.cumsum(0) / total).tolist() if total > 0 else [1.0] * len(sigma)
    rank = next((i + 1 for i, s in enumerate(shares) if s >= a.energy - 1e-12), len(shares))
    return {
        "rank": rank,
        "energy": a.energy,
        "epochs": cfg.train.epochs,
        "energy_share": [round(s, 6) for s in shares],
        "singular_values": [float(s) for s in sigma],
        "seconds": round(seconds, 3),
    }


@dataclass
class _Search:
    """What every step of one search shares (the settings with ``auto`` off, where it trains, how it reports), so
    the steps stay short functions instead of one long one."""

    base: Any
    backbone: Any
    splits: DatasetSplits
    cache: FeatureCache
    scratch: Path  # candidates trained one by one with the trainer write here (removed when each ends)
    log: Callable[[str], None]
    checkpoints: Path  # batched candidates' saved state, per step, for a killed search to resume from


def search(
    config,
    backbone,
    data,
    cache: FeatureCache,
    output_dir: str | Path,
    log: Callable[[str], None] | None = None,
    resume: bool = False,
) -> tuple[Method, TrainState, dict[str, Any], Any]:
    """Run ``--auto``: (the chosen method, its training state, the ``auto`` record, the chosen settings).

    ``resume``: continue a killed search from the candidates' checkpoints in the run folder (batched candidates
    resume at their last saved epoch, with the same result as an uninterrupted search); otherwise start over."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if current().enabled:
        raise RlptuneError("auto.enabled: --auto runs in one process; start it without torchrun")
    t0 = time.perf_counter()
    out = Path(output_dir)
    s = _Search(base_config(config), backbone, data.train, cache, out / ".auto", log, out / SEARCH_CHECKPOINTS)
    if not resume:
        shutil.rmtree(s.checkpoints, ignore_errors=True)
    start = _starting_method(s)
    how, folds = validation_folds(s.splits, s.base)
    log(f"auto: validating on {how}")
    record: dict[str, Any] = {"validation": how, "folds": len(folds), "rule": GUARD_RULE}
    grid = _search_grid(s, record)
    names = [candidate_name(g) for g in grid]
    record["grid"] = {"names": names, "settings": grid}
    log(f"auto: {len(grid)} candidates ({', '.join(names)})")

    # the starting prompt: for RLP (P_B = 0) and contexts initialised from the hand-crafted text, the zero-shot prompt
    zero_shot = _is_zero_shot(start, s.base, backbone, s.splits)
    pooled, baseline, train_seconds = _train_folds(s, start, folds, names, grid)
    candidates, best_name, best_acc, best_epoch = _score_candidates(names, grid, pooled, int(baseline.numel()))
    record["candidates"] = candidates
    baseline_acc = _record_baseline(record, baseline, zero_shot)
    if best_name is None:
        raise RlptuneError("auto: no candidate completed an epoch of validation")
    chosen_runs = pooled[best_name]
    right = torch.cat([r.correct[best_epoch - 1] for r in chosen_runs])
    guard = paired_margin(right, baseline, guard_z(s.base.auto, len(grid)))
    record["margin"] = guard
    settings = grid[names.index(best_name)]
    record["best_candidate"] = {"name": best_name, "settings": settings, "epoch": best_epoch, "val": round(best_acc, 4)}
    outcome = (best_name, best_acc, baseline_acc, guard)
    if not guard["beats_zero_shot"]:
        method, adapter_config, state = _return_start(s, start, zero_shot, outcome)
        record["decision"] = "zero-shot"
    else:
        curve = candidates[names.index(best_name)]["curve"]
        method, adapter_config, state, seconds = _take_candidate(
            s, folds, settings, chosen_runs, best_epoch, curve, outcome
        )
        train_seconds += seconds
        record["decision"] = "candidate"
    _record_choice(record, adapter_config, best_name, best_epoch)
    state.seconds = time.perf_counter() - t0
    record["seconds"] = {"total": round(state.seconds, 3), "training": round(train_seconds, 3)}
    record["batched"] = batchable(start)
    if state.records:
        io.write_text(Path(output_dir) / METRICS, "".join(_jsonl(r) for r in state.records))
    shutil.rmtree(s.scratch, ignore_errors=True)
    shutil.rmtree(s.checkpoints, ignore_errors=True)  # the search ended: a finished run keeps no candidates
    if s.checkpoints.parent.is_dir() and not any(s.checkpoints.parent.iterdir()):
        s.checkpoints.parent.rmdir()
    method.eval()
    return method, state, record, adapter_config


def _starting_method(s: _Search) -> Method:
    """The method before any candidate trains (the guard's baseline); a method with nothing trained by gradient
    steps has no settings to search, so it is refused here, before anything trains."""
    start = _build(s.base, s.backbone, s.splits)
    if start.closed_form or not any(p.requires_grad for p in start.parameters()):
        raise RlptuneError(
            f"auto.enabled: method {s.base.method.name!r} has no prompt trained by gradient steps to choose settings for"
        )
    return start


def _search_grid(s: _Search, record: dict[str, Any]) -> list[dict[str, dict[str, Any]]]:
    """The candidates to train: the grid, with its ranks replaced by the spectrum's when ``auto.rank_rule`` asks
    (the spectrum run and its record happen here, before the candidates, as the rule needs its rank first)."""
    base = s.base
    grid = candidate_grid(base)
    if prompt_layout(base.prompt.kind).spectrum_kind and base.auto.rank_rule in ("spectrum", "both"):
        spectrum = spectrum_rank(base, s.backbone, s.splits, s.cache, s.scratch, s.log, s.checkpoints / "spectrum")
        record["spectrum"] = spectrum
        s.log(
            f"auto: the spectrum rule picks rank {spectrum['rank']} ({100 * base.auto.energy:g}% of the update's energy)"
        )
        if base.auto.rank_rule == "spectrum":
            grid = [g for g in grid if g["prompt"]["rank"] == grid[0]["prompt"]["rank"]]
            for g in grid:
                g["prompt"]["rank"] = spectrum["rank"]
    elif base.auto.rank_rule != "validation":
        record["spectrum"] = None  # no rank to choose: the method's prompt is not low-rank
    return grid


def _train_folds(
    s: _Search, start: Method, folds, names: list[str], grid: list
) -> tuple[dict[str, list], torch.Tensor, float]:
    """Every candidate trained on every fold: ({name: its run per fold}, the starting prompt's per-image
    correctness over all folds' validation images, the training seconds)."""
    pooled: dict[str, list] = {n: [] for n in names}
    baseline_right = []
    train_seconds = 0.0
    for fold, (train_items, val_items) in enumerate(folds):
        labels = torch.tensor([it.label for it in val_items])
        baseline_right.append(predictions(start, s.splits, val_items, s.cache) == labels)
        runs = [CandidateRun(n, with_settings(s.base, g), None) for n, g in zip(names, grid)]  # type: ignore[arg-type]
        for run in runs:
            run.method = _build(run.config, s.backbone, s.splits)
        train_seconds += _train(
            runs, s.splits, train_items, val_items, s.cache, s.scratch, s.log, checkpoints=s.checkpoints / f"fold{fold}"
        )
        for run in runs:
            pooled[run.name].append(run)
    return pooled, torch.cat(baseline_right), train_seconds


def _score_candidates(
    names: list[str], grid: list, pooled: dict[str, list], n_val: int
) -> tuple[list[dict[str, Any]], str | None, float, int]:
    """Each candidate's pooled validation curve and best epoch (the record's entries), and the best candidate:
    (entries, its name or None, its accuracy, its epoch); ties keep the earlier candidate and epoch."""
    candidates = []
    best_name, best_acc, best_epoch = None, -1.0, 0
    for name, settings in zip(names, grid):
        runs = pooled[name]
        stopped = next((r.stopped for r in runs if r.stopped), None)
        length = min(len(r.correct) for r in runs)
        curve = [100.0 * float(sum(int(r.correct[e].sum()) for r in runs)) / n_val for e in range(length)]
        entry = {
            "name": name,
            "settings": settings,
            "curve": [round(c, 4) for c in curve],
            "losses": [round(x, 6) for x in runs[0].losses],
        }
        if curve:
            epoch = max(range(length), key=lambda e: (curve[e], -e)) + 1
            entry.update(best_epoch=epoch, best_val=round(curve[epoch - 1], 4))
            if curve[epoch - 1] > best_acc:
                best_name, best_acc, best_epoch = name, curve[epoch - 1], epoch
        if stopped:
            entry["stopped"] = stopped
        candidates.append(entry)
    return candidates, best_name, best_acc, best_epoch


def _record_baseline(record: dict[str, Any], baseline: torch.Tensor, zero_shot: bool) -> float:
    """Record the starting prompt's validation accuracy (and whether it is the zero-shot prompt); return it."""
    n_val = int(baseline.numel())
    baseline_acc = 100.0 * float(baseline.float().mean()) if n_val else 0.0
    record["baseline"] = {
        "val": round(baseline_acc, 4),
        "is_zero_shot_prompt": zero_shot,
        "what": "the starting prompt" + (" (= the zero-shot prompt)" if zero_shot else ""),
    }
    return baseline_acc


def _return_start(s: _Search, start: Method, zero_shot: bool, outcome: tuple) -> tuple[Method, Any, TrainState]:
    """The guard's refusal: the starting prompt, untrained, and one line saying by how little the best missed."""
    best_name, best_acc, baseline_acc, guard = outcome
    what = (
        "the starting prompt"
        if not zero_shot
        else (
            "the zero-shot prompt (P_B = 0)"
            if prompt_layout(s.base.prompt.kind).spectrum_kind
            else "the zero-shot prompt"
        )
    )
    s.log(
        f"auto: no candidate beats the zero-shot prompt on validation by more than its noise (best {best_name}: "
        f"{best_acc:.2f}% vs {baseline_acc:.2f}%, margin {guard['margin']:+.2f} <= {guard['z']:g} x SE "
        f"{guard['se']:.2f}); returning {what}"
    )
    return start, s.base, TrainState(epochs_done=0)


def _take_candidate(
    s: _Search, folds, settings, chosen_runs: list, best_epoch: int, curve: list[float], outcome: tuple
) -> tuple[Method, Any, TrainState, float]:
    """The guard's acceptance: the chosen candidate at its chosen epoch (with one validation split its kept state;
    with k folds retrained on every shot to that epoch), its curve as the history, and the retraining seconds."""
    best_name, best_acc, baseline_acc, guard = outcome
    adapter_config = with_settings(s.base, settings)
    seconds = 0.0
    if len(folds) == 1:
        run = chosen_runs[0]
        method = run.method
        method.load_adapter_state(run.best[2], f"auto candidate {best_name}, epoch {best_epoch}")
    else:  # k-fold: the chosen candidate retrained on every shot, to its chosen epoch
        run = CandidateRun(best_name, adapter_config, _build(adapter_config, s.backbone, s.splits))
        seconds = _train(
            [run], s.splits, s.splits.train, [], s.cache, s.scratch, s.log, best_epoch, s.checkpoints / "final"
        )
        shutil.rmtree(s.scratch, ignore_errors=True)
        method = run.method
    state = TrainState(epochs_done=best_epoch)
    state.records = [{"epoch": e + 1, "val_acc": v} for e, v in enumerate(curve)]
    s.log(
        f"auto: chose {best_name} at epoch {best_epoch}: validation {best_acc:.2f}% vs zero-shot {baseline_acc:.2f}% "
        f"(margin {guard['margin']:+.2f} > {guard['z']:g} x SE {guard['se']:.2f})"
    )
    return method, adapter_config, state, seconds


def _record_choice(record: dict[str, Any], adapter_config, best_name: str, best_epoch: int) -> None:
    """Record what ``--auto`` returns: the candidate's settings and epoch, or the starting prompt's (epoch 0)."""
    chosen = record["decision"] == "candidate"
    prompt = former_prompt(asdict(adapter_config.prompt))  # the kind's values, 0.2's defaults for a kind without
    record["chosen"] = {
        "name": best_name if chosen else "zero-shot",
        "rank": prompt["rank"],
        "dropout": prompt["dropout"],
        "crop_scale": adapter_config.train.crop_scale,
        "epoch": best_epoch if chosen else 0,
    }


def _jsonl(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


@torch.no_grad()
def _is_zero_shot(start: Method, config, backbone, splits: DatasetSplits) -> bool:
    """Whether the starting prompt's class features are the zero-shot method's (within float tolerance)."""
    zs_config = copy.deepcopy(config)
    zs_config.method.name = "zeroshot"
    zs_config.method.options = {}  # the trained method's own options are not zero-shot's
    try:
        zero = build_method(zs_config, backbone, splits.classnames, splits.template)
        with backbone.autocast():
            a = zero.class_features().float()
            b = start.class_features().float()
    except (RlptuneError, NotImplementedError):
        return False
    tolerance = 1e-4 if backbone.precision == "fp32" else 2e-2  # half precision rounds each feature to ~3 digits
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tolerance, rtol=tolerance))


__all__ = ["GUARD_RULE", "candidate_grid", "paired_margin", "search", "validation_folds", "wilson_interval"]
