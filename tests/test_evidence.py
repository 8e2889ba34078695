"""``rlptune reproduce rlp``: the study's plan, its verdict rule, and one --quick run whose report must agree with the
per-run result files it was built from (paired differences, means, parameter deltas, correlation counts)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
from conftest import quick_reproduce

from rlptune.cli import main
from rlptune.reproduce.analyse import epoch_series, verdict
from rlptune.reproduce.plan import LOWRANK, make_plan, method_can_run, part_variants
from rlptune.reproduce.settings import StudySettings
from rlptune.sweeps.runner import BACKBONES
from rlptune.errors import RlptuneError

TABLES = (
    "part1_base2new",
    "part1_paired",
    "part2_lowrank",
    "part3_rank",
    "part4_ablation",
    "part4_paired",
    "part5_few_shot",
    "part5_cross_dataset",
    "part5_domain_gen",
    "part6_density",
    "part6_density_epochs",
)


def test_verdict_needs_an_interval_off_zero_and_a_small_p():
    assert verdict({"ci_low": 0.5, "ci_high": 2.0, "p": 0.01}) == "supports"
    assert verdict({"ci_low": -2.0, "ci_high": -0.5, "p": 0.01}) == "contradicts"
    assert verdict({"ci_low": -2.0, "ci_high": -0.5, "p": 0.01}, expected_sign=-1) == "supports"
    assert verdict({"ci_low": 0.5, "ci_high": 2.0, "p": 0.2}).startswith("cannot decide")
    assert verdict({"ci_low": -0.1, "ci_high": 2.0, "p": 0.01}).startswith("cannot decide")
    assert verdict({"ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan")}).startswith("cannot decide")


def test_plan_shares_runs_whose_settings_equal_the_recipe():
    settings = StudySettings(
        backbone="micro", quick=True, seeds=[1, 2], parts=["base2new", "rank", "ablation"]
    ).resolved()
    plan = make_plan(settings)
    # r = 1 without α and p = 0.1 are RLP's recipe: the same run folders as part 1's "rlp"
    rlp_dirs = {str(s.run_dir("r")) for s in plan.runs[("base2new", "rlp")]}
    assert {str(s.run_dir("r")) for s in plan.runs[("rank", "rlp r=1")]} == rlp_dirs
    assert {str(s.run_dir("r")) for s in plan.runs[("ablation", "rlp p=0.1")]} == rlp_dirs
    assert {str(s.run_dir("r")) for s in plan.runs[("rank", "rlp r=1, α/r")]}.isdisjoint(rlp_dirs)
    dirs = [str(s.run_dir("r")) for s in plan.all_specs()]
    assert len(dirs) == len(set(dirs))
    names = [v.name for v in part_variants("rank", StudySettings(backbone="micro"))]
    assert len(names) == 10 and sum("α/r" in n for n in names) == 5


def test_unknown_part_and_backbone_without_suite_are_one_line():
    with pytest.raises(RlptuneError, match="unknown part"):
        StudySettings(backbone="micro", parts=["nope"]).resolved()
    with pytest.raises(RlptuneError, match="--datasets"):
        StudySettings(backbone="ViT-B-16").resolved()


def test_no_frozen_branch_is_a_zero_P_fr_and_tower_methods_are_refused_on_micro():
    settings = StudySettings(backbone="micro", quick=True, seeds=[1], parts=["ablation", "base2new"]).resolved()
    plan = make_plan(settings)
    spec = plan.runs[("ablation", "rlp without P_fr (P_fr = 0)")][0]
    backbone = BACKBONES.get(spec.config())
    from rlptune.methods import get_method_class

    method = get_method_class("rlp")(spec.config(), backbone, ["a", "b"])
    frozen = [m.frozen for m in method.modules() if hasattr(m, "frozen") and hasattr(m, "A")]
    assert frozen and all(float(f.abs().max()) == 0.0 for f in frozen)
    ivlp = plan.runs[("base2new", "ivlp")][0]
    assert method_can_run(ivlp, backbone) is not None
    assert method_can_run(plan.runs[("base2new", "coop")][0], backbone) is None


def test_sweep_datasets_and_exclusions_shape_the_plan():
    settings = StudySettings(
        backbone="micro",
        seeds=[1],
        parts=["base2new", "lowrank", "rank", "transfer"],
        exclude=["clip_lora"],
        sweep_datasets=["micro-textures"],
    ).resolved()
    plan = make_plan(settings)
    assert ("base2new", "clip_lora") not in plan.runs
    assert "--exclude clip_lora" in plan.skipped[("base2new", "clip_lora")]
    # parts 1-2 keep every dataset; the sweeps and the transfer protocols run on the subset
    assert {s.dataset for s in plan.runs[("base2new", "coop")]} == set(settings.datasets) and len(settings.datasets) > 1
    assert {s.dataset for s in plan.runs[("rank", "rlp r=2")]} == {"micro-textures"}
    assert {s.dataset for (p, _), specs in plan.runs.items() if p == "few-shot" for s in specs} == {"micro-textures"}
    cross = [s for (p, _), specs in plan.runs.items() if p == "cross-dataset" for s in specs]
    assert {s.dataset for s in cross} == {
        "micro-textures"
    }  # trained on the sweep's source, evaluated on all the others
    assert {t for s in cross for t in s.targets} == set(settings.datasets) - {"micro-textures"}
    # base-to-new runs track their new classes per epoch; other protocols cannot (and do not)
    assert all(s.config().train.track_new for s in plan.runs[("base2new", "coop")])
    assert not any(s.config().train.track_new for (p, _), specs in plan.runs.items() if p == "few-shot" for s in specs)
    with pytest.raises(RlptuneError, match="--exclude"):
        StudySettings(backbone="micro", exclude=["nope"]).resolved()
    with pytest.raises(RlptuneError, match="--sweep-datasets"):
        StudySettings(backbone="micro", sweep_datasets=["micro2-shapes"]).resolved()


def test_a_reduced_study_says_so_in_its_first_lines():
    """A study cut down with --exclude / --sweep-datasets must not present itself as the full study."""
    from rlptune.reproduce.write import study_markdown as _markdown

    estimate = {"runs": 10, "seconds": 3600.0, "basis": "test"}
    full = StudySettings(backbone="micro", seeds=[1]).resolved()
    reduced = StudySettings(
        backbone="micro", seeds=[1], exclude=["clip_lora"], sweep_datasets=["micro-textures"]
    ).resolved()
    head = lambda text: "\n".join(text.splitlines()[:4])  # noqa: E731
    full_text = _markdown(full, [], [], [], [], 0.0, 0, estimate)
    reduced_text = _markdown(reduced, [], [], [], [], 0.0, 0, estimate)
    assert "(full study)" in head(full_text) and "Reduced on purpose" not in full_text
    assert "(reduced study" in head(reduced_text) and "(full study)" not in reduced_text
    assert "Parts 3-5 (rank, ablation, transfer) ran on micro-textures only." in reduced_text
    # a study run for some parts only is reduced too, and names the parts whose claims it does not judge
    some_parts = StudySettings(
        backbone="micro", seeds=[1], parts=["base2new", "lowrank", "density"], sweep_datasets=["micro-textures"]
    ).resolved()
    some_text = _markdown(some_parts, [], [], [], [], 0.0, 0, estimate)
    assert "(reduced study" in head(some_text)
    assert "- Parts not run: rank, ablation, transfer (`--parts`)" in some_text
    assert "Parts 3-5 (rank, ablation, transfer) ran on" not in some_text  # none of them ran: no subset to state


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("evidence")
    code = main(
        quick_reproduce(
            str(root / "results"),
            "--seeds",
            "1",
            "2",
            "-o",
            str(root / "report"),
            "--docs",
            str(root / "docs" / "EVIDENCE.md"),
        )
    )
    assert code == 0
    return root


def _runs(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (root / "results").rglob("result.json")]


def _table(root: Path, name: str) -> dict:
    return json.loads((root / "report" / f"{name}.json").read_text())


def test_quick_report_has_every_table_and_says_micro_world(quick_study):
    report = quick_study / "report"
    for name in TABLES:
        for ext in ("md", "csv", "json"):
            assert (report / f"{name}.{ext}").is_file(), f"{name}.{ext}"
    text = (report / "EVIDENCE.md").read_text()
    assert "micro-world results" in text and "QUICK" in text
    docs = (quick_study / "docs" / "EVIDENCE.md").read_text()
    assert "](../report/fig_" in docs  # figure links point back into the report folder
    summary = json.loads((report / "evidence.json").read_text())
    skipped = {s["variant"] for s in summary["skipped"]}
    assert {"ivlp", "maple", "promptsrc", "clip_lora"} <= skipped
    assert all(s["reason"] for s in summary["skipped"])
    assert {c["verdict"].split(" ")[0] for c in summary["claims"]} <= {"supports", "contradicts", "cannot", "mixed"}
    assert summary["full_study_estimate"]["runs"] > summary["runs"] > 0


def test_paired_differences_are_the_per_run_differences(quick_study):
    h = {
        (r["tag"], r["dataset"], r["seed"]): r["h"]
        for r in _runs(quick_study)
        if r["protocol"] == "base2new" and "h" in r
    }
    rows = _table(quick_study, "part1_paired")["rows"]
    coop = next(r for r in rows if r["comparison"] == "rlp − coop")
    assert coop["n"] == 4  # 2 datasets x 2 seeds
    for pair in coop["pairs"]:
        assert pair["a"] == pytest.approx(h[("rlp", pair["dataset"], pair["seed"])])
        assert pair["b"] == pytest.approx(h[("coop", pair["dataset"], pair["seed"])])
        assert pair["diff"] == pytest.approx(pair["a"] - pair["b"])
    diffs = [p["diff"] for p in coop["pairs"]]
    assert coop["diff"] == pytest.approx(statistics.fmean(diffs))
    if coop["ci_low"] is not None:
        assert coop["ci_low"] <= coop["diff"] <= coop["ci_high"]


def test_summary_means_and_parameter_deltas_match_the_runs(quick_study):
    runs = [r for r in _runs(quick_study) if r["protocol"] == "base2new"]
    rows = {r["variant"]: r for r in _table(quick_study, "part1_base2new")["rows"]}
    for name in ("coop", "rlp", "zeroshot"):
        mine = [r for r in runs if r["tag"] == name]
        assert rows[name]["runs"] == len(mine) == 4
        assert rows[name]["base"] == pytest.approx(statistics.fmean(r["metrics"]["base"]["top1"] for r in mine))
        assert rows[name]["params"] == pytest.approx(statistics.fmean(r["trainable_params"] for r in mine))
    assert rows["rlp"]["params"] < rows["coop"]["params"]
    for row in _table(quick_study, "part2_lowrank")["rows"]:
        assert row["delta_params"] == pytest.approx(row["params_lowrank"] - row["params_full"])
        assert row["params_lowrank"] < row["params_full"]
        lowrank_tag = [
            r
            for r in runs
            if r["method"] == row["method"] and r.get("settings", {}).get("prompt", {}).get("kind") == LOWRANK["kind"]
        ]
        assert len(lowrank_tag) == row["n"]


def test_density_counts_every_prompt_run_of_its_stratum(quick_study):
    runs = [
        r
        for r in _runs(quick_study)
        if r["protocol"] == "base2new" and r.get("prompt_diagnostics") and "new" in r["metrics"]
    ]
    for row in _table(quick_study, "part6_density")["rows"]:
        members = [r for r in runs if r["method"] == row["method"] and r["dataset"] == row["dataset"]]
        assert row["n"] == len(members)
        assert row["rho"] is None or -1.0 <= row["rho"] <= 1.0
        assert row["p"] is None or (0.0 <= row["p"] <= 1.0 and not math.isnan(row["p"]))


def test_across_epochs_table_is_the_per_run_spearman(quick_study):
    from rlptune.analysis import stats as S

    rows = {(r["method"], r["dataset"], r["measure"]): r for r in _table(quick_study, "part6_density_epochs")["rows"]}
    assert rows, "every base-to-new prompt run logs new_acc and diagnostics per epoch"
    by_stratum: dict = {}
    for path in (quick_study / "results" / "base2new").rglob("result.json"):
        result = json.loads(path.read_text())
        ids, ranks, new = epoch_series(path.parent)
        if len(new) >= 3:
            by_stratum.setdefault((result["method"], result["dataset"]), []).append(S.spearman(ids, new))
            assert new[-1] == pytest.approx(result["metrics"]["new"]["top1"])  # the last epoch's score is the run's
    assert by_stratum
    for (method, dataset), rhos in by_stratum.items():
        row = rows[(method, dataset, "ID_1")]
        kept = [r.rho for r in rhos if not math.isnan(r.rho)]
        assert row["runs"] == len(kept)
        if kept:
            assert row["median_rho"] == pytest.approx(statistics.median(kept))
        assert row["positive"] + row["negative"] <= row["runs"]


def test_report_only_uses_finished_runs_and_says_what_is_missing(quick_study, tmp_path):
    import shutil

    results = tmp_path / "results"
    shutil.copytree(quick_study / "results", results)
    done = sorted(results.rglob("result.json"))
    coop = next(p for p in done if "/base2new/" in str(p) and "/coop/" in str(p))
    coop.unlink()  # one planned run "not finished"
    before = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    code = main(quick_reproduce(str(results), "--seeds", "1", "2", "-o", str(tmp_path / "report"), "--report-only"))
    assert code == 0
    after = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    assert after == before  # nothing ran, nothing was written into the results
    summary = json.loads((tmp_path / "report" / "evidence.json").read_text())
    assert summary["runs"] == summary["planned_runs"] - 1
    text = (tmp_path / "report" / "EVIDENCE.md").read_text()
    assert "Incomplete: 1 of the" in text
    rows = {r["variant"]: r for r in json.loads((tmp_path / "report" / "part1_base2new.json").read_text())["rows"]}
    assert rows["coop"]["runs"] == 3  # 2 datasets x 2 seeds, one missing


@pytest.mark.parametrize("written_before_parts_were_named", [False, True])
def test_a_report_made_in_pieces_equals_the_one_made_at_once(quick_study, tmp_path, written_before_parts_were_named):
    """--merge: parts 3-5 reported on their own, joined with parts 1, 2 and 6 of an earlier report, give the tables,
    claims and carried figures of the study reported at once; the report says which piece each part came from."""
    import shutil

    whole = quick_study / "report"
    earlier = tmp_path / "earlier"
    shutil.copytree(whole, earlier)
    if written_before_parts_were_named:  # reports of rlptune before --merge: claims without "part", no rates
        summary = json.loads((earlier / "evidence.json").read_text())
        for claim in summary["claims"]:
            del claim["part"]
        del summary["full_study_estimate"]["rates"], summary["pieces"], summary["made_at"]
        (earlier / "evidence.json").write_text(json.dumps(summary))
    common = quick_reproduce(str(quick_study / "results"), "--seeds", "1", "2", "--report-only")
    code = main(
        [
            *common,
            "--parts",
            "rank",
            "ablation",
            "transfer",
            "-o",
            str(tmp_path / "joined"),
            "--merge",
            str(earlier),
            "--docs",
            str(tmp_path / "docs" / "EVIDENCE.md"),
        ]
    )
    assert code == 0
    joined = tmp_path / "joined"
    at_once, pieces = (json.loads((d / "evidence.json").read_text()) for d in (whole, joined))
    assert pieces["tables"] == at_once["tables"]
    for name in TABLES:
        assert json.loads((joined / f"{name}.json").read_text()) == json.loads((whole / f"{name}.json").read_text()), (
            name
        )
    strip = lambda claims: [(c["claim"], c["evidence"], c["verdict"]) for c in claims]  # noqa: E731
    assert strip(pieces["claims"]) == strip(at_once["claims"])
    assert {c["part"] for c in pieces["claims"]} >= {"base2new", "lowrank", "rank", "ablation", "density"}
    assert pieces["settings"]["parts"] == at_once["settings"]["parts"]
    for figure in ("fig_base2new.png", "fig_density.png", "fig_density.svg"):
        assert (joined / figure).read_bytes() == (whole / figure).read_bytes()  # carried, not redrawn
    assert set(pieces["figures"]) == set(at_once["figures"])
    assert [p["parts"] for p in pieces["pieces"]] == [
        ["rank", "ablation", "transfer"],
        ["base2new", "lowrank", "density"],
    ]
    assert pieces["pieces"][1]["source"] == str(earlier / "evidence.json")
    text = (tmp_path / "docs" / "EVIDENCE.md").read_text()
    assert "Made in pieces" in text and "- parts base2new, lowrank, density:" in text and "Parts not run" not in text
    estimate = pieces["full_study_estimate"]
    if written_before_parts_were_named:  # no rates to join: the larger estimate, saying whose it is
        theirs = at_once["full_study_estimate"]["seconds"]
        assert estimate["seconds"] >= theirs and f"{theirs / 3600:.1f} h from that report's" in estimate["basis"]
    else:  # methods only part 1 ran keep the earlier report's measured rate
        assert estimate["rates"]["cocoop@base2new"] == pytest.approx(
            at_once["full_study_estimate"]["rates"]["cocoop@base2new"]
        )
        assert "rlp@few-shot" in estimate["rates"] and "rlp" in estimate["rates"]


def test_merge_refuses_a_report_of_other_settings_or_without_new_parts(quick_study, tmp_path, capsys):
    common = quick_reproduce(
        str(quick_study / "results"),
        "--report-only",
        "-o",
        str(tmp_path / "out"),
        "--merge",
        str(quick_study / "report"),
    )
    assert main([*common, "--seeds", "1", "--parts", "rank"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "settings.seeds is [1, 2]" in err[0] and "Traceback" not in err[0]
    assert main([*common, "--seeds", "1", "2"]) != 0  # every part of it is run here: nothing to carry
    assert "holds no part that this invocation does not run" in capsys.readouterr().err
    assert main([*common[:-1], str(tmp_path / "nowhere"), "--seeds", "1", "2", "--parts", "rank"]) != 0
    assert "no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_the_full_study_estimate_prices_each_protocol_at_its_own_rate():
    """A base-to-new epoch trains on half the classes: pricing it at a few-shot epoch's rate overstates the study."""
    from rlptune.reproduce.estimate import estimate_full_seconds

    settings = StudySettings(backbone="micro", seeds=[1]).resolved()
    few_shot = {"a": {"method": "coop", "protocol": "few-shot", "epochs": 10, "shots": 2, "train_seconds": 2.0}}
    both = {**few_shot, "b": {"method": "coop", "protocol": "base2new", "epochs": 10, "shots": 2, "train_seconds": 1.0}}
    one, two = estimate_full_seconds(few_shot, settings), estimate_full_seconds(both, settings)
    assert one["rates"]["coop@few-shot"] == pytest.approx(0.1) and two["rates"]["coop@base2new"] == pytest.approx(0.05)
    assert one["rates"]["coop"] == pytest.approx(0.1)  # base-to-new CoOp unmeasured: the method's mean stands in
    assert two["runs"] == one["runs"] and two["seconds"] < one["seconds"]
