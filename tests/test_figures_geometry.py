"""The pure geometry figure builders: bounded output, hover data, PNG export, maps."""

import numpy as np
import pytest
import torch

from obsviz import PRESETS, Geometry
from obsviz.figures.common import BLOCK_PALETTE, discrete_colorscale, fade, pool2d, pool_shape
from obsviz.figures.geometry import (
    MAX_WINDOW,
    column_map_figure,
    column_pattern,
    compute_maps,
    describe_offsets,
    layout_figure,
    layout_png,
    layout_window,
    overview_figure,
    row_coupling_figure,
    row_pattern,
    scope_outline_segments,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _cells(fig) -> int:
    """Values a figure sends to the browser: heatmap cells plus scatter points."""
    total = 0
    for trace in fig.data:
        if trace.type == "heatmap":
            total += np.asarray(trace.z).size
        elif trace.x is not None:
            total += len(trace.x)
    return total


@pytest.mark.parametrize("preset", PRESETS)
def test_compute_maps_match_the_engine(preset):
    geom = Geometry.preset(preset, (32, 48))
    maps = compute_maps(geom)
    assert torch.equal(maps.block.long(), geom.block_map())
    assert torch.equal(maps.scope.long(), geom.scope_map())
    assert torch.equal(maps.position.long(), geom.block_in_scope_map())
    assert maps.facts == Geometry.preset(preset, (32, 48)).facts()


def test_column_map_shows_pairs_eight_apart_for_coupled_2_4():
    maps = compute_maps(Geometry.preset("coupled-2:4", (16, 64)))
    _, columns, patterns = column_pattern(maps, row=0, c0=0, span=32)
    assert patterns == [(0, 8)]
    assert all(len(c) == 2 and c[1] - c[0] == 8 for c in columns)
    fig = column_map_figure(maps, 0, 0, 32)
    assert "c and c+8" in fig.layout.title.text


def test_row_coupling_shows_r_and_r_plus_8_for_block16():
    maps = compute_maps(Geometry.preset("block16", (32, 32)))
    _, rows, patterns = row_pattern(maps, col=0, r0=0, span=32)
    assert patterns == [(0, 8)]
    assert sorted(int(r[0]) for r in rows) == [*range(8), *range(16, 24)]
    assert "r and r+8" in row_coupling_figure(maps, 0, 0, 32).layout.title.text


def test_plain_nm_rows_decide_alone():
    maps = compute_maps(Geometry.preset("2:4", (16, 16)))
    assert row_pattern(maps, 0, 0, 16)[2] == [(0,)]
    assert not maps.facts.is_row_coupled


def test_layout_figure_is_bounded_for_a_4096_by_11008_layer():
    maps = compute_maps(Geometry.preset("coupled-2:4", (4096, 11008)))
    window = layout_window(maps, r0=4090, c0=10_990)        # clamped into W
    assert window.shape == MAX_WINDOW
    assert (window.r0, window.c0) == (4096 - 64, 11008 - 128)
    fig = layout_figure(window, nnz=2)
    budget = 4 * MAX_WINDOW[0] * MAX_WINDOW[1]              # cells + outlines + hatching
    assert _cells(fig) < budget
    for build in (column_map_figure(maps, 123, 5000), row_coupling_figure(maps, 5000, 123)):
        assert _cells(build) < 2_000
    assert _cells(overview_figure((4096, 11008), (0, 0, 64, 128),
                                  pool2d(torch.rand(4096, 11008), 12_000))) <= 12_001


def test_layout_hover_has_row_col_block_and_scope():
    geom = Geometry.preset("block16", (32, 32))
    maps = compute_maps(geom)
    heat = layout_figure(layout_window(maps), nnz=1).data[0]
    template = heat.hovertemplate
    for word in ("row", "col", "block", "scope"):
        assert word in template
    custom = np.asarray(heat.customdata)
    r, c = 9, 20
    assert custom[r, c].tolist()[:4] == [r, c, int(geom.block_map()[r, c]),
                                         int(geom.scope_map()[r, c])]


def test_example_mask_prunes_gs_minus_nnz_blocks_per_scope():
    geom = Geometry.preset("2:4-pairs", (8, 32))
    window = layout_window(compute_maps(geom))
    pruned = window.pruned(2)
    assert pruned.mean() == pytest.approx(geom.sparsity(2))
    assert window.pruned(None) is None


def test_scope_outlines_enclose_2_4_groups():
    scope = Geometry.preset("2:4", (2, 8)).scope_map().numpy()
    segs = scope_outline_segments(scope)
    verticals = {x0 for x0, y0, x1, y1 in segs if x0 == x1}
    assert verticals == {-0.5, 3.5, 7.5}                   # frame + the boundary between groups


def test_layout_png_is_a_png():
    window = layout_window(compute_maps(Geometry.preset("coupled-2:4", (16, 32))))
    assert layout_png(window, nnz=2).startswith(PNG_MAGIC)
    assert layout_png(window).startswith(PNG_MAGIC)


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_pool2d_bounds_cells_and_reduces(reduce):
    x = torch.arange(100 * 300, dtype=torch.float32).view(100, 300)
    pooled, re, ce = pool2d(x, 1_000, reduce=reduce)
    assert pooled.size <= 1_000
    assert (re[0], re[-1], ce[0], ce[-1]) == (0, 100, 0, 300)
    block = x[re[1]:re[2], ce[3]:ce[4]]
    want = block.mean() if reduce == "mean" else block.max()
    assert pooled[1, 3] == pytest.approx(float(want))


def test_pool2d_leaves_small_maps_alone():
    x = np.ones((4, 5))
    pooled, re, ce = pool2d(x, 100)
    assert pooled.shape == (4, 5) and list(re) == [0, 1, 2, 3, 4]
    assert pool_shape((4096, 11008), 40_000)[0] * pool_shape((4096, 11008), 40_000)[1] <= 40_000
    with pytest.raises(ValueError, match="reduce"):
        pool2d(x, 10, reduce="median")


def test_palette_helpers():
    scale = discrete_colorscale(list(BLOCK_PALETTE))
    assert scale[0] == [0.0, BLOCK_PALETTE[0]] and scale[-1] == [1.0, BLOCK_PALETTE[-1]]
    assert fade("#000000", 0.5) == "#808080"


def test_describe_offsets():
    assert describe_offsets((0, 8)) == "columns c and c+8"
    assert describe_offsets((0,), "row", "r") == "a single row"
    assert describe_offsets(tuple(range(16))) == "16 neighbouring columns (c … c+15)"
