"""What the official code does, for the tests to check rlptune against: the official schedules as formulas, and the
official facts that have no settings field (augmentation, data loading, CLIP-LoRA's optimiser details, the CoOp
paper's linear-probe search). Each fact names the official file it was read from, at the commit
:data:`rlptune.recipes.REPOSITORIES` lists; docs/METHODS.md shows them. Nothing in the package reads these: the
recipes (:mod:`rlptune.recipes`) hold what a run is configured with, this module what the tests compare it to."""

from __future__ import annotations

import math
from typing import Any

from rlptune.recipes import DASSL_DEFAULTS, DASSL_SCHEDULER, DASSL_TRANSFORMS

_COOP = "KaiyangZhou/CoOp:"
_DASSL = "KaiyangZhou/Dassl.pytorch:"
_LORA = "MaxZanella/CLIP-LoRA:"

# things every recipe shares that have no RunConfig field

#: The image pipeline of every official repository (Dassl's, and CLIP-LoRA's own torchvision pipeline, identical).
AUGMENTATION: dict[str, tuple[Any, str]] = {
    "train: random resized crop, output size": (224, _COOP + "configs/trainers/CoOp/vit_b16.yaml (INPUT.SIZE)"),
    "train: random resized crop, area scale": ((0.08, 1.0), DASSL_DEFAULTS + " (INPUT.RRCROP_SCALE)"),
    "train: random resized crop, aspect ratio": (
        (3 / 4, 4 / 3),
        "torchvision RandomResizedCrop default (Dassl passes none)",
    ),
    "train: interpolation": ("bicubic", _COOP + "configs/trainers/CoOp/vit_b16.yaml (INPUT.INTERPOLATION)"),
    "train: horizontal flip probability": (0.5, DASSL_TRANSFORMS + " (RandomHorizontalFlip())"),
    "train: a new crop and flip per image per epoch": (True, DASSL_TRANSFORMS + " (transforms run in the data loader)"),
    "normalise: mean": ((0.48145466, 0.4578275, 0.40821073), _COOP + "configs/trainers/CoOp/vit_b16.yaml"),
    "normalise: std": ((0.26862954, 0.26130258, 0.27577711), _COOP + "configs/trainers/CoOp/vit_b16.yaml"),
    "eval: resize the shorter side to": (224, DASSL_TRANSFORMS + " (_build_transform_test: Resize(max(SIZE)))"),
    "eval: interpolation": ("bicubic", _COOP + "configs/trainers/CoOp/vit_b16.yaml (INPUT.INTERPOLATION)"),
    "eval: centre crop": (224, DASSL_TRANSFORMS + " (_build_transform_test: CenterCrop(SIZE))"),
}

#: How the official training loops batch the data and which model they evaluate (no RunConfig field; rlptune's
#: engine does the same: shuffled batches, the last incomplete batch dropped when the split has a full batch).
DATA_LOADER: dict[str, tuple[Any, str]] = {
    "Dassl train sampler": (
        "RandomSampler (a new order every epoch)",
        DASSL_DEFAULTS + " (DATALOADER.TRAIN_X.SAMPLER)",
    ),
    "Dassl drop_last": (
        "len(train) >= batch_size (the last incomplete batch is dropped)",
        _DASSL + "dassl/data/data_manager.py",
    ),
    "Dassl evaluated model": (
        "the last epoch's (TEST.FINAL_MODEL = 'last_step'; no validation-based selection)",
        DASSL_DEFAULTS,
    ),
    "CLIP-LoRA loader": (
        "shuffle=True, drop_last=False, restarted until 500*K iterations",
        _LORA + "datasets/utils.py",
    ),
}

#: How Dassl's learning-rate schedule runs (every Dassl-based recipe: CoOp, RLP, CoCoOp, KgCoOp, MaPLe, IVLP, deep
#: prompts, PromptSRC). See :func:`dassl_epoch_lr`.
DASSL_SCHEDULE: dict[str, tuple[Any, str]] = {
    "scheduler": ("CosineAnnealingLR(optimizer, T_max=MAX_EPOCH), eta_min = 0", DASSL_SCHEDULER),
    "warm-up wrapper": ("ConstantWarmupScheduler(successor=cosine, WARMUP_EPOCH, WARMUP_CONS_LR)", DASSL_SCHEDULER),
    "WARMUP_RECOUNT": (True, DASSL_DEFAULTS + " (so the cosine's own count starts after the warm-up)"),
    "stepped": ("once per epoch, after its last batch", _COOP + "trainers/coop.py (forward_backward: update_lr())"),
    "formula": (
        "epoch e < W: warmup_lr; epoch e >= W: base * (1 + cos(pi * (e - W) / T)) / 2 (T = MAX_EPOCH)",
        DASSL_SCHEDULER,
    ),
}

#: CLIP-LoRA's optimiser details that RunConfig does not expose (see :func:`clip_lora_step_lr`).
CLIP_LORA_DETAILS: dict[str, tuple[Any, str]] = {
    "AdamW betas": ((0.9, 0.999), _LORA + "lora.py"),
    "scheduler": (
        "CosineAnnealingLR(optimizer, T_max=500*K, eta_min=1e-6), stepped after every iteration",
        _LORA + "lora.py",
    ),
    "LoRA scale": ("alpha / sqrt(r) (rank-stabilised; alpha / r is commented out)", _LORA + "loralib/layers.py"),
    "LoRA init": ("A: kaiming_uniform(a=sqrt(5)), B: zeros", _LORA + "loralib/layers.py"),
    "dropout": ("on the adapter input, training only", _LORA + "loralib/layers.py"),
    "layers": ("all 12 blocks of both towers (position 'all', encoder 'both')", _LORA + "run_utils.py"),
    "logit scale": (100, _LORA + "main.py (logit_scale = 100)"),
    "precision": ("fp16 autocast with GradScaler", _LORA + "lora.py"),
}

#: The CoOp paper's linear probe (lpclip/), which rlptune's ``linear_probe`` follows: there is no per-shot
#: training schedule, only this search of scikit-learn's inverse L2 strength C on a few-shot validation set.
LINEAR_PROBE_SEARCH: dict[str, tuple[Any, str]] = {
    "solver": (
        "sklearn LogisticRegression(solver='lbfgs', penalty='l2', max_iter=1000)",
        _COOP + "lpclip/linear_probe.py",
    ),
    "features": (
        "unnormalised CLIP image features of the eval transform (resize + centre crop)",
        _COOP + "lpclip/feat_extractor.py",
    ),
    "C grid": ((1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6), _COOP + "lpclip/linear_probe.py"),
    "grid ties": (
        "the first maximum in the grid order, i.e. the largest C (weakest regularisation)",
        _COOP + "lpclip/linear_probe.py",
    ),
    "refinement": (
        "8 bisection steps in log10(C), starting from [C*/10, 10*C*]; ties keep the left (smaller C)",
        _COOP + "lpclip/linear_probe.py",
    ),
    "validation shots": ({1: 1, 2: 2, 4: 4, 8: 4, 16: 4}, _COOP + "lpclip/linear_probe.py"),
    "C vs rlptune's lambda": (
        "sklearn minimises C*sum(CE) + |W|^2/2, i.e. lambda = 1 / (C * N) for mean(CE) + lambda/2*|W|^2",
        _COOP + "lpclip/linear_probe.py",
    ),
}


# schedules, as formulas


def dassl_epoch_lr(
    epoch: int, base_lr: float, max_epoch: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5, min_lr: float = 0.0
) -> float:
    """The learning rate Dassl trains epoch ``epoch`` (0-based) at: constant warm-up, then a cosine over
    ``max_epoch`` whose count starts after the warm-up (``WARMUP_RECOUNT = True``), so the first post-warm-up
    epoch runs at the full base rate and the last at ``base·(1 + cos(π(T−1−W)/T))/2``."""
    if epoch < warmup_epochs:
        return warmup_lr
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * (epoch - warmup_epochs) / max_epoch)) / 2


def clip_lora_step_lr(
    iteration: int, base_lr: float = 2e-4, total_iterations: int = 8000, min_lr: float = 1e-6
) -> float:
    """The learning rate of CLIP-LoRA's iteration ``iteration`` (0-based): a per-iteration cosine to ``min_lr``."""
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * iteration / total_iterations)) / 2
