"""The official prompt layout of MaPLe / IVLP / deep text / PromptSRC, as the official code builds it.

- Fixed words: with ``prompt.n_ctx = 2`` and ``ctx_init = "a photo of a"`` the prompt is ``[ctx1 ctx2] of a {name}.``
  (the first n tokens learned, the rest fixed text), exact against ``encode_text`` when the context equals the
  words, on the shared-prefix and the plain path, forward and gradient, with and without deep text prompts.
- Layer-0 vision prompts are appended before ``ln_pre`` (checked against open_clip's modules run by hand).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_ARCH, backbone_from_arch
from rlptune.config import resolve_config
from rlptune.errors import RlptuneError
from rlptune.methods import build_method
from rlptune.text import PromptedClassText, context_from_init, text_embeddings

NAMES = ["dog", "golden retriever", "sea lion", "Yellow-headed blackbird", "x"]

TINY_VIT = copy.deepcopy(TINY_ARCH)
TINY_VIT["text_cfg"]["layers"] = 3
TINY_VIT["vision_cfg"]["layers"] = 3

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    backbone = backbone_from_arch(tmp_path_factory, TINY_VIT, "tiny-layout")
    with torch.no_grad():  # a random init leaves ln_pre's affine at identity, which ln_1 would hide; CLIP's is not
        backbone.model.visual.ln_pre.weight.uniform_(0.5, 1.5)
        backbone.model.visual.ln_pre.bias.normal_(0.0, 0.3)
    return backbone


def _config(name: str, options: dict | None = None, **prompt):
    prompt = {"n_ctx": 2, "ctx_init": "a photo of a", **prompt}
    return resolve_config(None, {"method": {"name": name, "options": options or {}}, "prompt": prompt})


def _reference(backbone, template: str = "a photo of a {}.") -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(backbone.model.encode_text(backbone.tokenize([template.format(n) for n in NAMES])), dim=-1)


@pytest.mark.parametrize("shared", [True, False])
def test_fixed_words_reproduce_encode_text(tiny, shared):
    ctx = context_from_init(tiny, "a photo of a", 2)
    assert torch.equal(ctx, text_embeddings(tiny, "a photo"))  # the first two tokens' embeddings
    text = PromptedClassText(tiny, NAMES, 2, context_text="a photo of a", shared_prefix=shared)
    assert (text.n_fixed, text.uses_shared_prefix(ctx)) == (2, shared)
    with torch.no_grad():
        ours = F.normalize(text(ctx), dim=-1)
    assert (ours - _reference(tiny)).abs().max().item() < 1e-5
    # the fixed words really are "of a": the learned slot alone ("a photo {name}.") is another prompt
    assert (ours - _reference(tiny, "a photo {}.")).abs().max().item() > 1e-3


def test_fixed_words_shared_prefix_equals_plain_forward_and_gradient(tiny):
    torch.manual_seed(1)
    ctx = torch.randn(2, tiny.text.width) * 0.5
    deep = torch.randn(2, 2, tiny.text.width) * 0.5  # deep prompts of layers 1 and 2

    def run(shared: bool):
        c, d = ctx.clone().requires_grad_(True), deep.clone().requires_grad_(True)
        text = PromptedClassText(tiny, NAMES, 2, context_text="a photo of a", shared_prefix=shared)

        def hook(i, x):
            if 1 <= i <= 2:
                rows = d[i - 1].unsqueeze(0).expand(x.shape[0], -1, -1)
                return torch.cat([x[:, :1], rows, x[:, 3:]], dim=1)
            return x

        feats = text(c, before_block=hook)
        (feats * torch.linspace(-1, 1, feats.numel()).view_as(feats)).sum().backward()
        return feats.detach(), c.grad, d.grad

    shared, plain = run(True), run(False)
    for a, b in zip(shared, plain):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert shared[2].abs().sum() > 0  # the deep prompts receive gradients through the prefix cache


@pytest.mark.parametrize("name", ["deep_text", "ivlp", "maple", "coop", "rlp"])
def test_methods_learn_the_first_n_tokens_and_keep_the_rest_fixed(tiny, name):
    options = {"depth": 1} if name == "maple" else {"text_depth": 1, "vision_depth": 0 if name == "deep_text" else 1}
    options = {} if name in ("coop", "rlp") else options
    method = build_method(_config(name, options, kind="lowrank" if name == "rlp" else "full"), tiny, NAMES)
    assert method.n_ctx == 2 and method.text.n_fixed == 2
    prompt = method.prompt if name in ("coop", "rlp") else method.text_prompt
    assert tuple(prompt.initial.shape) == (2, tiny.text.width)
    with torch.no_grad():
        ours = method.class_features()
    assert (ours - _reference(tiny)).abs().max().item() < 1e-5  # context = its init words: exact


def test_deep_text_prompts_replace_only_the_learned_positions(tiny):
    """Layers >= 1 replace positions 1..n (the learned slot); the fixed words "of a" flow through the blocks."""
    method = build_method(_config("deep_text", {"text_depth": 3}), tiny, NAMES)
    with torch.no_grad():
        method.text_deep.ctx.normal_(0, 0.5)
        ours = method.class_features()
        # reference: open_clip's own blocks run by hand on "a photo of a {name}." with positions 1-2 replaced
        tokens = tiny.tokenize([f"a photo of a {n}." for n in NAMES])
        model = tiny.model
        x = model.token_embedding(tokens) + model.positional_embedding
        for i, block in enumerate(model.transformer.resblocks):
            if i >= 1:
                rows = method.text_deep.ctx[i - 1].unsqueeze(0).expand(x.shape[0], -1, -1)
                x = torch.cat([x[:, :1], rows, x[:, 3:]], dim=1)
            x = block(x, attn_mask=model.attn_mask)
        x = model.ln_final(x)
        pooled = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    assert (ours - F.normalize(pooled, dim=-1)).abs().max().item() < 1e-5


def test_n_ctx_at_or_above_the_init_length_learns_the_whole_init(tiny):
    for n_ctx in (4, 16):
        method = build_method(_config("ivlp", {"text_depth": 1, "vision_depth": 1}, n_ctx=n_ctx), tiny, NAMES)
        assert (method.n_ctx, method.text.n_fixed) == (4, 0)
        assert torch.equal(method.text_prompt.initial, text_embeddings(tiny, "a photo of a"))
        with torch.no_grad():
            assert (method.class_features() - _reference(tiny)).abs().max().item() < 1e-5
    with pytest.raises(RlptuneError, match="n_ctx 5 must be between 1 and the 4 tokens"):
        PromptedClassText(tiny, NAMES, 5, context_text="a photo of a")


def test_counts_follow_the_learned_tokens_only(tiny):
    d, w = tiny.text.width, tiny.vision.width
    method = build_method(_config("ivlp", {"text_depth": 3, "vision_depth": 2, "vision_ctx": 3}), tiny, NAMES)
    assert method.num_trainable() == 3 * 2 * d + 2 * 3 * w
    assert method.parameter_formula().startswith(f"J_t·n·d + J_v·n_v·w = {3 * 2 * d} + {2 * 3 * w}")


def test_depth_is_checked_against_the_text_tower_layers(tiny):
    with pytest.raises(RlptuneError, match=f"exceeds the text tower's {tiny.text.num_layers} layers"):
        build_method(_config("deep_text", {"text_depth": tiny.text.num_layers + 1}), tiny, NAMES)


@torch.no_grad()
def _vision_by_hand(backbone, images, prompts, before_ln_pre: bool) -> torch.Tensor:
    """open_clip's ViT run from its modules, with layer-0 prompts appended before or after ln_pre and replaced
    before blocks 1 .. J-1 (the official IVLP / VPT-deep placement when ``before_ln_pre``)."""
    v = backbone.model.visual
    x = v.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([v.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1), x], dim=1) + v.positional_embedding
    n = prompts.shape[1]
    first = prompts[0].unsqueeze(0).expand(x.shape[0], -1, -1)
    x = v.ln_pre(torch.cat([x, first], dim=1)) if before_ln_pre else torch.cat([v.ln_pre(x), first], dim=1)
    for i, block in enumerate(v.transformer.resblocks):
        if 1 <= i < prompts.shape[0]:
            x = torch.cat([x[:, :-n], prompts[i].unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    pooled = v.ln_post(x[:, 0])
    return F.normalize(pooled @ v.proj, dim=-1)


@pytest.mark.parametrize(
    "name,options",
    [
        ("deep_vision", {"vision_depth": 2, "vision_ctx": 3}),
        ("ivlp", {"text_depth": 1, "vision_depth": 3, "vision_ctx": 2}),
    ],
)
def test_layer0_vision_prompts_go_before_ln_pre(tiny, name, options):
    method = build_method(_config(name, options), tiny, NAMES)
    torch.manual_seed(2)
    with torch.no_grad():
        method.vision_prompt.ctx.normal_(0, 1.0)
        images = torch.randn(3, 3, tiny.image_size, tiny.image_size)
        ours = method.encode_images(images)
    prompts = method.vision_prompt.ctx.detach()
    assert (ours - _vision_by_hand(tiny, images, prompts, True)).abs().max().item() < 1e-5
    # the other placement is measurably different, so the check above can fail
    assert (ours - _vision_by_hand(tiny, images, prompts, False)).abs().max().item() > 1e-4
