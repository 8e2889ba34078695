"""The sweep executors' shared parts (progress, errors as lines, flags) and the local pool's process hygiene:
a dead worker's run is retried, Ctrl-C stops a parallel sweep at once with one line, and workers die with the
sweep's process even when it is SIGKILLed."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlptune.errors import RlptuneError
from rlptune.sweeps.executors import (
    ExecutorSettings,
    LocalExecutor,
    SweepProgress,
    Task,
    add_executor_args,
    executor_settings_from_args,
    format_duration,
    run_task,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_progress_lines_count_done_running_failed_and_eta():
    from rlptune.sweeps.executors import Outcome

    tasks = [Task(f"run{i}", f"title {i}", i) for i in range(4)]
    lines: list[str] = []
    clock = FakeClock()
    progress = SweepProgress(tasks, lines.append, clock=clock)
    clock.now += 30
    progress.record(Outcome("run0", summary="test 50.0"), running=2)
    clock.now += 30
    progress.record(Outcome("run1", error="boom"), running=1)
    assert lines[0] == "[1/4] done 1/4 · running 2 · failed 0 · ETA 1m30s | title 0: test 50.0"
    assert lines[1] == "[2/4] done 1/4 · running 1 · failed 1 · ETA 1m00s | title 1: FAILED: boom"
    progress.heartbeat(running=2, every_s=60)
    assert len(lines) == 2  # no heartbeat right after a line
    clock.now += 61
    progress.heartbeat(running=2, every_s=60)
    assert lines[2].startswith("[2/4] done 1/4 · running 2 · failed 1 · ETA") and "elapsed 2m01s" in lines[2]
    assert [o.key for o in progress.failures] == ["run1"]
    assert format_duration(7322) == "2h02m" and format_duration(5) == "5s"


def _raise_rlptune(payload):
    raise RlptuneError("data.root 'x': no such folder")


def _raise_bug(payload):
    raise ValueError("\n  shape mismatch (3, 4)\n  while stacking")


def test_run_task_turns_errors_into_their_first_line():
    failed = run_task(_raise_rlptune, Task("k", "t", None))
    assert not failed.ok and failed.error == "data.root 'x': no such folder"
    bug = run_task(_raise_bug, Task("k", "t", None))
    assert (
        bug.error == "ValueError: shape mismatch (3, 4)" and "Traceback" in bug.detail
    )  # kept for the failed-runs log
    assert run_task(lambda p: f"ok {p}", Task("k", "t", 3)).summary == "ok 3"


def crash_once(payload):
    """Work for the pool test: the first attempt of each task kills its worker process outright."""
    marker = Path(payload["dir"]) / f"attempted-{payload['i']}"
    if not marker.exists():
        marker.write_text("1")
        os._exit(1)
    return f"done {payload['i']} in {os.getpid()}"


def test_local_pool_restarts_runs_whose_worker_died(tmp_path):
    tasks = [Task(f"k{i}", f"t{i}", {"dir": str(tmp_path), "i": i}) for i in range(2)]
    progress = SweepProgress(tasks, lambda m: None)
    LocalExecutor(ExecutorSettings(jobs=2, max_retries=1, cpus_per_run=1), tmp_path).run(tasks, crash_once, progress)
    assert sorted(o.key for o in progress.outcomes) == ["k0", "k1"] and all(o.ok for o in progress.outcomes)

    (tmp_path / "again").mkdir()
    tasks = [Task(f"j{i}", f"t{i}", {"dir": str(tmp_path / "again"), "i": i}) for i in range(2)]
    progress = SweepProgress(tasks, lambda m: None)
    LocalExecutor(ExecutorSettings(jobs=2, max_retries=0, cpus_per_run=1), tmp_path).run(tasks, crash_once, progress)
    assert len(progress.failures) == 2 and "worker process died" in progress.failures[0].error


def crash_always_or_wait(payload):
    """Work for the collateral test: 'crasher' kills its worker every time, once 'healthy' is running; 'healthy'
    counts its starts and runs until the crasher has died max_retries + 1 times."""
    folder = Path(payload["dir"])
    if payload["role"] == "crasher":
        deadline = time.monotonic() + 30
        while not (folder / "healthy-started-1").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        deaths = len(list(folder.glob("crasher-died-*")))
        (folder / f"crasher-died-{deaths}").write_text("")
        os._exit(1)
    starts = len(list(folder.glob("healthy-started-*"))) + 1
    (folder / f"healthy-started-{starts}").write_text("")
    deadline = time.monotonic() + 30
    while len(list(folder.glob("crasher-died-*"))) < payload["deaths"] and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # past the parent's notice of the last death
    return f"healthy after {starts} start(s)"


def test_a_dead_worker_charges_only_its_own_run(tmp_path):
    """A worker that dies (here three times) is charged to its own run only: a healthy run beside it is never
    killed, restarted or charged, and finishes; the crashing run fails after max_retries + 1 deaths."""
    max_retries = 2
    tasks = [
        Task("crasher", "c", {"dir": str(tmp_path), "role": "crasher"}),
        Task("healthy", "h", {"dir": str(tmp_path), "role": "healthy", "deaths": max_retries + 1}),
    ]
    progress = SweepProgress(tasks, lambda m: None)
    LocalExecutor(ExecutorSettings(jobs=2, max_retries=max_retries, cpus_per_run=1), tmp_path).run(
        tasks, crash_always_or_wait, progress
    )
    outcomes = {o.key: o for o in progress.outcomes}
    assert outcomes["healthy"].ok and outcomes["healthy"].summary == "healthy after 1 start(s)"
    assert sorted(p.name for p in tmp_path.glob("healthy-started-*")) == ["healthy-started-1"]
    assert not outcomes["crasher"].ok and "died 3 times" in outcomes["crasher"].error
    assert len(list(tmp_path.glob("crasher-died-*"))) == max_retries + 1


def test_executor_flags_round_trip_and_are_checked():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1)  # `rlptune run` has its own --jobs
    add_executor_args(parser)
    args = parser.parse_args(
        [
            "--executor",
            "ray",
            "--ray-address",
            "auto",
            "--gpus-per-run",
            "0.5",
            "--jobs",
            "3",
            "--cpus-per-run",
            "2",
            "--slurm-partition",
            "gpu",
        ]
    )
    settings = executor_settings_from_args(args)
    assert (
        settings.kind,
        settings.ray_address,
        settings.gpus_per_run,
        settings.jobs,
        settings.cpus_per_run,
        settings.slurm_partition,
    ) == ("ray", "auto", 0.5, 3, 2, "gpu")
    assert executor_settings_from_args(parser.parse_args([])) == ExecutorSettings()
    with pytest.raises(RlptuneError, match="whole GPUs"):
        executor_settings_from_args(parser.parse_args(["--executor", "slurm", "--gpus-per-run", "0.5"]))
    with pytest.raises(RlptuneError, match="--jobs must be >= 1"):
        executor_settings_from_args(parser.parse_args(["--jobs", "0"]))


# -- interrupts of a real parallel sweep (the CLI in a subprocess) ------------------------------------------------


def _children(pid: int, marker: str = "spawn_main") -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and marker in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One micro-dataset and feature cache for both interrupt tests (the second one starts training sooner)."""
    return tmp_path_factory.mktemp("interrupt-cache")


def _start_parallel_sweep(tmp_path: Path, tiny_arch_path: Path, cache: Path) -> tuple[subprocess.Popen, list[int]]:
    """`rlptune run --jobs 2` with runs long enough to be interrupted; returns once both workers train."""
    env = dict(os.environ, RLPTUNE_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    command = [
        sys.executable,
        "-m",
        "rlptune",
        "run",
        "few-shot",
        "--datasets",
        "micro-colors",
        "--methods",
        "rlp",
        "--seeds",
        "1",
        "2",
        "--shots",
        "1",
        "--backbone",
        str(tiny_arch_path),
        "--epochs",
        "3000",
        "--aug-views",
        "0",
        "--jobs",
        "2",
        "--results",
        str(tmp_path / "res"),
    ]
    process = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # a terminal's foreground process: Ctrl-C not ignored, even when pytest itself was started in the background
        # of a non-interactive shell (which ignores SIGINT there, and children inherit the ignoring)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        workers = _children(process.pid)
        # both runs have logged an epoch: both workers are training, not starting up
        if len(workers) == 2 and len(list((tmp_path / "res").rglob("metrics.jsonl"))) >= 2:
            return process, workers
        time.sleep(0.2)
    process.kill()
    raise AssertionError("the sweep's workers did not start training within 120 s")


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_stops_a_parallel_sweep_within_5s_with_one_line(tmp_path, tiny_arch_path, shared_cache):
    process, workers = _start_parallel_sweep(tmp_path, tiny_arch_path, shared_cache)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    sent = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=15)
    finally:
        process.kill()
    took = time.monotonic() - sent
    assert took < 5.0, f"exit took {took:.1f}s"
    assert process.returncode == 130
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == "rlptune: interrupted" and lines.count("rlptune: interrupted") == 1, stderr
    assert _wait_gone(workers, 2.0) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses the parent-death signal")
def test_sigkill_of_the_sweep_takes_its_workers_with_it(tmp_path, tiny_arch_path, shared_cache):
    process, workers = _start_parallel_sweep(tmp_path, tiny_arch_path, shared_cache)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate(timeout=15)
    assert _wait_gone(workers, 5.0) == [], "workers outlived their SIGKILLed parent"
