"""``obsviz.prune`` as a contract: every method honours every geometry, bad input is refused with a
message naming the argument, dead inputs work, W is never modified, progress is reported."""

from __future__ import annotations

import math
import re

import pytest
import torch

import obsviz
from obsviz import metrics

import reference as ref

METHODS = ["local", "full", "split", "interleaved", "true_obs", "magnitude", "wanda", "obd",
           "sparsegpt"]
ALL_CASES = list(ref.CASES.values()) + [ref.GREEDY_CASE]
ALL_IDS = list(ref.CASES) + ["input-channels-greedy"]


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_keeps_exactly_nnz_whole_blocks_per_scope(method, case):
    W, H = ref.random_layer(*case.shape, seed=61)
    geom = case.geometry()
    res = obsviz.prune(W, H, geom, case.nnz, method=method, n_splits=2, ng=2, chunk_size=3)
    assert res.method == method
    assert res.weight.shape == W.shape and res.weight.dtype == W.dtype
    assert res.mask.shape == W.shape and res.mask.dtype == torch.bool
    v = metrics.validity(res.mask, geom, case.nnz)
    assert v.ok, v
    assert metrics.sparsity(res.mask) == pytest.approx(geom.sparsity(case.nnz), abs=0)
    assert torch.all(res.weight[~res.mask] == 0)
    assert torch.isfinite(res.weight).all()
    assert 0 <= res.rel_error < 1.5 and res.seconds >= 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", ref.PRESET_CASES)
def test_every_method_on_every_preset_in_float32(method, preset):
    case = ref.CASES[preset]
    W, H = ref.random_layer(*case.shape, seed=62)
    W, H = W.float(), H.float()
    geom = case.geometry()
    res = obsviz.prune(W, H, geom, case.nnz, method=method)
    assert res.weight.dtype == torch.float32
    assert metrics.validity(res.mask, geom, case.nnz).ok
    assert torch.all(res.weight[~res.mask] == 0)


@pytest.mark.parametrize("method", METHODS)
def test_input_weight_and_hessian_are_never_modified(method):
    case = ref.CASES["coupled-2:4"]
    W, H = ref.random_layer(*case.shape, seed=63)
    H[:, 3] = H[3, :] = 0                      # a dead input: the engine zeroes its column
    W_before, H_before = W.clone(), H.clone()
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method=method)
    assert torch.equal(W, W_before) and torch.equal(H, H_before)
    assert res.weight.data_ptr() != W.data_ptr()


@pytest.mark.parametrize("method", METHODS)
def test_progress_is_called_with_fraction_and_message(method):
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=64)
    calls = []
    obsviz.prune(W, H, case.geometry(), case.nnz, method=method,
                 progress=lambda fraction, message: calls.append((fraction, message)))
    assert calls
    assert all(0.0 <= f <= 1.0 and isinstance(m, str) and m for f, m in calls)
    assert calls[-1][0] == 1.0


def dead_layer(case, seed, dead=(1, 6)):
    """A layer whose inputs ``dead`` never fire: zero columns in X, zero rows/cols in H."""
    M, K = case.shape
    X = ref.random_inputs(256, K, seed)
    X[:, list(dead)] = 0
    W = torch.randn(M, K, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return W, X.T @ X / X.shape[0]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("preset", ["2:4", "block16"])
def test_dead_input_columns_work_and_match_reference(method, preset):
    case = ref.CASES[preset]
    W, H = dead_layer(case, seed=65)
    geom = case.geometry()
    res = obsviz.prune(W, H, geom, case.nnz, method=method, n_splits=2, ng=2)
    assert res.options["dead_inputs"] == 2
    assert metrics.validity(res.mask, geom, case.nnz).ok
    assert torch.all(res.weight[:, [1, 6]] == 0)
    assert math.isfinite(res.rel_error)
    if method in ("split", "interleaved"):
        expected = getattr(ref, method)(W, H, geom, case.nnz, 2)
    elif method == "true_obs":
        expected = ref.true_obs(W, H, geom, case.nnz)
    else:
        expected = ref.REFERENCES[method](W, H, geom, case.nnz)
    assert torch.equal(res.mask, expected.mask)
    torch.testing.assert_close(res.weight, expected.weight, rtol=1e-9, atol=1e-11)


def test_true_obs_with_dead_inputs_solves_normal_equations_on_live_columns():
    case = ref.CASES["coupled-2:4"]
    W, H = dead_layer(case, seed=66, dead=(0, 9, 17))
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method="true_obs", ng=3, chunk_size=2)
    assert ref.normal_equation_residual(W, res.weight, res.mask, H).max() < 1e-10


def test_keeping_every_block_returns_the_weight_unchanged():
    case = ref.CASES["2:4-pairs"]
    W, H = ref.random_layer(*case.shape, seed=67)
    for method in METHODS:
        res = obsviz.prune(W, H, case.geometry(), 4, method=method)
        assert res.mask.all() and torch.equal(res.weight, W) and res.rel_error == 0


def test_keeping_no_block_zeroes_the_weight():
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=68)
    for method in METHODS:
        res = obsviz.prune(W, H, case.geometry(), 0, method=method)
        assert not res.mask.any() and torch.all(res.weight == 0)
        assert res.rel_error == pytest.approx(1.0)


def test_options_record_what_ran():
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=69)
    res = obsviz.prune(W, H, case.geometry(), 2, method="true_obs", ng=2, chunk_size=4,
                       order="largest_first", scoring="joint", damp=0.05)
    o = res.options
    assert (o["nnz"], o["damp"], o["ng"], o["chunk_size"], o["order"], o["scoring"]) == (
        2, 0.05, 2, 4, "largest_first", "joint")
    assert o["selection"] == "exhaustive"


def _args(**change):
    W, H = ref.random_layer(8, 16, seed=70)
    args = dict(W=W, H=H, geometry=obsviz.Geometry.preset("2:4", (8, 16)), nnz=2)
    args.update(change)
    return args


def _nan_at(t, index):
    t = t.clone()
    t[index] = float("nan")
    return t


_W, _H = ref.random_layer(8, 16, seed=70)
BAD_INPUTS = {
    "H not square": (dict(H=torch.eye(16, 15, dtype=torch.float64)), "H"),
    "H wrong size": (dict(H=torch.eye(12, dtype=torch.float64)), "H"),
    "H not finite": (dict(H=_nan_at(_H, (2, 3))), "H"),
    "H infinite": (dict(H=_H.clone().fill_diagonal_(float("inf"))), "H"),
    "W not finite": (dict(W=_nan_at(_W, (0, 0))), "W"),
    "W wrong shape": (dict(W=torch.zeros(8, 12, dtype=torch.float64)), "W"),
    "nnz negative": (dict(nnz=-1), "nnz"),
    "nnz above blocks per scope": (dict(nnz=5), "nnz"),
    "nnz not an integer": (dict(nnz=1.5), "nnz"),
    "unknown method": (dict(method="prune_harder"), "method"),
    "unknown option": (dict(lr=0.1), "lr"),
    "bad order": (dict(method="true_obs", order="random"), "order"),
    "bad scoring": (dict(method="true_obs", scoring="best"), "scoring"),
    "n_splits zero": (dict(method="split", n_splits=0), "n_splits"),
    "ng negative": (dict(method="true_obs", ng=-1), "ng"),
    "chunk_size negative": (dict(method="true_obs", chunk_size=-4), "chunk_size"),
    "damp negative": (dict(damp=-0.1), "damp"),
    "damp not finite": (dict(damp=float("nan")), "damp"),
    "c_dtype not a float": (dict(method="true_obs", c_dtype="int8"), "c_dtype"),
    "geometry for another shape": (dict(geometry=obsviz.Geometry.preset("2:4", (8, 32))), "W"),
}


@pytest.mark.parametrize("change, name", BAD_INPUTS.values(), ids=list(BAD_INPUTS))
def test_bad_input_raises_value_error_naming_the_argument(change, name):
    args = _args(**change)
    W_before = args["W"].clone()
    with pytest.raises(ValueError) as info:
        obsviz.prune(**args)
    assert re.search(rf"\b{name}\b", str(info.value)), str(info.value)
    assert torch.equal(args["W"], W_before) or torch.isnan(W_before).any()


@pytest.mark.parametrize("method", ["full", "true_obs", "sparsegpt", "obd"])
def test_results_do_not_depend_on_the_scale_of_h(method):
    W, H = ref.random_layer(16, 32, seed=71)
    geom = obsviz.Geometry.preset("2:4", (16, 32))
    runs = [obsviz.prune(W, H * s, geom, 2, method=method) for s in (1e-6, 1.0, 1e6)]
    for other in runs[1:]:
        assert torch.equal(other.mask, runs[0].mask)
        torch.testing.assert_close(other.weight, runs[0].weight, rtol=1e-9, atol=1e-12)


def test_a_layout_that_would_not_fit_in_memory_is_refused_with_its_size(monkeypatch):
    import sys

    prune_module = sys.modules["obsviz.prune"]  # the module; obsviz.prune is the function
    W, H = ref.random_layer(16, 32, seed=72)
    geom = obsviz.Geometry((16, 32), block=(1, 1), scope=(-1, 1))   # one scope per column
    monkeypatch.setattr(prune_module, "available_memory", lambda device: 1 << 16)
    with pytest.raises(ValueError, match=r"row-step layout \(16 rows × 32 steps × 16 blocks"):
        obsviz.prune(W, H, geom, 8, method="local")


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_layout_shape_is_known_before_building_the_layout(case):
    from obsviz.layout import layout_shape, row_steps

    geom = case.geometry()
    assert layout_shape(geom) == tuple(row_steps(geom).cols.shape)


def test_a_non_contiguous_weight_prunes_as_its_contiguous_copy() -> None:
    torch.manual_seed(0)
    X = torch.randn(200, 16)
    H = X.T @ X / 200
    Wt = torch.randn(16, 8).T                       # (8, 16), a transposed view
    assert not Wt.is_contiguous()
    g = obsviz.Geometry.preset("2:4", (8, 16))
    for method in obsviz.METHODS:
        a = obsviz.prune(Wt, H, g, 2, method=method)
        b = obsviz.prune(Wt.contiguous(), H, g, 2, method=method)
        assert torch.equal(a.weight, b.weight) and torch.equal(a.mask, b.mask), method
        assert a.rel_error == b.rel_error, method
