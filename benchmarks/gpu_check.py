"""GPU check: the half-precision and multi-device paths, run end to end, one JSON out.

Nothing in rlptune's GPU paths had ever executed on a GPU. This script runs them the day a device is lent, and runs
the very same code on a CPU in a reduced mode (a tiny model, a few steps, gloo) so that it cannot rot in CI
(``tests/test_gpu_check.py``).

What it does (full mode: CUDA, a random ViT-B-16 — open_clip's architecture, no pretrained weights):

1. **Training in fp16 and bf16.** CoOp, RLP, MaPLe and CLIP-LoRA, each with its official recipe, trained with
   rlptune's pipeline (``rlptune.train``) for ``--steps`` steps on generated images, in fp16 and in bf16 (autocast,
   fp32 trainable tensors; fp16 with a gradient scaler). Checked: every logged loss is finite; under fp16 the
   scaler's scale is not 1 and steps were taken (not all skipped as overflowed); the adapter's logits on a few hundred
   held-out images agree with the same adapter run in fp32 (top-1 agreement, max and mean absolute difference).
2. **torchrun.** ``torchrun --nproc_per_node=<devices>`` (NCCL on CUDA, gloo on a CPU) runs a collective and
   rlptune's data-parallel training step (DistributedDataParallel over a method's step; at world size 1 the step is
   wrapped explicitly, since a one-process launch takes rlptune's single-process path); with 2 or more devices it also
   trains a real run through ``rlptune.train`` under torchrun.
3. **A CoOp epoch against the official-style loop at fp16.** rlptune's trainer (fp16 autocast, a fresh crop per
   image, cold feature cache) against ``train_speed.py``'s CoOp-style reference loop run the way Dassl runs
   ``PREC: fp16``: a copy of CLIP and the prompt cast to fp16, images cast to fp16, SGD on the fp16 context.
4. ``auto``: what ``backbone.precision: auto`` resolves to on this machine for every method.

Usage (on a lent GPU; about 3-5 minutes on one H100)::

    python benchmarks/gpu_check.py --json benchmarks/gpu_check_results.json
    python benchmarks/gpu_check.py --reduced --json /tmp/gpu_check_cpu.json    # the CPU mode CI runs (< 1 min)

The exit status is 0 when every check passed, 1 otherwise; the JSON says which.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from rlptune.backbones import Backbone, eval_transform, load_backbone  # noqa: E402
from rlptune.backbones import precision as precision_mod  # noqa: E402
from rlptune.config import resolve_config  # noqa: E402
from rlptune.data import load_dataset  # noqa: E402
from rlptune.engine import train  # noqa: E402
from rlptune.engine.adapter import load_adapter  # noqa: E402
from rlptune.engine.features import FeatureCache  # noqa: E402
from rlptune.engine.record import library_versions  # noqa: E402
from rlptune.engine.trainer import Trainer  # noqa: E402
from rlptune.errors import RlptuneError  # noqa: E402
from rlptune.methods import build_method  # noqa: E402
from rlptune.methods.base import Batch  # noqa: E402
from rlptune import recipes  # noqa: E402

import train_speed  # noqa: E402  (the official-style reference loop and the class names)

METHODS = ("coop", "rlp", "maple", "clip_lora")

#: The reduced (CPU) mode's model: the tests' tiny open_clip architecture.
TINY_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@dataclasses.dataclass
class Mode:
    """How big the check is: the full mode on CUDA, the reduced one on a CPU."""

    name: str
    device: str
    backbone: str
    precisions: tuple[str, ...]
    steps: int
    classes: int
    shots: int
    test_per_class: int
    timing_classes: int
    timing_shots: int
    world_size: int
    ddp_backend: str
    notes: list[str] = dataclasses.field(default_factory=list)


def half_supported(device: str, dtype: torch.dtype) -> bool:
    """Whether autocast in ``dtype`` runs a matmul forward and backward on ``device`` (fp16 on old CPU builds does not)."""
    try:
        a = torch.randn(8, 8, device=device, requires_grad=True)
        with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
            out = a @ a
        out.float().sum().backward()
        return out.dtype == dtype and bool(torch.isfinite(a.grad).all())
    except (RuntimeError, TypeError):
        return False


def choose_mode(args, work: Path) -> Mode:
    cuda = torch.cuda.is_available() and not args.reduced
    if cuda:
        mode = Mode(
            "cuda",
            "cuda",
            args.backbone or "random:ViT-B-16",
            ("fp16", "bf16"),
            args.steps or 300,
            args.classes or 10,
            16,
            26,
            args.timing_classes or 100,
            16,
            torch.cuda.device_count(),
            "nccl",
        )
        if not torch.cuda.is_bf16_supported():
            mode.precisions = ("fp16",)
            mode.notes.append("this GPU has no bf16: bf16 skipped")
        return mode
    arch = work / "tiny-clip.json"
    arch.write_text(json.dumps(TINY_ARCH))
    mode = Mode(
        "cpu-reduced",
        "cpu",
        args.backbone or str(arch),
        (),
        args.steps or 16,
        args.classes or 3,
        2,
        4,
        args.timing_classes or 3,
        4,
        1,
        "gloo",
    )
    precisions = []
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16)):
        if half_supported("cpu", dtype):
            precisions.append(name)
        else:
            mode.notes.append(f"{name} autocast unsupported on this CPU: skipped")
    mode.precisions = tuple(precisions) or ("bf16",)
    if not torch.cuda.is_available():
        mode.notes.append("no CUDA device: reduced mode (tiny model, gloo instead of NCCL)")
    return mode


# -- data ---------------------------------------------------------------------------------------------------------


def make_folder(root: Path, classes: int, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    """root/{train,test}/<class>/<i>.png: noise with a coloured square per class (ImageNet-like class names)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in train_speed.class_names(classes):
        colour = rng.integers(0, 256, size=3)
        for split, count in (("train", train_per_class), ("test", test_per_class)):
            if not count:
                continue
            folder = root / split / name.replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = rng.integers(60, 190, size=(48, 48, 3)).astype(np.uint8)
                x, y = rng.integers(0, 24, size=2)
                arr[y : y + 24, x : x + 24] = colour
                Image.fromarray(arr).save(folder / f"{i:03d}.png")
    return root


def test_images(backbone: Backbone, root: Path) -> tuple[torch.Tensor, list[str]]:
    """Every test image of the folder through the evaluation transform (the held-out images logits are compared on)."""
    splits = load_dataset("folder", root)
    transform = eval_transform(backbone)
    from PIL import Image

    images = [transform(Image.open(splits.abspath(it)).convert("RGB")) for it in splits.test]
    return torch.stack(images), splits.classnames


# -- 1. training in half precision ------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def method_logits(method, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    method.eval()
    device = method.backbone.device
    return torch.cat([method(images[i : i + batch].to(device)).float().cpu() for i in range(0, len(images), batch)])


def agreement(logits: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    diff = (logits - reference).abs()
    return {
        "images": int(len(logits)),
        "top1_agreement": float((logits.argmax(-1) == reference.argmax(-1)).float().mean()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "reference_logit_range": float(reference.max() - reference.min()),
        "finite": bool(torch.isfinite(logits).all()),
    }


def check_training(
    backbone: Backbone, root: Path, method: str, precision: str, mode: Mode, work: Path, images: torch.Tensor
) -> dict[str, Any]:
    """Train ``method`` in ``precision`` through rlptune's pipeline; compare its adapter's logits with fp32."""
    overrides = {
        "method": {"name": method},
        "backbone": {"precision": precision, "device": mode.device},
        "data": {"dataset": "folder", "root": str(root), "shots": mode.shots},
        "train": {
            "iterations": mode.steps,
            "val_every": 0,
            "checkpoint_every": 0,
            "log_diagnostics": False,
            "cache_dir": str(work / "cache"),
            "aug_views": 2,
            "seed": 1,
        },
    }
    if mode.name == "cpu-reduced":
        overrides["train"]["batch_size"] = 2
        if method == "maple":  # the tiny text tower has 2 blocks; MaPLe's recipe prompts 9
            overrides["method"]["options"] = {"depth": 2}
    out = work / "runs" / f"{method}-{precision}"
    t0 = time.perf_counter()
    try:
        config = resolve_config(None, overrides)
        result = train(config, out, backbone=backbone, progress=False)
    except RlptuneError as exc:  # a diverged run is a failed check, with its one line
        return {"ok": False, "error": str(exc), "seconds": time.perf_counter() - t0}
    _sync(mode.device)
    seconds = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    steps = sum(r["steps"] for r in records)
    row: dict[str, Any] = {
        "seconds": seconds,
        "steps": steps,
        "batch_size": config.train.batch_size,
        "epochs": len(records),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses_finite": all(math.isfinite(v) for v in losses),
        "recorded_precision": (out / "config.yaml").read_text().split("precision: ", 1)[1].split()[0],
        "test_top1": result["metrics"]["test"]["top1"],
    }
    if precision == "fp16":
        skipped = sum(r.get("skipped_steps", 0) for r in records)
        scale = records[-1].get("grad_scale")
        row.update(
            {
                "grad_scale": scale,
                "skipped_steps": skipped,
                "steps_taken": steps - skipped,
                "scaler_scales": scale is not None and scale != 1.0 and steps - skipped > 0,
            }
        )
    ours = load_adapter(out / "adapter", backbone=backbone, precision=precision)
    ref = load_adapter(out / "adapter", backbone=backbone, precision="fp32")
    assert ours.backbone.precision == precision and ref.backbone.precision == "fp32"
    row["logits_vs_fp32"] = agreement(method_logits(ours, images), method_logits(ref, images))
    row["ok"] = bool(
        row["losses_finite"]
        and row["logits_vs_fp32"]["finite"]
        and row.get("scaler_scales", True)
        and row["recorded_precision"] == precision
    )
    return row


# -- 2. torchrun --------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_torchrun(mode: Mode, root: Path, work: Path, precision: str) -> dict[str, Any]:
    """Launch this script's ``--ddp-worker`` under torchrun on every device present; return rank 0's report."""
    out = work / "ddp.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={mode.world_size}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(Path(__file__).resolve()),
        "--ddp-worker",
        str(out),
        "--backbone",
        mode.backbone,
        "--device",
        mode.device,
        "--precision",
        precision,
        "--data-root",
        str(root),
        "--work",
        str(work / "ddp-run"),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    if mode.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    report: dict[str, Any] = {
        "command": " ".join(cmd[:6]) + " ...",
        "returncode": done.returncode,
        "seconds": time.perf_counter() - t0,
        "world_size": mode.world_size,
    }
    if done.returncode != 0 or not out.is_file():
        report.update({"ok": False, "stderr_tail": done.stderr[-3000:], "stdout_tail": done.stdout[-1000:]})
        return report
    report.update(json.loads(out.read_text()))
    report["ok"] = bool(report.get("collective_ok") and report.get("ddp_ok") and report.get("pipeline_ok", True))
    return report


def ddp_worker(args) -> int:
    """One rank under torchrun: a collective, DDP over a method's training step, and (world >= 2) a real run."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from rlptune.engine.distributed import _Step, current, wrap_for_training

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = args.device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(minutes=5))
    report: dict[str, Any] = {"backend": dist.get_backend(), "world_size": world}
    total = torch.tensor([float(rank + 1)], device=device)
    dist.all_reduce(total)
    report["collective_ok"] = float(total.item()) == world * (world + 1) / 2

    backbone = load_backbone(args.backbone, device=device, precision=args.precision)
    config = resolve_config(None, {"method": {"name": "coop"}, "backbone": {"precision": args.precision}})
    torch.manual_seed(0)
    method = build_method(config, backbone, train_speed.class_names(8)).to(device)
    context = current()
    if context.enabled:
        step_module = wrap_for_training(method, context)
    else:  # one process: rlptune would not wrap, so wrap here to run DDP's all-reduce through the backend anyway
        step_module = DistributedDataParallel(
            _Step(method), device_ids=[local] if cuda else None, broadcast_buffers=False
        )
    params = [p for p in method.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9)
    scaler = torch.amp.GradScaler(torch.device(device).type) if args.precision == "fp16" else None
    dim = int(backbone.encode_text_ids(backbone.tokenize(["x"])).shape[-1])
    generator = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(5):
        feats = F.normalize(torch.randn(8 * world, dim, generator=generator), dim=-1)
        labels = torch.randint(0, 8, (8 * world,), generator=generator)
        mine = slice(rank * 8, (rank + 1) * 8)
        with backbone.autocast():
            loss, _, _ = step_module(Batch(labels=labels[mine].to(device), features=feats[mine].to(device)))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss.float()).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.float().backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    spread = torch.stack([p.detach().float().abs().sum() for p in params]).sum().reshape(1)
    low, high = spread.clone(), spread.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    report.update(
        {
            "ddp_steps": len(losses),
            "ddp_losses": losses,
            "ddp_params_equal_across_ranks": bool(torch.equal(low, high)),
            "ddp_ok": all(math.isfinite(v) for v in losses) and bool(torch.equal(low, high)),
        }
    )
    if world >= 2:  # the real thing: a run through rlptune.train under torchrun (rlptune joins the same group)
        run_config = resolve_config(
            None,
            {
                "method": {"name": "coop"},
                "backbone": {"name": args.backbone, "device": args.device, "precision": args.precision},
                "data": {"dataset": "folder", "root": args.data_root, "shots": 4},
                "train": {
                    "epochs": 2,
                    "batch_size": 4 * world,
                    "val_every": 0,
                    "cache_dir": str(Path(args.work) / "cache"),
                },
            },
        )
        result = train(run_config, Path(args.work) / "run", progress=False)
        report.update(
            {"pipeline_world_size": result.get("world_size"), "pipeline_ok": result.get("world_size") == world}
        )
    if rank == 0:
        Path(args.ddp_worker).write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()
    return 0


# -- 3. a CoOp epoch against the official-style loop at fp16 -------------------------------------------------------------


class _CastImages(nn.Module):
    """The official ``image_encoder(image.type(self.dtype))``: images cast to the model's dtype first."""

    def __init__(self, encoder: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.encoder, self.dtype = encoder, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.to(self.dtype))


def official_half_epoch(backbone: Backbone, splits, config, dtype: torch.dtype, device: str) -> dict[str, Any]:
    """``train_speed``'s CoOp-style loop on a copy of CLIP cast to ``dtype`` with the prompt in ``dtype`` too (Dassl's
    ``PREC: fp16``: no autocast, no scaler, SGD on the half-precision context); one whole epoch, timed."""
    cpu_copy = dataclasses.replace(backbone, model=copy.deepcopy(backbone.model).cpu(), info=dict(backbone.info))
    ref = train_speed.ReferenceTrainer(cpu_copy, splits, config.prompt.n_ctx, rlp=False, config=config)
    ref.model.to(device).to(dtype)  # CLIP, the context and the prompt buffers in half precision, as PREC fp16
    ref.model.image_encoder = _CastImages(ref.model.image_encoder, dtype)
    params = [p for n, p in ref.model.named_parameters() if "prompt_learner" in n]
    s = config.train
    ref.optim = torch.optim.SGD(params, lr=s.lr, momentum=s.momentum, weight_decay=s.weight_decay)
    _sync(device)
    t0 = time.perf_counter()
    steps = ref.run(epochs=1)
    _sync(device)
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "steps": len(steps),
        "dtype": str(dtype).replace("torch.", ""),
        "context_dtype": str(params[0].dtype).replace("torch.", ""),
        "data_seconds": sum(x["data"] for x in steps),
        "note": "image/text split not timed on CUDA (asynchronous); data = image loading and augmentation",
    }


def time_coop_epoch(backbone: Backbone, mode: Mode, work: Path, precision: str) -> dict[str, Any]:
    """One CoOp epoch (official few-shot recipe, batch 32, a fresh crop per image) both ways, at ``precision``."""
    root = make_folder(work / "timing-data", mode.timing_classes, mode.timing_shots, 0, seed=3)
    config = resolve_config(
        None,
        {
            "method": {"name": "coop"},
            "backbone": {"precision": precision, "device": mode.device},
            "data": {"dataset": "folder", "root": str(root), "shots": mode.timing_shots},
            "train": {
                "epochs": 1,
                "warmup_epochs": 0,
                "val_every": 0,
                "checkpoint_every": 0,
                "log_diagnostics": False,
                "cache_dir": str(work / "timing-cache"),
                **({"batch_size": 4} if mode.name == "cpu-reduced" else {}),
            },
        },
    )
    splits = load_dataset("folder", root)
    ours = backbone.with_precision(precision)
    torch.manual_seed(config.train.seed)
    method = build_method(config, ours, splits.classnames)
    trainer = Trainer(
        config, method, splits, work / "timing-run", cache=FeatureCache(work / "timing-cache"), progress=False
    )
    _sync(mode.device)
    t0 = time.perf_counter()
    state = trainer.fit()
    _sync(mode.device)
    ours_seconds = time.perf_counter() - t0
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    official = official_half_epoch(backbone, splits, config, dtype, mode.device)
    return {
        "classes": mode.timing_classes,
        "shots": mode.timing_shots,
        "images": len(splits.train),
        "batch_size": config.train.batch_size,
        "n_ctx": config.prompt.n_ctx,
        "precision": precision,
        "rlptune_epoch_seconds": ours_seconds,
        "rlptune_steps": state.records[-1]["steps"],
        "rlptune_note": "the real Trainer, fp16 autocast, cold cache: the epoch's fresh view is encoded inside it",
        "official_style_epoch_seconds": official["seconds"],
        "official_style": official,
        "ratio": official["seconds"] / ours_seconds if ours_seconds > 0 else None,
    }


# -- the check ----------------------------------------------------------------------------------------------------


def guarded(part, *args) -> dict[str, Any]:
    """``part(*args)``, or a failed entry naming the exception: on a lent device, one broken part must not cost the
    report of the others (the run is not cheap to repeat)."""
    try:
        return part(*args)
    except Exception as exc:  # noqa: BLE001 - reported in the JSON, with where it happened
        import traceback

        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}",
            "where": traceback.format_exc().strip().splitlines()[-3:],
        }


def _nccl_version() -> str | None:
    try:
        version = torch.cuda.nccl.version()
    except (AttributeError, RuntimeError):
        return None
    return ".".join(map(str, version)) if isinstance(version, (tuple, list)) else str(version)


def device_info(mode: Mode) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_native_bf16": precision_mod.cpu_native_bf16(),
        "cpu_capability": str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()),
    }
    if torch.cuda.is_available():
        info["cuda"] = {
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "capability": list(torch.cuda.get_device_capability(0)),
            "bf16_supported": torch.cuda.is_bf16_supported(),
            "cuda_version": torch.version.cuda,
            "nccl_version": _nccl_version(),
        }
    return info


def run_check(args) -> dict[str, Any]:
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="rlptune-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    mode = choose_mode(args, work)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "mode": mode.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        "device": device_info(mode),
        "settings": {k: v for k, v in dataclasses.asdict(mode).items() if k != "notes"},
        "notes": mode.notes,
        "auto_precision": {
            m: precision_mod.resolve_precision("auto", mode.device, m) for m in recipes.recipe_methods()
        },
    }
    torch.manual_seed(0)
    backbone = load_backbone(mode.backbone, device=mode.device, precision="fp32")
    report["backbone"] = {
        "spec": mode.backbone,
        "identity": backbone.identity,
        "parameters": sum(p.numel() for p in backbone.model.parameters()),
    }
    root = make_folder(work / "data", mode.classes, mode.shots, mode.test_per_class)
    images, _ = test_images(backbone, root)

    training: dict[str, dict[str, Any]] = {}
    for method in args.methods:
        for precision in mode.precisions:
            row = guarded(check_training, backbone, root, method, precision, mode, work, images)
            training.setdefault(method, {})[precision] = row
            print(
                f"[{method} {precision}] {'ok' if row['ok'] else 'FAILED'} "
                f"{row.get('seconds', 0):.1f}s {row.get('logits_vs_fp32', row.get('error', ''))}",
                file=sys.stderr,
            )
    report["training"] = training

    half = "fp16" if "fp16" in mode.precisions else mode.precisions[0]
    report["torchrun"] = (
        guarded(run_torchrun, mode, root, work, half) if not args.skip_torchrun else {"ok": True, "skipped": True}
    )
    print(f"[torchrun] {'ok' if report['torchrun']['ok'] else 'FAILED'}", file=sys.stderr)
    report["coop_epoch"] = guarded(time_coop_epoch, backbone, mode, work, half)
    print(
        f"[coop epoch] rlptune {report['coop_epoch'].get('rlptune_epoch_seconds', -1):.2f}s, official-style "
        f"{report['coop_epoch'].get('official_style_epoch_seconds', -1):.2f}s",
        file=sys.stderr,
    )

    rows = [row for per in training.values() for row in per.values()]
    fp16_rows = [row for per in training.values() for p, row in per.items() if p == "fp16"]
    report["checks"] = {
        "all_methods_trained": all(row.get("ok") for row in rows)
        and len(rows) == len(args.methods) * len(mode.precisions),
        "losses_finite": all(row.get("losses_finite", False) for row in rows),
        "grad_scaler_scales": all(row.get("scaler_scales", False) for row in fp16_rows),
        "logits_finite": all(row.get("logits_vs_fp32", {}).get("finite", False) for row in rows),
        "torchrun": bool(report["torchrun"]["ok"]),
        "coop_epoch_timed": report["coop_epoch"].get("rlptune_epoch_seconds", 0) > 0,
    }
    report["ok"] = all(report["checks"].values())
    report["seconds"] = time.perf_counter() - started
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", default=str(HERE / "gpu_check_results.json"), help="where the one JSON goes")
    p.add_argument("--reduced", action="store_true", help="the CPU mode even where CUDA is present")
    p.add_argument(
        "--steps", type=int, default=0, help="training steps per method and precision (default 300; reduced 16)"
    )
    p.add_argument(
        "--classes", type=int, default=0, help="classes of the generated training set (default 10; reduced 3)"
    )
    p.add_argument(
        "--timing-classes", type=int, default=0, help="classes of the timed CoOp epoch (default 100; reduced 3)"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--skip-torchrun", action="store_true")
    p.add_argument("--backbone", default=None, help="default random:ViT-B-16 (reduced: the tests' tiny architecture)")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder)")
    # the torchrun worker's arguments (internal)
    p.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    p.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--data-root", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.ddp_worker:
        return ddp_worker(args)
    report = run_check(args)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.json).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.json)  # one JSON, written whole
    print(
        f"gpu check {'passed' if report['ok'] else 'FAILED'} in {report['seconds']:.0f}s ({report['mode']}): {args.json}"
    )
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
