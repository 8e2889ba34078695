"""A prompt kind owns its settings: the low-rank knobs are the ``lowrank`` kind's typed options (``prompt.options``),
and the spelling every file and command line used until 0.3 (``prompt.rank`` …, ``--rank``) still means the same.

Old ``config.yaml`` files and adapters load to the same values and predict the same; both spellings give the same
resolved settings and the same settings hash (the run folder's key), and refuse a bad value with the same line; a
knob a kind does not declare is refused unless it is 0.2's default (0.2 recorded every knob for every kind); a kind
registered from outside the package declares options that ``--set``, YAML and flags reach
(docs/RELIABILITY.md, "Prompt-kind options").
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st

import rlptune
from rlptune import registry
from rlptune.backbones import load_backbone
from rlptune.cli import build_parser, config_from_args, main
from rlptune.config import (
    FORMER_PROMPT_FIELDS,
    config_from_dict,
    former_prompt,
    in_former_spelling,
    parse_set,
    resolve_config,
)
from rlptune.engine import adapter as adapter_mod
from rlptune.engine.adapter import load_adapter, read_adapter_config, save_adapter
from rlptune.errors import RlptuneError
from rlptune.methods import build_method
from rlptune.prompts import LowRankOptions, prompt_layout, prompt_options
from rlptune.rundir import settings_hash

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "settings_0_1"
KNOBS = ("rank", "dropout", "a_std", "b_std", "alpha")
CLASSES = ["red", "green", "blue"]


def _one_line(call) -> str:
    with pytest.raises(RlptuneError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def _rlp(prompt: dict | None = None, **sections):
    return resolve_config(overrides={"method": {"name": "rlp"}, "prompt": prompt or {}, **sections})


# -- old files -------------------------------------------------------------------------------------------------------


def test_a_0_2_shaped_config_yaml_loads_to_the_same_values(tmp_path):
    """``prompt: {kind: lowrank, rank: 2, dropout: 0.1, …}`` (every knob flat, as 0.2 wrote) is the kind's options."""
    old = yaml.safe_load((OLD / "rlp_config.yaml").read_text(encoding="utf-8"))
    old["prompt"].update(rank=2, dropout=0.1, a_std=0.5, b_std=0.01, alpha=4.0)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(old), encoding="utf-8")
    for config in (config_from_dict(old), resolve_config(str(path))):
        assert config.prompt.options == {"rank": 2, "dropout": 0.1, "a_std": 0.5, "b_std": 0.01, "alpha": 4.0}
        # the settings hash sees exactly the file's 0.2 shape
        assert in_former_spelling(config.to_dict())["prompt"] == old["prompt"]


def test_a_0_2_config_of_a_full_rank_kind_drops_the_knobs_it_never_used():
    old = yaml.safe_load((OLD / "coop_csc_config.yaml").read_text(encoding="utf-8"))
    assert {k: old["prompt"][k] for k in KNOBS} == {
        "rank": 1,
        "dropout": 0.0,
        "a_std": 1.0,
        "b_std": 0.0,
        "alpha": None,
    }
    config = config_from_dict(old)
    assert config.prompt.kind == "full" and config.prompt.options == {}
    assert in_former_spelling(config.to_dict())["prompt"] == old["prompt"]


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")


def test_an_adapter_in_either_shape_loads_and_predicts_the_same(tiny, tmp_path, monkeypatch):
    """An adapter written now (``settings.prompt.options``) and the same adapter with its settings in the 0.2/0.3
    shape (flat ``settings.prompt.rank`` …, as those versions wrote it) load to the same settings and logits."""
    monkeypatch.setattr(adapter_mod, "load_backbone", lambda spec, device="cpu", **kw: tiny)
    config = _rlp({"rank": 2, "dropout": 0.2, "alpha": 3.0})
    built = build_method(config, tiny, CLASSES, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in built.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    new = save_adapter(tmp_path / "new", built, config)
    payload = json.loads((new / "rlptune_adapter.json").read_text())
    assert payload["settings"]["prompt"]["options"] == {
        "rank": 2,
        "dropout": 0.2,
        "a_std": 1.0,
        "b_std": 0.0,
        "alpha": 3.0,
    }
    old = tmp_path / "old"
    old.mkdir()
    for item in new.iterdir():
        (old / item.name).write_bytes(item.read_bytes())
    payload["settings"]["prompt"] = former_prompt(payload["settings"]["prompt"])  # the 0.2 / 0.3 shape
    assert "options" not in payload["settings"]["prompt"] and payload["settings"]["prompt"]["rank"] == 2
    (old / "rlptune_adapter.json").write_text(json.dumps(payload))
    features = torch.nn.functional.normalize(
        torch.randn(5, tiny.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    loaded = [load_adapter(folder, tiny) for folder in (new, old)]
    with torch.no_grad():
        expected = built.eval().logits(features)
        for method in loaded:
            assert torch.equal(method.eval().logits(features), expected)
    for folder in (new, old):
        settings_ = config_from_dict(read_adapter_config(folder)["settings"], str(folder))
        assert prompt_options(settings_.prompt) == LowRankOptions(rank=2, dropout=0.2, alpha=3.0)


def test_the_0_1_adapter_fixture_reads_its_flat_knobs_into_the_options(tiny):
    recorded = read_adapter_config(OLD / "rlp_adapter")["settings"]
    assert config_from_dict(recorded).prompt.options == {k: recorded["prompt"][k] for k in KNOBS}


# -- the two spellings -----------------------------------------------------------------------------------------------


def test_the_short_spelling_and_the_options_spelling_mean_the_same_on_every_route(tmp_path):
    short, full = tmp_path / "short.yaml", tmp_path / "full.yaml"
    short.write_text("method: {name: rlp}\nprompt: {rank: 3, dropout: 0.25}\n")
    full.write_text("method: {name: rlp}\nprompt: {options: {rank: 3, dropout: 0.25}}\n")
    routes = [
        resolve_config(str(short)),
        resolve_config(str(full)),
        _rlp({"rank": 3, "dropout": 0.25}),
        resolve_config(overrides={"method": {"name": "rlp"}, **parse_set(["prompt.rank=3", "prompt.dropout=0.25"])}),
        resolve_config(
            overrides={"method": {"name": "rlp"}, **parse_set(["prompt.options.rank=3", "prompt.options.dropout=.25"])}
        ),
        main_args(["train", "--method", "rlp", "--rank", "3", "--dropout", "0.25", "-o", "x"]),
    ]
    assert all(r.to_dict() == routes[0].to_dict() for r in routes)
    assert routes[0].prompt.options["rank"] == 3 and routes[0].prompt.options["dropout"] == 0.25
    assert len({settings_hash(r.to_dict()) for r in routes}) == 1


def test_a_later_layer_wins_whichever_spelling_each_uses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: rlp}\nprompt: {options: {rank: 2}}\n")
    assert resolve_config(str(path), parse_set(["prompt.rank=4"])).prompt.options["rank"] == 4
    path.write_text("method: {name: rlp}\nprompt: {rank: 2}\n")
    assert resolve_config(str(path), parse_set(["prompt.options.rank=4"])).prompt.options["rank"] == 4
    # the recipe gives prompt.dropout = 0.1 in the short spelling; an options value given later wins
    assert _rlp({"options": {"dropout": 0.3}}).prompt.options["dropout"] == 0.3


def test_both_spellings_in_one_mapping_with_different_values_is_one_line(tmp_path):
    assert _one_line(lambda: _rlp({"rank": 2, "options": {"rank": 3}})) == (
        "prompt.rank=2 and prompt.options.rank=3 disagree; give it once, as prompt.options.rank"
    )
    assert _rlp({"rank": 2, "options": {"rank": "2"}}).prompt.options["rank"] == 2  # the same value twice is fine


def test_a_knob_the_kind_does_not_declare_is_refused_unless_it_is_the_0_2_default():
    coop = {"method": {"name": "coop"}}
    assert _one_line(lambda: resolve_config(overrides={**coop, "prompt": {"rank": 2}})) == (
        "prompt.rank=2: prompt kind 'full' does not support this setting (leave it at 1)"
    )
    assert _one_line(lambda: resolve_config(overrides={**coop, **parse_set(["prompt.dropout=0.1"])})) == (
        "prompt.dropout=0.1: prompt kind 'full' does not support this setting (leave it at 0.0)"
    )
    assert _one_line(lambda: resolve_config(overrides={**coop, "prompt": {"options": {"rank": 2}}})) == (
        "prompt.options: prompt kind 'full' takes no options, got 'rank'"
    )
    assert _one_line(lambda: main_args(["train", "--method", "coop", "--alpha", "2", "-o", "x"])) == (
        "prompt.alpha=2.0: prompt kind 'full' does not support this setting (leave it at None)"
    )
    defaults = {k: dataclasses.fields(LowRankOptions)[i].default for i, k in enumerate(KNOBS)}
    assert resolve_config(overrides={**coop, "prompt": defaults}).prompt.options == {}


def main_args(argv: list[str]):
    return config_from_args(build_parser(argv).parse_args(argv))


def test_an_unknown_option_of_a_kind_is_one_line_with_a_suggestion():
    assert _one_line(lambda: _rlp({"options": {"rnak": 2}})) == (
        "prompt.options: unknown option 'rnak' for prompt kind 'lowrank' (did you mean 'rank'?); "
        "valid options: rank, dropout, a_std, b_std, alpha"
    )
    assert _one_line(lambda: _rlp({"rnak": 2})).endswith(
        "prompt: unknown field 'rnak' (did you mean 'rank'?); "
        "valid fields: kind, n_ctx, ctx_init, init_std, options, "
        "rank, dropout, a_std, b_std, alpha"
    )


def test_the_former_spelling_keeps_0_2s_defaults_which_are_the_kinds():
    """The 0.2 defaults that a kind without the knob may carry silently are the low-rank kind's defaults."""
    former = {name: f.default for name, f in FORMER_PROMPT_FIELDS.items()}
    assert former == dataclasses.asdict(LowRankOptions())
    assert set(prompt_layout("lowrank").searchable) <= set(former)


#: a valid value of each knob, and an invalid one with the line both spellings give
VALID = {
    "rank": st.integers(1, 4096),
    "dropout": st.floats(0.0, 0.99, allow_nan=False),
    "a_std": st.floats(0.0, 1e6, allow_nan=False),
    "b_std": st.floats(0.0, 1e6, allow_nan=False),
    "alpha": st.one_of(st.none(), st.floats(1e-6, 1e6, allow_nan=False)),
}
INVALID = {
    "rank": st.one_of(st.integers(-(10**6), 0), st.integers(4097, 10**9)),
    "dropout": st.one_of(st.floats(1.0, 1e6), st.floats(-1e6, -1e-9)),
    "a_std": st.floats(-1e6, -1e-9),
    "b_std": st.floats(-1e6, -1e-9),
    "alpha": st.floats(-1e6, 0.0),
}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), knob=st.sampled_from(KNOBS), as_text=st.booleans())
def test_property_every_valid_value_means_the_same_in_every_spelling(data, knob, as_text):
    """For any valid value: ``prompt.<knob>`` and ``prompt.options.<knob>``, in YAML (a mapping) or through
    ``--set`` (text), resolve to the same settings and the same settings hash, and the options hold the value."""
    value = data.draw(VALID[knob])
    text = "null" if value is None else repr(value)
    routes = [
        _rlp({knob: value}),
        _rlp({"options": {knob: value}}),
        resolve_config(overrides={"method": {"name": "rlp"}, **parse_set([f"prompt.{knob}={text}"])}),
        resolve_config(overrides={"method": {"name": "rlp"}, **parse_set([f"prompt.options.{knob}={text}"])}),
    ]
    if as_text:  # a value quoted in a file reads as the same value
        routes.append(_rlp({knob: text}))
    first = routes[0].to_dict()
    assert all(r.to_dict() == first for r in routes)
    assert len({settings_hash(r.to_dict()) for r in routes}) == 1
    assert first["prompt"]["options"][knob] == value
    assert in_former_spelling(first)["prompt"][knob] == value  # and the hash sees it where 0.2 had it


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), knob=st.sampled_from(KNOBS))
def test_property_an_invalid_value_is_refused_with_the_same_line_in_every_spelling(data, knob):
    value = data.draw(INVALID[knob])
    text = repr(value)
    lines = {
        _one_line(lambda: _rlp({knob: value})),
        _one_line(lambda: _rlp({"options": {knob: value}})),
        _one_line(
            lambda: resolve_config(overrides={"method": {"name": "rlp"}, **parse_set([f"prompt.{knob}={text}"])})
        ),
        _one_line(
            lambda: resolve_config(
                overrides={"method": {"name": "rlp"}, **parse_set([f"prompt.options.{knob}={text}"])}
            )
        ),
    }
    assert len(lines) == 1, lines
    assert next(iter(lines)).startswith(f"prompt.{knob}" if knob in ("rank", "dropout", "alpha") else "prompt.a_std")


# -- settings hash and folder names ----------------------------------------------------------------------------------


def test_the_settings_hash_is_taken_over_the_0_2_shape():
    config = _rlp({"rank": 2})
    flat = dict(config.to_dict())
    flat["prompt"] = {k: v for k, v in flat["prompt"].items() if k != "options"}
    flat["prompt"].update(config.prompt.options)  # what 0.2's to_dict gave
    assert in_former_spelling(config.to_dict())["prompt"] == flat["prompt"]
    assert settings_hash(config.to_dict()) == settings_hash(flat)
    assert settings_hash(config.to_dict()) != settings_hash(_rlp({"rank": 3}).to_dict())


def test_one_reader_for_results_of_every_version():
    """The study reads rank from result.json files written by 0.2/0.3 (flat) and by this version (options)."""
    assert former_prompt({"kind": "lowrank", "rank": 3, "dropout": 0.1})["rank"] == 3
    assert former_prompt({"kind": "lowrank", "options": {"rank": 3}})["rank"] == 3
    assert former_prompt({"kind": "full", "options": {}})["rank"] == 1  # 0.2's default for a kind without it
    assert former_prompt({})["rank"] == 1


def test_auto_searches_the_kinds_options_and_keeps_a_full_kind_free_of_them():
    from rlptune.engine.auto import candidate_grid, candidate_name, with_settings

    rlp = _rlp(auto={"enabled": True, "ranks": [1, 2], "dropouts": [0.1], "crop_scales": [0.5]})
    grid = candidate_grid(rlp)
    assert [candidate_name(g) for g in grid] == ["r1-crop0.5-drop0.1", "r2-crop0.5-drop0.1"]
    assert with_settings(rlp, grid[1]).prompt.options["rank"] == 2
    coop = resolve_config(overrides={"method": {"name": "coop"}, "auto": {"enabled": True, "crop_scales": [0.5]}})
    grid = candidate_grid(coop)
    assert [candidate_name(g) for g in grid] == ["r1-crop0.5-drop0"]  # the names 0.2 gave
    assert with_settings(coop, grid[0]).prompt.options == {}  # nothing the full kind would refuse on load


# -- a kind from outside the package ---------------------------------------------------------------------------------


@dataclass
class ShiftOptions:
    shift: float = rlptune.option(0.0, "constant added to the initial prompt", low=-10.0, high=10.0)
    learn_shift: bool = rlptune.option(False, "train the shift too")

    def validate(self) -> None:
        if self.learn_shift and self.shift == 0.0:
            raise RlptuneError("prompt.learn_shift needs a non-zero prompt.shift")


class ShiftedPrompt(rlptune.PromptModule):
    def __init__(self, init: torch.Tensor, shift: float) -> None:
        super().__init__()
        self.register_buffer("initial", init.detach().clone().float() + shift, persistent=False)
        self.ctx = torch.nn.Parameter(init.detach().clone().float() + shift)

    def forward(self) -> torch.Tensor:
        return self.ctx

    def count_term(self, n_sym="n", d_sym="d", copies_sym=""):
        return f"{n_sym}·{d_sym}", self.num_trainable()


def _build_shifted(settings, init, from_text):
    return ShiftedPrompt(init, rlptune.prompts.prompt_options(settings).shift)


@pytest.fixture()
def shifted_kind():
    rlptune.register_prompt_kind("toy_shifted", _build_shifted, options=ShiftOptions)
    yield "toy_shifted"
    for table in (registry._PROMPT_KINDS, registry._PROMPT_OPTIONS, rlptune.prompts.base._LAYOUTS):
        table.pop("toy_shifted", None)
    registry._PLUGIN_MODULES.pop(__name__, None)


def test_an_outside_kind_declares_options_that_set_yaml_and_flags_reach(shifted_kind, tmp_path, tiny):
    base = {"method": {"name": "coop"}, "prompt": {"kind": shifted_kind, "n_ctx": 2}}
    by_set = resolve_config(
        overrides={
            "method": {"name": "coop"},
            **parse_set([f"prompt.kind={shifted_kind}", "prompt.n_ctx=2", "prompt.options.shift=0.5"]),
        }
    )
    path = tmp_path / "c.yaml"
    path.write_text(f"method: {{name: coop}}\nprompt: {{kind: {shifted_kind}, n_ctx: 2, options: {{shift: 0.5}}}}\n")
    by_yaml = resolve_config(str(path))
    by_flag = main_args(
        ["train", "--method", "coop", "--prompt", shifted_kind, "--n-ctx", "2", "--shift", "0.5", "-o", "x"]
    )
    for config in (by_set, by_yaml, by_flag):
        assert config.prompt.options == {"shift": 0.5, "learn_shift": False}
    assert by_set.to_dict() == by_yaml.to_dict() == by_flag.to_dict()
    torch.manual_seed(0)
    shifted = build_method(by_yaml, tiny, CLASSES, None).prompt
    torch.manual_seed(0)
    plain = build_method(resolve_config(overrides=base), tiny, CLASSES, None).prompt
    assert torch.equal(shifted.ctx, shifted.initial)  # built from the option, through prompt_options(settings)
    assert torch.allclose(shifted.initial - plain.initial, torch.full_like(plain.initial, 0.5), atol=1e-6)
    # its own bounds and check, one line each; the hash keeps its options apart from 0.2's knobs
    assert _one_line(
        lambda: resolve_config(overrides={**base, "prompt": {**base["prompt"], "options": {"shift": 11}}})
    ) == ("prompt.shift must be <= 10.0, got 11.0")
    assert (
        _one_line(
            lambda: resolve_config(overrides={**base, "prompt": {**base["prompt"], "options": {"learn_shift": True}}})
        )
        == "prompt.learn_shift needs a non-zero prompt.shift"
    )
    assert in_former_spelling(by_yaml.to_dict())["prompt"]["options"] == {"shift": 0.5, "learn_shift": False}
    assert _one_line(lambda: resolve_config(overrides={**base, "prompt": {**base["prompt"], "rank": 2}})) == (
        "prompt.rank=2: prompt kind 'toy_shifted' does not support this setting (leave it at 1)"
    )


def test_the_kinds_options_appear_in_help(shifted_kind, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--prompt", shifted_kind, "--help"])
    out = capsys.readouterr().out
    assert f"{shifted_kind} prompt options (prompt.options.*)" in out and "--shift SHIFT" in out
    assert "--learn-shift" in out and "constant added to the initial prompt" in out
    with pytest.raises(SystemExit):
        main(["train", "--method", "rlp", "--help"])
    out = capsys.readouterr().out
    for flag in ("--rank", "--dropout", "--a-std", "--b-std", "--alpha"):
        assert flag in out
    assert "prompt.options.rank" in out


def test_a_kinds_options_must_be_a_dataclass():
    assert _one_line(lambda: rlptune.register_prompt_kind("k", _build_shifted, options=dict)) == (
        "prompt kind 'k': options must be a dataclass (fields made with rlptune.option)"
    )
    assert "k" not in registry._PROMPT_KINDS  # nothing half-registered


# -- the catalogue ---------------------------------------------------------------------------------------------------

#: the case ids of docs/RELIABILITY.md's "Prompt-kind options" section, each held by a test of this file
CASES = {
    "prompt-knob-both-spellings-disagree": "test_both_spellings_in_one_mapping_with_different_values_is_one_line",
    "prompt-knob-not-declared": "test_a_knob_the_kind_does_not_declare_is_refused_unless_it_is_the_0_2_default",
    "prompt-option-not-declared": "test_a_knob_the_kind_does_not_declare_is_refused_unless_it_is_the_0_2_default",
    "prompt-option-unknown": "test_an_unknown_option_of_a_kind_is_one_line_with_a_suggestion",
    "prompt-option-invalid-either-spelling": (
        "test_property_an_invalid_value_is_refused_with_the_same_line_in_every_spelling"
    ),
    "prompt-option-two-spellings-one-meaning": "test_property_every_valid_value_means_the_same_in_every_spelling",
    "prompt-old-config-and-adapter": "test_an_adapter_in_either_shape_loads_and_predicts_the_same",
    "prompt-outside-kind-option-bound": "test_an_outside_kind_declares_options_that_set_yaml_and_flags_reach",
    "prompt-kind-options-not-dataclass": "test_a_kinds_options_must_be_a_dataclass",
}


def test_every_case_is_in_the_catalogue_section_and_held_by_a_test():
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("\n## Prompt-kind options\n", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M) == list(CASES)
    assert "tests/test_prompt_kind_options.py" in section
    source = Path(__file__).read_text(encoding="utf-8")
    for test in CASES.values():
        assert f"\ndef {test}(" in source, test
