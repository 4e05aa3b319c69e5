"""The Compare page through Streamlit's AppTest, on results run for real on the Prune page:
nothing a user ran disappears, the default is the latest run, labels say only what differs,
geometries and layers are told apart, relative error reads as a percentage."""

import json

import pytest

from obsviz import METHODS
from obsviz.metrics import format_rel_error

from apptest import fresh_store, open_app


def prune(at, preset: str, methods, layer: str | None = None):
    """Run ``methods`` on the Prune page with ``preset`` (on ``layer``, a sample)."""
    at.switch_page("pages/prune.py").run()
    if layer is not None:
        at.session_state["layer_name"] = layer
        at.run()
    at.radio(key="_p_geo_source").set_value("preset").run()
    at.selectbox(key="_p_preset").set_value(preset).run()
    at.multiselect(key="_p_methods").set_value(list(methods)).run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    return [e["key"] for e in at.session_state["last_run"]]


def compare(at):
    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    return at


def charts(at) -> dict[str, dict]:
    """Every plotly figure on the page by its widget key suffix (``_c_fig_bar``, …)."""
    return {chart.key: json.loads(chart.proto.spec) for chart in at.get("plotly_chart")}


def titles(spec: dict) -> list[str]:
    return [a["text"] for a in spec["layout"].get("annotations", [])
            if not a["text"].startswith("<b>")]


def headers(spec: dict) -> list[str]:
    return [a["text"] for a in spec["layout"].get("annotations", []) if a["text"].startswith("<b>")]


@pytest.fixture(scope="module")
def nine_on_two():
    """One session: all nine methods on 2:4, then all nine on coupled-2:4 (the toy layer)."""
    at = open_app(state={"layer_name": "toy"}, store=fresh_store())
    first = prune(at, "2:4", METHODS)
    second = prune(at, "coupled-2:4", METHODS)
    assert len(first) == len(second) == 9 and not set(first) & set(second)
    return at, first, second


def test_the_latest_run_is_shown_by_method_name_only(nine_on_two):
    at, first, second = nine_on_two
    compare(at)
    pick = at.multiselect(key="_c_pick")
    # every run is listed, none dropped; the latest run's nine are picked, by run key
    assert pick.options and len(pick.options) == 18
    assert pick.value == second
    spec = charts(at)
    maps = spec["_c_fig_maps"]
    assert [t["type"] for t in maps["data"]].count("image") == 9
    assert not any(t["type"] == "heatmap" for t in maps["data"])      # images, not matrices
    assert titles(maps) == list(METHODS) and headers(maps) == []      # one setting: no header
    bar = spec["_c_fig_bar"]
    assert len(bar["data"]) == 1 and sorted(bar["data"][0]["y"]) == sorted(METHODS)
    runs = at.session_state["results"]
    # relative error as a percentage, with the one formatter, in the table and the bar chart
    table = at.dataframe[0].value
    assert list(table["result"]) == [runs[k].method for k in second]
    for key, shown in zip(second, table["relative error"], strict=True):
        assert shown == format_rel_error(runs[key].rel_error)
    assert set(bar["data"][0]["text"]) == {format_rel_error(runs[k].rel_error) for k in second}
    # the full description is in the table
    assert set(table["geometry"]) == {"coupled-2:4"} and set(table["layer"]) == {"toy"}


def test_two_geometries_side_by_side(nine_on_two):
    at, first, second = nine_on_two
    compare(at)
    next(b for b in at.button if b.label.startswith("All (")).click().run()
    assert not at.exception, at.exception
    assert at.multiselect(key="_c_pick").value == first + second
    spec = charts(at)
    maps = spec["_c_fig_maps"]
    # a row of panels per geometry, the methods as columns, each row named once
    assert headers(maps) == ["<b>2:4</b>", "<b>coupled-2:4</b>"]
    assert titles(maps) == list(METHODS) * 2
    # bars: colour = method, pattern = geometry, a legend above the plot
    bar = spec["_c_fig_bar"]
    assert [t["name"] for t in bar["data"]] == ["2:4", "coupled-2:4"]
    assert bar["data"][0]["marker"]["pattern"]["shape"] != bar["data"][1]["marker"]["pattern"][
        "shape"]
    assert bar["data"][0]["marker"]["color"] == bar["data"][1]["marker"]["color"] or \
        sorted(bar["data"][0]["marker"]["color"]) == sorted(bar["data"][1]["marker"]["color"])
    # lines: colour = method, dash = geometry, the legend beside the plot
    lines = spec["_c_fig_rows"]["data"]
    assert {t["line"]["dash"] for t in lines[:9]} != {t["line"]["dash"] for t in lines[9:]}
    assert spec["_c_fig_rows"]["layout"]["legend"]["x"] > 1
    # the what-if table: one row per method, one column per geometry
    table = at.dataframe[1].value
    assert list(table.columns) == ["method", "2:4", "coupled-2:4"]
    runs = at.session_state["results"]
    full = table[table["method"] == "full"].iloc[0]
    by = {runs[k].job.geometry.name: runs[k] for k in first + second if runs[k].method == "full"}
    assert full["2:4"] == format_rel_error(by["2:4"].rel_error)
    assert full["coupled-2:4"] == format_rel_error(by["coupled-2:4"].rel_error)
    # labels in the picker stay unique and short
    names = [at.multiselect(key="_c_pick").format_func(k) for k in first + second]
    assert len(set(names)) == 18 and "full · 2:4" in names


def test_latest_run_button_and_a_window(nine_on_two):
    at, first, second = nine_on_two
    compare(at)
    next(b for b in at.button if b.label.startswith("All (")).click().run()
    next(b for b in at.button if b.label.startswith("Latest run")).click().run()
    assert at.multiselect(key="_c_pick").value == second
    at.segmented_control(key="_c_view").set_value("Window").run()
    assert not at.exception, at.exception
    maps = charts(at)["_c_fig_maps"]
    assert "tiles of" not in json.dumps(maps["layout"]["meta"])     # every weight
    at.segmented_control(key="_c_kind").set_value("mask").run()
    assert not at.exception, at.exception
    assert charts(at)["_c_fig_maps"]["layout"]["coloraxis"]["cmax"] == 1.0


def test_layers_compare_in_the_summary_and_maps_stay_per_layer(nine_on_two):
    at, first, second = nine_on_two
    other = prune(at, "2:4", ["magnitude", "sparsegpt"], layer="layer0.query")
    compare(at)
    assert at.multiselect(key="_c_pick").value == other
    at.multiselect(key="_c_pick").set_value(first[-2:] + other).run()   # obd, sparsegpt on toy
    assert not at.exception, at.exception
    spec = charts(at)
    # the summary spans both layers: each setting is a layer
    assert [t["name"] for t in spec["_c_fig_bar"]["data"]] == ["toy", "layer0.query"]
    assert list(at.dataframe[1].value.columns) == ["method", "toy", "layer0.query"]
    # the maps need one W: a layer is chosen for them, the newest by default
    layer_box = at.selectbox(key="_c_layer")
    assert layer_box.format_func(layer_box.value) == "layer0.query"
    assert titles(spec["_c_fig_maps"]) == ["magnitude", "sparsegpt"]
    layer_box.set_value(layer_box.options[0]).run()
    assert titles(charts(at)["_c_fig_maps"]) == ["obd", "sparsegpt"]


def test_stored_runs_come_back_after_a_restart():
    store = fresh_store()
    at = open_app(state={"layer_name": "toy"}, store=store)
    prune(at, "2:4", ["full", "sparsegpt"])
    prune(at, "coupled-2:4", ["magnitude"])
    keys_after = prune(at, "2:4", ["wanda", "obd"])
    # a new session on the same run store, as after a restart of the app: the stored runs are
    # results, listed and shown (the latest run's methods), with nothing to click first
    again = compare(open_app(state={"layer_name": "toy"}, store=store))
    assert not any("Nothing to compare yet" in m.value for m in again.markdown)
    pick = again.multiselect(key="_c_pick")
    assert len(pick.options) == 5 and pick.value == keys_after
    assert {"full · 2:4", "sparsegpt · 2:4", "magnitude · coupled-2:4"} < set(pick.options)
    assert len(charts(again)) == 4
    next(b for b in again.button if b.label.startswith("Latest run")).click().run()
    assert again.multiselect(key="_c_pick").value == keys_after


def test_any_stored_run_opens_sweeps_included():
    """Runs of another layer, one written with the app's keys and one with a sweep's own, open
    from the run store's list (their layer is a shipped sample)."""
    from obsviz import Geometry, load_sample_layer
    from obsviz import prune as run_prune
    from obsviz.store import RunStore, layer_hash, trial_key

    path = fresh_store()
    layer = load_sample_layer("layer0.key")
    digest = layer_hash(layer.weight, layer.hessian)
    geom = Geometry.preset("2:4", layer.shape)
    db = RunStore(path)
    stored = {}
    for method in ("magnitude", "wanda"):
        result = run_prune(layer.weight, layer.hessian, geom, 2, method=method)
        key = trial_key(digest, geom, 2, method, {}, 0.01)      # a sweep's conventions
        db.record(key=key, layer="layer0.key", source="sample", layer_hash=digest,
                  shape=layer.shape, geometry=geom, nnz=2, method=method, options={},
                  damp=0.01, result=result, sweep="grid")
        stored[key] = result.rel_error
    at = compare(open_app(state={"layer_name": "toy"}, store=path))
    assert not any("Nothing to compare yet" in m.value for m in at.markdown)
    runs = at.session_state["results"]
    picked = [runs[k] for k in at.multiselect(key="_c_pick").value]
    assert [r.trial for r in picked] == list(stored)     # the store's keys, on its layer name
    assert {r.layer.label for r in picked} == {"layer0.key"}
    assert {r.trial: r.rel_error for r in picked} == stored
    assert all(r.layer.loaded for r in picked)          # a shipped sample: W and H are here
    # the stored weights are read back for the maps: one panel per run
    assert titles(charts(at)["_c_fig_maps"]) == ["magnitude", "wanda"]


def test_runs_of_an_uploaded_layer_open_from_the_store_alone(tmp_path):
    """After a restart the uploaded layer is gone: its runs still show their metrics and tables
    from the store, maps that need W say so and show the stored mask and pruned weights; the
    file uploaded again brings every view back."""
    from obsviz import layers as L

    from apptest import plain

    toy = L.load_sample_layer("toy")
    mine = L.Layer("mine.fc1", 2 * toy.weight, toy.hessian, toy.nsamples, "a test layer")
    path = tmp_path / "mine.safetensors"
    L.save_layers(path, [mine])
    upload = ("mine.safetensors", path.read_bytes(), "application/octet-stream")
    store = fresh_store()
    at = open_app("pages/prune.py", state={"layer_source": "upload"}, store=store)
    at.file_uploader(key="_p_upload").set_value(upload).run()
    at.radio(key="_p_geo_source").set_value("preset").run()
    at.multiselect(key="_p_methods").set_value(["magnitude", "sparsegpt"]).run()
    next(b for b in at.button if b.label == "Run").click().run()
    keys = [e["key"] for e in at.session_state["last_run"]]
    before = {k: at.session_state["results"][k].report for k in keys}

    again = compare(open_app(state={"layer_name": "toy"}, store=store))
    assert again.multiselect(key="_c_pick").value == keys
    assert "not here, only its runs in the run store: **mine.safetensors · fc1**" in \
        plain(again.info[0].value).replace("mine.fc1", "fc1")
    table = again.dataframe[0].value
    assert list(table["relative error"]) == [format_rel_error(before[k]["rel_error"])
                                              for k in keys]
    assert list(table["sparsity"]) == [100 * before[k]["sparsity"] for k in keys]
    assert list(table["valid"]) == [True, True] and set(table["row p50"]) == {"– (needs W)"}
    assert again.get("segmented_control")[-1].options == ["Kept mask", "Pruned |W|"]
    figs = charts(again)
    assert titles(figs["_c_fig_maps"]) == ["magnitude", "sparsegpt"] and "_c_fig_rows" not in figs
    assert not [e for e in again.exception]
    # the report download works from the store alone
    assert [b.proto.label for b in again.get("download_button")][:2] == ["Report (CSV)",
                                                                         "Report (JSON)"]
    # the file uploaded again: the same runs, now on their layer, with every view
    again.switch_page("pages/prune.py").run()
    again.session_state["layer_source"] = "upload"
    again.run()
    again.file_uploader(key="_p_upload").set_value(upload).run()
    compare(again)
    runs = again.session_state["results"]
    assert all(runs[k].layer.loaded for k in keys) and not again.info
    assert again.dataframe[0].value["row p50"].tolist() == [
        format_rel_error(before[k]["row_rel_error_p50"]) for k in keys]
    assert "_c_fig_rows" in charts(again)


def test_a_run_whose_stored_weights_changed_keeps_its_metrics_and_leaves_the_charts():
    from obsviz.store import RunStore

    store = fresh_store()
    at = open_app(state={"layer_name": "toy"}, store=store)
    prune(at, "2:4", ["magnitude", "sparsegpt"])
    db = RunStore(store)
    run = next(r for r in db.runs(status="done") if r.method == "sparsegpt")
    path = db.file_path(run.weight_file)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF                     # changed behind the store, same size
    path.write_bytes(bytes(data))
    again = compare(open_app(state={"layer_name": "toy"}, store=store))   # after a restart
    (warning,) = [w.value for w in again.warning if "missing or changed" in w.value]
    assert "sparsegpt" in warning and format_rel_error(run.rel_error) in warning
    assert len(charts(again)) == 3       # magnitude drawn alone (no difference view)
