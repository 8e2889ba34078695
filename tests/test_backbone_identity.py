"""A backbone is its weights and its structure, not its spelling: the same micro-v2 loaded as ``micro-v2``,
``ARCH:TAG``, ``ARCH:/path``, an OpenAI ``.pt`` and a Hugging Face ``CLIPModel`` folder is one backbone, an adapter
trained on one spelling gives the same logits on every other, adapters written before the identity had a
structure still load, and another backbone is refused in one line that names both and what differs."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
open_clip = pytest.importorskip("open_clip")

from conftest import TINY_ARCH  # noqa: E402
from rlptune.backbones import attention_block, load_backbone, weights_hash  # noqa: E402
from rlptune.backbones.hf import export_hf_clip, hf_to_openai_state, openai_to_hf_state  # noqa: E402
from rlptune.backbones.identity import backbone_mismatch, backbone_record, hash_state  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.engine import load_adapter, train  # noqa: E402
from rlptune.engine.adapter import ADAPTER_CONFIG, save_adapter  # noqa: E402
from rlptune.errors import RlptuneError  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.micro.v2 import MICRO2_CONFIG_PATH, MICRO2_WEIGHTS_PATH, export_openai, micro2_config  # noqa: E402
from rlptune.serve.tasks import TaskRegistry  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("single_thread"),
    pytest.mark.skipif(not MICRO2_WEIGHTS_PATH.exists(), reason="micro v2 weights not built"),
]

NAMES = ["red", "green", "blue", "yellow"]
TAG_ARCH = "rlptune-test-micro-v2"  # micro-v2's config registered in open_clip for the ARCH:TAG spelling


@pytest.fixture(scope="module")
def micro2():
    return load_backbone("micro-v2")


@pytest.fixture(scope="module")
def exports(tmp_path_factory, micro2):
    folder = tmp_path_factory.mktemp("exports")
    return export_openai(folder / "micro-v2.pt"), export_hf_clip(micro2, folder / "micro-v2-hf")


@pytest.fixture(scope="module")
def spellings(micro2, exports):
    """The same weights, spelled five ways."""
    pt, hf = exports
    with pytest.MonkeyPatch.context() as mp:  # a pretrained tag open_clip resolves to a local file (no download)
        mp.setitem(open_clip.factory._MODEL_CONFIGS, TAG_ARCH, micro2_config())
        mp.setitem(open_clip.pretrained._PRETRAINED, TAG_ARCH, {"local": {"file": str(pt), "quick_gelu": True}})
        tagged = load_backbone(f"{TAG_ARCH}:local")
    return {
        "micro-v2": micro2,
        "ARCH:TAG": tagged,
        "ARCH:/path": load_backbone(f"{MICRO2_CONFIG_PATH}:{MICRO2_WEIGHTS_PATH}"),
        "openai .pt": load_backbone(str(pt)),
        "hf folder": load_backbone(f"hf:{hf}"),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory, micro2, colour_folder):
    """An RLP adapter trained by the engine on micro-v2 (a few steps)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    config = resolve_config(
        None,
        {
            "method": {"name": "rlp"},
            "backbone": {"name": "micro-v2"},
            "data": {"dataset": "folder", "root": str(colour_folder), "shots": 2},
            "train": {
                "epochs": 2,
                "warmup_epochs": 0,
                "aug_views": 0,
                "batch_size": 4,
                "lr": 0.05,
                "cache_dir": str(out.parent / "cache"),
            },
        },
    )
    train(config, out, backbone=micro2, progress=False)
    return out / "adapter"


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _logits(method, images):
    with torch.no_grad():
        return method.logits(method.encode_images(images))


def _perturbed(name, backbone, seed=0):
    """A method whose trainable tensors are far from their initialisation (so a lost or misplaced tensor shows)."""
    config = resolve_config(None, {"method": {"name": name}})
    method = build_method(config, backbone, NAMES, None)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in method.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return method.eval(), config


def _as_old_format(folder, target):
    """The adapter as rlptune wrote it before identities carried a structure: the backbone as label, spec, arch."""
    shutil.copytree(folder, target)
    payload = json.loads((target / ADAPTER_CONFIG).read_text())
    payload["backbone"] = {k: payload["backbone"][k] for k in ("identity", "spec", "arch")}
    (target / ADAPTER_CONFIG).write_text(json.dumps(payload, indent=2))
    return target


def _refusal(folder, backbone) -> str:
    with pytest.raises(RlptuneError) as info:
        load_adapter(folder, backbone)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- one backbone however it is spelled ------------------------------------------------------------------------


def test_the_same_weights_spelled_five_ways_are_one_backbone(spellings, micro2):
    labels = {name: b.identity.split("@")[0] for name, b in spellings.items()}
    assert len(set(labels.values())) == 5, labels  # the labels keep each spelling's name...
    for name, backbone in spellings.items():  # ...but weights and structure are one
        assert backbone.weights == micro2.weights, name
        assert backbone.structure == micro2.structure, name
        assert backbone.identity.split("@")[1] == micro2.identity.split("@")[1] == f"sha256:{micro2.weights[7:23]}"
    # open_clip's CLIP already has the canonical names: its hash (and every feature-cache key) is unchanged
    assert micro2.weights == "sha256:" + weights_hash(micro2.model)
    assert micro2.structure["text"]["activation"] == micro2.structure["vision"]["activation"] == "quick_gelu"
    assert micro2.structure["vision"]["heads"] == micro2.structure["text"]["heads"] == 1


def test_a_trained_adapter_gives_the_same_logits_on_every_spelling(spellings, trained, images):
    payload = json.loads((trained / ADAPTER_CONFIG).read_text())
    assert payload["backbone"]["weights"] == spellings["micro-v2"].weights
    assert payload["backbone"]["structure"] == spellings["micro-v2"].structure
    reference = _logits(load_adapter(trained, spellings["micro-v2"]), images)
    for name, backbone in spellings.items():
        logits = _logits(load_adapter(trained, backbone), images)
        assert (logits - reference).abs().max() < 1e-4, name


@pytest.mark.parametrize("method", ["maple", "clip_lora"])
def test_deep_prompts_and_lora_move_between_open_clip_and_hugging_face(spellings, images, tmp_path, method):
    """Both ways: trained on micro-v2, served from the HF folder, and trained on the HF folder, served from micro-v2
    (CLIP-LoRA names tensors after modules, which are matched block by block)."""
    for source, target in (("micro-v2", "hf folder"), ("hf folder", "micro-v2")):
        trained, config = _perturbed(method, spellings[source], seed=1)
        folder = save_adapter(tmp_path / f"{method}-{source}", trained, config)
        moved = load_adapter(folder, spellings[target])
        assert (_logits(moved, images) - _logits(trained, images)).abs().max() < 1e-4, (source, target)


def test_attention_blocks_are_found_under_either_librarys_names():
    assert attention_block("transformer.resblocks.3.attn") == ("text", 3)
    assert attention_block("text.transformer.resblocks.0.attn") == ("text", 0)
    assert attention_block("visual.transformer.resblocks.11.attn") == ("vision", 11)
    assert attention_block("text_model.encoder.layers.2.self_attn") == ("text", 2)
    assert attention_block("vision_model.encoder.layers.5.self_attn") == ("vision", 5)
    assert attention_block("visual.attnpool") is None and attention_block("transformer.resblocks.1.mlp") is None


def test_custom_text_layout_hashes_like_clip(tmp_path):
    """open_clip's CustomTextCLIP keeps the text tower under ``text.``: the same tensors hash the same."""
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(TINY_ARCH))
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps({**TINY_ARCH, "custom_text": True}))
    clip = load_backbone(str(plain), seed=4)
    torch.save(clip.model.state_dict(), tmp_path / "weights.pt")
    as_custom = load_backbone(f"{custom}:{tmp_path / 'weights.pt'}")
    assert type(as_custom.model).__name__ == "CustomTextCLIP"
    assert as_custom.weights == clip.weights and as_custom.structure == clip.structure


# -- adapters written before the structure was recorded --------------------------------------------------------


def test_old_adapters_still_load_on_their_own_and_on_other_spellings(spellings, trained, images, tmp_path):
    old = _as_old_format(trained, tmp_path / "old")
    reference = _logits(load_adapter(trained, spellings["micro-v2"]), images)
    for name in ("micro-v2", "openai .pt", "hf folder"):  # the label says micro-v2: the others are read via its spec
        assert (_logits(load_adapter(old, spellings[name]), images) - reference).abs().max() < 1e-4, name


def test_an_old_adapter_trained_on_hugging_face_loads_on_open_clip(spellings, images, tmp_path):
    """Older rlptune hashed a CLIPModel under its own names; that label is recognised on every spelling."""
    hf = spellings["hf folder"]
    method, config = _perturbed("rlp", hf, seed=2)
    folder = save_adapter(tmp_path / "new", method, config)
    old = _as_old_format(folder, tmp_path / "old")
    payload = json.loads((old / ADAPTER_CONFIG).read_text())
    payload["backbone"]["identity"] = f"{hf.arch}@sha256:{weights_hash(hf.model)[:16]}"  # the old, library-named hash
    assert payload["backbone"]["identity"] != hf.identity
    (old / ADAPTER_CONFIG).write_text(json.dumps(payload))
    reference = _logits(method, images)
    for name in ("hf folder", "micro-v2"):
        assert (_logits(load_adapter(old, spellings[name]), images) - reference).abs().max() < 1e-4, name


def test_an_old_adapter_whose_structure_cannot_be_read_is_refused_saying_why(spellings, trained, tmp_path):
    old = _as_old_format(trained, tmp_path / "old")
    payload = json.loads((old / ADAPTER_CONFIG).read_text())
    payload["backbone"]["spec"] = str(tmp_path / "gone.pt")
    (old / ADAPTER_CONFIG).write_text(json.dumps(payload))
    assert load_adapter(old, spellings["micro-v2"]) is not None  # the same label: accepted as before
    message = _refusal(old, spellings["openai .pt"])
    assert "the weights are the same, but this adapter predates recorded structures" in message
    assert f"its recorded spec {tmp_path / 'gone.pt'} does not load here" in message


# -- refusals -----------------------------------------------------------------------------------------------------


def _arch_spec(tmp_path, name, **changes):
    cfg = micro2_config()
    for key, value in changes.items():
        if value is None:
            cfg.pop(key)
        elif isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return f"{path}:{MICRO2_WEIGHTS_PATH}"


def test_other_weights_or_another_structure_is_refused_naming_both_and_what_differs(
    micro2, trained, tmp_path, tiny_arch_path
):
    other = load_backbone(str(tiny_arch_path))
    message = _refusal(trained, other)
    assert (
        f"adapter was trained on backbone {micro2.identity}, but the loaded backbone is {other.identity}: the weights differ"
        in message
    )
    gelu = load_backbone(
        _arch_spec(tmp_path, "gelu", quick_gelu=None)
    )  # the same tensors, nn.GELU instead of QuickGELU
    assert gelu.weights == micro2.weights
    message = _refusal(trained, gelu)
    assert f"trained on backbone {micro2.identity}, but the loaded backbone is {gelu.identity}" in message
    assert (
        "the structure differs: text.activation quick_gelu vs gelu; vision.activation quick_gelu vs gelu (recorded vs loaded)"
        in message
    )
    heads = load_backbone(_arch_spec(tmp_path, "heads", text_cfg={"heads": 2}))  # the same tensors, two text heads
    assert heads.weights == micro2.weights
    assert "the structure differs: text.heads 1 vs 2 (recorded vs loaded)" in _refusal(trained, heads)


def test_hand_edited_backbone_records_are_one_line(micro2, trained, tmp_path):
    def edited(name, change):
        folder = shutil.copytree(trained, tmp_path / name)
        payload = json.loads((folder / ADAPTER_CONFIG).read_text())
        change(payload["backbone"])
        (folder / ADAPTER_CONFIG).write_text(json.dumps(payload))
        return _refusal(folder, micro2)

    assert "field 'backbone.weights' must be 'sha256:' and 64 hex digits, got 'sha256:abc'" in edited(
        "w", lambda b: b.update(weights="sha256:abc")
    )
    assert "field 'backbone.structure' must be an object" in edited("s", lambda b: b.update(structure=[1]))
    assert "field 'backbone.weights'" in edited("nw", lambda b: b.pop("weights"))
    label = "ViT-B-16@sha256:0123456789abcdef"
    message = edited("label", lambda b: b.update(identity=label))
    assert (
        f"adapter was trained on backbone {label}, but the loaded backbone is {micro2.identity}: the weights differ"
        in message
    )
    other_weights = "sha256:" + "0" * 64
    message = edited("other", lambda b: b.update(weights=other_weights, identity="micro-v2@sha256:" + "0" * 16))
    assert f"the weights differ (sha256:{'0' * 16} vs {micro2.weights[:23]})" in message


def test_the_server_accepts_another_spelling_and_refuses_another_backbone(spellings, trained, tmp_path, tiny_arch_path):
    root = tmp_path / "served"
    shutil.copytree(trained, root / "micro-rlp")
    method, config = _perturbed("rlp", load_backbone(str(tiny_arch_path)))
    save_adapter(root / "tiny-rlp", method, config)
    registry = TaskRegistry(root, spellings["hf folder"], 1 << 20)
    skipped = registry.scan()
    assert [i.name for i in registry.infos()] == ["micro-rlp"]
    assert len(skipped) == 1 and "tiny-rlp: adapter was trained on backbone tiny-clip@" in skipped[0]
    assert f"but this server runs {spellings['hf folder'].identity}: the weights differ" in skipped[0]


# -- the Hugging Face export -----------------------------------------------------------------------------------


def test_export_refuses_what_a_clip_model_cannot_hold_and_never_overwrites(micro2, exports, tmp_path):
    _, hf = exports
    before = sorted(p.name for p in hf.iterdir())
    with pytest.raises(RlptuneError, match="already exists; export_hf_clip writes a new folder and never overwrites"):
        export_hf_clip(micro2, hf)
    assert sorted(p.name for p in hf.iterdir()) == before
    with pytest.raises(RlptuneError) as info:
        export_hf_clip(load_backbone("micro"), tmp_path / "resnet")  # a ModifiedResNet image tower
    assert "backbone micro: its vision tower cannot be written as a Hugging Face CLIPModel" in str(info.value)
    assert "\n" not in str(info.value) and not (tmp_path / "resnet").exists() and list(tmp_path.iterdir()) == []


# -- properties ----------------------------------------------------------------------------------------------------


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@settings(max_examples=40, deadline=None, derandomize=True)
@given(data=st.data())
def test_any_one_structure_field_changed_is_refused_naming_it(micro2, data):
    """Whatever leaf of the recorded structure differs (a head count, a norm, the pooling...), the record is not
    the loaded backbone, and the reason names that field; the unchanged record matches."""
    record = json.loads(json.dumps(backbone_record(micro2)))
    assert backbone_mismatch(record, micro2, "adapter.json") is None
    path, value = data.draw(st.sampled_from(list(_leaves(micro2.structure))))
    new = data.draw(
        st.one_of(
            st.integers(-3, 4096),
            st.booleans(),
            st.none(),
            st.text(max_size=8),
            st.lists(st.integers(0, 9), max_size=2),
        )
    )
    if new == value and type(new) is type(value):
        return
    node = record["structure"]
    *parents, leaf = path.split(".")
    for key in parents:
        node = node[key]
    node[leaf] = new
    reason = backbone_mismatch(record, micro2, "adapter.json")
    assert reason is not None and reason.startswith("the weights are the same but the structure differs: ")
    assert f"{path} " in reason and "\n" not in reason


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    text_layers=st.integers(1, 3), vision_layers=st.integers(1, 3), width=st.integers(1, 4), seed=st.integers(0, 2**16)
)
def test_the_canonical_naming_round_trips_and_keeps_the_hash(text_layers, vision_layers, width, seed):
    """OpenAI names -> Hugging Face names -> OpenAI names gives the same tensors bit for bit, so the canonical hash
    of a CLIPModel is the hash of the open_clip model holding the same numbers."""
    g = torch.Generator().manual_seed(seed)
    d, e = 4 * width, 3

    def t(*shape):
        return torch.randn(shape, generator=g)

    state = {
        "logit_scale": t(),
        "token_embedding.weight": t(7, d),
        "positional_embedding": t(5, d),
        "ln_final.weight": t(d),
        "ln_final.bias": t(d),
        "text_projection": t(d, e),
        "visual.class_embedding": t(d),
        "visual.conv1.weight": t(d, 3, 2, 2),
        "visual.positional_embedding": t(5, d),
        "visual.ln_pre.weight": t(d),
        "visual.ln_pre.bias": t(d),
        "visual.ln_post.weight": t(d),
        "visual.ln_post.bias": t(d),
        "visual.proj": t(d, e),
    }
    for prefix, layers in (("transformer.resblocks.", text_layers), ("visual.transformer.resblocks.", vision_layers)):
        for i in range(layers):
            block = {
                "attn.in_proj_weight": t(3 * d, d),
                "attn.in_proj_bias": t(3 * d),
                "attn.out_proj.weight": t(d, d),
                "attn.out_proj.bias": t(d),
                "ln_1.weight": t(d),
                "ln_1.bias": t(d),
                "ln_2.weight": t(d),
                "ln_2.bias": t(d),
                "mlp.c_fc.weight": t(2 * d, d),
                "mlp.c_fc.bias": t(2 * d),
                "mlp.c_proj.weight": t(d, 2 * d),
                "mlp.c_proj.bias": t(d),
            }
            state.update({f"{prefix}{i}.{k}": v for k, v in block.items()})
    hf = openai_to_hf_state(state, text_layers, vision_layers)
    assert not set(hf) & set(state) - {"logit_scale"}
    back = hf_to_openai_state(hf, text_layers, vision_layers)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert hash_state(back) == hash_state(state) != hash_state(hf)
