"""Small data, told honestly: every accuracy carries its Wilson 95% interval, every train/eval records and prints the
zero-shot accuracy of the same split, and two notes say what small numbers cannot show (docs/METHODS.md, Small data).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlptune.analysis.stats import wilson_interval
from rlptune.cli import main
from rlptune.config import resolve_config
from rlptune.data import load_dataset
from rlptune.engine.api import zero_shot_method
from rlptune.engine.callbacks import TrainState
from rlptune.engine.evaluate import WIDE_INTERVAL_POINTS, classification_metrics, small_data_notes
from rlptune.engine.features import FeatureCache
from rlptune.engine.pipeline import evaluate, prepare_data, zero_shot_fields
from rlptune.engine.record import final_validation
from rlptune.errors import RlptuneError


# -- the interval ----------------------------------------------------------------------------------------------------


def _wilson_reference(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The textbook formula, written out independently: (p + z²/2n ± z√(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def test_wilson_matches_published_values() -> None:
    # 19 of 30 (63.3%, the RLP number) and 0 of 10: values from the formula, to 4 digits
    low, high = wilson_interval(19, 30)
    assert (round(low, 4), round(high, 4)) == (0.4551, 0.7813)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing seen: nothing known


@pytest.mark.parametrize("k,n", [(-1, 5), (6, 5), (1, -1)])
def test_wilson_refuses_impossible_counts(k: int, n: int) -> None:
    with pytest.raises(RlptuneError, match="expected 0 <= successes <= n"):
        wilson_interval(k, n)


@settings(max_examples=80, deadline=None, derandomize=True)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_always_holds_the_observed_accuracy(kn) -> None:
    """Whatever the counts: inside [0, 1], around the observed proportion, mirror-symmetric in k ↔ n − k, equal to
    the textbook formula, and narrower with four times the images at the same proportion."""
    k, n = kn
    low, high = wilson_interval(k, n)
    assert 0.0 <= low <= k / n <= high <= 1.0
    mirror_low, mirror_high = wilson_interval(n - k, n)
    assert math.isclose(low, 1 - mirror_high, abs_tol=1e-12) and math.isclose(high, 1 - mirror_low, abs_tol=1e-12)
    ref_low, ref_high = _wilson_reference(k, n)
    assert math.isclose(low, max(ref_low, 0.0), abs_tol=1e-12) and math.isclose(high, min(ref_high, 1.0), abs_tol=1e-12)
    wide_low, wide_high = wilson_interval(4 * k, 4 * n)
    assert wide_high - wide_low < high - low


def test_metrics_carry_the_interval_of_their_top1() -> None:
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    predictions = torch.tensor([0, 1, 2, 0, 1, 2, 1, 2, 0, 0])  # 7 of 10 right
    metrics = classification_metrics(predictions, labels, 3)
    low, high = wilson_interval(7, 10)
    assert metrics["top1"] == 70.0 and metrics["ci95"] == [round(100 * low, 4), round(100 * high, 4)]


# -- the notes ----------------------------------------------------------------------------------------------------


def _m(top1: float, n: int) -> dict:
    k = round(top1 * n / 100)
    low, high = wilson_interval(k, n)
    return {"top1": top1, "ci95": [100 * low, 100 * high], "n": n}


def test_a_split_too_small_to_rank_recipes_says_so_in_one_line() -> None:
    notes = small_data_notes({"test": _m(70.0, 30)})
    assert len(notes) == 1
    assert notes[0].startswith("note: the test split has 30 images, so its 95% interval is ")
    assert "differences smaller than that are within noise" in notes[0]
    assert small_data_notes({"test": _m(70.0, 10_000)}) == []  # ±0.9 points: nothing to say
    # the widest of several splits is the one named (base-to-new reports two)
    (line,) = small_data_notes({"base": _m(70.0, 10_000), "new": _m(50.0, 40)})
    assert line.startswith("note: the new split has 40 images")


def test_the_width_threshold_is_ten_points() -> None:
    assert WIDE_INTERVAL_POINTS == 10.0
    assert small_data_notes({"test": {"top1": 50.0, "ci95": [45.0, 55.0], "n": 400}}) == []
    assert len(small_data_notes({"test": {"top1": 50.0, "ci95": [44.9, 55.0], "n": 380}})) == 1


def test_below_zero_shot_names_the_knobs_that_matter() -> None:
    (line,) = small_data_notes({}, ("on the validation split at the end of training", 60.0, 70.0))
    assert line.startswith(
        "note: below zero-shot on the validation split at the end of training (60.0% vs 70.0% zero-shot)"
    )
    for knob in ("--crop-scale", "--epochs", "--select-best"):
        assert knob in line
    assert small_data_notes({}, ("on the test split", 70.0, 70.0)) == []  # level with zero-shot is not below it


def test_the_run_ends_with_the_kept_epochs_validation_accuracy() -> None:
    state = TrainState(records=[{"epoch": 1, "val_acc": 80.0}, {"epoch": 2, "val_acc": 60.0}, {"epoch": 3}])
    assert final_validation(state) == 60.0  # the last epoch that validated
    state.best = (1, 80.0, {})
    assert final_validation(state) == 80.0  # select_best keeps epoch 1
    assert final_validation(TrainState(records=[{"epoch": 1}])) is None


# -- end to end ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny_arch_path, colour_folder, tmp_path_factory):
    """``rlptune train`` of CoOp with zero epochs and CoOp's init "a photo of a": the prompt *is* zero-shot's."""
    out = tmp_path_factory.mktemp("honest") / "run"
    mp = pytest.MonkeyPatch()
    mp.setenv("RLPTUNE_CACHE", str(out.parent / "cache"))
    args = [
        "train",
        "--backbone",
        str(tiny_arch_path),
        "--dataset",
        "folder",
        "--data-root",
        str(colour_folder),
        "--method",
        "coop",
        "--ctx-init",
        "a photo of a",
        "--epochs",
        "0",
        "--device",
        "cpu",
        "-o",
        str(out),
        "--no-progress",
    ]
    try:
        assert main(args) == 0
        yield out
    finally:
        mp.undo()


def test_a_run_records_zero_shot_of_the_same_split_with_intervals(trained: Path, tiny_arch_path, colour_folder) -> None:
    result = json.loads((trained / "result.json").read_text())
    test, zero = result["metrics"]["test"], result["zero_shot"]["test"]
    assert zero["n"] == test["n"] == 48
    assert set(zero) == {"top1", "ci95", "macro_f1", "n"}
    assert zero["top1"] == test["top1"]  # zero epochs from "a photo of a": the same classifier as zero-shot
    # and the same number `rlptune zeroshot` gives on that split
    config = resolve_config(
        None,
        {
            "backbone": {"name": str(tiny_arch_path), "device": "cpu"},
            "data": {"dataset": "folder", "root": str(colour_folder), "shots": 0},
        },
    )
    splits = load_dataset("folder", colour_folder)
    from rlptune.backbones import load_backbone

    method = zero_shot_method(
        config, load_backbone(str(tiny_arch_path), device="cpu"), splits.classnames, splits.template
    )
    assert evaluate(method, splits, "test", FeatureCache(trained.parent / "cache"))["top1"] == zero["top1"]
    for metrics in (test, zero):
        low, high = metrics["ci95"]
        assert low <= metrics["top1"] <= high
    assert "val" not in result["zero_shot"] and "final_val_acc" not in result  # zero epochs: nothing validated
    # 48 test images: an interval far wider than 10 points, said once; level with zero-shot: no "below" note
    assert len(result["notes"]) == 1 and result["notes"][0].startswith("note: the test split has 48 images")


def test_train_and_eval_print_the_baseline_and_the_notes(trained: Path, colour_folder, capsys, tmp_path) -> None:
    result = json.loads((trained / "result.json").read_text())
    assert (
        main(
            [
                "eval",
                str(trained / "adapter"),
                "--dataset",
                "folder",
                "--data-root",
                str(colour_folder),
                "--device",
                "cpu",
                "--json",
                str(tmp_path / "m.json"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert " test (coop): top-1 " in out[0] and "(95% CI " in out[0]
    assert out[1].startswith("zero-shot test: top-1 ") and "(n=48)" in out[1]
    assert out[2] == result["notes"][0]
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["zero_shot"]["test"] == result["zero_shot"]["test"]
    assert written["notes"] == result["notes"]


def test_a_run_below_zero_shot_on_validation_says_so(trained: Path, tiny_arch_path, colour_folder) -> None:
    """The pipeline's wiring: the run's last validation accuracy against zero-shot's on the same split."""
    config = resolve_config(
        None,
        {
            "backbone": {"name": str(tiny_arch_path), "device": "cpu"},
            "method": {"name": "coop"},
            "data": {"dataset": "folder", "root": str(colour_folder), "shots": 0},
        },
    )
    from rlptune.backbones import load_backbone
    from rlptune.methods import build_method

    data = prepare_data(config)
    method = build_method(
        config, load_backbone(str(tiny_arch_path), device="cpu"), data.train.classnames, data.train.template
    )
    cache = FeatureCache(trained.parent / "cache")  # the features the trained run already encoded
    metrics = {"test": evaluate(method, data.train, "test", cache)}
    level = zero_shot_fields(method, config, data, cache, metrics, TrainState())
    assert "final_val_acc" not in level and set(level["zero_shot"]) == {"test"}  # no validation ran: nothing compared
    zero_val = evaluate(
        zero_shot_method(resolve_config(None, {}), method.backbone, data.train.classnames), data.train, "val", cache
    )["top1"]
    below = zero_shot_fields(method, config, data, cache, metrics, TrainState(records=[{"val_acc": zero_val - 5.0}]))
    assert below["zero_shot"]["val"]["top1"] == zero_val and below["final_val_acc"] == zero_val - 5.0
    assert any(
        n.startswith("note: below zero-shot on the validation split at the end of training") for n in below["notes"]
    )
    above = zero_shot_fields(method, config, data, cache, metrics, TrainState(records=[{"val_acc": zero_val}]))
    assert not any("below zero-shot" in n for n in above["notes"])
