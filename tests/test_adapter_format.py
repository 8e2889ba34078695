"""rlptune's adapter files are its own (not peft's names), 0.1.0's peft-named folders still load, and another
tool's folder opened as an adapter is one line saying what it is."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.engine.adapter import (
    ADAPTER_CONFIG,
    ADAPTER_MODEL,
    LEGACY_ADAPTER_CONFIG,
    LEGACY_ADAPTER_MODEL,
    load_adapter,
    read_adapter_config,
    save_adapter,
)
from rlptune.errors import RlptuneError
from rlptune.methods import build_method

NAMES = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


def _trained_rlp(tiny):
    """An RLP method whose prompt differs from its initialisation (so a lost tensor changes the logits)."""
    config = resolve_config(None, {"method": {"name": "rlp"}})
    method = build_method(config, tiny, NAMES, None)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in method.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return method.eval(), config


def _logits(method, features):
    with torch.no_grad():
        return method.logits(features)


def _features(tiny, n=5):
    return torch.nn.functional.normalize(
        torch.randn(n, tiny.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1
    )


def test_saved_files_have_rlptune_names_and_type_field(tiny, tmp_path):
    method, config = _trained_rlp(tiny)
    folder = save_adapter(tmp_path / "adapter", method, config)
    assert (
        sorted(p.name for p in folder.iterdir())
        == [ADAPTER_CONFIG, ADAPTER_MODEL]
        == ["rlptune_adapter.json", "rlptune_adapter.safetensors"]
    )
    payload = json.loads((folder / ADAPTER_CONFIG).read_text())
    assert payload["adapter_type"] == "rlptune" and payload["library"]["name"] == "rlptune"
    assert payload["parameter_formula"] == method.parameter_formula() and "=" in payload["parameter_formula"]
    again = load_adapter(folder, tiny)
    features = _features(tiny)
    assert torch.equal(_logits(method, features), _logits(again, features))


def test_peft_no_longer_takes_an_rlptune_folder_for_its_own(tiny, tmp_path):
    """0.1.0's folders carried peft's file names and peft failed on them with "missing required keys:
    {'peft_type'}"; now peft does not find its files at all, and rlptune's names are not peft's."""
    peft = pytest.importorskip("peft")
    from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

    method, config = _trained_rlp(tiny)
    folder = save_adapter(tmp_path / "adapter", method, config)
    assert {CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME}.isdisjoint(p.name for p in folder.iterdir())
    with pytest.raises(ValueError, match=f"Can't find '{CONFIG_NAME}'"):
        peft.PeftConfig.from_pretrained(str(folder))


def _write_0_1_0_adapter(method, config, folder):
    """An adapter exactly as rlptune 0.1.0 wrote it: peft's names, no type field, no formula."""
    from safetensors.torch import save_file

    cfg = config.to_dict()
    folder.mkdir(parents=True)
    payload = {
        "format": 1,
        "library": {"name": "rlptune", "version": "0.1.0"},
        "method": method.registered_name,
        "backbone": {"identity": method.backbone.identity, "spec": method.backbone.spec, "arch": method.backbone.arch},
        "classnames": list(method.classnames),
        "dataset_template": None,
        "settings": {"method": cfg["method"], "prompt": cfg["prompt"]},
        "trainable_params": method.num_trainable(),
    }
    (folder / "adapter_config.json").write_text(json.dumps(payload))
    state = {k: v.detach().contiguous() for k, v in method.adapter_state().items()}
    save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "1"})


def test_a_0_1_0_adapter_with_peft_names_still_loads(tiny, tmp_path):
    method, config = _trained_rlp(tiny)
    old = tmp_path / "old"
    _write_0_1_0_adapter(method, config, old)
    assert (old / LEGACY_ADAPTER_CONFIG).is_file() and (old / LEGACY_ADAPTER_MODEL).is_file()
    assert read_adapter_config(old)["method"] == "rlp"
    loaded = load_adapter(old, tiny)
    features = _features(tiny)
    assert torch.equal(_logits(method, features), _logits(loaded, features))
    (old / LEGACY_ADAPTER_MODEL).unlink()
    with pytest.raises(RlptuneError, match="missing adapter_model.safetensors"):
        load_adapter(old, tiny)


def test_rlptune_names_win_over_peft_names_in_the_same_folder(tiny, tmp_path):
    """CLIP-LoRA's peft export sits next to rlptune's files: rlptune reads its own, never peft's."""
    peft = pytest.importorskip("peft")
    method, config = _trained_rlp(tiny)
    folder = save_adapter(tmp_path / "adapter", method, config)
    peft.LoraConfig(r=2, target_modules=["q_proj"]).save_pretrained(str(folder))
    assert (folder / LEGACY_ADAPTER_CONFIG).is_file()
    features = _features(tiny)
    assert torch.equal(_logits(method, features), _logits(load_adapter(folder, tiny), features))


def _one_line_error(call) -> str:
    with pytest.raises(RlptuneError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_a_peft_folder_opened_as_an_adapter_says_what_it_is(tiny, tmp_path):
    peft = pytest.importorskip("peft")
    folder = tmp_path / "their_lora"
    peft.LoraConfig(r=2, target_modules=["q_proj"]).save_pretrained(str(folder))
    message = _one_line_error(lambda: load_adapter(folder, tiny))
    assert message == (
        f"{folder / 'adapter_config.json'}: this is a peft adapter (peft_type LORA); load it with "
        f"peft.PeftModel.from_pretrained, or pass the rlptune adapter folder"
    )


def test_other_folders_opened_as_an_adapter_say_what_they_are(tiny, tmp_path):
    model = tmp_path / "clip_model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"]}))
    assert "Hugging Face transformers model folder (model_type clip)" in _one_line_error(
        lambda: load_adapter(model, tiny)
    )
    assert f"--backbone hf:{model}" in _one_line_error(lambda: read_adapter_config(model))

    method, config = _trained_rlp(tiny)
    run = tmp_path / "run"
    save_adapter(run / "adapter", method, config)
    assert _one_line_error(lambda: load_adapter(run, tiny)).endswith(f"this is a run folder, pass {run / 'adapter'}")

    assert (
        _one_line_error(lambda: load_adapter(tmp_path / "nowhere", tiny))
        == f"{tmp_path / 'nowhere'}: no such adapter folder"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (
        _one_line_error(lambda: load_adapter(empty, tiny))
        == f"{empty}: not an adapter folder (no rlptune_adapter.json)"
    )


def test_another_adapter_type_is_refused(tiny, tmp_path):
    method, config = _trained_rlp(tiny)
    folder = save_adapter(tmp_path / "adapter", method, config)
    payload = json.loads((folder / ADAPTER_CONFIG).read_text())
    (folder / ADAPTER_CONFIG).write_text(json.dumps({**payload, "adapter_type": "someone-else"}))
    assert "adapter_type 'someone-else', expected 'rlptune'" in _one_line_error(lambda: load_adapter(folder, tiny))
    shutil.rmtree(folder)
