"""Metrics against first principles: the output error computed from actual calibration inputs X,
per-row and per-element parts that add up, sparsity, and a validity check that catches a broken
mask."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz import metrics

import reference as ref


def layer_with_inputs(M=8, K=16, N=300, seed=51):
    X = ref.random_inputs(N, K, seed)
    W0 = torch.randn(M, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return X, W0, X.T @ X / N


def test_rel_error_equals_output_error_from_actual_inputs():
    X, W0, H = layer_with_inputs()
    W = W0 + 0.3 * torch.randn(W0.shape, generator=torch.Generator().manual_seed(1),
                               dtype=torch.float64)
    expected = torch.linalg.norm(X @ (W - W0).T) / torch.linalg.norm(X @ W0.T)
    assert math.isclose(metrics.rel_error(W0, W, H), float(expected), rel_tol=1e-10)


@pytest.mark.parametrize("method", ["true_obs", "sparsegpt", "magnitude"])
def test_prune_reports_output_error_with_undamped_hessian(method):
    X, W0, H = layer_with_inputs(seed=52)
    res = obsviz.prune(W0, H, obsviz.Geometry.preset("2:4", W0.shape), 2, method=method,
                       damp=0.1)
    expected = torch.linalg.norm(X @ (res.weight - W0).T) / torch.linalg.norm(X @ W0.T)
    assert math.isclose(res.rel_error, float(expected), rel_tol=1e-9)


def test_row_error_is_each_rows_squared_output_error():
    X, W0, H = layer_with_inputs(seed=53)
    W = W0 * (torch.rand(W0.shape, generator=torch.Generator().manual_seed(2)) > 0.5)
    expected = ((X @ (W - W0).T) ** 2).sum(0) / X.shape[0]
    assert_close(metrics.row_error(W0, W, H), expected, rtol=1e-10, atol=1e-12)


def test_element_contribution_sums_to_row_error():
    _, W0, H = layer_with_inputs(seed=54)
    res = obsviz.prune(W0, H, obsviz.Geometry.preset("2:4-pairs", W0.shape), 2, method="full")
    contrib = metrics.element_contribution(W0, res.weight, H)
    assert contrib.shape == W0.shape
    assert_close(contrib.sum(1), metrics.row_error(W0, res.weight, H), rtol=1e-10, atol=1e-12)
    dW = res.weight - W0
    assert_close(contrib, dW * (dW @ H), rtol=1e-12, atol=1e-14)


def test_sparsity_is_fraction_pruned():
    mask = torch.ones(4, 8, dtype=torch.bool)
    mask[:, :2] = False
    assert metrics.sparsity(mask) == pytest.approx(0.25)
    case = ref.CASES["3:8"]
    W, H = ref.random_layer(*case.shape, seed=55)
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method="local")
    assert metrics.sparsity(res.mask) == pytest.approx(5 / 8)


def test_validity_accepts_a_correct_mask():
    case = ref.CASES["coupled-2:4"]
    W, H = ref.random_layer(*case.shape, seed=56)
    geom = case.geometry()
    mask = obsviz.prune(W, H, geom, case.nnz, method="true_obs").mask
    v = metrics.validity(mask, geom, case.nnz)
    assert v.ok and v.bad_blocks == 0 and v.bad_scopes == 0


def test_validity_detects_a_half_pruned_block():
    geom = ref.CASES["coupled-2:4"].geometry()      # blocks are element pairs 8 columns apart
    W, H = ref.random_layer(8, 32, seed=57)
    mask = obsviz.prune(W, H, geom, 2, method="local").mask.clone()
    r, c = torch.nonzero(mask)[0].tolist()
    mask[r, c] = False                              # one element of a kept pair
    v = metrics.validity(mask, geom, 2)
    assert not v.ok and not v.blocks_whole and v.bad_blocks == 1


def test_validity_detects_a_scope_with_the_wrong_count():
    geom = obsviz.Geometry.preset("2:4", (4, 16))
    mask = torch.tensor([True, True, False, False]).repeat(4, 4)
    assert metrics.validity(mask, geom, 2).ok
    mask[2, 6] = True                               # a third kept weight in one scope
    v = metrics.validity(mask, geom, 2)
    assert v.blocks_whole and not v.scopes_exact and v.bad_scopes == 1
    assert not metrics.validity(mask, geom, 3).ok
