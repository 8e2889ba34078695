"""``--auto``: one typed setting in every route, the zero-shot guard, the validation it uses, the spectrum rule."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_image_folder
from rlptune.backbones import load_backbone
from rlptune.cli import main
from rlptune.config import config_from_dict, parse_set, resolve_config
from rlptune.engine import auto, load_adapter, train
from rlptune.errors import RlptuneError
from rlptune.sweeps.runner import parse_grid
from rlptune.rundir import settings_hash

PROPS = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def wide_val(tmp_path_factory):
    """4 colour classes with 12 validation images each: enough for a trained prompt to clear the noise."""
    return make_image_folder(
        tmp_path_factory.mktemp("wideval"),
        ["red", "green", "blue", "yellow"],
        {"train": 8, "val": 12, "test": 6},
        seed=3,
    )


def _config(root, tmp_path, name="rlp", **sections):
    overrides = {
        "method": {"name": name},
        "backbone": {"precision": "fp32"},
        "data": {"dataset": "folder", "root": str(root), "shots": 4},
        "prompt": {"ctx_init": "a photo of a", "n_ctx": 4},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.05, "cache_dir": str(tmp_path / "cache")},
        "auto": {"enabled": True, "ranks": [1, 2], "crop_scales": [0.5], "dropouts": [0.1]},
    }
    for section, values in sections.items():
        overrides.setdefault(section, {}).update(values)
    return resolve_config(None, overrides)


# -- the setting ---------------------------------------------------------------------------------------------------


def test_auto_is_one_setting_in_yaml_flags_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: rlp}\nauto: {enabled: true, ranks: [1, 2], rank_rule: spectrum}\n")
    from_file = resolve_config(str(path))
    from_set = resolve_config(
        None,
        {"method": {"name": "rlp"}, **parse_set(["auto.enabled=true", "auto.ranks=1,2", "auto.rank_rule=spectrum"])},
    )
    assert from_file.auto == from_set.auto and from_file.auto.ranks == [1, 2] and from_file.auto.enabled
    grid = parse_grid(["auto.enabled=false,true"])  # sweeps: --grid / --set reach it as any other setting
    assert [resolve_config(None, {"method": {"name": "rlp"}, **g}).auto.enabled for g in grid] == [False, True]


def test_auto_off_leaves_settings_and_their_hash_as_before():
    config = resolve_config(None, {"method": {"name": "rlp"}})
    assert "auto" not in config.to_dict()  # off, the section is not recorded: every earlier run keeps its hash
    on = resolve_config(None, {"method": {"name": "rlp"}, "auto": {"enabled": True}})
    assert on.to_dict()["auto"]["ranks"] == [1, 2, 4]
    assert settings_hash(on.to_dict()) != settings_hash(config.to_dict())
    assert config_from_dict(on.to_dict()).auto == on.auto


@PROPS
@given(st.lists(st.integers(1, 8), min_size=1, max_size=4, unique=True), st.sampled_from(["list", "text", "strings"]))
def test_a_rank_list_means_the_same_in_every_spelling(ranks, spelling):
    value = {"list": ranks, "text": ",".join(map(str, ranks)), "strings": [str(r) for r in ranks]}[spelling]
    assert resolve_config(None, {"auto": {"ranks": value}}).auto.ranks == ranks


@PROPS
@given(st.lists(st.integers(-3, 8), min_size=1, max_size=4), st.sampled_from(["list", "text"]))
def test_a_bad_rank_list_is_refused_in_every_spelling(ranks, spelling):
    value = ranks if spelling == "list" else ",".join(map(str, ranks))
    bad = min(ranks) < 1 or len(set(ranks)) != len(ranks)
    if bad:
        with pytest.raises(RlptuneError, match=r"^auto\.ranks"):
            resolve_config(None, {"auto": {"ranks": value}})
    else:
        assert resolve_config(None, {"auto": {"ranks": value}}).auto.ranks == ranks


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("crop_scales", [0.0], r"auto\.crop_scales must be in \(0, 1\]"),
        ("dropouts", [1.0], r"auto\.dropouts must be in \[0, 1\)"),
        ("ranks", [], r"auto\.ranks is empty"),
        ("energy", 0, r"auto\.energy must be in \(0, 1\]"),
        ("rank_rule", "best", r"auto\.rank_rule: expected one of validation, spectrum, both"),
        ("ranks", [1, 1], r"auto\.ranks: \[1, 1\] lists a value more than once"),
        ("ranks", "x", r"auto\.ranks: expected an integer, got 'x'"),
        ("ranks", [0], r"auto\.ranks: 0 is outside \[1, "),
        ("folds", 1, r"auto\.folds must be >= 2, got 1"),
        ("margin_z", -1, r"auto\.margin_z must be >= 0"),
        ("alpha", 0.9, r"auto\.alpha must be <= 0\.5"),
    ],
)
def test_bad_auto_settings_are_one_line(key, value, message):
    with pytest.raises(RlptuneError, match=message):
        resolve_config(None, {"auto": {key: value}})


# -- the guard -----------------------------------------------------------------------------------------------------


@PROPS
@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=60), st.floats(0, 3))
def test_the_guard_never_keeps_a_candidate_at_or_below_the_baseline(pairs, z):
    candidate = torch.tensor([c for c, _ in pairs])
    baseline = torch.tensor([b for _, b in pairs])
    guard = auto.paired_margin(candidate, baseline, z)
    if guard["beats_zero_shot"]:
        assert int(candidate.sum()) > int(baseline.sum())
        assert guard["margin"] > z * guard["se"]
    assert guard["b"] - guard["w"] == int(candidate.sum()) - int(baseline.sum())


def test_the_guard_bound_is_bonferroni_over_the_candidates_unless_set():
    settings = resolve_config(None, {"auto": {"enabled": True}}).auto
    assert round(auto.guard_z(settings, 1), 3) == 1.645 and round(auto.guard_z(settings, 12), 3) == 2.638
    settings.margin_z = 0.0
    assert auto.guard_z(settings, 12) == 0.0


def test_wilson_interval_matches_the_formula():
    low, high = auto.wilson_interval(22, 30)
    assert (round(low, 1), round(high, 1)) == (55.6, 85.8)
    assert auto.wilson_interval(0, 10)[0] == 0.0 and auto.wilson_interval(10, 10)[1] == 100.0


# -- runs ----------------------------------------------------------------------------------------------------------


def test_no_candidate_above_the_noise_returns_the_zero_shot_prompt(tiny, colour_folder, tmp_path, single_thread):
    result = train(_config(colour_folder, tmp_path), tmp_path / "run", backbone=tiny, progress=False)
    record = result["auto"]
    assert record["decision"] == "zero-shot" and record["baseline"]["is_zero_shot_prompt"]
    assert record["validation"].startswith("the validation split")
    assert [c["name"] for c in record["candidates"]] == ["r1-crop0.5-drop0.1", "r2-crop0.5-drop0.1"]
    assert all(len(c["curve"]) == 3 for c in record["candidates"])  # every candidate's per-epoch validation curve
    assert not record["margin"]["beats_zero_shot"]
    method = load_adapter(tmp_path / "run" / "adapter", tiny)
    assert float(method.prompt.B.detach().abs().max()) == 0.0  # P_B = 0: the folded prompt is P_fr
    assert torch.equal(method.prompt.merged(), method.prompt.frozen)
    zero = train(
        _config(colour_folder, tmp_path, "zeroshot", auto={"enabled": False}),
        tmp_path / "zs",
        backbone=tiny,
        progress=False,
    )
    assert result["metrics"]["test"]["top1"] == zero["metrics"]["test"]["top1"]


def test_a_candidate_clear_of_the_noise_is_kept_and_recorded(tiny, wide_val, tmp_path, single_thread):
    config = _config(
        wide_val,
        tmp_path,
        "coop",
        data={"shots": 0},
        method={"class_specific": True},
        train={"epochs": 8, "batch_size": 16},
        auto={"crop_scales": [0.5, 1.0], "margin_z": 1.0},
    )  # 48 images: a 1-SE bound is clearable
    result = train(config, tmp_path / "run", backbone=tiny, progress=False)
    record = result["auto"]
    assert record["decision"] == "candidate" and not record["batched"]  # per-class contexts: one at a time
    assert record["margin"]["margin"] > record["margin"]["z"] * record["margin"]["se"] > 0
    best = record["best_candidate"]
    assert best["val"] > record["baseline"]["val"]
    curve = next(c["curve"] for c in record["candidates"] if c["name"] == best["name"])
    assert best["val"] == max(curve) and curve.index(max(curve)) + 1 == best["epoch"]
    adapter = json.loads((tmp_path / "run" / "adapter" / "rlptune_adapter.json").read_text())
    assert "auto" not in json.dumps(adapter["settings"])  # the adapter records the chosen settings, auto off
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["val_acc"] for ln in lines] == curve


def test_k_fold_when_the_validation_split_is_too_small(tiny, colour_folder, tmp_path, single_thread):
    config = _config(
        colour_folder, tmp_path, auto={"min_val_per_class": 5, "folds": 2, "ranks": [1]}, train={"epochs": 2}
    )
    result = train(config, tmp_path / "run", backbone=tiny, progress=False)
    record = result["auto"]
    assert record["folds"] == 2 and record["validation"].startswith("2-fold cross-validation over the 16 training")
    assert record["margin"]["n"] == 16  # every training shot validated once


def test_too_few_shots_for_the_folds_is_one_line(tiny, colour_folder, tmp_path):
    config = _config(colour_folder, tmp_path, data={"shots": 1}, auto={"min_val_per_class": 5, "folds": 3})
    with pytest.raises(
        RlptuneError,
        match=r"^auto: the validation split has fewer than auto.min_val_per_class=5 images "
        r"in some class and 4 training images are too few for auto.folds=3 folds$",
    ):
        train(config, tmp_path / "run", backbone=tiny, progress=False)
    assert not (tmp_path / "run").exists()


def test_the_spectrum_rule_picks_the_smallest_rank_holding_the_energy(tiny, colour_folder, tmp_path, single_thread):
    config = _config(
        colour_folder, tmp_path, auto={"rank_rule": "spectrum", "energy": 0.8, "ranks": [1, 2, 4]}, train={"epochs": 4}
    )
    record = train(config, tmp_path / "run", backbone=tiny, progress=False)["auto"]
    spectrum = record["spectrum"]
    shares = spectrum["energy_share"]
    assert shares == sorted(shares) and shares[spectrum["rank"] - 1] >= 0.8
    assert spectrum["rank"] == 1 or shares[spectrum["rank"] - 2] < 0.8
    assert {c["settings"]["prompt"]["rank"] for c in record["candidates"]} == {spectrum["rank"]}


def test_cli_auto_says_what_it_returned(tiny_arch_path, colour_folder, tmp_path, capsys, cache_dir, single_thread):
    args = [
        "train",
        "--backbone",
        tiny_arch_path,
        "--dataset",
        "folder",
        "--data-root",
        colour_folder,
        "--method",
        "rlp",
        "--shots",
        "4",
        "--epochs",
        "2",
        "--auto",
        "--auto-ranks",
        "1",
        "--auto-crop-scales",
        "0.5",
        "--auto-dropouts",
        "0.1",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "-o",
        tmp_path / "run",
        "--no-progress",
    ]
    assert main([str(a) for a in args]) == 0
    err = capsys.readouterr().err
    assert (
        "auto: no candidate beats the zero-shot prompt on validation" in err and "returning the zero-shot prompt" in err
    )


def test_cli_auto_on_a_closed_form_method_is_one_line(tiny_arch_path, colour_folder, tmp_path, capsys, cache_dir):
    args = [
        "train",
        "--backbone",
        tiny_arch_path,
        "--dataset",
        "folder",
        "--data-root",
        colour_folder,
        "--method",
        "linear_probe",
        "--auto",
        "--device",
        "cpu",
        "-o",
        tmp_path / "run",
        "--no-progress",
    ]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "rlptune: error: auto.enabled: method 'linear_probe' has no prompt trained by gradient steps to "
        "choose settings for"
    ]
    assert not (tmp_path / "run").exists()  # nothing half-written
