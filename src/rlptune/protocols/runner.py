"""The evaluation protocols of the prompt-tuning literature, as resumable runs with one result file each.

- ``few-shot``: train on all classes with K shots per class, test on the test split.
- ``base2new``: few-shot draw on all classes, then train on the base half (first ⌈n/2⌉ labels), test on base
  test images, and with the same prompt on the new half's test images with the new class names (CoCoOp).
- ``cross-dataset``: train on a source dataset (all classes), evaluate the same prompt on other datasets.
- ``domain-gen``: train on a source dataset, evaluate on its shifted variants (same classes).

Every run lives in its own directory ``<results>/<protocol>/<dataset>/<tag>/shots<K>/seed<S>/`` whose
``result.json`` is written last and atomically: a sweep skips runs that have it, and resumes a run that has a
checkpoint but no result. Any setting can be swept as a grid; several processes can run at once.
"""

from __future__ import annotations

import itertools
import json

import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import yaml

from .. import io
from ..backbones import Backbone, load_backbone
from ..config import resolve_config
from ..data.items import DatasetSplits
from ..analysis.tables import harmonic_mean
from ..errors import RlptuneError

PROTOCOLS = ("few-shot", "base2new", "cross-dataset", "domain-gen")


@dataclass
class RunSpec:
    """One run of a protocol: everything that decides its result, and nothing else."""

    protocol: str
    dataset: str
    method: str
    seed: int
    shots: int = 16
    backbone: str = "micro"
    data_root: str | None = None
    targets: list[str] = field(default_factory=list)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_file: str | None = None
    label: str | None = None
    swept: dict[str, dict[str, Any]] = field(default_factory=dict)

    def tag(self) -> str:
        """Directory-safe name of the method and its swept (grid) settings (e.g. ``rlp__prompt.rank=2``)."""
        if self.label:
            return self.label
        parts = [self.method]
        for section, values in sorted(self.swept.items()):
            for key, value in sorted(values.items()):
                parts.append(f"{section}.{key}={value}")
        return "__".join(str(p).replace("/", "_").replace(" ", "_") for p in parts)

    def run_dir(self, results_dir: str | Path) -> Path:
        return Path(results_dir) / self.protocol / self.dataset / self.tag() / f"shots{self.shots}" / f"seed{self.seed}"

    def config(self):
        overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in self.overrides.items()}
        overrides.setdefault("method", {})["name"] = self.method
        overrides.setdefault("backbone", {}).setdefault("name", self.backbone)
        data = overrides.setdefault("data", {})
        data.update({"dataset": self.dataset, "root": self.data_root, "shots": self.shots})
        overrides.setdefault("train", {})["seed"] = self.seed
        return resolve_config(self.config_file, overrides)


def parse_grid(assignments: Sequence[str]) -> list[dict[str, dict[str, Any]]]:
    """``["prompt.rank=1,2", "prompt.dropout=0,0.1"]`` → the 4 override dicts of the grid (product)."""
    axes: list[tuple[str, str, list[Any]]] = []
    for item in assignments:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise RlptuneError(f"--grid {item!r}: expected section.field=v1,v2,…, e.g. prompt.rank=1,2,4,8")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        values = [yaml.safe_load(v) for v in raw.split(",") if v != ""]
        if not values:
            raise RlptuneError(f"--grid {item!r}: no values")
        axes.append((section, name, values))
    grids = []
    for combo in itertools.product(*[a[2] for a in axes]):
        out: dict[str, dict[str, Any]] = {}
        for (section, name, _), value in zip(axes, combo):
            out.setdefault(section, {})[name] = value
        grids.append(out)
    return grids or [{}]


def _load(dataset: str, root: str | None) -> DatasetSplits:
    from ..data import load_dataset

    return load_dataset(dataset, root)


class _Backbones:
    """Load each backbone once per process."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], Backbone] = {}

    def get(self, config) -> Backbone:
        b = config.backbone
        key = (b.name, b.device, b.precision)
        if key not in self._cache:
            self._cache[key] = load_backbone(b.name, device=b.device, precision=b.precision)
        return self._cache[key]


_BACKBONES = _Backbones()


def run_single(spec: RunSpec, results_dir: str | Path, backbone: Backbone | None = None, progress: bool = False) -> dict[str, Any]:
    """Run one protocol run (or return its existing result); resumes from a checkpoint if one exists."""
    from ..data.fewshot import fewshot_splits, subsample_classes
    from ..engine.features import FeatureCache
    from ..engine.trainer import Trainer, evaluate_split, finish_run
    from ..engine.api import seed_everything
    from ..methods import build_method

    if spec.protocol not in PROTOCOLS:
        raise RlptuneError(f"protocol {spec.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    run_dir = spec.run_dir(results_dir)
    result_path = run_dir / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text(encoding="utf-8"))
    config = spec.config()
    backbone = backbone or _BACKBONES.get(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    io.write_text(run_dir / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    io.write_json(run_dir / "spec.json", asdict(spec))

    full = _load(spec.dataset, spec.data_root)
    drawn = fewshot_splits(full, spec.shots, spec.seed, cache_path=run_dir / "few_shot.json") if spec.shots > 0 else full
    train_splits = subsample_classes(drawn, "base") if spec.protocol == "base2new" else drawn

    seed_everything(spec.seed)
    method = build_method(config, backbone, train_splits.classnames, train_splits.template)
    cache = FeatureCache(config.train.cache_dir)
    trainer = Trainer(config, method, train_splits, run_dir, cache=cache, progress=progress)
    resume = (run_dir / "checkpoint" / "last.safetensors").is_file()
    state = trainer.fit(resume=resume)

    batch = config.eval.batch_size
    metrics: dict[str, Any] = {}
    extra: dict[str, Any] = {"protocol": spec.protocol, "dataset": spec.dataset, "tag": spec.tag(), "settings": spec.swept}
    if spec.protocol == "base2new":
        metrics["base"] = evaluate_split(method, train_splits, "test", cache, batch)
        if method.transfers_to_new_classes:
            new = subsample_classes(full, "new")
            method.set_classnames(new.classnames)
            metrics["new"] = evaluate_split(method, new, "test", cache, batch)
            extra["h"] = harmonic_mean(metrics["base"]["top1"], metrics["new"]["top1"])
            method.set_classnames(train_splits.classnames)
    else:
        metrics["test"] = evaluate_split(method, train_splits, "test", cache, batch)
        if spec.targets:
            targets = {}
            for name in spec.targets:
                target = _load(name, spec.data_root)
                method.set_classnames(target.classnames)
                targets[name] = evaluate_split(method, target, "test", cache, batch)
            method.set_classnames(train_splits.classnames)
            extra["targets"] = targets
    return finish_run(run_dir, method, config, state, metrics, extra)


def _worker(args: tuple[dict, str, int]) -> tuple[str, dict | None, str | None]:
    spec_dict, results_dir, threads = args
    torch.set_num_threads(threads)
    spec = RunSpec(**spec_dict)
    try:
        return spec.run_dir(results_dir).as_posix(), run_single(spec, results_dir), None
    except RlptuneError as exc:
        return spec.run_dir(results_dir).as_posix(), None, str(exc)


def run_sweep(
    specs: Sequence[RunSpec],
    results_dir: str | Path,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    backbone: Backbone | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not yet finished (``jobs`` processes at once); return all results in spec order."""
    log = log or (lambda m: print(m, file=sys.stderr))
    results_dir = Path(results_dir)
    pending = [s for s in specs if not (s.run_dir(results_dir) / "result.json").is_file()]
    log(f"{len(specs)} runs, {len(specs) - len(pending)} already finished, {len(pending)} to run")
    if jobs <= 1 or len(pending) <= 1:
        for i, spec in enumerate(pending, 1):
            result = run_single(spec, results_dir, backbone=backbone)
            log(f"[{i}/{len(pending)}] {spec.protocol} {spec.dataset} {spec.tag()} seed {spec.seed}: {_summary(result)}")
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        errors = []
        ctx = torch.multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            futures = [pool.submit(_worker, (asdict(s), str(results_dir), threads)) for s in pending]
            for i, future in enumerate(as_completed(futures), 1):
                where, result, error = future.result()
                if error:
                    errors.append(error)
                    log(f"[{i}/{len(pending)}] {where}: error: {error}")
                else:
                    log(f"[{i}/{len(pending)}] {where}: {_summary(result)}")
        if errors:
            raise RlptuneError(f"{len(errors)} run(s) failed; first: {errors[0]}")
    return [json.loads((s.run_dir(results_dir) / "result.json").read_text()) for s in specs]


def _summary(result: dict) -> str:
    m = result["metrics"]
    if "base" in m and "new" in m:
        return f"base {m['base']['top1']:.1f}  new {m['new']['top1']:.1f}  H {result.get('h', 0):.1f}"
    if "base" in m:
        return f"base {m['base']['top1']:.1f}  (no new-class score: the method cannot score unseen classes)"
    return f"test {m['test']['top1']:.1f}"


def make_specs(
    protocol: str,
    datasets: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    shots: Sequence[int],
    backbone: str = "micro",
    data_root: str | None = None,
    grid: Sequence[dict] = ({},),
    targets: dict[str, list[str]] | None = None,
    config_file: str | None = None,
    base_overrides: dict[str, dict[str, Any]] | None = None,
) -> list[RunSpec]:
    specs = []
    for dataset, method, overrides, k, seed in itertools.product(datasets, methods, grid, shots, seeds):
        merged: dict[str, dict[str, Any]] = {s: dict(v) for s, v in (base_overrides or {}).items()}
        for section, values in overrides.items():
            merged.setdefault(section, {}).update(values)
        specs.append(
            RunSpec(
                protocol=protocol,
                dataset=dataset,
                method=method,
                seed=seed,
                shots=0 if method == "zeroshot" and protocol != "few-shot" else k,
                backbone=backbone,
                data_root=data_root,
                targets=list((targets or {}).get(dataset, [])),
                overrides=merged if method != "zeroshot" else {k2: v for k2, v in merged.items() if k2 not in ("prompt", "train")},
                config_file=config_file,
                swept=overrides if method != "zeroshot" else {},
            )
        )
    # zero-shot does not depend on seed or shots: keep one spec per distinct run directory
    seen, unique = set(), []
    for spec in specs:
        key = (spec.protocol, spec.dataset, spec.tag(), spec.shots, spec.seed)
        if key not in seen:
            seen.add(key)
            unique.append(spec)
    return unique


__all__ = ["PROTOCOLS", "RunSpec", "harmonic_mean", "make_specs", "parse_grid", "run_single", "run_sweep"]

