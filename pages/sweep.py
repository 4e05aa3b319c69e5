"""Sweep: define a small grid (layers × presets × methods × nnz × damp) and run it here, or open a
stored sweep; every trial is kept in the run database, so results outlive the session.

Session-state keys: ``sweep_running`` (``dict`` while a run is in progress: its name and trial
count; still set on the next script run when the run was stopped), ``sweep_open`` (the stored
sweep shown), ``sweep_last`` (the latest run's counts), ``sweep_filters`` (the filters' choices
and the values they were offered, for the sweep shown).
"""

import streamlit as st

from obsviz import METHODS, PRESETS, Geometry
from obsviz.estimate import time_estimate
from obsviz.figures import sweep as sfig
from obsviz.store import RunStore, StoreError, default_store_path
from obsviz.sweep import SpecError, parse_spec, plan, sweep

from ui import runs, state
from ui.text import md

state.require_entrypoint()
st.set_page_config(page_title="Sweep · obsviz", page_icon=":material/grid_view:",
                   layout="wide")
ss = st.session_state
st.title("Sweep")
st.markdown("A grid of **layers × geometries × methods × nnz × damping**, each trial pruned and "
            "kept in the run database. Trials already done are skipped, so a stopped sweep "
            "resumes where it ended.")

MAX_APP_TRIALS = 400  # bigger grids: `obsviz sweep SPEC.toml` (locally or on Ray)
DAMPS = [0.001, 0.01, 0.1]


@st.cache_resource(show_spinner=False, max_entries=4)
def open_store(path: str) -> RunStore:
    return RunStore(path)


store_path = default_store_path()
try:
    store = open_store(str(store_path))
except (StoreError, OSError) as err:
    st.error("The run database cannot be opened; set OBSVIZ_STORE to another file.",
             icon="⚠️")
    st.code(str(err), language=None)
    st.stop()
st.caption("Run database (set `OBSVIZ_STORE` to use another):")
st.code(str(store.path), language=None)
runs.store_notice(store, "a new sweep cannot run on it")


def show_error(title: str, err: Exception) -> None:
    st.error(title, icon="⚠️")
    st.code(str(err), language=None)  # the message may quote what was typed: never markup


# ---- define a grid ------------------------------------------------------------------------------
samples = state.sample_layer_names()
current = ss.get("layer_name") if ss.get("layer_name") in samples else None
user = ss.get("user_layer")
with st.expander("New sweep", expanded=not store.sweeps(), icon=":material/add:"):
    c1, c2 = st.columns(2)
    name = c1.text_input("Sweep name", value="app grid", max_chars=100, key="_sw_name",
                         help="Runs are filed under this name; open them again below.")
    layer_names = c1.multiselect(
        "Sample layers", samples, default=[current] if current else samples[:1],
        key="_sw_layers", help="Real MiniLM layers shipped with obsviz (and the 8 × 16 toy).")
    use_user = False
    if user is not None:
        use_user = c1.checkbox(f"Also the Prune page's layer ({md(user.label, 60)})",
                               key="_sw_user")
    presets = c2.multiselect("Presets", list(dict.fromkeys([*PRESETS, "4:8", "1:4", "2:8"])),
                             default=["2:4", "4:8", "1:4"], key="_sw_presets",
                             help="The reference patterns and a few N:M (N of every M "
                                  "contiguous weights of a row kept).")
    methods = c2.multiselect("Methods", list(METHODS),
                             default=["magnitude", "wanda", "sparsegpt"], key="_sw_methods")
    c3, c4, c5 = st.columns(3)
    nnz_text = c3.text_input("nnz (blocks kept per scope)", value="", max_chars=60,
                             key="_sw_nnz", help="Comma-separated, e.g. 1, 2. Blank: each "
                                                 "preset's own (2 of 4 for 2:4).")
    damps = c4.multiselect("Damping", DAMPS, default=[0.01], key="_sw_damp")
    first_rows = c5.number_input("First rows only (0 = all)", min_value=0, max_value=100_000,
                                 value=0, step=16, key="_sw_rows",
                                 help="Prune only the first rows of each layer: a quick what-if.")
    grid = {"presets": presets, "methods": methods, "damp": damps}
    spec = None
    try:
        nnz = [int(v) for v in nnz_text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        st.error("nnz: give whole numbers separated by commas, or leave it blank.", icon="⚠️")
        nnz = None
    else:
        if nnz:
            grid["nnz"] = nnz
        if first_rows:
            grid["first_rows"] = int(first_rows)
        layers = [{"sample": n} for n in layer_names]
        if use_user:
            layers.append(user.layer)
        try:
            spec = parse_spec({"name": name or "app grid", "layers": layers, "grid": grid})
        except SpecError as err:
            show_error("The grid is not complete yet.", err)
    trials, warnings = [], []
    if spec is not None:
        try:
            planned = plan(spec, device=ss["device"])
            trials, warnings = planned.trials, planned.warnings
        except (SpecError, ValueError) as err:
            show_error("The grid cannot be expanded.", err)
    for warning in warnings:  # a choice that prunes nothing, said before it runs
        st.warning(md(warning, limit=600), icon="⚠️")
    if trials:
        runnable = [t for t in trials if t.error is None]
        done = store.done_keys([t.key for t in trials])
        est = 0.0
        for t in runnable:
            if t.key not in done:
                g = Geometry.from_dict(t.geometry_spec)
                est += time_estimate(g, t.method, len(t.rows) if t.rows else None, t.device)
        unfit = len(trials) - len(runnable)
        st.caption(f"{len(trials)} trials, {len(done)} of them already in the database"
                   + (f", {unfit} that cannot run (the geometry or nnz does not fit the layer: "
                      "recorded as failed)" if unfit else "")
                   + f" · about {est:.0f} s on {ss['device']}.")
    too_many = len(trials) > MAX_APP_TRIALS
    if too_many:
        st.warning(f"{len(trials)} trials is more than the {MAX_APP_TRIALS} this page runs; "
                   "make the grid smaller or use `obsviz sweep SPEC.toml` (locally or on Ray).")
    run = st.button("Run the sweep", type="primary", icon=":material/play_arrow:",
                    disabled=not trials or too_many or store.readonly, key="_sw_run")

if ss.get("sweep_running") and not run:  # the previous script run ended mid-sweep
    was = ss.pop("sweep_running")
    st.warning(f"Sweep stopped before its {was['total']} trials ended. The finished ones are "
               "kept; run it again to resume.", icon=":material/stop_circle:")
    ss["sweep_open"] = was["name"]

if run and spec is not None:
    ss["sweep_running"] = {"name": spec.name, "total": len(trials)}
    st.button("Stop", icon=":material/stop:", key="_sw_stop",
              help="Stops after the trial running now; finished trials stay in the database.")
    bar = st.progress(0.0, text="Loading the layers…")

    def progress(s) -> None:
        frac = s.finished / s.total if s.total else 1.0
        eta = "" if s.eta_s is None else f" · about {s.eta_s:.0f} s left"
        bar.progress(frac, text=f"{s.finished} / {s.total} trials · {s.done} run, {s.skipped} "
                                f"already done, {s.failed} failed{eta}")

    report = sweep(spec, store=store, progress=progress, device=ss["device"])
    ss.pop("sweep_running", None)
    ss["sweep_last"] = {"name": report.name, "done": report.done, "failed": report.failed,
                        "skipped": report.skipped, "seconds": report.seconds,
                        "thin": report.thin}
    ss["sweep_open"] = report.name
    st.rerun()

last = ss.get("sweep_last")
if last:
    st.success(f"Sweep finished in {last['seconds']:.1f} s: {last['done']} trials run, "
               f"{last['skipped']} already done, {last['failed']} failed.",
               icon=":material/check_circle:")
    for warning in last.get("thin", []):   # the errors of these layers look better than they are
        st.warning(md(warning, limit=600), icon="⚠️")

# ---- open a stored sweep ------------------------------------------------------------------------
st.subheader("Results")
sweeps = store.sweeps()
if not sweeps:
    st.info("No sweeps in the database yet: define a grid above and run it (or run "
            "`obsviz sweep SPEC.toml` from a terminal).")
    st.stop()
names = [s["sweep"] for s in sweeps]
counts = {s["sweep"]: s for s in sweeps}
opened = ss.get("sweep_open") if ss.get("sweep_open") in names else names[0]
chosen = st.selectbox(
    "Stored sweep", names, index=names.index(opened), key="_sw_open",
    format_func=lambda n: f"{n} · {counts[n]['done']} done, {counts[n]['failed']} failed · "
                          f"last {str(counts[n]['last'])[:16].replace('T', ' ')}")
ss["sweep_open"] = chosen
df = sfig.runs_table(store.runs(sweep=chosen))

def follow_data(fields: dict[str, list]) -> dict[str, list]:
    """The filters' choices for the values shown now: every value of another sweep, and of this
    one every value not offered before (a resumed sweep's new layers) besides those still
    picked. The widgets are primed from it (``sweep_filters``)."""
    kept = ss.get("sweep_filters")
    if not kept or kept["sweep"] != chosen:
        kept = {"sweep": chosen, "offered": {}, "picked": {}}
    picked = {}
    for field, values in fields.items():
        offered = kept["offered"].get(field, [])
        was = ss.get(f"_sw_f_{field}", kept["picked"].get(field, values)) if offered else values
        picked[field] = [v for v in values if v in was or v not in offered]
        ss[f"_sw_f_{field}"] = picked[field]
    ss["sweep_filters"] = {"sweep": chosen, "offered": fields, "picked": picked}
    return picked


FILTERS = {"layer": "Layers", "geometry": "Geometries", "method": "Methods", "status": "Status"}
follow_data({field: list(dict.fromkeys(df[field])) for field in FILTERS})
pick = {}
for col, (field, label) in zip(st.columns(len(FILTERS)), FILTERS.items(), strict=True):
    pick[field] = col.multiselect(label, list(dict.fromkeys(df[field])), key=f"_sw_f_{field}")
ss["sweep_filters"]["picked"] = pick
view = df[df[list(pick)].isin(pick).all(axis=1)] if len(df) else df
done = view[view["status"] == "done"]
st.caption(f"{len(view)} of {len(df)} runs shown · {len(done)} done, "
           f"{len(view) - len(done)} failed.")

empty = sfig.nothing_pruned(view)
if len(empty):
    names = ", ".join(dict.fromkeys(empty["geometry"]))
    st.info(f"{len(empty)} finished trial{'s prune' if len(empty) > 1 else ' prunes'} nothing "
            f"({md(names)}: nnz keeps every block of a scope): 0 % sparsity, so no error by "
            "construction. They are in the table, not in the charts.", icon=":material/info:")
levels = sfig.sparsity_levels(view)
if levels:
    c_level, c_damp, _ = st.columns([1, 1, 2])
    counts_at = {v: len(sfig.at_level(done, v)) for v in levels}
    if ss.get("_sw_level") not in levels:   # the level with the most trials
        ss["_sw_level"] = max(levels, key=lambda v: (counts_at[v], -v))
    level = c_level.selectbox(
        "Sparsity", levels, key="_sw_level",
        format_func=lambda v: f"{v:.1%} ({counts_at[v]} trials)",
        help="The heatmaps and error vs time show one sparsity at a time, so each cell and "
             "point compares like with like.")
    damps = sorted(float(d) for d in sfig.at_level(done, level)["damp"].dropna().unique())
    damp = None
    if len(damps) > 1:
        if ss.get("_sw_level_damp") not in damps:
            ss["_sw_level_damp"] = damps[0]
        damp = c_damp.selectbox("Damping", damps, key="_sw_level_damp",
                                format_func=lambda d: f"{d:g}",
                                help="One damping at a time in the heatmaps and error vs time.")
    t1, t2, t3 = st.tabs(["Error vs sparsity", "Layer × geometry", "Error vs time"])
    with t1:
        st.plotly_chart(sfig.pareto_figure(view), key="_sw_pareto")
        st.caption("Each dot is a finished trial at the sparsity of the rows it pruned; the line "
                   "joins the trials of that method that no other trial of it beats (as sparse "
                   "or sparser, with no more error).")
    with t2:
        for method in dict.fromkeys(sfig.at_level(done, level, damp)["method"]):
            st.plotly_chart(sfig.heatmap_figure(view, method, level, damp),
                            key=f"_sw_heat_{method}")
        st.caption(f"Relative error at {level:.1%} sparsity"
                   + ("" if damp is None else f" and damping {damp:g}")
                   + "; – where no trial finished (failed, or filtered out). A cell holds one "
                     "trial, or says what it is the mean of.")
    with t3:
        st.plotly_chart(sfig.time_figure(view, level, damp), key="_sw_time")
        st.caption(f"The trials at {level:.1%} sparsity"
                   + ("" if damp is None else f" and damping {damp:g}") + ".")

st.dataframe(sfig.display_table(view), hide_index=True, key="_sw_table")
e1, e2 = st.columns(2)
stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in chosen)[:60] or "sweep"
e1.download_button("Download CSV", sfig.csv_bytes(view), file_name=f"{stem}.csv",
                   mime="text/csv", icon=":material/download:", key="_sw_csv")
e2.download_button("Download Parquet", sfig.parquet_bytes(view), file_name=f"{stem}.parquet",
                   mime="application/vnd.apache.parquet", icon=":material/download:",
                   key="_sw_parquet")
