"""The official recipes (rlptune.recipes): every preset value pinned against the numbers read from the official
repositories, every key a real setting, every value sourced, and Dassl's / CLIP-LoRA's schedules as formulas.

The expected values below are literals copied from the official files (named beside them), not computed from the
module, so a wrong edit of a recipe fails here.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

import oracles
from rlptune import config as rc
from rlptune import registry
from rlptune import method_templates
from rlptune import recipes
from rlptune.recipe_listing import methods_table
from rlptune.errors import RlptuneError

ROOT = Path(__file__).resolve().parents[1]
METHODS = (
    "zeroshot",
    "linear_probe",
    "coop",
    "rlp",
    "cocoop",
    "kgcoop",
    "deep_text",
    "deep_vision",
    "ivlp",
    "maple",
    "promptsrc",
    "clip_lora",
)
PROTOCOLS = ("few-shot", "base2new", "cross-dataset", "domain-gen")
SHOTS = (1, 2, 4, 8, 16)
DATASETS = (None, "ImageNet", "DescribableTextures", "EuroSAT", "OxfordPets", "StanfordCars", "Food101", "micro-shapes")
TRANSFER = ("cross-dataset", "domain-gen")

# Dassl configs: OPTIM.NAME sgd, LR_SCHEDULER cosine, WARMUP_EPOCH 1, WARMUP_CONS_LR 1e-5; defaults.py momentum 0.9,
# weight decay 5e-4, RRCROP_SCALE (0.08, 1.0); CosineAnnealingLR without eta_min; stepped once per epoch.
DASSL_TRAIN = {
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 0.0005,
    "scheduler": "cosine",
    "warmup_epochs": 1,
    "warmup_lr": 1e-05,
    "min_lr": 0.0,
    "schedule_unit": "epoch",
    "iterations": 0,
    "crop_scale": 0.08,
    "flip": True,
}


def _method(name, **extra):
    return {"name": name, "class_token_position": "end", "class_specific": False, **extra}


BASE = {
    # CoOp trainers/zsclip.py: CUSTOM_TEMPLATES per dataset, eval only
    "zeroshot": {
        "method": {"name": "zeroshot", "templates": ["a photo of a {}."], "use_dataset_template": True},
        "train": {"epochs": 0},
    },
    # CoOp lpclip/linear_probe.py: LogisticRegression(max_iter=1000)
    "linear_probe": {
        "method": {"name": "linear_probe", "options": {"max_iter": 1000}},
        "train": {"epochs": 1, "warmup_epochs": 0},
    },
    # CoOp configs/trainers/CoOp/vit_b16*.yaml, COOP.md (M=16, end, unified context)
    "coop": {
        "method": _method("coop"),
        "prompt": {"kind": "full", "init_std": 0.02, "n_ctx": 16, "ctx_init": None},
        "train": {**DASSL_TRAIN, "lr": 0.002, "batch_size": 32, "epochs": 200},
    },
    # CoOp's recipe + rlptune's RLP prompt (docs/RLP.md: ctx 'a photo of a', rank 1, dropout 0.1, A ~ N(0,1), B = 0)
    "rlp": {
        "method": _method("rlp"),
        "prompt": {
            "kind": "lowrank",
            "init_std": 0.02,
            "n_ctx": 4,
            "ctx_init": "a photo of a",
            "rank": 1,
            "dropout": 0.1,
            "a_std": 1.0,
            "b_std": 0.0,
            "alpha": None,
        },
        "train": {**DASSL_TRAIN, "lr": 0.002, "batch_size": 32, "epochs": 200},
    },
    # CoOp configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml; trainers/cocoop.py vis_dim // 16
    "cocoop": {
        "method": _method("cocoop", options={"hidden_ratio": 16}),
        "prompt": {"kind": "full", "n_ctx": 4, "ctx_init": "a photo of a", "init_std": 0.02},
        "train": {**DASSL_TRAIN, "lr": 0.002, "batch_size": 1, "epochs": 10},
    },
    # KgCoOp configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml; scripts/base2new_train.sh NCTX=4; run.sh W=8.0
    "kgcoop": {
        "method": _method("kgcoop", options={"lambda_kg": 8.0}),
        "prompt": {"kind": "full", "n_ctx": 4, "ctx_init": "a photo of a", "init_std": 0.02},
        "train": {**DASSL_TRAIN, "lr": 0.002, "batch_size": 128, "epochs": 100},
    },
    # multimodal-prompt-learning configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml
    "deep_text": {
        "method": _method(
            "deep_text", options={"text_depth": 12, "vision_depth": 0, "vision_ctx": 0, "deep_init_std": 0.02}
        ),
        "prompt": {"kind": "full", "init_std": 0.02, "n_ctx": 4, "ctx_init": "a photo of a"},
        "train": {**DASSL_TRAIN, "lr": 0.0025, "batch_size": 4, "epochs": 5},
    },
    # configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml (N_CTX_VISION 8, depth 12); trainers/vpt.py "a photo of a {}."
    "deep_vision": {
        "method": _method(
            "deep_vision",
            options={
                "vision_ctx": 8,
                "vision_depth": 12,
                "text_depth": 0,
                "deep_init_std": 0.02,
                "template": "a photo of a {}.",
            },
        ),
        "prompt": {"kind": "full", "init_std": 0.02},
        "train": {**DASSL_TRAIN, "lr": 0.0025, "batch_size": 4, "epochs": 5},
    },
    # configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml (depth 12 + 12, 2 + 2 tokens, lr 0.0035)
    "ivlp": {
        "method": _method(
            "ivlp", options={"text_depth": 12, "vision_depth": 12, "vision_ctx": 2, "deep_init_std": 0.02}
        ),
        "prompt": {"kind": "full", "init_std": 0.02, "n_ctx": 2, "ctx_init": "a photo of a"},
        "train": {**DASSL_TRAIN, "lr": 0.0035, "batch_size": 4, "epochs": 5},
    },
    # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml
    "maple": {
        "method": _method("maple", options={"depth": 9, "deep_init_std": 0.02}),
        "prompt": {"kind": "full", "init_std": 0.02, "n_ctx": 2, "ctx_init": "a photo of a"},
        "train": {**DASSL_TRAIN, "lr": 0.0035, "batch_size": 4, "epochs": 5},
    },
    # PromptSRC configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml; trainers/promptsrc.py (KL weight 1,
    # 60 templates)
    "promptsrc": {
        "method": _method(
            "promptsrc",
            options={
                "text_ctx": 4,
                "vision_ctx": 4,
                "text_depth": 9,
                "vision_depth": 9,
                "text_loss_weight": 25.0,
                "image_loss_weight": 10.0,
                "kl_loss_weight": 1.0,
                "gpa_mean": 15.0,
                "gpa_std": 1.0,
                "n_templates": 60,
                "deep_init_std": 0.02,
            },
        ),
        "prompt": {"kind": "full", "init_std": 0.02, "n_ctx": 4, "ctx_init": "a photo of a"},
        "train": {**DASSL_TRAIN, "lr": 0.0025, "batch_size": 4, "epochs": 20},
    },
    # CLIP-LoRA run_utils.py / lora.py / main.py / datasets/*.py
    "clip_lora": {
        "method": {
            "name": "clip_lora",
            "options": {
                "r": 2,
                "alpha": 1.0,
                "rslora": True,
                "dropout": 0.25,
                "targets": ["q", "k", "v"],
                "towers": "both",
                "template": "a photo of a {}.",
            },
        },
        "train": {
            "optimizer": "adamw",
            "lr": 0.0002,
            "weight_decay": 0.01,
            "batch_size": 32,
            "iterations": 8000,
            "scheduler": "cosine",
            "schedule_unit": "step",
            "min_lr": 1e-06,
            "warmup_epochs": 0,
            "crop_scale": 0.08,
            "flip": True,
        },
    },
}

COOP_EPOCHS = {1: 50, 2: 100, 4: 100, 8: 200, 16: 200}  # COOP.md: rn50_ep50 / rn50_ep100 / rn50 per shot count
KGCOOP_TEMPLATE = {  # KgCoOp trainers/kgcoop.py CUSTOM_TEMPLATES
    "ImageNet": "a photo of a {}.",
    "DescribableTextures": "a photo of a {}, a type of texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "OxfordPets": "a photo of a {}, a type of pet.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
}
PROMPTSRC_GPA_45_5 = ("StanfordCars", "OxfordFlowers", "FGVCAircraft", "DescribableTextures", "EuroSAT")


def expected(method: str, protocol: str, shots: int, dataset: str | None) -> dict:
    out = copy.deepcopy(BASE[method])
    train, prompt = out.get("train", {}), out.get("prompt", {})
    options = out["method"].get("options", {})
    if method in ("coop", "rlp"):
        train["epochs"] = 50 if dataset == "ImageNet" else COOP_EPOCHS[shots]
        if method == "coop" and protocol != "few-shot":  # CoCoOp's scripts: vit_b16_ctxv1 / vit_b16_ep50_ctxv1
            prompt.update(n_ctx=4, ctx_init="a photo of a")
    if method == "kgcoop" and dataset in KGCOOP_TEMPLATE:
        options["template"] = KGCOOP_TEMPLATE[dataset]
    if method == "maple" and protocol in TRANSFER:  # vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml
        train.update(lr=0.0026, epochs=2)
        options["depth"] = 3
    if method == "promptsrc":
        if protocol == "few-shot":  # vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml
            train["epochs"] = 50
            options.update(gpa_mean=45.0, gpa_std=5.0) if dataset in PROMPTSRC_GPA_45_5 else options.update(
                gpa_mean=30.0, gpa_std=30.0
            )
        if protocol in TRANSFER:  # vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml
            options.update(text_depth=3, vision_depth=3, gpa_mean=6.0, gpa_std=10.0)
    if method == "clip_lora":
        train["iterations"] = 500 * shots
    return out


def test_every_preset_value_equals_the_official_recipe():
    checked = 0
    for method in METHODS:
        for protocol in PROTOCOLS:
            for shots in SHOTS:
                for dataset in DATASETS:
                    got = recipes.preset(method, protocol, shots, dataset)
                    assert got == expected(method, protocol, shots, dataset), (method, protocol, shots, dataset)
                    checked += 1
    assert checked == len(METHODS) * len(PROTOCOLS) * len(SHOTS) * len(DATASETS)
    assert set(recipes.RECIPES) == set(METHODS)


def test_coop_epochs_per_shot_and_imagenet_spot_checks():
    # the figures the bug report quotes, spelled out once more
    assert [recipes.preset("coop", "few-shot", k)["train"]["epochs"] for k in SHOTS] == [50, 100, 100, 200, 200]
    assert [recipes.preset("coop", "few-shot", k, "imagenet")["train"]["epochs"] for k in SHOTS] == [50] * 5
    assert recipes.preset("rlp", "base2new", 16, "dtd")["train"]["epochs"] == 200
    assert recipes.preset("clip_lora", "few-shot", 16)["train"]["iterations"] == 8000


def test_shot_counts_outside_the_official_ones_use_their_bracket():
    assert [recipes.shot_bracket(k) for k in (0, 1, 2, 3, 4, 5, 8, 9, 32)] == [16, 1, 2, 4, 4, 8, 8, 16, 16]
    assert recipes.preset("coop", "few-shot", 3)["train"]["epochs"] == 100
    assert recipes.preset("coop", "few-shot", 0)["train"]["epochs"] == 200  # all images: the 16-shot recipe
    assert recipes.preset("clip_lora", "few-shot", 3)["train"]["iterations"] == 1500  # 500 x the actual K
    assert recipes.preset("clip_lora", "few-shot", 0)["train"]["iterations"] == 8000


def test_dataset_names_are_resolved_like_the_loaders_do():
    from rlptune.data.coop import COOP_DATASETS

    for spec in COOP_DATASETS.values():
        assert recipes.coop_name(spec.name) == spec.name
        assert recipes.coop_name(spec.name.upper()) == spec.name
        for alias in spec.aliases:
            assert recipes.coop_name(alias) == spec.name, alias
    assert recipes.coop_name("oxford_flowers") == "OxfordFlowers"  # official config stem
    assert recipes.coop_name("imagenet_sketch") == "ImageNetSketch"
    assert recipes.coop_name("micro-shapes") is None and recipes.coop_name(None) is None


def _section_fields() -> dict[str, set[str]]:
    hints = {f.name: f.type for f in dataclasses.fields(rc.RunConfig)}
    classes = rc._section_classes()
    assert set(classes) == set(hints)
    return {name: {f.name for f in dataclasses.fields(cls)} for name, cls in classes.items()}


def _options_fields(method: str) -> set[str]:
    from rlptune.methods import get_method_class

    return {f.name for f in dataclasses.fields(get_method_class(method).options_class)}


def test_every_key_is_a_runconfig_field_or_a_method_option_and_the_config_accepts_it():
    sections = _section_fields()
    for method in METHODS:
        option_names = _options_fields(method)
        for protocol in PROTOCOLS:
            for dataset in (None, "ImageNet", "dtd"):
                data = recipes.preset(method, protocol, 16, dataset)
                for section, values in data.items():
                    assert section in sections, (method, section)
                    for key, value in values.items():
                        if section == "method" and key == "options":
                            assert set(value) <= option_names, (method, set(value) - option_names)
                        elif section == "method" and key in rc.FORMER_METHOD_FIELDS:  # read into method.options
                            assert key in option_names or value == rc.FormerMethodSettings().__dict__[key], (
                                method,
                                key,
                            )
                        elif section == "prompt" and key in rc.FORMER_PROMPT_FIELDS:  # read into prompt.options
                            kind = data["prompt"].get("kind", rc.PromptSettings().kind)
                            declared = {f.name for f in dataclasses.fields(registry.prompt_options_class(kind))}
                            assert key in declared or value == rc.FormerPromptSettings().__dict__[key], (method, key)
                        else:
                            assert key in sections[section], (method, f"{section}.{key}")
                # the settings machinery takes every value with its type, and the options class validates them
                cfg = rc.apply_mapping(rc.blank_config(), data, f"preset {method}").validate()
                assert cfg.method.name == method
                from rlptune.options import parse_options
                from rlptune.methods import get_method_class

                parse_options(get_method_class(method).options_class, cfg.method.options, method)


def test_every_value_has_a_source_in_a_read_repository():
    pattern = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<path>\S+)")
    for method in METHODS:
        for protocol in PROTOCOLS:
            for shots in SHOTS:
                data = recipes.preset(method, protocol, shots, "dtd")
                flat = {f"{s}.{k}" for s, v in data.items() for k in v if k != "options"}
                flat |= {f"method.options.{k}" for k in data.get("method", {}).get("options", {})}
                src = recipes.sources(method, protocol, shots, "dtd")
                assert set(src) == flat, method
                for key, source in src.items():
                    if source.startswith("rlptune:"):
                        assert method in ("rlp", "linear_probe"), (method, key, source)
                        assert (ROOT / source.split(":", 1)[1].split(",")[0].split(" ")[0]).exists(), source
                        continue
                    match = pattern.match(source)
                    assert match and match["repo"] in recipes.REPOSITORIES, (method, key, source)
    assert all(re.fullmatch(r"[0-9a-f]{40}", c) for c in recipes.REPOSITORIES.values())


def test_rlp_values_come_from_coop_except_its_prompt():
    src = recipes.sources("rlp", "few-shot", 1)
    assert src["train.epochs"] == "KaiyangZhou/CoOp:configs/trainers/CoOp/vit_b16_ep50.yaml"
    assert src["train.lr"].startswith("KaiyangZhou/CoOp:configs/trainers/CoOp/")
    assert all(src[k] == recipes.RLP_SOURCE for k in ("prompt.kind", "prompt.rank", "prompt.dropout", "prompt.a_std"))
    # the RLP prompt is the one docs/RLP.md documents and measured
    rlp_doc = (ROOT / "docs/RLP.md").read_text(encoding="utf-8")
    assert "`P_A ~ N(0, 1)`, `P_B = 0`" in rlp_doc and '"a photo of a"' in rlp_doc
    assert re.search(r"`prompt\.dropout` \(0\.1\b", rlp_doc)


def test_each_run_takes_its_schedule_from_the_one_config_its_official_script_uses():
    cfg = "KaiyangZhou/CoOp:configs/trainers/CoOp/"
    cases = {
        ("coop", "few-shot", 1, None): cfg + "vit_b16_ep50.yaml",
        ("coop", "few-shot", 2, None): cfg + "vit_b16_ep100.yaml",
        ("rlp", "few-shot", 4, "dtd"): cfg + "vit_b16_ep100.yaml",
        ("coop", "few-shot", 16, None): cfg + "vit_b16.yaml",
        ("coop", "few-shot", 8, "imagenet"): cfg + "vit_b16_ep50.yaml",
        ("coop", "base2new", 16, "dtd"): cfg + "vit_b16_ctxv1.yaml",
        ("coop", "base2new", 16, "ImageNet"): cfg + "vit_b16_ep50_ctxv1.yaml",
        ("rlp", "cross-dataset", 16, "ImageNet"): cfg + "vit_b16_ep50_ctxv1.yaml",
        ("cocoop", "base2new", 16, None): "KaiyangZhou/CoOp:configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml",
        ("kgcoop", "base2new", 16, None): "htyao89/KgCoOp:KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml",
        (
            "maple",
            "base2new",
            16,
            None,
        ): "muzairkhattak/multimodal-prompt-learning:configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml",
        (
            "maple",
            "domain-gen",
            16,
            None,
        ): "muzairkhattak/multimodal-prompt-learning:configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml",
        (
            "ivlp",
            "few-shot",
            4,
            None,
        ): "muzairkhattak/multimodal-prompt-learning:configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml",
        (
            "deep_text",
            "base2new",
            16,
            None,
        ): "muzairkhattak/multimodal-prompt-learning:configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml",
        (
            "deep_vision",
            "base2new",
            16,
            None,
        ): "muzairkhattak/multimodal-prompt-learning:configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml",
        (
            "promptsrc",
            "base2new",
            16,
            None,
        ): "muzairkhattak/PromptSRC:configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml",
        (
            "promptsrc",
            "few-shot",
            2,
            "eurosat",
        ): "muzairkhattak/PromptSRC:configs/trainers/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml",
        (
            "promptsrc",
            "cross-dataset",
            16,
            None,
        ): "muzairkhattak/PromptSRC:configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml",
    }
    keys = (
        "train.optimizer",
        "train.lr",
        "train.batch_size",
        "train.epochs",
        "train.scheduler",
        "train.warmup_epochs",
        "train.warmup_lr",
        "train.flip",
    )
    for (method, protocol, shots, dataset), config in cases.items():
        src = recipes.sources(method, protocol, shots, dataset)
        assert {src[k] for k in keys} == {config}, (method, protocol, shots, dataset)
    # the prompt's text follows the same file where the config sets it
    assert recipes.sources("coop", "base2new", 2)["prompt.ctx_init"] == cfg + "vit_b16_ep100_ctxv1.yaml"
    assert recipes.sources("maple", "cross-dataset")["method.options.depth"].endswith("_2ctx_cross_datasets.yaml")


def test_maple_transfer_and_promptsrc_sources_name_the_transfer_configs():
    assert recipes.sources("maple", "cross-dataset")["train.lr"].endswith(
        "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"
    )
    assert recipes.sources("promptsrc", "domain-gen")["method.options.gpa_mean"].endswith(
        "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"
    )
    assert recipes.sources("promptsrc", "few-shot", 4, "eurosat")["method.options.gpa_std"].endswith(
        "vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"
    )
    assert recipes.sources("clip_lora")["train.iterations"] == "MaxZanella/CLIP-LoRA:lora.py"


def test_kgcoop_templates_are_coops_except_textures():
    from rlptune.data.coop import COOP_TEMPLATES

    assert set(method_templates.KGCOOP_TEMPLATES) == set(COOP_TEMPLATES)
    differ = {k for k in COOP_TEMPLATES if COOP_TEMPLATES[k] != method_templates.KGCOOP_TEMPLATES[k]}
    assert differ == {"DescribableTextures"}
    assert method_templates.KGCOOP_TEMPLATES["DescribableTextures"] == "a photo of a {}, a type of texture."
    assert method_templates.KGCOOP_TEMPLATES_SOURCE == "htyao89/KgCoOp:KgCoOp/trainers/kgcoop.py"


def test_promptsrc_template_ensemble():
    t = method_templates.PROMPTSRC_TEMPLATES
    assert len(t) == 60 == len(set(t)) == recipes.preset("promptsrc")["method"]["options"]["n_templates"]
    assert all(x.count("{}") == 1 for x in t)
    assert t[0] == "a photo of a {}." and t[-1] == "itap of the {}." and t[36] == "a {} in a video game."
    # 20 of CLIP's 80 ImageNet templates are not in it
    assert not {"itap of a {}.", "a good photo of a {}.", "a toy {}.", "art of the {}.", "a plushie {}."} & set(t)


def test_dassl_schedule_formula_per_epoch():
    # base * (1 + cos(pi (e - 1) / T)) / 2 for e >= 1, warm-up rate at epoch 0: hand-computed values
    table = {
        (5, 0.0035): [1e-5, 3.5e-3, 3.165780e-3, 2.290780e-3, 1.209220e-3],
        (10, 0.002): [1e-5, 2e-3, 1.951057e-3, 1.809017e-3],
        (50, 0.002): [1e-5, 2e-3, 1.998027e-3, 1.992115e-3],
        (200, 0.002): [1e-5, 2e-3, 1.999877e-3, 1.999507e-3],
    }
    last = {5: 1.209220e-3, 10: 1.909830e-4, 50: 7.885299e-6, 200: 4.934396e-7}
    for (T, base), values in table.items():
        got = [oracles.dassl_epoch_lr(e, base, T) for e in range(T)]
        assert got[: len(values)] == pytest.approx(values, rel=1e-6)
        assert got[-1] == pytest.approx(last[T], rel=1e-6)
        assert max(got) == base  # epoch 1 trains at the peak rate


def test_dassl_schedule_matches_torch_cosine_counted_after_the_warmup():
    torch = pytest.importorskip("torch")
    for T in (5, 10, 50, 200):
        param = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([param], lr=0.002)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, float(T))
        chained = [0.002]
        for _ in range(T - 2):
            opt.step()
            cosine.step()
            chained.append(cosine.get_last_lr()[0])
        ours = [oracles.dassl_epoch_lr(e, 0.002, T) for e in range(1, T)]
        assert ours == pytest.approx(chained, rel=1e-9, abs=1e-15)


def test_clip_lora_schedule_per_iteration():
    assert oracles.clip_lora_step_lr(0) == pytest.approx(2e-4)
    assert oracles.clip_lora_step_lr(4000) == pytest.approx(1.005e-4)
    assert oracles.clip_lora_step_lr(7999) == pytest.approx(1.000007672e-6, rel=1e-8)
    assert oracles.clip_lora_step_lr(8000) == pytest.approx(1e-6)


def test_schedule_and_augmentation_facts_are_documented():
    doc = (ROOT / "docs/METHODS.md").read_text(encoding="utf-8")
    assert "base · (1 + cos(π (e − W) / T)) / 2" in doc
    for text in ("1.209e-3", "7.885e-6", "3.166e-3", "1.005e-4"):  # Dassl T=5 / T=50 and CLIP-LoRA midpoint values
        assert text in doc, text
    for method in METHODS:  # each method's table in the docs names every setting its recipe sets
        section = doc.split(f"#### `{method}` — ", 1)[1].split("\n#### ", 1)[0]
        for protocol in PROTOCOLS:
            for key in recipes.sources(method, protocol, 16, "dtd"):
                assert f"| `{key}` |" in section, (method, key)
    assert oracles.AUGMENTATION["train: random resized crop, area scale"][0] == (0.08, 1.0)
    assert oracles.AUGMENTATION["train: interpolation"][0] == "bicubic"
    assert oracles.DASSL_SCHEDULE["WARMUP_RECOUNT"][0] is True
    assert oracles.LINEAR_PROBE_SEARCH["C grid"][0] == (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
    assert "drop_last = is_train and len(data_source) >= batch_size" in doc
    assert set(oracles.DATA_LOADER) == {
        "Dassl train sampler",
        "Dassl drop_last",
        "Dassl evaluated model",
        "CLIP-LoRA loader",
    }


def test_errors_name_what_is_wrong_in_one_line():
    with pytest.raises(RlptuneError, match="no official recipe for method 'coopp'") as err:
        recipes.preset("coopp")
    assert "\n" not in str(err.value)
    with pytest.raises(RlptuneError, match=r"protocol 'fewshot' is not known \(did you mean 'few-shot'\?\)"):
        recipes.sources("coop", "fewshot")


def test_methods_table_lists_every_method_and_what_varies():
    table = methods_table()
    for method in METHODS:
        assert re.search(rf"^{method}: ", table, re.M), method
    assert "1 shot: 50, 2 shots: 100, 4 shots: 100, 8 shots: 200, 16 shots: 200 (except ImageNet: 50)" in table
    assert "train.iterations=500·K" in table
    assert "cross-dataset, domain-gen: 0.0026" in table


def test_presets_are_fresh_copies():
    first = recipes.preset("clip_lora")
    first["method"]["options"]["targets"].append("o")
    assert recipes.preset("clip_lora")["method"]["options"]["targets"] == ["q", "k", "v"]


def test_importing_recipes_does_not_import_torch():
    code = "import sys, rlptune.recipes; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
