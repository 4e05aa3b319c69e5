"""The Prune and Compare pages, driven through Streamlit's AppTest on the 8 × 16 toy layer."""

import dataclasses

import pytest
import torch

from obsviz import methods
from obsviz.metrics import format_rel_error

from apptest import errors, open_app, plain, run_methods


def open_page(page: str, layer: str = "toy", **state):
    return open_app(page, state={"layer_name": layer, **state})


def patch_run(monkeypatch, method: str, run) -> None:
    """Make ``method`` run ``run(problem, **options)`` (its one home: the method registry)."""
    monkeypatch.setitem(methods.REGISTRY, method,
                        dataclasses.replace(methods.REGISTRY[method], run=run))


def texts(at) -> str:
    """Everything the page says in markdown, success and error boxes, as text."""
    return "\n".join(plain(m.value) for m in [*at.markdown, *at.success, *at.error])


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
        assert f"{r.method} · relative error {format_rel_error(r.result.rel_error)}" in shown
    at.run()  # the next rerun lists the run's outcome
    shown = texts(at)
    assert "Latest run" in [s.value for s in at.subheader]
    for r in runs:
        assert r.method in shown and format_rel_error(r.result.rel_error) in shown

    # Asking again is instant: both come from the store.
    next(b for b in at.button if b.label == "Run").click().run()
    assert [e["status"] for e in at.session_state["last_run"]] == ["cached", "cached"]
    assert len(at.session_state["results"]) == 2

    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    assert at.multiselect(key="_c_pick").value == [r.key for r in runs]   # by run key
    assert len(at.dataframe) == 1
    charts = at.get("plotly_chart")
    assert len(charts) >= 4  # bar, row distribution, the maps (one kind at a time), difference
    assert "Where the error is" in [s.value for s in at.subheader]
    assert "Difference between two results" in [s.value for s in at.subheader]
    assert len(at.get("download_button")) == 4  # CSV, JSON, one per result


def test_a_failing_method_shows_its_message_and_keeps_the_others(monkeypatch):
    def broken(p, n_splits):
        raise ValueError("method='interleaved' is broken on purpose")

    patch_run(monkeypatch, "interleaved", broken)
    at = run_methods(open_page("pages/prune.py"), ["interleaved", "full"])
    assert any("broken on purpose" in e for e in errors(at))
    runs = list(at.session_state["results"].values())
    assert [r.method for r in runs] == ["full"]
    assert [e["status"] for e in at.session_state["last_run"]] == ["done", "failed"]


def test_the_geometry_is_named_for_what_runs_and_pruning_nothing_is_warned():
    at = open_page("pages/prune.py")
    at.radio(key="_p_geo_source").set_value("preset").run()
    at.selectbox(key="_p_preset").set_value("2:4").run()
    at.text_input(key="_p_nnz").set_value("1").run()
    assert "Runs as **1:4** · sparsity 75.0%" in "\n".join(plain(c.value) for c in at.caption)
    assert not at.warning
    at.text_input(key="_p_nnz").set_value("4").run()
    assert not at.exception, at.exception
    assert "4:4 keeps all 4 blocks of every scope: nothing is pruned" in plain(at.warning[0].value)
    # the Compare page calls the result by what was run
    at.text_input(key="_p_nnz").set_value("1").run()
    run_methods(at, ["magnitude"])
    assert "magnitude" in texts(at)
    at.switch_page("pages/compare.py").run()
    table = at.dataframe[0].value
    assert list(table["geometry"]) == ["1:4"]


def test_compare_names_a_result_that_prunes_nothing_never_a_zero_error():
    at = open_page("pages/prune.py")
    at.radio(key="_p_geo_source").set_value("preset").run()
    for nnz in ("4", "2"):
        at.text_input(key="_p_nnz").set_value(nnz).run()
        run_methods(at, ["magnitude", "wanda"])
    at.switch_page("pages/compare.py").run()
    next(b for b in at.button if b.label.startswith("All")).click().run()
    assert not at.exception, at.exception
    metrics, what_if = at.dataframe[0].value, at.dataframe[1].value
    assert list(what_if.columns) == ["method", "4:4 · nnz=4", "2:4 · nnz=2"]
    assert list(what_if["4:4 · nnz=4"]) == ["prunes nothing"] * 2
    assert all(e.endswith("(prunes nothing)") == (g == "4:4")
               for e, g in zip(metrics["relative error"], metrics["geometry"], strict=True))


def test_a_bad_upload_shows_the_loader_message():
    at = open_page("pages/prune.py", layer_source="upload")
    at.file_uploader(key="_p_upload").set_value(
        ("broken.safetensors", b"this is not a safetensors file", "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert any("broken.safetensors" in e for e in errors(at))
    assert not any(b.label == "Run" for b in at.button)   # nothing to run on


def test_compare_first_visit_offers_the_fast_modes():
    at = open_page("pages/compare.py")
    button = next(b for b in at.button if b.label == "Run the fast modes")
    button.click().run()
    assert not at.exception, at.exception
    methods = [r.method for r in at.session_state["results"].values()]
    assert {"full", "sparsegpt", "magnitude"} <= set(methods)
    assert len(at.get("plotly_chart")) >= 4


# ---- failures of every kind stay on the page --------------------------------------------------


def test_an_unforeseen_error_fails_only_its_method_and_clears_pending(monkeypatch):
    def broken(p, n_splits):
        raise KeyError("a bug, not a ValueError")

    patch_run(monkeypatch, "interleaved", broken)
    at = run_methods(open_page("pages/prune.py"), ["interleaved", "full"])
    assert any("KeyError" in e and "a bug" in e for e in errors(at))
    assert [r.method for r in at.session_state["results"].values()] == ["full"]
    assert [e["status"] for e in at.session_state["last_run"]] == ["done", "failed"]
    assert at.session_state["run_pending"] == []
    at.run()
    assert not at.exception, at.exception
    assert not any(e["status"] == "stopped" for e in at.session_state["last_run"])


def test_a_stop_passes_through_and_leaves_the_rest_pending(monkeypatch):
    from streamlit.runtime.scriptrunner import StopException

    def stopped(p):
        raise StopException()   # what Streamlit raises into a script the user stopped

    patch_run(monkeypatch, "full", stopped)
    at = run_methods(open_page("pages/prune.py"), ["full", "sparsegpt"])
    assert not at.error
    assert at.session_state["run_pending"] == ["full", "sparsegpt"]
    monkeypatch.undo()
    at.run()   # the next run reports both as stopped
    assert [(e["method"], e["status"]) for e in at.session_state["last_run"]] == [
        ("full", "stopped"), ("sparsegpt", "stopped")]


def test_out_of_memory_suggests_a_row_sample_and_memory_is_released(monkeypatch):
    from ui import runner

    def oom(p):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    released = []
    patch_run(monkeypatch, "full", oom)
    monkeypatch.setattr(runner, "release_device_memory", released.append)
    at = run_methods(open_page("pages/prune.py"), ["full", "sparsegpt"])
    assert any("ran out of memory on cpu; try a row sample" in e for e in errors(at))
    assert [e["status"] for e in at.session_state["last_run"]] == ["failed", "done"]
    assert released == ["cpu", "cpu"]   # after each method, whatever its outcome


def test_release_device_memory_empties_the_cuda_cache_only_on_cuda(monkeypatch):
    from ui import runner

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    runner.release_device_memory("cpu")
    assert calls == []
    runner.release_device_memory("cuda")
    runner.release_device_memory("cuda:0")
    assert calls == ["empty", "empty"]


def test_c_dtype_offers_half_precision_on_cuda_only():
    from ui import runner

    assert runner.c_dtype_options("cpu") == ["auto", "float32", "float64"]
    assert runner.c_dtype_options("cuda") == ["auto", "float16", "bfloat16", "float32",
                                               "float64"]
    at = open_page("pages/prune.py")
    at.session_state["device"] = "cpu"
    at.multiselect(key="_p_methods").set_value(["true_obs"]).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="_p_opt_c_dtype").options == ["auto", "float32", "float64"]


def test_a_failing_checkpoint_build_shows_its_message(monkeypatch):
    from obsviz import calibrate

    if calibrate.minilm_checkpoint_dir() is None:
        pytest.skip("no local checkpoint installed")

    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(calibrate, "hessians_from_checkpoint", broken)
    at = open_page("pages/prune.py", layer_source="checkpoint")
    next(b for b in at.button if b.label == "Compute the Hessian").click().run()
    assert not at.exception, at.exception
    assert any("RuntimeError: mat1 and mat2" in e for e in errors(at))


# ---- uploads --------------------------------------------------------------------------------


def test_an_upload_is_hashed_and_parsed_once(monkeypatch, tmp_path):
    from obsviz import layers as L

    from ui import layers as ui_layers

    path = tmp_path / "mine.safetensors"
    L.save_layers(path, [L.load_sample_layer("toy")])
    data = path.read_bytes()
    parsed, hashed = [], []
    list_layers, digest_bytes = L.list_layers, ui_layers.digest_bytes

    def counting_list(*args, **kwargs):
        parsed.append(1)
        return list_layers(*args, **kwargs)

    def counting_digest(*parts):
        hashed.extend(p for p in parts if isinstance(p, bytes) and len(p) == len(data))
        return digest_bytes(*parts)

    monkeypatch.setattr(L, "list_layers", counting_list)
    monkeypatch.setattr(ui_layers, "digest_bytes", counting_digest)
    at = open_page("pages/prune.py", layer_source="upload")
    at.file_uploader(key="_p_upload").set_value(
        ("mine.safetensors", data, "application/octet-stream"))
    at.run()
    assert not at.exception, at.exception
    assert at.session_state["user_layer"].label == "mine.safetensors · toy"
    digest = at.session_state["user_layer"].digest
    for _ in range(2):
        at.run()
        assert not at.exception, at.exception
    assert len(parsed) == 1 and len(hashed) == 1
    assert at.session_state["user_layer"].digest == digest
    assert any(b.label == "Run" for b in at.button)


def test_a_failed_upload_leaves_no_doubt_which_layer_is_current(tmp_path):
    """A bad file after a good one: the page went on showing and running the earlier layer
    under the error. Now no layer is in use until the user picks one (the earlier upload is
    still offered), and clearing the bad file brings the earlier one back."""
    from obsviz import layers as L

    path = tmp_path / "good.safetensors"
    L.save_layers(path, [L.load_sample_layer("toy")])
    at = open_page("pages/prune.py", layer_source="upload")
    at.file_uploader(key="_p_upload").set_value(
        ("good.safetensors", path.read_bytes(), "application/octet-stream")).run()
    assert at.session_state["user_layer"].label == "good.safetensors · toy"
    assert any(b.label == "Run" for b in at.button)
    for bad in (b"this is not a safetensors file",          # not a layer file at all
                b"\x08\x00\x00\x00\x00\x00\x00\x00{}      "):  # a file with no layer in it
        at.file_uploader(key="_p_upload").set_value(
            ("bad.safetensors", bad, "application/octet-stream")).run()
        assert not at.exception, at.exception
        assert any("bad.safetensors" in e for e in errors(at))
        assert not any(b.label == "Run" for b in at.button)      # nothing runs on the old one
        said = texts(at) + "\n".join(plain(i.value) for i in at.info)
        assert "No layer is in use: bad.safetensors was not loaded" in said
        assert "good.safetensors · toy" in said                  # where the earlier one is
        assert "good.safetensors · toy" not in "\n".join(c.value for c in at.sidebar.caption)
        assert at.sidebar.selectbox(key="_w_layer").value is None
    at.file_uploader(key="_p_upload").set_value(None).run()       # the bad file taken away
    assert not at.exception, at.exception
    assert at.sidebar.selectbox(key="_w_layer").value == ":user"
    assert any(b.label == "Run" for b in at.button)


def test_a_failed_method_is_kept_in_the_run_store_with_its_message(monkeypatch):
    """Issue 24.10: the Prune page's failures were not in the run store (sweeps keep theirs)."""
    from obsviz.store import RunStore

    from apptest import fresh_store

    def broken(p, n_splits):
        raise ValueError("method='interleaved' is broken on purpose")

    patch_run(monkeypatch, "interleaved", broken)
    db = fresh_store()
    at = open_app("pages/prune.py", state={"layer_name": "toy"}, store=db)
    run_methods(at, ["interleaved", "full"])
    rows = {r.method: r for r in RunStore(db).runs()}
    assert rows["full"].status == "done"
    assert rows["interleaved"].status == "failed"
    assert "broken on purpose" in rows["interleaved"].error


@pytest.mark.parametrize("typed", ["1e308", "2e6", "-1"])
def test_a_damping_out_of_range_is_refused_under_the_field(typed):
    at = open_page("pages/prune.py")
    at.text_input(key="_p_damp").set_value(typed).run()
    assert not at.exception, at.exception
    assert any("damp" in e and "from 0 to" in e or "at least" in e for e in errors(at))
    assert not any(b.label == "Run" for b in at.button)


def test_every_page_that_writes_says_a_read_only_store_keeps_nothing_new(monkeypatch):
    """Issue 21.3: a store on a read-only filesystem opens read-only; the Sweep page said so,
    the Prune, Model, Sensitivity and Compare pages ran on without a word while nothing they
    made was kept. (Read-only is made here by the store's own check; the real filesystem case:
    tests/test_store.py.)"""
    from obsviz.store import RunStore

    from apptest import fresh_store

    db = fresh_store()
    RunStore(db).close()                                   # a store, then it cannot be written
    monkeypatch.setattr(RunStore, "_writable", lambda self: False)
    pages = ("pages/prune.py", "pages/compare.py", "pages/model.py", "pages/sensitivity.py",
             "pages/sweep.py")
    for page in pages:
        at = open_app(page, state={"layer_name": "toy"}, store=db)
        said = [plain(i.value) for i in at.info if "read-only" in i.value]
        assert len(said) == 1, (page, [i.value for i in at.info])
        assert "kept in this session only" in said[0] or "cannot run" in said[0], said
    at = open_app("pages/prune.py", state={"layer_name": "toy"}, store=db)
    run_methods(at, ["magnitude"])                         # runs, kept in the session only
    assert [e["status"] for e in at.session_state["last_run"]] == ["done"]
    assert RunStore(db).count() == 0 and not errors(at)
    monkeypatch.undo()
    at = open_app("pages/prune.py", state={"layer_name": "toy"}, store=fresh_store())
    assert not [i for i in at.info if "read-only" in i.value]   # a store that can be written


def test_a_renamed_copy_of_a_layer_reuses_its_results_and_keeps_its_own_name(tmp_path):
    """Issue 24.3: layers of equal contents and different names were merged: an uploaded
    renamed copy of a sample showed a bare "cached" and never appeared on Compare under its own
    name. The computation is reused (one stored run each), the reuse is said, and each name
    the user gave appears, in this session and after a restart."""
    from obsviz import layers as L
    from obsviz.store import RunStore

    from apptest import fresh_store

    db = fresh_store()
    at = open_app("pages/prune.py", state={"layer_name": "toy"}, store=db)
    run_methods(at, ["magnitude", "sparsegpt"])
    assert [e["status"] for e in at.session_state["last_run"]] == ["done", "done"]

    path = tmp_path / "copy.safetensors"
    L.save_layers(path, [dataclasses.replace(L.load_sample_layer("toy"), name="mine")])
    at.session_state["layer_source"] = "upload"
    at.run()
    at.file_uploader(key="_p_upload").set_value(
        ("copy.safetensors", path.read_bytes(), "application/octet-stream")).run()
    assert not at.exception, at.exception
    copy = at.session_state["user_layer"].label
    assert copy == "copy.safetensors · mine"
    (table,) = at.dataframe
    assert list(table.value["time"]) == ["same contents as toy: result reused"] * 2
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    assert [e["status"] for e in at.session_state["last_run"]] == ["cached", "cached"]
    said = texts(at)
    assert said.count("same contents as toy: result reused") == 2 and "· cached" not in said
    store = RunStore(db)
    assert store.count() == 2                                  # computed once per method
    assert all(store.layer_names([r.id])[r.id] == ["toy", copy] for r in store.runs())

    at.switch_page("pages/compare.py").run()
    assert not at.exception, at.exception
    results = at.session_state["results"]
    assert sorted((r.layer.label, r.method) for r in results.values()) == sorted(
        (name, m) for name in ("toy", copy) for m in ("magnitude", "sparsegpt"))
    picked = [results[k] for k in at.multiselect(key="_c_pick").value]
    assert {r.layer.label for r in picked} == {copy}          # the latest run: the copy's
    options = at.multiselect(key="_c_pick").options            # as shown
    assert len(set(options)) == 4 and sum(copy in o for o in options) == 2, options

    again = open_app("pages/compare.py", store=db)            # a restart
    assert sorted((r.layer.label, r.method) for r in again.session_state["results"].values()) \
        == sorted((name, m) for name in ("toy", copy) for m in ("magnitude", "sparsegpt"))


def test_a_renamed_copy_reuses_this_sessions_result_when_nothing_is_stored(tmp_path,
                                                                           monkeypatch):
    """The same with a read-only store (nothing kept): the session's own result is reused under
    the copy's name, said so, and both names are listed."""
    from obsviz import layers as L
    from obsviz.store import RunStore

    from apptest import fresh_store

    db = fresh_store()
    RunStore(db).close()
    monkeypatch.setattr(RunStore, "_writable", lambda self: False)
    at = open_app("pages/prune.py", state={"layer_name": "toy"}, store=db)
    run_methods(at, ["magnitude"])
    path = tmp_path / "copy.safetensors"
    L.save_layers(path, [dataclasses.replace(L.load_sample_layer("toy"), name="mine")])
    at.session_state["layer_source"] = "upload"
    at.run()
    at.file_uploader(key="_p_upload").set_value(
        ("copy.safetensors", path.read_bytes(), "application/octet-stream")).run()
    assert list(at.dataframe[0].value["time"]) == ["same contents as toy: result reused"]
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    assert "magnitude · relative error" in texts(at)
    assert "same contents as toy: result reused" in texts(at)
    results = at.session_state["results"].values()
    assert sorted(r.layer.label for r in results) == ["copy.safetensors · mine", "toy"]
    assert len({r.rel_error for r in results}) == 1 and RunStore(db).count() == 0
