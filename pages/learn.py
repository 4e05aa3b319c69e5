"""Learn OBS: rows of a layer walked through structured OBS, one scope at a time; the student may
overrule any step by clicking a cost bar, and the lesson goes on from that choice beside OBS's.

Choose (layer, columns, geometry, row, damping, scoring) → call ``ui.learn`` (``obsviz.lesson``:
the engine's own OBS primitives, and ``obsviz.prune``) → show. Every number and every sentence
comes from the ``Lesson`` (worded by ``ui.learn``); the page only lays them out, top to bottom.
"""

import pandas as pd
import streamlit as st

from obsviz.figures import lesson as lfig
from obsviz.lesson import COMPARED_MODES, SCORINGS, column_ranges, same_mask_worse
from obsviz.metrics import format_rel_error as pct

from ui import learn, state
from ui.text import md

state.require_entrypoint()
st.set_page_config(page_title="Learn · obsviz", page_icon=":material/school:", layout="wide")
ss = st.session_state
NO_BAR = {"displayModeBar": False}
tex = lfig.tex_number


def chart(fig, key: str, where=st) -> None:
    where.plotly_chart(fig, config=NO_BAR, key=key)


def go_to(n: int) -> None:
    ss["learn_step"] = n


def choose(**fields) -> None:
    """A button's ``on_click``: set choices (another layer, size, row) and start over."""
    ss["learn_setup"].update(fields)
    learn.restart()


def overrule(forced: dict) -> None:
    ss["learn_forced"] = forced
    ss["learn_picks"] += 1


bind, changed = state.form_widgets("learn_setup", "_l_", after=lambda field: learn.restart())

# ---- choose -----------------------------------------------------------------------------------

form = learn.setup()
current = state.loaded_layer()
names = learn.sources(current)
if form["source"] not in names:
    form["source"] = learn.TOY
layer = learn.layer_of(form["source"], current)
M, K_all = layer.weight.shape
ks = [k for k in learn.COLUMNS if k <= K_all] or [K_all]
if form["k"] not in ks:
    form["k"] = 16 if 16 in ks else ks[-1]
form["row"] = min(int(form["row"]), M - 1)
W_k, H_k, digest = learn.problem(layer, form["k"])
if form.get("layer") != digest:         # another layer in use: the lesson starts over
    form["layer"] = digest
    learn.restart()

st.title("Learn OBS")
st.markdown(
    "Follow **one row** of a layer as structured Optimal Brain Surgeon prunes it, one scope at a "
    "time: which weights go, how the others move to make up for them, and how each decision "
    "changes the next. **Click a cost bar** to prune something else than OBS would: the lesson "
    "goes on from your choice, next to OBS's own path.")

c_src, c_k, c_row, c_damp = st.columns([2, 0.8, 0.8, 1.4])
c_src.selectbox("Lesson layer", list(names), key=bind("source"), on_change=changed,
                args=("source",),
                format_func=(names | ({learn.CURRENT: f"{current.name} (first columns)"}
                                      if current is not None else {})).get,
                help="A toy layer, or the layer in use (its first columns).")
c_k.selectbox("Columns", ks, key=bind("k"), on_change=changed, args=("k",),
              help="The lesson uses the first K columns: W[:, :K] and H[:K, :K].")
c_row.number_input("Row", min_value=0, max_value=M - 1, step=1, key=bind("row"),
                   on_change=changed, args=("row",),
                   help="Which row (output channel) to follow, with the rows coupled to it.")
c_damp.select_slider("Damping (damp)", learn.DAMPS, key=bind("damp"), on_change=changed,
                     args=("damp",), help="λ = damp × mean(diag H) is added to H's diagonal.")
c_geo, c_n, c_m, c_score = st.columns([2, 0.8, 0.8, 1.4])
geometries = {g: g for g in learn.GEOMETRIES} | {learn.PAGE: learn.page_geometry_label()}
c_geo.selectbox("Geometry", learn.GEOMETRIES, key=bind("geometry"), on_change=changed,
                args=("geometry",), format_func=geometries.get,
                help="The Geometry page's geometry (any preset, N:M or free-form, with its nnz; "
                     "the sidebar shows it), or a preset or N:M here.")
if form["geometry"] == "N:M":
    c_n.number_input("N (kept)", min_value=0, step=1, key=bind("n"), on_change=changed,
                     args=("n",))
    c_m.number_input("M (group)", min_value=1, max_value=64, step=1, key=bind("m"),
                     on_change=changed, args=("m",))
else:
    c_n.page_link("pages/geometry.py", label="Design one", icon=":material/grid_view:",
                  help="A free-form geometry: build it on the Geometry page, then pick "
                       "'Geometry page' here. Write its shapes in M and K (e.g. K/16) so they "
                       "follow the lesson's columns.")
c_score.selectbox("Scoring", SCORINGS, key=bind("scoring"), on_change=changed,
                  args=("scoring",), help="How true_obs ranks a step's candidates; the first is "
                  "the Prune page's default.")
st.caption(learn.scoring_note(form["scoring"]))

# ---- call -------------------------------------------------------------------------------------

geom_form = learn.geometry_choice(form)
geom, nnz, why = learn.build(geom_form, (M, form["k"]))
lesson = obs_path = None
if geom is not None:
    try:
        obs_path = learn.run_lesson(digest, geom, nnz, form["row"], form["damp"],
                                    form["scoring"], {}, W_k, H_k)
        lesson = learn.run_lesson(digest, geom, nnz, form["row"], form["damp"],
                                  form["scoring"], ss["learn_forced"], W_k, H_k)
    except (ValueError, RuntimeError) as err:   # ArgumentError names the field; a failed solve
        why = str(err)
if lesson is None:
    st.error(f"This geometry cannot be shown at lesson size (W {M} × {form['k']}): {md(why)}",
             icon=":material/warning:")
    options = {s: learn.layer_of(s, current) for s in names}
    fits = learn.what_fits(geom_form, options)
    if fits:
        st.info(learn.fits_text(fits, current), icon=":material/lightbulb:")
        for source, sizes in learn.fits_by_source(fits).items():   # the most scopes: most columns
            st.button(f"Use {learn.short_name(source, current)}, {sizes[-1]} columns",
                      key=f"learn_fit_{source}", on_click=choose,
                      kwargs={"source": source, "k": sizes[-1]}, icon=":material/swap_horiz:")
    else:
        st.info(learn.no_fit_text(geom_form), icon=":material/lightbulb:")
    st.stop()

# ---- show -------------------------------------------------------------------------------------

T, K, R = lesson.n_steps, lesson.K, len(lesson.rows)
n = min(max(int(ss["learn_step"]), 0), T)
ss["learn_step"] = n
ss["learn_weights"] = lesson.weight_after(n)[lesson.index].tolist()
gs = lesson.geometry.blocks_per_scope
scopes = [s.scope_cols(lesson.index) for s in lesson.steps]
st.caption(learn.case_caption(lesson, M))
if lesson.coupled:
    st.info(learn.coupled_note(lesson), icon=":material/link:")

with st.expander("1 · What OBS minimises: the loss, H, damping and C", expanded=n == 0):
    f1, f2, f3 = st.columns(3, gap="medium")
    f1.latex(r"L(\Delta w) = \Delta w\, H\, \Delta w^\top")
    f1.caption(learn.LOSS_NOTE)
    f2.latex(r"H_d = H + \lambda I")
    f2.latex(rf"\lambda = {tex(lesson.damp)}\times{tex(lesson.mean_diag)} = {tex(lesson.lam)}")
    f2.caption(learn.DAMPING_NOTE)
    f3.latex(r"C = H_d^{-1}")
    f3.caption(learn.C_NOTE)
    m1, m2 = st.columns(2, gap="large")
    chart(lfig.matrix_heatmap(lesson.H, "H = XᵀX / N", height=420), "fig_H", m1)
    chart(lfig.matrix_heatmap(lesson.C, f"C = H_d⁻¹  (H + {lfig.fmt(lesson.lam)} I, inverted)",
                              height=420), "fig_C", m2)

st.header("2 · Prune, one scope at a time")
b_back, b_fwd, b_reset, b_where, e1, e2 = st.columns([1, 1.2, 1, 1.6, 1, 1],
                                                     vertical_alignment="center")
b_back.button("Step back", key="learn_back", on_click=go_to, args=(n - 1,), disabled=n == 0,
              icon=":material/arrow_back:", width="stretch")
b_fwd.button("Step forward", key="learn_forward", on_click=go_to, args=(n + 1,),
             disabled=n == T, type="primary", icon=":material/arrow_forward:", width="stretch")
b_reset.button("Reset", key="learn_reset", on_click=go_to, args=(0,), disabled=n == 0,
               icon=":material/restart_alt:", width="stretch")
with b_where:
    st.markdown(f"**Step {n} of {T}**" + (" · done" if n == T else ""))
    st.progress(n / T if T else 1.0)
e1.metric("error" + (" (yours)" if lesson.overruled_steps else ""),
          pct(lesson.rel_error_after(n)), help="sqrt(Δw H Δwᵀ / w₀ H w₀ᵀ), undamped H")
if lesson.overruled_steps:
    e2.metric("OBS's path", pct(obs_path.rel_error_after(n)),
              delta=f"{100 * (lesson.rel_error_after(n) - obs_path.rel_error_after(n)):+.2f} "
                    "points", delta_color="inverse")
else:
    e2.metric("Δw H Δwᵀ", lfig.fmt(lesson.error_after(n)), help="The output error (undamped H)")
if lesson.overruled_steps:
    o1, o2 = st.columns([4, 1], vertical_alignment="center")
    o1.warning(learn.path_text(lesson, obs_path, n), icon=":material/call_split:")
    o2.button("Follow OBS", key="learn_obs_all", help="Undo every overrule: back to OBS's path",
              on_click=overrule, args=({},),
              icon=":material/undo:", width="stretch")

if n == 0:
    st.subheader(f"The {'rows' if lesson.coupled else 'row'} before pruning")
    for r, row in enumerate(lesson.rows):
        chart(lfig.row_figure(lesson.w_start[r], scope_cols=scopes[0] if T else (),
                              scopes=scopes, height=260), f"fig_row0_{r}")
        if lesson.coupled:
            st.caption(f"Row {row}")
    st.caption(
        f"{K} weights per row in {learn.plural(T, 'scope')} (dotted lines). Each scope drops "
        f"{lesson.n_prune} of its {learn.plural(gs, 'block')}. The shaded one "
        f"({lesson.steps[0].label}) is decided first." if T else "Nothing to prune.")
    st.markdown(learn.THREE_MOVES)
    st.latex(r"\varepsilon(P) = w_P\,(C_{PP})^{-1}\,w_P^\top \qquad "
             r"w \leftarrow w - w_P\,(C_{PP})^{-1}\,C_{P,:} \qquad "
             r"C \leftarrow C - C_{:,P}\,(C_{PP})^{-1}\,C_{P,:}")
else:
    s = lesson.steps[n - 1]
    labels = [s.candidate_label(i) for i in range(len(s.costs))]
    st.subheader(f"Step {n}: the scope of {s.label}")

    # -- ① choose
    st.markdown("##### ① Choose: price every candidate" + ("" if s.greedy else
                " — click a bar to prune it instead"))
    c_fig, c_txt = st.columns([1.5, 1], gap="medium")
    independent = lesson.scoring == SCORINGS[0]
    marks = [(i, "OBS" if s.overruled else "OBS's pick", lfig.CHOSEN) for i in s.obs_chosen]
    if s.overruled:
        marks.append((s.chosen[0], "yours", lfig.INK))
    fig = lfig.candidates_figure(
        labels, s.costs, s.chosen, marks=marks, clickable=not s.greedy,
        compare=s.scores if independent else None,
        names=("ε(P): exact cost", "Σ w²/C_cc: what OBS ranks by"))
    event = c_fig.plotly_chart(fig, config=NO_BAR, key=f"_l_costs_{ss['learn_picks']}_{n}",
                               on_select="ignore" if s.greedy else "rerun",
                               selection_mode="points")
    points = (event.selection.points if event and not s.greedy else [])
    if points and points[0]["point_index"] not in s.chosen:
        overrule(lesson.overrule(n, int(points[0]["point_index"])))
        st.rerun()
    with c_txt:
        st.caption(learn.choice_text(lesson, n))
        if not s.greedy:
            pick_key = f"_l_pick_{ss['learn_picks']}_{n}"
            st.selectbox("Prune instead", range(len(labels)), index=s.chosen[0],
                         format_func=labels.__getitem__, key=pick_key,
                         on_change=lambda: overrule(lesson.overrule(n, ss[pick_key])),
                         help="The same as clicking its bar.")
            if s.overruled:
                st.button("OBS's choice here", key="learn_obs_here", icon=":material/undo:",
                          on_click=overrule, args=(lesson.overrule(n, s.obs_chosen[0]),))
    if lesson.coupled:
        st.table(pd.DataFrame(
            {f"row {row}": [lfig.fmt(float(v)) for v in s.row_costs[r]]
             for r, row in enumerate(lesson.rows)}
            | {"sum ε(P)": [lfig.fmt(float(v)) for v in s.costs]}, index=labels))
        st.caption("Each row's own ε with its own current weights and C; the scope's choice "
                   "reads the sum over the rows.")
    elif not s.greedy and len(s.pruned_cols[0]) <= 4:
        P, w_P, C_PP = s.pruned_system(0)
        which = r"\{" + ", ".join(map(str, P)) + r"\}"
        st.latex(rf"P = {which}:\quad w_P = {lfig.tex_matrix([w_P.tolist()])},\quad "
                 rf"C_{{PP}} = {lfig.tex_matrix(C_PP.tolist())}\quad\Rightarrow\quad"
                 rf"\varepsilon(P) = {tex(s.chosen_cost)}")

    # -- ② compensate
    st.markdown("##### ② Compensate: the weights not pruned yet move")
    st.latex(r"w \;\leftarrow\; w - w_P\,(C_{PP})^{-1}\,C_{P,:}\qquad\Rightarrow\qquad w_P = 0")
    for r in range(R):
        chart(lfig.row_figure(s.w_before[r], s.w_after[r], scope_cols=s.scope_cols(r),
                              pruned_now=s.pruned_cols[r],
                              pruned_before=lesson.pruned_cols_after(n - 1, r), scopes=scopes,
                              height=260), f"fig_row_{r}")
        st.caption(learn.compensation_text(lesson, n, r))
    st.caption(learn.biggest_move_text(lesson, n))
    why, identity = learn.sums_text(lesson, n)
    s1, s2 = st.columns([1, 1], gap="medium", vertical_alignment="center")
    s1.markdown(why)
    s2.latex(identity)

    # -- ③ downdate
    st.markdown("##### ③ Downdate C: the Schur complement")
    st.latex(r"C \;\leftarrow\; C - C_{:,P}\,(C_{PP})^{-1}\,C_{P,:}"
             r"\qquad\Rightarrow\qquad C_{FF} = \left(H_{d,FF}\right)^{-1}")
    order = sorted(range(R), key=lambda r: not s.pruned_cols[r])   # the rows that pruned first
    tabs = st.tabs([f"row {lesson.rows[r]}" + ("" if s.pruned_cols[r] else " (nothing pruned)")
                    for r in order]) if lesson.coupled else [st.container()]
    for r, tab in zip(order, tabs, strict=True):
        with tab:
            figs = lfig.downdate_figures(s.C_before[r], s.C_after[r], s.pruned_cols[r],
                                         lesson.pruned_cols_after(n - 1, r), height=340)
            for col, fig, key in zip(st.columns(3, gap="small"), figs, ("Cb", "Ca", "Cd"),
                                     strict=True):
                chart(fig, f"fig_{key}_{r}", col)
    before = lesson.pruned_cols_after(n - 1)
    st.caption(
        "The downdate is the **Schur complement** of C_PP in C: the rows and columns of the "
        "weights pruned now (red outline) become 0, and the rest becomes the inverse of H_d over "
        f"the weights still free — here equal to (H_d,FF)⁻¹ within {lesson.schur_check(n):.0e} "
        "(relative) — which is what the next scope is priced with. The change map's colours "
        "are scaled to the free entries."
        + (f" {f'In row {lesson.row}, c' if lesson.coupled else 'C'}olumns "
           f"{column_ranges(before)}, pruned earlier, stay 0." if before else "")
        + (" Each row has its own C, downdated by its own removals only." if lesson.coupled
           else ""))

    # -- ④ what it changes next, or the end
    if n < T:
        st.markdown("##### ④ Why later choices change")
        nxt = lesson.steps[n]
        nl = [nxt.candidate_label(i) for i in range(len(nxt.costs))]
        w1, w2 = st.columns([1.4, 1], gap="large")
        chart(lfig.candidates_figure(
            nl, nxt.costs, nxt.obs_chosen, compare=nxt.frozen_costs,
            compare_chosen=nxt.frozen_chosen, title=f"The next scope ({nxt.label}), priced "
            "two ways", names=("ε(P): downdated C, current w", "ε(P): original C and w "
                               "(local / full)"), height=340), "fig_next", w1)
        w2.markdown(learn.next_text(lesson, n, learn.outcomes(digest, obs_path, W_k, H_k)[0]))
    else:
        st.success(learn.done_text(lesson, obs_path), icon=":material/check_circle:")
        for r, row in enumerate(lesson.rows):
            chart(lfig.row_figure(lesson.w0[r], lesson.final_weight[r],
                                  pruned_before=lesson.pruned_cols_after(n, r), scopes=scopes,
                                  names=("original", "pruned"), height=260), f"fig_final_{r}")
            if lesson.coupled:
                st.caption(f"Row {row}")

# ---- 3. the paths and the modes ---------------------------------------------------------------

outcomes, worse_rows = learn.outcomes(digest, obs_path, W_k, H_k)
st.header(f"3 · How each mode ends on {learn.who(lesson)}")
finals = {m: outcomes[m].rel_error for m in COMPARED_MODES}
p1, p2 = st.columns([1.3, 1], gap="large")
with p1:
    yours = lesson.rel_errors[:n + 1] if lesson.overruled_steps else None
    chart(lfig.error_figure(obs_path.rel_errors[:n + 1], T, finals, yours=yours), "fig_error")
    st.caption("The red path is OBS (true_obs), one point per scope decided"
               + ("; the dashed one is yours" if yours else "") + ". The ticks on the right "
               "are where each mode ends on " + learn.who(lesson) + ".")
    if lesson.overruled_steps:
        st.dataframe(pd.DataFrame(learn.step_ledger(lesson, obs_path)), hide_index=True)
with p2:
    chart(lfig.modes_figure(finals), "fig_modes")
    st.table(pd.DataFrame(
        {"error": [pct(outcomes[m].rel_error) for m in COMPARED_MODES],
         "pruned columns": [" · ".join(
             (f"row {row}: " if lesson.coupled else "") + (column_ranges(cols) or "none")
             for row, cols in zip(lesson.rows, outcomes[m].pruned_cols, strict=True))
             for m in COMPARED_MODES]}, index=list(COMPARED_MODES)))
st.caption(learn.modes_note(lesson.scoring))
same, worse = same_mask_worse(outcomes)
with st.expander("Why interleaved can end worse than full with the same mask", expanded=worse):
    st.markdown(learn.INTERLEAVED_NOTE)
    if worse:
        st.success(f"Here: same mask, interleaved {pct(outcomes['interleaved'].rel_error)} vs "
                   f"full {pct(outcomes['full'].rel_error)}.", icon=":material/visibility:")
    elif worse_rows:
        example = worse_rows[0]
        st.caption(("Same masks here, and interleaved ends no worse" if same else
                    "The masks differ here") + "; on this layer "
                   f"{learn.plural(len(worse_rows), 'row')} show it, most clearly row {example}.")
        st.button(f"Show row {example}", key="learn_show_worse", on_click=choose,
                  kwargs={"row": example}, icon=":material/visibility:")
    else:
        st.caption("No row of this layer shows it at this size.")

st.divider()
st.markdown(learn.SOURCES_NOTE)
