"""The --logger backends on their own: the CSV a spreadsheet opens and the TensorBoard scalars it plots."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from rlptune.engine.loggers import available_loggers, make_loggers
from rlptune.errors import RlptuneError


def _records(epochs: int, with_val: bool = True) -> list[dict]:
    out = []
    for e in range(1, epochs + 1):
        rec = {
            "epoch": e,
            "lr": 0.002 / e,
            "loss": 2.0 / e,
            "train_acc": 40.0 + 10 * e,
            "steps": 3,
            "diagnostics": {"ctx": {"P": {"id_k": 0.5 + 0.1 * e, "effective_rank": 2.0}, "delta": {"id_k": 0.9}}},
        }
        if with_val:
            rec["val_acc"] = 35.0 + 9 * e
        out.append(rec)
    return out


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_csv_logger_columns_resume_and_missing_val(tmp_path: Path) -> None:
    logger = make_loggers(["csv"], tmp_path)
    for rec in _records(3):
        logger.log_epoch(rec)
    logger.close()
    rows = _read_csv(tmp_path / "metrics.csv")
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0]
    assert header == "epoch,lr,loss,train_acc,val_acc,steps"  # fixed columns first; nested diagnostics left out
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert float(rows[1]["lr"]) == pytest.approx(0.001) and float(rows[2]["val_acc"]) == pytest.approx(62.0)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic rewrite leaves no temporary file

    # a resumed run replays epoch 3 onward: the old epoch 3 is replaced, epochs 1-2 are kept from the file
    resumed = make_loggers(["csv"], tmp_path)
    replay = _records(4, with_val=False)[2:]
    for rec in replay:
        rec["loss"] = 9.0
        resumed.log_epoch(rec)
    rows = _read_csv(tmp_path / "metrics.csv")
    assert [(r["epoch"], r["loss"]) for r in rows] == [("1", "2.0"), ("2", "1.0"), ("3", "9.0"), ("4", "9.0")]
    assert (rows[0]["val_acc"], rows[3]["val_acc"]) == ("44.0", "")  # epoch 4 had no validation


def test_tensorboard_logger_writes_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with make_loggers(["tensorboard", "csv"], tmp_path) as logger:
        for rec in _records(3):
            logger.log_epoch(rec)
    assert (tmp_path / "metrics.csv").is_file()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {
        "lr",
        "loss/train",
        "accuracy/train",
        "accuracy/val",
        "train/steps",
        "diagnostics/ctx/id_k",
        "diagnostics/ctx/id_k_delta",
    } <= tags
    val = events.Scalars("accuracy/val")
    assert [s.step for s in val] == [1, 2, 3]
    assert [s.value for s in val] == pytest.approx([44.0, 53.0, 62.0])
    assert [s.value for s in events.Scalars("lr")] == pytest.approx([0.002, 0.001, 0.002 / 3])


def test_unknown_or_no_logger(tmp_path: Path) -> None:
    assert {"csv", "tensorboard"} <= set(available_loggers())
    with pytest.raises(RlptuneError, match=r"unknown logger 'tensorbord'.*did you mean 'tensorboard'"):
        make_loggers(["csv", "tensorbord"], tmp_path)
    assert not (tmp_path / "metrics.csv").exists()  # nothing is created before every name is known
    nothing = make_loggers([], tmp_path)
    nothing.log_epoch(_records(1)[0])
    nothing.close()
    assert list(tmp_path.iterdir()) == []
