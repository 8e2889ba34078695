"""Protocol fidelity: rlptune's CoOp, RLP and KgCoOp against a CoOp-style reference loop, seed by seed.

The **reference** is written here, the way the official CoOp / KgCoOp code trains (and RLP's recipe is CoOp's):
``torch.manual_seed(seed)`` then the prompt is built (its random init drawn from the global generator, as Dassl's
``set_random_seed`` leaves it); every epoch a ``RandomSampler``-shuffled loader (global generator, last incomplete
batch dropped when the split holds a full batch) loads each batch's images and draws a new random resized crop
(area 0.08–1, bicubic) and flip for every image; the frozen image tower encodes them; the prompts of all classes go
through the text tower over all 77 token positions (``[SOS][ctx][name . EOS pad]``, pooled at EOT); cross-entropy
(KgCoOp: + λ·(1 − mean cos(learned, hand-crafted))), one SGD step. The learning rate of epoch e is Dassl's,
computed here by :func:`dassl_epoch_lr` (not from the trainer). Every setting (lr, batch, n_ctx,
init, rank, dropout, λ, template) is the official recipe for the protocol and shot count
(:func:`rlptune.recipes.preset`), the same values rlptune resolves.

**rlptune** is the real pipeline pieces: :func:`rlptune.methods.build_method`, :class:`~rlptune.engine.trainer.Trainer`
and :func:`~rlptune.engine.evaluate.evaluate_split`, in the default mode (``train.aug_views = 0``: a fresh crop
and flip per image per epoch, drawn from the run's seed) and in the ``--aug-views 4`` opt-in.

Both sides share the backbone, the few-shot draw (the same ``DatasetSplits`` object per seed), the recipe and
the epoch count; their random streams (init, batch order, crops, dropout) differ, as two runs of the official
code with different libraries would. The table gives, per method and dataset, the mean accuracy of each side, the
paired differences (rlptune − reference, one per seed) with their mean and 95% t-interval, and whether the
interval contains 0; a pooled row pairs every (dataset, seed).

Usage::

    .venv/bin/python benchmarks/fidelity.py --json benchmarks/fidelity_results.json     # the README's table
    .venv/bin/python benchmarks/fidelity.py --from-json benchmarks/fidelity_results.json  # re-print it
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlptune.backbones import Backbone, eval_transform, load_backbone, train_transform  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.data.fewshot import fewshot_splits  # noqa: E402
from rlptune.data.items import DatasetSplits  # noqa: E402
from rlptune.engine.features import FeatureCache, ImageItems  # noqa: E402
from rlptune.engine.pipeline import seed_everything  # noqa: E402
from rlptune.engine.evaluate import evaluate_split  # noqa: E402
from rlptune.engine.trainer import Trainer  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.data.coop import coop_name  # noqa: E402
from rlptune.method_templates import KGCOOP_TEMPLATES  # noqa: E402

METHODS = ("coop", "rlp", "kgcoop")
DATASETS = ("micro-shapes", "micro-textures", "micro-objects", "micro-patterned")
MODES = {"fresh": 0, "4 views": 4}  # train.aug_views of each rlptune mode


def run_config(method: str, shots: int, epochs: int, seed: int, cache: Path, aug_views: int = 0):
    """The official recipe of ``method`` at ``shots`` (few-shot protocol), with the benchmark's epochs and seed.

    Per-epoch validation, checkpoints and prompt diagnostics are switched off: they do not change training."""
    return resolve_config(
        None,
        {
            "method": {"name": method},
            "data": {"shots": shots},
            "train": {
                "epochs": epochs,
                "seed": seed,
                "cache_dir": str(cache),
                "aug_views": aug_views,
                "val_every": 0,
                "checkpoint_every": 0,
                "log_diagnostics": False,
            },
        },
    )


# -- the reference (CoOp-style) --------------------------------------------------------------------------------------


class ReferencePrompt(nn.Module):
    """CoOp's PromptLearner over the full 77 tokens; RLP's ``P_fr + Dropout(s · P_A @ P_B)`` for ``kind: lowrank``.

    With ``ctx_init`` the context starts from the init text's word embeddings and ``n_ctx`` is its word count
    (CoOp's rule); otherwise ``n_ctx`` vectors ~ N(0, init_std²) and the placeholder prefix "X X ... X"."""

    def __init__(self, backbone: Backbone, classnames: Sequence[str], prompt) -> None:
        super().__init__()
        model = backbone.model
        if prompt.ctx_init:
            init = prompt.ctx_init.replace("_", " ")
            n_ctx = len(init.split(" "))
            with torch.no_grad():
                ctx = model.token_embedding(backbone.tokenize([init]))[0, 1 : 1 + n_ctx].float().clone()
            prefix_text = init
        else:
            n_ctx = prompt.n_ctx
            ctx = torch.empty(n_ctx, model.token_embedding.weight.shape[1]).normal_(std=prompt.init_std)
            prefix_text = " ".join(["X"] * n_ctx)
        tokenized = backbone.tokenize([f"{prefix_text} {name.replace('_', ' ')}." for name in classnames])
        with torch.no_grad():
            embedding = model.token_embedding(tokenized).float()
        self.register_buffer("token_prefix", embedding[:, :1])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :])
        self.register_buffer("tokenized", tokenized)
        self.lowrank = prompt.kind == "lowrank"
        if self.lowrank:
            lowrank = prompt.options  # the lowrank kind's options: rank, dropout, a_std, b_std, alpha
            rank = lowrank["rank"]
            self.register_buffer("frozen", ctx)
            self.A = nn.Parameter(torch.randn(n_ctx, rank) * lowrank["a_std"])
            self.B = nn.Parameter(torch.randn(rank, ctx.shape[1]) * lowrank["b_std"])
            self.scale = lowrank["alpha"] / rank if lowrank["alpha"] is not None else 1.0
            self.drop = nn.Dropout(lowrank["dropout"])
        else:
            self.ctx = nn.Parameter(ctx)

    def context(self) -> torch.Tensor:
        return self.frozen + self.drop(self.scale * (self.A @ self.B)) if self.lowrank else self.ctx

    def forward(self) -> torch.Tensor:
        ctx = self.context().unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


def reference_text_features(model: nn.Module, prompts: torch.Tensor, tokenized: torch.Tensor) -> torch.Tensor:
    """CoOp's TextEncoder: positions, the transformer over all 77 tokens, final LN, EOT pooling, projection."""
    x = prompts + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ model.text_projection


def dassl_epoch_lr(
    epoch: int, base_lr: float, max_epoch: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5, min_lr: float = 0.0
) -> float:
    """Dassl's learning rate of epoch ``epoch`` (0-based): constant warm-up, then a cosine over ``max_epoch`` whose
    count starts after the warm-up (``WARMUP_RECOUNT = True``); the reference's own, as Dassl computes it."""
    if epoch < warmup_epochs:
        return warmup_lr
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max_epoch)) / 2


def kgcoop_template(splits: DatasetSplits) -> str:
    """KgCoOp's hand-crafted template: its CUSTOM_TEMPLATES entry for a CoOp dataset, else the dataset's own, else
    "a photo of a {}." (KgCoOp's code only knows the CoOp datasets)."""
    name = coop_name(splits.name)
    if name in KGCOOP_TEMPLATES:
        return KGCOOP_TEMPLATES[name]
    return splits.template or "a photo of a {}."


def reference_loss(
    model: nn.Module,
    prompt: ReferencePrompt,
    image_features: torch.Tensor,
    labels: torch.Tensor,
    handcrafted: torch.Tensor | None = None,
    kg_weight: float = 0.0,
) -> torch.Tensor:
    """CoOp's loss on normalised image features: CE of logit_scale · cos; KgCoOp adds λ·(1 − mean cos(text, hand))."""
    text = F.normalize(reference_text_features(model, prompt(), prompt.tokenized).float(), dim=-1)
    loss = F.cross_entropy(model.logit_scale.exp().detach() * image_features @ text.t(), labels)
    if handcrafted is not None and kg_weight:
        loss = loss + kg_weight * (1.0 - F.cosine_similarity(text, handcrafted, dim=-1).mean())
    return loss


@dataclass
class ReferenceResult:
    accuracy: float
    epoch_lrs: list[float]
    batches: list[list[int]] = field(default_factory=list)  # item indices of every step (for the smoke test)
    seconds: float = 0.0
    train_paths: list[str] = field(default_factory=list)  # the few-shot draw it trained on


class ReferenceRun:
    """One CoOp-style training run (see the module docstring) of ``method`` on ``splits`` under ``config``."""

    def __init__(self, backbone: Backbone, splits: DatasetSplits, config, handcrafted_template: str | None = None):
        self.backbone, self.splits, self.config = backbone, splits, config
        options = config.method.options
        weight = options.get("lambda_kg") if isinstance(options, dict) else getattr(options, "lambda_kg", None)
        self.kg_weight = float(weight if weight is not None else 8.0) if config.method.name == "kgcoop" else 0.0
        self.template = handcrafted_template or kgcoop_template(splits)

    @torch.no_grad()
    def handcrafted(self) -> torch.Tensor:
        """KgCoOp's frozen text features of the hand-crafted prompts (normalised)."""
        tokens = self.backbone.tokenize([self.template.format(c.replace("_", " ")) for c in self.splits.classnames])
        return F.normalize(self.backbone.model.encode_text(tokens).float(), dim=-1)

    def fit_and_evaluate(self, test_features: torch.Tensor, test_labels: torch.Tensor) -> ReferenceResult:
        s, model = self.config.train, self.backbone.model
        t0 = time.perf_counter()
        torch.manual_seed(s.seed)  # Dassl's set_random_seed: the prompt init, shuffles, crops and dropout follow
        prompt = ReferencePrompt(self.backbone, self.splits.classnames, self.config.prompt)
        handcrafted = self.handcrafted() if self.kg_weight else None
        optimizer = torch.optim.SGD(prompt.parameters(), lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
        flip = s.flip and self.splits.hflip_invariant
        transform = train_transform(self.backbone, crop_scale=(s.crop_scale, 1.0), flip=flip)
        dataset = ImageItems(
            self.splits, self.splits.train, transform
        )  # view 0: the transform draws from the global RNG
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=s.batch_size, shuffle=True, drop_last=len(dataset) >= s.batch_size, num_workers=0
        )
        result = ReferenceResult(0.0, [], train_paths=[it.path for it in dataset.items])
        for epoch in range(s.epochs):
            lr = dassl_epoch_lr(epoch, s.lr, s.epochs, s.warmup_epochs, s.warmup_lr, s.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            result.epoch_lrs.append(lr)
            prompt.train()
            for images, labels, index in loader:
                result.batches.append([int(i) for i in index])
                with torch.no_grad():
                    image_features = F.normalize(model.visual(images).float(), dim=-1)
                loss = reference_loss(model, prompt, image_features, labels, handcrafted, self.kg_weight)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        prompt.eval()
        with torch.no_grad():
            text = F.normalize(reference_text_features(model, prompt(), prompt.tokenized).float(), dim=-1)
            preds = (test_features @ text.t()).argmax(-1)
        result.accuracy = 100.0 * float((preds == test_labels).float().mean())
        result.seconds = time.perf_counter() - t0
        return result


@torch.no_grad()
def centre_crop_features(backbone: Backbone, splits: DatasetSplits, items) -> torch.Tensor:
    """The frozen image tower on the evaluation transform (resize + centre crop), normalised: the reference's test side."""
    data = ImageItems(splits, items, eval_transform(backbone))
    loader = torch.utils.data.DataLoader(data, batch_size=128, shuffle=False)
    return torch.cat([F.normalize(backbone.model.visual(images).float(), dim=-1) for images, _, _ in loader])


# -- rlptune ----------------------------------------------------------------------------------------------------------


@dataclass
class RlptuneResult:
    accuracy: float
    epoch_lrs: list[float]
    seconds: float
    train_paths: list[str]


def run_rlptune(backbone: Backbone, splits: DatasetSplits, config, cache: FeatureCache, workdir: Path) -> RlptuneResult:
    """rlptune's pipeline pieces as ``rlptune train`` runs them: seed, build, fit, evaluate the test split."""
    t0 = time.perf_counter()
    seed_everything(config.train.seed)
    method = build_method(config, backbone, splits.classnames, splits.template)
    trainer = Trainer(config, method, splits, workdir, cache=cache, log=lambda _msg: None, progress=False)
    state = trainer.fit()
    accuracy = evaluate_split(method, splits, "test", cache)["top1"]
    return RlptuneResult(
        accuracy, [r["lr"] for r in state.records], time.perf_counter() - t0, [it.path for it in trainer.splits.train]
    )


# -- statistics -------------------------------------------------------------------------------------------------------

_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    24: 2.064,
    29: 2.045,
    39: 2.023,
    59: 2.001,
}


def t_quantile(df: int) -> float:
    """Student's t 0.975 quantile (two-sided 95%) for ``df`` degrees of freedom (the next tabulated df below)."""
    if df < 1:
        return float("nan")
    known = [d for d in _T975 if d <= df]
    return _T975[max(known)] if df <= 59 else 1.960


def paired_ci(differences: Sequence[float]) -> dict:
    """Mean of the paired differences and its 95% t-interval (half-width = t·sd/√n)."""
    n = len(differences)
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences) if n > 1 else float("nan")
    half = t_quantile(n - 1) * sd / math.sqrt(n) if n > 1 else float("nan")
    low, high = mean - half, mean + half
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "low": low,
        "high": high,
        "contains_zero": bool(n > 1 and low <= 0.0 <= high),
    }


# -- the benchmark ----------------------------------------------------------------------------------------------------


def benchmark(
    args, log: Callable[[str], None], datasets: dict[str, DatasetSplits] | None = None, backbone: Backbone | None = None
) -> dict:
    """Every (dataset, seed, method): the reference once, rlptune in each mode; ``datasets``/``backbone`` replace the
    micro datasets and ``args.backbone`` (the smoke test passes tiny ones)."""
    from rlptune.micro.suite import load_micro_dataset

    backbone = backbone or load_backbone(args.backbone, device="cpu")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rlptune-fidelity-"))
    cache = FeatureCache(work / "cache")
    runs: list[dict] = []
    for dataset in args.datasets:
        full = datasets[dataset] if datasets is not None else load_micro_dataset(dataset)
        test_labels = torch.tensor([it.label for it in full.test])
        test_features = centre_crop_features(backbone, full, full.test)
        for seed in args.seeds:
            splits = fewshot_splits(full, args.shots, seed)  # one draw, used by both sides
            for method in args.methods:
                config = run_config(method, args.shots, args.epochs, seed, work / "cache")
                rlptune_runs = {}
                for mode in args.modes:
                    mode_config = run_config(method, args.shots, args.epochs, seed, work / "cache", MODES[mode])
                    rlptune_runs[mode] = run_rlptune(
                        backbone, splits, mode_config, cache, work / f"{dataset}-{method}-{seed}-{MODES[mode]}"
                    )
                ref = ReferenceRun(backbone, splits, config).fit_and_evaluate(test_features, test_labels)
                for mode, ours in rlptune_runs.items():
                    if ours.epoch_lrs != ref.epoch_lrs or ours.train_paths != ref.train_paths:
                        raise SystemExit(
                            f"the two sides differ ({dataset}, {method}, seed {seed}, {mode}): schedules "
                            f"{ours.epoch_lrs} vs {ref.epoch_lrs}, or the few-shot draws"
                        )
                    runs.append(
                        {
                            "dataset": dataset,
                            "seed": seed,
                            "method": method,
                            "mode": mode,
                            "reference": ref.accuracy,
                            "rlptune": ours.accuracy,
                            "reference_seconds": ref.seconds,
                            "rlptune_seconds": ours.seconds,
                            "epoch_lrs": ref.epoch_lrs,
                            "draw": ref.train_paths,
                        }
                    )
                log(
                    f"{dataset} seed {seed} {method}: reference {ref.accuracy:.1f} ({ref.seconds:.0f}s)  "
                    + "  ".join(f"rlptune[{m}] {r.accuracy:.1f} ({r.seconds:.0f}s)" for m, r in rlptune_runs.items())
                )
    return {"runs": runs, "tables": tables(runs)}


def tables(runs: list[dict]) -> dict:
    """Per mode → per method → per dataset (and pooled): both sides' accuracies and the paired-difference CI."""
    out: dict = {}
    for mode in dict.fromkeys(r["mode"] for r in runs):
        out[mode] = {}
        for method in dict.fromkeys(r["method"] for r in runs):
            rows = {}
            chosen = [r for r in runs if r["mode"] == mode and r["method"] == method]
            groups = {d: [r for r in chosen if r["dataset"] == d] for d in dict.fromkeys(r["dataset"] for r in chosen)}
            groups["pooled"] = chosen
            for name, group in groups.items():
                ref = [r["reference"] for r in group]
                ours = [r["rlptune"] for r in group]
                rows[name] = {
                    "reference_mean": statistics.fmean(ref),
                    "reference_sd": statistics.stdev(ref) if len(ref) > 1 else 0.0,
                    "rlptune_mean": statistics.fmean(ours),
                    "rlptune_sd": statistics.stdev(ours) if len(ours) > 1 else 0.0,
                    "differences": [o - r for o, r in zip(ours, ref)],
                    **paired_ci([o - r for o, r in zip(ours, ref)]),
                    "reference_seconds": sum(r["reference_seconds"] for r in group),
                    "rlptune_seconds": sum(r["rlptune_seconds"] for r in group),
                }
            out[mode][method] = rows
    return out


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"Micro CLIP (`--backbone {s['backbone']}`), {s['shots']} shots, {s['epochs']} epochs on both sides, seeds "
        f"{s['seeds']}, few-shot protocol recipes; accuracy on each dataset's test split (%); difference = rlptune − "
        f"reference, paired by (dataset, seed); 95% t-interval.",
    ]
    for mode, methods in report["tables"].items():
        label = (
            "default: a fresh crop + flip per image per epoch"
            if mode == "fresh"
            else f"`--aug-views 4`: {mode} cached, cycled"
        )
        lines += [
            "",
            f"**rlptune {label}**",
            "",
            "| method | dataset | reference | rlptune | paired differences | mean diff [95% CI] | CI contains 0 |",
            "|---|---|---|---|---|---|---|",
        ]
        for method, rows in methods.items():
            for name, r in rows.items():
                diffs = " ".join(f"{d:+.1f}" for d in r["differences"]) if name != "pooled" else f"n = {r['n']}"
                bold = "**" if name == "pooled" else ""
                lines.append(
                    f"| {method} | {bold}{name}{bold} | {r['reference_mean']:.1f} ± {r['reference_sd']:.1f} | "
                    f"{r['rlptune_mean']:.1f} ± {r['rlptune_sd']:.1f} | {diffs} | "
                    f"{bold}{r['mean']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]{bold} | {'yes' if r['contains_zero'] else '**no**'} |"
                )
    seconds = {"reference": 0.0, **{m: 0.0 for m in report["tables"]}}
    for run in report["runs"]:
        seconds[run["mode"]] += run["rlptune_seconds"]
    for run in report["runs"]:
        if run["mode"] == next(iter(report["tables"])):
            seconds["reference"] += run["reference_seconds"]
    lines += [
        "",
        "Wall time of all runs: "
        + ", ".join(f"{name} {value / 60:.1f} min" for name, value in seconds.items())
        + f" (whole benchmark {report['seconds'] / 60:.1f} min).",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="micro")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument(
        "--epochs", type=int, default=40, help="epochs of both sides (the official recipe at 4 shots: 100)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", help="folder for the feature cache and run folders (default: a new temp folder)")
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--from-json", help="only print the tables of a previous --json file")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(Path(args.from_json).read_text())))
        return 0
    torch.set_num_threads(args.threads)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    report = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "from_json", "workdir")},
        "torch": torch.__version__,
    }
    with contextlib.suppress(OSError):
        report["loadavg_start"] = os.getloadavg()
    report.update(benchmark(args, log))
    report["seconds"] = time.perf_counter() - t0
    with contextlib.suppress(OSError):
        report["loadavg_end"] = os.getloadavg()
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
