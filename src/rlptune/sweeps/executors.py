"""Where the runs of a sweep execute: this machine's processes, a Ray cluster, or Slurm (through submitit).

A sweep hands an executor a list of :class:`Task` (one per run; its ``key`` is the run directory) and one *work*
function. Every executor calls ``work(task.payload)`` once per task somewhere, reports each outcome to a
:class:`SweepProgress`, and never decides what a run means: skipping finished runs and resuming interrupted ones
is the run directory's job, so the rule is the same on every executor. A run that a killed worker (Ray), a
preemption (Slurm requeue) or a broken process pool (local) interrupts starts again and resumes from its checkpoint.

Executors are registered by name (``local``, ``ray``, ``slurm``); heavy optional libraries (ray, submitit) are
imported only by the executor that uses them.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from multiprocessing import connection as mp_connection
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

from .. import registry
from ..errors import RlptuneError

#: ``work(payload) -> summary``: one run; returns a short line for the progress log, raises on failure.
WorkFunction = Callable[[Any], str]


def _f(default: Any, help_text: str, flag: str | None = None, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help_text, "flag": flag}, **kw)


@dataclass
class ExecutorSettings:
    """How and where a sweep's runs execute (not part of any run's settings: results never depend on them)."""

    kind: str = _f(
        "local", "where runs execute: local (processes on this machine) | ray | slurm (submitit)", flag="executor"
    )
    jobs: int = _f(
        1, "runs at once on this machine (local) or submitted at once (slurm with --slurm-cluster local)", flag="jobs"
    )
    cpus_per_run: int = _f(
        0, "CPU cores (torch threads) per run; 0 = this machine's cores / --jobs (local), 1 (ray, slurm)"
    )
    gpus_per_run: float = _f(0.0, "GPUs per run (ray: may be a fraction such as 0.5; slurm: whole GPUs)")
    max_retries: int = _f(
        2,
        "times a run whose worker died (killed, out of memory, node lost) is started again; it resumes from its checkpoint",
    )
    progress_every_s: float = _f(60.0, "seconds between progress lines while no run finishes")
    ray_address: Optional[str] = _f(
        None, "Ray cluster to join (e.g. auto or ray://head:10001); unset = start Ray on this machine"
    )
    slurm_partition: Optional[str] = _f(None, "Slurm partition")
    slurm_time_min: int = _f(240, "Slurm time limit per run, minutes (a run that hits it is requeued and resumes)")
    slurm_mem_gb: Optional[float] = _f(None, "Slurm memory per run, GB (unset = the partition's default)")
    slurm_account: Optional[str] = _f(None, "Slurm account")
    slurm_array_parallelism: int = _f(64, "most runs of the job array running at once")
    slurm_logs: Optional[str] = _f(None, "folder for submitit's job files and logs (default: <results>/.submitit)")
    slurm_cluster: str = _f(
        "slurm", "slurm | local (submitit's local executor: the Slurm code path as local subprocesses)"
    )

    def validate(self) -> "ExecutorSettings":
        for f in fields(self):  # argparse's float() takes nan and inf; Slurm's int(inf) would be a traceback
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise RlptuneError(f"--{_flag(f)} {value}: expected a finite number")
        if self.kind not in EXECUTORS:
            raise RlptuneError(f"--executor {self.kind!r}: expected one of {', '.join(EXECUTORS)}")
        if self.jobs < 1:
            raise RlptuneError(f"--jobs must be >= 1, got {self.jobs}")
        if self.cpus_per_run < 0:
            raise RlptuneError(f"--cpus-per-run must be >= 0, got {self.cpus_per_run}")
        if self.gpus_per_run < 0:
            raise RlptuneError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.kind == "slurm" and self.gpus_per_run != int(self.gpus_per_run):
            raise RlptuneError(f"--gpus-per-run {self.gpus_per_run}: Slurm allocates whole GPUs; use an integer")
        if self.max_retries < 0:
            raise RlptuneError(f"--max-retries must be >= 0, got {self.max_retries}")
        if self.progress_every_s <= 0:
            raise RlptuneError(f"--progress-every-s must be > 0, got {self.progress_every_s}")
        if self.slurm_time_min < 1:
            raise RlptuneError(f"--slurm-time-min must be >= 1, got {self.slurm_time_min}")
        if self.slurm_array_parallelism < 1:
            raise RlptuneError(f"--slurm-array-parallelism must be >= 1, got {self.slurm_array_parallelism}")
        if self.slurm_cluster not in ("slurm", "local"):
            raise RlptuneError(f"--slurm-cluster {self.slurm_cluster!r}: expected slurm or local")
        return self


def _flag(f) -> str:
    return f.metadata.get("flag") or f.name.replace("_", "-")


def add_executor_args(parser: argparse.ArgumentParser) -> None:
    """The executor flags of ``rlptune run`` (one group; ``--jobs`` included), from :class:`ExecutorSettings`."""
    group = parser.add_argument_group("executor (where the runs execute; results never depend on it)")
    taken = set(getattr(parser, "_option_string_actions", {}))
    for f in fields(ExecutorSettings):
        if f"--{_flag(f)}" in taken:  # e.g. run's own --jobs: read back under its own name
            continue
        kwargs: dict[str, Any] = {
            "dest": f"executor__{f.name}",
            "default": f.default,
            "help": f.metadata["help"],
            "metavar": f.name.rsplit("_", 1)[-1].upper(),
        }
        if f.name == "kind":
            kwargs.update(choices=tuple(EXECUTORS), metavar=None)
        elif f.name == "slurm_cluster":
            kwargs.update(choices=("slurm", "local"), metavar=None)
        elif f.type in ("int", int):
            kwargs["type"] = int
        elif f.type in ("float", float, "Optional[float]"):
            kwargs["type"] = float
        group.add_argument(f"--{_flag(f)}", **kwargs)


def executor_settings_from_args(args: argparse.Namespace) -> ExecutorSettings:
    """The :class:`ExecutorSettings` that :func:`add_executor_args`' flags describe."""
    values: dict[str, Any] = {}
    for f in fields(ExecutorSettings):
        for dest in (f"executor__{f.name}", f.name):
            if hasattr(args, dest):
                values[f.name] = getattr(args, dest)
                break
    return ExecutorSettings(**values).validate()


# -- units of work and their outcomes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One run: ``key`` is its run directory (its identity everywhere), ``title`` names it in progress lines."""

    key: str
    title: str
    payload: Any


@dataclass
class Outcome:
    key: str
    summary: str | None = None  # set when the run finished
    error: str | None = None  # first line of the error when it failed
    detail: str = ""  # the full error text (traceback of unexpected errors)

    @property
    def ok(self) -> bool:
        return self.error is None


def run_task(work: WorkFunction, task: Task, threads: int = 0, plugins: registry.PluginSet | None = None) -> Outcome:
    """Run one task in this process and turn any exception into an :class:`Outcome` (workers of every executor
    call this, so an error crosses process boundaries as plain text, never as an unpicklable exception).
    ``plugins``: the sweep's plug-in modules, imported first so the run's method, dataset, protocol … resolve."""
    if threads > 0:
        _limit_threads(threads)
    try:
        (plugins or registry.PluginSet()).load()
        return Outcome(task.key, summary=work(task.payload))
    except RlptuneError as exc:
        return Outcome(task.key, error=_first_line(str(exc)), detail=str(exc))
    except Exception as exc:  # a bug or a library error: keep the sweep going, keep the traceback
        return Outcome(task.key, error=f"{type(exc).__name__}: {_first_line(str(exc))}", detail=traceback.format_exc())


def _limit_threads(threads: int) -> None:
    """Runs side by side must not each use every core; torch reads the variable when it is first imported."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"


# -- progress ---------------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SweepProgress:
    """Counts outcomes and prints one line per finished run (done, running, failed, ETA) plus a heartbeat."""

    def __init__(
        self, tasks: Sequence[Task], log: Callable[[str], None], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = len(tasks)
        self.titles = {t.key: t.title for t in tasks}
        self.log = log
        self.clock = clock
        self.started = clock()
        self.outcomes: list[Outcome] = []
        self.last_line = self.started

    @property
    def done(self) -> int:
        return sum(o.ok for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]

    def eta(self, running: int) -> str:
        finished = len(self.outcomes)
        remaining = self.total - finished
        if remaining == 0:
            return "0s"
        if finished == 0:
            return "?"
        return format_duration((self.clock() - self.started) / finished * remaining)

    def status(self, running: int) -> str:
        return (
            f"done {self.done}/{self.total} · running {running} · failed {len(self.failures)} · ETA {self.eta(running)}"
        )

    def record(self, outcome: Outcome, running: int) -> None:
        self.outcomes.append(outcome)
        what = outcome.summary if outcome.ok else f"FAILED: {outcome.error}"
        self.log(
            f"[{len(self.outcomes)}/{self.total}] {self.status(running)} | {self.titles.get(outcome.key, outcome.key)}: {what}"
        )
        self.last_line = self.clock()

    def heartbeat(self, running: int, every_s: float) -> None:
        if self.clock() - self.last_line >= every_s:
            self.log(
                f"[{len(self.outcomes)}/{self.total}] {self.status(running)} | elapsed {format_duration(self.clock() - self.started)}"
            )
            self.last_line = self.clock()


# -- the executor interface and registry ------------------------------------------------------------------------


class Executor:
    """Runs tasks somewhere; subclasses register with :func:`register_executor`."""

    name: ClassVar[str] = ""

    def __init__(self, settings: ExecutorSettings, results_dir: str | os.PathLike) -> None:
        self.settings = settings
        self.results_dir = Path(results_dir)
        #: the plug-in modules of this process: every worker imports them before it resolves a run's settings
        self.plugins = registry.PluginSet.current()

    def run(self, tasks: Sequence[Task], work: WorkFunction, progress: SweepProgress) -> None:
        raise NotImplementedError


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(name: str):
    def decorate(cls: type[Executor]) -> type[Executor]:
        if name in EXECUTORS:
            raise RlptuneError(f"executor {name!r} is already registered")
        cls.name = name
        EXECUTORS[name] = cls
        return cls

    return decorate


def make_executor(settings: ExecutorSettings, results_dir: str | os.PathLike) -> Executor:
    settings.validate()
    return EXECUTORS[settings.kind](settings, results_dir)


# -- local: a process pool on this machine ----------------------------------------------------------------------

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    """Worker initializer: this worker dies when the sweep's process dies (even by SIGKILL), and leaves Ctrl-C
    to the parent (a terminal sends SIGINT to the whole process group: workers must not print tracebacks)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watch() -> None:  # for systems without a parent-death signal
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="rlptune-parent-watchdog", daemon=True).start()


def _worker_main(
    conn: Any, work: WorkFunction, threads: int, parent_pid: int, plugins: registry.PluginSet | None = None
) -> None:
    """A sweep worker: runs the tasks its parent sends, one at a time, until told to stop (``None``) or orphaned."""
    _die_with_parent(parent_pid)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send(run_task(work, task, threads, plugins))


class _Worker:
    """One spawned process with a pipe of its own, so that a death is charged to the run it was running and to no
    other (a shared process pool breaks whole and cannot say which of its runs killed it)."""

    def __init__(
        self, context: Any, work: WorkFunction, threads: int, plugins: registry.PluginSet | None = None
    ) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, work, threads, os.getpid(), plugins), name="rlptune-run-worker"
        )
        self.process.start()
        child.close()
        self.task: Optional[Task] = None

    def give(self, task: Task) -> None:
        self.task = task
        self.conn.send(task)

    def result(self) -> Optional[Outcome]:
        """The finished run's outcome, or None when the process died without one."""
        try:
            return self.conn.recv() if self.conn.poll() else None
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


def _stop_workers(workers: Sequence[_Worker]) -> None:
    """Terminate the workers now (their runs keep their checkpoints)."""
    for worker in workers:
        try:
            worker.process.terminate()
        except (OSError, ValueError, AttributeError):
            pass
    deadline = time.monotonic() + 2.0
    for worker in workers:
        try:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        except (OSError, ValueError, AttributeError, AssertionError):
            pass


@register_executor("local")
class LocalExecutor(Executor):
    """``--jobs 1``: runs one after another in this process; ``--jobs N``: N spawned worker processes, each with a
    pipe of its own. A worker that dies (killed, out of memory) is replaced; only the run it was running is charged
    a retry and starts again (resuming from its checkpoint), the runs of the other workers go on untouched."""

    def threads(self) -> int:
        return self.settings.cpus_per_run or max(1, (os.cpu_count() or 1) // self.settings.jobs)

    def run(self, tasks: Sequence[Task], work: WorkFunction, progress: SweepProgress) -> None:
        if self.settings.jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                progress.record(run_task(work, task, self.settings.cpus_per_run, self.plugins), running=0)
            return
        context = multiprocessing.get_context("spawn")
        attempts = {t.key: 0 for t in tasks}
        queue = deque(tasks)
        workers: list[_Worker] = []
        try:
            while queue or workers:
                while queue and len(workers) < self.settings.jobs:
                    workers.append(_Worker(context, work, self.threads(), self.plugins))
                for worker in workers:
                    if worker.task is None and queue:
                        worker.give(queue.popleft())
                for worker in [w for w in workers if w.task is None]:  # nothing left to give it
                    worker.close()
                    workers.remove(worker)
                if not workers:
                    break
                mp_connection.wait(
                    [w.conn for w in workers] + [w.process.sentinel for w in workers],
                    timeout=min(1.0, self.settings.progress_every_s),
                )
                for worker in list(workers):
                    task = worker.task
                    outcome = worker.result()
                    if outcome is None and worker.process.is_alive():
                        continue  # still running
                    if outcome is None:  # this worker died: charge its own run, and only it
                        workers.remove(worker)
                        worker.conn.close()
                        attempts[task.key] += 1
                        if attempts[task.key] <= self.settings.max_retries:
                            queue.appendleft(task)
                            continue
                        outcome = Outcome(
                            task.key,
                            error=f"its worker process died {attempts[task.key]} times (killed or out of memory)",
                        )
                    worker.task = None
                    progress.record(outcome, sum(w.task is not None for w in workers))
                progress.heartbeat(sum(w.task is not None for w in workers), self.settings.progress_every_s)
        except BaseException:
            _stop_workers(workers)
            raise
        for worker in workers:
            worker.close()


# -- ray: one task per run ---------------------------------------------------------------------------------------


@register_executor("ray")
class RayExecutor(Executor):
    """One Ray task per run with its CPUs/GPUs; a task whose worker dies is retried (``max_retries``) and resumes."""

    def _init_ray(self):
        try:
            import ray
        except ImportError:
            raise RlptuneError("--executor ray needs the ray package: pip install 'ray[default]'") from None
        if ray.is_initialized():
            return ray, False
        try:
            ray.init(
                address=self.settings.ray_address or None,
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.settings.ray_address or "a local Ray instance"
            raise RlptuneError(f"--executor ray: cannot start or join {where} ({_first_line(str(exc))})") from None
        return ray, True

    def run(self, tasks: Sequence[Task], work: WorkFunction, progress: SweepProgress) -> None:
        ray, started_here = self._init_ray()
        cpus = self.settings.cpus_per_run or 1
        remote = ray.remote(run_task).options(
            num_cpus=cpus,
            num_gpus=self.settings.gpus_per_run,
            max_retries=self.settings.max_retries,
            retry_exceptions=False,
            name="rlptune-run",
        )
        refs: dict[Any, Task] = {}
        try:
            work_ref = ray.put(work)
            refs = {remote.remote(work_ref, task, cpus, self.plugins): task for task in tasks}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=min(1.0, self.settings.progress_every_s))
                running = self._running(ray, len(pending), cpus)
                for ref in ready:
                    task = refs[ref]
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = Outcome(
                            task.key,
                            error=f"Ray gave up after {self.settings.max_retries} retries: {_first_line(str(exc))}",
                            detail=str(exc),
                        )
                    progress.record(outcome, running)
                progress.heartbeat(running, self.settings.progress_every_s)
        except BaseException:
            for ref in refs:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished or gone
                    pass
            raise
        finally:
            if started_here:
                ray.shutdown()

    @staticmethod
    def _running(ray, pending: int, cpus: int) -> int:
        """Runs executing now, estimated from the cluster's CPUs (Ray does not report it per task cheaply)."""
        try:
            slots = int(ray.cluster_resources().get("CPU", 1) // max(cpus, 1))
        except Exception:
            slots = pending
        return min(pending, max(slots, 1))


# -- slurm: submitit job arrays ---------------------------------------------------------------------------------


class SlurmRun:
    """What one Slurm job executes: ``run_task(work, task)``. Preemption or the time limit makes submitit call
    :meth:`checkpoint`, which requeues the same call; the run then resumes from its run directory's checkpoint."""

    def __init__(self, work: WorkFunction, threads: int, plugins: registry.PluginSet | None = None) -> None:
        self.work = work
        self.threads = threads
        self.plugins = plugins

    def __call__(self, task: Task) -> Outcome:
        return run_task(self.work, task, self.threads, self.plugins)

    def checkpoint(self, task: Task):
        import submitit

        return submitit.helpers.DelayedSubmission(self, task)


@register_executor("slurm")
class SlurmExecutor(Executor):
    """Runs as a Slurm job array through submitit (``--slurm-cluster local``: submitit's local subprocesses)."""

    def _executor(self):
        try:
            import submitit
        except ImportError:
            raise RlptuneError("--executor slurm needs the submitit package: pip install submitit") from None
        s = self.settings
        folder = Path(s.slurm_logs) if s.slurm_logs else self.results_dir / ".submitit"
        try:
            executor = submitit.AutoExecutor(
                folder=folder / "%j",
                cluster=s.slurm_cluster,
                **{f"{s.slurm_cluster}_max_num_timeout": s.max_retries + 1},
            )
        except Exception as exc:  # no sbatch on this machine, unwritable folder ...
            raise RlptuneError(
                f"--executor slurm: cannot use the {s.slurm_cluster} cluster ({_first_line(str(exc))})"
            ) from None
        parameters: dict[str, Any] = {
            "name": "rlptune",
            "timeout_min": s.slurm_time_min,
            "cpus_per_task": s.cpus_per_run or 1,
            "gpus_per_node": int(s.gpus_per_run),
            "nodes": 1,
            "tasks_per_node": 1,
            "slurm_array_parallelism": s.slurm_array_parallelism,
        }
        if s.slurm_mem_gb is not None:
            parameters["mem_gb"] = s.slurm_mem_gb
        if s.slurm_partition:
            parameters["slurm_partition"] = s.slurm_partition
        if s.slurm_account:
            parameters["slurm_account"] = s.slurm_account
        executor.update_parameters(**parameters)
        return executor

    def run(self, tasks: Sequence[Task], work: WorkFunction, progress: SweepProgress) -> None:
        executor = self._executor()
        job_function = SlurmRun(work, self.settings.cpus_per_run or 1, self.plugins)
        # submitit's local executor starts every submitted job at once: hand it --jobs at a time
        window = len(tasks) if self.settings.slurm_cluster == "slurm" else self.settings.jobs
        waiting = list(tasks)
        jobs: dict[Any, Task] = {}
        poll_s = 1.0 if self.settings.slurm_cluster == "local" else 15.0
        try:
            while waiting or jobs:
                if waiting and len(jobs) < window:
                    batch, waiting = waiting[: window - len(jobs)], waiting[window - len(jobs) :]
                    jobs.update(self._submit(executor, job_function, batch))
                finished = [job for job in jobs if job.done()]
                running = sum(1 for job in jobs if job not in finished and job.state == "RUNNING")
                for job in finished:
                    progress.record(self._outcome(job, jobs.pop(job)), running)
                progress.heartbeat(running, self.settings.progress_every_s)
                if not finished:
                    time.sleep(poll_s)
        except BaseException:
            for job in jobs:
                try:
                    job.cancel(check=False)
                except Exception:
                    pass
            raise

    @staticmethod
    def _submit(executor, job_function: SlurmRun, batch: Sequence[Task]) -> dict[Any, Task]:
        try:
            with executor.batch():  # one job array
                submitted = [executor.submit(job_function, task) for task in batch]
        except Exception as exc:
            raise RlptuneError(f"--executor slurm: submission failed ({_first_line(str(exc))})") from None
        return dict(zip(submitted, batch))

    @staticmethod
    def _outcome(job, task: Task) -> Outcome:
        try:
            return job.result()
        except Exception as exc:  # the job died: cancelled, out of memory, requeued too often ...
            text = str(exc)
            return Outcome(task.key, error=f"Slurm job {job.job_id} failed: {_first_line(text)}", detail=text)


__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorSettings",
    "Outcome",
    "SlurmRun",
    "SweepProgress",
    "Task",
    "add_executor_args",
    "executor_settings_from_args",
    "make_executor",
    "register_executor",
    "run_task",
]
