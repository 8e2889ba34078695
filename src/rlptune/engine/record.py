"""What a run records about itself: the library versions, the run information written when it starts, and the
result written when it ends (with the zero-shot baseline and the small-data notes beside the metrics).

The files themselves are the run directory's (:mod:`rlptune.rundir` names and writes them) and the adapter's model
card is the Hub module's (:func:`rlptune.engine.hub.write_run_card`); this module decides what goes into them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import __version__
from ..rundir import ADAPTER_DIR, write_result
from .adapter import save_adapter
from .callbacks import TrainState, prompt_diagnostics_for
from .hub import write_run_card


def library_versions() -> dict[str, str]:
    """The versions that decide a run's numbers (recorded in run_info.json and result.json)."""
    import open_clip
    import torchvision

    return {
        "rlptune": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "open_clip": getattr(open_clip, "__version__", "unknown"),
        "python": sys.version.split()[0],
    }


def run_info(backbone, dataset: str, classes: list[str], world_size: int) -> dict[str, Any]:
    """run_info.json: what the run is about to train on, written before the first epoch."""
    return {
        "versions": library_versions(),
        "backbone": backbone.identity,
        "dataset": dataset,
        "classes": classes,
        "world_size": world_size,
    }


def final_validation(state: TrainState) -> float | None:
    """The validation accuracy the run ends with: the kept epoch's with ``select_best``, else the last one logged
    (the last epoch is always a validation epoch when validation runs); None without validation."""
    if state.best is not None:
        return float(state.best[1])
    for record in reversed(state.records):
        if "val_acc" in record:
            return float(record["val_acc"])
    return None


def result_record(method, config, state: TrainState, metrics: dict, extra: Mapping[str, Any] | None = None) -> dict:
    """result.json's content: who trained on what, for how long, its metrics, prompt diagnostics and versions;
    ``extra`` (dataset, protocol, h, targets, zero_shot, notes ...) is added last."""
    return {
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


def finish_run(output_dir: Path, method, config, state: TrainState, metrics: dict, extra: dict | None = None) -> dict:
    """Save the adapter and its model card, then write result.json last (atomically): its presence means the run
    is complete."""
    save_adapter(Path(output_dir) / ADAPTER_DIR, method, config)
    result = result_record(method, config, state, metrics, extra)
    write_run_card(output_dir, result)  # a Hub-shaped adapter: its README.md model card
    write_result(output_dir, result)
    return result


__all__ = ["final_validation", "finish_run", "library_versions", "result_record", "run_info"]
