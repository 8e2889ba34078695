"""A report made in pieces (``--merge``): the parts of an earlier report that this invocation does not run join its
report, each with where it came from. The earlier ``evidence.json`` is checked field by field first: a value that is
not what :func:`rlptune.reproduce.write.write_report` writes is one line naming the field."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .. import io
from ..analysis import stats as S
from ..errors import RlptuneError
from .settings import PARTS, SWEEP_PARTS, TRANSFER_PROTOCOLS, StudySettings
from .tables import EvidenceTable

#: The part each table (by name prefix) and figure (by file stem) of a report belongs to.
TABLE_PARTS = {
    "part1_": "base2new",
    "part2_": "lowrank",
    "part3_": "rank",
    "part4_": "ablation",
    "part5_": "transfer",
    "part6_": "density",
    "part7_": "auto",
}
FIGURE_PARTS = {"fig_base2new": "base2new", "fig_few_shot": "transfer", "fig_density": "density"}
#: Claims of reports written before claims named their part, by the opening words the study gives them.
_CLAIM_OPENINGS = {
    "RLP generalises base-to-new": "base2new",
    "RLP tunes far fewer": "base2new",
    "a low-rank prompt": "lowrank",
    "lower rank goes with": "rank",
    "the frozen full-rank branch": "ablation",
    "dropout on the low-rank branch": "ablation",
    "higher information density": "density",
    "lower effective rank": "density",
    "within a run, epochs": "density",
}
#: Settings every piece of one report must share (what the parts are measured on).
SHARED_SETTINGS = ("backbone", "datasets", "data_root", "seeds", "shots", "epochs", "quick", "exclude")
#: The ``part`` a skipped entry may name: a part, or one of the transfer part's protocols.
_SKIPPED_PARTS = (*PARTS, *TRANSFER_PROTOCOLS)
#: Tables and figures are files of the report folder: plain names, never paths.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass
class EarlierReport:
    """The parts of an earlier report (``--merge``) that this invocation does not run, with where they came from."""

    source: Path
    summary: dict[str, Any]
    parts: list[str]
    tables: list[EvidenceTable]
    claims: list[dict]
    skipped: list[dict]
    figures: list[str]

    def provenance(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "parts": self.parts,
            "runs": self.summary.get("runs"),
            "wall_seconds": self.summary.get("wall_seconds"),
            "train_seconds_total": self.summary.get("train_seconds_total"),
            "made_at": self.summary.get("made_at"),
            "rlptune_version": self.summary.get("rlptune_version"),
        }


def part_of(name: str, table: Mapping[str, str]) -> str | None:
    """The part a table or figure name belongs to (``table``: :data:`TABLE_PARTS` or :data:`FIGURE_PARTS`)."""
    return next((part for prefix, part in table.items() if name.startswith(prefix)), None)


def claim_part(claim: Mapping[str, Any]) -> str | None:
    """The part a claim belongs to: named by the claim, or (older reports) known by its opening words."""
    return claim.get("part") or part_of(str(claim.get("claim", "")), _CLAIM_OPENINGS)


def by_part(items: list, part_of_item: Callable[[Any], str | None]) -> list:
    """Items in the study's part order (stable within a part)."""
    order = {p: i for i, p in enumerate(PARTS)}
    return sorted(items, key=lambda item: order.get(part_of_item(item) or "", len(PARTS)))


class _Checked:
    """One line naming the earlier ``evidence.json`` and the field whenever a value is not what a report writes."""

    def __init__(self, label: str) -> None:
        self.label = label

    def fail(self, where: str, value: Any, expected: str) -> RlptuneError:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return RlptuneError(
            f"{self.label}: {where} is {shown}; expected {expected} (the report was changed or damaged)"
        )

    def mapping(self, value: Any, where: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, value, "an object")
        return value

    def items(self, value: Any, where: str, optional: bool = False) -> list:
        if value is None and optional:
            return []
        if not isinstance(value, list):
            raise self.fail(where, value, "a list")
        return value

    def count(self, value: Any, where: str, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, value, "a whole number >= 0")

    def seconds(self, value: Any, where: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise self.fail(where, value, "a number of seconds >= 0")

    def text(self, value: Any, where: str, optional: bool = False) -> None:
        if not (isinstance(value, str) or (optional and value is None)):
            raise self.fail(where, value, "text")

    def parts(
        self, value: Any, where: str, known: Sequence[str] = PARTS, among: str = "the study's parts"
    ) -> list[str]:
        names = self.items(value, where)
        for i, name in enumerate(names):
            if name not in known:
                raise self.fail(f"{where}[{i}]", name, f"one of {among} ({', '.join(known)})")
        if len(set(names)) != len(names):
            raise self.fail(where, value, "each part once")
        return names

    def file_names(self, value: Any, where: str, suffix: str = "") -> list[str]:
        names = self.items(value, where)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name) or not name.endswith(suffix):
                raise self.fail(
                    f"{where}[{i}]", name, f"a file name in the report folder{' ending ' + suffix if suffix else ''}"
                )
        return names


def _check_summary(summary: Any, label: str) -> dict[str, Any]:
    """The earlier report's ``evidence.json`` as ``write_report`` writes it: every field a merge carries or states
    has its type and range, parts are the study's, and each carried part has something to show."""
    check = _Checked(label)
    if not isinstance(summary, dict) or not isinstance(summary.get("settings"), dict):
        raise RlptuneError(
            f"{label}: not a study report (expected the JSON `rlptune reproduce rlp` writes, with 'settings')"
        )
    parts = check.parts(summary["settings"].get("parts"), "settings.parts")
    sweep = summary["settings"].get("sweep_datasets")
    if sweep is not None and not (isinstance(sweep, list) and all(isinstance(d, str) for d in sweep)):
        raise check.fail("settings.sweep_datasets", sweep, "a list of dataset names")
    check.count(summary.get("runs"), "runs")
    check.count(summary.get("planned_runs"), "planned_runs", optional=True)
    for key in ("wall_seconds", "train_seconds_total"):
        check.seconds(summary.get(key), key)
    for key in ("made_at", "rlptune_version"):
        check.text(summary.get(key), key, optional=True)
    check.file_names(summary.get("tables"), "tables")
    check.file_names(summary.get("figures", []), "figures", ".png")
    for i, claim in enumerate(check.items(summary.get("claims"), "claims")):
        check.mapping(claim, f"claims[{i}]")
        for key in ("claim", "evidence", "verdict"):
            check.text(claim.get(key), f"claims[{i}].{key}")
        if claim.get("part") is not None:
            check.parts([claim["part"]], f"claims[{i}].part")
    for i, entry in enumerate(check.items(summary.get("skipped"), "skipped", optional=True)):
        check.mapping(entry, f"skipped[{i}]")
        check.parts([entry.get("part")], f"skipped[{i}].part", _SKIPPED_PARTS, "the study's parts and protocols")
        for key in ("variant", "reason"):
            check.text(entry.get(key), f"skipped[{i}].{key}")
    estimate = summary.get("full_study_estimate")
    if estimate is not None:
        check.mapping(estimate, "full_study_estimate")
        check.count(estimate.get("runs"), "full_study_estimate.runs", optional=True)
        check.seconds(estimate.get("seconds"), "full_study_estimate.seconds")
        check.text(estimate.get("basis"), "full_study_estimate.basis", optional=True)
        for method, rate in check.mapping(estimate.get("rates", {}), "full_study_estimate.rates").items():
            check.seconds(rate, f"full_study_estimate.rates.{method}")
    if "pieces" in summary:  # reports written before --merge have none: the report is then one piece
        pieces = check.items(summary["pieces"], "pieces")
        if not pieces:
            raise check.fail("pieces", pieces, "one entry per invocation that made the report")
        covered: list[str] = []
        for i, piece in enumerate(pieces):
            check.mapping(piece, f"pieces[{i}]")
            names = check.parts(piece.get("parts"), f"pieces[{i}].parts", parts, "settings.parts")
            if not names:
                raise check.fail(f"pieces[{i}].parts", names, "the parts that piece made")
            covered += names
            check.count(piece.get("runs"), f"pieces[{i}].runs")
            for key in ("wall_seconds", "train_seconds_total"):
                check.seconds(piece.get(key), f"pieces[{i}].{key}")
            for key in ("source", "made_at", "rlptune_version"):
                check.text(piece.get(key), f"pieces[{i}].{key}", optional=True)
        if sorted(covered) != sorted(parts):
            raise check.fail(
                "pieces",
                [p.get("parts") for p in pieces],
                f"the parts of settings.parts ({', '.join(parts)}), each made by one piece",
            )
    return summary


def _check_carried(summary: Mapping[str, Any], parts: Sequence[str], label: str) -> None:
    """Each part carried into the joined report has a table or figure to show, or says why it was skipped: a part
    with nothing would be claimed by the joined report without any result behind it."""
    shown = {part_of(t, TABLE_PARTS) for t in summary["tables"]} | {
        part_of(f, FIGURE_PARTS) for f in summary.get("figures", [])
    }
    skipped = {e["part"] for e in summary.get("skipped") or []}
    for part in parts:
        stated = {part} | (set(TRANSFER_PROTOCOLS) if part == "transfer" else set())
        if part not in shown and not (stated & skipped):
            raise RlptuneError(
                f"{label}: its part {part!r} has no table or figure (and no skipped entry saying why); "
                f"run that part in this invocation instead of carrying it"
            )


def load_earlier_report(path: str | Path, settings: StudySettings) -> EarlierReport:
    """Read an earlier report folder (or its ``evidence.json``) and keep the parts ``settings`` does not run; its
    settings must equal this study's in everything the parts are measured on, else one line says which differs."""
    path = Path(path)
    file = path if path.suffix == ".json" else path / "evidence.json"
    label = f"reproduce --merge {file}"
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RlptuneError(
            f"{label}: no such file; expected a report folder written by `rlptune reproduce rlp`"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        raise RlptuneError(
            f"{label}: not a study report (expected the JSON `rlptune reproduce rlp` writes, with 'settings')"
        ) from None
    earlier = _check_summary(summary, label)["settings"]
    mine = S.jsonable(vars(settings))
    for key in SHARED_SETTINGS:
        if earlier.get(key) != mine.get(key):
            raise RlptuneError(
                f"{label}: its settings.{key} is {earlier.get(key)!r}, this study's is {mine.get(key)!r}; "
                "a report joins only parts measured with the same " + ", ".join(SHARED_SETTINGS)
            )
    parts = [p for p in earlier["parts"] if p not in settings.parts]
    if not parts:
        raise RlptuneError(
            f"{label}: it holds no part that this invocation does not run (its parts: "
            f"{', '.join(earlier.get('parts', [])) or 'none'}; this one's: {', '.join(settings.parts)})"
        )
    if (
        any(p in SWEEP_PARTS for p in parts)
        and any(p in SWEEP_PARTS for p in settings.parts)
        and earlier.get("sweep_datasets") != mine.get("sweep_datasets")
    ):
        raise RlptuneError(
            f"{label}: its parts 3-5 ran on {earlier.get('sweep_datasets')}, this study's on "
            f"{mine.get('sweep_datasets')}; one report states one set of sweep datasets"
        )
    _check_carried(summary, parts, label)
    folder = file.parent
    tables = []
    for name in summary["tables"]:
        if part_of(name, TABLE_PARTS) not in parts:
            continue
        try:
            data = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
            if not (
                isinstance(data["title"], str)
                and isinstance(data.get("note", ""), str)
                and isinstance(data["columns"], list)
                and all(isinstance(c, str) for c in data["columns"])
                and isinstance(data["rows"], list)
                and all(isinstance(r, dict) for r in data["rows"])
            ):
                raise TypeError
            tables.append(
                EvidenceTable(name, data["title"], list(data["columns"]), list(data["rows"]), data.get("note", ""))
            )
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError):
            raise RlptuneError(
                f"{label}: its table {folder / (name + '.json')} is missing or not a report table"
            ) from None
    claims = [dict(c, part=claim_part(c)) for c in summary.get("claims", []) if claim_part(c) in parts]
    skipped = [
        s
        for s in summary.get("skipped") or []
        if s.get("part") in parts or (s.get("part") in TRANSFER_PROTOCOLS and "transfer" in parts)
    ]
    figures = [f for f in summary.get("figures", []) if part_of(f, FIGURE_PARTS) in parts]
    for figure in figures:
        if not (folder / figure).is_file():
            raise RlptuneError(f"{label}: its figure {folder / figure} is missing")
    return EarlierReport(file, summary, parts, tables, claims, skipped, figures)


def join_settings(settings: StudySettings, earlier: EarlierReport) -> StudySettings:
    """This study's settings with the earlier report's parts added (in the study's order)."""
    joined = StudySettings(**{**vars(settings)})
    joined.parts = [p for p in PARTS if p in settings.parts or p in earlier.parts]
    if not any(p in SWEEP_PARTS for p in settings.parts):
        joined.sweep_datasets = list(earlier.summary["settings"].get("sweep_datasets") or settings.datasets or [])
    return joined


def copy_figures(earlier: EarlierReport, output: Path) -> None:
    """Bring the carried figures (png and its svg) into ``output`` unless they are already there."""
    for figure in earlier.figures:
        for name in (figure, str(Path(figure).with_suffix(".svg"))):
            source, target = earlier.source.parent / name, output / name
            if source.is_file() and source.resolve() != target.resolve():
                io.write_bytes(target, source.read_bytes())


def report_pieces(
    settings: StudySettings, runs: int, wall: float, train_seconds: float, made_at: str, earlier: EarlierReport | None
) -> list[dict[str, Any]]:
    """Where each part of the report was measured: this invocation, then the earlier report's pieces it keeps."""
    pieces = [
        {
            "source": "this invocation",
            "parts": list(settings.parts),
            "runs": runs,
            "wall_seconds": wall,
            "train_seconds_total": train_seconds,
            "made_at": made_at,
        }
    ]
    if earlier is None:
        return pieces
    for piece in earlier.summary.get("pieces") or [
        {**earlier.provenance(), "parts": earlier.summary["settings"].get("parts", [])}
    ]:
        kept = [p for p in piece.get("parts", []) if p in earlier.parts]
        if kept:
            source = str(earlier.source) if piece.get("source") in (None, "this invocation") else piece["source"]
            pieces.append({**piece, "source": source, "parts": kept})
    return pieces
