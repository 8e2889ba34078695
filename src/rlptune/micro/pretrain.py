"""Contrastive pretraining of the micro CLIP on pairs generated on the fly from the procedural world.

The model is open_clip's own :class:`open_clip.model.CLIP` built from ``micro_clip.json`` (a small ModifiedResNet
image tower and a 4-layer, 128-wide text transformer over CLIP's BPE vocabulary). Three choices make the frozen
features encode every factor of the world, not just the easiest one (colour), and make style words matter:

* **Hard-negative groups.** A batch is 16 groups of 8 scenes; in most groups the 8 scenes share everything but one
  factor (shape, colour, pattern, count, size, position, background or style), and their captions always name it.
  Across groups everything varies, so no factor is constant over a batch.
* **Multi-positive loss.** Captions name a random subset of attributes; caption j counts as a positive for image i
  whenever every attribute it claims is true of image i (so "a circle." matches every circle in the batch). The
  loss is MIL-NCE (log of the summed probability of the positives) in both directions.
* **Styles in captions.** Images are rendered in one of six styles and 70% of captions name it ("a sketch of ...",
  "a foggy photo of ..."); "a photo of" means the plain rendering. The micro datasets use non-photo styles, so the
  generic template "a photo of a {}." mismatches them and a learned context can recover the style.

Speed: captions are short, so the text transformer runs over the first L tokens only (exact, given the causal
mask), and only the token embeddings of the world's vocabulary are trained (the others keep their initial
values), which avoids a dense 6.3M-row optimizer update per step. Reproducible from the seed for a fixed thread
count.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..backbones.openclip import OpenClipTextTower
from ..io import write_json, write_safetensors
from .suite import GENERIC_TEMPLATE, MICRO_DATASETS, dataset_scenes, micro_spec
from . import world as W

from . import MICRO_CONFIG_PATH as CONFIG_PATH

WEIGHTS_NAME = "micro_clip.safetensors"
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

DEFAULT_STEPS = 3600
DEFAULT_LR = 1.5e-3
GROUPS = 16
GROUP_SIZE = 8
FACTOR_WEIGHTS = {
    "shape": 0.25,
    "color": 0.12,
    "pattern": 0.14,
    "count": 0.09,
    "size": 0.06,
    "position": 0.10,
    "background": 0.08,
    "style": 0.16,
}
PLAIN_BACKGROUND_PROB = 0.4  # after the ramp; objects on busy backgrounds are harder to see
RANDOM_GROUP_PROB = 0.2
# Curriculum: the world starts easy (mostly plain photos on plain backgrounds, where colour, shape and pattern are
# learned within minutes) and ramps linearly to the full mixture of styles and backgrounds between RAMP[0] and
# RAMP[1] (fractions of the run). Starting from the full mixture, object attributes were learned several times slower.
STYLE_PROBS_EARLY = {"photo": 0.7, "sketch": 0.06, "pixelated": 0.06, "foggy": 0.06, "noisy": 0.06, "inverted": 0.06}
STYLE_PROBS = {"photo": 0.24, "sketch": 0.16, "pixelated": 0.16, "foggy": 0.16, "noisy": 0.16, "inverted": 0.12}
PLAIN_BACKGROUND_EARLY = 0.8
RAMP = (0.1, 0.45)


def load_config() -> dict:
    return json.loads(CONFIG_PATH.read_text())


def build_model(config: dict | None = None):
    from open_clip.model import CLIP

    return CLIP(**(config or load_config()))


def get_tokenizer():
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer()


def images_to_tensor(images) -> torch.Tensor:
    """uint8 HxWx3 arrays -> normalised NCHW float tensor (open_clip's default transform at 64 px)."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


# --------------------------------------------------------------------------- data


def _ramp(progress: float) -> float:
    return float(np.clip((progress - RAMP[0]) / max(1e-9, RAMP[1] - RAMP[0]), 0.0, 1.0))


def _sample_style(rng: np.random.Generator, progress: float = 1.0) -> str:
    names = list(STYLE_PROBS)
    a = _ramp(progress)
    p = np.array([(1 - a) * STYLE_PROBS_EARLY[n] + a * STYLE_PROBS[n] for n in names])
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _sample_background(rng: np.random.Generator, progress: float = 1.0) -> str:
    a = _ramp(progress)
    if rng.random() < (1 - a) * PLAIN_BACKGROUND_EARLY + a * PLAIN_BACKGROUND_PROB:
        return "plain"
    return W.BACKGROUNDS[int(rng.integers(1, len(W.BACKGROUNDS)))]


def sample_batch(
    rng: np.random.Generator, progress: float = 1.0
) -> tuple[list[W.Scene], list[np.ndarray], list[str], list[dict]]:
    """One batch: scenes, rendered images, captions and their claims; ``progress`` in [0, 1] drives the curriculum."""
    scenes: list[W.Scene] = []
    factors: list[str | None] = []
    names = list(FACTOR_WEIGHTS)
    probs = np.array(list(FACTOR_WEIGHTS.values()))
    probs = probs / probs.sum()
    for _g in range(GROUPS):
        if rng.random() < RANDOM_GROUP_PROB:
            for _ in range(GROUP_SIZE):
                scenes.append(
                    W.sample_scene(
                        rng, style=_sample_style(rng, progress), background=_sample_background(rng, progress)
                    )
                )
                factors.append(None)
            continue
        factor = names[int(rng.choice(len(names), p=probs))]
        fixed = {"style": _sample_style(rng, progress), "background": _sample_background(rng, progress)}
        if factor == "position":
            fixed["count"] = 1
        base = W.sample_scene(rng, **fixed)
        scenes.append(base)
        factors.append(factor)
        for _ in range(GROUP_SIZE - 1):
            s = W.vary(base, factor, rng)
            if rng.random() < 0.25:  # a little extra variation so groups are not exact minimal pairs
                other = names[int(rng.integers(len(names)))]
                if other != factor and not (other == "count" and factor == "position"):
                    s = W.vary(s, other, rng)
            scenes.append(s)
            factors.append(factor)
    images, captions, claims = [], [], []
    for s, f in zip(scenes, factors):
        images.append(W.render(s, rng))
        text, cl = W.caption(s, rng, force=(f,) if f else ())
        captions.append(text)
        claims.append(cl)
    return scenes, images, captions, claims


def positives(scenes: list[W.Scene], claims: list[dict]) -> torch.Tensor:
    """M[i, j] = caption j is true of image i."""
    return torch.tensor([[W.consistent(c, s) for c in claims] for s in scenes], dtype=torch.bool)


# --------------------------------------------------------------------------- text path


def world_vocabulary(tokenizer) -> list[int]:
    """Token ids the world's captions (and the suite's prompts) can use, sorted."""

    texts = []
    texts += W.SHAPES + [W._plural(s) for s in W.SHAPES] + W.COLOR_NAMES + W.PATTERNS + W.SIZE_NAMES
    texts += list(W.COUNT_WORDS.values()) + ["a", "an", "shape", "shapes", "."]
    for table in (W.POSITION_PHRASES, W.BACKGROUND_PHRASES, W.STYLE_TEMPLATES):
        for phrases in table.values():
            texts += [p.replace("{}", " ") for p in phrases]
    texts += [t.replace("{}", " ") for t in W.NEUTRAL_TEMPLATES]
    texts += W.BACKGROUNDS + W.STYLES + [GENERIC_TEMPLATE.replace("{}", " ")]
    for name in MICRO_DATASETS:
        texts += micro_spec(name).classnames
    ids: set[int] = set()
    for t in texts:
        ids.update(tokenizer.encode(t))
    ids.update([0, tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]])  # 0 pads
    return sorted(ids)


def tokenize(tokenizer, texts: list[str], context_length: int = 77) -> torch.Tensor:
    sot, eot = tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]
    out = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [sot] + tokenizer.encode(t)[: context_length - 2] + [eot]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def encode_text_truncated(model, tokens: torch.Tensor, embed: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """open_clip's ``CLIP.encode_text`` over the first L tokens only (L = 1 + last end-of-text position), through
    the backbone interface's own text tower (one implementation of the truncated encoding in the package)."""
    tower = OpenClipTextTower(model)
    eot = tower.eot_positions(tokens)
    length = int(eot.max()) + 1
    return tower.encode_embeddings((embed or model.token_embedding)(tokens[:, :length]), eot)


def multi_positive_contrastive_loss(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where a row may have several true partners: −log of the softmax mass on the positives,
    averaged over images (rows) and over texts (columns)."""
    neg_inf = torch.finfo(logits.dtype).min
    masked = logits.masked_fill(~positives, neg_inf)
    loss_i = (torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)).mean()
    loss_t = (torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)).mean()
    return 0.5 * (loss_i + loss_t)


class CompactEmbedding(torch.nn.Module):
    """Trainable rows of the token embedding for the world's vocabulary only."""

    def __init__(self, full: torch.Tensor, ids: list[int]):
        super().__init__()
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        lookup = torch.zeros(full.shape[0], dtype=torch.long)
        lookup[self.ids] = torch.arange(len(ids))
        self.register_buffer("lookup", lookup, persistent=False)
        known = torch.zeros(full.shape[0], dtype=torch.bool)
        known[self.ids] = True
        self.register_buffer("known", known, persistent=False)
        self.weight = torch.nn.Parameter(full[self.ids].clone())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not bool(self.known[tokens].all()):
            raise ValueError("token outside the world vocabulary")
        return F.embedding(self.lookup[tokens], self.weight)

    @torch.no_grad()
    def write_back(self, full: torch.nn.Embedding) -> None:
        full.weight[self.ids] = self.weight.detach()


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def quick_zero_shot(model, tokenizer, per_class: int = 10, embed=None, style_prompt: bool = False) -> dict:
    """Zero-shot accuracy on the first ``per_class`` test images per class of every micro dataset."""

    was_training = model.training
    model.eval()
    out = {}
    for name in MICRO_DATASETS:
        spec = micro_spec(name)
        n = spec.splits["test"]
        scenes = [x for k, x in enumerate(dataset_scenes(name, "test")) if k % n < per_class]
        imgs = images_to_tensor([W.render(s, r) for s, _l, r in scenes])
        labels = torch.tensor([ln for _s, ln, _r in scenes])
        template = GENERIC_TEMPLATE
        if style_prompt:
            template = W.STYLE_TEMPLATES[spec.style][0].format("a {}") + "."
        tok = tokenize(tokenizer, [template.format(c) for c in spec.classnames])
        t = F.normalize(encode_text_truncated(model, tok, embed), dim=-1)
        f = F.normalize(model.encode_image(imgs), dim=-1)
        out[name] = float(((f @ t.T).argmax(-1) == labels).float().mean())
    model.train(was_training)
    return out


# --------------------------------------------------------------------------- training


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """The CLIP state dict with floating tensors in fp16 (integer buffers unchanged)."""
    sd = model.state_dict()
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()}


def save_weights(model, embed: CompactEmbedding, path: Path, meta: dict) -> Path:
    embed.write_back(model.token_embedding)
    return write_safetensors(path, export_state_dict(model), metadata={k: str(v) for k, v in meta.items()})


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def pretrain_micro(
    output_dir,
    seed: int = 0,
    minutes: float | None = None,
    steps: int | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
    lr: float = DEFAULT_LR,
    eval_every: int = 500,
    save_every_s: float = 300.0,
) -> Path:
    """Pretrain the micro CLIP; writes ``output_dir/micro_clip.safetensors`` (atomically) and returns its path.

    ``steps`` fixes the schedule (batches of 128 pairs; default ``DEFAULT_STEPS``); ``minutes`` is a wall-clock cap
    that stops early (saving what exists). The same seed, steps and thread count give the same weights.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    steps = int(steps) if steps is not None else DEFAULT_STEPS
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    model = build_model()
    model.train()
    tokenizer = get_tokenizer()
    embed = CompactEmbedding(model.token_embedding.weight.detach(), world_vocabulary(tokenizer))
    model.token_embedding.weight.requires_grad_(False)

    decay, no_decay = [], []
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "positional" not in n else no_decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": 0.1},
            {"params": no_decay + [embed.weight], "weight_decay": 0.0},
        ],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    warmup = min(200, max(1, steps // 10))
    path = output_dir / WEIGHTS_NAME
    meta = {"seed": seed, "steps": steps, "world": W.WORLD_VERSION, "batch": GROUPS * GROUP_SIZE}
    start = time.time()
    last_save = start
    history = []
    done = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, warmup)
        scenes, images, captions, claims = sample_batch(rng, step / steps)
        pos = positives(scenes, claims)
        tokens = tokenize(tokenizer, captions)
        img = F.normalize(model.encode_image(images_to_tensor(images)), dim=-1)
        txt = F.normalize(encode_text_truncated(model, tokens, embed), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
        loss = multi_positive_contrastive_loss(logits, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        elapsed = time.time() - start
        if done % 50 == 0 or done == 1:
            log(
                f"step {done}/{steps} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"lr {opt.param_groups[0]['lr']:.2e} {done * GROUPS * GROUP_SIZE / elapsed:.0f} pairs/s"
            )
        if eval_every and done % eval_every == 0:
            zs = quick_zero_shot(model, tokenizer, embed=embed)
            zs_style = quick_zero_shot(model, tokenizer, embed=embed, style_prompt=True)
            rec = {
                "step": done,
                "elapsed_s": round(elapsed, 1),
                "loss": round(loss.item(), 4),
                "zero_shot": zs,
                "style_prompt": zs_style,
                "mean": float(np.mean(list(zs.values()))),
                "mean_style": float(np.mean(list(zs_style.values()))),
            }
            history.append(rec)
            log(
                "eval "
                + " ".join(f"{k[6:]}={v:.2f}/{zs_style[k]:.2f}" for k, v in zs.items())
                + f" | mean {rec['mean']:.3f} styled {rec['mean_style']:.3f}"
            )
            write_json(output_dir / "pretrain_history.json", history)
        if time.time() - last_save > save_every_s:
            save_weights(model, embed, path, {**meta, "completed_steps": done})
            last_save = time.time()
        if minutes is not None and elapsed > minutes * 60:
            log(f"time cap of {minutes} min reached after {done} steps")
            break
    model.eval()
    save_weights(model, embed, path, {**meta, "completed_steps": done})
    log(f"wrote {path} after {done} steps in {time.time() - start:.0f} s")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rlptune pretrain-micro",
        description=__doc__.split("\n\n")[0],
        epilog="rlptune pretrain-micro --version 2 ... runs micro v2's two-phase recipe (its own --help).",
    )
    parser.add_argument(
        "-o", "--output", "--out", dest="out", default="micro_clip_out", help="output folder (as -o everywhere else)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--steps", type=int, default=None, help=f"optimizer steps of 128 pairs (default {DEFAULT_STEPS})"
    )
    parser.add_argument("--minutes", type=float, default=None, help="wall-clock cap")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: reproducible, and on a shared CPU faster than 2)",
    )
    parser.add_argument("--lr", type=float, default=DEFAULT_LR)
    parser.add_argument("--eval-every", type=int, default=500)
    args = parser.parse_args(argv)
    pretrain_micro(
        args.out,
        seed=args.seed,
        minutes=args.minutes,
        steps=args.steps,
        threads=args.threads,
        lr=args.lr,
        eval_every=args.eval_every,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
