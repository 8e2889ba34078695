"""Run directories as transactions (rlptune.rundir): a failed or interrupted run never changes a finished one,
two writers never share a folder, reuse needs --resume (same settings) or --overwrite."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlptune.errors import RlptuneError
from rlptune.rundir import CHECKPOINT, MARKER, RunDirectory, is_run_directory, read_result, recorded_hash, settings_hash

H1, H2 = "a" * 16, "b" * 16


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path -> sha256 of its bytes)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def finish_run(target: Path, h: str = H1, epochs: int = 2, tag: str = "first", **flags) -> None:
    flags.setdefault("resume", False)
    flags.setdefault("overwrite", False)
    with RunDirectory(target, h, **flags) as run:
        write_run(run.staging, epochs, tag)
        run.commit()


def write_run(folder: Path, epochs: int, tag: str) -> None:
    (folder / "checkpoint").mkdir(exist_ok=True)
    (folder / CHECKPOINT).write_text(f"{tag} after epoch {epochs}")
    with open(folder / "metrics.jsonl", "a") as handle:
        for epoch in range(epochs):
            handle.write(f'{{"epoch": {epoch}, "tag": "{tag}"}}\n')
    (folder / "few_shot.json").write_text("{}")
    (folder / "adapter").mkdir(exist_ok=True)
    (folder / "adapter" / "rlptune_adapter.safetensors").write_text(tag)
    (folder / "result.json").write_text(f'{{"tag": "{tag}"}}')


def siblings(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name and not p.name.endswith(".lock"))


def test_settings_hash_ignores_only_execution_settings():
    cfg = {
        "backbone": {"name": "micro", "device": "cpu"},
        "train": {"lr": 0.002, "num_workers": 0, "cache_dir": None},
        "eval": {"batch_size": 128},
    }
    same = {
        "backbone": {"name": "micro", "device": "cuda:1"},
        "train": {"lr": 0.002, "num_workers": 8, "cache_dir": "/x"},
        "eval": {"batch_size": 7},
    }
    other = {**cfg, "train": {**cfg["train"], "lr": 0.003}}
    assert settings_hash(cfg) == settings_hash(same)
    assert settings_hash(cfg) != settings_hash(other)
    assert len(settings_hash(cfg)) == 16 and int(settings_hash(cfg), 16) >= 0


def test_settings_hash_of_real_configs_sees_every_result_setting():
    from rlptune.config import resolve_config

    base = settings_hash(resolve_config(overrides={"method": {"name": "rlp"}}).to_dict())
    for section, name, value in [
        ("train", "epochs", 3),
        ("train", "lr", 0.01),
        ("prompt", "rank", 2),
        ("data", "shots", 4),
        ("train", "seed", 5),
        ("method", "name", "coop"),
    ]:
        changed = resolve_config(overrides={"method": {"name": "rlp"}, section: {name: value}}).to_dict()
        assert settings_hash(changed) != base, (section, name)


def test_fresh_run_commits_and_marks_the_folder(tmp_path):
    target = tmp_path / "run"
    finish_run(target)
    assert (target / "result.json").read_text() == '{"tag": "first"}'
    assert is_run_directory(target) and recorded_hash(target) == H1
    assert siblings(target) == []  # no staging or old folder left behind


def test_failed_rerun_leaves_a_finished_run_byte_identical(tmp_path):
    target = tmp_path / "run"
    finish_run(target)
    before = snapshot(target)
    for flags in ({"overwrite": True}, {"resume": True}):
        with pytest.raises(ValueError):
            with RunDirectory(
                target, H1, resume=flags.get("resume", False), overwrite=flags.get("overwrite", False)
            ) as run:
                (run.staging / "result.json").unlink(missing_ok=True)
                (run.staging / "config.yaml").write_text("for the failed data")
                raise ValueError("a bad image")
        assert snapshot(target) == before


def test_plain_rerun_into_a_finished_run_is_refused(tmp_path):
    target = tmp_path / "run"
    finish_run(target)
    before = snapshot(target)
    with pytest.raises(RlptuneError, match="holds a finished run .*--overwrite"):
        RunDirectory(target, H1, resume=False, overwrite=False).__enter__()
    assert snapshot(target) == before
    assert siblings(target) == []


def test_foreign_folder_is_never_replaced_even_with_overwrite(tmp_path):
    """--overwrite replaces an rlptune run and nothing else (tests/test_reliability_output_paths.py has the rest)."""
    target = tmp_path / "mine"
    target.mkdir()
    (target / "result.json").write_text("my own numbers")
    (target / "metrics.jsonl").write_text("my own metrics")
    before = snapshot(target)
    for resume, overwrite in ((False, False), (True, False), (False, True), (True, True)):
        with pytest.raises(RlptuneError, match="not an rlptune run .*--overwrite replaces only rlptune run folders"):
            RunDirectory(target, H1, resume=resume, overwrite=overwrite).__enter__()
        assert snapshot(target) == before
    assert siblings(target) == []  # refused before the lock file or a staging folder was made


def test_empty_or_missing_folder_starts_fresh(tmp_path):
    (tmp_path / "empty").mkdir()
    finish_run(tmp_path / "empty")
    finish_run(tmp_path / "deep" / "missing")
    assert recorded_hash(tmp_path / "deep" / "missing") == H1


def test_resume_with_other_settings_is_refused(tmp_path):
    target = tmp_path / "run"
    finish_run(target, H1)
    with pytest.raises(RlptuneError, match=f"other settings \\(settings hash {H1}, this run {H2}\\)"):
        RunDirectory(target, H2, resume=True, overwrite=False).__enter__()


def test_resume_of_a_finished_run_starts_from_its_checkpoint_and_metrics(tmp_path):
    target = tmp_path / "run"
    finish_run(target, epochs=2)
    with RunDirectory(target, H1, resume=True, overwrite=False) as run:
        assert (run.staging / CHECKPOINT).read_text() == "first after epoch 2"
        assert len((run.staging / "metrics.jsonl").read_text().splitlines()) == 2
        assert (run.staging / "few_shot.json").is_file()
        assert not (run.staging / "result.json").exists()  # not finished until it finishes again
        assert run.resumed_from == target


def test_killed_run_resumes_from_its_staging_folder(tmp_path):
    """A run that died mid-way (no commit) keeps its staging folder; --resume continues from its checkpoint,
    a plain rerun is told to resume or overwrite, and the finished run it was replacing stays untouched."""
    target = tmp_path / "run"
    finish_run(target, epochs=1, tag="old")
    before = snapshot(target)
    with pytest.raises(SystemExit):
        with RunDirectory(target, H1, resume=True, overwrite=False) as run:
            write_run(run.staging, 3, "interrupted")
            (run.staging / "result.json").unlink()
            raise SystemExit(137)
    assert snapshot(target) == before
    kept = [n for n in siblings(target) if ".staging-" in n]
    assert len(kept) == 1
    with pytest.raises(RlptuneError, match="interrupted run .* use --resume"):
        RunDirectory(target, H1, resume=False, overwrite=False).__enter__()
    with RunDirectory(target, H1, resume=True, overwrite=False) as run:
        assert (run.staging / CHECKPOINT).read_text() == "interrupted after epoch 3"
        (run.staging / "result.json").write_text('{"tag": "resumed"}')
        run.commit()
    assert (target / "result.json").read_text() == '{"tag": "resumed"}'
    assert siblings(target) == []


def test_failure_before_any_checkpoint_leaves_nothing_behind(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RlptuneError):
        with RunDirectory(target, H1, resume=False, overwrite=False) as run:
            (run.staging / "config.yaml").write_text("x")
            raise RlptuneError("bad image")
    assert not target.exists() and siblings(target) == []
    finish_run(target)  # and the next run is not refused


def test_overwrite_discards_interrupted_attempts(tmp_path):
    target = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with RunDirectory(target, H2, resume=False, overwrite=False) as run:
            write_run(run.staging, 1, "other")
            raise RuntimeError
    finish_run(target, H1, overwrite=True, tag="new")
    assert siblings(target) == [] and recorded_hash(target) == H1


def test_commit_interrupted_between_renames_is_recovered(tmp_path):
    target = tmp_path / "run"
    finish_run(target, tag="old")
    before = snapshot(target)
    os.rename(target, tmp_path / ".run.old-999999")  # the state a kill between the two renames leaves
    with RunDirectory(target, H1, resume=True, overwrite=False) as run:
        assert (run.staging / CHECKPOINT).read_text() == "old after epoch 2"
    assert snapshot(target) == before


def test_output_path_that_is_a_file_or_under_proc_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(RlptuneError, match="output path is a file"):
        RunDirectory(afile, H1, resume=False, overwrite=True).__enter__()
    with pytest.raises(RlptuneError, match="which is a file"):
        RunDirectory(afile / "run", H1, resume=False, overwrite=False).__enter__()
    with pytest.raises(RlptuneError, match="kernel file system"):
        RunDirectory("/proc/self/rlptune-run", H1, resume=False, overwrite=False).__enter__()
    assert afile.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_parent_is_one_line(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o555)
    try:
        with pytest.raises(
            RlptuneError, match="ro/.run.rlptune.lock: cannot create the run's lock file \\(permission denied\\)"
        ):
            RunDirectory(parent / "run", H1, resume=False, overwrite=False).__enter__()
    finally:
        os.chmod(parent, 0o755)


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    target = tmp_path / "run"
    with RunDirectory(target, H1, resume=False, overwrite=False):
        with pytest.raises(RlptuneError, match=f"in use by another rlptune process \\(pid {os.getpid()}\\)"):
            RunDirectory(target, H1, resume=False, overwrite=True).__enter__()
    finish_run(target)  # the lock is released on exit


# -- two processes racing for one run directory ------------------------------------------------------------------


def _writer(target: str, tag: str, hold: float, start_at: float, queue) -> None:
    while time.time() < start_at:
        time.sleep(0.001)
    try:
        with RunDirectory(target, H1, resume=False, overwrite=True) as run:
            for epoch in range(3):
                with open(run.staging / "metrics.jsonl", "a") as handle:
                    handle.write(f"{tag} {epoch}\n")
                time.sleep(hold / 3)
            (run.staging / "result.json").write_text(tag)
            run.commit()
        queue.put((tag, "ok"))
    except RlptuneError as exc:
        queue.put((tag, str(exc)))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hold=st.floats(0.0, 0.05), delay=st.floats(0.0, 0.03), finished_before=st.booleans())
def test_two_processes_never_interleave_one_run_directory(tmp_path, hold, delay, finished_before):
    """Two writers start together: each either gets the whole folder or a one-line refusal naming a pid; the
    result always comes from one writer alone (never interleaved metrics), and nothing is left beside it."""
    target = tmp_path / f"race-{time.monotonic_ns()}" / "run"
    if finished_before:
        finish_run(target, tag="earlier")
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.2
    procs = [
        ctx.Process(target=_writer, args=(str(target), tag, hold, start_at + d, queue))
        for tag, d in (("A", 0.0), ("B", delay))
    ]
    for p in procs:
        p.start()
    outcomes = dict(queue.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    winners = [tag for tag, outcome in outcomes.items() if outcome == "ok"]
    assert winners, outcomes
    for tag, outcome in outcomes.items():
        if outcome != "ok":
            assert "in use by another rlptune process (pid " in outcome and "\n" not in outcome
    result = (target / "result.json").read_text()
    assert result in winners
    assert (target / "metrics.jsonl").read_text() == "".join(f"{result} {e}\n" for e in range(3))
    assert siblings(target) == []
    assert (target / MARKER).is_file()


@pytest.mark.parametrize(
    "content, reason",
    [
        (b'{"metrics": {"top1": 9', "not valid JSON at line 1, column 23"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"\xff\xfe{}", "not UTF-8 text at byte 0"),
        (b"[" * 100_000, "JSON nested too deeply"),
    ],
)
def test_corrupt_result_file_is_one_line(tmp_path, content, reason):
    (tmp_path / "result.json").write_bytes(content)
    with pytest.raises(RlptuneError, match=r"result.json: corrupt result file \(" + reason.replace("(", r"\(")):
        read_result(tmp_path)
    with pytest.raises(RlptuneError, match="no result file"):
        read_result(tmp_path / "other")
    (tmp_path / "result.json").write_text('{"metrics": {}}')
    assert read_result(tmp_path / "result.json") == {"metrics": {}}
