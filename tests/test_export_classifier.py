"""``rlptune export ADAPTER --format classifier``: the merged class features and a JSON of class names and logit
scale, which the open_clip lines of docs/ADAPTERS.md turn into the adapter's own predictions with no rlptune at
inference; methods whose image side changes (or whose scores are not a fixed classifier) are refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.cli import main
from rlptune.config import resolve_config
from rlptune.engine.adapter import load_adapter, save_adapter
from rlptune.engine.export import CLASSIFIER_TENSOR, classifier, why_not_exportable
from rlptune.errors import RlptuneError
from rlptune.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["red", "green", "blue", "yellow"]
DOCS = Path(__file__).resolve().parents[1] / "docs" / "ADAPTERS.md"


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


def _trained(backbone, name: str, **sections):
    """A method with its trainable numbers moved off their init (as training would), deterministically."""
    overrides = {"method": {"name": name}, "data": {"dataset": "folder", "root": "/data/colours"}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    config = resolve_config(None, overrides)
    method = build_method(config, backbone, NAMES, None)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in method.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return method.eval(), config


def _snippet() -> str:
    """The documented open_clip lines (the ```python block after the classifier export's heading)."""
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## Export a classifier for open_clip") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_documented_open_clip_lines_reproduce_the_adapters_predictions(tmp_path, monkeypatch, colour_folder):
    """micro-v2 as open_clip knows it (its config registered under a name, its weights as a file): the docs' lines,
    run verbatim apart from the model name and file names, give the adapter's logits and top-1 on real images."""
    open_clip = pytest.importorskip("open_clip")
    from safetensors.torch import save_file

    from rlptune.micro.v2 import MICRO2_WEIGHTS_PATH, micro2_config, micro2_state_dict

    if not MICRO2_WEIGHTS_PATH.exists():
        pytest.skip("micro v2 weights not built")
    micro2 = load_backbone("micro-v2", device="cpu", precision="fp32")
    method, config = _trained(micro2, "rlp")
    save_adapter(tmp_path / "adapter", method, config)
    out = tmp_path / "colours.safetensors"
    assert main(["export", str(tmp_path / "adapter"), "--format", "classifier", "-o", str(out)]) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["classnames"] == NAMES and meta["method"] == "rlp" and meta["backbone"]["identity"] == micro2.identity

    weights = tmp_path / "micro-v2.safetensors"
    save_file({k: v.contiguous() for k, v in micro2_state_dict().items()}, str(weights))
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "micro-v2-test", micro2_config())
    code = _snippet()
    for documented, here in (
        ('"ViT-B-16", pretrained="openai"', f'"micro-v2-test", pretrained={str(weights)!r}'),
        ('"pets.safetensors"', repr(str(out))),
        ('"pets.json"', repr(str(out.with_suffix(".json")))),
        ('"photo.jpg"', "photo"),
    ):
        assert code.count(documented) == 1, documented
        code = code.replace(documented, here)
    assert "rlptune" not in code  # open_clip, torch, safetensors and PIL only
    loaded = load_adapter(tmp_path / "adapter", micro2)
    photos = sorted((colour_folder / "test").rglob("*.png"))[::6]
    for photo in photos:
        namespace: dict = {"photo": str(photo)}
        exec(compile(code, str(DOCS), "exec"), namespace)
        from PIL import Image

        with torch.no_grad():
            expected = loaded(loaded.preprocess(Image.open(photo).convert("RGB")).unsqueeze(0))
        assert torch.allclose(namespace["logits"], expected, atol=1e-3, rtol=0), photo
        assert namespace["label"] == NAMES[int(expected.argmax())]


@pytest.mark.parametrize(
    ("name", "sections"),
    [
        ("zeroshot", {}),
        ("coop", {}),
        ("rlp", {}),
        ("kgcoop", {}),
        ("clip_lora", {"method": {"options": {"towers": "text"}}}),
    ],
)
def test_every_method_with_the_stock_image_tower_exports_its_exact_scores(tiny, name, sections):
    method, _ = _trained(tiny, name, **sections)
    weights, scale = classifier(method)
    features = torch.nn.functional.normalize(
        torch.randn(5, tiny.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    with torch.no_grad():
        assert torch.allclose(scale * features @ weights.t(), method.logits(features), atol=1e-4, rtol=0)
    assert torch.allclose(weights.norm(dim=-1), torch.ones(len(NAMES)), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "sections", "why"),
    [
        ("maple", {"method": {"options": {"depth": 2}}}, "method maple changes the image tower"),
        ("ivlp", {"method": {"options": {"text_depth": 2, "vision_depth": 2}}}, "method ivlp changes the image tower"),
        (
            "promptsrc",
            {"method": {"options": {"text_depth": 2, "vision_depth": 2, "n_templates": 2}}},
            "method promptsrc changes the image tower",
        ),
        ("clip_lora", {}, "method clip_lora changes the image tower"),
        ("cocoop", {}, "method cocoop computes its scores its own way"),
        ("linear_probe", {}, "method linear_probe is a linear head over unnormalised image features"),
    ],
)
def test_methods_whose_image_side_changes_are_refused_in_one_line(tiny, tmp_path, capsys, name, sections, why):
    method, config = _trained(tiny, name, **sections)
    assert why_not_exportable(method).startswith(why)
    save_adapter(tmp_path / "adapter", method, config)
    out = tmp_path / "x.safetensors"
    assert main(["export", str(tmp_path / "adapter"), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rlptune: error: {why}") and err.count("\n") == 1
    assert not out.exists() and not out.with_suffix(".json").exists()  # nothing half-written


def test_export_never_replaces_what_it_did_not_write(tiny, tmp_path, capsys):
    method, config = _trained(tiny, "rlp")
    save_adapter(tmp_path / "adapter", method, config)
    out = tmp_path / "c.safetensors"
    assert main(["export", str(tmp_path / "adapter"), "-o", str(out)]) == 0
    first = out.read_bytes()
    assert main(["export", str(tmp_path / "adapter"), "-o", str(out)]) == 0  # an earlier export is replaced
    assert out.read_bytes() == first  # deterministic
    capsys.readouterr()
    mine = tmp_path / "mine.safetensors"
    (tmp_path / "mine.json").write_text('{"my": "notes"}')
    assert main(["export", str(tmp_path / "adapter"), "-o", str(mine)]) == 2
    assert "mine.json: exists and is not a classifier export's JSON" in capsys.readouterr().err
    assert (tmp_path / "mine.json").read_text() == '{"my": "notes"}' and not mine.exists()
    with pytest.raises(RlptuneError, match=r"must end in \.safetensors"):
        from rlptune.engine.export import classifier_paths

        classifier_paths(tmp_path / "c.json")
    from safetensors.torch import load_file

    assert set(load_file(str(out))) == {CLASSIFIER_TENSOR}
