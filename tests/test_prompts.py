"""Parameterisations: counts, merge equivalence, dropout only in training, where training starts."""

from __future__ import annotations

import pytest
import torch

from rlptune.config import PromptSettings, resolve_config
from rlptune.prompts import FullRankPrompt, LowRankPrompt, build_prompt


@pytest.mark.parametrize(
    "settings,expected",
    [
        ({"kind": "lowrank", "options": {"rank": 1}}, 4 * 1 + 1 * 512),  # RLP n=4 r=1 d=512 -> 516
        ({"kind": "lowrank", "options": {"rank": 4}}, 4 * 4 + 4 * 512),
        ({"kind": "full"}, 4 * 512),  # CoOp n=4 -> 2,048
    ],
)
def test_parameter_counts_n4(settings, expected):
    prompt = build_prompt(PromptSettings(**settings), torch.zeros(4, 512), from_text=True)
    assert prompt.num_trainable() == expected


def test_coop_n16_count():
    prompt = build_prompt(PromptSettings(kind="full", n_ctx=16), torch.randn(16, 512) * 0.02, from_text=False)
    assert prompt.num_trainable() == 8192


def test_lowrank_merge_equals_eval_forward_and_dropout_only_in_training():
    torch.manual_seed(0)
    frozen = torch.randn(4, 64)
    prompt = LowRankPrompt(frozen, rank=2, dropout=0.5, a_std=1.0, b_std=0.1)
    prompt.eval()
    assert torch.equal(prompt(), prompt.merged())
    assert torch.allclose(prompt.merged(), frozen + prompt.A @ prompt.B)
    prompt.train()
    assert not torch.allclose(prompt(), prompt.merged())  # dropout acts on the update in training
    assert prompt.training  # merged() restores the mode


def test_lowrank_default_init_starts_exactly_at_frozen_prompt():
    frozen = torch.randn(4, 32)
    prompt = build_prompt(PromptSettings(kind="lowrank"), frozen, from_text=True)
    assert torch.equal(prompt.merged(), frozen)
    assert torch.equal(prompt.initial, frozen)


def test_lowrank_without_init_text_uses_zero_frozen_prompt():
    prompt = build_prompt(PromptSettings(kind="lowrank", options={"b_std": 0.0}), torch.randn(4, 32), from_text=False)
    assert torch.equal(prompt.frozen, torch.zeros(4, 32))


def test_lowrank_alpha_scales_the_update():
    torch.manual_seed(0)
    p1 = LowRankPrompt(torch.zeros(3, 8), rank=2, a_std=1.0, b_std=1.0)
    torch.manual_seed(0)
    p2 = LowRankPrompt(torch.zeros(3, 8), rank=2, a_std=1.0, b_std=1.0, alpha=6.0)
    assert torch.allclose(p2.merged(), 3.0 * p1.merged())


def test_frozen_parts_are_not_in_the_state_dict():
    prompt = LowRankPrompt(torch.randn(4, 16), rank=1)
    assert set(prompt.state_dict()) == {"A", "B"}
    assert set(FullRankPrompt(torch.randn(4, 16)).state_dict()) == {"ctx"}


def test_rlp_preset_defaults():
    config = resolve_config(overrides={"method": {"name": "rlp"}})
    assert (config.prompt.kind, config.prompt.ctx_init, config.prompt.options["rank"]) == ("lowrank", "a photo of a", 1)
    coop = resolve_config(overrides={"method": {"name": "coop"}})
    assert (coop.prompt.kind, coop.prompt.n_ctx, coop.prompt.ctx_init, coop.train.lr) == ("full", 16, None, 0.002)
