"""The prompted text path must equal open_clip's own encode_text, and truncation must change nothing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.methods import build_method
from rlptune.text import PromptedClassText, text_embeddings

NAMES = [
    "dog",
    "golden retriever",
    "sea lion",
    "Yellow-headed blackbird",
    "a very long compound class name of a thing",
    "x",
]


@pytest.fixture(scope="module")
def vit_b16():
    torch.manual_seed(0)
    return load_backbone("random:ViT-B-16", device="cpu")


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


def _max_diff(a, b):
    return (F.normalize(a, dim=-1) - F.normalize(b, dim=-1)).abs().max().item()


@pytest.mark.parametrize("which", ["vit_b16", "tiny"])
def test_context_equal_to_words_reproduces_encode_text(which, request):
    backbone = request.getfixturevalue(which)
    config = resolve_config(overrides={"method": {"name": "coop"}, "prompt": {"ctx_init": "a photo of a"}})
    method = build_method(config, backbone, NAMES)
    with torch.no_grad():
        ours = method.class_features()
        reference = backbone.model.encode_text(backbone.tokenize([f"a photo of a {n}." for n in NAMES]))
    assert method.n_ctx == 4
    assert _max_diff(ours, reference) < 1e-5


@pytest.mark.parametrize("position,template", [("middle", "a photo {} of a."), ("front", "{} a photo of a.")])
def test_class_token_positions_match_the_equivalent_sentence(tiny, position, template):
    ctx = text_embeddings(tiny, "a photo of a")
    text = PromptedClassText(tiny, NAMES, n_ctx=4, position=position)
    with torch.no_grad():
        ours = text(ctx)
        reference = tiny.model.encode_text(tiny.tokenize([template.format(n) for n in NAMES]))
    assert _max_diff(ours, reference) < 1e-5


def test_truncation_equals_full_length_run(vit_b16):
    text = PromptedClassText(vit_b16, NAMES, n_ctx=16)
    ctx = torch.randn(16, vit_b16.text.width) * 0.02
    embeddings = text.assemble(ctx)
    with torch.no_grad():
        short = vit_b16.text.encode_embeddings(embeddings, text.eot, truncate=True)
        full = vit_b16.text.encode_embeddings(embeddings, text.eot, truncate=False)
    assert int(text.eot.max()) + 1 < 40  # the run really was shorter than 77 tokens
    assert (short - full).abs().max().item() < 1e-5


def test_chunked_and_checkpointed_encoding_match_gradients(tiny):
    ctx = (torch.randn(4, tiny.text.width) * 0.02).requires_grad_()
    grads, feats = [], []
    for chunk, ckpt in [(0, False), (2, False), (2, True)]:
        text = PromptedClassText(tiny, NAMES, n_ctx=4, chunk=chunk, use_checkpoint=ckpt)
        out = text(ctx)
        (g,) = torch.autograd.grad(out.pow(2).sum(), ctx)
        grads.append(g)
        feats.append(out.detach())
    for f, g in zip(feats[1:], grads[1:]):
        assert (f - feats[0]).abs().max() < 1e-5
        assert (g - grads[0]).abs().max() <= 1e-5 * grads[0].abs().max()


def test_gradients_reach_only_the_prompt(tiny):
    config = resolve_config(overrides={"method": {"name": "rlp"}})
    method = build_method(config, tiny, NAMES[:3])
    logits = method.logits(F.normalize(torch.randn(5, 32), dim=-1))
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 0, 1])).backward()
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert trainable == {"prompt.A", "prompt.B"}
    assert all(p.grad is None for p in tiny.model.parameters())
    assert method.prompt.B.grad is not None and method.prompt.B.grad.abs().sum() > 0


def test_too_long_class_name_is_a_clear_error(tiny):
    from rlptune.errors import RlptuneError

    with pytest.raises(RlptuneError, match="exceeds the text context"):
        PromptedClassText(tiny, ["word " * 80], n_ctx=4)
