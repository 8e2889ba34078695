"""A run made by 0.2 is the same run today: the settings hash (the run folder's key) did not move when the shared
method knobs became method options, so sweeps and studies reuse their finished runs and resume their interrupted ones.

The hashes below were computed by rlptune 0.2.0 (commit 9d0fca3) for each method's recipe on micro-v2.
"""

from __future__ import annotations

import pytest

from rlptune.config import resolve_config
from rlptune.rundir import settings_hash

HASHES_0_2 = [
    ("coop", "few-shot", "d07dff28fda2d9dc"),
    ("coop", "base2new", "0055c8c2074b6dcb"),
    ("rlp", "few-shot", "2dc9d008210d2b2d"),
    ("rlp", "base2new", "e524cdcd3973ac0d"),
    ("kgcoop", "few-shot", "84f205d979aa5244"),
    ("kgcoop", "base2new", "7573c54c5a74e023"),
    ("promptsrc", "few-shot", "401ff5256b927392"),
    ("promptsrc", "base2new", "875881b6feff4558"),
    ("zeroshot", "few-shot", "63c380797a0e4764"),
    ("zeroshot", "base2new", "977af478ea2f8304"),
    ("cocoop", "few-shot", "2bf0949d54997e56"),
    ("cocoop", "base2new", "492c76bd1ee005f8"),
    ("maple", "few-shot", "0ea18a28feedb011"),
    ("maple", "base2new", "1ec1872880012702"),
    ("clip_lora", "few-shot", "192aec18d75b491e"),
    ("clip_lora", "base2new", "82329f33538e8c9f"),
    ("linear_probe", "few-shot", "22cd37b14656e97f"),
    ("linear_probe", "base2new", "9fad21c3f1eff8f0"),
]


@pytest.mark.parametrize("method,protocol,expected", HASHES_0_2)
def test_the_settings_hash_of_every_recipe_is_the_one_0_2_wrote(method, protocol, expected, monkeypatch):
    monkeypatch.setenv("RLPTUNE_CPU_BF16", "0")
    config = resolve_config(
        overrides={
            "method": {"name": method},
            "backbone": {"name": "micro-v2"},
            "data": {"protocol": protocol, "dataset": "micro2-shapes"},
        }
    )
    assert settings_hash(config.to_dict()) == expected


def test_a_knob_away_from_its_default_changes_the_hash_in_either_spelling():
    base = dict(method={"name": "coop"}, backbone={"name": "micro-v2"}, data={"dataset": "micro2-shapes"})
    plain = settings_hash(resolve_config(overrides=base).to_dict())
    former = settings_hash(
        resolve_config(overrides={**base, "method": {"name": "coop", "class_specific": True}}).to_dict()
    )
    options = settings_hash(
        resolve_config(overrides={**base, "method": {"name": "coop", "options": {"class_specific": True}}}).to_dict()
    )
    assert former == options != plain
