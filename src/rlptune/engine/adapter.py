"""Adapters (what a user ships) and training checkpoints (what a killed run resumes from).

Adapter folder = ``rlptune_adapter.json`` (``"adapter_type": "rlptune"``, method, prompt settings, class names,
templates, backbone identity and resolvable spec, library version) + ``rlptune_adapter.safetensors`` (the trained
tensors only: 516 numbers for RLP n=4 r=1 on a 512-wide text tower). Frozen parts (``P_fr``, class-token
embeddings) are rebuilt from the backbone, whose identity is checked on load. The names are rlptune's own so that
no other tool mistakes the folder for its format; rlptune 0.1.0 wrote peft's names (``adapter_config.json`` +
``adapter_model.safetensors``), which are still read. CLIP-LoRA on a Hugging Face ``CLIPModel`` also writes a
genuine peft adapter under peft's names at the top of the same folder, so ``PeftModel.from_pretrained(clip,
folder)`` loads it directly.

Checkpoint = one safetensors file holding the trainable tensors and the optimizer's tensors, with everything else
(epoch, optimizer scalars, config digest) as JSON in its metadata: one file, written atomically, so it is always
either the previous or the new checkpoint.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import torch

from .. import __version__, io
from ..backbones import Backbone, load_backbone
from ..backbones.precision import PRECISIONS, precision_for, resolve_precision
from ..backbones.identity import backbone_mismatch, backbone_record
from ..config import config_from_dict
from ..data.common import check_unique_classnames
from ..errors import RlptuneError
from ..rundir import ADAPTER_DIR, settings_hash
from ..methods import build_method, get_method_class, list_methods
from ..methods.base import DeclaredSettings, DeclaredSize

ADAPTER_CONFIG = "rlptune_adapter.json"
ADAPTER_MODEL = "rlptune_adapter.safetensors"
ADAPTER_TYPE = "rlptune"  # the type field of ADAPTER_CONFIG, as peft has peft_type
ADAPTER_FORMAT = 1
#: rlptune 0.1.0's file names (peft's, which peft then refused for lack of peft_type): read, never written.
LEGACY_ADAPTER_CONFIG = "adapter_config.json"
LEGACY_ADAPTER_MODEL = "adapter_model.safetensors"
#: Where a method's export for another library goes: the adapter folder itself (CLIP-LoRA's peft files keep
#: peft's names next to rlptune's), so ``PeftModel.from_pretrained(clip_model, <adapter>)`` works as is.
PEFT_EXPORT_FOLDER = "."


def save_adapter(directory: str | Path, method, config, extra: dict[str, Any] | None = None) -> Path:
    """Write the adapter folder: the trained tensors, and a config recording everything needed to use and remake it.

    Besides what loading needs (method, prompt settings, classes, backbone identity) the config records the full
    resolved settings (``training_config``: what ``training_config.yaml`` and the model card are written from) and
    the data it trained on (``data``: the dataset and its absolute root, the default of ``rlptune eval``), so the
    folder carries its story wherever it is copied. ``extra`` adds or replaces top-level fields (a re-saved adapter
    passes the ``data`` and ``result`` it recorded).
    """
    directory = Path(directory)
    cfg = config.to_dict()
    payload = {
        "adapter_type": ADAPTER_TYPE,
        "format": ADAPTER_FORMAT,
        "library": {"name": "rlptune", "version": __version__},
        "method": method.registered_name,
        "backbone": {
            **backbone_record(method.backbone),  # label, spec, and the weights hash + structure that identify it
            # what it trained in (loading resolves auto anew; a loaded adapter re-saved keeps its record)
            "precision": (getattr(method, "adapter_record", None) or {}).get("precision") or method.backbone.precision,
        },
        "classnames": list(method.classnames),
        "dataset_template": method.dataset_template,
        "settings": {"method": cfg["method"], "prompt": cfg["prompt"]},
        "trainable_params": method.num_trainable(),
        "parameter_formula": method.parameter_formula(),  # for the model card: "r·(n+d) = 516 (n=4, r=1, d=512)"
        "training_config": cfg,
        "data": data_record_of(config),
        **(extra or {}),
    }
    # one metadata key: safetensors writes a metadata map in no fixed order, and adapters must be byte-identical
    io.write_safetensors(directory / ADAPTER_MODEL, method.adapter_state(), {"rlptune_adapter": str(ADAPTER_FORMAT)})
    io.write_json(directory / ADAPTER_CONFIG, payload)
    method.export_adapter_files(directory / PEFT_EXPORT_FOLDER)  # CLIP-LoRA on a HF CLIPModel: a genuine peft adapter
    return directory


def data_record_of(config) -> dict[str, Any]:
    """The data a run read: dataset name and ``data.root`` made absolute now, while the working directory is the
    run's (none when the root came from ``$RLPTUNE_DATA``, which eval reads again, or the dataset needs none)."""
    root = config.data.root
    return {"dataset": config.data.dataset, "root": str(Path(root).expanduser().absolute()) if root else None}


def adapter_files(directory: str | Path) -> tuple[Path, Path]:
    """(config file, tensors file) of an adapter folder: rlptune's names, else rlptune 0.1.0's (peft's names).

    A folder that holds neither, or holds another tool's files, is one line saying what it is instead.
    """
    directory = Path(directory)
    if (directory / ADAPTER_CONFIG).is_file():
        return directory / ADAPTER_CONFIG, directory / ADAPTER_MODEL
    if (directory / LEGACY_ADAPTER_CONFIG).is_file():
        return directory / LEGACY_ADAPTER_CONFIG, directory / LEGACY_ADAPTER_MODEL
    raise RlptuneError(_not_an_adapter_line(directory))


def _not_an_adapter_line(directory: Path) -> str:
    """Why ``directory`` is not an adapter folder, naming what it is when it is something known."""
    if not directory.exists():
        return f"{directory}: no such adapter folder"
    if not directory.is_dir():
        return f"{directory}: not an adapter folder (a file; pass the folder that holds {ADAPTER_CONFIG})"
    if (directory / ADAPTER_DIR / ADAPTER_CONFIG).is_file() or (
        directory / ADAPTER_DIR / LEGACY_ADAPTER_CONFIG
    ).is_file():
        return f"{directory}: not an adapter folder (no {ADAPTER_CONFIG}); this is a run folder, pass {directory / ADAPTER_DIR}"
    model_type = _json_field(directory / "config.json", "model_type")
    if model_type is not None:
        return (
            f"{directory}: this is a Hugging Face transformers model folder (model_type {model_type}), not an adapter; "
            f"use it as a backbone (--backbone hf:{directory}) and pass an rlptune adapter folder"
        )
    if (directory / "open_clip_config.json").is_file():
        return f"{directory}: this is an open_clip model folder, not an adapter; pass an rlptune adapter folder (with {ADAPTER_CONFIG})"
    return f"{directory}: not an adapter folder (no {ADAPTER_CONFIG})"


def _json_field(path: Path, key: str) -> str | None:
    """``key`` of a small JSON object file when it is a string (used only to name a foreign folder)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get(key) if path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def read_adapter_config(directory: str | Path) -> dict[str, Any]:
    path, _ = adapter_files(directory)
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RlptuneError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except UnicodeDecodeError as exc:
        raise RlptuneError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise RlptuneError(f"{path}: cannot read adapter config ({exc.strerror or exc})") from None
    if not isinstance(payload, dict):
        raise RlptuneError(f"{path}: expected a JSON object")
    if "peft_type" in payload:
        raise RlptuneError(
            f"{path}: this is a peft adapter (peft_type {payload['peft_type']}); load it with "
            f"peft.PeftModel.from_pretrained, or pass the rlptune adapter folder"
        )
    adapter_type = payload.get("adapter_type", ADAPTER_TYPE)  # rlptune 0.1.0 wrote no type field
    if adapter_type != ADAPTER_TYPE:
        raise RlptuneError(f"{path}: adapter_type {adapter_type!r}, expected {ADAPTER_TYPE!r} (not an rlptune adapter)")
    for key in ("format", "library", "method", "backbone", "classnames", "settings"):
        if key not in payload:
            raise RlptuneError(f"{path}: missing field {key!r}")
    if payload["format"] != ADAPTER_FORMAT:
        raise RlptuneError(f"{path}: adapter format {payload['format']!r}, this rlptune reads format {ADAPTER_FORMAT}")
    lib = payload["library"]
    if not isinstance(lib, dict):
        raise RlptuneError(f"{path}: field 'library' must be an object {{name, version}}, got {lib!r}")
    if lib.get("name") != "rlptune":
        raise RlptuneError(f"{path}: written by {lib.get('name')!r}, not rlptune")
    if not compatible_version(lib.get("version")):
        raise RlptuneError(
            f"{path}: written by rlptune {lib.get('version')}, incompatible with rlptune {__version__} "
            f"(adapters are read by the same major version)"
        )
    _check_fields(payload, path)
    return payload


def compatible_version(version: object) -> bool:
    """True when ``version`` (as recorded in a file) has this rlptune's major version."""
    if not isinstance(version, str) or not version.split(".")[0].isdigit():
        return False
    return version.split(".")[0] == __version__.split(".")[0]


def _check_fields(payload: dict[str, Any], path: Path) -> None:
    """The types of an adapter config's fields, so a hand-edited or foreign file fails naming the field."""
    if not isinstance(payload["method"], str) or not payload["method"]:
        raise RlptuneError(f"{path}: field 'method' must be a method name, got {payload['method']!r}")
    backbone = payload["backbone"]
    if not isinstance(backbone, dict) or not isinstance(backbone.get("identity"), str):
        raise RlptuneError(f"{path}: field 'backbone' must be an object with the backbone's 'identity' (and 'spec')")
    if backbone.get("spec") is not None and not isinstance(backbone["spec"], str):
        raise RlptuneError(f"{path}: field 'backbone.spec' must be a backbone spec string, got {backbone['spec']!r}")
    if backbone.get("precision") is not None and backbone["precision"] not in PRECISIONS:
        raise RlptuneError(
            f"{path}: field 'backbone.precision' must be one of {', '.join(PRECISIONS)}, got {backbone['precision']!r}"
        )
    names = payload["classnames"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise RlptuneError(f"{path}: field 'classnames' must be a non-empty list of non-empty class names")
    check_unique_classnames(names, f"{path}: field 'classnames'")
    if not isinstance(payload["settings"], dict):
        raise RlptuneError(f"{path}: field 'settings' must be an object with 'method' and 'prompt' sections")
    template = payload.get("dataset_template")
    if template is not None and not isinstance(template, str):
        raise RlptuneError(f"{path}: field 'dataset_template' must be a string or null, got {template!r}")
    for key in ("training_config", "result"):  # recorded since 0.2: the settings and metrics the card shows
        if payload.get(key) is not None and not isinstance(payload[key], dict):
            raise RlptuneError(f"{path}: field {key!r} must be an object or null, got {type(payload[key]).__name__}")
    data = payload.get("data")
    if data is not None and not (
        isinstance(data, dict)
        and isinstance(data.get("dataset"), str)
        and (data.get("root") is None or isinstance(data["root"], str))
    ):
        raise RlptuneError(
            f"{path}: field 'data' must be an object {{dataset, root}} with a dataset name and a root path or null"
        )


def load_adapter(
    directory: str | Path, backbone: Backbone | None = None, device: str = "auto", precision: str = "auto"
):
    """Rebuild the method of an adapter folder on its backbone (loaded from the recorded spec if not given).

    ``precision`` (default ``auto``) is resolved for the adapter's method as a training run resolves it
    (:func:`rlptune.backbones.precision.precision_for`): the method's official precision on CUDA, fp32 on a CPU
    unless bf16 is cleared for it; a given backbone loaded with an explicit precision keeps it. The precision the
    adapter trained in is recorded in its ``backbone.precision`` field, for the record."""
    directory = Path(directory)
    payload = read_adapter_config(directory)
    config_path, model_path = adapter_files(directory)
    if payload["method"] not in list_methods():
        raise RlptuneError(
            f"{config_path}: method {payload['method']!r} is not known to this rlptune; "
            f"available: {', '.join(list_methods())}"
        )
    recorded = payload["backbone"].get("identity")
    if backbone is None:
        resolved = resolve_precision(precision, device, payload["method"])
        backbone = load_backbone(payload["backbone"].get("spec") or "micro", device=device, precision=resolved)
    else:
        backbone = backbone.with_precision(precision_for(backbone, payload["method"], precision))
    differs = backbone_mismatch(
        payload["backbone"], backbone, str(config_path)
    )  # by weights and structure, not spelling
    if differs is not None:
        raise RlptuneError(
            f"{directory}: adapter was trained on backbone {recorded}, but the loaded backbone is {backbone.identity}: {differs}"
        )
    try:
        config = config_from_dict({**payload["settings"]}, f"{config_path}")
    except RlptuneError as exc:  # a bound or a type of the settings: name the adapter file and the field in it
        message = str(exc)
        raise RlptuneError(
            message if message.startswith(str(config_path)) else f"{config_path}: settings.{message}"
        ) from None
    config.method.name = payload["method"]
    config = _training_config(payload, config, config_path)
    if not model_path.is_file():
        raise RlptuneError(f"{directory}: missing {model_path.name}")
    from safetensors.torch import load_file

    try:
        state = load_file(str(model_path))
    except Exception as exc:
        raise RlptuneError(f"{model_path}: not a safetensors file ({str(exc).splitlines()[0][:120]})") from None
    check_finite(state, model_path)
    check_floating(state, model_path)
    method_class = get_method_class(payload["method"])
    sizes = method_class.declared_sizes(DeclaredSettings.of(method_class, config), payload["classnames"])
    check_declared_sizes(sizes, state, config_path, model_path)  # before building allocates what they declare
    method = build_method(config, backbone, payload["classnames"], payload.get("dataset_template"))  # records config
    method.load_adapter_state(state, str(model_path))
    check_logits_finite(method.eval(), state, model_path)
    # what the folder recorded beyond the tensors, so that save_pretrained / push_to_hub of the loaded method write
    # the same training_config.yaml and card as the run that made it, and eval finds its data
    method.adapter_record = {
        "data": payload.get("data"),
        "result": payload.get("result"),
        "source": str(directory),
        "training_config": payload.get("training_config"),
        "precision": payload["backbone"].get("precision"),
    }
    return method


def _training_config(payload: dict[str, Any], config, config_path: Path):
    """The full settings the adapter trained with (``training_config``), its ``settings`` (method and prompt, what
    loading is checked against) taking precedence; an adapter from before 0.2 records only ``settings``: the rest is
    the defaults."""
    recorded = payload.get("training_config")
    if not recorded:
        return config
    merged = {**recorded, **payload["settings"]}
    merged["method"] = {**(merged.get("method") or {}), "name": payload["method"]}
    try:
        return config_from_dict(merged, f"{config_path}: training_config")
    except RlptuneError as exc:
        message = str(exc)
        raise RlptuneError(
            message if message.startswith(str(config_path)) else f"{config_path}: training_config.{message}"
        ) from None


def check_finite(tensors: dict[str, torch.Tensor], path: Path, what: str = "tensor") -> None:
    """A NaN or infinite number in trained tensors makes every score meaningless: refuse the file, naming it."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() or tensor.is_complex():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise RlptuneError(
                    f"{path}: {what} {name!r} holds {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}; the "
                    f"file is damaged or its training diverged"
                )


def check_floating(tensors: dict[str, torch.Tensor], path: Path, what: str = "tensor") -> None:
    """Trained tensors are floating-point numbers; an integer (or boolean, or complex) tensor is not an adapter's,
    and converting it would silently round or drop parts of its values."""
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise RlptuneError(
                f"{path}: {what} {name!r} is {str(tensor.dtype).removeprefix('torch.')}, not floating-point; rlptune "
                f"writes trained tensors as floating-point numbers"
            )


def check_declared_sizes(
    sizes: Sequence[DeclaredSize], tensors: dict[str, torch.Tensor], config_path: Path, model_path: Path
) -> None:
    """Every size the settings declare must be the size the stored tensors have, checked before the method is built
    (building allocates what the settings declare: ``rank: 1000000000000`` would ask for terabytes). A size no stored
    tensor carries may not exceed the largest dimension stored, so nothing much larger than the file is built."""
    largest = max((int(d) for t in tensors.values() for d in t.shape), default=0)
    for size in sizes:
        carried = False
        for name in sorted(tensors):
            shape = tuple(int(d) for d in tensors[name].shape)
            for pattern, dim in size.carriers:
                if not re.fullmatch(pattern, name):
                    continue
                carried = True
                stored = shape[dim] if -len(shape) <= dim < len(shape) else None
                if stored != size.value:
                    where = f"has {stored} there" if stored is not None else "has no such dimension"
                    raise RlptuneError(
                        f"{config_path}: {size.field} is {size.value}, but tensor {name!r} of {model_path.name} {where} "
                        f"(shape {shape}); the settings and the tensors do not belong together"
                    )
        if not carried and size.value > largest:
            raise RlptuneError(
                f"{config_path}: {size.field} is {size.value}, but no tensor of {model_path.name} carries it and the "
                f"largest dimension stored is {largest}; the settings and the tensors do not belong together"
            )


@torch.no_grad()
def check_logits_finite(method, tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Finite tensors can still give NaN scores (values ×1e30 overflow float32 inside the towers): score two probe
    images (flat grey and a gradient) through the method's own forward and refuse the adapter when any logit is not
    finite, so no caller (predict, eval, the server) ever turns it into NaN probabilities."""
    from PIL import Image

    images = [Image.new("RGB", (64, 64), (128, 128, 128)), Image.linear_gradient("L").convert("RGB")]
    batch = torch.stack([method.preprocess(image) for image in images]).to(method.backbone.device)
    logits = method(batch)
    if not bool(torch.isfinite(logits).all()):
        largest = max((float(t.detach().abs().max()) for t in tensors.values() if t.numel()), default=0.0)
        raise RlptuneError(
            f"{path}: the tensors are finite but the logits they give are not finite (NaN or inf on a probe image; the largest "
            f"stored value is {largest:.3g}); the file is damaged or its training diverged"
        )


# -- checkpoints -----------------------------------------------------------------------------------------------


def config_digest(config) -> str:
    """Digest of the settings that change the training trajectory (a resume with other settings is refused)."""
    return settings_hash(config.to_dict())  # the run directory's key: one definition of "the same settings"


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for idx, entry in state["state"].items():
        scalars["state"][str(idx)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value
                scalars["state"][str(idx)][key] = {"tensor": f"optim.{idx}.{key}"}
            else:
                scalars["state"][str(idx)][key] = {"value": value}
    return tensors, scalars


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state = {}
    for idx, entry in scalars["state"].items():
        state[int(idx)] = {
            key: (tensors[spec["tensor"]] if "tensor" in spec else spec["value"]) for key, spec in entry.items()
        }
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_checkpoint(path: str | Path, method, optimizer, epoch: int, config, extra: dict | None = None) -> Path:
    opt_tensors, opt_scalars = _flatten_optimizer(optimizer.state_dict())
    tensors = {f"param.{k}": v for k, v in method.adapter_state().items()}
    tensors.update(opt_tensors)
    meta = {
        "epoch": epoch,
        "optimizer": opt_scalars,
        "config_digest": config_digest(config),
        "library_version": __version__,
        **(extra or {}),
    }
    return io.write_safetensors(path, tensors, {"rlptune_checkpoint": json.dumps(meta, default=str)})


def load_checkpoint(path: str | Path, method, optimizer, config) -> dict:
    """Restore trainable tensors and optimizer state; return the checkpoint's metadata (``epoch`` completed)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get("rlptune_checkpoint")
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:
        raise RlptuneError(
            f"{path}: not an rlptune checkpoint ({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})"
        ) from None
    if raw is None:
        raise RlptuneError(f"{path}: not an rlptune checkpoint (no rlptune_checkpoint metadata)")
    meta = _checkpoint_meta(raw, path)
    if not compatible_version(meta.get("library_version")):
        raise RlptuneError(
            f"{path}: checkpoint written by rlptune {meta.get('library_version')}, cannot be resumed by rlptune {__version__}"
        )
    if meta.get("config_digest") != config_digest(config):
        raise RlptuneError(
            f"{path}: checkpoint was written with other settings; use a new output folder or the same config"
        )
    params = {k[len("param.") :]: v for k, v in tensors.items() if k.startswith("param.")}
    check_finite(params, path, "checkpoint tensor")
    method.load_adapter_state(params, str(path))
    try:
        state = _unflatten_optimizer({k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer"])
        optimizer.load_state_dict(state)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RlptuneError(
            f"{path}: checkpoint's optimizer state does not match this run ({type(exc).__name__}: {exc})"
        ) from None
    return meta


def _checkpoint_meta(raw: str, path: Path) -> dict:
    """The checkpoint's JSON metadata, checked for the fields resuming needs."""
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise RlptuneError(f"{path}: not an rlptune checkpoint (its rlptune_checkpoint metadata is not JSON)") from None
    if not isinstance(meta, dict):
        raise RlptuneError(f"{path}: not an rlptune checkpoint (its metadata is not a JSON object)")
    epoch = meta.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise RlptuneError(f"{path}: not an rlptune checkpoint (epoch {epoch!r} is not a completed-epoch count)")
    optim = meta.get("optimizer")
    if (
        not isinstance(optim, dict)
        or not isinstance(optim.get("state"), dict)
        or not isinstance(optim.get("param_groups"), list)
    ):
        raise RlptuneError(f"{path}: not an rlptune checkpoint (no optimizer state in its metadata)")
    return meta
