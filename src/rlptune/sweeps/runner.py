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

import functools
import itertools
import json

import os
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence


from .. import io
from ..backbones import Backbone, load_backbone
from ..backbones.precision import settle_run_precision
from ..config import resolve_config
from ..options import read_setting_text
from ..analysis.stats import harmonic_mean
from ..engine import pipeline
from ..rundir import read_result
from ..errors import RlptuneError
from ..data import DATA_ENV, canonical_name
from ..methods import get_method_class
from ..registry import get_protocol
from ..rundir import RESULT, check_output_folder, settings_hash
from .executors import ExecutorSettings, SweepProgress, Task, make_executor


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
        """Readable name of the method and its swept (grid) settings (e.g. ``rlp__prompt.rank=2``): the run's
        row label in tables. Unlike the folder name it is not sanitised, so distinct grid points stay distinct."""
        if self.label:
            return self.label
        parts = [self.method]
        for section, values in sorted(self.swept.items()):
            for key, value in sorted(values.items()):
                parts.append(f"{section}.{key}={value}")
        return "__".join(str(p) for p in parts)

    def run_dir(self, results_dir: str | Path) -> Path:
        """``<results>/<protocol>/<dataset>/<tag>/shots<K>/seed<S>-<settings hash>``: keyed by every setting that
        affects the result, so a rerun with other settings (``--epochs``, ``--lr`` …) never reuses these results."""
        return (
            Path(results_dir)
            / self.protocol
            / self.dataset
            / _folder_name(self.tag())
            / f"shots{self.shots}"
            / f"seed{self.seed}-{spec_settings_hash(self)[:12]}"
        )

    def config(self):
        overrides: dict[str, dict[str, Any]] = {k: dict(v) for k, v in self.overrides.items()}
        overrides.setdefault("method", {})["name"] = self.method
        overrides.setdefault("backbone", {}).setdefault("name", self.backbone)
        data = overrides.setdefault("data", {})
        data.update({"dataset": self.dataset, "root": self.data_root, "shots": self.shots, "protocol": self.protocol})
        overrides.setdefault("train", {})["seed"] = self.seed
        return resolve_config(self.config_file, overrides)


_UNSAFE_IN_FOLDER_NAME = re.compile(r"[^A-Za-z0-9._=,+-]+")
_SPEC_HASHES: dict[str, str] = {}


def _folder_name(tag: str, limit: int = 120) -> str:
    """A folder-safe, length-bounded form of a tag (the settings hash in the leaf folder keeps runs apart)."""
    name = _UNSAFE_IN_FOLDER_NAME.sub("_", tag).strip("._") or "run"
    return name[:limit]


def spec_settings_hash(spec: RunSpec) -> str:
    """Hash of everything that decides a run's result: its resolved settings (minus execution-only fields, see
    :func:`rlptune.rundir.settings_hash`), protocol and evaluation targets. Resolving validates the settings."""
    key = json.dumps(asdict(spec), sort_keys=True, default=str)
    if key not in _SPEC_HASHES:
        config = spec.config()
        settle_run_precision(config)  # the precision the run will record (auto resolved), as pipeline.run hashes it
        _SPEC_HASHES[key] = settings_hash(
            {**config.to_dict(), "protocol": spec.protocol, "targets": list(spec.targets)}
        )
    return _SPEC_HASHES[key]


def parse_grid(assignments: Sequence[str]) -> list[dict[str, dict[str, Any]]]:
    """``["prompt.rank=1,2", "prompt.dropout=0,0.1"]`` → the 4 override dicts of the grid (product)."""
    axes: list[tuple[str, str, list[Any]]] = []
    for item in assignments:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise RlptuneError(f"--grid {item!r}: expected section.field=v1,v2,…, e.g. prompt.rank=1,2,4,8")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        values = [read_setting_text(v) for v in raw.split(",") if v != ""]  # as --set and a YAML file read them
        if not values:
            raise RlptuneError(f"--grid {item!r}: no values")
        repeated = [v for i, v in enumerate(values) if any(v == w and type(v) is type(w) for w in values[:i])]
        if repeated:
            raise RlptuneError(f"--grid {item!r}: value {repeated[0]!r} is listed more than once")
        if any(a[0] == section and a[1] == name for a in axes):
            raise RlptuneError(f"--grid {item!r}: {key} is already swept by another --grid; give all its values in one")
        axes.append((section, name, values))
    grids = []
    for combo in itertools.product(*[a[2] for a in axes]):
        out: dict[str, dict[str, Any]] = {}
        for (section, name, _), value in zip(axes, combo):
            out.setdefault(section, {})[name] = value
        grids.append(out)
    return grids or [{}]


class BackboneCache:
    """Load each backbone once per process."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], Backbone] = {}

    def get(self, config) -> Backbone:
        b = config.backbone
        key = (b.name, b.device, b.precision)
        if key not in self._cache:
            self._cache[key] = load_backbone(b.name, device=b.device, precision=b.precision)
        return self._cache[key]


#: Each backbone loaded once per process (run_single, and the study's check of which methods a backbone runs).
BACKBONES = BackboneCache()


def run_single(
    spec: RunSpec, results_dir: str | Path, backbone: Backbone | None = None, progress: bool = False
) -> dict[str, Any]:
    """Run one protocol run (or return its existing result) through the one run pipeline; resumes from a checkpoint."""
    get_protocol(spec.protocol, what="protocol")
    run_dir = spec.run_dir(results_dir)
    result_path = run_dir / RESULT
    if result_path.is_file():
        return read_result(run_dir)
    config = spec.config()
    backbone = backbone or BACKBONES.get(config)
    # run folders are keyed by the settings hash: an interrupted run (its staging folder) always resumes
    extra = {"tag": spec.tag(), "settings": spec.swept, "spec": asdict(spec)}
    return pipeline.run(
        config, run_dir, backbone=backbone, resume=True, progress=progress, targets=spec.targets, extra=extra
    )


def execute_spec(payload: dict[str, Any], backbone: Backbone | None = None) -> str:
    """One run of a sweep as every executor's workers call it (``payload``: the spec as a dict and the results
    folder, plain data that pickles anywhere); returns the progress summary, raises on failure."""
    spec = RunSpec(**payload["spec"])
    return _summary(run_single(spec, payload["results_dir"], backbone=backbone))


def validate_specs(specs: Sequence[RunSpec]) -> None:
    """Check every run before the first one starts: protocol, method, datasets and resolved settings (grids
    included), and that no two runs share a folder or a table row. A typo must not surface hours into a sweep."""
    by_hash: dict[str, RunSpec] = {}
    by_row: dict[tuple, RunSpec] = {}
    for spec in specs:
        get_protocol(spec.protocol, what="protocol")
        get_method_class(spec.method)
        for name in (spec.dataset, *spec.targets):
            canonical_name(name)
        digest = spec_settings_hash(spec)
        twin = by_hash.setdefault(digest, spec)
        if twin is not spec:
            raise RlptuneError(
                f"run {_title(spec)} is listed twice (same settings); remove the repeated method, grid value or seed"
            )
        row = (spec.protocol, spec.dataset, spec.tag(), spec.shots, spec.seed)
        other = by_row.setdefault(row, spec)
        if other is not spec:
            raise RlptuneError(
                f"runs with settings {other.swept} and {spec.swept} share the name {spec.tag()!r}; "
                f"give them distinct labels"
            )


def _title(spec: RunSpec) -> str:
    return f"{spec.protocol} {spec.dataset} {spec.tag()} shots {spec.shots} seed {spec.seed}"


def run_sweep(
    specs: Sequence[RunSpec],
    results_dir: str | Path,
    jobs: int = 1,
    log: Callable[[str], None] | None = None,
    backbone: Backbone | None = None,
    executor: ExecutorSettings | None = None,
) -> list[dict[str, Any]]:
    """Run every spec not yet finished on ``executor`` (default: ``jobs`` processes on this machine) and return
    all results in spec order. Failed runs do not stop the others; at the end they are listed (first line of
    each error) and the sweep fails with one line. Finished runs are skipped and interrupted ones resume, on
    every executor, because the run directory is the unit of work."""
    log = log or (lambda m: print(m, file=sys.stderr))
    check_output_folder(results_dir, kind="results", inputs=sweep_inputs(specs), option="--results")
    results_dir = Path(results_dir)
    settings = (executor or ExecutorSettings(jobs=jobs)).validate()
    validate_specs(specs)
    pending = [s for s in specs if not (s.run_dir(results_dir) / RESULT).is_file()]
    where = "" if settings.kind == "local" else f" on {settings.kind}"
    log(f"{len(specs)} runs, {len(specs) - len(pending)} already finished, {len(pending)} to run{where}")
    tasks = [
        Task(str(s.run_dir(results_dir)), _title(s), {"spec": asdict(s), "results_dir": str(results_dir)})
        for s in pending
    ]
    progress = SweepProgress(tasks, log)
    if tasks:
        in_process = settings.kind == "local" and (settings.jobs <= 1 or len(tasks) <= 1)
        work = (
            functools.partial(execute_spec, backbone=backbone) if in_process and backbone is not None else execute_spec
        )
        make_executor(settings, results_dir).run(tasks, work, progress)
    failures = progress.failures
    if failures:
        log(f"{len(failures)} failed run(s):")
        for outcome in failures:
            log(f"  {outcome.key}: {outcome.error}")
        details = results_dir / "failed-runs.log"
        io.write_text(details, "".join(f"== {o.key}\n{o.detail.rstrip()}\n\n" for o in failures))
        raise RlptuneError(
            f"{len(failures)} of {len(pending)} runs failed (listed above; details in {details}); first: "
            f"{failures[0].error}"
        )
    return [read_result(s.run_dir(results_dir)) for s in specs]


def sweep_inputs(specs: Sequence[RunSpec]) -> list[tuple[str, str | None]]:
    """The data roots a sweep reads (its results folder must neither be nor hold one)."""
    roots = {spec.data_root for spec in specs if spec.data_root}
    found: list[tuple[str, str | None]] = [("the data root (--data-root)", root) for root in sorted(roots)]
    if any(not spec.data_root for spec in specs):
        found.append((f"the data root (${DATA_ENV})", os.environ.get(DATA_ENV)))
    return found


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
                shots=0
                if method == "zeroshot" and get_protocol(protocol, what="protocol").table_kind != "few-shot"
                else k,
                backbone=backbone,
                data_root=data_root,
                targets=list((targets or {}).get(dataset, [])),
                overrides=merged
                if method != "zeroshot"
                else {k2: v for k2, v in merged.items() if k2 not in ("prompt", "train")},
                config_file=config_file,
                swept=overrides if method != "zeroshot" else {},
            )
        )
    # zero-shot ignores the grid (and shots outside few-shot): keep one of its identical specs; any other
    # repeat is a repeated method, seed or grid value, which validate_specs reports
    seen, unique = set(), []
    for spec in specs:
        key = json.dumps(asdict(spec), sort_keys=True, default=str)
        if key in seen and spec.method == "zeroshot":
            continue
        seen.add(key)
        unique.append(spec)
    validate_specs(unique)
    return unique


__all__ = [
    "RunSpec",
    "execute_spec",
    "harmonic_mean",
    "make_specs",
    "parse_grid",
    "run_single",
    "run_sweep",
    "spec_settings_hash",
    "validate_specs",
]
