"""Extension without editing rlptune: a method with its own typed option, and a prompt parameterisation, defined
here (outside the package) through the public API, trained on the shipped micro CLIP, saved and loaded.
This is the proof behind docs/EXTENDING.md."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import rlptune
from rlptune.methods.coop import CoOp


@dataclass
class LabelSmoothedOptions:
    smoothing: float = rlptune.option(0.1, "label smoothing of the cross-entropy")

    def validate(self) -> None:
        if not 0.0 <= self.smoothing < 1.0:
            raise rlptune.RlptuneError(f"method.options.smoothing must be in [0, 1), got {self.smoothing}")


@rlptune.register_method("toy_smoothed_coop", options=LabelSmoothedOptions)
class LabelSmoothedCoOp(CoOp):
    """CoOp's placement with a label-smoothed loss: only the training step changes."""

    def training_step(self, batch: rlptune.Batch) -> rlptune.StepOutput:
        logits = self.scores(self.image_features_of(batch), self.class_features())
        loss = F.cross_entropy(logits.float(), batch.labels, label_smoothing=self.options.smoothing)
        return rlptune.StepOutput(loss, logits, {"smoothing": self.options.smoothing})


class ScaledPrompt(rlptune.PromptModule):
    """A toy parameterisation: P = P_init · (1 + s) with one trainable scalar s."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("initial", init.detach().clone().float(), persistent=False)
        self.s = nn.Parameter(torch.zeros(()))

    def forward(self) -> torch.Tensor:
        return self.initial * (1 + self.s)

    def count_term(self, n_sym="n", d_sym="d", copies_sym=""):
        return "1", 1


rlptune.register_prompt_kind("toy_scaled", lambda settings, init, from_text: ScaledPrompt(init))


def _config(tmp_path, **method):
    return rlptune.resolve_config(
        overrides={
            "method": {"name": "toy_smoothed_coop", **method},
            "prompt": {"n_ctx": 4, "ctx_init": "a photo of a"},
            "data": {"dataset": "micro-colors", "shots": 4, "protocol": "base2new"},
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "cache_dir": str(tmp_path / "cache")},
        }
    )


def test_unknown_option_of_an_external_method_is_one_line_with_a_suggestion(tmp_path):
    with pytest.raises(rlptune.RlptuneError, match=r"unknown option 'smoothin' .*did you mean 'smoothing'"):
        _config(tmp_path, options={"smoothin": 0.2})
    with pytest.raises(rlptune.RlptuneError, match="must be in"):
        _config(tmp_path, options={"smoothing": 2})


def test_external_method_trains_saves_and_loads_through_the_public_api(tmp_path):
    config = _config(tmp_path, options={"smoothing": 0.2})
    assert config.method.options == {  # typed, recorded with the run; CoOp's own options are inherited with its code
        "class_specific": False,
        "class_token_position": "end",
        "text_chunk": 0,
        "checkpoint_text": False,
        "shared_prefix": True,
        "smoothing": 0.2,
    }
    backbone = rlptune.load_backbone("micro", device="cpu")
    result = rlptune.train(config, tmp_path / "run", backbone=backbone, progress=False)
    assert result["method"] == "toy_smoothed_coop" and result["epochs"] == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["smoothing"] for r in records] == [0.2, 0.2]  # the method's own logs reach metrics.jsonl
    assert "smoothing: 0.2" in (tmp_path / "run" / "config.yaml").read_text()

    method = rlptune.load_adapter(tmp_path / "run" / "adapter", backbone)
    assert isinstance(method, LabelSmoothedCoOp) and method.options.smoothing == 0.2
    trained = {k: v for k, v in method.adapter_state().items()}
    assert trained and any(float(v.abs().sum()) > 0 for v in trained.values())


def test_external_prompt_kind_plugs_into_a_builtin_method(tmp_path):
    config = rlptune.resolve_config(
        overrides={
            "method": {"name": "coop"},
            "prompt": {"kind": "toy_scaled", "n_ctx": 4, "ctx_init": "a photo of a"},
            "data": {"dataset": "micro-colors", "shots": 2},
            "train": {"epochs": 1, "batch_size": 8, "cache_dir": str(tmp_path / "cache")},
        }
    )
    backbone = rlptune.load_backbone("micro", device="cpu")
    method = rlptune.build_method(config, backbone, ["red", "blue"])
    assert method.num_trainable() == 1 and method.parameter_formula().startswith("1 = 1")
    with pytest.raises(
        rlptune.RlptuneError, match=r"prompt.kind 'toy_scaleed' is not known \(did you mean 'toy_scaled'\?\)"
    ):
        rlptune.resolve_config(overrides={"prompt": {"kind": "toy_scaleed"}})
