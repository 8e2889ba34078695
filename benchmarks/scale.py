"""ImageNet scale on this CPU: memory, cache bytes, decode rate and text-step time of a base-to-new run, bounded.

Generates an ImageNet-layout folder (``imagenet/images/{train,val}/<wnid>/*.JPEG`` + ``classnames.txt``) of 1,000
classes x 16 ordinary 500x375 JPEGs (and ``--val-per-class`` validation images; ImageNet has 50), reads it with
rlptune's own ImageNet loader, draws the base-to-new split (500 base classes), and measures with a random ViT-B-16
in bf16 (``backbone.precision = bf16``):

- the loader: seconds to list and check the 1,000 class folders;
- images decoded per second (decode + the official random resized crop + flip, no tower) with 0 and 2 loader workers;
- the image tower on fresh views: seconds per image, and the feature-cache bytes each image adds (one view), so the
  cache bytes of one epoch (8,000 base images) and of a whole run;
- the text step at 500 classes: CoOp (n = 4, "a photo of a") and RLP (n = 4, r = 1) training steps (forward, backward,
  SGD) on batches of 32 cached features, bounded by ``--steps`` and ``--step-seconds``;
- peak resident memory of the process and of each phase.

Every whole-run figure is an **extrapolation** from these timed pieces (the official base-to-new recipe's epochs x
(images of an epoch x image cost + steps x step cost) + the test set) and is marked as one.

Usage::

    .venv/bin/python benchmarks/scale.py --json benchmarks/scale_results.json       # ~15 min on 2 cores
    .venv/bin/python benchmarks/scale.py --from-json benchmarks/scale_results.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import Phase, peak_mb  # noqa: E402  (peak-RSS phases)

from rlptune.backbones import load_backbone  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.data import load_dataset  # noqa: E402
from rlptune.data.fewshot import base_new  # noqa: E402
from rlptune.engine.features import FeatureCache, ImageItems, transform_for_view  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.methods.base import Batch  # noqa: E402
from rlptune.recipes import preset  # noqa: E402


def _write_class(args: tuple[Path, str, int, int, int]) -> int:
    """One class folder of ordinary-looking JPEGs: a smooth colour field with a few shapes and noise."""
    image_root, wnid, label, train, val = args
    rng = np.random.default_rng(label)
    written = 0
    for split, count in (("train", train), ("val", val)):
        folder = image_root / split / wnid
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            h, w = 375, 500
            base = rng.integers(0, 255, size=(3, 3, 3)).astype(np.float32)
            field = np.asarray(Image.fromarray(base.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=np.float32)
            field += rng.normal(0, 12, size=(h, w, 3))
            y, x = rng.integers(0, h - 60), rng.integers(0, w - 60)
            field[y : y + 60, x : x + 60] = rng.integers(0, 255, size=3)
            Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).save(folder / f"{wnid}_{i}.JPEG", quality=90)
            written += 1
    return written


def make_imagenet(root: Path, classes: int, shots: int, val: int, jobs: int) -> Path:
    ddir = root / "imagenet"
    image_root = ddir / "images"
    wnids = [f"n{10000000 + i:08d}" for i in range(classes)]
    (ddir).mkdir(parents=True, exist_ok=True)
    (ddir / "classnames.txt").write_text("".join(f"{w} object class {i}\n" for i, w in enumerate(wnids)))
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(_write_class, [(image_root, w, i, shots, val) for i, w in enumerate(wnids)], chunksize=20))
    return root


def decode_rate(splits, items, backbone, workers: int, seconds: float) -> dict[str, float]:
    dataset = ImageItems(splits, items, transform_for_view(backbone, 1), 1, 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=False, num_workers=workers)
    count, t0 = 0, time.perf_counter()
    for images, _, _ in loader:
        count += len(images)
        if time.perf_counter() - t0 > seconds:
            break
    elapsed = time.perf_counter() - t0
    return {"workers": workers, "images": count, "seconds": elapsed, "images_per_second": count / elapsed}


def text_steps(method_name: str, backbone, classnames: list[str], steps: int, seconds: float) -> dict[str, Any]:
    overrides = {k: dict(v) for k, v in preset(method_name, "base2new", 16).items() if isinstance(v, dict)}
    config = resolve_config(None, overrides)
    torch.manual_seed(0)
    method = build_method(config, backbone, classnames)
    method.train()
    params = [p for p in method.parameters() if p.requires_grad]
    optim = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    e_dim = int(backbone.model.text_projection.shape[1])
    g = torch.Generator().manual_seed(0)
    times = []
    with Phase() as phase:
        t_start = time.perf_counter()
        while len(times) < steps and time.perf_counter() - t_start < seconds:
            feats = torch.nn.functional.normalize(torch.randn(32, e_dim, generator=g), dim=-1)
            labels = torch.randint(0, len(classnames), (32,), generator=g)
            t0 = time.perf_counter()
            with backbone.autocast():
                out = method.training_step(Batch(labels=labels, features=feats))
            optim.zero_grad()
            out.loss.backward()
            optim.step()
            times.append(time.perf_counter() - t0)
    steady = times[1:] or times
    return {
        "method": method_name,
        "classes": len(classnames),
        "steps": len(times),
        "seconds_per_step": float(np.median(steady)),
        "first_step_seconds": times[0],
        "epochs": int(config.train.epochs),
        "batch": int(config.train.batch_size),
        "peak_mb": phase.peak,
        "above_mb": phase.above,
    }


def run(args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    work = Path(args.work or tempfile.mkdtemp(prefix="rlptune-scale-"))
    out: dict[str, Any] = {
        "setting": {
            "classes": args.classes,
            "shots": args.shots,
            "val_per_class": args.val_per_class,
            "image_size": "500x375 JPEG",
            "backbone": "random:ViT-B-16",
            "precision": args.precision,
            "threads": args.threads,
        }
    }
    t0 = time.perf_counter()
    if not (work / "data" / "imagenet" / "classnames.txt").is_file():
        make_imagenet(work / "data", args.classes, args.shots, args.val_per_class, args.jobs)
    out["generate_seconds"] = time.perf_counter() - t0
    out["data_bytes"] = sum(p.stat().st_size for p in (work / "data").rglob("*.JPEG"))
    with Phase() as phase:
        splits = load_dataset("imagenet", work / "data")
    out["loader"] = {
        "seconds": phase.seconds,
        "train": len(splits.train),
        "test": len(splits.test),
        "peak_mb": phase.peak,
    }
    base, new = base_new(splits)
    out["base_new"] = {
        "base_classes": len(base.classnames),
        "new_classes": len(new.classnames),
        "base_train": len(base.train),
        "test_base": len(base.test),
        "test_new": len(new.test),
    }
    torch.manual_seed(0)
    with Phase() as phase:
        backbone = load_backbone("random:ViT-B-16", device="cpu", precision=args.precision)
    out["backbone_load"] = {"seconds": phase.seconds, "peak_mb": phase.peak}

    out["decode"] = [decode_rate(base, base.train, backbone, w, args.decode_seconds) for w in (0, 2)]
    cache = FeatureCache(work / "cache")
    sample = base.train[:: max(1, len(base.train) // args.image_sample)][: args.image_sample]
    with torch.no_grad():  # warm-up: the first bf16 pass pays one-off kernel set-up, not per-image cost
        backbone.encode_image(torch.zeros(2, 3, 224, 224))
    before = (
        sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file()) if (work / "cache").exists() else 0
    )
    with Phase() as phase:
        cache.get_or_encode(backbone, base, sample, view=1, batch_size=32, view_seed=1)
    after = sum(p.stat().st_size for p in (work / "cache").rglob("*") if p.is_file())
    per_image_bytes = (after - before) / len(sample)
    out["image_tower"] = {
        "images": len(sample),
        "seconds_per_image": phase.seconds / len(sample),
        "peak_mb": phase.peak,
        "cache_bytes_per_image_view": per_image_bytes,
    }
    out["text"] = [text_steps(m, backbone, base.classnames, args.steps, args.step_seconds) for m in ("coop", "rlp")]
    out["peak_mb"] = peak_mb()
    out["extrapolated"] = extrapolate(out)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return out


def extrapolate(out: dict[str, Any]) -> dict[str, Any]:
    """Whole runs on this CPU from the timed pieces (EXTRAPOLATED, not run)."""
    n = out["base_new"]["base_train"]
    img = out["image_tower"]["seconds_per_image"]
    test_images = out["setting"]["classes"] * 50  # ImageNet's 50 validation images per class, encoded once
    res = {"cache_bytes_per_epoch": n * out["image_tower"]["cache_bytes_per_image_view"]}
    for t in out["text"]:
        steps = n // t["batch"]
        epoch = n * img + steps * t["seconds_per_step"]
        res[t["method"]] = {
            "epochs": t["epochs"],
            "steps_per_epoch": steps,
            "epoch_hours": epoch / 3600,
            "image_hours_per_epoch": n * img / 3600,
            "text_hours_per_epoch": steps * t["seconds_per_step"] / 3600,
            "run_hours": (t["epochs"] * epoch + test_images * img) / 3600,
            "cache_gb_per_run": t["epochs"] * res["cache_bytes_per_epoch"] / 1e9,
        }
    return res


def markdown(out: dict[str, Any]) -> str:
    s, e = out["setting"], out["extrapolated"]
    lines = [
        f"{s['classes']} classes x {s['shots']} shots of {s['image_size']} ({out['data_bytes'] / 1e9:.2f} GB, "
        f"generated in {out['generate_seconds']:.0f} s), {s['backbone']} in {s['precision']}, {s['threads']} torch thread(s).",
        "",
        "| measured | value |",
        "|---|---:|",
        f"| ImageNet loader ({out['loader']['train']} train, {out['loader']['test']} val images) | {out['loader']['seconds']:.1f} s |",
        f"| base-to-new split | {out['base_new']['base_classes']} base / {out['base_new']['new_classes']} new classes, {out['base_new']['base_train']} training images |",
    ]
    for d in out["decode"]:
        lines.append(f"| decode + random crop + flip, {d['workers']} workers | {d['images_per_second']:.1f} images/s |")
    it = out["image_tower"]
    lines += [
        f"| image tower, fresh view ({it['images']} images) | {it['seconds_per_image']:.3f} s/image |",
        f"| feature-cache bytes per image and view | {it['cache_bytes_per_image_view']:.0f} B |",
    ]
    for t in out["text"]:
        lines.append(
            f"| {t['method']} text step at {t['classes']} classes, batch 32 ({t['steps']} steps timed) | "
            f"{t['seconds_per_step']:.2f} s/step (peak {t['peak_mb']:.0f} MB) |"
        )
    lines += [
        f"| peak resident memory of the process | {out['peak_mb']:.0f} MB |",
        "",
        "**Extrapolated** (not run): whole base-to-new runs on this CPU at the official recipes.",
        "",
        "| method | epochs | image h / epoch | text h / epoch | run (h) | cache per run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for m in ("coop", "rlp"):
        r = e[m]
        lines.append(
            f"| {m} | {r['epochs']} | {r['image_hours_per_epoch']:.2f} | {r['text_hours_per_epoch']:.2f} | "
            f"{r['run_hours']:.0f} | {r['cache_gb_per_run']:.2f} GB |"
        )
    lines.append(
        f"\nCache bytes per epoch (one fresh view of every base training image): {e['cache_bytes_per_epoch'] / 1e6:.1f} MB (extrapolated)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument(
        "--val-per-class", type=int, default=2, help="validation images per class generated (ImageNet: 50)"
    )
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--jobs", type=int, default=max(1, os.cpu_count() or 1), help="processes generating images")
    parser.add_argument("--decode-seconds", type=float, default=20.0)
    parser.add_argument("--image-sample", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="most text steps timed per method")
    parser.add_argument("--step-seconds", type=float, default=90.0, help="wall time bound of each method's text steps")
    parser.add_argument("--work", help="folder for the generated data and cache (default: a temporary one, removed)")
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json")
    parser.add_argument("--from-json")
    args = parser.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    out = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(markdown(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
