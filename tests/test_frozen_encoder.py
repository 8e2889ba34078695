"""The low-precision CPU image pass runs through a twin of the model whose parameters share storage and are marked
``requires_grad`` (so torch folds the attention's batched matmul instead of copying weights per token). It must
give the very same features as the plain autocast pass, see in-place weight changes, and never make anything
trainable."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlptune.backbones import load_backbone


def _plain(backbone, images):
    with torch.no_grad(), backbone.autocast():
        return F.normalize(backbone.family.encode_image(backbone.model, images).float(), dim=-1)


def test_twin_gives_the_plain_autocast_features_bit_for_bit(tiny_arch_path):
    backbone = load_backbone(str(tiny_arch_path), device="cpu", precision="bf16")
    images = torch.randn(5, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        twin = backbone.encode_image(images)
        assert backbone._frozen_encoder() is not backbone.model  # the twin was used
    assert torch.equal(twin, _plain(backbone, images))
    assert not any(p.requires_grad for p in backbone.model.parameters())  # nothing of the model became trainable


def test_twin_shares_every_weight_and_sees_in_place_changes(tiny_arch_path):
    backbone = load_backbone(str(tiny_arch_path), device="cpu", precision="bf16")
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        twin = backbone._frozen_encoder()
        ours = dict(backbone.model.named_parameters())
        assert all(p.data_ptr() == ours[n].data_ptr() for n, p in twin.named_parameters())
        next(backbone.model.parameters()).mul_(1.5)  # an in-place change (a merge, a load) reaches the twin
        assert torch.equal(backbone.encode_image(images), _plain(backbone, images))


def test_twin_is_not_used_while_anything_trains_or_gradients_flow(tiny_arch_path):
    backbone = load_backbone(str(tiny_arch_path), device="cpu", precision="bf16")
    assert backbone._frozen_encoder() is backbone.model  # gradients enabled: the model itself
    with torch.no_grad():
        assert backbone._frozen_encoder() is not backbone.model
        first = next(backbone.model.parameters())
        first.requires_grad_(True)  # something of the model trains (an adapter, a prompt in the tower)
        assert backbone._frozen_encoder() is backbone.model
        first.requires_grad_(False)
        handle = backbone.model.visual.register_forward_hook(lambda *a: None)  # a method prompting the tower
        assert backbone._frozen_encoder() is backbone.model
        handle.remove()


def test_fp32_runs_the_model_itself(tiny_arch_path):
    backbone = load_backbone(str(tiny_arch_path), device="cpu", precision="fp32")
    images = torch.randn(2, 3, backbone.image_size, backbone.image_size)
    with torch.no_grad():
        backbone.encode_image(images)
    assert getattr(backbone, "_frozen_encoder_cache", None) is None
