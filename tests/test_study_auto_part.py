"""Part 7 of ``rlptune reproduce rlp`` (``--parts auto``): ``--auto`` vs RLP's official recipe vs zero-shot, paired by
(dataset, seed, shots), on few-shot, base-to-new and custom folders the study makes; and the k-fold validation of
``--auto`` with one shot per class, which that part runs."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import quick_reproduce
from hypothesis import given, settings as hsettings, strategies as st

from rlptune.cli import main
from rlptune.engine.auto import validation_folds
from rlptune.reproduce.auto_runs import ARMS, PART, custom_folders, dataset_label, split_key
from rlptune.reproduce.plan import make_plan
from rlptune.reproduce.settings import PAPER_PARTS, StudySettings

PART_TABLES = ("part7_auto_accuracy", "part7_auto_paired", "part7_auto_ranks")


@pytest.fixture(scope="module")
def auto_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("autopart")
    code = main(
        quick_reproduce(
            str(root / "results"),
            "--parts",
            "auto",
            "--seeds",
            "1",
            "-o",
            str(root / "report"),
            "--docs",
            str(root / "docs" / "EVIDENCE.md"),
        )
    )
    assert code == 0
    return root


def _json(root: Path, name: str) -> dict:
    return json.loads((root / "report" / f"{name}.json").read_text(encoding="utf-8"))


def _arm_of(result: dict) -> str:
    if result["method"] == "zeroshot":
        return "zero-shot"
    return "--auto" if "auto" in result else "official recipe"


def _results(root: Path) -> dict[tuple, float]:
    """(arm, dataset or folder name, seed, shots) → the accuracy (H for base-to-new) in each run's result.json."""
    out = {}
    for path in (root / "results").rglob("result.json"):
        r = json.loads(path.read_text(encoding="utf-8"))
        metrics = r["metrics"]
        if r["protocol"] == "base2new":
            b, n = metrics["base"]["top1"], metrics["new"]["top1"]
            value, shots = 2 * b * n / (b + n), 4  # the quick study's shots, zero-shot's base-to-new runs included
        else:
            value, shots = metrics["test"]["top1"], r["shots"]
        out[(r["protocol"], _arm_of(r), r["dataset"], r["seed"], shots)] = value  # a folder's dataset: its name
    return out


def test_default_parts_are_the_papers_and_auto_is_asked_for_by_name():
    assert StudySettings().parts == list(PAPER_PARTS) and PART not in PAPER_PARTS
    assert StudySettings(backbone="micro", parts=[PART]).resolved().parts == [PART]


def test_quick_auto_part_writes_its_tables_section_and_verdicts(auto_study):
    report = auto_study / "report"
    for name in PART_TABLES:
        for ext in ("md", "csv", "json"):
            assert (report / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    text = (report / "EVIDENCE.md").read_text(encoding="utf-8")
    assert "## Part 7: `--auto` vs the official recipe vs zero-shot" in text and "`newcomer-5x10`" in text
    assert (auto_study / "docs" / "EVIDENCE.md").is_file()
    summary = json.loads((report / "evidence.json").read_text(encoding="utf-8"))
    claims = [c for c in summary["claims"] if c.get("part") == PART]
    verdicts = ("supports", "contradicts", "cannot decide")
    assert claims and all(c["verdict"].startswith(verdicts) for c in claims)
    assert any(c["claim"].startswith("the spectrum rule") for c in claims)
    # every block has the three arms, zero-shot's base-to-new runs included (run with 0 shots, paired at 4)
    rows = _json(auto_study, "part7_auto_accuracy")["rows"]
    blocks = {r["block"] for r in rows}
    assert blocks == {"few-shot", "base2new", "folder newcomer-5x10"}
    for block in blocks:
        assert {r["arm"] for r in rows if r["block"] == block} == {arm for arm, _, _ in ARMS}
    assert all(r["runs"] == 1 for r in rows)
    wilson = [r for r in rows if r["metric"] == "accuracy"]
    assert wilson and all(r["wilson_low"] <= r["mean"] <= r["wilson_high"] for r in wilson)


def test_pairs_match_the_runs_result_files(auto_study):
    runs = _results(auto_study)
    paired = _json(auto_study, "part7_auto_paired")["rows"]
    protocol_of = {
        "few-shot": "few-shot",
        "few-shot 4 shots": "few-shot",
        "base2new": "base2new",
        "folder newcomer-5x10": "few-shot",
    }
    pairs_of = {"few-shot": 2, "few-shot 4 shots": 2, "base2new": 2, "folder newcomer-5x10": 1}  # datasets × seeds
    seen = set()
    for row in paired:
        a, b = row["comparison"].split(" − ")
        protocol = protocol_of[row["block"]]
        assert row["n"] == len(row["pairs"]) == pairs_of[row["block"]], row["block"]
        for pair in row["pairs"]:
            key = (pair["dataset"], pair["seed"], pair["shots"])
            assert pair["a"] == pytest.approx(runs[(protocol, a, *key)])
            assert pair["b"] == pytest.approx(runs[(protocol, b, *key)])
        assert row["diff"] == pytest.approx(sum(p["a"] - p["b"] for p in row["pairs"]) / row["n"])
        seen.add((row["block"], row["comparison"]))
    for block in ("few-shot", "base2new", "folder newcomer-5x10"):
        for comparison in ("--auto − official recipe", "--auto − zero-shot", "official recipe − zero-shot"):
            assert (block, comparison) in seen
    ranks = _json(auto_study, "part7_auto_ranks")["rows"]
    assert sum(r["runs"] for r in ranks) == sum(1 for k in runs if k[1] == "--auto")
    assert all(0 <= r["kept_candidate"] <= r["runs"] and r["compared_n"] <= r["runs"] for r in ranks)


def test_merge_carries_the_auto_part(auto_study, tmp_path):
    """A later piece (here the pure-analysis density part, nothing to run) joins the auto part of an earlier report."""
    code = main(
        quick_reproduce(
            str(auto_study / "results"),
            "--seeds",
            "1",
            "--parts",
            "density",
            "--report-only",
            "-o",
            str(tmp_path / "joined"),
            "--merge",
            str(auto_study / "report"),
        )
    )
    assert code == 0
    joined = json.loads((tmp_path / "joined" / "evidence.json").read_text(encoding="utf-8"))
    assert set(PART_TABLES) <= set(joined["tables"]) and joined["settings"]["parts"][-1] == PART
    assert any(c.get("part") == PART for c in joined["claims"])
    assert (tmp_path / "joined" / "part7_auto_paired.md").is_file()
    assert "## Part 7" in (tmp_path / "joined" / "EVIDENCE.md").read_text(encoding="utf-8")


@hsettings(max_examples=6, deadline=None, derandomize=True)
@given(seeds=st.lists(st.integers(1, 9), min_size=1, max_size=3, unique=True), quick=st.booleans())
def test_every_arm_covers_the_same_pairs_and_no_runs_share_a_folder(seeds, quick):
    settings = StudySettings(
        backbone="micro", datasets=["micro-shapes", "micro-textures"], seeds=seeds, parts=[PART], quick=quick
    ).resolved()
    plan = make_plan(settings)
    keys: dict[str, dict[str, set]] = {}
    for (part, name), specs in plan.runs.items():
        assert part == PART
        block, arm = split_key(name)
        shots = lambda s: s.shots if s.protocol == "few-shot" else settings.shots  # noqa: E731
        keys.setdefault(block, {})[arm] = {(dataset_label(s), s.seed, shots(s)) for s in specs}
        assert len(keys[block][arm]) == len(specs)
    assert len(keys) == 2 + len(custom_folders(settings))
    for block, arms in keys.items():
        assert set(arms) == {arm for arm, _, _ in ARMS}
        assert len({frozenset(v) for v in arms.values()}) == 1, block
    dirs = [str(s.run_dir("r")) for s in plan.all_specs()]
    assert len(dirs) == len(set(dirs))


@hsettings(max_examples=40, deadline=None, derandomize=True)
@given(classes=st.integers(2, 12), shots=st.integers(1, 5), k=st.integers(2, 5), seed=st.integers(0, 50))
def test_k_fold_never_leaves_a_fold_empty(classes, shots, k, seed):
    """One shot per class used to put every image in fold 0 (a fold with nothing to train on: a crash)."""
    train = [SimpleNamespace(label=c) for c in range(classes) for _ in range(shots)]
    if len(train) < 2 * k:
        return  # refused in one line (tests/test_auto.py)
    splits = SimpleNamespace(train=train, val=[], num_classes=classes)
    config = SimpleNamespace(auto=SimpleNamespace(min_val_per_class=4, folds=k), train=SimpleNamespace(seed=seed))
    _, folds = validation_folds(splits, config)
    assert len(folds) == k
    validated = [id(it) for _, val in folds for it in val]
    assert sorted(validated) == sorted(id(it) for it in train)  # every image validated exactly once
    for tr, val in folds:
        assert tr and val and len(tr) + len(val) == len(train)
        assert abs(len(val) - len(train) / k) < 1  # balanced over the classes taken together


def test_a_backbone_without_a_suite_makes_no_custom_folders():
    """reproduce-auto-no-suite: no renderer to make folders from; the section says so."""
    from rlptune.reproduce.auto_part import auto_markdown

    study = StudySettings(backbone="ViT-B-16", datasets=["eurosat"], parts=[PART])
    assert custom_folders(study) == []
    assert "none (no suite)" in "\n".join(auto_markdown(study, custom_folders(study)))
