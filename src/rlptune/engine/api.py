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

import csv
import dataclasses
import io as _io
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .. import io
from ..backbones import Backbone
from ..config import resolve_config
from ..data import canonical_name
from ..data.images import collect_images, load_image
from ..data.items import DatasetSplits
from ..errors import RlptuneError
from ..rundir import check_output_file
from ..methods import build_method
from ..registry import method_entry
from . import pipeline
from .adapter import load_adapter
from .pipeline import evaluate, resolve_backbone, seed_everything


def train(
    config,
    output_dir: str | Path,
    backbone: Backbone | None = None,
    resume: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train the configured method, evaluate it under its protocol, write the run directory; return result.json.

    The same pipeline as ``rlptune train`` and ``rlptune run`` (:func:`rlptune.engine.pipeline.run`): a folder that
    already holds a run is reused only with ``resume`` (same settings) or replaced with ``overwrite``.
    """
    return pipeline.run(
        config, output_dir, backbone=backbone, resume=resume, overwrite=overwrite, progress=progress, log=log
    )


def prepare_dataset(
    config, few_shot_cache: str | Path | None = None, skipped_report: str | Path | None = None
) -> DatasetSplits:
    """The splits the configured method trains on (split seed, image policy, few-shot draw, class subset applied)."""
    return pipeline.prepare_data(config, few_shot_cache, skipped_report).train


def eval_config(method, config_file: str | None = None, overrides: dict[str, dict[str, Any]] | None = None):
    """The settings ``rlptune eval`` evaluates ``method`` with: by default the data its adapter recorded (dataset,
    absolute root, split seed, protocol and class subset, all images), each overridden by a flag or config file.

    A recorded root that is gone is one line naming it and the flag to pass; another dataset than the recorded one
    does not inherit its root. An adapter from before 0.2 records no data: the data must be given, as before.
    """
    record = (getattr(method, "adapter_record", None) or {}).get("data")
    if not record:
        return resolve_config(config_file, overrides or {}, base={"data": {"shots": 0}})
    recorded = {**method.run_config.to_dict()["data"], "dataset": record["dataset"], "root": record["root"], "shots": 0}
    config = resolve_config(config_file, overrides or {}, base={"data": recorded})
    root = record["root"]
    if root is not None and config.data.root == root:
        if canonical_name(config.data.dataset) != canonical_name(record["dataset"]):
            config.data.root = None  # another dataset: its root is given, or $RLPTUNE_DATA, never this one's
        elif not Path(root).exists():
            source = (getattr(method, "adapter_record", None) or {}).get("source", "the adapter")
            raise RlptuneError(
                f"{root}: the data root {source} was trained on is gone (moved or deleted); pass --data-root with "
                f"where the {record['dataset']} data is now"
            )
    return config


def zero_shot_method(config, backbone: Backbone, classnames: Sequence[str], dataset_template: str | None = None):
    """Zero-shot CLIP under ``config``: the options zero-shot declares (its templates) are kept, the rest of the
    configured method's options are not zero-shot's."""
    own = {f.name for f in dataclasses.fields(method_entry("zeroshot").options_class)}
    config.method.name = "zeroshot"
    config.method.options = {k: v for k, v in dict(config.method.options or {}).items() if k in own}
    return build_method(config, backbone, classnames, dataset_template)


#: What ``predict`` does with a file that does not decode (as ``data.image_policy`` does for training and eval).
IMAGE_POLICIES = ("error", "skip")


@torch.no_grad()
def predict(
    method,
    images: Any,
    top_k: int = 5,
    batch_size: int = 64,
    progress: bool = False,
    image_policy: str = "error",
) -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image: a path, a list of paths, a folder, a PIL image, a list of PIL
    images or a tensor batch; one row ``{path, labels, probs}`` per image (``path`` is None for images in memory).

    Decoding and the progress bar live here, not in the method (:meth:`rlptune.Method.predict` takes tensors).
    ``image_policy="skip"``: a file that does not decode gets a row ``{path, labels: [], probs: [], error}`` in its
    place and the others are still predicted; ``"error"`` (the default) stops at it with one line naming the file.
    """
    if image_policy not in IMAGE_POLICIES:
        raise RlptuneError(f"image_policy: expected one of {', '.join(IMAGE_POLICIES)}, got {image_policy!r}")
    batch_size = max(1, int(batch_size))
    if isinstance(images, torch.Tensor):
        return [{"path": None, **row} for row in method.predict(images, top_k=top_k, batch_size=batch_size)]
    if isinstance(images, Image.Image) or (
        isinstance(images, (list, tuple)) and images and all(isinstance(i, Image.Image) for i in images)
    ):
        pictures = [images] if isinstance(images, Image.Image) else list(images)
        method.eval()
        method.merge()
        rows = []
        for start in range(0, len(pictures), batch_size):
            batch = torch.stack([method.preprocess(im.convert("RGB")) for im in pictures[start : start + batch_size]])
            rows += [{"path": None, **row} for row in method.predict(batch, top_k=top_k, merge=False)]
        return rows
    paths = collect_images(images)
    method.eval()
    method.merge()  # once for every batch
    bar = tqdm(total=len(paths), desc="predict", unit="img", file=sys.stderr) if progress else None
    rows = []
    try:
        for start in range(0, len(paths), batch_size):
            part = paths[start : start + batch_size]
            decoded: list[torch.Tensor | None] = []
            failed: dict[int, str] = {}
            for i, path in enumerate(part):
                try:
                    decoded.append(method.preprocess(load_image(path)))
                except RlptuneError as exc:
                    if image_policy == "error":
                        raise
                    failed[i] = str(exc)
                    decoded.append(None)
            good = [t for t in decoded if t is not None]
            scored = iter(method.predict(torch.stack(good), top_k=top_k, merge=False) if good else [])
            for i, path in enumerate(part):
                if i in failed:
                    rows.append({"path": str(path), "labels": [], "probs": [], "error": failed[i]})
                else:
                    rows.append({"path": str(path), **next(scored)})
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
    return rows


def check_predictions_output(path: str | Path) -> Path:
    """``predict -o``: replaces an earlier predictions CSV and nothing else (see :func:`check_output_file`)."""
    return check_output_file(
        path, "-o/--output", lambda first: first.startswith(b"path,label_1,prob_1"), "a predictions CSV"
    )


def write_predictions_csv(path: str | Path, rows: list[dict[str, Any]], top_k: int, error_column: bool = False) -> Path:
    """The predictions as CSV (``path,label_1,prob_1,…``), written atomically; ``error_column`` adds ``error``, the
    reason a skipped file has no labels (empty for the others), so the file lists every image it was given."""
    check_predictions_output(path)
    buffer = _io.StringIO()
    writer = csv.writer(buffer)
    header = ["path"]
    for i in range(1, top_k + 1):
        header += [f"label_{i}", f"prob_{i}"]
    writer.writerow(header + (["error"] if error_column else []))
    for row in rows:
        line = [row["path"]]
        for label, prob in zip(row["labels"], row["probs"]):
            line += [label, f"{prob:.6f}"]
        if error_column:
            line += [""] * (len(header) - len(line)) + [row.get("error", "")]
        writer.writerow(line)
    return io.write_text(path, buffer.getvalue())


__all__ = [
    "evaluate",
    "load_adapter",
    "predict",
    "prepare_dataset",
    "resolve_backbone",
    "seed_everything",
    "train",
    "check_predictions_output",
    "eval_config",
    "write_predictions_csv",
    "zero_shot_method",
]
