"""The linear probe is CoOp's lpclip probe: scikit-learn's L2 logistic regression on unnormalised image features,
C searched on the validation split by lpclip's grid + 8 bisection steps (checked against an independent
transcription of lpclip/linear_probe.py run with scikit-learn), fitted and evaluated on raw features by the engine."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_ARCH, backbone_from_arch
from rlptune.config import resolve_config
from rlptune.data import load_dataset
from rlptune.engine.features import FeatureCache, cache_key, encode_items
from rlptune.engine.evaluate import evaluate_split
from rlptune.engine.trainer import Trainer
from rlptune.methods import build_method
from rlptune.methods.base import ClosedFormData
from rlptune.methods.linear_probe import C_GRID, fit_sklearn, fit_torch, search_c

sklearn = pytest.importorskip("sklearn")
from sklearn.linear_model import LogisticRegression  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")
E = TINY_ARCH["embed_dim"]


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return backbone_from_arch(tmp_path_factory, copy.deepcopy(TINY_ARCH), "tiny-probe")


def _blobs(classes: int, per_class: int, seed: int, dim: int = E) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian classes with per-sample norms far from 1 (raw CLIP features are not unit vectors)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 0.6
    y = torch.arange(classes).repeat_interleave(per_class)
    x = (centres[y] + torch.randn(len(y), dim, generator=gen)) * (2.0 + 6.0 * torch.rand(len(y), 1, generator=gen))
    return x.double(), y


def lpclip_reference(xtr, ytr, xval, yval, steps=8):
    """lpclip/linear_probe.py's search, transcribed with numpy + scikit-learn: (chosen C, its fitted classifier)."""
    xtr, ytr, xval, yval = (t.numpy() for t in (xtr, ytr, xval, yval))

    def fit(c):
        return LogisticRegression(solver="lbfgs", max_iter=1000, C=c).fit(xtr, ytr)  # penalty="l2" is the default

    search_list = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    acc_list = [np.mean(fit(c).predict(xval) == yval) for c in search_list]
    c_peak = search_list[int(np.argmax(acc_list))]
    c_left, c_right = 1e-1 * c_peak, 1e1 * c_peak
    c_final = clf_final = None
    for _ in range(steps):
        clf_left, clf_right = fit(c_left), fit(c_right)
        acc_left = np.mean(clf_left.predict(xval) == yval)
        acc_right = np.mean(clf_right.predict(xval) == yval)
        if acc_left < acc_right:
            c_final, clf_final = c_right, clf_right
            c_left, c_right = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_right)
        else:
            c_final, clf_final = c_left, clf_left
            c_right, c_left = 0.5 * (np.log10(c_right) + np.log10(c_left)), np.log10(c_left)
        c_left, c_right = np.power(10, c_left), np.power(10, c_right)
    return c_final, clf_final


def _probe(vit, classes, **options):
    config = resolve_config(None, {"method": {"name": "linear_probe", "options": options}})
    return build_method(config, vit, [f"class {i}" for i in range(classes)])


def test_search_and_fit_equal_lpclip_with_sklearn(vit):
    xtr, ytr = _blobs(4, 4, seed=1)
    xval, yval = _blobs(4, 4, seed=2)
    xte, _ = _blobs(4, 25, seed=3)
    probe = _probe(vit, 4, solver="sklearn")
    record = probe.fit_closed_form(ClosedFormData(xtr.float(), ytr, xval.float(), yval, log=lambda _m: None))
    c_ref, clf_ref = lpclip_reference(xtr.float().double(), ytr, xval.float().double(), yval)
    assert record["C"] == pytest.approx(c_ref, rel=1e-12)
    assert [t["C"] for t in record["search"][:7]] == list(C_GRID) and len(record["search"]) == 7 + 2 * 8
    ours = probe.logits(xte.float()).argmax(-1).numpy()
    assert (ours == clf_ref.predict(xte.float().numpy())).all()
    assert np.allclose(probe.weight.detach().numpy(), clf_ref.coef_, atol=1e-4 * np.abs(clf_ref.coef_).max())


def test_search_tie_rules_and_bisection():
    constant, trials = search_c(lambda c: 50.0)
    assert [t["C"] for t in trials[:7]] == list(C_GRID)
    # grid tie -> 1e6 (the weakest regularisation); every bisection tie keeps the left end, 1e6 / 10
    assert constant == pytest.approx(1e5, rel=1e-9)
    increasing, _ = search_c(lambda c: math.log10(c))
    assert increasing == pytest.approx(1e7, rel=1e-9)  # the right end wins every step
    peaked, trials = search_c(lambda c: -abs(math.log10(c) - 2.3))
    assert abs(math.log10(peaked) - 2.3) < 0.01 and len(trials) == 7 + 16
    none, trials = search_c(lambda c: -abs(math.log10(c) - 2.3), steps=0)
    assert none == 1e2 and len(trials) == 7


@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("c", [1.0, 0.01])
def test_torch_solver_minimises_sklearns_objective(classes, c):
    x, y = _blobs(classes, 6, seed=5)
    ws, bs = fit_sklearn(x, y, classes, c, 1000)
    wt, bt = fit_torch(x, y, classes, c, 1000)

    def objective(w, b):  # sklearn's: C * sum CE + |W|^2 / 2 (binary: one vector, the head's second row)
        ce = torch.nn.functional.cross_entropy(x @ w.t() + b, y, reduction="sum")
        return float(c * ce + 0.5 * (w[1:] if classes == 2 else w).pow(2).sum())

    # the same minimiser: torch's tighter L-BFGS is at least as low, and the two fits predict alike
    assert objective(wt, bt) <= objective(ws, bs) + 1e-6
    assert objective(wt, bt) == pytest.approx(objective(ws, bs), rel=2e-3)  # sklearn stops at tol=1e-4
    probs_s, probs_t = torch.softmax(x @ ws.t() + bs, -1), torch.softmax(x @ wt.t() + bt, -1)
    assert torch.allclose(probs_s, probs_t, atol=2e-3)
    # against scikit-learn run to convergence, the torch solver's weights agree closely
    tight = LogisticRegression(solver="lbfgs", C=c, tol=1e-12, max_iter=20000).fit(x.numpy(), y.numpy())
    coef = torch.from_numpy(tight.coef_)
    expected = torch.cat([torch.zeros_like(coef), coef]) if classes == 2 else coef
    assert torch.allclose(wt, expected, atol=1e-4 * float(expected.abs().max()))


def test_probe_fits_and_scores_raw_image_features(vit, colour_folder, tmp_path):
    splits = load_dataset("folder", colour_folder)
    config = resolve_config(
        None,
        {
            "method": {"name": "linear_probe", "options": {"search_steps": 2}},
            "train": {"cache_dir": str(tmp_path / "cache")},
        },
    )
    probe = build_method(config, vit, splits.classnames, splits.template)
    seen = {}
    fit = probe.fit_closed_form
    probe.fit_closed_form = lambda data: seen.setdefault("data", data) and fit(data)
    cache = FeatureCache(tmp_path / "cache")
    Trainer(config, probe, splits, tmp_path / "run", cache=cache, progress=False).fit()
    raw = encode_items(vit, splits, splits.train, view=0, normalize=False)
    assert torch.allclose(seen["data"].train_features, raw)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(len(raw)), atol=1e-2)  # really unnormalised
    assert seen["data"].val_features.shape[0] == len(splits.val)
    # evaluation uses raw features too, and equals the model-shaped path (images -> encode_images -> logits)
    metrics = evaluate_split(probe, splits, "test", cache)
    test_raw = encode_items(vit, splits, splits.test, view=0, normalize=False)
    labels = torch.tensor([it.label for it in splits.test])
    expected = 100.0 * float((probe.logits(test_raw).argmax(-1) == labels).float().mean())
    assert metrics["top1"] == pytest.approx(expected)
    images = torch.stack([probe.preprocess(Image.open(splits.abspath(it)).convert("RGB")) for it in splits.test[:5]])
    assert torch.allclose(probe(images), probe.logits(test_raw[:5]), atol=1e-4)


def test_raw_features_have_their_own_cache_entry(vit, colour_folder, tmp_path):
    splits = load_dataset("folder", colour_folder)
    items = splits.test[:4]
    normalised = cache_key(vit, splits, items, 0)
    assert cache_key(vit, splits, items, 0, normalize=True) == normalised  # existing keys unchanged
    assert cache_key(vit, splits, items, 0, normalize=False) != normalised
    cache = FeatureCache(tmp_path / "cache")
    unit = cache.get_or_encode(vit, splits, items, view=0)
    raw = cache.get_or_encode(vit, splits, items, view=0, normalize=False)
    assert torch.allclose(unit, torch.nn.functional.normalize(raw, dim=-1), atol=1e-6)
    assert cache.misses == 2


def test_no_validation_split_uses_default_c(vit):
    xtr, ytr = _blobs(3, 4, seed=7)
    logged = []
    probe = _probe(vit, 3, solver="torch", default_c=0.5)
    record = probe.fit_closed_form(ClosedFormData(xtr.float(), ytr, log=logged.append))
    assert record["C"] == 0.5 and record["search"] == [] and record["solver"] == "torch"
    assert logged and "C=0.5" in logged[0]
