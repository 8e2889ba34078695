"""The backbone interface and its loader registry: specs resolve through registered loaders (not an if-chain), a new
loader plugs in from outside, specs are recorded resolvable, and the open_clip towers keep their exactness."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from conftest import TINY_ARCH
from rlptune.backbones import (
    Backbone,
    TextTower,
    VisionTower,
    backbone_loaders,
    finish_backbone,
    load_backbone,
    register_backbone_loader,
    weights_hash,
)
from rlptune.backbones import loader as loader_module
from rlptune.errors import RlptuneError

pytestmark = pytest.mark.usefixtures("single_thread")

TINY_VIT = copy.deepcopy(TINY_ARCH)
TINY_VIT["vision_cfg"]["layers"] = 3


@pytest.fixture(scope="module")
def arch_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "tiny-vit3.json"
    path.write_text(json.dumps(TINY_VIT))
    return path


@pytest.fixture(scope="module")
def vit(arch_path):
    return load_backbone(str(arch_path))


@pytest.fixture()
def clean_registry(monkeypatch):
    """Registrations made by a test are undone afterwards. The built-in plug-ins register first: a module is imported
    once, so a registration made inside the snapshot would be lost with it and never made again."""
    from rlptune import registry

    registry.load_builtin_plugins()
    monkeypatch.setattr(loader_module, "_BY_NAME", dict(loader_module._BY_NAME))
    monkeypatch.setattr(loader_module, "_MATCHERS", list(loader_module._MATCHERS))


def test_a_loader_registered_from_outside_is_used(clean_registry, arch_path):
    calls = []

    def toy_loader(request):
        calls.append(request)
        model = loader_module.build_clip(loader_module.read_arch_json(arch_path))
        return finish_backbone(
            model, loader_module.tokenizer_for_cfg(TINY_VIT), "toy", request.spec, 32, (0.5,) * 3, (0.5,) * 3, request
        )

    register_backbone_loader("toy:", toy_loader, "toy:NAME")
    backbone = load_backbone("toy:anything", seed=3)
    assert isinstance(backbone, Backbone) and backbone.arch == "toy" and backbone.spec == "toy:anything"
    assert calls[0].seed == 3 and calls[0].device == "cpu" and backbone.info["typed_spec"] == "toy:anything"
    assert "toy:NAME" in backbone_loaders()


def test_longest_prefix_wins_and_exact_names_are_not_prefixes(clean_registry):
    def refuse(label):
        def load(request):
            raise RlptuneError(f"{label} loader got {request.spec}")

        return load

    register_backbone_loader("zz:", refuse("short"), "zz")
    register_backbone_loader("zz:deep:", refuse("long"), "zz deep")
    with pytest.raises(RlptuneError, match="long loader got zz:deep:x"):
        load_backbone("zz:deep:x")
    with pytest.raises(RlptuneError, match="short loader got zz:x"):
        load_backbone("zz:x")
    # "micro" is an exact name: "microscope" is not handed to the micro loader
    with pytest.raises(RlptuneError, match="names no weights"):
        load_backbone("microscope")


def test_a_matcher_loader_is_tried_after_prefixes(clean_registry, arch_path):
    register_backbone_loader(
        lambda spec: spec.endswith(".toyclip"), lambda r: load_backbone(str(arch_path)), "toy files"
    )
    assert load_backbone("model.toyclip").arch == "tiny-vit3"
    with pytest.raises(RlptuneError, match="expected a prefix string or a callable"):
        register_backbone_loader(42, lambda r: None)


def test_specs_are_recorded_resolvable(arch_path, tmp_path, monkeypatch):
    monkeypatch.chdir(arch_path.parent)
    relative = load_backbone(arch_path.name)
    assert relative.spec == str(arch_path.resolve()) and relative.info["typed_spec"] == arch_path.name
    assert load_backbone(f"random:{arch_path.name}").spec == f"random:{arch_path.resolve()}"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in relative.model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    monkeypatch.chdir(tmp_path)
    loaded = load_backbone(f"{arch_path}:w.safetensors")
    assert loaded.spec == f"{arch_path.resolve()}:{(tmp_path / 'w.safetensors').resolve()}"
    monkeypatch.chdir(arch_path.parent.parent)  # the recorded spec loads from anywhere, to the same identity
    assert load_backbone(loaded.spec).identity == loaded.identity == relative.identity


def test_open_clip_towers_keep_the_interface_and_exactness(vit):
    assert isinstance(vit.text, TextTower) and isinstance(vit.vision, VisionTower)
    assert vit.text.num_layers == 2 and vit.vision.num_layers == 3 and vit.family.name == "open_clip"
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tower = vit.vision
        assert torch.equal(tower.embed(images), tower.pre_norm(tower.embed_tokens(images)))
        assert torch.equal(tower.embed(images), vit.model.visual._embeds(images))
        assert torch.equal(tower.encode(images), vit.model.encode_image(images))
        # MaPLe's order: layer-0 prompts appended before the pre-norm, dropped before pooling
        x = tower.embed_tokens(images)
        prompted = tower.pre_norm(torch.cat([x, torch.ones(2, 2, x.shape[-1])], dim=1))
        out = tower.head(tower.run_blocks(prompted)[:, : x.shape[1]])
        assert out.shape == (2, 32) and (out - vit.model.encode_image(images)).abs().max() > 1e-4


@pytest.mark.parametrize("towers", [("text", "vision"), ("text",)])
def test_adapter_copy_shares_weights_and_splits_attention(vit, towers):
    digest = weights_hash(vit.model)
    clone = vit.adapter_copy(towers)
    names = {tower: clone.attention_modules(tower) for tower in towers}
    for tower, modules in names.items():
        assert len(modules) == (2 if tower == "text" else 3)
        for name, module in modules:
            assert all(
                isinstance(getattr(module, p), torch.nn.Linear) for p in ("q_proj", "k_proj", "v_proj", "out_proj")
            )
            assert dict(clone.model.named_modules())[name] is module
    # the same tensors, and the split attention computes the same features
    assert clone.model.token_embedding.weight is vit.model.token_embedding.weight
    ids = vit.tokenize(["a photo of a dog.", "a cat"])
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (clone.encode_text_ids(ids) - vit.encode_text_ids(ids)).abs().max() < 1e-5
        assert (clone.encode_image(images) - vit.encode_image(images)).abs().max() < 1e-5
    assert weights_hash(vit.model) == digest and isinstance(
        vit.model.transformer.resblocks[0].attn, torch.nn.MultiheadAttention
    )
    if towers == ("text",):
        assert isinstance(clone.model.visual.transformer.resblocks[0].attn, torch.nn.MultiheadAttention)


def test_unknown_tower_and_towers_without_attention_are_one_line(vit):
    with pytest.raises(RlptuneError) as info:
        vit.tower("audio")
    assert "expected one of text, vision" in str(info.value)
    micro = load_backbone("micro")  # a ModifiedResNet image tower: no attention blocks to adapt
    with pytest.raises(RlptuneError) as info:
        micro.adapter_copy(("vision",))
    assert "no nn.MultiheadAttention blocks" in str(info.value) and "\n" not in str(info.value)


def test_backbone_without_family_is_refused(vit):
    with pytest.raises(RlptuneError, match="needs its family"):
        Backbone(vit.model, vit.tokenizer, "x", "x@sha256:0", 32, (0.5,), (0.5,))
