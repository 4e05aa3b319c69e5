"""Compare in a real browser, as an analyst finds it: a layer file of their own (a long layer
name) uploaded on Prune, all nine methods run on two geometries, then compared.

What is checked is what people see: panel titles that never overlap, bar labels and values that
are not cut, a legend beside the curves rather than on them, a row of maps per geometry.
"""

from __future__ import annotations

import re

import pytest
from test_browser import METHODS_ALL, choose

from obsviz import layers as L

pytestmark = pytest.mark.e2e

LONG_NAME = "encoder.layer.3.intermediate.dense"
#: Rows pruned per method: a row sample keeps nine methods × two geometries short on a CPU.
ROWS = 16


@pytest.fixture(scope="module")
def layer_file(tmp_path_factory):
    """The real 1536 × 384 MiniLM MLP layer, saved under its full module name."""
    sample = L.load_sample_layer("layer0.mlp_up")
    path = tmp_path_factory.mktemp("upload") / "my-minilm-layers.safetensors"
    L.save_layers(path, [L.Layer(name=LONG_NAME, weight=sample.weight, hessian=sample.hessian,
                                 nsamples=sample.nsamples)])
    return path


def boxes(app, selector: str) -> list[dict]:
    """Bounding boxes (page pixels) of every visible element matching ``selector``."""
    return app.page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].map(e => {
            const r = e.getBoundingClientRect();
            return {x: r.left, y: r.top, w: r.width, h: r.height, text: e.textContent};
        }).filter(b => b.w > 0 && b.h > 0)""", selector)


def overlap(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["w"] - 0.5 and b["x"] < a["x"] + a["w"] - 0.5
            and a["y"] < b["y"] + b["h"] - 0.5 and b["y"] < a["y"] + a["h"] - 0.5)


def pick_all_methods(app) -> None:
    """Add every method to the Prune page's "Methods" box, one option per rerun."""
    box = app.page.locator('[data-testid="stMultiSelect"]').filter(
        has=app.page.get_by_role("combobox", name="Methods", exact=True))
    for _ in range(len(METHODS_ALL)):
        if box.locator("[data-tag]").count() == len(METHODS_ALL):
            break
        app.page.get_by_role("combobox", name="Methods", exact=True).click()
        app.page.get_by_role("option").first.click()
        app.page.keyboard.press("Escape")
        app.settle().check()
    assert box.locator("[data-tag]").count() == len(METHODS_ALL)


def run_all(app, preset: str) -> None:
    """Run every method with ``preset`` (from the Prune page's own preset box)."""
    app.page.get_by_text("a preset here", exact=True).click()
    app.settle().check()
    choose(app, "Preset", preset)
    app.page.get_by_role("button", name=re.compile(r"^\W*Run$")).click()
    app.page.wait_for_timeout(1000)
    app.settle().check()          # the whole run: nine methods, one after the other
    done = app.page.locator('[data-testid="stMain"]').get_by_text(
        re.compile(r"relative error \d+\.\d\d %"))
    assert done.count() >= len(METHODS_ALL), done.all_inner_texts()


def test_nine_methods_on_two_geometries_of_an_uploaded_layer(app, layer_file):
    app.SETTLE_TIMEOUT = 900_000   # ms: nine methods per run on a shared 2-core machine
    app.open("/prune").check()
    app.page.get_by_text("Upload a file", exact=True).click()
    app.settle().check()
    app.page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        str(layer_file))
    # the layer is loaded: the page names its shape (its name is in the layer box)
    app.page.locator('[data-testid="stMain"]').get_by_text("W 1536 × 384").first.wait_for(
        timeout=120_000)
    app.settle().check()
    pick_all_methods(app)
    app.page.get_by_text("First N rows", exact=True).click()
    app.settle().check()
    n_box = app.page.get_by_role("spinbutton", name="N", exact=True)
    n_box.fill(str(ROWS))
    n_box.press("Enter")
    app.settle().check()
    run_all(app, "2:4")
    run_all(app, "block16")

    app.go("Compare").check()
    # the latest run is shown by default: block16's nine (the picker names each run uniquely
    # among all 18 of the session; the charts only by what differs between the shown ones)
    tags = app.page.locator('[data-testid="stMultiSelect"] [data-tag]')
    picked = [t.get_attribute("aria-label") for t in tags.all()]
    assert sorted(p.split(" · ")[0] for p in picked) == sorted(METHODS_ALL)
    assert all("block16" in p for p in picked), picked
    app.page.get_by_role("button", name=re.compile(r"^Newest layer \(18\)")).click()
    app.settle().check()
    assert tags.count() == 18
    app.shot("compare-nine-methods-two-geometries")

    charts = app.page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot')
    maps = charts.nth(2)
    titles = [t.strip() for t in maps.locator(".annotation-text").all_text_contents()]
    # a row per geometry, named once (nnz differs too: 2 of 4, 1 of 2 blocks of 16)
    assert [t for t in titles if " · " in t] == ["2:4 · nnz=2", "block16 · nnz=1"]
    for method in METHODS_ALL:
        assert titles.count(method) == 2, (method, titles)               # above each other
    assert maps.locator("image").count() == 18                           # images, not cells

    # no two titles of the maps overlap
    found = boxes(app, ".js-plotly-plot .annotation-text")
    for i, a in enumerate(found):
        for b in found[i + 1:]:
            assert not overlap(a, b), (a, b)

    # the bar chart: every method named in full and every value printed, inside the figure
    bar = charts.nth(0)
    frame = bar.bounding_box()
    for sel in (".ytick text", ".bartext"):
        for box in bar.locator(sel).all():
            b = box.bounding_box()
            assert b and b["x"] >= frame["x"] - 1 and b["x"] + b["width"] <= \
                frame["x"] + frame["width"] + 1, (sel, box.text_content())
    names = {t.strip() for t in bar.locator(".ytick text").all_text_contents()}
    assert names == set(METHODS_ALL)
    assert all(re.fullmatch(r"\d+\.\d\d %", t.strip())
               for t in bar.locator(".bartext").all_text_contents())

    # the per-row distribution: its legend beside the curves, never on them
    rows = charts.nth(1)
    legend = rows.locator(".legend").bounding_box()
    plot = rows.locator(".nsewdrag").first.bounding_box()
    assert legend["x"] >= plot["x"] + plot["width"] - 1

    # a layer's long name is shown in full where the layer is named
    assert LONG_NAME in app.main_text().replace("\u2060", "")
