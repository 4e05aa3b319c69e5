"""The app's structure and guards in a real browser: the navigation of a cold server's first
session, the shared sidebar, user text shown as text, the field in error marked (and only it),
and how fast a Geometry preset switch redraws."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest

from obsviz import layers as L

pytestmark = pytest.mark.e2e

TITLES = ["Home", "Geometry", "Prune", "Compare", "Model", "Sensitivity", "Sweep", "Learn"]
#: A layer name and a file name that would fetch, link, colour and typeset if rendered as markup.
EVIL_LAYER = "![x](http://127.0.0.1:9/u.png) :red[boo] $x^2$"
EVIL_FILE = "[Click to fix](http://127.0.0.1:9/fix).safetensors"


def test_a_cold_servers_first_session_at_a_page_link_gets_the_apps_navigation(cold_start):
    # the suite's first tab opened /geometry?pattern=block16 on the cold server (conftest):
    # the app's page titles, never the raw files of pages/ ("app", "geometry", …)
    assert cold_start["nav"] == TITLES, cold_start["nav"]
    assert "Device" in cold_start["sidebar"] and "Layer" in cold_start["sidebar"]


@pytest.mark.parametrize("path", ["/learn", "/model", "/sweep"])
def test_a_cold_servers_first_session_at_any_page_gets_the_apps_navigation(cold_app, path: str):
    # the suite's own server went cold to /geometry; each of these gets a cold server of its own
    tab = cold_app(path)
    side = tab.page.locator('[data-testid="stSidebar"]')
    try:   # the first run restarts through app.py: wait for its sidebar, then read it
        for name in ("Device", "Layer"):
            side.get_by_role("combobox", name=name, exact=True).wait_for(timeout=60_000)
    finally:
        tab.shot(f"cold-{path.strip('/')}")
    assert tab.navigation() == TITLES, (path, tab.navigation())


def test_every_page_has_the_shared_sidebar_once(app):
    for path in ("/geometry", "/prune", "/compare", "/model", "/sweep", "/learn"):
        app.open(path).check()
        assert app.navigation() == TITLES
        side = app.page.locator('[data-testid="stSidebar"]')
        assert side.get_by_role("combobox", name="Device", exact=True).count() == 1, path
        assert side.get_by_role("combobox", name="Layer", exact=True).count() == 1, path


def test_only_the_field_in_error_gets_the_red_ring(app):
    app.open("/geometry?pattern=2:4&weight=64,128&nnz=2").check()
    nnz = app.page.get_by_role("textbox", name="nnz (blocks kept per scope)", exact=True)
    nnz.fill("abc")
    nnz.press("Enter")
    app.settle().check()
    assert "nnz='abc' is not a whole number" in app.main_text()

    def border(key: str) -> str:
        box = app.page.locator(f'.st-key-{key} [data-testid="stTextInputRootElement"]')
        return box.evaluate("e => getComputedStyle(e).borderColor")

    weight = app.page.get_by_role("textbox", name="Weight shape (M, K)", exact=True)
    weight.click()          # focused, and fine: the theme's blue, not the error's red
    app.page.wait_for_timeout(300)
    assert border("_g_nnz") == "rgb(255, 75, 75)"
    assert border("_g_weight") == "rgb(28, 109, 208)"
    app.shot("geometry-field-in-error")


def test_hostile_layer_and_file_names_are_shown_as_text(app, tmp_path: Path):
    layer = dataclasses.replace(L.load_sample_layer("toy"), name=EVIL_LAYER)
    path = tmp_path / "upload.safetensors"
    L.save_layers(path, [layer])
    app.open("/prune").check()
    app.page.get_by_text("Upload a file", exact=True).click()
    app.settle().check()
    app.page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        files=[{"name": EVIL_FILE, "mimeType": "application/octet-stream",
                "buffer": path.read_bytes()}])
    app.page.get_by_text("W 8 × 16").first.wait_for(timeout=60_000)
    app.settle().check()
    for where in ("/prune", "/geometry"):
        if where != "/prune":
            app.go("Geometry").check()
        page = app.page
        shown = page.locator('[data-testid="stMain"]').inner_text() + \
            page.locator('[data-testid="stSidebar"]').inner_text()
        assert ":red[boo]" in shown.replace("\u2060", ""), where   # the name, as typed
        live = page.locator('[data-testid="stMain"], [data-testid="stSidebar"]')
        assert live.locator('img[src*="127.0.0.1:9"]').count() == 0, where
        assert live.locator('a[href*="127.0.0.1:9"]').count() == 0, where
        assert live.locator(".katex").count() == 0, where
        app.shot(f"hostile-names{where.replace('/', '-')}")


def test_a_geometry_preset_switch_redraws_fast(app, shots_dir: Path):
    expected = {"coupled-2:4": "touches columns c and c+8",
                "block16": "touches 16 neighbouring columns",
                "2:4": "every block here touches a single column"}
    app.open("/geometry").check()
    app.page.locator(".js-plotly-plot .gtitle", has_text=expected["2:4"]).first.wait_for()
    timings: dict[str, list[float]] = {p: [] for p in expected}
    for _ in range(2):
        for preset, title in expected.items():
            start = time.perf_counter()
            app.page.get_by_role("combobox", name="Pattern", exact=True).click()
            app.page.get_by_role("option", name=preset, exact=True).click()
            app.page.locator(".js-plotly-plot .gtitle", has_text=title).first.wait_for()
            timings[preset].append(round(time.perf_counter() - start, 3))
    app.settle().check()
    (shots_dir / "timings-geometry-preset-switch.json").write_text(json.dumps(timings))
    cached = [t for ts in timings.values() for t in ts[1:]]
    # a guard against the seconds an eager drawing used to cost (benchmarks/bench_app.py
    # measures the real figure on a quiet machine)
    assert max(cached) < 5.0, timings
    assert re.search(r"Geometry explorer", app.main_text())
