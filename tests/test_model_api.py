"""The practitioner's Python and command-line surface: a model-shaped adapter, presets as typed values, adapters
that load from anywhere, flags that say what they mean, loggers and best-epoch selection."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from PIL import Image

import rlptune
from rlptune.cli import main
from rlptune.config import RunConfig, blank_config, resolve_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_folder, tiny_arch_path):
    out = tmp_path_factory.mktemp("api") / "run"
    config = resolve_config(
        overrides={
            "backbone": {"name": str(tiny_arch_path), "device": "cpu"},
            "method": {"name": "rlp"},
            "data": {"dataset": "folder", "root": str(colour_folder), "shots": 4},
            "train": {
                "epochs": 3,
                "batch_size": 8,
                "select_best": True,
                "loggers": ["csv"],
                "cache_dir": str(out.parent / "cache"),
            },
        }
    )
    result = rlptune.train(config, out, progress=False)
    return out, result


def test_presets_are_typed_values():
    typed = RunConfig(method="rlp")
    resolved = resolve_config(overrides={"method": {"name": "rlp"}})
    assert typed.to_dict() == resolved.to_dict()
    assert typed.prompt.kind == "lowrank" and typed.prompt.n_ctx == 4
    assert RunConfig().validate().to_dict() == resolve_config().to_dict()  # the default method, its recipe
    plain = blank_config()  # every field at its default, no recipe
    plain.method.name = "rlp"  # RLP is its low-rank prompt: a full-rank RLP is refused, not silently built
    with pytest.raises(rlptune.RlptuneError, match="defined by prompt.kind='lowrank'"):
        plain.validate()


def test_adapter_is_a_model(trained, colour_folder):
    out, _ = trained
    model = rlptune.load_adapter(out / "adapter")
    assert isinstance(model, torch.nn.Module) and model.classnames == ["blue", "green", "red", "yellow"]
    image_path = sorted((colour_folder / "test" / "red").iterdir())[0]
    image = Image.open(image_path).convert("RGB")
    x = model.preprocess(image).unsqueeze(0)
    logits = model(x)
    assert logits.shape == (1, 4)
    assert torch.allclose(logits, model.logits(model.encode_images(x)))
    by_path = rlptune.predict(model, image_path, top_k=2)
    by_list = rlptune.predict(model, [image_path], top_k=2)
    by_pil = rlptune.predict(model, image, top_k=2)
    by_tensor = rlptune.predict(model, x, top_k=2)
    by_folder = rlptune.predict(model, colour_folder / "test" / "red", top_k=2)
    by_method = model.predict(x, top_k=2)  # the method itself takes tensors only: decoding is the caller's
    assert by_path[0]["path"] == str(image_path) and len(by_folder) == 12
    with pytest.raises(rlptune.RlptuneError, match=r"use rlptune\.predict\(method, images\)"):
        model.predict(image_path)
    for rows in (by_list, by_pil, by_tensor, [by_folder[0]], by_method):
        assert rows[0]["labels"] == by_path[0]["labels"]
        assert rows[0]["probs"] == pytest.approx(by_path[0]["probs"], abs=1e-6)


def test_best_epoch_selection_and_csv_logger(trained):
    out, result = trained
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["val_acc"])  # first best wins ties
    assert result["selected_epoch"] == best["epoch"]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] and all(r["val_acc"] for r in rows)


def test_adapter_loads_from_another_folder_and_on_an_explicit_backbone(
    trained, colour_folder, tiny_arch_path, tmp_path, monkeypatch, capsys
):
    out, _ = trained
    monkeypatch.chdir(tmp_path)  # the backbone spec recorded in the adapter must not depend on the working folder
    image = str(sorted((colour_folder / "test" / "blue").iterdir())[0])
    assert main(["predict", str(out / "adapter"), image, "--top-k", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out
    assert (
        main(
            ["predict", str(out / "adapter"), image, "--top-k", "1", "--backbone", str(tiny_arch_path), "--no-progress"]
        )
        == 0
    )
    assert capsys.readouterr().out == first
    assert (
        main(
            [
                "eval",
                str(out / "adapter"),
                "--dataset",
                "folder",
                "--data-root",
                str(colour_folder),
                "--backbone",
                str(tiny_arch_path),
            ]
        )
        == 0
    )
    assert main(["predict", str(out / "adapter"), image, "--backbone", "micro", "--no-progress"]) == 2
    assert "adapter was trained on backbone" in capsys.readouterr().err


def test_flags_apply_and_misspellings_get_a_suggestion(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--learning_rate", "0.1", "-o", "x"])
    assert "did you mean --lr?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "adapter", "--top-k", "3"])  # top-k means nothing to eval
    with pytest.raises(SystemExit):
        main(["zeroshot", "--csc"])  # nor a class-specific context to zero-shot
    with pytest.raises(SystemExit):
        main(["train", "--method", "kgcoop", "--help"])
    help_text = capsys.readouterr().out
    assert "--lambda-kg" in help_text and "(default: 8.0" in help_text


def test_a_setting_a_method_cannot_honour_is_an_error():
    with pytest.raises(rlptune.RlptuneError, match="method.checkpoint_text=True: method 'cocoop' does not support"):
        resolve_config(overrides={"method": {"name": "cocoop", "checkpoint_text": True}})
    with pytest.raises(rlptune.RlptuneError, match="unknown option 'nonsense' for method 'kgcoop'"):
        resolve_config(overrides={"method": {"name": "kgcoop", "options": {"lambda_kg": 3, "nonsense": 1}}})
