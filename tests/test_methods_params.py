"""Trainable-parameter counts against the documented formulas (docs/METHODS.md), full rank and RLP, presets,
options validation and the refusals (ModifiedResNet image towers).

The architecture has a different width everywhere (joint space e=40, text d=48, vision w=64) and a different
depth per tower, so a formula that swaps two symbols cannot pass.
"""

from __future__ import annotations

import json

import pytest
from conftest import backbone_from_arch

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.errors import RlptuneError
from rlptune.methods import build_method, get_method_class

E, D, W = 40, 48, 64
TEXT_LAYERS, VISION_LAYERS = 3, 4
PARAM_ARCH = {
    "embed_dim": E,
    "vision_cfg": {"image_size": 32, "layers": VISION_LAYERS, "width": W, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": D, "heads": 3, "layers": TEXT_LAYERS},
}
CLASSES = ["red", "green", "blue"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, PARAM_ARCH, "param-arch")


def _build(backbone, name, options=None, **sections):
    overrides = {"method": {"name": name, "options": options or {}}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return build_method(resolve_config(None, overrides), backbone, CLASSES)


def _prompt(kind, r, n, d, copies=1):
    """The documented count of `copies` prompts (n, d): n·d each, or r·(n + d) each with RLP."""
    return copies * (n * d if kind == "full" else r * (n + d))


# method, options, n (context tokens its preset gives), documented formula(kind, r, n)
H = max(1, E // 16)
FORMULAS = {
    "coop": ({}, 16, lambda k, r, n: _prompt(k, r, n, D)),
    "rlp": ({}, 4, lambda k, r, n: _prompt(k, r, n, D)),
    "cocoop": ({}, 4, lambda k, r, n: _prompt(k, r, n, D) + (E * H + H) + (H * D + D)),
    "kgcoop": ({}, 4, lambda k, r, n: _prompt(k, r, n, D)),
    "deep_text": ({"text_depth": 3}, 4, lambda k, r, n: _prompt(k, r, n, D, 3)),  # language prompting: 4 tokens
    "deep_vision": ({"vision_depth": 4, "vision_ctx": 5}, None, lambda k, r, n: _prompt(k, r, 5, W, 4)),
    "ivlp": (
        {"text_depth": 2, "vision_depth": 3, "vision_ctx": 3},
        2,
        lambda k, r, n: _prompt(k, r, n, D, 2) + _prompt(k, r, 3, W, 3),
    ),
    "maple": ({"depth": 3}, 2, lambda k, r, n: _prompt(k, r, n, D, 3) + 3 * (D * W + W)),
}


@pytest.mark.parametrize("kind,rank", [("full", 1), ("lowrank", 1), ("lowrank", 3)])
@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_prompt_methods_count_matches_formula_and_lowrank_is_one_setting(backbone, name, kind, rank):
    options, n, expected = FORMULAS[name]
    if name == "rlp" and kind == "full":  # RLP is its low-rank prompt: a full-rank RLP is refused, never built
        with pytest.raises(RlptuneError, match="defined by prompt.kind='lowrank'"):
            _build(backbone, name, options, prompt={"kind": kind, "rank": rank})
        return
    method = _build(backbone, name, options, prompt={"kind": kind, "rank": rank})
    if n is not None:
        assert method.n_ctx == n
    assert method.num_trainable() == expected(kind, rank, n)
    # the documented formula string printed for users ends in the same total
    if hasattr(method, "parameter_formula"):  # (CoOp/RLP, from the core, print the count only)
        assert f"= {method.num_trainable():,} (" in method.parameter_formula()
    # every prompt module follows prompt.kind: no per-method copy of the RLP code
    from rlptune.prompts import FullRankPrompt, LowRankPrompt

    prompts = [m for m in method.modules() if isinstance(m, (FullRankPrompt, LowRankPrompt))]
    assert prompts and all(isinstance(p, LowRankPrompt if kind == "lowrank" else FullRankPrompt) for p in prompts)


def test_lowrank_deep_prompt_factorises_each_layer(backbone):
    method = _build(backbone, "deep_text", {"text_depth": 3}, prompt={"kind": "lowrank", "rank": 2})
    n = 4  # language prompting's 4 tokens
    assert tuple(method.text_prompt.A.shape) == (n, 2) and tuple(method.text_prompt.B.shape) == (2, D)
    assert tuple(method.text_deep.A.shape) == (2, n, 2) and tuple(method.text_deep.B.shape) == (2, 2, D)


def test_clip_lora_count(backbone):
    method = _build(backbone, "clip_lora")
    r, targets = 2, 3
    assert method.num_trainable() == targets * 2 * r * (TEXT_LAYERS * D + VISION_LAYERS * W)
    text_only = _build(backbone, "clip_lora", {"towers": "text", "targets": ["q", "v", "o"], "r": 4})
    assert text_only.num_trainable() == 3 * 2 * 4 * TEXT_LAYERS * D
    assert not text_only.needs_image_tower  # an untouched image tower trains on cached features


def test_linear_probe_count(backbone):
    assert _build(backbone, "linear_probe").num_trainable() == len(CLASSES) * (E + 1)


def test_cli_params_uses_the_same_counts(backbone, tmp_path):
    from rlptune.cli import parameter_counts

    path = tmp_path / "arch.json"
    path.write_text(json.dumps(PARAM_ARCH))
    config = resolve_config(
        None, {"backbone": {"name": str(path)}, "method": {"name": "maple", "options": {"depth": 3}}}
    )
    assert parameter_counts(config)["trainable_params"] == FORMULAS["maple"][2]("full", 1, 2)


def test_presets_hold_the_paper_defaults():
    coop = resolve_config(None, {"method": {"name": "coop"}})
    assert (coop.prompt.n_ctx, coop.train.lr) == (16, 0.002)
    cocoop = resolve_config(None, {"method": {"name": "cocoop"}})
    assert (cocoop.prompt.ctx_init, cocoop.train.batch_size, cocoop.train.lr) == ("a photo of a", 1, 0.002)
    kg = resolve_config(None, {"method": {"name": "kgcoop"}})
    assert kg.prompt.ctx_init == "a photo of a" and get_method_class("kgcoop").options_class().lambda_kg == 8.0
    for name, lr in (("ivlp", 0.0035), ("maple", 0.0035), ("deep_text", 0.0025)):  # every value: tests/test_recipes.py
        cfg = resolve_config(None, {"method": {"name": name}})
        assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.prompt.ctx_init) == (lr, 4, 5, "a photo of a")
    opts = get_method_class("ivlp").options_class()
    assert (opts.text_depth, opts.vision_depth, opts.vision_ctx) == (9, 9, 2)
    assert get_method_class("maple").options_class().depth == 9
    lora = resolve_config(None, {"method": {"name": "clip_lora"}})
    assert (lora.train.optimizer, lora.train.lr) == ("adamw", 0.0002)
    lo = get_method_class("clip_lora").options_class()
    assert (lo.r, lo.dropout, lo.targets, lo.towers) == (2, 0.25, ["q", "k", "v"], "both")


def test_unknown_option_is_a_clear_error(backbone):
    with pytest.raises(
        RlptuneError,
        match=r"unknown option 'lamda_kg' for method 'kgcoop' \(did you mean 'lambda_kg'\?\); valid options: class_specific, class_token_position, text_chunk, checkpoint_text, shared_prefix, lambda_kg, template",
    ):
        _build(backbone, "kgcoop", {"lamda_kg": 1})
    with pytest.raises(RlptuneError, match="method.options.lambda_kg: expected a number"):
        _build(backbone, "kgcoop", {"lambda_kg": "lots"})
    with pytest.raises(RlptuneError, match="exceeds the text tower's 3 layers"):
        _build(backbone, "deep_text", {"text_depth": 9})
    with pytest.raises(RlptuneError, match="targets"):
        _build(backbone, "clip_lora", {"targets": ["qkv"]})


def test_modified_resnet_image_tower_is_refused_clearly():
    """The shipped micro CLIP's architecture has a ModifiedResNet image tower: no tokens to prompt."""
    from rlptune.micro.shipped import CONFIG_PATH

    resnet = load_backbone(f"random:{CONFIG_PATH}", device="cpu")
    for name, options in (
        ("deep_vision", {"vision_depth": 1}),
        ("ivlp", {"text_depth": 1, "vision_depth": 1}),
        ("maple", {"depth": 1}),
    ):
        with pytest.raises(RlptuneError, match="ModifiedResNet has no token transformer"):
            _build(resnet, name, options)
    with pytest.raises(
        RlptuneError, match=r"vision tower \(ModifiedResNet\) has no nn.MultiheadAttention.*towers to text"
    ):
        _build(resnet, "clip_lora")
    assert _build(resnet, "clip_lora", {"towers": "text"}).num_trainable() == 3 * 2 * 2 * 4 * 128
    assert (
        _build(resnet, "deep_text", {"text_depth": 4}).num_trainable() == 4 * 4 * 128
    )  # text prompts still work (n=4, d=128)


@pytest.mark.slow
def test_vit_b16_counts_match_the_literature():
    """ViT-B-16 (random weights: counts need the architecture only): the numbers the papers report."""
    vit_b16 = load_backbone("random:ViT-B-16", device="cpu")
    # under each method's official recipe (rlptune.recipes): language prompting 12 layers x 4 tokens (IVLP's
    # 4ctx_language_only config), VPT-deep 12 x 8 tokens (VPT/vit_b16_c2_ep5_batch4_4.yaml), IVLP 12 + 12 layers x 2
    # tokens (IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml), MaPLe 9 layers x 2 tokens + couplers, PromptSRC 9 + 9 x 4
    expected = {
        "coop": 8_192,
        "rlp": 516,
        "cocoop": 35_360,
        "kgcoop": 2_048,
        "deep_text": 24_576,
        "deep_vision": 73_728,
        "ivlp": 30_720,
        "maple": 3_555_072,
        "clip_lora": 184_320,
        "promptsrc": 46_080,
    }
    for name, count in expected.items():
        method = build_method(resolve_config(None, {"method": {"name": name}}), vit_b16, ["a", "b"])
        assert method.num_trainable() == count, name
