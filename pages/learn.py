"""Learn OBS: rows of a layer walked through structured OBS, one scope at a time.

Choose (layer, columns, pattern, row, damping) → call ``obsviz.lesson`` (the engine's own OBS
primitives and ``obsviz.prune``) → show. Every number and every fact the text states comes from
the ``Lesson``; the page only words and draws them.
"""

import pandas as pd
import streamlit as st
import torch

from obsviz.figures import lesson as lfig
from obsviz.lesson import (
    COMPARED_MODES,
    Lesson,
    column_ranges,
    first_columns,
    interleaved_worse_rows,
    lesson_geometry,
    mode_outcomes,
    same_mask_worse,
)
from obsviz.metrics import format_rel_error as pct
from obsviz.store import layer_hash

from ui import state

state.require_entrypoint()
st.set_page_config(page_title="Learn · obsviz", page_icon=":material/school:", layout="wide")
ss = st.session_state

TOY, CURRENT = "toy", "current"     # the Layer choice: the toy, or the layer in use
PATTERNS = ["2:4", "1:4", "4:8", "2:8", "2:4-pairs", "coupled-2:4", "block16"]
COLUMNS = [8, 16, 32]
DAMPS = [0.0001, 0.001, 0.01, 0.1, 0.5]
DEFAULT_SETUP = {"source": TOY, "k": 16, "pattern": "2:4", "row": 0, "damp": 0.01}
NO_BAR = {"displayModeBar": False}
tex = lfig.tex_number


# ---- the problem ------------------------------------------------------------------------------


@st.cache_resource(max_entries=16, show_spinner="Walking the rows through OBS…")
def run_lesson(digest: str, pattern: str, row: int, damp: float, _W: torch.Tensor,
               _H: torch.Tensor) -> tuple[Lesson, dict, list[int]]:
    """The lesson on the sub-problem ``_W``, ``_H`` (``digest``: its content hash, the cache
    key), every mode's outcome on its rows, and the rows where interleaved keeps full's mask yet
    ends worse; in float64, so the numbers shown are the exact ones."""
    W, H = _W.to(torch.float64), _H.to(torch.float64)
    geom = lesson_geometry(pattern, tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, row, damp)
    outcomes = mode_outcomes(W, H, geom, geom.nnz, lesson.rows, damp)
    return lesson, outcomes, interleaved_worse_rows(W, H, geom, geom.nnz, damp)


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


def choose(**fields) -> None:
    """A button's ``on_click``: set form fields (e.g. the row of an example) and start over."""
    ss["learn_setup"].update(fields)
    reset()


# A new choice starts the lesson over.
bind, changed = state.form_widgets("learn_setup", "_l_", after=lambda field: reset())


def cols_label(cols) -> str:
    return "{" + ", ".join(str(c) for c in cols) + "}"


def chart(fig, key: str, where=st) -> None:
    where.plotly_chart(fig, config=NO_BAR, key=key)


# ---- choose -----------------------------------------------------------------------------------

form = setup()
# The layer in use: a sample, or the user's own file or checkpoint layer (one call).
current = state.loaded_layer()
current_label = "" if current is None else current.name
sources = [TOY] + ([CURRENT] if current is not None and current_label != TOY else [])
if form["source"] not in sources:
    form["source"] = TOY
# The layer's name can come from a user's file: it is shown only as a widget's option text,
# never inside markdown.
layer = state.sample_layer(TOY) if form["source"] == TOY else current
M, K_all = layer.weight.shape
ks = [k for k in COLUMNS if k <= K_all] or [K_all]
if form["k"] not in ks:
    form["k"] = 16 if 16 in ks else ks[-1]
form["row"] = min(int(form["row"]), M - 1)
W_k, H_k = first_columns(layer.weight, layer.hessian, form["k"])
digest = layer_hash(W_k, H_k)           # what the lesson is about, whatever the layer's name
if form.get("layer") != digest:         # another layer in use: the lesson starts over
    form["layer"] = digest
    reset()

st.title("Learn OBS")
st.markdown(
    "Follow **one row** of a layer as structured Optimal Brain Surgeon prunes it, one scope at a "
    "time: which weights go, how the others move to make up for them, and how each decision "
    "changes the next. When the pattern couples rows (`block16`), the rows that share its scopes "
    "are followed **together**. Every number below is computed by the same engine functions the "
    "Prune page runs.")

c_src, c_k, c_pat, c_row, c_damp = st.columns([1.6, 0.8, 1, 0.8, 1.2])
c_src.selectbox("Layer", sources, key=bind("source"), on_change=changed, args=("source",),
                format_func=lambda s: "toy (8 × 16, synthetic)" if s == TOY
                else f"{current_label} (first columns)",
                help="The toy layer, or the layer in use (its first columns).")
c_k.selectbox("Columns", ks, key=bind("k"), on_change=changed, args=("k",),
              help="The lesson uses the first K columns: W[:, :K] and H[:K, :K].")
c_pat.selectbox("Pattern", PATTERNS, key=bind("pattern"), on_change=changed,
                args=("pattern",), help="A preset geometry on the first columns. block16 "
                "couples rows r and r + 8 (it needs a layer of at least 16 rows).")
c_row.number_input("Row", min_value=0, max_value=M - 1, step=1, key=bind("row"),
                   on_change=changed, args=("row",),
                   help="Which row (output channel) to follow, with the rows coupled to it.")
c_damp.select_slider("Damping (damp)", DAMPS, key=bind("damp"), on_change=changed,
                     args=("damp",), help="λ = damp × mean(diag H) is added to H's diagonal.")

# ---- call -------------------------------------------------------------------------------------

try:
    lesson, outcomes, worse_rows = run_lesson(digest, form["pattern"],
                                              form["row"], form["damp"], W_k, H_k)
except ValueError as err:         # ArgumentError names the field; others (e.g. a singular H)
    st.error(f"This choice does not fit the lesson: {err}", icon=":material/warning:")
    if (getattr(err, "argument", None) == "pattern" and form["source"] == TOY
            and CURRENT in sources):
        st.button("Use the layer in use instead", key="learn_use_layer",
                  on_click=choose, kwargs={"source": CURRENT}, icon=":material/swap_horiz:")
    else:
        st.info("Try pattern **2:4** (keep 2 of every 4 weights in a row) on 16 columns.")
    st.stop()

# ---- show -------------------------------------------------------------------------------------

geom, T = lesson.geometry, lesson.n_steps
n = min(max(int(ss["learn_step"]), 0), T)
ss["learn_step"] = n
ss["learn_weights"] = lesson.weight_after(n)[lesson.index].tolist()
K, R = lesson.K, len(lesson.rows)
gs = geom.blocks_per_scope
rows_txt = ", ".join(map(str, lesson.rows))
scopes = [s.scope_cols(lesson.index) for s in lesson.steps]
st.caption(
    f"{'Rows ' + rows_txt if lesson.coupled else f'Row {lesson.row}'} of "
    f"W {M} × {K} · **{geom.name}**: blocks of {geom.block_numel} "
    f"weight{'s' if geom.block_numel > 1 else ''}, scopes of {gs} blocks that keep "
    f"nnz = {lesson.nnz} (prune np = {lesson.n_prune}) · {T} scopes, "
    f"{len(lesson.steps[0].costs) if T else 0} candidates each.")
if lesson.coupled:
    st.info(
        f"**{geom.name} couples rows.** Each of its scopes holds blocks of rows {rows_txt}, so "
        f"those rows are decided together: for every candidate, the costs of the rows add up "
        "(the loss is a sum over rows) and the cheapest total wins. Then each row removes its "
        "own part with its own compensation and its own C. You asked for row "
        f"{lesson.row}; the lesson follows all {R}.", icon=":material/link:")

# ---- 1. the loss, H, damping and C ------------------------------------------------------------

st.header("1 · What OBS minimises")
f1, f2, f3 = st.columns(3, gap="medium")
with f1:
    st.latex(r"L(\Delta w) = \Delta w\, H\, \Delta w^\top")
    st.caption("The loss of changing a row by Δw: how much the layer's **output** moves on "
               "the calibration inputs (H = XᵀX / N). H says which inputs fire together: a big "
               "off-diagonal entry means two weights can stand in for each other.")
with f2:
    st.latex(r"H_d = H + \lambda I")
    st.latex(rf"\lambda = {tex(lesson.damp)}\times{tex(lesson.mean_diag)} = {tex(lesson.lam)}")
    st.caption("Damping adds λ = damp × mean(diag H) to the diagonal only. It keeps the inverse "
               "well behaved when inputs are nearly redundant; a larger damp trusts H's "
               "correlations less.")
with f3:
    st.latex(r"C = H_d^{-1}")
    st.caption("Every OBS formula reads C. Its diagonal C_cc says how cheap weight c is to lose "
               "on its own; its off-diagonal entries say how the other weights should move to "
               "compensate. OBS optimises the **damped** loss Δw H_d Δwᵀ; the error reported "
               "everywhere uses the undamped H.")
m1, m2 = st.columns(2, gap="large")
chart(lfig.matrix_heatmap(lesson.H, "H = XᵀX / N", height=520), "fig_H", m1)
chart(lfig.matrix_heatmap(lesson.C, f"C = H_d⁻¹  (H + {lfig.fmt(lesson.lam)} I, inverted)",
                          height=520), "fig_C", m2)

# ---- 2. the steps -----------------------------------------------------------------------------

st.header("2 · Prune, one scope at a time")
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
who = "rows" if lesson.coupled else "row"

with side:
    st.subheader("Error so far")
    e1, e2 = st.columns(2)
    e1.metric("relative", pct(lesson.rel_error_after(n)),
              help="sqrt(Δw H Δwᵀ / w₀ H w₀ᵀ), with the undamped H")
    e2.metric("Δw H Δwᵀ", lfig.fmt(lesson.error_after(n)), help="The output error (undamped H)")
    if n:
        st.markdown(
            "**Why Σ ε is larger than the error.** Each ε(P) is priced with the damped "
            "C = (H + λI)⁻¹, so the chosen costs add up exactly to the **damped** loss, while the "
            "error uses the undamped H. The difference is the damping term λ‖Δw‖²:")
        st.latex(
            rf"\underbrace{{{tex(lesson.cost_so_far(n))}}}_{{\sum\varepsilon}} = "
            rf"\underbrace{{{tex(lesson.error_gain(n))}}}"
            rf"_{{\Delta w H \Delta w^\top}} + "
            rf"\underbrace{{{tex(lesson.damping_after(n))}}}_{{\lambda \lVert\Delta w\rVert^2}}")
        st.caption("With a smaller damp the two come closer; the masks rarely change.")
    finals = {m: outcomes[m].rel_error for m in COMPARED_MODES}
    path = [lesson.rel_error_after(i) for i in range(n + 1)]
    chart(lfig.error_figure(path, T, finals), "fig_error")
    st.caption("The red path is this lesson (true_obs), one point per scope decided. The short "
               "ticks on the right are where each mode ends on these rows.")

    st.subheader(f"How each mode ends on {'these rows' if lesson.coupled else 'this row'}")
    chart(lfig.modes_figure(finals), "fig_modes")

    st.table(pd.DataFrame(
        {"error": [pct(outcomes[m].rel_error) for m in COMPARED_MODES],
         "Δw H Δwᵀ": [lfig.fmt(outcomes[m].error) for m in COMPARED_MODES],
         "pruned columns": [" · ".join(
             (f"row {row}: " if lesson.coupled else "") + (column_ranges(cols) or "none")
             for row, cols in zip(lesson.rows, outcomes[m].pruned_cols, strict=True))
             for m in COMPARED_MODES]},
        index=list(COMPARED_MODES)))
    st.caption(
        "From `obsviz.prune` on these rows alone. **local**: masks chosen up front with the "
        "original C; each scope compensates only inside itself. **full**: the same masks; "
        "compensation flows to every weight not yet pruned, with C frozen. **split**: the same "
        "masks; the scopes cut into chunks, each chunk compensating with C rebuilt on its own "
        "columns and those after it. **interleaved**: as split, but each chunk re-chooses its "
        "masks with that C. **true_obs**: this lesson, C Schur-downdated after every scope.")

    same, worse = same_mask_worse(outcomes)
    st.markdown("##### Why interleaved can end worse than full with the same mask")
    st.markdown(
        "With identical masks the two differ only in how they compensate. interleaved rebuilds "
        "C on the columns of its chunk and those after it: exact about the weights pruned so "
        "far, but the weights **kept** in earlier chunks are frozen too, so they can no longer "
        "move to make up for later removals. full keeps moving every weight not pruned yet, "
        "with a stale C that still counts the pruned ones. On real rows the lost help usually "
        "costs more: interleaved (then equal to split) ends worse. true_obs has both: a "
        "downdated C and every free weight moving.")
    if worse:
        st.success(f"Here: same mask, interleaved {pct(outcomes['interleaved'].rel_error)} vs "
                   f"full {pct(outcomes['full'].rel_error)}.", icon=":material/visibility:")
    elif worse_rows:
        example = worse_rows[0]
        st.caption(("Same masks here, and interleaved ends no worse" if same else
                    "The masks differ here") + f"; on this layer {len(worse_rows)} rows show "
                   f"it, most clearly row {example}.")
        st.button(f"Show row {example}", key="learn_show_worse", on_click=choose,
                  kwargs={"row": example}, icon=":material/visibility:")

if n == 0:
    with main:
        st.subheader(f"The {who} before pruning")
        for r, row in enumerate(lesson.rows):
            chart(lfig.row_figure(lesson.w_start[r], scope_cols=scopes[0] if T else (),
                                  scopes=scopes), f"fig_row0_{r}")
            if lesson.coupled:
                st.caption(f"Row {row}")
        st.caption(
            f"{K} weights per row in {T} scopes (dotted lines). Each scope must drop "
            f"{lesson.n_prune} of its {gs} blocks. The shaded scope "
            f"({lesson.steps[0].label}) is decided first." if T else "Nothing to prune.")
        st.markdown("Each press of **Step forward** decides one scope, left to right, in three "
                    "moves:")
        st.markdown("**① Choose** — price every way to drop the scope's blocks; take the "
                    "cheapest." + (" With several rows, their costs add up." if lesson.coupled
                                   else ""))
        st.latex(r"\varepsilon(P) = w_P\,(C_{PP})^{-1}\,w_P^\top" if not lesson.coupled else
                 r"\varepsilon(P) = \sum_r w_{r,P}\,(C^{r}_{PP})^{-1}\,w_{r,P}^\top")
        st.markdown("**② Compensate** — zero the chosen weights and move every weight not yet "
                    "pruned, so the output changes as little as possible.")
        st.latex(r"w \leftarrow w - w_P\,(C_{PP})^{-1}\,C_{P,:}")
        st.markdown("**③ Downdate C** — fold the decision into C with the **Schur complement** "
                    "of C_PP, so the next scope is priced knowing these weights are gone.")
        st.latex(r"C \leftarrow C - C_{:,P}\,(C_{PP})^{-1}\,C_{P,:}")

if n > 0:
    s = lesson.steps[n - 1]
    ri = lesson.index
    P = list(s.pruned_cols[ri])
    labels = [s.candidate_label(i) for i in range(len(s.costs))]
    with main:
        st.subheader(f"Step {n}: the scope of {s.label}")

        # -- choose
        st.markdown("##### ① Choose: price every candidate, keep the cheapest")
        st.latex(r"\varepsilon(P) = \sum_r w_{r,P}\,(C^{r}_{PP})^{-1}\,w_{r,P}^\top"
                 if lesson.coupled else r"\varepsilon(P) = w_P\,(C_{PP})^{-1}\,w_P^\top")
        c_fig, c_txt = st.columns([1.5, 1], gap="medium")
        chart(lfig.candidates_figure(labels, s.costs, s.chosen), "fig_costs", c_fig)
        with c_txt:
            st.caption(
                f"Each bar is one way to drop {lesson.n_prune} of the scope's {gs} blocks "
                "(labelled by what it would zero). The cost is how much the damped loss grows "
                "**after** the best compensation, so a big weight can be cheap to lose when its "
                "neighbours can stand in for it. "
                + ("Too many subsets to list: the cheapest blocks one by one are taken. "
                   if s.greedy else f"Cheapest: {labels[s.chosen[0]]}. ")
                + "This step: ε = {}; the error grew by {}, the damping term by {}.".format(
                    *map(lfig.fmt, lesson.step_parts(n))))
        if lesson.coupled:
            st.table(pd.DataFrame(
                {f"row {row}": [lfig.fmt(float(v)) for v in s.row_costs[r]]
                 for r, row in enumerate(lesson.rows)}
                | {"sum ε(P)": [lfig.fmt(float(v)) for v in s.costs]},
                index=labels))
            st.caption("Per row, its own cost with its own current weights and C; the scope "
                       "takes the candidate of least sum.")
        elif not s.greedy and len(P) <= 4:
            _, w_P, C_PP = s.pruned_system(ri)
            which = r"\{" + ", ".join(map(str, P)) + r"\}"
            st.latex(rf"P = {which}:\qquad w_P = {lfig.tex_matrix([w_P.tolist()])}")
            st.latex(rf"C_{{PP}} = {lfig.tex_matrix(C_PP.tolist())}")
            st.latex(rf"\Rightarrow\quad\varepsilon(P) = w_P\,(C_{{PP}})^{{-1}}\,w_P^\top = "
                     rf"{tex(s.chosen_cost)}")

        # -- compensate
        st.markdown("##### ② Compensate: move the weights not pruned yet")
        st.latex(r"w \;\leftarrow\; w - w_P\,(C_{PP})^{-1}\,C_{P,:}"
                 r"\qquad\Rightarrow\qquad w_P = 0")
        for r, row in enumerate(lesson.rows):
            chart(lfig.row_figure(s.w_before[r], s.w_after[r], scope_cols=s.scope_cols(r),
                                  pruned_now=s.pruned_cols[r],
                                  pruned_before=lesson.pruned_cols_after(n - 1, r),
                                  scopes=scopes), f"fig_row_{r}")
            if lesson.coupled:
                st.caption(f"Row {row}: " + (f"columns {column_ranges(s.pruned_cols[r])} "
                                             "pruned now." if s.pruned_cols[r] else
                                             "nothing pruned here; its weights still move."
                                             if lesson.largest_move(n, r) is not None else
                                             "nothing pruned here, nothing moves."))
        top = lesson.largest_move(n)
        st.caption(
            "The pruned weights drop to exactly 0 (✕). Every weight not pruned yet moves — not "
            "only in this scope: later scopes' weights help too"
            + (" — but only within its own row: each row compensates with its own C. "
               if lesson.coupled else ". ")
            + (f"In row {lesson.row} the biggest move is column {top}: "
               f"{lfig.fmt(float(s.w_before[ri, top]))} → {lfig.fmt(float(s.w_after[ri, top]))}. "
               if top is not None else "")
            + f"Error now {pct(s.rel_error)} (was {pct(lesson.rel_error_after(n - 1))}).")

    # -- downdate (full width: three matrices)
    st.markdown("##### ③ Downdate C: the Schur complement")
    st.latex(r"C \;\leftarrow\; C - C_{:,P}\,(C_{PP})^{-1}\,C_{P,:}"
             r"\qquad\Rightarrow\qquad C_{FF} = \left(H_{d,FF}\right)^{-1}")
    tabs = st.tabs([f"row {row}" for row in lesson.rows]) if lesson.coupled else [st.container()]
    for r, tab in enumerate(tabs):
        with tab:
            figs = lfig.downdate_figures(s.C_before[r], s.C_after[r], s.pruned_cols[r],
                                         lesson.pruned_cols_after(n - 1, r))
            for col, fig, key in zip(st.columns(3, gap="small"), figs, ("Cb", "Ca", "Cd"),
                                     strict=True):
                chart(fig, f"fig_{key}_{r}", col)
    before = lesson.pruned_cols_after(n - 1)
    st.caption(
        "The update of C is the **Schur complement** of C_PP in C: the rows and columns of the "
        "pruned weights (red outline) become 0, and the rest of C becomes the inverse of H_d "
        "over the weights F still free — here equal to (H_d,FF)⁻¹ within "
        f"{lesson.schur_check(n):.0e} (relative) — which is what the next scope must be priced "
        "with. The change map's colours are scaled to the free entries."
        + (f" Columns {cols_label(before)}, pruned earlier, stay 0." if before else "")
        + (" Each row has its own C, downdated by its own removals." if lesson.coupled else ""))

    # -- why later choices change
    if n < T:
        st.markdown("##### ④ Why later choices change")
        nxt = lesson.steps[n]
        nl = [nxt.candidate_label(i) for i in range(len(nxt.costs))]
        ours, theirs = nxt.chosen, nxt.frozen_chosen
        w1, w2 = st.columns([1.4, 1], gap="large")
        chart(lfig.candidates_figure(
            nl, nxt.costs, ours, compare=nxt.frozen_costs, compare_chosen=theirs,
            title=f"The next scope ({nxt.label}), priced two ways",
            names=("true_obs: downdated C, current w", "local / full: original C and w"),
            height=360), "fig_next", w1)
        with w2:
            if nxt.choice_flips:
                st.markdown(
                    f"**The choice flips.** true_obs will prune **{nl[ours[0]]}**; local and "
                    f"full chose **{nl[theirs[0]]}** at the start, before anything was pruned."
                    if not nxt.greedy else "**The choice flips**: the two prune different blocks.")
            else:
                st.markdown(
                    f"**Same pick here** ({nl[ours[0]] if not nxt.greedy else 'same blocks'}), "
                    f"but the costs moved by up to {100 * nxt.max_cost_change:.0f} %. Try "
                    "pattern **2:4-pairs**, row **3** of the toy to watch a choice flip.")
            st.markdown(
                "- **true_obs** prices the next scope with the downdated C and the weights as "
                "compensation left them: it knows what is already gone.\n"
                "- **full** chose every mask at the start with the original C and weights, and "
                "compensates with that frozen C: part of each correction lands on weights "
                "already pruned and is thrown away.\n"
                "- **local** uses the same masks, but each scope compensates only inside itself, "
                "so no scope helps another.")
            full_e, true_e = outcomes["full"].rel_error, outcomes["true_obs"].rel_error
            st.caption(f"Here: full ends at {pct(full_e)}, true_obs at {pct(true_e)}"
                       + (" — even where their masks agree, the downdated C compensates better."
                          if full_e > true_e else "."))
    else:
        pruned_now = lesson.pruned_cols_after(n)
        st.success(
            f"Done: all {T} scopes decided. Row {lesson.row} keeps {K - len(pruned_now)} of {K} "
            f"weights; the error is {pct(s.rel_error)} — exactly what `obsviz.prune(..., "
            f"method='true_obs', ng=1, scoring='joint')` gives for "
            f"{'these rows' if lesson.coupled else 'this row'}.", icon=":material/check_circle:")
        for r, row in enumerate(lesson.rows):
            chart(lfig.row_figure(lesson.w0[r], lesson.final_weight[r],
                                  pruned_before=lesson.pruned_cols_after(n, r), scopes=scopes,
                                  names=("original", "pruned")), f"fig_final_{r}")
            if lesson.coupled:
                st.caption(f"Row {row}")
        st.caption("The original (light) against the pruned (dark); grey ✕ marks the pruned "
                   "weights. Compare the modes in the side panel: same budget, different errors.")

# ---- sources ----------------------------------------------------------------------------------

st.divider()
st.markdown(
    "**Where this comes from.** The cost ε(P), the optimal update and the removal of a set of "
    "weights at once: B. Hassibi and D. G. Stork, *Second order derivatives for network "
    "pruning: Optimal Brain Surgeon*, NIPS 5, 1993. Pruning a large layer column by column with "
    "a Cholesky factor of C, the damping λ and H = XᵀX / N from calibration inputs: E. Frantar "
    "and D. Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in "
    "One-Shot*, ICML 2023. Sparsity geometries (a view, blocks, scopes) and the compensation "
    "modes local, full, split and interleaved: the S3 paper, arXiv:2604.11315. The Schur "
    "complement downdate is the textbook identity for the inverse of a principal submatrix.")
