"""Is bf16 autocast on a CPU as good as fp32? Three measurements, side by side.

1. ``--results DIR``: the micro-v2 suite run twice, fp32 and bf16 (one sweep with ``--grid
   backbone.precision=fp32,bf16``; the command is in benchmarks/README.md). For every method, the paired
   difference bf16 - fp32 over (dataset, seed) of base, new and H, with its 95% t interval and Wilcoxon p, beside
   the seed spread of fp32 (the mean over datasets of the standard deviation over seeds). The bar: the interval
   lies within plus/minus the seed spread ("within seed spread").
2. ``--vitb16``: on a random ViT-B-16 (``random:ViT-B-16``, seeded), every registered method's forward in fp32 and
   under bf16 autocast from the same state (trainable tensors perturbed by a seeded draw, so every branch —
   a LoRA's B, RLP's P_B — is live): the largest |logit difference|, the mean, and the top-1 agreement, over the
   same preprocessed images (smooth random images; frozen-image methods share one image-feature pass per precision).
   A random backbone gives close logits, so the agreement is also given over the images whose fp32 top-1 margin is
   larger than twice the largest logit difference (where a flip would be a real disagreement).
3. With ``--vitb16``, the text path's exactness check in bf16: CoOp's context equal to "a photo of a" through the
   prompted text path against open_clip's own ``encode_text`` in fp32 (the exact reference) and under the same bf16
   autocast; the fp32 path is the 1e-7 check of the test suite.

Usage::

    .venv/bin/python benchmarks/bf16_fidelity.py --results RESULTS --vitb16 --json benchmarks/bf16_fidelity_results.json
    .venv/bin/python benchmarks/bf16_fidelity.py --from-json benchmarks/bf16_fidelity_results.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rlptune.analysis.stats import paired_comparison
from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.methods import build_method, list_methods
from rlptune.recipes import preset

CLASSES = [
    "dog",
    "golden retriever",
    "sea lion",
    "yellow-headed blackbird",
    "tractor",
    "violin",
    "red fox",
    "snow owl",
    "desert lizard",
    "river heron",
]


# -- 1. the micro-v2 suite --------------------------------------------------------------------------------------


def _precision_of(result: dict[str, Any]) -> str:
    return str(
        ((result.get("settings") or {}).get("backbone") or {}).get("precision")
        or ((result.get("spec") or {}).get("overrides") or {}).get("backbone", {}).get("precision")
        or "fp32"
    )


def suite(results: Path) -> dict[str, Any]:
    """Paired bf16 - fp32 differences per method and metric, and fp32's seed spread."""
    rows: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for path in sorted(results.rglob("result.json")):
        r = json.loads(path.read_text())
        m = r.get("metrics") or {}
        if "base" not in m or "new" not in m:
            continue
        rows[(r["method"], _precision_of(r))].append(
            {
                "dataset": r["dataset"],
                "seed": r["seed"],
                "base": m["base"]["top1"],
                "new": m["new"]["top1"],
                "h": r["h"],
            }
        )
    out: dict[str, Any] = {}
    for method in sorted({m for m, _ in rows}):
        fp32, bf16 = rows.get((method, "fp32"), []), rows.get((method, "bf16"), [])
        entry: dict[str, Any] = {"runs_fp32": len(fp32), "runs_bf16": len(bf16)}
        for metric in ("base", "new", "h"):
            cmp = paired_comparison(bf16, fp32, key=("dataset", "seed"), metric=metric)
            by_dataset: dict[str, list[float]] = defaultdict(list)
            for row in fp32:
                by_dataset[row["dataset"]].append(row[metric])
            spreads = [statistics.stdev(v) for v in by_dataset.values() if len(v) > 1]
            spread = statistics.mean(spreads) if spreads else float("nan")
            entry[metric] = {
                "n": cmp.n,
                "mean_diff": cmp.mean_diff,
                "ci": [cmp.ci_low, cmp.ci_high],
                "p": cmp.p_value,
                "mean_fp32": cmp.mean_b,
                "mean_bf16": cmp.mean_a,
                "seed_spread_fp32": spread,
                "within_seed_spread": bool(cmp.n >= 2 and -spread <= cmp.ci_low and cmp.ci_high <= spread),
                "ci_contains_0": bool(cmp.n >= 2 and cmp.ci_low <= 0 <= cmp.ci_high),
                "pairs": [
                    {"dataset": p["dataset"], "seed": p["seed"], "bf16": p["a"], "fp32": p["b"]} for p in cmp.pairs
                ],
            }
        out[method] = entry
    pooled = {}
    for metric in ("base", "new", "h"):
        a = [dict(r, method=m) for (m, p), rs in rows.items() if p == "bf16" for r in rs]
        b = [dict(r, method=m) for (m, p), rs in rows.items() if p == "fp32" for r in rs]
        cmp = paired_comparison(a, b, key=("method", "dataset", "seed"), metric=metric)
        pooled[metric] = {"n": cmp.n, "mean_diff": cmp.mean_diff, "ci": [cmp.ci_low, cmp.ci_high], "p": cmp.p_value}
    return {"methods": out, "pooled": pooled}


# -- 2. and 3. a random ViT-B-16 -----------------------------------------------------------------------------------


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Preprocessed-looking images: low-frequency random fields, normalised like CLIP's inputs."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(count, 3, 7, 7, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


def _perturb(method: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in method.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)


def _agreement(a: torch.Tensor, b: torch.Tensor) -> dict[str, Any]:
    diff = (a.float() - b.float()).abs()
    top_a, top_b = a.argmax(-1), b.argmax(-1)
    sorted_a = a.float().sort(-1, descending=True).values
    margin = sorted_a[:, 0] - sorted_a[:, 1]
    max_diff = float(diff.max())
    clear = margin > 2 * max_diff
    return {
        "images": int(a.shape[0]),
        "max_abs_logit_diff": max_diff,
        "mean_abs_logit_diff": float(diff.mean()),
        "logit_range_fp32": float(a.max() - a.min()),
        "top1_agreement": float((top_a == top_b).float().mean()),
        "clear_margin_images": int(clear.sum()),
        "top1_agreement_clear_margin": float((top_a == top_b)[clear].float().mean()) if clear.any() else None,
    }


def vitb16(images: int, image_prompt_images: int, threads: int, log) -> dict[str, Any]:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    backbone = load_backbone("random:ViT-B-16", device="cpu")
    size = int(
        backbone.model.visual.image_size[0]
        if isinstance(backbone.model.visual.image_size, (tuple, list))
        else backbone.model.visual.image_size
    )
    pixels = smooth_images(images, size, seed=1)
    out: dict[str, Any] = {"methods": {}}
    frozen: dict[str, torch.Tensor] = {}
    for precision in ("fp32", "bf16"):
        backbone.precision = precision
        t0 = time.perf_counter()
        with torch.no_grad():
            frozen[precision] = torch.cat([backbone.encode_image(pixels[i : i + 32]) for i in range(0, images, 32)])
        log(f"frozen image features, {precision}: {time.perf_counter() - t0:.0f} s for {images} images")
    for name in list_methods():
        overrides = {k: dict(v) for k, v in preset(name, "base2new", 16).items() if isinstance(v, dict)}
        backbone.precision = "fp32"
        torch.manual_seed(0)
        method = build_method(resolve_config(None, overrides), backbone, CLASSES)
        _perturb(method, seed=2)
        method.eval()
        logits = {}
        for precision in ("fp32", "bf16"):
            backbone.precision = precision
            with torch.no_grad():
                own_images = _prompts_the_image_tower(method)
                if own_images:
                    batch = pixels[:image_prompt_images]
                    logits[precision] = torch.cat([method(batch[i : i + 16]) for i in range(0, len(batch), 16)])
                else:
                    logits[precision] = method.logits(frozen[precision])
        backbone.precision = "fp32"
        row = _agreement(logits["fp32"], logits["bf16"])
        row["prompts_the_image_tower"] = own_images
        out["methods"][name] = row
        log(f"{name}: {row}")
    # 3. the text path in bf16
    config = resolve_config(None, {"method": {"name": "coop"}, "prompt": {"ctx_init": "a photo of a", "n_ctx": 4}})
    text: dict[str, Any] = {}
    with torch.no_grad():
        tokens = backbone.tokenize([f"a photo of a {n}." for n in CLASSES])
        backbone.precision = "fp32"
        exact = F.normalize(backbone.model.encode_text(tokens).float(), dim=-1)
        ours32 = F.normalize(build_method(config, backbone, CLASSES).class_features().float(), dim=-1)
        backbone.precision = "bf16"
        ours16 = F.normalize(build_method(config, backbone, CLASSES).class_features().float(), dim=-1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lib16 = F.normalize(backbone.model.encode_text(tokens).float(), dim=-1)
        backbone.precision = "fp32"
    text["fp32_prompted_vs_encode_text_fp32"] = float((ours32 - exact).abs().max())
    text["bf16_prompted_vs_encode_text_fp32"] = float((ours16 - exact).abs().max())
    text["bf16_prompted_vs_encode_text_bf16"] = float((ours16 - lib16).abs().max())
    text["bf16_encode_text_vs_fp32"] = float((lib16 - exact).abs().max())
    text["cosine_bf16_prompted_vs_fp32_min"] = float((ours16 * exact).sum(-1).min())
    out["text_path"] = text
    log(f"text path: {text}")
    return out


def _prompts_the_image_tower(method: torch.nn.Module) -> bool:
    """Whether the method changes the image side (its own encode_images), so it needs its own image passes."""
    from rlptune.methods.base import Method

    return type(method).encode_images is not Method.encode_images


# -- output ----------------------------------------------------------------------------------------------------


def _fmt_ci(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci"]
    if math.isnan(lo):
        return f"{entry['mean_diff']:+.2f}"
    return f"{entry['mean_diff']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    if "suite" in report:
        lines += [
            "| method | runs fp32 / bf16 | base bf16 - fp32 | new bf16 - fp32 | H bf16 - fp32 [95% CI] | H seed spread (fp32) | within seed spread | p (H) |",
            "|---|---:|---:|---:|---:|---:|---|---:|",
        ]
        for method, e in report["suite"]["methods"].items():
            h = e["h"]
            lines.append(
                f"| {method} | {e['runs_fp32']} / {e['runs_bf16']} | {_fmt_ci(e['base'])} | {_fmt_ci(e['new'])} | "
                f"{_fmt_ci(h)} | {h['seed_spread_fp32']:.2f} | "
                f"{'yes' if all(e[m]['within_seed_spread'] for m in ('base', 'new', 'h')) else '**no**'} | {h['p']:.2f} |"
            )
        p = report["suite"]["pooled"]
        lines.append(
            f"| **pooled** (n = {p['h']['n']}) | | {_fmt_ci(p['base'])} | {_fmt_ci(p['new'])} | {_fmt_ci(p['h'])} | | | {p['h']['p']:.2f} |"
        )
        lines.append("")
    if "vitb16" in report:
        lines += [
            "| method | images | max abs logit diff | mean abs diff | fp32 logit range | top-1 agreement | agreement where the margin is clear (images) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for method, r in report["vitb16"]["methods"].items():
            clear = r["top1_agreement_clear_margin"]
            lines.append(
                f"| {method}{' (own image pass)' if r['prompts_the_image_tower'] else ''} | {r['images']} | "
                f"{r['max_abs_logit_diff']:.3f} | {r['mean_abs_logit_diff']:.4f} | {r['logit_range_fp32']:.2f} | "
                f"{100 * r['top1_agreement']:.1f}% | {'–' if clear is None else f'{100 * clear:.1f}%'} ({r['clear_margin_images']}) |"
            )
        t = report["vitb16"]["text_path"]
        lines += [
            "",
            "Text path, largest |difference| of normalised class features (ViT-B-16, 10 classes): "
            f"fp32 prompted vs encode_text fp32 {t['fp32_prompted_vs_encode_text_fp32']:.1e}; "
            f"bf16 prompted vs encode_text fp32 {t['bf16_prompted_vs_encode_text_fp32']:.1e} "
            f"(lowest cosine {t['cosine_bf16_prompted_vs_fp32_min']:.5f}); "
            f"bf16 prompted vs encode_text under the same bf16 autocast {t['bf16_prompted_vs_encode_text_bf16']:.1e}; "
            f"open_clip's own encode_text bf16 vs fp32 {t['bf16_encode_text_vs_fp32']:.1e}.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help="results folder of the fp32/bf16 suite sweep")
    parser.add_argument("--vitb16", action="store_true", help="the random ViT-B-16 forward and text-path checks")
    parser.add_argument("--images", type=int, default=256, help="images for the frozen-image methods")
    parser.add_argument(
        "--image-prompt-images",
        type=int,
        default=64,
        help="images for the methods that prompt the image tower (each needs its own passes)",
    )
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--from-json", type=Path)
    args = parser.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    report: dict[str, Any] = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if args.results:
        report["suite"] = suite(args.results)
    if args.vitb16:
        t0 = time.time()
        report["vitb16"] = vitb16(args.images, args.image_prompt_images, args.threads, lambda m: print(m, flush=True))
        report["vitb16"]["minutes"] = (time.time() - t0) / 60
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
