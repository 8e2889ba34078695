"""One run pipeline for every entry point: resolve settings → prepare data → build method → train → evaluate → write.

``rlptune train``, ``rlptune eval``, the Python API (:func:`rlptune.train`, :func:`rlptune.evaluate`), every protocol
of ``rlptune run`` and ``rlptune demo`` call these functions, so the same settings give the same item lists, few-shot
draws and metrics whichever door a user comes through. :func:`prepare_data` is the one place that reads a dataset and
applies the split seed, the image policy, the few-shot draw and the class subset.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .. import io, registry
from ..analysis.stats import harmonic_mean
from ..backbones import Backbone, load_backbone
from ..backbones.precision import settle_run_precision
from ..data import DATA_ENV, canonical_name, load_dataset
from ..data.fewshot import fewshot_splits, subsample_classes
from ..data.images import check_images, skipped_report
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from ..methods import Method, build_method
from ..rundir import (
    CHECKPOINT_DIR,
    DATA_HASHES,
    FEW_SHOT,
    RESULT,
    SKIPPED_IMAGES,
    RunDirectory,
    check_output_folder,
    settings_hash,
    start_run_files,
)
from . import auto
from .distributed import init_from_env, training_device
from .callbacks import TrainState
from .datacheck import check_resumed_data, data_record, write_data_record
from .evaluate import evaluate_split, small_data_notes, zero_shot_baseline
from .features import FeatureCache
from .loggers import make_loggers
from .record import final_validation, finish_run, run_info
from .trainer import Trainer

#: Loaders whose train/val/test split is drawn by rlptune and therefore takes ``data.split_seed``.
SEEDED_SPLIT_LOADERS = ("folder", "csv")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class PreparedData:
    """The data of one run: every class after the few-shot draw, and the classes the method trains on."""

    drawn: DatasetSplits
    train: DatasetSplits

    @property
    def new(self) -> DatasetSplits:
        """The new half of the classes (base-to-new), with the same draw."""
        return subsample_classes(self.drawn, "new")


def training_subset(config) -> str:
    """Which classes train: the protocol's choice (base-to-new: the base half; otherwise ``data.subsample``)."""
    return registry.get_protocol(config.data.protocol).training_subset(config)


def load_data(
    config, name: str | None = None, skipped: str | Path | None = None, skipped_shown: str | Path | None = None
) -> DatasetSplits:
    """Dataset ``name`` (default ``data.dataset``) from ``data.root`` with the split seed and the image policy applied."""
    d = config.data
    name = name or d.dataset
    options = {"seed": d.split_seed} if canonical_name(name) in SEEDED_SPLIT_LOADERS else {}
    splits = load_dataset(name, d.root, **options)
    if d.image_policy == "skip":
        splits = _skip_unreadable(splits, skipped, skipped_shown or skipped)
    return splits


def prepare_data(
    config,
    few_shot_cache: str | Path | None = None,
    skipped: str | Path | None = None,
    skipped_shown: str | Path | None = None,
) -> PreparedData:
    """Load the configured dataset, draw the few-shot training set (Dassl's algorithm) and pick the training classes."""
    splits = load_data(config, skipped=skipped, skipped_shown=skipped_shown)
    if config.data.shots > 0:
        splits = fewshot_splits(splits, config.data.shots, config.train.seed, cache_path=few_shot_cache)
    subset = training_subset(config)
    train = subsample_classes(splits, subset) if subset != "all" else splits
    return PreparedData(drawn=splits, train=train)


def _skip_unreadable(
    splits: DatasetSplits, report: str | Path | None, report_shown: str | Path | None
) -> DatasetSplits:
    """The ``skip`` image policy: drop unreadable images, report each one, refuse a class left without any."""
    before = {it.label for it in splits.train}
    splits, dropped = check_images(splits, policy="skip")
    if report is not None and dropped:
        io.write_json(report, skipped_report(dropped))
    if dropped:
        paths = sorted({s.path for s in dropped})
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        where = f"; list in {report_shown}" if report_shown is not None else ""  # where it is once the run is in place
        print(f"skipped {len(paths)} unreadable image(s) (data.image_policy=skip): {shown}{where}", file=sys.stderr)
    emptied = sorted(before - {it.label for it in splits.train})
    if emptied:
        raise RlptuneError(
            f"{splits.root}: class {splits.classnames[emptied[0]]!r} has no readable training images left after "
            f"skipping unreadable ones ({len(emptied)} such class(es)); fix or remove its files"
        )
    return splits


def resolve_backbone(config, backbone: Backbone | None = None) -> Backbone:
    """The run's backbone in the run's precision: ``backbone`` (or the configured one, loaded) with
    ``backbone.precision`` resolved for the method (:func:`rlptune.backbones.precision.settle_run_precision`, which
    writes the resolved value into ``config``); a given backbone in another precision is used through a view that
    shares its weights."""
    settle_run_precision(config, backbone)
    if backbone is not None:
        return backbone.with_precision(config.backbone.precision)
    b = config.backbone
    return load_backbone(b.name, device=b.device, precision=b.precision)


def evaluate_run(
    method: Method, config, data: PreparedData, cache: FeatureCache, targets: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The protocol's metrics of a trained method: (metrics, extra result fields such as ``h`` and ``targets``);
    the protocol decides what is measured (:meth:`rlptune.protocols.Protocol.evaluate`)."""
    protocol = registry.get_protocol(config.data.protocol)
    return protocol.evaluate(RunEvaluation(method, config, data, cache, targets))


class RunEvaluation:
    """What a protocol may measure of a trained run (:class:`rlptune.protocols.Evaluation`): the training classes'
    test split, the new classes', other datasets'."""

    def __init__(
        self, method: Method, config, data: PreparedData, cache: FeatureCache, targets: Sequence[str] = ()
    ) -> None:
        self.method, self.config, self.data, self.cache = method, config, data, cache
        self.targets = list(targets)
        self.transfers_to_new_classes = bool(method.transfers_to_new_classes)
        self.has_test_split = bool(data.train.test)

    def test(self) -> dict[str, Any]:
        return evaluate_split(
            self.method, self.data.train, "test", self.cache, self.config.eval.batch_size, self.config.train.num_workers
        )

    def new_classes(self) -> dict[str, Any]:
        return evaluate_new_classes(self.method, self.config, self.data, self.cache)

    def on_targets(self, names: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Each target with its own class names; the method is left on the training classes."""
        results = {}
        for name in names:
            target = load_data(self.config, name)
            self.method.set_classnames(target.classnames)
            results[name] = evaluate_split(
                self.method, target, "test", self.cache, self.config.eval.batch_size, self.config.train.num_workers
            )
        self.method.set_classnames(self.data.train.classnames)
        return results

    @staticmethod
    def harmonic_mean(a: float, b: float) -> float:
        return harmonic_mean(a, b)


def evaluate_new_classes(method: Method, config, data: PreparedData, cache: FeatureCache) -> dict:
    """Metrics on the new classes' test split with the current prompts (base-to-new's "new", and ``train.track_new``
    per epoch); the method is left on the training classes."""
    new = data.new
    try:
        method.set_classnames(new.classnames)
        return evaluate_split(method, new, "test", cache, config.eval.batch_size, config.train.num_workers)
    finally:
        method.set_classnames(data.train.classnames)


def zero_shot_fields(
    method: Method, config, data: PreparedData, cache: FeatureCache, metrics: dict[str, Any], state: TrainState
) -> dict[str, Any]:
    """result.json's small-data fields: the zero-shot accuracy of every split the run reports and of its
    validation split (``zero_shot``), the validation accuracy it ended with (``final_val_acc``) and the ``notes``
    (an interval wider than 10 points; ending below zero-shot on validation). The method's numbers are untouched:
    zero-shot is a separate classifier on the same frozen features."""
    batch, workers = config.eval.batch_size, config.train.num_workers
    zero = {
        name: zero_shot_baseline(method, data.new if name == "new" else data.train, "test", cache, batch, workers)
        for name in metrics
    }
    fields: dict[str, Any] = {"zero_shot": zero}
    ended, against = final_validation(state), None
    if ended is not None and data.train.val:
        zero["val"] = zero_shot_baseline(method, data.train, "val", cache, batch, workers)
        fields["final_val_acc"] = ended
        against = ("on the validation split at the end of training", ended, zero["val"]["top1"])
    fields["notes"] = small_data_notes(metrics, against)
    return fields


def run(
    config,
    output_dir: str | Path,
    *,
    backbone: Backbone | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    targets: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the configured method, evaluate it under its protocol, write the run directory; return result.json.

    The run directory is a transaction (:class:`rlptune.rundir.RunDirectory`): everything is written into a staging
    folder that replaces ``output_dir`` only when the run has finished, under a lock; a finished run is reused only
    with ``resume`` (same settings) or replaced with ``overwrite``. Under ``torchrun`` rank 0 writes ``output_dir``
    directly (the ranks share one folder).
    """
    inputs = run_inputs(config)
    check_output_folder(output_dir, kind="run", inputs=inputs)  # before anything is read, trained or written
    output_dir = Path(output_dir)
    ddp = init_from_env(config.backbone.device)  # under torchrun: join the group (one process per device)
    if ddp.enabled and backbone is None:
        config.backbone.device = training_device(config.backbone.device, ddp)
    settle_run_precision(config, backbone)  # config.yaml and the settings hash record the resolved precision
    if ddp.enabled:
        return _run_in(config, output_dir, output_dir, ddp, backbone, resume, progress, log, targets, extra)
    with RunDirectory(
        output_dir, settings_hash(config.to_dict()), resume=resume, overwrite=overwrite, inputs=inputs
    ) as run_dir:
        resumed = run_dir.resumed_from is not None
        result = _run_in(config, run_dir.staging, output_dir, ddp, backbone, resumed, progress, log, targets, extra)
        run_dir.commit()
    return result


def run_inputs(config) -> list[tuple[str, str | None]]:
    """What a run reads from disk, named for messages: its run folder must neither be nor hold any of these (an
    ``--overwrite`` would delete them with the old folder)."""
    found: list[tuple[str, str | None]] = [("the data root (data.root)", config.data.root)]
    if not config.data.root:
        found.append((f"the data root (${DATA_ENV})", os.environ.get(DATA_ENV)))
    found.append(("the feature cache folder (train.cache_dir)", str(config.train.cache_dir or io.default_cache_dir())))
    spec = config.backbone.name
    for candidate in (spec, spec.split(":", 1)[-1]):
        if candidate and os.path.exists(candidate):
            found.append(("the backbone weights (backbone.name)", candidate))
            break
    return found


def _run_in(
    config, output_dir: Path, final_dir: Path, ddp, backbone, resume, progress, log, targets, extra
) -> dict[str, Any]:
    """The run itself, writing into ``output_dir`` (a staging folder that becomes ``final_dir``, or under torchrun the
    shared folder itself)."""
    data, cache, backbone = _open_run(config, output_dir, final_dir, ddp, backbone, resume)
    seed_everything(config.train.seed)
    if config.auto.enabled:  # --auto: the best of a grid of candidates on validation (rlptune.engine.auto)
        method, state, record, chosen = auto.search(config, backbone, data, cache, output_dir, log, resume=resume)
        metrics, fields = evaluate_run(method, config, data, cache, targets)
        fields = {
            "dataset": data.train.name,
            "protocol": config.data.protocol,
            **fields,
            **(extra or {}),
            "auto": record,
        }
        return finish_run(output_dir, method, chosen, state, metrics, fields)
    method = build_method(config, backbone, data.train.classnames, data.train.template)
    state = _fit(config, method, data, cache, output_dir, ddp, resume, progress, log)
    if not ddp.is_main:  # one writer: rank 0 evaluates and writes the adapter and result.json
        ddp.barrier()
        return json.loads((output_dir / RESULT).read_text(encoding="utf-8"))
    metrics, fields = evaluate_run(method, config, data, cache, targets)
    fields = {
        "dataset": data.train.name,
        "protocol": config.data.protocol,
        **fields,
        **zero_shot_fields(method, config, data, cache, metrics, state),
        **(extra or {}),
    }
    if ddp.enabled:
        fields["world_size"] = ddp.world_size
    try:
        return finish_run(output_dir, method, config, state, metrics, fields)
    finally:
        ddp.barrier()


def _open_run(
    config, output_dir: Path, final_dir: Path, ddp, backbone, resume
) -> tuple[PreparedData, FeatureCache, Backbone]:
    """The run's data, feature cache and backbone, and its folder started: the data first, so a wrong path or a bad
    split file fails in a second, not after loading weights; a resumed run's data checked against its record."""
    with ddp.main_first():  # rank 0 draws (and writes) the few-shot split first; the others read it
        data = prepare_data(config, output_dir / FEW_SHOT, output_dir / SKIPPED_IMAGES, final_dir / SKIPPED_IMAGES)
    cache = FeatureCache.from_config(config)
    images = data_record(data.drawn, cache)  # by content: the settings hash knows the data root's path only
    if resume and ((output_dir / CHECKPOINT_DIR).exists() or (output_dir / DATA_HASHES).exists()):
        check_resumed_data(output_dir, images, final_dir)
    backbone = resolve_backbone(config, backbone)
    if ddp.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        # result.json means "complete": a run started (or resumed) in this folder is not complete until it ends
        start_run_files(
            output_dir, config.to_dict(), run_info(backbone, data.train.name, data.train.classnames, ddp.world_size)
        )
        write_data_record(output_dir, images)
    return data, cache, backbone


def _fit(
    config, method: Method, data: PreparedData, cache: FeatureCache, output_dir: Path, ddp, resume, progress, log
) -> TrainState:
    """Train ``method`` with the run's loggers (rank 0 only; closed whatever happens) and monitors."""
    loggers = [make_loggers(config.train.loggers, output_dir)] if config.train.loggers and ddp.is_main else []
    monitors = {}
    if config.train.track_new and method.transfers_to_new_classes:
        monitors["new_acc"] = lambda: float(evaluate_new_classes(method, config, data, cache)["top1"])
    trainer = Trainer(
        config,
        method,
        data.train,
        output_dir,
        cache=cache,
        log=log,
        progress=progress,
        loggers=loggers,
        monitors=monitors,
    )
    try:
        return trainer.fit(resume=resume)
    finally:
        for logger in loggers:
            logger.close()


def evaluate(
    method: Method, splits: DatasetSplits, split: str = "test", cache: FeatureCache | None = None, batch_size: int = 128
) -> dict:
    """Metrics of a (trained or zero-shot) method on a split; the method is pointed at the split's classes."""
    if list(method.classnames) != list(splits.classnames):
        method.set_classnames(splits.classnames)
    return evaluate_split(method, splits, split, cache or FeatureCache(), batch_size)


def evaluate_against_zero_shot(
    method: Method, splits: DatasetSplits, split: str = "test", cache: FeatureCache | None = None, batch_size: int = 128
) -> dict:
    """:func:`evaluate`'s metrics with, beside them, the zero-shot accuracy of the same split (``zero_shot``, none
    for a zero-shot method itself) and the small-data ``notes`` (``rlptune eval`` prints and records both)."""
    cache = cache or FeatureCache()
    metrics = evaluate(method, splits, split, cache, batch_size)
    if method.registered_name == "zeroshot":
        return {**metrics, "zero_shot": {}, "notes": small_data_notes({split: metrics})}
    zero = zero_shot_baseline(method, splits, split, cache, batch_size)
    notes = small_data_notes({split: metrics}, (f"on the {split} split", metrics["top1"], zero["top1"]))
    return {**metrics, "zero_shot": {split: zero}, "notes": notes}


__all__ = [
    "PreparedData",
    "RunEvaluation",
    "evaluate",
    "evaluate_against_zero_shot",
    "evaluate_run",
    "load_data",
    "prepare_data",
    "resolve_backbone",
    "run",
    "run_inputs",
    "seed_everything",
    "training_subset",
    "zero_shot_fields",
]
