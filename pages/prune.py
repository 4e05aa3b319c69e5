"""Prune: run OBS modes and baselines on the current layer, with a memory and time estimate
first."""

import streamlit as st

from obsviz import BASELINES, METHODS, OBS_MODES, PRESETS, ArgumentError, Geometry
from obsviz.estimate import format_bytes
from obsviz.geometry import nothing_pruned_text
from obsviz.hessian import check_damp
from obsviz.methods import OPTIONS, REGISTRY
from obsviz.metrics import format_rel_error

from ui import calibration, labels, layers, runner, runs, state
from ui.forms import parse_float, parse_int, preset_budget
from ui.text import md

state.require_entrypoint()
st.set_page_config(page_title="Prune · obsviz", page_icon=":material/grid_view:", layout="wide")
ss = st.session_state
form = state.prune_form(runner.DEFAULT_METHODS, runs.DEFAULT_OPTIONS)
device = state.device()


bind, changed = state.form_widgets("prune_form", "_p_", after=preset_budget(form, text=True))
bind_opt, changed_opt = state.form_widgets(lambda: ss["prune_form"].options, "_p_opt_")
errors: dict[str, str] = {}   # field -> message, shown under the field, which is marked red


runner.note_stopped()
st.title("Prune")
st.markdown("Prune the current layer with every OBS compensation mode and the usual baselines. "
            "Each finished result is kept (asking for it again is instant) and shows up on the "
            "**Compare** page.")
runs.store_notice(runs.run_store())

# ---- layer and geometry -----------------------------------------------------------------------
c_layer, c_geom = st.columns([1.15, 1], gap="large")
with c_layer:
    st.subheader("Layer")
    active = layers.picker()
    if active is not None:
        M, K = active.layer.shape
        notes = "; ".join(active.layer.notes[:1])
        st.markdown(f"**{md(active.label)}** · {calibration.layer_facts(active.layer)}")
        st.caption(f"Hessian: {md(notes or active.layer.source)}")
        calibration.layer_warning(active.layer)

geom, nnz = None, None
with c_geom:
    st.subheader("Geometry")
    if active is None:
        st.info("Choose a layer first.")
    else:
        shape = active.layer.shape
        chosen = state.chosen_geometry()
        page_fits = chosen is not None and chosen[0].weight_shape == shape
        st.radio("Geometry from", ["page", "preset"], key=bind("geo_source"),
                 on_change=changed, args=("geo_source",), horizontal=True,
                 format_func={"page": "the Geometry page", "preset": "a preset here"}.get)
        if form.geo_source == "page" and page_fits:
            geom, nnz = chosen
            st.markdown(f"**{md(geom.run_name(nnz)) if geom.name else 'free-form'}**, "
                        f"nnz = {nnz} · "
                        f"{geom.describe()}")
            st.page_link("pages/geometry.py", label="Change it on the Geometry page",
                         icon=":material/grid_view:")
        else:
            if form.geo_source == "page":
                st.caption("The Geometry page's geometry does not fit this layer "
                           f"({M} × {K}); pick a preset here.")
            cp, cn = st.columns([1.4, 1])
            cp.selectbox("Preset", PRESETS, key=bind("preset"), on_change=changed,
                         args=("preset",))
            cn.text_input("nnz (kept per scope)", key=bind("nnz"), on_change=changed,
                          args=("nnz",), max_chars=12)
            nnz_slot = cn.empty()
            try:
                geom = Geometry.preset(form.preset, shape)
            except ValueError as err:
                st.error(md(err), icon="⚠️")
                errors["preset"] = str(err)
            else:
                try:
                    nnz = geom.check_nnz(parse_int("nnz", form.nnz))
                except ValueError as err:
                    nnz_slot.error(md(err), icon="⚠️")
                    errors["nnz"] = str(err)
                    geom = None
                else:
                    st.caption(geom.describe())
        st.text_input("Damping", key=bind("damp"), on_change=changed, args=("damp",),
                      max_chars=24,
                      help="λ added to the Hessian's diagonal: damp × mean(diag H) when "
                           "below 1, else λ = damp.")
        try:
            damp = check_damp(parse_float("damp", form.damp, minimum=0.0))
        except ArgumentError as err:
            st.error(md(err), icon="⚠️")
            errors["damp"] = str(err)
            damp = None
        if geom is not None:
            st.caption(f"Runs as **{md(geom.run_name(nnz))}** · sparsity "
                       f"{geom.sparsity(nnz):.1%} · {geom.n_scopes:,} scopes of "
                       f"{geom.blocks_per_scope} blocks"
                       + (" · row-coupled" if geom.is_row_coupled else ""))
            if nnz == 0:
                st.warning("nnz = 0 keeps no block: every weight is pruned (100 % sparsity).",
                           icon="⚠️")
            elif geom.prunes_nothing(nnz):
                st.warning(md(nothing_pruned_text(geom.run_name(nnz), geom.blocks_per_scope)),
                           icon="⚠️")

# ---- methods ----------------------------------------------------------------------------------
st.subheader("Methods")
st.multiselect(
    "Methods", METHODS, key=bind("methods"), on_change=changed, args=("methods",),
    help=f"OBS modes: {', '.join(OBS_MODES)}. Baselines: {', '.join(BASELINES)}. "
         + " ".join(f"**{m}**: {REGISTRY[m].help}." for m in METHODS),
    placeholder="Choose one or more methods")
methods = [m for m in METHODS if m in form.methods]
dtypes = runner.c_dtype_options(device)
if form.options["c_dtype"] not in dtypes:   # e.g. float16 chosen on CUDA, then the CPU chosen
    form.options["c_dtype"] = "auto"

# every option of the chosen methods, as the registry declares it (one value per option name)
panel = [o for name, o in OPTIONS.items() if any(name in REGISTRY[m].option_names
                                                 for m in methods)]
if panel:
    with st.container(border=True):
        cols = st.columns(max(len(panel), 4))
        for col, option in zip(cols, panel, strict=False):
            users = [m for m in methods if option.name in REGISTRY[m].option_names]
            label = f"{option.name} ({', '.join(users)})"
            key = bind_opt(option.name)
            if option.choices is not None:
                choices = dtypes if option.name == "c_dtype" else list(option.choices)
                col.selectbox(label, choices, key=key, on_change=changed_opt,
                              args=(option.name,), help=option.help)
            else:
                low = option.type(option.minimum) if option.minimum is not None else None
                col.number_input(label, min_value=low, step=option.type(1), key=key,
                                 on_change=changed_opt, args=(option.name,), help=option.help)

c_sample, c_n = st.columns([2, 1])
c_sample.radio("Rows", ["all", "first", "every"], key=bind("sample"), on_change=changed,
               args=("sample",), horizontal=True,
               format_func={"all": "All rows", "first": "First N rows",
                            "every": "Every k-th row"}.get,
               help="A row sample for a quick what-if run on a big layer (widened to whole "
                    "groups of coupled rows); the error covers the sampled rows.")
M_rows = active.layer.shape[0] if active is not None else 1_000_000
form.first, form.every = min(form.first, M_rows), min(form.every, M_rows)
if form.sample == "first":
    c_n.number_input("N", 1, M_rows, step=16, key=bind("first"), on_change=changed,
                     args=("first",))
elif form.sample == "every":
    c_n.number_input("k", 1, M_rows, step=1, key=bind("every"), on_change=changed,
                     args=("every",))
state.mark_in_error("_p_", list(errors))

if geom is None or active is None or damp is None:
    st.stop()

sample = None if form.sample == "all" else (form.sample, int(getattr(form, form.sample)))
try:
    job = runs.Job(active, geom, nnz, damp, device, dict(form.options), sample)
    n_rows = M if sample is None else int(job.rows().numel())
except ValueError as err:
    st.error(md(err), icon="⚠️")
    st.stop()

# ---- estimate and run -------------------------------------------------------------------------
if methods:
    table = runner.estimate(job, methods)
    done_as = {m: runs.done_as(job, m) for m in methods}
    st.dataframe(
        {"method": [e["method"] for e in table],
         "memory": [format_bytes(e["memory"]) for e in table],
         "time": [runs.reused_text(done_as[e["method"]], active.label)
                  if done_as[e["method"]] is not None
                  else f"~{e['seconds']:.1f} s" if e["seconds"] >= 0.05 else "< 0.1 s"
                  for e in table],
         "fits": ["✓" if e["fits"] else "too big: use a row sample" for e in table]},
        hide_index=True, width="stretch")
    free = table[0]["free"]
    st.caption(f"Estimates for {n_rows:,} of {M:,} rows on {job.device} (the device is chosen "
               "in the sidebar)" + (f"; {format_bytes(free)} free now." if free is not None
                                    else "."))

c_run, c_stop, _ = st.columns([1, 1, 5])
run = c_run.button("Run", type="primary", disabled=not methods, icon=":material/play_arrow:",
                   width="stretch")
if run:
    # Any click stops a running script; this button makes that visible while the run lasts.
    stop = c_stop.empty()
    stop.button("Stop", icon=":material/stop:", width="stretch")
    runner.run_methods(job, methods)
    stop.empty()

# ---- the latest run ---------------------------------------------------------------------------
last = ss.get("last_run") or []
if last and not run:
    stored = runs.store()
    layer_labels = {stored[e["key"]].layer.label for e in last if e.get("key") in stored}
    st.subheader("Latest run")
    with st.container(border=True):
        if len(layer_labels) == 1:
            st.markdown(f"On **{md(layer_labels.pop())}**")
        for entry in last:
            if entry["status"] in ("done", "cached") and entry["key"] in stored:
                r = stored[entry["key"]]
                rep = r.report
                valid = "valid" if rep["valid"] else f"**invalid** ({rep['bad_scopes']} scopes)"
                st.markdown(
                    f":green[:material/check_circle:] **{md(labels.describe(r.job, r.method))}**"
                    f" · relative error **{format_rel_error(r.rel_error)}** · sparsity "
                    f"{rep['sparsity']:.1%} · {valid} · {r.seconds:.2f} s on "
                    f"{rep['device']}" + (f" · {md(runs.reused_text(r.reused_from, r.layer.label))}"
                                          if entry["status"] == "cached" else ""))
            else:
                icon = (":orange[:material/pause_circle:]" if entry["status"] == "stopped"
                        else ":red[:material/error:]")
                st.markdown(f"{icon} **{md(entry['method'])}** {entry['status']}: "
                            f"{md(entry.get('message', ''))}")
if runs.store():
    st.page_link("pages/compare.py", label="Compare the results side by side",
                 icon=":material/compare_arrows:")
