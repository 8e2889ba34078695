"""The same sweep on every executor gives the same table: a 4-run grid through the local executor, a local Ray
instance (2 CPUs) and submitit's local executor (real subprocesses through the Slurm code path); a Ray worker
killed mid-run is retried and its run resumes from its checkpoint to the adapter of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlptune.protocols import aggregate
from rlptune.sweeps.runner import make_specs, parse_grid, run_sweep
from rlptune.sweeps.executors import ExecutorSettings, RayExecutor, SlurmRun, SweepProgress, Task
from rlptune.sweeps.runner import execute_spec

TRAIN = {"epochs": 2, "aug_views": 0, "batch_size": 16}


@pytest.fixture(scope="module")
def engine_env(tmp_path_factory):
    """One micro-data and feature cache for every process of this module (Ray workers inherit it at start)."""
    cache = tmp_path_factory.mktemp("engines-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RLPTUNE_CACHE", str(cache))
        yield cache


def grid_specs(arch: Path, cache: Path, **train):
    return make_specs(
        "few-shot",
        ["micro-colors"],
        ["rlp"],
        [1, 2],
        [1],
        backbone=str(arch),
        grid=parse_grid(["prompt.rank=1,2"]),
        base_overrides={"train": {**TRAIN, "cache_dir": str(cache / "features"), **train}},
    )


def sweep_table(specs, results: Path, **kwargs) -> tuple[str, list[dict]]:
    rows = run_sweep(specs, results, log=lambda m: None, **kwargs)
    _, markdown = aggregate(results, "few-shot", run_dirs=[s.run_dir(results) for s in specs])
    return markdown, [r["metrics"] for r in rows]


def in_process(function, *args, **kwargs):
    """One torch thread, like every executor's workers here (results are thread-count dependent in the last bit)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(*args, **kwargs)
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def local_table(engine_env, tiny_arch_path, tmp_path_factory):
    specs = grid_specs(tiny_arch_path, engine_env)
    markdown, metrics = in_process(sweep_table, specs, tmp_path_factory.mktemp("local") / "res")
    assert markdown.count("micro-colors") == 2 and "prompt.rank=1" in markdown and "prompt.rank=2" in markdown
    return markdown, metrics


@pytest.fixture(scope="module")
def ray_instance(engine_env):
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR", object_store_memory=100 * 2**20
    )
    yield ray
    ray.shutdown()


def test_ray_grid_gives_the_local_table(ray_instance, local_table, engine_env, tiny_arch_path, tmp_path):
    specs = grid_specs(tiny_arch_path, engine_env)
    markdown, metrics = sweep_table(specs, tmp_path / "res", executor=ExecutorSettings(kind="ray", cpus_per_run=1))
    assert (markdown, metrics) == local_table


def test_submitit_local_grid_gives_the_local_table(local_table, engine_env, tiny_arch_path, tmp_path):
    pytest.importorskip("submitit")
    specs = grid_specs(tiny_arch_path, engine_env)
    settings = ExecutorSettings(
        kind="slurm",
        slurm_cluster="local",
        jobs=2,
        cpus_per_run=1,
        slurm_time_min=10,
        slurm_logs=str(tmp_path / "submitit"),
    )
    markdown, metrics = sweep_table(specs, tmp_path / "res", executor=settings)
    assert (markdown, metrics) == local_table
    assert len(list((tmp_path / "submitit").rglob("*_result.pkl"))) == 4  # four real jobs went through submitit


def kill_once_after_a_checkpoint(payload) -> str:
    """Ray work for the kill test: the first attempt SIGKILLs its own worker as soon as the run has written a
    checkpoint; every attempt records how many checkpoints it found when it started."""
    results = Path(payload["results_dir"])
    log = results / "attempts.txt"
    first = not log.exists()
    found = len(list(results.rglob("last.safetensors")))
    with log.open("a") as handle:
        handle.write(f"{os.getpid()} {found}\n")
    if first:

        def kill_when_checkpointed() -> None:
            while not any(results.rglob("last.safetensors")):
                time.sleep(0.002)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=kill_when_checkpointed, daemon=True).start()
    return execute_spec(payload)


def test_ray_worker_killed_mid_run_is_retried_and_resumes_to_the_same_adapter(
    ray_instance, engine_env, tiny_arch_path, tmp_path
):
    ray_instance.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's work travels by value
    spec = grid_specs(tiny_arch_path, engine_env, epochs=8)[1]
    reference = tmp_path / "uninterrupted"
    in_process(run_sweep, [spec], reference, log=lambda m: None)

    results = tmp_path / "killed"
    results.mkdir()
    task = Task(str(spec.run_dir(results)), "killed run", {"spec": spec.__dict__, "results_dir": str(results)})
    progress = SweepProgress([task], lambda m: None)
    RayExecutor(ExecutorSettings(kind="ray", cpus_per_run=1, max_retries=2), results).run(
        [task], kill_once_after_a_checkpoint, progress
    )

    attempts = [line.split() for line in (results / "attempts.txt").read_text().splitlines()]
    assert len(attempts) == 2 and attempts[0][0] != attempts[1][0], attempts  # a second worker process
    assert int(attempts[0][1]) == 0 and int(attempts[1][1]) >= 1, attempts  # the retry found a checkpoint
    assert progress.outcomes and progress.outcomes[0].ok, progress.outcomes
    epochs = [line for line in (spec.run_dir(results) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert len(epochs) == 8  # each epoch once: resumed, not restarted on top of the old lines
    mine = load_file(spec.run_dir(results) / "adapter" / "rlptune_adapter.safetensors")
    theirs = load_file(spec.run_dir(reference) / "adapter" / "rlptune_adapter.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_slurm_jobs_requeue_themselves_with_the_same_run():
    """On preemption or the time limit submitit calls ``checkpoint``: it must resubmit the same run (which then
    resumes from its run directory's checkpoint)."""
    pytest.importorskip("submitit")
    job = SlurmRun(execute_spec, threads=2)
    task = Task("/results/run", "a run", {"spec": {}, "results_dir": "/results"})
    again = job.checkpoint(task)
    assert again.function is job and again.args == (task,) and job.threads == 2
