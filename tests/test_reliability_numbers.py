"""Numbers, resume and merge (reliability round 3): every number setting means the same whatever its spelling and
route, and is bounded; ``--resume`` notices changed images; ``reproduce --merge`` checks what it carries."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shutil
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import make_image_folder
from rlptune import registry
from rlptune.cli import _overrides, build_parser, main
from rlptune.config import RunConfig, TrainSettings, _section_classes, resolve_config
from rlptune.rundir import DATA_HASHES as DATA_FILE
from rlptune.errors import RlptuneError
from rlptune.options import FLOAT32_MAX, numeric_type

# -- every number field of every settings dataclass -----------------------------------------------------------------


def _number_fields() -> list[tuple[str | None, str, str, dataclasses.Field, type]]:
    """(method or None, section, field name, field, int|float) for every run-config section and every method's
    options class (each options class once, with the first method that uses it), enumerated, not listed by hand."""
    out = []
    for section, cls in _section_classes().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = numeric_type(hints[f.name])
            if kind is not None:
                out.append((None, section, f.name, f, kind))
    seen: set[type] = set()
    for name in registry.method_names():
        cls = registry.method_entry(name).options_class
        if cls in seen:
            continue
        seen.add(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = numeric_type(hints[f.name])
            if kind is not None:
                out.append((name, "method.options", f.name, f, kind))
    return out


NUMBER_FIELDS = _number_fields()


def test_every_count_is_bounded_and_every_number_field_is_found():
    ints = [(m, s, n) for m, s, n, f, kind in NUMBER_FIELDS if kind is int]
    assert ("train", "epochs") in {(s, n) for _, s, n in ints} and ("method.options", "r") in {
        (s, n) for _, s, n in ints
    }
    assert any(m == "promptsrc" for m, *_ in NUMBER_FIELDS) and any(n == "alpha" for _, _, n, _, _ in NUMBER_FIELDS)
    unbounded = [
        f"{m or s}.{n}"
        for m, s, n, f, kind in NUMBER_FIELDS
        if kind is int and (f.metadata.get("high") is None or f.metadata.get("low") is None)
    ]
    assert not unbounded, f"int settings without declared low/high bounds: {unbounded}"


# -- one value, three routes ----------------------------------------------------------------------------------------

SPECIAL = [
    "1e3",
    "1.0e+3",
    "1.0e3",
    "1E3",
    "1_000",
    " 7 ",
    "007",
    "017",
    "08",
    "0x1A",
    "0b101",
    "0o17",
    "+5",
    "-0",
    "0.0",
    "2.5",
    "1.5e1",
    "true",
    "false",
    "yes",
    "off",
    "~",
    "null",
    "none",
    "",
    "'7'",
    '"7"',
    "\"'7'\"",
    "[7]",
    "{a: 1}",
    ".nan",
    "NaN",
    "nan",
    "-nan",
    ".inf",
    "-.inf",
    "inf",
    "-inf",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1.0e+32",
    "1e32",
    "10**32",
    "1" * 400,
    "9" * 5000,
    "1:30",
    "1:30.5",
    "1,000",
    "ten",
    "１２",
    "&a 3",
    "*a",
    "!!float 3",
    "!!int 3",
    "!!str 3",
    "3 # comment",
    "1__000",
    "0x",
    "e3",
    ".5",
    "5.",
    "-.5e-3",
    "1e-400",
]


def _render(number: int | float, style: int) -> str:
    if isinstance(number, float):
        return [repr(number), f"{number:e}", f"{number:.3f}", f" {number!r} "][style % 4]
    return [
        str(number),
        f"{number}.0",
        f"{number:_}",
        f"{float(number):e}",
        hex(number) if number >= 0 else str(number),
        f"'{number}'",
        f" {number} ",
        f"{number:.6e}".replace("e+", "e"),
    ][style % 8]


def _spellings(f: dataclasses.Field):
    low, high = f.metadata.get("low"), f.metadata.get("high")
    edges = [v for b in (low, high) if b is not None for v in (b - 1, b, b + 1)]
    numbers = st.one_of(
        st.integers(-10, 300),
        st.integers(-(2**70), 2**70),
        st.sampled_from(edges or [0]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(-2.0, 2.0),
    )
    rendered = st.builds(_render, numbers, st.integers(0, 7))
    noise = st.text(alphabet="0123456789._+-eExXbBnaifINF: '~", max_size=8)
    return st.one_of(st.sampled_from(SPECIAL), rendered, rendered, noise)


_PARSERS: dict = {}


def _train_parser(method: str | None):
    """The CLI's parser of ``rlptune train [--method METHOD]`` (its method's options are flags), built once."""
    if method not in _PARSERS:
        _PARSERS[method] = build_parser(["train", *(["--method", method] if method else [])])
    return _PARSERS[method]


def _parse(argv: list[str], method: str | None = None):
    return _train_parser(method).parse_args(argv)


def _option_flag(method: str, name: str) -> str:
    parser = _train_parser(method)
    train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["train"]
    return next(a.option_strings[0] for a in train._actions if a.dest == f"opt__{name}")


def _outcome(call) -> tuple[str, object]:
    try:
        config = call()
    except RlptuneError as exc:
        message = str(exc)
        assert message and "\n" not in message and len(message) < 400, message
        return ("refused", message)
    return ("accepted", config)


def _value(config: RunConfig, method: str | None, section: str, name: str):
    if method is not None:
        return config.method.options[name]
    return getattr(getattr(config, section), name)


@pytest.fixture(scope="module")
def yaml_file(tmp_path_factory):
    return tmp_path_factory.mktemp("numbers") / "settings.yaml"


ROUTES = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@ROUTES
@given(data=st.data())
@example(data=None)  # the reported case: epochs 1.0e+32 in YAML, --set and the flag
def test_a_number_means_the_same_in_a_yaml_file_with_set_and_as_a_flag(data, yaml_file):
    if data is None:
        method, section, name, f, kind = next(x for x in NUMBER_FIELDS if x[1:3] == ("train", "epochs"))
        text = "1.0e+32"
    else:
        method, section, name, f, kind = data.draw(st.sampled_from(NUMBER_FIELDS))
        text = data.draw(_spellings(f))
    if method is None:
        yaml_text = f"{section}:\n  {name}: {text}\n"
        prefix = []
        set_arg = f"{section}.{name}={text}"
        flag = "--" + (f.metadata.get("flag") or name.replace("_", "-"))
    else:
        yaml_text = f"method:\n  name: {method}\n  options:\n    {name}: {text}\n"
        prefix = ["--method", method]
        set_arg = f"method.options.{name}={text}"
        flag = _option_flag(method, name)
    yaml_file.write_text(yaml_text, encoding="utf-8")
    outcomes = {
        "yaml": _outcome(lambda: resolve_config(str(yaml_file))),
        "set": _outcome(
            lambda: resolve_config(None, _overrides(_parse(["train", "-o", "x", *prefix, "--set", set_arg], method)))
        ),
        "flag": _outcome(
            lambda: resolve_config(None, _overrides(_parse(["train", "-o", "x", *prefix, f"{flag}={text}"], method)))
        ),
    }
    kinds = {route: o[0] for route, o in outcomes.items()}
    assert len(set(kinds.values())) == 1, (name, text, outcomes)
    if kinds["yaml"] == "refused":  # the same rule (but for where the value came from and how it was spelled)
        rules = {route: o[1].replace(str(yaml_file), "command line").split(" got ")[0] for route, o in outcomes.items()}
        assert rules["set"] == rules["flag"], rules
        assert rules["yaml"] == rules["set"] or "not valid YAML" in rules["yaml"], rules
        assert name in rules["set"] or "must be" in rules["set"], rules  # the field, or a rule naming its partner
        return
    values = {route: _value(o[1], method, section, name) for route, o in outcomes.items()}
    assert len({(type(v), v) for v in values.values()}) == 1, (name, text, values)
    value = values["yaml"]
    if value is None:
        return
    assert type(value) is kind
    low, high = f.metadata.get("low"), f.metadata.get("high")
    assert (low is None or value >= low) and (high is None or value <= high), (name, value)
    if kind is float:
        assert math.isfinite(value) and abs(value) <= FLOAT32_MAX


def test_the_issue_spellings_of_a_huge_epoch_count_are_all_refused(yaml_file):
    for text in ("1.0e+32", "1e32", "100000000000000000000000000000000", "1_000_000_000", "0x7fffffffffffffff"):
        yaml_file.write_text(f"train:\n  epochs: {text}\n", encoding="utf-8")
        for call in (
            lambda: resolve_config(str(yaml_file)),
            lambda: resolve_config(None, _overrides(_parse(["train", "-o", "x", f"--epochs={text}"]))),
        ):
            with pytest.raises(RlptuneError, match=r"train\.epochs must be <= 100000, got "):
                call()
    with pytest.raises(RlptuneError, match=r"train\.epochs must be <= 100000, got 1e\+32"):
        RunConfig(train=TrainSettings(epochs=1e32)).validate()  # the Python API reads numbers the same way
    with pytest.raises(RlptuneError, match=r"train\.lr: expected a finite number, got nan"):
        RunConfig(train=TrainSettings(lr=float("nan"))).validate()
    assert RunConfig(train=TrainSettings(epochs="1e3")).validate().train.epochs == 1000


@pytest.mark.parametrize("text", [".nan", "NaN", "inf", "-Infinity", "1e999", "-.inf", "'nan'"])
def test_nan_and_inf_are_refused_for_every_float_setting_in_every_spelling(text):
    for method, section, name, f, kind in NUMBER_FIELDS:
        if kind is not float:
            continue
        where = f"method.options.{name}=" if method else f"{section}.{name}="
        argv = ["train", "-o", "x", *(["--method", method] if method else []), "--set", where + text]
        with pytest.raises(RlptuneError, match=rf"{name}: expected a finite number, got "):
            resolve_config(None, _overrides(_parse(argv, method)))


CLI_CASES = {
    # catalogue case: (arguments of `rlptune train`, the one line after "rlptune: error: ")
    "numbers-epochs-set-exponent": (["--set", "train.epochs=1e32"], "train.epochs must be <= 100000, got 1e+32"),
    "numbers-epochs-flag-digits": (["--epochs", "1" + "0" * 32], "train.epochs must be <= 100000, got 1e+32"),
    "numbers-epochs-expression": (
        ["--epochs", "10**32"],
        "command line: train.epochs: expected an integer, got '10**32'",
    ),
    "numbers-count-5000-digits": (
        ["--epochs", "9" * 5000],
        "command line: train.epochs: expected an integer, got '99999999999999999999'… (5000 characters)",
    ),
    "numbers-nan-every-float": (["--lr", ".nan"], "command line: train.lr: expected a finite number, got '.nan'"),
    "numbers-option-above-bound": (
        ["--method", "clip_lora", "--r", "1e9"],
        "method.options.r must be <= 4096, got 1000000000",
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_number_cases_on_the_command_line_are_one_line(case, tmp_path, capsys):
    args, expected = CLI_CASES[case]
    code = main(["train", "--data-root", str(tmp_path), "-o", str(tmp_path / "run"), *args])
    line = _one_error_line(code, capsys.readouterr().err)
    assert line == f"rlptune: error: {expected}"
    assert not (tmp_path / "run").exists()


def test_every_spelling_of_a_thousand_is_a_thousand(yaml_file):
    for text in ("1e3", "1.0e+3", "1_000", " 1000 ", "0x3e8", "'1000'", "1000.0", "+1000"):
        yaml_file.write_text(f"train:\n  epochs: {text}\n", encoding="utf-8")
        assert resolve_config(str(yaml_file)).train.epochs == 1000, text
        assert resolve_config(None, _overrides(_parse(["train", "-o", "x", f"--epochs={text}"]))).train.epochs == 1000
        assert (
            resolve_config(None, _overrides(_parse(["train", "-o", "x", "--set", f"train.epochs={text}"]))).train.epochs
            == 1000
        )


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999"])
def test_the_sweep_executor_float_settings_refuse_nan_and_inf(text, capsys):
    """`rlptune run`'s executor flags are read by argparse's float(), which takes nan and inf (Slurm's int(inf)
    was a traceback): every float field of ExecutorSettings refuses them in one line naming the flag."""
    from rlptune.sweeps.executors import ExecutorSettings

    floats = [
        f
        for f in dataclasses.fields(ExecutorSettings)
        if numeric_type(typing.get_type_hints(ExecutorSettings)[f.name]) is float
    ]
    assert {f.name for f in floats} >= {"gpus_per_run", "progress_every_s"}
    for f in floats:
        flag = "--" + (f.metadata.get("flag") or f.name.replace("_", "-"))
        code = main(["run", "few-shot", "--executor", "slurm", f"{flag}={text}", "--results", "nowhere"])
        line = _one_error_line(code, capsys.readouterr().err)
        assert line.startswith(f"rlptune: error: {flag} ") and "expected a finite number" in line


def test_leading_zeros_and_base_60_mean_what_they_say_not_yaml_1_1(yaml_file):
    yaml_file.write_text("train:\n  epochs: 017\ndata:\n  shots: 008\n", encoding="utf-8")
    config = resolve_config(str(yaml_file))
    assert (config.train.epochs, config.data.shots) == (17, 8)  # YAML 1.1 alone reads 017 as 15 (octal)
    assert resolve_config(None, _overrides(_parse(["train", "-o", "x", "--epochs", "017"]))).train.epochs == 17
    yaml_file.write_text("train:\n  epochs: 1:30\n", encoding="utf-8")
    with pytest.raises(RlptuneError, match=r"train\.epochs: expected an integer, got '1:30'"):
        resolve_config(str(yaml_file))  # YAML 1.1 alone reads it as 90 (base 60)


def test_the_recipe_is_chosen_by_the_shots_the_run_will_have_whatever_their_spelling():
    plain = resolve_config(None, {"method": {"name": "coop"}, "data": {"shots": "2"}})
    for text in ("2.0", "'2'", "0x2", "2e0"):
        spelled = resolve_config(None, {"method": {"name": "coop"}, "data": {"shots": text}})
        assert spelled == plain, text


# -- --resume notices that the images changed under their names ----------------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(code: int, err: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
    assert code == 2 and len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_arch_path):
    """A finished CoOp run (1 epoch, checkpointed) on a small image folder, kept as a template for each test."""
    root = tmp_path_factory.mktemp("resume-data")
    data = make_image_folder(root / "data", ["red", "green", "blue"], {"train": 2, "val": 1, "test": 2})
    run = root / "run"
    assert main(_train_argv(tiny_arch_path, data, run, root / "cache")) == 0
    return root, data, run


def _train_argv(arch: Path, data: Path, run: Path, cache: Path, *extra: str) -> list[str]:
    return [
        str(a)
        for a in (
            "train",
            "--backbone",
            arch,
            "--device",
            "cpu",
            "--data-root",
            data,
            "--method",
            "coop",
            "--epochs",
            1,
            "--shots",
            2,
            "--aug-views",
            0,
            "--no-progress",
            "--cache-dir",
            cache,
            "-o",
            run,
            *extra,
        )
    ]


@pytest.fixture()
def copy(trained, tmp_path, tiny_arch_path):
    """This test's own copy of the finished run; the data stays where the run recorded it (its path is a setting)
    and is put back as it was after the test."""
    root, data, run = trained
    shutil.copytree(data, tmp_path / "data-as-trained")
    shutil.copytree(run, tmp_path / "run")
    run = tmp_path / "run"
    try:
        yield data, run, (lambda *extra: _train_argv(tiny_arch_path, data, run, root / "cache", *extra))
    finally:
        shutil.rmtree(data)
        shutil.copytree(tmp_path / "data-as-trained", data)


def test_a_run_records_the_content_of_every_image_it_used(trained):
    _, data, run = trained
    record = json.loads((run / DATA_FILE).read_text())
    assert record["root"] == str(data.resolve())
    assert len(record["items"]["test"]) == 6 and len(record["items"]["train"]) == 6
    for name, entry in record["items"]["test"].items():
        label, sha = entry.split(":")
        assert hashlib.sha256((data / name).read_bytes()).hexdigest().startswith(sha) and len(sha) == 16
        assert record["classes"][int(label)] == name.split("/")[1]


def test_resume_refuses_images_changed_under_the_same_names(copy, capsys):
    data, run, argv = copy
    before = _files(run)
    victim = sorted((data / "test" / "red").iterdir())[0]
    victim.write_bytes(sorted((data / "test" / "blue").iterdir())[0].read_bytes())  # same name, other picture
    code = main(argv("--resume"))
    line = _one_error_line(code, capsys.readouterr().err)
    assert (
        f"{data.resolve()}: the images differ from those this run trained on (1 changed; first: test "
        f"'test/red/{victim.name}')"
        in line
        and "--overwrite" in line
    )
    assert _files(run) == before  # nothing recorded, nothing replaced, no interrupted attempt left beside it
    assert not [p.name for p in run.parent.iterdir() if ".staging-" in p.name]
    for image in sorted((data / "train" / "red").iterdir()):  # the training images too, and a test image added
        image.write_bytes(victim.read_bytes())
    shutil.copy(victim, data / "test" / "green" / "extra.png")
    line = _one_error_line(main(argv("--resume")), capsys.readouterr().err)
    assert "(3 changed, 1 added; first: train 'train/red/red_000.png')" in line, line
    assert _files(run) == before
    assert main(argv("--overwrite")) == 0  # training again on the new images is one flag away
    assert "test/green/extra.png" in json.loads((run / DATA_FILE).read_text())["items"]["test"]


def test_resume_on_unchanged_images_reads_no_image_again_to_check(copy, capsys, monkeypatch):
    import rlptune.engine.features as features

    data, run, argv = copy
    assert main(argv("--resume")) == 0, capsys.readouterr().err  # the same images: it goes on

    def no_reads(*args, **kwargs):
        raise AssertionError(f"an image was hashed again: {args[0]}")

    # the images were hashed once (by the run or the feature cache, one memo); checking them again is a stat each
    monkeypatch.setattr(features, "open", no_reads, raising=False)
    assert main(argv("--resume")) == 0, capsys.readouterr().err
    assert json.loads((run / DATA_FILE).read_text())["root"] == str(data.resolve())


def test_resume_of_a_run_without_a_record_warns_and_a_damaged_record_is_one_line(copy, capsys, caplog):
    data, run, argv = copy
    (run / DATA_FILE).write_text('{"format": "rlptune-data/1", "digest": 5}')
    line = _one_error_line(main(argv("--resume")), capsys.readouterr().err)
    assert f"{run / DATA_FILE}: not a record of the run's images" in line
    (run / DATA_FILE).unlink()  # a run written before runs recorded their images
    with caplog.at_level("WARNING"):
        assert main(argv("--resume")) == 0
    assert "resuming without checking that the data is unchanged" in caplog.text
    assert (run / DATA_FILE).is_file()  # recorded from now on


def test_resume_of_an_interrupted_run_checks_the_images_too_and_keeps_the_attempt(copy, capsys):
    data, run, argv = copy
    staging = run.parent / f".{run.name}.staging-99999999"  # what a killed first attempt leaves
    shutil.copytree(run, staging)
    (staging / "result.json").unlink()
    shutil.rmtree(run)
    victim = sorted((data / "val" / "green").iterdir())[0]
    original = victim.read_bytes()
    victim.write_bytes(sorted((data / "val" / "blue").iterdir())[0].read_bytes())
    line = _one_error_line(main(argv("--resume")), capsys.readouterr().err)
    assert f"(1 changed; first: val 'val/green/{victim.name}')" in line
    kept = [p for p in run.parent.iterdir() if p.name.startswith(f".{run.name}.staging-")]
    assert len(kept) == 1 and (kept[0] / "checkpoint").is_dir() and not run.exists()  # the attempt is kept
    victim.write_bytes(original)  # with the images put back it resumes
    assert main(argv("--resume")) == 0, capsys.readouterr().err
    assert (run / "result.json").is_file() and not [p for p in run.parent.iterdir() if ".staging-" in p.name]


# -- reproduce --merge checks the earlier evidence.json it carries -------------------------------------------------

STUDY = ["reproduce", "rlp", "--backbone", "micro", "--quick", "--seeds", "1", "2", "--report-only"]


@pytest.fixture(scope="module")
def earlier_report(tmp_path_factory):
    """A report of parts 3-4 (as tests/test_evidence.py's pieces; --report-only: the tables without runs)."""
    root = tmp_path_factory.mktemp("earlier")
    code = main([*STUDY, "--results", str(root / "results"), "--parts", "rank", "ablation", "-o", str(root / "report")])
    assert code == 0
    return root


def _merge(earlier_report: Path, tmp_path: Path, change) -> tuple[Path, Path]:
    """A copy of the earlier report with ``change(summary)`` applied to its evidence.json, and an output folder."""
    copy = tmp_path / "earlier"
    shutil.copytree(earlier_report / "report", copy)
    summary = json.loads((copy / "evidence.json").read_text())
    change(summary)
    (copy / "evidence.json").write_text(json.dumps(summary))
    return copy, tmp_path / "joined"


def _join(earlier_report: Path, copy: Path, out: Path) -> int:
    return main(
        [
            *STUDY,
            "--results",
            str(earlier_report / "results"),
            "--parts",
            "base2new",
            "-o",
            str(out),
            "--merge",
            str(copy),
        ]
    )


def test_an_untouched_earlier_report_is_merged(earlier_report, tmp_path):
    copy, out = _merge(earlier_report, tmp_path, lambda s: None)
    assert _join(earlier_report, copy, out) == 0
    joined = json.loads((out / "evidence.json").read_text())
    assert [p["parts"] for p in joined["pieces"]] == [["base2new"], ["rank", "ablation"]]
    assert joined["settings"]["parts"] == ["base2new", "rank", "ablation"]


def _set(path: str, value):
    def change(summary):
        keys = path.split(".")
        target = summary
        for key in keys[:-1]:
            target = target[int(key)] if isinstance(target, list) else target[key]
        last = keys[-1]
        if isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value

    return change


MERGE_CASES = {
    # case: (change to evidence.json, fragment of the one line)
    "runs-negative": (_set("runs", -5), "evidence.json: runs is -5; expected a whole number >= 0"),
    "runs-text": (_set("runs", "many"), 'evidence.json: runs is "many"; expected a whole number >= 0'),
    "runs-bool": (_set("runs", True), "evidence.json: runs is true; expected a whole number >= 0"),
    "pieces-empty": (_set("pieces", []), "evidence.json: pieces is []; expected one entry per invocation"),
    "pieces-not-a-list": (
        _set("pieces", {"parts": ["rank"]}),
        'evidence.json: pieces is {"parts": ["rank"]}; expected a list',
    ),
    "piece-runs-negative": (_set("pieces.0.runs", -5), "evidence.json: pieces[0].runs is -5"),
    "piece-unknown-part": (
        _set("pieces.0.parts", ["rank", "ablation", "sorcery"]),
        'pieces[0].parts[2] is "sorcery"; expected one of settings.parts (rank, ablation)',
    ),
    "pieces-miss-a-part": (
        _set("pieces.0.parts", ["rank"]),
        'evidence.json: pieces is [["rank"]]; expected the parts of settings.parts (rank, ablation)',
    ),
    "unknown-part": (
        _set("settings.parts", ["rank", "ablation", "sorcery"]),
        'evidence.json: settings.parts[2] is "sorcery"; expected one of the study\'s parts',
    ),
    "part-twice": (
        _set("settings.parts", ["rank", "rank"]),
        'evidence.json: settings.parts is ["rank", "rank"]; expected each part once',
    ),
    "part-without-tables": (
        _set("tables", ["part4_ablation", "part4_paired"]),
        "its part 'rank' has no table or figure",
    ),
    "tables-not-a-list": (_set("tables", "part3_rank"), 'evidence.json: tables is "part3_rank"; expected a list'),
    "table-name-is-a-path": (
        _set("tables.0", "part3_../../outside"),
        'evidence.json: tables[0] is "part3_../../outside"; expected a file name',
    ),
    "figure-name-is-a-path": (
        _set("figures", ["/etc/fig_density.png"]),
        'evidence.json: figures[0] is "/etc/fig_density.png"; expected a file name',
    ),
    "claim-not-an-object": (_set("claims", [5]), "evidence.json: claims[0] is 5; expected an object"),
    "claim-unknown-part": (_set("claims.0.part", "sorcery"), 'evidence.json: claims[0].part[0] is "sorcery"'),
    "skipped-wrong-type": (
        _set("skipped", [{"part": "rank", "variant": 3, "reason": "x"}]),
        "evidence.json: skipped[0].variant is 3; expected text",
    ),
    "wall-seconds-nan": (
        _set("wall_seconds", float("nan")),
        "evidence.json: wall_seconds is NaN; expected a number of seconds >= 0",
    ),
    "estimate-rate-negative": (
        _set("full_study_estimate.rates", {"coop": -1.0}),
        "full_study_estimate.rates.coop is -1.0",
    ),
    "settings-not-an-object": (_set("settings", ["micro"]), "evidence.json: not a study report"),
}


@pytest.mark.parametrize("case", sorted(MERGE_CASES))
def test_a_tampered_earlier_report_is_refused_naming_the_field(case, earlier_report, tmp_path, capsys):
    change, fragment = MERGE_CASES[case]
    copy, out = _merge(earlier_report, tmp_path, change)
    before = _files(copy)
    line = _one_error_line(_join(earlier_report, copy, out), capsys.readouterr().err)
    assert f"reproduce --merge {copy / 'evidence.json'}" in line and fragment in line, line
    assert not out.exists() and _files(copy) == before  # refused before anything was written


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-10, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["rank", "ablation", "base2new", "part3_rank", "fig_density.png"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["parts", "runs", "claim", "part", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELDS = [
    "runs",
    "planned_runs",
    "wall_seconds",
    "train_seconds_total",
    "tables",
    "claims",
    "skipped",
    "figures",
    "pieces",
    "made_at",
    "full_study_estimate",
    "settings.parts",
    "settings.sweep_datasets",
    "pieces.0",
    "pieces.0.parts",
    "pieces.0.runs",
    "claims.0",
    "full_study_estimate.rates",
    "full_study_estimate.seconds",
]


_STUDY: list = []


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=JSON_VALUES)
def test_any_value_in_an_earlier_report_is_carried_sane_or_refused_in_one_line(
    field, value, earlier_report, tmp_path_factory
):
    """Whatever one field of evidence.json holds, loading it for a merge gives parts, runs and seconds a report can
    state, or one line; never another exception."""
    from rlptune.reproduce.merge import load_earlier_report, report_pieces as _pieces
    from rlptune.reproduce.settings import PARTS, StudySettings
    from rlptune.reproduce.write import pieces_markdown as _pieces_markdown

    tmp = tmp_path_factory.mktemp("fuzz")
    try:
        copy, _ = _merge(earlier_report, tmp, _set(field, value))
    except (IndexError, KeyError, TypeError):
        return  # the path does not exist in this report's shape
    if not _STUDY:
        _STUDY.append(StudySettings(backbone="micro", quick=True, seeds=[1, 2], parts=["base2new"]).resolved())
    study = _STUDY[0]
    try:
        earlier = load_earlier_report(copy, study)
    except RlptuneError as exc:
        assert "\n" not in str(exc) and "evidence.json" in str(exc)
        return
    assert set(earlier.parts) <= set(PARTS) and earlier.tables
    pieces = _pieces(study, 0, 0.0, 0.0, "now", earlier)
    for piece in pieces:
        assert set(piece["parts"]) <= set(PARTS) and isinstance(piece["runs"], int) and piece["runs"] >= 0
    _pieces_markdown(pieces)
