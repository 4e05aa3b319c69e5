"""The result figure builders: labels that say only what differs, exact pooled maps, bounded
images with one colour scale and linked zoom, charts that tell methods and settings apart."""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from obsviz import METHODS, Geometry, load_sample_layer, prune
from obsviz.figures import results as rfig
from obsviz.metrics import element_contribution, format_rel_error, row_error, row_rel_error

LONG = "mine.safetensors · encoder.layer.3.intermediate.dense"


def desc(method, geometry="2:4", nnz=2, layer="layer0.query", **options):
    return {"method": method, "options": options, "geometry": geometry, "nnz": f"nnz={nnz}",
            "sample": "all rows", "damp": "damp=0.01", "device": "cpu", "layer": layer}


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


# ---- labels -----------------------------------------------------------------------------------


def test_nine_methods_on_one_setting_are_called_by_their_method_only():
    labels = rfig.short_labels([desc(m, layer=LONG, **({"ng": 8} if m == "true_obs" else {}))
                                for m in METHODS])
    assert [lab.short for lab in labels] == list(METHODS)
    assert {lab.setting for lab in labels} == {""}
    full = labels[METHODS.index("true_obs")].full
    assert full == f"true_obs (ng=8) · 2:4 · nnz=2 · all rows · damp=0.01 · cpu · {LONG}"


def test_two_geometries_add_only_the_geometry():
    shown = [desc(m, g, layer=LONG) for g in ("2:4", "block16") for m in ("full", "sparsegpt")]
    labels = rfig.short_labels(shown)
    assert [lab.short for lab in labels] == ["full · 2:4", "sparsegpt · 2:4", "full · block16",
                                             "sparsegpt · block16"]
    assert [lab.variant for lab in labels] == ["full", "sparsegpt", "full", "sparsegpt"]
    assert rfig.settings_of(labels) == ["2:4", "block16"]


def test_options_layers_and_duplicates():
    shown = [desc("true_obs", ng=8, chunk_size=16), desc("true_obs", ng=64, chunk_size=16),
             desc("full", layer="layer0.key"), desc("full", layer="layer0.key")]
    labels = rfig.short_labels(shown)
    # options that differ between results of the same method, and only those
    assert labels[0].variant == "true_obs (ng=8)" and labels[1].variant == "true_obs (ng=64)"
    # the layer differs between the shown results; two identical results are numbered
    assert [lab.short for lab in labels] == [
        "true_obs (ng=8) · layer0.query", "true_obs (ng=64) · layer0.query",
        "full · layer0.key", "full #2 · layer0.key"]
    assert len({lab.short for lab in labels}) == 4
    with pytest.raises(ValueError, match="method"):
        rfig.short_labels([{"geometry": "2:4"}])


def test_variants_follow_the_registry_order_and_the_what_if_table():
    labels = rfig.short_labels([desc("sparsegpt", "block16"), desc("true_obs", "2:4"),
                                desc("true_obs", "coupled-2:4"), desc("true_obs", "block16")])
    assert rfig.variants_of(labels) == ["true_obs", "sparsegpt"]
    rows, cols, cells = rfig.error_by_variant(labels, [0.4, 0.1, 0.2, 0.3])
    assert rows == ["true_obs", "sparsegpt"] and cols == ["block16", "2:4", "coupled-2:4"]
    assert cells == [[0.3, 0.1, 0.2], [0.4, None, None]]


# ---- maps -------------------------------------------------------------------------------------


def test_result_maps_are_exact_tile_means_of_the_full_maps():
    layer = load_sample_layer("layer0.mlp_up")            # (1536, 384), real H
    geom = Geometry.preset("2:4", layer.shape)
    res = prune(layer.weight, layer.hessian, geom, 2, method="sparsegpt")
    # a small tile budget and a small band: several bands, uneven tiles
    maps = rfig.result_maps(layer.weight, layer.hessian, res.weight, res.mask, max_cells=3000,
                            chunk_elements=100_000)
    full = element_contribution(layer.weight, res.weight, layer.hessian).numpy()
    for kind, reference in (("error", full), ("mask", res.mask.double().numpy()),
                            ("delta", (res.weight - layer.weight).double().abs().numpy())):
        t = maps.get(kind)
        assert t.z.size <= 3000 and t.span == (0, 1536, 0, 384)
        expect = rfig.tiles(reference, 3000)
        # float32 maps to look at, against the float64 reference: within 1e-5 of the map's scale
        np.testing.assert_allclose(t.z, expect.z, rtol=1e-4, atol=1e-5 * np.abs(expect.z).max())
        # each tile the mean of exactly the weights it covers
        i, j = 5, 7
        r0, r1 = t.row_edges[i:i + 2]
        c0, c1 = t.col_edges[j:j + 2]
        assert t.z[i, j] == pytest.approx(reference[r0:r1, c0:c1].mean(), rel=1e-4,
                                          abs=1e-5 * float(np.abs(expect.z).max()))
    # the error map's rows sum to each row's error ΔW_r H ΔW_rᵀ; tiles × areas to the total
    assert_close(torch.from_numpy(maps.row_error),
                 row_error(layer.weight, res.weight, layer.hessian), rtol=1e-4, atol=0)
    area = np.outer(np.diff(maps.error.row_edges), np.diff(maps.error.col_edges))
    assert (maps.error.z * area).sum() == pytest.approx(maps.row_error.sum(), rel=1e-5)
    assert_close(torch.from_numpy(maps.row_rel_error),
                 row_rel_error(layer.weight, res.weight, layer.hessian).float(), rtol=1e-4,
                 atol=0)
    assert maps.mask.z.mean() == pytest.approx(0.5, abs=1e-3)


def test_row_sample_maps_cover_the_sampled_rows():
    layer = load_sample_layer("toy")
    geom = Geometry.preset("2:4", layer.shape)
    rows = torch.tensor([1, 4, 6])
    res = prune(layer.weight, layer.hessian, geom, 2, method="full", rows=rows)
    maps = rfig.result_maps(layer.weight, layer.hessian, res.weight, res.mask, rows=rows)
    assert maps.row_rel_error.shape == (3,) and maps.mask.z.shape == (8, 16)
    assert set(np.flatnonzero(maps.row_error)) <= {1, 4, 6}


def test_window_maps_show_every_weight_and_their_row_sums():
    layer = load_sample_layer("layer0.query")
    geom = Geometry.preset("2:4", layer.shape)
    res = prune(layer.weight, layer.hessian, geom, 2, method="full")
    maps, row_sums = rfig.window_maps(layer.weight, layer.hessian, res.weight, res.mask,
                                      (8, 24, 32, 96))
    full = element_contribution(layer.weight, res.weight, layer.hessian).numpy()
    t = maps["error"]
    assert t.z.shape == (16, 64) and t.span == (8, 24, 32, 96) and t.tile == (1.0, 1.0)
    scale = np.abs(full).max()
    np.testing.assert_allclose(t.z, full[8:24, 32:96], rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(row_sums, full[8:24, 32:96].sum(1), rtol=1e-4, atol=1e-5 * scale)
    assert (maps["mask"].z == res.mask[8:24, 32:96].float().numpy()).all()
    # clamped to W
    clamped, _ = rfig.window_maps(layer.weight, layer.hessian, res.weight, res.mask,
                                  (380, 500, 370, 999))
    assert clamped["delta"].span == (380, 384, 370, 384)


def test_pooling_tiles_again_keeps_exact_means():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((97, 61))
    fine = rfig.tiles(a, 1500)
    coarse = fine.pool(200)
    assert coarse.z.size <= 200 and coarse.span == (0, 97, 0, 61)
    direct = [[a[r0:r1, c0:c1].mean() for c0, c1 in zip(coarse.col_edges[:-1],
                                                         coarse.col_edges[1:], strict=True)]
              for r0, r1 in zip(coarse.row_edges[:-1], coarse.row_edges[1:], strict=True)]
    np.testing.assert_allclose(coarse.z, np.array(direct), rtol=1e-5, atol=1e-6)
    assert fine.pool(10**6) is fine


# ---- images -----------------------------------------------------------------------------------


def test_colour_image_hits_the_scale_ends_and_clips():
    z = np.array([[-2.0, -1.0, 0.0], [1.0, 5.0, np.nan]])
    img = rfig.colour_image(z, rfig.DIVERGING, -1.0, 1.0)
    hexes = ["#{:02X}{:02X}{:02X}".format(*px) for px in img.reshape(-1, 3)]
    assert hexes[:5] == ["#2166AC", "#2166AC", "#F7F7F7", "#B2182B", "#B2182B"]
    assert hexes[5] == "#FFFFFF"
    back = decode(rfig.png_data_uri(img))
    assert (back == img).all()


def panels(maps: dict[str, np.ndarray], setting_of=lambda name: "2:4"):
    descs = [desc(name.split()[0], setting_of(name)) for name in maps]
    labels = rfig.short_labels(descs)
    return [rfig.Panel(lab, rfig.tiles(m)) for lab, m in zip(labels, maps.values(), strict=True)]


def test_side_by_side_of_nine_results_sends_bounded_images_not_matrices():
    rng = np.random.default_rng(0)
    maps = {m: rng.random((4096, 4096), dtype=np.float32) for m in METHODS}
    fig = rfig.side_by_side(panels(maps), "error")
    assert [t.type for t in fig.data].count("image") == 9
    assert not any(t.type == "heatmap" for t in fig.data)
    assert rfig.image_pixels(fig) <= rfig.MAX_PIXELS
    assert len(fig.to_json()) < 3_000_000


def test_panels_share_one_colour_scale_and_linked_zoom():
    a = np.full((8, 16), 1.0)
    b = np.full((8, 16), 3.0)
    b[0, 0] = -2.0
    fig = rfig.side_by_side(panels({"full": a, "sparsegpt": b, "magnitude": a}), "error")
    ca = fig.layout.coloraxis
    assert ca.cmin == -ca.cmax and ca.cmax >= 3.0 and ca.cmid == 0
    assert fig.layout.xaxis2.matches == "x" and fig.layout.yaxis3.matches == "y"
    images = {t.hovertemplate.removeprefix("<b>").split(" ")[0]: t for t in fig.data
              if t.type == "image"}
    assert list(images) == ["full", "magnitude", "sparsegpt"]   # the registry's order
    # one scale: sparsegpt's 3.0 is the darkest red, full's 1.0 lighter in the same scale
    top = rfig.colour_image(np.array([[ca.cmax]]), rfig.DIVERGING, ca.cmin, ca.cmax)[0, 0]
    assert (decode(images["sparsegpt"].source)[3, 3] == top).all()
    assert not (decode(images["full"].source)[3, 3] == top).all()
    mask = rfig.side_by_side(panels({"full": a, "sparsegpt": a}), "mask").layout.coloraxis
    assert (mask.cmin, mask.cmax) == (0.0, 1.0)


def test_images_sit_on_the_weights_they_show():
    a = np.zeros((4096, 1024))
    fig = rfig.side_by_side(panels({"full": a}), "delta")
    img = fig.data[0]
    w, h = Image.open(io.BytesIO(base64.b64decode(img.source.split(",")[1]))).size
    # first pixel centred in the first tile, the last ending at the last weight's edge
    assert img.x0 - img.dx / 2 == pytest.approx(-0.5)
    assert img.x0 + (w - 0.5) * img.dx == pytest.approx(1023.5)
    assert img.y0 + (h - 0.5) * img.dy == pytest.approx(4095.5)
    assert tuple(fig.layout.yaxis.range) == (4095.5, -0.5)   # row 0 on top


def test_window_tiles_draw_every_weight():
    a = np.arange(64 * 128, dtype=np.float32).reshape(64, 128)
    t = rfig.tiles(a[8:24, 32:64], r0=8, c0=32)
    fig = rfig.side_by_side([rfig.Panel(rfig.short_labels([desc("full")])[0], t)], "delta")
    img = fig.data[0]
    assert decode(img.source).shape == (16, 32, 3)
    assert (img.x0, img.dx, img.y0, img.dy) == (32, 1, 8, 1)
    assert fig.layout.meta["tiles"] == ""


def test_geometries_are_rows_methods_columns_and_titles_fit_their_panels():
    a = np.zeros((1536, 384))
    maps = {f"{m} {g}": a for g in ("2:4", "block16") for m in METHODS}
    fig = rfig.side_by_side(panels(maps, lambda name: name.split()[1]), "error")
    titles = [an for an in fig.layout.annotations if an.hovertext and "<b>" not in an.text]
    headers = [an.text for an in fig.layout.annotations if "<b>" in an.text]
    assert headers == ["<b>2:4</b>", "<b>block16</b>"]
    assert [t.text for t in titles] == list(METHODS) * 2
    # the same method in the same column: one x position per method, above each other
    xs = {}
    for t in titles:
        xs.setdefault(t.text, set()).add(round(t.x, 6))
    assert all(len(v) == 1 for v in xs.values())
    # 2:4's panels above block16's
    ys = [t.y for t in titles]
    assert min(ys[:9]) > max(ys[9:])


def test_long_titles_are_cut_to_their_panel_with_the_full_text_on_hover():
    a = np.zeros((384, 384))
    shown = [desc("true_obs", ng=n, chunk_size=c, order="right_to_left_but_longer")
             for n, c in ((8, 16), (64, 32), (8, 32), (64, 16))] + [desc(m) for m in METHODS[:4]]
    labels = rfig.short_labels(shown)
    fig = rfig.side_by_side([rfig.Panel(lab, rfig.tiles(a)) for lab in labels], "error",
                            width_hint=900)
    n_cols = rfig.grid_columns(len(rfig.variants_of(labels)), 1.0, 900 - 150)
    panel_px = (900 - 150) / n_cols
    for an in fig.layout.annotations:
        assert len(an.text) * 0.58 * 13 <= panel_px + 1, an.text
    titles = {an.hovertext.split(" · ")[0]: an.text for an in fig.layout.annotations}
    # too long for the panel: the option values only, still telling the variants apart
    assert titles["true_obs (ng=64, chunk_size=32, order=right_to_left_but_longer)"] \
        == "true_obs (64, 32)"
    assert titles["interleaved"] == "interleaved"
    assert len(set(titles.values())) == len(titles)


def test_user_text_is_escaped_in_figures():
    evil = "<img src=x onerror=alert(1)>.safetensors · a"
    labels = rfig.short_labels([desc("full", layer=evil), desc("wanda", layer="b")])
    fig = rfig.side_by_side([rfig.Panel(lab, rfig.tiles(np.zeros((8, 16)))) for lab in labels],
                            "error")
    text = fig.to_json()
    assert "<img" not in text and "&lt;img" in text
    bar = rfig.error_bar_figure(labels, [0.1, 0.2])
    assert "<img" not in bar.to_json()


# ---- difference -------------------------------------------------------------------------------


def test_difference_is_red_where_the_first_loses_more_error():
    a = np.zeros((8, 16))
    b = np.zeros((8, 16))
    a[2, 3] = 5.0      # only A has error here
    b[6, 10] = 4.0     # only B has error here
    fig = rfig.difference_figure(rfig.tiles(a), rfig.tiles(b), a.sum(1) - b.sum(1), "A", "B")
    img = decode(fig.data[0].source)
    ca = fig.layout.coloraxis
    assert ca.cmid == 0 and ca.cmin == -ca.cmax
    red = rfig.colour_image(np.array([[5.0]]), rfig.DIVERGING, ca.cmin, ca.cmax)[0, 0]
    blue = rfig.colour_image(np.array([[-4.0]]), rfig.DIVERGING, ca.cmin, ca.cmax)[0, 0]
    assert (img[2, 3] == red).all() and (img[6, 10] == blue).all()
    per_row = dict(zip(fig.data[1].y, fig.data[1].x, strict=True))
    assert per_row[2] > 0 > per_row[6]
    with pytest.raises(ValueError, match="covers"):
        rfig.difference_figure(rfig.tiles(a), rfig.tiles(np.zeros((4, 4))), a.sum(1), "A", "B")
    with pytest.raises(ValueError, match="row_diff"):
        rfig.difference_figure(rfig.tiles(a), rfig.tiles(b), a.sum(1)[:3], "A", "B")


def test_pooled_difference_is_the_difference_of_pooled_maps():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 200)), rng.standard_normal((300, 200))
    ta, tb = rfig.tiles(a, 2000), rfig.tiles(b, 2000)
    np.testing.assert_allclose(ta.z - tb.z, rfig.tiles(a - b, 2000).z, atol=1e-5)
    assert rfig.rows_losing_more(a.sum(1), b.sum(1)) == int((a.sum(1) > b.sum(1)).sum())
    # a row sample: rows 2.. untouched (error 0 in both) are not counted as "not worse"
    ra, rb = np.array([3.0, 1.0, 0, 0, 0]), np.array([1.0, 2.0, 0, 0, 0])
    assert rfig.rows_losing_more_text(ra, rb, "x", "y") == (
        "A = x: larger error than B = y in 1 of the 2 rows either pruned (5 in all).")
    assert rfig.rows_losing_more_text(ra[:2], rb[:2], "x", "y").endswith("in 1 of 2 rows.")
    with pytest.raises(ValueError, match="shape"):
        rfig.rows_losing_more(a.sum(1), b.sum(1)[:4])


# ---- charts -----------------------------------------------------------------------------------


def test_bar_chart_orders_colours_and_prints_percentages():
    labels = rfig.short_labels([desc("full"), desc("true_obs"), desc("magnitude")])
    bar = rfig.error_bar_figure(labels, [0.26, 0.21, 0.32])
    assert len(bar.data) == 1 and not bar.layout.showlegend
    assert list(bar.data[0].y) == ["true_obs", "full", "magnitude"]
    assert list(bar.data[0].text) == [format_rel_error(e) for e in (0.21, 0.26, 0.32)]
    assert bar.data[0].marker.color[0] == rfig.METHOD_COLOURS["true_obs"]
    assert bar.data[0].cliponaxis is False and bar.layout.yaxis.automargin
    assert bar.layout.xaxis.range[1] >= 32 * 1.2      # room for the printed value


def test_bar_chart_patterns_tell_geometries_apart():
    shown = [desc(m, g) for g in ("2:4", "block16") for m in ("full", "sparsegpt")]
    labels = rfig.short_labels(shown)
    bar = rfig.error_bar_figure(labels, [0.2, 0.17, 0.4, 0.35])
    assert [t.name for t in bar.data] == ["2:4", "block16"] and bar.layout.showlegend
    assert bar.data[0].marker.pattern.shape != bar.data[1].marker.pattern.shape
    # same colour for a method in both settings, methods by their best error
    assert list(bar.data[1].y) == ["sparsegpt", "full"]
    assert bar.data[0].marker.color == bar.data[1].marker.color
    assert bar.layout.legend.y > 1      # above the plot, not on the bars


def test_row_error_lines_dash_by_setting_with_the_legend_beside_the_plot():
    shown = [desc(m, g) for g in ("2:4", "block16") for m in ("full", "sparsegpt")]
    labels = rfig.short_labels(shown)
    rows = [torch.rand(100), np.random.rand(50), np.random.rand(100), torch.rand(10)]
    ecdf = rfig.row_error_figure(labels, rows)
    assert [t.name for t in ecdf.data] == ["full", "sparsegpt"] * 2
    assert ecdf.data[0].line.dash == ecdf.data[1].line.dash != ecdf.data[2].line.dash
    assert ecdf.data[0].line.color == ecdf.data[2].line.color
    assert ecdf.data[0].y[-1] == pytest.approx(1.0)
    assert ecdf.layout.legend.x > 1     # outside the plot area: it cannot cover a curve
    assert ecdf.data[0].x[-1] == pytest.approx(100 * float(rows[0].max()))   # in percent
