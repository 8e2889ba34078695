"""A method owns its settings: the knobs only some methods use (class_specific, class_token_position, text_chunk,
checkpoint_text, shared_prefix, templates, use_dataset_template) are options of the methods that declare them.

Their former spelling ``method.<knob>`` still reads (old config.yaml files and adapters, written by the previous
format as fixtures under tests/fixtures/settings_0_1/, still load; the flags users know still work); the same knob
given both ways differently is one line; a method that does not declare a knob refuses a value other than its
default. And nothing outside ``prompts/`` asks whether a prompt is low-rank."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st

from rlptune.backbones import load_backbone
from rlptune.cli import main
from rlptune.config import RunConfig, config_from_dict, resolve_config
from rlptune.engine.adapter import load_adapter
from rlptune.errors import RlptuneError

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "settings_0_1"
KNOBS = ("class_specific", "class_token_position", "text_chunk", "checkpoint_text", "shared_prefix")


def _old(name: str) -> dict:
    return yaml.safe_load((FIXTURES / f"{name}.yaml").read_text(encoding="utf-8"))


def _one_line(call) -> str:
    with pytest.raises(RlptuneError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


# -- old files ------------------------------------------------------------------------------------------------------


def test_an_old_config_yaml_loads_with_its_knobs_in_the_method_options():
    rlp = config_from_dict(_old("rlp_config"))
    assert rlp.method.name == "rlp"
    assert {k: rlp.method.options[k] for k in KNOBS} == {
        "class_specific": False,
        "class_token_position": "end",
        "text_chunk": 2,
        "checkpoint_text": True,
        "shared_prefix": True,
    }
    assert rlp.prompt.kind == "lowrank"
    assert {k: rlp.prompt.options[k] for k in ("rank", "dropout", "alpha")} == {
        "rank": 2,
        "dropout": 0.25,
        "alpha": 4.0,
    }
    coop = config_from_dict(_old("coop_csc_config"))
    assert (coop.method.options["class_specific"], coop.method.options["class_token_position"]) == (True, "middle")
    assert coop.train.epochs == 3
    zeroshot = config_from_dict(_old("zeroshot_config"))
    assert zeroshot.method.options == {
        "templates": ["a photo of a {}.", "a drawing of a {}."],
        "use_dataset_template": False,
    }


def test_an_old_config_yaml_means_what_the_same_settings_mean_today():
    old = config_from_dict(_old("coop_csc_config"))
    new = resolve_config(
        overrides={
            "method": {"name": "coop", "options": {"class_specific": True, "class_token_position": "middle"}},
            "train": {"epochs": 3},
            "backbone": {"name": "micro"},
        }
    )  # the file's backbone
    assert old.to_dict() == new.to_dict()


def test_an_old_config_of_a_method_with_an_option_named_like_a_knob_keeps_its_own():
    """PromptSRC's own ``templates`` option (its ensemble) is not the zero-shot templates an old file records for
    every method."""
    data = {
        "method": {
            "name": "promptsrc",
            "templates": ["a photo of a {}."],
            "class_specific": False,
            "use_dataset_template": False,
            "options": {"templates": []},
        }
    }
    assert config_from_dict(data).method.options["templates"] == []


def test_an_old_adapter_loads_and_predicts_as_before(tiny_arch_path):
    tiny = load_backbone(str(tiny_arch_path), device="cpu")
    method = load_adapter(FIXTURES / "rlp_adapter", tiny)
    assert method.options.text_chunk == 2 and method.options.checkpoint_text is True
    features = torch.nn.functional.normalize(
        torch.randn(5, tiny.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    expected = torch.tensor(json.loads((FIXTURES / "rlp_adapter_logits.json").read_text()))
    with torch.no_grad():
        assert torch.equal(method.logits(features), expected)


# -- the two spellings -----------------------------------------------------------------------------------------------


def test_the_same_knob_spelled_both_ways_differently_is_one_line():
    line = _one_line(
        lambda: resolve_config(
            overrides={"method": {"name": "coop", "class_specific": True, "options": {"class_specific": False}}}
        )
    )
    assert line == (
        "method.class_specific=True and method.options.class_specific=False disagree; give it once, as "
        "method.options.class_specific"
    )
    same = resolve_config(
        overrides={"method": {"name": "coop", "class_specific": True, "options": {"class_specific": "true"}}}
    )
    assert same.method.options["class_specific"] is True


def test_a_later_layer_wins_whichever_spelling_each_uses(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: {name: coop, options: {text_chunk: 5}}\n")
    assert resolve_config(str(path), {"method": {"text_chunk": 7}}).method.options["text_chunk"] == 7
    path.write_text("method: {name: coop, text_chunk: 5}\n")
    assert resolve_config(str(path), {"method": {"options": {"text_chunk": 7}}}).method.options["text_chunk"] == 7


def test_a_method_that_does_not_declare_a_knob_refuses_it_unless_it_is_left_at_its_default():
    assert _one_line(lambda: resolve_config(overrides={"method": {"name": "cocoop", "checkpoint_text": True}})) == (
        "method.checkpoint_text=True: method 'cocoop' does not support this setting (leave it at False)"
    )
    assert "unknown option 'checkpoint_text' for method 'cocoop'" in _one_line(
        lambda: resolve_config(overrides={"method": {"name": "cocoop", "options": {"checkpoint_text": True}}})
    )
    resolve_config(
        overrides={"method": {"name": "cocoop", "checkpoint_text": False, "templates": ["a photo of a {}."]}}
    )


def test_a_knobs_checks_hold_in_the_options_spelling_too():
    assert _one_line(
        lambda: resolve_config(overrides={"method": {"name": "coop", "options": {"class_token_position": "back"}}})
    ) == ("method.options.class_token_position: expected one of end, middle, front, got 'back'")
    assert "method.options.text_chunk must be >= 0, got -1" in _one_line(
        lambda: resolve_config(overrides={"method": {"name": "coop", "options": {"text_chunk": -1}}})
    )
    assert "template 'a photo' must contain {}" in _one_line(
        lambda: resolve_config(overrides={"method": {"name": "zeroshot", "options": {"templates": ["a photo"]}}})
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    value=st.one_of(st.integers(-5, 10**7), st.floats(-5, 1e7, allow_nan=False)),
    spelling=st.sampled_from(["plain", "text", "float-text"]),
)
def test_a_knob_means_the_same_in_either_spelling(value, spelling):
    """A text_chunk accepted in one spelling is accepted, with the same value, in the other; refused in both."""
    raw = {"plain": value, "text": str(value), "float-text": f"{float(value):e}"}[spelling]

    def resolved(method: dict):
        try:
            return resolve_config(overrides={"method": {"name": "coop", **method}}).method.options["text_chunk"]
        except RlptuneError:
            return "refused"

    assert resolved({"text_chunk": raw}) == resolved({"options": {"text_chunk": raw}})


# -- flags -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [([], 2 * 512), (["--csc"], 2 * 2 * 512)])
def test_the_flags_users_know_still_reach_the_method(flags, expected, capsys):
    code = main(["params", "--backbone", "ViT-B-16", "--json", "--method", "coop", "--n-ctx", "2", *flags])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["trainable_params"] == expected


def test_the_former_flags_set_the_options():
    from rlptune.cli import build_parser, config_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--method",
            "coop",
            "--text-chunk",
            "3",
            "--class-token-position",
            "middle",
            "--no-shared-prefix",
            "--checkpoint-text",
            "-o",
            "x",
        ]
    )
    options = config_from_args(args).method.options
    assert (
        options["text_chunk"],
        options["class_token_position"],
        options["shared_prefix"],
        options["checkpoint_text"],
    ) == (3, "middle", False, True)
    args = build_parser().parse_args(
        ["train", "--method", "zeroshot", "--template", "a {}.", "--template", "an {}!", "-o", "x"]
    )
    assert config_from_args(args).method.options["templates"] == ["a {}.", "an {}!"]


def test_a_named_runconfig_records_the_methods_options_as_resolving_does():
    assert RunConfig(method="kgcoop").to_dict() == resolve_config(overrides={"method": {"name": "kgcoop"}}).to_dict()


# -- the prompt kind owns its sizes -----------------------------------------------------------------------------------


def _is_prompt_settings(node: ast.AST) -> bool:
    """``x.prompt``, ``prompt``, ``settings`` or their ``.options`` (the prompt kind's options mapping)."""
    if isinstance(node, ast.Attribute) and node.attr == "options":
        node = node.value
    return (isinstance(node, ast.Attribute) and node.attr == "prompt") or (
        isinstance(node, ast.Name) and node.id in ("settings", "prompt")
    )


def _low_rank_reads(tree: ast.AST) -> list[int]:
    """Lines that compare a prompt kind with "lowrank" or read a low-rank knob of prompt settings: ``.rank``,
    ``getattr(cfg.prompt, "rank")``, ``cfg.prompt.options["rank"]``, ``cfg.prompt.options.get("rank")`` …"""
    knobs = {"rank", "dropout", "a_std", "b_std", "alpha"}
    lines = []
    for node in ast.walk(tree):
        sides = [node.left, *node.comparators] if isinstance(node, ast.Compare) else []
        compares_kind = any(isinstance(c, ast.Constant) and c.value == "lowrank" for c in sides) and any(
            isinstance(c, ast.Attribute) and c.attr == "kind" for c in sides
        )
        attribute = isinstance(node, ast.Attribute) and node.attr in knobs and _is_prompt_settings(node.value)
        by_name = (
            isinstance(node, ast.Call)
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value in knobs
            and (
                (isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr", "hasattr", "delattr"))
                and _is_prompt_settings(node.args[0])
            )
        )
        by_method = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("get", "pop", "setdefault")
            and node.func.value is not None
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "options"
            and _is_prompt_settings(node.func.value)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in knobs
        )
        subscript = (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and node.slice.value in knobs
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "options"
            and _is_prompt_settings(node.value)
        )
        if compares_kind or attribute or by_name or by_method or subscript:
            lines.append(node.lineno)
    return lines


def test_nothing_outside_prompts_asks_whether_a_prompt_is_low_rank():
    """No code outside ``prompts/`` compares a prompt kind with "lowrank" or reads a low-rank knob of prompt
    settings, by attribute, ``getattr`` or the kind's options mapping (the kind's module counts, describes and
    declares its own sizes and reads its typed options; ``config.py`` only knows the knobs' former spelling)."""
    package = ROOT / "src" / "rlptune"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("prompts/"):
            continue
        offenders += [f"{rel}:{line}" for line in _low_rank_reads(ast.parse(path.read_text(encoding="utf-8")))]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "source",
    [
        "config.prompt.rank",
        "settings.dropout",
        "getattr(config.prompt, 'rank')",
        "setattr(cfg.prompt, 'dropout', 0.0)",
        "config.prompt.options['alpha']",
        "config.prompt.options.get('a_std')",
        "prompt.options.b_std",
        "config.prompt.kind == 'lowrank'",
    ],
)
def test_the_low_rank_read_check_catches_every_spelling(source):
    """The check above is not vacuous: each way of reading a low-rank knob of prompt settings is caught."""
    assert _low_rank_reads(ast.parse(source)) == [1]


# -- the catalogue ---------------------------------------------------------------------------------------------------

#: the case ids of docs/RELIABILITY.md's "Method settings and recipes" section, each held by a test (file, name)
CASES = {
    "settings-knob-both-spellings-disagree": (
        "test_method_settings.py",
        "test_the_same_knob_spelled_both_ways_differently_is_one_line",
    ),
    "settings-knob-not-declared": (
        "test_method_settings.py",
        "test_a_method_that_does_not_declare_a_knob_refuses_it_unless_it_is_left_at_its_default",
    ),
    "settings-knob-option-not-declared": (
        "test_method_settings.py",
        "test_a_method_that_does_not_declare_a_knob_refuses_it_unless_it_is_left_at_its_default",
    ),
    "settings-knob-option-choice": ("test_method_settings.py", "test_a_knobs_checks_hold_in_the_options_spelling_too"),
    "settings-knob-option-range": ("test_method_settings.py", "test_a_knobs_checks_hold_in_the_options_spelling_too"),
    "settings-knob-option-template": (
        "test_method_settings.py",
        "test_a_knobs_checks_hold_in_the_options_spelling_too",
    ),
    "settings-knob-two-spellings-one-meaning": (
        "test_method_settings.py",
        "test_a_knob_means_the_same_in_either_spelling",
    ),
    "settings-old-config-and-adapter": ("test_method_settings.py", "test_an_old_adapter_loads_and_predicts_as_before"),
    "recipe-not-a-recipe": ("test_recipe_registry.py", "test_a_recipe_must_be_a_recipe"),
}


def test_every_case_is_in_the_catalogue_section_and_held_by_a_test():
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("## Method settings and recipes (a method owns its settings)", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M) == list(CASES)
    assert "tests/test_method_settings.py" in section and "tests/test_recipe_registry.py" in section
    for file, test in CASES.values():
        assert f"\ndef {test}(" in (ROOT / "tests" / file).read_text(encoding="utf-8"), (file, test)
