"""The canonical description of a loaded CLIP's towers and the hash of its weights (read by :mod:`.identity`).

Helpers the families (:mod:`.openclip`, :mod:`.hf`) use to describe their modules in one vocabulary: activations
and norms by function rather than class, blocks folded per tower, pooling, the tokenizer's fingerprint; and the
hash over a state dict. See :mod:`.identity` for what the description is for.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import torch
from torch import nn

#: Sentences whose token ids (up to the pooled token) fingerprint a tokenizer: plain lower-case words, so two
#: implementations of the same vocabulary (open_clip's BPE, transformers' CLIPTokenizer) agree on them.
TOKENIZER_PROBES = (
    "a photo of a golden retriever.",
    "a sketch of two red striped circles in a forest.",
    "tv",
    "sea anemone",
)


# -- hashing ----------------------------------------------------------------------------------------------------


def hash_state(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over a state dict: sorted names, shapes and fp32 bytes (integer buffers as they are)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if not torch.is_floating_point(tensor) and tensor.dtype not in (torch.int64, torch.int32):
            continue
        t = tensor.detach().to("cpu")
        if torch.is_floating_point(t):
            t = t.float()
        digest.update(name.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- describing modules ----------------------------------------------------------------------------------------


def activation_name(module: nn.Module) -> str:
    """The function of an activation module, the same name whichever library defines it."""
    name = type(module).__name__
    if name in ("QuickGELU", "QuickGELUActivation"):
        return "quick_gelu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else f"gelu_{module.approximate}"
    if name == "GELUActivation":
        return "gelu"
    if name in ("NewGELUActivation", "PytorchGELUTanh", "GELUTanh", "FastGELUActivation"):
        return "gelu_tanh"
    if isinstance(module, nn.ReLU) or name == "ReLU":
        return "relu"
    if isinstance(module, nn.SiLU) or name == "SiLUActivation":
        return "silu"
    return f"{type(module).__module__}.{name}"


def norm_name(module: nn.Module | None) -> str | None:
    """``layernorm(eps=...)`` for any LayerNorm (open_clip's casting subclasses included), None for no norm."""
    if module is None or isinstance(module, nn.Identity):
        return None
    if isinstance(module, nn.LayerNorm):
        return f"layernorm(eps={module.eps:g})"
    return f"{type(module).__module__}.{type(module).__name__}"


def module_fingerprint(module: nn.Module) -> str:
    """A module tree's printed form, hashed: the structure of a tower no canonical description covers (it equals
    only the same library's same modules)."""
    text = f"{type(module).__module__}.{type(module).__name__}\n{module!r}"
    return f"{type(module).__name__}:sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def merge_blocks(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-block descriptions folded into the tower's: ``layers`` plus the block fields when every block agrees
    (the usual case), else the list itself."""
    if not blocks:
        return {"layers": 0}
    if all(b == blocks[0] for b in blocks):
        return {"layers": len(blocks), **blocks[0]}
    return {"layers": len(blocks), "blocks": blocks}


def pooling_name(eot_rule: str, token_id: int | None, vocab_size: int) -> str:
    """How the text tower picks the pooled token. ``argmax`` over ids and "first ``eos`` id" pick the same token
    when the end-of-text id is the largest id of the vocabulary (CLIP's 49407 of 49408) and every tokenized
    text holds one (CLIP's tokenizers always append it): both are called ``eot`` then."""
    if eot_rule == "argmax" or (eot_rule == "eos" and token_id == vocab_size - 1):
        return "eot"
    return f"{eot_rule}:{token_id}"


def tokenizer_fingerprint(tokenizer, text_tower) -> str:
    """What the tokenizer makes of :data:`TOKENIZER_PROBES`, up to each pooled token (what reaches the pooled
    feature under the causal mask; padding after it never does), hashed."""
    try:
        ids = tokenizer(list(TOKENIZER_PROBES))
        ids = torch.as_tensor(ids).long().cpu()
        eot = text_tower.eot_positions(ids).cpu()
        rows = [ids[i, : int(eot[i]) + 1].tolist() for i in range(ids.shape[0])]
    except Exception as exc:  # a tokenizer that cannot tokenize plain English is described by its failure
        return f"unavailable ({type(exc).__name__})"
    return "sha256:" + hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def backbone_structure(model: nn.Module, family, tokenizer, text_tower) -> dict[str, Any]:
    """The canonical structure of a loaded CLIP: its family's tower descriptions and the tokenizer's fingerprint."""
    structure = dict(family.structure(model))
    structure["tokenizer"] = tokenizer_fingerprint(tokenizer, text_tower)
    return structure


def canonical_weights(model: nn.Module, family) -> str:
    """``sha256:<64 hex>`` over the family's canonical state dict (OpenAI's names and layout)."""
    return "sha256:" + hash_state(family.canonical_state_dict(model))


def structure_differences(recorded: Mapping[str, Any], loaded: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``field recorded vs loaded`` for every leaf that differs (dotted paths, sorted)."""
    out = []
    for key in sorted(set(recorded) | set(loaded)):
        a, b = recorded.get(key, "(absent)"), loaded.get(key, "(absent)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += structure_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {_short(a)} vs {_short(b)}")
    return out


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
