"""Linear probe (CLIP / CoOp's baseline): multinomial logistic regression on cached image features.

logits = x·Wᵀ + b on the normalised image features x (centre crops, from the feature cache). The L2 strength λ
of ``mean cross-entropy + λ/2·‖W‖²`` is searched on the validation split (a log grid, then a finer grid around
the best value, as CLIP's sweep does); the final probe is fitted on the training split with the chosen λ. Each
fit is full-batch L-BFGS (``torch.optim.LBFGS`` with a strong-Wolfe line search, float64): the problem is convex,
so the result does not depend on the start and is deterministic on CPU. scikit-learn is not a dependency.

Before fitting (``train.epochs: 0``) the probe is the zero-shot classifier: W = logit_scale · (hand-crafted class
text features), b = 0, so it scores exactly like zero-shot CLIP.

Adapter note: the probe is not trained by gradient steps through the engine's loop (it is fitted in closed form: ``fit_closed_form``), but
its weight and bias are kept as ``requires_grad=True`` parameters on purpose: that is what marks tensors as
"trained" for the adapter file (``adapter_state``) and for ``rlptune params``. Parameters: C·(e + 1).
A linear probe cannot score classes it was not fitted on, so ``set_classnames`` with other classes is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError
from ..options import option
from .base import ClosedFormData, Method, register_method
from .shared import formula, handcrafted_features, handcrafted_template


@dataclass
class LinearProbeOptions:
    l2_min: float = option(1e-6, "smallest L2 strength λ of the search grid")
    l2_max: float = option(1e2, "largest L2 strength λ of the search grid")
    grid: int = option(9, "points of the coarse log-spaced λ grid (then 4 refinements around the best)")
    l2: float = option(0.0, "fixed λ (> 0 skips the search; also used when there is no validation split)")
    default_l2: float = option(1e-3, "λ used when the validation split is empty and l2 is unset")
    max_iter: int = option(500, "L-BFGS iterations per fit")
    template: str = option("", "template of the zero-shot initialisation; empty = the dataset's, else 'a photo of a {}.'")

    def validate(self) -> None:
        if not 0 < self.l2_min <= self.l2_max:
            raise RlptuneError("method.options: need 0 < l2_min <= l2_max")
        if self.grid < 1 or self.max_iter < 1:
            raise RlptuneError("method.options.grid and max_iter must be >= 1")
        if self.l2 < 0 or self.default_l2 <= 0:
            raise RlptuneError("method.options.l2 must be >= 0 and default_l2 > 0")


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, max_iter: int) -> tuple[torch.Tensor, torch.Tensor]:
    """W (C, e), b (C) minimising mean CE(x·Wᵀ + b, y) + λ/2·‖W‖² by L-BFGS in float64, starting from zero."""
    x, y = x.double(), y.long()
    weight = torch.zeros(classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-9, tolerance_change=1e-12,
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.t() + bias, y) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float(((x.double() @ weight.t() + bias).argmax(-1) == y).double().mean())


def search_l2(xtr, ytr, xval, yval, classes: int, opts: LinearProbeOptions) -> tuple[float, list[dict]]:
    """The λ with the best validation accuracy (ties → the stronger regularisation); every trial recorded."""
    trials: dict[float, float] = {}

    def trial(l2: float) -> float:
        if l2 not in trials:
            w, b = fit_logistic(xtr, ytr, classes, l2, opts.max_iter)
            trials[l2] = accuracy(w, b, xval, yval)
        return trials[l2]

    def best() -> float:
        return max(trials, key=lambda l2: (trials[l2], l2))

    lo, hi = math.log10(opts.l2_min), math.log10(opts.l2_max)
    coarse = [10 ** (lo + (hi - lo) * i / max(opts.grid - 1, 1)) for i in range(opts.grid)]
    for l2 in coarse:
        trial(l2)
    step = (hi - lo) / max(opts.grid - 1, 1)
    for _ in range(4):  # refine around the best: half the step each time
        step /= 2
        centre = math.log10(best())
        for l2 in (10 ** (centre - step), 10 ** (centre + step)):
            if opts.l2_min <= l2 <= opts.l2_max:
                trial(l2)
    return best(), [{"l2": l2, "val_acc": acc} for l2, acc in sorted(trials.items())]


@register_method("linear_probe")
class LinearProbe(Method):
    options_class = LinearProbeOptions
    transfers_to_new_classes = False
    closed_form = True

    def __init__(self, config, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(config, backbone, classnames, dataset_template)
        template = handcrafted_template(dataset_template, self.options.template or None)
        text = handcrafted_features(backbone, classnames, template)
        # zero-shot start; "trainable" marks these as the adapter's tensors (see the module docstring)
        self.weight = nn.Parameter(backbone.logit_scale.cpu() * text.cpu())
        self.bias = nn.Parameter(torch.zeros(len(classnames)))
        self.to(backbone.device)

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if list(classnames) != list(self.classnames):
            raise RlptuneError("linear_probe: a linear probe scores only the classes it was fitted on; refit it for other classes")
        super().set_classnames(classnames)

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=-1)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return image_features.to(self.weight.dtype) @ self.weight.t() + self.bias

    @torch.no_grad()
    def merge(self) -> "LinearProbe":
        self.eval()
        return self

    def fit_closed_form(self, data: ClosedFormData) -> dict:
        """Search λ on the validation split, fit on the training split; returns the record to log."""
        opts = self.options
        xtr, ytr = data.train_features, data.train_labels
        classes = len(self.classnames)
        search: list[dict] = []
        if opts.l2 > 0:
            l2, source = opts.l2, "fixed"
        elif data.val_features is not None:
            l2, search = search_l2(xtr, ytr, data.val_features, data.val_labels, classes, opts)
            source = "val search"
        else:
            l2, source = opts.default_l2, "default (no validation split)"
            data.log(f"linear_probe: no validation split, using l2={l2:g}")
        weight, bias = fit_logistic(xtr, ytr, classes, l2, opts.max_iter)
        with torch.no_grad():
            self.weight.copy_(weight.to(self.weight))
            self.bias.copy_(bias.to(self.bias))
        record = {
            "l2": l2,
            "l2_source": source,
            "train_acc": accuracy(weight, bias, xtr, ytr),
            "loss": float(F.cross_entropy(xtr.double() @ weight.t() + bias, ytr)),
            "search": search,
        }
        if search:
            record["val_acc"] = max(s["val_acc"] for s in search if s["l2"] == l2)
        return record

    def parameter_formula(self) -> str:
        e, c = int(self.weight.shape[1]), len(self.classnames)
        return formula([("C·(e + 1)", c * (e + 1))], {"C": c, "e": e})
