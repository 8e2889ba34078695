"""benchmarks/gpu_check.py in its reduced CPU mode: every path the GPU check runs, run here so it cannot rot.

The same functions run on CUDA the day a device is lent (fp16 + bf16 training of CoOp, RLP, MaPLe and CLIP-LoRA,
logits against fp32, the gradient scaler, torchrun, a timed CoOp epoch against the official-style fp16 loop); here
they run on the tiny architecture with gloo, and the one JSON they write is checked field by field.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_ARCH
from rlptune import recipes

pytestmark = pytest.mark.usefixtures("single_thread")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("rlptune_bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reduced_mode_is_chosen_without_cuda_and_uses_the_tests_tiny_model(gpu_check, tmp_path, monkeypatch):
    assert gpu_check.TINY_ARCH == TINY_ARCH  # the CI mode runs the model the tests run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mode = gpu_check.choose_mode(gpu_check.parse_args(["--json", str(tmp_path / "x.json")]), tmp_path)
    assert (mode.name, mode.device, mode.ddp_backend, mode.world_size) == ("cpu-reduced", "cpu", "gloo", 1)
    assert mode.precisions and set(mode.precisions) <= {"fp16", "bf16"}
    assert json.loads(Path(mode.backbone).read_text()) == TINY_ARCH


def test_logits_agreement_numbers(gpu_check):
    ref = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 1.0]])
    out = gpu_check.agreement(ref + torch.tensor([[0.0, -1.5, 0.0], [0.25, 0.0, 0.0]]), ref)
    assert out["top1_agreement"] == 0.5 and out["max_abs_diff"] == 1.5 and out["finite"]
    assert out["mean_abs_diff"] == pytest.approx(1.75 / 6) and out["reference_logit_range"] == 3.0


@pytest.mark.slow  # trains 4 methods x 2 precisions on the tiny model and starts torchrun: ~15 s idle, ~45 s loaded
def test_reduced_mode_runs_every_path_and_writes_one_json(gpu_check, tmp_path):
    out = tmp_path / "report" / "gpu_check.json"
    code = gpu_check.main(["--reduced", "--json", str(out), "--work", str(tmp_path / "work")])
    report = json.loads(out.read_text())
    assert code == 0 and report["ok"], report["checks"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["gpu_check.json"]  # one JSON, no temporary left
    assert report["mode"] == "cpu-reduced"
    assert set(report["auto_precision"]) == set(recipes.recipe_methods())

    precisions = tuple(report["settings"]["precisions"])
    assert set(report["training"]) == {"coop", "rlp", "maple", "clip_lora"}
    for method, rows in report["training"].items():
        assert tuple(rows) == precisions, method
        for precision, row in rows.items():
            assert row["ok"] and row["losses_finite"] and row["recorded_precision"] == precision, (method, precision)
            assert row["steps"] == report["settings"]["steps"]
            logits = row["logits_vs_fp32"]
            assert logits["finite"] and logits["images"] > 0 and 0.0 <= logits["top1_agreement"] <= 1.0
            assert 0.0 < logits["max_abs_diff"] < logits["reference_logit_range"]  # half precision differs, a little
            if precision == "fp16":  # the scaler scales and lets steps through
                assert row["grad_scale"] != 1.0 and row["steps_taken"] > 0

    ddp = report["torchrun"]
    assert ddp["returncode"] == 0 and ddp["backend"] == "gloo" and ddp["world_size"] == 1
    assert ddp["collective_ok"] and ddp["ddp_params_equal_across_ranks"] and all(map(math.isfinite, ddp["ddp_losses"]))

    epoch = report["coop_epoch"]
    assert epoch["rlptune_epoch_seconds"] > 0 and epoch["official_style_epoch_seconds"] > 0
    assert epoch["official_style"]["context_dtype"] in ("float16", "bfloat16")  # the official loop's half context
    assert epoch["rlptune_steps"] == epoch["official_style"]["steps"]  # the same epoch on both sides
