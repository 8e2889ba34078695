"""Every way users keep a CLIP loads through open_clip's classes, safely, with a stable identity."""

from __future__ import annotations

import json
import os
import pickle

import open_clip
import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.errors import RlptuneError

# OpenAI's layout infers heads as width // 64, so the file-format tests use 64-wide towers.
OPENAI_TINY = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


@pytest.fixture(scope="module")
def openai_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(3)
    model = open_clip.model.CLIP(**OPENAI_TINY).eval()
    (folder / "arch.json").write_text(json.dumps(OPENAI_TINY))
    state = model.state_dict()
    torch.save(state, folder / "openai_state.pt")
    torch.jit.script(model).save(str(folder / "openai_jit.pt"))
    torch.save(
        {"epoch": 3, "name": "tiny", "state_dict": {f"module.{k}": v for k, v in state.items()}},
        folder / "openclip_ckpt.pt",
    )
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "weights.safetensors"))
    tokens = open_clip.tokenizer.SimpleTokenizer()(["a photo of a dog."])
    with torch.no_grad():
        reference = model.encode_text(tokens)
    return folder, reference, tokens


@pytest.mark.parametrize(
    "spec_of",
    [
        lambda f: str(f / "openai_state.pt"),
        lambda f: str(f / "openai_jit.pt"),
        lambda f: f"{f / 'arch.json'}:{f / 'openclip_ckpt.pt'}",
        lambda f: f"{f / 'arch.json'}:{f / 'weights.safetensors'}",
    ],
    ids=["openai-state-dict", "openai-torchscript", "openclip-checkpoint", "safetensors"],
)
def test_formats_load_the_same_weights(openai_tiny, spec_of):
    folder, reference, tokens = openai_tiny
    backbone = load_backbone(spec_of(folder), device="cpu")
    with torch.no_grad():
        ours = backbone.model.encode_text(tokens)
    assert (ours - reference).abs().max() < 1e-5
    assert backbone.identity.split("@")[1].startswith("sha256:")
    assert isinstance(backbone.model, (open_clip.model.CLIP, open_clip.model.CustomTextCLIP))


def test_identity_depends_on_weights_not_file_format(openai_tiny):
    folder, _, _ = openai_tiny
    a = load_backbone(str(folder / "openai_state.pt")).identity.split("@")[1]
    b = load_backbone(f"{folder / 'arch.json'}:{folder / 'openclip_ckpt.pt'}").identity.split("@")[1]
    c = load_backbone(f"random:{folder / 'arch.json'}", seed=1).identity.split("@")[1]
    assert a == b and a != c


def test_random_init_is_seeded(tiny_arch_path):
    assert load_backbone(str(tiny_arch_path), seed=0).identity == load_backbone(str(tiny_arch_path), seed=0).identity


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/rlptune_pwned_marker",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = "/tmp/rlptune_pwned_marker"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "evil.pt"
    with open(path, "wb") as handle:
        pickle.dump({"visual.proj": _Exploit()}, handle)
    with pytest.raises(RlptuneError, match="not a loadable weights-only checkpoint"):
        load_backbone(str(path))
    torch_zip = tmp_path / "evil_zip.pt"
    torch.save({"x": _Exploit()}, torch_zip)
    with pytest.raises(RlptuneError):
        load_backbone(f"RN50:{torch_zip}")
    assert not os.path.exists(marker)


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("ViT-B-16", "names no weights"),
        ("/nonexistent/ViT-B-16.pt", "checkpoint file not found"),
        ("random:NoSuchArch", "unknown open_clip architecture"),
        ("", "empty spec"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, fragment):
    with pytest.raises(RlptuneError) as info:
        load_backbone(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_wrong_architecture_for_weights(openai_tiny, tiny_arch_path):
    folder, _, _ = openai_tiny
    with pytest.raises(RlptuneError, match="weights do not match the architecture"):
        load_backbone(f"{tiny_arch_path}:{folder / 'weights.safetensors'}")


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(RlptuneError, match="empty"):
        load_backbone(str(empty))
    with pytest.raises(RlptuneError, match="garbage.pt"):
        load_backbone(str(garbage))
