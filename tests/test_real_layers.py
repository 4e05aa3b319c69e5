"""The orderings the method table promises, on real MiniLM layers (the shipped sample layers,
float32, 384×384, 2:4): exact OBS beats SparseGPT by at least 10% relative output error, and
re-selecting masks between chunks beats a fixed mask, which beats compensating only inside
scopes."""

from __future__ import annotations

import functools

import pytest

import obsviz
from obsviz.layers import load_sample_layer

import reference as ref

LAYERS = ["layer0.query", "layer0.attn_out", "layer5.query", "layer5.attn_out"]


@functools.cache
def run(name: str, method: str, **options) -> obsviz.PruneResult:
    layer = load_sample_layer(name)
    geom = obsviz.Geometry.preset("2:4", layer.shape)
    return obsviz.prune(layer.weight, layer.hessian, geom, 2, method=method, device="cpu",
                        **options)


def test_sample_layers_are_real_384_square_layers():
    for name in LAYERS:
        layer = load_sample_layer(name)
        assert layer.shape == (384, 384) and layer.hessian.shape == (384, 384)


@pytest.mark.parametrize("name", LAYERS)
def test_true_obs_beats_sparsegpt_by_ten_percent_on_2_4(name):
    assert run(name, "true_obs").rel_error <= 0.9 * run(name, "sparsegpt").rel_error


@pytest.mark.parametrize("name", ["layer0.attn_out", "layer5.attn_out"])
def test_true_obs_on_a_real_layer_solves_normal_equations_in_float32(name):
    layer = load_sample_layer(name)
    res = run(name, "true_obs")
    resid = ref.normal_equation_residual(layer.weight, res.weight, res.mask, layer.hessian)
    assert resid.max() < 1e-5


@pytest.mark.parametrize("name", ["layer0.query", "layer5.attn_out"])
def test_interleaved_beats_full_beats_local_on_2_4(name):
    inter = run(name, "interleaved", n_splits=4).rel_error
    full = run(name, "full").rel_error
    local = run(name, "local").rel_error
    assert inter < full < local
