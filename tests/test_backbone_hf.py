"""The Hugging Face CLIPModel backbone (hf:PATH): rlptune's own text and image paths reproduce get_text_features /
get_image_features, every method runs on it through the interface, and CLIP-LoRA writes a genuine peft adapter.

Models are tiny random CLIPModels built from a CLIPConfig and written with save_pretrained (no download); the
tokenizer is OpenAI CLIP's vocabulary written from open_clip's bundled BPE merges."""

from __future__ import annotations

import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

from rlptune.backbones import load_backbone, weights_hash, write_clip_tokenizer_files  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.errors import RlptuneError  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.text import PromptedClassText, text_embeddings  # noqa: E402

NAMES = ["cat", "golden retriever", "sea anemone", "tv"]  # 1 or 2 BPE tokens: EOT at different positions

pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_clip_config(eos_token_id: int = 49407, vision_layers: int = 3) -> "transformers.CLIPConfig":
    text = dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=eos_token_id,
        pad_token_id=49407,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)


_TOKENIZER_FILES: list = []  # written once per session (about a second), copied into every model folder


def save_tiny_clip(folder, eos_token_id: int = 49407, seed: int = 0, tokenizer: bool = True):
    torch.manual_seed(seed)
    model = transformers.CLIPModel(tiny_clip_config(eos_token_id)).eval()
    model.save_pretrained(str(folder))
    if tokenizer:
        if not _TOKENIZER_FILES:
            _TOKENIZER_FILES.append(write_clip_tokenizer_files(folder.parent / f"{folder.name}-tokenizer"))
        for path in _TOKENIZER_FILES[0].iterdir():
            shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("hf") / "tiny-clip")


@pytest.fixture(scope="module")
def hf(hf_folder):
    return load_backbone(f"hf:{hf_folder}")


@pytest.fixture(scope="module")
def reference(hf_folder):
    model = transformers.CLIPModel.from_pretrained(str(hf_folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    return model, tokenizer


def _features(output):
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _reference_text(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return _features(model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))


def _images(count=3, seed=0):
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _build(backbone, name, options=None, classes=NAMES, template=None, **sections):
    overrides = {"method": {"name": name, "options": options or {}}}
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return build_method(resolve_config(None, overrides), backbone, classes, template)


# -- exactness ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eos_token_id", [49407, 2], ids=["eos-id-pooling", "legacy-argmax-pooling"])
def test_prompted_text_reproduces_get_text_features(tmp_path, eos_token_id):
    folder = save_tiny_clip(tmp_path / "clip", eos_token_id=eos_token_id, seed=eos_token_id)
    backbone = load_backbone(f"hf:{folder}")
    model = transformers.CLIPModel.from_pretrained(str(folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    texts = [f"a photo of a {n}." for n in NAMES]
    expected = _reference_text(model, tokenizer, texts)
    text = PromptedClassText(backbone, NAMES, 4)
    with torch.no_grad():
        ours = text(text_embeddings(backbone, "a photo of a"))
        ids_path = backbone.encode_text_ids(backbone.tokenize(texts), normalize=False)
    assert (ours - expected).abs().max() < 1e-5
    assert (ids_path - expected).abs().max() < 1e-5
    # the pooled token really differs per class (EOT at different positions), so pooling is tested
    assert len(set(text.eot.tolist())) >= 2


def test_images_reproduce_get_image_features(hf, reference):
    model, _ = reference
    images = _images()
    with torch.no_grad():
        expected = _features(model.get_image_features(pixel_values=images))
        tower = hf.vision
        assert (tower.encode(images) - expected).abs().max() < 1e-5
        assert (hf.encode_image(images, normalize=False) - expected).abs().max() < 1e-5
        assert torch.equal(tower.embed(images), tower.pre_norm(tower.embed_tokens(images)))
        assert (tower.encode(images, lambda i, x: x) - expected).abs().max() < 1e-5
        seen = []
        tower.encode(images, lambda i, x: seen.append(x.shape[1]) or (torch.cat([x, x[:, :2]], 1) if i == 0 else x))
    assert seen == [17, 19, 19] and tower.num_layers == 3 and tower.width == 32
    assert hf.text.num_layers == 2 and hf.text.width == 32 and hf.text.context_length == 77
    assert torch.allclose(hf.logit_scale, model.logit_scale.exp())


def test_text_hook_sees_every_layer_and_changes_the_result(hf):
    text = PromptedClassText(hf, NAMES, 4)
    embeddings = text.assemble(text_embeddings(hf, "a photo of a"))
    seen = []
    with torch.no_grad():
        plain = hf.text.encode_embeddings(embeddings, text.eot)
        same = hf.text.encode_embeddings(embeddings, text.eot, before_block=lambda i, x: seen.append(i) or x)
        edited = hf.text.encode_embeddings(
            embeddings, text.eot, before_block=lambda i, x: x + (i == 1) * torch.linspace(0, 1, x.shape[-1])
        )
    assert seen == [0, 1] and torch.equal(plain, same) and (plain - edited).abs().max() > 1e-3


def test_causal_mask_truncation_is_exact(hf):
    text = PromptedClassText(hf, NAMES, 4)
    embeddings = text.assemble(text_embeddings(hf, "a photo of a"))
    with torch.no_grad():
        short = hf.text.encode_embeddings(embeddings, text.eot, truncate=True)
        full = hf.text.encode_embeddings(embeddings, text.eot, truncate=False)
    assert (short - full).abs().max() < 1e-5


# -- spec, identity, tokenizer ----------------------------------------------------------------------------------


def test_spec_is_resolvable_and_identity_follows_the_weights(hf, hf_folder, tmp_path, monkeypatch):
    assert hf.spec == f"hf:{hf_folder.resolve()}" and hf.identity.startswith("hf-clip-vit-p8-32px-w32x3-t32x2@sha256:")
    moved = shutil.copytree(hf_folder, tmp_path / "elsewhere")
    monkeypatch.chdir(tmp_path)
    relative = load_backbone("hf:elsewhere")
    assert relative.spec == f"hf:{moved.resolve()}" and relative.identity == hf.identity
    other = load_backbone(f"hf:{save_tiny_clip(tmp_path / 'other', seed=7)}")
    assert other.identity != hf.identity


def test_folder_without_tokenizer_files_uses_openai_bpe(hf, tmp_path):
    folder = save_tiny_clip(tmp_path / "no-tok", tokenizer=False)
    bare = load_backbone(f"hf:{folder}")
    texts = [f"a photo of a {n}." for n in NAMES]
    with torch.no_grad():
        assert (bare.encode_text_ids(bare.tokenize(texts)) - hf.encode_text_ids(hf.tokenize(texts))).abs().max() < 1e-6
    assert bare.tokenizer.encode("golden retriever") == hf.tokenizer.encode("golden retriever")


@pytest.mark.parametrize("spec,fragment", [("hf:/nonexistent/clip", "not found"), ("hf:", "expected hf:PATH")])
def test_bad_hf_specs_are_one_line_errors(spec, fragment):
    with pytest.raises(RlptuneError) as info:
        load_backbone(spec)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_a_folder_that_is_not_a_clip_model_is_one_line(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{}")
    with pytest.raises(RlptuneError) as info:
        load_backbone(f"hf:{tmp_path / 'junk'}")
    assert "could not load the CLIPModel" in str(info.value) and "\n" not in str(info.value)


# -- every method runs on it ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,options,sections",
    [
        ("coop", {}, {"prompt": {"ctx_init": "a photo of a"}}),
        ("rlp", {}, {}),
        ("cocoop", {}, {}),
        ("kgcoop", {}, {}),
        ("deep_text", {"text_depth": 2}, {}),
        ("deep_vision", {"vision_depth": 2}, {}),
        ("ivlp", {"text_depth": 2, "vision_depth": 2}, {}),
        ("maple", {"depth": 2}, {}),
        ("clip_lora", {}, {}),
    ],
)
def test_every_method_trains_a_step_on_the_hf_backbone(hf, name, options, sections):
    method = _build(hf, name, options, template="a photo of a {}.", **sections)
    images = _images(4)
    params = [p for p in method.parameters() if p.requires_grad]
    assert params, name
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=1.0)
    method.train()
    feats = method.encode_images(images) if method.needs_image_tower else hf.encode_image(images)
    logits = hf.logit_scale * feats @ method.class_features().t()
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    assert logits.shape == (4, len(NAMES)) and torch.isfinite(loss)
    assert any((p.detach() - b).abs().max() > 0 for p, b in zip(params, before))


def test_coop_with_the_template_context_is_zero_shot(hf):
    method = _build(hf, "coop", prompt={"ctx_init": "a photo of a"})
    with torch.no_grad():
        zero_shot = hf.encode_text_ids(hf.tokenize([f"a photo of a {n}." for n in NAMES]))
        assert (method.class_features() - zero_shot).abs().max() < 1e-5


# -- CLIP-LoRA: a genuine peft adapter ---------------------------------------------------------------------------


def _perturb_lora(method, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in method.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)


def test_clip_lora_saves_a_peft_adapter_that_peft_loads_with_the_same_logits(hf, hf_folder, tmp_path):
    peft = pytest.importorskip("peft")
    digest = weights_hash(hf.model)
    method = _build(hf, "clip_lora")
    assert method.lora_config.use_rslora and method.options.template == "a photo of a {}."
    _perturb_lora(method)
    method.eval()
    images = _images(3)
    with torch.no_grad():
        image_feats, text_feats = method.encode_images(images), method.class_features()
    ours = hf.logit_scale * image_feats @ text_feats.t()
    assert weights_hash(hf.model) == digest  # the loaded backbone is untouched

    out = method.export_adapter_files(tmp_path / "peft")
    assert out is not None and {p.name for p in out.iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    base = transformers.CLIPModel.from_pretrained(str(hf_folder)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_folder))
    batch = tokenizer([f"a photo of a {n}." for n in NAMES], padding=True, return_tensors="pt")

    def logits(model):
        with torch.no_grad():
            text = _features(
                model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            )
            image = _features(model.get_image_features(pixel_values=images))
            text, image = (torch.nn.functional.normalize(t, dim=-1) for t in (text, image))
            return model.logit_scale.exp() * image @ text.t()

    plain = logits(base)  # before peft wraps (and modifies) the base model
    loaded = peft.PeftModel.from_pretrained(base, str(out)).eval()
    theirs = logits(loaded)
    print(
        f"peft round trip: max |logit diff| = {(ours - theirs).abs().max().item():.2e}; adapter moves logits by {(ours - plain).abs().max().item():.3f}"
    )
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - plain).abs().max() > 1e-2  # the adapter changes the logits: the comparison above is not vacuous


def test_clip_lora_scale_is_alpha_over_sqrt_r(hf):
    from peft.tuners.lora import Linear as LoraLinear

    rs = _build(hf, "clip_lora", {"r": 4, "alpha": 2.0})
    plain = _build(hf, "clip_lora", {"r": 4, "alpha": 2.0, "rslora": False})
    scale = {m.scaling["default"] for m in rs.clip.modules() if isinstance(m, LoraLinear)}
    assert scale == {1.0}  # 2 / sqrt(4)
    assert {m.scaling["default"] for m in plain.clip.modules() if isinstance(m, LoraLinear)} == {0.5}
    adapted = {n.rsplit(".lora_", 1)[0] for n, p in rs.named_parameters() if p.requires_grad}
    assert len(adapted) == 3 * (2 + 3) and all(n.endswith(("q_proj", "k_proj", "v_proj")) for n in adapted)


def test_clip_lora_on_open_clip_exports_nothing(tmp_path, tiny_arch_path):
    backbone = load_backbone(str(tiny_arch_path))
    method = _build(backbone, "clip_lora", classes=["a", "b"])
    assert method.export_adapter_files(tmp_path / "peft") is None and not (tmp_path / "peft").exists()


def test_a_clip_lora_adapter_travels_and_carries_its_peft_export(hf, hf_folder, tmp_path, monkeypatch):
    peft = pytest.importorskip("peft")
    from rlptune.engine.adapter import load_adapter, read_adapter_config, save_adapter

    config = resolve_config(None, {"method": {"name": "clip_lora"}})
    method = build_method(config, hf, NAMES, None)
    _perturb_lora(method, seed=1)
    method.eval()
    images = _images(2)
    with torch.no_grad():
        ours = hf.logit_scale * method.encode_images(images) @ method.class_features().t()
    folder = save_adapter(tmp_path / "adapter", method, config)
    recorded = read_adapter_config(folder)["backbone"]
    assert recorded["spec"] == f"hf:{hf_folder.resolve()}" and recorded["identity"] == hf.identity
    monkeypatch.chdir(tmp_path.parent)  # another working directory: the recorded spec still loads the backbone
    loaded = load_adapter(folder, device="cpu")
    with torch.no_grad():
        again = loaded.backbone.logit_scale * loaded.encode_images(images) @ loaded.class_features().t()
    assert (ours - again).abs().max() < 1e-5
    base = transformers.CLIPModel.from_pretrained(str(hf_folder)).eval()
    # the peft export sits at the top of the adapter folder, next to rlptune's own files (different names)
    assert {"adapter_config.json", "adapter_model.safetensors", "rlptune_adapter.json"} <= {
        p.name for p in folder.iterdir()
    }
    wrapped = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        image = torch.nn.functional.normalize(_features(wrapped.get_image_features(pixel_values=images)), dim=-1)
    assert (image - method.encode_images(images)).abs().max() < 1e-5


def test_image_settings_come_from_the_folders_preprocessor_config(tmp_path):
    folder = save_tiny_clip(tmp_path / "with-processor", seed=3)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.25, 0.3],
    ).save_pretrained(str(folder))
    backbone = load_backbone(f"hf:{folder}")
    assert backbone.image_size == 32
    assert backbone.image_mean == pytest.approx((0.5, 0.4, 0.3)) and backbone.image_std == pytest.approx(
        (0.2, 0.25, 0.3)
    )
