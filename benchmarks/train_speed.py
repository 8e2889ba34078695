"""Training speed: a CoOp-style reference loop against rlptune's loop, same backbone, data, method, epochs and seed.

The reference is written the way the CoOp implementation (and RLP's, built on it) trains: every step loads and
augments the batch's images and runs them through the frozen image tower, builds the 77-token prompts of all
classes and runs the text tower over all 77 positions, then takes one SGD step. rlptune's loop is the real
:class:`rlptune.engine.trainer.Trainer`: image features come from the feature cache (built once, its cost
reported apart) and the class prompts are encoded with the shared-prefix path (start token + context once per
step, each class's own tokens only).

Settings measured, in one run:

1. ViT-B-16-sized backbone with random weights (``random:ViT-B-16``), C = 100 classes, 16 shots, batch 32,
   CoOp (n = 16, random init) and RLP (n = 4 from "a photo of a", rank 1). The reference epoch is extrapolated
   from timed steps (``--ref-steps``; one step takes tens of seconds on a CPU); rlptune's epoch is timed whole.
   The random-weight backbone makes accuracy meaningless here, so none is printed for this setting.
2. Text-side scaling at 10 and 1,000 classes (same shots and batch): the reference step = the measured image-tower
   time of a 32-image batch + the 77-token text step (1,000 classes: 10 × the measured 100-class text time —
   the full 1,000 × 77-token backward does not fit in this machine's memory); rlptune's step measured directly,
   with ``text_chunk=100`` and activation checkpointing at 1,000 classes. Peak memory of that step is reported
   (process peak RSS, the loaded backbone included).
3. The micro suite (full training, both loops, every micro dataset) when the shipped micro weights exist.

Usage::

    .venv/bin/python benchmarks/train_speed.py                 # everything (~20 min on 2 busy CPU cores)
    .venv/bin/python benchmarks/train_speed.py --skip-b16       # micro suite only
    .venv/bin/python benchmarks/train_speed.py --json out.json  # also write the raw numbers

Memory is the peak resident set size of the process during a phase (``VmHWM`` after resetting it through
``/proc/self/clear_refs``; Linux), so it includes the loaded backbone; the table also gives it above the
baseline measured right before the phase.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rlptune.methods.base import Batch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlptune.backbones import Backbone, eval_transform, load_backbone, train_transform  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.data.items import DatasetSplits, Item  # noqa: E402
from rlptune.engine.features import FeatureCache, ImageItems, encode_items  # noqa: E402
from rlptune.engine.evaluate import evaluate_split  # noqa: E402
from rlptune.engine.schedule import learning_rate  # noqa: E402
from rlptune.engine.trainer import Trainer  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.text import text_embeddings  # noqa: E402

METHODS = {
    "CoOp n=16": {"method": {"name": "coop"}, "prompt": {"n_ctx": 16}},
    "RLP n=4 r=1": {"method": {"name": "rlp"}, "prompt": {"n_ctx": 4, "rank": 1}},
}

# -- memory ------------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak() -> float:
    """Return freed heap to the OS and reset the peak-RSS mark; return the current RSS (MB)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS") / 1024


def peak_mb() -> float:
    return _status_kb("VmHWM") / 1024


class Phase:
    """Wall time and peak RSS of a block."""

    def __enter__(self):
        self.base = reset_peak()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak = peak_mb()
        self.above = self.peak - self.base


# -- data --------------------------------------------------------------------------------------------------------------

ADJECTIVES = (
    "red spotted greater lesser common golden american european giant little northern southern eastern western "
    "black white striped long-tailed short-eared crested royal wild mountain desert river sea snow night "
    "grey green blue yellow brown pygmy horned hooded dwarf"
).split()
NOUNS = (
    "fox retriever lion blackbird beetle terrier shark mushroom violin tractor owl lizard crane snail kite heron "
    "salamander warbler moth spider bear whale frog eagle finch hound squirrel orchid cactus fern"
).split()


def class_names(count: int) -> list[str]:
    """Distinct, deterministic, ImageNet-like class names (1–3 words, 2–6 BPE tokens)."""
    names = []
    for i in range(count):
        adj, noun = ADJECTIVES[i % len(ADJECTIVES)], NOUNS[(i // len(ADJECTIVES)) % len(NOUNS)]
        extra = ADJECTIVES[(i * 7 + 3) % len(ADJECTIVES)] + " " if i % 3 == 0 else ""
        name = f"{extra}{adj} {noun}"
        k = 2
        while name in names:
            name, k = f"{name} {k}", k + 1
        names.append(name)
    return names


def make_dataset(
    root: Path, classes: list[str], per_class: int, test_per_class: int = 0, seed: int = 0
) -> DatasetSplits:
    """Small PNGs (noise + a coloured square per class); they go through the real resize/crop transforms."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    train, test = [], []
    for label, name in enumerate(classes):
        colour = rng.integers(0, 256, size=3)
        for split, count, out in (("train", per_class, train), ("test", test_per_class, test)):
            folder = root / split / f"c{label:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = rng.integers(60, 190, size=(48, 48, 3)).astype(np.uint8)
                x, y = rng.integers(0, 24, size=2)
                arr[y : y + 24, x : x + 24] = colour
                path = folder / f"{i:03d}.png"
                Image.fromarray(arr).save(path)
                out.append(Item(str(path.relative_to(root)), label, name))
    return DatasetSplits("bench", root, list(classes), train, [], test)


# -- the reference loop (CoOp-style) -------------------------------------------------------------------------------------


class RefPromptLearner(nn.Module):
    """CoOp's PromptLearner: [SOS][ctx][CLS . EOS pad] over the full 77 tokens; RLP's low-rank context if asked."""

    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int, rlp: bool, dropout: float = 0.1):
        super().__init__()
        model = backbone.model
        prompt_prefix = " ".join(["X"] * n_ctx)
        prompts = [f"{prompt_prefix} {name}." for name in classnames]
        tokenized = backbone.tokenize(prompts)
        with torch.no_grad():
            embedding = model.token_embedding(tokenized).float()
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])
        self.register_buffer("tokenized_prompts", tokenized)
        width = embedding.shape[-1]
        self.rlp = rlp
        if rlp:  # RLP: P = P_fr + Dropout(P_A @ P_B), P_fr = "a photo of a"
            self.register_buffer("frozen", text_embeddings(backbone, "a photo of a"))
            self.A = nn.Parameter(torch.randn(n_ctx, 1))
            self.B = nn.Parameter(torch.zeros(1, width))
            self.drop = nn.Dropout(dropout)
        else:
            self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02)
        self.n_cls = len(classnames)

    def forward(self) -> torch.Tensor:
        ctx = self.frozen + self.drop(self.A @ self.B) if self.rlp else self.ctx
        ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class RefTextEncoder(nn.Module):
    """CoOp's TextEncoder: positional embedding, the transformer over all 77 tokens, final LN, EOT pooling."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.transformer = model.transformer
        self.positional_embedding = model.positional_embedding
        self.ln_final = model.ln_final
        self.text_projection = model.text_projection
        self.register_buffer("attn_mask", model.attn_mask, persistent=False)

    def forward(self, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ self.text_projection


class RefCustomCLIP(nn.Module):
    def __init__(self, backbone: Backbone, classnames: list[str], n_ctx: int, rlp: bool):
        super().__init__()
        self.prompt_learner = RefPromptLearner(backbone, classnames, n_ctx, rlp)
        self.text_encoder = RefTextEncoder(backbone.model)
        self.image_encoder = backbone.model.visual
        self.logit_scale = backbone.model.logit_scale
        self.timing = {"image": 0.0, "text": 0.0}

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        image_features = self.image_encoder(image)
        t1 = time.perf_counter()
        prompts = self.prompt_learner()
        text_features = self.text_encoder(prompts, self.prompt_learner.tokenized_prompts)
        self.timing["image"] += t1 - t0
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return self.logit_scale.exp() * image_features @ text_features.t()


def _autocast(precision: str):
    """The reference's precision: nothing for fp32, CPU autocast for bf16 (the same context rlptune's backbone uses)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class ReferenceTrainer:
    """The CoOp training loop: data loader with augmentation, image tower + 77-token text every step, SGD."""

    def __init__(
        self, backbone: Backbone, splits: DatasetSplits, n_ctx: int, rlp: bool, config, precision: str = "fp32"
    ):
        self.backbone, self.splits, self.config = backbone, splits, config
        self.precision = precision  # "bf16": the whole step under CPU bf16 autocast, as rlptune's bf16 runs it
        torch.manual_seed(config.train.seed)
        self.model = RefCustomCLIP(backbone, splits.classnames, n_ctx, rlp)
        params = [p for n, p in self.model.named_parameters() if "prompt_learner" in n]
        s = config.train
        self.optim = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        self.dataset = ImageItems(splits, splits.train, train_transform(backbone))
        self.batch = s.batch_size

    def steps_per_epoch(self) -> int:
        return len(self.splits.train) // self.batch

    def run(self, epochs: int = 1, max_steps: int | None = None) -> list[dict]:
        """Train; return per-step timings (seconds: data, image, text forward+backward, total)."""
        s = self.config.train
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch,
            shuffle=True,
            drop_last=True,
            num_workers=0,
            generator=torch.Generator().manual_seed(s.seed),
        )
        steps = []
        device = next(self.model.parameters()).device  # the CPU here; a GPU in benchmarks/gpu_check.py
        for epoch in range(epochs):
            for group in self.optim.param_groups:
                group["lr"] = learning_rate(s, epoch)
            self.model.train()
            t_data = time.perf_counter()
            for images, labels, _ in loader:
                images, labels = images.to(device), labels.to(device)
                t0 = time.perf_counter()
                self.model.timing = {"image": 0.0}
                with _autocast(self.precision):
                    logits = self.model(images)
                    loss = F.cross_entropy(logits, labels)
                self.optim.zero_grad()
                loss.backward()
                self.optim.step()
                t1 = time.perf_counter()
                image = self.model.timing["image"]
                steps.append({"data": t0 - t_data, "image": image, "text": t1 - t0 - image, "total": t1 - t_data})
                t_data = time.perf_counter()
                if max_steps is not None and len(steps) >= max_steps:
                    return steps
        return steps

    @torch.no_grad()
    def evaluate(self) -> float:
        self.model.eval()
        items = ImageItems(self.splits, self.splits.test, eval_transform(self.backbone))
        loader = torch.utils.data.DataLoader(items, batch_size=128, shuffle=False)
        correct = total = 0
        for images, labels, _ in loader:
            correct += int((self.model(images).argmax(-1) == labels).sum())
            total += len(labels)
        return 100.0 * correct / max(total, 1)


# -- rlptune's loop ------------------------------------------------------------------------------------------------------


def rlptune_config(method: str, cache: Path, epochs: int, extra: dict | None = None, seed: int = 1):
    overrides = {k: dict(v) for k, v in METHODS[method].items()}
    overrides.setdefault("train", {}).update({"epochs": epochs, "seed": seed, "cache_dir": str(cache)})
    for section, values in (extra or {}).items():
        overrides.setdefault(section, {}).update(values)
    return resolve_config(None, overrides)


def rlptune_step_seconds(backbone, classnames, method: str, reps: int = 1, **text) -> tuple[float, Phase]:
    """One training step of rlptune's loop on cached features (batch 32): text fwd+bwd + one matmul + SGD."""
    config = rlptune_config(method, Path(tempfile.gettempdir()), 1, {"method": text} if text else None)
    torch.manual_seed(0)
    m = build_method(config, backbone, classnames)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.002, momentum=0.9)
    x = F.normalize(torch.randn(32, backbone.model.text_projection.shape[1]), dim=-1)
    y = torch.randint(0, len(classnames), (32,))
    m.train()
    times = []
    with Phase() as phase:
        for _ in range(reps):
            t0 = time.perf_counter()
            loss = m.training_step(Batch(labels=y, features=x)).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append(time.perf_counter() - t0)
    return min(times), phase


def ref_text_seconds(backbone, classnames, n_ctx: int) -> tuple[float, Phase]:
    """The reference's text part of one step (77 tokens, all classes, forward + backward)."""
    learner = RefPromptLearner(backbone, classnames, n_ctx, rlp=False)
    encoder = RefTextEncoder(backbone.model)
    with Phase() as phase:
        feats = encoder(learner(), learner.tokenized_prompts)
        F.normalize(feats, dim=-1).sum().backward()
    return phase.seconds, phase


# -- benchmark sections ----------------------------------------------------------------------------------------------------


def fmt_s(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.2f} s" if seconds < 10 else f"{seconds:.0f} s"


def bench_b16(args, log) -> dict:
    out: dict = {"setting": {"backbone": args.backbone, "classes": args.classes, "shots": args.shots, "batch": 32}}
    work = Path(tempfile.mkdtemp(prefix="rlptune-bench-"))
    names = class_names(max(args.classes, 1000))
    splits = make_dataset(work / "data", names[: args.classes], args.shots)
    t0 = time.perf_counter()
    torch.manual_seed(0)
    backbone = load_backbone(args.backbone, device="cpu")
    log(f"loaded {args.backbone} in {time.perf_counter() - t0:.0f}s; {len(splits.train)} training images")
    tok = backbone.tokenize([f"{n}." for n in names[: args.classes]])
    out["setting"]["mean_name_tokens"] = float((backbone.text.eot_positions(tok) - 1).float().mean())
    e_dim = int(backbone.model.text_projection.shape[1])
    steps_per_epoch = len(splits.train) // 32

    # cache build: throughput of the real encode path (load + augment + image tower) on a sample, extrapolated
    sample = splits.train[:: max(1, len(splits.train) // args.cache_sample)][: args.cache_sample]
    with Phase() as phase:
        encode_items(backbone, splits, sample, view=1, batch_size=32)
    per_image = phase.seconds / len(sample)
    # views encoded over a whole run: one per epoch in the default fresh mode, K with --aug-views K
    views = args.aug_views if args.aug_views > 0 else args.protocol_epochs
    out["cache"] = {
        "images_timed": len(sample),
        "seconds_per_image": per_image,
        "views": views,
        "build_seconds_extrapolated": per_image * views * len(splits.train),
        "peak_mb": phase.peak,
    }
    log(
        f"cache build: {per_image:.2f}s/image -> {views} views x {len(splits.train)} images = "
        f"{fmt_s(out['cache']['build_seconds_extrapolated'])} (extrapolated)"
    )

    results = {}
    for method, settings in METHODS.items():
        n_ctx, rlp = settings["prompt"]["n_ctx"], settings["method"]["name"] == "rlp"
        config = rlptune_config(method, work / "cache", 1)
        # reference: timed steps (first one is warm-up, not counted), extrapolated to the epoch
        ref = ReferenceTrainer(backbone, splits, n_ctx, rlp, config)
        with Phase() as ref_phase:
            steps = ref.run(epochs=1, max_steps=args.ref_steps + 1)
        timed = steps[1:] or steps
        ref_step = statistics.mean(s["total"] for s in timed)
        ref_img = statistics.mean(s["image"] + s["data"] for s in timed)
        ref_txt = statistics.mean(s["text"] for s in timed)
        log(
            f"[{method}] reference: {ref_step:.1f}s/step (images {ref_img:.1f}s, text {ref_txt:.1f}s), "
            f"{len(timed)} timed steps, peak {ref_phase.peak:.0f} MB"
        )
        # rlptune: the real Trainer, one whole epoch, on cached features (random unit vectors of the right shape:
        # the values do not change the time; the real build cost is measured above)
        method_obj = build_method(config, backbone, splits.classnames)
        trainer = Trainer(
            config, method_obj, splits, work / f"run-{rlp}", cache=FeatureCache(work / "cache"), progress=False
        )
        feats = F.normalize(torch.randn(len(splits.train), e_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
        trainer.epoch_features = lambda epoch, feats=feats: feats
        rlptune_step_seconds(backbone, splits.classnames[:4], method)  # warm-up of kernels and allocator
        with Phase() as ours_phase:
            state = trainer.fit()
        ours_epoch = ours_phase.seconds
        ours_step = ours_epoch / max(1, state.records[-1]["steps"])
        log(f"[{method}] rlptune: epoch {ours_epoch:.1f}s ({ours_step:.2f}s/step), peak {ours_phase.peak:.0f} MB")
        ref_epoch = ref_step * steps_per_epoch
        results[method] = {
            "ref_step": ref_step,
            "ref_image_part": ref_img,
            "ref_text_part": ref_txt,
            "ref_epoch": ref_epoch,
            "ref_timed_steps": len(timed),
            "ref_peak_mb": ref_phase.peak,
            "ref_above_mb": ref_phase.above,
            "ours_epoch": ours_epoch,
            "ours_step": ours_step,
            "ours_peak_mb": ours_phase.peak,
            "ours_above_mb": ours_phase.above,
            "ratio_epoch": ref_epoch / ours_epoch,
        }
        cache_s = out["cache"]["build_seconds_extrapolated"]
        for epochs in (args.protocol_epochs,):
            whole_ref, whole_ours = epochs * ref_epoch, cache_s + epochs * ours_epoch
            results[method]["whole_run"] = {
                "epochs": epochs,
                "ref": whole_ref,
                "ours": whole_ours,
                "ratio": whole_ref / whole_ours,
            }

    # text-side scaling: 10 and 1,000 classes (and the plain-path ablation at 100)
    scaling = {}
    for method, settings in METHODS.items():
        n_ctx = settings["prompt"]["n_ctx"]
        img_part = results[method]["ref_image_part"]
        rows = {}
        for count in sorted({10, args.classes, 1000}):
            cls = names[:count]
            steps = count * args.shots // 32
            if count == args.classes:  # measured inside the reference steps above
                ref_text, extrap = results[method]["ref_text_part"], False
            elif count < 1000:
                ref_text, extrap = ref_text_seconds(backbone, cls, n_ctx)[0], False
            else:  # 1,000 classes: (1000 / C) x the measured C-class text step (77 x 1000 tokens do not fit in memory)
                ref_text, extrap = results[method]["ref_text_part"] * count / args.classes, True
            if count >= 1000:
                ours, phase = rlptune_step_seconds(backbone, cls, method, reps=1, text_chunk=100, checkpoint_text=True)
            else:
                ours, phase = rlptune_step_seconds(backbone, cls, method, reps=2)
            ref_step = img_part + ref_text
            rows[count] = {
                "steps_per_epoch": steps,
                "ref_step": ref_step,
                "ref_text_extrapolated": extrap,
                "ours_step": ours,
                "ref_epoch": ref_step * steps,
                "ours_epoch": ours * steps,
                "ratio": ref_step / ours,
                "ours_step_peak_mb": phase.peak,
                "ours_step_above_mb": phase.above,
            }
            log(
                f"[{method}] {count} classes: ref {ref_step:.1f}s/step, rlptune {ours:.2f}s/step "
                f"(ratio {ref_step / ours:.1f}x), rlptune step peak {phase.peak:.0f} MB"
            )
        plain, _ = rlptune_step_seconds(backbone, names[: args.classes], method, reps=1, shared_prefix=False)
        rows["plain_path_step_at_C"] = plain
        log(f"[{method}] {args.classes} classes, rlptune without shared prefix: {plain:.2f}s/step")
        scaling[method] = rows
    # memory of a 1,000-class step without chunking, for comparison
    _, phase = rlptune_step_seconds(backbone, names[:1000], "CoOp n=16", reps=1)
    out["memory_1000_unchunked"] = {"peak_mb": phase.peak, "above_mb": phase.above}
    log(f"1,000 classes CoOp n=16 step without chunking: peak {phase.peak:.0f} MB")
    out["methods"], out["scaling"] = results, scaling
    return out


SWEEP_METHODS = ("coop", "rlp", "kgcoop")  # the SGD-trained frozen-image methods of the base-to-new sweep


def _fit_epoch_seconds(config, backbone, splits, work: Path, name: str) -> tuple[float, int]:
    """One whole ``Trainer.fit`` epoch on precomputed features (the image side is timed apart): seconds, steps."""
    e_dim = int(backbone.model.text_projection.shape[1])
    method = build_method(config, backbone, splits.classnames, splits.template)
    trainer = Trainer(config, method, splits, work / name, cache=FeatureCache(work / "cache"), progress=False)
    feats = F.normalize(torch.randn(len(splits.train), e_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    trainer.epoch_features = lambda epoch, feats=feats: feats
    with Phase() as phase:
        state = trainer.fit()
    return phase.seconds, int(state.records[-1]["steps"])


def extrapolate(q: dict, image_cost: str = "measured") -> dict:
    """Whole runs at the official epochs from the timed pieces of :func:`bench_equal_fidelity`.

    ``image_cost``: "measured" = each side's own per-image figure (the reference's from its steps, rlptune's from
    ``encode_items``); "equal" = both sides pay the mean of all per-image measurements, "equal-max" the largest (the
    image work is the same code on both sides — load, crop, tower — so a difference between the figures is the
    machine's load changing; a larger image cost lowers the ratio, so "equal-max" is the conservative one)."""
    s, r, img, sw, si = q["setting"], q["reference"], q["image"], q["sweep"], q["single"]
    f_img, c_img = img["fresh_per_image"], img["centre_per_image"]
    r_base, r_single = r["base"]["image_per_image"], r["single"]["image_per_image"]
    if image_cost in ("equal", "equal-max"):
        samples = list(img.get("fresh_per_image_samples", [f_img])) + [r_base, r_single]
        f_img = r_base = r_single = c_img = max(samples) if image_cost == "equal-max" else statistics.mean(samples)
    n_base, classes, shots, seeds = s["base_classes"], s["classes"], s["shots"], s["sweep_seeds"]
    n_train, n_full = n_base * shots, classes * shots
    n_test_base, n_test = n_base * s["test_per_class"], classes * s["test_per_class"]
    epochs_of, batch_of, ours, lp_fit = sw["epochs"], sw["batch"], sw["ours_epochs"], sw["probe_fit"]
    ref_runs = {}
    for (
        method
    ) in SWEEP_METHODS:  # per seed: E epochs of (the epoch's images + steps x 77-token text) + base and new tests
        ref_runs[method] = (
            epochs_of[method] * (n_train * r_base + n_train // batch_of[method] * r["base"]["text_step"])
            + n_test * c_img
        )
    ref_runs["linear_probe"] = n_train * c_img + n_test_base * c_img + lp_fit
    ref_runs["zeroshot"] = n_test * c_img  # once: it has no seed
    ref_sweep = seeds * sum(ref_runs[m] for m in (*SWEEP_METHODS, "linear_probe")) + ref_runs["zeroshot"]

    def ours_sweep(views_per_seed: int) -> dict:
        images = seeds * views_per_seed * n_train * f_img  # each (seed, epoch) view encoded once, read by every method
        text = seeds * sum(epochs_of[m] * ours[m]["epoch_text"] for m in SWEEP_METHODS)
        probe = seeds * (n_train * c_img + lp_fit)
        tests = n_test * c_img  # base + new test features once per backbone, shared by every run
        return {"images": images, "text": text, "probe": probe, "tests": tests, "total": images + text + probe + tests}

    fresh, views4 = ours_sweep(max(epochs_of.values())), ours_sweep(4)
    e = si["epochs"]
    ref_epoch = n_full * r_single + (n_full // 32) * r["single"]["text_step"]
    ref_single = e * ref_epoch + n_test * c_img
    ours_single = {v: v * n_full * f_img + e * si["ours_epoch_text"] + n_test * c_img for v in (e, 4)}
    return {
        "sweep": {
            **sw,
            "reference_runs": ref_runs,
            "reference": ref_sweep,
            "ours_fresh": fresh,
            "ours_4views": views4,
            "ratio_fresh": ref_sweep / fresh["total"],
            "ratio_4views": ref_sweep / views4["total"],
        },
        "single": {
            **si,
            "reference": ref_single,
            "ours_fresh": ours_single[e],
            "ours_4views": ours_single[4],
            "ratio_fresh": ref_single / ours_single[e],
            "ratio_4views": ref_single / ours_single[4],
            "ref_epoch": ref_epoch,
            "ours_epoch_fresh": n_full * f_img + si["ours_epoch_text"],
        },
        "image_cost": image_cost,
    }


def bench_equal_fidelity(args, log) -> dict:
    """Speed at equal fidelity: both sides draw a fresh crop + flip per image per epoch (the official recipe).

    Measured in one run on the ViT-B-16-sized backbone: the reference's steps (image part and 77-token text part),
    rlptune's per-image cost of encoding a fresh view, one whole ``Trainer.fit`` epoch per method on precomputed
    features, the centre-crop encode (test sets, linear probe) and one logistic-regression fit; whole runs at the
    official epoch counts are extrapolated from these (one epoch of either side takes tens of minutes here).
    """
    from rlptune.methods.linear_probe import FITTERS, resolve_solver
    from rlptune.recipes import preset

    work = Path(tempfile.mkdtemp(prefix="rlptune-eqfid-"))
    names = class_names(args.classes)
    full = make_dataset(work / "data", names, args.shots)
    n_base = args.classes // 2
    base = DatasetSplits(
        "bench-base", full.root, names[:n_base], [it for it in full.train if it.label < n_base], [], []
    )
    torch.manual_seed(0)
    precision = getattr(args, "precision", "fp32")
    backbone = load_backbone(args.backbone, device="cpu", precision=precision)
    e_dim = int(backbone.model.text_projection.shape[1])
    out: dict = {
        "setting": {
            "backbone": args.backbone,
            "classes": args.classes,
            "base_classes": n_base,
            "shots": args.shots,
            "test_per_class": args.test_per_class,
            "sweep_seeds": args.sweep_seeds,
            "precision": precision,
        }
    }

    # image side, rlptune's encode path (load + crop + image tower): a fresh view and the centre crop, per image
    sample = full.train[:: max(1, len(full.train) // args.cache_sample)][: args.cache_sample]
    encode_items(backbone, full, sample[:2], view=1, batch_size=32, view_seed=99)  # warm-up: one-off kernel set-up
    with Phase() as fresh:
        encode_items(backbone, full, sample, view=1, batch_size=32, view_seed=1)
    with Phase() as centre:
        encode_items(backbone, full, sample, view=0, batch_size=32)
    img = {
        "fresh_per_image": fresh.seconds / len(sample),
        "centre_per_image": centre.seconds / len(sample),
        "timed": len(sample),
    }
    log(
        f"[equal fidelity] image side: fresh view {img['fresh_per_image']:.2f} s/image, centre {img['centre_per_image']:.2f} s/image"
    )

    # sharing: two methods of one seed read one fresh view (the second is a cache hit), other seeds get other crops
    tiny = DatasetSplits("bench-share", full.root, names[:2], [it for it in full.train if it.label < 2][:4], [], [])
    share_cache = FeatureCache(work / "share-cache")
    timings, views = {}, {}
    for method, seed in (("coop", 1), ("kgcoop", 1), ("coop", 2)):
        cfg = resolve_config(
            None,
            {
                "method": {"name": method},
                "data": {"shots": args.shots},
                "train": {"seed": seed, "cache_dir": str(work / "share-cache")},
            },
        )
        trainer = Trainer(
            cfg,
            build_method(cfg, backbone, tiny.classnames),
            tiny,
            work / f"share-{method}-{seed}",
            cache=share_cache,
            progress=False,
        )
        t0 = time.perf_counter()
        views[(method, seed)] = trainer.epoch_features(0)
        timings[f"{method} seed {seed}"] = time.perf_counter() - t0
    out["sharing"] = {
        "seconds": timings,
        "same_seed_equal": bool(torch.equal(views[("coop", 1)], views[("kgcoop", 1)])),
        "other_seed_differs": not torch.equal(views[("coop", 1)], views[("coop", 2)]),
    }
    log(
        f"[equal fidelity] sharing: {timings} equal within a seed {out['sharing']['same_seed_equal']}, "
        f"differs across seeds {out['sharing']['other_seed_differs']}"
    )

    # the reference's steps: 100 classes CoOp n=16 (the single run), the 50 base classes n=4 (the base-to-new recipe;
    # RLP's and KgCoOp's reference steps are this step: 77-token text of the same classes, their extra terms are tiny)
    ref = {}
    for label, splits, n_ctx in (("single", full, 16), ("base", base, 4)):
        config = rlptune_config("CoOp n=16", work / "cache", 1)
        trainer = ReferenceTrainer(backbone, splits, n_ctx, False, config, precision=precision)
        steps = trainer.run(epochs=args.ref_steps + 1, max_steps=args.ref_steps + 1)[1:]
        batch = 32
        ref[label] = {
            "image_per_image": statistics.mean(s["image"] + s["data"] for s in steps) / batch,
            "text_step": statistics.mean(s["text"] for s in steps),
            "timed_steps": len(steps),
            "classes": len(splits.classnames),
        }
        log(
            f"[equal fidelity] reference {label}: image {ref[label]['image_per_image']:.2f} s/image, "
            f"text {ref[label]['text_step']:.1f} s/step ({len(splits.classnames)} classes, {len(steps)} timed steps)"
        )
    out["reference"] = ref
    # the image side again, right after the reference's steps: the load on a shared machine drifts over minutes, so
    # rlptune's per-image figures are the mean of a measurement before and one after the reference's
    with Phase() as fresh2:
        encode_items(backbone, full, sample, view=2, batch_size=32, view_seed=1)
    with Phase() as centre2:
        encode_items(backbone, full, sample, view=0, batch_size=32)
    img["fresh_per_image_samples"] = [img["fresh_per_image"], fresh2.seconds / len(sample)]
    img["centre_per_image_samples"] = [img["centre_per_image"], centre2.seconds / len(sample)]
    img["fresh_per_image"] = statistics.mean(img["fresh_per_image_samples"])
    img["centre_per_image"] = statistics.mean(img["centre_per_image_samples"])
    log(
        f"[equal fidelity] image side again: fresh view {fresh2.seconds / len(sample):.2f} s/image, "
        f"centre {centre2.seconds / len(sample):.2f} s/image"
    )

    # rlptune: one whole Trainer.fit epoch per method (features precomputed; the image side is counted from above)
    epochs_of, batch_of, ours = {}, {}, {}
    for method in SWEEP_METHODS:
        recipe = preset(method, "base2new", args.shots)
        epochs_of[method], batch_of[method] = int(recipe["train"]["epochs"]), int(recipe["train"]["batch_size"])
        overrides = {k: dict(v) for k, v in recipe.items() if isinstance(v, dict)}  # the base-to-new recipe as settings
        overrides["train"].update(
            {
                "epochs": 1,
                "seed": 1,
                "cache_dir": str(work / "cache"),
                "val_every": 0,
                "checkpoint_every": 0,
                "log_diagnostics": False,
            }
        )
        config = resolve_config(None, overrides)
        seconds, steps = _fit_epoch_seconds(config, backbone, base, work, f"ours-{method}")
        ours[method] = {"epoch_text": seconds, "steps": steps}
        log(
            f"[equal fidelity] rlptune {method}: epoch {seconds:.1f} s ({steps} steps, batch {batch_of[method]}, "
            f"{epochs_of[method]} official epochs)"
        )
    single_cfg = rlptune_config(
        "CoOp n=16", work / "cache", 1, {"train": {"val_every": 0, "checkpoint_every": 0, "log_diagnostics": False}}
    )
    single_seconds, single_steps = _fit_epoch_seconds(single_cfg, backbone, full, work, "ours-single")
    log(
        f"[equal fidelity] rlptune single CoOp n=16, {args.classes} classes: epoch {single_seconds:.1f} s ({single_steps} steps)"
    )

    # linear probe: one logistic-regression fit (the same solver and search on both sides: counted on both)
    fit = FITTERS[resolve_solver("auto")]
    x = F.normalize(torch.randn(len(base.train), e_dim), dim=-1)
    y = torch.tensor([it.label for it in base.train])
    with Phase() as lp:
        fit(x, y, n_base, 1.0, 1000)
    lp_fit = lp.seconds * args.probe_fits
    log(f"[equal fidelity] linear probe: one fit {lp.seconds:.1f} s x {args.probe_fits} fits of the C search")

    out["image"] = img
    out["sweep"] = {"epochs": epochs_of, "batch": batch_of, "ours_epochs": ours, "probe_fit": lp_fit}
    out["single"] = {
        "epochs": int(preset("coop", "few-shot", args.shots)["train"]["epochs"]),
        "ours_epoch_text": single_seconds,
        "steps": single_steps,
    }
    out.update(extrapolate(out))
    log(
        f"[equal fidelity] single CoOp: ratio {out['single']['ratio_fresh']:.2f}x fresh, {out['single']['ratio_4views']:.1f}x 4 views; "
        f"sweep: {out['sweep']['ratio_fresh']:.2f}x fresh, {out['sweep']['ratio_4views']:.1f}x 4 views"
    )
    return out


def bench_micro(args, log) -> dict | None:
    try:
        backbone = load_backbone(args.micro_backbone, device="cpu")
    except Exception as exc:  # weights not shipped (yet)
        log(f"micro suite skipped: {str(exc).splitlines()[0]}")
        return {"skipped": str(exc).splitlines()[0]}
    from rlptune.micro.suite import MICRO_DATASETS, load_micro_dataset
    from rlptune.data.fewshot import fewshot_splits

    work = Path(tempfile.mkdtemp(prefix="rlptune-micro-bench-"))
    epochs = args.micro_epochs or resolve_config(None, {}).train.epochs
    rows = {}
    for dataset in args.micro_datasets or MICRO_DATASETS:
        full = load_micro_dataset(dataset)
        for method, settings in METHODS.items():
            n_ctx, rlp = settings["prompt"]["n_ctx"], settings["method"]["name"] == "rlp"
            accs = {"ref": [], "ours": []}
            times = {"ref": [], "ours": [], "cache": []}
            for seed in args.micro_seeds:
                splits = fewshot_splits(full, args.shots, seed)
                config = rlptune_config(
                    method, work / "cache", epochs, {"train": {"aug_views": args.aug_views}}, seed=seed
                )
                ref = ReferenceTrainer(backbone, splits, n_ctx, rlp, config)
                with Phase() as p_ref:
                    ref.run(epochs=epochs)
                accs["ref"].append(ref.evaluate())
                times["ref"].append(p_ref.seconds / epochs)
                torch.manual_seed(seed)
                m = build_method(config, backbone, splits.classnames, splits.template)
                cache = FeatureCache(work / "cache")
                trainer = Trainer(config, m, splits, work / f"{dataset}-{rlp}-{seed}", cache=cache, progress=False)
                with Phase() as p_cache:
                    for epoch in range(epochs):  # every epoch's view (fresh mode: one per epoch), encoded apart
                        trainer.epoch_features(epoch)
                    cache.get_or_encode(backbone, splits, splits.test, view=0)
                with Phase() as p_ours:
                    trainer.fit()
                accs["ours"].append(evaluate_split(m, splits, "test", cache)["top1"])
                times["ours"].append(p_ours.seconds / epochs)
                times["cache"].append(p_cache.seconds)
            row = {k: statistics.mean(v) for k, v in times.items()}
            row.update({f"acc_{k}": statistics.mean(v) for k, v in accs.items()})
            row.update({f"acc_{k}_sd": (statistics.stdev(v) if len(v) > 1 else 0.0) for k, v in accs.items()})
            row["ratio_epoch"] = row["ref"] / row["ours"]
            rows[f"{dataset} / {method}"] = row
            log(
                f"[micro {dataset} {method}] ref {row['ref']:.2f}s/epoch acc {row['acc_ref']:.1f}  |  rlptune "
                f"{row['ours']:.2f}s/epoch acc {row['acc_ours']:.1f} (cache {row['cache']:.1f}s)  ratio {row['ratio_epoch']:.1f}x"
            )
    return {"epochs": epochs, "seeds": list(args.micro_seeds), "rows": rows}


# -- report ----------------------------------------------------------------------------------------------------------------


def markdown_equal_fidelity(q: dict, threads: int, load: str) -> list[str]:
    s, r, sw, si, img = q["setting"], q["reference"], q["sweep"], q["single"], q["image"]
    lines = [
        f"**Equal fidelity** ({s['backbone']}, {threads} thread(s), load average {load}): both sides draw a fresh "
        f"crop + flip per image per epoch; whole runs extrapolated from the timed pieces below.",
        "",
        "| timed piece | seconds |",
        "|---|---|",
        f"| reference, image part per image (load + crop + tower, in its steps) | {r['base']['image_per_image']:.2f} |",
        f"| reference, 77-token text step, {r['single']['classes']} classes, CoOp n=16 | {r['single']['text_step']:.1f} |",
        f"| reference, 77-token text step, {r['base']['classes']} base classes, n=4 | {r['base']['text_step']:.1f} |",
        f"| rlptune, fresh view per image (load + crop + tower, `encode_items`) | {img['fresh_per_image']:.2f} |",
        f"| rlptune / reference, centre crop per image (tests, probe) | {img['centre_per_image']:.2f} |",
        f"| rlptune, one `Trainer.fit` epoch, CoOp n=16, {r['single']['classes']} classes ({si['steps']} steps) | {si['ours_epoch_text']:.1f} |",
    ]
    for m, o in sw["ours_epochs"].items():
        lines.append(
            f"| rlptune, one `Trainer.fit` epoch, {m} base-to-new recipe, {s['base_classes']} classes ({o['steps']} steps, batch {sw['batch'][m]}) | {o['epoch_text']:.1f} |"
        )
    sh = q["sharing"]
    lines += [
        "",
        f"Sharing check (4 images): first read of a seed's epoch-0 view {sh['seconds'].get('coop seed 1', 0):.2f} s, a "
        f"second method of the same seed {sh['seconds'].get('kgcoop seed 1', 0):.3f} s (cache hit, features equal: "
        f"{sh['same_seed_equal']}); another seed draws other crops: {sh['other_seed_differs']}.",
        "",
        "| run | image cost | epochs | reference | rlptune fresh (default) | ratio | rlptune `--aug-views 4` | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    if "probe_fit" not in sw:  # a file written before the probe fit was stored: recover it from the probe's run
        n_train, c_img = s["base_classes"] * s["shots"], img["centre_per_image"]
        sw["probe_fit"] = (
            sw["reference_runs"]["linear_probe"] - (n_train + s["base_classes"] * s["test_per_class"]) * c_img
        )
    for mode, label in (("measured", "as measured"), ("equal", "equal: mean"), ("equal-max", "equal: largest")):
        x = extrapolate(q, mode)
        xs, xw = x["single"], x["sweep"]
        lines += [
            f"| one CoOp n=16 run, {s['classes']} classes × {s['shots']} shots | {label} | {xs['epochs']} | {fmt_s(xs['reference'])} | "
            f"{fmt_s(xs['ours_fresh'])} | **{xs['ratio_fresh']:.2f}×** | {fmt_s(xs['ours_4views'])} | {xs['ratio_4views']:.1f}× |",
            f"| base-to-new sweep: zero-shot + (linear probe, CoOp, RLP, KgCoOp) × {s['sweep_seeds']} seeds | {label} | "
            f"{', '.join(f'{m} {e}' for m, e in xw['epochs'].items())} | {fmt_s(xw['reference'])} | "
            f"{fmt_s(xw['ours_fresh']['total'])} | **{xw['ratio_fresh']:.2f}×** | {fmt_s(xw['ours_4views']['total'])} | {xw['ratio_4views']:.1f}× |",
        ]
    x = extrapolate(q, "measured")
    xs, xw = x["single"], x["sweep"]
    lines += [
        "",
        f"rlptune's fresh sweep (as measured) splits into: fresh views {fmt_s(xw['ours_fresh']['images'])}, text steps "
        f"{fmt_s(xw['ours_fresh']['text'])}, linear probe {fmt_s(xw['ours_fresh']['probe'])}, test features "
        f"{fmt_s(xw['ours_fresh']['tests'])}. Per epoch of the single run: reference {fmt_s(xs['ref_epoch'])}, rlptune "
        f"{fmt_s(xs['ours_epoch_fresh'])} (fresh view included).",
    ]
    return lines


def markdown(report: dict) -> str:
    lines = []
    if report.get("equal_fidelity"):
        load = report.get("loadavg_start", [float("nan")])[0], report.get("loadavg_end", [float("nan")])[0]
        lines += markdown_equal_fidelity(
            report["equal_fidelity"], report["threads"], f"{load[0]:.1f} → {load[1]:.1f}"
        ) + [""]
    b = report.get("b16")
    if b:
        s = b["setting"]
        c = b["cache"]
        lines += [
            f"**{s['backbone']} backbone, {s['classes']} classes × {s['shots']} shots, batch {s['batch']}, "
            f"one epoch** (mean class name {s['mean_name_tokens']:.1f} BPE tokens; {report['threads']} thread(s); "
            f"reference epoch extrapolated from {next(iter(b['methods'].values()))['ref_timed_steps']} timed steps "
            f"after a warm-up step; rlptune epoch timed whole)",
            "",
            "| method | reference s/step (image + text) | reference epoch* | rlptune epoch | ratio ref / rlptune | "
            "peak RSS ref | peak RSS rlptune | accuracy |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for method, r in b["methods"].items():
            lines.append(
                f"| {method} | {r['ref_step']:.1f} ({r['ref_image_part']:.1f} + {r['ref_text_part']:.1f}) | "
                f"{fmt_s(r['ref_epoch'])} | {fmt_s(r['ours_epoch'])} | **{r['ratio_epoch']:.1f}×** | "
                f"{r['ref_peak_mb']:.0f} MB | {r['ours_peak_mb']:.0f} MB | n/a (random weights) |"
            )
        lines += [
            "",
            "\\* reference epoch = steps per epoch × the mean timed step (data loading + augmentation + image tower + "
            "77-token text forward/backward + SGD); rlptune epoch = one whole `Trainer.fit` epoch (first step, "
            "metrics, diagnostics and checkpoint included) on cached features.",
            "",
            f"Cache build (apart): {c['seconds_per_image']:.2f} s/image (timed on {c['images_timed']} images, load + "
            f"augment + image tower) × {c['views']} views × {s['classes'] * s['shots']} images = "
            f"{fmt_s(c['build_seconds_extrapolated'])}, once per (backbone, data, seed, view); shared by every method of a "
            f"seed (fresh views), or by methods and seeds (`--aug-views K`).",
            "",
            "| method | whole run (epochs) | reference | rlptune incl. cache build | ratio |",
            "|---|---|---|---|---|",
        ]
        for method, r in b["methods"].items():
            w = r["whole_run"]
            lines.append(
                f"| {method} | {w['epochs']} | {fmt_s(w['ref'])} | {fmt_s(w['ours'])} | **{w['ratio']:.1f}×** |"
            )
        lines += [
            "",
            "Text-side scaling (same shots and batch; per step; epoch = steps × step):",
            "",
            "| method | classes | steps/epoch | reference s/step | rlptune s/step | ratio | rlptune step peak RSS |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, rows in b["scaling"].items():
            for count, r in rows.items():
                if not isinstance(r, dict):
                    continue
                note = f" (text ×{int(count) / s['classes']:g} extrapolated)" if r["ref_text_extrapolated"] else ""
                chunk = " (chunk 100 + checkpointing)" if int(count) >= 1000 else ""
                lines.append(
                    f"| {method} | {count} | {r['steps_per_epoch']} | {r['ref_step']:.1f}{note} | {r['ours_step']:.2f}{chunk} | "
                    f"**{r['ratio']:.1f}×** | {r['ours_step_peak_mb']:.0f} MB ({r['ours_step_above_mb']:+.0f} MB) |"
                )
        for method, rows in b["scaling"].items():
            lines.append(
                f"\nrlptune at {s['classes']} classes without the shared prefix ({method}): "
                f"{rows['plain_path_step_at_C']:.2f} s/step."
            )
        m = b["memory_1000_unchunked"]
        lines.append(
            f"\n1,000-class CoOp n=16 step without chunking: peak RSS {m['peak_mb']:.0f} MB ({m['above_mb']:+.0f} MB)."
        )
    mic = report.get("micro")
    if mic and "rows" in mic:
        lines += [
            "",
            f"**Micro suite, full training ({mic['epochs']} epochs, seeds {mic['seeds']})**",
            "",
            "| dataset / method | reference s/epoch | rlptune s/epoch | ratio | cache build | acc reference | acc rlptune |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in mic["rows"].items():
            lines.append(
                f"| {name} | {r['ref']:.2f} | {r['ours']:.2f} | **{r['ratio_epoch']:.1f}×** | {r['cache']:.1f} s | "
                f"{r['acc_ref']:.1f} ± {r['acc_ref_sd']:.1f} | {r['acc_ours']:.1f} ± {r['acc_ours_sd']:.1f} |"
            )
    elif mic:
        lines += ["", f"Micro suite: skipped ({mic['skipped']})."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--backbone", default="random:ViT-B-16", help="backbone of the timed setting (a tiny JSON for a smoke run)"
    )
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--ref-steps", type=int, default=2, help="timed reference steps (after one warm-up step)")
    parser.add_argument("--cache-sample", type=int, default=64, help="images timed for the cache-build cost")
    parser.add_argument(
        "--protocol-epochs", type=int, default=200, help="epochs of the whole-run ratio (CoOp 16 shots: 200)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared, busy CPU)")
    parser.add_argument(
        "--aug-views",
        type=int,
        default=0,
        help="views in the cache-build cost: 0 = a fresh view per epoch (the default mode), K = K cached views",
    )
    parser.add_argument("--skip-b16", action="store_true")
    parser.add_argument(
        "--equal-fidelity",
        action="store_true",
        help="run the equal-fidelity section: one CoOp run and the base-to-new sweep, fresh views on both sides",
    )
    parser.add_argument(
        "--test-per-class",
        type=int,
        default=50,
        help="test images per class in the equal-fidelity extrapolation (ImageNet: 50)",
    )
    parser.add_argument("--sweep-seeds", type=int, default=3, help="seeds of the base-to-new sweep")
    parser.add_argument(
        "--probe-fits",
        type=int,
        default=15,
        help="logistic-regression fits of the probe's C search (CoOp's lpclip: 7 + 8)",
    )
    parser.add_argument("--skip-micro", action="store_true")
    parser.add_argument("--micro-backbone", default="micro", help="backbone of the micro-suite runs")
    parser.add_argument("--micro-epochs", type=int, default=0, help="0 = the library's default epochs")
    parser.add_argument("--micro-seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--micro-datasets", nargs="*", default=None)
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--from-json", help="only print the tables of a previous --json file")
    args = parser.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    report = {"threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count()}
    with contextlib.suppress(OSError):
        report["loadavg_start"] = os.getloadavg()
    if args.equal_fidelity:
        report["equal_fidelity"] = bench_equal_fidelity(args, log)
    if not args.skip_b16:
        report["b16"] = bench_b16(args, log)
    if not args.skip_micro:
        report["micro"] = bench_micro(args, log)
    with contextlib.suppress(OSError):
        report["loadavg_end"] = os.getloadavg()
    text = markdown(report)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
