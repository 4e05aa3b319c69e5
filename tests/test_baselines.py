"""The baselines against tests/reference.py: score-and-zero for magnitude, wanda and obd, and the
plain one-column-at-a-time sweep for sparsegpt (whose lazy batches must change nothing)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import obsviz

import reference as ref

CASES = list(ref.CASES.values())
IDS = list(ref.CASES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "obd"])
def test_score_baselines_match_reference(method, case):
    W, H = ref.random_layer(*case.shape, seed=41)
    geom = case.geometry()
    res = obsviz.prune(W, H, geom, case.nnz, method=method)
    expected = ref.REFERENCES[method](W, H, geom, case.nnz)
    assert torch.equal(res.mask, expected.mask)
    assert torch.equal(res.weight, expected.weight)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "obd"])
def test_score_baselines_leave_kept_weights_untouched(method):
    case = ref.CASES["2:4-pairs"]
    W, H = ref.random_layer(*case.shape, seed=42)
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method=method)
    assert torch.equal(res.weight, W * res.mask)


def test_score_baselines_rank_differently():
    """Guards the comparisons above: the three scores do not all pick the same mask."""
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=43)
    masks = [obsviz.prune(W, H, case.geometry(), case.nnz, method=m).mask
             for m in ("magnitude", "wanda", "obd")]
    assert not (torch.equal(masks[0], masks[1]) and torch.equal(masks[1], masks[2]))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sparsegpt_matches_unbatched_column_sweep(case):
    W, H = ref.random_layer(*case.shape, seed=44)
    geom = case.geometry()
    res = obsviz.prune(W, H, geom, case.nnz, method="sparsegpt")
    expected = ref.sparsegpt(W, H, geom, case.nnz)
    assert torch.equal(res.mask, expected.mask)
    assert_close(res.weight, expected.weight, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name, shape, nnz", [("2:4", (4, 320), 2),
                                               ("coupled-2:4", (4, 288), 2),
                                               ("block16", (16, 288), 1)])
def test_sparsegpt_lazy_batches_equal_unbatched_sweep(name, shape, nnz):
    """K > 128: the lazy batch boundaries are crossed, and the result must not notice."""
    W, H = ref.random_layer(*shape, seed=45, N=2 * shape[1])
    geom = obsviz.Geometry.preset(name, shape)
    res = obsviz.prune(W, H, geom, nnz, method="sparsegpt")
    expected = ref.sparsegpt(W, H, geom, nnz)
    assert torch.equal(res.mask, expected.mask)
    assert_close(res.weight, expected.weight, rtol=1e-9, atol=1e-11)


def test_sparsegpt_compensates_and_beats_magnitude():
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=46)
    geom = case.geometry()
    sg = obsviz.prune(W, H, geom, case.nnz, method="sparsegpt")
    mag = obsviz.prune(W, H, geom, case.nnz, method="magnitude")
    assert not torch.equal(sg.weight, W * sg.mask)
    assert sg.rel_error < mag.rel_error
