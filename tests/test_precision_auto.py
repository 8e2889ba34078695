"""``backbone.precision: auto``: one resolver, the resolved value recorded, explicit choices kept, caches apart.

The resolver is tested on mocked devices and CPU capabilities (no GPU needed); the run, adapter and cache tests
train the tiny architecture on this CPU, with bf16 "cleared" by patching the module switch where they need auto to
resolve to something other than fp32.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st

import oracles
from rlptune import recipes
from rlptune.backbones import load_backbone
from rlptune.backbones import precision as P
from rlptune.cli import main
from rlptune.config import RunConfig, config_from_dict, resolve_config
from rlptune.data import load_dataset
from rlptune.engine import prepare_dataset, train
from rlptune.engine.adapter import ADAPTER_CONFIG, load_adapter
from rlptune.engine.features import FeatureCache, cache_key
from rlptune.engine.pipeline import resolve_backbone
from rlptune.errors import RlptuneError
from rlptune.methods import build_method
from rlptune.sweeps.runner import RunSpec, spec_settings_hash
from rlptune.rundir import MARKER, settings_hash

DEVICES = ("auto", "cpu", "cuda", "cuda:1", "mps", "xpu")
METHODS = (*recipes.recipe_methods(), None, "a_plugin_method")


@pytest.fixture()
def machine(monkeypatch):
    """Set what the resolver sees: CUDA present, a native-bf16 CPU, bf16 cleared by the fidelity measurement."""

    def set_machine(cuda: bool = False, native_bf16: bool = False, cleared: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(P, "cpu_native_bf16", lambda: native_bf16)
        monkeypatch.setattr(P, "CPU_BF16_WITHIN_SEED_SPREAD", cleared)

    set_machine()
    return set_machine


@pytest.fixture(scope="module")
def tiny(tiny_arch_path):
    return load_backbone(str(tiny_arch_path), device="cpu")  # precision auto: fp32 on this CPU while bf16 is uncleared


def _settings(colour_folder, tmp_path, **sections) -> dict:
    out = {
        "method": {"name": "rlp"},
        "data": {"dataset": "folder", "root": str(colour_folder), "shots": 2},
        "train": {
            "epochs": 1,
            "batch_size": 4,
            "aug_views": 1,
            "val_every": 0,
            "cache_dir": str(tmp_path / "cache"),
            "log_diagnostics": False,
        },
    }
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


# -- the resolver --------------------------------------------------------------------------------------------------


def test_auto_on_cuda_is_the_methods_official_precision(machine):
    machine(cuda=True)
    for method in recipes.recipe_methods():  # every Dassl method and CLIP-LoRA train in fp16 officially
        assert P.resolve_precision("auto", "auto", method) == "fp16", method
    assert P.resolve_precision("auto", "cuda:1", "clip_lora") == "fp16"
    assert P.resolve_precision("auto", "auto", None) == "fp16"  # plain CLIP, as the zero-shot recipe runs it
    assert P.resolve_precision("auto", "auto", "a_plugin_method") == "fp32"  # no official choice to follow
    assert P.resolve_precision("auto", "cpu", "coop") == "fp32"  # an explicit CPU device on a CUDA machine


def test_auto_on_a_cpu_is_bf16_only_when_native_and_cleared(machine):
    for native, cleared, expected in (
        (False, False, "fp32"),
        (True, False, "fp32"),
        (False, True, "fp32"),
        (True, True, "bf16"),
    ):
        machine(native_bf16=native, cleared=cleared)
        assert P.resolve_precision("auto", "auto", "coop") == expected, (native, cleared)
        assert P.resolve_precision("auto", "cpu", "clip_lora") == expected, (native, cleared)
    machine(native_bf16=True, cleared=True)
    assert P.resolve_precision("auto", "mps", "coop") == "fp32"  # elsewhere fp32
    assert P.resolve_precision("auto", torch.device("cpu"), "coop") == "bf16"


def test_the_switch_starts_off_and_every_recipe_method_has_a_sourced_official_precision():
    assert P.CPU_BF16_WITHIN_SEED_SPREAD is True  # set from the fidelity table (benchmarks/bf16_fidelity_results.json)
    assert set(recipes.OFFICIAL_PRECISION) == set(recipes.recipe_methods())
    for method, (precision, source, how) in recipes.OFFICIAL_PRECISION.items():
        assert precision in P.PRECISIONS and how, method
        assert source.split(":", 1)[0] in {*recipes.REPOSITORIES, "rlptune"}, (method, source)
    assert recipes.OFFICIAL_PRECISION["clip_lora"][0] == oracles.CLIP_LORA_DETAILS["precision"][0].split()[0]


def test_the_methods_doc_shows_every_methods_precision():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "METHODS.md").read_text(encoding="utf-8")
    section = doc.split("### Precision (", 1)[1].split("\n### ", 1)[0]
    for method, (precision, _, _) in recipes.OFFICIAL_PRECISION.items():
        assert f"| `{method}` | {precision} |" in section, method  # official precision, how, source, auto CUDA / CPU
    assert "CPU_BF16_WITHIN_SEED_SPREAD" in section and "GradScaler" in section


def test_native_bf16_is_read_from_the_cpu_flags():
    assert P.cpuinfo_has_bf16("processor : 0\nflags : fpu sse2 avx512f avx512_bf16 amx_tile\n")
    assert P.cpuinfo_has_bf16("flags\t\t: fpu amx_bf16 amx_tile\n")
    assert P.cpuinfo_has_bf16("Features : fp asimd sve bf16 i8mm\n")  # Arm
    assert not P.cpuinfo_has_bf16("flags : fpu sse2 avx2 avx512f avx512_vnni\n")
    assert not P.cpuinfo_has_bf16("model name : Intel(R) Xeon(R) with avx512_bf16 in its name\n")  # not a flags line
    assert isinstance(P.cpu_native_bf16(), bool)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    precision=st.sampled_from(P.SETTINGS),
    device=st.sampled_from(DEVICES),
    method=st.sampled_from(METHODS),
    cuda=st.booleans(),
    native=st.booleans(),
    cleared=st.booleans(),
)
def test_resolution_is_concrete_idempotent_and_never_half_where_not_allowed(
    precision, device, method, cuda, native, cleared
):
    """Whatever the machine: a concrete precision; an explicit one kept; resolving twice changes nothing; fp16 only
    when asked or on CUDA; bf16 from auto only on CUDA or on a native-bf16 CPU with bf16 cleared."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: cuda)
        mp.setattr(P, "cpu_native_bf16", lambda: native)
        mp.setattr(P, "CPU_BF16_WITHIN_SEED_SPREAD", cleared)
        resolved = P.resolve_precision(precision, device, method)
        assert resolved in P.PRECISIONS
        assert P.resolve_precision(resolved, device, method) == resolved
        if precision != "auto":
            assert resolved == precision
        else:
            kind = P.device_kind(device)
            if resolved == "fp16":
                assert kind == "cuda"
            if resolved == "bf16":
                assert kind == "cpu" and native and cleared
            if kind not in ("cuda", "cpu"):
                assert resolved == "fp32"


SPELLINGS = (*P.SETTINGS, "FP32", " fp32", "auto ", "Auto", "fp64", "half", "bfloat16", "float16", "", "none", "32")


@settings(max_examples=30, deadline=None, derandomize=True)
@given(value=st.sampled_from(SPELLINGS))
def test_a_precision_is_accepted_everywhere_or_refused_everywhere(value, tiny_arch_path):
    """The settings (YAML / --set), ``load_backbone`` and the resolver agree on which spellings exist."""

    def outcome(call):
        try:
            call()
            return True
        except RlptuneError as exc:
            assert "\n" not in str(exc)
            return False

    routes = {
        "settings": outcome(lambda: config_from_dict({"backbone": {"precision": value}})),
        "resolver": outcome(lambda: P.resolve_precision(value, "cpu", "coop")),
        "load_backbone": outcome(lambda: load_backbone(str(tiny_arch_path), precision=value)),
    }
    assert set(routes.values()) == {value in P.SETTINGS}, routes


# -- runs record the resolved value --------------------------------------------------------------------------------


def test_default_is_auto_and_a_cpu_run_keeps_the_fp32_hash(machine, colour_folder, tmp_path):
    """auto is the default; on a CPU without cleared bf16 it resolves to fp32, so the settings hash and a sweep's
    run folder are exactly those of the explicit fp32 that used to be the default (old runs stay valid)."""
    assert RunConfig().backbone.precision == "auto"
    auto = resolve_config(None, _settings(colour_folder, tmp_path))
    explicit = resolve_config(None, _settings(colour_folder, tmp_path, backbone={"precision": "fp32"}))
    assert auto.backbone.precision == "auto"
    assert P.settle_run_precision(auto) == "fp32"
    assert settings_hash(auto.to_dict()) == settings_hash(explicit.to_dict())
    spec = dict(protocol="few-shot", dataset="folder", method="coop", seed=1, data_root=str(colour_folder))
    assert spec_settings_hash(RunSpec(**spec)) == spec_settings_hash(
        RunSpec(**spec, overrides={"backbone": {"precision": "fp32"}})
    )


def test_run_records_the_resolved_precision_everywhere(machine, tiny, colour_folder, tmp_path):
    machine(native_bf16=True, cleared=True)  # auto -> bf16 on this CPU
    config = resolve_config(None, _settings(colour_folder, tmp_path))
    result = train(config, tmp_path / "run", backbone=tiny, progress=False)
    recorded = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert recorded["backbone"]["precision"] == "bf16"  # never "auto"
    marker = json.loads((tmp_path / "run" / MARKER).read_text())
    assert marker["settings_hash"] == settings_hash(recorded)  # the hash is of the recorded (resolved) settings
    assert config_from_dict(recorded).backbone.precision == "bf16"  # the config.yaml round trip keeps it
    adapter = json.loads((tmp_path / "run" / "adapter" / ADAPTER_CONFIG).read_text())
    assert adapter["backbone"]["precision"] == "bf16"
    assert adapter["backbone"]["identity"] == tiny.identity == result["backbone"]
    data = prepare_dataset(config)  # the test split's centre-crop features: encoded in bf16, keyed bf16
    features = tmp_path / "cache" / "features"
    assert (features / f"{cache_key(tiny.with_precision('bf16'), data, data.test, 0)}.safetensors").is_file()
    assert not (features / f"{cache_key(tiny, data, data.test, 0)}.safetensors").exists()


def test_explicit_fp32_configs_still_load_and_mean_fp32(machine, tiny, colour_folder, tmp_path):
    machine(cuda=False, native_bf16=True, cleared=True)  # auto would be bf16 here
    old = yaml.safe_load(yaml.safe_dump(RunConfig().to_dict()))  # a config.yaml written when fp32 was the default
    old["backbone"]["precision"] = "fp32"
    config = config_from_dict(old, "old config.yaml")
    assert P.settle_run_precision(config) == "fp32"
    assert resolve_backbone(config, tiny).precision == "fp32"
    config = resolve_config(None, _settings(colour_folder, tmp_path, backbone={"precision": "fp32"}))
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["backbone"]["precision"] == "fp32"
    machine(cuda=True)  # explicit fp32 means fp32 on a GPU too
    assert P.resolve_precision("fp32", "auto", "coop") == "fp32"


def test_explicit_choices_win_over_auto_and_views_share_the_weights(
    machine, tiny, tiny_arch_path, colour_folder, tmp_path
):
    machine(native_bf16=True, cleared=True)
    config = resolve_config(None, _settings(colour_folder, tmp_path))
    view = resolve_backbone(config, tiny)  # settings auto + backbone loaded with auto: resolved for the method
    assert view.precision == "bf16" and config.backbone.precision == "bf16"
    assert view.model is tiny.model and tiny.precision == "fp32"  # a view: same weights, another autocast
    assert view.identity == tiny.identity
    pinned = load_backbone(str(tiny_arch_path), precision="fp32")  # an explicit choice when loading
    config = resolve_config(None, _settings(colour_folder, tmp_path))
    assert resolve_backbone(config, pinned) is pinned and config.backbone.precision == "fp32"
    config = resolve_config(None, _settings(colour_folder, tmp_path, backbone={"precision": "fp16"}))
    assert resolve_backbone(config, pinned).precision == "fp16"  # explicit settings beat the backbone's choice


def test_a_precision_view_leaves_injected_adapters_trainable(tiny):
    method = build_method(resolve_config(None, {"method": {"name": "clip_lora"}}), tiny, ["red", "green"])
    trainable = [name for name, p in method.named_parameters() if p.requires_grad]
    view = method.backbone.with_precision("bf16")  # the LoRA-injected copy, seen in bf16
    assert view.model is method.backbone.model and (view.precision, method.backbone.precision) == ("bf16", "fp32")
    assert trainable and [name for name, p in method.named_parameters() if p.requires_grad] == trainable


def test_fp16_trains_with_a_gradient_scaler_that_scales(tiny, colour_folder, tmp_path):
    train_settings = {"epochs": 2, "batch_size": 2, "warmup_epochs": 0, "lr": 0.05}
    config = resolve_config(
        None, _settings(colour_folder, tmp_path, backbone={"precision": "fp16"}, train=train_settings)
    )
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["grad_scale"] > 1 for r in records)  # the loss is scaled (starting at 2**16, halved on overflow) ...
    assert sum(r["skipped_steps"] for r in records) < sum(r["steps"] for r in records)  # ... and steps are taken
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "run" / "adapter" / "rlptune_adapter.safetensors"))["prompt.B"].abs().max() > 0


# -- caches and adapters -------------------------------------------------------------------------------------------


def test_features_cached_under_one_precision_are_never_read_under_another(tiny, colour_folder, tmp_path):
    splits = load_dataset("folder", colour_folder)
    items = splits.train[:6]
    cache = FeatureCache(tmp_path / "cache")
    fp32 = cache.get_or_encode(tiny, splits, items, view=0)
    misses = cache.misses
    bf16 = cache.get_or_encode(tiny.with_precision("bf16"), splits, items, view=0)
    assert cache.misses == misses + 1  # encoded again, not read from the fp32 entry
    assert not torch.equal(fp32, bf16)  # and bf16 features do differ
    assert torch.equal(cache.get_or_encode(tiny, splits, items, view=0), fp32) and cache.misses == misses + 1
    assert len(list((tmp_path / "cache" / "features").glob("*.safetensors"))) == 2


def test_loading_an_adapter_resolves_auto_for_its_method(machine, tiny, tiny_arch_path, colour_folder, tmp_path):
    config = resolve_config(None, _settings(colour_folder, tmp_path))
    train(config, tmp_path / "run", backbone=tiny, progress=False)  # trained in fp32 (bf16 not cleared)
    adapter = tmp_path / "run" / "adapter"
    assert json.loads((adapter / ADAPTER_CONFIG).read_text())["backbone"]["precision"] == "fp32"
    machine(native_bf16=True, cleared=True)
    assert load_adapter(adapter, backbone=tiny).backbone.precision == "bf16"  # auto, resolved for rlp on this CPU
    assert load_adapter(adapter, device="cpu").backbone.precision == "bf16"  # the recorded spec, loaded with auto
    assert load_adapter(adapter, backbone=tiny, precision="fp32").backbone.precision == "fp32"
    pinned = load_backbone(str(tiny_arch_path), precision="fp32")
    assert load_adapter(adapter, backbone=pinned).backbone.precision == "fp32"  # an explicit backbone keeps its choice
    machine()
    assert load_adapter(adapter, backbone=tiny).backbone.precision == "fp32"


def test_bad_precisions_are_one_line_errors(tiny, colour_folder, tmp_path, capsys):
    config = resolve_config(None, _settings(colour_folder, tmp_path))
    train(config, tmp_path / "run", backbone=tiny, progress=False)
    adapter = tmp_path / "run" / "adapter"
    code = main(["predict", str(adapter), str(colour_folder / "test"), "--precision", "half", "--device", "cpu"])
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.count("\n") == 1
        and "rlptune: error: --precision 'half' is not supported: expected auto" in err
    )
    code = main(["eval", str(adapter), "--data-root", str(colour_folder), "--precision", "fp64", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "rlptune: error: --precision 'fp64' is not supported" in err
    with pytest.raises(
        RlptuneError, match=r"^backbone precision 'FP32' is not supported: expected auto, fp32, bf16, fp16$"
    ):
        load_backbone("micro", precision="FP32")
    payload = json.loads((adapter / ADAPTER_CONFIG).read_text())
    payload["backbone"]["precision"] = "fp64"
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(payload))
    with pytest.raises(RlptuneError, match=r"field 'backbone.precision' must be one of fp32, bf16, fp16, got 'fp64'"):
        load_adapter(adapter, backbone=tiny)
    with pytest.raises(RlptuneError, match=r"backbone.precision: expected one of auto, fp32, bf16, fp16, got 'half'"):
        resolve_config(None, _settings(colour_folder, tmp_path, backbone={"precision": "half"}))


#: docs/RELIABILITY.md's "Precision" cases and the test above that holds each.
CASES = {
    "precision-setting-unknown": "test_bad_precisions_are_one_line_errors",
    "precision-flag-unknown": "test_bad_precisions_are_one_line_errors",
    "precision-load-backbone-unknown": "test_a_precision_is_accepted_everywhere_or_refused_everywhere",
    "precision-adapter-field": "test_bad_precisions_are_one_line_errors",
    "precision-auto-recorded": "test_run_records_the_resolved_precision_everywhere",
    "precision-explicit-fp32-config": "test_explicit_fp32_configs_still_load_and_mean_fp32",
    "precision-cache-apart": "test_features_cached_under_one_precision_are_never_read_under_another",
    "precision-given-backbone": "test_explicit_choices_win_over_auto_and_views_share_the_weights",
    "precision-fp16-overflow": "test_fp16_trains_with_a_gradient_scaler_that_scales",
}


def test_the_reliability_catalogue_lists_these_cases():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("### Precision (`backbone.precision = auto`)", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    assert "tests/test_precision_auto.py" in section
    assert re.findall(r"^\| `([a-z0-9-]+)` \|", section, re.M) == list(CASES)
    assert all(callable(globals().get(name)) for name in CASES.values())


def test_rlptune_cpu_bf16_0_keeps_auto_at_fp32_on_a_bf16_cpu(monkeypatch):
    """The documented way to keep fp32 where auto would pick bf16 (the suite itself runs with it)."""
    try:
        for value, expected in (
            ("0", False),
            (
                "1",
                P.cpuinfo_has_bf16(Path("/proc/cpuinfo").read_text())
                if Path("/proc/cpuinfo").is_file()
                else P.cpu_native_bf16(),
            ),
        ):
            monkeypatch.setenv("RLPTUNE_CPU_BF16", value)
            P.cpu_native_bf16.cache_clear()
            assert P.cpu_native_bf16() is expected
            if value == "0":
                assert P.resolve_precision("auto", "cpu", "coop") == "fp32"
    finally:
        monkeypatch.undo()
        P.cpu_native_bf16.cache_clear()  # the rest of the suite reads the variable conftest set


def test_demo_and_study_pin_fp32_whatever_the_cpu(monkeypatch, tmp_path):
    """Their published tables were measured in fp32 and must read the same on a CPU where auto is bf16."""
    from rlptune import demo
    from rlptune.reproduce import plan as study_plan
    from rlptune.sweeps.runner import make_specs

    monkeypatch.setattr(P, "cpu_native_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu", "coop") == "bf16"  # auto would pick bf16 here
    specs = make_specs(
        "base2new",
        ["micro2-shapes"],
        ["coop"],
        [1],
        [16],
        backbone="micro-v2",
        base_overrides={"train": dict(demo.DEMO_TRAIN), "backbone": dict(demo.DEMO_BACKBONE_SETTINGS)},
    )
    assert all(s.overrides["backbone"]["precision"] == "fp32" for s in specs)
    source = Path(study_plan.__file__).read_text(encoding="utf-8")
    assert 'base_overrides={"backbone": {"precision": "fp32"}' in source
