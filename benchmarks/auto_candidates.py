"""``--auto``'s candidates, batched against separate runs, and ``--auto`` on a newcomer's folder.

The newcomer's case (issue 29): a generated folder of 5 classes × 20 images (the first 5 classes of ``micro2-shapes``,
its train then test images), on the shipped ``micro-v2`` backbone, split by the folder loader 50/20/30 (10 train,
4 validation, 6 test images per class), RLP with its official recipe (200 epochs, batch 32, lr 0.002).

1. **Batched vs separate** (K = 12, the default grid: rank {1, 2, 4} × crop scale {0.08, 0.5} × dropout {0.1, 0.3}):
   the 12 candidates as 12 separate runs of the normal trainer (validation after every epoch, as ``--auto`` needs;
   no checkpoints or diagnostics written) against :func:`rlptune.engine.candidates.train_batched`. The feature
   cache is filled first (the fresh views of both crop scales, timed apart: both modes read the same entries), so the
   ratio is the training's. Equality: the largest absolute difference between a batched candidate's adapter tensors
   and its separate run's, and how many are byte-identical.
2. **--auto end to end** (``rank_rule=both``: the grid, with the spectrum's rank recorded): its test accuracy with a
   95% Wilson interval beside zero-shot's and the official recipe's, its cost against one official run (same warm
   cache), and its ``auto`` record.

Usage (1 thread, niced; about 15 minutes on one core)::

    nice .venv/bin/python benchmarks/auto_candidates.py --json benchmarks/auto_candidates_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

import rlptune  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.data import load_dataset  # noqa: E402
from rlptune.engine import auto  # noqa: E402
from rlptune.engine.candidates import CandidateRun, train_batched  # noqa: E402
from rlptune.engine.features import FeatureCache  # noqa: E402
from rlptune.engine.pipeline import prepare_data, seed_everything  # noqa: E402
from rlptune.engine.trainer import Trainer  # noqa: E402
from rlptune.methods import build_method  # noqa: E402


def newcomer_folder(root: Path, dataset: str = "micro2-shapes", classes: int = 5, per_class: int = 20) -> Path:
    """root/<class>/<i>.png: the first ``classes`` classes of ``dataset``, ``per_class`` images each."""
    if root.exists():
        return root
    splits = load_dataset(dataset)
    items = splits.train + splits.test
    for label in range(classes):
        mine = [it for it in items if it.label == label][:per_class]
        folder = root / splits.classnames[label]
        folder.mkdir(parents=True)
        for i, item in enumerate(mine):
            shutil.copy(splits.abspath(item), folder / f"{i:03d}.png")
    return root


PRECISION = "fp32"  # set by --precision


def config_for(root: Path, cache: Path, **sections):
    overrides = {
        "method": {"name": "rlp"},
        "data": {"dataset": "folder", "root": str(root)},
        "train": {"cache_dir": str(cache)},
        "backbone": {"precision": PRECISION},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return resolve_config(None, overrides)


def batched_vs_separate(base, backbone, epochs: int | None, work: Path) -> dict:
    splits = prepare_data(base).train
    cache = FeatureCache.from_config(base)
    grid = auto.candidate_grid(
        auto.base_config(config_for(Path(base.data.root), Path(base.train.cache_dir), auto={"enabled": True}))
    )
    configs = []
    for settings in grid:
        cfg = auto.with_settings(base, settings)
        cfg.train.checkpoint_every, cfg.train.log_diagnostics = 0, False
        if epochs:
            cfg.train.epochs = epochs
        configs.append(cfg)
    load = {"start": os.getloadavg()[0]}  # a shared machine: the load beside the times
    t0 = time.perf_counter()  # the shared views: every candidate of a crop scale reads the same entry per epoch
    for crop in sorted({c.train.crop_scale for c in configs}):
        cfg = next(c for c in configs if c.train.crop_scale == crop)
        for epoch in range(cfg.train.epochs):
            cache.get_or_encode(
                backbone,
                splits,
                splits.train,
                view=epoch + 1,
                augment=(crop, splits.hflip_invariant),
                view_seed=cfg.train.seed,
            )
    cache.get_or_encode(backbone, splits, splits.val, view=0)
    encode_s = time.perf_counter() - t0

    separate, t0 = [], time.perf_counter()
    for i, cfg in enumerate(configs):
        seed_everything(cfg.train.seed)
        method = build_method(cfg, backbone, splits.classnames, splits.template)
        Trainer(cfg, method, splits, work / f"separate{i}", cache=cache, progress=False, log=lambda m: None).fit()
        separate.append(method.adapter_state())
    separate_s = time.perf_counter() - t0
    load["after_separate"] = os.getloadavg()[0]

    runs = []
    t0 = time.perf_counter()
    for i, cfg in enumerate(configs):
        seed_everything(cfg.train.seed)
        runs.append(
            CandidateRun(
                auto.candidate_name(grid[i]), cfg, build_method(cfg, backbone, splits.classnames, splits.template)
            )
        )
    train_batched(runs, splits, splits.train, splits.val, cache)
    batched_s = time.perf_counter() - t0
    load["after_batched"] = os.getloadavg()[0]

    diffs, identical = [], 0
    for run, state in zip(runs, separate):
        got = run.method.adapter_state()
        diff = max(float((got[k] - state[k]).abs().max()) for k in state)
        scale = max(float(state[k].abs().max()) for k in state)
        diffs.append({"candidate": run.name, "max_abs_diff": diff, "max_abs_value": scale})
        identical += all(torch.equal(got[k], state[k]) for k in state)
    return {
        "candidates": len(configs),
        "epochs": configs[0].train.epochs,
        "train_images": len(splits.train),
        "val_images": len(splits.val),
        "encode_views_seconds": round(encode_s, 2),
        "separate_seconds": round(separate_s, 2),
        "batched_seconds": round(batched_s, 2),
        "ratio_separate_over_batched": round(separate_s / batched_s, 2),
        "batched_over_one_separate_run": round(batched_s / (separate_s / len(configs)), 2),
        "adapters_byte_identical": identical,
        "max_abs_diff": max(d["max_abs_diff"] for d in diffs),
        "load_average_1min": load,
        "per_candidate": diffs,
    }


def acceptance(root: Path, cache: Path, backbone, work: Path) -> dict:
    out = {}
    rows = {
        "zero-shot": {"method": {"name": "zeroshot"}},
        "rlp official recipe": {},
        "rlp --auto": {"auto": {"enabled": True, "rank_rule": "both"}},
    }
    for label, sections in rows.items():
        cfg = config_for(root, cache, **sections)
        t0 = time.perf_counter()
        result = rlptune.train(
            cfg,
            work / label.replace(" ", "_"),
            backbone=backbone,
            overwrite=True,
            progress=False,
            log=lambda m: print(m, file=sys.stderr),
        )
        seconds = time.perf_counter() - t0
        test = result["metrics"]["test"]
        correct = round(test["top1"] * test["n"] / 100)
        low, high = auto.wilson_interval(correct, test["n"])
        out[label] = {
            "test_top1": round(test["top1"], 2),
            "test_n": test["n"],
            "wilson95": [round(low, 1), round(high, 1)],
            "seconds": round(seconds, 1),
        }
        if "auto" in result:
            record = result["auto"]
            out[label]["auto"] = {
                k: record[k]
                for k in (
                    "validation",
                    "decision",
                    "chosen",
                    "best_candidate",
                    "baseline",
                    "margin",
                    "seconds",
                    "batched",
                )
            }
            out[label]["auto"]["spectrum_rank"] = record["spectrum"]["rank"]
            out[label]["auto"]["spectrum_energy_share"] = record["spectrum"]["energy_share"]
            out[label]["auto"]["candidates"] = [
                {k: c.get(k) for k in ("name", "best_epoch", "best_val")} for c in record["candidates"]
            ]
    out["auto_cost_over_official"] = round(out["rlp --auto"]["seconds"] / out["rlp official recipe"]["seconds"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="override the recipe's epochs in part 1 (a quick look)"
    )
    parser.add_argument("--skip-acceptance", action="store_true")
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="fp32 (default: the equality check is about the arithmetic of batching, not of bf16)",
    )
    args = parser.parse_args(argv)
    global PRECISION
    PRECISION = args.precision
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="rlptune-auto-"))
    root = newcomer_folder(work / "newcomer")
    cache = work / "cache"
    backbone = rlptune.load_backbone("micro-v2", device="cpu", precision=PRECISION)
    base = config_for(root, cache)
    results = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": "cpu",
            "precision": PRECISION,
        },
        "case": "5 classes x 20 images of micro2-shapes (folder loader 50/20/30), micro-v2, RLP official recipe",
        "batched_vs_separate": batched_vs_separate(base, backbone, args.epochs, work / "runs"),
    }
    print(json.dumps(results["batched_vs_separate"], indent=1))
    if not args.skip_acceptance:
        results["acceptance"] = acceptance(root, cache, backbone, work / "accept")
        print(json.dumps(results["acceptance"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
