"""Hostile numbers and memory (issue 21, items 2 and 6; issue 24, item 10): one regression test
per vector. Weights whose compensation leaves their dtype, scales that overflow float32 scores,
dampings out of range, and pages whose own work must be counted (and held) before it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from obsviz import METHODS, ArgumentError, Geometry, prune
from obsviz.estimate import (
    MAP_BYTES_PER_WEIGHT,
    available_memory,
    held_memory,
    require_memory,
    reserve_memory,
)
from obsviz.hessian import DAMP_MAX, check_damp
from obsviz.metrics import rel_error

ROOT = Path(__file__).resolve().parent.parent


def _layer(M: int = 16, K: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(4 * K, K, generator=g)
    return torch.randn(M, K, generator=g), X.T @ X / (4 * K)


def _collinear_layer(M: int = 16, K: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """float16 weights near the top of its range on nearly collinear inputs: OBS compensation
    moves kept weights far past 65504."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(256, 1, generator=g) @ torch.ones(1, K) + 0.01 * torch.randn(256, K,
                                                                                 generator=g)
    return (torch.rand(M, K, generator=g) * 60000).half(), X.T @ X / 256


# ---- 6. numbers that overflow are never reported as fine -------------------------------------


@pytest.mark.parametrize("method", ["sparsegpt", "interleaved", "true_obs", "full"])
def test_float16_compensation_past_its_range_is_refused_not_returned_as_inf(method) -> None:
    W, H = _collinear_layer()
    g = Geometry.preset("2:4", W.shape)
    with pytest.raises(ArgumentError, match="exceed the range of float16") as e:
        prune(W, H, g, 2, method=method, device="cpu")
    assert e.value.argument == "W"
    # the float32 copy the message suggests prunes, finite
    res = prune(W.float(), H, g, 2, method=method, device="cpu")
    assert torch.isfinite(res.weight).all()


@pytest.mark.parametrize("method", METHODS)
def test_the_error_reported_is_the_error_of_the_weights_returned(method) -> None:
    W, H = _layer()
    W = W.to(torch.bfloat16)   # coarse rounding: the difference would show
    g = Geometry.preset("2:4", W.shape)
    res = prune(W, H, g, 2, method=method, device="cpu")
    assert res.weight.dtype == torch.bfloat16
    direct = rel_error(W.float(), res.weight.float(), H)
    assert res.rel_error == pytest.approx(direct, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("c", [1e20, 1e-23, 3.7, 2.0**60])
@pytest.mark.parametrize("preset", ["2:4", "coupled-2:4"])
def test_masks_do_not_depend_on_the_scale_of_w(c, preset) -> None:
    """prune(c · W, H) has the masks of prune(W, H) for any finite positive c (squared scores of
    W · 1e20 overflowed float32 and those of W · 1e-23 underflowed: other masks)."""
    W, H = _layer()
    g = Geometry.preset(preset, W.shape)
    for method in METHODS:
        a = prune(W, H, g, 2, method=method, device="cpu")
        b = prune(W * c, H, g, 2, method=method, device="cpu")
        assert torch.equal(a.mask, b.mask), method
        torch.testing.assert_close(b.weight / c, a.weight, rtol=1e-5, atol=1e-6)
        assert b.rel_error == pytest.approx(a.rel_error, rel=1e-5)


def test_a_row_sample_of_a_scaled_w_keeps_the_other_rows_exactly() -> None:
    W, H = _layer(32, 16)
    W = W * 1e20
    g = Geometry.preset("2:4", W.shape)
    res = prune(W, H, g, 2, method="true_obs", rows=torch.arange(8), device="cpu")
    assert torch.equal(res.weight[8:], W[8:])
    assert res.rel_error > 0


# ---- 24.10 damping: validated once, ignored by the methods that never read it ----------------


@pytest.mark.parametrize("damp", [1e308, DAMP_MAX * 2, -0.1, float("nan"), float("inf"), True])
def test_damping_out_of_range_is_refused_once_naming_damp(damp) -> None:
    with pytest.raises(ArgumentError) as e:
        check_damp(damp)
    assert e.value.argument == "damp" and "from 0 to" in str(e.value)
    W, H = _layer()
    for method in ("magnitude", "true_obs"):   # the same refusal whatever the method
        with pytest.raises(ArgumentError) as e2:
            prune(W, H, Geometry.preset("2:4", W.shape), 2, method=method, damp=damp)
        assert str(e2.value) == str(e.value)


def test_methods_that_never_read_the_damped_h_ignore_the_damping() -> None:
    W, H = _layer()
    # the largest diagonal entry at 0.9 of float32's range: damp 0.9 overflows it, 0.01 does not
    huge = H.double() * (0.9 * torch.finfo(torch.float32).max / float(torch.diagonal(H).max()))
    g = Geometry.preset("2:4", W.shape)
    with pytest.raises(ArgumentError, match="damp"):
        prune(W, huge, g, 2, method="sparsegpt", damp=0.9)
    for method in ("magnitude", "wanda"):
        a = prune(W, huge, g, 2, method=method, damp=0.9)
        b = prune(W, huge, g, 2, method=method)
        assert torch.equal(a.mask, b.mask) and torch.equal(a.weight, b.weight)


# ---- 2. the memory a request computes, counted and held server-wide --------------------------


_PAGE_PEAK = """
import sys, torch
from ui.forms import GeometryForm, build_geometry
from ui import facts
from obsviz.figures.geometry import compute_maps
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
torch.zeros(1)
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS:")
geom, nnz, _ = build_geometry(GeometryForm(pattern=sys.argv[1], weight="2048,2048"), None)
maps = compute_maps(geom)
facts.memory_table(geom, "cpu")
print((status("VmHWM:") - base) / 2048 ** 2)
"""


@pytest.mark.parametrize("pattern", ["2:4", "coupled-2:4", "block16", "2:4-pairs"])
def test_the_geometry_page_estimate_covers_its_maps_and_its_facts(pattern) -> None:
    """The Geometry link ?weight=16384,16384 passed the maps check, then the facts table took
    ~60 B a weight more: the estimate now covers everything the page computes on all of W
    (measured 23–30 B a weight; the facts' layout shape no longer sorts every element)."""
    out = subprocess.run([sys.executable, "-c", _PAGE_PEAK, pattern], cwd=ROOT, timeout=600,
                         capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.strip()) <= MAP_BYTES_PER_WEIGHT


def test_memory_held_by_one_request_is_counted_against_the_next() -> None:
    free = available_memory("cpu")
    assert free is not None
    half = int(free * 0.6)   # each fits alone; two together do not
    require_memory(half, "cpu", "the first")
    entered, release = threading.Event(), threading.Event()

    def first() -> None:
        with reserve_memory(half, "cpu", "the first"):
            entered.set()
            release.wait(30)

    t = threading.Thread(target=first)
    t.start()
    try:
        assert entered.wait(30)
        assert held_memory("cpu") >= half
        with pytest.raises(ArgumentError, match="promised to other work in progress"):
            require_memory(half, "cpu", "the second")
        with pytest.raises(ArgumentError, match="promised"):
            with reserve_memory(half, "cpu", "the second"):
                pass
    finally:
        release.set()
        t.join()
    assert held_memory("cpu") == 0
    require_memory(half, "cpu", "the second, once the first is done")


def test_prune_holds_its_memory_while_it_runs() -> None:
    W, H = _layer(64, 64)
    g = Geometry.preset("2:4", W.shape)
    seen = []
    prune(W, H, g, 2, method="true_obs", progress=lambda f, m: seen.append(held_memory("cpu")))
    assert seen and min(seen) > 0 and held_memory("cpu") == 0
