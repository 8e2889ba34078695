"""``train.track_new``: new-class accuracy per validation epoch under base-to-new, as a pure diagnostic.

The across-epochs reading of the evidence study (information density vs new-class accuracy within one run) needs
the new classes scored during training; scoring them must not change what is trained.
"""

from __future__ import annotations

import json

import pytest

import rlptune
from rlptune.errors import RlptuneError


def _settings(track: bool, method: str, **prompt) -> dict:
    return {
        "backbone": {"name": "micro"},
        "data": {"dataset": "micro-patterned", "shots": 4, "protocol": "base2new"},
        "method": {"name": method},
        "prompt": prompt,
        "train": {"epochs": 3, "augment": False, "track_new": track, "seed": 2},
    }


@pytest.mark.parametrize("method,prompt", [("coop", {}), ("rlp", {"dropout": 0.3})])
def test_tracking_new_classes_changes_nothing_and_logs_each_epoch(method, prompt, tmp_path, monkeypatch):
    monkeypatch.setenv("RLPTUNE_CACHE", str(tmp_path / "cache"))
    plain = rlptune.train(
        rlptune.resolve_config(overrides=_settings(False, method, **prompt)), tmp_path / "plain", progress=False
    )
    tracked = rlptune.train(
        rlptune.resolve_config(overrides=_settings(True, method, **prompt)), tmp_path / "tracked", progress=False
    )
    # the adapter is the same bytes: scoring the new classes (classnames switched, prompt merged) left training alone
    assert (tmp_path / "plain" / "adapter" / "rlptune_adapter.safetensors").read_bytes() == (
        tmp_path / "tracked" / "adapter" / "rlptune_adapter.safetensors"
    ).read_bytes()
    assert plain["metrics"] == tracked["metrics"]
    records = [json.loads(line) for line in (tmp_path / "tracked" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all("new_acc" in r for r in records)
    # the last epoch's score is the run's new-class accuracy
    assert records[-1]["new_acc"] == pytest.approx(tracked["metrics"]["new"]["top1"])
    plain_records = [json.loads(line) for line in (tmp_path / "plain" / "metrics.jsonl").read_text().splitlines()]
    assert not any("new_acc" in r for r in plain_records)


def test_track_new_outside_base_to_new_is_refused():
    with pytest.raises(RlptuneError, match="track_new needs data.protocol=base2new"):
        rlptune.resolve_config(overrides={"data": {"protocol": "few-shot"}, "train": {"track_new": True}})
    with pytest.raises(RlptuneError, match="val_every >= 1"):
        rlptune.resolve_config(
            overrides={"data": {"protocol": "base2new"}, "train": {"track_new": True, "val_every": 0}}
        )
