"""Learn OBS: one row of a layer walked through structured OBS, one scope at a time.

Every number comes from ``obsviz.lesson`` (the engine's own OBS primitives) and ``obsviz.prune``;
the page only chooses, steps and draws.
"""

import pandas as pd
import streamlit as st
import torch

from obsviz.figures import lesson as lfig
from obsviz.lesson import COMPARED_MODES, Lesson, first_columns, lesson_geometry, mode_outcomes

from ui import state

st.set_page_config(page_title="Learn · obsviz", page_icon=":material/school:", layout="wide")
state.sidebar()
ss = st.session_state

TOY = "toy"
PATTERNS = ["2:4", "1:4", "2:4-pairs", "2:8", "coupled-2:4", "block16"]
COLUMNS = [8, 16, 32]
DAMPS = [0.0001, 0.001, 0.01, 0.1, 0.5]
DEFAULT_SETUP = {"source": TOY, "k": 16, "pattern": "2:4", "row": 0, "damp": 0.01}


# ---- the problem ------------------------------------------------------------------------------


def layer_for(source: str):
    """The toy layer, or the layer loaded in the sidebar."""
    if source == TOY:
        return state.sample_layer(TOY)
    return state.loaded_layer()


@st.cache_resource(max_entries=16, show_spinner="Walking the row through OBS…")
def run_lesson(source: str, k: int, pattern: str, row: int, damp: float, _layer
               ) -> tuple[Lesson, dict]:
    """The lesson and every mode's outcome on the row, on ``W[:, :k]``, ``H[:k, :k]``
    (float64, so the numbers shown are the exact ones)."""
    W, H = first_columns(_layer.weight.to(torch.float64), _layer.hessian.to(torch.float64), k)
    geom = lesson_geometry(pattern, tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, row, damp)
    return lesson, mode_outcomes(W, H, geom, geom.nnz, row, damp)


def setup() -> dict:
    if "learn_setup" not in ss:
        ss["learn_setup"] = dict(DEFAULT_SETUP)
    if "learn_step" not in ss:
        ss["learn_step"] = 0
    return ss["learn_setup"]


def forward(n_steps: int) -> None:
    ss["learn_step"] = min(ss["learn_step"] + 1, n_steps)


def back() -> None:
    ss["learn_step"] = max(ss["learn_step"] - 1, 0)


def reset() -> None:
    ss["learn_step"] = 0


# A new choice starts the lesson over.
bind, changed = state.form_widgets("learn_setup", "_l_", after=lambda field: reset())


# ---- formulas with numbers --------------------------------------------------------------------


def num(v: float) -> str:
    return lfig.fmt(float(v)).replace("e", r"\mathrm{e}")


def bmatrix(rows: list[list[float]]) -> str:
    body = r" \\ ".join(" & ".join(num(v) for v in r) for r in rows)
    return r"\begin{bmatrix}" + body + r"\end{bmatrix}"


def cols_label(cols: list[int]) -> str:
    return "{" + ", ".join(str(c) for c in cols) + "}"


# ---- choose -----------------------------------------------------------------------------------

form = setup()
loaded = state.loaded_layer()
sources = [TOY] + ([loaded.name] if loaded is not None and loaded.name != TOY else [])
if form["source"] not in sources:
    form["source"] = TOY
layer = layer_for(form["source"])
M, K_all = layer.weight.shape
ks = [k for k in COLUMNS if k <= K_all] or [K_all]
if form["k"] not in ks:
    form["k"] = 16 if 16 in ks else ks[-1]
form["row"] = min(int(form["row"]), M - 1)

st.title("Learn OBS")
st.markdown(
    "Follow **one row** of a layer as structured Optimal Brain Surgeon prunes it, one scope at a "
    "time: which weights go, how the others move to make up for them, and how each decision "
    "changes the next. Every number below is computed by the same engine functions the Prune "
    "page runs.")

c_src, c_k, c_pat, c_row, c_damp = st.columns([1.6, 0.8, 1, 0.8, 1.2])
c_src.selectbox("Layer", sources, key=bind("source"), on_change=changed, args=("source",),
                format_func=lambda s: "toy (8 × 16, synthetic)" if s == TOY
                else f"{s} (first columns)",
                help="The toy layer, or the layer chosen in the sidebar (its first columns).")
c_k.selectbox("Columns", ks, key=bind("k"), on_change=changed, args=("k",),
              help="The lesson uses the first K columns: W[:, :K] and H[:K, :K].")
c_pat.selectbox("Pattern", PATTERNS, key=bind("pattern"), on_change=changed,
                args=("pattern",), help="A preset geometry on the first columns.")
c_row.number_input("Row", min_value=0, max_value=M - 1, step=1, key=bind("row"),
                   on_change=changed, args=("row",), help="Which row (output channel) to follow.")
c_damp.select_slider("Damping (damp)", DAMPS, key=bind("damp"), on_change=changed,
                     args=("damp",), help="λ = damp × mean(diag H) is added to H's diagonal.")

try:
    lesson, outcomes = run_lesson(form["source"], form["k"], form["pattern"], form["row"],
                                  form["damp"], layer)
except ValueError as err:
    st.error(f"This choice does not fit the lesson: {err}", icon=":material/warning:")
    st.info("The lesson follows one row at a time. Try pattern **2:4** (keep 2 of every 4 "
            "weights in a row) on 16 columns.")
    st.stop()

geom, T = lesson.geometry, lesson.n_steps
n = min(max(int(ss["learn_step"]), 0), T)
ss["learn_step"] = n
ss["learn_weights"] = lesson.weight_after(n).tolist()
K = lesson.K
gs = geom.blocks_per_scope
pruned_so_far = lesson.pruned_cols_after(n)
scopes = [s.scope_cols for s in lesson.steps]
st.caption(
    f"**{form['source']}**, row {lesson.row} of W {M} × {K} · **{geom.name}**: blocks of "
    f"{geom.block_numel} weight{'s' if geom.block_numel > 1 else ''}, scopes of {gs} blocks that "
    f"keep nnz = {lesson.nnz} (prune np = {lesson.n_prune}) · {T} scopes in the row, "
    f"{len(lesson.steps[0].costs) if T else 0} candidate subsets each.")

# ---- 1. the loss, H, damping and C ------------------------------------------------------------

st.header("1 · What OBS minimises")
f1, f2, f3 = st.columns(3, gap="medium")
with f1:
    st.latex(r"L(\Delta w) = \Delta w\, H\, \Delta w^\top")
    st.caption("The loss of changing the row by Δw: how much the layer's **output** moves on "
               "the calibration inputs (H = XᵀX / N). H says which inputs fire together: a big "
               "off-diagonal entry means two weights can stand in for each other.")
with f2:
    mean_diag = float(torch.diagonal(lesson.H).mean())
    st.latex(r"H_d = H + \lambda I")
    st.latex(rf"\lambda = {num(form['damp'])}\times{num(mean_diag)} = {num(lesson.lam)}")
    st.caption("Damping adds λ = damp × mean(diag H) to the diagonal only. It keeps the inverse "
               "well behaved when inputs are nearly redundant; a larger damp trusts H's "
               "correlations less.")
with f3:
    st.latex(r"C = H_d^{-1}")
    st.caption("Every OBS formula reads C. Its diagonal C_cc says how cheap weight c is to lose "
               "on its own; its off-diagonal entries say how the other weights should move to "
               "compensate.")
m1, m2 = st.columns(2, gap="large")
m1.plotly_chart(lfig.matrix_heatmap(lesson.H, "H = XᵀX / N", height=520),
                config={"displayModeBar": False}, key="fig_H")
m2.plotly_chart(lfig.matrix_heatmap(lesson.C, f"C = H_d⁻¹  (H + {lfig.fmt(lesson.lam)} I, "
                                    "inverted)", height=520),
                config={"displayModeBar": False}, key="fig_C")

# ---- 2. the steps -----------------------------------------------------------------------------

st.header("2 · Prune the row, one scope at a time")
b_back, b_fwd, b_reset, b_where = st.columns([1, 1.2, 1, 4.5], vertical_alignment="center")
b_back.button("Step back", key="learn_back", on_click=back, disabled=n == 0,
              icon=":material/arrow_back:", width="stretch")
b_fwd.button("Step forward", key="learn_forward", on_click=forward, args=(T,),
             disabled=n == T, type="primary", icon=":material/arrow_forward:", width="stretch")
b_reset.button("Reset", key="learn_reset", on_click=reset, disabled=n == 0,
               icon=":material/restart_alt:", width="stretch")
with b_where:
    st.markdown(f"**Step {n} of {T}**" + (" · done" if n == T else ""))
    st.progress(n / T if T else 1.0)

main, side = st.columns([2.1, 1.2], gap="large")

with side:
    st.subheader("Row error so far")
    e1, e2 = st.columns(2)
    e1.metric("relative", f"{100 * lesson.rel_error_after(n):.2f}%",
              help="sqrt(Δw H Δwᵀ / w₀ H w₀ᵀ), with the undamped H")
    e2.metric("Δw H Δwᵀ", lfig.fmt(lesson.error_after(n)))
    finals = {m: outcomes[m].rel_error for m in COMPARED_MODES}
    path = [lesson.rel_error_after(i) for i in range(n + 1)]
    st.plotly_chart(lfig.error_figure(path, T, finals), config={"displayModeBar": False},
                    key="fig_error")
    st.caption("The red path is this lesson (true_obs), one point per scope decided. The dotted "
               "lines are where each mode ends on this row.")

    st.subheader("How each mode ends on this row")
    st.plotly_chart(lfig.modes_figure(finals), config={"displayModeBar": False},
                    key="fig_modes")
    st.table(pd.DataFrame(
        {"error": [f"{100 * outcomes[m].rel_error:.2f}%" for m in COMPARED_MODES],
         "Δw H Δwᵀ": [lfig.fmt(outcomes[m].error) for m in COMPARED_MODES],
         "pruned columns": [" ".join(str(int(c)) for c in torch.nonzero(~outcomes[m].kept)
                                     .flatten()) for m in COMPARED_MODES]},
        index=list(COMPARED_MODES)))
    st.caption(
        "From `obsviz.prune` on this row alone. **local**: masks chosen up front with the "
        "original C; each scope compensates only inside itself. **full**: the same masks; "
        "compensation flows to every later column, with C frozen. **interleaved**: masks "
        "re-chosen per chunk, with C rebuilt on the columns left. **true_obs**: this lesson, C "
        "downdated after every scope.")

if n == 0:
    with main:
        st.subheader("The row before pruning")
        st.plotly_chart(lfig.row_figure(lesson.w_start, scope_cols=scopes[0] if T else (),
                                        scopes=scopes),
                        config={"displayModeBar": False}, key="fig_row0")
        st.caption(
            f"Row {lesson.row}: {K} weights in {T} scopes (dotted lines). Each scope must drop "
            f"{lesson.n_prune} of its {gs} blocks. The shaded scope (columns "
            f"{scopes[0][0]}–{scopes[0][-1]}) is decided first." if T else "Nothing to prune.")
        st.markdown("Each press of **Step forward** decides one scope, left to right, in three "
                    "moves:")
        st.markdown("**① Choose** — price every way to drop the scope's blocks; take the "
                    "cheapest.")
        st.latex(r"\varepsilon(P) = w_P\,(C_{PP})^{-1}\,w_P^\top")
        st.markdown("**② Compensate** — zero the chosen weights and move every weight not yet "
                    "pruned, so the output changes as little as possible.")
        st.latex(r"w \leftarrow w - w_P\,(C_{PP})^{-1}\,C_{P,:}")
        st.markdown("**③ Downdate C** — fold the decision into C, so the next scope is priced "
                    "knowing these weights are gone.")
        st.latex(r"C \leftarrow C - C_{:,P}\,(C_{PP})^{-1}\,C_{P,:}")
    st.stop()

s = lesson.steps[n - 1]
P = list(s.pruned_cols)
before = lesson.pruned_cols_after(n - 1)
labels = [cols_label(s.candidate_cols(i)) for i in range(len(s.costs))]
with main:
    st.subheader(f"Step {n}: the scope of columns {s.scope_cols[0]}–{s.scope_cols[-1]}")

    # -- choose
    st.markdown("##### ① Choose: price every candidate, keep the cheapest")
    c_fig, c_txt = st.columns([1.5, 1], gap="medium")
    with c_fig:
        st.plotly_chart(lfig.candidates_figure(labels, s.costs, s.chosen),
                        config={"displayModeBar": False}, key="fig_costs")
    with c_txt:
        st.latex(r"\varepsilon(P) = w_P\,(C_{PP})^{-1}\,w_P^\top")
        st.caption(
            f"Each bar is one way to drop {lesson.n_prune} of the scope's {gs} blocks "
            "(labelled by the columns it would zero). The cost is how much the output moves "
            "**after** the best compensation, so a big weight can be cheap to lose when its "
            "neighbours can stand in for it. "
            + ("Too many subsets to list: the cheapest blocks one by one are taken."
               if s.greedy else f"Cheapest: {labels[s.chosen[0]]}."))
    if not s.greedy and len(P) <= 4:
        w_P = [[float(s.w_before[c]) for c in P]]
        C_PP = [[float(s.C_before[a, b]) for b in P] for a in P]
        which = r"\{" + ", ".join(map(str, P)) + r"\}"
        st.latex(rf"P = {which}:\qquad w_P = {bmatrix(w_P)}")
        st.latex(rf"C_{{PP}} = {bmatrix(C_PP)}\quad\Rightarrow\quad"
                 rf"\varepsilon(P) = w_P\,(C_{{PP}})^{{-1}}\,w_P^\top = "
                 rf"{num(s.costs[s.chosen[0]])}")

    # -- compensate
    st.markdown("##### ② Compensate: move the weights not pruned yet")
    st.latex(r"w \;\leftarrow\; w - w_P\,(C_{PP})^{-1}\,C_{P,:}"
             r"\qquad\Rightarrow\qquad w_P = 0")
    st.plotly_chart(lfig.row_figure(s.w_before, s.w_after, scope_cols=s.scope_cols,
                                    pruned_now=P, pruned_before=before, scopes=scopes),
                    config={"displayModeBar": False}, key="fig_row")
    top = lesson.largest_move(n)
    st.caption(
        f"Columns {cols_label(P)} drop to exactly 0 (✕). Every weight not pruned yet moves — "
        "not only in this scope: later scopes' weights help too. "
        + (f"The biggest move is column {top}: {lfig.fmt(float(s.w_before[top]))} → "
           f"{lfig.fmt(float(s.w_after[top]))}. " if top is not None else "")
        + f"Row error now {100 * s.rel_error:.2f}% (was "
        f"{100 * lesson.rel_error_after(n - 1):.2f}%)."
        + (" Grey ✕: pruned in earlier steps; they stay 0." if before else ""))

# -- downdate (full width: three matrices)
st.markdown("##### ③ Downdate C: forget the pruned weights")
st.latex(r"C \;\leftarrow\; C - C_{:,P}\,(C_{PP})^{-1}\,C_{P,:}")
figs = lfig.downdate_figures(s.C_before, s.C_after, P)
for col, fig, key in zip(st.columns(3, gap="small"), figs, ("fig_Cb", "fig_Ca", "fig_Cd"),
                         strict=True):
    col.plotly_chart(fig, config={"displayModeBar": False}, key=key)
st.caption(
    f"The rows and columns of {cols_label(P)} (red outline) become 0: those weights are fixed "
    "at 0 and can no longer compensate. The rest of C changes too: it is now the inverse of H_d "
    "over the weights still free, which is what the next scope must be priced with (the "
    "change map's colours are scaled to those free entries)."
    + (f" Columns {cols_label(before)}, pruned earlier, stay 0." if before else ""))

# -- why later choices change
if n < T:
    st.markdown("##### ④ Why later choices change")
    nxt = lesson.steps[n]
    nl = [cols_label(nxt.candidate_cols(i)) for i in range(len(nxt.costs))]
    ours, theirs = nxt.chosen, nxt.frozen_chosen
    w1, w2 = st.columns([1.4, 1], gap="large")
    with w1:
        st.plotly_chart(lfig.candidates_figure(
            nl, nxt.costs, ours, compare=nxt.frozen_costs, compare_chosen=theirs,
            title=f"The next scope (columns {nxt.scope_cols[0]}–{nxt.scope_cols[-1]}), "
                  "priced two ways",
            names=("true_obs: downdated C, current w", "local / full: original C and w"),
            height=360), config={"displayModeBar": False}, key="fig_next")
    with w2:
        moved_most = nxt.max_cost_change
        if set(ours) != set(theirs):
            st.markdown(
                f"**The choice flips.** true_obs will prune **{nl[ours[0]]}**; local and full "
                f"chose **{nl[theirs[0]]}** at the start, before anything was pruned."
                if not nxt.greedy else "**The choice flips**: the two prune different blocks.")
        else:
            st.markdown(
                f"**Same pick here** ({nl[ours[0]] if not nxt.greedy else 'same blocks'}), but "
                f"the costs moved by up to {100 * moved_most:.0f}%. Try pattern **2:4-pairs**, row "
                "**3** of the toy to watch a choice flip.")
        st.markdown(
            "- **true_obs** prices the next scope with the downdated C and the weights as "
            "compensation left them: it knows what is already gone.\n"
            "- **full** chose every mask at the start with the original C and weights, and "
            "compensates with that frozen C: part of each correction lands on weights already "
            "pruned and is thrown away.\n"
            "- **local** uses the same masks, but each scope compensates only inside itself, so "
            "no scope helps another.")
        gap = outcomes["full"].rel_error - outcomes["true_obs"].rel_error
        st.caption(
            f"On this row: full ends at {100 * outcomes['full'].rel_error:.2f}%, true_obs at "
            f"{100 * outcomes['true_obs'].rel_error:.2f}% "
            + ("— even where their masks agree, the downdated C compensates better."
               if gap > 0 else "."))
else:
    st.success(
        f"Done: all {T} scopes decided. The row keeps {K - len(pruned_so_far)} of {K} weights, "
        f"with error {100 * s.rel_error:.2f}% — exactly what `obsviz.prune(..., "
        "method='true_obs', ng=1, scoring='joint')` gives for this row.",
        icon=":material/check_circle:")
    st.plotly_chart(lfig.row_figure(lesson.w0, lesson.final_weight,
                                    pruned_before=pruned_so_far, scopes=scopes,
                                    names=("original", "pruned")),
                    config={"displayModeBar": False}, key="fig_final")
    st.caption("The original row (light) against the pruned one (dark); grey ✕ marks the "
               "pruned weights. Compare the modes in the side panel: same budget, different "
               "errors.")
