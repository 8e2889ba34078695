"""The report folder: every table as md/csv/json, figures, ``evidence.json`` and ``EVIDENCE.md``."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from .. import __version__, io
from ..report import plots
from ..analysis import stats as S
from ..report import tables as T
from .auto_part import auto_markdown
from .auto_runs import PART as AUTO_PART
from .auto_runs import custom_folders
from .estimate import estimate_full_seconds, joined_estimate
from .merge import (
    FIGURE_PARTS,
    TABLE_PARTS,
    EarlierReport,
    by_part,
    claim_part,
    copy_figures,
    join_settings,
    part_of,
    report_pieces,
)
from .plan import Plan, StudyResults
from .settings import PAPER_PARTS, SWEEP_PARTS, StudySettings
from .tables import EvidenceTable


def write_report(
    plan: Plan,
    results: StudyResults,
    settings: StudySettings,
    tables: list[EvidenceTable],
    claims: list[dict],
    figures: Mapping[str, list[dict]],
    output: Path,
    wall: float,
    docs: str | Path | None,
    planned: int | None = None,
    earlier: EarlierReport | None = None,
) -> dict[str, Any]:
    """report/: every table as md/csv/json, figures, evidence.json and EVIDENCE.md (also written to ``docs``); with
    ``earlier``, its parts join this invocation's and the report says where each part came from."""
    made_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    output.mkdir(parents=True, exist_ok=True)
    figure_files = _figures(figures, output)
    skipped = [{"part": p, "variant": n, "reason": r} for (p, n), r in plan.skipped.items()]
    runs = results.runs
    train_seconds = sum(float(r.get("train_seconds") or 0.0) for r in runs.values())
    pieces = report_pieces(settings, len(runs), wall, train_seconds, made_at, earlier)
    if earlier is not None:
        copy_figures(earlier, output)
        estimate = joined_estimate(runs, settings, earlier)
        settings = join_settings(settings, earlier)
        tables = by_part([*tables, *earlier.tables], lambda t: part_of(t.name, TABLE_PARTS))
        claims = by_part([*claims, *earlier.claims], claim_part)
        skipped = [*skipped, *earlier.skipped]
        figure_files = by_part([*figure_files, *earlier.figures], lambda f: part_of(f, FIGURE_PARTS))
    else:
        estimate = estimate_full_seconds(runs, settings)
    for table in tables:
        table.write(output)
    summary = {
        "settings": S.jsonable(vars(settings)),
        "wall_seconds": wall,
        "runs": len(runs),
        "planned_runs": len(runs) if planned is None else planned,
        "train_seconds_total": train_seconds,
        "tables": [t.name for t in tables],
        "claims": claims,
        "skipped": skipped,
        "figures": figure_files,
        "full_study_estimate": estimate,
        "made_at": made_at,
        "rlptune_version": __version__,
        "pieces": pieces,
    }
    io.write_json(output / "evidence.json", S.jsonable(summary))
    text = study_markdown(
        settings, tables, claims, skipped, figure_files, wall, len(runs), estimate, summary["planned_runs"], pieces
    )
    io.write_text(output / "EVIDENCE.md", text)
    if docs:
        io.write_text(docs, text.replace("](", f"]({Path(_relative(output, Path(docs).parent))}/"))
    return summary


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target.resolve(), start.resolve())


def _figures(figures: Mapping[str, list[dict]], output: Path) -> list[str]:
    files: list[str] = []
    if figures.get("base2new"):
        table = T.base2new_table(figures["base2new"], group_by=lambda r: str(r.get("tag") or r.get("method")))
        files += [p.name for p in plots.plot_base_new_bars(table, output / "fig_base2new")]
    if figures.get("few-shot"):
        files += [
            p.name for p in plots.plot_few_shot_curves(T.few_shot_curves(figures["few-shot"]), output / "fig_few_shot")
        ]
    points = figures.get("density") or []
    if len(points) >= 3:
        files += [
            p.name
            for p in plots.plot_id_vs_accuracy(
                [r["id_k"] for r in points],
                [r["new"] for r in points],
                output / "fig_density",
                labels=[r["method"] for r in points],
                markers_by=[r["dataset"] for r in points],
            )
        ]
    return [f for f in files if f.endswith(".png")]


def pieces_markdown(pieces: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lines of EVIDENCE.md that say which invocation made which parts of a report made in pieces."""
    lines = [
        "**Made in pieces** (`--merge`): each part's tables, figures and verdicts are those of the invocation that "
        "ran it, with the settings above; part 6 (density) pools the base-to-new runs of its own piece only.",
        "",
    ]
    for piece in pieces:  # training time, not wall time: a piece reported with --report-only ran nothing then
        train = piece.get("train_seconds_total")
        lines.append(
            f"- parts {', '.join(piece['parts'])}: {piece.get('runs')} runs"
            f"{f', {train / 60:.1f} min of training summed over runs' if isinstance(train, (int, float)) else ''}, "
            f"made {piece.get('made_at') or 'at a time not recorded'} ({piece.get('source')})"
        )
    return [*lines, ""]


def study_markdown(
    settings: StudySettings,
    tables: list[EvidenceTable],
    claims: list[dict],
    skipped: list[dict],
    figures: list[str],
    wall: float,
    runs: int,
    estimate: Mapping[str, Any],
    planned: int | None = None,
    pieces: Sequence[Mapping[str, Any]] = (),
) -> str:
    """EVIDENCE.md: what was run and how far it reaches, the verdict on each claim, the tables and figures."""
    parts_left_out = [p for p in PAPER_PARTS if p not in settings.parts]
    sweeps_cut = settings.sweep_datasets != settings.datasets and any(p in SWEEP_PARTS for p in settings.parts)
    reduced = bool(settings.exclude) or sweeps_cut or bool(parts_left_out)
    kind = (
        "QUICK study (smoke-test settings: too few epochs, shots and seeds to read anything into)"
        if settings.quick
        else "reduced study: see *Reduced on purpose* at the end"
        if reduced
        else "full study"
    )
    lines = [
        "# Evidence: the RLP paper's claims in the micro world",
        "",
        f"Generated by `rlptune reproduce rlp` ({kind}). **These are micro-world results**: a tiny CLIP "
        f"(`{settings.backbone}`) pretrained on procedural drawings, not ViT-B/16 on the 11 datasets of the paper; "
        "they test the mechanisms the paper claims, not its numbers.",
        "",
        f"Settings: backbone `{settings.backbone}`, datasets {', '.join(settings.datasets or [])}, seeds "
        f"{', '.join(map(str, settings.seeds))}, {settings.shots} shots, epochs "
        f"{settings.epochs if settings.epochs is not None else 'of each official recipe'}; parts {', '.join(settings.parts)}. "
        f"{runs} runs ({wall / 60:.1f} min in the invocation that wrote this; finished runs are reused, not rerun). "
        "Departures from the recipes: "
        f"{settings.train_overrides() or 'none'}; base-to-new runs also score their new classes after every epoch "
        "(`train.track_new`, a logged diagnostic that changes no trained number).",
        "",
        *(pieces_markdown(pieces) if len(pieces) > 1 else []),
        *(
            [
                f"**Incomplete: {planned - runs} of the {planned} planned runs had not finished when this report was made "
                "(`--report-only`); tables and verdicts use the finished runs only (see each table's `runs` / `n`).**",
                "",
            ]
            if planned is not None and planned > runs
            else []
        ),
        f"The full study (3 seeds, every dataset of the suite, official epochs) is {estimate['runs']} runs, about "
        f"{estimate['seconds'] / 3600:.1f} h on this machine ({estimate['basis']}).",
        "",
        "## The paper's claims",
        "",
        "| claim | evidence | verdict |",
        "|---|---|---|",
        *[f"| {c['claim']} | {c['evidence']} | {c['verdict']} |" for c in claims],
        "",
        "A comparison supports a claim only when its 95% t interval excludes 0 and its Wilcoxon p < 0.05 (paired over "
        "dataset and seed); a Wilcoxon test cannot reach p < 0.05 with fewer than 6 non-zero pairs.",
        "",
    ]
    if skipped:
        lines += [
            "## Skipped on this backbone",
            "",
            "| part | variant | reason |",
            "|---|---|---|",
            *[f"| {s['part']} | {s['variant']} | {s['reason']} |" for s in skipped],
            "",
        ]
    if AUTO_PART in settings.parts:
        lines += auto_markdown(settings, custom_folders(settings))
    lines += ["## Tables", ""]
    for table in tables:
        lines += [table.markdown(), f"(`{table.name}.csv`, `{table.name}.json`)", ""]
    if figures:
        lines += ["## Figures", "", *[f"![{f}]({f})" for f in figures], ""]
    if reduced:
        lines += ["## Reduced on purpose", ""]
        if settings.exclude:
            lines.append(f"- Methods left out: {', '.join(settings.exclude)} (listed under Skipped with the reason).")
        if parts_left_out:
            lines.append(
                f"- Parts not run: {', '.join(parts_left_out)} (`--parts`); the claims they test are not "
                "judged in this report."
            )
        if sweeps_cut:
            lines.append(
                f"- Parts 3-5 (rank, ablation, transfer) ran on {', '.join(settings.sweep_datasets or [])} only."
            )
        lines.append("")
    return "\n".join(lines)
