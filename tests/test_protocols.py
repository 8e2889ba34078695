"""Each protocol runs end to end (tiny settings) and produces its table; sweeps skip finished runs and resume."""

from __future__ import annotations

import json

from conftest import one_run_sweep

import pytest

from rlptune.cli import main
from rlptune.protocols import aggregate
from rlptune.sweeps.runner import make_specs, parse_grid, run_sweep

TINY_TRAIN = {"train": {"epochs": 1, "aug_views": 1, "batch_size": 16}}


@pytest.fixture()
def micro_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "micro-cache"
    monkeypatch.setenv("RLPTUNE_CACHE", str(cache))
    return cache


def test_base2new_runs_and_tables(tiny_arch_path, micro_cache, tmp_path):
    specs = make_specs(
        "base2new",
        ["micro-shapes"],
        ["zeroshot", "rlp"],
        [1, 2],
        [2],
        backbone=str(tiny_arch_path),
        base_overrides=TINY_TRAIN,
    )
    results = run_sweep(specs, tmp_path / "res", log=lambda m: None)
    assert len(results) == 4
    trained = [r for r in results if r["method"] == "rlp"]
    assert all(set(r["metrics"]) == {"base", "new"} for r in trained)
    assert trained[0]["metrics"]["base"]["n"] == 5 * 40 and trained[0]["metrics"]["new"]["n"] == 5 * 40
    few = json.loads((specs[-1].run_dir(tmp_path / "res") / "few_shot.json").read_text())
    assert few  # the drawn few-shot set is recorded, as JSON
    _, markdown = aggregate(tmp_path / "res", "base2new", tmp_path / "res" / "tables" / "b2n")
    assert "micro-shapes" in markdown and "rlp" in markdown and "±" in markdown
    assert (tmp_path / "res" / "tables" / "b2n.csv").is_file() and (tmp_path / "res" / "tables" / "b2n.json").is_file()


def test_sweep_skips_finished_runs(tiny_arch_path, micro_cache, tmp_path):
    specs = make_specs(
        "few-shot",
        ["micro-colors"],
        ["rlp"],
        [1],
        [1],
        backbone=str(tiny_arch_path),
        grid=parse_grid(["prompt.rank=1,2"]),
        base_overrides=TINY_TRAIN,
    )
    assert [s.tag() for s in specs] == ["rlp__prompt.rank=1", "rlp__prompt.rank=2"]
    run_sweep(specs, tmp_path / "res", log=lambda m: None)
    stamp = [(s.run_dir(tmp_path / "res") / "result.json").stat().st_mtime_ns for s in specs]
    messages = []
    run_sweep(specs, tmp_path / "res", log=messages.append)
    assert "2 already finished, 0 to run" in messages[0]
    assert stamp == [(s.run_dir(tmp_path / "res") / "result.json").stat().st_mtime_ns for s in specs]
    _, markdown = aggregate(tmp_path / "res", "few-shot")
    assert "prompt.rank=1" in markdown and "prompt.rank=2" in markdown


@pytest.mark.parametrize(
    "protocol,source,n_targets", [("cross-dataset", "micro-colors", 7), ("domain-gen", "micro-shapes", 3)]
)
def test_transfer_protocols_via_cli(protocol, source, n_targets, tiny_arch_path, micro_cache, tmp_path, capsys):
    code = main(one_run_sweep(protocol, source, tiny_arch_path, tmp_path / "res", "--epochs", "1", "--aug-views", "0"))
    assert code == 0
    result = json.loads(next((tmp_path / "res").rglob("result.json")).read_text())
    assert len(result["targets"]) == n_targets
    out = capsys.readouterr().out
    assert source in out or "Average" in out


def test_parallel_sweep_and_analyze(tiny_arch_path, micro_cache, tmp_path, capsys):
    """Two worker processes share the sweep; `rlptune analyze` then tabulates ID_k against new-class accuracy."""
    specs = make_specs(
        "base2new",
        ["micro-colors"],
        ["rlp"],
        [1, 2],
        [1],
        backbone=str(tiny_arch_path),
        grid=parse_grid(["prompt.rank=1,2"]),
        base_overrides=TINY_TRAIN,
    )
    results = run_sweep(specs, tmp_path / "res", jobs=2, log=lambda m: None)
    assert len(results) == 4 and all("new" in r["metrics"] for r in results)
    run_dirs = [str(s.run_dir(tmp_path / "res")) for s in specs]
    assert main(["analyze", *run_dirs]) == 0
    out = capsys.readouterr().out
    assert "Spearman" in out and "n = 4" in out.replace("n=4", "n = 4")
