"""The text step alone: the official-style 77-token prompt path against rlptune's shared-prefix path, and the floor.

One training step's text work for C classes with one shared context (CoOp n = 16 by default): build every class's
prompt, run the text tower, pool, and backpropagate into the context. Timed on one thread on the ViT-B-16-sized
text tower with random weights (``random:ViT-B-16``; the values do not change the time).

- **official-style**: CoOp's ``PromptLearner`` + ``TextEncoder`` (``benchmarks/train_speed.py``'s reference):
  C prompts of 77 tokens through all blocks, forward + backward.
- **shared prefix**: :class:`rlptune.text.PromptedClassText` (``[SOS][ctx]`` once, each class's own tokens only).

**The floor** is the work the shared-prefix path cannot avoid, divided by the FLOP rate this machine reaches on
one large batch of the same matrix products. Counted (multiply-add = 2 FLOPs):

- every token of the prefix (P = 1 + n) and every class's own tokens (name, ".", EOT: S_c) in every block: the
  linear layers (q/k/v projection, output projection, the MLP's two layers) — ``2 · Σ in·out`` per token;
- attention: a token at position t attends to t + 1 keys (causal): ``4 · d · (t + 1)`` (scores and values);
- the last block: the prefix needs only its keys and values, and of the class tokens only the EOT token (the one
  pooled) needs its query, output projection and MLP;
- the backward pass computes input gradients only (the tower is frozen): the same products again for the linear
  layers (``dX = dY · Wᵀ``) and twice the attention's (gradients of queries, keys and values): forward + backward =
  2 × linear + 3 × attention.

The rate is measured in the same run: the prefix + class tokens as ONE batch through the same chain of products
(one block's four linear layers per layer, forward and input-gradient backward), so the floor is the time of the
counted work at the dense rate. Layer norms, activations, softmax and the per-class gather are not in the floor.

Usage::

    .venv/bin/python benchmarks/text_step.py                      # 100 classes, CoOp n=16, 1 thread
    .venv/bin/python benchmarks/text_step.py --reps 5 --ref-reps 1 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rlptune.backbones import load_backbone  # noqa: E402
from rlptune.text import PromptedClassText  # noqa: E402
from rlptune.text import shared_prefix as sp  # noqa: E402
from train_speed import RefPromptLearner, RefTextEncoder, class_names  # noqa: E402


def linear_shapes(tower) -> list[tuple[int, int]]:
    """(in, out) of one block's linear layers: qkv projection, output projection, MLP in and out."""
    block = tower.transformer.resblocks[0]
    attn = block.attn
    shapes = [
        (attn.in_proj_weight.shape[1], attn.in_proj_weight.shape[0]),
        (attn.out_proj.in_features, attn.out_proj.out_features),
    ]
    shapes += [(m.in_features, m.out_features) for m in block.mlp if isinstance(m, torch.nn.Linear)]
    return shapes


def floor_flops(tower, prefix_len: int, own_lens: list[int]) -> dict:
    """FLOPs the shared-prefix step cannot avoid (forward and input-gradient backward; see the module docstring)."""
    layers = tower.num_layers
    d = tower.width
    shapes = linear_shapes(tower)
    per_token = 2 * sum(i * o for i, o in shapes)  # forward FLOPs of one token through one block's linear layers
    qkv = 2 * shapes[0][0] * shapes[0][1]
    kv_only = qkv * 2 // 3
    tokens = prefix_len + sum(own_lens)
    # attention keys seen: prefix token t sees t + 1, class token j (0-based) sees P + j + 1
    keys = sum(t + 1 for t in range(prefix_len)) + sum(prefix_len + j + 1 for s in own_lens for j in range(s))
    keys_eot = sum(prefix_len + s for s in own_lens)
    full_layers = layers - 1
    linear = full_layers * tokens * per_token
    linear += prefix_len * kv_only  # last block, prefix: keys and values only
    linear += sum(own_lens) * kv_only + len(own_lens) * (per_token - kv_only)  # last block, class tokens
    attention = full_layers * 4 * d * keys + 4 * d * keys_eot
    return {
        "tokens": tokens,
        "layers": layers,
        "width": d,
        "linear_flops_per_token_layer": per_token,
        "forward_flops": linear + attention,
        "total_flops": 2 * linear + 3 * attention,
        "linear_total": 2 * linear,
        "attention_total": 3 * attention,
    }


def dense_rate(tower, tokens: int, reps: int) -> float:
    """FLOP/s of the same linear products on ONE batch of ``tokens`` rows (forward + input-gradient backward)."""
    shapes = linear_shapes(tower)
    block = tower.transformer.resblocks[0]
    weights = [block.attn.in_proj_weight, block.attn.out_proj.weight] + [
        m.weight for m in block.mlp if isinstance(m, torch.nn.Linear)
    ]
    weights = [w.detach() for w in weights]
    flops = 2 * 2 * tokens * sum(i * o for i, o in shapes) * tower.num_layers
    times = []
    for _ in range(reps + 1):
        x = torch.randn(tokens, tower.width, requires_grad=True)
        t0 = time.perf_counter()
        h = x
        for _ in range(tower.num_layers):
            a = F.linear(h, weights[0])[:, : tower.width]  # qkv (keep one third as the next input, same product)
            h = F.linear(a, weights[1])
            m = F.linear(h, weights[2])
            h = F.linear(m, weights[3])
        h.sum().backward()
        times.append(time.perf_counter() - t0)
    return flops / min(times[1:])


def time_official(backbone, names, n_ctx: int, reps: int) -> list[float]:
    learner = RefPromptLearner(backbone, names, n_ctx, rlp=False)
    encoder = RefTextEncoder(backbone.model)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        feats = encoder(learner(), learner.tokenized_prompts)
        F.normalize(feats, dim=-1).sum().backward()
        out.append(time.perf_counter() - t0)
    return out


def grouped_step(text: PromptedClassText, ctx: torch.Tensor) -> torch.Tensor:
    """The shared-prefix path as it was before packing: one group per own-token length (every row's EOT last),
    each group's tokens through the blocks apart (for the before/after comparison in the same run)."""
    tower = text.backbone.text
    lengths = (text.eot - text.n_ctx - text.n_fixed).tolist()
    groups: dict[int, list[int]] = {}
    for index, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(index)
    prefix = torch.cat([text.prefix[:1], ctx.unsqueeze(0).to(text.prefix.dtype), text.fixed], dim=1)
    cache = sp.encode_prefix(tower, prefix)
    feats, order = [], []
    for n, members in sorted(groups.items()):
        feats.append(sp.encode_classes(tower, cache, text.own[members, :n]))
        order += members
    out = torch.cat(feats)
    return out[torch.argsort(torch.tensor(order))]


def time_paths(text: PromptedClassText, ctx: torch.Tensor, tower, tokens: int, reps: int) -> dict[str, list[float]]:
    """Interleaved, rep by rep: the dense-rate probe, the packed shared-prefix step, the per-length-group step (the
    load on a shared machine changes within seconds, so each rep's three numbers see about the same load)."""
    out: dict[str, list[float]] = {"dense_rate": [], "packed": [], "grouped": []}
    steps = {"packed": lambda: text(ctx), "grouped": lambda: grouped_step(text, ctx)}
    for rep in range(reps + 1):  # the first round warms the allocator and kernels
        rate = dense_rate(tower, tokens, reps=1)
        timed = {}
        for name, step in steps.items():
            ctx.grad = None
            t0 = time.perf_counter()
            F.normalize(step(), dim=-1).sum().backward()
            timed[name] = time.perf_counter() - t0
        if rep:
            out["dense_rate"].append(rate)
            for name, seconds in timed.items():
                out[name].append(seconds)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="random:ViT-B-16", help="backbone whose text tower is timed")
    parser.add_argument("--classes", type=int, default=100, help="number of classes (ImageNet-like names, 1-3 words)")
    parser.add_argument("--n-ctx", type=int, default=16, help="context tokens (CoOp: 16)")
    parser.add_argument(
        "--reps", type=int, default=5, help="timed rounds (after one warm-up round); medians are reported"
    )
    parser.add_argument("--ref-reps", type=int, default=1, help="timed official-style steps (0 = skip)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="write the raw numbers here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    report: dict = {"threads": args.threads, "torch": torch.__version__, "classes": args.classes, "n_ctx": args.n_ctx}
    with contextlib.suppress(OSError):
        report["loadavg_start"] = os.getloadavg()
    backbone = load_backbone(args.backbone, device="cpu")
    for p in backbone.model.parameters():
        p.requires_grad_(False)
    names = class_names(args.classes)
    text = PromptedClassText(backbone, names, args.n_ctx)
    ctx = (torch.randn(args.n_ctx, backbone.text.width) * 0.02).requires_grad_(True)
    own_lens = (text.eot - text.n_ctx - text.n_fixed).tolist()  # name + "." + EOT of each class
    floor = floor_flops(backbone.text, 1 + text.n_ctx + text.n_fixed, own_lens)
    # check the comparison path computes the same features as the library's path before timing it
    with torch.no_grad():
        same = (F.normalize(text(ctx), dim=-1) - F.normalize(grouped_step(text, ctx), dim=-1)).abs().max().item()
    timed = time_paths(text, ctx, backbone.text, floor["tokens"], args.reps)
    official = time_official(backbone, names, args.n_ctx, args.ref_reps) if args.ref_reps > 0 else []
    total = floor["total_flops"]
    # per rep: the step over the floor at that rep's dense rate; the median over reps is reported
    ratios = {name: [t * r / total for t, r in zip(timed[name], timed["dense_rate"])] for name in ("packed", "grouped")}
    rate = statistics.median(timed["dense_rate"])
    report.update(
        {
            "floor": floor,
            "dense_rate_flops": timed["dense_rate"],
            "floor_seconds": total / rate,
            "max_feature_diff": same,
            "packed_steps": timed["packed"],
            "grouped_steps": timed["grouped"],
            "official_steps": official,
            "ratio_to_floor": {k: statistics.median(v) for k, v in ratios.items()},
            "ratios_to_floor": ratios,
            "packs": len(text._groups),
        }
    )
    with contextlib.suppress(OSError):
        report["loadavg_end"] = os.getloadavg()
    f = floor
    print(
        f"text step, {args.classes} classes, n_ctx {args.n_ctx}, {args.backbone}, {args.threads} thread(s); "
        f"load average {report['loadavg_start'][0]:.1f} -> {report['loadavg_end'][0]:.1f}"
    )
    print(
        f"  tokens: prefix {1 + text.n_ctx + text.n_fixed} + class tokens {sum(own_lens)} = {f['tokens']} "
        f"(official-style: {args.classes} x 77 = {args.classes * 77}); {f['layers']} layers, width {f['width']}"
    )
    print(
        f"  floor work: {total / 1e9:.1f} GFLOP (linear {f['linear_total'] / 1e9:.1f} + attention "
        f"{f['attention_total'] / 1e9:.2f}; {f['linear_flops_per_token_layer'] / 1e6:.1f} MFLOP per token-layer forward, "
        f"x2 with the input-gradient backward)"
    )
    print(
        f"  dense rate (one batch of {f['tokens']} tokens, same products): median {rate / 1e9:.1f} GFLOP/s "
        f"({', '.join(f'{r / 1e9:.0f}' for r in timed['dense_rate'])}) -> floor {total / rate:.2f} s"
    )
    labels = {"packed": "shared prefix, packed (rlptune)", "grouped": "shared prefix, per-length groups (before)"}
    for name, label in labels.items():
        t = statistics.median(timed[name])
        print(
            f"  {label}: median {t:.2f} s/step ({', '.join(f'{x:.2f}' for x in timed[name])}); "
            f"achieved {total / t / 1e9:.1f} GFLOP/s; {report['ratio_to_floor'][name]:.2f}x the floor "
            f"(median of per-rep ratios)"
        )
    print(
        f"  packed vs per-length groups: {statistics.median(timed['grouped']) / statistics.median(timed['packed']):.2f}x; "
        f"features equal to {same:.1e}"
    )
    if official:
        o = statistics.median(official)
        report["official_step"] = o
        print(
            f"  official-style 77 tokens: {o:.2f} s/step -> {o / statistics.median(timed['packed']):.1f}x the packed "
            f"step, {o / statistics.median(timed['grouped']):.1f}x the per-length groups"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
