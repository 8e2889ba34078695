"""Literature-shaped tables from a small synthetic set of rows; exact numbers in the rendered markdown."""

from __future__ import annotations

import csv
import io
import json

import pytest

from rlptune.report.tables import (
    base2new_table,
    cross_dataset_table,
    domain_gen_table,
    few_shot_curves,
    few_shot_table,
    harmonic_mean,
    normalize_protocol,
    render_csv,
    render_html,
    render_markdown,
    table_to_json,
    write_table,
)
from rlptune.errors import RlptuneError


def b2n_rows() -> list[dict]:
    """dtd/eurosat × coop/rlp × seeds 1-3; base = b + s, new = n − s (so every std is exactly 1)."""
    rows = []
    for dataset, (b, n) in {"eurosat": (90.0, 70.0), "dtd": (80.0, 60.0)}.items():
        for method, off in (("rlp", 2.0), ("coop", 0.0)):
            for seed in (1, 2, 3):
                rows.append(
                    {
                        "protocol": "base2new",
                        "dataset": dataset,
                        "method": method,
                        "seed": seed,
                        "shots": 16,
                        "base": b + off + seed,
                        "new": n + 2 * off - seed,
                        "trainable_params": 8192,
                    }
                )
    return rows


def test_harmonic_mean() -> None:
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert round(harmonic_mean(76.47, 67.88), 2) == 71.92  # CoCoOp table 1, CoOp on ImageNet


def test_base2new_markdown_exact() -> None:
    md = render_markdown(base2new_table(b2n_rows()))
    lines = md.splitlines()
    assert lines[0] == "### Base-to-new generalisation (accuracy %, mean ± std over seeds)"
    assert lines[2] == "| Dataset | Method | Base | New | H | Seeds | Params |"
    # dtd before eurosat (literature order), methods alphabetical; H = HM of the mean Base and New:
    # HM(82, 58) = 67.94; per-seed H = 68.27, 67.94, 67.59 → std 0.34
    assert lines[4] == "| dtd | coop | 82.00 ± 1.00 | 58.00 ± 1.00 | 67.94 ± 0.34 | 3 | 8,192 |"
    assert lines[5] == "| dtd | rlp | 84.00 ± 1.00 | 62.00 ± 1.00 | 71.34 ± 0.30 | 3 | 8,192 |"
    assert lines[6] == "| eurosat | coop | 92.00 ± 1.00 | 68.00 ± 1.00 | 78.20 ± 0.30 | 3 | 8,192 |"
    # Average: base (82+92)/2 = 87, new (58+68)/2 = 63, H = HM(87, 63) = 73.08 (not the mean of the H column, 73.07)
    assert lines[8] == "| **Average** | coop | 87.00 ± 1.00 | 63.00 ± 1.00 | 73.08 ± 0.32 | 3 | – |"
    assert lines[9] == "| **Average** | rlp | 89.00 ± 1.00 | 67.00 ± 1.00 | 76.45 ± 0.28 | 3 | – |"


def test_base2new_partial_coverage_and_unaligned_seeds() -> None:
    rows = [r for r in b2n_rows() if not (r["method"] == "rlp" and r["dataset"] == "eurosat")]
    rows = [r for r in rows if not (r["method"] == "coop" and r["dataset"] == "dtd" and r["seed"] == 3)]
    md = render_markdown(base2new_table(rows), title=False)
    assert "| dtd | coop | 81.50 ± 0.71 | 58.50 ± 0.71 | 68.11 ± 0.23 | 2 |" in md
    # coop's datasets have different seeds → the average has no ± and no seed count
    assert "| **Average** | coop | 86.75 | 63.25 | 73.16 | – | – |" in md
    assert "| **Average (1/2)** | rlp | 84.00 ± 1.00 | 62.00 ± 1.00 | 71.34 ± 0.30 | 3 | – |" in md


def test_single_seed_and_missing_cell() -> None:
    rows = [
        {"protocol": "base_to_new", "dataset": "dtd", "method": "coop", "seed": 1, "base": 80.0, "new": 60.0},
        {"protocol": "base2new", "dataset": "dtd", "method": "rlp", "seed": 1, "base": 81.0},
    ]
    md = render_markdown(base2new_table(rows), title=False)
    assert "| dtd | coop | 80.00 ± – | 60.00 ± – | 68.57 ± – | 1 |" in md
    assert "| dtd | rlp | 81.00 ± – | – | – | 1 |" in md
    assert "**Average" not in md  # one dataset: no average row


def test_duplicates_rejected_unless_grouped() -> None:
    rows = b2n_rows()
    for i, row in enumerate(rows):
        row["settings"] = {"rank": 1 + i % 2}
    extra = [dict(r, settings={"rank": 8}) for r in rows if r["method"] == "rlp"]
    with pytest.raises(RlptuneError, match="two base2new results"):
        base2new_table(rows + extra)
    table = base2new_table(
        rows[:6] + [dict(r, settings={"rank": 8}) for r in rows[:3]],
        group_by=lambda r: f"{r['method']} r={r['settings']['rank']}",
    )
    assert {row.labels["Method"] for row in table.rows} == {"rlp r=1", "rlp r=2", "rlp r=8", "coop r=1", "coop r=2"}


def test_csv_and_json_are_machine_readable() -> None:
    table = base2new_table(b2n_rows())
    records = list(csv.DictReader(io.StringIO(render_csv(table))))
    first = records[0]
    assert (first["Dataset"], first["Method"], first["Base"], first["Base std"], first["Base n"]) == (
        "dtd",
        "coop",
        "82.0",
        "1.0",
        "3",
    )
    assert first["H"] == "67.9429" and first["average"] == "0" and first["Params"] == "8192"
    assert records[4]["Dataset"] == "Average" and records[4]["average"] == "1"
    data = json.loads(json.dumps(table_to_json(table), allow_nan=False))
    cell = data["rows"][0]["cells"]["Base"]
    assert cell["values"] == [81.0, 82.0, 83.0] and cell["seeds"] == [1, 2, 3] and cell["n"] == 3
    assert data["rows"][4]["cells"]["Base"]["values"] == [86.0, 87.0, 88.0]  # per-seed average over datasets


def test_few_shot_table_and_curves() -> None:
    rows = [
        {
            "protocol": "few_shot",
            "dataset": ds,
            "method": m,
            "seed": s,
            "shots": k,
            "accuracy": 50.0 + 2 * k + s + (1.0 if m == "rlp" else 0.0) + (10.0 if ds == "caltech101" else 0.0),
        }
        for ds in ("dtd", "caltech101")
        for m in ("coop", "rlp")
        for s in (1, 2)
        for k in (1, 4, 16)
    ]
    table = few_shot_table(rows)
    md = render_markdown(table, title=False).splitlines()
    assert md[0] == "| Dataset | Method | 1 shot | 4 shots | 16 shots | Seeds |"
    assert md[2] == "| caltech101 | coop | 63.50 ± 0.71 | 69.50 ± 0.71 | 93.50 ± 0.71 | 2 |"
    assert md[4] == "| dtd | coop | 53.50 ± 0.71 | 59.50 ± 0.71 | 83.50 ± 0.71 | 2 |"
    assert md[6] == "| **Average** | coop | 58.50 ± 0.71 | 64.50 ± 0.71 | 88.50 ± 0.71 | 2 |"
    curves = few_shot_curves(table)
    assert curves["dtd"]["rlp"]["shots"] == [1, 4, 16]
    assert curves["dtd"]["rlp"]["mean"] == pytest.approx([54.5, 60.5, 84.5])
    assert curves["Average"]["coop"]["n"] == [2, 2, 2]
    with pytest.raises(RlptuneError, match="shots"):
        few_shot_table([{"protocol": "few-shot", "dataset": "dtd", "method": "coop", "seed": 1, "accuracy": 1.0}])


def test_cross_dataset_and_domain_gen() -> None:
    xd = [
        {
            "protocol": "cross_dataset",
            "dataset": "imagenet",
            "method": m,
            "seed": s,
            "accuracy": 70.0 + s,
            "targets": {"dtd": 40.0 + s, "caltech101": 90.0 + s + (1.0 if m == "rlp" else 0.0)},
        }
        for m in ("rlp", "coop")
        for s in (1, 2, 3)
    ]
    md = render_markdown(cross_dataset_table(xd), title=False).splitlines()
    assert md[0] == "| Method | Trained on | Source | caltech101 | dtd | Average | Seeds |"
    assert md[2] == "| coop | imagenet | 72.00 ± 1.00 | 92.00 ± 1.00 | 42.00 ± 1.00 | 67.00 ± 1.00 | 3 |"
    assert md[3] == "| rlp | imagenet | 72.00 ± 1.00 | 93.00 ± 1.00 | 42.00 ± 1.00 | 67.50 ± 1.00 | 3 |"
    # domain-gen given as one row per evaluated dataset with a "source" field
    dg = [
        {"protocol": "dg", "dataset": ds, "source": "imagenet", "method": "rlp", "seed": 1, "accuracy": acc}
        for ds, acc in (("imagenet", 72.0), ("imagenet_r", 77.0), ("imagenet_v2", 64.0), ("imagenet_sketch", 49.0))
    ]
    md = render_markdown(domain_gen_table(dg), title=False).splitlines()
    assert md[0] == "| Method | Trained on | Source | imagenet_v2 | imagenet_sketch | imagenet_r | Average | Seeds |"
    assert md[2] == "| rlp | imagenet | 72.00 ± – | 64.00 ± – | 49.00 ± – | 77.00 ± – | 63.33 ± – | 1 |"
    assert cross_dataset_table(dg).rows == []  # protocols do not mix


def test_protocol_names_html_and_write(tmp_path) -> None:
    assert [normalize_protocol(p) for p in ("Base-to-New", "few_shot", "XD", "domain_generalization")] == [
        "base2new",
        "few-shot",
        "cross-dataset",
        "domain-gen",
    ]
    table = base2new_table(b2n_rows())
    html = render_html(table)
    assert '<table class="results" id="table-base2new">' in html and '<td class="num">82.00 ± 1.00</td>' in html
    assert "<script" not in render_html(base2new_table([{**b2n_rows()[0], "method": "<script>x</script>"}]))  # escaped
    paths = write_table(table, tmp_path / "t" / "base2new")
    assert [p.name for p in paths] == ["base2new.md", "base2new.csv", "base2new.json"]
    assert all(p.is_file() for p in paths)


def test_other_runs_table() -> None:
    from rlptune.report.tables import other_runs_table

    rows = [
        {
            "protocol": "train",
            "dataset": "colours",
            "method": "rlp",
            "seed": s,
            "shots": 4,
            "accuracy": 30.0 + s,
            "macro_f1": 20.0,
        }
        for s in (1, 2)
    ] + b2n_rows()
    md = render_markdown(other_runs_table(rows), title=False).splitlines()
    assert md[0] == "| Dataset | Method | Shots | Accuracy | Macro-F1 | Seeds |"
    assert md[2] == "| colours | rlp | 4 | 31.50 ± 0.71 | 20.00 ± 0.00 | 2 |"
    assert len(md) == 3  # base2new rows belong to their own table


def test_one_seed_prints_a_dash_not_zero_spread() -> None:
    table = base2new_table([r for r in b2n_rows() if r["seed"] == 1 and r["dataset"] == "dtd"])
    assert (
        render_markdown(table, title=False).splitlines()[2]
        == "| dtd | coop | 81.00 ± – | 59.00 ± – | 68.27 ± – | 1 | 8,192 |"
    )
    line = render_csv(table).splitlines()[1].split(",")
    assert line[3:6] == ["81.0", "", "1"]  # Base, Base std (empty: undefined), Base n
    assert table_to_json(table)["rows"][0]["cells"]["Base"]["std"] is None
    two = base2new_table([r for r in b2n_rows() if r["seed"] in (1, 2) and r["dataset"] == "dtd"])
    assert "81.50 ± 0.71" in render_markdown(two)


def test_zero_shot_is_one_row_not_one_per_shot_and_seed() -> None:
    from rlptune.report.tables import collapse_shot_independent, other_runs_table

    rows = [
        {
            "protocol": "few-shot",
            "dataset": ds,
            "method": m,
            "seed": s,
            "shots": k,
            "accuracy": 60.0 + k + s if m == "rlp" else 55.0,
        }
        for ds in ("dtd", "eurosat")
        for m in ("rlp", "zeroshot")
        for k in (1, 4)
        for s in (1, 2, 3)
    ]
    assert len(collapse_shot_independent(rows)) == 12 + 2  # 12 rlp runs, one zero-shot row per dataset
    md = render_markdown(few_shot_table(rows), title=False).splitlines()
    assert md[0] == "| Dataset | Method | 0 shots | 1 shot | 4 shots | Seeds |"
    assert "| dtd | zeroshot | 55.00 ± – | – | – | 1 |" in md
    assert "| dtd | rlp | – | 63.00 ± 1.00 | 66.00 ± 1.00 | 3 |" in md
    assert sum("zeroshot" in line for line in md) == 3  # dtd, eurosat, Average
    curves = few_shot_curves(few_shot_table(rows))
    assert curves["dtd"]["zeroshot"]["shots"] == [0] and curves["dtd"]["rlp"]["shots"] == [1, 4]
    b2n = [
        {
            "protocol": "base2new",
            "dataset": "dtd",
            "method": "zeroshot",
            "seed": s,
            "shots": 0,
            "base": 70.0,
            "new": 74.0,
        }
        for s in (1, 2, 3)
    ]
    assert "| dtd | zeroshot | 70.00 ± – | 74.00 ± – | 71.94 ± – | 1 |" in render_markdown(base2new_table(b2n))
    train = [{"protocol": "train", "dataset": "dtd", "method": "zeroshot", "seed": s, "accuracy": 50.0} for s in (1, 2)]
    assert len(other_runs_table(train).rows) == 1
