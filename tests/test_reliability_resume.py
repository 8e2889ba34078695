"""Crash safety and reproducibility, end to end through the command line.

- A training process killed with SIGKILL after its first checkpoint resumes (``--resume``) to the same adapter,
  byte for byte, as an uninterrupted run (CPU).
- Two runs with the same seed write identical results; the run folder records the resolved settings, library
  versions and the backbone identity.
- A non-finite loss stops training with a one-line message that says where; the last checkpoint is kept and no
  adapter or result.json is written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder
from rlptune.cli import main
from rlptune.config import config_from_dict


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(
        tmp_path_factory.mktemp("resume-data"), ["red", "green", "blue", "yellow"], {"train": 4, "val": 1, "test": 2}
    )


def train_args(arch, data, epochs, *extra) -> list[str]:
    """RLP with dropout (random masks every epoch) and AdamW (optimizer state that must survive the restart)."""
    args = [
        "train",
        "--backbone",
        arch,
        "--device",
        "cpu",
        "--dataset",
        "folder",
        "--data-root",
        data,
        "--method",
        "rlp",
        "--dropout",
        0.3,
        "--optimizer",
        "adamw",
        "--lr",
        0.01,
        "--shots",
        2,
        "--epochs",
        epochs,
        "--aug-views",
        2,
        "--checkpoint-every",
        1,
        "--no-progress",
        *extra,
    ]
    return [str(a) for a in args]


def checkpoint_epoch(path: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return json.loads(handle.metadata()["rlptune_checkpoint"])["epoch"]


def epochs_logged(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def stray_files(run: Path) -> list[str]:
    """Temporary files an interrupted atomic write would leave (none must be mistaken for results)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*.tmp"))


def test_sigkill_then_resume_gives_the_uninterrupted_adapter_bitwise(tiny_arch_path, data, tmp_path, cache_dir, capsys):
    epochs = 6
    killed, full = tmp_path / "killed", tmp_path / "full"
    args = train_args(tiny_arch_path, data, epochs)
    # same thread count as this process, so float reductions are ordered the same in both
    env = {**os.environ, "RLPTUNE_CACHE": str(cache_dir), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    stderr = tmp_path / "killed.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rlptune.cli", *args, "-o", str(killed)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    # the run writes into a staging folder beside its target and moves it in only when it has finished
    staged = lambda: next(iter(tmp_path.glob(".killed.staging-*/checkpoint/last.safetensors")), None)  # noqa: E731
    deadline = time.monotonic() + 300
    try:
        while staged() is None:
            if proc.poll() is not None:
                pytest.fail(
                    f"training exited ({proc.returncode}) before its first checkpoint: {stderr.read_text()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 300 s")
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = checkpoint_epoch(staged())
    assert 1 <= done < epochs, "the process finished before it could be killed"
    assert not killed.exists()  # nothing half-done where the results go

    checkpoint = killed / "checkpoint" / "last.safetensors"

    assert main(args + ["-o", str(killed), "--resume"]) == 0
    assert f"resuming after epoch {done}" in capsys.readouterr().err
    assert main(args + ["-o", str(full)]) == 0

    resumed = (killed / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    assert resumed == (full / "adapter" / "rlptune_adapter.safetensors").read_bytes()
    assert epochs_logged(killed) == list(range(1, epochs + 1))
    assert checkpoint_epoch(checkpoint) == epochs
    a, b = (json.loads((run / "result.json").read_text()) for run in (killed, full))
    assert a["metrics"] == b["metrics"] and a["prompt_diagnostics"] == b["prompt_diagnostics"]


def test_same_seed_same_results_and_the_run_folder_records_everything(tiny_arch_path, data, tmp_path, cache_dir):
    args = train_args(tiny_arch_path, data, 3)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(args + ["-o", str(run)]) == 0
    results = [json.loads((run / "result.json").read_text()) for run in runs]
    for result in results:
        result.pop("train_seconds")
    assert results[0] == results[1]
    assert (runs[0] / "metrics.jsonl").read_text() == (runs[1] / "metrics.jsonl").read_text()
    for name in ("adapter/rlptune_adapter.safetensors", "adapter/rlptune_adapter.json", "config.yaml", "few_shot.json"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name

    run = runs[0]
    # the fully resolved settings: re-reading config.yaml gives every field, including the preset's and defaults
    recorded = config_from_dict(yaml.safe_load((run / "config.yaml").read_text()), "config.yaml")
    assert (
        recorded.method.name == "rlp"
        and recorded.prompt.kind == "lowrank"
        and recorded.prompt.options["dropout"] == 0.3
    )
    assert recorded.train.optimizer == "adamw" and recorded.train.seed == 1 and recorded.data.root == str(data)
    info = json.loads((run / "run_info.json").read_text())
    import open_clip
    import rlptune

    assert info["versions"]["rlptune"] == rlptune.__version__
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["open_clip"] == open_clip.__version__
    assert {"python", "torchvision"} <= set(info["versions"])
    adapter = json.loads((run / "adapter" / "rlptune_adapter.json").read_text())
    assert info["backbone"] == adapter["backbone"]["identity"] == results[0]["backbone"]
    assert info["backbone"].startswith("tiny-clip@sha256:")
    assert info["classes"] == ["blue", "green", "red", "yellow"]


def test_non_finite_loss_stops_naming_where_and_keeps_the_last_checkpoint(
    tiny_arch_path, data, tmp_path, cache_dir, capsys, monkeypatch
):
    """The finished run already in the folder stays byte-identical; the failed attempt is kept beside it (staging)
    with its last good checkpoint, and --resume continues from there."""
    import dataclasses

    from rlptune.methods.base import Method

    run = tmp_path / "run"
    args = train_args(tiny_arch_path, data, 5)  # 8 images, one step per epoch: step 3 is epoch 3
    assert main(args + ["-o", str(run)]) == 0  # a finished earlier run with the same settings
    before = {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}

    real_step = Method.training_step
    calls = {"n": 0}

    def nan_at_third_step(self, batch):
        calls["n"] += 1
        out = real_step(self, batch)
        return dataclasses.replace(out, loss=out.loss * float("nan")) if calls["n"] == 3 else out

    monkeypatch.setattr(Method, "training_step", nan_at_third_step)
    capsys.readouterr()
    code = main(args + ["-o", str(run), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
    assert "non-finite loss at epoch 3, step 1" in line
    assert f"the last good checkpoint is {run / 'checkpoint' / 'last.safetensors'}" in line
    assert {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()} == before  # untouched
    [staging] = tmp_path.glob(".run.staging-*")
    assert checkpoint_epoch(staging / "checkpoint" / "last.safetensors") == 2
    assert epochs_logged(staging) == [1, 2]
    assert not (staging / "result.json").exists() and not (staging / "adapter").exists()
    assert stray_files(staging) == []

    monkeypatch.setattr(Method, "training_step", real_step)  # e.g. a fixed data problem: continue from the checkpoint
    assert main(args + ["-o", str(run), "--resume"]) == 0
    assert epochs_logged(run) == [1, 2, 3, 4, 5]
    assert (run / "result.json").exists()


def test_exploding_learning_rate_is_a_one_line_error(tiny_arch_path, data, tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    args = train_args(
        tiny_arch_path, data, 4, "--method", "coop", "--optimizer", "sgd", "--lr", "1e30", "--warmup-epochs", "0"
    )
    del args[args.index("--dropout") : args.index("--dropout") + 2]  # a low-rank knob: CoOp's full prompt refuses it
    capsys.readouterr()
    code = main(args + ["-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    [line] = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
    assert "training diverged: non-finite loss at epoch " in line and ", step 1 (lr " in line
    assert not (run / "result.json").exists() and not (run / "adapter").exists()


def test_exploding_rlp_prompt_is_reported_where_and_never_checkpointed(
    tiny_arch_path, data, tmp_path, cache_dir, capsys
):
    """An update that makes the prompt non-finite (P_A @ P_B overflows while the loss was still finite) is caught in
    the epoch it happens, before any diagnostics, metrics line or checkpoint see it."""
    run = tmp_path / "run"
    args = train_args(tiny_arch_path, data, 4, "--lr", "1e30", "--warmup-epochs", "0", "--optimizer", "sgd")
    capsys.readouterr()
    code = main(args + ["-o", str(run)])
    err = capsys.readouterr().err
    assert code == 2
    [line] = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
    assert line.startswith("rlptune: error: training diverged: ") and "epoch 1" in line and "(lr 1e+30)" in line
    assert "the last good checkpoint is none" in line
    assert not (run / "checkpoint" / "last.safetensors").exists() and not (run / "metrics.jsonl").exists()
    assert not (run / "result.json").exists() and not (run / "adapter").exists()
