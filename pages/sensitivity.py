"""Sensitivity: which layers to spare. Prune each layer of a real model alone, see the damage each
does, build a plan that spares the most sensitive ones, check it by a real run and compare it
with the uniform plan.

Scans (and the plans checked from them) are kept in the run database (``sensitivity_scans``) as
they go; each checked plan's run is a model run too, so the Model page opens it.
``sensitivity_result``: ``scan`` (the scan shown), ``id`` (its row), ``running``, ``selected``
(a layer name), ``shown`` (the k of the plan drawn beside the uniform one). What the page does
besides drawing is in ``ui.scans``."""

import pandas as pd
import streamlit as st

from obsviz import METHODS, PRESETS
from obsviz import sensitivity as sens
from obsviz.errors import ArgumentError
from obsviz.figures.sensitivity import curve_figure, damage_figure, plan_figures
from obsviz.metrics import format_rel_error
from obsviz.model import MAX_EVAL_TOKENS, MAX_TOKENS, Plan, plan_summary

from ui import folders, runs, scans, state
from ui.forms import preset_budget
from ui.text import md

state.require_entrypoint()
st.set_page_config(page_title="Sensitivity · obsviz", page_icon=":material/tune:",
                   layout="wide")
ss = st.session_state
form = ss.setdefault("sensitivity_form", {
    "source": "minilm", "path": "", "preset": "2:4", "nnz": 2, "method": "sparsegpt",
    "damp": 0.01, "cal_tokens": MAX_TOKENS, "eval_tokens": MAX_EVAL_TOKENS,
    "seq_len": 128, "goal": "k", "k": 4,
    "within": 0.05, "spare": "dense", "curve": "0, 2, 4, 8, 16"})
SPARES = ["dense", "4:8", "1:2", "2:8"]


bind, changed = state.form_widgets("sensitivity_form", "_n_", after=preset_budget(form))


st.title("Sensitivity")
st.markdown(
    "Which layers should keep their weights? Prune **each layer alone** (every other layer "
    "dense, its Hessian from the dense model) and measure what that one layer does to the "
    "model on **held-out text**. Then spare the most sensitive layers (dense, or a gentler "
    "pattern), and check the plan by a real run: damage does not add up exactly.")

# ---- stored scans -----------------------------------------------------------------------------
db = runs.run_store()
try:
    stored = db.scans(limit=200) if db is not None else []
except Exception:
    stored = []
runs.store_notice(db, "new scans made here are kept in this session only")
if stored:
    with st.expander(f"Stored scans ({len(stored)})", icon=":material/history:",
                     expanded=not ss.get("sensitivity_result")):
        by_id = {r.id: r for r in stored}
        c_pick, c_open = st.columns([5, 1], vertical_alignment="bottom")
        pick = c_pick.selectbox(
            "Stored scan", list(by_id), key="_n_stored",
            format_func=lambda i: (f"#{i} · {by_id[i].name} · {by_id[i].plan} · "
                                   f"{by_id[i].layers}/{by_id[i].total} layers · "
                                   f"{by_id[i].checks} plans · {by_id[i].created[:16]} UTC"
                                   f"{'' if by_id[i].status == 'done' else ' · ' + by_id[i].status}"
                                   )[:400])
        if c_open.button("Open this scan", icon=":material/folder_open:", width="stretch",
                         key="_n_open"):
            try:
                got = db.scan(pick)
            except Exception as err:
                scans.problem("That stored scan cannot be shown.", str(err)[:600])
            else:
                ss["sensitivity_result"] = {"scan": got.scan, "id": got.id, "running": False}

# ---- what to scan -----------------------------------------------------------------------------
c_model, c_plan, c_size = st.columns([1.2, 1.2, 1], gap="large")
with c_model:
    st.radio("Checkpoint", ["minilm", "local"], key=bind("source"), on_change=changed,
             args=("source",), format_func={"minilm": "all-MiniLM-L6-v2 (shipped)",
                                            "local": "a local checkpoint folder"}.get)
    if form["source"] == "local":
        st.text_input("Folder on the server", key=bind("path"), on_change=changed,
                      args=("path",), placeholder="/models/gpt2")
    st.caption("Calibration: the Jargon File excerpt; held-out: The Devil's Dictionary "
               "(shipped). The CLI takes other texts (`obsviz sensitivity --calibration …`).")
with c_plan:
    cp, cn = st.columns(2)
    cp.selectbox("Preset", PRESETS, key=bind("preset"), on_change=changed, args=("preset",))
    cn.number_input("nnz (kept per scope)", min_value=0, step=1, key=bind("nnz"),
                    on_change=changed, args=("nnz",))
    cm, cd = st.columns(2)
    cm.selectbox("Method", METHODS, key=bind("method"), on_change=changed, args=("method",),
                 help="sparsegpt scans MiniLM in well under a minute; true_obs takes minutes.")
    cd.number_input("Damping", min_value=0.0, step=0.005, format="%.4f", key=bind("damp"),
                    on_change=changed, args=("damp",))
with c_size:
    st.number_input("Calibration tokens", 64, 200_000, step=256, key=bind("cal_tokens"),
                    on_change=changed, args=("cal_tokens",))
    st.number_input("Held-out tokens", 64, 200_000, step=256, key=bind("eval_tokens"),
                    on_change=changed, args=("eval_tokens",))
    st.number_input("Sequence length", 16, 2048, step=16, key=bind("seq_len"),
                    on_change=changed, args=("seq_len",))
base = Plan(form["preset"], nnz=int(form["nnz"]), method=form["method"],
            options={"damp": float(form["damp"])})

c_run, c_stop, _ = st.columns([1, 1, 5])
go = c_run.button("Scan", type="primary", icon=":material/play_arrow:", width="stretch",
                  disabled=scans.folder(form) is None)
if scans.folder(form) is None:
    st.caption(folders.REFUSED if form["path"].strip() else
               "Type a checkpoint folder on the server (config.json, *.safetensors weights).")
if go:
    c_stop.button("Stop", icon=":material/stop:", width="stretch")   # any click ends the script
    settings = {k: form[k] for k in ("source", "path", "cal_tokens", "eval_tokens", "seq_len")}
    settings["device"] = state.device()
    result = {"scan": {"app": settings}, "id": None, "running": True}
    ss["sensitivity_result"] = result
    bar = st.progress(0.0, text="Preparing the texts…")
    run = scans.the_run(settings)
    if run is not None:
        try:
            sens.scan(run, base, progress=lambda f, m: bar.progress(min(1.0, f), text=m),
                      on_layer=lambda e, s: scans.keep(result), into=result["scan"])
            scans.keep(result, "stopped" if result["scan"]["stopped"] else "done")
        except ArgumentError as err:
            scans.problem("The scan was refused.", str(err))
        except Exception as err:
            scans.problem("The scan failed.", f"{type(err).__name__}: {err}"[:600])
            scans.keep(result, "failed", f"{type(err).__name__}: {err}"[:600])
    result["running"] = False   # a Stop click ends the script before this: see below
    bar.empty()

# ---- the scan ---------------------------------------------------------------------------------
result = ss.get("sensitivity_result")
if result and result.get("running") and not go:
    st.warning("The last scan was stopped before it finished; the layers it completed are "
               "below.", icon=":material/pause_circle:")
    result["running"] = False
    result["scan"]["stopped"] = True
    scans.keep(result, "stopped")
data = result["scan"] if result else None
if not data or not data.get("layers"):
    if not result:
        st.info("Choose a model and a plan, then **Scan**. With the defaults (MiniLM, 2:4, "
                "SparseGPT) the 36 layers take under a minute.", icon=":material/info:")
    st.stop()

info = data["model"]
st.subheader("Damage of each layer, pruned alone")
st.caption(
    f"{md(info['name'])}: {len(data['layers'])} of {data.get('total', len(data['layers']))} "
    f"layers, {md(plan_summary(data['plan']))} with {md(data['layers'][0]['method'])}, "
    f"in {data.get('seconds', 0):.0f} s · damage = {md(data.get('damage', ''))} on "
    f"{info['evaluation']['tokens']:,} held-out tokens · the number above each bar is its block"
    + (f" · kept as scan #{result['id']}" if result.get("id") else ""))
if result.get("store_error"):
    st.caption("Not kept in the run database:")
    st.text(result["store_error"])
event = st.plotly_chart(damage_figure(data, selected=result.get("selected")), width="stretch",
                        on_select="rerun", selection_mode="points", key="_n_bars")
points = (event.selection.points if event and event.selection else []) or []
if points and points[0].get("customdata"):
    names = {e["name"] for e in data["layers"]}
    clicked = str(points[0]["customdata"][0]).replace("&lt;", "<").replace(
        "&gt;", ">").replace("&amp;", "&")
    result["selected"] = clicked if clicked in names else result.get("selected")
with st.expander("Every layer (table)", icon=":material/table:"):
    metric = sens.END_METRIC[info["kind"]]
    st.dataframe(pd.DataFrame([
        {"rank": i + 1, "layer": e["name"], "block": e["block"], "kind": e["kind"],
         "shape": f"{e['shape'][0]} × {e['shape'][1]}", "damage %": round(100 * e["damage"], 4),
         metric: round(e["metrics"][metric], 5), "own error": format_rel_error(e["rel_error"]),
         "seconds": round(e["seconds"] + e.get("eval_seconds", 0), 2)}
        for i, e in enumerate(sens.ranking(data))]), hide_index=True, width="stretch")

# ---- one layer: its masks and error maps on the Compare page -----------------------------------
chosen = next((e for e in data["layers"] if e["name"] == result.get("selected")), None)
if chosen is None:
    st.caption("Click a bar to open that layer's masks and error maps.")
else:
    c_txt, c_btn = st.columns([3, 1], vertical_alignment="center")
    c_txt.markdown(f"**{md(chosen['name'])}** ({md(chosen['kind'])}, block {chosen['block']}, "
                   f"{chosen['shape'][0]} × {chosen['shape'][1]}): damage "
                   f"{100 * chosen['damage']:.3f} %, own error "
                   f"{format_rel_error(chosen['rel_error'])}.")
    if c_btn.button("Masks and error maps", icon=":material/compare_arrows:", width="stretch",
                    key="_n_maps"):
        scans.open_maps(data, chosen, form)

# ---- a plan from the scan ---------------------------------------------------------------------
st.subheader("A plan that spares the most sensitive layers")
n_layers = len(data["layers"])
c_goal, c_val, c_spare = st.columns([1.4, 1, 1])
c_goal.radio("Goal", ["k", "within"], key=bind("goal"), on_change=changed, args=("goal",),
             format_func={"k": "spare the k most sensitive layers",
                          "within": "the fewest spared layers within a damage budget"}.get)
if form["goal"] == "k":
    form["k"] = min(int(form["k"]), n_layers)
    c_val.number_input("k", 0, n_layers, step=1, key=bind("k"), on_change=changed,
                       args=("k",))
else:
    c_val.number_input(f"Damage budget ({md(data.get('damage', ''))})", 0.0, 10.0,
                       step=0.01, format="%.4f", key=bind("within"), on_change=changed,
                       args=("within",))
c_spare.selectbox("Spared layers get", SPARES, key=bind("spare"), on_change=changed,
                  args=("spare",), format_func=lambda s: "dense (not pruned)" if s == "dense"
                  else f"{s} (gentler)")
try:
    base_of_scan = Plan.from_dict(data["plan"])
except ArgumentError as err:
    scans.problem("The scan's plan cannot be read back.", str(err))
    st.stop()
if form["goal"] == "k":
    top = [e["name"] for e in sens.ranking(data)[:int(form["k"])]]
    st.caption(f"The plan: {md(plan_summary(base_of_scan.describe()))} on every layer, "
               + (f"{len(top)} layer{'s' if len(top) != 1 else ''} {md(form['spare'])}: "
                  + ", ".join(md(n) for n in top) if top else "no layer spared") + ".")
c_check, c_curve, c_ks, _ = st.columns([1, 1.3, 1.2, 2], vertical_alignment="bottom")
check_it = c_check.button("Run this plan", icon=":material/play_arrow:", type="primary",
                          width="stretch")
c_ks.text_input("k for the curve", key=bind("curve"), on_change=changed, args=("curve",))
curve_it = c_curve.button("Measure the curve", icon=":material/show_chart:", width="stretch")
if check_it or curve_it:
    scans.check_plans(result, base_of_scan, form, "curve" if curve_it else form["goal"])

checks = sorted(data.get("checks", []), key=lambda c: c["pruned_fraction"], reverse=True)
if checks:
    fewest = data.get("fewest")
    if fewest and fewest.get("k") is not None:
        st.success(f"Fewest spared layers within {fewest['within']:.4f}: **{fewest['k']}** "
                   "(each candidate checked by a real run; listed below).",
                   icon=":material/check_circle:")
    metric = sens.END_METRIC[info["kind"]]
    st.dataframe(pd.DataFrame([
        {"plan": sens.check_label(c), "weights pruned": f"{100 * c['pruned_fraction']:.1f} %",
         "damage": "stopped" if c["damage"] is None else f"{100 * c['damage']:.3f} %",
         metric: round(c["metrics"].get(metric, float("nan")), 5),
         "spared": ", ".join(c["spared"]),
         "model run": f"#{c['model_run']}" if c.get("model_run") else "–"}
        for c in checks]), hide_index=True, width="stretch")
    t_curve, t_layers, t_drift = st.tabs(["Damage vs weights pruned", "Error per layer",
                                          "Drift per block"])
    with t_curve:
        st.caption("Each point is a real sequential run of a plan that spares the k most "
                   "sensitive layers of the scan.")
        st.plotly_chart(curve_figure(checks), width="stretch")
    shown_k = result.get("shown")
    pair = [c for c in checks if c["k"] == 0][:1] + [
        c for c in checks if c["k"] == shown_k and shown_k][:1]
    try:
        report = sens.checks_report(data, pair or checks[:2])
    except ArgumentError as err:
        report = None
        scans.problem("Those runs cannot be drawn.", str(err))
    if report:
        f_layers, f_drift = plan_figures(report)
        with t_layers:
            st.caption("The uniform plan and the plan shown, in the Model page's view "
                       "(spared dense layers have no error).")
            st.plotly_chart(f_layers, width="stretch")
        with t_drift:
            st.plotly_chart(f_drift, width="stretch")
    st.caption("Every checked plan is also a model run: the **Model** page opens it with all "
               "its views.")
