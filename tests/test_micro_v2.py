"""Micro world v2: the ViT micro CLIP (12 + 12 blocks, OpenAI layout), its datasets and its shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlptune.backbones import loader as backbone_loader
from rlptune.config import resolve_config
from rlptune.data import list_datasets, load_dataset
from rlptune.errors import RlptuneError
from rlptune.methods import build_method, list_methods
from rlptune.micro.v2 import MICRO2_DATASETS, MICRO2_SHIFTS, MICRO2_WEIGHTS_PATH, export_openai, micro2_config
from rlptune.micro.v2 import world as W
from rlptune.micro.v2.suite import dataset_scenes, micro2_spec, render_split

needs_weights = pytest.mark.skipif(not MICRO2_WEIGHTS_PATH.exists(), reason="micro v2 weights not built")


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return backbone_loader.load_backbone("micro-v2")


# ----------------------------------------------------------------------------- world and datasets


def test_rendering_is_deterministic_and_scenes_fill_the_frame():
    scene = W.Scene(shape="square", color="red", pattern="plain", background="plain", style="photo", count=4)
    a, b = W.render_seeded(scene, 7), W.render_seeded(scene, 7)
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    # four medium objects: the red of the object covers a good part of the frame, in every quadrant but at most one
    red = (a[..., 0] > 150) & (a[..., 1] < 90) & (a[..., 2] < 90)
    assert red.mean() > 0.2
    quadrants = [red[:32, :32].any(), red[:32, 32:].any(), red[32:, :32].any(), red[32:, 32:].any()]
    assert sum(quadrants) >= 3


def test_caption_claims_are_true_of_the_scene_and_named_in_the_text():
    rng = np.random.default_rng(0)
    for _ in range(50):
        scene = W.sample_scene(rng)
        text, claims = W.caption(scene, rng)
        assert W.consistent(claims, scene) and claims["count"] == scene.count
        for attr in ("color", "pattern", "style"):
            if attr in claims and attr != "style":
                assert str(claims[attr]) in text
        other = W.Scene(**{**scene.attrs(), "count": scene.count % 6 + 1})
        assert not W.consistent(claims, other)


def test_datasets_are_registered_with_two_shifts_for_three_of_them():
    names = set(list_datasets())
    assert set(MICRO2_DATASETS) <= names
    assert sum(len(s) == 2 for s in MICRO2_SHIFTS.values()) >= 3
    for src, shifts in MICRO2_SHIFTS.items():
        for shift in shifts:
            assert shift in names and micro2_spec(shift).classnames == micro2_spec(src).classnames
            assert micro2_spec(shift).style != micro2_spec(src).style
    # class names overlap across datasets (a shape is a class of micro2-shapes and part of micro2-objects' names)
    shapes = set(micro2_spec("micro2-shapes").classnames)
    assert any(name.split()[-1] in shapes for name in micro2_spec("micro2-objects").classnames)


def test_dataset_splits_pin_their_class_attributes_and_style():
    for name in ("micro2-objects", "micro2-fabrics"):
        spec = micro2_spec(name)
        for scene, label, _rng in dataset_scenes(name, "val"):
            attrs = dict(spec.classes[label][1])
            assert all(getattr(scene, k) == v for k, v in attrs.items()) and scene.style == spec.style
    first = [W.render(s, r) for s, _l, r in dataset_scenes("micro2-scenes-foggy", "test")[:5]]
    again = [W.render(s, r) for s, _l, r in dataset_scenes("micro2-scenes-foggy", "test")[:5]]
    source = [s for s, _l, _r in dataset_scenes("micro2-scenes", "test")[:5]]
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    assert all(
        s.background == t.background
        for s, (t, _l, _r) in zip(source, dataset_scenes("micro2-scenes-foggy", "test")[:5])
    )


def test_loading_a_v2_dataset_writes_its_images_once(tmp_path):
    splits = load_dataset("micro2-shapes-photo", str(tmp_path))
    assert len(splits.test) == 10 * 30 and not splits.train
    assert (splits.root / splits.test[0].path).is_file()
    with pytest.raises(RlptuneError, match="unknown micro v2 dataset"):
        micro2_spec("micro2-nothing")


def test_a_cached_dataset_drawn_in_another_style_is_drawn_again(tmp_path):
    """micro2-colors changed style (inverted -> sketch); a cache of the old drawing must not be read as the new one."""
    splits = load_dataset("micro2-shapes-photo", str(tmp_path))
    marker = splits.root / "COMPLETE"
    expected = marker.read_text(encoding="utf-8")
    assert "style=photo" in expected
    marker.write_text(expected.replace("style=photo", "style=inverted"), encoding="utf-8")
    (splits.root / "stale.txt").write_text("from the old drawing")
    first = splits.root / splits.test[0].path
    first.write_bytes(b"not the current drawing")
    again = load_dataset("micro2-shapes-photo", str(tmp_path))
    assert again.root == splits.root and marker.read_text(encoding="utf-8") == expected
    assert not (again.root / "stale.txt").exists()
    scene, _label, rng = dataset_scenes("micro2-shapes-photo", "test")[0]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(again.root / again.test[0].path).convert("RGB")), W.render(scene, rng))
    assert not [p for p in splits.root.parent.iterdir() if ".stale." in p.name]  # the retired copy is gone


# ----------------------------------------------------------------------------- the backbone


def test_config_is_openai_layout():
    cfg = micro2_config()
    assert cfg["quick_gelu"] is True and cfg["text_cfg"]["context_length"] == 77
    assert cfg["text_cfg"]["vocab_size"] == 49408
    assert cfg["text_cfg"]["width"] // cfg["text_cfg"]["heads"] == 64
    assert cfg["vision_cfg"].get("head_width", 64) == 64 and cfg["vision_cfg"]["width"] % 64 == 0
    assert cfg["vision_cfg"]["layers"] == cfg["text_cfg"]["layers"] == 12


@needs_weights
def test_weights_file_is_small_fp16():
    from safetensors import safe_open

    assert MICRO2_WEIGHTS_PATH.stat().st_size <= 25 * 2**20
    with safe_open(str(MICRO2_WEIGHTS_PATH), "pt") as handle:
        dtypes = {handle.get_slice(k).get_dtype() for k in handle.keys()}
    assert dtypes <= {"F16", "I64"}, dtypes


@needs_weights
def test_backbone_loads_by_spec_with_twelve_blocks_per_tower(backbone):
    assert backbone.spec == "micro-v2" and backbone.identity.startswith("micro-v2@sha256:")
    assert backbone.image_size == 64
    assert len(backbone.model.visual.transformer.resblocks) == 12
    assert len(backbone.model.transformer.resblocks) == 12
    assert backbone.model.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


@needs_weights
def test_openai_round_trip(backbone, tmp_path):
    import open_clip

    path = export_openai(tmp_path / "micro-v2.pt")
    rebuilt = (
        open_clip.model.build_model_from_openai_state_dict(
            torch.load(path, weights_only=True), cast_dtype=torch.float32
        )
        .float()
        .eval()
    )
    reloaded = backbone_loader.load_backbone(str(path)).model  # rlptune's own OpenAI-file path
    tokens = backbone.tokenizer(["a photo of a star.", "a sketch of two red striped circles in a forest."])
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        text, image = backbone.model.encode_text(tokens), backbone.model.encode_image(images)
        for other in (rebuilt, reloaded):
            assert torch.allclose(other.encode_text(tokens), text, atol=1e-5)
            assert torch.allclose(other.encode_image(images), image, atol=1e-5)


@needs_weights
@pytest.mark.parametrize("method", list_methods())
def test_every_method_builds_on_micro_v2_with_its_preset(backbone, method):
    config = resolve_config(
        None, {"method": {"name": method}, "data": {"protocol": "base2new"}, "backbone": {"name": "micro-v2"}}
    )
    built = build_method(config, backbone, micro2_spec("micro2-objects").classnames[:8], "a photo of a {}.")
    images = torch.zeros(2, 3, 64, 64)
    with torch.no_grad():
        features = built.encode_images(images)
        logits = built.logits(features)
    assert logits.shape == (2, 8) and torch.isfinite(logits).all()


@needs_weights
def test_zero_shot_floor_on_micro2_colors(backbone):
    """The shipped weights know colours well above chance (10%) with the generic template."""
    from rlptune.micro.pretrain import images_to_tensor

    spec = micro2_spec("micro2-colors")
    images, labels = render_split("micro2-colors", "val")
    tokens = backbone.tokenizer([f"a photo of a {c}." for c in spec.classnames])
    with torch.no_grad():
        text = torch.nn.functional.normalize(backbone.model.encode_text(tokens), dim=-1)
        feats = torch.nn.functional.normalize(backbone.model.encode_image(images_to_tensor(images)), dim=-1)
    accuracy = float(((feats @ text.T).argmax(-1) == torch.tensor(labels)).float().mean())
    assert accuracy >= 0.4, accuracy
