"""The bad-input catalogue: every input a user can get wrong, and the one-line error it gets (docs/RELIABILITY.md).

Each case runs the command line in-process (``rlptune.cli.main``) and checks: exit status 2, exactly one stderr line
``rlptune: error: ...``, no traceback, and that the line names the file or field at fault. Cases already covered
in depth elsewhere are referenced, not repeated: tests/test_data_paths.py (symlink escapes), tests/test_data_images.py
(every image mode and breakage at the loader), tests/test_data_custom.py and tests/test_data_coop.py (loader
details), tests/test_backbone_loading.py (a malicious pickle is refused), tests/test_engine.py (an adapter loaded on
another backbone object names both identities).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from conftest import COLOURS, draw_image, make_image_folder
from rlptune import __version__
from rlptune.cli import main


# -- helpers -------------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _shared_backbones(monkeypatch):
    """Load each tiny backbone once per module run: the cases are about inputs, not about loading weights."""
    import rlptune.engine.adapter as adapter_mod
    import rlptune.engine.pipeline as api_mod
    from rlptune.backbones import load_backbone as real

    def cached(spec, device="cpu", precision="fp32", seed=0):
        key = (str(spec), device, precision, seed)
        if key not in _BACKBONES:
            _BACKBONES[key] = real(spec, device=device, precision=precision, seed=seed)
        return _BACKBONES[key]

    monkeypatch.setattr(api_mod, "load_backbone", cached)
    monkeypatch.setattr(adapter_mod, "load_backbone", cached)


_BACKBONES: dict = {}


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit 2, one ``rlptune: error:`` line that contains every fragment, and no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
    assert code == 2 and len(errors) == 1, err
    line = errors[0]
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def make_folder(root: Path, classes=("red", "green", "blue"), per_split=None, seed=0) -> Path:
    """root/{train,val,test}/<class>/*.png, small."""
    return make_image_folder(root, list(classes), per_split or {"train": 3, "val": 1, "test": 2}, seed)


def png_claiming(width: int, height: int) -> bytes:
    """A few bytes whose PNG header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def _png_bytes(tmp: Path) -> bytes:
    path = tmp / "_ok.png"
    draw_image(COLOURS["red"], np.random.default_rng(1)).save(path)
    data = path.read_bytes()
    path.unlink()
    return data


BROKEN_IMAGES: dict[str, tuple[Callable[[Path], bytes], str]] = {
    # name -> (bytes of the file, the reason the error gives)
    "corrupt.png": (lambda t: _png_bytes(t)[:60] + b"\x00" * 300, "image file is"),
    "truncated.png": (lambda t: _png_bytes(t)[:-200], "image file is"),
    "zero-byte.png": (lambda t: b"", "image file is empty (0 bytes)"),
    "not-an-image.jpg": (lambda t: b"just some text\n" * 10, "not an image file"),
    "huge.png": (lambda t: png_claiming(12_000, 12_000), "pixels"),
}


@dataclasses.dataclass
class World:
    tmp: Path
    arch: Path
    data: Path
    run: Path  # a finished rlp run with a checkpoint and an adapter
    outputs: int = 0
    monkeypatch: Any = None  # the running case's monkeypatch (cases that simulate a full disk)
    held: list = dataclasses.field(default_factory=list)  # lock file descriptors a case holds while it runs

    def train(self, *extra) -> list:
        # coop pinned: the cases were written when it was the default method (a later --method wins)
        return [
            "train",
            "--method",
            "coop",
            "--backbone",
            self.arch,
            "--device",
            "cpu",
            "--no-progress",
            "--aug-views",
            0,
            "--cache-dir",
            self.tmp / "cache",
            *extra,
        ]

    def out(self) -> Path:
        """A fresh output folder (a reused one would hold another dataset's few-shot draw)."""
        self.outputs += 1
        return self.tmp / "out" / str(self.outputs)

    def folder_train(self, root, *extra) -> list:
        return self.train("--dataset", "folder", "--data-root", root, "-o", self.out(), *extra)

    def adapter_copy(self, name: str) -> Path:
        target = self.tmp / "adapters" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.run / "adapter", target)
        return target

    def run_copy(self, name: str) -> Path:
        target = self.tmp / "runs" / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(self.run, target)
        return target

    def run_args(self) -> list:
        """The settings self.run was trained with (for --resume cases)."""
        return ["--dataset", "folder", "--data-root", self.data, "--method", "rlp", "--shots", 2, "--epochs", 3]


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_arch_path) -> World:
    tmp = tmp_path_factory.mktemp("catalogue")
    data = make_folder(tmp / "colours")
    w = World(tmp=tmp, arch=tiny_arch_path, data=data, run=tmp / "run")
    code = main([str(a) for a in w.train(*w.run_args(), "-o", w.run)])
    assert code == 0 and (w.run / "checkpoint" / "last.safetensors").is_file()
    return w


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def split_json(w: World, obj) -> list:
    path = write(
        w.tmp / "splits" / f"split_{zlib.crc32(json.dumps(obj).encode())}.json",
        obj if isinstance(obj, str) else json.dumps(obj),
    )
    for rel in ("red/a.png", "green/b.png"):
        target = path.parent / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(next((w.data / "train" / rel.split("/")[0]).iterdir()), target)
    return w.train("--dataset", "split-json", "--data-root", path, "-o", w.out())


def csv_file(w: World, text: str) -> list:
    path = write(w.tmp / "csvs" / f"labels_{zlib.crc32(text.encode())}.csv", text)
    return w.train("--dataset", "csv", "--data-root", path, "-o", w.out())


def folder_with(w: World, name: str, files: dict[str, bytes]) -> Path:
    root = w.tmp / "folders" / name
    if not root.exists():
        make_folder(root)
        for rel, content in files.items():
            write(root / rel, content)
    return root


def mutated_adapter(w: World, name: str, change: Callable[[dict, Path], object], raw: str | None = None) -> list:
    """A copy of the trained adapter with its config changed by ``change`` (or replaced by ``raw`` text)."""
    folder = w.adapter_copy(name)
    path = folder / "rlptune_adapter.json"
    payload = json.loads(path.read_text())
    change(payload, folder)
    path.write_text(raw if raw is not None else json.dumps(payload))
    return ["predict", folder, w.data / "test" / "red", "--no-progress", "--device", "cpu"]


def tampered_checkpoint(w: World, name: str, make: Callable[[Path, World], None]) -> list:
    run = w.run_copy(name)
    make(run / "checkpoint" / "last.safetensors", w)
    return w.train(*w.run_args(), "-o", run, "--resume")


def _rewrite_checkpoint_meta(path: Path, change: Callable[[dict], object]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["rlptune_checkpoint"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    raw = change(meta)
    save_file(tensors, str(path), {"rlptune_checkpoint": raw if isinstance(raw, str) else json.dumps(meta)})


def yaml_config(w: World, text: str, *extra) -> list:
    path = write(w.tmp / "configs" / f"c_{zlib.crc32(text.encode())}.yaml", text)
    return w.folder_train(w.data, "--config", path, *extra)


# -- the catalogue -------------------------------------------------------------------------------------------------
# id -> (build the command line from the World, fragments the one-line error must contain)

CATALOGUE: dict[str, tuple[Callable[[World], list], tuple[str, ...]]] = {
    # data root
    "data-root-missing": (
        lambda w: w.folder_train(w.tmp / "no-such-folder"),
        ("no-such-folder: dataset root does not exist",),
    ),
    "data-root-is-a-file": (
        lambda w: w.folder_train(write(w.tmp / "a-file", "x")),
        ("a-file: dataset root is not a folder",),
    ),
    "data-root-unset": (
        lambda w: w.train("--dataset", "folder", "-o", w.out()),
        ("no data root given", "$RLPTUNE_DATA"),
    ),
    "dataset-unknown": (
        lambda w: w.train("--dataset", "cifar-11", "--data-root", w.data, "-o", w.out()),
        ("unknown dataset 'cifar-11'", "expected one of", "folder"),
    ),
    # split JSON
    "split-json-not-json": (lambda w: split_json(w, "{'train': ["), ("not valid JSON (line 1, column 2",)),
    "split-json-not-utf8": (
        lambda w: w.train(
            "--dataset", "split-json", "--data-root", write(w.tmp / "latin1.json", b'{"train": "\xe9"}'), "-o", w.out()
        ),
        ("latin1.json: split file is not UTF-8 text",),
    ),
    "split-json-top-level-list": (
        lambda w: split_json(w, [["red/a.png", 0, "red"]]),
        ("expected a JSON object with keys train, val, test",),
    ),
    "split-json-split-not-list": (
        lambda w: split_json(w, {"train": {"red/a.png": 0}}),
        ("'train' must be a list of entries, got a dict",),
    ),
    "split-json-entry-wrong-shape": (
        lambda w: split_json(w, {"train": [["red/a.png", 0]]}),
        ("train[0]: expected [relative path, label, class name]",),
    ),
    "split-json-label-not-int": (
        lambda w: split_json(w, {"train": [["red/a.png", "0", "red"]]}),
        ("train[0]: label must be an integer",),
    ),
    "split-json-unknown-key": (
        lambda w: split_json(w, {"train": [["red/a.png", 0, "red"]], "extra": []}),
        ("unknown key(s) 'extra'; expected only train, val, test",),
    ),
    "split-json-label-two-names": (
        lambda w: split_json(w, {"train": [["red/a.png", 0, "red"], ["green/b.png", 0, "green"]]}),
        ("train[1]: label 0 has class name 'green' but train[0] gave it 'red'",),
    ),
    "split-json-name-two-labels": (
        lambda w: split_json(w, {"train": [["red/a.png", 0, "red"], ["green/b.png", 1, "red"]]}),
        ("class name 'red' has label 1 but train[0] gave it label 0",),
    ),
    "split-json-label-gap": (
        lambda w: split_json(w, {"train": [["red/a.png", 0, "red"], ["green/b.png", 2, "green"]]}),
        ("label 1 has no images; labels must run 0..1",),
    ),
    "split-json-path-dotdot": (
        lambda w: split_json(w, {"train": [["../colours/train/red/red_0.png", 0, "red"]]}),
        ("train[0]: image path '../colours/train/red/red_0.png' contains '..'",),
    ),
    "split-json-path-absolute": (
        lambda w: split_json(w, {"train": [["/etc/passwd", 0, "red"]]}),
        ("train[0]: image path '/etc/passwd' is absolute",),
    ),
    "split-json-image-missing": (
        lambda w: split_json(w, {"train": [["red/a.png", 0, "red"], ["red/gone.png", 0, "red"]]}),
        ("1 of 2 listed images are missing", "train[1]: 'red/gone.png'"),
    ),
    "split-json-empty": (lambda w: split_json(w, {"train": [], "val": [], "test": []}), ("no images listed",)),
    # CSV
    "csv-missing-columns": (
        lambda w: csv_file(w, "file,class\nred/a.png,red\n"),
        ("missing column(s) path, label; found columns 'file', 'class'",),
    ),
    "csv-missing-label-column": (lambda w: csv_file(w, "path,split\nred/a.png,train\n"), ("missing column(s) label",)),
    "csv-empty": (lambda w: csv_file(w, ""), ("CSV file is empty",)),
    "csv-header-only": (lambda w: csv_file(w, "path,label\n"), ("CSV has a header but no rows",)),
    "csv-ragged-row": (
        lambda w: csv_file(w, "path,label\nred/a.png,red,extra\n"),
        ("line 2: expected 2 fields, got 3",),
    ),
    "csv-bad-split": (
        lambda w: csv_file(w, "path,label,split\nred/a.png,red,training\n"),
        ("line 2: split 'training' is not one of train, val, test",),
    ),
    "csv-path-escapes": (
        lambda w: csv_file(w, "path,label\n../../etc/passwd,red\n"),
        ("line 2: image path '../../etc/passwd' contains '..'",),
    ),
    # classes and shots
    "class-without-images": (
        lambda w: w.folder_train(folder_with(w, "empty-class", {"train/purple/notes.txt": b"no images here"})),
        ("train/purple: class folder has no images",),
    ),
    "folder-without-classes": (
        lambda w: w.folder_train(write(w.tmp / "flat" / "x.png", _png_bytes(w.tmp)).parent),
        ("no class folders found",),
    ),
    # images (policy error: the default)
    **{
        f"image-{name.split('.')[0]}": (
            (
                lambda n: (
                    lambda w: w.folder_train(
                        folder_with(w, f"bad-{n}", {f"train/red/{n}": BROKEN_IMAGES[n][0](w.tmp)}), "--epochs", 1
                    )
                )
            )(name),
            (f"train/red/{name}: ", reason),
        )
        for name, (_, reason) in BROKEN_IMAGES.items()
    },
    "image-policy-skip-empties-a-class": (
        lambda w: w.folder_train(
            folder_with(w, "red-all-broken", {f"train/red/red_{i:03d}.png": b"" for i in range(3)}),
            "--image-policy",
            "skip",
            "--epochs",
            1,
        ),
        ("class 'red' has no readable training images left",),
    ),
    # adapters
    "adapter-not-a-folder": (
        lambda w: ["predict", w.data, w.data / "test", "--no-progress"],
        ("not an adapter folder (no rlptune_adapter.json)",),
    ),
    "adapter-other-backbone": (
        lambda w: mutated_adapter(
            w, "other-backbone", lambda p, f: p["backbone"].update(identity="ViT-B-16@sha256:0123456789abcdef")
        ),
        (
            "adapter was trained on backbone ViT-B-16@sha256:0123456789abcdef, but the loaded backbone is tiny-clip@sha256:",
        ),
    ),
    "adapter-other-major-version": (
        lambda w: mutated_adapter(w, "v1", lambda p, f: p["library"].update(version="1.0.0")),
        ("rlptune_adapter.json: written by rlptune 1.0.0, incompatible with rlptune " + __version__,),
    ),
    "adapter-other-library": (
        lambda w: mutated_adapter(w, "peft", lambda p, f: p["library"].update(name="peft")),
        ("written by 'peft', not rlptune",),
    ),
    "adapter-other-format": (
        lambda w: mutated_adapter(w, "format", lambda p, f: p.update(format=2)),
        ("adapter format 2, this rlptune reads format 1",),
    ),
    "adapter-config-not-json": (
        lambda w: mutated_adapter(w, "notjson", lambda p, f: None, raw='{"format": 1,'),
        ("rlptune_adapter.json: not valid JSON (line 1",),
    ),
    "adapter-config-missing-field": (
        lambda w: mutated_adapter(w, "nofield", lambda p, f: p.pop("classnames")),
        ("rlptune_adapter.json: missing field 'classnames'",),
    ),
    "adapter-config-wrong-type": (
        lambda w: mutated_adapter(w, "badtype", lambda p, f: p.update(classnames="red,green")),
        ("rlptune_adapter.json: field 'classnames'",),
    ),
    "adapter-unknown-method": (
        lambda w: mutated_adapter(w, "method", lambda p, f: p.update(method="prompt-magic")),
        ("method 'prompt-magic' is not known",),
    ),
    "adapter-settings-unknown-field": (
        lambda w: mutated_adapter(w, "settings", lambda p, f: p["settings"]["prompt"].update(rnak=2)),
        ("rlptune_adapter.json: prompt: unknown field 'rnak' (did you mean 'rank'?)",),
    ),
    "adapter-model-missing": (
        lambda w: mutated_adapter(w, "nomodel", lambda p, f: (f / "rlptune_adapter.safetensors").unlink()),
        ("missing rlptune_adapter.safetensors",),
    ),
    "adapter-model-not-safetensors": (
        lambda w: mutated_adapter(
            w, "garbage", lambda p, f: (f / "rlptune_adapter.safetensors").write_bytes(b"PK\x03\x04 not safetensors")
        ),
        ("rlptune_adapter.safetensors: not a safetensors file",),
    ),
    "adapter-model-is-a-checkpoint": (
        lambda w: mutated_adapter(
            w,
            "ckpt",
            lambda p, f: shutil.copy(w.run / "checkpoint" / "last.safetensors", f / "rlptune_adapter.safetensors"),
        ),
        ("rlptune_adapter.safetensors: tensors", "do not match method 'rlp'"),
    ),
    # checkpoints (train --resume)
    "checkpoint-garbage": (
        lambda w: tampered_checkpoint(w, "garbage", lambda p, w: p.write_bytes(b"\x00" * 64)),
        ("last.safetensors: not an rlptune checkpoint",),
    ),
    "checkpoint-is-an-adapter": (
        lambda w: tampered_checkpoint(
            w, "adapter", lambda p, w: shutil.copy(w.run / "adapter" / "rlptune_adapter.safetensors", p)
        ),
        ("last.safetensors: not an rlptune checkpoint (no rlptune_checkpoint metadata)",),
    ),
    "checkpoint-metadata-not-json": (
        lambda w: tampered_checkpoint(w, "meta", lambda p, w: _rewrite_checkpoint_meta(p, lambda m: "{epoch: 1")),
        ("last.safetensors: not an rlptune checkpoint (its rlptune_checkpoint metadata is not JSON)",),
    ),
    "checkpoint-epoch-not-a-count": (
        lambda w: tampered_checkpoint(
            w, "epoch", lambda p, w: _rewrite_checkpoint_meta(p, lambda m: m.update(epoch="two"))
        ),
        ("last.safetensors: not an rlptune checkpoint (epoch 'two'",),
    ),
    "checkpoint-other-settings": (
        lambda w: tampered_checkpoint(
            w, "digest", lambda p, w: _rewrite_checkpoint_meta(p, lambda m: m.update(config_digest="0" * 16))
        ),
        ("last.safetensors: checkpoint was written with other settings",),
    ),
    "checkpoint-other-major-version": (
        lambda w: tampered_checkpoint(
            w, "version", lambda p, w: _rewrite_checkpoint_meta(p, lambda m: m.update(library_version="7.0"))
        ),
        ("last.safetensors: checkpoint written by rlptune 7.0",),
    ),
    "checkpoint-optimizer-state-missing": (
        lambda w: tampered_checkpoint(
            w, "optim", lambda p, w: _rewrite_checkpoint_meta(p, lambda m: m.pop("optimizer"))
        ),
        ("not an rlptune checkpoint (no optimizer state",),
    ),
    "resume-with-other-settings": (
        lambda w: w.train(*w.run_args(), "--lr", 0.5, "-o", w.run_copy("lr"), "--resume"),
        ("runs/lr: run was made with other settings (settings hash",),
    ),
    # backbone weights that are not what their name says
    "backbone-weights-not-a-checkpoint": (
        lambda w: w.folder_train(
            w.data, "--backbone", f"{w.arch}:{write(w.tmp / 'weights.pt', b'just text, not weights')}"
        ),
        ("weights.pt: not a loadable weights-only checkpoint",),
    ),
    "backbone-weights-safetensors-garbage": (
        lambda w: w.folder_train(
            w.data, "--backbone", f"{w.arch}:{write(w.tmp / 'weights.safetensors', b'{}garbage')}"
        ),
        ("weights.safetensors: not a loadable weights-only checkpoint",),
    ),
    "backbone-weights-missing": (
        lambda w: w.folder_train(w.data, "--backbone", w.tmp / "nowhere.pt"),
        ("nowhere.pt: checkpoint file not found",),
    ),
    "backbone-spec-unknown": (
        lambda w: w.folder_train(w.data, "--backbone", "clip-large-ish"),
        ("backbone 'clip-large-ish': names no weights",),
    ),
    "device-unknown": (lambda w: w.folder_train(w.data, "--device", "gpu0"), ("backbone.device 'gpu0'",)),
    # configs
    "config-unknown-field": (
        lambda w: yaml_config(w, "train:\n  lr_rate: 0.1\n"),
        ("train: unknown field 'lr_rate' (did you mean 'lr'?); valid fields: epochs", "weight_decay"),
    ),
    "config-unknown-section": (
        lambda w: yaml_config(w, "trian: {epochs: 2}\n"),
        ("unknown field 'trian' (did you mean 'train'?); valid fields: backbone, data",),
    ),
    "config-mistyped-int": (
        lambda w: yaml_config(w, "train: {epochs: ten}\n"),
        ("train.epochs: expected an integer, got 'ten'",),
    ),
    "config-mistyped-float": (
        lambda w: yaml_config(w, "train: {lr: fast}\n"),
        ("train.lr: expected a number, got 'fast'",),
    ),
    "config-mistyped-bool": (
        lambda w: yaml_config(w, "method: {class_specific: maybe}\n"),
        ("method.class_specific: expected true or false",),
    ),
    "config-bad-choice": (
        lambda w: yaml_config(w, "prompt: {kind: sparse}\n"),
        ("prompt.kind 'sparse' is not known; expected one of full, lowrank",),
    ),
    "config-section-not-mapping": (
        lambda w: yaml_config(w, "train: 5\n"),
        ("section 'train' must be a mapping of fields",),
    ),
    "config-not-a-mapping": (lambda w: yaml_config(w, "- train\n- epochs\n"), ("expected a mapping of sections",)),
    "config-not-yaml": (lambda w: yaml_config(w, "train: {epochs: [1\n"), ("not valid YAML at line",)),
    "config-impossible-date": (
        lambda w: yaml_config(w, "train: {seed: 2001-02-30}\n"),
        ("not valid YAML (day is out of range",),
    ),
    "config-file-missing": (
        lambda w: w.folder_train(w.data, "--config", w.tmp / "nope.yaml"),
        ("nope.yaml: config file not found",),
    ),
    "config-nan": (lambda w: w.folder_train(w.data, "--lr", "nan"), ("train.lr: expected a finite number",)),
    "config-out-of-range": (lambda w: w.folder_train(w.data, "--shots", -4), ("data.shots must be >= 0, got -4",)),
    "config-template-without-slot": (
        lambda w: w.folder_train(w.data, "--template", "a photo"),
        ("method.templates: template 'a photo' must contain {}",),
    ),
    "config-options-self-referencing": (
        lambda w: yaml_config(w, "method: {options: &a {x: *a}}\n"),
        ("method.options.x", "nested too deeply"),
    ),
    "config-set-without-section": (
        lambda w: w.folder_train(w.data, "--set", "rank=2"),
        ("--set 'rank=2': expected section.field=value",),
    ),
    "config-method-unknown": (
        lambda w: w.folder_train(w.data, "--method", "coop2"),
        ("method.name 'coop2' is not known", "available: "),
    ),
    "method-option-unknown": (
        lambda w: w.folder_train(w.data, "--method", "kgcoop", "--set", "method.options.lamda=2"),
        ("unknown option 'lamda' for method 'kgcoop' (did you mean 'lambda_kg'?)",),
    ),
    # predict
    "predict-path-missing": (
        lambda w: ["predict", w.run / "adapter", w.tmp / "nothing-here", "--no-progress"],
        ("nothing-here: no such image or folder",),
    ),
    "predict-folder-without-images": (
        lambda w: ["predict", w.run / "adapter", write(w.tmp / "texts" / "a.txt", "x").parent, "--no-progress"],
        ("no images found in",),
    ),
    "predict-broken-image": (
        lambda w: [
            "predict",
            w.run / "adapter",
            write(w.tmp / "to-predict" / "cut.png", _png_bytes(w.tmp)[:-200]),
            "--no-progress",
        ],
        ("cut.png: image file is",),
    ),
    "predict-top-k-zero": (
        lambda w: ["predict", w.run / "adapter", w.data / "test", "--top-k", 0],
        ("--top-k must be >= 1",),
    ),
    "predict-classes-empty": (
        lambda w: ["predict", w.run / "adapter", w.data / "test", "--classes", " , ", "--no-progress"],
        ("--classes ' , ': expected",),
    ),
    "predict-classes-repeated": (
        lambda w: ["predict", w.run / "adapter", w.data / "test", "--classes", "cat,dog,cat", "--no-progress"],
        ("class 'cat' is listed more than once",),
    ),
    "predict-classes-file-binary": (
        lambda w: [
            "predict",
            w.run / "adapter",
            w.data / "test",
            "--classes",
            write(w.tmp / "classes.txt", b"\xff\xfe\x00\x01"),
            "--no-progress",
        ],
        ("classes.txt: classes file is not UTF-8 text",),
    ),
}


# -- round 2: data loss, stale results, collisions, guessed layouts ---------------------------------------------


def snapshot(folder: Path) -> dict[str, bytes] | None:
    """Every file under ``folder`` with its bytes (None when the folder does not exist)."""
    if not folder.exists():
        return None
    if folder.is_file():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def finished_copy(w: World, name: str) -> Path:
    """A copy of the finished run to be protected (a case must leave it byte-identical)."""
    return w.run_copy(name)


def foreign_folder(w: World, name: str) -> Path:
    """A plain folder holding a user's own result.json and metrics.jsonl (not written by rlptune)."""
    root = w.tmp / "foreign" / name
    if not root.exists():
        write(root / "result.json", '{"accuracy": 91.5, "mine": true}\n')
        write(root / "metrics.jsonl", '{"epoch": 0, "loss": 1.0}\n')
    return root


def hold_lock(w: World, target: Path) -> Path:
    """Lock ``target`` the way a running rlptune process does (flock on the sibling lock file, pid inside)."""
    import fcntl

    lock = target.parent / f".{target.name}.rlptune.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"424242\n", 0)
    w.held.append(fd)
    return target


def interrupted_beside(w: World, target: Path) -> Path:
    """A staging folder with a checkpoint beside ``target``: what a killed run leaves for --resume."""
    staging = target.parent / f".{target.name}.staging-99999999"
    shutil.copytree(target, staging, dirs_exist_ok=True)
    (staging / "result.json").unlink(missing_ok=True)
    return target


def full_disk(w: World) -> None:
    """Every fsync fails with ENOSPC (rlptune fsyncs each file it writes), as on a full disk."""
    import errno

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    w.monkeypatch.setattr(os, "fsync", no_space)


def nan_adapter(w: World, name: str, value: float) -> list:
    from safetensors.torch import load_file, save_file

    folder = w.adapter_copy(name)
    path = folder / "rlptune_adapter.safetensors"
    state = load_file(str(path))
    key = sorted(state)[0]
    state[key].view(-1)[0] = value
    save_file(state, str(path))
    return ["predict", folder, w.data / "test" / "red", "--no-progress", "--device", "cpu"]


def _checkpoint_nan(path: Path, w: World) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    key = sorted(k for k in tensors if k.startswith("param."))[0]
    tensors[key].view(-1)[0] = float("inf")
    save_file(tensors, str(path), meta)


def colliding_folder(w: World, name: str, classes: tuple[str, ...]) -> Path:
    """A class-folder dataset (no split folders) whose folder names collide after prompt normalisation."""
    root = w.tmp / "colliding" / name
    if not root.exists():
        for i, cls in enumerate(classes):
            for j in range(2):
                write(root / cls / f"{j}.png", _png_bytes(w.tmp))
    return root


def mixed_layout(w: World, name: str, extra: tuple[str, ...], drop: tuple[str, ...] = ()) -> Path:
    root = w.tmp / "layouts" / name
    if not root.exists():
        make_folder(root)
        for folder in extra:
            write(root / folder / "red" / "x.png", _png_bytes(w.tmp))
        for folder in drop:
            shutil.rmtree(root / folder)
    return root


def csv_images(w: World, text: str) -> list:
    """A CSV next to real images red/a.png, red/b.png, green/c.png (so only the listed problem is wrong)."""
    folder = w.tmp / "csv-images"
    for rel in ("red/a.png", "red/b.png", "green/c.png", "green/d.png"):
        if not (folder / rel).exists():
            write(folder / rel, _png_bytes(w.tmp))
    path = write(folder / f"labels_{zlib.crc32(text.encode())}.csv", text)
    return w.train("--dataset", "csv", "--data-root", path, "-o", w.out())


def split_json_images(w: World, obj) -> list:
    path = write(w.tmp / "csv-images" / f"split_{zlib.crc32(json.dumps(obj).encode())}.json", json.dumps(obj))
    csv_images(w, "path,label\nred/a.png,red\n")  # makes sure the images exist
    return w.train("--dataset", "split-json", "--data-root", path, "-o", w.out())


LONG_CLASSES = ",".join(f"class number {i}" for i in range(3000))  # longer than any file name may be

#: Cases that pass only once the lead wires a helper in (the test marks them xfail(strict=True) until then).
NEEDS_LEAD: dict[str, str] = {}

CATALOGUE.update(
    {
        # run directories: a failed or refused run never changes what the folder held (byte-identical afterwards)
        "rundir-finished-run-rerun-refused": (
            lambda w: (w.train(*w.run_args(), "-o", finished_copy(w, "rerun")), w.tmp / "runs" / "rerun"),
            ("runs/rerun: holds a finished run (result.json); use --overwrite",),
        ),
        "rundir-finished-run-failed-overwrite": (
            lambda w: (
                w.folder_train(
                    folder_with(w, "bad-for-overwrite", {"train/red/cut.png": _png_bytes(w.tmp)[:-200]}),
                    "--epochs",
                    1,
                    "-o",
                    finished_copy(w, "failed-overwrite"),
                    "--overwrite",
                ),
                w.tmp / "runs" / "failed-overwrite",
            ),
            ("train/red/cut.png: image file is",),
        ),
        "rundir-finished-run-failed-resume": (
            lambda w: (
                w.train(*w.run_args(), "--epochs", 5, "-o", finished_copy(w, "failed-resume"), "--resume"),
                w.tmp / "runs" / "failed-resume",
            ),
            ("runs/failed-resume: run was made with other settings",),
        ),
        "rundir-foreign-folder-refused": (
            lambda w: (w.folder_train(w.data, "-o", foreign_folder(w, "plain")), foreign_folder(w, "plain")),
            (
                "foreign/plain: folder is not empty and not an rlptune run (holds 'metrics.jsonl', 'result.json'); --overwrite replaces only rlptune run folders",
            ),
        ),
        "rundir-foreign-folder-resume-refused": (
            lambda w: (
                w.folder_train(w.data, "-o", foreign_folder(w, "resume"), "--resume"),
                foreign_folder(w, "resume"),
            ),
            ("foreign/resume: folder is not empty and not an rlptune run (holds 'metrics.jsonl', 'result.json')",),
        ),
        "rundir-foreign-folder-failed-overwrite": (
            lambda w: (
                w.folder_train(
                    folder_with(w, "bad-for-foreign", {"train/red/zero.png": b""}),
                    "--epochs",
                    1,
                    "-o",
                    foreign_folder(w, "overwrite"),
                    "--overwrite",
                ),
                foreign_folder(w, "overwrite"),
            ),
            (
                "foreign/overwrite: folder is not empty and not an rlptune run (holds 'metrics.jsonl', 'result.json'); --overwrite replaces only",
            ),
        ),
        "rundir-in-use": (
            lambda w: (
                w.train(*w.run_args(), "-o", hold_lock(w, finished_copy(w, "locked")), "--overwrite"),
                w.tmp / "runs" / "locked",
            ),
            ("runs/locked: run directory is in use by another rlptune process (pid 424242)",),
        ),
        "rundir-interrupted-run-needs-resume": (
            lambda w: (
                w.train(*w.run_args(), "-o", interrupted_beside(w, finished_copy(w, "interrupted"))),
                w.tmp / "runs" / "interrupted",
            ),
            (
                "runs/interrupted: an interrupted run of this folder is kept in .interrupted.staging-99999999; use --resume",
            ),
        ),
        "rundir-full-disk": (
            lambda w: (
                full_disk(w) or w.train(*w.run_args(), "-o", finished_copy(w, "full-disk"), "--overwrite"),
                w.tmp / "runs" / "full-disk",
            ),
            ("runs/full-disk/.rlptune-run.json: cannot write (no space left on device)",),
        ),
        "output-is-a-file": (
            lambda w: (w.folder_train(w.data, "-o", write(w.tmp / "out-file", "keep me")), w.tmp / "out-file"),
            ("out-file: output path is a file, not a folder",),
        ),
        "output-under-a-file": (
            lambda w: (
                w.folder_train(w.data, "-o", write(w.tmp / "out-file2", "keep me") / "run"),
                w.tmp / "out-file2",
            ),
            ("out-file2/run: output path is under", "which is a file, not a folder"),
        ),
        "output-under-proc": (
            lambda w: w.folder_train(w.data, "-o", "/proc/self/rlptune-run"),
            ("/proc/self/rlptune-run: output path is inside a kernel file system",),
        ),
        "cache-dir-is-a-file": (
            lambda w: w.folder_train(w.data, "--epochs", 1, "--cache-dir", write(w.tmp / "cache-file", "x")),
            ("cache-file: feature cache folder is a file, not a folder",),
        ),
        "micro-cache-is-a-file": (
            lambda w: (
                w.monkeypatch.setenv("RLPTUNE_CACHE", str(write(w.tmp / "cache-env-file", "x")))
                or w.train("--dataset", "micro-shapes", "-o", w.out())
            ),
            (
                "cache-env-file/micro/",
                "cannot write the micro dataset into the cache ($RLPTUNE_CACHE) (a parent of it is a file, not a folder)",
            ),
        ),
        "eval-json-under-a-file": (
            lambda w: [
                "eval",
                w.run / "adapter",
                "--dataset",
                "folder",
                "--data-root",
                w.data,
                "--device",
                "cpu",
                "--json",
                write(w.tmp / "json-parent", "x") / "m.json",
            ],
            ("json-parent/m.json: cannot write (a file is in the way of a folder)",),
        ),
        "predict-output-is-a-folder": (
            lambda w: [
                "predict",
                w.run / "adapter",
                w.data / "test" / "red",
                "--no-progress",
                "--device",
                "cpu",
                "-o",
                w.data,
            ],
            ("cannot write (it is a folder)",),
        ),
        # adapters and checkpoints that would give a number from broken tensors
        "adapter-tensor-nan": (
            lambda w: nan_adapter(w, "nan", float("nan")),
            ("rlptune_adapter.safetensors: tensor", "holds 1 non-finite value(s) (NaN or inf)"),
        ),
        "adapter-tensor-inf": (
            lambda w: nan_adapter(w, "inf", float("-inf")),
            ("rlptune_adapter.safetensors: tensor", "holds 1 non-finite value(s) (NaN or inf)"),
        ),
        "adapter-classnames-collide-case": (
            lambda w: mutated_adapter(w, "collide-case", lambda p, f: p.update(classnames=["red", "Red", "RED"])),
            (
                "rlptune_adapter.json: field 'classnames': class names collide after prompt normalisation",
                "'red' = 'Red' = 'RED'",
            ),
        ),
        "adapter-classnames-collide-underscore": (
            lambda w: mutated_adapter(
                w, "collide-underscore", lambda p, f: p.update(classnames=["dark_blue", "dark blue", "red"])
            ),
            ("field 'classnames': class names collide", "'dark_blue' = 'dark blue'"),
        ),
        "checkpoint-tensor-inf": (
            lambda w: tampered_checkpoint(w, "inf", _checkpoint_nan),
            ("runs/inf/checkpoint/last.safetensors: checkpoint tensor", "holds 1 non-finite value(s)"),
        ),
        # class names that give identical prompts
        "folder-classes-collide-case": (
            lambda w: w.folder_train(colliding_folder(w, "case", ("red", "Red", "RED"))),
            (
                "class folder names collide after prompt normalisation (case, '_' and spaces ignored)",
                "'RED' = 'Red' = 'red'",
            ),
        ),
        "folder-classes-collide-underscore": (
            lambda w: w.folder_train(colliding_folder(w, "underscore", ("dark_blue", "Dark Blue", "red"))),
            ("class folder names collide", "'Dark Blue' = 'dark blue'"),
        ),
        "csv-classes-collide-case": (
            lambda w: csv_images(w, "path,label\nred/a.png,Red\nred/b.png,red\n"),
            ("class names collide after prompt normalisation", "'Red' = 'red'"),
        ),
        "csv-classes-collide-underscore": (
            lambda w: csv_images(w, "path,label\nred/a.png,dark_blue\nred/b.png,dark  blue\n"),
            ("class names collide", "'dark blue' = 'dark_blue'"),
        ),
        "split-json-classes-collide": (
            lambda w: split_json_images(w, {"train": [["red/a.png", 0, "red"], ["green/c.png", 1, "Red"]]}),
            ("class names collide after prompt normalisation", "'red' = 'Red'"),
        ),
        "predict-classes-collide-case": (
            lambda w: [
                "predict",
                w.run / "adapter",
                w.data / "test",
                "--classes",
                "red,Red,RED",
                "--no-progress",
                "--device",
                "cpu",
            ],
            ("--classes 'red,Red,RED': classes collide after prompt normalisation", "'red' = 'Red' = 'RED'"),
        ),
        "predict-classes-collide-underscore": (
            lambda w: [
                "predict",
                w.run / "adapter",
                w.data / "test",
                "--classes",
                "dark_blue,dark blue",
                "--no-progress",
                "--device",
                "cpu",
            ],
            ("classes collide after prompt normalisation", "'dark_blue' = 'dark blue'"),
        ),
        "predict-classes-very-long": (
            lambda w: [
                "predict",
                w.run / "adapter",
                w.data / "test",
                "--classes",
                LONG_CLASSES + ",class number 7",
                "--no-progress",
                "--device",
                "cpu",
            ],
            ("--classes 'class number 0,", "class 'class number 7' is listed more than once"),
        ),
        # label conflicts and leaks in user-made lists
        "csv-image-two-labels": (
            lambda w: csv_images(w, "path,label\nred/a.png,red\nred/a.png,green\ngreen/c.png,green\n"),
            ("line 3: image 'red/a.png' is labelled 'green' but line 2 labels it 'red'",),
        ),
        "csv-train-test-leak": (
            lambda w: csv_images(
                w, "path,label,split\nred/a.png,red,train\ngreen/c.png,green,train\nred/a.png,red,test\n"
            ),
            ("line 4: image 'red/a.png' is in the test split and also in train (line 2)",),
        ),
        "csv-train-val-leak": (
            lambda w: csv_images(
                w, "path,label,split\nred/a.png,red,train\ngreen/c.png,green,train\ngreen/c.png,green,val\n"
            ),
            ("line 4: image 'green/c.png' is in the val split and also in train (line 3)",),
        ),
        "split-json-image-two-labels": (
            lambda w: split_json_images(
                w, {"train": [["red/a.png", 0, "red"], ["green/c.png", 1, "green"], ["red/a.png", 1, "green"]]}
            ),
            ("train[2]: image 'red/a.png' is labelled 'green' but train[0] labels it 'red'",),
        ),
        "split-json-train-test-leak": (
            lambda w: split_json_images(
                w,
                {"train": [["red/a.png", 0, "red"], ["green/c.png", 1, "green"]], "test": [["./red/a.png", 0, "red"]]},
            ),
            ("test[0]: image 'red/a.png' is in the test split and also in train (train[0])",),
        ),
        "csv-path-is-a-folder": (
            lambda w: w.train("--dataset", "csv", "--data-root", w.data, "-o", w.out()),
            ("colours: expected a CSV file, found a folder",),
        ),
        "split-json-path-is-a-folder": (
            lambda w: w.train("--dataset", "split-json", "--data-root", w.data, "-o", w.out()),
            ("colours: expected a split file, found a folder",),
        ),
        # no guessed layouts
        "folder-split-folders-and-others": (
            lambda w: w.folder_train(mixed_layout(w, "notes", ("notes",))),
            (
                "holds split folder(s) test/, train/, val/ and unexpected folder(s) 'notes'; expected only train/, val/, test/",
            ),
        ),
        "folder-class-folders-and-a-test-folder": (
            lambda w: w.folder_train(mixed_layout(w, "classes-and-test", ("red", "green"), drop=("train", "val"))),
            ("holds split folder(s) test/ and unexpected folder(s) 'green', 'red'",),
        ),
        "folder-split-folders-without-train": (
            lambda w: w.folder_train(mixed_layout(w, "no-train", (), drop=("train",))),
            ("holds test/, val/ but no train/ folder",),
        ),
        # YAML that PyYAML would silently take the last of
        "config-duplicate-section": (
            lambda w: yaml_config(w, "train:\n  epochs: 1\nmethod:\n  name: rlp\ntrain:\n  lr: 0.01\n"),
            ("line 5: key 'train' given twice (first at line 1); each key may appear once",),
        ),
        "config-duplicate-field": (
            lambda w: yaml_config(w, "train:\n  epochs: 1\n  epochs: 50\n"),
            ("line 3: key 'epochs' given twice (first at line 2)",),
        ),
        "config-duplicate-flow-key": (
            lambda w: yaml_config(w, "prompt: {rank: 1, rank: 4}\n"),
            ("line 1: key 'rank' given twice",),
        ),
        # numbers outside what float32 training can hold, and other out-of-range settings
        "config-lr-beyond-float32": (
            lambda w: w.folder_train(w.data, "--lr", "1e39"),
            ("train.lr 1e+39 is beyond float32's range",),
        ),
        "config-warmup-lr-beyond-float32": (
            lambda w: w.folder_train(w.data, "--warmup-lr", "5e38"),
            ("train.warmup_lr 5e+38 is beyond float32's range",),
        ),
        "config-momentum-beyond-float32": (
            lambda w: w.folder_train(w.data, "--momentum", "1e300"),
            ("train.momentum 1e+300 is beyond float32's range",),
        ),
        "config-weight-decay-beyond-float32": (
            lambda w: w.folder_train(w.data, "--weight-decay", "4e38"),
            ("train.weight_decay 4e+38 is beyond float32's range",),
        ),
        "config-lr-infinite": (
            lambda w: w.folder_train(w.data, "--lr", "inf"),
            ("train.lr: expected a finite number",),
        ),
        "config-lr-zero": (lambda w: w.folder_train(w.data, "--lr", 0), ("train.lr must be > 0, got 0",)),
        "config-lr-negative": (lambda w: w.folder_train(w.data, "--lr", "-0.1"), ("train.lr must be > 0, got -0.1",)),
        "config-min-lr-above-lr": (
            lambda w: w.folder_train(w.data, "--lr", 0.01, "--min-lr", 0.1),
            ("train.min_lr (0.1) must be below train.lr (0.01)",),
        ),
        "config-momentum-negative": (
            lambda w: w.folder_train(w.data, "--momentum", "-0.5"),
            ("train.momentum must be >= 0, got -0.5",),
        ),
        "config-weight-decay-negative": (
            lambda w: w.folder_train(w.data, "--weight-decay", "-1"),
            ("train.weight_decay must be >= 0",),
        ),
        "config-epochs-negative": (
            lambda w: w.folder_train(w.data, "--epochs", -1),
            ("train.epochs must be >= 0, got -1",),
        ),
        "config-epochs-fraction": (
            lambda w: w.folder_train(w.data, "--epochs", 2.5),
            ("train.epochs: expected an integer, got '2.5'",),
        ),
        "config-epochs-bool": (
            lambda w: yaml_config(w, "train: {epochs: true}\n"),
            ("train.epochs: expected an integer, got True",),
        ),
        "config-lr-list": (lambda w: yaml_config(w, "train: {lr: [0.1, 0.2]}\n"), ("train.lr: expected a number",)),
        "config-batch-size-zero": (
            lambda w: w.folder_train(w.data, "--batch-size", 0),
            ("train.batch_size must be >= 1, got 0",),
        ),
        "config-warmup-negative": (
            lambda w: w.folder_train(w.data, "--warmup-epochs", -2),
            ("train.warmup_epochs must be >= 0, got -2",),
        ),
        "config-aug-views-negative": (
            lambda w: w.folder_train(w.data, "--aug-views", -1),
            ("train.aug_views must be >= 0, got -1",),
        ),
        "config-crop-scale-zero": (
            lambda w: w.folder_train(w.data, "--crop-scale", 0),
            ("train.crop_scale must be in (0, 1], got 0",),
        ),
        "config-crop-scale-above-one": (
            lambda w: w.folder_train(w.data, "--crop-scale", 1.5),
            ("train.crop_scale must be in (0, 1], got 1.5",),
        ),
        "config-seed-negative": (lambda w: w.folder_train(w.data, "--seed", -1), ("train.seed must be >= 0, got -1",)),
        "config-seed-huge": (lambda w: w.folder_train(w.data, "--seed", 2**63), ("train.seed must be < 2**63",)),
        "config-num-workers-negative": (
            lambda w: w.folder_train(w.data, "--num-workers", -3),
            ("train.num_workers must be >= 0, got -3",),
        ),
        "config-checkpoint-every-negative": (
            lambda w: w.folder_train(w.data, "--checkpoint-every", -1),
            ("train.checkpoint_every must be >= 0, got -1",),
        ),
        "config-select-best-without-validation": (
            lambda w: w.folder_train(w.data, "--select-best", "--val-every", 0),
            ("train.select_best needs validation: set train.val_every >= 1",),
        ),
        "config-rank-zero": (
            lambda w: w.folder_train(w.data, "--method", "rlp", "--rank", 0),
            ("prompt.rank must be >= 1, got 0",),
        ),
        "config-n-ctx-zero": (lambda w: w.folder_train(w.data, "--n-ctx", 0), ("prompt.n_ctx must be >= 1, got 0",)),
        "config-dropout-one": (
            lambda w: w.folder_train(w.data, "--method", "rlp", "--dropout", 1),
            ("prompt.dropout must be in [0, 1), got 1",),
        ),
        "config-alpha-negative": (
            lambda w: w.folder_train(w.data, "--method", "rlp", "--alpha", "-2"),
            ("prompt.alpha must be > 0 (or unset), got -2",),
        ),
        "config-std-negative": (
            lambda w: w.folder_train(w.data, "--init-std", "-0.02"),
            ("prompt.a_std, prompt.b_std and prompt.init_std must be >= 0",),
        ),
        "config-ctx-init-blank": (lambda w: w.folder_train(w.data, "--ctx-init", "   "), ("prompt.ctx_init is empty",)),
        "config-template-extra-braces": (
            lambda w: w.folder_train(w.data, "--template", "a {} of {kind}"),
            ("method.templates: template 'a {} of {kind}' has braces other than one {}",),
        ),
        "config-eval-batch-size-zero": (
            lambda w: w.folder_train(w.data, "--eval-batch-size", 0),
            ("eval.batch_size must be >= 1, got 0",),
        ),
        "config-text-chunk-negative": (
            lambda w: w.folder_train(w.data, "--text-chunk", -1),
            ("method.options.text_chunk must be >= 0, got -1",),
        ),
        "config-file-is-a-folder": (
            lambda w: w.folder_train(w.data, "--config", w.data),
            ("colours: expected a YAML config file, found a folder",),
        ),
        "config-file-not-utf8": (
            lambda w: w.folder_train(w.data, "--config", write(w.tmp / "latin1.yaml", b"train: {epochs: \xe9}\n")),
            ("latin1.yaml: config file is not UTF-8 text (byte 16)",),
        ),
        "config-set-unknown-section": (
            lambda w: w.folder_train(w.data, "--set", "trian.epochs=2"),
            ("unknown field 'trian' (did you mean 'train'?)",),
        ),
        "config-set-unknown-field": (
            lambda w: w.folder_train(w.data, "--set", "train.epoch=2"),
            ("train: unknown field 'epoch' (did you mean 'epochs'?)",),
        ),
        "config-bad-image-policy": (
            lambda w: w.folder_train(w.data, "--image-policy", "ignore"),
            ("data.image_policy: expected one of error, skip, got 'ignore'",),
        ),
        "config-bad-subsample": (
            lambda w: w.folder_train(w.data, "--subsample", "novel"),
            ("data.subsample: expected one of all, base, new, got 'novel'",),
        ),
        # more data entries
        "csv-empty-label": (lambda w: csv_images(w, "path,label\nred/a.png,\n"), ("line 2: empty label",)),
        "csv-empty-path": (lambda w: csv_images(w, "path,label\n ,red\n"), ("line 2: empty path",)),
        "csv-path-absolute": (
            lambda w: csv_images(w, "path,label\n/etc/hostname,red\n"),
            ("line 2: image path '/etc/hostname' is absolute",),
        ),
        "csv-image-missing": (
            lambda w: csv_images(w, "path,label\nred/a.png,red\nred/nope.png,red\n"),
            ("1 of 2 listed images are missing", "'red/nope.png'"),
        ),
        "csv-not-utf8": (
            lambda w: w.train(
                "--dataset",
                "csv",
                "--data-root",
                write(w.tmp / "latin1.csv", b"path,label\nr\xe9d/a.png,red\n"),
                "-o",
                w.out(),
            ),
            ("latin1.csv: CSV file is not UTF-8 text",),
        ),
        "split-json-label-negative": (
            lambda w: split_json(w, {"train": [["red/a.png", -1, "red"]]}),
            ("train[0]: label must be >= 0, got -1",),
        ),
        "split-json-classname-blank": (
            lambda w: split_json(w, {"train": [["red/a.png", 0, "  "]]}),
            ("train[0]: class name must be a non-empty string",),
        ),
        "split-json-path-not-string": (
            lambda w: split_json(w, {"train": [[7, 0, "red"]]}),
            ("train[0]: image path must be a string, got 7",),
        ),
        "split-json-nested-too-deep": (
            lambda w: split_json(w, "[" * 100_000 + "]" * 100_000),
            ("JSON nested too deeply",),
        ),
        "folder-class-name-empty": (
            lambda w: w.folder_train(colliding_folder(w, "blank-name", ("red", "___"))),
            ("___: folder name gives an empty class name",),
        ),
        "folder-train-without-classes": (
            lambda w: w.folder_train(write(w.tmp / "empty-train" / "train" / "readme.txt", "no classes").parent.parent),
            ("empty-train/train: no class folders found; expected train/<class>/<image>",),
        ),
    }
)


def _case_param(case: str):
    reason = NEEDS_LEAD.get(case)
    return pytest.param(case, marks=pytest.mark.xfail(strict=True, reason=reason)) if reason else case


@pytest.mark.parametrize("case", [_case_param(c) for c in CATALOGUE])
def test_bad_input_gets_one_line_error(case, world, capsys, monkeypatch, cache_dir):
    """One line, no traceback; for the data-loss cases also: the folder that held results is byte-identical."""
    monkeypatch.delenv("RLPTUNE_DATA", raising=False)
    build, fragments = CATALOGUE[case]
    world.monkeypatch = monkeypatch
    built = build(world)
    args, protected = built if isinstance(built, tuple) else (built, None)
    before = snapshot(protected) if protected is not None else None
    capsys.readouterr()
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        monkeypatch.undo()
        while world.held:
            os.close(world.held.pop())
    assert_one_line_error(code, err, *fragments)
    if protected is not None:
        assert snapshot(protected) == before, f"{protected} changed"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any folder")
def test_unreadable_data_root(world, capsys, tmp_path):
    root = make_folder(tmp_path / "locked")
    os.chmod(root, 0)
    try:
        code, _, err = run_cli(world.folder_train(root), capsys)
    finally:
        os.chmod(root, 0o755)
    assert_one_line_error(code, err, "locked")


def test_convertible_images_are_converted(world, capsys):
    """CMYK, 16-bit, alpha, palette-with-transparency and grayscale images train like RGB ones (policy error)."""
    root = world.tmp / "folders" / "odd-modes"
    make_folder(root)
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(root / "train" / "red" / "cmyk.jpg")
    Image.fromarray(np.full((40, 40), 40_000, np.uint16)).save(root / "train" / "green" / "sixteen.png")
    Image.new("RGBA", (40, 40), (30, 60, 220, 128)).save(root / "train" / "blue" / "alpha.png")
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 220, 30, 30] + [0] * 762)
    palette.save(root / "test" / "red" / "palette.png", transparency=0)
    Image.new("LA", (40, 40), (90, 200)).save(root / "test" / "green" / "gray-alpha.png")
    code, _, err = run_cli(world.folder_train(root, "--epochs", 1, "-o", world.tmp / "odd-run"), capsys)
    assert code == 0, err
    assert json.loads((world.tmp / "odd-run" / "result.json").read_text())["metrics"]["test"]["n"] == 3 * 2 + 2


def test_skip_policy_drops_and_reports_every_unreadable_image(world, capsys):
    files = {f"train/red/{n}": make(world.tmp) for n, (make, _) in BROKEN_IMAGES.items()}
    files["test/blue/zero.png"] = b""
    root = folder_with(world, "skip-policy", files)
    out = world.tmp / "skip-run"
    code, _, err = run_cli(world.folder_train(root, "--image-policy", "skip", "--epochs", 1, "-o", out), capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if line.startswith("skipped "))
    assert line.startswith(f"skipped {len(files)} unreadable image(s) (data.image_policy=skip): ")
    assert str(out / "skipped_images.json") in line
    report = json.loads((out / "skipped_images.json").read_text())
    assert sorted(r["path"] for r in report) == sorted(files)
    assert all(r["reason"] and r["split"] in ("train", "test") for r in report)
    result = json.loads((out / "result.json").read_text())
    assert result["metrics"]["test"]["n"] == 3 * 2  # the generated test images; the zero-byte one was dropped


def test_fewer_images_than_shots_keeps_all_and_warns_naming_the_class(world, capsys, caplog):
    """Not an error (CoOp's toolkit does the same): every image of the short class is used and the run says so."""
    out = world.tmp / "short-run"
    code, _, err = run_cli(world.folder_train(world.data, "--shots", 5, "--epochs", 1, "-o", out), capsys)
    assert code == 0, err
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "fewer images than shots" in warning and "'blue': 3 train image(s) for 5 shots" in warning
    record = json.loads((out / "few_shot.json").read_text())
    assert {c["classname"] for c in record["short_classes"]} == {"red", "green", "blue"}
    assert len(record["train"]) == 9


def test_catalogue_is_documented():
    """docs/RELIABILITY.md lists every case id of this catalogue."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    missing = [case for case in CATALOGUE if f"`{case}`" not in doc]
    assert not missing, f"docs/RELIABILITY.md does not list {missing}"


def test_adapter_library_version_rule(world, capsys):
    """Adapters are read by the same major version: another minor / patch loads, anything else is refused."""
    from rlptune.engine.adapter import compatible_version

    major = __version__.split(".")[0]
    assert compatible_version(__version__) and compatible_version(f"{major}.99.7") and compatible_version(f"{major}")
    for other in (f"{int(major) + 1}.0.0", "x.1", "", None, 0, 1.5, [major]):
        assert not compatible_version(other), other
    code, out, err = run_cli(
        mutated_adapter(world, "minor", lambda p, f: p["library"].update(version=f"{major}.99.7")), capsys
    )
    assert code == 0 and len(out.splitlines()) == 2, err  # two test images of class red
    code, _, err = run_cli(mutated_adapter(world, "no-version", lambda p, f: p["library"].pop("version")), capsys)
    assert_one_line_error(code, err, "written by rlptune None, incompatible with rlptune " + __version__)
