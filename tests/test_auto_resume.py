"""A killed ``--auto`` search resumes: batched candidates continue from their last saved epoch and end exactly where
an uninterrupted search ends (each epoch seeds its own shuffle and dropout streams, so nothing else carries over)."""

from __future__ import annotations

import pytest
import torch

from rlptune.backbones import load_backbone
from rlptune.config import resolve_config
from rlptune.engine import auto, candidates, train
from rlptune.engine.candidates import CandidateRun, train_batched
from rlptune.engine.features import FeatureCache
from rlptune.engine.pipeline import prepare_data, seed_everything
from rlptune.errors import RlptuneError
from rlptune.methods import build_method

GRID = [(1, 0.08, 0.1), (2, 0.5, 0.3), (1, 0.5, 0.0)]  # rank, crop scale, dropout


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu", precision="fp32")


def _config(root, tmp_path, epochs=4, **auto_settings):
    return resolve_config(
        None,
        {
            "method": {"name": "rlp"},
            "backbone": {"precision": "fp32"},
            "data": {"dataset": "folder", "root": str(root), "shots": 4},
            "prompt": {"ctx_init": "a photo of a", "n_ctx": 4},
            "train": {"epochs": epochs, "batch_size": 8, "lr": 0.05, "cache_dir": str(tmp_path / "cache")},
            "auto": {"enabled": bool(auto_settings), **auto_settings},
        },
    )


def _runs(base, tiny, splits):
    out = []
    for i, (rank, crop, drop) in enumerate(GRID):
        cfg = auto.with_settings(base, {"prompt": {"rank": rank, "dropout": drop}, "train": {"crop_scale": crop}})
        seed_everything(cfg.train.seed)
        out.append(CandidateRun(f"c{i}", cfg, build_method(cfg, tiny, splits.classnames, splits.template)))
    return out


class Killed(Exception):
    """Stands for the process dying (SIGKILL, out of memory) in the middle of an epoch."""


def _kill_in_epoch(monkeypatch, epoch: int) -> None:
    """Save at every epoch end and die while validating ``epoch`` (1-based): epochs before it are saved."""
    real = candidates._validate
    monkeypatch.setattr(candidates, "CHECKPOINT_SECONDS", 0.0)

    def validate(active, text_module, feats, labels, index, backbone):
        if index + 1 == epoch:
            raise Killed
        return real(active, text_module, feats, labels, index, backbone)

    monkeypatch.setattr(candidates, "_validate", validate)


def test_a_killed_batched_search_resumes_to_the_same_candidates(tiny, colour_folder, tmp_path, monkeypatch):
    base = _config(colour_folder, tmp_path)
    splits = prepare_data(base).train
    cache = FeatureCache.from_config(base)
    straight = _runs(base, tiny, splits)
    train_batched(straight, splits, splits.train, splits.val, cache)

    folder = tmp_path / "progress"
    killed = _runs(base, tiny, splits)
    with monkeypatch.context() as patch:
        _kill_in_epoch(patch, 3)
        with pytest.raises(Killed):
            train_batched(killed, splits, splits.train, splits.val, cache, checkpoints=folder)
    lines = []
    resumed = _runs(base, tiny, splits)
    train_batched(resumed, splits, splits.train, splits.val, cache, checkpoints=folder, log=lines.append)
    assert lines and lines[0].startswith("auto: resumed 3 candidates after epoch 2")
    for a, b in zip(straight, resumed):
        assert a.curve == b.curve and len(b.curve) == 4 and a.losses == b.losses
        assert all(torch.equal(x, y) for x, y in zip(a.correct, b.correct))
        assert a.best[:2] == b.best[:2] and all(torch.equal(a.best[2][k], b.best[2][k]) for k in a.best[2])
        state_a, state_b = a.method.adapter_state(), b.method.adapter_state()
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a), a.name  # bit for bit
    assert float(resumed[0].method.prompt.B.detach().abs().max()) > 1e-3  # it trained (a no-op would also "match")


def test_progress_for_other_candidates_is_one_line(tiny, colour_folder, tmp_path, monkeypatch):
    base = _config(colour_folder, tmp_path, epochs=2)
    splits = prepare_data(base).train
    cache = FeatureCache.from_config(base)
    folder = tmp_path / "progress"
    with monkeypatch.context() as patch:
        _kill_in_epoch(patch, 2)
        with pytest.raises(Killed):
            train_batched(_runs(base, tiny, splits), splits, splits.train, splits.val, cache, checkpoints=folder)
    others = _runs(base, tiny, splits)[:2]
    with pytest.raises(
        RlptuneError, match=r"progress\.json: saved for other candidates; delete .* to start the search over$"
    ):
        train_batched(others, splits, splits.train, splits.val, cache, checkpoints=folder)


def test_train_auto_resume_continues_a_killed_run_and_ends_as_an_uninterrupted_one(
    tiny, colour_folder, tmp_path, monkeypatch, capsys
):
    config = _config(colour_folder, tmp_path, ranks=[1, 2], crop_scales=[0.5], dropouts=[0.1])
    whole = train(config, tmp_path / "whole", backbone=tiny, progress=False)["auto"]
    with monkeypatch.context() as patch:
        _kill_in_epoch(patch, 3)
        with pytest.raises(Killed):
            train(config, tmp_path / "run", backbone=tiny, progress=False)
    assert not (tmp_path / "run" / "result.json").exists()
    with pytest.raises(RlptuneError, match=r"an interrupted run of this folder is kept in .*; use --resume"):
        train(config, tmp_path / "run", backbone=tiny, progress=False)  # never silently thrown away
    again = train(config, tmp_path / "run", backbone=tiny, progress=False, resume=True)["auto"]
    assert "auto: resumed 2 candidates after epoch 2" in capsys.readouterr().err
    for key in ("candidates", "decision", "chosen", "margin", "best_candidate", "baseline"):
        assert again[key] == whole[key], key
    assert (
        not (tmp_path / "run" / ".auto").exists() and not (tmp_path / "run" / "checkpoint").exists()
    )  # no scratch left
