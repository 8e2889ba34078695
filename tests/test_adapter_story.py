"""Adapters carry their whole story: the full settings and final metrics travel inside the adapter folder, so a loaded
adapter re-saved (``rlptune.save_pretrained`` or ``method.save_pretrained``) writes the same ``training_config.yaml``
and model card as the run that made it; ``rlptune eval`` finds the data the run trained on; per-class scores carry
class names; the loaded module has ``save_pretrained`` / ``push_to_hub``; adapters written before all this still load.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import rlptune
from rlptune.backbones import load_backbone
from rlptune.cli import main
from rlptune.config import config_from_dict, resolve_config
from rlptune.engine.adapter import ADAPTER_CONFIG, ADAPTER_MODEL
from rlptune.engine.api import eval_config
from rlptune.errors import RlptuneError

pytestmark = pytest.mark.usefixtures("single_thread")

FIXTURE = (
    Path(__file__).parent / "fixtures" / "adapter-0.2.0-run"
)  # written by rlptune 0.2.0 before adapters recorded their story
STORY = ["README.md", ADAPTER_CONFIG, ADAPTER_MODEL, "training_config.yaml"]


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


@pytest.fixture(scope="module")
def runs(tiny, colour_folder, tmp_path_factory):
    """One finished run per method (2 epochs on 2 shots of the colour folder), trained once for the module."""
    root = tmp_path_factory.mktemp("story")
    made = {}
    for name in ("rlp", "clip_lora"):
        config = resolve_config(
            None,
            {
                "method": {"name": name},
                "data": {"dataset": "folder", "root": str(colour_folder), "shots": 2},
                "train": {"epochs": 2, "iterations": 0, "cache_dir": str(root / "cache")},
            },
        )
        rlptune.train(config, root / name, backbone=tiny, progress=False)
        made[name] = root / name
    return made


@pytest.fixture(scope="module")
def hf_run(colour_folder, tmp_path_factory):
    """CLIP-LoRA trained on a tiny Hugging Face CLIPModel folder (``hf:``), whose adapter also holds a peft export."""
    pytest.importorskip("transformers")
    from test_backbone_hf import save_tiny_clip

    root = tmp_path_factory.mktemp("story-hf")
    folder = save_tiny_clip(root / "tiny-clip")
    config = resolve_config(
        None,
        {
            "method": {"name": "clip_lora"},
            "backbone": {"name": f"hf:{folder}", "device": "cpu"},
            "data": {"dataset": "folder", "root": str(colour_folder), "shots": 2},
            "train": {"epochs": 2, "iterations": 0, "cache_dir": str(root / "cache")},
        },
    )
    rlptune.train(config, root / "run", progress=False)
    return root / "run"


def test_clip_lora_on_a_hugging_face_backbone_resaves_byte_for_byte(hf_run, tmp_path):
    adapter = hf_run / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", *STORY} == {p.name for p in adapter.iterdir()}
    assert (adapter / "training_config.yaml").read_bytes() == (hf_run / "config.yaml").read_bytes()
    assert "Not recorded" not in (adapter / "README.md").read_text()
    loaded = rlptune.load_adapter(adapter, device="cpu")  # the recorded hf: spec
    assert _files(loaded.save_pretrained(tmp_path / "out")) == _files(adapter)  # peft's files included


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("name", ["rlp", "clip_lora"])
def test_a_loaded_adapter_resaves_the_runs_settings_and_card_byte_for_byte(runs, tiny, tmp_path, name):
    run = runs[name]
    adapter = run / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == STORY  # the run's adapter folder is the whole, hub-shaped story
    assert (adapter / "training_config.yaml").read_bytes() == (run / "config.yaml").read_bytes()
    card = (adapter / "README.md").read_text()
    assert "Not recorded" not in card and "| test | top1 |" in card and "| | epochs | 2 |" in card
    assert "rlptune train --config training_config.yaml" in card

    loaded = rlptune.load_adapter(adapter, tiny)
    # not the defaults: the run's
    assert loaded.run_config.to_dict() == yaml.safe_load((run / "config.yaml").read_text())
    by_function = rlptune.save_pretrained(loaded, tmp_path / "function")
    by_method = loaded.save_pretrained(tmp_path / "method")
    in_bf16 = rlptune.load_adapter(adapter, tiny, precision="bf16").save_pretrained(tmp_path / "bf16")
    for folder in (by_function, by_method, in_bf16):  # loaded in another precision: still the precision it trained in
        assert _files(folder) == _files(adapter)  # config, tensors, training_config.yaml and card, byte for byte
    # and once more from the re-saved copy, away from its run folder: the story travels with the folder
    again = rlptune.load_adapter(shutil.copytree(by_method, tmp_path / "alone"), tiny).save_pretrained(
        tmp_path / "again"
    )
    assert _files(again) == _files(adapter)


def test_same_settings_give_byte_identical_adapter_folders(runs, tiny, colour_folder, tmp_path):
    """The recorded metrics hold no timings: a second identical run writes the same adapter config and card."""
    config = config_from_dict(yaml.safe_load((runs["rlp"] / "config.yaml").read_text()))
    rlptune.train(config, tmp_path / "twin", backbone=tiny, progress=False)
    assert _files(tmp_path / "twin" / "adapter") == _files(runs["rlp"] / "adapter")


def test_the_adapter_records_the_absolute_data_root_and_the_runs_metrics(runs, colour_folder):
    payload = json.loads((runs["rlp"] / "adapter" / ADAPTER_CONFIG).read_text())
    assert payload["data"] == {"dataset": "folder", "root": str(Path(colour_folder).absolute())}
    result = json.loads((runs["rlp"] / "result.json").read_text())
    assert payload["result"]["metrics"] == result["metrics"] and payload["result"]["epochs"] == 2
    assert "train_seconds" not in payload["result"]
    assert payload["training_config"] == yaml.safe_load((runs["rlp"] / "config.yaml").read_text())


def test_per_class_scores_carry_class_names(runs):
    test = json.loads((runs["rlp"] / "result.json").read_text())["metrics"]["test"]
    assert test["per_class_names"] == ["blue", "green", "red", "yellow"]
    assert len(test["per_class"]) == len(test["per_class_names"])


def test_eval_defaults_to_the_data_the_run_recorded(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RLPTUNE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)  # another working directory: the recorded root is absolute
    out = tmp_path / "metrics.json"
    assert main(["eval", str(runs["rlp"] / "adapter"), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    recorded = json.loads((runs["rlp"] / "result.json").read_text())["metrics"]["test"]
    assert {k: metrics[k] for k in recorded} == recorded  # the run's own test split (eval adds zero-shot beside it)
    assert "zero_shot" in metrics
    assert metrics["per_class_names"] == ["blue", "green", "red", "yellow"]
    assert "top-1" in capsys.readouterr().out


def test_eval_of_a_moved_data_root_is_one_line_naming_it_and_the_flag(runs, tmp_path, colour_folder, capsys):
    copy = tmp_path / "run"
    shutil.copytree(runs["rlp"], copy)
    payload = json.loads((copy / "adapter" / ADAPTER_CONFIG).read_text())
    gone = str(tmp_path / "moved-away")
    payload["data"]["root"] = gone
    (copy / "adapter" / ADAPTER_CONFIG).write_text(json.dumps(payload))
    assert main(["eval", str(copy / "adapter")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"rlptune: error: {gone}: the data root ") and "--data-root" in err and "\n" not in err
    # the flag named there works
    assert main(["eval", str(copy / "adapter"), "--data-root", str(colour_folder)]) == 0


def test_eval_of_another_dataset_does_not_borrow_the_recorded_root(runs, capsys, monkeypatch):
    monkeypatch.delenv("RLPTUNE_DATA", raising=False)
    assert main(["eval", str(runs["rlp"] / "adapter"), "--dataset", "csv"]) == 2
    assert "no data root given" in capsys.readouterr().err


def test_an_adapter_written_before_the_story_still_loads_and_resaves_from_its_run(tmp_path):
    run = shutil.copytree(FIXTURE, tmp_path / "run")
    payload = json.loads((run / "adapter" / ADAPTER_CONFIG).read_text())
    assert "training_config" not in payload and "result" not in payload  # the 0.2.0 layout
    method = rlptune.load_adapter(run / "adapter", device="cpu")  # its recorded spec: the shipped micro backbone
    assert method.registered_name == "rlp" and method.classnames == ["blue", "green", "red"]
    folder = method.save_pretrained(tmp_path / "out")
    # from its run folder, in today's spelling (the shared knobs as method options): the same settings
    resaved = config_from_dict(yaml.safe_load((folder / "training_config.yaml").read_text()))
    assert resaved.to_dict() == config_from_dict(yaml.safe_load((run / "config.yaml").read_text())).to_dict()
    card = (folder / "README.md").read_text()
    assert "| test | top1 | 100 |" in card and "- dataset: colours" in card and "Not recorded" not in card
    # on its own, an old adapter still loads; its card says what is not recorded rather than inventing it
    alone = shutil.copytree(run / "adapter", tmp_path / "alone")
    card = (rlptune.load_adapter(alone, device="cpu").save_pretrained(tmp_path / "out2") / "README.md").read_text()
    assert "Not recorded" in card
    config = eval_config(rlptune.load_adapter(alone, device="cpu"), None, {})
    assert config.data.root is None  # eval: no data recorded, so it must be given, as before


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("training_config", [1], "field 'training_config' must be an object or null, got list"),
        ("result", "92%", "field 'result' must be an object or null, got str"),
        ("data", {"root": "/x"}, "field 'data' must be an object {dataset, root}"),
        ("training_config", {"train": {"epochs": -3}}, "training_config.train.epochs must be >= 0, got -3"),
        (
            "training_config",
            {"train": {"epochz": 3}},
            "training_config: train: unknown field 'epochz' (did you mean 'epochs'?)",
        ),
    ],
)
def test_a_hand_edited_story_field_is_one_line_naming_it(runs, tiny, tmp_path, field, value, expected):
    folder = shutil.copytree(runs["rlp"] / "adapter", tmp_path / "edited")
    payload = json.loads((folder / ADAPTER_CONFIG).read_text())
    payload[field] = value
    (folder / ADAPTER_CONFIG).write_text(json.dumps(payload))
    with pytest.raises(RlptuneError) as info:
        rlptune.load_adapter(folder, tiny)
    assert str(info.value).startswith(f"{folder / ADAPTER_CONFIG}: ") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_the_loaded_module_pushes_to_the_hub_like_a_peft_model(runs, tiny, monkeypatch):
    import huggingface_hub

    sent = {}

    def create_repo(api, repo_id, **kwargs):
        sent["created"] = repo_id

    def upload_folder(api, **kwargs):
        sent.update({p.name: p.read_bytes() for p in Path(kwargs["folder_path"]).iterdir()})
        return huggingface_hub.CommitInfo(
            commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/1",
            commit_message="m",
            commit_description="",
            oid="1",
        )

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    method = rlptune.load_adapter(runs["rlp"] / "adapter", tiny)
    assert method.push_to_hub("me/colours-rlp") == "https://huggingface.co/me/colours-rlp/commit/1"
    assert sent["created"] == "me/colours-rlp"
    story = _files(runs["rlp"] / "adapter")
    assert {name: sent[name] for name in story} == story  # the same folder the run wrote, card and settings included


def test_push_to_hub_without_huggingface_hub_says_what_to_install(runs, tiny, monkeypatch):
    method = rlptune.load_adapter(runs["rlp"] / "adapter", tiny)
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(RlptuneError) as info:
        method.push_to_hub("me/colours-rlp")
    assert str(info.value) == "push_to_hub needs the huggingface_hub package: pip install huggingface_hub"
    with pytest.raises(RlptuneError) as info:
        rlptune.from_pretrained("me/colours-rlp", tiny)
    assert (
        str(info.value)
        == "from_pretrained of a hub repo id needs the huggingface_hub package: pip install huggingface_hub"
    )


def test_the_cli_uses_a_micro_v2_adapter_on_every_spelling_of_its_weights(tmp_path, colour_folder):
    """Issue finding as written: an adapter trained on ``micro-v2`` used with ``--backbone`` set to the same weights as
    an OpenAI ``.pt``, a Hugging Face folder and ``ARCH:/path`` is accepted, with the same predictions."""
    import csv

    pytest.importorskip("transformers")
    from rlptune.backbones.hf import export_hf_clip
    from rlptune.micro.v2 import MICRO2_CONFIG_PATH, MICRO2_WEIGHTS_PATH, export_openai

    if not MICRO2_WEIGHTS_PATH.exists():
        pytest.skip("micro v2 weights not built")
    micro2 = load_backbone("micro-v2", device="cpu")
    config = resolve_config(None, {"method": {"name": "rlp"}, "backbone": {"name": "micro-v2"}})
    method = rlptune.build_method(config, micro2, ["red", "green", "blue", "yellow"])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # off its initialisation, as training would move it
        for param in method.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    method.save_pretrained(tmp_path / "adapter")
    spellings = {
        "recorded": None,
        "openai .pt": str(export_openai(tmp_path / "micro-v2.pt")),
        "hf folder": f"hf:{export_hf_clip(micro2, tmp_path / 'micro-v2-hf')}",
        "ARCH:/path": f"{MICRO2_CONFIG_PATH}:{MICRO2_WEIGHTS_PATH}",
    }
    images = str(colour_folder / "test" / "red")
    rows = {}
    for name, spec in spellings.items():
        out = tmp_path / f"{name.replace(' ', '-').replace(':', '').replace('/', '')}.csv"
        args = [
            "predict",
            str(tmp_path / "adapter"),
            images,
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "--top-k",
            "2",
            "-o",
            str(out),
            "--no-progress",
        ] + (["--backbone", spec] if spec else [])
        assert main(args) == 0, name
        rows[name] = list(csv.reader(out.open()))
    reference = rows.pop("recorded")
    for name, got in rows.items():
        assert [r[:2] for r in got] == [r[:2] for r in reference], name  # the same top-1 for every image
        for a, b in zip(got[1:], reference[1:]):
            assert abs(float(a[2]) - float(b[2])) < 2e-3, name


_number = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False, width=64), st.none())
_metrics = st.dictionaries(
    st.sampled_from(["test", "base", "new", "val"]),
    st.dictionaries(st.sampled_from(["top1", "macro_f1", "n", "top5"]), _number, max_size=4) | _number,
    max_size=3,
)
_results = st.fixed_dictionaries(
    {},
    optional={
        "dataset": st.text(max_size=12),
        "protocol": st.sampled_from(["few-shot", "base2new"]),
        "shots": st.integers(0, 16),
        "seed": st.integers(0, 99),
        "epochs": st.integers(0, 200),
        "h": _number,
        "metrics": _metrics,
        "train_seconds": st.floats(0, 1e4),
        "versions": st.just({"torch": "x"}),
        "prompt_diagnostics": st.just({"ctx": {}}),
    },
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(result=_results)
def test_the_card_depends_only_on_what_the_adapter_records(result):
    """Whatever a run's result.json holds, the card written from it equals the card written from the adapter's
    recorded summary after a JSON round trip: a re-saved adapter can never write another card than its run did."""
    from rlptune.engine.hub import model_card, run_summary

    payload = json.loads((FIXTURE / "adapter" / ADAPTER_CONFIG).read_text())
    settings_ = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    recorded = json.loads(json.dumps(run_summary(result)))
    assert "train_seconds" not in recorded and "versions" not in recorded
    command = "rlptune train --config training_config.yaml -o runs/x"
    assert model_card(payload, settings_, recorded, command) == model_card(payload, settings_, result, command)
