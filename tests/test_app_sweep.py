"""The Sweep page through Streamlit's AppTest, on a real run database; its tables and figures
checked against the stored runs."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from obsviz.figures import sweep as sfig
from obsviz.metrics import format_rel_error
from obsviz.store import RunStore

from apptest import plain

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300


@pytest.fixture()
def db(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "runs.sqlite"
    monkeypatch.setenv("OBSVIZ_STORE", str(path))
    return path


def open_page(layer: str = "toy", **state):
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.session_state["layer_name"] = layer
    for k, v in state.items():
        at.session_state[k] = v
    at.switch_page("pages/sweep.py").run()
    assert not at.exception, at.exception
    return at


def captions(at) -> str:
    return "\n".join(c.value for c in at.caption)


def test_first_open_runs_a_grid_and_shows_it(db):
    at = open_page()
    assert "No sweeps in the database yet" in at.info[0].value
    assert "9 trials, 0 of them already in the database" in captions(at)
    at.button(key="_sw_run").click().run()
    assert not at.exception, at.exception
    assert "9 trials run, 0 already done, 0 failed" in at.success[0].value
    store = RunStore(db)
    runs = store.runs(sweep="app grid")
    assert len(runs) == 9 and {r.status for r in runs} == {"done"}
    assert {(r.layer, r.geometry, r.method) for r in runs} == set(itertools.product(
        ["toy"], ["2:4", "4:8", "1:4"], ["magnitude", "wanda", "sparsegpt"]))
    # two sparsities (50 % and 75 %), so the Pareto front has somewhere to go
    assert {r.sparsity for r in runs} == {0.5, 0.75}
    table = at.dataframe[0].value
    assert len(table) == 9
    shown = dict(zip(table["id"], table["relative error"], strict=True))
    assert shown == {r.id: format_rel_error(r.rel_error) for r in runs}
    assert len(at.get("plotly_chart")) == 1 + 3 + 1  # Pareto, a heatmap per method, time
    assert [b.proto.label for b in at.get("download_button")] == ["Download CSV",
                                                                 "Download Parquet"]
    # running the same grid again skips every trial
    at.button(key="_sw_run").click().run()
    assert "0 trials run, 9 already done" in at.success[0].value and store.count() == 9


def test_filters_narrow_the_table(db):
    at = open_page()
    at.button(key="_sw_run").click().run()
    at.multiselect(key="_sw_f_method").set_value(["wanda"]).run()
    assert not at.exception, at.exception
    assert set(at.dataframe[0].value["method"]) == {"wanda"}
    assert "3 of 9 runs shown" in captions(at)


def test_a_store_written_by_another_process_is_read_after_a_restart(db, tmp_path):
    spec = tmp_path / "cli.toml"
    spec.write_text('name = "from the terminal"\n[[layers]]\nsample = ["toy"]\n'
                    '[grid]\npresets = ["2:4", "block16"]\nmethods = ["obd", "local"]\n')
    out = subprocess.run([sys.executable, "-m", "obsviz", "sweep", str(spec), "--store",
                          str(db), "-q", "--device", "cpu"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 3, out.stderr  # block16 does not fit the 8 × 16 toy: recorded
    at = open_page()
    assert at.selectbox(key="_sw_open").value == "from the terminal"
    table = at.dataframe[0].value
    runs = RunStore(db).runs(sweep="from the terminal")
    assert sorted(table["id"]) == sorted(r.id for r in runs) and len(runs) == 4
    assert (table["status"] == "failed").sum() == 2
    assert "2 done, 2 failed" in captions(at)


def test_bad_input_is_named_never_a_traceback(db):
    at = open_page()
    at.text_input(key="_sw_nnz").set_value("two").run()
    assert not at.exception
    assert "nnz: give whole numbers" in at.error[0].value
    assert at.button(key="_sw_run").disabled
    at.text_input(key="_sw_nnz").set_value("").run()
    at.multiselect(key="_sw_methods").set_value([]).run()
    assert not at.exception
    assert "grid.methods" in at.code[-1].value and at.button(key="_sw_run").disabled
    at.multiselect(key="_sw_methods").set_value(["magnitude"]).run()
    at.text_input(key="_sw_nnz").set_value("9").run()  # more than a 2:4 scope holds
    assert "2 of them" not in captions(at) and "cannot run" in captions(at)


def test_a_stopped_sweep_says_so_and_a_broken_store_is_explained(db, tmp_path, monkeypatch):
    at = open_page(sweep_running={"name": "app grid", "total": 6})
    assert "stopped before its 6 trials ended" in at.warning[0].value
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 64)
    monkeypatch.setenv("OBSVIZ_STORE", str(bad))
    at = open_page()
    assert "cannot be opened" in at.error[0].value and "not an obsviz run database" in \
        at.code[0].value


# ---- the page's tables and figures, against direct computation ------------------------------


def test_pareto_front_matches_the_definition():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 12))
        s = rng.integers(0, 4, n) / 4  # ties on purpose
        e = rng.integers(0, 5, n) / 5
        got = sfig.pareto_front(s, e)
        want = [not any(s[j] >= s[i] and e[j] <= e[i] and (s[j] > s[i] or e[j] < e[i])
                        for j in range(n)) for i in range(n)]
        assert got.tolist() == want


def test_table_heatmap_and_exports_round_trip(tmp_path):
    from obsviz.sweep import sweep

    store = RunStore(tmp_path / "r.sqlite")
    sweep({"layers": [{"sample": ["toy"]}], "grid": {"presets": ["2:4", "4:8"], "nnz": [1, 2],
                                                      "methods": ["magnitude", "wanda"]}},
          store=store)
    runs = store.runs()
    df = sfig.runs_table(runs)
    assert list(df.columns) == list(sfig.TABLE_COLUMNS) and len(df) == 8
    # each name says what was run, each heatmap one sparsity: 1:4 (75 %) and 2:8 (75 %) side by
    # side, 2:4 (50 %) on its own, 1:8 (87.5 %) on its own
    assert sfig.sparsity_levels(df) == [0.5, 0.75, 0.875]
    heat = sfig.heatmap_table(df, "wanda", 0.75)
    assert set(heat.columns) == {"1:4", "2:8"}
    for geometry in ("1:4", "2:8"):
        (want,) = [r.rel_error for r in runs if r.method == "wanda" and r.geometry == geometry]
        assert heat.loc["toy", geometry] == want
    assert list(sfig.heatmap_table(df, "wanda", 0.5).columns) == ["2:4"]
    back = pd.read_csv(io.BytesIO(sfig.csv_bytes(df)))
    assert back["rel_error"].tolist() == pytest.approx(df["rel_error"].tolist(), rel=1e-15)
    pq = pd.read_parquet(io.BytesIO(sfig.parquet_bytes(df)))
    pd.testing.assert_frame_equal(pq, df)
    fig = sfig.pareto_figure(df)
    xs = [x for t in fig.data if not t.name.endswith("front") for x in t.x]
    assert sorted(xs) == sorted(df["sparsity"]) == sorted(df["target_sparsity"])
    assert sfig.display_table(df)["relative error"].tolist() == [
        format_rel_error(v) for v in df["rel_error"]]


def test_no_cell_mixes_sparsities_or_averages_in_a_trial_that_prunes_nothing(tmp_path):
    """The issue's case: block16 at nnz 1 and 2 on layer0.query. nnz = 2 keeps both blocks of
    every block16 scope (0 % pruned): it was averaged into the block16 cell (19 % = mean of
    38 % and 0 %), so block16 looked best when it was worst."""
    from obsviz.sweep import parse_spec, plan, sweep

    store = RunStore(tmp_path / "r.sqlite")
    spec = parse_spec({"layers": [{"sample": ["layer0.query"]}],
                       "grid": {"presets": ["2:4", "4:8", "block16"], "nnz": [1, 2],
                                "methods": ["magnitude"]}})
    planned = plan(spec, device="cpu")
    assert len(planned.warnings) == 1 and planned.warnings[0].startswith(
        "block16 at nnz = 2 keeps all 2 blocks of every scope: nothing is pruned")
    warned = []
    sweep(spec, store=store, warn=warned.append)
    assert warned == planned.warnings
    runs = {(r.geometry, r.nnz): r for r in store.runs()}
    assert set(runs) == {("1:4", 1), ("2:4", 2), ("1:8", 1), ("2:8", 2), ("block16", 1),
                         ("block16 at nnz = 2", 2)}
    df = sfig.runs_table(store.runs())
    assert sfig.nothing_pruned(df)["geometry"].tolist() == ["block16 at nnz = 2"]
    assert 0.0 not in sfig.sparsity_levels(df)
    heat = sfig.heatmap_table(df, "magnitude", 0.5)
    assert set(heat.columns) == {"2:4", "block16"}
    assert heat.loc["layer0.query", "block16"] == runs[("block16", 1)].rel_error
    assert heat.loc["layer0.query", "block16"] > heat.loc["layer0.query", "2:4"]
    assert 0.0 not in [x for t in sfig.pareto_figure(df).data for x in t.x]
    assert 0.0 not in [x for t in sfig.time_figure(df, 0.5).data for x in t.y]
    # the CLI's summary averages like with like only
    from obsviz.sweep import summary_table

    rows = {r["geometry"]: r for r in summary_table(store, [r.id for r in store.runs()])}
    assert rows["block16"]["rel_error"] == runs[("block16", 1)].rel_error
    assert rows["block16 at nnz = 2"]["sparsity"] == 0.0
    assert rows["1:8"]["sparsity"] == 0.875


def test_the_page_shows_one_sparsity_and_names_what_prunes_nothing(db):
    from obsviz.sweep import sweep

    sweep({"name": "b16", "layers": [{"sample": ["layer0.query"]}],
           "grid": {"presets": ["2:4", "block16"], "nnz": [1, 2], "methods": ["magnitude"]}},
          store=RunStore(db))
    at = open_page()
    assert at.selectbox(key="_sw_level").value == 0.5
    assert "1 finished trial prunes nothing (block16 at nnz = 2:" in plain(at.info[0].value)
    heat = {c.key: c for c in at.get("plotly_chart")}["_sw_heat_magnitude"]
    import json

    spec = json.loads(heat.proto.spec)
    assert set(spec["data"][0]["x"]) == {"2:4", "block16"}
    assert "50.0% sparsity" in spec["layout"]["title"]["text"]
    at.selectbox(key="_sw_level").set_value(0.75).run()
    spec = json.loads({c.key: c for c in at.get("plotly_chart")}["_sw_heat_magnitude"].proto.spec)
    assert spec["data"][0]["x"] == ["1:4"]


def test_a_grid_that_prunes_nothing_is_warned_before_it_runs(db):
    at = open_page(layer="layer0.query")
    at.multiselect(key="_sw_presets").set_value(["block16"]).run()
    at.text_input(key="_sw_nnz").set_value("1, 2").run()
    assert not at.exception, at.exception
    assert any("block16 at nnz = 2 keeps all 2 blocks" in plain(w.value) for w in at.warning)


def test_filters_follow_the_sweep_shown_and_a_resumed_sweep(db):
    """Another stored sweep opens with every value picked (it showed "0 of 64 runs"); a sweep
    that gains runs while shown (a resume) shows them, and what the user took out stays out."""
    from obsviz.sweep import sweep

    store = RunStore(db)
    grid = {"presets": ["2:4"], "methods": ["magnitude", "wanda"]}
    sweep({"name": "older", "layers": [{"sample": ["layer0.key"]}], "grid": grid}, store=store)
    sweep({"name": "newer", "layers": [{"sample": ["toy"]}], "grid": grid}, store=store)
    at = open_page()
    assert at.selectbox(key="_sw_open").value == "newer"
    assert "2 of 2 runs shown" in captions(at)
    at.selectbox(key="_sw_open").set_value("older").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="_sw_f_layer").value == ["layer0.key"]
    assert "2 of 2 runs shown" in captions(at) and len(at.get("plotly_chart")) == 1 + 2 + 1
    # the sweep shown is resumed with another layer and method (here: by another process)
    at.multiselect(key="_sw_f_method").set_value(["wanda"]).run()
    assert "1 of 2 runs shown" in captions(at)
    sweep({"name": "older", "layers": [{"sample": ["layer0.key", "toy"]}],
           "grid": {**grid, "methods": ["magnitude", "wanda", "obd"]}}, store=store)
    at.run()
    assert set(at.multiselect(key="_sw_f_layer").value) == {"layer0.key", "toy"}
    assert set(at.multiselect(key="_sw_f_method").value) == {"wanda", "obd"}
    assert "4 of 6 runs shown" in captions(at)


def test_a_foreign_or_read_only_store_is_explained_never_an_exception(tmp_path, monkeypatch):
    import os
    import shutil
    import sqlite3

    foreign = tmp_path / "foreign.sqlite"
    con = sqlite3.connect(foreign)      # SQLite, with a model_runs table, but not obsviz's
    con.execute("CREATE TABLE model_runs (id INTEGER)")
    con.commit()
    con.close()
    monkeypatch.setenv("OBSVIZ_STORE", str(foreign))
    at = open_page()
    assert "cannot be opened" in at.error[0].value
    assert "not an obsviz run database" in at.code[0].value
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a read-only filesystem needs root to mount")
    where = tmp_path / "mnt"
    where.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = where / "runs.sqlite"
        from obsviz.sweep import sweep

        store = RunStore(path)
        sweep({"layers": [{"sample": "toy"}], "grid": {"presets": ["2:4"],
                                                       "methods": ["magnitude"]}},
              store=store, name="kept")
        store.close()                    # the last connection: the WAL checkpointed, closed
        subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        monkeypatch.setenv("OBSVIZ_STORE", str(path))
        at = open_page()
        assert "read-only" in at.info[0].value
        assert at.button(key="_sw_run").disabled
        assert at.selectbox(key="_sw_open").value == "kept"
        assert "1 of 1 runs shown" in captions(at)
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
