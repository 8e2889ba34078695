"""Fuzzing the settings users write: every outcome is a resolved config (or a run that reaches training) or a
one-line RlptuneError, never another exception. (Split files and CSVs are fuzzed in tests/test_data_fuzz.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import itertools
import json

import pytest
import yaml
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from rlptune.cli import main
from rlptune.config import RunConfig, _section_classes, config_from_dict, parse_set, resolve_config
from rlptune.errors import RlptuneError

FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
FUZZ_CLI = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

SECTIONS = _section_classes()
FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in SECTIONS.items()}

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(
        [
            "",
            "none",
            "null",
            "true",
            "off",
            "1e3",
            "-1",
            "0.5",
            "inf",
            "nan",
            "3.0",
            "lowrank",
            "full",
            "adamw",
            "sgd",
            "cosine",
            "cpu",
            "auto",
            "cuda",
            "rlp",
            "coop",
            "zeroshot",
            "kgcoop",
            "skip",
            "a photo of a {}.",
            "{}",
            "{0}",
            "{x}",
            "a photo of a",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def section_mapping(section: str):
    keys = (
        st.sampled_from(FIELDS.get(section, []) + ["zzz", "lr_rate", "options"])
        if section in FIELDS
        else st.text(max_size=6)
    )
    return st.one_of(st.dictionaries(keys, VALUES, max_size=5), VALUES)


def typed_value(section: str, name: str):
    """Mostly well-typed values for one field (its choices, small numbers), sometimes anything."""
    import typing

    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    hint = typing.get_type_hints(SECTIONS[section])[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = args[0] if args else hint
    choices = f.metadata.get("choices")
    if choices:
        good = st.sampled_from(list(choices))
    elif hint is bool:
        good = st.booleans()
    elif hint is int:
        good = st.integers(-1, 6)
    elif hint is float:
        good = st.floats(-0.5, 2.0, allow_nan=False)
    elif hint is list:
        good = st.lists(st.sampled_from(["a photo of a {}.", "a {} texture.", "{}", "no slot"]), max_size=3)
    elif hint is dict:
        good = st.dictionaries(st.sampled_from(["lambda_kg", "r", "template", "x"]), SCALARS, max_size=2)
    else:
        good = st.sampled_from(["rlp", "coop", "zeroshot", "a photo of a", "cpu", "folder", "x"])
    return st.one_of(good, good, good, VALUES)


NEAR_VALID = st.fixed_dictionaries(
    {},
    optional={
        section: st.fixed_dictionaries({}, optional={name: typed_value(section, name) for name in names})
        for section, names in FIELDS.items()
    },
)

MAPPINGS = st.one_of(
    NEAR_VALID,
    NEAR_VALID,
    st.lists(st.sampled_from(list(FIELDS) + ["trian", "model", "x"]), max_size=5, unique=True).flatmap(
        lambda names: st.fixed_dictionaries({name: section_mapping(name) for name in names})
    ),
    VALUES,
)


def outcome(call):
    try:
        result = call()
    except RlptuneError as exc:
        message = str(exc)
        assert message and "\n" not in message
        event("RlptuneError")
        return None
    event("success")
    return result


@FUZZ
@given(overrides=MAPPINGS, base=st.one_of(st.none(), MAPPINGS))
def test_resolve_config_mappings(overrides, base):
    config = outcome(
        lambda: resolve_config(None, overrides if isinstance(overrides, dict) else {"train": overrides}, base=base)
    )
    if config is None:
        return
    assert isinstance(config, RunConfig)
    # what a run directory records (config.yaml) reads back to the same settings: the same record (with --auto off
    # its section is not recorded, as it changes nothing; tests/test_auto.py checks the hash ignores it)
    recorded = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
    again = config_from_dict(recorded, "config.yaml")
    assert again.to_dict() == config.to_dict()
    if config.auto.enabled:
        assert again == config


YAML_TEXT = st.one_of(
    st.text(max_size=80),
    st.text(alphabet="abcdeilmnoprstuvxy_:{}[]-,!&*#|>'\"\n 0123456789.", max_size=80),
    st.sampled_from(
        [
            "train:\n  epochs: !!int ten\n",
            "train: {seed: 2001-02-30}\n",
            "method: {options: &a {x: *a}}\n",
            "&a [*a]",
            "train: !!binary aGVsbG8=\n",
            "train: {lr: !!float nope}\n",
            "? [a, b]\n: c\n",
            "prompt: {rank: 1e400}\n",
            "data: {root: !!python/object/apply:os.system [echo hi]}\n",
            "\ufeffmethod: {name: rlp}\n",
            "train: {epochs: 0x10}\n",
        ]
    ),
    MAPPINGS.map(lambda m: yaml.safe_dump(m)),
)


@pytest.fixture(scope="module")
def yaml_path(tmp_path_factory):
    return tmp_path_factory.mktemp("yaml") / "settings.yaml"


@FUZZ
@given(text=YAML_TEXT)
def test_yaml_config_files(text, yaml_path):
    path = yaml_path
    path.write_bytes(text.encode("utf-8", errors="surrogatepass"))
    outcome(lambda: resolve_config(str(path)))


ASSIGNMENTS = st.lists(
    st.one_of(
        st.text(max_size=20),
        st.sampled_from([(s, f) for s, names in FIELDS.items() for f in names]).flatmap(
            lambda sf: typed_value(*sf).map(
                lambda v: (
                    f"{sf[0]}.{sf[1]}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                )
            )
        ),
        st.builds(
            lambda s, f, v: f"{s}.{f}={v}",
            st.sampled_from(list(FIELDS) + ["x", ""]),
            st.sampled_from(list(itertools.chain(*FIELDS.values())) + ["options.lam", "options.", "y"]),
            st.one_of(
                st.text(max_size=8), st.sampled_from(["[1, 2]", "{a: 1}", "2001-02-30", "!!int x", "1e999", "~"])
            ),
        ),
    ),
    max_size=4,
)


@FUZZ
@given(assignments=ASSIGNMENTS)
def test_set_assignments(assignments):
    outcome(lambda: resolve_config(None, parse_set(assignments)))


# -- through `rlptune train --config` up to loading the data and the backbone ----------------------------------


class ReachedTraining(Exception):
    """Raised by the stand-in for the training loop: everything before it succeeded."""


@pytest.fixture(scope="module")
def places(tmp_path_factory, tiny_arch_path):
    from conftest import make_image_folder

    base = tmp_path_factory.mktemp("fuzz-train")
    folder = make_image_folder(base / "colours", ["red", "green"], {"train": 2, "test": 1})
    split = base / "split.json"
    split.write_text(json.dumps({"train": [["colours/train/red/red_000.png", 0, "red"]], "test": []}))
    table = base / "labels.csv"
    table.write_text("path,label\ncolours/train/red/red_000.png,red\ncolours/train/green/green_000.png,green\n")
    (base / "file.txt").write_text("x")
    return {
        "base": base,
        "arch": str(tiny_arch_path),
        "roots": [str(folder), str(split), str(table), str(base / "file.txt"), str(base / "missing"), ""],
    }


def run_mappings(places):
    roots = st.one_of(st.just(places["roots"][0]), st.sampled_from(places["roots"]), st.text(max_size=8))
    data = st.fixed_dictionaries(
        {
            "dataset": st.one_of(
                st.just("folder"),
                st.sampled_from(["folder", "csv", "split-json", "image-folder", "eurosat", "Folder"]),
                SCALARS,
            ),
            "root": st.one_of(roots, roots, SCALARS),
        },
        optional={
            "shots": st.one_of(st.integers(-2, 3), SCALARS),
            "split_seed": st.one_of(st.integers(0, 3), SCALARS),
            "subsample": st.one_of(st.sampled_from(["all", "base", "new"]), SCALARS),
            "image_policy": st.one_of(st.sampled_from(["error", "skip"]), SCALARS),
        },
    )
    backbone = st.fixed_dictionaries(
        {
            "name": st.one_of(
                st.just(places["arch"]),
                st.just(places["arch"]),
                st.sampled_from(["", "ViT-B-16", "nope.pt", "random:NoSuchArch"]),
                st.text(alphabet="abcxyz./-_ ", max_size=8),
            )
        },
        optional={"device": st.one_of(st.sampled_from(["cpu", "auto", "cuda:7", "gpu", "meta"]), SCALARS)},
    )
    rest = st.one_of(
        st.fixed_dictionaries(
            {},
            optional={
                section: st.fixed_dictionaries(
                    {}, optional={name: typed_value(section, name) for name in FIELDS[section]}
                )
                for section in ("method", "prompt", "train", "eval")
            },
        ),
        st.dictionaries(
            st.sampled_from(["method", "prompt", "train", "eval", "trian"]),
            st.one_of(
                st.dictionaries(st.sampled_from(list(itertools.chain(*FIELDS.values())) + ["zz"]), VALUES, max_size=3),
                VALUES,
            ),
            max_size=3,
        ),
    )
    return st.tuples(data, backbone, rest).map(lambda t: {"data": t[0], "backbone": t[1], **t[2]})


def test_train_command_with_fuzzed_config_files(places, capsys):
    """`rlptune train --config X` runs the real settings, data and backbone steps, then a stand-in for training."""
    import rlptune.engine.api as api
    from rlptune.backbones import load_backbone

    loaded = {}

    def cached_backbone(spec, device="cpu", precision="fp32", seed=0):
        key = (spec, device, precision)
        if key not in loaded:
            loaded[key] = load_backbone(spec, device=device, precision=precision, seed=seed)
        return loaded[key]

    def up_to_training(config, output_dir, **kwargs):
        # the order of api.train: data (few-shot draw written to the run folder), then the backbone
        output_dir = Path(output_dir)  # the CLI passes -o as typed
        splits = api.prepare_dataset(config, output_dir / "few_shot.json", output_dir / "skipped_images.json")
        backbone = api.resolve_backbone(config)
        assert splits.train and backbone.identity
        raise ReachedTraining

    counter = itertools.count()
    outcomes = {"reached": 0, "error": 0}

    @FUZZ_CLI
    @example(
        mapping={
            "data": {"dataset": "folder", "root": places["roots"][0], "shots": 1},
            "backbone": {"name": places["arch"]},
            "method": {"name": "rlp"},
            "train": {"epochs": 1},
        }
    )
    @example(
        mapping={
            "data": {"dataset": "folder", "root": places["roots"][0]},
            "backbone": {"name": places["arch"]},
            "train": {"lr_rate": 1},
        }
    )
    @given(mapping=run_mappings(places))
    def check(mapping):
        n = next(counter)
        path = places["base"] / f"config-{n}.yaml"
        path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
        capsys.readouterr()
        try:
            code = main(["train", "--config", str(path), "-o", str(places["base"] / f"run-{n}")])
        except ReachedTraining:
            event("reached training")
            outcomes["reached"] += 1
            return
        err = capsys.readouterr().err
        event("RlptuneError")
        outcomes["error"] += 1
        assert code == 2 and "Traceback" not in err, err
        assert len([line for line in err.splitlines() if line.startswith("rlptune: error: ")]) == 1, err

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(api, "train", up_to_training)
        import rlptune.engine.pipeline as pipeline  # where resolve_backbone finds load_backbone

        mp.setattr(pipeline, "load_backbone", cached_backbone)
        check()
    assert outcomes["reached"] > 0 and outcomes["error"] > 0, outcomes
