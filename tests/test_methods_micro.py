"""Text-side methods train on the micro suite with the shipped micro CLIP and beat zero-shot on base classes.

(The micro CLIP's image tower is a ModifiedResNet, which has no tokens: vision-prompt methods and vision LoRA are
exercised on a tiny random ViT in test_methods_training.py.)
"""

from __future__ import annotations

import pytest
import torch

from rlptune.micro import MICRO_WEIGHTS_PATH
from rlptune.sweeps.runner import make_specs, run_sweep

pytestmark = [
    pytest.mark.skipif(not MICRO_WEIGHTS_PATH.exists(), reason="micro CLIP weights not built"),
    pytest.mark.slow,
]

METHODS = {
    "coop": {},
    "rlp": {},
    "kgcoop": {"train": {"batch_size": 32, "epochs": 60}},
    "cocoop": {"train": {"batch_size": 16, "lr": 0.002}},
    "deep_text": {"method": {"options": {"text_depth": 3}}},
    "linear_probe": {},
}


@pytest.fixture(scope="module")
def micro_results(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("micro-methods")
    specs = []
    for method, extra in METHODS.items():
        train = {"epochs": 30, "augment": False, **extra.get("train", {})}
        overrides = {"train": train, **{k: v for k, v in extra.items() if k != "train"}}
        specs += make_specs(
            "base2new", ["micro-patterned"], [method], [1], [16], backbone="micro", base_overrides=overrides
        )
    specs += make_specs("base2new", ["micro-patterned"], ["zeroshot"], [1], [16], backbone="micro")
    import os

    os.environ.setdefault("RLPTUNE_CACHE", str(root / "cache"))
    return {r["method"]: r for r in run_sweep(specs, root / "res", log=lambda m: None)}


@pytest.mark.parametrize("method", list(METHODS))
def test_method_beats_zero_shot_on_base_classes(micro_results, method):
    zero = micro_results["zeroshot"]["metrics"]["base"]["top1"]
    ours = micro_results[method]["metrics"]["base"]["top1"]
    assert ours > zero + 1.0, f"{method}: base {ours:.1f}% vs zero-shot {zero:.1f}%"
