"""KgCoOp's hand-crafted text is its own repository's per-dataset template (CUSTOM_TEMPLATES), not CoOp's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_ARCH, backbone_from_arch
from rlptune.config import resolve_config
from rlptune.methods import build_method
from rlptune.methods.base import Batch
from rlptune.method_templates import KGCOOP_TEMPLATES

pytestmark = pytest.mark.usefixtures("single_thread")
CLASSES = ["banded", "dotted", "striped_zigzag"]
COOP_DTD = "{} texture."  # CoOp's zero-shot template for DTD, which rlptune's CoOp loader hands the method


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, copy.deepcopy(TINY_ARCH), "tiny-kgcoop")


def _kgcoop(backbone, dataset, dataset_template=None, **options):
    config = resolve_config(None, {"method": {"name": "kgcoop", "options": options}, "data": {"dataset": dataset}})
    return build_method(config, backbone, CLASSES, dataset_template)


def _encoded(backbone, template):
    return backbone.encode_text_ids(backbone.tokenize([template.format(c.replace("_", " ")) for c in CLASSES]))


@pytest.mark.parametrize("dataset", ["dtd", "DescribableTextures", "textures"])
def test_dtd_uses_kgcoops_texture_template_not_coops(vit, dataset):
    method = _kgcoop(vit, dataset, COOP_DTD)
    assert method.template == "a photo of a {}, a type of texture."
    assert torch.allclose(method.handcrafted, _encoded(vit, "a photo of a {}, a type of texture."), atol=1e-6)
    assert not torch.allclose(method.handcrafted, _encoded(vit, COOP_DTD), atol=1e-3)


def test_every_coop_dataset_gets_its_kgcoop_template(vit):
    for name, template in KGCOOP_TEMPLATES.items():
        assert _kgcoop(vit, name.lower(), "{} ignored.").template == template, name
    assert _kgcoop(vit, "eurosat").template == "a centered satellite photo of {}."


def test_other_datasets_and_the_option(vit):
    assert _kgcoop(vit, "folder", "a drawing of a {}.").template == "a drawing of a {}."  # the dataset's own
    assert _kgcoop(vit, "folder").template == "a photo of a {}."
    assert _kgcoop(vit, "dtd", COOP_DTD, template="itap of a {}.").template == "itap of a {}."  # the option wins


def test_guidance_pulls_towards_the_kgcoop_template_features(vit):
    method = _kgcoop(vit, "dtd", COOP_DTD)
    method.train()
    feats = F.normalize(torch.randn(5, TINY_ARCH["embed_dim"], generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1])
    out = method.training_step(Batch(labels=labels, features=feats))
    text = method.class_features()
    ce = F.cross_entropy(vit.logit_scale * feats @ text.t(), labels)
    kg = 1 - F.cosine_similarity(text, _encoded(vit, "a photo of a {}, a type of texture."), dim=-1).mean()
    assert torch.allclose(out.loss, ce + 8.0 * kg, atol=1e-5)
