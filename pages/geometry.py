"""Geometry explorer: choose a geometry, see the blocks and scopes it induces on W."""

import streamlit as st

from obsviz.estimate import format_bytes
from obsviz.figures import geometry as gfig
from obsviz.obs import MAX_SUBSETS

from ui import facts, state
from ui.forms import PATTERNS, WINDOWS, fill_from_preset, parse_weight_shape
from ui.text import md

state.require_entrypoint()
st.set_page_config(page_title="Geometry · obsviz", page_icon=":material/grid_view:",
                   layout="wide")
form = state.geometry_form()
ss = st.session_state
ignored = state.link_ignored()


def refill(field: str) -> None:
    """After a change of pattern (or of the shape it is laid on), refill the free-form fields."""
    if field in ("pattern", "n", "m") or (field == "use_layer" and form.pattern != "free-form"):
        fill_from_preset(form, shape_now())


bind, changed = state.form_widgets("geometry_form", "_g_", after=refill)


def shape_now() -> tuple[int, int]:
    layer = state.layer_shape()
    if form.use_layer and layer is not None:
        return layer
    try:
        M, K = parse_weight_shape(form.weight)
    except ValueError:
        return state.FALLBACK_SHAPE
    return M, K


st.title("Geometry explorer")
if ignored:
    st.warning(md(f"The link's {', '.join(ignored)} {'was' if len(ignored) == 1 else 'were'} "
                  f"ignored; showing {form.pattern}."), icon="⚠️")
st.markdown(
    "A **geometry** says which weights are removed together (a **block**) and which blocks "
    "compete (a **scope**, which keeps **nnz** of its blocks). Pick one, then read off what "
    "it does to W: the layout, the columns a block touches and the rows a scope couples.")

# ---- choose -----------------------------------------------------------------------------------
slots: dict = {}  # field -> the spot under its widget where its error goes
c_pattern, c_weight, c_nnz = st.columns([1.3, 1.3, 1])
with c_pattern:
    st.selectbox("Pattern", PATTERNS, key=bind("pattern"), on_change=changed, args=("pattern",),
                 help="The reference patterns of the paper, any N:M, or your own view/block/scope.")
    if form.pattern == "N:M":
        cn, cm = st.columns(2)
        cn.number_input("N (kept)", min_value=0, step=1, key=bind("n"), on_change=changed,
                        args=("n",))
        cm.number_input("M (group)", min_value=1, step=1, key=bind("m"), on_change=changed,
                        args=("m",))
    slots["pattern"] = st.empty()
with c_weight:
    active = state.current_layer()
    if active is not None:
        M, K = active.layer.shape
        st.toggle(f"Shape of the current layer ({M} × {K})", key=bind("use_layer"),
                  on_change=changed, args=("use_layer",),
                  help="The layer chosen in the sidebar (a sample, or the file you uploaded).")
        if form.use_layer:
            st.caption(f"{md(active.label)}: W {M} × {K}")
    if active is None or not form.use_layer:
        st.text_input("Weight shape (M, K)", key=bind("weight"), on_change=changed,
                      args=("weight",), help="Rows (outputs) and columns (inputs) of W.")
    slots["weight"] = st.empty()
with c_nnz:
    if form.pattern != "N:M":
        st.text_input("nnz (blocks kept per scope)", key=bind("nnz"), on_change=changed,
                      args=("nnz",), max_chars=12,
                      help="A whole number from 0 (prune every block) to the blocks per scope.")
    slots["nnz"] = st.empty()

if form.pattern == "free-form":
    st.caption("Shapes are comma-separated integers; `M`, `K` and `+ - * /` work too, e.g. "
               "view `M, K/16, 8, 2` with stride `K, 16, 1, 8`. Leave the view empty for W "
               "itself; `-1` in a block or scope means the whole dimension.")
    cols = st.columns(4)
    labels = {"view": "View shape", "stride": "View stride", "block": "Block",
              "scope": "Scope (in blocks)"}
    for col, (field, label) in zip(cols, labels.items(), strict=True):
        with col:
            st.text_input(label, key=bind(field), on_change=changed, args=(field,))
            slots[field] = st.empty()

geom, nnz, errors = state.resolve_geometry()
for field, message in errors.items():
    slots.get(field, slots["pattern"]).error(md(message), icon="⚠️")
state.mark_in_error("_g_", [f if f in slots else "pattern" for f in errors])
state.form_to_query(form)
if geom is None:
    st.info("Fix the field marked in red to see the geometry.")
    st.stop()
if nnz == 0:
    slots["nnz"].warning("nnz = 0 keeps no block: every weight is pruned (100 % sparsity).",
                         icon="⚠️")

# ---- see --------------------------------------------------------------------------------------
maps = state.maps_of(geom)
counts = maps.facts
M, K = geom.weight_shape
st.caption(f"**{geom.name or 'free-form'}** on W {M} × {K}: {geom.describe()}, "
           f"nnz = {nnz}")

big = M > gfig.MAX_WINDOW[0] or K > gfig.MAX_WINDOW[1]   # else the whole layer is drawn
left, right = st.columns([2.6, 1], gap="large")
with left:
    st.subheader("Layout on W")
    rows, cols = WINDOWS[form.win] if big else gfig.MAX_WINDOW
    r0, c0, rows, cols = gfig.clamp_window(geom.weight_shape, form.r0, form.c0, rows, cols)
    form.r0, form.c0 = r0, c0
    if big:
        cw, cr, cc, cmini = st.columns([1, 1, 1, 1.3])
        cw.selectbox("Window", list(WINDOWS), key=bind("win"), on_change=changed,
                     args=("win",), help="Rows × columns drawn cell by cell.")
        cr.number_input("First row", 0, M - rows, step=8, key=bind("r0"),
                        on_change=changed, args=("r0",))
        cc.number_input("First column", 0, K - cols, step=16, key=bind("c0"),
                        on_change=changed, args=("c0",))
        background = state.pooled_layer() if form.use_layer else None
        cmini.plotly_chart(
            gfig.overview_figure(geom.weight_shape, (r0, c0, rows, cols), background),
            config={"displayModeBar": False})
    show_mask = st.toggle("Show an example mask", value=True,
                          help="Fade and hatch the last gs − nnz blocks of every scope: one of "
                               "the candidate subsets the pruner chooses between.")
    where = "the whole layer" if not big else f"rows {r0}–{r0 + rows - 1}, " \
        f"columns {c0}–{c0 + cols - 1}"
    st.caption(f"Showing {where}. Each cell is a weight, coloured by its block (same colour, "
               "same block); dark lines outline scopes. Hover a cell for its block and scope.")
    st.plotly_chart(state.geometry_figure("layout", geom, r0, c0, rows, cols,
                                          nnz if show_mask else None),
                    config={"displaylogo": False})
    png_name = f"obsviz-{(geom.name or 'free-form').replace(':', '_')}-{M}x{K}-r{r0}-c{c0}.png"
    # drawn when clicked (a PNG takes seconds; a preset switch must not wait for it)
    st.download_button("Download this drawing (PNG)",
                       lambda: state.layout_png_bytes(geom, r0, c0, rows, cols,
                                                      nnz if show_mask else None),
                       file_name=png_name, mime="image/png", on_click="ignore")

with right:
    st.subheader("Facts")
    gs = counts.blocks_per_scope
    pruned = geom.pruned_per_scope(nnz)
    subsets, greedy = facts.subsets_per_scope(gs, pruned)
    f1, f2 = st.columns(2)
    f1.metric("Blocks", facts.count(counts.blocks),
              help=f"{counts.blocks:,} blocks of {counts.block_numel} weights each")
    f2.metric("Scopes", facts.count(counts.scopes), help=f"{counts.scopes:,} scopes")
    f1.metric("Blocks / scope", gs, help="gs: blocks that compete in one scope")
    f2.metric("Pruned / scope", pruned, help=f"np = gs − nnz = {gs} − {nnz}")
    f1.metric("Subsets / scope", subsets,
              help="C(gs, np): candidate masks enumerated per scope"
              + (f" — above the enumeration limit of {MAX_SUBSETS:,}, selection falls back to "
                 "greedy" if greedy else ""))
    f2.metric("Sparsity", f"{geom.sparsity(nnz):.1%}")
    coupled = (f"Yes: {counts.rows_per_scope} rows per scope" if counts.is_row_coupled
               else "No: every row decides alone")
    st.markdown(f"**Row-coupled:** {coupled}")
    device = state.device()
    st.markdown(f"**Memory on {device}** for all {M} rows")
    table, free = facts.memory_table(geom, device)
    st.dataframe(table, hide_index=True, width="stretch")
    if free is not None:
        st.caption(f"{format_bytes(free)} free now on {device}.")

st.divider()
c_cols, c_rows = st.columns(2, gap="large")
with c_cols:
    st.subheader("Column map")
    st.caption("Which W columns each block touches, for the blocks met along the window's first "
               "row. One line per block, a square on each of its columns; the colours are the "
               "blocks' colours above.")
    st.plotly_chart(state.geometry_figure("columns", geom, r0, c0, 32),
                    config={"displayModeBar": False})
with c_rows:
    st.subheader("Row coupling")
    st.caption("Which W rows share a scope, for the scopes met along the window's first column. "
               "One vertical line per scope, a square on each W row it spans: rows joined by a "
               "line are pruned together.")
    st.plotly_chart(state.geometry_figure("rows", geom, c0, r0, 32),
                    config={"displayModeBar": False})
