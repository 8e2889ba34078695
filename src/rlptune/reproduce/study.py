"""``rlptune reproduce rlp``: the RLP paper's experiments (arXiv 2312.10813) as one resumable command.

Six parts, each a set of protocol runs executed through :func:`rlptune.sweeps.runner.run_sweep` (finished runs are
skipped, interrupted ones resume) and analysed with :mod:`rlptune.report` and :mod:`rlptune.analysis.stats`:

1. ``base2new``  — every method with its official recipe; paired RLP − X (H) with a 95% t interval and Wilcoxon p.
2. ``lowrank``   — each prompt method full-rank vs ``prompt.kind=lowrank`` (RLP's r, dropout, init) at its own recipe.
3. ``rank``      — RLP with r ∈ {1, 2, 3, 4, 8, n}, with and without the α/r scale (α = 1).
4. ``ablation``  — dropout p ∈ {0, 0.1, 0.2, 0.3, 0.5}; no frozen branch (P_fr = 0: ``prompt.ctx_init`` unset);
   small-Gaussian factors; AdamW instead of SGD.
5. ``transfer``  — few-shot curves, cross-dataset transfer from one source, domain generalisation on shifted sets.
6. ``density``   — ID_1 and effective rank of each learned prompt vs its new-class accuracy (Spearman), per
   (method, dataset) across runs, and across the epochs of each run (every base-to-new run of the study logs its
   new-class accuracy per epoch with ``train.track_new``); pure analysis of the runs above.

Beyond the paper, asked for by name (``--parts auto``; :mod:`.auto_runs`, :mod:`.auto_part`):

7. ``auto``      — ``--auto`` vs RLP's official recipe vs zero-shot on few-shot (1, 4, 16 shots), base-to-new and three
   small custom folders the study makes; paired verdicts, the ranks ``--auto`` chose, the spectrum rule's agreement.

``--sweep-datasets`` runs parts 3-5 (the RLP-only sweeps and the transfer protocols) on a subset of the datasets, and
``--exclude`` leaves methods out (the report lists both): the full study on 2 CPU cores is many hours.

Methods the backbone cannot run (prompts inside a ViT image tower on the ResNet ``micro``, prompt depths beyond its
text tower) are found before anything runs by building each method once on the backbone; they are skipped and the
report says why. The verdict on each of the paper's claims is decided by the statistics, whichever way they fall.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from ..rundir import RESULT, check_output_folder, read_result
from ..sweeps.executors import ExecutorSettings
from ..sweeps.runner import BACKBONES, make_specs, run_sweep
from .analyse import analyse
from .auto_part import auto_analysis
from .auto_runs import PART as AUTO_PART
from .merge import load_earlier_report
from .plan import StudyResults, make_plan
from .settings import BASELINE, StudySettings
from .write import write_report


def run_study(
    settings: StudySettings,
    results_dir: str | Path,
    output: str | Path,
    executor: ExecutorSettings | None = None,
    docs: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    report_only: bool = False,
    merge: str | Path | None = None,
) -> dict[str, Any]:
    """Plan, run (resumable) and report the study; returns the report's summary (also ``<output>/evidence.json``).
    ``report_only`` runs nothing: the report is made from the runs already finished, and says how many are missing.
    ``merge`` names an earlier report (same settings) whose other parts join this one's, each with where it came from:
    a study too long for one machine or session is then made in pieces."""
    log = log or (lambda m: print(m, file=sys.stderr))
    settings = settings.resolved()
    # both folders as typed (an empty one is refused), before hours of runs and before anything is written
    data = [("the data root (--data-root)", settings.data_root)]
    if not report_only:
        check_output_folder(results_dir, kind="results", inputs=data, option="--results")
    check_output_folder(output, kind="evidence", inputs=[*data, ("the results folder (--results)", results_dir)])
    earlier = load_earlier_report(merge, settings) if merge is not None else None  # checked before hours of runs
    if earlier is not None:
        log(f"parts {', '.join(earlier.parts)} are carried from {earlier.source}")
    results_dir, output = Path(results_dir), Path(output)
    probe = make_specs(
        "base2new",
        settings.datasets[:1],
        [BASELINE],
        settings.seeds[:1],
        [settings.shots],
        backbone=settings.backbone,
        data_root=settings.data_root,
    )[0]
    backbone = BACKBONES.get(probe.config())
    plan = make_plan(settings, backbone)
    for (part, name), reason in plan.skipped.items():
        log(f"skipping {part} / {name}: {reason}")
    specs = plan.all_specs()
    started = time.perf_counter()
    results = StudyResults(results_dir)
    if report_only:
        done = [s for s in specs if (s.run_dir(results_dir) / RESULT).is_file()]
        results.runs = {results.key(s): read_result(s.run_dir(results_dir)) for s in done}
        log(
            f"report only: {len(done)} of {len(specs)} planned runs are finished; the others are left out of the tables"
        )
    else:
        finished = run_sweep(
            specs,
            results_dir,
            executor=executor,
            log=log,
            backbone=backbone if (executor is None or executor.kind == "local") else None,
        )
        results.runs = {results.key(s): r for s, r in zip(specs, finished)}
    wall = time.perf_counter() - started
    tables, claims, figures = analyse(plan, results, settings)
    if AUTO_PART in plan.variants:  # part 7 (its own module: it reads the --auto record of each run)
        auto_tables, auto_claims = auto_analysis(plan, results, settings)
        tables, claims = [*tables, *auto_tables], [*claims, *auto_claims]
    return write_report(
        plan, results, settings, tables, claims, figures, output, wall, docs, planned=len(specs), earlier=earlier
    )
