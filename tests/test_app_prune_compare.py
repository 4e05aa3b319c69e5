"""The Prune and Compare pages, driven through Streamlit's AppTest on the 8 × 16 toy layer."""

from pathlib import Path

import pytest

from obsviz import modes

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per run; the first run imports torch and plotly


def open_page(page: str, layer: str = "toy"):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["layer_name"] = layer
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def run_methods(at, methods: list[str]):
    at.multiselect(key="_p_methods").set_value(methods).run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    return at


def texts(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [e.label for e in at.get("status")])


def test_prune_runs_two_methods_and_shows_each_error():
    at = open_page("pages/prune.py")
    assert at.multiselect(key="_p_methods").value == ["full", "interleaved", "true_obs",
                                                      "sparsegpt"]
    run_methods(at, ["local", "sparsegpt"])
    runs = list(at.session_state["results"].values())
    assert [r.method for r in runs] == ["local", "sparsegpt"]
    shown = texts(at)
    for r in runs:
        assert r.report["valid"] and r.report["sparsity"] == pytest.approx(0.5)
        assert f"{r.method} · relative error {r.result.rel_error:.4f}" in shown
    at.run()  # the next rerun lists the run's outcome
    shown = texts(at)
    assert "Latest run" in [s.value for s in at.subheader]
    for r in runs:
        assert r.method in shown and f"{r.result.rel_error:.4f}" in shown

    # Asking again is instant: both come from the store.
    next(b for b in at.button if b.label == "Run").click().run()
    assert [e["status"] for e in at.session_state["last_run"]] == ["cached", "cached"]
    assert len(at.session_state["results"]) == 2

    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert at.multiselect[0].value == [r.label for r in runs]
    assert len(at.dataframe) == 1
    charts = at.get("plotly_chart")
    assert len(charts) >= 5  # bar, row distribution, 3 heatmaps, difference
    assert "Where the error is" in [s.value for s in at.subheader]
    assert "Difference between two results" in [s.value for s in at.subheader]
    assert len(at.get("download_button")) == 4  # CSV, JSON, one per result


def test_a_failing_method_shows_its_message_and_keeps_the_others(monkeypatch):
    def broken(p, n_splits):
        raise ValueError("method='interleaved' is broken on purpose")

    monkeypatch.setattr(modes, "interleaved", broken)
    at = run_methods(open_page("pages/prune.py"), ["interleaved", "full"])
    assert any("broken on purpose" in e.value for e in at.error)
    runs = list(at.session_state["results"].values())
    assert [r.method for r in runs] == ["full"]
    assert [e["status"] for e in at.session_state["last_run"]] == ["done", "failed"]


def test_a_bad_upload_shows_the_loader_message():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["layer_source"] = "upload"
    at.switch_page("pages/prune.py").run()
    assert not at.exception, at.exception
    at.file_uploader(key="_p_upload").set_value(
        ("broken.safetensors", b"this is not a safetensors file", "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert any("broken.safetensors" in e.value for e in at.error)
    assert not any(b.label == "Run" for b in at.button)   # nothing to run on


def test_compare_first_visit_offers_the_fast_modes():
    at = open_page("pages/compare.py")
    button = next(b for b in at.button if b.label == "Run the fast modes")
    button.click().run()
    assert not at.exception, at.exception
    methods = [r.method for r in at.session_state["results"].values()]
    assert {"full", "sparsegpt", "magnitude"} <= set(methods)
    assert len(at.get("plotly_chart")) >= 5
