"""Compare: pruning results side by side — where each method puts its error, and how much."""

import streamlit as st

from obsviz import DEFAULT_SAMPLE, Geometry
from obsviz.figures import results as rfig

from ui import exports, layers, result_maps, runner, runs, state

state.require_entrypoint()
st.set_page_config(page_title="Compare · obsviz", page_icon=":material/grid_view:",
                   layout="wide")
ss = st.session_state
st.title("Compare")


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


stored = runs.store()
if not stored:
    job = first_job()
    st.markdown("Nothing to compare yet: run some methods on the **Prune** page, or start "
                "with the fast modes here.")
    if job is None:
        st.info("No sample layer is available; upload one on the Prune page.")
        st.stop()
    fast = runner.fast_methods(job)
    st.caption(f"{', '.join(fast)} on **{job.layer.label}** "
               f"({job.layer.layer.shape[0]} × {job.layer.layer.shape[1]}) with "
               f"**{job.geometry.name or 'free-form'}**, nnz = {job.nnz}, on {job.device}.")
    if st.button("Run the fast modes", type="primary", icon=":material/bolt:"):
        runner.run_methods(job, fast)
        st.rerun()
    st.stop()

# ---- choose -----------------------------------------------------------------------------------
by_layer: dict[str, list[runs.Run]] = {}
for run in stored.values():
    by_layer.setdefault(run.layer.digest, []).append(run)
latest = list(stored.values())[-1].layer.digest
layer_names = {d: rs[0].layer.label for d, rs in by_layer.items()}
c_layer, c_pick = st.columns([1, 3])
if len(by_layer) > 1:
    digest = c_layer.selectbox("Layer", list(by_layer), index=list(by_layer).index(latest),
                               format_func=layer_names.get,
                               help="Results are compared on one layer at a time.")
else:
    digest = latest
    c_layer.markdown(f"**Layer**  \n{layer_names[digest]}")
group = {r.label: r for r in by_layer[digest]}
wanted = ss.get("compare_pick") or []
default = [label for label in wanted if label in group] or list(group)[-6:]
picked = c_pick.multiselect("Results", list(group), default=default,
                            help="Two or more results to compare; any finished run of this "
                                 "layer (from the Prune page) is listed.")
ss["compare_pick"] = picked
chosen = [group[label] for label in picked]
if not chosen:
    st.info("Pick at least one result.")
    st.stop()

layer = chosen[0].layer.layer
M, K = layer.shape
geoms = {r.job.geometry.name or "free-form" for r in chosen}
st.caption(f"**{layer_names[digest]}** · W {M} × {K} · {', '.join(sorted(geoms))} · "
           f"{len(chosen)} result{'s' if len(chosen) > 1 else ''}. Each colour is a method, "
           "the same in every chart.")

# ---- metrics ----------------------------------------------------------------------------------
st.subheader("Metrics")
rows = exports.report_rows(chosen)
st.dataframe(
    [{"result": r["label"], "relative error": r["rel_error"],
      "row p50": r["row_rel_error_p50"], "row p90": r["row_rel_error_p90"],
      "row p99": r["row_rel_error_p99"], "row max": r["row_rel_error_max"],
      "sparsity": r["sparsity"] * 100, "valid": r["valid"], "seconds": r["seconds"],
      "device": r["device"], "rows": r["rows"]} for r in rows],
    hide_index=True, width="stretch",
    column_config={
        "relative error": st.column_config.NumberColumn(format="%.4f",
                                                        help="‖XΔWᵀ‖ / ‖XW₀ᵀ‖"),
        "row p50": st.column_config.NumberColumn(format="%.4f",
                                                 help="median per-row relative error"),
        "row p90": st.column_config.NumberColumn(format="%.4f"),
        "row p99": st.column_config.NumberColumn(format="%.4f"),
        "row max": st.column_config.NumberColumn(format="%.4f"),
        "sparsity": st.column_config.NumberColumn(format="%.1f%%"),
        "valid": st.column_config.CheckboxColumn(
            help="every block kept or pruned whole, every scope keeps exactly nnz"),
        "seconds": st.column_config.NumberColumn(format="%.2f"),
    })
maps = {r.label: result_maps.maps(r.key, r) for r in chosen}
c_bar, c_rows = st.columns(2, gap="large")
with c_bar:
    st.markdown("**Relative error by method**")
    st.plotly_chart(rfig.error_bar_figure({r.label: r.result.rel_error for r in chosen},
                                          height=max(300, 100 + 34 * len(chosen))),
                    config={"displayModeBar": False})
with c_rows:
    st.markdown("**Per-row error distribution**")
    st.plotly_chart(rfig.row_error_figure({label: m.row_rel_error for label, m in maps.items()},
                                          height=max(300, 100 + 34 * len(chosen))),
                    config={"displayModeBar": False})
    st.caption("Fraction of rows at or below each per-row relative error: further left is "
               "better; a long right tail means a few rows carry the error.")

# ---- heatmaps ---------------------------------------------------------------------------------
st.subheader("Where the error is")
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
columns = 4 if len(chosen) != 5 else 3
tab_err, tab_mask, tab_delta = st.tabs(["Error contribution", "Kept mask", "|ΔW|"])
config = {"displaylogo": False, "modeBarButtonsToRemove": ["select2d", "lasso2d"]}
for tab, kind, text in (
        (tab_err, "error", "Per-weight contribution ΔW ⊙ (ΔW H) to the output error (each "
                           "row sums to the row's error); red adds error, blue (rare) "
                           "cancels some."),
        (tab_mask, "mask", "Kept weights (green) and pruned ones (grey); pooled tiles show the "
                           "fraction kept."),
        (tab_delta, "delta", "How much each weight moved: pruned weights move by their whole "
                             "value, compensated ones by the OBS update.")):
    with tab:
        fig = rfig.side_by_side({label: m.get(kind) for label, m in maps.items()}, kind,
                                window=window, columns=columns)
        st.plotly_chart(fig, config=config, key=f"_c_fig_{kind}")
        st.caption(f"{text} One colour scale for all panels; zoom one and the others follow"
                   f"{fig.layout.meta['tiles']}.")
if any(r.result.rows is not None for r in chosen):
    st.caption("Results of a row sample change only the sampled rows; the others show no "
               "error.")

# ---- difference -------------------------------------------------------------------------------
if len(chosen) >= 2:
    st.subheader("Difference between two results")
    labels = [r.label for r in chosen]
    by_err = sorted(labels, key=lambda k: group[k].result.rel_error)
    c_a, c_b = st.columns(2)
    a = c_a.selectbox("A", labels, index=labels.index(by_err[-1]), key="_c_a")
    b = c_b.selectbox("B", labels, index=labels.index(by_err[0]), key="_c_b")
    if a == b:
        st.info("Pick two different results.")
    else:
        worse = rfig.rows_losing_more(maps[a].error, maps[b].error)
        st.plotly_chart(rfig.difference_figure(maps[a].error, maps[b].error, a, b,
                                               window=window),
                        config=config, key="_c_fig_diff")
        st.caption(f"Red: **{a}** loses error there that **{b}** does not; blue: the reverse. "
                   f"{a} has the larger error in {worse:,} of {M:,} rows; the bars on the right "
                   "sum each row.")

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
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in r.label)
    cols[i % len(cols)].download_button(
        r.label, data=lambda r=r: exports.safetensors_bytes(r), file_name=f"{safe}.safetensors",
        mime="application/octet-stream", icon=":material/download:", key=f"_c_dl_{r.key}",
        on_click="ignore")
