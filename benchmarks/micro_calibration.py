"""Calibration of the micro CLIP on the micro suite: is prompt tuning meaningful here?

For every micro dataset, on its fixed test split:

* ``zs``     zero-shot accuracy with the generic template "a photo of a {}." (what the suite ships),
* ``zs-sty`` zero-shot with the dataset's style named ("a sketch of a {}."), the hand-crafted-prompt analogue,
* ``probe``  a 16-shot multinomial logistic-regression probe on the frozen, normalised image features
             (L2 strength chosen on the val split),
* ``ctx4``   a learned context: 4 context vectors (initialised from "a photo of a") prepended to the class-name
             token embeddings and optimised through the text tower on the same 16 shots (a CoOp stand-in; the
             engine's CoOp is measured separately), SGD learning rate chosen on the val split,
* ``ctx16``  the same with 16 randomly initialised context vectors (CoOp's default n).

Usage::

    python benchmarks/micro_calibration.py [--weights PATH] [--threads 1] [--n-ctx 4] [--json OUT]

Measured on the shipped weights (seed 0, 3600 steps, 51 min on one thread of a shared 2-core CPU), 2.5 min::

    dataset                  style     cls chance     zs zs-sty  probe   ctx4  ctx16
    micro-shapes             sketch     10   10.0   69.2   68.8   62.7   72.8   67.5
    micro-textures           noisy      10   10.0   29.2   24.3   30.5   32.5   29.2
    micro-scenes             pixelated  10   10.0   87.0   91.3   96.7   99.8   99.8
    micro-counts             foggy      10   10.0   96.5   96.2   92.3   96.5   95.0
    micro-positions          inverted   10   10.0   87.3   87.0   86.0   88.0   91.5
    micro-colors             pixelated  10   10.0   84.0   89.0   80.3   90.0   89.5
    micro-objects            noisy      12    8.3   89.6   88.7   90.2   94.4   94.2
    micro-patterned          sketch     12    8.3   34.6   34.2   44.2   43.3   44.0
    MEAN (suite)                                    72.2   72.4   72.9   77.2   76.3
    micro-shapes-photo       photo      10   10.0   72.7   72.7      -      -      -
    micro-shapes-pixelated   pixelated  10   10.0   62.7   61.0      -      -      -
    micro-shapes-foggy       foggy      10   10.0   71.0   70.3      -      -      -

Targets: zero-shot mean in 40-85 (met, 72.2), every dataset >= 2x chance (met), learned context >= +5 (met at
n=4, +5.0; +4.2 at n=16), 16-shot probe >= +10 over zero-shot (NOT met: +0.7). The probe is limited by the
features, not the probe: the 512-d layer4 features give the same, and 32 shots reach only +6.4. Where zero-shot is
weak (textures under noise, patterns in sketches) the image features are weak too.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from rlptune.micro import world as W  # noqa: E402
from rlptune.micro.pretrain import (  # noqa: E402
    WEIGHTS_PATH,
    build_model,
    encode_text_truncated,
    get_tokenizer,
    images_to_tensor,
    tokenize,
)
from rlptune.micro.suite import (  # noqa: E402
    GENERIC_TEMPLATE,
    MICRO_DATASETS,
    MICRO_SHIFTS,
    micro_spec,
    render_split,
)


def load_micro_clip(path: Path):
    from safetensors.torch import load_file

    model = build_model()
    sd = load_file(str(path))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, strict=True)
    return model.eval()


@torch.no_grad()
def image_features(model, images, batch: int = 256) -> torch.Tensor:
    out = [model.encode_image(images_to_tensor(images[i : i + batch])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(out), dim=-1)


@torch.no_grad()
def text_features(model, tokenizer, texts) -> torch.Tensor:
    return F.normalize(encode_text_truncated(model, tokenize(tokenizer, texts)), dim=-1)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def few_shot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(labels):
        pool = np.flatnonzero(labels == c)
        idx += list(rng.choice(pool, size=min(shots, len(pool)), replace=False))
    return np.array(sorted(idx))


def logistic_probe(xtr, ytr, xval, yval, xte, yte, num_classes: int) -> float:
    best = (-1.0, None)
    for wd in (1e-4, 1e-3, 1e-2, 1e-1):
        torch.manual_seed(0)
        lin = torch.nn.Linear(xtr.shape[1], num_classes)
        opt = torch.optim.LBFGS(lin.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(lin(xtr * 10), ytr) + wd * lin.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            acc_val = accuracy(lin(xval * 10), yval)
            if acc_val > best[0]:
                best = (acc_val, accuracy(lin(xte * 10), yte))
    return best[1]


def learned_context(
    model,
    tokenizer,
    classnames,
    xtr,
    ytr,
    xevals,
    n_ctx: int = 4,
    steps: int = 200,
    lr: float = 2e-3,
    init: str | None = "a photo of a",
    seed: int = 0,
) -> list[float]:
    """Optimise n context vectors in front of the class names (CoOp-style, class-agnostic, end position).

    SGD with momentum 0.9, cosine schedule, batch 32; returns the accuracy on each ``(x, y)`` of ``xevals``.
    """
    prompts = [" ".join(["X"] * n_ctx) + " " + c + "." for c in classnames]
    tokens = tokenize(tokenizer, prompts)
    base = model.token_embedding(tokens).detach()
    if init:
        init_ids = tokenize(tokenizer, [init])[0, 1 : 1 + n_ctx]
        ctx0 = model.token_embedding(init_ids).detach().clone()
    else:
        ctx0 = torch.randn(n_ctx, base.shape[-1], generator=torch.Generator().manual_seed(seed)) * 0.02
    ctx = torch.nn.Parameter(ctx0)
    opt = torch.optim.SGD([ctx], lr=lr, momentum=0.9)
    scale = model.logit_scale.exp().detach()
    for p in model.parameters():
        p.requires_grad_(False)
    rng = torch.Generator().manual_seed(seed)

    def text_feats():
        def embed(tok):
            e = base[:, : tok.shape[1]].clone()
            e[:, 1 : 1 + n_ctx] = ctx
            return e

        return F.normalize(encode_text_truncated(model, tokens, embed), dim=-1)

    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        idx = torch.randperm(len(ytr), generator=rng)[:32]
        loss = F.cross_entropy(scale * xtr[idx] @ text_feats().T, ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        t = text_feats()
        return [accuracy(x @ t.T, y) for x, y in xevals]


CTX_LRS = (2e-3, 1e-2, 5e-2)


def tuned_context(model, tokenizer, classnames, xtr, ytr, xva, yva, xte, yte, n_ctx, init, steps):
    """Learned context with the SGD learning rate chosen on the val split; returns (test accuracy, lr)."""
    best = None
    for lr in CTX_LRS:
        val, test = learned_context(
            model, tokenizer, classnames, xtr, ytr, [(xva, yva), (xte, yte)], n_ctx=n_ctx, steps=steps, lr=lr, init=init
        )
        if best is None or val > best[0]:
            best = (val, test, lr)
    return best[1], best[2]


def evaluate(model, tokenizer, names, shots=16, n_ctx=4, ctx_steps=200, seed=1, log=print):
    rows = []
    for name in names:
        t0 = time.time()
        spec = micro_spec(name)
        cls = spec.classnames
        te_img, te_y = render_split(name, "test")
        xte, yte = image_features(model, te_img), torch.tensor(te_y)
        generic = text_features(model, tokenizer, [GENERIC_TEMPLATE.format(c) for c in cls])
        styled_t = W.STYLE_TEMPLATES[spec.style][0].format("a {}") + "."
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
            row["ctx"], row["ctx_lr"] = tuned_context(
                model, tokenizer, cls, xtr, ytr, xva, yva, xte, yte, n_ctx=n_ctx, init="a photo of a", steps=ctx_steps
            )
            row["ctx16"], row["ctx16_lr"] = tuned_context(
                model, tokenizer, cls, xtr, ytr, xva, yva, xte, yte, n_ctx=16, init=None, steps=ctx_steps
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
        f"{p('probe')} {p('ctx')} {p('ctx16')}"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", default=str(WEIGHTS_PATH))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=4)
    ap.add_argument("--ctx-steps", type=int, default=200)
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_micro_clip(Path(args.weights))
    tokenizer = get_tokenizer()
    names = args.datasets or MICRO_DATASETS
    print(
        f"{'dataset':<24} {'style':<9} {'cls':>3} {'chance':>6} {'zs':>6} {'zs-sty':>6} {'probe':>6} {'ctx4':>6} {'ctx16':>6}"
    )
    rows = evaluate(model, tokenizer, names, shots=args.shots, n_ctx=args.n_ctx, ctx_steps=args.ctx_steps)
    suite = [r for r in rows if r["dataset"] in MICRO_DATASETS]
    if suite:
        mean = {
            k: float(np.mean([r[k] for r in suite if k in r]))
            for k in ("zs", "zs_style", "probe", "ctx", "ctx16")
            if any(k in r for r in suite)
        }
        print(f"{'MEAN (suite)':<24} {'':<9} {'':>3} {'':>6} " + " ".join(f"{100 * mean[k]:6.1f}" for k in mean))
        below = [r["dataset"] for r in suite if r["zs"] < 2 * r["chance"]]
        print(f"zero-shot mean {100 * mean['zs']:.1f} (target 40-85); datasets below 2x chance: {below or 'none'}")
        if "probe" in mean:
            print(
                f"probe - zero-shot {100 * (mean['probe'] - mean['zs']):+.1f} points (target >= +10); "
                f"learned context - zero-shot {100 * (mean['ctx'] - mean['zs']):+.1f} (n=4 from 'a photo of a'), "
                f"{100 * (mean['ctx16'] - mean['zs']):+.1f} (n=16 random) points (target >= +5)"
            )
    if args.datasets is None:
        shift_rows = evaluate(model, tokenizer, [s for v in MICRO_SHIFTS.values() for s in v])
        rows += shift_rows
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
