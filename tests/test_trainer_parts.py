"""The trainer in parts: short engine functions, the end-of-epoch units on their own, run-folder names in one place.

The whole loop (resume to a byte-identical adapter, DDP, fp16, select-best) is covered by tests/test_engine.py,
tests/test_reliability_resume.py, tests/test_distributed.py and tests/test_methods_training.py; these tests pin the
parts the loop is now made of.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import rlptune
from rlptune import rundir
from rlptune.engine import callbacks as callbacks_mod
from rlptune.engine.callbacks import Checkpointing, History, TrainState, Validation, truncate_metrics
from rlptune.engine.divergence import DivergenceGuard
from rlptune.engine.schedule import plan_batches
from rlptune.errors import RlptuneError

PACKAGE = Path(rlptune.__file__).resolve().parent

#: The most lines a function body in engine/ may have (its signature and docstring not counted).
MAX_BODY_LINES = 60
#: Longer functions, each with the reason its docstring gives (the docstring must contain ``reason``).
LONG_FUNCTIONS = {
    "hub.model_card": "Long because it is the card's one template",
}


def _function_bodies(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[1:] if ast.get_docstring(node) is not None else node.body
            if not body:
                continue
            owner = parents.get(node)
            prefix = f"{owner.name}." if isinstance(owner, ast.ClassDef) else ""
            yield (
                f"{path.stem}.{prefix}{node.name}",
                node.end_lineno - body[0].lineno + 1,
                ast.get_docstring(node) or "",
            )


def test_engine_functions_are_short_or_say_why() -> None:
    too_long, unexplained = [], []
    for path in sorted((PACKAGE / "engine").glob("*.py")):
        for name, lines, doc in _function_bodies(path):
            if lines <= MAX_BODY_LINES:
                continue
            reason = LONG_FUNCTIONS.get(name)
            if reason is None:
                too_long.append(f"{name} ({lines} lines)")
            elif reason not in doc:
                unexplained.append(name)
    assert not too_long, (
        f"engine functions over {MAX_BODY_LINES} lines (split them, or list them with a reason): {too_long}"
    )
    assert not unexplained, f"long engine functions whose docstring does not say why: {unexplained}"


def test_the_fit_loop_is_a_short_assembly_of_parts() -> None:
    sizes = {name: lines for name, lines, _ in _function_bodies(PACKAGE / "engine" / "trainer.py")}
    assert sizes["trainer.Trainer.fit"] <= 40  # was 167 lines doing everything


#: Every name a run folder holds, as the on-disk format spells it (the spec: literal here on purpose).
RUN_FOLDER_NAMES = {
    "MARKER": ".rlptune-run.json",
    "RESULT": "result.json",
    "CONFIG": "config.yaml",
    "RUN_INFO": "run_info.json",
    "METRICS": "metrics.jsonl",
    "METRICS_CSV": "metrics.csv",
    "TENSORBOARD_DIR": "tensorboard",
    "FEW_SHOT": "few_shot.json",
    "DATA_HASHES": "data_hashes.json",
    "SKIPPED_IMAGES": "skipped_images.json",
    "ADAPTER_DIR": "adapter",
    "CHECKPOINT_DIR": "checkpoint",
}


def test_run_folder_names_are_the_on_disk_format() -> None:
    assert {name: getattr(rundir, name) for name in RUN_FOLDER_NAMES} == RUN_FOLDER_NAMES
    assert rundir.CHECKPOINT == Path("checkpoint") / "last.safetensors"
    assert set(rundir.RESUMABLE) == {"checkpoint", "metrics.jsonl", "few_shot.json", "data_hashes.json"}


def test_run_folder_file_names_are_spelled_only_in_rundir() -> None:
    """A file name spelled by hand in a second module drifts from the one the run writes (the names with a dot:
    "adapter" and "checkpoint" are also ordinary words)."""
    names = {v for v in RUN_FOLDER_NAMES.values() if "." in v} | {"last.safetensors"}
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "rundir.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not found, f"run-folder names spelled outside rlptune.rundir (use its constants): {found}"


# -- the batch arithmetic --------------------------------------------------------------------------------------------


def _settings(**kw):
    base = dict(batch_size=4, epochs=3, iterations=0)
    return SimpleNamespace(**{**base, **kw})


SINGLE = SimpleNamespace(enabled=False, world_size=1)


@pytest.mark.parametrize(
    "count,batch_size,expected",
    [(10, 4, (4, 8, 2)), (3, 4, (3, 3, 1)), (8, 4, (4, 8, 2)), (1, 32, (1, 1, 1))],
)
def test_batches_drop_a_short_last_batch_only_when_a_full_one_fits(count, batch_size, expected) -> None:
    plan = plan_batches(_settings(batch_size=batch_size), count, SINGLE)
    assert (plan.batch, plan.stop, plan.steps_per_epoch) == expected
    assert plan.epochs_total == 3 and plan.steps_total == 3 * expected[2]


def test_iterations_cut_the_last_epoch_short() -> None:
    plan = plan_batches(_settings(batch_size=4, iterations=5), 10, SINGLE)  # 2 steps per epoch
    assert (plan.steps_total, plan.epochs_total) == (5, 3)


def test_ddp_splits_the_global_batch_evenly_or_says_why_not() -> None:
    two = SimpleNamespace(enabled=True, world_size=2)
    plan = plan_batches(_settings(batch_size=4), 7, two)
    assert (plan.batch, plan.stop, plan.steps_per_epoch) == (4, 4, 1)  # equal shards: the short batch is dropped
    with pytest.raises(
        RlptuneError, match=r"^train.batch_size 5 is the global batch and must be divisible by the 2 processes$"
    ):
        plan_batches(_settings(batch_size=5), 7, two)
    with pytest.raises(RlptuneError, match=r"^1 training images cannot be split over 2 processes$"):
        plan_batches(_settings(batch_size=4), 1, two)


# -- divergence --------------------------------------------------------------------------------------------------


class _Prompted:
    def __init__(self, effective: torch.Tensor) -> None:
        self.effective = effective

    def prompt_matrices(self):
        return {"ctx": (self.effective, torch.zeros_like(self.effective))}


def test_divergence_is_one_line_naming_where_and_the_way_back(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint" / "last.safetensors"
    guard = DivergenceGuard(checkpoint, _Prompted(torch.ones(2, 2)))
    guard.check_loss(torch.tensor(1.5), 0, 0, 0.1)  # finite: nothing happens
    with pytest.raises(RlptuneError) as info:
        guard.check_loss(torch.tensor(float("nan")), 1, 2, 0.002)
    assert str(info.value) == (
        "training diverged: non-finite loss at epoch 2, step 3 (lr 0.002); the last good checkpoint is none"
    )
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"x")
    with pytest.raises(
        RlptuneError, match=f"in the update at epoch 1, step 1 \\(lr 0.1\\); the last good checkpoint is {checkpoint}$"
    ):
        guard.check_tensors([torch.tensor([1.0, float("inf")])], 0, 0, 0.1)
    guard.on_epoch_end(0, {"lr": 0.1})  # finite prompts pass
    overflowing = DivergenceGuard(checkpoint, _Prompted(torch.tensor([[float("inf")]])))
    with pytest.raises(RlptuneError, match=r"prompt 'ctx' became non-finite during epoch 4 \(lr 0.5\)"):
        overflowing.on_epoch_end(3, {"lr": 0.5})


# -- end-of-epoch units ------------------------------------------------------------------------------------------


def test_checkpoints_every_n_epochs_and_after_the_last(monkeypatch, tmp_path: Path) -> None:
    saved = []
    monkeypatch.setattr(callbacks_mod, "save_checkpoint", lambda path, method, opt, epoch, config: saved.append(epoch))
    unit = Checkpointing(tmp_path / "c", None, None, None, every=2, epochs_total=5)
    for epoch in range(5):
        unit.on_epoch_end(epoch, {})
    assert saved == [2, 4, 5]
    saved.clear()
    never = Checkpointing(tmp_path / "c", None, None, None, every=0, epochs_total=5)
    for epoch in range(5):
        never.on_epoch_end(epoch, {})
    assert saved == []


def test_validation_runs_every_n_epochs_and_at_the_last() -> None:
    unit = Validation(None, None, SimpleNamespace(val_every=3, select_best=False), 7, None, TrainState(), {}, print)
    assert [e for e in range(7) if unit.is_validation_epoch(e)] == [2, 5, 6]
    off = Validation(None, None, SimpleNamespace(val_every=0, select_best=False), 7, None, TrainState(), {}, print)
    assert not any(off.is_validation_epoch(e) for e in range(7))


class _Tiny(torch.nn.Module):
    """Enough of a method for the validation unit: two classes, scores = features @ class features."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.eye(2))
        self.restored = None

    def class_features(self):
        return self.w

    def scores(self, feats, text):
        return feats @ text.t()

    def adapter_state(self):
        return {"w": self.w.detach().clone()}

    def load_adapter_state(self, state, source):
        self.restored = source
        self.w.data.copy_(state["w"])

    def unmerge(self):
        pass


def test_select_best_keeps_and_restores_the_best_validation_epoch() -> None:
    method = _Tiny()
    backbone = SimpleNamespace(device=torch.device("cpu"), autocast=torch.no_grad)
    feats, labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1])
    state, logged = TrainState(), []
    unit = Validation(
        method,
        backbone,
        SimpleNamespace(val_every=1, select_best=True),
        3,
        (feats, labels),
        state,
        {"new_acc": lambda: 42.0},
        logged.append,
    )
    accuracies = []
    for epoch, w in enumerate([torch.eye(2), torch.eye(2).flip(0), torch.eye(2).flip(0)]):
        method.w.data.copy_(w)
        record: dict = {}
        unit.on_epoch_end(epoch, record)
        accuracies.append(record["val_acc"])
        assert record["new_acc"] == 42.0
    assert accuracies == [100.0, 0.0, 0.0]
    unit.on_train_end()
    assert method.restored == "epoch 1" and torch.equal(method.w, torch.eye(2))
    assert logged == ["kept epoch 1 (best validation accuracy 100.00%)"]


def test_history_and_metric_truncation(tmp_path: Path) -> None:
    state = TrainState()
    History(state).on_epoch_end(4, {"epoch": 5})
    assert state.records == [{"epoch": 5}] and state.epochs_done == 5
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, 5)) + '{"epoch": 5, "lo')
    truncate_metrics(path, 2)
    assert [json.loads(line)["epoch"] for line in path.read_text().splitlines()] == [1, 2]
    truncate_metrics(tmp_path / "absent.jsonl", 2)  # nothing to truncate: nothing written
    assert not (tmp_path / "absent.jsonl").exists()
