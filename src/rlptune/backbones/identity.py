"""What makes two loaded CLIPs the same backbone: the same weights and the same structure, however they were spelled.

An adapter records the backbone it was trained on; loading it on another spelling of the same model (``micro-v2``,
its OpenAI ``.pt`` export, the same weights as ``ARCH:/path`` or as a Hugging Face ``CLIPModel`` folder) must
work, and loading it on anything that computes another function must be refused. So the identity is read from the
modules, never from the spec:

- **weights**: SHA-256 over the tensors in one canonical naming and layout, OpenAI's (which open_clip's ``CLIP``
  keeps): a family maps its own state dict there (:meth:`BackboneFamily.canonical_state_dict`); Hugging Face's
  separate q/k/v projections are concatenated into ``in_proj_weight`` and its projection matrices transposed.
  For open_clip's ``CLIP`` the canonical state dict *is* its state dict, so the hash (and every feature-cache key
  built from it) is what rlptune computed before.
- **structure**: a canonical description of each tower (:meth:`BackboneFamily.structure`): widths, layers, heads,
  MLP width, activation (QuickGELU is not GELU), layer norms and their epsilon, patch and image size, context
  length, vocabulary, the causal mask, pooling, projection shapes; plus a fingerprint of what the tokenizer makes
  of a few probe sentences. Fields that cannot change the function (the library, the module class names, the
  file format) are not in it; a tower the description does not know is described by its library's module tree,
  so it can only ever equal itself.

``identity`` (``ARCH@sha256:<16 hex>``) stays the short human-readable label; the comparison uses the full
``weights`` hash and ``structure`` an adapter records (:func:`backbone_record`). Adapters written before these
fields existed record only the label; :func:`backbone_mismatch` still accepts them where the hash in the label
matches and the structure agrees (see there).
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any, Mapping

from ..errors import RlptuneError
from .hf import HF
from .loader import load_backbone
from .openclip import OPEN_CLIP
from .structure import hash_state, structure_differences

_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_WEIGHTS = re.compile(r"^sha256:[0-9a-f]{64}$")


# -- records and comparison ------------------------------------------------------------------------------------


def backbone_record(backbone) -> dict[str, Any]:
    """What an adapter records of its backbone: the label, a spec that loads it again, and what identifies it."""
    return {
        "identity": backbone.identity,
        "spec": backbone.spec,
        "arch": backbone.arch,
        "weights": backbone.weights,
        "structure": json.loads(json.dumps(backbone.structure)),  # a copy: the record never aliases the backbone
    }


def weight_aliases(backbone) -> tuple[str, ...]:
    """Every 16-hex hash rlptune before the canonical naming could have put in the identity of these weights:
    the canonical one, the library's own naming, and each known library's naming of the same tensors (an old
    adapter trained on the Hugging Face spelling records the hash of ``CLIPModel``'s names). Computed once per
    backbone, only when an old record needs it."""
    cached = backbone.info.get("weight_aliases")
    if cached is None:
        found = [backbone.weights[len("sha256:") :][:16], hash_state(backbone.model.state_dict())[:16]]
        canonical = backbone.family.canonical_state_dict(backbone.model)
        for family in (OPEN_CLIP, HF):
            named = family.from_canonical_state(canonical, backbone.structure)
            if named is not None:
                found.append(hash_state(named)[:16])
        cached = backbone.info["weight_aliases"] = tuple(dict.fromkeys(found))
    return cached


def _label_hash(identity: str) -> str | None:
    """The 16 hex digits after ``@sha256:`` in an identity label, or None."""
    _, sep, tail = identity.rpartition("@sha256:")
    return tail if sep and _HEX16.match(tail) else None


def backbone_mismatch(recorded: Mapping[str, Any], backbone, source: str) -> str | None:
    """None when the backbone an adapter records is ``backbone``; else why not, in a few words.

    A record with ``weights`` and ``structure`` (rlptune since these fields exist) matches when the full weights
    hash and every structure field are equal; its label's hash must agree with its own weights. A record with
    only the label (older adapters) matches when the label's hash is the loaded weights' (in the canonical naming,
    or the library's own naming older rlptune hashed) and the structure agrees: the same architecture name, or,
    where the name differs (``micro-v2`` vs ``openai-vit-128``), the structure of the backbone the recorded spec
    loads, which must carry that hash too. ``source`` names the file in errors about malformed fields.
    """
    label = recorded.get("identity")
    if not isinstance(label, str):
        raise RlptuneError(f"{source}: field 'backbone.identity' must be an identity string like ARCH@sha256:<16 hex>")
    weights, structure = recorded.get("weights"), recorded.get("structure")
    if weights is not None or structure is not None:
        if not isinstance(weights, str) or not _WEIGHTS.match(weights):
            raise RlptuneError(
                f"{source}: field 'backbone.weights' must be 'sha256:' and 64 hex digits, got {weights!r}"
            )
        if not isinstance(structure, dict):
            raise RlptuneError(
                f"{source}: field 'backbone.structure' must be an object (the backbone's towers), got {type(structure).__name__}"
            )
        if _label_hash(label) != weights[len("sha256:") :][:16]:
            return f"the weights differ (the label's hash is not the record's own weights field {weights[:23]}: the record was edited or damaged)"
        if weights != backbone.weights:
            return f"the weights differ ({weights[:23]} vs {backbone.weights[:23]})"
        return _structure_reason(structure, backbone.structure)
    if label == backbone.identity:
        return None
    hashed = _label_hash(label)
    if hashed is None:
        return "the weights differ (the recorded identity carries no sha256 hash)"
    if hashed not in weight_aliases(backbone):
        return f"the weights differ (sha256:{hashed} vs {backbone.weights[:23]})"
    if label.rpartition("@")[0] == backbone.arch:
        return None  # the same tensors under the same architecture name: what older rlptune accepted
    spec = recorded.get("spec")
    if not isinstance(spec, str) or not spec:
        return "the weights are the same, but this adapter predates recorded structures and records no spec to read its structure from"
    found = _recorded_structure(spec, hashed)
    if isinstance(found, str):
        return f"the weights are the same, but this adapter predates recorded structures and {found}"
    return _structure_reason(found, backbone.structure)


def _structure_reason(recorded: Mapping[str, Any], loaded: Mapping[str, Any]) -> str | None:
    diffs = structure_differences(recorded, loaded)
    if not diffs:
        return None
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    return f"the weights are the same but the structure differs: {'; '.join(diffs[:3])}{more} (recorded vs loaded)"


@functools.lru_cache(maxsize=16)
def _spec_structure(spec: str) -> tuple[tuple[str, ...], str] | str:
    """(weight aliases, structure JSON) of the backbone ``spec`` loads on the CPU, or why it does not load.
    Cached: what a spec loaded with given weights was is still true of those weights."""
    try:
        other = load_backbone(spec, device="cpu")
    except RlptuneError as exc:
        return f"its recorded spec {spec} does not load here ({exc})"
    return weight_aliases(other), json.dumps(other.structure)


def _recorded_structure(spec: str, hashed: str) -> dict[str, Any] | str:
    """The structure of the backbone an old record names, read by loading its spec (once per spec); the spec
    must still load the weights the record names."""
    found = _spec_structure(spec)
    if isinstance(found, str):
        return found
    aliases, structure = found
    if hashed not in aliases:
        return f"its recorded spec {spec} now loads other weights (sha256:{aliases[0]}), so the structure it was trained on is unknown"
    return json.loads(structure)
