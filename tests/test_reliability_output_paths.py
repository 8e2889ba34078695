"""Output folders never destroy inputs (docs/RELIABILITY.md, "Output folders never destroy inputs (round 3)").

``--overwrite`` replaces an rlptune run folder and nothing else. A folder that is not rlptune's output, or that is or
holds the data root, the current directory, a parent of it, the home directory or a filesystem root, is refused in one
line by :func:`rlptune.rundir.check_output_folder`, with or without ``--overwrite`` / ``--resume``, before anything
is trained or written. Every case checks the one line and that every file that existed before is byte-identical
afterwards; a property test drives random layouts through the run-folder transaction itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_image_folder
from rlptune.cli import main
from rlptune.errors import RlptuneError
from rlptune.rundir import CHECKPOINT, MARKER, OUTPUT_LABELS, OUTPUT_LAYOUTS, RunDirectory, check_output_folder

REPO = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------------------------------------------


def tree(root: Path) -> dict[str, object]:
    """Every file and symlink under ``root``: relative path -> its bytes (a symlink -> where it points)."""
    found: dict[str, object] = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("symlink", os.readlink(path))
            elif path.is_file():
                found[rel] = path.read_bytes()
    return found


def run_cli(args, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(code: int, err: str, *fragments: str) -> str:
    """Exit 2, exactly one ``rlptune: error:`` line holding every fragment, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("rlptune: error: ")]
    assert code == 2 and len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


_BACKBONES: dict = {}


@pytest.fixture(autouse=True)
def _shared_backbones(monkeypatch):
    """Load the tiny backbone once per module: these cases are about folders, not weights."""
    import rlptune.engine.adapter as adapter_mod
    import rlptune.engine.pipeline as pipeline_mod
    from rlptune.backbones import load_backbone as real

    def cached(spec, device="cpu", precision="fp32", seed=0):
        key = (str(spec), device, precision, seed)
        if key not in _BACKBONES:
            _BACKBONES[key] = real(spec, device=device, precision=precision, seed=seed)
        return _BACKBONES[key]

    monkeypatch.setattr(pipeline_mod, "load_backbone", cached)
    monkeypatch.setattr(adapter_mod, "load_backbone", cached)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_arch_path) -> Path:
    """One finished run (trained once per module) that cases copy."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_image_folder(tmp / "data", ["red", "green"], {"train": 1, "val": 1, "test": 1})
    args = [
        "train",
        "--backbone",
        tiny_arch_path,
        "--device",
        "cpu",
        "--no-progress",
        "--dataset",
        "folder",
        "--data-root",
        data,
        "--epochs",
        1,
        "--shots",
        1,
        "--aug-views",
        0,
        "--cache-dir",
        tmp / "cache",
        "-o",
        tmp / "run",
    ]
    assert main([str(a) for a in args]) == 0
    return tmp / "run"


@pytest.fixture
def world(tmp_path, monkeypatch):
    """tmp/w/proj/{thesis.tex, data/<an image folder + NOTES.txt>}, a home folder with a file, cwd = tmp/w/work."""
    base = tmp_path / "w"
    data = make_image_folder(base / "proj" / "data", ["red", "green"], {"train": 1, "val": 1, "test": 1})
    (data / "NOTES.txt").write_text("my notes about the images\n")
    (base / "proj" / "thesis.tex").write_text("\\documentclass{article}\n")
    (base / "home").mkdir()
    (base / "home" / ".bashrc").write_text("export PS1='$ '\n")
    (base / "work").mkdir()
    monkeypatch.setenv("HOME", str(base / "home"))
    monkeypatch.setenv("RLPTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RLPTUNE_DATA", raising=False)
    monkeypatch.chdir(base / "work")
    return base


def train_args(world: Path, arch: Path, *extra) -> list:
    return [
        "train",
        "--backbone",
        arch,
        "--device",
        "cpu",
        "--no-progress",
        "--dataset",
        "folder",
        "--data-root",
        world / "proj" / "data",
        "--epochs",
        1,
        "--shots",
        1,
        "--aug-views",
        0,
        *extra,
    ]


def fake_run(folder: Path, settings_hash: str = "a" * 16, finished: bool = True) -> Path:
    """What a run folder holds (marker, checkpoint, adapter, result), written directly: cheap for many layouts."""
    (folder / "checkpoint").mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"format": "rlptune-run/1", "settings_hash": settings_hash}))
    (folder / CHECKPOINT).write_text(f"checkpoint of {folder.name}")
    (folder / "config.yaml").write_text("method: {name: coop}\n")
    (folder / "run_info.json").write_text("{}")
    if finished:
        (folder / "adapter").mkdir(exist_ok=True)
        (folder / "adapter" / "rlptune_adapter.safetensors").write_text(f"adapter of {folder.name}")
        (folder / "result.json").write_text(json.dumps({"run": folder.name}))
    return folder


# -- train: the reported data-loss cases, through the command line ----------------------------------------------

DATA_ROOT = "the data root (data.root)"


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"], []], ids=["overwrite", "resume", "plain"])
def test_output_is_the_data_root(world, tiny_arch_path, capsys, flags):
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", world / "proj" / "data", *flags), capsys)
    one_line(
        code,
        err,
        f"{world / 'proj' / 'data'}: output folder is {DATA_ROOT}",
        "--overwrite replaces only rlptune run folders",
    )
    assert tree(world) == before


@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"]], ids=["overwrite", "resume"])
def test_output_above_the_data_root(world, tiny_arch_path, capsys, flags):
    """-o proj with the data in proj/data and thesis.tex beside it."""
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", world / "proj", *flags), capsys)
    one_line(code, err, f"{world / 'proj'}: output folder holds {DATA_ROOT} at {world / 'proj' / 'data'}")
    assert tree(world) == before


def test_output_is_a_symlink_to_the_data_root(world, tiny_arch_path, capsys):
    (world / "work" / "link").symlink_to(world / "proj" / "data")
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", "link", "--overwrite"), capsys)
    one_line(code, err, f"link: output folder is {DATA_ROOT}")
    assert tree(world) == before


def test_data_root_reached_through_a_symlink(world, tiny_arch_path, capsys):
    """The data root given as a link, -o the real folder above it: symlinks are resolved on both sides."""
    (world / "work" / "data-link").symlink_to(world / "proj" / "data")
    before = tree(world)
    args = train_args(world, tiny_arch_path, "-o", world / "proj", "--overwrite")
    args[args.index("--data-root") + 1] = world / "work" / "data-link"
    code, err = run_cli(args, capsys)
    one_line(code, err, f"{world / 'proj'}: output folder holds {DATA_ROOT}")
    assert tree(world) == before


@pytest.mark.parametrize(
    "output,reason",
    [
        (".", "is the current directory"),
        ("..", "holds the current directory at"),
        ("../..", "holds the current directory at"),
    ],
    ids=["dot", "dotdot", "grandparent"],
)
@pytest.mark.parametrize("flags", [["--overwrite"], ["--resume"], []], ids=["overwrite", "resume", "plain"])
def test_output_is_or_holds_the_current_directory(world, tiny_arch_path, capsys, output, reason, flags):
    (world / "work" / "draft.md").write_text("not a run\n")
    before = tree(world.parent)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", output, *flags), capsys)
    one_line(code, err, f"{output}: output folder {reason}")
    assert tree(world.parent) == before


def test_empty_output_is_an_error_not_the_current_directory(world, tiny_arch_path, capsys):
    (world / "work" / "draft.md").write_text("not a run\n")
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", "", "--overwrite"), capsys)
    one_line(code, err, "-o/--output: the run folder name is empty; expected a folder path")
    assert tree(world) == before


def test_output_is_the_home_directory(world, tiny_arch_path, capsys):
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", world / "home", "--overwrite"), capsys)
    one_line(code, err, f"{world / 'home'}: output folder is the home directory")
    assert tree(world) == before


def test_output_is_a_folder_that_is_not_a_run(world, tiny_arch_path, capsys):
    folder = world / "work" / "papers"
    folder.mkdir()
    (folder / "draft.pdf").write_bytes(b"%PDF-1.4 mine")
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "-o", folder, "--overwrite"), capsys)
    one_line(
        code,
        err,
        f"{folder}: folder is not empty and not an rlptune run (holds 'draft.pdf'); "
        f"--overwrite replaces only rlptune run folders",
    )
    assert tree(world) == before


def test_run_folder_that_holds_the_data_root_is_not_replaced(world, tiny_arch_path, capsys):
    """A real run folder is replaceable, unless the data it would train on lives inside it."""
    run = fake_run(world / "work" / "run")
    shutil.move(str(world / "proj" / "data"), str(run / "images"))
    before = tree(world)
    args = train_args(world, tiny_arch_path, "-o", run, "--overwrite")
    args[args.index("--data-root") + 1] = run / "images"
    code, err = run_cli(args, capsys)
    one_line(code, err, f"{run}: output folder holds {DATA_ROOT} at {run / 'images'}")
    assert tree(world) == before


def test_output_is_the_feature_cache(world, tiny_arch_path, capsys):
    cache = world / "cache"
    (cache / "features").mkdir(parents=True)
    fake_run(cache)  # even a folder that looks like a run
    before = tree(world)
    code, err = run_cli(train_args(world, tiny_arch_path, "--cache-dir", cache, "-o", cache, "--overwrite"), capsys)
    one_line(code, err, f"{cache}: output folder is the feature cache folder (train.cache_dir)")
    assert tree(world) == before


def test_a_run_folder_is_still_replaced(world, trained, tiny_arch_path, capsys):
    """The rule refuses only what is not a run: a finished run (of other settings) is refused without a flag and
    replaced with --overwrite, and nothing outside it changes (resuming: tests/test_reliability_resume.py)."""
    run = shutil.copytree(trained, world / "work" / "run")
    before = tree(world)
    outside = {k: v for k, v in before.items() if not k.startswith(("work/run", "work/.run."))}
    assert run_cli(train_args(world, tiny_arch_path, "-o", run), capsys)[0] == 2  # a finished run: not without a flag
    after = tree(world)
    assert {k: after.get(k) for k in before} == before  # (only its lock file is new)
    assert run_cli(train_args(world, tiny_arch_path, "-o", run, "--overwrite"), capsys)[0] == 0
    config = (run / "config.yaml").read_text()
    assert str(world / "proj" / "data") in config and config != (trained / "config.yaml").read_text()
    assert {k: v for k, v in tree(world).items() if not k.startswith(("work/run", "work/.run."))} == outside


# -- the library entry points ---------------------------------------------------------------------------------------


def test_library_train_refuses_an_empty_path_and_the_current_directory(world):
    from rlptune.config import resolve_config
    from rlptune.engine.api import train

    config = resolve_config(overrides={"data": {"dataset": "folder", "root": str(world / "proj" / "data")}})
    before = tree(world)
    with pytest.raises(RlptuneError, match=r"^-o/--output: the run folder name is empty"):
        train(config, "", overwrite=True)
    with pytest.raises(RlptuneError, match=r"^\.: output folder is the current directory"):
        train(config, Path("."), overwrite=True)
    with pytest.raises(RlptuneError, match=r"^\.: output folder is the current directory"):
        RunDirectory(".", "a" * 16, resume=False, overwrite=True)
    assert tree(world) == before


def test_a_filesystem_root_is_refused(world, monkeypatch):
    """A mount point (a USB stick, a network share) is a filesystem root: never a run folder."""
    stick = world / "stick"
    (stick / "photos").mkdir(parents=True)
    real = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(stick) or real(p))
    fake_run(stick)
    with pytest.raises(RlptuneError, match="stick: output folder is a filesystem root"):
        check_output_folder(stick, kind="run")
    with pytest.raises(RlptuneError, match="^/: output folder holds the current directory"):
        check_output_folder("/", kind="run")


def test_a_folder_filled_while_the_run_trained_is_not_replaced(tmp_path):
    """The rule holds at the commit too: a folder that appeared meanwhile and is not a run is left alone."""
    target = tmp_path / "run"
    with pytest.raises(
        RlptuneError,
        match=r"run: folder is not empty and not an rlptune run \(holds 'mine.txt'\).*"
        r"the finished run is kept in \.run\.staging-",
    ):
        with RunDirectory(target, "a" * 16, resume=False, overwrite=True) as run:
            (run.staging / "result.json").write_text("{}")
            target.mkdir()
            (target / "mine.txt").write_text("mine")
            run.commit()
    assert (target / "mine.txt").read_text() == "mine"
    [kept] = tmp_path.glob(".run.staging-*")
    assert (kept / "result.json").is_file()


# -- sweeps, reports, the study, the demo, save_pretrained ---------------------------------------------------------


def test_sweep_results_folder_is_checked(world, capsys):
    data = world / "proj" / "data"
    sweep = ["run", "few-shot", "--datasets", "folder", "--data-root", data, "--methods", "zeroshot", "--seeds", 1]
    before = tree(world)
    one_line(
        *run_cli([*sweep, "--results", data], capsys),
        f"{data}: output folder is the data root (--data-root)",
        "choose a new folder",
    )
    one_line(*run_cli([*sweep, "--results", "."], capsys), ".: output folder is the current directory")
    one_line(*run_cli([*sweep, "--results", ""], capsys), "--results: the results folder name is empty")
    one_line(
        *run_cli([*sweep, "--results", world / "proj"], capsys),
        f"{world / 'proj'}: output folder holds the data root (--data-root)",
    )
    (world / "work" / "paper").mkdir()
    (world / "work" / "paper" / "paper.tex").write_text("mine")
    one_line(
        *run_cli([*sweep, "--results", world / "work" / "paper"], capsys),
        "paper: folder is not empty and not an rlptune results folder (holds 'paper.tex')",
    )
    assert {k: v for k, v in tree(world).items() if not k.startswith("work/paper")} == before


def test_report_folder_is_checked(world, capsys):
    results = world / "work" / "results"
    fake_run(results / "few-shot" / "folder" / "coop" / "shots1" / "seed1")
    (world / "proj" / "report.md").write_text("# my own report\n")
    before = tree(world)
    one_line(*run_cli(["report", results, "-o", "."], capsys), ".: output folder is the current directory")
    one_line(*run_cli(["report", results, "-o", ""], capsys), "-o/--output: the report folder name is empty")
    one_line(
        *run_cli(["report", results, "-o", results], capsys),
        f"{results}: output folder is the results folder it reports on",
    )
    one_line(
        *run_cli(["report", results, "-o", world / "proj"], capsys),
        "proj: folder is not empty and not an rlptune report folder (holds 'data', 'thesis.tex')",
    )
    assert tree(world) == before


def test_study_folders_are_checked(world, capsys):
    study = ["reproduce", "rlp", "--backbone", "micro", "--quick", "--parts", "lowrank"]
    (world / "work" / "notes.txt").write_text("mine")
    before = tree(world)
    one_line(*run_cli([*study, "--results", ".", "-o", "rep"], capsys), ".: output folder is the current directory")
    one_line(
        *run_cli([*study, "--results", "r", "-o", ""], capsys), "-o/--output: the study report folder name is empty"
    )
    one_line(
        *run_cli([*study, "--results", "r", "-o", "r"], capsys), "r: output folder is the results folder (--results)"
    )
    one_line(
        *run_cli([*study, "--results", "r", "-o", world / "work"], capsys), "output folder is the current directory"
    )
    one_line(
        *run_cli([*study, "--results", "r", "--report-only", "-o", world / "proj"], capsys),
        "proj: folder is not empty and not an rlptune study report folder (holds 'data', 'thesis.tex')",
    )
    assert tree(world) == before


def test_demo_folder_is_checked(world, capsys):
    before = tree(world)
    one_line(*run_cli(["demo", "--quick", "-o", "."], capsys), ".: output folder is the current directory")
    one_line(*run_cli(["demo", "--quick", "-o", ""], capsys), "-o/--output: the demo folder name is empty")
    one_line(
        *run_cli(["demo", "--quick", "-o", world / "proj"], capsys),
        "proj: folder is not empty and not an rlptune demo folder (holds 'data', 'thesis.tex')",
    )
    assert tree(world) == before


def test_save_pretrained_never_writes_over_a_users_readme(world, trained):
    import rlptune

    method = rlptune.load_adapter(trained / "adapter", device="cpu")
    project = world / "proj"
    (project / "README.md").write_text("# my project\n")
    (world / "work" / "readme-only").mkdir()
    (world / "work" / "readme-only" / "README.md").write_text("# not an adapter\n")
    before = tree(world)
    with pytest.raises(
        RlptuneError,
        match=r"proj: folder is not empty and not an rlptune adapter folder \(holds "
        r"'data', 'thesis.tex'\)",
    ):
        rlptune.save_pretrained(method, project)
    with pytest.raises(
        RlptuneError,
        match=r"readme-only: folder is not empty and not an rlptune adapter folder "
        r"\(holds 'README.md'\)",
    ):
        rlptune.save_pretrained(method, world / "work" / "readme-only")
    with pytest.raises(RlptuneError, match=r"^\.: output folder is the current directory"):
        rlptune.save_pretrained(method, ".")
    assert tree(world) == before
    out = rlptune.save_pretrained(method, world / "work" / "hub")
    first = tree(out)
    assert rlptune.save_pretrained(method, out) == out and tree(out) == first  # its own folder: saved again


def test_folders_rlptune_wrote_are_reused(tmp_path):
    """What each command wrote before is its own (without any new marker): the shipped study report, a results
    folder with a report kept inside it, a demo folder, a report folder; files the OS leaves do not count."""
    evidence = shutil.copytree(REPO / "docs" / "evidence", tmp_path / "evidence")
    assert check_output_folder(evidence, kind="evidence") == evidence
    results = tmp_path / "results"
    fake_run(results / "base2new" / "d" / "coop" / "shots16" / "seed1-0123456789ab")
    (results / "tables").mkdir()
    (results / "tables" / "base2new.md").write_text("| table |")
    (results / "failed-runs.log").write_text("")
    (results / ".DS_Store").write_bytes(b"\0")
    report = results / "report"
    (report / "figures").mkdir(parents=True)
    (report / "report.md").write_text("# report")
    for folder, kind in ((results, "results"), (report, "report"), (evidence, "evidence")):
        assert check_output_folder(folder, kind=kind) == folder
    demo = tmp_path / "demo"
    shutil.copytree(results, demo / "runs")
    (demo / "base2new_table.md").write_text("table")
    assert check_output_folder(demo, kind="demo") == demo
    (evidence / "thesis.tex").write_text("mine")
    with pytest.raises(RlptuneError, match="holds 'thesis.tex'"):
        check_output_folder(evidence, kind="evidence")


def test_adapter_layout_names_the_adapter_files():
    from rlptune.engine.adapter import ADAPTER_CONFIG, ADAPTER_MODEL, LEGACY_ADAPTER_CONFIG, LEGACY_ADAPTER_MODEL
    from rlptune.engine.hub import MODEL_CARD, TRAINING_CONFIG

    allowed, signature = OUTPUT_LAYOUTS["adapter"]
    assert {
        ADAPTER_CONFIG,
        ADAPTER_MODEL,
        LEGACY_ADAPTER_CONFIG,
        LEGACY_ADAPTER_MODEL,
        MODEL_CARD,
        TRAINING_CONFIG,
    } == set(allowed)
    assert signature and MODEL_CARD not in signature  # a folder holding only a README is not an adapter


# -- property: whatever the layout and the flags, nothing outside a run folder changes ------------------------------

H1, H2 = "a" * 16, "b" * 16
#: Layouts are many small folders made and removed per example: on a RAM disk where there is one (Linux), so the
#: property stays fast on slow disks.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
OUTPUT_CHOICES = (
    "data",
    "data-relative",
    "data-parent",
    "data-child-new",
    "data-child-existing",
    "cwd",
    ".",
    "..",
    "",
    "home",
    "sibling",
    "run",
    "unfinished-run",
    "new",
    "link",
)
LINK_TARGETS = ("data", "cwd", "run", "sibling", "missing")


@st.composite
def layouts(draw):
    return {
        "data": draw(st.sampled_from(["proj/data", "data", "proj", "proj/runs/r1/images"])),
        "cwd": draw(st.sampled_from(["proj", "data-root", "base", "proj/runs/r1", "home"])),
        "user": draw(
            st.sets(
                st.sampled_from(
                    ["proj/thesis.tex", "notes.md", "proj/other/keep.txt", "proj/runs/README.md", "home/.bashrc"]
                )
            )
        ),
        "r1": draw(st.booleans()),
        "r2_finished": draw(st.booleans()),
        "staging": draw(st.sampled_from([None, H1, H2])),
        "output": draw(st.sampled_from(OUTPUT_CHOICES)),
        "link": draw(st.sampled_from(LINK_TARGETS)),
        "hash": draw(st.sampled_from([H1, H2])),
        "overwrite": draw(st.booleans()),
        "resume": draw(st.booleans()),
    }


def build(sandbox: Path, layout: dict) -> tuple[Path, Path, Path, str]:
    """Make the layout under sandbox/base; return (base, data root, cwd, -o as typed)."""
    base = sandbox / "base"
    data = base / layout["data"]
    r1 = base / "proj" / "runs" / "r1"
    if layout["r1"] or layout["data"].startswith("proj/runs/r1"):
        fake_run(r1, H1)
    fake_run(base / "proj" / "runs" / "r2", H1, finished=layout["r2_finished"])
    if layout["staging"]:
        fake_run(r1.parent / ".r1.staging-99999999", layout["staging"], finished=False)
    (data / "train" / "red").mkdir(parents=True, exist_ok=True)
    (data / "train" / "red" / "a.png").write_bytes(b"\x89PNG not really")
    (data / "NOTES.txt").write_text("my notes")
    for rel in layout["user"]:
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(f"user file {rel}")
    (base / "home").mkdir(exist_ok=True)
    cwd = {"data-root": data, "base": base, "home": base / "home", "proj": base / "proj"}.get(layout["cwd"], r1)
    cwd.mkdir(parents=True, exist_ok=True)
    places = {"data": data, "cwd": cwd, "run": r1, "sibling": base / "proj" / "other", "missing": base / "nowhere"}
    link = base / "link"
    link.symlink_to(places[layout["link"]])
    output = {
        "data": str(data),
        "data-relative": os.path.relpath(data, cwd),
        "data-parent": str(data.parent),
        "data-child-new": str(data / "run-new"),
        "data-child-existing": str(data / "train"),
        "cwd": str(cwd),
        ".": ".",
        "..": "..",
        "": "",
        "home": str(base / "home"),
        "sibling": str(base / "proj" / "other"),
        "run": str(r1),
        "unfinished-run": str(base / "proj" / "runs" / "r2"),
        "new": str(base / "proj" / "runs" / "new"),
        "link": str(link),
    }[layout["output"]]
    return base, data, cwd, output


def run_folders(root: Path) -> list[Path]:
    return [Path(folder) for folder, _, files in os.walk(root) if MARKER in files]


def must_be_refused(output: str, data: Path, home: Path) -> bool:
    """The oracle, written apart from the code under test: is -o a place whose replacement would lose a user's
    files (computed with the current directory in effect)?"""
    if output == "":
        return True
    target = Path(os.path.realpath(output))
    for place in (Path(os.getcwd()).resolve(), home.resolve(), data.resolve()):
        if target == place or target in place.parents:
            return True
    return target.is_dir() and any(target.iterdir()) and not (target / MARKER).is_file()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(layout=layouts())
def test_no_combination_of_output_and_flags_loses_a_file_outside_a_run(layout):
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        sandbox = Path(tmp) / "sandbox"
        base, data, cwd, output = build(sandbox, layout)
        before = tree(sandbox)
        runs = [p.relative_to(sandbox) for p in run_folders(sandbox)]
        data_rel = data.relative_to(sandbox)
        # the user's files: those outside every run folder, and the data inside a run folder that holds the data root
        kept = {
            rel: content
            for rel, content in before.items()
            if all(
                data_rel.is_relative_to(r) and Path(rel).is_relative_to(data_rel)
                for r in runs
                if Path(rel).is_relative_to(r)
            )
        }
        with contextlib.chdir(cwd), mock.patch.dict(os.environ, {"HOME": str(base / "home")}):
            refuse = must_be_refused(output, data, base / "home")
            try:
                with RunDirectory(
                    output,
                    layout["hash"],
                    resume=layout["resume"],
                    overwrite=layout["overwrite"],
                    inputs=[(DATA_ROOT, str(data))],
                ) as run:
                    (run.staging / "result.json").write_text("{}")
                    (run.staging / "adapter").mkdir(exist_ok=True)
                    run.commit()
                outcome = None
            except RlptuneError as exc:
                outcome = str(exc)
                assert "\n" not in outcome
        after = tree(sandbox)
        lost = {rel for rel, content in kept.items() if after.get(rel) != content}
        assert not lost, (layout, output, outcome, sorted(lost))
        if refuse:
            assert outcome is not None, (layout, output)
            assert after == before, (layout, output, outcome)  # refused before anything was written
        fresh = not os.path.lexists(os.path.join(cwd, output)) and not (layout["staging"] and output.endswith("r1"))
        if not refuse and fresh and output:
            assert outcome is None, (layout, output, outcome)  # a new folder is never refused


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(sorted(OUTPUT_LAYOUTS)),
    ours=st.lists(
        st.sampled_from(
            [
                "report.md",
                "tables",
                "few-shot",
                "runs",
                "evidence.json",
                "README.md",
                "rlptune_adapter.json",
                ".DS_Store",
            ]
        ),
        max_size=4,
    ),
    mine=st.sampled_from([None, "thesis.tex", "photos", "NOTES.txt"]),
)
def test_container_folders_never_accept_a_users_file(kind, ours, mine):
    """Whatever rlptune's own names a folder holds, one file of the user's at its top makes it refused."""
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        folder = Path(tmp) / "out"
        folder.mkdir()
        for name in ours:
            (folder / name).write_text("x") if "." in name else (folder / name).mkdir(exist_ok=True)
        if mine is None:
            return
        (folder / mine).write_text("mine")
        before = tree(folder)
        with pytest.raises(RlptuneError, match=f"out: folder is not empty and not an rlptune {OUTPUT_LABELS[kind]}"):
            check_output_folder(folder, kind=kind)
        assert tree(folder) == before


@pytest.mark.parametrize("target", ["input-image", "user-file", "folder", "empty"])
def test_predict_output_never_replaces_an_input_or_a_users_file(world, trained, capsys, target):
    """predict -o writes a CSV; it may replace an earlier predictions CSV and nothing else, checked before predicting."""
    images = world / "proj" / "data" / "test" / "red"
    output = {
        "input-image": next(images.iterdir()),
        "user-file": world / "proj" / "thesis.tex",
        "folder": world / "proj",
        "empty": "",
    }[target]
    before = tree(world)
    code, err = run_cli(["predict", trained / "adapter", images, "-o", output, "--no-progress"], capsys)
    one_line(code, err, "-o/--output")
    assert tree(world) == before


def test_predict_output_replaces_an_earlier_predictions_csv(world, trained, capsys):
    images = world / "proj" / "data" / "test" / "red"
    output = world / "work" / "predictions.csv"
    for _ in range(2):
        code, _err = run_cli(["predict", trained / "adapter", images, "-o", output, "--no-progress"], capsys)
        assert code == 0 and output.read_text().startswith("path,label_1,prob_1")


@pytest.mark.parametrize("target", ["input-image", "user-file", "folder", "empty"])
def test_eval_json_never_replaces_an_input_or_a_users_file(world, trained, capsys, target):
    """eval --json writes metrics; it may replace an earlier metrics file and nothing else, checked before eval."""
    images = world / "proj" / "data" / "test" / "red"
    output = {
        "input-image": next(images.iterdir()),
        "user-file": world / "proj" / "thesis.tex",
        "folder": world / "proj",
        "empty": "",
    }[target]
    before = tree(world)
    code, err = run_cli(
        ["eval", trained / "adapter", "--dataset", "folder", "--data-root", world / "proj" / "data", "--json", output],
        capsys,
    )
    one_line(code, err, "--json")
    assert tree(world) == before
    metrics = world / "work" / "metrics.json"
    for _ in range(2):  # an earlier metrics file is replaced
        code, _err = run_cli(
            [
                "eval",
                trained / "adapter",
                "--dataset",
                "folder",
                "--data-root",
                world / "proj" / "data",
                "--json",
                metrics,
            ],
            capsys,
        )
        assert code == 0 and '"top1"' in metrics.read_text()


#: The rows of docs/RELIABILITY.md's round-3 section, and the test that holds each.
CASES = {
    "out-is-data-root": "test_output_is_the_data_root",
    "out-above-data-root": "test_output_above_the_data_root",
    "out-symlink-to-data-root": "test_output_is_a_symlink_to_the_data_root",
    "out-data-root-via-symlink": "test_data_root_reached_through_a_symlink",
    "out-dot": "test_output_is_or_holds_the_current_directory",
    "out-dotdot": "test_output_is_or_holds_the_current_directory",
    "out-empty": "test_empty_output_is_an_error_not_the_current_directory",
    "out-home": "test_output_is_the_home_directory",
    "out-not-a-run": "test_output_is_a_folder_that_is_not_a_run",
    "out-run-holding-data": "test_run_folder_that_holds_the_data_root_is_not_replaced",
    "out-feature-cache": "test_output_is_the_feature_cache",
    "out-filesystem-root": "test_a_filesystem_root_is_refused",
    "out-filled-during-training": "test_a_folder_filled_while_the_run_trained_is_not_replaced",
    "out-run-still-replaced": "test_a_run_folder_is_still_replaced",
    "out-library-train": "test_library_train_refuses_an_empty_path_and_the_current_directory",
    "sweep-results-protected": "test_sweep_results_folder_is_checked",
    "report-out-protected": "test_report_folder_is_checked",
    "study-folders-protected": "test_study_folders_are_checked",
    "demo-out-protected": "test_demo_folder_is_checked",
    "save-pretrained-readme": "test_save_pretrained_never_writes_over_a_users_readme",
    "outputs-reused": "test_folders_rlptune_wrote_are_reused",
    "out-property": "test_no_combination_of_output_and_flags_loses_a_file_outside_a_run",
    "predict-out-protected": "test_predict_output_never_replaces_an_input_or_a_users_file",
    "predict-out-replaces-its-csv": "test_predict_output_replaces_an_earlier_predictions_csv",
    "eval-json-protected": "test_eval_json_never_replaces_an_input_or_a_users_file",
}


def test_catalogue_section_lists_these_cases():
    doc = (REPO / "docs" / "RELIABILITY.md").read_text(encoding="utf-8")
    section = doc.split("### Output folders never destroy inputs (round 3)", 1)[1]
    assert "tests/test_reliability_output_paths.py" in section
    for case, test in CASES.items():
        assert f"| `{case}` |" in section, case
        assert callable(globals().get(test)), test
