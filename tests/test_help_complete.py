"""Help that doesn't mislead: every flag of every command says what it does and its default, no internal names,
the resolved recipe (epochs 200 for RLP, not "10, or the recipe"), the registered backbones, and integer flags read
as settings read numbers (one spelling accepted everywhere, a bad one a single ``rlptune: error:`` line)."""

from __future__ import annotations

import argparse
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlptune import recipes
from rlptune.cli import _all_parsers, build_parser, main
from rlptune.config import resolve_config
from rlptune.defaults import DEFAULT_BACKBONE, DEFAULT_METHOD
from rlptune.errors import RlptuneError
from rlptune.options import coerce

_SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
_INTERNAL = re.compile(r"CFG__|cfg__|OPT__|opt__|_Recipe|<function|object at 0x")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {p.prog: p for p in _all_parsers(parser)}


@pytest.mark.parametrize(
    "argv", [["train", "--help"], ["train", "--method", "coop", "--help"], ["train", "--method", "maple", "--help"], []]
)
def test_every_flag_of_every_command_has_help_and_shows_its_default(argv):
    parsers = _commands(build_parser(argv))
    assert {
        "rlptune train",
        "rlptune predict",
        "rlptune run",
        "rlptune report",
        "rlptune serve",
        "rlptune reproduce",
        "rlptune methods",
    } <= set(parsers)
    missing = []
    for prog, parser in parsers.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, _SKIP) or prog == "rlptune pretrain-micro":
                continue
            name = "/".join(action.option_strings) or action.dest
            text = formatter._get_help_string(action) if action.help else ""
            if not (action.help or "").strip():
                missing.append(f"{prog} {name}: no help")
            elif action.option_strings and "default" not in text.lower():
                missing.append(f"{prog} {name}: no default in {text!r}")
        page = parser.format_help()
        assert not _INTERNAL.search(page), f"{prog} --help shows an internal name: {_INTERNAL.search(page).group()}"
    assert not missing, "\n".join(missing)


def test_the_flagged_flags_are_fixed():
    parsers = _commands(build_parser(["run", "--help"]))
    run = parsers["rlptune run"].format_help()
    for flag in ("--methods METHOD", "--seeds SEED", "--shots SHOTS", "--backbone BACKBONE"):
        assert flag in run
    assert "default: zeroshot coop rlp" in run and "default: 1 2 3" in run and "default: micro" in run
    assert "default: 5" in parsers["rlptune predict"].format_help()
    report = parsers["rlptune report"].format_help()
    assert "results folder" in report and "(default: report)" in report


def test_train_defaults_to_the_flagship_named_in_one_place(monkeypatch):
    monkeypatch.setenv("COLUMNS", "2000")  # no wrapping inside the names looked for
    assert (DEFAULT_BACKBONE, DEFAULT_METHOD) == ("micro-v2", "rlp")
    config = resolve_config()
    assert (config.backbone.name, config.method.name, config.prompt.kind) == ("micro-v2", "rlp", "lowrank")
    assert config.train.epochs == recipes.preset("rlp", "few-shot", 16)["train"]["epochs"] == 200
    page = _commands(build_parser(["train", "--help"]))["rlptune train"].format_help()
    assert re.search(r"--backbone NAME\s+.*\(default: 'micro-v2'\)", page, re.S)
    for name in ("micro-v2", "micro (shipped micro CLIP", "hf:PATH_OR_NAME", "ARCH:TAG"):
        assert name in page, name  # the backbone registry's names
    assert "missing checkpoint" not in page


def _help_of(argv: list[str], prog: str) -> str:
    return " ".join(_commands(build_parser(argv))[prog].format_help().split())


@pytest.mark.parametrize(
    "method,protocol,shots",
    [("rlp", "few-shot", 16), ("coop", "few-shot", 1), ("rlp", "base2new", 16), ("kgcoop", "base2new", 16)],
)
def test_train_help_shows_the_resolved_recipe_with_sources(method, protocol, shots):
    argv = ["train", "--method", method, "--protocol", protocol, "--shots", str(shots), "--help"]
    page = _help_of(argv, "rlptune train")
    resolved = resolve_config(overrides={"method": {"name": method}, "data": {"protocol": protocol, "shots": shots}})
    label = f"from the {method} recipe, {protocol}, {shots} shots"
    assert f"(default: {resolved.train.epochs!r} {label}" in page
    assert f"(default: {resolved.train.lr!r} {label}" in page
    for key, source in recipes.sources(method, protocol, shots).items():
        assert f"{key} = " in page and source.split(" ")[0] in page, key
    assert "or the method's recipe" not in page


def test_methods_command_prints_one_resolved_recipe(capsys):
    assert main(["methods", "rlp", "--protocol", "base2new", "--shots", "16"]) == 0
    out = capsys.readouterr().out
    epochs = recipes.preset("rlp", "base2new", 16)["train"]["epochs"]
    assert out.startswith("rlp recipe for base2new, 16 shots") and f"train.epochs = {epochs!r}  [" in out
    assert "train.lr = 0.002  [KaiyangZhou/CoOp:" in out
    assert main(["methods", "rlpp"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlptune: error: ") and err.count("\n") == 1


# -- integer flags: one spelling accepted everywhere ---------------------------------------------------------------

#: (command line before the value, where the value lands, whether the flag takes a list)
INT_FLAGS = {
    "predict --top-k": (["predict", "ADAPTER", "IMG", "--top-k"], "top_k", 1),
    "run --seeds": (["run", "few-shot", "--seeds"], "seeds", None),
    "run --shots": (["run", "few-shot", "--shots"], "shots", 0),
    "reproduce --seeds": (["reproduce", "rlp", "--seeds"], "seeds", None),
    "reproduce --shots": (["reproduce", "rlp", "--shots"], "shots", 0),
    "reproduce --epochs": (["reproduce", "rlp", "--epochs"], "epochs", 0),
    "methods --shots": (["methods", "--shots"], "shots", 0),
}

SPELLINGS = st.one_of(
    st.integers(-5, 10**6).map(str),
    st.integers(0, 300).map(lambda n: f"{n}.0"),
    st.integers(0, 30).map(lambda n: f"{n}e0"),
    st.integers(0, 9).map(lambda n: f"{n}e1"),
    st.integers(1000, 99999).map(lambda n: f"{n:_}"),
    st.sampled_from(["2.5", "nan", "inf", "-inf", "1e400", "x", "", " 3 ", "0x10", "true", "3.", "1_0.5"]),
    st.text(alphabet="0123456789.e+-_ x", max_size=6),
)


def _parse(prefix: list[str], text: str):
    if text.startswith("-"):  # argparse reads a dash-led word as a flag: the value goes in as --flag=VALUE
        return build_parser(prefix).parse_args([*prefix[:-1], f"{prefix[-1]}={text}"])
    return build_parser(prefix).parse_args([*prefix, text])


@pytest.mark.parametrize("flag", sorted(INT_FLAGS))
@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(text=SPELLINGS)
def test_integer_flags_read_a_number_as_the_settings_do(flag, text):
    prefix, dest, low = INT_FLAGS[flag]
    try:
        expected = coerce(text, int, flag.split()[-1])
        if low is not None and expected < low:
            expected = None
    except RlptuneError:
        expected = None
    if expected is None:
        with pytest.raises((RlptuneError, SystemExit)) as caught:
            _parse(prefix, text)
        assert caught.type is RlptuneError, f"{flag} {text!r}: argparse's usage error, not the one-line form"
        assert flag.split()[-1] in str(caught.value) and "\n" not in str(caught.value)
    else:
        value = getattr(_parse(prefix, text), dest)
        assert (value[0] if isinstance(value, list) else value) == expected, (flag, text)


def test_a_bad_integer_flag_is_one_line_on_the_command_line(capsys):
    assert main(["predict", "ADAPTER", "IMG", "--top-k", "2.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlptune: error: --top-k") and err.count("\n") == 1 and "usage:" not in err
    assert main(["run", "few-shot", "--seeds", "1", "two"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlptune: error: --seeds") and err.count("\n") == 1
