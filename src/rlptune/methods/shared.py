"""Small pieces several methods share: hand-crafted class features and the text prompt of the dataset."""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import RlptuneError
from .base import DeclaredSize

DEFAULT_TEMPLATE = "a photo of a {}."


def handcrafted_template(dataset_template: str | None, override: str | None = None) -> str:
    """The hand-crafted prompt: an explicit option, else the dataset's template, else ``"a photo of a {}."``."""
    template = override or dataset_template or DEFAULT_TEMPLATE
    if "{}" not in template:
        raise RlptuneError(f"template {template!r} has no '{{}}' for the class name")
    return template


@torch.no_grad()
def handcrafted_features(backbone: Backbone, classnames: Sequence[str], template: str, batch: int = 256) -> torch.Tensor:
    """Normalised text features (C, e) of ``template`` filled with each class name (frozen CLIP)."""
    texts = [template.format(str(name).replace("_", " ")) for name in classnames]
    feats = [backbone.encode_text_ids(backbone.tokenize(texts[i : i + batch]), normalize=True) for i in range(0, len(texts), batch)]
    return F.normalize(torch.cat(feats).float(), dim=-1)


def prompt_term(settings, n: int, d: int, copies: int = 1, n_sym: str = "n", d_sym: str = "d", copies_sym: str = "") -> tuple[str, int]:
    """The documented trainable count of ``copies`` prompts of shape (n, d) under ``settings.kind``.

    Full rank: copies·n·d. Low rank (RLP, each prompt factorised on its own): copies·r·(n + d).
    """
    lead = f"{copies_sym}·" if copies_sym else ""
    if settings.kind == "lowrank":
        r = int(settings.rank)
        return f"{lead}r·({n_sym}+{d_sym})", copies * r * (n + d)
    return f"{lead}{n_sym}·{d_sym}", copies * n * d


def formula(terms: list[tuple[str, int]], symbols: dict[str, int]) -> str:
    """``"n·d + … = 2,048 + … = 2,080 (n=4, d=512)"``: the symbolic formula, each term's value and the total."""
    expr = " + ".join(t for t, _ in terms)
    total = sum(v for _, v in terms)
    values = " + ".join(f"{v:,}" for _, v in terms)
    where = ", ".join(f"{k}={v}" for k, v in symbols.items())
    middle = f" = {values}" if len(terms) > 1 else ""
    return f"{expr}{middle} = {total:,} ({where})"


#: Where each built-in prompt kind stores its tokens-per-prompt n and its rank r: a full-rank prompt is
#: ``<prefix>.ctx`` (…, n, d); a low-rank one ``<prefix>.A`` (…, n, r) and ``<prefix>.B`` (…, r, d).
_TOKEN_DIMS = {"full": (("ctx", -2),), "lowrank": (("A", -2),)}
_RANK_DIMS = {"lowrank": (("A", -1), ("B", -2))}


def _carriers(prefixes: Sequence[str], dims) -> tuple[tuple[str, int], ...]:
    return tuple((rf"{re.escape(prefix)}\.{name}", dim) for prefix in prefixes for name, dim in dims)


def prompt_token_size(settings, prefixes: Sequence[str], field: str, n: int) -> list[DeclaredSize]:
    """``n`` tokens per prompt, declared by ``field``, for the prompt modules at ``prefixes`` (``"prompt"``,
    ``"text_prompt"`` …). Empty for a registered kind whose layout is not known here."""
    dims = _TOKEN_DIMS.get(settings.kind)
    return [DeclaredSize(field, int(n), _carriers(prefixes, dims))] if dims else []


def prompt_rank_size(settings, prefixes: Sequence[str]) -> list[DeclaredSize]:
    """``prompt.rank`` of the low-rank prompt modules at ``prefixes`` (nothing for other kinds)."""
    dims = _RANK_DIMS.get(settings.kind)
    return [DeclaredSize("settings.prompt.rank", int(settings.rank), _carriers(prefixes, dims))] if dims and prefixes else []


def prompt_copies_size(settings, prefix: str, field: str, copies: int) -> list[DeclaredSize]:
    """``copies`` prompts stacked on the first dimension (a class-specific context: one per class)."""
    dims = _TOKEN_DIMS.get(settings.kind)
    if not dims:
        return []
    names = [name for name, _ in dims + _RANK_DIMS.get(settings.kind, ())]
    return [DeclaredSize(field, int(copies), _carriers([prefix], [(name, 0) for name in names]))]
