"""Smoke test of benchmarks/fidelity.py on a tiny model: it runs end to end, both loops train on the same few-shot
draw with Dassl's schedule epoch by epoch, the reference's text path is encode_text, and the statistics are right."""

from __future__ import annotations

import copy
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_ARCH, backbone_from_arch
from oracles import dassl_epoch_lr
from rlptune.data import load_dataset
from rlptune.data.fewshot import fewshot_splits

pytestmark = pytest.mark.usefixtures("single_thread")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


@pytest.fixture(scope="module")
def fidelity():
    spec = importlib.util.spec_from_file_location("rlptune_bench_fidelity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, copy.deepcopy(TINY_ARCH), "tiny-fidelity")


def test_benchmark_runs_with_the_same_draws_and_schedule(fidelity, vit, colour_folder, tmp_path):
    full = load_dataset("folder", colour_folder)
    epochs, shots = 3, 2
    args = fidelity.build_parser().parse_args(
        [
            "--datasets",
            "colours",
            "--seeds",
            "1",
            "2",
            "--shots",
            str(shots),
            "--epochs",
            str(epochs),
            "--workdir",
            str(tmp_path),
        ]
    )
    report = fidelity.benchmark(args, lambda _msg: None, datasets={"colours": full}, backbone=vit)
    runs = report["runs"]
    assert len(runs) == 2 * 3 * 2  # seeds x methods x modes
    for run in runs:
        assert 0.0 <= run["reference"] <= 100.0 and 0.0 <= run["rlptune"] <= 100.0
        # the schedule of every epoch is Dassl's (warm-up epoch, then the cosine from the full rate)
        assert run["epoch_lrs"] == [dassl_epoch_lr(e, 0.002, epochs) for e in range(epochs)]
        assert run["epoch_lrs"][:2] == [1e-5, 0.002]
        # the draw both sides trained on (checked equal inside the benchmark) is Dassl's draw of that seed
        assert run["draw"] == [it.path for it in fewshot_splits(full, shots, run["seed"]).train]
    assert runs[0]["draw"] != next(r["draw"] for r in runs if r["seed"] == 2)
    pooled = report["tables"]["fresh"]["coop"]["pooled"]
    assert pooled["n"] == 2 and pooled["contains_zero"] == (pooled["low"] <= 0 <= pooled["high"])
    assert set(report["tables"]) == {"fresh", "4 views"}
    text = fidelity.markdown({**report, "settings": vars(args), "seconds": 1.0})
    assert "| coop | **pooled** |" in text and "`--aug-views 4`" in text


def test_reference_text_path_is_encode_text(fidelity, vit):
    """With the context equal to the init words, the reference's 77-token prompt path gives encode_text exactly."""
    from rlptune.config import resolve_config

    classes = ["red", "green", "blue"]
    config = resolve_config(None, {"method": {"name": "kgcoop"}})  # ctx_init "a photo of a", n_ctx 4
    prompt = fidelity.ReferencePrompt(vit, classes, config.prompt)
    with torch.no_grad():
        ours = fidelity.reference_text_features(vit.model, prompt(), prompt.tokenized)
        expected = vit.model.encode_text(vit.tokenize([f"a photo of a {c}." for c in classes]))
    assert torch.allclose(ours, expected, atol=1e-5)
    rlp = fidelity.ReferencePrompt(vit, classes, resolve_config(None, {"method": {"name": "rlp"}}).prompt)
    rlp.eval()
    assert torch.equal(rlp.context(), rlp.frozen)  # B starts at zero: RLP starts at the init words


def test_paired_interval(fidelity):
    ci = fidelity.paired_ci([2.0, 3.0, 4.0])
    assert ci["mean"] == 3.0 and ci["sd"] == 1.0
    assert ci["high"] - ci["mean"] == pytest.approx(4.303 / math.sqrt(3))  # t(0.975, 2 df) * sd / sqrt(n)
    assert not ci["contains_zero"]  # [0.52, 5.48]
    assert fidelity.paired_ci([1.0, 2.0, 3.0])["contains_zero"]  # [-0.48, 4.48]
    assert fidelity.t_quantile(11) == 2.201 and fidelity.t_quantile(100) == 1.960


@pytest.mark.parametrize("name", ["coop", "rlp", "kgcoop"])
def test_one_step_of_rlptune_equals_the_references(fidelity, vit, name):
    """Same prompt values and the same image features: rlptune's training_step and the reference's 77-token loss
    agree in value and gradient, so any gap in the table comes from the random streams, not the step."""
    import torch.nn.functional as F

    from rlptune.config import resolve_config
    from rlptune.methods import build_method
    from rlptune.methods.base import Batch

    classes = ["red", "green", "blue", "yellow"]
    config = resolve_config(None, {"method": {"name": name}, "prompt": {"dropout": 0.0}})
    torch.manual_seed(0)
    method = build_method(config, vit, classes)
    reference = fidelity.ReferencePrompt(vit, classes, config.prompt)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if name == "rlp":
            method.prompt.B.normal_(generator=gen)  # away from B = 0, so both factors get gradients
            reference.A.copy_(method.prompt.A)
            reference.B.copy_(method.prompt.B)
        else:
            reference.ctx.copy_(method.prompt.ctx)
    features = F.normalize(torch.randn(6, TINY_ARCH["embed_dim"], generator=gen), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    handcrafted = None
    if name == "kgcoop":
        with torch.no_grad():
            handcrafted = F.normalize(
                vit.model.encode_text(vit.tokenize([f"a photo of a {c}." for c in classes])), dim=-1
            )
    method.train()
    ours = method.training_step(Batch(labels=labels, features=features)).loss
    theirs = fidelity.reference_loss(
        vit.model, reference, features, labels, handcrafted, 8.0 if handcrafted is not None else 0.0
    )
    assert torch.allclose(ours, theirs, atol=1e-5)
    ours.backward()
    theirs.backward()
    mine = [p.grad for p in method.parameters() if p.requires_grad]
    refs = [p.grad for p in reference.parameters()]
    assert len(mine) == len(refs)
    for a, b in zip(mine, refs):
        assert torch.allclose(a, b, atol=1e-5 * float(b.abs().max()) + 1e-7)
