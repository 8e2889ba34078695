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
from ..config import resolve_config
from ..data import canonical_name
from ..data.items import DatasetSplits
from ..errors import RlptuneError
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


def eval_config(method, config_file: str | None = None, overrides: dict[str, dict[str, Any]] | None = None):
    """The settings ``rlptune eval`` evaluates ``method`` with: by default the data its adapter recorded (dataset,
    absolute root, split seed, protocol and class subset, all images), each overridden by a flag or config file.

    A recorded root that is gone is one line naming it and the flag to pass; another dataset than the recorded one
    does not inherit its root. An adapter from before 0.2 records no data: the data must be given, as before.
    """
    record = (getattr(method, "adapter_record", None) or {}).get("data")
    if not record:
        return resolve_config(config_file, overrides or {}, base={"data": {"shots": 0}})
    recorded = {**method.config.to_dict()["data"], "dataset": record["dataset"], "root": record["root"], "shots": 0}
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
    "eval_config",
    "write_predictions_csv",
    "zero_shot_method",
]
