"""The result figure builders: bounded cell counts, one colour scale, linked zoom, signs."""

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from obsviz import Geometry, load_sample_layer, prune
from obsviz.figures import results as rfig


def test_side_by_side_of_a_4096_square_layer_sends_at_most_250k_cells():
    rng = np.random.default_rng(0)
    maps = {m: rng.random((4096, 4096), dtype=np.float32) for m in
            ("full", "interleaved", "true_obs", "sparsegpt")}
    for kind in ("error", "mask", "delta"):
        fig = rfig.side_by_side(maps, kind)
        assert rfig.cell_count(fig) <= 250_000
        assert len(fig.data) == 4
    diff = rfig.difference_figure(maps["full"], maps["sparsegpt"], "full", "sparsegpt")
    assert rfig.cell_count(diff) <= 250_000


def test_pooled_axes_stay_in_weight_coordinates():
    fig = rfig.side_by_side({"a": np.zeros((4096, 4096))}, "delta")
    trace = fig.data[0]
    assert trace.x[0] == -0.5 and trace.x[-1] == 4095.5
    assert trace.y[0] == -0.5 and trace.y[-1] == 4095.5


def test_panels_share_one_colour_scale_and_linked_zoom():
    a = np.full((8, 16), 1.0)
    b = np.full((8, 16), 3.0)
    b[0, 0] = -2.0
    fig = rfig.side_by_side({"a": a, "b": b, "c": a}, "error")
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    ca = fig.layout.coloraxis
    assert ca.cmin == -ca.cmax and ca.cmax >= 3.0 and ca.cmid == 0
    assert all(ax.matches == "x" for ax in (fig.layout.xaxis2, fig.layout.xaxis3))
    assert all(ax.matches == "y" for ax in (fig.layout.yaxis2, fig.layout.yaxis3))
    mask = rfig.side_by_side({"a": a, "b": a}, "mask").layout.coloraxis
    assert (mask.cmin, mask.cmax) == (0.0, 1.0)


def test_window_draws_every_weight_of_that_window():
    a = np.arange(64 * 128, dtype=np.float32).reshape(64, 128)
    fig = rfig.side_by_side({"a": a}, "delta", window=(8, 24, 32, 64))
    z = np.asarray(fig.data[0].z)
    assert z.shape == (16, 32) and z[0, 0] == a[8, 32]


def test_difference_is_red_where_the_first_loses_more_error():
    a = np.zeros((8, 16))
    b = np.zeros((8, 16))
    a[2, 3] = 5.0      # only A has error here
    b[6, 10] = 4.0     # only B has error here
    fig = rfig.difference_figure(a, b, "A", "B")
    z = np.asarray(fig.data[0].z)
    assert z[2, 3] == 5.0 and z[6, 10] == -4.0
    per_row = dict(zip(fig.data[1].y, fig.data[1].x, strict=True))
    assert per_row[2] > 0 > per_row[6]
    with pytest.raises(ValueError, match="shape"):
        rfig.difference_figure(a, np.zeros((4, 4)), "A", "B")


def test_result_maps_match_the_metrics():
    layer = load_sample_layer("toy")
    geom = Geometry.preset("2:4", layer.shape)
    res = prune(layer.weight, layer.hessian, geom, 2, method="full", device="cpu")
    maps = rfig.result_maps(layer.weight, layer.hessian, res.weight, res.mask)
    dW = (res.weight - layer.weight).double()
    total = float((dW @ layer.hessian.double() * dW).sum())
    assert maps.error.sum() == pytest.approx(total, rel=1e-4)
    assert maps.mask.mean() == pytest.approx(0.5)
    assert maps.row_rel_error.shape == (layer.shape[0],)
    assert np.allclose(maps.delta, dW.abs().numpy(), atol=1e-6)


def test_charts_order_and_colour_methods():
    bar = rfig.error_bar_figure({"full": 0.26, "true_obs": 0.21, "magnitude": 0.32})
    assert list(bar.data[0].y) == ["true_obs", "full", "magnitude"]
    assert bar.data[0].marker.color[0] == rfig.METHOD_COLOURS["true_obs"]
    ecdf = rfig.row_error_figure({"full": torch.rand(100), "sparsegpt": np.random.rand(50)})
    assert [t.name for t in ecdf.data] == ["full", "sparsegpt"]
    assert ecdf.data[0].y[-1] == pytest.approx(1.0)


def test_row_difference_is_what_the_difference_bars_show():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((12, 20)).astype(np.float32)
    b = rng.standard_normal((12, 20)).astype(np.float32)
    per_row = rfig.row_difference(a, b)
    assert_close(torch.from_numpy(per_row), torch.from_numpy(
        a.astype(np.float64).sum(1) - b.astype(np.float64).sum(1)))
    assert rfig.rows_losing_more(a, b) == int((per_row > 0).sum())
    bars = np.asarray(rfig.difference_figure(a, b, "A", "B").data[1].x)
    assert_close(torch.from_numpy(bars), torch.from_numpy(per_row.astype(np.float32)))
    with pytest.raises(ValueError, match="shape"):
        rfig.row_difference(a, b[:4])
