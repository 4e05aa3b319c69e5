"""The app in a real browser: every page opens, and each page's main interaction works.

Every step waits for the app to settle, then fails on any exception the page shows (Streamlit
renders them as ``stException``) or the browser raised. Each scenario saves a screenshot.
"""

from __future__ import annotations

import re

import pytest

from obsviz import METHODS as METHODS_ALL

pytestmark = pytest.mark.e2e

#: URL path (from app.py's url_path) -> what the browser tab's title and the page's h1 say.
PAGES = {
    "/": ("obsviz", "obsviz"),
    "/geometry": ("Geometry", "Geometry"),
    "/prune": ("Prune", "Prune"),
    "/compare": ("Compare", "Compare"),
    "/learn": ("Learn", "Learn"),
    "/model": ("Model", "Model"),
    "/sweep": ("Sweep", "Sweep"),
}

#: Quick methods for the Prune scenario (OBS modes and a baseline); true_obs runs long enough
#: (a second or so) for its progress bar to be seen.
METHODS = ("local", "true_obs", "sparsegpt")

#: Records, for the whole life of the tab, every progress bar text seen in view (not inside a
#: collapsed box) while a script runs.
WATCH_PROGRESS = """() => {
    window.__obsvizSeen = new Set();
    const look = () => document.querySelectorAll('[data-testid="stProgress"]').forEach(bar => {
        const shown = bar.checkVisibility() && !bar.closest('details:not([open])');
        if (shown) window.__obsvizSeen.add(bar.innerText.trim());
    });
    new MutationObserver(look).observe(document.body, {childList: true, subtree: true,
                                                      characterData: true});
}"""


def h1(app) -> str:
    return app.page.locator('[data-testid="stMain"] h1').first.inner_text()


def plot_titles(app) -> list[str]:
    """The titles of every plotly figure on the page (SVG text)."""
    return [t.strip() for t in app.page.locator(".js-plotly-plot .gtitle").all_text_contents()]


def choose(app, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox (or multiselect) labelled ``label``."""
    app.page.get_by_role("combobox", name=label, exact=True).click()
    app.page.get_by_role("option", name=option, exact=True).click()
    app.page.keyboard.press("Escape")
    app.settle().check()


def pick_methods(app, wanted: tuple[str, ...]) -> None:
    """Make the Prune page's "Methods" multiselect hold exactly ``wanted``."""
    box = app.page.locator('[data-testid="stMultiSelect"]').filter(
        has=app.page.get_by_role("combobox", name="Methods", exact=True))

    def chosen() -> list[str]:
        return [t.get_attribute("aria-label") for t in box.locator("[data-tag]").all()]

    for _ in range(12):                          # one change per rerun, read afresh each time
        extra = [name for name in chosen() if name not in wanted]
        missing = [name for name in wanted if name not in chosen()]
        if extra:
            box.get_by_role("button", name=f"Remove {extra[0]}", exact=True).click()
            app.settle().check()
        elif missing:
            choose(app, "Methods", missing[0])
        else:
            break
    assert sorted(chosen()) == sorted(wanted), chosen()


def finished_methods(app) -> list[str]:
    """Texts of the finished methods' success boxes (one per method run)."""
    done = app.page.locator('[data-testid="stMain"] [data-testid="stAlertContentSuccess"]')
    return [t.strip() for t in done.all_inner_texts()]


def assert_results(text: str, methods) -> None:
    """Each method is named with a relative error next to it."""
    for method in methods:
        assert re.search(rf"{method}\b.*relative error\W*\d+\.\d+", text), (method, text)


# ---- scenarios --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(PAGES))
def test_page_opens(app, path):
    tab_title, heading = PAGES[path]
    app.open(path).check()
    app.shot(f"open-{path.strip('/') or 'home'}")
    assert tab_title.lower() in app.page.title().lower(), app.page.title()
    assert heading.lower() in h1(app).lower(), h1(app)
    # A wrong url_path makes Streamlit show this dialog and run the home page instead.
    assert app.page.get_by_text("Page not found").count() == 0


def test_geometry_presets_redraw_the_maps(app):
    app.open("/geometry").check()
    box = app.page.get_by_role("combobox", name="Pattern", exact=True)
    assert box.input_value() == "2:4"
    app.page.get_by_text("every block here touches a single column").wait_for()
    before = plot_titles(app)
    app.shot("geometry-2_4")

    expected = {
        "block16": ("touches 16 neighbouring columns", "touches rows r and r+8"),
        "coupled-2:4": ("touches columns c and c+8", "every scope here touches a single row"),
    }
    for preset, texts in expected.items():
        choose(app, "Pattern", preset)
        assert box.input_value() == preset
        for text in texts:
            app.page.locator(".js-plotly-plot .gtitle", has_text=text).first.wait_for()
        after = plot_titles(app)
        assert after != before, f"switching to {preset} did not redraw the maps: {after}"
        before = after
        app.shot(f"geometry-{preset}")
    main = app.main_text()
    assert "coupled-2:4" in main and "Row-coupled" in main


@pytest.fixture(scope="module")
def session_tab(new_app):
    """One tab shared by the Prune and Compare scenarios: results live in its session."""
    return new_app()


def test_prune_runs_two_methods(session_tab):
    app = session_tab
    app.open("/prune").check()
    # a cold server may still be drawing the layer's line when the page first settles
    app.page.locator('[data-testid="stMain"]').get_by_text("W 384 × 384").first.wait_for(
        timeout=app.SETTLE_TIMEOUT)
    main = app.main_text()
    assert "Sample layer" in main and "W 384 × 384" in main, "no sample layer is loaded"
    pick_methods(app, METHODS)
    app.shot("prune-ready")

    app.page.evaluate(WATCH_PROGRESS)
    app.page.get_by_role("button", name=re.compile(r"^\W*Run$")).click()
    app.page.locator('[data-testid="stAlertContentSuccess"]').nth(len(METHODS) - 1).wait_for(
        timeout=app.SETTLE_TIMEOUT)
    app.settle().check()
    seen = app.page.evaluate("() => [...window.__obsvizSeen]")
    # bars in view without expanding anything, saying how long is left. Which bars the observer
    # catches depends on frame timing (quick methods may start and finish between two frames, on
    # a loaded machine more so): at least one bar with its time left must have been seen.
    assert any(t.split(":")[0] in METHODS for t in seen), seen
    assert any(re.search(r"(about \d+ (s|min)|under a second) left", t) for t in seen), seen

    labels = finished_methods(app)
    assert len(labels) == len(METHODS), labels
    assert_results("\n".join(labels), METHODS)
    app.shot("prune-results")
    app.pruned = True


def assert_heatmaps(app, methods) -> None:
    """Compare shows its charts, and the error heatmaps have one panel per method."""
    app.page.locator('[data-testid="stPlotlyChart"] .js-plotly-plot').first.wait_for()
    # the maps (error contribution first; one kind at a time) are the figure drawn as images
    error_maps = app.page.locator(".js-plotly-plot").filter(
        has=app.page.locator("image")).first
    error_maps.wait_for()
    panels = [p.strip() for p in error_maps.locator(".annotation-text").all_text_contents()]
    for method in methods:
        assert any(p.split(" ")[0] == method for p in panels), (method, panels)


def test_compare_shows_heatmaps_for_both(session_tab):
    """After the Prune scenario, in the same Streamlit session (reached through the sidebar:
    a reload would start a new session, without the results)."""
    app = session_tab
    if not getattr(app, "pruned", False):
        pytest.skip("needs the Prune scenario's results, and it did not finish in this run "
                    "(a fresh session is covered by the fast-modes scenario)")
    app.go("Compare").check()
    if app.page.get_by_role("button", name=re.compile("Run the fast modes")).count():
        pytest.fail("Compare offers to run the fast modes: the Prune results are not there")
    assert_heatmaps(app, METHODS)
    app.shot("compare-after-prune")


def test_compare_from_nothing_runs_the_fast_modes(app):
    """A fresh session on a layer nobody ran yet has nothing to compare (the run store keeps
    the other scenarios' runs, of other layers): Compare offers the fast modes and runs them."""
    app.open("/compare?layer=layer5.key").check()
    run = app.page.get_by_role("button", name=re.compile("Run the fast modes"))
    run.wait_for()
    offer = app.page.locator('[data-testid="stCaptionContainer"]').filter(has_text=" with ")
    fast = offer.first.inner_text().split(" on ")[0].split(", ")
    assert fast and all(m in METHODS_ALL for m in fast), fast
    app.shot("compare-empty")

    app.page.evaluate(WATCH_PROGRESS)
    run.click()
    app.page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=app.SETTLE_TIMEOUT)
    app.settle().check()
    assert app.page.evaluate("() => [...window.__obsvizSeen]"), "no progress showed"
    # the results Compare shows by default (its own choice), each one of the fast modes run
    box = app.page.locator('[data-testid="stMultiSelect"]').filter(
        has=app.page.get_by_role("combobox", name=re.compile(r"^Results")))
    shown = [t.get_attribute("aria-label").split(" ")[0] for t in box.locator("[data-tag]").all()]
    assert shown and set(shown) <= set(fast), (shown, fast)
    assert_heatmaps(app, shown)
    app.shot("compare-fast-modes")


def test_learn_steps_forward_and_back(app):
    app.open("/learn").check()
    counter = re.compile(r"Step (\d+) of (\d+)")

    def step() -> tuple[int, int]:
        found = counter.search(app.main_text())
        assert found, "no step counter on the Learn page"
        return int(found[1]), int(found[2])

    n, total = step()
    assert n == 0 and total >= 3, (n, total)
    for expected in (1, 2, 3):
        app.page.get_by_role("button", name=re.compile(r"Step forward$")).click()
        app.settle().check()
        assert step() == (expected, total)
    app.shot("learn-step-3")
    app.page.get_by_role("button", name=re.compile(r"Step back$")).click()
    app.settle().check()
    assert step() == (2, total)
    app.shot("learn-step-back")


def test_sweep_runs_the_default_grid_and_draws_it(app):
    app.open("/sweep").check()
    app.page.get_by_role("button", name="Run the sweep").click()
    app.page.get_by_text("Sweep finished in").wait_for(timeout=240_000)
    app.settle().check()
    app.shot("sweep-finished")
    text = app.main_text()
    assert re.search(r"9 trials run, \d+ already done, 0 failed|\d+ trials run, 9 already done",
                     text), text
    assert app.page.locator(".js-plotly-plot").count() >= 1  # the Pareto chart (first tab)
    assert app.page.locator('[data-testid="stDataFrame"]').count() == 1
    app.page.get_by_role("tab", name="Layer × geometry").click()
    app.settle().check()
    # one heatmap per method at the sparsity chosen: "magnitude · 50.0% sparsity"
    assert {t.split(" · ")[0] for t in plot_titles(app)} >= {"magnitude", "wanda", "sparsegpt"}
