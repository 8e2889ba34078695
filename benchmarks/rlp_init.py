"""Measure how RLP's factor initialisation and optimiser decide whether it learns on CoOp's schedule.

P = P_fr + s·A@B has gradients dL/dA = s·G·Bᵀ and dL/dB = s·Aᵀ·G: each factor's gradient scales with the other
factor. This script trains RLP (n=4, r=1, "a photo of a") with several (a_std, b_std, optimiser, lr) choices next
to CoOp on the base-to-new protocol and prints base/new accuracy and how far the prompt moved (‖ΔP‖ / ‖P_fr‖).

    python benchmarks/rlp_init.py --backbone micro --datasets micro-shapes micro-textures --seeds 1 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from rlptune.sweeps.runner import make_specs, run_sweep

VARIANTS = {
    "coop n=16 (sgd 0.002)": ("coop", {}),
    "rlp A~N(0,.02²) B=0 sgd 0.002": ("rlp", {"prompt": {"a_std": 0.02, "b_std": 0.0}}),
    "rlp A,B~N(0,.02²) sgd 0.002": ("rlp", {"prompt": {"a_std": 0.02, "b_std": 0.02}}),
    "rlp A~N(0,1) B=0 sgd 0.002 (default)": ("rlp", {}),
    "rlp A,B~N(0,.02²) adamw 0.002": (
        "rlp",
        {"prompt": {"a_std": 0.02, "b_std": 0.02}, "train": {"optimizer": "adamw", "weight_decay": 0.0}},
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="micro")
    parser.add_argument("--datasets", nargs="+", default=["micro-shapes", "micro-textures", "micro-scenes"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    results = args.results or tempfile.mkdtemp(prefix="rlp-init-")
    rows = []
    for label, (method, overrides) in VARIANTS.items():
        train = {"epochs": args.epochs, "augment": False, **overrides.get("train", {})}
        specs = make_specs(
            "base2new",
            args.datasets,
            [method],
            args.seeds,
            [16],
            backbone=args.backbone,
            base_overrides={**overrides, "train": train},
        )
        for spec in specs:
            spec.label = label.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("~", "")
        t0 = time.perf_counter()
        out = run_sweep(specs, results, log=lambda m: None)
        seconds = time.perf_counter() - t0
        base = statistics.mean(r["metrics"]["base"]["top1"] for r in out)
        new = statistics.mean(r["metrics"]["new"]["top1"] for r in out)
        moved = []
        for r in out:
            d = r["prompt_diagnostics"].get("ctx", {})
            if "delta" in d and "P" in d:
                moved.append(
                    d["delta"].get("frobenius_norm", float("nan")) / max(d["P"].get("frobenius_norm", 1e-12), 1e-12)
                )
        rows.append(
            (
                label,
                base,
                new,
                2 * base * new / max(base + new, 1e-9),
                statistics.mean(moved) if moved else float("nan"),
                seconds,
            )
        )
    print("| variant | base | new | H | ‖ΔP‖/‖P‖ | seconds |\n|---|---|---|---|---|---|")
    for label, b, n, h, m, s in rows:
        print(f"| {label} | {b:.1f} | {n:.1f} | {h:.1f} | {m:.3f} | {s:.0f} |")
    print(f"\nresults: {results}  (torch threads {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
