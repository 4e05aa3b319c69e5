"""The Learn page in a real browser: 2:4, coupled-2:4 and the row-coupled block16, stepped to the
end; the step titles, the KaTeX numbers and the error chart as a reader sees them. Screenshots:
``learn-2-4``, ``learn-coupled-2-4``, ``learn-block16`` (and ``-done``)."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.e2e


def choose(app, label: str, option: str) -> None:
    app.page.get_by_role("combobox", name=label, exact=True).click()
    app.page.get_by_role("option", name=option, exact=True).click()
    app.page.keyboard.press("Escape")
    app.settle().check()


def forward(app) -> None:
    app.page.get_by_role("button", name=re.compile(r"Step forward$")).click()
    app.settle().check()


def katex_text(app) -> str:
    """What the KaTeX formulas show (their rendered text)."""
    return " ".join(app.page.locator(".katex-html").all_inner_texts())


def test_learn_2_4_numbers_read_right(app):
    app.open("/learn").check()
    forward(app)
    text = app.main_text()
    assert "Step 1: the scope of columns 0–3" in text
    assert "Why Σ ε is larger than the error" in text
    assert re.search(r"\d+\.\d\d %", text)
    shown = katex_text(app)
    assert not re.search(r"\de\s*[−-]\s*\d", shown), shown     # no "4.8e − 4"
    app.shot("learn-2-4")


def test_learn_coupled_2_4_titles_the_real_columns(app):
    app.open("/learn").check()
    choose(app, "Pattern", "coupled-2:4")
    forward(app)
    assert "Step 1: the scope of columns 0–3, 8–11" in app.main_text()
    app.shot("learn-coupled-2-4")


def test_learn_block16_steps_two_rows_together(app):
    app.open("/learn").check()
    choose(app, "Pattern", "block16")
    app.page.get_by_role("button", name=re.compile(r"Use the layer")).click()
    app.settle().check()
    choose(app, "Columns", "32")
    assert "couples rows" in app.main_text()
    forward(app)
    text = app.main_text()
    assert "Step 1: the scope of rows 0 and 8, columns 0–15" in text
    app.shot("learn-block16")
    forward(app)
    app.page.get_by_text("Done: all 2 scopes decided").wait_for()
    app.shot("learn-block16-done")
