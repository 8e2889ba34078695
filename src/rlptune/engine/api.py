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
import io as _io
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import io
from ..backbones import Backbone
from ..data.items import DatasetSplits
from ..rundir import check_output_file
from ..methods import build_method
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
    return pipeline.run(config, output_dir, backbone=backbone, resume=resume, overwrite=overwrite, progress=progress, log=log)


def prepare_dataset(config, few_shot_cache: str | Path | None = None, skipped_report: str | Path | None = None) -> DatasetSplits:
    """The splits the configured method trains on (split seed, image policy, few-shot draw, class subset applied)."""
    return pipeline.prepare_data(config, few_shot_cache, skipped_report).train


def zero_shot_method(config, backbone: Backbone, classnames: Sequence[str], dataset_template: str | None = None):
    config.method.name = "zeroshot"
    return build_method(config, backbone, classnames, dataset_template)


@torch.no_grad()
def predict(
    method,
    images: Any,
    top_k: int = 5,
    batch_size: int = 64,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Top-k labels and probabilities for each image: a path, a list of paths, a folder, a PIL image or a tensor batch
    (see :meth:`rlptune.Method.predict`)."""
    return method.predict(images, top_k=top_k, batch_size=batch_size, progress=progress)


def check_predictions_output(path: str | Path) -> Path:
    """``predict -o``: replaces an earlier predictions CSV and nothing else (see :func:`check_output_file`)."""
    return check_output_file(path, "-o/--output", lambda first: first.startswith(b"path,label_1,prob_1"),
                             "a predictions CSV")


def write_predictions_csv(path: str | Path, rows: list[dict[str, Any]], top_k: int) -> Path:
    check_predictions_output(path)
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
    "evaluate",
    "load_adapter",
    "predict",
    "prepare_dataset",
    "resolve_backbone",
    "seed_everything",
    "train",
    "check_predictions_output",
    "write_predictions_csv",
    "zero_shot_method",
]
