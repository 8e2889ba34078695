"""Spectral diagnostics on matrices whose spectra are known in closed form, and against numpy's SVD."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from rlptune.analysis.spectrum import (
    diagnose,
    effective_rank,
    information_density,
    numerical_rank,
    primary_diagnostics,
    prompt_diagnostics,
    rank_tolerance,
    singular_values,
)
from rlptune.errors import RlptuneError


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rank_one_matrix(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(8, 1, generator=g, dtype=dtype), torch.randn(1, 64, generator=g, dtype=dtype)
    d = diagnose(u @ v, k=1)
    assert d.numerical_rank == 1 == np.linalg.matrix_rank((u @ v).numpy())
    assert d.id_k == pytest.approx(1.0, abs=1e-10)
    assert d.effective_rank == pytest.approx(1.0, abs=1e-12)
    assert d.singular_values[0] == pytest.approx(float(u.norm() * v.norm()), rel=1e-6)


@pytest.mark.parametrize("n", [1, 4, 7])
def test_identity(n: int) -> None:
    d = diagnose(torch.eye(n), k=1)
    assert d.id_k == pytest.approx(1.0 / n)
    assert d.effective_rank == pytest.approx(float(n))
    assert d.numerical_rank == n
    assert d.singular_values == pytest.approx([1.0] * n)
    assert diagnose(torch.eye(n), k=2).id_k == pytest.approx(min(2, n) / n)


def test_known_spectrum_closed_form() -> None:
    d = diagnose(torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]]), k=1)
    assert d.singular_values == pytest.approx([4.0, 3.0])
    assert d.id_k == pytest.approx(16.0 / 25.0)
    p = np.array([4.0, 3.0]) / 7.0
    assert d.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert d.frobenius_norm == pytest.approx(5.0)
    assert information_density([4.0, 3.0], k=5) == 1.0  # k beyond the rank: all the energy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_random_matrix_matches_numpy(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(1)
    m = torch.randn(6, 20, generator=g, dtype=dtype)
    ref = np.linalg.svd(m.numpy(), compute_uv=False)
    assert singular_values(m).numpy() == pytest.approx(ref, rel=1e-5)
    d = diagnose(m, k=2)
    assert d.numerical_rank == np.linalg.matrix_rank(m.numpy()) == 6
    assert d.id_k == pytest.approx(float((ref[:2] ** 2).sum() / (ref**2).sum()), rel=1e-5)
    assert d.tolerance == pytest.approx(ref.max() * 20 * np.finfo(m.numpy().dtype).eps, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_low_rank_product_rank_matches_numpy(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    m = torch.randn(16, 3, generator=g, dtype=dtype) @ torch.randn(3, 48, generator=g, dtype=dtype)
    assert diagnose(m).numerical_rank == np.linalg.matrix_rank(m.numpy()) == 3


def test_zero_matrix_is_defined_and_json_ready() -> None:
    d = diagnose(torch.zeros(4, 9))
    assert (d.id_k, d.effective_rank, d.numerical_rank, d.frobenius_norm) == (0.0, 0.0, 0, 0.0)
    assert effective_rank([0.0, 0.0]) == 0.0 and information_density([0.0], k=1) == 0.0
    assert numerical_rank([0.0, 0.0], rank_tolerance([0.0, 0.0], (2, 2))) == 0
    json.dumps(d.to_dict(), allow_nan=False)


def test_stack_is_diagnosed_per_matrix_and_averaged() -> None:
    stack = torch.stack([torch.eye(3), torch.diag(torch.tensor([1.0, 0.0, 0.0]))])
    d = diagnose(stack, k=1)
    assert d.shape == [2, 3, 3]
    assert [m["id_k"] for m in d.per_matrix] == pytest.approx([1 / 3, 1.0])
    assert d.id_k == pytest.approx((1 / 3 + 1.0) / 2)
    assert d.numerical_rank == pytest.approx(2.0)  # mean of 3 and 1
    assert d.effective_rank == pytest.approx(2.0)
    assert len(d.singular_values) == 2


def test_prompt_diagnostics_delta_of_low_rank_update() -> None:
    g = torch.Generator().manual_seed(3)
    p_init = torch.randn(16, 512, generator=g)
    delta = 1e-3 * torch.randn(16, 2, generator=g) @ torch.randn(2, 512, generator=g)  # RLP-style rank-2 update
    out = prompt_diagnostics(p_init + delta, p_init, k=2)
    assert set(out) == {"P", "delta"}
    assert out["P"]["numerical_rank"] == 16
    # float32 rounding noise in P − P_init must not count as rank
    assert out["delta"]["numerical_rank"] == 2
    assert out["delta"]["id_k"] == pytest.approx(1.0, abs=1e-6)
    json.dumps(out, allow_nan=False)
    assert set(prompt_diagnostics(p_init)) == {"P"}
    assert primary_diagnostics(out) == ("prompt", out)
    assert primary_diagnostics({"ctx": out, "steps": 3}) == ("ctx", out)
    assert primary_diagnostics({}) is None and primary_diagnostics(None) is None


def test_inputs_are_validated() -> None:
    with pytest.raises(RlptuneError, match="shape"):
        prompt_diagnostics(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(RlptuneError, match="k must"):
        information_density([1.0], k=0)
    with pytest.raises(RlptuneError, match="NaN"):
        diagnose(torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(RlptuneError, match="matrix"):
        diagnose(torch.ones(5))
    assert diagnose(np.eye(2)).id_k == pytest.approx(0.5)  # numpy input accepted
    assert diagnose(torch.eye(3, dtype=torch.bfloat16)).numerical_rank == 3
