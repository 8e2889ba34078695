"""The library's front door: train, evaluate, zero-shot and predict in a few calls.

Example (the README runs the same lines in a test)::

    import rlptune
    backbone = rlptune.load_backbone("micro")
    config = rlptune.resolve_config(overrides={"method": {"name": "rlp"}, "data": {"dataset": "folder", "root": "pets/"}})
    result = rlptune.train(config, "runs/pets", backbone=backbone)
    method = rlptune.load_adapter("runs/pets/adapter", backbone)
    rows = rlptune.predict(method, ["a.jpg", "b.jpg"], top_k=3)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml

from .. import io
from ..backbones import Backbone, eval_transform, load_backbone
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from .adapter import load_adapter
from .features import FeatureCache
from .trainer import Trainer, evaluate_split, finish_run, library_versions


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def prepare_dataset(
    config, few_shot_cache: str | Path | None = None, skipped_report: str | Path | None = None
) -> DatasetSplits:
    """Load the configured dataset, draw the few-shot training set (CoOp's algorithm) and pick base/new classes.

    With ``data.image_policy = skip`` every image is decoded once first; unreadable ones are dropped, listed on
    stderr and, when ``skipped_report`` is given, written there as JSON (``[{split, path, reason}]``).
    """
    from ..data import canonical_name, load_dataset
    from ..data.fewshot import fewshot_splits, subsample_classes

    d = config.data
    options = {"seed": d.split_seed} if canonical_name(d.dataset) in ("folder", "csv") else {}
    splits = load_dataset(d.dataset, d.root, **options)
    if d.image_policy == "skip":
        splits = _skip_unreadable(splits, skipped_report)
    if d.shots and d.shots > 0:
        splits = fewshot_splits(splits, d.shots, config.train.seed, cache_path=few_shot_cache)
    if d.subsample != "all":
        splits = subsample_classes(splits, d.subsample)
    return splits


def _skip_unreadable(splits: DatasetSplits, report: str | Path | None) -> DatasetSplits:
    """Apply the ``skip`` image policy: drop unreadable images, report each one, refuse a class left without any."""
    from ..data.images import check_images, skipped_report

    before = {it.label for it in splits.train}
    splits, skipped = check_images(splits, policy="skip")
    if report is not None and skipped:
        io.write_json(report, skipped_report(skipped))
    if skipped:
        paths = sorted({s.path for s in skipped})
        shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        where = f"; list in {report}" if report is not None else ""
        print(f"skipped {len(paths)} unreadable image(s) (data.image_policy=skip): {shown}{where}", file=sys.stderr)
    emptied = sorted(before - {it.label for it in splits.train})
    if emptied:
        raise RlptuneError(
            f"{splits.root}: class {splits.classnames[emptied[0]]!r} has no readable training images left after "
            f"skipping unreadable ones ({len(emptied)} such class(es)); fix or remove its files"
        )
    return splits


def resolve_backbone(config, backbone: Backbone | None = None) -> Backbone:
    if backbone is not None:
        return backbone
    b = config.backbone
    return load_backbone(b.name, device=b.device, precision=b.precision)


def train(
    config,
    output_dir: str | Path,
    backbone: Backbone | None = None,
    splits: DatasetSplits | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train the configured method, evaluate it on the test split, write the run directory; return result.json."""
    from ..methods import build_method
    from .distributed import init_from_env, training_device

    output_dir = Path(output_dir)
    ddp = init_from_env(config.backbone.device)  # under torchrun: join the group (one process per device)
    if ddp.enabled and backbone is None:
        config.backbone.device = training_device(config.backbone.device, ddp)
    with ddp.main_first():  # rank 0 draws (and writes) the few-shot split first; the others read it
        # data before the backbone: a wrong path or a bad split file fails in a second, not after loading weights
        splits = splits or prepare_dataset(config, output_dir / "few_shot.json", output_dir / "skipped_images.json")
    backbone = resolve_backbone(config, backbone)
    if ddp.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        # result.json means "complete": a run started (or resumed) in this folder is not complete until it ends
        (output_dir / "result.json").unlink(missing_ok=True)
        io.write_text(output_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        io.write_json(
            output_dir / "run_info.json",
            {
                "versions": library_versions(),
                "backbone": backbone.identity,
                "dataset": splits.name,
                "classes": splits.classnames,
                "world_size": ddp.world_size,
            },
        )
    seed_everything(config.train.seed)
    method = build_method(config, backbone, splits.classnames, splits.template)
    cache = FeatureCache(config.train.cache_dir)
    trainer = Trainer(config, method, splits, output_dir, cache=cache, log=log, progress=progress)
    state = trainer.fit(resume=resume)
    if not ddp.is_main:  # one writer: rank 0 evaluates and writes the adapter and result.json
        ddp.barrier()
        return json.loads((output_dir / "result.json").read_text(encoding="utf-8"))
    metrics = {}
    if splits.test:
        metrics["test"] = evaluate_split(method, splits, "test", cache, config.eval.batch_size, config.train.num_workers)
    extra = {"dataset": splits.name, "protocol": "train"}
    if ddp.enabled:
        extra["world_size"] = ddp.world_size
    try:
        return finish_run(output_dir, method, config, state, metrics, extra)
    finally:
        ddp.barrier()


def evaluate(method, splits: DatasetSplits, split: str = "test", cache: FeatureCache | None = None, batch_size: int = 128) -> dict:
    """Metrics of a (trained or zero-shot) method on a split; the method is pointed at the split's classes."""
    if list(method.classnames) != list(splits.classnames):
        method.set_classnames(splits.classnames)
    return evaluate_split(method, splits, split, cache or FeatureCache(), batch_size)


def zero_shot_method(config, backbone: Backbone, classnames: Sequence[str], dataset_template: str | None = None):
    from ..methods import build_method

    config.method.name = "zeroshot"
    return build_method(config, backbone, classnames, dataset_template)


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files given directly plus image files found (recursively, sorted) in given folders."""
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            out.append(path)
        else:
            raise RlptuneError(f"{path}: no such image or folder")
    if not out:
        raise RlptuneError(f"no images found in {', '.join(str(p) for p in paths)}")
    return out


@torch.no_grad()
def predict(
    method,
    images: Sequence[str | Path],
    top_k: int = 5,
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image (softmax over the method's classes)."""
    from ..data.images import load_image

    paths = collect_images(images)
    transform = eval_transform(method.backbone)
    method.eval()
    method.merge()
    k = max(1, min(top_k, len(method.classnames)))
    rows: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = torch.stack([transform(load_image(p)) for p in chunk])
        feats = method.encode_images(batch)
        probs = method.logits(feats).softmax(-1).cpu()
        top = probs.topk(k, dim=-1)
        for path, values, indices in zip(chunk, top.values, top.indices):
            rows.append(
                {
                    "path": str(path),
                    "labels": [method.classnames[int(i)] for i in indices],
                    "probs": [float(v) for v in values],
                }
            )
        if bar is not None:
            bar.update(len(chunk))
    if bar is not None:
        bar.close()
    return rows


def write_predictions_csv(path: str | Path, rows: list[dict[str, Any]], top_k: int) -> Path:
    import csv
    import io as _io

    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    header = ["path"]
    for i in range(1, top_k + 1):
        header += [f"label_{i}", f"prob_{i}"]
    writer.writerow(header)
    for row in rows:
        line = [row["path"]]
        for label, prob in zip(row["labels"], row["probs"]):
            line += [label, f"{prob:.6f}"]
        writer.writerow(line)
    return io.write_text(path, buffer.getvalue())


__all__ = [
    "collect_images",
    "evaluate",
    "load_adapter",
    "predict",
    "prepare_dataset",
    "resolve_backbone",
    "seed_everything",
    "train",
    "write_predictions_csv",
    "zero_shot_method",
]
