"""Hugging Face ``transformers.CLIPModel`` seen through the backbone interface (``hf:PATH_OR_NAME``).

``PATH_OR_NAME`` is a folder written by ``CLIPModel.save_pretrained`` (or any local snapshot), or a hub name such
as ``openai/clip-vit-base-patch16``, read from the local cache first and from the hub when the network works.
The towers run the model's own modules and weights: the text tower adds ``position_embedding`` to the (prompted)
token embeddings, runs every ``CLIPEncoderLayer`` under the causal mask, applies ``final_layer_norm``, pools where
``CLIPTextModel`` pools (the first ``eos_token_id``, or the argmax token id for configs with the legacy
``eos_token_id == 2``) and applies ``text_projection``; the image tower is ``embeddings`` → ``pre_layrnorm`` →
layers → class token → ``post_layernorm`` → ``visual_projection``. So a context equal to "a photo of a"
reproduces ``get_text_features("a photo of a {name}.")`` and images reproduce ``get_image_features`` (tested).

The attention modules already have separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` linears, which is
exactly what peft targets, so a CLIP-LoRA adapter trained on this backbone is a genuine peft adapter of the
``CLIPModel``. ``transformers`` is an optional dependency, imported only when an ``hf:`` spec is loaded.
"""

from __future__ import annotations

import gzip

import functools
import inspect
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import RlptuneError
from .base import Backbone, BackboneFamily, BlockHook, TextTower, VisionTower
from .structure import activation_name, merge_blocks, module_fingerprint, norm_name, pooling_name, structure_differences
from .loader import OPENAI_MEAN, OPENAI_STD, BackboneRequest, absolute, finish_backbone, register_backbone_loader

HF_PREFIX = "hf:"
LEGACY_EOS_ID = 2  # CLIP configs from before transformers PR #24773: pool at the argmax token id


@functools.lru_cache(maxsize=None)
def _takes_separate_causal_mask(layer_class: type) -> bool:
    return "causal_attention_mask" in inspect.signature(layer_class.forward).parameters


def _call_layer(layer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One ``CLIPEncoderLayer`` (transformers 4.x takes the causal mask separately and returns a tuple)."""
    if _takes_separate_causal_mask(type(layer)):
        out = layer(x, None, mask)
    else:
        out = layer(x, mask)
    return out[0] if isinstance(out, tuple) else out


def _features(output) -> torch.Tensor:
    """``get_text_features``/``get_image_features`` return a tensor (transformers 4) or an output object (5)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class HFTextTower(TextTower):
    """``CLIPModel.text_model`` + ``text_projection`` driven from token embeddings."""

    def __init__(self, model: nn.Module) -> None:
        text = getattr(model, "text_model", None)
        if text is None or not hasattr(text, "embeddings") or not hasattr(model, "text_projection"):
            raise RlptuneError(
                f"hf backbone {type(model).__name__} has no text_model/text_projection: expected a transformers CLIPModel"
            )
        self._model = model
        self._text = text
        self.eos_id = pooling_token_id(model)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._text.embeddings.token_embedding

    @property
    def positional_embedding(self) -> torch.Tensor:
        return self._text.embeddings.position_embedding.weight

    @property
    def ln_final(self) -> nn.Module:
        return self._text.final_layer_norm

    @property
    def transformer(self) -> nn.Module:
        """The ``CLIPEncoder`` (it has no ``resblocks``: the open_clip-only shared-prefix path is not taken)."""
        return self._text.encoder

    @property
    def num_layers(self) -> int:
        return len(self._text.encoder.layers)

    def eot_positions(self, token_ids: torch.Tensor) -> torch.Tensor:
        if self.eos_id == LEGACY_EOS_ID:
            return token_ids.int().argmax(dim=-1)
        return (token_ids.int() == self.eos_id).int().argmax(dim=-1)

    def causal_mask(self, length: int) -> torch.Tensor | None:
        return torch.full((length, length), float("-inf"), device=self.device).triu(1)

    def run_blocks(self, x: torch.Tensor, length: int, before_block: BlockHook | None = None) -> torch.Tensor:
        cast = self.cast_dtype
        x = x[:, :length].to(cast) + self.positional_embedding[:length].to(cast)
        # CLIPTextModel's additive causal mask: dtype minimum above the diagonal, (1, 1, L, L)
        mask = torch.full((length, length), torch.finfo(x.dtype).min, device=x.device, dtype=x.dtype).triu(1)[
            None, None
        ]
        for i, layer in enumerate(self._text.encoder.layers):
            if before_block is not None:
                x = before_block(i, x)
            x = _call_layer(layer, x, mask)
        return x

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        return self._model.text_projection(pooled)

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self._text.encoder.layers]


def pooling_token_id(model: nn.Module, where: str = "config.json") -> int:
    """The ``eos_token_id`` ``CLIPTextTransformer`` pools at (2: the legacy argmax of the token ids), checked.

    transformers compares the ids with it as they are: ``null`` (or a string) makes ``get_text_features`` fail
    with an ``AttributeError``, and an id outside the vocabulary never matches, so every text would silently pool
    its first token. Both are one line here, naming the setting and the fix.
    """
    config = model.config.text_config
    eos = getattr(getattr(model, "text_model", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(config, "eos_token_id", None)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if isinstance(eos, bool) or not isinstance(eos, int) or not 0 <= eos < max(vocab, LEGACY_EOS_ID + 1):
        shown = "null" if eos is None else repr(eos)
        raise RlptuneError(
            f"{where}: text_config.eos_token_id is {shown}, expected the id of the end-of-text token below the "
            f"vocabulary size {vocab} (49407 in OpenAI CLIP's), or 2 for the legacy pooling at the largest token id; "
            f"transformers' CLIPTextModel cannot pool text without it"
        )
    return int(eos)


class HFVisionTower(VisionTower):
    """``CLIPModel.vision_model`` + ``visual_projection`` run layer by layer."""

    def __init__(self, model: nn.Module) -> None:
        vision = getattr(model, "vision_model", None)
        if vision is None or not hasattr(model, "visual_projection"):
            raise RlptuneError(
                f"hf backbone {type(model).__name__} has no vision_model/visual_projection: expected a transformers CLIPModel"
            )
        self._model = model
        self._vision = vision

    @property
    def module(self) -> nn.Module:
        return self._vision

    @property
    def width(self) -> int:
        return int(self._vision.embeddings.class_embedding.shape[-1])

    @property
    def num_layers(self) -> int:
        return len(self._vision.encoder.layers)

    @property
    def device(self) -> torch.device:
        return self._vision.embeddings.class_embedding.device

    def embed_tokens(self, images: torch.Tensor) -> torch.Tensor:
        return self._vision.embeddings(images.to(self.device))

    def pre_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self._vision.pre_layrnorm(x)

    def run_blocks(self, x: torch.Tensor, before_block: BlockHook | None = None) -> torch.Tensor:
        for i, layer in enumerate(self._vision.encoder.layers):
            if before_block is not None:
                x = before_block(i, x)
            x = _call_layer(layer, x, None)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        return self._model.visual_projection(self._vision.post_layernorm(x[:, 0]))

    def attention_modules(self) -> list[nn.Module]:
        return [layer.self_attn for layer in self._vision.encoder.layers]


class HFFamily(BackboneFamily):
    name = "hf"

    def text_tower(self, model: nn.Module) -> TextTower:
        return HFTextTower(model)

    def vision_tower(self, model: nn.Module) -> VisionTower:
        return HFVisionTower(model)

    def encode_text(self, model: nn.Module, token_ids: torch.Tensor) -> torch.Tensor:
        return _features(model.get_text_features(input_ids=token_ids))

    def encode_image(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        return _features(model.get_image_features(pixel_values=images))

    def prepare_for_adapters(self, model: nn.Module, towers: Sequence[str]) -> None:
        """Nothing to split: ``CLIPAttention`` already has q/k/v/out ``nn.Linear`` projections."""

    # -- identity ---------------------------------------------------------------------------------------------
    def structure(self, model: nn.Module) -> dict[str, Any]:
        """The towers' canonical description (:mod:`.identity`), read from the ``CLIPModel``'s modules: the
        same fields, named the same way, as open_clip's, so the same CLIP in both libraries describes equal."""
        text, vision = HFTextTower(model), HFVisionTower(model)
        emb = text._text.embeddings
        vocab = int(emb.token_embedding.num_embeddings)
        patch = vision._vision.embeddings.patch_embedding
        size = int(getattr(vision._vision.embeddings, "image_size", model.config.vision_config.image_size))
        vision_out = {
            "tower": "vit",
            "image_size": [size, size],
            "patch_size": [int(n) for n in patch.kernel_size],
            "width": vision.width,
            **merge_blocks([_layer_structure(layer) for layer in vision._vision.encoder.layers]),
            "pre_norm": norm_name(vision._vision.pre_layrnorm),
            "pool": "cls",
            "post_norm": norm_name(vision._vision.post_layernorm),
            "projection": [int(model.visual_projection.in_features), int(model.visual_projection.out_features)],
        }
        if tuple(patch.stride) != tuple(patch.kernel_size) or patch.padding not in ((0, 0), 0, "valid"):
            vision_out["patch_stride"] = [int(n) for n in patch.stride]
        return {
            "text": {
                "tower": "transformer",
                "vocab_size": vocab,
                "context_length": int(emb.position_embedding.num_embeddings),
                "width": int(emb.token_embedding.embedding_dim),
                **merge_blocks([_layer_structure(layer) for layer in text._text.encoder.layers]),
                "causal": True,
                "pool": pooling_name("argmax" if text.eos_id == LEGACY_EOS_ID else "eos", int(text.eos_id), vocab),
                "final_norm": norm_name(text._text.final_layer_norm),
                "projection": [int(model.text_projection.in_features), int(model.text_projection.out_features)],
            },
            "vision": vision_out,
        }

    def from_canonical_state(
        self, state: dict[str, torch.Tensor], structure: dict[str, Any]
    ) -> dict[str, torch.Tensor] | None:
        try:
            return openai_to_hf_state(state, int(structure["text"]["layers"]), int(structure["vision"]["layers"]))
        except (KeyError, TypeError, ValueError):
            return None

    _ATTENTION = re.compile(r"^(?P<tower>text|vision)_model\.encoder\.layers\.(?P<i>\d+)\.self_attn$")

    def attention_block(self, name: str) -> tuple[str, int] | None:
        found = self._ATTENTION.match(name)
        return None if found is None else (found["tower"], int(found["i"]))

    def canonical_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The ``CLIPModel``'s tensors under OpenAI's names and layout (q/k/v concatenated, projections
        transposed); a model with tensors this mapping does not know keeps its own names."""
        state = model.state_dict()
        try:
            return hf_to_openai_state(
                state, len(model.text_model.encoder.layers), len(model.vision_model.encoder.layers)
            )
        except KeyError:
            return state


HF = HFFamily()


def _layer_structure(layer: nn.Module) -> dict[str, Any]:
    """One ``CLIPEncoderLayer`` described as :func:`rlptune.backbones.openclip._block_structure` describes open_clip's."""
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if type(layer).__name__ != "CLIPEncoderLayer" or not all(
        hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "out_proj")
    ):
        return {"block": module_fingerprint(layer)}
    a, b = norm_name(layer.layer_norm1), norm_name(layer.layer_norm2)
    return {
        "heads": int(attn.num_heads),
        "mlp_width": int(mlp.fc1.out_features),
        "activation": activation_name(mlp.activation_fn),
        "norm": a if a == b else [a, b],
    }


# OpenAI name <-> Hugging Face name, per block and for the towers' ends (projections and q/k/v are special-cased)
_BLOCK_NAMES = {
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_END_NAMES = {
    "logit_scale": "logit_scale",
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_TOWERS = (
    ("transformer.resblocks.", "text_model.encoder.layers."),
    ("visual.transformer.resblocks.", "vision_model.encoder.layers."),
)


def hf_to_openai_state(state: dict[str, torch.Tensor], text_layers: int, vision_layers: int) -> dict[str, torch.Tensor]:
    """A ``CLIPModel`` state dict under OpenAI CLIP's names (open_clip's ``CLIP``): q/k/v concatenated into
    ``in_proj_weight``/``in_proj_bias``, projections transposed. KeyError when a tensor has no OpenAI name."""
    rest = dict(state)
    out = {ours: rest.pop(theirs) for ours, theirs in _END_NAMES.items()}
    out["text_projection"] = rest.pop("text_projection.weight").t()
    out["visual.proj"] = rest.pop("visual_projection.weight").t()
    for (ours, theirs), layers in zip(_TOWERS, (text_layers, vision_layers)):
        for i in range(layers):
            src, dst = f"{theirs}{i}.", f"{ours}{i}."
            for kind in ("weight", "bias"):
                parts = [rest.pop(f"{src}self_attn.{p}_proj.{kind}", None) for p in "qkv"]
                if all(p is not None for p in parts):
                    out[f"{dst}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
                elif any(p is not None for p in parts):
                    raise KeyError(f"{src}self_attn: q/k/v {kind}s not all present")
            for name, hf_name in _BLOCK_NAMES.items():
                if f"{src}{hf_name}" in rest:
                    out[f"{dst}{name}"] = rest.pop(f"{src}{hf_name}")
    if rest:
        raise KeyError(sorted(rest)[0])
    return out


def openai_to_hf_state(state: dict[str, torch.Tensor], text_layers: int, vision_layers: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`hf_to_openai_state`: an OpenAI-layout state dict under ``CLIPModel``'s names."""
    rest = dict(state)
    out = {theirs: rest.pop(ours) for ours, theirs in _END_NAMES.items()}
    out["text_projection.weight"] = rest.pop("text_projection").t().contiguous()
    out["visual_projection.weight"] = rest.pop("visual.proj").t().contiguous()
    for (ours, theirs), layers in zip(_TOWERS, (text_layers, vision_layers)):
        for i in range(layers):
            src, dst = f"{ours}{i}.", f"{theirs}{i}."
            for kind in ("weight", "bias"):
                fused = rest.pop(f"{src}attn.in_proj_{kind}", None)
                if fused is not None:
                    for p, part in zip("qkv", fused.chunk(3, dim=0)):
                        out[f"{dst}self_attn.{p}_proj.{kind}"] = part.contiguous()
            for name, hf_name in _BLOCK_NAMES.items():
                if f"{src}{name}" in rest:
                    out[f"{dst}{hf_name}"] = rest.pop(f"{src}{name}")
    if rest:
        raise KeyError(sorted(rest)[0])
    return out


class HFTokenizer:
    """A transformers CLIP tokenizer with open_clip's calling convention: ``tok(texts) -> (B, context) ids``.

    ``encode(text)`` gives the text's BPE ids without start/end tokens, as open_clip's ``SimpleTokenizer.encode``
    (the prompted text path counts class-name tokens with it). Padding uses the tokenizer's pad token; pooling
    reads the first end-of-text token, so the features do not depend on the pad id.
    """

    def __init__(self, tokenizer, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = int(context_length or self.context_length)
        out = self.tokenizer(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return out["input_ids"].long()

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _transformers():
    try:
        import transformers
    except ImportError:
        raise RlptuneError("hf: backbones need the transformers library: pip install transformers") from None
    return transformers


def _pretrained(load, source: str, spec: str, what: str):
    """``load(source, local_files_only=...)``: a local folder as is; a hub name from the cache, else the hub."""
    attempts = [True] if os.path.isdir(source) else [True, False]  # a hub name: the cache first (offline), then the hub
    last: Exception = RuntimeError("not loaded")
    for local_only in attempts:
        try:
            return load(source, local_files_only=local_only)
        except Exception as exc:  # missing files, network errors of huggingface_hub, corrupt files
            last = exc
    first = (str(last).strip().splitlines() or [type(last).__name__])[0]
    raise RlptuneError(f"backbone {spec!r}: could not load the {what} ({first[:200]})")


def _image_settings(source: str, config) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """Crop size, mean and std from the folder's ``preprocessor_config.json`` (CLIP's defaults otherwise)."""
    size, mean, std = int(config.vision_config.image_size), OPENAI_MEAN, OPENAI_STD
    path = Path(source) / "preprocessor_config.json"
    if path.is_file():
        try:
            pre = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise RlptuneError(f"{path}: not valid JSON") from None
        mean = tuple(pre.get("image_mean") or mean)
        std = tuple(pre.get("image_std") or std)
        crop = pre.get("crop_size")
        if isinstance(crop, dict):
            crop = crop.get("height") or crop.get("shortest_edge")
        size = int(crop or size)
    return size, mean, std


def _tokenizer(source: str, spec: str, config) -> HFTokenizer:
    """The folder's tokenizer; without tokenizer files, transformers' CLIPTokenizer on OpenAI's vocabulary (from
    open_clip's bundled merges) when the model's vocabulary is OpenAI's (49,408 tokens)."""
    tf = _transformers()
    context = int(config.text_config.max_position_embeddings)
    folder = Path(source)
    # a folder without tokenizer files would silently get transformers' placeholder vocabulary: check first
    has_files = (folder / "tokenizer.json").is_file() or (
        (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()
    )
    try:
        if folder.is_dir() and not has_files:
            raise RlptuneError("no tokenizer files")
        return HFTokenizer(_pretrained(tf.AutoTokenizer.from_pretrained, source, spec, "tokenizer"), context)
    except RlptuneError:
        if int(config.text_config.vocab_size) != 49408:
            raise RlptuneError(
                f"backbone {spec!r}: no tokenizer files (tokenizer.json or vocab.json + merges.txt) and the vocabulary "
                f"({config.text_config.vocab_size}) is not OpenAI CLIP's; save the tokenizer with the model"
            ) from None
        return HFTokenizer(openai_clip_tokenizer(context), context)


def hf_arch(config) -> str:
    """A readable architecture name from the config (stable when the folder is renamed or moved)."""
    v, t = config.vision_config, config.text_config
    return f"hf-clip-vit-p{v.patch_size}-{v.image_size}px-w{v.hidden_size}x{v.num_hidden_layers}-t{t.hidden_size}x{t.num_hidden_layers}"


def load_hf_backbone(request: BackboneRequest) -> Backbone:
    """``hf:PATH_OR_NAME`` → a :class:`Backbone` over ``transformers.CLIPModel``."""
    spec = request.spec
    source = spec[len(HF_PREFIX) :].strip()
    if not source:
        raise RlptuneError("backbone 'hf:': expected hf:PATH (a save_pretrained folder) or hf:ORG/NAME (a hub model)")
    local = os.path.isdir(os.path.expanduser(source))
    if local:
        source = absolute(source)
    elif source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise RlptuneError(f"backbone {spec!r}: folder {source} not found")
    tf = _transformers()
    model = _pretrained(lambda s, **kw: tf.CLIPModel.from_pretrained(s, **kw), source, spec, "CLIPModel")
    if not isinstance(model, tf.CLIPModel):
        raise RlptuneError(f"backbone {spec!r}: expected a CLIPModel, got {type(model).__name__}")
    pooling_token_id(model, f"backbone {spec!r}: {Path(source) / 'config.json' if local else 'config.json'}")
    tokenizer = _tokenizer(source, spec, model.config)
    size, mean, std = (
        _image_settings(source, model.config)
        if local
        else (int(model.config.vision_config.image_size), OPENAI_MEAN, OPENAI_STD)
    )
    if not local:
        try:
            processor = tf.CLIPImageProcessor.from_pretrained(source, local_files_only=True)
            size = int(processor.crop_size["height"]) if isinstance(processor.crop_size, dict) else size
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except Exception:  # no processor in the cache: CLIP's defaults
            pass
    backbone = finish_backbone(
        model, tokenizer, hf_arch(model.config), f"{HF_PREFIX}{source}", size, mean, std, request, family=HF
    )
    backbone.info["hf_source"] = source
    return backbone


def _openai_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI CLIP's BPE vocabulary (49,408 symbols, transformers' names for the start/end tokens) and merges, from
    open_clip's bundled merges file."""
    import open_clip

    bpe = Path(open_clip.tokenizer.default_bpe())
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    pairs = [tuple(line.split()) for line in merges]
    byte_symbols = list(open_clip.tokenizer.bytes_to_unicode().values())
    symbols = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(p) for p in pairs]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, pairs


def _write_vocabulary(directory: Path, vocab: dict[str, int], pairs: list[tuple[str, str]]) -> tuple[Path, Path]:
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(p) for p in pairs) + "\n", encoding="utf-8"
    )
    return directory / "vocab.json", directory / "merges.txt"


def openai_clip_tokenizer(context_length: int = 77):
    """transformers' own ``CLIPTokenizer`` on OpenAI CLIP's vocabulary (built from open_clip's bundled merges).

    What a ``CLIPModel`` folder without tokenizer files uses: the same ids as a folder that has OpenAI's tokenizer
    files, including transformers' text clean-up (in transformers 5: NFC, whitespace collapsed, lower-cased; no ftfy
    and no HTML unescaping), which open_clip's own tokenizer does differently (``AT&amp;T``, curly quotes, the
    ``ﬁ`` ligature and full-width letters get other ids there).
    """
    tf = _transformers()
    vocab, pairs = _openai_vocabulary()
    try:  # transformers 5: built in memory from the vocabulary and the merge pairs
        return tf.CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=context_length)
    except TypeError:  # transformers 4: what AutoTokenizer makes of a folder holding the files
        with tempfile.TemporaryDirectory(prefix="rlptune-clip-tokenizer-") as tmp:
            return tf.AutoTokenizer.from_pretrained(str(write_clip_tokenizer_files(tmp, context_length)))


def write_clip_tokenizer_files(directory: str | Path, context_length: int = 77) -> Path:
    """Write OpenAI CLIP's tokenizer (``vocab.json``, ``merges.txt``, configs) into ``directory`` from open_clip's
    bundled BPE merges — the same 49,408-token vocabulary — so a ``CLIPModel`` folder gets a tokenizer offline."""

    tf = _transformers()
    vocab, pairs = _openai_vocabulary()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = _write_vocabulary(directory, vocab, pairs)
    tokenizer = tf.CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=context_length)
    tokenizer.save_pretrained(str(directory))
    return directory


_HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def _hf_tower_config(tower: dict[str, Any], name: str, spec: str) -> dict[str, Any]:
    """The ``CLIPTextConfig``/``CLIPVisionConfig`` fields of a tower's canonical structure; one line when the
    tower has a shape a ``CLIPModel`` cannot express."""
    norms = {tower.get("norm"), tower.get("final_norm" if name == "text" else "pre_norm")}
    if name == "vision":
        norms.add(tower.get("post_norm"))
    expected = "transformer" if name == "text" else "vit"
    problem = None
    if tower.get("tower") != expected or "blocks" in tower or "block" in tower:
        problem = f"a {tower.get('tower')} tower with these blocks (a CLIPModel has a plain {expected})"
    elif tower.get("activation") not in _HF_ACT:
        problem = f"activation {tower.get('activation')}"
    elif len(norms) != 1 or not all(isinstance(n, str) and n.startswith("layernorm(eps=") for n in norms):
        problem = f"norms {sorted(map(str, norms))} (a CLIPModel has one LayerNorm epsilon per tower)"
    elif tower.get("layer_scale") or tower.get("patch_stride") or tower.get("projection") is None:
        problem = "layer scale, an overlapping patch stride or no projection"
    elif name == "text" and (tower.get("pool") != "eot" or not tower.get("causal")):
        problem = f"pooling {tower.get('pool')} / causal {tower.get('causal')}"
    elif name == "vision" and (
        tower.get("pool") != "cls"
        or tower["image_size"][0] != tower["image_size"][1]
        or tower["patch_size"][0] != tower["patch_size"][1]
    ):
        problem = (
            f"pooling {tower.get('pool')}, image size {tower.get('image_size')}, patch size {tower.get('patch_size')}"
        )
    if problem is not None:
        raise RlptuneError(
            f"backbone {spec}: its {name} tower cannot be written as a Hugging Face CLIPModel ({problem})"
        )
    eps = float(next(iter(norms))[len("layernorm(eps=") : -1])
    common = {
        "hidden_size": tower["width"],
        "intermediate_size": tower["mlp_width"],
        "num_hidden_layers": tower["layers"],
        "num_attention_heads": tower["heads"],
        "hidden_act": _HF_ACT[tower["activation"]],
        "layer_norm_eps": eps,
        "projection_dim": tower["projection"][1],
    }
    if name == "text":
        vocab = tower["vocab_size"]
        return {
            **common,
            "vocab_size": vocab,
            "max_position_embeddings": tower["context_length"],
            "bos_token_id": vocab - 2,
            "eos_token_id": vocab - 1,
            "pad_token_id": vocab - 1,
        }
    return {**common, "image_size": tower["image_size"][0], "patch_size": tower["patch_size"][0], "num_channels": 3}


def export_hf_clip(backbone: Backbone, folder: str | Path) -> Path:
    """Write an open_clip backbone as a Hugging Face ``CLIPModel`` folder (``save_pretrained`` layout, tokenizer
    files, ``preprocessor_config.json``) that ``hf:FOLDER`` loads as the same backbone: the export is loaded back
    and its weights hash and structure checked before the folder appears, so an adapter trained on either loads
    on the other. The folder must not exist (never overwritten); a tower a ``CLIPModel`` cannot express (a
    ResNet, layer scale, GELU-free activations...) is one line naming it."""
    tf = _transformers()
    folder = Path(folder)
    if folder.exists():
        raise RlptuneError(f"{folder}: already exists; export_hf_clip writes a new folder and never overwrites one")
    text, vision = (
        _hf_tower_config(backbone.structure.get(t, {}), t, backbone.spec or backbone.identity)
        for t in ("text", "vision")
    )
    if text["projection_dim"] != vision["projection_dim"]:
        raise RlptuneError(
            f"backbone {backbone.spec}: text and image projections differ in width ({text['projection_dim']} vs {vision['projection_dim']})"
        )
    if text["vocab_size"] != 49408:
        raise RlptuneError(
            f"backbone {backbone.spec}: vocabulary of {text['vocab_size']} tokens; only OpenAI CLIP's (49,408) tokenizer can be written"
        )
    config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=text["projection_dim"])
    state = {
        k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
        for k, v in backbone.family.canonical_state_dict(backbone.model).items()
    }
    try:
        hf_state = openai_to_hf_state(state, text["num_hidden_layers"], vision["num_hidden_layers"])
    except KeyError as exc:
        raise RlptuneError(f"backbone {backbone.spec}: weight {exc.args[0]} has no place in a CLIPModel") from None
    model = tf.CLIPModel(config).eval()
    model.load_state_dict(hf_state, strict=True)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.save_pretrained(str(staging))
        write_clip_tokenizer_files(staging, context_length=text["max_position_embeddings"])
        size = vision["image_size"]
        (staging / "preprocessor_config.json").write_text(
            json.dumps(
                {
                    "image_processor_type": "CLIPImageProcessor",
                    "do_resize": True,
                    "size": {"shortest_edge": size},
                    "do_center_crop": True,
                    "crop_size": {"height": size, "width": size},
                    "resample": 3,
                    "do_rescale": True,
                    "rescale_factor": 1 / 255,
                    "do_normalize": True,
                    "do_convert_rgb": True,
                    "image_mean": list(backbone.image_mean),
                    "image_std": list(backbone.image_std),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        written = load_hf_backbone(BackboneRequest(f"{HF_PREFIX}{staging}"))
        diffs = structure_differences(backbone.structure, written.structure)
        if written.weights != backbone.weights or diffs:
            raise RlptuneError(
                f"backbone {backbone.spec}: the Hugging Face export is not the same backbone "
                f"({'weights differ' if written.weights != backbone.weights else '; '.join(diffs[:3])})"
            )
        staging.rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


register_backbone_loader(HF_PREFIX, load_hf_backbone, "hf:PATH_OR_NAME (transformers CLIPModel)")
