"""The Learn page's choices, calls and sentences: which layer and geometry a lesson is about, the
lessons themselves (cached), and every sentence the page states about the case shown, worded
from the ``Lesson``'s own numbers so each one is true of that case (counts, plurals, "every
weight moves").

Pages call: ``setup()``, ``sources()``, ``layer_of()``, ``geometry_choice()``, ``build()``,
``what_fits()``, ``run_lesson()``, ``outcomes()`` and the wording functions below.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import streamlit as st
import torch

from obsviz import PRESETS, Geometry
from obsviz import layers as L
from obsviz.geometry import nothing_pruned_text
from obsviz.lesson import (
    COUPLED_TOY,
    SCORINGS,
    Lesson,
    ModeOutcome,
    column_ranges,
    coupled_toy,
    first_columns,
    interleaved_worse_rows,
    mode_outcomes,
)
from obsviz.metrics import format_rel_error as pct
from obsviz.store import layer_hash

from ui import state
from ui.forms import GeometryForm, build_geometry
from ui.text import md

TOY, CURRENT = "toy", "current"
#: The shipped layers a lesson can start from, before the layer in use.
TOYS = {TOY: "toy (8 × 16, synthetic)",
        COUPLED_TOY: "coupled toy (16 × 64, synthetic; for block16)"}
COLUMNS = (8, 16, 32, 64)
DAMPS = (0.0001, 0.001, 0.01, 0.1, 0.5)
#: The geometry choice that follows the Geometry page (and the sidebar).
PAGE = "page"
GEOMETRIES = (PAGE, *PRESETS, "N:M")
DEFAULT_SETUP = {"source": TOY, "k": 16, "geometry": PAGE, "n": 2, "m": 4, "row": 0,
                 "damp": 0.01, "scoring": SCORINGS[0]}


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 scope``, ``2 scopes`` (``many``: an irregular plural)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def listing(items: list) -> str:
    """``0``, ``0 and 8``, ``0, 4 and 8``."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---- choose -----------------------------------------------------------------------------------


def setup() -> dict:
    """The page's choices (session key ``learn_setup``), the step and the student's overrules."""
    ss = st.session_state
    ss.setdefault("learn_setup", dict(DEFAULT_SETUP))
    ss.setdefault("learn_step", 0)
    ss.setdefault("learn_forced", {})
    ss.setdefault("learn_picks", 0)
    return ss["learn_setup"]


def restart() -> None:
    """Back to step 0 on OBS's own path (any new choice of layer, geometry, row, …)."""
    ss = st.session_state
    ss["learn_step"] = 0
    ss["learn_forced"] = {}
    ss["learn_picks"] = ss.get("learn_picks", 0) + 1


def sources(current: L.Layer | None) -> dict[str, str]:
    """The layers offered: the toys, then the layer in use (its first columns)."""
    out = dict(TOYS)
    if current is not None and current.name not in TOYS:
        out[CURRENT] = "the layer in use (first columns)"
    return out


def layer_of(source: str, current: L.Layer | None) -> L.Layer:
    if source == COUPLED_TOY:
        return coupled_toy()
    if source == CURRENT and current is not None:
        return current
    return state.sample_layer(TOY)


def geometry_choice(setup: dict) -> GeometryForm:
    """The geometry form the lesson is built from: the Geometry page's own (any preset, N:M or
    free-form, with its nnz), or a preset / N:M chosen here (with its usual nnz)."""
    choice = setup["geometry"]
    if choice == PAGE:
        form = GeometryForm(**vars(state.geometry_form()))
    elif choice == "N:M":
        form = GeometryForm(pattern="N:M", n=int(setup["n"]), m=int(setup["m"]))
    else:
        form = GeometryForm(pattern=choice, nnz="")
    form.use_layer = True
    return form


def page_geometry_label() -> str:
    """The option that follows the Geometry page, with what it holds now."""
    form = state.geometry_form()
    name = f"{form.n}:{form.m}" if form.pattern == "N:M" else form.pattern
    budget = "" if form.pattern == "N:M" else f", nnz {str(form.nnz).strip()[:12]}"
    return f"Geometry page ({name}{budget})"


def build(form: GeometryForm, shape: tuple[int, int]
          ) -> tuple[Geometry | None, int | None, str | None]:
    """The geometry of ``form`` on the lesson's W ``shape`` ``(M, k)``: ``(geometry, nnz, None)``
    or ``(None, None, why not)``."""
    return _build(json.dumps(asdict(form), sort_keys=True), tuple(shape))


@st.cache_resource(max_entries=64, show_spinner=False)
def _build(form_key: str, shape: tuple[int, int]):
    form = GeometryForm(**json.loads(form_key))
    if form.pattern in PRESETS and not form.nnz:      # a preset chosen here: its usual nnz
        try:
            geom = Geometry.preset(form.pattern, shape)
        except ValueError as err:
            return None, None, str(err)
        return geom, geom.nnz, None
    geom, nnz, errors = build_geometry(form, shape)
    return (geom, nnz, None) if geom is not None else (None, None, " ".join(errors.values()))


def problem(layer: L.Layer, k: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The lesson's sub-problem ``W[:, :k]``, ``H[:k, :k]`` and its content hash."""
    W, H = first_columns(layer.weight, layer.hessian, k)
    return W, H, layer_hash(W, H)


# ---- call -------------------------------------------------------------------------------------


def _key(forced: dict) -> str:
    return json.dumps({str(t): list(b) for t, b in sorted(forced.items())})


def run_lesson(digest: str, geom: Geometry, nnz: int, row: int, damp: float, scoring: str,
               forced: dict, W: torch.Tensor, H: torch.Tensor) -> Lesson:
    """The lesson on ``W``, ``H`` (``digest``: their hash), in float64 so the numbers shown are
    the exact ones; cached per choice (``forced``: the student's overrules)."""
    return _lesson(digest, geom.key, nnz, row, damp, scoring, _key(forced), W, H, geom)


@st.cache_resource(max_entries=32, show_spinner="Walking the rows through OBS…")
def _lesson(digest, geom_key, nnz, row, damp, scoring, forced_key, _W, _H, _geom) -> Lesson:
    forced = {int(t): tuple(b) for t, b in json.loads(forced_key).items()}
    return Lesson.start(_W.to(torch.float64), _H.to(torch.float64), _geom, nnz, row, damp,
                        scoring, forced)


def outcomes(digest: str, lesson: Lesson, W: torch.Tensor, H: torch.Tensor
             ) -> tuple[dict[str, ModeOutcome], list[int]]:
    """Every mode's end on the lesson's rows (``obsviz.prune`` at the Prune page's defaults, the
    lesson's scoring) and the rows where interleaved keeps full's mask yet ends worse."""
    return _outcomes(digest, lesson.geometry.key, lesson.nnz, lesson.rows, lesson.damp,
                     lesson.scoring, W, H, lesson.geometry)


@st.cache_resource(max_entries=16, show_spinner="Running every mode on these rows…")
def _outcomes(digest, geom_key, nnz, rows, damp, scoring, _W, _H, _geom):
    W, H = _W.to(torch.float64), _H.to(torch.float64)
    return (mode_outcomes(W, H, _geom, nnz, rows, damp, scoring=scoring),
            interleaved_worse_rows(W, H, _geom, nnz, damp))


def what_fits(form: GeometryForm, options: dict[str, L.Layer]) -> list[tuple[str, int]]:
    """``(source, k)`` pairs of ``options`` (source → layer) where this geometry builds on the
    first ``k`` columns and a lesson on row 0 starts: what would work instead."""
    key = json.dumps(asdict(form), sort_keys=True)
    shapes = tuple((s, tuple(layer.weight.shape)) for s, layer in options.items())
    return _fits(key, shapes, options)


@st.cache_resource(max_entries=16, show_spinner="Looking for a size that fits…")
def _fits(form_key, shapes, _options):
    out = []
    for source, (M, K_all) in shapes:
        for k in (k for k in COLUMNS if k <= K_all):
            geom, nnz, _ = _build(form_key, (M, k))
            if geom is None:
                continue
            W, H = first_columns(_options[source].weight, _options[source].hessian, k)
            try:
                Lesson.start(W.to(torch.float64), H.to(torch.float64), geom, nnz, 0)
            except ValueError:
                continue
            out.append((source, k))
    return out


# ---- the sentences ------------------------------------------------------------------------------


def who(lesson: Lesson) -> str:
    return "these rows" if lesson.coupled else "this row"


def case_caption(lesson: Lesson, M: int) -> str:
    geom, T = lesson.geometry, lesson.n_steps
    rows = (f"Rows {listing(list(lesson.rows))}" if lesson.coupled else f"Row {lesson.row}")
    n_cand = len(lesson.steps[0].costs) if T else 0
    name = geom.run_name(lesson.nnz)
    if lesson.n_prune == 0:
        return (f"{rows} of W {M} × {lesson.K} · "
                + nothing_pruned_text(f"**{name}**", geom.blocks_per_scope))
    cands = (f"{plural(n_cand, 'candidate')} each" if not (T and lesson.steps[0].greedy)
             else "too many subsets to list, so each is decided greedily")
    return (f"{rows} of W {M} × {lesson.K} · **{name}**: blocks of "
            f"{plural(geom.block_numel, 'weight')}, scopes of "
            f"{plural(geom.blocks_per_scope, 'block')} that keep nnz = {lesson.nnz} "
            f"(prune np = {lesson.n_prune}) · {plural(T, 'scope')} on {who(lesson)}, {cands}.")


def coupled_note(lesson: Lesson) -> str:
    rows, R = listing(list(lesson.rows)), len(lesson.rows)
    name = lesson.geometry.run_name(lesson.nnz) if lesson.geometry.name else \
        "This free-form geometry"
    return (f"**{name} couples rows.** Its scopes join rows {rows}, so those rows are decided "
            "together: for every candidate the rows' costs add up (the loss is a sum over rows) "
            "and OBS picks by the total. Then each row removes its own part, with its own "
            f"compensation and its own C. You asked for row {lesson.row}; the lesson follows "
            f"{'both' if R == 2 else f'all {R}'}.")


def scoring_note(scoring: str) -> str:
    if scoring == SCORINGS[0]:
        return (f"**{scoring}** (the Prune page's default): OBS ranks a candidate by "
                "Σ w_c² / C_cc, each weight priced alone with the current C; the bars' ε(P) is "
                "the exact cost of dropping the set together, so OBS's pick need not be the "
                "lowest bar.")
    return (f"**{scoring}**: OBS ranks a candidate by its exact cost ε(P) and takes the lowest "
            f"bar (the Prune page's default is {SCORINGS[0]}).")


def choice_text(lesson: Lesson, n: int) -> str:
    """What step ``n`` chose, and why, in numbers."""
    s = lesson.steps[n - 1]
    labels = [s.candidate_label(i) for i in range(len(s.costs))]
    eps, gain, damping = lesson.step_parts(n)
    bar = "Each red bar" if lesson.scoring == SCORINGS[0] else "Each bar"
    parts = [f"{bar} is one way to drop {lesson.n_prune} of the scope's "
             f"{plural(lesson.geometry.blocks_per_scope, 'block')} (labelled by what it would "
             "zero); its height is how much the damped loss grows **after** the best "
             "compensation."]
    if s.greedy:
        parts.append("Too many subsets to list: the bars are single blocks and OBS takes the "
                     f"{plural(lesson.n_prune, 'block')} of least "
                     f"{'score' if lesson.scoring == SCORINGS[0] else 'cost'}.")
    else:
        mine, obs_pick = s.chosen[0], s.obs_chosen[0]
        cheapest = s.cheapest
        if lesson.scoring == SCORINGS[0]:
            pick = (f"OBS ({lesson.scoring} scoring) picks **{labels[obs_pick]}**, least "
                    f"Σ w²/C_cc = {_f(float(s.scores[obs_pick]))}")
            pick += (", which is also the lowest ε." if obs_pick == cheapest else
                     f"; the lowest ε is {labels[cheapest]} ({_f(float(s.costs[cheapest]))} "
                     f"against {_f(float(s.costs[obs_pick]))}).")
        else:
            pick = f"OBS picks the lowest bar, **{labels[obs_pick]}**."
        parts.append(pick)
        if s.overruled:
            diff = float(s.costs[mine] - s.costs[obs_pick])
            parts.append(f"**You pruned {labels[mine]}** instead: ε = {_f(float(s.costs[mine]))}"
                         f", {_f(abs(diff))} {'more' if diff > 0 else 'less'} than OBS's pick "
                         "costs here.")
    parts.append(f"This step: ε = {_f(eps)}; the error grew by {_f(gain)}, the damping term by "
                 f"{_f(damping)}.")
    return " ".join(parts)


def compensation_text(lesson: Lesson, n: int, r: int) -> str:
    """What step ``n``'s update did to the lesson's ``r``-th row."""
    s = lesson.steps[n - 1]
    P, free = s.pruned_cols[r], lesson.free_cols_after(n, r)
    moved = lesson.moved_cols(n, r)
    lead = f"Row {lesson.rows[r]}: " if lesson.coupled else ""
    if not P:
        return lead + ("nothing pruned here, and its weights stay as they were: only a row "
                       "that loses weights compensates." if not moved else
                       f"nothing pruned here, yet {plural(len(moved), 'weight')} moved.")
    has = "it still has" if lesson.coupled else "the row still has"
    scope = set(s.scope_cols(r))
    later = [c for c in moved if c not in scope]
    gone = (f"column{'s' if len(P) > 1 else ''} {column_ranges(P)} drop to exactly 0 (✕); ")
    if not free:
        text = gone + "no weight is left to compensate."
        return lead + (text if lead else text[0].upper() + text[1:])
    if len(moved) == len(free):
        what = (f"the only weight {has} moved" if len(free) == 1 else
                f"all {len(free)} weights {has} moved")
    else:
        what = f"{len(moved)} of the {plural(len(free), 'weight')} {has} moved"
    where = ("" if not moved or n == lesson.n_steps else
             ", every one of them in a later scope: they help too" if len(later) == len(moved)
             else f", {len(later)} of them in later scopes: they help too" if later
             else ", none of them in a later scope")
    own = " (with its own C)" if lesson.coupled else ""
    text = gone + what + own + where + "."
    return lead + (text if lead else text[0].upper() + text[1:])


def biggest_move_text(lesson: Lesson, n: int) -> str:
    s, top = lesson.steps[n - 1], lesson.largest_move(n)
    ri = lesson.index
    text = (f"In row {lesson.row} the biggest move is column {top}: "
            f"{_f(float(s.w_before[ri, top]))} → {_f(float(s.w_after[ri, top]))}. "
            if top is not None else "")
    return text + f"Error now {pct(s.rel_error)} (was {pct(lesson.rel_error_after(n - 1))})."


def path_text(lesson: Lesson, obs_path: Lesson, n: int) -> str:
    """Where the student's path stands against OBS's after ``n`` steps."""
    mine, theirs = lesson.rel_error_after(n), obs_path.rel_error_after(n)
    steps = listing(lesson.overruled_steps)
    d = 100 * (mine - theirs)
    how = ("the same as OBS's" if abs(d) < 5e-5 else
           f"{abs(d):.2f} points {'above' if d > 0 else 'below'} OBS's {pct(theirs)}")
    return (f"You overruled OBS at step{'s' if len(lesson.overruled_steps) > 1 else ''} "
            f"{steps}. After step {n} your error is {pct(mine)}, {how}.")


def done_text(lesson: Lesson, obs_path: Lesson) -> str:
    T, K = lesson.n_steps, lesson.K
    kept = [K - len(lesson.pruned_cols_after(T, r)) for r in range(len(lesson.rows))]
    if lesson.coupled:
        keeps = listing([f"row {row} keeps {k} of {K} weights"
                         for row, k in zip(lesson.rows, kept, strict=True)])
    else:
        keeps = f"row {lesson.row} keeps {kept[0]} of {K} weights"
    head = (f"Done: {'the one scope' if T == 1 else f'all {T} scopes'} decided; "
            f"{keeps}. ")
    if not lesson.overruled_steps:
        default = (" (the Prune page's default)" if lesson.scoring == SCORINGS[0] else "")
        return head + (f"The error is {pct(lesson.rel_error_after(T))}: exactly what "
                       f"`obsviz.prune(..., method='true_obs', scoring='{lesson.scoring}')`"
                       f"{default} gives for {who(lesson)}.")
    mine, theirs = lesson.rel_error_after(T), obs_path.rel_error_after(T)
    d = 100 * (mine - theirs)
    verdict = ("the same as OBS's" if abs(d) < 5e-5 else
               f"{abs(d):.2f} points {'worse' if d > 0 else 'better'} than OBS's {pct(theirs)}")
    return head + f"Your path ends at {pct(mine)}, {verdict}."


def step_ledger(lesson: Lesson, obs_path: Lesson) -> list[dict]:
    """Per step: the error after it on both paths and the difference (relative error points)."""
    return [{"step": n, "yours": pct(lesson.rel_error_after(n)),
             "OBS": pct(obs_path.rel_error_after(n)),
             "difference": f"{100 * (lesson.rel_error_after(n) - obs_path.rel_error_after(n)):+.2f}"
                           " points",
             "overruled": "yes" if n in lesson.overruled_steps else ""}
            for n in range(1, lesson.n_steps + 1)]


def no_fit_text(form: GeometryForm) -> str:
    """What to do when a geometry fits none of the lesson's layers and sizes."""
    if form.pattern == "free-form":
        return ("It fits none of the lesson's layers at 8 to 64 columns. A free-form geometry "
                "written in numbers for another W fits only that shape: write its shapes in M "
                "and K (e.g. `M, K/16, 16`) on the Geometry page, or pick a preset here.")
    return ("It fits none of the lesson's layers at 8 to 64 columns. Pick another geometry "
            "above" + (": for N:M, N at most M and M a divisor of 8, 16, 32 or 64."
                       if form.pattern == "N:M" else "."))


def short_name(source: str, current: L.Layer | None) -> str:
    """A layer's name for a sentence or a button (markdown-safe: a user's layer name is text)."""
    return {TOY: "the toy (8 × 16)", COUPLED_TOY: "the coupled toy (16 × 64)"}.get(
        source, f"{md(current.name if current is not None else 'the layer in use')} "
                "(first columns)")


def fits_by_source(fits: list[tuple[str, int]]) -> dict[str, list[int]]:
    """The sizes that fit, per layer (ascending)."""
    by: dict[str, list[int]] = {}
    for source, k in fits:
        by.setdefault(source, []).append(k)
    return by


def fits_text(fits: list[tuple[str, int]], current: L.Layer | None) -> str:
    """Where a geometry that does not fit here would fit: ``It fits the coupled toy (16 × 64)
    with 16, 32 or 64 columns.``"""
    return "It fits " + "; ".join(
        f"{short_name(s, current)} with {listing(ks).replace(' and ', ' or ')} "
        f"column{'s' if ks != [1] else ''}"
        for s, ks in fits_by_source(fits).items()) + "."


def _f(v: float) -> str:
    from obsviz.figures.lesson import fmt
    return fmt(v) if math.isfinite(v) else str(v)


def sums_text(lesson: Lesson, n: int) -> tuple[str, str]:
    """Why Σ ε differs from the error after ``n`` steps: a sentence and the identity (KaTeX)."""
    from obsviz.figures.lesson import tex_number as tex

    damping = lesson.damping_after(n)
    head = ("**Why Σ ε is larger than the error.** Each ε(P) is priced with the damped "
            "C = (H + λI)⁻¹, so the chosen costs add up exactly to the **damped** loss, while the "
            "error uses the undamped H. The difference is the damping term λ‖Δw‖²:"
            if damping > 0 else
            "**Σ ε equals the error here.** No weight has moved yet, so the damping term "
            "λ‖Δw‖² is 0:")
    identity = (rf"\underbrace{{{tex(lesson.cost_so_far(n))}}}_{{\sum\varepsilon}} = "
                rf"\underbrace{{{tex(lesson.error_gain(n))}}}_{{\Delta w H \Delta w^\top}} + "
                rf"\underbrace{{{tex(damping)}}}_{{\lambda \lVert\Delta w\rVert^2}}")
    return head, identity


def next_text(lesson: Lesson, n: int, outcomes: dict[str, ModeOutcome]) -> str:
    """Why the scope after step ``n`` is priced differently from how local/full priced it."""
    nxt = lesson.steps[n]
    nl = [nxt.candidate_label(i) for i in range(len(nxt.costs))]
    ours, theirs = nxt.obs_chosen, nxt.frozen_chosen
    ranks = (f" (true_obs ranks by Σ w²/C_cc with {lesson.scoring} scoring, local and full by ε)"
             if lesson.scoring == SCORINGS[0] else "")
    if nxt.blocks(ours) != nxt.blocks(theirs):
        head = (f"**The choice flips.** OBS will prune **{nl[ours[0]]}** here; local and full "
                f"chose **{nl[theirs[0]]}** at the start, before anything was pruned{ranks}."
                if not nxt.greedy else "**The choice flips**: OBS and local/full prune "
                "different blocks here.")
    else:
        change = 100 * nxt.max_cost_change
        moved = (f"but the costs moved by up to {change:.0f} %" if change >= 0.5 else
                 f"and the costs barely moved (at most {change:.2g} %)")
        head = (f"**Same pick here** ({nl[ours[0]] if not nxt.greedy else 'the same blocks'}), "
                f"{moved}.")
    full, true = outcomes["full"], outcomes["true_obs"]
    tail = (f"On {who(lesson)}, full ends at {pct(full.rel_error)}, true_obs at "
            f"{pct(true.rel_error)}")
    if torch.equal(full.kept, true.kept) and full.error > true.error:
        tail += ": the same mask, and the downdated C compensates better"
    return (head + "\n\n"
            "- **true_obs** prices the next scope with the downdated C and the weights as "
            "compensation left them: it knows what is already gone.\n"
            "- **full** chose every mask at the start with the original C and weights, and "
            "compensates with that frozen C.\n"
            "- **local** uses the same masks, but each scope compensates only inside itself.\n\n"
            + tail + ".")


# ---- the page's fixed prose (true of every case) ----------------------------------------------

LOSS_NOTE = (
    "The loss of changing a row by Δw: how much the layer's **output** moves on the calibration "
    "inputs (H = XᵀX / N). A big off-diagonal entry of H means two inputs fire together, so "
    "their weights can stand in for each other.")
DAMPING_NOTE = ("Damping adds λ = damp × mean(diag H) to the diagonal only; a larger damp trusts "
                "H's correlations less.")
C_NOTE = ("Every OBS formula reads C. OBS optimises the **damped** loss Δw H_d Δwᵀ; the error "
          "reported everywhere uses the undamped H.")
THREE_MOVES = (
    "Each press of **Step forward** decides one scope, left to right: **① choose** (price every "
    "way to drop the scope's blocks), **② compensate** (the weights not pruned yet make up for "
    "the pruned ones), **③ downdate C** (fold the decision into C, so the next scope is priced "
    "knowing these weights are gone).")
INTERLEAVED_NOTE = (
    "With identical masks the two differ only in how they compensate. interleaved rebuilds C on "
    "the columns of its chunk and those after it: exact about the weights pruned so far, but the "
    "weights **kept** in earlier chunks are frozen too, so they can no longer move to make up "
    "for later removals. full keeps moving every weight not pruned yet, with a stale C that "
    "still counts the pruned ones. true_obs has both: a downdated C and every free weight "
    "moving.")
SOURCES_NOTE = (
    "**Where this comes from.** The cost ε(P), the optimal update and the removal of a set of "
    "weights at once: B. Hassibi and D. G. Stork, *Second order derivatives for network "
    "pruning: Optimal Brain Surgeon*, NIPS 5, 1993. Pruning a large layer column by column with "
    "a Cholesky factor of C, the damping λ and H = XᵀX / N from calibration inputs: E. Frantar "
    "and D. Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in "
    "One-Shot*, ICML 2023. Sparsity geometries (a view, blocks, scopes) and the compensation "
    "modes local, full, split and interleaved: the S3 paper, arXiv:2604.11315. The Schur "
    "complement downdate is the textbook identity for the inverse of a principal submatrix.")


def modes_note(scoring: str) -> str:
    """Where the side-by-side modes come from and what each does."""
    how = (f" (true_obs: scoring = {scoring})" if scoring == SCORINGS[0] else
           f" but true_obs's scoring ({scoring}, as in this lesson)")
    return (
        "From `obsviz.prune` on these rows alone, at the Prune page's defaults" + how
        + ". **local**: masks chosen up front with the original C; each scope compensates only "
        "inside itself. **full**: the same masks; compensation flows to every weight not yet "
        "pruned, with C frozen. **split**: the same masks; the scopes cut into chunks, each "
        "compensating with C rebuilt on its own columns and those after it. **interleaved**: as "
        "split, but each chunk re-chooses its masks with that C. **true_obs**: OBS's path above, "
        "C Schur-downdated after every scope.")
