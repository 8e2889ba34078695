"""Hub-shaped adapters: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` with a generated model card.

An adapter folder on the Hugging Face hub is the adapter folder rlptune writes (``rlptune_adapter.json`` +
``rlptune_adapter.safetensors``, plus CLIP-LoRA's peft files on a Hugging Face backbone) with two more files:
``README.md`` (a model card saying what the prompt is, what it was trained on, how well it does and how to remake
it) and ``training_config.yaml`` (the fully resolved settings, so ``rlptune train --config`` remakes it). A method has
them as methods too (``method.save_pretrained(dir)``, ``method.push_to_hub(repo)``), which reach these functions
through :func:`rlptune.registry.hub_function` so that ``rlptune.methods`` never imports the engine::

    rlptune.save_pretrained(method, "my-adapter")                 # folder + model card
    rlptune.push_to_hub(method, "me/pets-rlp")                    # or push_to_hub("runs/pets/adapter", ...)
    method = rlptune.from_pretrained("me/pets-rlp")               # a folder or a hub repo id

``huggingface_hub`` is imported only by the functions that talk to the hub.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import yaml

from .. import __version__, io
from ..backbones import Backbone
from ..config import config_from_dict
from ..errors import RlptuneError
from ..rundir import ADAPTER_DIR, CONFIG, RESULT, check_output_folder, read_result
from .adapter import (
    ADAPTER_CONFIG,
    ADAPTER_MODEL,
    LEGACY_ADAPTER_CONFIG,
    LEGACY_ADAPTER_MODEL,
    adapter_files,
    load_adapter,
    read_adapter_config,
    save_adapter,
)

MODEL_CARD = "README.md"
TRAINING_CONFIG = "training_config.yaml"
#: The files a hub download fetches: rlptune's adapter, 0.1.0's names, CLIP-LoRA's peft export and the card.
HUB_FILES = [ADAPTER_CONFIG, ADAPTER_MODEL, LEGACY_ADAPTER_CONFIG, LEGACY_ADAPTER_MODEL, MODEL_CARD, TRAINING_CONFIG]
_REPO_ID = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*\Z"
)  # \Z: "$" would let "org/name\n" through


# -- saving ----------------------------------------------------------------------------------------------------


def save_pretrained(
    method,
    directory: str | Path,
    config=None,
    *,
    result: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> Path:
    """Write ``method`` as a hub-shaped adapter folder: the adapter, ``training_config.yaml`` and a model card.

    ``config`` defaults to the settings the method was built with (for a loaded adapter: the full settings it
    trained with); ``result`` (a run's result.json) adds the metrics to the card, by default the metrics a loaded
    adapter recorded; ``command`` is the command line that made it (default: the one that remakes it from
    ``training_config.yaml``). A loaded adapter re-saved this way writes the same ``training_config.yaml`` and card
    as the run that made it.
    """
    record = getattr(method, "adapter_record", None) or {}
    run = Path(record["source"]).parent if record.get("source") else None  # the run folder a loaded adapter sits in
    extra: dict[str, Any] = {}
    if config is None:
        config = method.run_config  # the engine's record of the settings the method was built from
        if config is None:
            raise RlptuneError(
                f"save_pretrained: this {type(method).__name__} records no run config (it was not built by "
                f"rlptune.build_method or load_adapter); pass config="
            )
        if record.get("data"):  # the root as resolved where it trained, not against today's working directory
            extra["data"] = record["data"]
        elif run is not None and not record.get("training_config") and (run / CONFIG).is_file():
            config = config_from_dict(_read_settings(run / CONFIG) or {}, str(run / CONFIG))  # pre-0.2
    if result is None:
        result = record.get("result")
        if result is None and run is not None and (run / RESULT).is_file():  # an adapter from before 0.2, in its run
            result = read_result(run)
    if result is not None:
        extra["result"] = run_summary(result)
    check_output_folder(directory, kind="adapter", option="save_pretrained directory")  # never over a user's README.md
    directory = save_adapter(directory, method, config, extra or None)
    write_model_card(directory, result=result, command=command)
    return directory


#: The fields of a run's result.json an adapter records (``result``) and its card shows: no timings, so that the same
#: settings give byte-identical adapter folders.
RESULT_FIELDS = ("dataset", "protocol", "shots", "seed", "epochs", "selected_epoch", "h", "metrics")


def run_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """What an adapter records of its run's result: :data:`RESULT_FIELDS` that are present."""
    return {key: result[key] for key in RESULT_FIELDS if key in result}


def write_model_card(
    directory: str | Path, *, result: Mapping[str, Any] | None = None, command: str | None = None
) -> Path:
    """Write ``README.md`` (and ``training_config.yaml``) for the adapter folder ``directory`` from what it records.

    The metrics are ``result`` if given, else those the adapter recorded, else a surrounding run's
    (``<run>/result.json``, for an adapter written before adapters recorded them); a given or run's result is then
    recorded in the adapter's config, so the folder keeps it wherever it goes. The settings are the adapter's
    ``training_config`` (written out as ``training_config.yaml``), else a ``training_config.yaml`` or the run's
    ``config.yaml`` beside it.
    """
    directory = Path(directory)
    payload = read_adapter_config(directory)
    run = directory.parent
    if result is None:
        result = payload.get("result")
    if result is None and (run / RESULT).is_file():
        result = read_result(run)
    if result is not None:
        _record_result(directory, payload, run_summary(result))
    recorded = payload.get("training_config")
    if recorded:
        io.write_text(directory / TRAINING_CONFIG, yaml.safe_dump(recorded, sort_keys=False))
    settings = recorded or _read_settings(directory / TRAINING_CONFIG) or _read_settings(run / CONFIG) or {}
    if command is None:
        config_file = TRAINING_CONFIG if (directory / TRAINING_CONFIG).is_file() else CONFIG
        command = f"rlptune train --config {config_file} -o runs/{_slug(payload, settings, result)}"
    return io.write_text(directory / MODEL_CARD, model_card(payload, settings, result, command))


def _record_result(directory: Path, payload: Mapping[str, Any], summary: dict[str, Any]) -> None:
    """Record ``summary`` as the adapter's ``result`` (rlptune's config file only; 0.1.0's folders are left as they
    are), rewriting the config only when it changes."""
    config_path, _ = adapter_files(directory)
    if config_path.name == ADAPTER_CONFIG and payload.get("result") != summary:
        io.write_json(config_path, {**payload, "result": summary})


def write_run_card(run_dir: str | Path, result: Mapping[str, Any]) -> Path:
    """A finished run's adapter becomes Hub-shaped: its README.md model card from the run's result (written before
    the result file itself, which the run writes last)."""
    return write_model_card(Path(run_dir) / ADAPTER_DIR, result=result)


def _read_settings(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _slug(payload: Mapping[str, Any], settings: Mapping[str, Any], result: Mapping[str, Any] | None) -> str:
    dataset = _dataset(settings, result) or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{dataset}-{payload['method']}").strip("-")


def _dataset(settings: Mapping[str, Any], result: Mapping[str, Any] | None) -> str | None:
    if result and isinstance(result.get("dataset"), str):
        return result["dataset"]
    data = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    return data.get("dataset") if isinstance(data.get("dataset"), str) else None


def base_model_of(spec: str | None) -> str | None:
    """The hub repo of a backbone spec that names one (``hf:org/name``, ``hf-hub:org/name``), for the card's
    ``base_model`` field; local files and open_clip tags have none."""
    for prefix in ("hf-hub:", "hf:"):
        if spec and spec.startswith(prefix) and _REPO_ID.match(spec[len(prefix) :]):
            return spec[len(prefix) :]
    return None


def model_card(
    payload: Mapping[str, Any], settings: Mapping[str, Any], result: Mapping[str, Any] | None, command: str
) -> str:
    """The model card text: YAML front matter (library_name, tags, base_model) and a body a reader can act on.

    Long because it is the card's one template, section after section: split, the card's text would be scattered."""
    method = payload["method"]
    backbone = payload["backbone"]
    classnames = list(payload["classnames"])
    dataset = _dataset(settings, result)
    front: dict[str, Any] = {
        "library_name": "rlptune",
        "tags": ["rlptune", "clip", "prompt-tuning", "few-shot", "image-classification", method],
        "pipeline_tag": "image-classification",
    }
    base = base_model_of(backbone.get("spec"))
    if base:
        front["base_model"] = base
    formula = payload.get("parameter_formula") or f"{payload.get('trainable_params', '?')} trainable numbers"
    data = settings.get("data") if isinstance(settings.get("data"), dict) else {}
    train = settings.get("train") if isinstance(settings.get("train"), dict) else {}
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {method} adapter{f' for {dataset}' if dataset else ''} ({len(classnames)} classes)",
        "",
        f"A prompt learned for a frozen CLIP with rlptune {_version(payload)}: "
        f"only the prompt's numbers are stored here; the CLIP weights are the backbone below, checked by hash on load.",
        "",
        "## Prompt",
        "",
        f"- method: `{method}`",
        f"- parameters: {formula}",
        f"- settings: `{json.dumps(payload['settings'].get('prompt', {}), sort_keys=True)}`",
        f"- method options: `{json.dumps((payload['settings'].get('method') or {}).get('options', {}), sort_keys=True)}`",
        "",
        "## Backbone",
        "",
        f"- identity: `{backbone.get('identity')}` (architecture and hash of the weights; a different backbone is refused)",
        f"- spec: `{backbone.get('spec')}` (what `from_pretrained` loads when no backbone is given)",
        f"- architecture: `{backbone.get('arch')}`",
        "",
        "## Data",
        "",
        f"- dataset: {dataset or 'not recorded'}",
    ]
    for key, label in (("shots", "shots per class"), ("protocol", "protocol")):
        value = (result or {}).get(key, data.get(key))
        if value is not None:
            lines.append(f"- {label}: {value}")
    seed = (result or {}).get("seed", train.get("seed"))
    if seed is not None:
        lines.append(f"- seed: {seed}")
    lines.append(f"- classes ({len(classnames)}): " + ", ".join(f"`{_md(name)}`" for name in classnames))
    if payload.get("dataset_template"):
        lines.append(f"- dataset template: `{_md(payload['dataset_template'])}`")
    lines += ["", "## Metrics", ""]
    rows = _metric_rows((result or {}).get("metrics"))
    if rows:
        lines += ["| split | metric | value |", "|---|---|---|"]
        lines += [f"| {_md(split)} | {_md(name)} | {value} |" for split, name, value in rows]
        extras = [(k, result[k]) for k in ("h", "epochs") if isinstance((result or {}).get(k), (int, float))]
        lines += [f"| | {key} | {value} |" for key, value in extras]
    else:
        lines.append("Not recorded (the adapter was saved without a run's result.json).")
    lines += [
        "",
        "## How it was made",
        "",
        "```bash",
        command,
        "```",
        "",
        f"`{TRAINING_CONFIG}` holds every setting (point `data.root` / `--data-root` at your copy of the dataset)."
        if TRAINING_CONFIG in command
        else "",
        "",
        "## Use",
        "",
        "```python",
        "import rlptune",
        'method = rlptune.from_pretrained("<this repo id or folder>")   # loads the backbone from its spec, checks the identity',
        'rows = rlptune.predict(method, ["photo.jpg"], top_k=3)',
        "```",
        "",
    ]
    return "\n".join(lines)


def _version(payload: Mapping[str, Any]) -> str:
    library = payload.get("library") if isinstance(payload.get("library"), dict) else {}
    return str(library.get("version", __version__))


def _md(text: object) -> str:
    """Text safe inside a Markdown table cell or inline code."""
    return str(text).replace("|", "\\|").replace("`", "'").replace("\n", " ")


def _metric_rows(metrics: object) -> list[tuple[str, str, str]]:
    """(split, metric, value) for every finite number in result.json's metrics (per-class lists are left out)."""
    rows: list[tuple[str, str, str]] = []
    if not isinstance(metrics, dict):
        return rows
    for split, values in metrics.items():
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    rows.append((str(split), str(name), f"{value:.4g}" if isinstance(value, float) else str(value)))
        elif isinstance(values, (int, float)) and not isinstance(values, bool):
            rows.append(("", str(split), f"{values:.4g}"))
    return rows


# -- loading ---------------------------------------------------------------------------------------------------


def from_pretrained(
    source: str | Path,
    backbone: Backbone | None = None,
    device: str = "auto",
    *,
    revision: str | None = None,
    token: str | None = None,
):
    """The method of an adapter folder, or of a hub repo id (``org/name``, downloaded through huggingface_hub).

    The backbone is the given one or the spec the adapter records; its identity is checked either way. Without
    network, or with ``HF_HUB_OFFLINE=1``, a repo id is read from the local hub cache or fails with one line.
    """
    path = Path(source)
    if path.exists():
        return load_adapter(path, backbone=backbone, device=device)
    text = str(source)
    if not _REPO_ID.match(text):
        raise RlptuneError(
            f"{text if text.isprintable() else repr(text)}: no such adapter folder, and not a hub repo id (org/name)"
        )
    return load_adapter(download(text, revision=revision, token=token), backbone=backbone, device=device)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it, but read now (the library reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "on", "yes", "true"}


def download(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """The local snapshot of a hub adapter repo (only the adapter's files), as one line on any failure."""
    _require_hub("from_pretrained of a hub repo id")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            token=token,
            local_files_only=offline,
            allow_patterns=HUB_FILES,
            library_name="rlptune",
            library_version=__version__,
        )
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise RlptuneError(f"{repo_id}: not a local folder and not in the Hugging Face cache, and {why}") from None
    except GatedRepoError:
        raise RlptuneError(
            f"{repo_id}: gated hub repo; accept its terms on the hub and log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise RlptuneError(f"{repo_id}: no such hub repo (or it is private: log in or pass token=)") from None
    except RevisionNotFoundError:
        raise RlptuneError(f"{repo_id}: no revision {revision!r} on the hub") from None
    except HFValidationError as exc:
        raise RlptuneError(f"{repo_id}: not a valid hub repo id ({_first_line(exc)})") from None
    except Exception as exc:  # network and HTTP failures of every kind: one line, never a traceback
        raise RlptuneError(
            f"{repo_id}: cannot download from the Hugging Face hub ({type(exc).__name__}: {_first_line(exc)})"
        ) from None
    return Path(folder)


def _require_hub(what: str) -> None:
    """huggingface_hub is an optional dependency: without it, one line saying what to install."""
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise RlptuneError(f"{what} needs the huggingface_hub package: pip install huggingface_hub") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


# -- pushing ---------------------------------------------------------------------------------------------------


def push_to_hub(
    source,
    repo_id: str,
    *,
    config=None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    result: Mapping[str, Any] | None = None,
    command: str | None = None,
) -> str:
    """Upload an adapter to the hub repo ``repo_id`` (created if missing); returns the commit's URL.

    ``source`` is a method (saved with :func:`save_pretrained` first) or an adapter folder (a run's
    ``<run>/adapter``: its card is written with the run's metrics; a 0.1.0 folder is uploaded under the current
    names). Only the adapter's files travel; nothing is written into ``source``.
    """
    if not _REPO_ID.match(repo_id):
        raise RlptuneError(
            f"{repo_id if str(repo_id).isprintable() else repr(repo_id)}: not a hub repo id (expected org/name)"
        )
    _require_hub("push_to_hub")
    from huggingface_hub import HfApi

    with tempfile.TemporaryDirectory(prefix="rlptune-push-") as tmp:
        staging = Path(tmp) / "adapter"
        if isinstance(source, (str, Path)):
            stage_folder(Path(source), staging, result=result, command=command)
        else:
            save_pretrained(source, staging, config, result=result, command=command)
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(staging),
                repo_type="model",
                revision=revision,
                commit_message=commit_message or f"Upload rlptune adapter ({read_adapter_config(staging)['method']})",
            )
        except Exception as exc:  # authentication, network, HTTP: one line
            raise RlptuneError(
                f"{repo_id}: cannot push to the Hugging Face hub ({type(exc).__name__}: {_first_line(exc)})"
            ) from None
    return str(getattr(info, "commit_url", None) or info)


def stage_folder(
    source: Path, staging: Path, *, result: Mapping[str, Any] | None = None, command: str | None = None
) -> Path:
    """Copy an adapter folder's files into ``staging`` under the current names, with a model card."""
    payload = read_adapter_config(source)  # validates; a peft or foreign folder is one line
    config_path, model_path = adapter_files(source)
    if not model_path.is_file():
        raise RlptuneError(f"{source}: missing {model_path.name}")
    staging.mkdir(parents=True, exist_ok=True)
    io.write_json(staging / ADAPTER_CONFIG, {"adapter_type": "rlptune", **payload})
    shutil.copyfile(model_path, staging / ADAPTER_MODEL)
    if config_path.name == ADAPTER_CONFIG:  # CLIP-LoRA's peft export sits next to rlptune's files
        peft_export = [source / LEGACY_ADAPTER_CONFIG, source / LEGACY_ADAPTER_MODEL]
    else:  # 0.1.0 kept it in a peft/ subfolder
        peft_export = [source / "peft" / LEGACY_ADAPTER_CONFIG, source / "peft" / LEGACY_ADAPTER_MODEL]
    for path in peft_export:
        if path.is_file():
            shutil.copyfile(path, staging / path.name)
    settings = source / TRAINING_CONFIG if (source / TRAINING_CONFIG).is_file() else source.parent / CONFIG
    if settings.is_file():
        shutil.copyfile(settings, staging / TRAINING_CONFIG)
    if (source / MODEL_CARD).is_file() and result is None and command is None:
        shutil.copyfile(source / MODEL_CARD, staging / MODEL_CARD)  # a card written (or edited) for this folder
        return staging
    if result is None and (source.parent / RESULT).is_file():
        result = read_result(source.parent)
    write_model_card(staging, result=result, command=command)
    return staging


__all__ = [
    "MODEL_CARD",
    "TRAINING_CONFIG",
    "base_model_of",
    "download",
    "from_pretrained",
    "model_card",
    "push_to_hub",
    "run_summary",
    "save_pretrained",
    "stage_folder",
    "write_model_card",
]
