"""Speed at equal fidelity in bf16: rlptune under CPU bf16 autocast against the official-style loop in fp32 and in bf16.

One process runs the equal-fidelity measurement of ``train_speed.py --equal-fidelity`` twice on the same random
ViT-B-16-sized backbone, data and seeds: once with both sides in fp32, once with both sides under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (rlptune through ``backbone.precision = bf16``, the reference by
wrapping its step in the same context). From the timed pieces it extrapolates the base-to-new sweep (zero-shot +
linear probe, CoOp, RLP, KgCoOp x 3 seeds, fresh crops, official epochs) and the single CoOp run, and reports:

- the headline: the fp32 official-style loop (what the official code does on a CPU) / rlptune in bf16;
- apples to apples: the official-style loop in bf16 / rlptune in bf16;
- each component as an fp32/bf16 speed-up: the image tower (a fresh view per image), predict (the centre-crop encode
  per image, which is what ``predict`` pays per image), the text step of every method, the reference's text step;
- where rlptune's remaining bf16 time goes (images, text, probe, test sets).

As in ``train_speed.py`` the image work of both sides is the same code (load, crop, tower); each precision's image
cost is the mean of all its measurements on both sides ("equal" image cost), since the load of a shared machine
moves between the timed pieces. Whole runs are extrapolations from timed pieces, and say so.

Usage::

    .venv/bin/python benchmarks/bf16_speed.py --json benchmarks/bf16_speed_results.json
    .venv/bin/python benchmarks/bf16_speed.py --from-json benchmarks/bf16_speed_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train_speed  # noqa: E402  (the equal-fidelity measurement and its extrapolation)


def _speedup(fp32: float, bf16: float) -> float:
    return fp32 / bf16 if bf16 > 0 else float("nan")


def summarise(fp32: dict, bf16: dict, image_cost: str = "equal") -> dict:
    """Ratios between the two precisions' measurements, each side's whole runs extrapolated with ``image_cost``:
    "equal" (each precision's image cost pooled over both sides' measurements), "measured" (each side its own)."""
    a, b = train_speed.extrapolate(fp32, image_cost), train_speed.extrapolate(bf16, image_cost)
    parts = b["sweep"]["ours_fresh"]
    return {
        "sweep": {
            "ref_fp32_over_ours_bf16": a["sweep"]["reference"] / b["sweep"]["ours_fresh"]["total"],
            "ref_bf16_over_ours_bf16": b["sweep"]["reference"] / b["sweep"]["ours_fresh"]["total"],
            "ref_fp32_over_ours_fp32": a["sweep"]["reference"] / a["sweep"]["ours_fresh"]["total"],
            "hours": {
                "ref_fp32": a["sweep"]["reference"] / 3600,
                "ref_bf16": b["sweep"]["reference"] / 3600,
                "ours_fp32": a["sweep"]["ours_fresh"]["total"] / 3600,
                "ours_bf16": parts["total"] / 3600,
            },
            "ours_bf16_shares": {k: parts[k] / parts["total"] for k in ("images", "text", "probe", "tests")},
        },
        "single": {
            "ref_fp32_over_ours_bf16": a["single"]["reference"] / b["single"]["ours_fresh"],
            "ref_bf16_over_ours_bf16": b["single"]["reference"] / b["single"]["ours_fresh"],
            "ref_fp32_over_ours_fp32": a["single"]["reference"] / a["single"]["ours_fresh"],
        },
        "speedup_bf16": {
            "image_tower_fresh_view": _speedup(fp32["image"]["fresh_per_image"], bf16["image"]["fresh_per_image"]),
            "predict_centre_crop": _speedup(fp32["image"]["centre_per_image"], bf16["image"]["centre_per_image"]),
            "reference_image_step": _speedup(
                fp32["reference"]["base"]["image_per_image"], bf16["reference"]["base"]["image_per_image"]
            ),
            "reference_text_step_50_classes": _speedup(
                fp32["reference"]["base"]["text_step"], bf16["reference"]["base"]["text_step"]
            ),
            "reference_text_step_100_classes": _speedup(
                fp32["reference"]["single"]["text_step"], bf16["reference"]["single"]["text_step"]
            ),
            **{
                f"text_epoch_{m}": _speedup(
                    fp32["sweep"]["ours_epochs"][m]["epoch_text"], bf16["sweep"]["ours_epochs"][m]["epoch_text"]
                )
                for m in train_speed.SWEEP_METHODS
            },
            "text_epoch_single_coop_n16": _speedup(
                fp32["single"]["ours_epoch_text"], bf16["single"]["ours_epoch_text"]
            ),
        },
    }


def markdown(report: dict) -> str:
    s = report["summary"]
    measured = summarise(report["fp32"], report["bf16"], "measured")
    lines = [
        f"Backbone {report['fp32']['setting']['backbone']}, {report['fp32']['setting']['classes']} classes x "
        f"{report['fp32']['setting']['shots']} shots, {report['threads']} torch thread(s); load average "
        f"{report['load_before']} -> {report['load_after']}; {report['minutes']:.1f} min. Whole runs are extrapolated.",
        "",
        "| run | official-style fp32 / rlptune bf16 | official-style bf16 / rlptune bf16 (apples to apples) | fp32 / fp32 (before) |",
        "|---|---:|---:|---:|",
    ]
    for summary, cost in ((s, "image cost pooled per precision"), (measured, "image cost as measured on each side")):
        for key, label in (("sweep", "base-to-new sweep"), ("single", "one CoOp run")):
            r = summary[key]
            lines.append(
                f"| {label}, {cost} | **{r['ref_fp32_over_ours_bf16']:.2f}x** | {r['ref_bf16_over_ours_bf16']:.2f}x | "
                f"{r['ref_fp32_over_ours_fp32']:.2f}x |"
            )
    h = s["sweep"]["hours"]
    lines += [
        "",
        f"Sweep, extrapolated hours: official-style fp32 {h['ref_fp32']:.1f} h, bf16 {h['ref_bf16']:.1f} h; "
        f"rlptune fp32 {h['ours_fp32']:.1f} h, bf16 {h['ours_bf16']:.1f} h.",
        "",
        "Where rlptune's bf16 sweep time goes: "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in s["sweep"]["ours_bf16_shares"].items())
        + ".",
        "",
        "| component | fp32 / bf16 speed-up |",
        "|---|---:|",
    ]
    lines += [f"| {k.replace('_', ' ')} | {v:.2f}x |" for k, v in s["speedup_bf16"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="random:ViT-B-16")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--ref-steps", type=int, default=2)
    parser.add_argument("--cache-sample", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--sweep-seeds", type=int, default=3)
    parser.add_argument("--probe-fits", type=int, default=15)
    parser.add_argument("--json")
    parser.add_argument("--from-json")
    args = parser.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    t0, load_before = time.time(), round(os.getloadavg()[0], 1)
    results = {}
    for precision in ("fp32", "bf16"):
        args.precision = precision
        results[precision] = train_speed.bench_equal_fidelity(
            args, lambda m, p=precision: print(f"[{p}] {m}", flush=True)
        )
    report = {
        **results,
        "threads": args.threads,
        "load_before": load_before,
        "load_after": round(os.getloadavg()[0], 1),
        "minutes": (time.time() - t0) / 60,
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    report["summary"] = summarise(results["fp32"], results["bf16"])
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
