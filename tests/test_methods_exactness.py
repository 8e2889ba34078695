"""What each baseline computes, checked against a reference: the hooks run open_clip's own blocks exactly,
CoCoOp's batched path equals one image at a time, KgCoOp's loss is the paper's, CLIP-LoRA starts exactly at CLIP
and never touches the backbone, deep prompts are replaced (not accumulated) layer by layer, MaPLe couples."""

from __future__ import annotations

import copy

import pytest
import torch

from rlptune.methods.base import Batch
import torch.nn.functional as F

from conftest import TINY_ARCH, backbone_from_arch
from rlptune.backbones.base import weights_hash
from rlptune.config import resolve_config
from rlptune.methods import build_method

TINY_VIT = copy.deepcopy(TINY_ARCH)
TINY_VIT["vision_cfg"]["layers"] = 3
CLASSES = ["red", "green", "blue"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, TINY_VIT, "tiny-vit3")


def _build(backbone, name, options=None, classes=CLASSES, template=None, **sections):
    overrides = {"method": {"name": name, "options": options or {}}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return build_method(resolve_config(None, overrides), backbone, classes, template)


def _zero_shot(backbone, template="a photo of a {}.", classes=CLASSES):
    return backbone.encode_text_ids(backbone.tokenize([template.format(c) for c in classes]))


def _images(count=4, seed=0):
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# -- the generic hooks in backbones/base.py -------------------------------------------------------------------------


def test_vision_tower_runs_open_clips_own_modules_exactly(vit):
    images = _images()
    with torch.no_grad():
        reference = vit.model.encode_image(images)
        assert torch.equal(vit.vision.encode(images), reference)
        assert torch.equal(vit.vision.encode(images, lambda i, x: x), reference)
        # appended tokens are dropped before pooling: zero-attention tokens would leave the class token alone,
        # and the pooled output keeps the image's own token count
        seen = []
        vit.vision.encode(
            images, lambda i, x: seen.append(x.shape[1]) or (torch.cat([x, x[:, :2]], 1) if i == 0 else x)
        )
        assert seen == [17, 19, 19]


def test_text_tower_hook_is_exact_when_it_does_nothing(vit):
    from rlptune.text import PromptedClassText, text_embeddings

    text = PromptedClassText(vit, CLASSES, 4)
    embeddings = text.assemble(text_embeddings(vit, "a photo of a"))
    with torch.no_grad():
        plain = vit.text.encode_embeddings(embeddings, text.eot)
        hooked = vit.text.encode_embeddings(embeddings, text.eot, before_block=lambda i, x: x)
    assert torch.equal(plain, hooked)


# -- deep prompts --------------------------------------------------------------------------------------------------


def test_deep_text_depth_one_is_coop_and_reproduces_the_template(vit):
    method = _build(vit, "deep_text", {"text_depth": 1}, prompt={"ctx_init": "a photo of a"})
    with torch.no_grad():
        assert (method.class_features() - _zero_shot(vit)).abs().max() < 1e-5


def test_deep_prompts_are_replaced_layer_by_layer(vit):
    method = _build(vit, "ivlp", {"text_depth": 2, "vision_depth": 3, "vision_ctx": 2})
    lengths = []
    hooks = [
        b.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1]))
        for b in vit.model.visual.transformer.resblocks
    ]
    try:
        feats = method.encode_images(_images(2))
    finally:
        for h in hooks:
            h.remove()
    assert lengths == [17 + 2] * 3  # 16 patches + class token + 2 prompt tokens at every layer: replaced, not stacked
    loss = method.training_step(Batch(labels=torch.tensor([0, 1]), features=feats)).loss
    loss.backward()
    for name in ("text_prompt.ctx", "text_deep.ctx", "vision_prompt.ctx"):
        grad = dict(method.named_parameters())[name].grad
        assert grad is not None and bool((grad.flatten(0, -2).norm(dim=-1) > 0).all()), name  # every layer learns


def test_text_deep_prompt_of_a_later_layer_matters(vit):
    """Layer 1's own tokens (spliced in before block 1) change the class features."""
    method = _build(vit, "deep_text", {"text_depth": 2})
    with torch.no_grad():
        before = method.class_features()
        method.text_deep.ctx.add_(
            torch.randn_like(method.text_deep.ctx)
        )  # (a constant shift would vanish in LayerNorm)
        after = method.class_features()
    assert (before - after).abs().max() > 1e-3


def test_maple_vision_prompts_are_linear_maps_of_the_text_prompts(vit):
    method = _build(vit, "maple", {"depth": 2})
    text = method.text_prompts()
    vision = method.vision_prompts()
    for i in range(2):
        expected = text[i] @ method.couplers[i].weight.t() + method.couplers[i].bias
        assert torch.allclose(vision[i], expected)
    assert vision.shape == (2, method.n_ctx, 32)


def test_deep_vision_classifies_with_the_recipe_template_or_the_dataset_s(vit):
    template = "a blurry photo of a {}."
    official = _build(vit, "deep_vision", {"vision_depth": 1}, template=template)  # VPT's code: "a photo of a {}."
    assert torch.allclose(official.class_features(), _zero_shot(vit, "a photo of a {}."))
    method = _build(vit, "deep_vision", {"vision_depth": 1, "template": None}, template=template)
    assert torch.allclose(method.class_features(), _zero_shot(vit, template))


# -- CoCoOp --------------------------------------------------------------------------------------------------------


def test_cocoop_batched_equals_one_image_at_a_time(vit):
    method = _build(vit, "cocoop").eval()
    feats = F.normalize(torch.randn(5, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
    with torch.no_grad():
        tokens = method.image_tokens(feats)
        batched = method.conditional_class_features(method.context(), tokens)
        single = torch.cat([method.conditional_class_features(method.context(), tokens[i : i + 1]) for i in range(5)])
        assert torch.allclose(batched, single, atol=1e-6)
        logits = method.logits(feats)
        expected = vit.logit_scale * torch.einsum("be,bce->bc", feats, single)
        assert torch.allclose(logits, expected, atol=1e-5)
        chunked = _build(vit, "cocoop", {"inference_images_per_call": 2})
        chunked.load_adapter_state(method.adapter_state())
        assert torch.allclose(chunked.eval().logits(feats), logits, atol=1e-5)


def test_cocoop_without_image_token_is_the_handcrafted_prompt(vit):
    method = _build(vit, "cocoop")  # n=4 from "a photo of a"
    with torch.no_grad():
        method.meta_net.linear2.weight.zero_()
        method.meta_net.linear2.bias.zero_()
        feats = F.normalize(torch.randn(3, 32), dim=-1)
        per_image = method.conditional_class_features(method.context(), method.image_tokens(feats))
    reference = _zero_shot(vit)
    assert (per_image - reference.unsqueeze(0)).abs().max() < 1e-5


def test_cocoop_meta_net_shape(vit):
    method = _build(vit, "cocoop")
    assert method.meta_net.linear1.in_features == 32 and method.meta_net.linear1.out_features == 2  # 32 // 16
    assert method.meta_net.linear2.out_features == vit.text.width


# -- KgCoOp --------------------------------------------------------------------------------------------------------


def test_kgcoop_loss_is_cross_entropy_plus_guidance(vit):
    method = _build(vit, "kgcoop", {"lambda_kg": 8.0}, template="a photo of a {}, a type of colour.")
    assert torch.allclose(method.handcrafted, _zero_shot(vit, "a photo of a {}, a type of colour."))
    with torch.no_grad():
        method.prompt.ctx.add_(0.05 * torch.randn_like(method.prompt.ctx))
    feats = F.normalize(torch.randn(6, 32), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = method.training_step(Batch(labels=labels, features=feats)).loss
    text = method.class_features()
    expected = F.cross_entropy(vit.logit_scale * feats @ text.t(), labels) + 8.0 * (
        1 - F.cosine_similarity(text, method.handcrafted, dim=-1).mean()
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    assert _build(vit, "kgcoop").template == "a photo of a {}."  # no dataset template: the generic one


# -- CLIP-LoRA -----------------------------------------------------------------------------------------------------


def test_split_attention_equals_multihead_attention(vit):
    from rlptune.methods.lora import SplitAttention

    for block, mask in (
        (vit.model.transformer.resblocks[0], vit.text.causal_mask(9)),
        (vit.model.visual.transformer.resblocks[0], None),
    ):
        x = torch.randn(3, 9, 32)
        split = SplitAttention(block.attn)
        with torch.no_grad():
            reference = block.attn(x, x, x, need_weights=False, attn_mask=mask)[0]
            assert (split(x, x, x, need_weights=False, attn_mask=mask)[0] - reference).abs().max() < 1e-5
        assert split.q_proj.weight.data_ptr() == block.attn.in_proj_weight.data_ptr()  # views, no copy


def test_clip_lora_starts_at_clip_and_never_changes_the_backbone(vit):
    digest = weights_hash(vit.model)
    method = _build(vit, "clip_lora", template="a photo of a {}.")
    images = _images(3)
    with torch.no_grad():
        assert (method.class_features() - _zero_shot(vit)).abs().max() < 1e-5
        assert (method.encode_images(images) - vit.encode_image(images)).abs().max() < 1e-5
    trainable = [n for n, p in method.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    adapted = {n.rsplit(".lora_", 1)[0] for n in trainable}
    assert len(adapted) == 3 * (2 + 3)  # q, k, v of 2 text + 3 image blocks
    assert all(n.endswith(("q_proj", "k_proj", "v_proj")) for n in adapted)
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=0.1)
    method.train()
    assert not vit.model.training and not method.clip.training
    assert any(m.training for n, m in method.clip.named_modules() if n.endswith("lora_dropout"))
    for _ in range(2):
        loss = method.training_step(Batch(labels=torch.tensor([0, 1, 2]), images=images)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()
    assert weights_hash(vit.model) == digest
    assert not any(p.requires_grad for p in vit.model.parameters())
    with torch.no_grad():
        assert (method.encode_images(images) - vit.encode_image(images)).abs().max() > 1e-4  # the adapters act


# -- linear probe --------------------------------------------------------------------------------------------------


def test_linear_probe_starts_as_zero_shot(vit):
    method = _build(vit, "linear_probe")
    feats = F.normalize(torch.randn(7, 32), dim=-1)
    reference = vit.logit_scale * feats @ _zero_shot(vit).t()
    assert torch.allclose(method.logits(feats), reference, atol=1e-5)
