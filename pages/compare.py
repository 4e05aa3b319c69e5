"""Compare: pruning results side by side — where each method puts its error, and how much.

Choose results (any finished run, by run key; by default the latest run's), then: the metrics
table and the what-if table (error by method and setting, across geometries and layers), error
by method and the per-row error distribution, the maps of one layer side by side, the difference
between two results, downloads.
"""

import streamlit as st

from obsviz import DEFAULT_SAMPLE, Geometry
from obsviz.figures import results as rfig
from obsviz.metrics import format_rel_error
from obsviz.store import TENSORS_GONE

from ui import exports, labels, layers, result_maps, runner, runs, state, stored_runs
from ui.text import md

state.require_entrypoint()
st.set_page_config(page_title="Compare · obsviz", page_icon=":material/grid_view:",
                   layout="wide")
ss = st.session_state
st.title("Compare")

#: Most map panels one figure draws; beyond, the page says how many it left out.
MAX_PANELS = 36


def first_job() -> runs.Job | None:
    """The current layer (else the default sample) with the chosen geometry (else 2:4)."""
    active = state.current_layer() or layers.sample(DEFAULT_SAMPLE)
    if active is None:
        return None
    chosen = state.chosen_geometry()
    if chosen is None or chosen[0].weight_shape != active.layer.shape:
        geom = Geometry.preset("2:4", active.layer.shape)
        chosen = geom, geom.nnz
    return runs.Job(active, *chosen, device=state.device())




def offer_fast_modes(job: runs.Job) -> None:
    """The fast modes on ``job``'s layer and geometry, one click away."""
    fast = runner.fast_methods(job)
    st.caption(f"{', '.join(fast)} on **{md(job.layer.label)}** "
               f"({job.layer.layer.shape[0]} × {job.layer.layer.shape[1]}) with "
               f"**{md(labels.geometry_text(job.geometry, job.nnz))}**, nnz = {job.nnz}, on "
               f"{job.device}.")
    if st.button("Run the fast modes", type="primary", icon=":material/bolt:"):
        runner.run_methods(job, fast)
        st.rerun()


more = stored_runs.sync()   # stored runs are results: listed after a restart as before it
runs.store_notice(runs.run_store())   # the fast modes run here
everything = runs.store()
job = first_job()
if not everything:
    st.markdown("Nothing to compare yet: run some methods on the **Prune** page, or start "
                "with the fast modes here.")
    if job is None:
        st.info("No sample layer is available; upload one on the Prune page.")
        st.stop()
    offer_fast_modes(job)
    st.stop()
if job is not None and not any(r.layer.digest == job.layer.digest for r in everything.values()):
    st.markdown(f"Nothing has run on **{md(job.layer.label)}** yet; the results below are of "
                "other layers. Start with the fast modes here, or run methods on the **Prune** "
                "page.")
    offer_fast_modes(job)

# ---- choose -----------------------------------------------------------------------------------
keys = list(everything)                               # oldest first
names = labels.shown_labels(list(everything.values()))  # unique among every run
latest = [e["key"] for e in ss.get("last_run", []) if e.get("key") in everything] or \
    stored_runs.latest()        # after a restart: the latest stored run's results
newest_layer = everything[keys[-1]].layer.digest
default = latest or [k for k in keys if everything[k].layer.digest == newest_layer]
if ss.get("_c_for") != default:         # a new run since the last pick: show it
    ss["_c_for"] = default
    ss["compare_pick"] = default
ss["_c_pick"] = [k for k in ss.get("compare_pick", default) if k in everything]


def _pick(chosen: list[str]) -> None:
    ss["compare_pick"] = chosen
    ss["_c_pick"] = chosen


st.multiselect(
    f"Results ({len(keys)}: this session's and the run store's)", keys, key="_c_pick",
    format_func=lambda k: names[k].short, on_change=state.copy_widget,
    args=("_c_pick", "compare_pick"), placeholder="Pick results to compare",
    help="Every finished run, of this session and kept in the run store (earlier sessions, "
         "sweeps), on any layer and geometry. By default the latest run's results are shown.")
if more:
    st.caption(f"The {stored_runs.MAX_LISTED:,} newest stored runs are listed; open older ones "
               "from the Sweep page's table or with `obsviz.RunStore`.")
b_latest, b_all, b_layer, _ = st.columns([1, 1, 1.3, 3])
b_latest.button(f"Latest run ({len(latest)})", on_click=_pick, args=(latest,),
                disabled=not latest, width="stretch")
b_all.button(f"All ({len(keys)})", on_click=_pick, args=(keys,), width="stretch")
same_layer = [k for k in keys if everything[k].layer.digest == newest_layer]
b_layer.button(f"Newest layer ({len(same_layer)})", on_click=_pick, args=(same_layer,),
               width="stretch")
chosen = [everything[k] for k in ss["_c_pick"]]
gone = runs.without_weights(chosen)
if gone:
    st.warning(f"{TENSORS_GONE[0].upper()}{TENSORS_GONE[1:]}, so the charts leave "
               f"{'it' if len(gone) == 1 else 'them'} out: "
               + "; ".join(f"{md(names[r.key].short)} (relative error "
                           f"{format_rel_error(r.rel_error)}, {r.seconds:.2f} s)" for r in gone)
               + ".", icon=":material/broken_image:")
    chosen = [r for r in chosen if r not in gone]
if not chosen:
    st.info("Pick at least one result.")
    st.stop()

shown = labels.shown_labels(chosen)
away = list(dict.fromkeys(r.layer.label for r in chosen if not r.layer.loaded))
if away:
    st.info(f"{'These layers are' if len(away) > 1 else 'This layer is'} not here, only "
            f"{'their' if len(away) > 1 else 'its'} runs in the run store: "
            f"**{md(', '.join(away))}**. Metrics and tables come from the store; the per-row "
            "errors and the error and |ΔW| maps need the layer's W and H (upload its file on "
            "the Prune page to see them), the stored pruned weights and mask are shown "
            "instead.", icon=":material/database:")
by_layer: dict[str, list[runs.Run]] = {}
for r in chosen:
    by_layer.setdefault(r.layer.digest, []).append(r)
settings = rfig.settings_of(list(shown.values()))
st.caption(
    f"{len(chosen)} result{'s' if len(chosen) > 1 else ''} on {len(by_layer)} layer"
    f"{'s' if len(by_layer) > 1 else ''}. Colour is the method, the same in every chart"
    + ("; each setting (what differs beside the method) has its own bar pattern, line dash "
       "and row of maps." if len(settings) > 1 else "."))

# ---- metrics ----------------------------------------------------------------------------------
st.subheader("Metrics")
rows = []
for r in chosen:
    rep, facet = r.report, labels.facets(r)
    rows.append({
        "result": shown[r.key].short,
        "relative error": format_rel_error(rep["rel_error"])
        + (" (prunes nothing)" if r.job.geometry.prunes_nothing(r.job.nnz) else ""),
        **{f"row {q}": ("– (needs W)" if rep[f"row_rel_error_{q}"] is None
                        else format_rel_error(rep[f"row_rel_error_{q}"]))
           for q in ("p50", "p90", "p99", "max")},
        "sparsity": rep["sparsity"] * 100, "valid": rep["valid"], "seconds": rep["seconds"],
        "method": r.method,
        "options": ", ".join(f"{k}={v}" for k, v in facet["options"].items()),
        "geometry": facet["geometry"], "nnz": r.job.nnz, "layer": facet["layer"],
        "rows": facet["sample"], "device": rep["device"], "damp": r.job.damp})
st.dataframe(
    rows, hide_index=True, width="stretch",
    column_config={
        "result": st.column_config.TextColumn(pinned=True),
        "relative error": st.column_config.TextColumn(help="‖XΔWᵀ‖ / ‖XW₀ᵀ‖"),
        "row p50": st.column_config.TextColumn(help="median per-row relative error"),
        "sparsity": st.column_config.NumberColumn(format="%.1f%%"),
        "valid": st.column_config.CheckboxColumn(
            help="every block kept or pruned whole, every scope keeps exactly nnz"),
        "seconds": st.column_config.NumberColumn(format="%.2f"),
    })

if len(settings) > 1:
    st.markdown("**Relative error by method and setting**")
    variants, cols, cells = rfig.error_by_variant(list(shown.values()),
                                                  [r.rel_error for r in chosen])
    empty = {(shown[r.key].variant, shown[r.key].setting) for r in chosen
             if r.job.geometry.prunes_nothing(r.job.nnz)}   # 0 % sparsity: no error to compare
    st.dataframe([{"method": v, **{c or "–": ("—" if e is None else "prunes nothing"
                                             if (v, c) in empty else format_rel_error(e))
                                   for c, e in zip(cols, row, strict=True)}}
                  for v, row in zip(variants, cells, strict=True)],
                 hide_index=True, width="stretch")
    st.caption("Each column a setting (what differs beside the method: geometry, nnz, layer, "
               "…): the what-if question, one line per method. Error and sparsity compare "
               "across layers; the maps below need one W.")

c_bar, c_rows = st.columns(2, gap="large")
with c_bar:
    st.markdown("**Relative error by method**")
    st.plotly_chart(rfig.error_bar_figure(list(shown.values()),
                                          [r.rel_error for r in chosen]),
                    config={"displayModeBar": False}, key="_c_fig_bar", theme=None)
maps = {r.key: result_maps.maps(r.key, r) for r in chosen if r.layer.loaded}
with c_rows:
    st.markdown("**Per-row error distribution**")
    with_rows = [r for r in chosen if r.key in maps]
    if with_rows:
        st.plotly_chart(rfig.row_error_figure([shown[r.key] for r in with_rows],
                                              [maps[r.key].row_rel_error for r in with_rows]),
                        config={"displayModeBar": False}, key="_c_fig_rows", theme=None)
    st.caption("Fraction of rows at or below each per-row relative error: further left is "
               "better; a long right tail means a few rows carry the error."
               + (f" Not drawn: {len(chosen) - len(with_rows)} results whose layer is not "
                  "here (the per-row errors need its W and H)."
                  if len(with_rows) < len(chosen) else ""))

# ---- maps -------------------------------------------------------------------------------------
st.subheader("Where the error is")
layer_of = {d: rs[0].layer for d, rs in by_layer.items()}
# layers of the same contents under other names share the maps: each name is said
names_of = {d: ", ".join(dict.fromkeys(r.layer.label for r in rs)) for d, rs in by_layer.items()}
digest = list(by_layer)[-1]
if len(by_layer) > 1:
    digest = st.selectbox("Layer", list(by_layer), index=len(by_layer) - 1,
                          format_func=lambda d: names_of[d], key="_c_layer",
                          help="Maps and the difference view compare results of one layer "
                               "(the same W); the charts above span every layer.")
here = by_layer[digest]
loaded = layer_of[digest].loaded
M, K = layer_of[digest].shape
st.caption(f"{md(names_of[digest])} · W {M} × {K}")
c_view, c_r0, c_c0, c_size = st.columns([1.4, 1, 1, 1])
view = c_view.segmented_control("View", ["Whole layer", "Window"], default="Whole layer",
                                key="_c_view",
                                help="The whole layer is pooled into tiles (mean per tile); a "
                                     "window shows every weight.")
window = None
if view == "Window":
    size = c_size.selectbox("Window", ["32 × 64", "64 × 128", "128 × 256"], index=1,
                            key="_c_win")
    h, w = (int(v) for v in size.split(" × "))
    h, w = min(h, M), min(w, K)
    r0 = c_r0.number_input("First row", 0, max(0, M - h), 0, step=8, key="_c_r0")
    c0 = c_c0.number_input("First column", 0, max(0, K - w), 0, step=16, key="_c_c0")
    window = (int(r0), int(r0) + h, int(c0), int(c0) + w)
drawn = here[:MAX_PANELS]
if len(here) > MAX_PANELS:
    st.warning(f"{len(here)} results of this layer are picked; the maps show the first "
               f"{MAX_PANELS}. Pick fewer to see the others.", icon=":material/info:")
here_labels = labels.shown_labels(drawn)


def tiles_of(run: runs.Run, kind: str) -> rfig.Tiles:
    if not loaded:   # the stored pruned weight and mask only
        return result_maps.stored(run, window)[kind]
    return result_maps.window(run, window)[0][kind] if window else maps[run.key].get(kind)


KINDS = {
    "error": ("Error contribution", "Per-weight contribution ΔW ⊙ (ΔW H) to the output error "
              "(each row sums to the row's error); red adds error, blue (rare) cancels some."),
    "mask": ("Kept mask", "Kept weights (green) and pruned ones (grey); pooled tiles show the "
             "fraction kept."),
    "delta": ("|ΔW|", "How much each weight moved: pruned weights move by their whole value, "
              "compensated ones by the OBS update."),
}
kinds = KINDS if loaded else {
    "mask": KINDS["mask"],
    "weight": ("Pruned |W|", "The pruned weights the run store keeps, |W| (zero where pruned): "
               "without the layer's W and H this is what can be shown.")}
if not loaded:
    st.caption("The error and |ΔW| maps need this layer's W and H, which are not here; the "
               "kept mask and the pruned weights come from the run store.")
if ss.get("_c_kind") not in kinds:
    ss["_c_kind"] = next(iter(kinds))
kind = st.segmented_control("Map", list(kinds), key="_c_kind",
                            format_func=lambda k: kinds[k][0]) or next(iter(kinds))
config = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
fig = result_maps.side_by_side(
    kind, window, [(r.key, here_labels[r.key]) for r in drawn],
    lambda: [rfig.Panel(here_labels[r.key], tiles_of(r, kind)) for r in drawn])
st.plotly_chart(fig, config=config, key="_c_fig_maps", theme=None)
st.caption(f"{kinds[kind][1]} One colour scale for all panels; zoom one and the others follow"
           f"{fig.layout.meta['tiles']}. Hover a title for the full description.")
if any(r.job.sample is not None for r in drawn):
    st.caption("Results of a row sample change only the sampled rows; the others show no "
               "error.")

# ---- difference -------------------------------------------------------------------------------
if len(here) >= 2 and not loaded:
    st.subheader("Difference between two results")
    st.caption("The difference of two error maps needs the layer's W and H: upload its file on "
               "the Prune page.")
elif len(here) >= 2:
    st.subheader("Difference between two results")
    keys_here = [r.key for r in here]
    by_key = {r.key: r for r in here}
    by_err = sorted(keys_here, key=lambda k: by_key[k].rel_error)
    c_a, c_b = st.columns(2)
    all_here = labels.shown_labels(here)
    a = c_a.selectbox("A", keys_here, index=keys_here.index(by_err[-1]), key="_c_a",
                      format_func=lambda k: all_here[k].short)
    b = c_b.selectbox("B", keys_here, index=keys_here.index(by_err[0]), key="_c_b",
                      format_func=lambda k: all_here[k].short)
    if a == b:
        st.info("Pick two different results.")
    else:
        if window:
            (ma, rows_a), (mb, rows_b) = (result_maps.window(by_key[k], window) for k in (a, b))
            ta, tb, row_diff = ma["error"], mb["error"], rows_a - rows_b
        else:
            ea, eb = result_maps.maps(a, by_key[a]), result_maps.maps(b, by_key[b])
            ta, tb, row_diff = ea.error, eb.error, ea.row_error - eb.row_error
        whole_a = result_maps.maps(a, by_key[a]).row_error
        whole_b = result_maps.maps(b, by_key[b]).row_error
        la, lb = all_here[a].short, all_here[b].short
        st.plotly_chart(rfig.difference_figure(ta, tb, row_diff, la, lb), config=config,
                        key="_c_fig_diff", theme=None)
        st.caption("Red: A loses error there that B does not; blue: the reverse. The bars on "
                   "the right sum each row.")
        st.text(rfig.rows_losing_more_text(whole_a, whole_b, la, lb))

# ---- downloads --------------------------------------------------------------------------------
st.subheader("Downloads")
c_csv, c_json, _ = st.columns([1, 1, 3])
c_csv.download_button("Report (CSV)", exports.report_csv(chosen), file_name="obsviz-report.csv",
                      mime="text/csv", icon=":material/table:")
c_json.download_button("Report (JSON)", exports.report_json(chosen),
                       file_name="obsviz-report.json", mime="application/json",
                       icon=":material/data_object:")
st.caption("Pruned weight and mask (True = kept) of each result, as `.safetensors`:")
cols = st.columns(min(4, len(chosen)))
for i, r in enumerate(chosen):
    label = shown[r.key].short
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in label)
    cols[i % len(cols)].download_button(
        md(label), data=lambda r=r: exports.safetensors_bytes(r), file_name=f"{safe}.safetensors",
        mime="application/octet-stream", icon=":material/download:", key=f"_c_dl_{r.key}",
        on_click="ignore")
