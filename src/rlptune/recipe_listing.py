"""The listing behind ``rlptune methods``: every recipe as text, the values shared by all protocols and shot counts,
then those that change with the protocol, the shot count or the dataset. A view of :mod:`rlptune.recipes` (which
holds the recipes only) over the CoOp dataset catalogue (:mod:`rlptune.data.coop`)."""

from __future__ import annotations

import textwrap
from typing import Any

from . import recipes
from .data.coop import COOP_DATASETS


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _variant_text(variants: dict, protocol: str, key: str) -> str:
    """How ``key`` varies with the shot count and the dataset within one protocol, in words."""
    shown = {
        s: _show(variants[(protocol, s, None)][key].value) if key in variants[(protocol, s, None)] else "unset"
        for s in recipes.OFFICIAL_SHOTS
    }
    if len(set(shown.values())) == 1:
        text = shown[16]
    else:
        text = ", ".join(f"{s} shot{'s' if s > 1 else ''}: {v}" for s, v in shown.items())
    exceptions = sorted(
        f"{d}: {_show(variants[(protocol, 16, d)][key].value)}"
        for d in COOP_DATASETS
        if key in variants[(protocol, 16, d)] and _show(variants[(protocol, 16, d)][key].value) != shown[16]
    )
    return text + (f" (except {'; '.join(exceptions)})" if exceptions else "")


def methods_table() -> str:
    """Every method's preset, one block per method: the values shared by all protocols and shots, then the values
    that change with the protocol, the shot count or the dataset."""
    lines: list[str] = []
    probe_datasets = (None, *COOP_DATASETS)
    for method, recipe in recipes.RECIPES.items():
        lines.append(f"{method}: {recipe.title}")
        variants: dict[tuple[str, int, str | None], dict[str, recipes.Setting]] = {
            (protocol, shots, dataset): recipes.resolved(method, protocol, shots, dataset)
            for protocol in recipes.PROTOCOLS
            for shots in recipes.OFFICIAL_SHOTS
            for dataset in probe_datasets
        }
        keys = sorted({key for resolved in variants.values() for key in resolved})
        common = [k for k in keys if len({_show(r[k].value) if k in r else "-" for r in variants.values()}) == 1]
        shared = ", ".join(f"{k}={_show(variants[('few-shot', 16, None)][k].value)}" for k in common)
        lines.extend(textwrap.wrap(shared, width=116, initial_indent="  ", subsequent_indent="  "))
        for key in keys:
            if key in common:
                continue
            lines.append(f"  {key}:")
            texts: dict[str, list[str]] = {}
            for protocol in recipes.PROTOCOLS:
                texts.setdefault(_variant_text(variants, protocol, key), []).append(protocol)
            for text, protocols in texts.items():
                lines.append(f"    {', '.join(protocols)}: {text}")
        for note in recipe.notes:
            lines.append(f"  note: {note}")
        lines.append("")
    lines.append("Sources: docs/METHODS.md; rlptune.recipes.sources(method, protocol, shots, dataset).")
    return "\n".join(lines)
