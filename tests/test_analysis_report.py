"""Reading fake run folders (the engine's result.json / metrics.jsonl schema) and rendering the report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rlptune.report.writer import (
    analyze_runs,
    collect_runs,
    read_metrics_jsonl,
    render_analysis_markdown,
    result_to_row,
    write_report,
)
from rlptune.analysis.spectrum import prompt_diagnostics
from rlptune.errors import RlptuneError


def _diag(rank: int, seed: int) -> dict:
    """The engine's form: one prompt_diagnostics dict per named prompt."""
    g = torch.Generator().manual_seed(seed)
    p_init = torch.randn(4, 16, generator=g)
    delta = torch.randn(4, rank, generator=g) @ torch.randn(rank, 16, generator=g)
    return {"ctx": prompt_diagnostics(p_init + delta, p_init)}


def _write_run(root: Path, name: str, result: dict, epochs: int = 0) -> Path:
    run = root / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps(result))
    if epochs:
        lines = [
            json.dumps(
                {
                    "epoch": e,
                    "lr": 0.002,
                    "loss": 2.0 / (e + 1),
                    "train_acc": 40.0 + 10 * e,
                    "val_acc": 38.0 + 9 * e,
                    "diagnostics": result.get("prompt_diagnostics"),
                }
            )
            for e in range(epochs)
        ]
        (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 9, "lo')  # killed mid-append
    return run


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    i = 0
    for method, rank in (("coop", 4), ("rlp", 1)):
        for dataset in ("dtd", "eurosat"):
            for seed in (1, 2):
                i += 1
                new = 60.0 + seed + (5.0 if method == "rlp" else 0.0) + (10.0 if dataset == "eurosat" else 0.0)
                _write_run(
                    root,
                    f"base2new/{dataset}/{method}/seed{seed}",
                    {
                        "protocol": "base2new",
                        "dataset": dataset,
                        "method": method,
                        "seed": seed,
                        "shots": 16,
                        "backbone": "ViT-B/16",
                        "trainable_params": 2048,
                        "metrics": {
                            "base": {"top1": 80.0 + seed, "macro_f1": 79.0, "per_class": [80.0]},
                            "new": {"top1": new, "macro_f1": new - 1},
                        },
                        "prompt_diagnostics": _diag(rank, i),
                        "settings": {"rank": rank},
                    },
                    epochs=3 if seed == 1 else 0,
                )
    for method in ("coop", "rlp"):
        for shots in (1, 4):
            _write_run(
                root,
                f"few-shot/dtd/{method}/{shots}shot/seed1",
                {
                    "protocol": "few-shot",
                    "dataset": "dtd",
                    "method": method,
                    "seed": 1,
                    "shots": shots,
                    "metrics": {"test": {"top1": 40.0 + shots}},
                },
            )
    _write_run(
        root,
        "cross-dataset/imagenet/rlp/seed1",
        {
            "protocol": "cross-dataset",
            "dataset": "imagenet",
            "method": "rlp",
            "seed": 1,
            "shots": 16,
            "metrics": {"test": {"top1": 71.0}},
            "targets": {"dtd": {"top1": 45.0}, "caltech101": {"top1": 93.0}},
        },
    )
    return root


def test_result_to_row_maps_the_schema() -> None:
    row = result_to_row(
        {
            "protocol": "base2new",
            "dataset": "dtd",
            "method": "rlp",
            "seed": 2,
            "shots": 16,
            "metrics": {"base": {"top1": 80.0, "macro_f1": 78.0}, "new": {"top1": 60.0}},
            "prompt_diagnostics": {"P": {"id_k": 0.9, "k": 1, "effective_rank": 1.5}, "delta": {"id_k": 1.0}},
        }
    )
    assert (row["base"], row["new"], row["base_macro_f1"]) == (80.0, 60.0, 78.0)
    assert row["h"] == pytest.approx(2 * 80 * 60 / 140)
    assert (row["id_k"], row["id_k_delta"], row["k"], row["effective_rank"]) == (0.9, 1.0, 1, 1.5)
    xd = result_to_row(
        {
            "dataset": "imagenet",
            "method": "coop",
            "metrics": {"test": {"top1": 70.0}},
            "targets": {"dtd": {"top1": 44.0}, "ucf101": 66.0, "bad": {}},
        }
    )
    assert (xd["protocol"], xd["accuracy"], xd["targets"]) == ("cross-dataset", 70.0, {"dtd": 44.0, "ucf101": 66.0})
    assert result_to_row({"dataset": "dtd", "method": "coop", "metrics": {}})["protocol"] == "few-shot"
    with pytest.raises(RlptuneError, match="x.json: missing required field 'method'"):
        result_to_row({"dataset": "dtd"}, source="x.json")
    named = result_to_row(
        {
            "method": "maple",
            "metrics": {"test": 50.0},
            "protocol": "train",
            "prompt_diagnostics": {"text": {"P": {"id_k": 0.7, "k": 1}}, "vision": {"P": {"id_k": 0.2}}},
        }
    )
    assert (named["dataset"], named["protocol"], named["id_k"], named["prompts"]) == (
        "unknown",
        "train",
        0.7,
        ["text", "vision"],
    )


def test_collect_runs_and_bad_files(results_dir: Path, tmp_path: Path) -> None:
    rows = collect_runs(results_dir)
    assert len(rows) == 13
    with_history = [r for r in rows if "history" in r]
    assert len(with_history) == 4 and all(len(r["history"]) == 3 for r in with_history)  # truncated line skipped
    bad = tmp_path / "bad" / "run"
    bad.mkdir(parents=True)
    (bad / "result.json").write_text("{not json")
    with pytest.raises(RlptuneError, match=re.escape(str(bad / "result.json"))):
        collect_runs(tmp_path / "bad")
    (bad / "metrics.jsonl").write_text('{"epoch": 0}\nbroken\n{"epoch": 2}\n')
    with pytest.raises(RlptuneError, match="metrics.jsonl:2"):
        read_metrics_jsonl(bad / "metrics.jsonl")
    with pytest.raises(RlptuneError, match="no such results folder"):
        collect_runs(tmp_path / "missing")


def test_analyze_runs_correlation(results_dir: Path) -> None:
    table, corr = analyze_runs([results_dir / "base2new"])
    assert len(table) == 8
    assert all(r["diagnostics_source"] == "result.json" for r in table)
    rlp = [r for r in table if r["method"] == "rlp"]
    assert all(r["numerical_rank_delta"] == 1 and r["id_k_delta"] == pytest.approx(1.0) for r in rlp)
    assert (corr["x"], corr["y"], corr["n"], corr["k"]) == ("id_k", "new", 8, 1)
    assert -1.0 <= corr["rho"] <= 1.0 and 0.0 <= corr["p"] <= 1.0
    _, corr_delta = analyze_runs([results_dir / "base2new"], which="delta")
    assert corr_delta["n"] == 8
    table2, corr2 = analyze_runs([results_dir / "base2new" / "dtd" / "coop" / "seed1"], k=2)  # recomputed from spectra
    assert table2[0]["k"] == 2 and table2[0]["id_k"] > table[0]["id_k"] and corr2["n"] == 1
    text = render_analysis_markdown(table, corr)
    assert "| Run | Dataset | Method | Seed | ID_1 (P) |" in text and "n = 8" in text
    with pytest.raises(RlptuneError):
        analyze_runs([results_dir / "few-shot" / "nothing-here"])


def test_report_renders_self_contained(results_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    paths = write_report(results_dir, out, baseline="coop")
    assert paths[0] == out / "report.md" and paths[1] == out / "report.html"
    assert all(p.is_file() for p in paths)
    names = {p.relative_to(out).as_posix() for p in paths}
    for expected in (
        "tables/base2new.md",
        "tables/base2new.csv",
        "tables/base2new.json",
        "tables/few_shot.md",
        "tables/cross_dataset.json",
        "figures/base2new_bars.png",
        "figures/base2new_bars.svg",
        "figures/few_shot_curves.png",
        "figures/id_vs_new.svg",
        "figures/spectra.png",
        "figures/spectra_delta.png",
        "figures/training_curves.png",
        "analysis.json",
        "comparisons.json",
    ):
        assert expected in names
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| dtd | coop | 81.50 ± 0.71 | 61.50 ± 0.71 | 70.10 ± 0.72 | 2 | 2,048 |" in md
    for link in re.findall(r"\]\(([^)]+)\)", md):
        assert (out / link).is_file(), link
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("<table") >= 5  # base2new, few-shot, cross-dataset, comparisons, diagnostics
    assert '<td class="num">81.50 ± 0.71</td>' in html
    assert html.count('src="data:image/png;base64,') == 6
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may spell "http" by chance
    assert "http" not in text and "<script" not in text and "<link" not in text
    assert re.findall(r'(?:src|href)="(?!data:|#)', html) == []  # only embedded images and in-page anchors
    comparisons = json.loads((out / "comparisons.json").read_text())
    h = next(c for c in comparisons if c["metric"] == "h")
    assert (h["a"], h["b"], h["n"]) == ("rlp", "coop", 4)


def test_report_from_rows_without_runs(tmp_path: Path) -> None:
    rows = [
        {"protocol": "few-shot", "dataset": "dtd", "method": "coop", "seed": s, "shots": 2, "accuracy": 50.0 + s}
        for s in (1, 2)
    ]
    paths = write_report(rows, tmp_path / "r")
    assert (tmp_path / "r" / "report.html").is_file() and len(paths) >= 6
    with pytest.raises(RlptuneError):
        write_report([], tmp_path / "empty")


def test_sweep_runs_are_labelled_apart() -> None:
    from rlptune.report.writer import disambiguate_methods

    rows = [
        {
            "protocol": "base2new",
            "dataset": "dtd",
            "method": "rlp",
            "seed": 1,
            "shots": 16,
            "base": 80.0,
            "new": 60.0,
            "settings": {"prompt": {"rank": r, "dropout": 0.1}, "output_dir": f"runs/{r}"},
        }
        for r in (1, 2)
    ] + [{"protocol": "base2new", "dataset": "dtd", "method": "coop", "seed": 1, "base": 1.0}]
    labels = [r["method"] for r in disambiguate_methods(rows)]
    assert labels == ["rlp (rank=1)", "rlp (rank=2)", "coop"]
    assert rows[0]["method"] == "rlp"  # inputs untouched


def test_zero_shot_is_paired_once_per_dataset() -> None:
    from rlptune.report.writer import compare_methods

    rows = [
        {"protocol": "few-shot", "dataset": ds, "method": "rlp", "seed": s, "shots": k, "accuracy": 60.0 + k + s + i}
        for i, ds in enumerate(("dtd", "eurosat", "ucf101"))
        for k in (1, 4)
        for s in (1, 2, 3)
    ]
    rows += [
        {"protocol": "few-shot", "dataset": ds, "method": "zeroshot", "seed": s, "shots": k, "accuracy": 50.0}
        for ds in ("dtd", "eurosat", "ucf101")
        for k in (1, 4)
        for s in (1, 2, 3)
    ]
    rows += [
        {
            "protocol": "base2new",
            "dataset": ds,
            "method": m,
            "seed": s,
            "base": 80.0 + s * (m == "rlp"),
            "new": 70.0 + s * (m == "rlp"),
        }
        for ds in ("dtd", "eurosat")
        for m in ("rlp", "zeroshot")
        for s in (1, 2, 3)
    ]
    found = {(c["protocol"], c["metric"]): c for c in compare_methods(rows, baseline="zeroshot")}
    assert set(found) == {
        ("few-shot (1 shots)", "accuracy"),
        ("few-shot (4 shots)", "accuracy"),
        ("base2new", "h"),
        ("base2new", "new"),
    }
    one = found[("few-shot (1 shots)", "accuracy")]
    assert one["n"] == 3 and one["paired_over"].startswith("dataset")  # 3 datasets, not 3 × 3 seeds × shots
    assert one["mean_diff"] == pytest.approx(60.0 + 1 + 2 + 1 - 50.0)  # rlp's seed mean (63 + i) vs 50, mean over i
    assert found[("base2new", "new")]["n"] == 2 and found[("base2new", "new")]["mean_diff"] == pytest.approx(2.0)


def test_correlation_within_method_and_dataset_with_pooled_grouping() -> None:
    from rlptune.report.writer import _grouped_correlations

    # within each method ID and accuracy rise together; between methods the one with higher ID is worse
    table = [
        {"method": m, "dataset": d, "id_k": base + 0.01 * i + 0.001 * j, "new": acc + i + 0.1 * j}
        for m, base, acc in (("coop", 0.2, 80.0), ("rlp", 0.9, 60.0))
        for j, d in enumerate(("dtd", "eurosat"))
        for i in range(4)
    ]
    corr = _grouped_correlations(table, "id_k", "new")
    assert corr["rho"] < -0.5 and corr["n"] == 16  # pooled: "which method"
    assert corr["pooled_over"] == {"methods": ["coop", "rlp"], "datasets": ["dtd", "eurosat"]}
    within = {c["group"]: c for c in corr["within_method"]}
    assert within["coop"]["rho"] > 0.9 and within["rlp"]["rho"] > 0.9 and within["rlp"]["n"] == 8
    assert {c["group"] for c in corr["within_dataset"]} == {"dtd", "eurosat"}
    from rlptune.report.writer import _correlation_text

    text = _correlation_text({"x": "id_k", "y": "new", "k": 1, **corr})
    assert "within method coop: ρ = 1.000, p < 0.0001, n = 8" in text and "within dataset dtd: ρ = " in text
    assert "pooled over 2 method(s) × 2 dataset(s)" in text and "mostly says which method" in text


def _train_run(root: Path, name: str, epochs: int, accuracy: float, history: list | None = None) -> None:
    """What `rlptune train` leaves: result.json (protocol "train", no settings) and config.yaml."""
    import yaml

    run = root / name
    run.mkdir(parents=True)
    (run / "result.json").write_text(
        json.dumps(
            {
                "method": "rlp",
                "dataset": "colours",
                "seed": 1,
                "shots": 4,
                "backbone": "micro",
                "protocol": "train",
                "trainable_params": 36,
                "epochs": epochs,
                "metrics": {"test": {"top1": accuracy, "macro_f1": accuracy - 1}},
            }
        )
    )
    (run / "config.yaml").write_text(
        yaml.safe_dump({"method": {"name": "rlp"}, "train": {"epochs": epochs, "seed": 1}, "output_dir": str(run)})
    )
    if history:
        (run / "metrics.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))


def test_report_on_plain_train_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from rlptune.cli import main

    runs = tmp_path / "runs"
    history = [{"epoch": e, "lr": 0.002, "loss": 1.0 / e, "train_acc": 50.0 + e, "steps": 2} for e in (1, 2, 3)]
    _train_run(runs, "short", 5, 70.0, history)
    _train_run(runs, "long", 50, 80.0)
    _train_run(runs, "again/long", 50, 81.0)  # the same command twice: only the folder tells them apart
    assert main(["report", str(runs), "-o", str(tmp_path / "out")]) == 0
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "group_by" not in md + capsys.readouterr().err
    assert "| colours | rlp (epochs=5) | 4 | 70.00 ± – | 69.00 ± – | 1 |" in md
    assert "| colours | rlp (epochs=50) [again/long] | 4 | 81.00 ± – |" in md
    assert "| colours | rlp (epochs=50) [runs/long] | 4 | 80.00 ± – |" in md
    assert "These runs logged no validation accuracy." in md and "cached augmented views" in md


def test_training_curve_section_mentions_validation_when_logged(results_dir: Path, tmp_path: Path) -> None:
    write_report(results_dir / "base2new" / "dtd", tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text(encoding="utf-8")
    assert "## Training curves" in md and "Validation accuracy (dashed)" in md
    assert "logged no validation accuracy" not in md


def test_missing_jinja2_is_one_line_before_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from rlptune.report import templates

    templates.environment.cache_clear()
    monkeypatch.setitem(sys.modules, "jinja2", None)  # import jinja2 -> ImportError
    try:
        rows = [{"protocol": "few-shot", "dataset": "dtd", "method": "coop", "seed": 1, "shots": 2, "accuracy": 50.0}]
        with pytest.raises(
            RlptuneError, match=r"^report.html needs the jinja2 package: pip install 'rlptune\[report\]'"
        ):
            write_report(rows, tmp_path / "r")
        assert not (tmp_path / "r").exists()
    finally:
        templates.environment.cache_clear()


def test_zero_shot_is_the_reference_side_without_a_baseline() -> None:
    from rlptune.report.writer import compare_methods

    rows = [
        {"protocol": "base2new", "dataset": ds, "method": m, "seed": s, "base": 80.0 + (m == "rlp"), "new": 70.0}
        for ds in ("dtd", "eurosat")
        for m in ("rlp", "zeroshot")
        for s in (1, 2)
    ]
    found = compare_methods(rows)
    assert {(c["a"], c["b"]) for c in found} == {("rlp", "zeroshot")} and all(c["n"] == 2 for c in found)
