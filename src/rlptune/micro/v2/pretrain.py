"""Pretraining of the v2 micro CLIP in two phases with a strong signal (the CPU recipe: about 30 min on 2 threads).

1. **Supervised image tower.** A corpus of world-v2 scenes is rendered once; the ViT image tower (with its
   projection) learns every attribute of a scene (shape, colour, pattern, background, style, count) through
   cosine-classifier heads on its normalised embedding, under random resized crops and flips. Attribute labels are
   a much denser signal than captions: contrastive learning from scratch was several times slower here (v1).
2. **Locked-image text alignment (LiT).** The image tower is frozen and its embeddings of the corpus are computed
   once; the 12-block text tower learns to map captions onto them with a multi-positive contrastive loss (a caption
   is a positive for every image it is true of, see :func:`rlptune.micro.v2.world.consistent`).

Reproducible from the seed for a fixed thread count (the step counts fix the schedules; ``--minutes-image`` is only
a safety cap that ends phase 1 early and is recorded in the weights' metadata).
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

from ...io import write_json, write_safetensors
from .. import world as W1
from ..pretrain import (
    CompactEmbedding,
    encode_text_truncated,
    get_tokenizer,
    images_to_tensor,
    multi_positive_contrastive_loss,
    tokenize,
)
from . import world as W

CONFIG_PATH = Path(__file__).with_name("micro_clip_v2.json")
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "micro_clip_v2.safetensors"
WEIGHTS_NAME = WEIGHTS_PATH.name

CORPUS_SIZE = 24000
IMAGE_STEPS = 4800
IMAGE_BATCH = 64
IMAGE_LR = 1e-3
TEXT_STEPS = 400
TEXT_BATCH = 128
TEXT_LR = 5e-4
TEXT_CORPUS = 16000  # images of the corpus embedded for phase 2
HEAD_SCALE = 16.0
CROP_SCALE = (0.35, 1.0)
STYLE_PROBS = {"photo": 0.25, "sketch": 0.15, "pixelated": 0.15, "foggy": 0.15, "noisy": 0.15, "inverted": 0.15}
# Curriculum: a third of the corpus is easy (mostly plain photos on plain backgrounds); batches draw from it with
# probability EASY_PROB[0] at the start, falling linearly to EASY_PROB[1] by EASY_UNTIL of phase 1. Colour and
# background are learned first from any image; shape, pattern and count need the easy images to get started.
EASY_FRACTION = 1 / 3
EASY_PROB = (0.8, 0.2)
EASY_UNTIL = 0.5
HEAD_WEIGHTS = {"shape": 2.0, "color": 1.0, "pattern": 1.0, "background": 1.0, "style": 1.0, "count": 0.5}


def load_config() -> dict:
    return json.loads(CONFIG_PATH.read_text(encoding="utf-8"))


def build_model(config: dict | None = None):
    from open_clip.model import CLIP

    return CLIP(**(config or load_config()))


def sample_corpus_scene(rng: np.random.Generator, easy: bool = False) -> W.Scene:
    styles = list(STYLE_PROBS)
    p = np.array([STYLE_PROBS[s] for s in styles])
    style = styles[int(rng.choice(len(styles), p=p / p.sum()))]
    if easy:
        fixed = {"style": "photo" if rng.random() < 0.7 else style}
        if rng.random() < 0.7:
            fixed["background"] = "plain"
        return W.sample_scene(rng, **fixed)
    return W.sample_scene(rng, style=style)


def render_corpus(n: int, seed: int, log: Callable[[str], None] = print) -> tuple[np.ndarray, list[W.Scene]]:
    """``n`` scenes and their images (uint8 N x 64 x 64 x 3), rendered once; the first third are easy ones."""
    rng = np.random.default_rng([seed, 2])
    images = np.empty((n, W.IMAGE_SIZE, W.IMAGE_SIZE, 3), np.uint8)
    scenes = []
    start = time.time()
    for i in range(n):
        scene = sample_corpus_scene(rng, easy=i < int(n * EASY_FRACTION))
        images[i] = W.render(scene, rng)
        scenes.append(scene)
    log(f"rendered {n} scenes in {time.time() - start:.0f} s")
    return images, scenes


def labels_of(scenes: list[W.Scene]) -> dict[str, torch.Tensor]:
    return {a: torch.tensor([vals.index(getattr(s, a)) for s in scenes]) for a, vals in W.ATTRIBUTE_VALUES.items()}


def random_resized_crop(x: torch.Tensor, generator: torch.Generator, scale=CROP_SCALE) -> torch.Tensor:
    """Batched random resized crop (area in ``scale``, aspect 3/4-4/3) with random horizontal flips."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
    ratio = log_ratio.exp()
    w = (area * ratio).sqrt().clamp(max=1.0)
    h = (area / ratio).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class AttributeHeads(torch.nn.Module):
    """Cosine classifiers over the normalised image embedding, one per attribute."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.heads = torch.nn.ParameterDict(
            {
                a: torch.nn.Parameter(torch.randn(len(v), embed_dim) * embed_dim**-0.5)
                for a, v in W.ATTRIBUTE_VALUES.items()
            }
        )

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        f = F.normalize(features, dim=-1)
        return {a: HEAD_SCALE * f @ F.normalize(w, dim=-1).T for a, w in self.heads.items()}


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _adamw(named_params, lr: float, weight_decay: float):
    decay, no_decay = [], []
    for n, p in named_params:
        if p.requires_grad:
            (decay if p.ndim >= 2 and "positional" not in n and "embedding" not in n else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )


def train_image_tower(
    model,
    images: np.ndarray,
    scenes: list[W.Scene],
    seed: int,
    steps: int = IMAGE_STEPS,
    minutes: float | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Phase 1: supervised attribute heads on the image tower; returns a summary (steps done, head accuracies)."""
    visual = model.visual
    visual.train()
    heads = AttributeHeads(model.text_projection.shape[1])
    opt = _adamw(list(visual.named_parameters()) + list(heads.named_parameters()), IMAGE_LR, 0.05)
    labels = labels_of(scenes)
    gen = torch.Generator().manual_seed(seed * 1000 + 1)
    n = len(scenes)
    n_easy = max(1, int(n * EASY_FRACTION))
    order = torch.randperm(n, generator=gen)
    cursor = 0
    start = time.time()
    warmup = max(1, steps // 15)
    running: dict[str, float] = {}
    done = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, IMAGE_LR, warmup)
        if cursor + IMAGE_BATCH > n:
            order, cursor = torch.randperm(n, generator=gen), 0
        idx = order[cursor : cursor + IMAGE_BATCH].clone()
        cursor += IMAGE_BATCH
        ramp = min(1.0, step / max(1.0, EASY_UNTIL * steps))
        p_easy = EASY_PROB[0] + (EASY_PROB[1] - EASY_PROB[0]) * ramp
        swap = torch.rand(IMAGE_BATCH, generator=gen) < p_easy
        idx[swap] = torch.randint(0, n_easy, (int(swap.sum()),), generator=gen)
        x = random_resized_crop(images_to_tensor(images[idx.numpy()]), gen)
        logits = heads(visual(x))
        losses = {a: F.cross_entropy(logits[a], labels[a][idx]) for a in logits}
        loss = sum(HEAD_WEIGHTS[a] * ln for a, ln in losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done = step + 1
        for a in logits:
            acc = float((logits[a].argmax(-1) == labels[a][idx]).float().mean())
            running[a] = 0.95 * running.get(a, acc) + 0.05 * acc
        elapsed = time.time() - start
        if done % 50 == 0 or done == 1:
            log(
                f"image step {done}/{steps} loss {loss.item():.3f} lr {opt.param_groups[0]['lr']:.1e} "
                f"{done * IMAGE_BATCH / elapsed:.0f} img/s acc " + " ".join(f"{a}={v:.2f}" for a, v in running.items())
            )
        if minutes is not None and elapsed > minutes * 60:
            log(f"image phase: time cap of {minutes} min reached after {done} steps")
            break
    visual.eval()
    return {"image_steps": done, "image_seconds": round(time.time() - start), "train_acc": running}


@torch.no_grad()
def embed_images(model, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(images), batch):
        out.append(F.normalize(model.encode_image(images_to_tensor(images[i : i + batch])), dim=-1))
    return torch.cat(out)


def world_vocabulary(tokenizer, extra_texts: list[str] = ()) -> list[int]:
    """Token ids of every word world-v2 captions use (plus ``extra_texts``), sorted."""
    texts = W.SHAPES + [W1._plural(s) for s in W.SHAPES] + W.COLOR_NAMES + W.PATTERNS + W.BACKGROUNDS + W.STYLES
    texts += list(W.COUNT_WORDS.values()) + ["a", "an", "shape", "shapes", ".", "a photo of a ."]
    for table in (W1.BACKGROUND_PHRASES, W1.STYLE_TEMPLATES):
        for phrases in table.values():
            texts += [p.replace("{}", " ") for p in phrases]
    texts += [t.replace("{}", " ") for t in W1.NEUTRAL_TEMPLATES] + list(extra_texts)
    ids: set[int] = set()
    for t in texts:
        ids.update(tokenizer.encode(t))
    ids.update([0, tokenizer.encoder["<start_of_text>"], tokenizer.encoder["<end_of_text>"]])
    return sorted(ids)


def train_text_tower(
    model,
    image_features: torch.Tensor,
    scenes: list[W.Scene],
    seed: int,
    steps: int = TEXT_STEPS,
    log: Callable[[str], None] = print,
) -> tuple[CompactEmbedding, dict]:
    """Phase 2 (LiT): captions generated on the fly are aligned to the frozen image embeddings."""
    tokenizer = get_tokenizer()
    embed = CompactEmbedding(model.token_embedding.weight.detach(), world_vocabulary(tokenizer))
    model.token_embedding.weight.requires_grad_(False)
    text_params = [
        (n, p) for n, p in model.named_parameters() if not n.startswith("visual.") and n != "token_embedding.weight"
    ]
    opt = _adamw(text_params + [("embedding", embed.weight)], TEXT_LR, 0.05)
    rng = np.random.default_rng([seed, 3])
    n = len(scenes)
    warmup = max(1, steps // 10)
    start = time.time()
    running_loss = None
    done = 0
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, TEXT_LR, warmup)
        idx = rng.choice(n, size=TEXT_BATCH, replace=False)
        batch_scenes = [scenes[i] for i in idx]
        caps = [W.caption(s, rng) for s in batch_scenes]
        pos = torch.tensor([[W.consistent(c, s) for _t, c in caps] for s in batch_scenes], dtype=torch.bool)
        txt = F.normalize(encode_text_truncated(model, tokenize(tokenizer, [t for t, _c in caps]), embed), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_features[torch.from_numpy(idx)] @ txt.T
        loss = multi_positive_contrastive_loss(logits, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        done = step + 1
        running_loss = loss.item() if running_loss is None else 0.95 * running_loss + 0.05 * loss.item()
        if done % 25 == 0 or done == 1:
            log(
                f"text step {done}/{steps} loss {running_loss:.3f} scale {model.logit_scale.exp().item():.1f} "
                f"{time.time() - start:.0f} s"
            )
    embed.write_back(model.token_embedding)
    return embed, {"text_steps": done, "text_seconds": round(time.time() - start), "text_loss": running_loss}


@torch.no_grad()
def attribute_zero_shot(model, seed: int, per_value: int = 20) -> dict[str, float]:
    """Zero-shot accuracy of "a photo of a {value}." over each attribute's values, on fresh photo scenes."""
    tokenizer = get_tokenizer()
    rng = np.random.default_rng([seed, 4])
    out = {}
    for attr in ("shape", "color", "pattern", "background"):
        values = W.ATTRIBUTE_VALUES[attr]
        scenes = [W.sample_scene(rng, **{attr: v}) for v in values for _ in range(per_value)]
        imgs = images_to_tensor([W.render(s, rng) for s in scenes])
        labels = torch.tensor([k for k in range(len(values)) for _ in range(per_value)])
        t = F.normalize(model.encode_text(tokenize(tokenizer, [f"a photo of a {v}." for v in values])), dim=-1)
        f = F.normalize(model.encode_image(imgs), dim=-1)
        out[attr] = float(((f @ t.T).argmax(-1) == labels).float().mean())
    return out


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """The CLIP state dict with floating tensors in fp16 (the shipped format)."""
    return {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}


def pretrain_micro_v2(
    output_dir,
    seed: int = 0,
    threads: int | None = 1,
    corpus_size: int = CORPUS_SIZE,
    image_steps: int = IMAGE_STEPS,
    text_steps: int = TEXT_STEPS,
    minutes_image: float | None = None,
    image_tower: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Both phases; writes ``output_dir/micro_clip_v2.safetensors`` (and the phase-1 image tower) atomically."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    start = time.time()
    model = build_model()
    images, scenes = render_corpus(corpus_size, seed, log)
    meta: dict = {"seed": seed, "world": W.WORLD_VERSION, "corpus": corpus_size, "threads": threads}
    if image_tower:
        from safetensors.torch import load_file

        model.visual.load_state_dict({k: v.float() for k, v in load_file(image_tower).items()})
        model.visual.eval()
        meta["image_tower"] = image_tower
    else:
        meta.update(train_image_tower(model, images, scenes, seed, image_steps, minutes_image, log))
        write_safetensors(
            output_dir / "image_tower.safetensors",
            model.visual.state_dict(),
            metadata={k: str(v) for k, v in meta.items()},
        )
    for p in model.visual.parameters():
        p.requires_grad_(False)
    t0 = time.time()
    features = embed_images(model, images[:TEXT_CORPUS])
    log(f"embedded {len(features)} images in {time.time() - t0:.0f} s")
    _embed, text_meta = train_text_tower(model, features, scenes[:TEXT_CORPUS], seed, text_steps, log)
    meta.update(text_meta)
    model.eval()
    zs = attribute_zero_shot(model, seed)
    meta["attribute_zero_shot"] = zs
    meta["total_seconds"] = round(time.time() - start)
    log("attribute zero-shot " + " ".join(f"{a}={v:.2f}" for a, v in zs.items()))
    path = write_safetensors(
        output_dir / WEIGHTS_NAME,
        export_state_dict(model),
        metadata={k: json.dumps(v) if isinstance(v, dict) else str(v) for k, v in meta.items()},
    )
    write_json(output_dir / "pretrain_v2_summary.json", meta)
    log(f"wrote {path} after {meta['total_seconds']} s")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlptune.micro.v2.pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", "--out", dest="out", default="micro_clip_v2_out", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the corpus, the augmentations and the inits")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: reproducible)")
    parser.add_argument("--corpus", type=int, default=CORPUS_SIZE, help="scenes rendered once for phase 1")
    parser.add_argument("--image-steps", type=int, default=IMAGE_STEPS, help=f"phase-1 steps of {IMAGE_BATCH} images")
    parser.add_argument("--text-steps", type=int, default=TEXT_STEPS, help=f"phase-2 steps of {TEXT_BATCH} captions")
    parser.add_argument("--minutes-image", type=float, default=None, help="safety cap on phase 1 (wall clock)")
    parser.add_argument("--image-tower", default=None, help="skip phase 1: a saved image_tower.safetensors")
    args = parser.parse_args(argv)
    pretrain_micro_v2(
        args.out,
        seed=args.seed,
        threads=args.threads,
        corpus_size=args.corpus,
        image_steps=args.image_steps,
        text_steps=args.text_steps,
        minutes_image=args.minutes_image,
        image_tower=args.image_tower,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
