"""The micro worlds are one table of data over one suite engine: both versions register, draw and cache alike."""

from __future__ import annotations

import pytest

import rlptune
from rlptune.data import list_datasets
from rlptune.micro import WORLDS, world_of
from rlptune.micro.suite import MicroSuite


def test_every_world_registers_its_backbone_and_every_dataset():
    known = set(list_datasets())
    assert set(WORLDS) == {"micro", "micro-v2"}
    for name, world in WORLDS.items():
        assert world.backbone == name and isinstance(world.suite, MicroSuite)
        assert set(world.suite.all_names()) <= known, name
        assert world.config()["embed_dim"] > 0
    assert world_of("micro-v2") is WORLDS["micro-v2"] and world_of("ViT-B-16:openai") is None


def test_the_suites_do_not_share_dataset_names():
    v1, v2 = (set(WORLDS[n].suite.all_names()) for n in ("micro", "micro-v2"))
    assert not v1 & v2


@pytest.mark.parametrize("backbone", ["micro", "micro-v2"])
def test_a_stale_rendering_is_retired_and_drawn_afresh(tmp_path, backbone):
    """A cached dataset stamped by another definition (another style) is replaced, in either world."""
    world = WORLDS[backbone]
    name = next(n for n in world.suite.all_names() if n in world.suite.shifts.get(n.rsplit("-", 1)[0], []))
    first = world.suite.load(name, cache_dir=tmp_path)
    marker = first.root / "COMPLETE"
    stamp = marker.read_text(encoding="utf-8")
    marker.write_text("w0 stale style=other\n", encoding="utf-8")
    again = world.suite.load(name, cache_dir=tmp_path)
    assert (again.root / "COMPLETE").read_text(encoding="utf-8") == stamp


def test_hflip_variance_follows_the_world_table(tmp_path):
    positions = WORLDS["micro"].load_dataset("micro-positions", root=tmp_path)
    shapes = WORLDS["micro"].load_dataset("micro-shapes-photo", root=tmp_path)
    assert positions.hflip_invariant is False and shapes.hflip_invariant is not False


def test_unknown_dataset_names_its_world():
    with pytest.raises(rlptune.RlptuneError, match="unknown micro v2 dataset 'micro2-nope'"):
        WORLDS["micro-v2"].suite.spec("micro2-nope")
