"""``obsviz.prepare``: the one preparation of W and H, against the plain reference and by hand."""

from __future__ import annotations

import pytest
import torch

import obsviz
from obsviz.prepare import prepare

import reference as ref


def _layer_with_dead_inputs(seed: int, dead=(2, 9)):
    W, H = ref.random_layer(6, 16, seed=seed)
    H = H.clone()
    for c in dead:
        H[:, c] = H[c, :] = 0
    H[0, 1] += 1e-9  # a little asymmetry: prepare symmetrises
    return W, H


@pytest.mark.parametrize("damp", [0.0, 0.01, 0.5, 3.0])
def test_prepare_matches_the_plain_reference_at_unit_scale(damp):
    W, H = _layer_with_dead_inputs(seed=1)
    p, r = prepare(W, H, damp), ref.prepare(W, H, damp)
    assert p.dtype == torch.float64
    assert p.dead.tolist() == [c in (2, 9) for c in range(16)]
    torch.testing.assert_close(p.W, r.W, rtol=0, atol=0)           # dead columns zeroed
    torch.testing.assert_close(p.W0, W, rtol=0, atol=0)            # the weight as given
    torch.testing.assert_close(p.H0, (H + H.T) / 2, rtol=0, atol=0)
    torch.testing.assert_close(p.Hu * p.scale, r.H, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(p.Hd * p.scale, r.Hd, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(p.C / p.scale, r.C, rtol=1e-10, atol=1e-12)
    assert p.scale == pytest.approx(float(torch.diagonal(r.Hd).mean()), rel=1e-14)
    assert float(torch.diagonal(p.Hd).mean()) == pytest.approx(1.0, rel=1e-14)
    lam = damp * float(torch.diagonal((H + H.T) / 2).mean()) if damp < 1 else damp
    assert p.lam == pytest.approx(lam, rel=1e-14)


def test_prepare_never_modifies_its_inputs_and_works_in_float32_for_float32():
    W, H = _layer_with_dead_inputs(seed=2)
    W32, H32 = W.float(), H.float()
    before = (W32.clone(), H32.clone())
    p = prepare(W32, H32, 0.01)
    assert torch.equal(W32, before[0]) and torch.equal(H32, before[1])
    assert p.dtype == torch.float32 and p.C.dtype == torch.float32
    assert prepare(W32, H32, 0.01, dtype=torch.float64).dtype == torch.float64


def test_prepare_is_what_prune_starts_from():
    # nnz = blocks per scope prunes nothing: the result is prepare's W0, and with dead inputs the
    # first pruning step starts from prepare's W (dead columns at zero).
    W, H = _layer_with_dead_inputs(seed=3)
    geom = obsviz.Geometry.preset("2:4", (6, 16))
    res = obsviz.prune(W, H, geom, 2, method="full", device="cpu")
    assert torch.all(res.weight[:, [2, 9]] == 0)
    assert res.options["dead_inputs"] == 2


@pytest.mark.parametrize("damp", [-1.0, float("nan"), "0.01", True])
def test_bad_damp_is_an_argument_error(damp):
    W, H = ref.random_layer(4, 8, seed=4)
    with pytest.raises(obsviz.ArgumentError) as info:
        prepare(W, H, damp)
    assert info.value.argument == "damp"


def test_singular_hessian_without_damping_names_damp():
    W = torch.randn(4, 8, dtype=torch.float64)
    X = torch.randn(3, 8, dtype=torch.float64)     # rank 3 < 8, no dead inputs
    with pytest.raises(obsviz.ArgumentError) as info:
        prepare(W, X.T @ X, 0.0)
    assert info.value.argument == "damp"
