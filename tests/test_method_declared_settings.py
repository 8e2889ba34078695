"""A method receives its typed options and the settings its class declares (``reads``), never the whole run config:
an undeclared read is one line naming the method, the setting and the fix; the settings it gets are a read-only
copy; an outside method written with a positional ``config`` argument keeps training; no module under methods/
reads the engine's record (``run_config``) or a ``.config``; every built-in method declares what it reads."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import rlptune
from conftest import TINY_ARCH, backbone_from_arch
from rlptune import registry
from rlptune.cli import main
from rlptune.config import resolve_config
from rlptune.errors import RlptuneError
from rlptune.methods import build_method, get_method_class, list_methods
from rlptune.methods.base import Batch, DeclaredSettings, Method
from rlptune.methods.coop import CoOp
from rlptune.rundir import settings_hash

CLASSES = ["red", "green", "blue", "yellow"]
METHODS_DIR = Path(rlptune.__file__).resolve().parent / "methods"

ARCH = copy.deepcopy(TINY_ARCH)  # deep enough for every built-in recipe's prompt depth (deep_text: 12)
ARCH["text_cfg"]["layers"] = ARCH["vision_cfg"]["layers"] = 12

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    return backbone_from_arch(tmp_path_factory, ARCH, "tiny-declared")


@pytest.fixture()
def clean_registry(monkeypatch):
    """Whatever a test registers is forgotten afterwards."""
    registry.method_names()
    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    return monkeypatch


def _register(name: str, reads: tuple[str, ...], read) -> type[Method]:
    """A zero-shot-like outside method declaring ``reads`` whose constructor calls ``read(self.settings)``."""

    class Reader(Method):
        def __init__(self, settings, backbone, classnames, dataset_template=None) -> None:
            super().__init__(settings, backbone, classnames, dataset_template)
            self.seen = read(self.settings)

    Reader.reads = reads
    Reader.__name__ = Reader.__qualname__ = "Reader"
    return rlptune.register_method(name)(Reader)


def test_an_undeclared_read_is_one_line_naming_the_method_the_setting_and_the_fix(tiny, clean_registry):
    _register("toy_reads_nothing", (), lambda s: s.train.epochs)
    config = resolve_config(None, {"method": {"name": "toy_reads_nothing"}})
    with pytest.raises(RlptuneError) as caught:
        build_method(config, tiny, CLASSES)
    message = str(caught.value)
    assert (
        message
        == (
            "method 'toy_reads_nothing' reads setting 'train', which it does not declare; add 'train' (or the fields it "
            "reads, 'train.<field>') to Reader.reads"
        )
        and "\n" not in message
    )
    # a section declared field by field: another field of it is as undeclared
    _register("toy_reads_dataset", ("data.dataset",), lambda s: s.data.root)
    config = resolve_config(None, {"method": {"name": "toy_reads_dataset"}})
    with pytest.raises(
        RlptuneError, match=r"^method 'toy_reads_dataset' reads setting 'data.root', .*add 'data.root' to Reader"
    ):
        build_method(config, tiny, CLASSES)


def test_a_declared_read_works_and_a_declaration_that_is_no_setting_is_one_line(tiny, clean_registry):
    _register("toy_reads_some", ("data.dataset", "train"), lambda s: (s.data.dataset, s.train.epochs, s.method.name))
    config = resolve_config(None, {"method": {"name": "toy_reads_some"}, "data": {"dataset": "micro-colors"}})
    config.train.epochs = 7
    assert build_method(config, tiny, CLASSES).seen == ("micro-colors", 7, "toy_reads_some")
    _register("toy_reads_typo", ("data.datset",), lambda s: None)
    config = resolve_config(None, {"method": {"name": "toy_reads_typo"}})
    with pytest.raises(RlptuneError, match=r"^Reader.reads declares 'data.datset', which is not a setting"):
        build_method(config, tiny, CLASSES)


def test_the_settings_refuse_assignment_and_a_built_method_keeps_no_config(tiny):
    config = resolve_config(None, {"method": {"name": "coop"}, "prompt": {"n_ctx": 2}})
    method = build_method(config, tiny, CLASSES)
    with pytest.raises(RlptuneError, match=r"^method 'coop': the settings it is built with are read-only .*prompt"):
        method.settings.prompt = None
    assert not hasattr(method, "config")
    assert method.run_config.to_dict() == config.to_dict() and method.run_config is not config


def test_save_pretrained_of_a_method_without_a_run_config_is_one_line(tiny, tmp_path):
    """Built straight from its declared settings (not by build_method or load_adapter), a method has no record of
    the whole run: saving it without ``config=`` says so instead of writing a partial training_config.yaml."""
    config = resolve_config(None, {"method": {"name": "coop"}, "prompt": {"n_ctx": 2}})
    method = CoOp(DeclaredSettings.of(CoOp, config), tiny, CLASSES)
    assert method.run_config is None
    with pytest.raises(RlptuneError, match=r"^save_pretrained: this CoOp records no run config .*pass config=$"):
        rlptune.save_pretrained(method, tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()
    assert (rlptune.save_pretrained(method, tmp_path / "adapter", config) / "training_config.yaml").is_file()


SECTION_FIELDS = {
    "prompt": ["n_ctx", "ctx_init", "init_std", "kind"],
    "data": ["dataset", "shots", "root"],
    "train": ["epochs", "lr", "seed"],
}
VALUES = st.one_of(st.integers(-3, 10**6), st.text(max_size=5), st.none(), st.floats(allow_nan=False))


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    reads=st.lists(
        st.sampled_from(["prompt", "data", "train"] + [f"{s}.{f}" for s, fs in SECTION_FIELDS.items() for f in fs]),
        max_size=4,
        unique=True,
    ),
    section=st.sampled_from(["method", *SECTION_FIELDS]),
    value=VALUES,
)
def test_whatever_a_method_does_to_its_settings_the_run_config_is_unchanged(reads, section, value):
    """The settings are a deep copy: changing any declared section, field or option in place (or trying to
    rebind one) leaves the caller's config, and so the run folder's settings hash, as they were."""
    config = resolve_config(None, {"method": {"name": "kgcoop"}, "data": {"dataset": "micro-colors"}})
    before, digest = config.to_dict(), settings_hash(config.to_dict())
    view = DeclaredSettings.of(type("Mutator", (Method,), {"reads": tuple(reads)}), config)
    if section == "method":
        view.method.options["lambda_kg"] = value
        view.method.options.setdefault("extra", []).append(value)
        object.__setattr__(view.method, "name", str(value))
    else:
        try:
            target = getattr(view, section)
        except RlptuneError:
            target = None  # not declared: nothing to reach
        for name in SECTION_FIELDS[section]:
            if target is not None and name in vars(target):
                object.__setattr__(target, name, value)  # past a section's own checks: the copy still protects
    with pytest.raises(RlptuneError, match="read-only"):
        setattr(view, section, value)
    assert config.to_dict() == before and settings_hash(config.to_dict()) == digest


OLD_STYLE_REGISTERED = "toy_old_style_coop"


class OldStyleCoOp(CoOp):
    """An outside method written before methods got declared settings: a positional ``config`` handed on to its
    parent, and a read of a section its parent declares."""

    def __init__(self, config, backbone, classnames, dataset_template=None):
        super().__init__(config, backbone, classnames, dataset_template)
        self.words = config.prompt.ctx_init

    def training_step(self, batch: Batch) -> rlptune.StepOutput:
        logits = self.scores(self.image_features_of(batch), self.class_features())
        return rlptune.StepOutput(F.cross_entropy(logits.float(), batch.labels), logits, {"old_style": 1.0})


def test_an_old_style_outside_method_trains_through_rlptune_train(
    tiny_arch_path, colour_folder, tmp_path, capsys, cache_dir, clean_registry
):
    rlptune.register_method(OLD_STYLE_REGISTERED)(OldStyleCoOp)
    args = ["train", "--backbone", tiny_arch_path, "--dataset", "folder", "--data-root", colour_folder]
    args += ["--method", OLD_STYLE_REGISTERED, "--shots", "2", "--epochs", "1", "--aug-views", "0"]
    args += ["--ctx-init", "a photo of", "--device", "cpu", "-o", tmp_path / "run", "--no-progress"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    assert "old_style" in (tmp_path / "run" / "metrics.jsonl").read_text()
    loaded = rlptune.load_adapter(tmp_path / "run" / "adapter", device="cpu")
    assert isinstance(loaded, OldStyleCoOp) and loaded.words == "a photo of"
    # handed the whole config directly, as before build_method handed settings, it restricts it itself
    direct = OldStyleCoOp(loaded.run_config, loaded.backbone, ["red", "blue"])
    assert isinstance(direct.settings, DeclaredSettings) and direct.words == "a photo of"


def _reads_of(tree: ast.AST, names: set[str]) -> list[int]:
    return sorted(
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in names and isinstance(node.ctx, ast.Load)
    )


def test_no_module_under_methods_reads_the_run_config_or_a_config_attribute():
    """The engine's record (``run_config``) is written by build_method, never read by a method's code; ``.config``
    (the whole run config methods used to keep) is read nowhere under methods/."""
    offenders = {}
    for path in sorted(METHODS_DIR.rglob("*.py")):
        lines = _reads_of(ast.parse(path.read_text(encoding="utf-8")), {"config", "run_config"})
        if lines:
            offenders[path.name] = lines
    assert offenders == {}
    # the check finds what it forbids
    assert _reads_of(ast.parse("x = self.config.prompt\ny = m.run_config"), {"config", "run_config"}) == [1, 2]
    assert _reads_of(ast.parse("method.run_config = config"), {"run_config"}) == []


BUILTIN = sorted(n for n in list_methods() if get_method_class(n).__module__.startswith("rlptune.methods."))


def test_every_builtin_method_is_tested_here():
    assert {"coop", "rlp", "kgcoop", "cocoop", "maple", "ivlp", "promptsrc", "clip_lora", "linear_probe"} <= set(
        BUILTIN
    ) and "zeroshot" in BUILTIN


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_method_declares_what_it_reads(tiny, name):
    """Built from its recipe's settings on a tiny backbone, each built-in method builds, trains a step, moves to
    other classes, merges and describes itself reading only what it declares (an undeclared read would raise)."""
    config = resolve_config(None, {"method": {"name": name}, "data": {"dataset": "micro-colors"}})
    cls = get_method_class(name)
    assert cls.declared_sizes(DeclaredSettings.of(cls, config), CLASSES) is not None
    torch.manual_seed(0)
    method = build_method(config, tiny, CLASSES, "a photo of a {}.")
    assert {k for k in vars(method.settings) if not k.startswith("_")} == {"method"} | {
        r.split(".")[0] for r in cls.reads
    }
    method.train()
    method.on_train_start(1, 1)
    method.on_epoch_start(0)
    labels = torch.tensor([0, 1])
    if method.closed_form:
        pass
    elif method.needs_image_tower:
        out = method.training_step(Batch(labels, images=torch.randn(2, 3, 32, 32)))
    else:
        out = method.training_step(Batch(labels, features=F.normalize(torch.randn(2, ARCH["embed_dim"]), dim=-1)))
    if not method.closed_form and out.loss.requires_grad:
        out.loss.backward()
    method.on_epoch_end(0)
    if method.transfers_to_new_classes and not getattr(method.options, "class_specific", False):
        method.set_classnames(["purple", "orange"])
    method.eval().merge()
    features = method.encode_images(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(method.logits(features)).all()
    assert method.describe()["method"] == name and method.parameter_formula()
