"""``rlptune demo --quick``: the main job's code path end to end on the micro world v2 (tiny epochs)."""

from __future__ import annotations

import json

import yaml

from rlptune.cli import main
from rlptune.demo import DEMO_BACKBONE, DEMO_METHODS, DEMO_TRAIN


def test_demo_quick_writes_its_tables_chart_and_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLPTUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--seeds", "1", "--jobs", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert DEMO_BACKBONE in printed and "micro2-" in printed
    table = json.loads((out / "base2new.json").read_text())
    text = json.dumps(table)
    for method in DEMO_METHODS:
        assert method in text
    assert (out / "base2new_chart.png").stat().st_size > 1000
    assert (out / "report" / "report.html").is_file()
    runs = [
        (json.loads(p.read_text()), yaml.safe_load((p.parent / "config.yaml").read_text()))
        for p in (out / "runs").rglob("result.json")
    ]
    assert {r["method"] for r, _ in runs} == set(DEMO_METHODS)
    for result, config in runs:
        assert result["backbone"].startswith(DEMO_BACKBONE + "@sha256:") and config["backbone"]["name"] == DEMO_BACKBONE
        if result["method"] != "zeroshot":
            # the official crop and schedule; only the epochs differ from the recipe (in the full demo)
            assert config["train"]["crop_scale"] == 0.08 and config["train"]["aug_views"] == 0
    assert set(DEMO_TRAIN) == {"epochs"}
