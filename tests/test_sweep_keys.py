"""Sweep run folders mean what they say: keyed by a hash of every setting that affects the result, never merging
grid points, every run checked before the first starts, and failed runs listed at the end without stopping
the others."""

from __future__ import annotations

import pytest
from conftest import one_run_sweep

from rlptune.cli import main
from rlptune.errors import RlptuneError
from rlptune.protocols import aggregate
from rlptune.sweeps.runner import make_specs, parse_grid, run_sweep
from rlptune.sweeps.runner import RunSpec

TRAIN = {"epochs": 1, "aug_views": 0, "batch_size": 16}


@pytest.fixture()
def micro_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "micro-cache"
    monkeypatch.setenv("RLPTUNE_CACHE", str(cache))
    return cache


def _run(tiny_arch_path, results, *extra):
    return main(one_run_sweep("few-shot", "micro-colors", tiny_arch_path, results, "--aug-views", "0", *extra))


def _table_row(stdout: str) -> list[str]:
    rows = [line for line in stdout.splitlines() if line.startswith("| micro-colors")]
    assert len(rows) == 1, stdout
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_a_rerun_with_other_settings_runs_again_and_tables_only_its_own_runs(
    tiny_arch_path, micro_cache, tmp_path, capsys, single_thread
):
    results = tmp_path / "res"
    assert _run(tiny_arch_path, results, "--epochs", "1") == 0
    first = capsys.readouterr()
    assert "1 runs, 0 already finished, 1 to run" in first.err
    assert (
        _run(tiny_arch_path, results, "--epochs", "1", "--set", "train.checkpoint_every=2") == 0
    )  # not a result setting
    assert "1 runs, 1 already finished, 0 to run" in capsys.readouterr().err
    assert _run(tiny_arch_path, results, "--epochs", "3") == 0
    second = capsys.readouterr()
    assert "1 runs, 0 already finished, 1 to run" in second.err  # before: "1 already finished" and the old table
    assert _table_row(second.out)[-1] == "1"  # one seed: the --epochs 1 run is not averaged in
    assert len(list(results.rglob("result.json"))) == 2

    base = dict(backbone=str(tiny_arch_path), base_overrides={"train": TRAIN})
    [spec] = make_specs("few-shot", ["micro-colors"], ["rlp"], [1], [1], **base)
    [other_lr] = make_specs(
        "few-shot",
        ["micro-colors"],
        ["rlp"],
        [1],
        [1],
        backbone=str(tiny_arch_path),
        base_overrides={"train": {**TRAIN, "lr": 0.01}},
    )
    [other_device] = make_specs(
        "few-shot",
        ["micro-colors"],
        ["rlp"],
        [1],
        [1],
        backbone=str(tiny_arch_path),
        base_overrides={"train": TRAIN, "backbone": {"device": "cpu"}, "eval": {"top_k": 1}},
    )
    assert spec.run_dir(results) != other_lr.run_dir(results)
    assert spec.run_dir(results) == other_device.run_dir(results)  # where and how it runs is not a setting of it


def test_grid_values_equal_after_sanitising_stay_two_grid_points(tiny_arch_path, micro_cache, tmp_path, single_thread):
    specs = make_specs(
        "few-shot",
        ["micro-colors"],
        ["rlp"],
        [1],
        [1],
        backbone=str(tiny_arch_path),
        grid=parse_grid(["prompt.ctx_init=a photo of a,a_photo_of_a"]),
        base_overrides={"train": TRAIN},
    )
    assert [s.tag() for s in specs] == ["rlp__prompt.ctx_init=a photo of a", "rlp__prompt.ctx_init=a_photo_of_a"]
    dirs = [s.run_dir(tmp_path) for s in specs]
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent  # same readable folder, told apart by the hash
    run_sweep(specs, tmp_path, log=lambda m: None)
    _, markdown = aggregate(tmp_path, "few-shot", run_dirs=dirs)
    assert "ctx_init=a photo of a" in markdown and "ctx_init=a_photo_of_a" in markdown


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--grid", "prompt.rank=1,1"], "value 1 is listed more than once"),
        (["--grid", "prompt.rank=1", "--grid", "prompt.rank=2"], "already swept by another --grid"),
        (["--methods", "rlp", "rlp"], "is listed twice"),
        (["--seeds", "1", "1"], "is listed twice"),
        (["--methods", "rlp", "rlpp"], "'rlpp' is not known (did you mean 'rlp'?)"),
        (["--datasets", "micro-colors", "micro-colour"], "unknown dataset 'micro-colour'"),
        (["--grid", "prompt.rnk=1,2"], "unknown field 'rnk' (did you mean 'rank'?)"),
        (["--grid", "prompt.rank=2,0"], "prompt.rank must be >= 1, got 0"),
    ],
)
def test_every_run_is_checked_before_the_first_starts(
    arguments, message, tiny_arch_path, micro_cache, tmp_path, capsys
):
    command = one_run_sweep("few-shot", "micro-colors", tiny_arch_path, tmp_path / "res", "--epochs", "1")
    for flag in ("--datasets", "--methods", "--seeds"):  # the case's own value replaces the default one
        if flag in arguments:
            at = command.index(flag)
            del command[at : at + 2]
    assert main(command + arguments) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "res").exists()  # nothing ran


def test_failed_runs_are_listed_at_the_end_and_do_not_stop_the_others(
    tiny_arch_path, micro_cache, tmp_path, single_thread
):
    (tmp_path / "empty").mkdir()
    broken = RunSpec(
        "few-shot",
        "folder",
        "rlp",
        seed=1,
        shots=1,
        backbone=str(tiny_arch_path),
        data_root=str(tmp_path / "empty"),
        overrides={"train": TRAIN},
    )
    [good] = make_specs(
        "few-shot", ["micro-colors"], ["rlp"], [1], [1], backbone=str(tiny_arch_path), base_overrides={"train": TRAIN}
    )
    lines: list[str] = []
    with pytest.raises(RlptuneError) as failure:
        run_sweep([broken, good], tmp_path / "res", log=lines.append)
    message = str(failure.value)
    assert message.startswith("1 of 2 runs failed (listed above; details in") and "\n" not in message
    assert (good.run_dir(tmp_path / "res") / "result.json").is_file()  # the run after the failure still ran
    at = lines.index("1 failed run(s):")
    listed = lines[at + 1]
    assert listed.startswith(f"  {broken.run_dir(tmp_path / 'res')}: ") and listed.split(": ", 1)[1] in message
    assert any("done 1/2 · running 0 · failed 1" in line for line in lines)
    assert (tmp_path / "res" / "failed-runs.log").is_file()
