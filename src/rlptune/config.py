"""Settings as typed dataclasses, filled from defaults, a method preset, a YAML file and command-line overrides.

Every field carries help text and is validated, so a mistyped key fails with a message naming the field and the
valid ones. The same dataclasses generate the command-line flags (``--n-ctx``, ``--lr`` …), so YAML keys and flags
map onto each other 1:1; any field can also be set as ``--set section.field=value``.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Optional

import yaml

from .errors import RlptuneError
from .options import (
    MAX_BATCH,
    MAX_CLASSES,
    MAX_EPOCHS,
    MAX_SEED,
    MAX_SHOTS,
    MAX_STEPS,
    MAX_TOKENS,
    MAX_VIEWS,
    MAX_WORKERS,
    SettingsLoader,
    check_ranges,
    check_template,
    checkpoint_text_option,
    class_specific_option,
    class_token_position_option,
    coerce,
    options_dict,
    parse_kind_options,
    parse_options,
    read_setting_text,
    settle_numbers,
    shared_prefix_option,
    shown,
    templates_option,
    text_chunk_option,
    type_hints,
    use_dataset_template_option,
)
from . import recipes, registry  # after .options: the order the package imports in
from .defaults import DEFAULT_BACKBONE, DEFAULT_METHOD

_log = logging.getLogger(__name__)


def _f(
    default: Any,
    help: str,
    flag: str | None = None,
    choices: tuple | None = None,
    low: int | float | None = None,
    high: int | float | None = None,
    **kw: Any,
):
    """A settings field: help text, its flag, its choices and, for numbers, inclusive bounds (:func:`check_ranges`)."""
    meta = {"help": help, "flag": flag, "choices": choices, "low": low, "high": high}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


class _Section:
    """Settings sections refuse attributes they do not declare (``cfg.train.epoch = 5`` is a typo, not a new field)."""

    def __setattr__(self, name: str, value: Any) -> None:
        known = {f.name for f in fields(self)} if dataclasses.is_dataclass(self) else set()
        if known and name not in known:
            raise _unknown(name, sorted(known), type(self).__name__)
        object.__setattr__(self, name, value)


@dataclass
class BackboneSettings(_Section):
    name: str = _f(
        DEFAULT_BACKBONE,
        "backbone spec: a registered name or spelling (`rlptune train --help` lists them)",
        flag="backbone",
    )
    device: str = _f("auto", "device: auto, cpu, cuda, cuda:1 …", flag="device")
    precision: str = _f(
        "auto",
        "auto | fp32 | bf16 | fp16 (autocast; trainable tensors stay fp32). auto = the method's official fp16 on CUDA, "
        "fp32 elsewhere (bf16 on a native-bf16 CPU once measured within seed spread); runs record the resolved value",
        choices=("auto", "fp32", "bf16", "fp16"),
    )

    def validate(self) -> None:
        if not self.name.strip():
            raise RlptuneError(
                "backbone.name is empty; expected micro, ARCH:TAG, ARCH:/path/weights, a .pt file or an arch .json"
            )
        if not _DEVICE.match(self.device):
            raise RlptuneError(f"backbone.device {self.device!r}: expected auto, cpu, cuda, cuda:N, mps or xpu[:N]")


@dataclass
class DataSettings(_Section):
    dataset: str = _f("folder", "dataset name (folder, csv, split-json, a CoOp dataset such as eurosat, or micro-*)")
    root: Optional[str] = _f(None, "dataset root folder (or file for csv / split-json)", flag="data-root")
    shots: int = _f(16, "images per class drawn for training (0 = all)", low=0, high=MAX_SHOTS)
    split_seed: int = _f(
        1,
        "seed of the train/val/test split of a plain image folder or CSV (the loaders' default too)",
        low=0,
        high=MAX_SEED,
    )
    subsample: str = _f(
        "all", "classes to use: all | base | new (base-to-new protocol)", choices=("all", "base", "new")
    )
    image_policy: str = _f(
        "error", "unreadable images: error | skip (skipped files are reported)", choices=("error", "skip")
    )
    protocol: str = _f(
        "few-shot",
        "evaluation protocol the run belongs to (a registered protocol: `rlptune run --help` lists them); selects "
        "the classes that train, the evaluation and the method's official recipe",
    )

    def validate(self) -> None:
        if not self.dataset.strip():
            raise RlptuneError(
                "data.dataset is empty; expected folder, csv, split-json, a CoOp dataset name or micro-*"
            )
        _at_least("data.shots", self.shots, 0)
        registry.get_protocol(self.protocol)  # an unknown protocol is one line with the registered ones


@dataclass
class PromptSettings(_Section):
    kind: str = _f("full", "prompt parameterisation: full (CoOp) | lowrank (RLP) | any registered kind", flag="prompt")
    n_ctx: int = _f(
        16,
        "learned context tokens; with ctx_init, its first n_ctx tokens are learned and the rest stay fixed text "
        "(MaPLe: 2 of 'a photo of a'); n_ctx above the init's token count learns the whole init (CoOp)",
        low=1,
        high=MAX_TOKENS,
    )
    ctx_init: Optional[str] = _f(None, "initialise the context from this text, e.g. 'a photo of a'")
    init_std: float = _f(0.02, "std of the random full-rank context init N(0, std^2) when ctx_init is unset", low=0)
    options: dict = _f(
        {},
        "the prompt kind's own options (lowrank: rank, dropout, a_std, b_std, alpha; also spelled prompt.<option>)",
        flag="prompt-options",  # a mapping: set with --set prompt.options.<name>=… (and the kind's own flags)
    )

    def __post_init__(self) -> None:
        # values given in the short spelling (prompt.<knob>, see FormerPromptSettings), kept apart until the kind is
        # known: key -> (value, the same mapping's prompt.options.<knob> or None)
        object.__setattr__(self, "_former", {})

    def validate(self) -> None:
        options_class = registry.prompt_options_class(self.kind)  # an unknown kind is one line with the registered ones
        if self.n_ctx < 1:
            raise RlptuneError(f"prompt.n_ctx must be >= 1, got {self.n_ctx}")
        if self.init_std < 0:
            raise RlptuneError("prompt.a_std, prompt.b_std and prompt.init_std must be >= 0")
        if self.ctx_init is not None and not self.ctx_init.strip():
            raise RlptuneError(
                "prompt.ctx_init is empty; unset it for a random context or give a text such as 'a photo of a'"
            )
        if not isinstance(self.options, dict):
            raise RlptuneError(f"prompt.options: expected a mapping of the kind's options, got {shown(self.options)}")
        declared = {f.name for f in fields(options_class)}
        given: dict[str, tuple[Any, Any]] = {}
        for key, (value, same_mapping) in self._former.items():
            if key in declared:
                given[key] = (value, same_mapping)
                continue
            default = _field_default(FORMER_PROMPT_FIELDS[key])
            if value != default:  # 0.2 recorded every knob for every kind: only its default may go unheard
                raise RlptuneError(
                    f"prompt.{key}={value!r}: prompt kind {self.kind!r} does not support this setting "
                    f"(leave it at {default!r})"
                )
        values = {**self.options, **{key: value for key, (value, _) in given.items()}}
        options = parse_kind_options(options_class, values, self.kind)  # a bad value first, in either spelling
        hints = type_hints(options_class)
        for key, (value, same_mapping) in given.items():
            if same_mapping is not None and coerce(same_mapping, hints[key], f"prompt.options.{key}") != value:
                raise RlptuneError(
                    f"prompt.{key}={value!r} and prompt.options.{key}={same_mapping!r} disagree; give it once, as "
                    f"prompt.options.{key}"
                )
        object.__setattr__(self, "_former", {})
        object.__setattr__(self, "options", options_dict(options))  # every option recorded, with its value


@dataclass
class FormerPromptSettings:
    """The low-rank knobs in the spelling every prompt carried until 0.3: ``prompt.<name>``, with 0.2's defaults.

    They are now the ``lowrank`` kind's options (``prompt.options.<name>``, :class:`rlptune.prompts.LowRankOptions`).
    This spelling is still read, from files, ``--set`` and these flags (``--rank``, ``--dropout`` …), into the
    options of a kind that declares the knob, so old ``config.yaml`` files, adapters and command lines keep working;
    for a kind that does not, the default given here is dropped (0.2 recorded every knob for every kind) and any
    other value is one line. :func:`in_former_spelling` puts them back in this shape for the settings hash."""

    rank: int = _f(
        1, "rank r of the low-rank update P_A @ P_B (lowrank only: prompt.options.rank)", low=1, high=MAX_TOKENS
    )
    dropout: float = _f(0.0, "dropout on the low-rank update during training (lowrank only: prompt.options.dropout)")
    a_std: float = _f(1.0, "std of P_A's Gaussian init (lowrank only: prompt.options.a_std)", low=0)
    b_std: float = _f(
        0.0, "std of P_B's Gaussian init (lowrank only: prompt.options.b_std; 0 starts exactly at P_fr)", low=0
    )
    alpha: Optional[float] = _f(
        None,
        "LoRA-style scale: the update is multiplied by alpha / rank (lowrank only: prompt.options.alpha; unset = 1)",
    )


FORMER_PROMPT_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(FormerPromptSettings)}


def former_prompt(section: Mapping[str, Any]) -> dict[str, Any]:
    """A ``prompt`` settings mapping in the 0.2 shape: the kind's options flat (``rank``, ``dropout`` …), every knob
    of :class:`FormerPromptSettings` present (its default where the kind has none), ``options`` kept only for an
    option 0.2 never had. Reads both shapes: a result or config written by 0.2/0.3 (flat) and by this version
    (``options``), so a reader of old and new run folders has one place to look (``former_prompt(p)["rank"]``)."""
    out = {k: v for k, v in section.items() if k != "options"}
    options = dict(section.get("options") or {}) if isinstance(section.get("options"), Mapping) else {}
    for knob, field_ in FORMER_PROMPT_FIELDS.items():
        out[knob] = options.pop(knob) if knob in options else out.get(knob, _field_default(field_))
    if options:
        out["options"] = options
    return out


@dataclass
class MethodSettings(_Section):
    name: str = _f(
        DEFAULT_METHOD,
        "method: zeroshot | coop | rlp | … (see `rlptune methods`); its official recipe applies",
        flag="method",
    )
    options: dict = _f({}, "the method's own options (`rlptune train --method NAME --help` lists them)")

    def __post_init__(self) -> None:
        # values given in the former spelling (method.<knob>, see FormerMethodSettings), kept apart until the method
        # is known: key -> (value, the same mapping's method.options.<knob> or None)
        object.__setattr__(self, "_former", {})

    def validate(self) -> None:
        if not self.name.strip():
            raise RlptuneError("method.name is empty; see `rlptune methods` for the valid ones")
        entry = registry.method_entry(self.name)
        shared = {f.name for f in fields(entry.options_class) if f.metadata.get("shared") == f.name}
        values = dict(self.options)
        for key, (value, same_mapping) in self._former.items():
            if key in shared:
                if (
                    same_mapping is not None
                    and coerce(same_mapping, type_hints(FormerMethodSettings)[key], f"method.options.{key}") != value
                ):
                    raise RlptuneError(
                        f"method.{key}={value!r} and method.options.{key}={same_mapping!r} disagree; give it once, as "
                        f"method.options.{key}"
                    )
                values[key] = value
                continue
            default = _field_default(FORMER_METHOD_FIELDS[key])
            if value != default:  # never silently ignored
                raise RlptuneError(
                    f"method.{key}={value!r}: method {self.name!r} does not support this setting (leave it at {default!r})"
                )
        object.__setattr__(self, "_former", {})
        options = parse_options(entry.options_class, values, self.name)
        object.__setattr__(self, "options", options_dict(options))  # every option recorded, with its value


def _former(option_field: Any, flag: str | None = None):
    """A :class:`FormerMethodSettings` field: the option's default, help and bounds, with its flag."""
    meta = {**option_field.metadata, "flag": flag}
    if option_field.default_factory is not dataclasses.MISSING:
        return field(default_factory=option_field.default_factory, metadata=meta)
    return field(default=option_field.default, metadata=meta)


def _field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclass
class FormerMethodSettings:
    """Options several methods declare, in the spelling every method carried until 0.2: ``method.<name>``.

    Each is now an option of the methods that honour it (``method.options.<name>``; a method that does not declare
    it refuses a value other than this default). This spelling is still read, from files, ``--set`` and these flags
    (``--csc``, ``--template``, ``--text-chunk`` …), into ``method.options``, so old ``config.yaml`` files, adapters
    and command lines keep working; the same value spelled both ways differently is one line."""

    templates: list = _former(templates_option(), flag="template")
    use_dataset_template: bool = _former(use_dataset_template_option())
    class_specific: bool = _former(class_specific_option(), flag="csc")
    class_token_position: str = _former(class_token_position_option())
    text_chunk: int = _former(text_chunk_option())
    checkpoint_text: bool = _former(checkpoint_text_option())
    shared_prefix: bool = _former(shared_prefix_option())


FORMER_METHOD_FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(FormerMethodSettings)}


def in_former_spelling(config_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``config.to_dict()`` with the shared knobs back in their 0.2 place (``method.<knob>``, every knob present)
    and the prompt kind's options flat again (``prompt.rank`` …, :func:`former_prompt`).

    The run folder's settings hash is taken over this shape, so a run, sweep or study made by 0.2 is the same run
    today (it is reused or resumed, not trained again). A knob moves back only when the method's options declare it
    as the shared knob; an option of the method's own with the same name (PromptSRC's ``templates``) stays put."""
    out = dict(config_dict)
    if isinstance(config_dict.get("prompt"), Mapping):  # the kind's options flat again (prompt.rank …)
        out["prompt"] = former_prompt(config_dict["prompt"])
    section = config_dict.get("method")
    if not isinstance(section, Mapping) or not isinstance(section.get("options"), Mapping):
        return out
    try:
        options_class = registry.method_entry(str(section.get("name"))).options_class
    except RlptuneError:
        return out
    shared = (
        {f.metadata.get("shared"): f.name for f in fields(options_class) if f.metadata.get("shared")}
        if dataclasses.is_dataclass(options_class)
        else {}
    )
    options = dict(section["options"])
    method = {k: v for k, v in section.items() if k != "options"}
    for knob, field_ in FORMER_METHOD_FIELDS.items():
        method[knob] = (
            options.pop(shared[knob]) if knob in shared and shared[knob] in options else _field_default(field_)
        )
    method["options"] = options
    out["method"] = method
    return out


def _read_former_method_field(target: MethodSettings, key: str, value: Any, values: dict, source: str) -> None:
    """``method.<key>`` (the former spelling) checked as it always was and put into ``method.options``."""
    where = f"{source}: method.{key}"
    coerced = coerce(value, type_hints(FormerMethodSettings)[key], where)
    meta = FORMER_METHOD_FIELDS[key].metadata
    if meta.get("choices") and coerced not in meta["choices"]:
        raise RlptuneError(f"{where}: expected one of {', '.join(meta['choices'])}, got {coerced!r}")
    if (
        isinstance(coerced, int)
        and not isinstance(coerced, bool)
        and meta.get("low") is not None
        and coerced < meta["low"]
    ):
        raise RlptuneError(f"method.{key} must be >= {meta['low']}, got {shown(coerced)}")
    if key == "templates":
        if not coerced:
            raise RlptuneError("method.templates is empty; expected at least one template such as 'a photo of a {}.'")
        for template in coerced:
            check_template(template, "method.templates")
    explicit = values.get("options")
    target._former[key] = (coerced, explicit.get(key) if isinstance(explicit, dict) else None)


@dataclass
class TrainSettings(_Section):
    epochs: int = _f(10, "training epochs (0 = no training: the initial prompt)", low=0, high=MAX_EPOCHS)
    iterations: int = _f(
        0,
        "train for this many steps instead of whole epochs (0 = use epochs; CLIP-LoRA: 500 x shots)",
        low=0,
        high=MAX_STEPS,
    )
    batch_size: int = _f(32, "images per step (global, over all processes)", low=1, high=MAX_BATCH)
    optimizer: str = _f("sgd", "sgd (momentum) | adamw", choices=("sgd", "adamw"))
    lr: float = _f(0.002, "peak learning rate")
    min_lr: float = _f(0.0, "floor of the cosine schedule (eta_min; Dassl 0, CLIP-LoRA 1e-6)")
    momentum: float = _f(0.9, "SGD momentum", low=0)
    weight_decay: float = _f(5e-4, "weight decay", low=0)
    scheduler: str = _f("cosine", "cosine | constant", choices=("cosine", "constant"))
    schedule_unit: str = _f(
        "epoch", "the schedule steps once per epoch (Dassl) or once per step (CLIP-LoRA)", choices=("epoch", "step")
    )
    warmup_epochs: int = _f(
        1,
        "epochs at the constant warm-up learning rate before the schedule (Dassl's constant warm-up)",
        low=0,
        high=MAX_EPOCHS,
    )
    warmup_lr: float = _f(1e-5, "warm-up learning rate", low=0)
    seed: int = _f(
        1, "seed of the few-shot draw, initialisation, shuffling, dropout and augmentation", low=0, high=MAX_SEED
    )
    aug_views: int = _f(
        0,
        "0 = a fresh random crop and flip per image per epoch, as the official code (default); "
        "K > 0 = K cached augmented views cycled over the epochs (faster, less faithful; see docs/METHODS.md)",
        low=0,
        high=MAX_VIEWS,
    )
    augment: bool = _f(
        True, "random resized crop + flip for training (false = centre crops only: not the official recipe)"
    )
    crop_scale: float = _f(0.08, "smallest area fraction of the random resized crop (CoOp: 0.08)")
    flip: bool = _f(True, "random horizontal flip (always off for datasets whose labels a mirror changes)")
    val_every: int = _f(
        1, "evaluate on the validation split every N epochs (0 = never); logged as val_acc", low=0, high=MAX_EPOCHS
    )
    select_best: bool = _f(
        False, "keep the epoch with the best validation accuracy instead of the last (the papers report the last)"
    )
    track_new: bool = _f(
        False,
        "base-to-new only: also score the new classes' test split at every validation epoch, logged as new_acc "
        "(a diagnostic for generalisation over training; never used to choose an epoch)",
    )
    loggers: list = _f(
        [], "extra metric loggers besides metrics.jsonl: tensorboard, csv (comma-separated or repeated)", flag="logger"
    )
    checkpoint_every: int = _f(1, "write a resumable checkpoint every N epochs (0 = never)", low=0, high=MAX_EPOCHS)
    num_workers: int = _f(0, "image-loading worker processes", low=0, high=MAX_WORKERS)
    cache_dir: Optional[str] = _f(None, "feature cache folder (default $RLPTUNE_CACHE or ~/.cache/rlptune)")
    log_diagnostics: bool = _f(True, "log prompt singular values / information density per epoch")

    def validate(self) -> None:
        if self.epochs < 0:
            raise RlptuneError(f"train.epochs must be >= 0, got {self.epochs}")
        _at_least("train.iterations", self.iterations, 0)
        if self.batch_size < 1:
            raise RlptuneError(f"train.batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise RlptuneError(f"train.lr must be > 0, got {self.lr}")
        if self.aug_views < 0:
            raise RlptuneError(f"train.aug_views must be >= 0, got {self.aug_views}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise RlptuneError(f"train.crop_scale must be in (0, 1], got {self.crop_scale}")
        _at_least("train.warmup_epochs", self.warmup_epochs, 0)
        _at_least("train.checkpoint_every", self.checkpoint_every, 0)
        _at_least("train.val_every", self.val_every, 0)
        self.loggers = [n.strip() for item in self.loggers for n in str(item).split(",") if n.strip()]
        if self.select_best and self.val_every == 0:
            raise RlptuneError("train.select_best needs validation: set train.val_every >= 1")
        if self.track_new and self.val_every == 0:
            raise RlptuneError(
                "train.track_new scores the new classes at the validation epochs: set train.val_every >= 1"
            )
        _at_least("train.num_workers", self.num_workers, 0)
        _at_least("train.seed", self.seed, 0)
        if self.seed >= 2**63:
            raise RlptuneError(f"train.seed must be < 2**63, got {self.seed}")
        for name in ("momentum", "weight_decay", "warmup_lr", "min_lr"):
            if getattr(self, name) < 0:
                raise RlptuneError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.min_lr >= self.lr:
            raise RlptuneError(f"train.min_lr ({self.min_lr:g}) must be below train.lr ({self.lr:g})")
        for name in ("lr", "warmup_lr", "min_lr", "momentum", "weight_decay"):
            if getattr(self, name) > 3.4e38:
                raise RlptuneError(f"train.{name} {getattr(self, name):g} is beyond float32's range")


@dataclass
class CacheSettings(_Section):
    max_gb: float = _f(
        20.0,
        "bound on the feature cache's centre-crop features + views, in GB (10^9 bytes); the least recently used "
        "entries are evicted first; 0 = write none (20 GB keeps an ImageNet base-to-new sweep's views of ViT-B/16 "
        "and of ViT-L/14 side by side)",
        flag="cache-max-gb",
        low=0.0,
        high=1e6,
    )
    views: str = _f(
        "disk",
        "where the features of fresh augmented views are kept: disk (in the cache folder, shared by every process, "
        "within cache.max_gb) | memory (never written to disk; shared by the runs of one process, within "
        "cache.memory_gb); the adapters are byte-identical either way",
        flag="view-cache",
        choices=("disk", "memory"),
    )
    memory_gb: float = _f(
        2.0,
        "cache.views=memory: GB of views one process keeps (least recently used dropped first)",
        flag="view-memory-gb",
        low=0.0,
        high=1e6,
    )

    def validate(self) -> None:
        for name in ("max_gb", "memory_gb"):
            if getattr(self, name) < 0:
                raise RlptuneError(f"cache.{name} must be >= 0 (GB), got {getattr(self, name):g}")


@dataclass
class EvalSettings(_Section):
    batch_size: int = _f(128, "images per evaluation batch", flag="eval-batch-size", low=1, high=MAX_BATCH)
    top_k: int = _f(5, "top-k labels written by predict", low=1, high=MAX_CLASSES)

    def validate(self) -> None:
        _at_least("eval.batch_size", self.batch_size, 1)
        _at_least("eval.top_k", self.top_k, 1)


@dataclass
class AutoSettings(_Section):
    enabled: bool = _f(
        False,
        "train a grid of candidates (rank x crop scale x dropout, epochs by per-epoch validation), keep the best on "
        "validation, and fall back to the zero-shot prompt unless one beats it by more than the validation noise "
        "(docs/AUTO.md)",
        flag="auto",
    )
    ranks: list = _f([1, 2, 4], "auto: the ranks tried (low-rank prompts only: prompt.options.rank)", flag="auto-ranks")
    crop_scales: list = _f(
        [0.08, 0.5], "auto: the smallest crop fractions tried (0.08 is the official one)", flag="auto-crop-scales"
    )
    dropouts: list = _f([0.1, 0.3], "auto: the low-rank dropouts tried (low-rank prompts only)", flag="auto-dropouts")
    rank_rule: str = _f(
        "validation",
        "auto: validation (every rank in auto.ranks, chosen on validation) | spectrum (the smallest rank holding "
        "auto.energy of a short full-rank run's update; only that rank is trained) | both (the grid, with the "
        "spectrum's rank recorded beside the choice)",
        choices=("validation", "spectrum", "both"),
        flag="auto-rank-rule",
    )
    energy: float = _f(
        0.9,
        "auto: share of the update's energy (sum of squared singular values) the spectrum rank holds",
        low=0.0,
        high=1.0,
        flag="auto-energy",
    )
    spectrum_epochs: int = _f(
        0,
        "auto: epochs of the short full-rank run of rank_rule=spectrum (0 = a quarter of train.epochs)",
        low=0,
        high=MAX_EPOCHS,
        flag="auto-spectrum-epochs",
    )
    folds: int = _f(
        3,
        "auto: folds over the training shots when the validation split has fewer than "
        "auto.min_val_per_class images in some class",
        low=2,
        high=MAX_SHOTS,
        flag="auto-folds",
    )
    min_val_per_class: int = _f(
        4,
        "auto: validation images every class needs for the validation split to be used",
        low=1,
        high=MAX_SHOTS,
        flag="auto-min-val-per-class",
    )
    alpha: float = _f(
        0.05,
        "auto: one-sided error rate of the guard, shared by the candidates (Bonferroni): a "
        "candidate replaces the zero-shot prompt only if its validation margin exceeds "
        "z = Phi^-1(1 - alpha / candidates) paired standard errors",
        low=1e-9,
        high=0.5,
        flag="auto-alpha",
    )
    margin_z: Optional[float] = _f(
        None,
        "auto: use this z instead of the one auto.alpha gives (0 = any gain)",
        low=0.0,
        high=100.0,
        flag="auto-margin-z",
    )

    def validate(self) -> None:
        self.ranks = _number_list(self.ranks, int, "auto.ranks", 1, MAX_TOKENS)
        self.crop_scales = _number_list(self.crop_scales, float, "auto.crop_scales", 0.0, 1.0)
        self.dropouts = _number_list(self.dropouts, float, "auto.dropouts", 0.0, 1.0)
        if any(c <= 0.0 for c in self.crop_scales):
            raise RlptuneError(f"auto.crop_scales must be in (0, 1], got {self.crop_scales}")
        if any(p >= 1.0 for p in self.dropouts):
            raise RlptuneError(f"auto.dropouts must be in [0, 1), got {self.dropouts}")
        if not 0.0 < self.energy <= 1.0:
            raise RlptuneError(f"auto.energy must be in (0, 1], got {self.energy:g}")


def _number_list(values: Any, kind: type, where: str, low: float, high: float) -> list:
    """A list setting of numbers, each read as a number field reads it (``[1, 2]``, ``"1,2"`` and repeated flags
    mean the same), non-empty, without repeats, within [low, high]."""
    items = [values] if isinstance(values, (str, int, float)) else list(values or [])
    parts: list[Any] = []
    for item in items:
        parts += [p for p in item.split(",") if p.strip()] if isinstance(item, str) else [item]
    out = [coerce(p, kind, where) for p in parts]
    if not out:
        raise RlptuneError(f"{where} is empty; expected at least one value")
    for value in out:
        if not low <= value <= high:
            raise RlptuneError(f"{where}: {value!r} is outside [{low:g}, {high:g}]")
    if len(set(out)) != len(out):
        raise RlptuneError(f"{where}: {out} lists a value more than once")
    return out


@dataclass
class RunConfig:
    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    data: DataSettings = field(default_factory=DataSettings)
    # None: the default method, its recipe filling the sections not given (RunConfig() is `rlptune train`'s default)
    method: MethodSettings = None  # type: ignore[assignment]
    prompt: PromptSettings = field(default_factory=PromptSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    auto: AutoSettings = field(default_factory=AutoSettings)

    def __post_init__(self) -> None:
        if self.method is None:
            self.method = MethodSettings()
            recipe = method_preset(DEFAULT_METHOD, self.data.protocol, self.data.shots, self.data.dataset)
            classes = _section_classes()
            untouched = {k: v for k, v in recipe.items() if getattr(self, k) == classes[k]()}  # given sections stay
            apply_mapping(self, untouched, f"{DEFAULT_METHOD} preset")
        elif isinstance(self.method, str):  # RunConfig(method="rlp") means what --method rlp means: its preset applied
            name = self.method
            self.method = MethodSettings()
            apply_mapping(
                self, method_preset(name, self.data.protocol, self.data.shots, self.data.dataset), f"{name} preset"
            )
            self.method.name = name
            self.method.validate()  # the method's options, with the recipe's, as resolve_config records them
            self.prompt.validate()  # and the prompt kind's (the recipe may give them as prompt.rank …)

    def validate(self) -> "RunConfig":
        for name in SECTIONS:
            section = getattr(self, name)
            if name == "prompt":  # before the kind's options: a method defined by its kind names the kind it needs
                self._check_required_kind()
            settle_numbers(section, name)  # values set in Python are read as the same value from YAML or a flag
            section.validate()
            check_ranges(section, name)  # the declared bounds, after the sections' own (more specific) checks
        if self.train.track_new and not registry.get_protocol(self.data.protocol).new_classes:
            holding = " or ".join(n for n in registry.protocol_names() if registry.get_protocol(n).new_classes)
            raise RlptuneError(
                f"train.track_new needs data.protocol={holding} (the new classes are its unseen half), got {self.data.protocol!r}"
            )
        _warn_nonsensical(self)
        return self

    def _check_required_kind(self) -> None:
        registry.prompt_builder(self.prompt.kind)  # an unknown kind is one line with the registered ones
        required = getattr(registry.method_entry(self.method.name).method_class, "requires_prompt_kind", None)
        if required is not None and self.prompt.kind != required:
            raise RlptuneError(
                f"method {self.method.name!r} is defined by prompt.kind={required!r}, got {self.prompt.kind!r} "
                f"(use --method coop for a full-rank context)"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        if not self.auto.enabled:  # off, it changes nothing: runs and adapters keep their settings (and hashes)
            out.pop("auto")
        return out


SECTIONS = {f.name: f.type for f in fields(RunConfig)}

#: The sections with settings still read in a former spelling, and the dataclass that declares that spelling.
_FORMER_CLASSES: dict[str, type] = {"method": FormerMethodSettings, "prompt": FormerPromptSettings}
_FORMER_FIELDS: dict[str, dict[str, dataclasses.Field]] = {
    "method": FORMER_METHOD_FIELDS,
    "prompt": FORMER_PROMPT_FIELDS,
}

_DEVICE = re.compile(r"^(auto|cpu|mps|(cuda|xpu)(:\d+)?)\Z")  # \Z: "$" would let "cpu\n" through


_WARNED: set[str] = set()


def _warn_nonsensical(config: "RunConfig") -> None:
    """Settings that are valid but almost surely not meant: say so once per process (the run goes ahead)."""
    t = config.train
    notes = []
    if t.optimizer == "sgd" and t.momentum > 1:
        notes.append(f"train.momentum {t.momentum:g} is above 1: SGD's steps grow without bound (CoOp uses 0.9)")
    if t.epochs > 0 and t.warmup_epochs >= t.epochs:
        notes.append(
            f"train.warmup_epochs {t.warmup_epochs} >= train.epochs {t.epochs}: the whole run stays at the warm-up "
            f"learning rate {t.warmup_lr:g} and train.lr is never used"
        )
    # prompt.rank above min(n_ctx, width) is reported where the prompt is built (prompts/low_rank.py)
    for note in notes:
        if note not in _WARNED:
            _WARNED.add(note)
            _log.warning("%s", note)


def _at_least(where: str, value: int, low: int) -> None:
    if value < low:
        raise RlptuneError(f"{where} must be >= {low}, got {value}")


def flag_hint(section: str, name: str) -> Any:
    """The type of the setting a :func:`flag_table` flag sets."""
    hints = type_hints(_section_classes()[section])
    return hints[name] if name in hints else type_hints(_FORMER_CLASSES[section])[name]


def _section_classes() -> dict[str, type]:
    hints = type_hints(RunConfig)
    return {name: hints[name] for name in SECTIONS}


def _unknown(key: str, valid: list[str], where: str) -> RlptuneError:
    # a field the key extends or abbreviates ("lr_rate" -> "lr", "batch" -> "batch_size") beats edit distance
    stems = [v for v in valid if key.startswith(v + "_") or (len(key) >= 3 and v.startswith(key))]
    close = stems[:1] or difflib.get_close_matches(key, valid, n=1, cutoff=0.4)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return RlptuneError(f"{where}: unknown field {key!r}{hint}; valid fields: {', '.join(valid)}")


def apply_mapping(config: RunConfig, data: Any, source: str) -> RunConfig:
    """Merge a nested mapping (``{section: {field: value}}``) into ``config``, validating every key and type."""
    if data is None:
        return config
    if not isinstance(data, dict):
        raise RlptuneError(
            f"{source}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}"
        )
    classes = _section_classes()
    for section, values in data.items():
        if section not in classes:
            raise _unknown(str(section), list(classes), source)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise RlptuneError(
                f"{source}: section {section!r} must be a mapping of fields, got {type(values).__name__}"
            )
        target = getattr(config, section)
        hints = type_hints(classes[section])
        former_fields = _FORMER_FIELDS.get(section, {})
        valid = [f.name for f in fields(classes[section])] + list(former_fields)
        former = {k: v for k, v in values.items() if k in former_fields}
        for key, value in values.items():
            if key in former:
                continue
            if key not in hints:
                raise _unknown(str(key), valid, f"{source}: {section}")
            set_field(target, section, key, value, source)
        for key, value in former.items():  # after this mapping's options: a later spelling wins, either way
            if section == "method":
                _read_former_method_field(target, key, value, values, source)
            else:
                _read_former_prompt_field(target, key, value, values, source)
    return config


def _read_former_prompt_field(target: PromptSettings, key: str, value: Any, values: dict, source: str) -> None:
    """``prompt.<key>`` (the short spelling) read as its type and kept until the kind is known
    (:meth:`PromptSettings.validate` moves it into the kind's options, where its bounds are checked as for
    ``prompt.options.<key>``, with the same line)."""
    coerced = coerce(value, type_hints(FormerPromptSettings)[key], f"{source}: prompt.{key}")
    explicit = values.get("options")
    target._former[key] = (coerced, explicit.get(key) if isinstance(explicit, dict) else None)


def set_field(target: Any, section: str, key: str, value: Any, source: str) -> None:
    hints = type_hints(type(target))
    where = f"{source}: {section}.{key}"
    coerced = coerce(value, hints[key], where)
    choices = next(f.metadata.get("choices") for f in fields(type(target)) if f.name == key)
    if choices and coerced not in choices:
        raise RlptuneError(f"{where}: expected one of {', '.join(choices)}, got {coerced!r}")
    if section in ("method", "prompt") and key == "options":  # options merge: --set prompt.options.x=1 keeps the others
        coerced = {**getattr(target, key), **coerced}
        for name in coerced:  # an option given now wins over the same knob given before in its former spelling
            target._former.pop(name, None)
    setattr(target, key, coerced)


class _DuplicateKey(Exception):
    pass


class _UniqueKeyLoader(SettingsLoader):
    """The settings' YAML loader (:class:`rlptune.options.SettingsLoader`), except that a key given twice in one
    mapping is an error (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # keys merged in with << may be overridden on purpose; explicit ones may not repeat
                try:
                    key = self.construct_object(key_node, deep=True)
                    hash(key)
                except (TypeError, yaml.YAMLError):
                    continue  # the base class reports unhashable keys
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _DuplicateKey(
                        f"line {line}: key {key!r} given twice (first at line {seen[key]}); each key may appear once"
                    )
                seen.setdefault(key, line)
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RlptuneError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise RlptuneError(f"{path}: expected a YAML config file, found a folder") from None
    except UnicodeDecodeError as exc:
        raise RlptuneError(f"{path}: config file is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RlptuneError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise RlptuneError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f" at line {mark.line + 1}" if mark is not None else ""
        raise RlptuneError(f"{path}: not valid YAML{pos}") from None
    except (ValueError, OverflowError) as exc:  # a tagged or date-like scalar YAML cannot construct (2001-02-30)
        raise RlptuneError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    except RecursionError:
        raise RlptuneError(f"{path}: YAML nested too deeply") from None
    return data or {}


def method_preset(
    method: str, protocol: str = "few-shot", shots: int = 16, dataset: str | None = None
) -> dict[str, Any]:
    """The method's official recipe for this protocol and shot count (:mod:`rlptune.recipes`, every value sourced);
    a method without its own recipe inherits its parent class's (:func:`rlptune.recipes.recipe_owner`); empty when
    there is none (e.g. a method added from outside the package that subclasses no recipe-bearing method)."""
    registry.get_protocol(protocol)  # named as the setting it is, before the recipe looks it up
    if not recipes.has_recipe(method):
        return {}
    return recipes.preset(method, protocol, shots, dataset)


def resolve_config(
    config_file: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Defaults → the method's recipe → ``base`` → YAML file (or named preset) → overrides; then validate.

    The recipe is the official one for the method, protocol (``data.protocol``) and shot count (``data.shots``), so
    ``--method rlp`` alone gives RLP's settings; anything given explicitly wins over it.
    """
    overrides = overrides or {}
    file_data: dict[str, Any] = {}
    if config_file:
        config_file = str(config_file)
        path = Path(config_file) if Path(config_file).exists() else None
        if path is None and config_file not in recipes.recipe_methods():
            raise RlptuneError(
                f"{config_file}: config file not found (and not a method with a recipe: {', '.join(recipes.recipe_methods())})"
            )
        file_data = load_yaml(path) if path is not None else {"method": {"name": config_file}}
    layers = (overrides, file_data, base)
    method = _peek(layers, "method", "name", str) or DEFAULT_METHOD
    protocol = _peek(layers, "data", "protocol", str) or DataSettings().protocol
    shots = _peek(layers, "data", "shots", int)
    dataset = _peek(layers, "data", "dataset", str)
    config = blank_config()
    apply_mapping(
        config,
        method_preset(method, protocol, DataSettings().shots if shots is None else shots, dataset),
        f"{method} recipe",
    )
    apply_mapping(config, base, "settings")
    apply_mapping(config, file_data, str(config_file))
    apply_mapping(config, overrides, "command line")
    return config.validate()


def _peek(layers: tuple, section: str, name: str, kind: type) -> Any:
    """The first ``layers[i][section][name]`` read as the field reads it (a number in any spelling: the recipe is
    chosen by the value the run will have); bad values are reported by :func:`apply_mapping`."""
    for data in layers:
        part = data.get(section) if isinstance(data, dict) else None
        value = part.get(name) if isinstance(part, dict) else None
        if value is None:
            continue
        if kind is int:
            try:
                return coerce(value, int, f"{section}.{name}")
            except RlptuneError:
                continue
        if isinstance(value, kind) and value != "":
            return value
    return None


def config_from_dict(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Rebuild a resolved config (e.g. a run directory's config.yaml) exactly, without applying presets."""
    named = isinstance(data, dict) and isinstance(data.get("method"), dict) and "name" in data["method"]
    return apply_mapping(blank_config() if named else RunConfig(), data, source).validate()


def blank_config() -> RunConfig:
    """Every setting at its field default, no recipe applied: the base that presets, files and flags fill in."""
    return RunConfig(method=MethodSettings())


def flag_table() -> dict[str, tuple[str, str, dataclasses.Field]]:
    """Command-line flag -> (section, field, dataclass field) for every setting; flags are unique. The options
    several methods declare keep their flags (:class:`FormerMethodSettings`), and so do the low-rank kind's
    (``--rank`` …, :class:`FormerPromptSettings`)."""
    table: dict[str, tuple[str, str, dataclasses.Field]] = {}
    classes = list(_section_classes().items())
    classes.insert(classes.index(("method", MethodSettings)) + 1, ("method", FormerMethodSettings))
    classes.insert(classes.index(("prompt", PromptSettings)) + 1, ("prompt", FormerPromptSettings))
    for section, cls in classes:
        for f in fields(cls):
            flag = f.metadata.get("flag") or f.name.replace("_", "-")
            if flag in table:
                raise RuntimeError(
                    f"duplicate flag --{flag} for {section}.{f.name} and {table[flag][0]}.{table[flag][1]}"
                )
            table[flag] = (section, f.name, f)
    return table


def parse_set(assignments: list[str]) -> dict[str, dict[str, Any]]:
    """``section.field=value`` strings → nested overrides (values parsed as YAML scalars/lists)."""
    out: dict[str, dict[str, Any]] = {}
    for item in assignments:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise RlptuneError(f"--set {item!r}: expected section.field=value, e.g. prompt.rank=2")
        key, raw = item.split("=", 1)
        section, name = key.split(".", 1)
        value = read_setting_text(raw) if raw else ""  # as the same text reads in a YAML file
        if section in ("method", "prompt") and name.startswith("options."):
            out.setdefault(section, {}).setdefault("options", {})[name[len("options.") :]] = value
            continue
        out.setdefault(section, {})[name] = value
    return out
