"""Calibration of the v2 micro CLIP (``--backbone micro-v2``) on the ``micro2-*`` suite.

For every dataset, on its full test split: ``zs`` (generic template "a photo of a {}."), ``zs-sty`` (the dataset's
style named), ``probe`` (16-shot logistic regression on frozen normalised features, L2 chosen on val) and, with
``--ctx``, ``ctx4`` (4 learned context vectors from "a photo of a", the CoOp stand-in of the v1 benchmark). Shifted
test sets get the zero-shot columns. ``--b2n SEED ...`` also runs rlptune's own base-to-new protocol (16 shots,
official recipes, fresh augmentation) for CoOp and zero-shot on the shipped weights and prints base/new/H.

Usage::

    python benchmarks/micro_calibration_v2.py [--weights PATH] [--ctx] [--b2n 1 2 3] [--json OUT]

Targets: zero-shot mean 50-75, every dataset >= 2x chance and <= 92; probe >= zero-shot + 10 on average; base-to-new
CoOp base >= zero-shot base + 8 and CoOp new < zero-shot new on average.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from micro_calibration import (  # noqa: E402  (the v1 benchmark's probe and learned-context helpers)
    accuracy,
    few_shot_indices,
    image_features,
    logistic_probe,
    text_features,
    tuned_context,
)
from rlptune.micro import world as W1  # noqa: E402
from rlptune.micro.pretrain import get_tokenizer  # noqa: E402
from rlptune.micro.suite import GENERIC_TEMPLATE  # noqa: E402
from rlptune.micro.v2 import MICRO2_DATASETS, MICRO2_SHIFTS, MICRO2_WEIGHTS_PATH, micro2_state_dict  # noqa: E402
from rlptune.micro.v2.pretrain import build_model  # noqa: E402
from rlptune.micro.v2.suite import micro2_spec, render_split  # noqa: E402


def load_model(path: Path):
    model = build_model()
    model.load_state_dict(micro2_state_dict(path), strict=True)
    return model.eval()


def evaluate(model, tokenizer, names, shots=16, ctx=False, ctx_steps=200, seed=1, log=print):
    rows = []
    for name in names:
        t0 = time.time()
        spec = micro2_spec(name)
        cls = spec.classnames
        te_img, te_y = render_split(name, "test")
        xte, yte = image_features(model, te_img), torch.tensor(te_y)
        generic = text_features(model, tokenizer, [GENERIC_TEMPLATE.format(c) for c in cls])
        styled_t = W1.STYLE_TEMPLATES[spec.style][0].format("a {}") + "."
        styled = text_features(model, tokenizer, [styled_t.format(c) for c in cls])
        row = {
            "dataset": name,
            "style": spec.style,
            "classes": len(cls),
            "chance": 1 / len(cls),
            "zs": accuracy(xte @ generic.T, yte),
            "zs_style": accuracy(xte @ styled.T, yte),
        }
        if spec.splits["train"]:
            tr_img, tr_y = render_split(name, "train")
            va_img, va_y = render_split(name, "val")
            idx = few_shot_indices(np.array(tr_y), shots, seed)
            xtr = image_features(model, [tr_img[i] for i in idx])
            ytr = torch.tensor([tr_y[i] for i in idx])
            xva, yva = image_features(model, va_img), torch.tensor(va_y)
            row["probe"] = logistic_probe(xtr, ytr, xva, yva, xte, yte, len(cls))
            if ctx:
                row["ctx"], row["ctx_lr"] = tuned_context(
                    model, tokenizer, cls, xtr, ytr, xva, yva, xte, yte, n_ctx=4, init="a photo of a", steps=ctx_steps
                )
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        log(_fmt(row))
    return rows


def _fmt(r: dict) -> str:
    def p(k):
        return f"{100 * r[k]:6.1f}" if k in r else "     -"

    return (
        f"{r['dataset']:<24} {r['style']:<9} {r['classes']:>3} {p('chance')} {p('zs')} {p('zs_style')} "
        f"{p('probe')} {p('ctx')}"
    )


def candidate_backbone(weights: Path, results_dir: Path) -> str:
    """The backbone spec for ``weights``: ``micro-v2`` for the shipped file, else an OpenAI ``.pt`` export of them.

    A candidate is judged by the same protocol as the shipped weights before it replaces them: rlptune loads the
    export as ``--backbone file.pt`` (the round trip is exact, tests/test_micro_v2.py), with its own feature cache.
    """
    if weights.resolve() == MICRO2_WEIGHTS_PATH.resolve():
        return "micro-v2"
    import hashlib

    from rlptune.micro.v2 import export_openai

    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]  # by content: candidates often share a file name
    target = results_dir / f"candidate-{digest}.pt"
    if not target.is_file():
        results_dir.mkdir(parents=True, exist_ok=True)
        export_openai(target, weights)
    return str(target.resolve())


def base_to_new(seeds, datasets, results_dir: Path, jobs: int = 1, log=print, backbone: str = "micro-v2") -> list[dict]:
    """rlptune's base-to-new protocol (official recipes) for CoOp and zero-shot on the v2 weights given."""
    from rlptune.sweeps.runner import make_specs, run_sweep

    specs = make_specs("base2new", datasets, ["zeroshot", "coop"], list(seeds), [16], backbone=backbone)
    results = run_sweep(specs, results_dir, jobs=jobs, log=lambda m: None)
    rows = []
    for r in results:
        m = r["metrics"]
        rows.append(
            {
                "dataset": r.get("dataset"),
                "method": r["method"],
                "seed": r.get("seed"),
                "base": m["base"]["top1"],
                "new": m["new"]["top1"],
            }
        )
    for r in rows:
        log(f"b2n {r['dataset']} {r['method']:<9} seed {r['seed']} base {r['base']:5.1f} new {r['new']:5.1f}")
    for method in ("zeroshot", "coop"):
        sel = [r for r in rows if r["method"] == method]
        base, new = float(np.mean([r["base"] for r in sel])), float(np.mean([r["new"] for r in sel]))
        log(f"b2n {method:<9} base {base:5.1f} new {new:5.1f} H {2 * base * new / (base + new):5.1f} ({len(sel)} runs)")
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(MICRO2_WEIGHTS_PATH), help="v2 weights to calibrate (default: shipped)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--ctx", action="store_true", help="also the learned-context column (slow)")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--no-shifts", action="store_true")
    ap.add_argument("--b2n", nargs="*", type=int, default=None, help="seeds of a CoOp base-to-new run (slow)")
    ap.add_argument("--b2n-dir", default="micro2_b2n_runs")
    ap.add_argument("--jobs", type=int, default=1, help="parallel base-to-new runs")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(Path(args.weights))
    tokenizer = get_tokenizer()
    names = args.datasets or MICRO2_DATASETS
    print(f"{'dataset':<24} {'style':<9} {'cls':>3} {'chance':>6} {'zs':>6} {'zs-sty':>6} {'probe':>6} {'ctx4':>6}")
    rows = evaluate(model, tokenizer, names, shots=args.shots, ctx=args.ctx)
    suite = [r for r in rows if r["dataset"] in MICRO2_DATASETS]
    if suite:
        mean = {
            k: float(np.mean([r[k] for r in suite if k in r]))
            for k in ("zs", "zs_style", "probe", "ctx")
            if any(k in r for r in suite)
        }
        print(f"{'MEAN (suite)':<24} {'':<9} {'':>3} {'':>6} " + " ".join(f"{100 * mean[k]:6.1f}" for k in mean))
        below = [r["dataset"] for r in suite if r["zs"] < 2 * r["chance"]]
        above = [r["dataset"] for r in suite if r["zs"] > 0.92]
        print(
            f"zero-shot mean {100 * mean['zs']:.1f} (target 50-75); below 2x chance: {below or 'none'}; "
            f"above 92: {above or 'none'}"
        )
        if "probe" in mean:
            print(f"probe - zero-shot {100 * (mean['probe'] - mean['zs']):+.1f} points (target >= +10)")
    if not args.no_shifts and args.datasets is None:
        rows += evaluate(model, tokenizer, [s for v in MICRO2_SHIFTS.values() for s in v])
    out = {"rows": rows}
    if args.b2n:
        b2n_dir = Path(args.b2n_dir)
        out["b2n"] = base_to_new(
            args.b2n, names, b2n_dir, jobs=args.jobs, backbone=candidate_backbone(Path(args.weights), b2n_dir)
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
