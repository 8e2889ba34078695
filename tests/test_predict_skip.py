"""``predict --image-policy skip``: unreadable images do not stop a folder; they are listed at the end and in the CSV.

The adapter is built, not trained (a seeded perturbation of an RLP prompt on the tiny backbone), so each test takes
well under a second of model time.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import rlptune
from conftest import COLOURS, TINY_ARCH, backbone_from_arch, draw_image
from rlptune.cli import main
from rlptune.config import resolve_config
from rlptune.engine.adapter import save_adapter
from rlptune.methods import build_method

pytestmark = pytest.mark.usefixtures("single_thread")

CLASSES = ["red", "green", "blue", "yellow"]
BROKEN = {"b_empty.png": b"", "d_text.png": b"not an image at all", "f_truncated.png": None}


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, TINY_ARCH, "predict-skip")


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, backbone) -> Path:
    config = resolve_config(None, {"method": {"name": "rlp"}})
    method = build_method(config, backbone, CLASSES, None)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in method.parameters():
            if param.requires_grad:
                param.add_(0.5 * torch.randn(param.shape, generator=generator))
    return save_adapter(tmp_path_factory.mktemp("skip-adapter") / "adapter", method, config)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """(good images only, the same good images with three broken files between them)."""
    good, mixed = tmp_path_factory.mktemp("good"), tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(5)
    truncated = b""
    for i, name in enumerate(["a", "c", "e", "g"]):
        image = draw_image(list(COLOURS.values())[i], rng)
        image.save(good / f"{name}.png")
        image.save(mixed / f"{name}.png")
        truncated = (good / f"{name}.png").read_bytes()[:60]
    for name, data in BROKEN.items():
        (mixed / name).write_bytes(truncated if data is None else data)
    return good, mixed


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["predict", *map(str, argv), "--device", "cpu", "--no-progress"])
    out, err = capsys.readouterr()
    return code, out, err


def test_default_stops_at_the_first_unreadable_image_with_one_line_and_no_csv(adapter, folders, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    code, stdout, err = run(capsys, adapter, folders[1], "-o", out)
    assert code == 2 and stdout == "" and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rlptune: error: ") and "b_empty.png" in lines[0], err


def test_skip_prints_the_good_ones_as_without_the_broken_files_and_lists_the_skipped_last(adapter, folders, capsys):
    good, mixed = folders
    code, clean, _ = run(capsys, adapter, good, "--top-k", "2")
    assert code == 0
    code, stdout, err = run(capsys, adapter, mixed, "--top-k", "2", "--image-policy", "skip")
    assert code == 0
    # the same labels and probabilities as the clean folder, image by image (paths differ only in the folder)
    assert stdout.replace(str(mixed), "") == clean.replace(str(good), "")
    lines = err.strip().splitlines()
    assert lines[0] == "skipped 3 unreadable image(s) (--image-policy skip):"
    assert [next(n for n in BROKEN if n in line) for line in lines[1:]] == sorted(BROKEN)
    assert "Traceback" not in err


def test_skip_csv_lists_every_image_in_order_with_an_error_column(adapter, folders, tmp_path, capsys):
    good, mixed = folders
    out = tmp_path / "pred.csv"
    code, stdout, _ = run(capsys, adapter, mixed, "--top-k", "3", "--image-policy", "skip", "-o", out)
    assert code == 0 and f"wrote 4 predictions to {out} (3 skipped image(s) listed in its error column)" in stdout
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "label_1", "prob_1", "label_2", "prob_2", "label_3", "prob_3", "error"]
    assert [Path(r["path"]).name for r in rows] == sorted(["a.png", "c.png", "e.png", "g.png", *BROKEN])
    for row in rows:
        broken = Path(row["path"]).name in BROKEN
        assert bool(row["error"]) == broken and (row["label_1"] == "") == broken, row
        if broken:
            assert Path(row["path"]).name in row["error"] and "\n" not in row["error"]
    reference = tmp_path / "good.csv"
    assert run(capsys, adapter, good, "--top-k", "3", "-o", reference)[0] == 0
    expected = {Path(r["path"]).name: r for r in csv.DictReader(reference.open())}
    for row in rows:
        if not row["error"]:
            assert {k: v for k, v in row.items() if k not in ("path", "error")} == {
                k: v for k, v in expected[Path(row["path"]).name].items() if k != "path"
            }


def test_api_skip_keeps_order_across_batches_even_when_a_whole_batch_is_broken(adapter, folders, backbone):
    good, mixed = folders
    method = rlptune.load_adapter(adapter, backbone=backbone)
    reference = {Path(r["path"]).name: r for r in rlptune.predict(method, good, top_k=2)}
    for batch_size in (1, 2, 64):  # batch 2 holds (b_empty, c), (d_text, e), (f_truncated, g); batch 1: broken alone
        rows = rlptune.predict(method, mixed, top_k=2, batch_size=batch_size, image_policy="skip")
        assert [Path(r["path"]).name for r in rows] == sorted(["a.png", "c.png", "e.png", "g.png", *BROKEN])
        for row in rows:
            name = Path(row["path"]).name
            if name in BROKEN:
                assert row["labels"] == [] and row["probs"] == [] and name in row["error"]
            else:
                assert "error" not in row and row["labels"] == reference[name]["labels"]
                assert row["probs"] == pytest.approx(reference[name]["probs"], abs=1e-6)
    with pytest.raises(rlptune.RlptuneError, match="b_empty.png"):
        rlptune.predict(method, mixed, top_k=2)
    with pytest.raises(rlptune.RlptuneError, match=r"image_policy: expected one of error, skip, got 'ignore'"):
        rlptune.predict(method, good, image_policy="ignore")


def test_bad_image_policy_flag_is_one_usage_line(adapter, folders, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(adapter), str(folders[0]), "--image-policy", "ignore"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'ignore'" in capsys.readouterr().err
