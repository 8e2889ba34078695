"""Spectral diagnostics of a prompt: singular values, numerical rank, information density, effective rank.

RLP's premise is that a prompt whose energy sits in few directions ("high information density") generalises
better to unseen classes. These functions turn a prompt matrix P (n context tokens × d embedding dims) into a few
numbers that make that claim checkable on a user's own runs, for P itself and for its change from
initialisation ΔP = P − P_init (the part training actually learned).

Definitions (σ₁ ≥ σ₂ ≥ … ≥ σ_m ≥ 0 are the singular values of one n×d matrix, m = min(n, d)):

* numerical rank = #{i : σ_i > tol}, tol = σ₁ · max(n, d) · eps(dtype)   (numpy.linalg.matrix_rank / LAPACK
  convention; eps is the machine epsilon of the *input* dtype, e.g. 1.19e-7 for float32, because the input
  cannot be more precise than its storage — singular values are computed in float64);
* information density ID_k = (σ₁² + … + σ_k²) / Σ_i σ_i²  (share of the Frobenius energy in the top-k
  directions, in [k/m, 1] for a non-zero matrix; ID_k = 1 when k ≥ m);
* effective rank = exp(H(p)), p_i = σ_i / Σ_j σ_j, H(p) = −Σ p_i log p_i with 0·log 0 = 0 (Roy & Vetterli, 2007);
  1 for a rank-1 matrix, m for a matrix with m equal singular values. Singular values ≤ tol (rounding noise)
  count as 0 here.

A zero matrix (e.g. ΔP at epoch 0) carries no information: by definition its ID_k, effective rank and numerical
rank are all 0 (not NaN, so the values stay JSON-ready and plottable).

A stack (..., n, d) — one matrix per layer or per class — is diagnosed matrix by matrix; the scalar fields then
hold the mean over the stack and ``per_matrix`` holds each matrix's own diagnostics in row-major order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from rlptune.errors import RlptuneError

__all__ = [
    "PromptDiagnostics",
    "diagnose",
    "diagnostics_from_singular_values",
    "effective_rank",
    "information_density",
    "numerical_rank",
    "primary_diagnostics",
    "prompt_diagnostics",
    "prompt_diagnostics_by_name",
    "rank_tolerance",
    "singular_values",
]


def _as_tensor(matrix: Any, name: str = "prompt") -> torch.Tensor:
    """Detach and move to CPU; accept tensors, numpy arrays and nested lists."""
    if isinstance(matrix, torch.Tensor):
        tensor = matrix.detach().to("cpu")
    else:
        try:
            tensor = torch.as_tensor(np.asarray(matrix))
        except Exception as exc:  # noqa: BLE001 - turn any conversion failure into one user-facing line
            raise RlptuneError(f"{name}: cannot read as a matrix ({exc})") from None
    if tensor.ndim < 2:
        raise RlptuneError(f"{name}: expected a matrix (n, d) or a stack (..., n, d), got shape {tuple(tensor.shape)}")
    if tensor.is_complex():
        raise RlptuneError(f"{name}: complex prompts are not supported")
    if tensor.shape[-1] == 0 or tensor.shape[-2] == 0:
        raise RlptuneError(f"{name}: empty matrix of shape {tuple(tensor.shape)}")
    return tensor


def _vector(sigma: Sequence[float] | np.ndarray | torch.Tensor) -> np.ndarray:
    """Singular values as a 1-D float64 numpy array (from a tensor, array or list)."""
    if isinstance(sigma, torch.Tensor):
        return sigma.detach().to("cpu", torch.float64).numpy().reshape(-1)
    return np.asarray(sigma, dtype=np.float64).reshape(-1)


def _eps(dtype: torch.dtype) -> float:
    """Machine epsilon of the input's storage precision (float64 for integer inputs)."""
    return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(np.finfo(np.float64).eps)


def singular_values(matrix: Any) -> torch.Tensor:
    """Singular values in descending order, shape (..., min(n, d)), float64 (computed in float64 for accuracy)."""
    tensor = _as_tensor(matrix)
    values = tensor.to(torch.float64)
    if not torch.isfinite(values).all():
        raise RlptuneError("prompt: contains NaN or infinite values; singular values are undefined")
    return torch.linalg.svdvals(values)


def rank_tolerance(
    sigma: Sequence[float] | np.ndarray | torch.Tensor,
    shape: Sequence[int],
    dtype: torch.dtype = torch.float32,
    scale: float = 0.0,
) -> float:
    """tol = max(σ_max, scale) · max(n, d) · eps(dtype): numpy.linalg.matrix_rank's default when scale = 0.

    ``scale`` raises the floor for a difference of two matrices (ΔP = P − P_init), whose rounding noise is set by
    the size of the operands, not of the (possibly tiny) difference.
    """
    s = _vector(sigma)
    smax = float(s.max()) if s.size else 0.0
    return max(smax, float(scale)) * max(int(shape[-2]), int(shape[-1])) * _eps(dtype)


def numerical_rank(sigma: Sequence[float] | np.ndarray | torch.Tensor, tol: float) -> int:
    """Number of singular values strictly above ``tol`` (0 for a zero matrix)."""
    s = _vector(sigma)
    return int((s > tol).sum())


def information_density(sigma: Sequence[float] | np.ndarray | torch.Tensor, k: int = 1) -> float:
    """ID_k = Σ_{i≤k} σ_i² / Σ_i σ_i² — how much of the prompt's energy lies in its top-k directions; 0 for a zero matrix."""
    if int(k) != k or k < 1:
        raise RlptuneError(f"information density: k must be a positive integer, got {k!r}")
    s = np.sort(_vector(sigma))[::-1]
    energy = s * s
    total = float(energy.sum())
    if total <= 0.0:
        return 0.0
    return float(min(1.0, energy[: int(k)].sum() / total))


def effective_rank(sigma: Sequence[float] | np.ndarray | torch.Tensor, tol: float = 0.0) -> float:
    """exp of the Shannon entropy of σ / Σσ (Roy & Vetterli); a smooth count of the directions in use; 0 for a zero matrix.

    Singular values at or below ``tol`` (the rank tolerance, in :func:`diagnose`) are rounding noise and count as 0,
    so a stored rank-1 float32 matrix has effective rank exactly 1.
    """
    s = _vector(sigma)
    s = np.where(s > tol, s, 0.0)
    total = float(s.sum())
    if total <= 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(math.exp(float(-(p * np.log(p)).sum())))


@dataclass
class PromptDiagnostics:
    """Diagnostics of one matrix or (scalars averaged) of a stack; ``to_dict`` gives JSON-ready values."""

    shape: list[int]
    k: int
    id_k: float
    effective_rank: float
    numerical_rank: float  # an int for one matrix, the mean over the stack for a stack
    tolerance: float  # the rank tolerance (max over the stack)
    frobenius_norm: float
    singular_values: list[float] | list[list[float]]  # one list per matrix for a stack
    per_matrix: list[dict[str, Any]] = field(default_factory=list)  # only for stacks

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.per_matrix:
            out.pop("per_matrix")
        return out


def diagnostics_from_singular_values(
    sigma: Sequence[float] | np.ndarray | torch.Tensor,
    shape: Sequence[int],
    k: int = 1,
    dtype: torch.dtype = torch.float32,
    scale: float = 0.0,
) -> PromptDiagnostics:
    """Diagnostics of one matrix from its singular values; lets ID_k be recomputed for another k from a stored spectrum."""
    s = np.sort(_vector(sigma))[::-1]
    tol = rank_tolerance(s, shape, dtype, scale)
    return PromptDiagnostics(
        shape=[int(x) for x in shape],
        k=int(k),
        id_k=information_density(s, k),
        effective_rank=effective_rank(s, tol),
        numerical_rank=numerical_rank(s, tol),
        tolerance=float(tol),
        frobenius_norm=float(math.sqrt(float((s * s).sum()))),
        singular_values=[float(x) for x in s],
    )


def diagnose(matrix: Any, k: int = 1, dtype: torch.dtype | None = None, scale: Any = 0.0) -> PromptDiagnostics:
    """Diagnostics of a matrix (n, d) or of a stack (..., n, d), scalars averaged over the stack.

    ``dtype`` (default: the input's) sets the precision the rank tolerance assumes; ``scale`` is a floor for σ_max in
    the tolerance, a float or one value per matrix of the stack (see :func:`rank_tolerance`).
    """
    tensor = _as_tensor(matrix)
    dtype = tensor.dtype if dtype is None else dtype
    sigma = singular_values(tensor)
    shape = list(tensor.shape)
    scales = np.broadcast_to(
        np.asarray(scale, dtype=np.float64).reshape(-1), (int(np.prod(shape[:-2], dtype=np.int64)),)
    )
    if tensor.ndim == 2:
        return diagnostics_from_singular_values(sigma, shape, k, dtype, float(scales[0]))
    flat = sigma.reshape(-1, sigma.shape[-1])
    parts = [diagnostics_from_singular_values(row, shape[-2:], k, dtype, float(sc)) for row, sc in zip(flat, scales)]
    return PromptDiagnostics(
        shape=shape,
        k=int(k),
        id_k=float(np.mean([p.id_k for p in parts])),
        effective_rank=float(np.mean([p.effective_rank for p in parts])),
        numerical_rank=float(np.mean([p.numerical_rank for p in parts])),
        tolerance=float(max(p.tolerance for p in parts)),
        frobenius_norm=float(math.sqrt(sum(p.frobenius_norm**2 for p in parts))),
        singular_values=[p.singular_values for p in parts],  # type: ignore[misc]
        per_matrix=[{key: value for key, value in p.to_dict().items() if key != "singular_values"} for p in parts],
    )


def prompt_diagnostics(P: Any, P_init: Any | None = None, k: int = 1) -> dict[str, dict[str, Any]]:
    """JSON-ready ``{"P": {...}, "delta": {...}}`` for the effective prompt and ΔP = P − P_init.

    ``delta`` is present only when ``P_init`` is given (a method without a meaningful initialisation has none).
    This is the dict the engine logs per epoch in metrics.jsonl and stores in result.json's ``prompt_diagnostics``.
    """
    p = _as_tensor(P, "P")
    out: dict[str, dict[str, Any]] = {"P": diagnose(p, k).to_dict()}
    if P_init is not None:
        init = _as_tensor(P_init, "P_init")
        if tuple(init.shape) != tuple(p.shape):
            raise RlptuneError(f"P_init: shape {tuple(init.shape)} does not match P's shape {tuple(p.shape)}")
        delta = p.to(torch.float64) - init.to(torch.float64)
        # The rounding noise in ΔP is set by the operands' size and the coarser of their precisions, so the rank
        # tolerance uses max(σ₁(P), σ₁(P_init), σ₁(ΔP)) and that precision; otherwise float32 noise in a small ΔP
        # would count as rank.
        coarser = p.dtype if _eps(p.dtype) >= _eps(init.dtype) else init.dtype
        top = torch.maximum(singular_values(p)[..., 0], singular_values(init)[..., 0])
        out["delta"] = diagnose(delta, k, dtype=coarser, scale=top.reshape(-1).numpy()).to_dict()
    return out


def prompt_diagnostics_by_name(diag: Any) -> dict[str, dict[str, Any]]:
    """``{prompt name: {"P", "delta"?}}`` from either stored form.

    A run stores either one prompt's :func:`prompt_diagnostics` output (``{"P": .., "delta": ..}``) or, for methods
    with several prompts (the engine's form), one such dict per prompt name (``{"ctx": {"P": .., ..}, ..}``). The
    single form is returned under the name ``"prompt"``; anything else yields ``{}``.
    """
    if not isinstance(diag, dict):
        return {}
    if isinstance(diag.get("P"), dict):
        return {"prompt": diag}
    return {
        str(name): value for name, value in diag.items() if isinstance(value, dict) and isinstance(value.get("P"), dict)
    }


def primary_diagnostics(diag: Any) -> tuple[str, dict[str, Any]] | None:
    """The first prompt's ``(name, {"P", "delta"?})`` — the one summarised in tables and plots — or None."""
    named = prompt_diagnostics_by_name(diag)
    return next(iter(named.items()), None)
