"""Shared-prefix (prefix-cached) text encoding equals the plain path and open_clip's encode_text, forward and backward."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.methods import build_method
from rlptune.text import PromptedClassText, text_embeddings
from rlptune.text import shared_prefix as sp

NAMES = [
    "dog",
    "golden retriever",
    "sea lion",
    "Yellow-headed blackbird",
    "a very long compound class name of a thing",
    "x",
    "cat",
]


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


@pytest.fixture(scope="module")
def layerscale(tmp_path_factory):
    """A tiny tower whose blocks carry LayerScale (ls_1 / ls_2 are not Identity)."""
    from conftest import TINY_ARCH

    arch = json.loads(json.dumps(TINY_ARCH))
    arch["text_cfg"]["ls_init_value"] = 0.5
    path = tmp_path_factory.mktemp("arch") / "tiny-ls.json"
    path.write_text(json.dumps(arch))
    return load_backbone(str(path), device="cpu")


def _max_diff(a, b):
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()


def _feats_and_grad(text, ctx):
    ctx = ctx.detach().clone().requires_grad_()
    out = text(ctx)
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a loss that weighs every class differently
    (grad,) = torch.autograd.grad((F.normalize(out, dim=-1) * weights).sum(), ctx)
    return out.detach(), grad


@pytest.mark.parametrize("which", ["tiny", "layerscale"])
@pytest.mark.parametrize("n_ctx", [1, 4, 16])
def test_shared_prefix_equals_plain_forward_and_gradient(which, n_ctx, request):
    backbone = request.getfixturevalue(which)
    torch.manual_seed(n_ctx)
    ctx = torch.randn(n_ctx, backbone.text.width) * 0.5
    shared = PromptedClassText(backbone, NAMES, n_ctx=n_ctx)
    plain = PromptedClassText(backbone, NAMES, n_ctx=n_ctx, shared_prefix=False)
    assert shared.uses_shared_prefix(ctx) and not plain.uses_shared_prefix(ctx)
    f_shared, g_shared = _feats_and_grad(shared, ctx)
    f_plain, g_plain = _feats_and_grad(plain, ctx)
    assert (f_shared - f_plain).abs().max().item() < 1e-5
    assert (g_shared - g_plain).abs().max().item() <= 1e-5 * max(1.0, g_plain.abs().max().item())


def test_shared_prefix_reproduces_encode_text(tiny):
    ctx = text_embeddings(tiny, "a photo of a")
    text = PromptedClassText(tiny, NAMES, n_ctx=4)
    assert text.uses_shared_prefix(ctx)
    with torch.no_grad():
        ours = text(ctx)
        reference = tiny.model.encode_text(tiny.tokenize([f"a photo of a {n}." for n in NAMES]))
    assert _max_diff(ours, reference) < 1e-5


def test_shared_prefix_on_vit_b16_sized_tower_matches_encode_text_and_plain_gradient(tmp_path):
    import open_clip

    arch = open_clip.get_model_config("ViT-B-16")  # ViT-B-16's text tower (12 × 512, 8 heads); a tiny image tower
    arch["vision_cfg"] = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
    path = tmp_path / "vit-b16-text.json"
    path.write_text(json.dumps(arch))
    backbone = load_backbone(str(path), device="cpu")
    names = NAMES[:3]
    ctx = text_embeddings(backbone, "a photo of a")
    shared = PromptedClassText(backbone, names, n_ctx=4)
    plain = PromptedClassText(backbone, names, n_ctx=4, shared_prefix=False)
    with torch.no_grad():
        reference = backbone.model.encode_text(backbone.tokenize([f"a photo of a {n}." for n in names]))
    f_shared, g_shared = _feats_and_grad(shared, ctx)
    f_plain, g_plain = _feats_and_grad(plain, ctx)
    assert _max_diff(f_shared, reference) < 1e-5
    assert (g_shared - g_plain).abs().max().item() <= 1e-5 * max(1.0, g_plain.abs().max().item())


@pytest.mark.parametrize("chunk,ckpt", [(2, False), (3, True), (1, True)])
def test_shared_prefix_with_chunks_and_checkpointing(tiny, chunk, ckpt):
    torch.manual_seed(1)
    ctx = torch.randn(4, tiny.text.width) * 0.3
    base_f, base_g = _feats_and_grad(PromptedClassText(tiny, NAMES, n_ctx=4, shared_prefix=False), ctx)
    text = PromptedClassText(tiny, NAMES, n_ctx=4, chunk=chunk, use_checkpoint=ckpt)
    assert all(len(members) <= chunk for members, _ in text._groups)
    f, g = _feats_and_grad(text, ctx)
    assert (f - base_f).abs().max().item() < 1e-5
    assert (g - base_g).abs().max().item() <= 1e-5 * max(1.0, base_g.abs().max().item())


def test_fallbacks_take_the_plain_path(tiny):
    ctx = torch.randn(4, tiny.text.width) * 0.02
    assert not PromptedClassText(tiny, NAMES, n_ctx=4, position="middle").uses_shared_prefix(ctx)
    assert not PromptedClassText(tiny, NAMES, n_ctx=4, position="front").uses_shared_prefix(ctx)
    text = PromptedClassText(tiny, NAMES, n_ctx=4)
    class_specific = torch.randn(len(NAMES), 4, tiny.text.width) * 0.02
    assert not text.uses_shared_prefix(class_specific)
    with torch.no_grad():  # class-specific contexts still encode (plain path)
        assert text(class_specific).shape == (len(NAMES), tiny.model.text_projection.shape[1])


def test_unsupported_blocks_are_refused(tmp_path):
    from conftest import TINY_ARCH

    arch = json.loads(json.dumps(TINY_ARCH))
    arch["text_cfg"]["qk_norm"] = True  # open_clip builds CustomResidualAttentionBlock
    path = tmp_path / "custom.json"
    path.write_text(json.dumps(arch))
    backbone = load_backbone(str(path), device="cpu")
    reason = sp.unsupported_reason(backbone.text)
    assert reason is not None and "CustomResidualAttentionBlock" in reason
    text = PromptedClassText(backbone, NAMES[:3], n_ctx=2)
    assert not text.uses_shared_prefix()
    with torch.no_grad():
        assert torch.isfinite(text(torch.zeros(2, backbone.text.width))).all()


def test_method_setting_turns_it_off(tiny):
    on = build_method(resolve_config(overrides={"method": {"name": "coop"}, "prompt": {"n_ctx": 4}}), tiny, NAMES)
    off = build_method(
        resolve_config(overrides={"method": {"name": "coop", "shared_prefix": False}, "prompt": {"n_ctx": 4}}),
        tiny,
        NAMES,
    )
    assert on.text.uses_shared_prefix() and not off.text.uses_shared_prefix()
    off.load_adapter_state(on.adapter_state())
    with torch.no_grad():
        assert (on.class_features() - off.class_features()).abs().max().item() < 1e-5


@pytest.mark.parametrize("which,position", [("tiny", "end"), ("layerscale", "end"), ("tiny", "middle")])
def test_batched_contexts_equal_one_call_per_context(which, position, request):
    """encode_contexts (CoCoOp-style: one context per image) equals encoding each context alone, with gradients."""
    backbone = request.getfixturevalue(which)
    torch.manual_seed(3)
    contexts = (torch.randn(3, 4, backbone.text.width) * 0.3).requires_grad_()
    text = PromptedClassText(backbone, NAMES, n_ctx=4, position=position, chunk=3, use_checkpoint=True)
    batched = text.encode_contexts(contexts)
    weights = torch.linspace(-1, 1, batched.numel()).view_as(batched)
    (g_batched,) = torch.autograd.grad((F.normalize(batched, dim=-1) * weights).sum(), contexts)
    plain = PromptedClassText(backbone, NAMES, n_ctx=4, position=position, shared_prefix=False)
    one_by_one = torch.stack([plain(contexts[i]) for i in range(3)])
    (g_plain,) = torch.autograd.grad((F.normalize(one_by_one, dim=-1) * weights).sum(), contexts)
    assert batched.shape == (3, len(NAMES), one_by_one.shape[-1])
    assert (batched - one_by_one).abs().max().item() < 1e-5
    assert (g_batched - g_plain).abs().max().item() <= 1e-5 * max(1.0, g_plain.abs().max().item())
