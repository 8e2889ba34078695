"""torchrun with 2 CPU processes (gloo) trains the same prompt as one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.engine import train
from rlptune.engine.distributed import DistContext, current, is_launched
from rlptune.errors import RlptuneError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _settings(colour_folder, cache):
    # RLP with dropout and SGD momentum: dropout masks, momentum and the loss mean must all line up across ranks
    return {
        "method": {"name": "rlp"},
        "prompt": {"dropout": 0.25},
        "data": {"dataset": "folder", "root": str(colour_folder), "shots": 6},
        "train": {
            "epochs": 3,
            "batch_size": 8,
            "lr": 0.05,
            "aug_views": 2,
            "cache_dir": str(cache),
            "warmup_epochs": 1,
        },
    }


@pytest.mark.slow  # starts 3 Python processes (torchrun + 2 ranks): ~10 s idle, ~45 s on a loaded CPU
def test_two_processes_equal_one_process(tiny_arch_path, colour_folder, tmp_path):
    settings = _settings(colour_folder, tmp_path / "cache-one")
    single = train(
        resolve_config(None, settings), tmp_path / "one", backbone=load_backbone(str(tiny_arch_path)), progress=False
    )

    settings = _settings(colour_folder, tmp_path / "cache-two")  # a fresh cache: rank 0 builds it, rank 1 reads it
    flags = [f"--set={section}.{key}={value}" for section, values in settings.items() for key, value in values.items()]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "rlptune",
        "train",
        "--backbone",
        str(tiny_arch_path),
        "--device",
        "cpu",
        "-o",
        str(tmp_path / "two"),
        "--no-progress",
        *flags,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]

    one = load_file(str(tmp_path / "one" / "adapter" / "rlptune_adapter.safetensors"))
    two = load_file(str(tmp_path / "two" / "adapter" / "rlptune_adapter.safetensors"))
    assert sorted(one) == sorted(two) == ["prompt.A", "prompt.B"]
    initial_b = torch.zeros_like(one["prompt.B"])
    assert (one["prompt.B"] - initial_b).abs().max() > 1e-3  # the prompt really moved
    for name in one:
        assert (one[name] - two[name]).abs().max().item() < 1e-5, name

    # one writer: every epoch logged once, one result, the same training loss as one process
    lines = [json.loads(ln) for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["epoch"] for ln in lines] == [1, 2, 3]
    ref = [json.loads(ln) for ln in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(lines, ref):
        assert abs(a["loss"] - b["loss"]) < 1e-5 and a["train_acc"] == b["train_acc"] and a["steps"] == b["steps"]
    result = json.loads((tmp_path / "two" / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["metrics"]["test"]["top1"] == pytest.approx(single["metrics"]["test"]["top1"])
    assert (
        len(list((tmp_path / "cache-two" / "features").glob("*.safetensors"))) == 4
    )  # 2 train views + validation + test


def test_single_process_context_and_sharding():
    assert not is_launched() or int(os.environ.get("WORLD_SIZE", "1")) > 1
    ctx = current()
    assert ctx == DistContext() and ctx.is_main and not ctx.enabled
    batch = torch.arange(8)
    assert torch.equal(ctx.shard(batch), batch)
    two = [DistContext(rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([c.shard(batch) for c in two]), batch)
    assert len(two[0].shard(batch)) == len(two[1].shard(batch)) == 4
    with pytest.raises(RlptuneError):
        two[0].shard(torch.arange(7))
