"""The official training recipe of every method, per protocol and shot count, as data with a source per value.

Each value below was read from the method's own repository (configs, scripts, trainer code) at the commit listed in
:data:`REPOSITORIES`; its source is ``"owner/repo:path"``. Values that are rlptune's own (RLP has no public code;
the linear probe's fit is closed-form) say so with the source prefix ``"rlptune:"``. ``docs/METHODS.md`` shows every
table with its sources and the places where rlptune differs from the official code.

A recipe is an ordered list of :class:`Rule` objects; a rule applies when the protocol, the shot count and the
dataset match, and later rules override earlier ones (so "CoOp at 1 shot: 50 epochs" and "CoOp on ImageNet: 50
epochs" are two rules, the second winning). :func:`preset` returns the nested ``{section: {field: value}}`` mapping
that :func:`rlptune.config.apply_mapping` merges and :func:`sources` the source of each of its values. A method
registers its own recipe with :func:`register_recipe`, or trains with its nearest parent class's
(:func:`recipe_owner`).

This module holds recipes only: the CoOp dataset catalogue is :mod:`rlptune.data.coop`'s, the methods' templates
are in :mod:`rlptune.method_templates`, the listing behind ``rlptune methods`` is :mod:`rlptune.recipe_listing`, and
the official schedules as formulas and the official facts without a settings field are the tests'
(``tests/oracles.py``). Pure data and pure Python: importing this module imports neither torch nor the methods.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from . import registry
from .errors import RlptuneError
from .method_templates import KGCOOP_TEMPLATES, KGCOOP_TEMPLATES_SOURCE, PROMPTSRC_TEMPLATES_SOURCE

# --------------------------------------------------------------------------------------------------------------
# where the values come from

#: The official repositories read, with the commit each value was read at.
REPOSITORIES: dict[str, str] = {
    "KaiyangZhou/CoOp": "ff61507c790454bce7c5052c3ac39e60772f1f89",
    "KaiyangZhou/Dassl.pytorch": "c61a1b570ac6333bd50fb5ae06aea59002fb20bb",
    "htyao89/KgCoOp": "c43ccc32c8739f64b165cfa205fcc6c0f5bb5b17",
    "muzairkhattak/multimodal-prompt-learning": "69bce21ae8eda80ad6187534b2dce09cf6c59e17",
    "muzairkhattak/PromptSRC": "bb95c77b634d63488f2cad81ff4a72d53bdd06d5",
    "MaxZanella/CLIP-LoRA": "358f0d7361f59e66c0b2d0b672a3dafb143a759b",
}

#: The recipe keys: the protocols the official scripts are written for. A registered protocol names the one it reads
#: (:attr:`rlptune.protocols.Protocol.recipe_key`); the built-in four read their own.
PROTOCOLS: tuple[str, ...] = ("few-shot", "base2new", "cross-dataset", "domain-gen")
#: The shot counts the official scripts run; other counts use the bracket they fall in (see :func:`shot_bracket`).
OFFICIAL_SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)

# short names for the source files used many times
_COOP = "KaiyangZhou/CoOp:"
_DASSL = "KaiyangZhou/Dassl.pytorch:"
_KG = "htyao89/KgCoOp:"
_MPL = "muzairkhattak/multimodal-prompt-learning:"
_SRC = "muzairkhattak/PromptSRC:"
_LORA = "MaxZanella/CLIP-LoRA:"

DASSL_DEFAULTS = _DASSL + "dassl/config/defaults.py"
DASSL_SCHEDULER = _DASSL + "dassl/optim/lr_scheduler.py"
DASSL_TRANSFORMS = _DASSL + "dassl/data/transforms/transforms.py"
RLP_SOURCE = "rlptune:docs/RLP.md (RLP has no public code; the parameterisation and the measured init)"


@dataclass(frozen=True)
class ShotsTimes:
    """A value proportional to the shot count K (CLIP-LoRA trains ``500 · K`` iterations)."""

    factor: int

    def __call__(self, shots: int) -> int:
        return self.factor * shots

    def __str__(self) -> str:
        return f"{self.factor}·K"


@dataclass(frozen=True)
class Setting:
    """One value of a recipe: a dotted key (``train.lr``, ``method.options.lambda_kg``), the value, its source."""

    key: str
    value: Any
    source: str
    note: str = ""


@dataclass(frozen=True)
class Rule:
    """Settings that apply when the protocol, shot bracket and dataset match (an empty tuple matches all)."""

    settings: tuple[Setting, ...]
    protocols: tuple[str, ...] = ()
    shots: tuple[int, ...] = ()
    datasets: tuple[str, ...] = ()

    def applies(self, protocol: str, bracket: int, dataset: str | None) -> bool:
        return (
            (not self.protocols or protocol in self.protocols)
            and (not self.shots or bracket in self.shots)
            and (not self.datasets or dataset in self.datasets)
        )


@dataclass(frozen=True)
class Recipe:
    method: str
    title: str
    rules: tuple[Rule, ...]
    notes: tuple[str, ...] = ()


def _s(key: str, value: Any, source: str, note: str = "") -> Setting:
    return Setting(key, value, source, note)


def _rule(
    *settings: Setting, protocols: tuple[str, ...] = (), shots: tuple[int, ...] = (), datasets: tuple[str, ...] = ()
) -> Rule:
    return Rule(tuple(settings), protocols, shots, datasets)


# --------------------------------------------------------------------------------------------------------------
# building blocks


_DASSL_CROP = (DASSL_DEFAULTS, "INPUT.RRCROP_SCALE = (0.08, 1.0); config TRANSFORMS random_resized_crop")


def _dassl_train(
    config: str,
    *,
    lr: float,
    batch: int,
    epochs: int | None,
    defaults: str = DASSL_DEFAULTS,
    scheduler: str = DASSL_SCHEDULER,
    stepper: str = _COOP + "trainers/coop.py",
    crop: tuple[str, str] = _DASSL_CROP,
) -> list[Setting]:
    """The optimiser, schedule and augmentation every Dassl config fixes (SGD, cosine, 1 constant warm-up epoch)."""
    settings = [
        _s("train.optimizer", "sgd", config),
        _s("train.lr", lr, config),
        _s("train.batch_size", batch, config),
        _s("train.momentum", 0.9, defaults, "OPTIM.MOMENTUM (not set in the config: Dassl's default)"),
        _s("train.weight_decay", 5e-4, defaults, "OPTIM.WEIGHT_DECAY (not set in the config: Dassl's default)"),
        _s("train.scheduler", "cosine", config),
        _s("train.warmup_epochs", 1, config),
        _s("train.warmup_lr", 1e-5, config),
        _s("train.min_lr", 0.0, scheduler, "CosineAnnealingLR without eta_min"),
        _s("train.schedule_unit", "epoch", stepper, "the scheduler steps after an epoch's last batch"),
        _s("train.iterations", 0, config, "Dassl trains by epochs (OPTIM.MAX_EPOCH)"),
        _s("train.crop_scale", 0.08, *crop),
        _s("train.flip", True, config, "TRANSFORMS random_flip"),
    ]
    if epochs is not None:
        settings.append(_s("train.epochs", epochs, config))
    return settings


def _coop_rules(method: str) -> list[Rule]:
    """CoOp's recipe per protocol and shots (also RLP's, which has no recipe of its own).

    COOP.md: 1 shot runs ``*_ep50``, 2 and 4 shots ``*_ep100``, 8 and 16 shots the 200-epoch config, ImageNet
    ``*_ep50`` at every shot count. The base-to-new and transfer protocols are CoCoOp's scripts with CoOp commented
    in: the same configs with ``_ctxv1`` ("a photo of a", so n = 4), ``vit_b16_ep50_ctxv1`` for ImageNet.
    """
    cfg = _COOP + "configs/trainers/CoOp/"
    rules = [
        _rule(
            _s("method.name", method, _COOP + "trainers/coop.py" if method == "coop" else RLP_SOURCE),
            _s(
                "method.class_token_position",
                "end",
                _COOP + "COOP.md",
                "the main results use 'end' (scripts/coop/main.sh CTP)",
            ),
            _s(
                "method.class_specific",
                False,
                _COOP + "COOP.md",
                "scripts/coop/main.sh CSC=False for the unified context",
            ),
            _s("prompt.kind", "full", _COOP + "trainers/coop.py"),
            _s("prompt.init_std", 0.02, _COOP + "trainers/coop.py", "nn.init.normal_(ctx_vectors, std=0.02)"),
            _s("prompt.n_ctx", 16, _COOP + "COOP.md", "M=16 (scripts/coop/main.sh NCTX)"),
        ),
    ]
    by_shots = (((1,), "vit_b16_ep50", 50), ((2, 4), "vit_b16_ep100", 100), ((8, 16), "vit_b16", 200))
    for protocols, suffix in ((("few-shot",), ""), (("base2new", *_TRANSFER), "_ctxv1")):
        extra: tuple[Setting, ...] = ()
        for shots, name, epochs in by_shots:
            config = f"{cfg}{name}{suffix}.yaml"
            if suffix:
                extra = (
                    _s(
                        "prompt.ctx_init",
                        "a photo of a",
                        config,
                        "CTX_INIT (scripts/cocoop/base2new_train.sh: CoOp uses vit_b16_ctxv1)",
                    ),
                    _s("prompt.n_ctx", 4, _COOP + "trainers/coop.py", "n_ctx = the number of words of CTX_INIT"),
                )
            else:
                extra = (_s("prompt.ctx_init", None, config, "no CTX_INIT: random init"),)
            rules.append(
                _rule(
                    *_dassl_train(config, lr=0.002, batch=32, epochs=epochs), *extra, protocols=protocols, shots=shots
                )
            )
        config = f"{cfg}vit_b16_ep50{suffix}.yaml"
        rules.append(
            _rule(
                *_dassl_train(config, lr=0.002, batch=32, epochs=None),
                _s("train.epochs", 50, config, "ImageNet uses *_ep50 at every shot count (COOP.md; CoCoOp's scripts)"),
                _s(
                    "prompt.ctx_init",
                    "a photo of a" if suffix else None,
                    config,
                    "CTX_INIT" if suffix else "no CTX_INIT: random init",
                ),
                protocols=protocols,
                datasets=("ImageNet",),
            )
        )
    return rules


def _mpl_rules(method: str, config: str, *, lr: float, epochs: int, batch: int = 4, trainer: str) -> list[Setting]:
    """The Dassl part of a multimodal-prompt-learning / PromptSRC config plus the method's name and token position."""
    return [
        _s("method.name", method, trainer),
        _s("method.class_token_position", "end", trainer, "prefix + context + suffix (class name, '.')"),
        _s("method.class_specific", False, trainer),
        _s("prompt.kind", "full", trainer),
        _s("prompt.init_std", 0.02, trainer, "random text context (unused when CTX_INIT is set)"),
        *_dassl_train(config, lr=lr, batch=batch, epochs=epochs, stepper=trainer),
    ]


# --------------------------------------------------------------------------------------------------------------
# the recipes

_KG_CFG = _KG + "KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"
_KG_DEFAULTS = _KG + "Dassl.ProGrad.pytorch/dassl/config/defaults.py"
_KG_SCHED = _KG + "Dassl.ProGrad.pytorch/dassl/optim/lr_scheduler.py"
_COCOOP_CFG = _COOP + "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"
_MAPLE_CFG = _MPL + "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"
_MAPLE_XD_CFG = _MPL + "configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"
_IVLP_CFG = _MPL + "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml"
_LP_CFG = _MPL + "configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml"
_VPT_CFG = _MPL + "configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml"
_MPL_MODEL = _MPL + "clip/model.py"
_SRC_B2N = _SRC + "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"
_SRC_FS = _SRC + "configs/trainers/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"
_SRC_XD = _SRC + "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"
_SRC_TRAINER = _SRC + "trainers/promptsrc.py"
_TRANSFER = ("cross-dataset", "domain-gen")

#: PromptSRC's few-shot config names two GPA settings by dataset group (the second is commented in the YAML).
PROMPTSRC_FEW_SHOT_GPA_GROUP_A = ("ImageNet", "Caltech101", "OxfordPets", "Food101", "UCF101", "SUN397")
PROMPTSRC_FEW_SHOT_GPA_GROUP_B = ("StanfordCars", "OxfordFlowers", "FGVCAircraft", "DescribableTextures", "EuroSAT")

_PURE_FP16 = (
    "pure fp16: CLIP's weights as clip.build_model leaves them (convert_weights: fp16), the context "
    "vectors created in that dtype and stepped in fp16 by SGD, no loss scaling"
)
_FP32_DEEP = "; the deeper and vision prompts are fp32 Parameters cast to fp16 in the forward"
#: The precision each method's official code runs in on a GPU: (precision, source, how). ``backbone.precision: auto``
#: resolves to it on CUDA, run as autocast with fp32 trainable tensors and a gradient scaler
#: (:mod:`rlptune.backbones.precision`; docs/METHODS.md compares the two).
OFFICIAL_PRECISION: dict[str, tuple[str, str, str]] = {
    "zeroshot": (
        "fp16",
        _COOP + "trainers/zsclip.py",
        "CLIP's fp16 weights (load_clip_to_cpu + clip.build_model; ZeroshotCLIP never calls float())",
    ),
    "linear_probe": (
        "fp16",
        _COOP + "lpclip/feat_extractor.py",
        "features from clip.load(..., 'cuda'): fp16 weights on CUDA; the logistic regression is sklearn's float64",
    ),
    "coop": ("fp16", _COOP + "train.py (TRAINER.COOP.PREC = 'fp16'; the CoOp configs do not set it)", _PURE_FP16),
    "rlp": ("fp16", RLP_SOURCE + "; CoOp's PREC, as for its other settings", _PURE_FP16),
    "cocoop": ("fp16", _COCOOP_CFG + " (PREC: 'fp16')", _PURE_FP16 + "; the meta-net .half()"),
    "kgcoop": ("fp16", _KG + "KgCoOp/train.py (TRAINER.COOP.PREC = 'fp16'; its config does not set it)", _PURE_FP16),
    "deep_text": (
        "fp16",
        _LP_CFG + " (PREC: 'fp16')",
        _PURE_FP16 + "; the deeper prompts are fp32 Parameters cast to fp16 in the forward",
    ),
    "deep_vision": (
        "fp16",
        _VPT_CFG + " (PREC: 'fp16')",
        "CLIP's weights as clip.build_model leaves them (convert_weights: fp16), no text context; the "
        "vision prompts are fp32 Parameters cast to fp16 in the forward, SGD without loss scaling",
    ),
    "ivlp": ("fp16", _IVLP_CFG + " (PREC: 'fp16')", _PURE_FP16 + _FP32_DEEP),
    "maple": (
        "fp16",
        _MAPLE_CFG + " (PREC: 'fp16')",
        _PURE_FP16 + "; the first coupling layer .half(), the deeper prompts and coupling layers fp32",
    ),
    "promptsrc": (
        "fp16",
        _SRC_FS + " (PREC: 'fp16'; every PromptSRC config)",
        _PURE_FP16 + _FP32_DEEP + "; the frozen zero-shot CLIP (the regulariser) fp32",
    ),
    "clip_lora": (
        "fp16",
        _LORA + "lora.py",
        "fp16 autocast with GradScaler; fp32 LoRA matrices and the attention projections it re-creates "
        "(nn.Linear copies of the fp16 weights), the rest of CLIP in fp16 (clip.load on CUDA)",
    ),
}

RECIPES: dict[str, Recipe] = {}


def _add(recipe: Recipe) -> None:
    RECIPES[recipe.method] = recipe


_add(
    Recipe(
        "zeroshot",
        "Zero-shot CLIP (CoOp's ZeroshotCLIP trainer)",
        (
            _rule(
                _s("method.name", "zeroshot", _COOP + "trainers/zsclip.py"),
                _s(
                    "method.templates",
                    ["a photo of a {}."],
                    _COOP + "trainers/zsclip.py",
                    "CUSTOM_TEMPLATES for datasets without their own",
                ),
                _s("method.use_dataset_template", True, _COOP + "trainers/zsclip.py", "CUSTOM_TEMPLATES[dataset]"),
                _s("train.epochs", 0, _COOP + "scripts/coop/zeroshot.sh", "--eval-only"),
            ),
        ),
    )
)

_add(
    Recipe(
        "linear_probe",
        "Linear probe CLIP (CoOp's lpclip/)",
        (
            _rule(
                _s("method.name", "linear_probe", _COOP + "lpclip/linear_probe.py"),
                _s(
                    "method.options.max_iter",
                    1000,
                    _COOP + "lpclip/linear_probe.py",
                    "LogisticRegression(max_iter=1000)",
                ),
                _s(
                    "train.epochs",
                    1,
                    "rlptune:src/rlptune/methods/linear_probe.py",
                    "one closed-form fit (0 = the zero-shot weights)",
                ),
                _s(
                    "train.warmup_epochs",
                    0,
                    "rlptune:src/rlptune/methods/linear_probe.py",
                    "no gradient schedule to warm up",
                ),
            ),
        ),
        notes=(
            "The official C search and its tie rules are in LINEAR_PROBE_SEARCH; rlptune runs that search (docs/METHODS.md).",
        ),
    )
)

_add(Recipe("coop", "CoOp (Zhou et al., IJCV 2022)", tuple(_coop_rules("coop"))))

_add(
    Recipe(
        "rlp",
        "RLP on CoOp's placement (no public code: CoOp's recipe for the same protocol and shots)",
        (
            *_coop_rules("rlp"),
            _rule(
                _s("prompt.kind", "lowrank", RLP_SOURCE),
                _s("prompt.n_ctx", 4, RLP_SOURCE, "the 4 tokens of 'a photo of a'"),
                _s("prompt.ctx_init", "a photo of a", RLP_SOURCE, "P_fr = its word embeddings"),
                _s("prompt.rank", 1, RLP_SOURCE),
                _s("prompt.dropout", 0.1, RLP_SOURCE),
                _s("prompt.a_std", 1.0, RLP_SOURCE, "measured in docs/RLP.md: small inits do not move under SGD"),
                _s("prompt.b_std", 0.0, RLP_SOURCE, "starts exactly at the zero-shot prompt"),
                _s("prompt.alpha", None, RLP_SOURCE, "scale 1"),
            ),
        ),
        notes=(
            "Every optimiser, schedule and epoch value is CoOp's (sourced to CoOp's files); only the prompt differs.",
        ),
    )
)

_add(
    Recipe(
        "cocoop",
        "CoCoOp (Zhou et al., CVPR 2022)",
        (
            _rule(
                _s("method.name", "cocoop", _COOP + "trainers/cocoop.py"),
                _s("method.class_token_position", "end", _COOP + "trainers/cocoop.py", "prefix + context + class name"),
                _s("method.class_specific", False, _COOP + "trainers/cocoop.py"),
                _s(
                    "method.options.hidden_ratio",
                    16,
                    _COOP + "trainers/cocoop.py",
                    "meta-net Linear(vis_dim, vis_dim // 16)",
                ),
                _s("prompt.kind", "full", _COOP + "trainers/cocoop.py"),
                _s("prompt.n_ctx", 4, _COCOOP_CFG),
                _s("prompt.ctx_init", "a photo of a", _COCOOP_CFG),
                _s("prompt.init_std", 0.02, _COOP + "trainers/cocoop.py"),
                *_dassl_train(_COCOOP_CFG, lr=0.002, batch=1, epochs=10, stepper=_COOP + "trainers/cocoop.py"),
            ),
        ),
        notes=(
            "CoCoOp ships base2new and cross-dataset scripts (16 shots); there is no few-shot script, so the same "
            "config is used at every shot count.",
        ),
    )
)

_add(
    Recipe(
        "kgcoop",
        "KgCoOp (Yao et al., CVPR 2023)",
        (
            _rule(
                _s("method.name", "kgcoop", _KG + "KgCoOp/trainers/kgcoop.py"),
                _s("method.class_token_position", "end", _KG + "KgCoOp/scripts/base2new_train.sh", "CTP=end"),
                _s("method.class_specific", False, _KG + "KgCoOp/scripts/base2new_train.sh", "CSC=False"),
                _s("method.options.lambda_kg", 8.0, _KG + "KgCoOp/scripts/run.sh", "TRAINER.COOP.W 8.0"),
                _s("prompt.kind", "full", _KG + "KgCoOp/trainers/kgcoop.py"),
                _s("prompt.n_ctx", 4, _KG + "KgCoOp/scripts/base2new_train.sh", "NCTX=4"),
                _s(
                    "prompt.ctx_init",
                    "a photo of a",
                    _KG + "KgCoOp/trainers/kgcoop.py",
                    "CTX_INIT: True -> 'a photo of a' (hard-coded)",
                ),
                _s("prompt.init_std", 0.02, _KG + "KgCoOp/trainers/kgcoop.py"),
                *_dassl_train(
                    _KG_CFG,
                    lr=0.002,
                    batch=128,
                    epochs=100,
                    defaults=_KG_DEFAULTS,
                    scheduler=_KG_SCHED,
                    stepper=_KG + "KgCoOp/trainers/kgcoop.py",
                    crop=(
                        _KG + "Dassl.ProGrad.pytorch/dassl/data/transforms/transforms.py",
                        "RandomResizedCrop without a scale: torchvision's default (0.08, 1.0)",
                    ),
                ),
            ),
            *(
                _rule(
                    _s("method.options.template", template, KGCOOP_TEMPLATES_SOURCE, "CUSTOM_TEMPLATES[dataset]"),
                    datasets=(name,),
                )
                for name, template in KGCOOP_TEMPLATES.items()
            ),
        ),
        notes=(
            "The repository's few-shot run (scripts/xd_train.sh, despite its name) uses the same config at 4 shots "
            "on all classes; it ships no cross-dataset or domain-generalisation script.",
        ),
    )
)

_add(
    Recipe(
        "deep_text",
        "Deep language prompting (MaPLe paper's baseline; IVLP trainer, language only)",
        (
            _rule(
                *_mpl_rules("deep_text", _LP_CFG, lr=0.0025, epochs=5, trainer=_MPL + "trainers/independentVL.py"),
                _s("prompt.n_ctx", 4, _LP_CFG, "N_CTX_TEXT"),
                _s("prompt.ctx_init", "a photo of a", _LP_CFG, "CTX_INIT"),
                _s("method.options.text_depth", 12, _LP_CFG, "PROMPT_DEPTH_TEXT"),
                _s("method.options.vision_depth", 0, _LP_CFG, "PROMPT_DEPTH_VISION"),
                _s("method.options.vision_ctx", 0, _LP_CFG, "N_CTX_VISION"),
                _s("method.options.deep_init_std", 0.02, _MPL_MODEL, "nn.init.normal_(ctx_vectors, std=0.02)"),
            ),
        ),
        notes=(
            "Shipped scripts: base2new and cross-dataset at 16 shots (scripts/language-prompting/); no few-shot "
            "script, so the same config is used at every shot count.",
        ),
    )
)

_add(
    Recipe(
        "deep_vision",
        "Deep vision prompting (VPT-deep; MaPLe paper's baseline, VPT trainer)",
        (
            _rule(
                *_mpl_rules("deep_vision", _VPT_CFG, lr=0.0025, epochs=5, trainer=_MPL + "trainers/vpt.py"),
                _s("method.options.vision_ctx", 8, _VPT_CFG, "N_CTX_VISION (the file name says 4)"),
                _s("method.options.vision_depth", 12, _VPT_CFG, "PROMPT_DEPTH_VISION"),
                _s("method.options.text_depth", 0, _MPL + "trainers/vpt.py", "fixed hand-crafted prompt"),
                _s("method.options.deep_init_std", 0.02, _MPL_MODEL, "nn.init.normal_(ctx_vectors, std=0.02)"),
                _s(
                    "method.options.template",
                    "a photo of a {}.",
                    _MPL + "trainers/vpt.py",
                    "prompt_prefix 'a photo of a' + name + '.' for every dataset",
                ),
            ),
        ),
        notes=("Shipped scripts: base2new and cross-dataset at 16 shots (scripts/vpt/); no few-shot script.",),
    )
)

_add(
    Recipe(
        "ivlp",
        "Independent vision-language prompting (MaPLe paper's baseline)",
        (
            _rule(
                *_mpl_rules("ivlp", _IVLP_CFG, lr=0.0035, epochs=5, trainer=_MPL + "trainers/independentVL.py"),
                _s(
                    "prompt.n_ctx",
                    2,
                    _IVLP_CFG,
                    "N_CTX_TEXT: the first 2 tokens of CTX_INIT are learned, 'of a' stays text",
                ),
                _s("prompt.ctx_init", "a photo of a", _IVLP_CFG, "CTX_INIT"),
                _s("method.options.text_depth", 12, _IVLP_CFG, "PROMPT_DEPTH_TEXT (train.py's default is 9)"),
                _s("method.options.vision_depth", 12, _IVLP_CFG, "PROMPT_DEPTH_VISION (train.py's default is 9)"),
                _s("method.options.vision_ctx", 2, _IVLP_CFG, "N_CTX_VISION"),
                _s("method.options.deep_init_std", 0.02, _MPL_MODEL, "nn.init.normal_(ctx_vectors, std=0.02)"),
            ),
        ),
        notes=(
            "PromptSRC's repository ships a different IVLP config (4+4 tokens, depth 9, lr 0.0025, 20 epochs: "
            "configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml), its paper's IVLP baseline; rlptune uses MaPLe's.",
            "No few-shot script; the base2new config is used at every shot count.",
        ),
    )
)


def _maple(config: str, *, lr: float, epochs: int, depth: int, note: str = "") -> list[Setting]:
    return [
        *_mpl_rules("maple", config, lr=lr, epochs=epochs, trainer=_MPL + "trainers/maple.py"),
        _s("prompt.n_ctx", 2, config, "N_CTX: the first 2 tokens of CTX_INIT are learned, 'of a' stays text"),
        _s("prompt.ctx_init", "a photo of a", config, "CTX_INIT"),
        _s("method.options.depth", depth, config, "PROMPT_DEPTH" + note),
        _s(
            "method.options.deep_init_std",
            0.02,
            _MPL + "trainers/maple.py",
            "compound prompts nn.init.normal_(std=0.02)",
        ),
    ]


_add(
    Recipe(
        "maple",
        "MaPLe (Khattak et al., CVPR 2023)",
        (
            _rule(*_maple(_MAPLE_CFG, lr=0.0035, epochs=5, depth=9)),
            _rule(
                *_maple(
                    _MAPLE_XD_CFG,
                    lr=0.0026,
                    epochs=2,
                    depth=3,
                    note=" (scripts/maple/xd_train_maple.sh; xd_test_maple.sh loads epoch 2)",
                ),
                protocols=_TRANSFER,
            ),
        ),
        notes=("No few-shot script; the base2new config is used at every shot count.",),
    )
)


def _promptsrc(config: str, *, epochs: int, depth: int, gpa_mean: float, gpa_std: float) -> list[Setting]:
    return [
        *_mpl_rules("promptsrc", config, lr=0.0025, epochs=epochs, trainer=_SRC_TRAINER),
        _s("prompt.n_ctx", 4, config, "N_CTX_TEXT"),
        _s("prompt.ctx_init", "a photo of a", config, "CTX_INIT"),
        _s("method.options.text_ctx", 4, config, "N_CTX_TEXT"),
        _s("method.options.vision_ctx", 4, config, "N_CTX_VISION"),
        _s("method.options.text_depth", depth, config, "PROMPT_DEPTH_TEXT"),
        _s("method.options.vision_depth", depth, config, "PROMPT_DEPTH_VISION"),
        _s("method.options.text_loss_weight", 25.0, config, "TEXT_LOSS_WEIGHT (L1, mean over elements)"),
        _s("method.options.image_loss_weight", 10.0, config, "IMAGE_LOSS_WEIGHT (L1, mean over elements)"),
        _s(
            "method.options.kl_loss_weight",
            1.0,
            _SRC_TRAINER,
            "hard-coded: KL(zero-shot || prompted logits), reduction sum / logits.numel(), temperature 1",
        ),
        _s("method.options.gpa_mean", gpa_mean, config, "GPA_MEAN (epochs counted from 1)"),
        _s("method.options.gpa_std", gpa_std, config, "GPA_STD"),
        _s(
            "method.options.n_templates", 60, PROMPTSRC_TEMPLATES_SOURCE, "IMAGENET_TEMPLATES (see PROMPTSRC_TEMPLATES)"
        ),
        _s("method.options.deep_init_std", 0.02, _SRC + "clip/model.py", "nn.init.normal_(ctx_vectors, std=0.02)"),
    ]


_add(
    Recipe(
        "promptsrc",
        "PromptSRC (Khattak et al., ICCV 2023)",
        (
            _rule(*_promptsrc(_SRC_B2N, epochs=20, depth=9, gpa_mean=15.0, gpa_std=1.0)),
            # ImageNet, Caltech101, OxfordPets, Food101, UCF101, SUN397 (the config's active values)
            _rule(*_promptsrc(_SRC_FS, epochs=50, depth=9, gpa_mean=30.0, gpa_std=30.0), protocols=("few-shot",)),
            _rule(
                _s(
                    "method.options.gpa_mean",
                    45.0,
                    _SRC_FS,
                    "commented alternative for StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT",
                ),
                _s(
                    "method.options.gpa_std",
                    5.0,
                    _SRC_FS,
                    "commented alternative for StanfordCars, Flowers102, FGVCAircraft, DTD, EuroSAT",
                ),
                protocols=("few-shot",),
                datasets=PROMPTSRC_FEW_SHOT_GPA_GROUP_B,
            ),
            _rule(*_promptsrc(_SRC_XD, epochs=20, depth=3, gpa_mean=6.0, gpa_std=10.0), protocols=_TRANSFER),
        ),
        notes=(
            "scripts/promptsrc/xd_train.sh names CFG=vit_b16_c2_ep5_batch4_4+4ctx_cross_datasets, a file that does "
            "not exist; the shipped file is ..._ep20_..._cross_datasets.yaml (MAX_EPOCH 20) and xd_test.sh loads epoch "
            "20, so 20 epochs are used.",
        ),
    )
)

_add(
    Recipe(
        "clip_lora",
        "CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024)",
        (
            _rule(
                _s("method.name", "clip_lora", _LORA + "lora.py"),
                _s("method.options.r", 2, _LORA + "run_utils.py", "--r"),
                _s("method.options.alpha", 1.0, _LORA + "run_utils.py", "--alpha"),
                _s(
                    "method.options.rslora",
                    True,
                    _LORA + "loralib/layers.py",
                    "scaling = lora_alpha / math.sqrt(r) (lora_alpha / r is commented out)",
                ),
                _s("method.options.dropout", 0.25, _LORA + "run_utils.py", "--dropout_rate"),
                _s("method.options.targets", ["q", "k", "v"], _LORA + "run_utils.py", "--params"),
                _s("method.options.towers", "both", _LORA + "run_utils.py", "--encoder"),
                _s(
                    "method.options.template",
                    "a photo of a {}.",
                    _LORA + "datasets/dtd.py",
                    "every datasets/*.py reassigns template = ['a photo of a {}.'] after its dataset template",
                ),
                _s("train.optimizer", "adamw", _LORA + "lora.py", "betas (0.9, 0.999)"),
                _s("train.lr", 2e-4, _LORA + "run_utils.py", "--lr"),
                _s("train.weight_decay", 1e-2, _LORA + "lora.py"),
                _s("train.batch_size", 32, _LORA + "run_utils.py", "--batch_size"),
                _s("train.iterations", ShotsTimes(500), _LORA + "lora.py", "total_iters = n_iters (500) * shots"),
                _s("train.scheduler", "cosine", _LORA + "lora.py", "CosineAnnealingLR(T_max=total_iters)"),
                _s("train.schedule_unit", "step", _LORA + "lora.py", "scheduler.step() after every iteration"),
                _s("train.min_lr", 1e-6, _LORA + "lora.py", "eta_min=1e-6"),
                _s("train.warmup_epochs", 0, _LORA + "lora.py", "no warm-up"),
                _s("train.crop_scale", 0.08, _LORA + "main.py", "RandomResizedCrop(224, scale=(0.08, 1), bicubic)"),
                _s("train.flip", True, _LORA + "main.py", "RandomHorizontalFlip(p=0.5)"),
            ),
        ),
        notes=(
            "The repository runs the few-shot protocol only ('fixed hyperparameters for every task and every number "
            "of shots', README.md); the same recipe is used for the other protocols.",
        ),
    )
)


# --------------------------------------------------------------------------------------------------------------
# the interface


def shot_bracket(shots: int) -> int:
    """The official shot count whose recipe applies: 1, 2, 4, 8, 16 as themselves; any other K the bracket it falls
    in (3 → 4, 5–8 → 8, > 8 → 16); ``0`` (all images) → 16."""
    if shots <= 0:
        return 16
    for official in OFFICIAL_SHOTS:
        if shots <= official:
            return official
    return 16


def _check(method: str, protocol: str) -> Recipe:
    if method not in RECIPES:
        raise RlptuneError(f"recipes: no official recipe for method {method!r}; known: {', '.join(RECIPES)}")
    recipe_key(protocol)
    return RECIPES[method]


def register_recipe(method: str, recipe: Recipe) -> None:
    """Give ``method`` (a registered method name) its own recipe; it wins over any recipe its parent classes have.

    A method without a recipe of its own trains with the recipe of the nearest parent class that has one
    (:func:`recipe_owner`), so a CoOp subclass registered from outside the package trains CoOp's 200 epochs at 16
    shots, not the bare defaults."""
    if not isinstance(recipe, Recipe):
        raise RlptuneError(
            f"register_recipe({method!r}): expected a rlptune.recipes.Recipe, got {type(recipe).__name__}"
        )
    if not isinstance(method, str) or not method.strip():
        raise RlptuneError(f"register_recipe: method name {method!r}: expected a non-empty name")
    RECIPES[method] = recipe


def recipe_owner(method: str) -> str | None:
    """The name whose recipe ``method`` trains with: its own, else that of the nearest class in its method class's
    MRO that is registered under a name with a recipe; None when there is none (or the method is not known)."""
    if method in RECIPES:
        return method
    try:
        cls = registry.method_entry(method).method_class
    except RlptuneError:
        return None  # an unknown method is reported, with a suggestion, when the settings are validated
    for klass in getattr(cls, "__mro__", ())[1:]:
        name = vars(klass).get("registered_name")  # the class's own registration, not one it inherits
        if isinstance(name, str) and name in RECIPES and registry.method_entry(name).method_class is klass:
            return name
    return None


def coop_name(dataset: str | None) -> str | None:
    """The CoOp name of ``dataset`` (:func:`rlptune.data.coop.coop_name`), which per-dataset rules are keyed by.

    The catalogue is read on first use, not imported at the top: importing the ``data`` package imports torch, and
    this module (read by the settings, so by ``rlptune --help``) must not."""
    if not dataset:
        return None
    return importlib.import_module("rlptune.data.coop").coop_name(dataset)


def recipe_key(protocol: str) -> str:
    """The recipe key (one of :data:`PROTOCOLS`) the registered ``protocol`` reads; an unknown protocol is one line."""
    key = registry.get_protocol(protocol, what="recipes: protocol").recipe_key
    if key not in PROTOCOLS:
        raise RlptuneError(f"protocol {protocol!r} reads recipe key {key!r}; expected one of {', '.join(PROTOCOLS)}")
    return key


def _resolved(method: str, protocol: str, shots: int, dataset: str | None) -> dict[str, Setting]:
    owner = recipe_owner(method)
    recipe = _check(owner if owner is not None else method, protocol)
    protocol = recipe_key(protocol)
    bracket = shot_bracket(shots)
    name = coop_name(dataset)
    out: dict[str, Setting] = {}
    for rule in recipe.rules:
        if rule.applies(protocol, bracket, name):
            for setting in rule.settings:
                out[setting.key] = setting
    return out


def resolved(
    method: str, protocol: str = "few-shot", shots: int = 16, dataset: str | None = None
) -> dict[str, Setting]:
    """Every :class:`Setting` (value, source, note) the recipe of ``method`` gives for this protocol, shot count and
    dataset, by dotted key; a value proportional to the shots is still a :class:`ShotsTimes` (see :func:`preset`)."""
    return _resolved(method, protocol, shots, dataset)


def _value(value: Any, shots: int) -> Any:
    if isinstance(value, ShotsTimes):
        return value(shots if shots > 0 else 16)
    return list(value) if isinstance(value, list) else value


def preset(
    method: str, protocol: str = "few-shot", shots: int = 16, dataset: str | None = None
) -> dict[str, dict[str, Any]]:
    """The official settings of ``method`` for ``protocol`` at ``shots`` shots (on ``dataset``, when the recipe has
    a per-dataset value), as ``{section: {field: value}}`` with method options under ``method.options``."""
    nested: dict[str, dict[str, Any]] = {}
    for key, setting in _resolved(method, protocol, shots, dataset).items():
        section, _, field_name = key.partition(".")
        target = nested.setdefault(section, {})
        if field_name.startswith("options."):
            target = target.setdefault("options", {})
            field_name = field_name[len("options.") :]
        target[field_name] = _value(setting.value, shots)
    if "name" in nested.get("method", {}):
        nested["method"]["name"] = method  # an inherited recipe names the parent; the run is the subclass's
    return nested


def sources(method: str, protocol: str = "few-shot", shots: int = 16, dataset: str | None = None) -> dict[str, str]:
    """``"train.lr" -> "KaiyangZhou/CoOp:configs/trainers/CoOp/vit_b16.yaml"`` for every value :func:`preset` gives."""
    return {key: setting.source for key, setting in _resolved(method, protocol, shots, dataset).items()}


def notes(method: str, protocol: str = "few-shot", shots: int = 16, dataset: str | None = None) -> dict[str, str]:
    """The note beside each value that has one (the config key it comes from, or why)."""
    return {key: s.note for key, s in _resolved(method, protocol, shots, dataset).items() if s.note}


def recipe_methods() -> list[str]:
    """The methods with a recipe of their own (see :func:`has_recipe` for inherited ones)."""
    return list(RECIPES)


def has_recipe(method: str) -> bool:
    """True when ``method`` trains with a recipe, its own or a parent class's (:func:`recipe_owner`)."""
    return recipe_owner(method) is not None
