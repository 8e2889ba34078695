"""The command line end to end on a generated image folder and a tiny random backbone."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from rlptune.cli import main


def _run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _top1(text: str) -> float:
    return float(text.split("top-1 ")[1].split("%")[0])


def test_coop_with_zero_epochs_equals_zeroshot(tiny_arch_path, colour_folder, tmp_path, capsys, cache_dir):
    data = ["--dataset", "folder", "--data-root", colour_folder]
    code, out, _ = _run(
        [
            "train",
            "--backbone",
            tiny_arch_path,
            *data,
            "--method",
            "coop",
            "--ctx-init",
            "a photo of a",
            "--epochs",
            0,
            "--device",
            "cpu",
            "-o",
            tmp_path / "run",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    code, evaluated, _ = _run(["eval", tmp_path / "run" / "adapter", *data, "--device", "cpu"], capsys)
    assert code == 0
    code, zeroshot, _ = _run(
        ["zeroshot", "--backbone", tiny_arch_path, *data, "--template", "a photo of a {}.", "--device", "cpu"], capsys
    )
    assert code == 0
    assert _top1(evaluated) == _top1(zeroshot)
    assert _top1(out) == _top1(zeroshot)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--method", "rlp", "--n-ctx", "4", "--rank", "1"], 516),
        (["--method", "coop", "--n-ctx", "16"], 8192),
        (["--method", "coop", "--n-ctx", "4"], 2048),
        (["--method", "coop", "--ctx-init", "a photo of a"], 2048),
    ],
)
def test_params_command(args, expected, capsys):
    code, out, _ = _run(["params", "--backbone", "ViT-B-16", "--json", *args], capsys)
    assert code == 0
    assert json.loads(out)["trainable_params"] == expected


def test_predict_writes_topk_csv_and_accepts_new_classes(tiny_arch_path, colour_folder, tmp_path, capsys, cache_dir):
    data = ["--dataset", "folder", "--data-root", colour_folder]
    assert (
        _run(
            [
                "train",
                "--backbone",
                tiny_arch_path,
                *data,
                "--method",
                "rlp",
                "--epochs",
                1,
                "--device",
                "cpu",
                "-o",
                tmp_path / "run",
                "--no-progress",
            ],
            capsys,
        )[0]
        == 0
    )
    out_csv = tmp_path / "pred.csv"
    code, _, _ = _run(
        [
            "predict",
            tmp_path / "run" / "adapter",
            colour_folder / "test" / "red",
            "--top-k",
            3,
            "-o",
            out_csv,
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 12 and set(rows[0]) == {"path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3"}
    assert float(rows[0]["prob_1"]) >= float(rows[0]["prob_2"]) >= float(rows[0]["prob_3"])
    code, _, _ = _run(
        [
            "predict",
            tmp_path / "run" / "adapter",
            colour_folder / "test" / "red",
            "--classes",
            "cat,dog",
            "-o",
            out_csv,
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    assert {r["label_1"] for r in csv.DictReader(out_csv.open())} <= {"cat", "dog"}


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["train", "--set", "train.epoch=3", "-o", "x"], "unknown field 'epoch'"),
        (["train", "--epochs", "many", "-o", "x"], "train.epochs: expected an integer"),
        (["eval", "/nonexistent/adapter"], "no such adapter folder"),
        (
            [
                "train",
                "--dataset",
                "folder",
                "--data-root",
                "/nonexistent/data",
                "-o",
                "x",
                "--backbone",
                "random:RN50",
            ],
            "/nonexistent/data",
        ),
    ],
)
def test_user_errors_are_one_line_without_traceback(args, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(args, capsys)
    assert code == 2
    assert fragment in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "rlptune.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and "rlptune" in result.stdout
