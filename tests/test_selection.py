"""Mask selection against brute force (ALGORITHMS.md, "Exhaustive selection").

On tiny layers every scope's pruned subset must be the one of least OBS cost among all
``C(gs, np)`` subsets, ties going to the first in ``itertools.combinations`` order; beyond
10 000 subsets the choice is greedy and the result says so.
"""

from __future__ import annotations

import itertools

import pytest
import torch

import obsviz

import reference as ref

CASES = list(ref.CASES.values())
IDS = list(ref.CASES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("method", ["local", "full", "split"])
def test_shared_selection_equals_exhaustive_search_of_cost(case, method):
    W, H = ref.random_layer(*case.shape, seed=11)
    geom = case.geometry()
    res = obsviz.prune(W, H, geom, case.nnz, method=method, n_splits=2)
    expected = ref.exhaustive_selection(W, H, geom, case.nnz)
    assert torch.equal(res.mask, expected.mask)
    assert res.options["selection"] == "exhaustive"


def test_chosen_subset_costs_no_more_than_any_other_subset():
    """Read back each scope's choice from the engine's mask and price every alternative."""
    case = ref.CASES["coupled-2:4"]
    W, H = ref.random_layer(*case.shape, seed=12)
    geom = case.geometry()
    mask = obsviz.prune(W, H, geom, case.nnz, method="local").mask
    lay, p = ref.Layout(geom), ref.prepare(W, H)
    n_prune = lay.gs - case.nnz
    for s in lay.scopes:
        chosen = tuple(j for j in range(lay.gs) if not mask[lay.cells[s][j][0]])
        assert len(chosen) == n_prune
        best = ref.subset_cost(lay, p.W, lambda r: p.C, s, chosen)
        for subset in itertools.combinations(range(lay.gs), n_prune):
            assert best <= ref.subset_cost(lay, p.W, lambda r: p.C, s, subset) + 1e-12


def test_ties_go_to_first_subset_in_combinations_order():
    """Equal weights and H = I make every subset cost the same: (0, 1) is pruned everywhere."""
    geom = obsviz.Geometry.preset("2:4", (4, 16))
    W = torch.ones(4, 16, dtype=torch.float64)
    H = torch.eye(16, dtype=torch.float64)
    for method in ("local", "full"):
        mask = obsviz.prune(W, H, geom, 2, method=method).mask
        assert torch.equal(mask, torch.tensor([False, False, True, True]).repeat(4, 4))


@pytest.mark.parametrize("method", ["local", "full", "interleaved"])
def test_greedy_selection_when_subsets_exceed_ten_thousand(method):
    """Whole input channels, keep 16 of 32: C(32, 16) subsets, so the np cheapest singles."""
    case = ref.GREEDY_CASE
    W, H = ref.random_layer(*case.shape, seed=13)
    geom = case.geometry()
    assert geom.n_subsets(case.nnz) > ref.MAX_SUBSETS
    res = obsviz.prune(W, H, geom, case.nnz, method=method)
    expected = ref.exhaustive_selection(W, H, geom, case.nnz)
    assert expected.greedy
    assert res.options["selection"] == "greedy"
    assert torch.equal(res.mask, expected.mask)


def test_true_obs_joint_reports_greedy_selection_beyond_limit():
    case = ref.GREEDY_CASE
    W, H = ref.random_layer(*case.shape, seed=14)
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method="true_obs", scoring="joint")
    assert res.options["selection"] == "greedy"


def test_small_whole_input_channel_case_is_enumerated():
    """K = 8, keep 4: 70 subsets of whole columns, well under the limit, so exhaustive."""
    case = ref.CASES["input-channels"]
    W, H = ref.random_layer(*case.shape, seed=15)
    geom = case.geometry()
    assert geom.n_subsets(case.nnz) == 70
    res = obsviz.prune(W, H, geom, case.nnz, method="local")
    expected = ref.exhaustive_selection(W, H, geom, case.nnz)
    assert not expected.greedy and res.options["selection"] == "exhaustive"
    assert torch.equal(res.mask, expected.mask)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_true_obs_joint_first_step_selects_exhaustively(case):
    """Before any removal every row's C is the shared one, so the scopes of the first step are
    chosen exactly as the shared exhaustive selection chooses them."""
    W, H = ref.random_layer(*case.shape, seed=16)
    geom = case.geometry()
    lay = ref.Layout(geom)
    res = obsviz.prune(W, H, geom, case.nnz, method="true_obs", scoring="joint", ng=64,
                       chunk_size=3)
    shared = ref.exhaustive_selection(W, H, geom, case.nnz).mask
    for s in lay.scopes:
        if lay.step_of[s] == 0:
            for block in lay.cells[s]:
                for r, c in block:
                    assert res.mask[r, c] == shared[r, c]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_interleaved_first_chunk_selects_like_full(case):
    W, H = ref.random_layer(*case.shape, seed=17)
    geom = case.geometry()
    lay = ref.Layout(geom)
    first = -(-lay.T // 2)   # steps in chunk 0 with n_splits=2
    inter = obsviz.prune(W, H, geom, case.nnz, method="interleaved", n_splits=2).mask
    full = obsviz.prune(W, H, geom, case.nnz, method="full").mask
    for s in lay.scopes:
        if lay.step_of[s] < first:
            for block in lay.cells[s]:
                for r, c in block:
                    assert inter[r, c] == full[r, c]
