"""Settings: YAML and flags map 1:1 onto dataclasses; mistakes name the field and the valid ones."""

from __future__ import annotations

import pytest

from rlptune.config import flag_table, parse_set, resolve_config
from rlptune.errors import RlptuneError


def test_layers_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: rlp}\nprompt: {rank: 2}\ntrain: {epochs: 3, lr: 0.01}\n")
    config = resolve_config(str(path), {"train": {"lr": "0.05"}})
    assert config.prompt.kind == "lowrank"  # from the rlp preset
    assert config.prompt.options["rank"] == 2  # YAML beats preset
    assert config.train.lr == 0.05  # command line beats YAML
    assert config.train.epochs == 3


def test_unknown_field_names_field_and_valid_ones(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr_rate: 0.1}\n")
    with pytest.raises(RlptuneError) as info:
        resolve_config(str(path))
    message = str(info.value)
    assert "lr_rate" in message and "did you mean 'lr'" in message and "weight_decay" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        ({"train": {"epochs": "ten"}}, "train.epochs: expected an integer"),
        ({"prompt": {"kind": "sparse"}}, "expected one of full, lowrank"),
        ({"prompt": {"dropout": 1.5}}, "prompt.dropout must be in [0, 1)"),
        ({"nope": {"x": 1}}, "unknown field 'nope'"),
        ({"method": {"csc": True}}, "unknown field 'csc'"),
    ],
)
def test_bad_values_are_one_line_errors(overrides, fragment):
    with pytest.raises(RlptuneError) as info:
        resolve_config(None, overrides)
    assert fragment in str(info.value)


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("train: {epochs: [1\n")
    with pytest.raises(RlptuneError, match="broken.yaml: not valid YAML"):
        resolve_config(str(path))


def test_flags_are_unique_and_cover_every_field():
    table = flag_table()
    assert {"backbone", "method", "prompt", "n-ctx", "ctx-init", "rank", "dropout", "epochs", "lr", "csc"} <= set(table)


def test_parse_set():
    assert parse_set(["prompt.rank=4", "method.options.lam=8"]) == {
        "prompt": {"rank": 4},
        "method": {"options": {"lam": 8}},
    }
    with pytest.raises(RlptuneError):
        parse_set(["rank=4"])
