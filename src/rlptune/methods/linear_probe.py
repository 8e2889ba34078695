"""Linear probe CLIP, as the CoOp paper ran it (``lpclip/``): logistic regression on unnormalised image features.

logits = x·Wᵀ + b, where x is the frozen image tower's *unnormalised* output on the evaluation transform (resize +
centre crop): the method declares ``normalize_features = False`` and the engine hands it raw features when fitting
and evaluating (its :meth:`LinearProbe.encode_images` gives the same for ``predict`` and the server).

The fit is scikit-learn's ``LogisticRegression(solver="lbfgs", penalty="l2", C=C, max_iter=1000)``: it minimises
``C · Σᵢ CE(x_i·Wᵀ + b, y_i) + ½‖W‖²`` (bias not penalised; for two classes one weight vector, sklearn's binary
model). C is chosen on the few-shot validation split (``min(K, 4)`` images per class, drawn with the training
shots) exactly as ``lpclip/linear_probe.py`` does it:

1. C over 1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6; the first best validation accuracy wins (a tie keeps the largest C,
   the weakest regularisation);
2. 8 bisection steps in log10 C, starting from [C*/10, 10·C*]: each step fits both ends, keeps the better (a tie
   keeps the left, smaller C) and halves the interval towards it; the C kept at the last step is the answer.

The final probe is the fit at that C on the training split only. Without scikit-learn (an optional extra:
``pip install rlptune[probe]``) the same objective is minimised by full-batch L-BFGS in float64 (``solver: torch``,
the fallback of ``solver: auto``); both are deterministic on CPU.

Before fitting (``train.epochs: 0``) the probe is the zero-shot classifier: W = logit_scale · (hand-crafted class
text features), b = 0, so it predicts exactly as zero-shot CLIP (on raw features the logits are the zero-shot
logits times the image's feature norm, so the ranking is the same).

Adapter note: the probe is fitted in closed form (``fit_closed_form``), not by the engine's gradient loop, but its
weight and bias are ``requires_grad=True`` parameters on purpose: that marks them as the adapter's tensors
(``adapter_state``) and for ``rlptune params``. Parameters: C·(e + 1). A linear probe cannot score classes it was
not fitted on, so ``set_classnames`` with other classes is refused.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RlptuneError
from ..options import MAX_ITERATIONS, option
from .base import ClosedFormData, DeclaredSize, Method, register_method
from .shared import formula, handcrafted_features, handcrafted_template

#: lpclip/linear_probe.py: the C grid, in the order it is searched (ties keep the first, i.e. the largest C).
C_GRID: tuple[float, ...] = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
SOLVERS = ("auto", "sklearn", "torch")


@dataclass
class LinearProbeOptions:
    c: float = option(0.0, "fixed inverse L2 strength C (> 0 skips the search); sklearn's LogisticRegression C", low=0)
    search_steps: int = option(
        8, "bisection steps in log10 C after the grid (CoOp lpclip: 8)", low=0, high=64
    )  # 64 halvings reach float64's resolution of log10 C
    default_c: float = option(1.0, "C used when there is no validation split and c is unset (sklearn's default)")
    max_iter: int = option(1000, "L-BFGS iterations per fit (CoOp lpclip: 1000)", low=1, high=MAX_ITERATIONS)
    solver: str = option(
        "auto", "auto = scikit-learn when installed, else torch | sklearn | torch (the same objective)"
    )
    template: str = option(
        "", "template of the zero-shot initialisation; empty = the dataset's, else 'a photo of a {}.'"
    )

    def validate(self) -> None:
        if self.c < 0 or self.default_c <= 0:
            raise RlptuneError(
                f"method.options.c must be >= 0 and default_c > 0, got c={self.c}, default_c={self.default_c}"
            )
        if self.search_steps < 0 or self.max_iter < 1:
            raise RlptuneError("method.options.search_steps must be >= 0 and max_iter >= 1")
        if self.solver not in SOLVERS:
            raise RlptuneError(f"method.options.solver {self.solver!r}: expected one of {', '.join(SOLVERS)}")


def sklearn_available() -> bool:
    try:
        import sklearn.linear_model  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_solver(solver: str) -> str:
    """``auto`` → ``sklearn`` when it is installed, else ``torch``; ``sklearn`` without it is a one-line error."""
    if solver == "auto":
        return "sklearn" if sklearn_available() else "torch"
    if solver == "sklearn" and not sklearn_available():
        raise RlptuneError(
            "method.options.solver=sklearn: scikit-learn is not installed (pip install 'rlptune[probe]'), "
            "or use solver=torch"
        )
    return solver


def _as_head(
    coef: torch.Tensor, intercept: torch.Tensor, present: Sequence[int], classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (classes, e) weight and (classes,) bias from a fitted model over the labels ``present``.

    Two labels give one weight vector w (sklearn's binary model, P(second) = σ(x·w + b)): the head is rows (0, w)
    and biases (0, b), whose softmax is exactly that sigmoid. Labels absent from the training set never win."""
    weight = torch.zeros(classes, coef.shape[1], dtype=torch.float64)
    bias = torch.full((classes,), -1e9, dtype=torch.float64)
    index = torch.as_tensor(list(present))
    if coef.shape[0] == 1 and len(present) == 2:
        coef = torch.cat([torch.zeros_like(coef), coef])
        intercept = torch.cat([torch.zeros_like(intercept), intercept])
    weight[index] = coef
    bias[index] = intercept
    return weight, bias


def fit_sklearn(
    x: torch.Tensor, y: torch.Tensor, classes: int, c: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's ``LogisticRegression(solver='lbfgs', penalty='l2', C=c, max_iter=max_iter)`` as a head."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", ConvergenceWarning
        )  # lpclip runs the same capped fits (large C, separable data)
        # lpclip passes penalty="l2": the default in every scikit-learn version (the argument is deprecated in 1.8)
        model = LogisticRegression(solver="lbfgs", C=c, max_iter=max_iter)
        model.fit(x.double().numpy(), y.long().numpy())
    coef = torch.from_numpy(model.coef_).double()
    intercept = torch.from_numpy(model.intercept_).double()
    return _as_head(coef, intercept, [int(k) for k in model.classes_], classes)


def fit_torch(
    x: torch.Tensor, y: torch.Tensor, classes: int, c: float, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same objective, C·Σ CE + ½‖W‖² (divided by C·N for conditioning), by L-BFGS in float64 from zero."""
    x, y = x.double(), y.long()
    present = sorted(set(y.tolist()))
    remap = {label: i for i, label in enumerate(present)}
    target = torch.tensor([remap[int(v)] for v in y])
    rows = 1 if len(present) == 2 else len(present)
    weight = torch.zeros(rows, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(rows, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
    )
    l2 = 1.0 / (c * len(y))

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = x @ weight.t() + bias
        if rows == 1:  # binary: logits (0, x·w + b), as sklearn's binary model
            logits = torch.cat([torch.zeros_like(logits), logits], dim=1)
        loss = F.cross_entropy(logits, target) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    if len(present) > 1:
        with torch.enable_grad():
            optimizer.step(closure)
    return _as_head(weight.detach(), bias.detach(), present, classes)


FITTERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {"sklearn": fit_sklearn, "torch": fit_torch}


def accuracy(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float(((x.double() @ weight.t() + bias).argmax(-1) == y).double().mean())


def search_c(val_accuracy: Callable[[float], float], steps: int = 8) -> tuple[float, list[dict]]:
    """CoOp lpclip's search of C (see the module docstring); returns the chosen C and every trial in order.

    ``val_accuracy(C)`` fits at C and scores the validation split; repeated Cs are asked again (callers memoise)."""
    trials: list[dict] = []

    def trial(c: float, stage: str) -> float:
        acc = val_accuracy(c)
        trials.append({"C": c, "val_acc": acc, "stage": stage})
        return acc

    grid = [trial(c, "grid") for c in C_GRID]
    peak = C_GRID[grid.index(max(grid))]  # the first maximum: the largest C among ties
    left, right = 0.1 * peak, 10.0 * peak
    chosen = peak
    for step in range(steps):
        acc_left, acc_right = trial(left, f"bisect {step + 1}"), trial(right, f"bisect {step + 1}")
        log_left, log_right = math.log10(left), math.log10(right)
        middle = 0.5 * (log_left + log_right)
        if acc_left < acc_right:
            chosen, log_left = right, middle
        else:  # a tie keeps the left end (the smaller C)
            chosen, log_right = left, middle
        left, right = 10.0**log_left, 10.0**log_right
    return chosen, trials


@register_method("linear_probe")
class LinearProbe(Method):
    options_class = LinearProbeOptions
    transfers_to_new_classes = False
    closed_form = True
    normalize_features = False  # lpclip fits the image tower's raw output

    def __init__(self, settings, backbone, classnames: list[str], dataset_template: str | None = None) -> None:
        super().__init__(settings, backbone, classnames, dataset_template)
        template = handcrafted_template(dataset_template, self.options.template or None)
        text = handcrafted_features(backbone, classnames, template)
        # zero-shot start; "trainable" marks these as the adapter's tensors (see the module docstring)
        self.weight = nn.Parameter(backbone.logit_scale.cpu() * text.cpu())
        self.bias = nn.Parameter(torch.zeros(len(classnames)))
        self.to(backbone.device)

    @classmethod
    def declared_sizes(cls, settings, classnames: Sequence[str]) -> list[DeclaredSize]:
        """One weight row and one bias per class (checked before every class's prompt is encoded)."""
        return [DeclaredSize("the number of classnames", len(classnames), ((r"weight", 0), (r"bias", 0)))]

    def set_classnames(self, classnames: Sequence[str]) -> None:
        if list(classnames) != list(self.classnames):
            raise RlptuneError(
                "linear_probe: a linear probe scores only the classes it was fitted on; refit it for other classes"
            )
        super().set_classnames(classnames)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen image tower's unnormalised features: what the probe is fitted on."""
        return self.backbone.encode_image(images, normalize=False)

    def class_features(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=-1)

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        return image_features.to(self.weight.dtype) @ self.weight.t() + self.bias

    @torch.no_grad()
    def merge(self) -> "LinearProbe":
        self.eval()
        return self

    def fit_closed_form(self, data: ClosedFormData) -> dict:
        """Search C on the validation split (CoOp lpclip's procedure), fit on the training split; the record to log."""
        opts = self.options
        solver = resolve_solver(opts.solver)
        fit = FITTERS[solver]
        xtr, ytr = data.train_features, data.train_labels
        classes = len(self.classnames)
        memo: dict[float, float] = {}

        def val_accuracy(c: float) -> float:
            if c not in memo:
                memo[c] = accuracy(*fit(xtr, ytr, classes, c, opts.max_iter), data.val_features, data.val_labels)
            return memo[c]

        search: list[dict] = []
        if opts.c > 0:
            c, source = opts.c, "fixed"
        elif data.val_features is not None and len(data.val_features):
            c, search = search_c(val_accuracy, opts.search_steps)
            source = "validation search (CoOp lpclip)"
        else:
            c, source = opts.default_c, "default (no validation split)"
            data.log(f"linear_probe: no validation split, using C={c:g}")
        weight, bias = fit(xtr, ytr, classes, c, opts.max_iter)
        with torch.no_grad():
            self.weight.copy_(weight.to(self.weight))
            self.bias.copy_(bias.to(self.bias))
        record = {
            "C": c,
            "C_source": source,
            "solver": solver,
            "train_acc": accuracy(weight, bias, xtr, ytr),
            "loss": float(F.cross_entropy(xtr.double() @ weight.t() + bias, ytr.long())),
            "search": search,
        }
        if search:
            record["val_acc"] = memo[c]
        return record

    def parameter_formula(self) -> str:
        e, c = int(self.weight.shape[1]), len(self.classnames)
        return formula([("C·(e + 1)", c * (e + 1))], {"C": c, "e": e})
