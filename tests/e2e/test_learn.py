"""The Learn page in a real browser at a laptop's 1366 × 768: 2:4 and coupled-2:4 stepped through,
and the row-coupled block16 on the coupled toy walked to the end with a step overruled by a click
on its cost bar; the step titles, the KaTeX numbers, the paths as a reader sees them.

Screenshots (the whole page, and the window as it stands): ``learn-2-4``, ``learn-coupled-2-4``,
``learn-block16-refused``, ``learn-block16-step1``, ``learn-block16-overruled`` (+ ``-window``),
``learn-block16-done``."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e

LAPTOP = {"width": 1366, "height": 768}


def choose(app, label: str, option: str) -> None:
    app.page.locator('[data-testid="stMain"]').get_by_role(
        "combobox", name=label, exact=True).click()
    app.page.get_by_role("option", name=option, exact=True).click()
    app.page.keyboard.press("Escape")
    app.settle().check()


def forward(app) -> None:
    app.page.get_by_role("button", name=re.compile(r"Step forward$")).click()
    app.settle().check()


def katex_text(app) -> str:
    """What the KaTeX formulas show (their rendered text)."""
    return " ".join(app.page.locator(".katex-html").all_inner_texts())


def window_shot(app, name: str) -> None:
    """The window as a laptop shows it (no resizing to the whole page)."""
    app.page.screenshot(path=str(app.shots / f"{name}.png"))


def open_learn(app):
    app.page.set_viewport_size(LAPTOP)
    return app.open("/learn").check()


def test_learn_2_4_numbers_read_right(app):
    open_learn(app)
    forward(app)
    text = app.main_text()
    assert "Step 1: the scope of columns 0–3" in text
    assert "Why Σ ε is larger than the error" in text
    assert re.search(r"\d+\.\d\d %", text)
    shown = katex_text(app)
    assert not re.search(r"\de\s*[−-]\s*\d", shown), shown     # no "4.8e − 4"
    app.shot("learn-2-4")


def test_learn_coupled_2_4_titles_the_real_columns(app):
    open_learn(app)
    choose(app, "Geometry", "coupled-2:4")
    forward(app)
    assert "Step 1: the scope of columns 0–3, 8–11" in app.main_text()
    app.shot("learn-coupled-2-4")


def test_learn_block16_on_the_coupled_toy_with_a_step_overruled(app):
    """block16 is refused on the 8 × 16 toy with what would fit; on the coupled toy it walks rows
    0 and 8 through four scopes; a click on the other bar of step 1 overrules OBS, and the lesson
    goes on from that choice beside OBS's path, to the end."""
    open_learn(app)
    choose(app, "Geometry", "block16")
    text = app.main_text()
    assert "cannot be shown at lesson size (W 8 × 16)" in text
    assert "It fits the coupled toy" in text
    app.shot("learn-block16-refused")
    app.page.get_by_role("button", name="Use the coupled toy (16 × 64), 64 columns").click()
    app.settle().check()
    text = app.main_text()
    assert "couples rows" in text and "Step 0 of 4" in text
    forward(app)
    text = app.main_text()
    assert "Step 1: the scope of rows 0 and 8, columns 0–15" in text
    assert "nothing pruned here, and its weights stay as they were" in text
    app.shot("learn-block16-step1")

    bars = app.page.locator('[class*="st-key-_l_costs_"] .point path')
    assert bars.count() == 4                       # two candidates, priced two ways
    picked = app.page.get_by_role("combobox", name="Prune instead").input_value()
    other = bars.nth(0 if picked == "row 8: 0–15" else 1)   # the ε bar OBS did not pick
    other.scroll_into_view_if_needed()
    app.page.wait_for_timeout(300)
    box = other.bounding_box()
    app.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.7)
    app.settle().check()
    text = app.main_text()
    assert "You overruled OBS at step 1" in text
    assert "OBS's path" in text and "You pruned" in text
    app.page.get_by_text("Step 1: the scope of rows 0 and 8").first.scroll_into_view_if_needed()
    window_shot(app, "learn-block16-overruled-window")
    app.shot("learn-block16-overruled")
    for _ in range(3):
        forward(app)
    app.page.get_by_text("Done: all 4 scopes decided").wait_for()
    text = app.main_text()
    assert "Your path ends at" in text and "points" in text
    app.shot("learn-block16-done")
