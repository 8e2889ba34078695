"""Hub-shaped adapters: save_pretrained / from_pretrained round-trips, the model card, the offline hub path, and
push_to_hub against a local fake of huggingface_hub's upload (never the network)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
import yaml

import rlptune
from rlptune import io
from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.engine import hub
from rlptune.engine.adapter import ADAPTER_CONFIG, ADAPTER_MODEL, save_adapter
from rlptune.errors import RlptuneError
from rlptune.methods import build_method

NAMES = ["red", "green", "dark blue"]


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


def _method(tiny, name="rlp"):
    config = resolve_config(
        None, {"method": {"name": name}, "data": {"dataset": "folder", "root": "/data/colours", "shots": 4}}
    )
    method = build_method(config, tiny, NAMES, None)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in method.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return method.eval(), config


def _features(tiny):
    return torch.nn.functional.normalize(
        torch.randn(6, tiny.embed_dim, generator=torch.Generator().manual_seed(2)), dim=-1
    )


def _same_logits(a, b, features) -> bool:
    with torch.no_grad():
        return torch.equal(a.logits(features), b.logits(features))


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_save_pretrained_then_from_pretrained_gives_the_same_logits(tiny, tmp_path):
    method, _ = _method(tiny)
    folder = rlptune.save_pretrained(method, tmp_path / "pets-rlp")
    assert {p.name for p in folder.iterdir()} == {ADAPTER_CONFIG, ADAPTER_MODEL, "README.md", "training_config.yaml"}
    features = _features(tiny)
    assert _same_logits(method, rlptune.from_pretrained(folder, tiny), features)
    # no backbone given: the recorded (resolvable) spec loads the same weights, identity checked
    assert _same_logits(method, rlptune.from_pretrained(str(folder), device="cpu"), features)
    settings = yaml.safe_load((folder / "training_config.yaml").read_text())
    assert settings == method.run_config.to_dict()


def test_the_model_card_says_what_the_adapter_is_and_how_it_was_made(tiny, tmp_path):
    method, config = _method(tiny)
    card = (
        rlptune.save_pretrained(method, tmp_path / "a", command="rlptune train --method rlp -o runs/x") / "README.md"
    ).read_text()
    front = _front_matter(card)
    assert front["library_name"] == "rlptune" and "rlp" in front["tags"] and "prompt-tuning" in front["tags"]
    assert "base_model" not in front  # a local architecture file names no hub model
    assert method.parameter_formula() in card and "r·(n+d)" in card
    assert f"`{tiny.identity}`" in card and f"`{tiny.spec}`" in card
    assert "classes (3): `red`, `green`, `dark blue`" in card
    assert "- dataset: folder" in card and "- shots per class: 4" in card
    assert "rlptune train --method rlp -o runs/x" in card
    assert "Not recorded" in card  # no result.json: no invented metrics


def test_a_runs_adapter_card_carries_the_runs_metrics(tiny, tmp_path):
    method, config = _method(tiny)
    run = tmp_path / "run"
    save_adapter(run / "adapter", method, config)
    io.write_text(run / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    io.write_json(
        run / "result.json",
        {
            "method": "rlp",
            "dataset": "colours",
            "seed": 7,
            "shots": 4,
            "epochs": 5,
            "metrics": {"test": {"top1": 83.3333, "top5": 100.0, "per_class": [1, 2]}},
        },
    )
    card = hub.write_model_card(run / "adapter").read_text()
    assert "| test | top1 | 83.33 |" in card and "| test | top5 | 100 |" in card and "per_class" not in card
    assert "- dataset: colours" in card and "- seed: 7" in card
    assert (
        "rlptune train --config training_config.yaml -o runs/colours-rlp" in card
    )  # written beside it from the adapter


def test_a_hub_clip_backbone_is_the_cards_base_model():
    assert hub.base_model_of("hf:openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert hub.base_model_of("hf-hub:timm/vit_base_patch16_clip_224.openai") == "timm/vit_base_patch16_clip_224.openai"
    assert hub.base_model_of("hf:/home/me/clip") is None and hub.base_model_of("ViT-B-16:openai") is None


def test_from_pretrained_downloads_a_repo_id_through_huggingface_hub(tiny, tmp_path, monkeypatch):
    import huggingface_hub

    method, _ = _method(tiny)
    folder = rlptune.save_pretrained(method, tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = rlptune.from_pretrained("me/pets-rlp", tiny, revision="v1")
    assert _same_logits(method, loaded, _features(tiny))
    ((repo_id, kwargs),) = calls
    assert repo_id == "me/pets-rlp" and kwargs["revision"] == "v1" and kwargs["library_name"] == "rlptune"
    assert {ADAPTER_CONFIG, ADAPTER_MODEL, "adapter_config.json"} <= set(kwargs["allow_patterns"])


def test_from_pretrained_offline_fails_with_one_line_quickly(tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RlptuneError) as info:
        rlptune.from_pretrained("rlptune-tests-nobody/never-uploaded", tiny)
    assert time.perf_counter() - start < 10
    assert str(info.value) == (
        "rlptune-tests-nobody/never-uploaded: not a local folder and not in the Hugging Face cache, and HF_HUB_OFFLINE is set"
    )
    with pytest.raises(
        RlptuneError, match=r"no/such/folder: no such adapter folder, and not a hub repo id \(org/name\)"
    ):
        rlptune.from_pretrained("no/such/folder", tiny)


class FakeHub:
    """Stands in for huggingface_hub.HfApi's create_repo and upload_folder: records what would be sent."""

    def __init__(self, monkeypatch, fail: Exception | None = None):
        import huggingface_hub

        self.created: list[tuple] = []
        self.uploaded: dict[str, bytes] = {}
        self.upload_kwargs: dict = {}
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.created.append((repo_id, kwargs))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(api, **kwargs):
            if fail is not None:
                raise fail
            fake.upload_kwargs = kwargs
            root = Path(kwargs["folder_path"])
            fake.uploaded = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
                commit_message="m",
                commit_description="",
                oid="abc",
            )

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


def test_push_to_hub_uploads_the_adapter_with_its_card(tiny, tmp_path, monkeypatch):
    fake = FakeHub(monkeypatch)
    method, _ = _method(tiny)
    url = rlptune.push_to_hub(method, "me/pets-rlp", private=True, token="hf_fake")
    assert url == "https://huggingface.co/me/pets-rlp/commit/abc"
    assert fake.created == [("me/pets-rlp", {"private": True, "exist_ok": True, "repo_type": "model"})]
    assert set(fake.uploaded) == {ADAPTER_CONFIG, ADAPTER_MODEL, "README.md", "training_config.yaml"}
    assert fake.upload_kwargs["repo_id"] == "me/pets-rlp" and "rlp" in fake.upload_kwargs["commit_message"]
    # what was uploaded is a loadable adapter giving the same logits
    received = tmp_path / "received"
    for name, data in fake.uploaded.items():
        (received / name).parent.mkdir(parents=True, exist_ok=True)
        (received / name).write_bytes(data)
    assert _same_logits(method, rlptune.from_pretrained(received, tiny), _features(tiny))


def test_pushing_a_runs_adapter_folder_carries_the_metrics_and_converts_0_1_0_names(tiny, tmp_path, monkeypatch):
    fake = FakeHub(monkeypatch)
    method, config = _method(tiny)
    run = tmp_path / "run"
    folder = save_adapter(run / "adapter", method, config)
    io.write_json(run / "result.json", {"dataset": "colours", "metrics": {"test": {"top1": 91.5}}})
    io.write_text(run / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    # the same folder as rlptune 0.1.0 named it (peft's names, no type field)
    payload = json.loads((folder / ADAPTER_CONFIG).read_text())
    payload.pop("adapter_type")
    (folder / "adapter_config.json").write_text(json.dumps(payload))
    shutil.move(folder / ADAPTER_MODEL, folder / "adapter_model.safetensors")
    (folder / ADAPTER_CONFIG).unlink()
    before = sorted(p.name for p in folder.iterdir())
    rlptune.push_to_hub(str(folder), "me/run")
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into the source
    assert set(fake.uploaded) == {ADAPTER_CONFIG, ADAPTER_MODEL, "README.md", "training_config.yaml"}
    assert json.loads(fake.uploaded[ADAPTER_CONFIG])["adapter_type"] == "rlptune"
    card = fake.uploaded["README.md"].decode()
    assert "| test | top1 | 91.5 |" in card and "- dataset: colours" in card


def test_a_failed_push_is_one_line(tiny, monkeypatch):
    FakeHub(monkeypatch, fail=PermissionError("401 Unauthorized: invalid token\nmore detail"))
    method, _ = _method(tiny)
    with pytest.raises(RlptuneError) as info:
        rlptune.push_to_hub(method, "me/pets-rlp")
    assert (
        str(info.value)
        == "me/pets-rlp: cannot push to the Hugging Face hub (PermissionError: 401 Unauthorized: invalid token)"
    )
    with pytest.raises(RlptuneError, match="not a hub repo id"):
        rlptune.push_to_hub(method, "not a repo")


def test_cli_push_uploads_a_run_adapter_and_its_card(tiny, tmp_path, monkeypatch, capsys):
    """`rlptune push ADAPTER REPO` (the model card the run wrote travels with it; nothing touches the network)."""
    from rlptune.cli import main

    fake = FakeHub(monkeypatch)
    method, config = _method(tiny)
    rlptune.save_adapter(tmp_path / "adapter", method, config)
    assert main(["push", str(tmp_path / "adapter"), "me/cli-push", "--private"]) == 0
    assert "pushed" in capsys.readouterr().out and fake.created[0][0] == "me/cli-push"
    assert {ADAPTER_CONFIG, ADAPTER_MODEL, "README.md"} <= set(fake.uploaded)
