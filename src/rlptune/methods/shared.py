"""Small pieces several methods share: hand-crafted class features and the text prompt of the dataset."""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F

from ..backbones.base import Backbone
from ..errors import RlptuneError
from ..prompts import prompt_layout
from .base import DeclaredSize

DEFAULT_TEMPLATE = "a photo of a {}."


def handcrafted_template(dataset_template: str | None, override: str | None = None) -> str:
    """The hand-crafted prompt: an explicit option, else the dataset's template, else ``"a photo of a {}."``."""
    template = override or dataset_template or DEFAULT_TEMPLATE
    if "{}" not in template:
        raise RlptuneError(f"template {template!r} has no '{{}}' for the class name")
    return template


@torch.no_grad()
def handcrafted_features(
    backbone: Backbone, classnames: Sequence[str], template: str, batch: int = 256
) -> torch.Tensor:
    """Normalised text features (C, e) of ``template`` filled with each class name (frozen CLIP)."""
    texts = [template.format(str(name).replace("_", " ")) for name in classnames]
    feats = [
        backbone.encode_text_ids(backbone.tokenize(texts[i : i + batch]), normalize=True)
        for i in range(0, len(texts), batch)
    ]
    return F.normalize(torch.cat(feats).float(), dim=-1)


def formula(terms: list[tuple[str, int]], symbols: dict[str, int]) -> str:
    """``"n·d + … = 2,048 + … = 2,080 (n=4, d=512)"``: the symbolic formula, each term's value and the total."""
    expr = " + ".join(t for t, _ in terms)
    total = sum(v for _, v in terms)
    values = " + ".join(f"{v:,}" for _, v in terms)
    where = ", ".join(f"{k}={v}" for k, v in symbols.items())
    middle = f" = {values}" if len(terms) > 1 else ""
    return f"{expr}{middle} = {total:,} ({where})"


def prompt_term(module, copies: int = 1, n_sym: str = "n", d_sym: str = "d", copies_sym: str = "") -> tuple[str, int]:
    """The documented trainable count of ``copies`` prompts shaped as ``module``'s one: its kind's formula (full rank
    n·d, low rank r·(n + d), …) and value, each copy parameterised alone."""
    term, value = module.count_term(n_sym, d_sym, copies_sym)
    return term, copies * (value // module.copies)


def _carriers(prefixes: Sequence[str], dims) -> tuple[tuple[str, int], ...]:
    return tuple((rf"{re.escape(prefix)}\.{name}", dim) for prefix in prefixes for name, dim in dims)


def prompt_token_size(settings, prefixes: Sequence[str], field: str, n: int) -> list[DeclaredSize]:
    """``n`` tokens per prompt, declared by ``field``, for the prompt modules at ``prefixes`` (``"prompt"``,
    ``"text_prompt"`` …). Empty for a registered kind without a layout (:class:`rlptune.prompts.PromptLayout`)."""
    dims = prompt_layout(settings.kind).tokens
    return [DeclaredSize(field, int(n), _carriers(prefixes, dims))] if dims else []


def prompt_kind_sizes(settings, prefixes: Sequence[str]) -> list[DeclaredSize]:
    """The sizes the prompt kind's own settings declare (low rank: ``prompt.rank``) for the modules at ``prefixes``."""
    if not prefixes:
        return []
    return [
        DeclaredSize(f, v, _carriers(prefixes, dims)) for f, v, dims in prompt_layout(settings.kind).sizes(settings)
    ]


def prompt_copies_size(settings, prefix: str, field: str, copies: int) -> list[DeclaredSize]:
    """``copies`` prompts stacked on the first dimension (a class-specific context: one per class)."""
    layout = prompt_layout(settings.kind)
    if not layout.tokens:
        return []
    names = [name for name, _ in layout.tokens] + [name for _, _, dims in layout.sizes(settings) for name, _ in dims]
    return [DeclaredSize(field, int(copies), _carriers([prefix], [(name, 0) for name in names]))]
