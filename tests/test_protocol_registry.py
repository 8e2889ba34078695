"""Protocols are registered objects: settings, recipes, ``rlptune run``, the run pipeline and the tables read the
registry, an unknown protocol is one line with a suggestion wherever it is typed, and a protocol defined here
(outside the package: one subclass, one register call) is accepted by all of them. The proof behind the protocol
section of docs/EXTENDING.md."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import one_run_sweep
from hypothesis import given, settings
from hypothesis import strategies as st

import rlptune
from rlptune import recipes, registry
from rlptune.report import tables as T
from rlptune.cli import build_parser, main
from rlptune.config import resolve_config
from rlptune.engine.pipeline import training_subset
from rlptune.protocols import Protocol, aggregate, get_protocol, protocol_names, tables_for
from rlptune.sweeps.runner import make_specs


# -- a protocol from outside the package: one file, one register call -------------------------------------------


class FirstHalf(rlptune.Protocol):
    """Train on the first half of the classes and report its test accuracy, with base-to-new's recipe."""

    name = "toy-first-half"
    title = "First half of the classes"
    aliases = ("toy_half",)
    recipe_key = "base2new"
    table_kind = "few-shot"

    def training_subset(self, config) -> str:
        return "base"

    def evaluate(self, run):
        metrics, extra = super().evaluate(run)
        extra["toy_protocol"] = {"classes_trained": "base"}
        return metrics, extra


rlptune.register_protocol(FirstHalf())


@pytest.fixture(scope="module", autouse=True)
def _forget_the_toy_protocol():
    """Other test modules of this process see only the built-in protocols (and import no test module of ours)."""
    yield
    registry.unregister_protocol(FirstHalf.name)
    registry._PLUGIN_MODULES.pop(__name__, None)


@pytest.fixture()
def micro_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "micro-cache"
    monkeypatch.setenv("RLPTUNE_CACHE", str(cache))
    return cache


BUILTIN = ["few-shot", "base2new", "cross-dataset", "domain-gen"]


def test_the_builtin_protocols_are_registered_objects_that_name_their_recipe_and_table():
    names = protocol_names()
    assert names[:4] == BUILTIN  # the command line's order
    for name in BUILTIN:
        protocol = get_protocol(name)
        assert isinstance(protocol, Protocol) and protocol.name == name
        assert protocol.recipe_key == name and protocol.table_kind == name
        assert protocol.table_kind in T.TABLE_KINDS and protocol.recipe_key in recipes.PROTOCOLS
    assert [n for n in BUILTIN if get_protocol(n).new_classes] == ["base2new"]
    assert [n for n in BUILTIN if get_protocol(n).uses_targets] == ["cross-dataset", "domain-gen"]
    assert get_protocol("domain-gen").default_targets("micro-shapes")  # its shifted renderings
    assert "ImageNetV2" in get_protocol("domain-gen").default_targets("ImageNet")
    assert "ImageNet" not in get_protocol("cross-dataset").default_targets("ImageNet")
    # every spelling the tables accepted before is still read as the same protocol
    assert [
        T.normalize_protocol(p) for p in ("Base-to-New", "b2n", "few_shot", "XD", "domain_generalization", "dg")
    ] == ["base2new", "base2new", "few-shot", "cross-dataset", "domain-gen", "domain-gen"]


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


def test_an_unknown_protocol_is_one_line_with_a_suggestion_everywhere(tmp_path, capsys):
    with pytest.raises(rlptune.RlptuneError) as err:  # settings: a YAML file or --set
        resolve_config(overrides={"method": {"name": "coop"}, "data": {"protocol": "fewshot"}})
    assert "data.protocol 'fewshot' is not known (did you mean 'few-shot'?); available: few-shot" in _one_line(err)
    with pytest.raises(rlptune.RlptuneError) as err:  # recipes
        recipes.preset("coop", "b2n")
    assert "protocol 'b2n' is not known (did you mean 'base2new'?)" in _one_line(err)
    with pytest.raises(rlptune.RlptuneError) as err:  # a sweep
        make_specs("dg", ["micro-shapes"], ["coop"], [1], [1])
    assert "protocol 'dg' is not known (did you mean 'domain-gen'?)" in _one_line(err)
    with pytest.raises(rlptune.RlptuneError) as err:  # tables: it no longer falls silently into domain-gen's
        tables_for([{"protocol": "xd", "method": "coop", "dataset": "a", "accuracy": 50.0}], "cross_dataset")
    assert "did you mean 'cross-dataset'?" in _one_line(err)
    code = main(["run", "base-to-new", "--results", str(tmp_path / "res")])  # the command line
    err_text = capsys.readouterr().err.strip()
    assert code == 2 and err_text.count("\n") == 0
    assert err_text.startswith("rlptune: error: protocol 'base-to-new' is not known (did you mean 'base2new'?)")
    assert not (tmp_path / "res").exists()


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz-_2 ", max_size=16))
def test_any_protocol_text_is_the_registered_protocol_or_one_line(text):
    """Settings accept exactly the registered names (an alias is suggested, never silently read as another)."""
    try:
        protocol = get_protocol(text)
    except rlptune.RlptuneError as exc:
        assert text not in protocol_names()
        message = str(exc)
        assert "\n" not in message and message.startswith(f"data.protocol {text!r} is not known")
        assert message.endswith("available: " + ", ".join(protocol_names()))
    else:
        assert protocol.name == text


def test_registering_something_that_is_not_a_protocol_is_one_line():
    class Slashed(Protocol):
        name = "a/b"  # a protocol's name is also its results sub-folder

    with pytest.raises(rlptune.RlptuneError, match=r"^protocol name 'a/b': expected a non-empty name \(a folder name"):
        rlptune.register_protocol(Slashed())
    with pytest.raises(
        rlptune.RlptuneError,
        match="^protocol 'loose': expected an instance of rlptune.Protocol; it "
        "lacks training_subset, evaluate, default_targets, recipe_key",
    ):
        rlptune.register_protocol(SimpleNamespace(name="loose"))
    assert "a/b" not in protocol_names() and "loose" not in protocol_names()


def test_base2new_still_refuses_training_on_the_new_classes():
    config = resolve_config(
        overrides={"method": {"name": "coop"}, "data": {"protocol": "base2new", "subsample": "new"}}
    )
    with pytest.raises(rlptune.RlptuneError, match="data.subsample=new contradicts data.protocol=base2new"):
        training_subset(config)


def test_an_outside_protocol_is_accepted_by_settings_recipes_and_the_command_line():
    config = resolve_config(overrides={"method": {"name": "coop"}, "data": {"protocol": "toy-first-half", "shots": 4}})
    assert config.data.protocol == "toy-first-half" and training_subset(config) == "base"
    # its declared recipe key: CoOp's base-to-new recipe (not few-shot's 200 epochs at 16 shots)
    assert recipes.preset("coop", "toy-first-half", 4) == recipes.preset("coop", "base2new", 4)
    assert recipes.preset("coop", "toy-first-half", 16) != recipes.preset("coop", "few-shot", 16)
    assert config.train.epochs == recipes.preset("coop", "base2new", 4)["train"]["epochs"]
    run_help = next(a for a in build_parser()._actions if a.dest == "command").choices["run"].format_help()
    assert "toy-first-half" in run_help
    assert T.normalize_protocol("TOY_HALF") == "toy-first-half"  # its alias, in results files


def test_an_outside_protocol_trains_evaluates_and_tables_through_rlptune_run(
    tiny_arch_path, micro_cache, tmp_path, capsys
):
    args = one_run_sweep(
        "toy-first-half", "micro-shapes", tiny_arch_path, tmp_path / "res", "--epochs", "1", "--aug-views", "0"
    )
    assert main(args) == 0
    out = capsys.readouterr().out
    run_dir = next((tmp_path / "res" / "toy-first-half").rglob("result.json")).parent
    result = json.loads((run_dir / "result.json").read_text())
    assert result["protocol"] == "toy-first-half" and result["toy_protocol"] == {"classes_trained": "base"}
    assert set(result["metrics"]) == {"test"}
    classes = json.loads((run_dir / "run_info.json").read_text())["classes"]
    every = rlptune.load_dataset("micro-shapes").classnames
    assert classes == every[: (len(every) + 1) // 2]  # only the first half trained
    # its table: few-shot's layout under the protocol's own name and title, written beside the others
    assert "First half of the classes" in out and "micro-shapes" in out
    table_json = json.loads((tmp_path / "res" / "tables" / "toy-first-half.json").read_text())
    assert table_json["protocol"] == "toy-first-half"
    table, _ = aggregate(tmp_path / "res", "toy-first-half")
    assert table.rows[0].cells["1 shot"].value == pytest.approx(result["metrics"]["test"]["top1"])
    # the results folder, holding a folder named for the new protocol, is still rlptune's: a rerun skips the run
    assert main(args) == 0
    assert json.loads((run_dir / "result.json").read_text()) == result
