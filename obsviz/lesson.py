"""Rows of a layer walked through structured OBS, one scope at a time (the Learn page).

A :class:`Lesson` is ``true_obs`` (``order="left_to_right"``, the Prune page's default
``scoring``, or the other one) on the rows one scope decides together, recorded step by step; the
student may *overrule* any step (``forced``: prune another candidate there) and the lesson goes on
from that choice, every later step again decided by OBS on the state that choice left.

For most geometries (N:M, ``coupled-2:4``, ...) every scope lies in one row and the lesson
follows that row alone. A *row-coupled* geometry (``block16``: a scope holds a block of row ``r``
and one of row ``r + 8``) decides several rows together; the lesson then follows the row's whole
*coupling group* (the rows sharing a scope with it, transitively) and steps them together.

For every scope (left to right) a step records the candidate subsets and, per row ``r``, their cost
``ε_r(P) = w_{r,P} (C^r_PP)⁻¹ w_{r,P}ᵀ`` with the row's own current weights and its own
(downdated) ``C^r`` (Hassibi & Stork 1993 for one row; summed over the rows because the loss
``Σ_r Δw_r H Δw_rᵀ`` is a sum over rows). What OBS prunes depends on ``scoring``: ``"joint"`` takes
the subset of least summed ε; ``"independent"`` (``obsviz.prune``'s default) the ``np`` blocks of
least ``Σ w_c² / C^r_cc`` (each weight priced alone, with the current C). Then each row removes its
own part of the subset with its own optimal update ``w ← w − w_P (C_PP)⁻¹ C_P,:`` and its own
Schur downdate ``C ← C − C_:,P (C_PP)⁻¹ C_P,:``.

The layer is made ready by ``obsviz.prepare.prepare`` (dtype, symmetrised H, dead inputs, damping,
unit scale), the one function ``obsviz.prune`` starts from too, and every step uses the engine's
own primitives (``obsviz.obs``), so the lesson's last weights are exactly what
``obsviz.prune(..., method="true_obs", scoring=scoring)`` gives for those rows (when nothing is
overruled). The lesson *shows* C, costs and the damped loss in the layer's own units (the
engine works at unit scale; every decision is invariant to that scale).

Two identities the page teaches, both exact (and tested):

- the chosen costs add up to the **damped** loss: ``Σ_t ε_t = Σ_r Δw_r H_d Δw_rᵀ`` with
  ``Δw = w − w_start``, which is the row error ``Δw H Δwᵀ`` (undamped H) plus ``λ ‖Δw‖²``;
- after the downdates, a row's ``C`` restricted to its free weights ``F`` is ``(H_d[F, F])⁻¹``:
  the downdate is the Schur complement of ``C_PP`` in ``C``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from obsviz import obs
from obsviz.errors import ArgumentError
from obsviz.geometry import Geometry
from obsviz.hessian import check_damp
from obsviz.layers import SAMPLE_DIR, Layer, load_layer
from obsviz.layout import coupled_closure, row_steps
from obsviz.methods import OBS_MODES, SCORING
from obsviz.metrics import row_error
from obsviz.prepare import prepare

__all__ = ["COMPARED_MODES", "COUPLED_TOY", "MAX_LESSON_BYTES", "MAX_ROWS", "SCORINGS", "Lesson",
           "LessonStep", "ModeOutcome", "column_ranges", "column_runs", "coupled_toy",
           "first_columns", "interleaved_worse_rows", "lesson_geometry", "mode_outcomes",
           "same_mask_worse"]

#: The modes the lesson's side panel compares, in the order they are shown: every OBS mode.
COMPARED_MODES = OBS_MODES
#: Most rows one lesson follows together (a coupling group larger than this is refused).
MAX_ROWS = 16
#: Most memory a lesson may hold (every step keeps each row's K × K C): checked before computing.
MAX_LESSON_BYTES = 256 << 20
#: How ``true_obs`` may score a step (``obsviz.methods.SCORING``), its default (Prune's) first.
SCORINGS = (SCORING.default, *(c for c in SCORING.choices if c != SCORING.default))
#: The shipped toy layer made for row-coupled lessons (``sample_data/toy_coupled.safetensors``):
#: W 16 × 64, so ``block16`` has four scopes over each pair of rows ``r`` and ``r + 8``.
COUPLED_TOY = "toy_coupled"
COUPLED_TOY_FILE = "toy_coupled.safetensors"


def column_runs(cols: Sequence[int]) -> list[tuple[int, int]]:
    """Columns as ``(first, last)`` runs of consecutive columns: ``[0, 1, 2, 8, 9]`` →
    ``[(0, 2), (8, 9)]`` (sorted, duplicates dropped)."""
    runs: list[list[int]] = []
    for c in sorted({int(c) for c in cols}):
        if runs and c == runs[-1][1] + 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return [(a, b) for a, b in runs]


def column_ranges(cols: Sequence[int]) -> str:
    """Columns as runs: ``[0, 1, 2, 3, 8, 9, 10, 11]`` → ``"0–3, 8–11"``; ``[5]`` → ``"5"``."""
    return ", ".join(f"{a}" if a == b else f"{a}–{b}" for a, b in column_runs(cols))


@dataclass(frozen=True)
class LessonStep:
    """One scope, decided for all the lesson's rows and removed from each.

    ``R`` is the number of rows the lesson follows (1 unless the geometry is row-coupled).

    Attributes:
        index: position of the step in the lesson (0-based).
        scope: the scope's id in the geometry.
        rows: the W rows of the lesson (same for every step).
        cols: ``(R, gs, Lb)`` W columns of the scope's blocks in each row (-1: padding, or a row
            the scope does not touch).
        candidates: ``(n_cand, np)`` block indices (0..gs-1) of each candidate subset; when the
            subsets are too many to enumerate (``greedy``) the candidates are the single blocks
            ``(gs, 1)``.
        row_costs: ``(R, n_cand)`` each row's ``ε_r(P) = w_P (C_PP)⁻¹ w_Pᵀ`` with its current
            weights and its own current (downdated) ``C``, in the layer's units.
        frozen_row_costs: ``(R, n_cand)`` the same with the starting weights and the original
            ``C``: what ``local`` and ``full`` rank by.
        row_scores: ``(R, n_cand)`` what the lesson's ``scoring`` ranks by: ``row_costs`` when
            joint; when independent, ``Σ w_c² / C^r_cc`` over the candidate's weights in row
            ``r`` (current w and C, layer units).
        obs_chosen: indices into ``candidates`` of what OBS prunes here (least summed score: one
            subset; ``np`` singles when greedy).
        chosen: what was pruned: ``obs_chosen``, or the student's pick where overruled.
        chosen_cost: the exact ``Σ_r w_{r,P} (C^r_PP)⁻¹ w_{r,P}ᵀ`` of what was pruned (the
            growth of the damped loss this step).
        greedy: whether the subsets were too many to enumerate.
        pruned_blocks: block indices (0..gs-1) pruned in this step.
        pruned_cols: per row, the W columns zeroed in this step, ascending.
        w_before, w_after: ``(R, K)`` the rows before and after their OBS updates.
        C_before, C_after: ``(R, K, K)`` each row's ``C`` before and after its Schur downdate
            (layer units; ``C_before`` is the previous step's ``C_after``, the same tensor).
        row_errors: ``(R,)`` each row's ``Δw H Δwᵀ`` (undamped ``H``, ``Δw = w − w0``) after the
            step.
        error: their sum; rel_error: ``sqrt(error / Σ_r w0_r H w0_rᵀ)``.
    """

    index: int
    scope: int
    rows: tuple[int, ...]
    cols: torch.Tensor
    candidates: torch.Tensor
    row_costs: torch.Tensor
    frozen_row_costs: torch.Tensor
    row_scores: torch.Tensor
    obs_chosen: tuple[int, ...]
    chosen: tuple[int, ...]
    chosen_cost: float
    greedy: bool
    pruned_blocks: tuple[int, ...]
    pruned_cols: tuple[tuple[int, ...], ...]
    w_before: torch.Tensor
    w_after: torch.Tensor
    C_before: torch.Tensor
    C_after: torch.Tensor
    row_errors: torch.Tensor
    error: float
    rel_error: float

    @property
    def costs(self) -> torch.Tensor:
        """``(n_cand,)`` each candidate's cost summed over the rows: what ``true_obs`` ranks by."""
        return self.row_costs.sum(0)

    @property
    def frozen_costs(self) -> torch.Tensor:
        """``(n_cand,)`` the frozen costs summed over the rows: what ``local``/``full`` rank by."""
        return self.frozen_row_costs.sum(0)

    @property
    def scores(self) -> torch.Tensor:
        """``(n_cand,)`` what OBS ranks the candidates by, summed over the rows."""
        return self.row_scores.sum(0)

    @property
    def overruled(self) -> bool:
        """Whether the student pruned something else here than OBS would."""
        return self.blocks(self.chosen) != self.blocks(self.obs_chosen)

    @property
    def cheapest(self) -> int:
        """The candidate of least ε (the first on a tie)."""
        return int(torch.argmin(self.costs))

    def blocks(self, chosen: Sequence[int]) -> set[int]:
        """The scope's blocks (0..gs-1) that the candidates ``chosen`` prune together."""
        return {b for i in chosen for b in self.candidates[i].tolist()}

    @property
    def frozen_chosen(self) -> tuple[int, ...]:
        """What ``local``/``full`` would prune here (indices into ``candidates``)."""
        return _chosen(self.frozen_row_costs, self.candidates, self.greedy,
                       len(self.pruned_blocks))

    @property
    def choice_flips(self) -> bool:
        """Whether ``true_obs`` prunes other blocks here than ``local``/``full`` chose."""
        return self.blocks(self.chosen) != self.blocks(self.frozen_chosen)

    @property
    def max_cost_change(self) -> float:
        """The largest relative change from ``frozen_costs`` to ``costs`` over the candidates:
        how far what the rows have been through moved the prices."""
        change = (self.costs - self.frozen_costs).abs() / self.frozen_costs.abs().clamp(min=1e-30)
        return float(change.max())

    def block_cols(self, r: int = 0) -> list[list[int]]:
        """The W columns of each block of the scope in the lesson's ``r``-th row (padding
        dropped)."""
        return [[c for c in block if c >= 0] for block in self.cols[r].tolist()]

    def scope_cols(self, r: int = 0) -> list[int]:
        """Every W column of the scope in the lesson's ``r``-th row, ascending."""
        return sorted(c for block in self.block_cols(r) for c in block)

    @property
    def scope_rows(self) -> list[int]:
        """The W rows the scope touches."""
        return [row for r, row in enumerate(self.rows) if bool((self.cols[r] >= 0).any())]

    @property
    def label(self) -> str:
        """What the scope covers, for a title: ``"columns 0–3, 8–11"``, or with several rows
        ``"rows 0 and 8, columns 0–15"``."""
        cols = sorted({c for r in range(len(self.rows)) for c in self.scope_cols(r)})
        where = f"column{'s' if len(cols) > 1 else ''} {column_ranges(cols)}"
        rows = self.scope_rows
        if len(rows) == 1:
            return where
        listed = ", ".join(map(str, rows[:-1])) + f" and {rows[-1]}"
        return f"rows {listed}, {where}"

    def candidate_cols(self, i: int, r: int = 0) -> list[int]:
        """The W columns candidate ``i`` would prune in the lesson's ``r``-th row, ascending."""
        blocks = self.block_cols(r)
        return sorted(c for b in self.candidates[i].tolist() for c in blocks[b])

    def pruned_system(self, r: int = 0) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """What the chosen cost is computed from in the lesson's ``r``-th row: the columns ``P``
        pruned there, ``w_P`` ``(q,)`` and ``C_PP`` ``(q, q)`` read off the row's weights and C
        before the step (so ``w_P (C_PP)⁻¹ w_Pᵀ`` is that row's part of :attr:`chosen_cost`)."""
        P = list(self.pruned_cols[r])
        return P, self.w_before[r, P], self.C_before[r][P][:, P]

    def candidate_label(self, i: int) -> str:
        """What candidate ``i`` prunes: ``"{0, 2}"`` (its columns) in one row; with several rows,
        the rows it touches and their columns, ``"row 8: 0–15"``."""
        if len(self.rows) == 1:
            return "{" + ", ".join(map(str, self.candidate_cols(i))) + "}"
        parts = [f"row {row}: {column_ranges(self.candidate_cols(i, r))}"
                 for r, row in enumerate(self.rows) if self.candidate_cols(i, r)]
        return " · ".join(parts) or "nothing"


@dataclass(frozen=True)
class Lesson:
    """The whole step-through; immutable, computed at :meth:`start`.

    Attributes:
        geometry, nnz, row, damp, scoring: what was asked for.
        forced: ``{step index: pruned blocks}`` the steps the student overruled (block indices
            ``0..gs-1`` of the step's scope); empty for OBS's own path.
        rows: the W rows followed, ascending: ``row`` and every row coupled to it.
        w0: ``(R, K)`` the rows as given.
        w_start: ``(R, K)`` the rows pruning starts from (weights of dead inputs set to 0, as
            ``obsviz.prune`` does; equal to ``w0`` when no input is dead).
        H: ``(K, K)`` the undamped Hessian (symmetrised), used for the error.
        Hd: ``(K, K)`` the damped Hessian ``H + λI`` (dead inputs on a unit diagonal).
        C: ``(K, K)`` ``H_d⁻¹``, every row's ``C`` before any step.
        lam: the damping ``λ``.
        dead: ``(K,)`` bool, inputs that never fire.
        n_prune: blocks pruned per scope (``np = gs − nnz``).
        steps: one :class:`LessonStep` per scope of the rows, left to right.
        start_error: the rows' error before the first step (non-zero only with dead inputs).
        ref: ``Σ_r w0_r H w0_rᵀ``, the scale the relative error divides by.
    """

    geometry: Geometry
    nnz: int
    row: int
    rows: tuple[int, ...]
    damp: float
    scoring: str
    forced: dict[int, tuple[int, ...]]
    w0: torch.Tensor
    w_start: torch.Tensor
    H: torch.Tensor
    Hd: torch.Tensor
    C: torch.Tensor
    lam: float
    dead: torch.Tensor
    n_prune: int
    steps: tuple[LessonStep, ...]
    start_error: float
    ref: float

    @classmethod
    def start(cls, W: torch.Tensor, H: torch.Tensor, geometry: Geometry, nnz: int, row: int,
              damp: float = 0.01, scoring: str = SCORING.default,
              forced: Mapping[int, Sequence[int]] | None = None) -> Lesson:
        """Walk row ``row`` of ``W`` ``(M, K)`` (and the rows coupled to it) with Hessian ``H``
        ``(K, K)`` through OBS, scoring each step as ``true_obs`` does with ``scoring``; at the
        steps ``forced`` names (``{step index: the np pruned blocks}``) prune those blocks
        instead (the student's choice), and go on from there.

        Works in float64 when ``W`` is float64, else float32 (as ``obsviz.prune`` on CPU).
        Raises ``ArgumentError`` for bad inputs, for a coupling group of more than
        :data:`MAX_ROWS` rows, for a step holding two scopes, and when the lesson would need more
        than :data:`MAX_LESSON_BYTES`.
        """
        from obsviz.prune import check_inputs  # the same argument checks as prune

        check_inputs(W, H, geometry)
        geometry.check_nnz(nnz)
        M, K = geometry.weight_shape
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < M:
            raise ArgumentError("row", f"row={row!r} must be an integer in [0, {M})")
        damp = check_damp(damp)
        scoring = SCORING.check(scoring)
        forced = _check_forced(forced, geometry.blocks_per_scope,
                               geometry.pruned_per_scope(nnz))
        layout = row_steps(geometry)
        group = coupled_closure(layout, torch.tensor([row]))             # (R,) ascending
        R, T = group.numel(), layout.n_steps
        if R > MAX_ROWS:
            raise ArgumentError(
                "geometry", f"row {row} is coupled to {R} rows by geometry "
                f"{geometry.name or geometry.describe()!r}; the lesson steps at most {MAX_ROWS} "
                "rows together. Pick a geometry whose scopes span fewer rows")
        need = 8 * R * (T + 1) * K * K
        if need > MAX_LESSON_BYTES:
            raise ArgumentError(
                "W", f"a lesson on {R} row(s) of {K} columns in {T} steps keeps "
                f"{need / 2**20:.0f} MiB of C matrices, more than {MAX_LESSON_BYTES >> 20} MiB; "
                "use fewer columns (obsviz.lesson.first_columns)")

        p = prepare(W, H, damp, "cpu")
        unit = p.scale                             # C and costs are shown in the layer's units
        n_prune = geometry.pruned_per_scope(nnz)
        cols_g, scope_g = layout.cols[group], layout.scope[group]       # (R, T, gs, Lb), (R, T)
        gs = cols_g.shape[2]
        subsets = obs.prune_subsets(gs, n_prune)
        greedy = subsets is None
        candidates = torch.arange(gs)[:, None] if greedy else subsets
        batch = torch.arange(R)

        w0, w_start = p.W0[group], p.W[group]
        ref = float(row_error(torch.zeros_like(w0), w0, p.H0).sum())

        def errors(x: torch.Tensor) -> torch.Tensor:
            return row_error(w0, x, p.H0)

        Wr = w_start.clone()                       # (R, K): the rows, as true_obs holds them
        Cr = p.C.expand(R, K, K).clone()           # (R, K, K): each row's own C
        kept = torch.ones_like(Wr, dtype=torch.bool)
        C_shown = Cr / unit
        steps: list[LessonStep] = []
        for t in range(T):
            here = scope_g[:, t] >= 0
            if n_prune == 0 or not bool(here.any()):
                continue
            ids = torch.unique(scope_g[here, t])
            if ids.numel() > 1:
                raise ArgumentError(
                    "geometry", f"step {t} of rows {group.tolist()} holds {ids.numel()} scopes "
                    f"({ids.tolist()}); the lesson steps one scope at a time. Pick a preset")
            index = len(steps)
            cols = torch.where(here[:, None, None], cols_g[:, t], -1)          # (R, gs, Lb)
            row_costs = _costs(cols, Wr, Cr, candidates, batch) * unit
            frozen = _costs(cols, w_start, p.C, candidates, None) * unit
            if scoring == "joint":
                row_scores = row_costs
                obs_chosen = _chosen(row_costs, candidates, greedy, n_prune)
            else:                                  # each weight alone: w_c² / C_cc, per block
                diag = torch.diagonal(Cr, dim1=-2, dim2=-1)                     # (R, K)
                block = obs.block_scores(cols, Wr * Wr / diag, batch)          # (R, gs)
                row_scores = block[:, candidates].sum(-1) * unit                # (R, n_cand)
                obs_chosen = _least_blocks(block, candidates, greedy, n_prune)
            if index in forced:
                chosen = _candidates_of(forced[index], candidates, greedy)
            else:
                chosen = obs_chosen
            pruned_blocks = sorted({b for i in chosen for b in candidates[i].tolist()})
            hit = torch.zeros(gs, dtype=torch.bool)
            hit[pruned_blocks] = True
            # The update and the downdate, exactly as true_obs applies them to these rows.
            P = obs.compact(cols.reshape(R, -1), (hit[:, None] & (cols >= 0)).reshape(R, -1))
            w_before, C_before = Wr.clone(), C_shown
            pruned_cols = tuple(tuple(sorted(c for c in p_r if c >= 0)) for p_r in P.tolist())
            chosen_cost = sum(_cost(Wr[r], Cr[r], cs) for r, cs in enumerate(pruned_cols)) * unit
            obs.zero_at(kept, P)
            obs.obs_update_per_row(Wr, Cr, P)
            Wr.mul_(kept)                          # earlier pruned weights stay exactly 0
            C_shown = Cr / unit
            e = errors(Wr)
            total = float(e.sum())
            steps.append(LessonStep(
                index=index, scope=int(ids[0]), rows=tuple(group.tolist()), cols=cols,
                candidates=candidates, row_costs=row_costs, frozen_row_costs=frozen,
                row_scores=row_scores, obs_chosen=obs_chosen, chosen=chosen,
                chosen_cost=chosen_cost, greedy=greedy, pruned_blocks=tuple(pruned_blocks),
                pruned_cols=pruned_cols, w_before=w_before, w_after=Wr.clone(),
                C_before=C_before, C_after=C_shown, row_errors=e, error=total,
                rel_error=math.sqrt(total / ref) if ref > 0 else 0.0))
        if forced and max(forced) >= len(steps):
            raise ArgumentError("forced", f"forced names step {max(forced)}; this lesson has "
                                f"{len(steps)} steps (0..{len(steps) - 1})")
        return cls(geometry=geometry, nnz=int(nnz), row=row, rows=tuple(group.tolist()),
                   damp=damp, scoring=scoring, forced=dict(forced), w0=w0, w_start=w_start,
                   H=p.H0, Hd=p.Hd * unit, C=p.C / unit, lam=p.lam, dead=p.dead,
                   n_prune=n_prune, steps=tuple(steps), start_error=float(errors(w_start).sum()),
                   ref=ref)

    def overrule(self, n: int, candidate: int) -> dict[int, tuple[int, ...]]:
        """The ``forced`` of a lesson that follows this one up to step ``n`` (1-based) and
        prunes ``candidate`` (an index into that step's candidates) there: this lesson's
        overrules before step ``n`` are kept, later ones dropped (they were picked on a state
        this choice changes). Pass it to :meth:`start` with the same arguments."""
        if not 1 <= n <= self.n_steps:
            raise ArgumentError("n", f"n={n!r} must be in [1, {self.n_steps}] (steps of this "
                                "lesson)")
        step = self.steps[n - 1]
        if step.greedy:
            raise ArgumentError("candidate", "this step's subsets are too many to list (greedy "
                                "selection): there is no candidate subset to pick")
        if isinstance(candidate, bool) or not isinstance(candidate, int) \
                or not 0 <= candidate < step.candidates.shape[0]:
            raise ArgumentError("candidate", f"candidate={candidate!r} must be an integer in "
                                f"[0, {step.candidates.shape[0]})")
        kept = {t: b for t, b in self.forced.items() if t < n - 1}
        return kept | {n - 1: tuple(sorted(step.candidates[candidate].tolist()))}

    @property
    def overruled_steps(self) -> list[int]:
        """The steps (1-based) where the student pruned something else than OBS would."""
        return [s.index + 1 for s in self.steps if s.overruled]

    @property
    def rel_errors(self) -> list[float]:
        """The relative error after each number of steps, ``0 .. n_steps``: the lesson's path."""
        return [self.rel_error_after(n) for n in range(self.n_steps + 1)]

    def moved_cols(self, n: int, r: int | None = None) -> list[int]:
        """The columns of the ``r``-th row (default: the asked row) left free by step ``n``
        (1-based) whose weight that step changed (by more than rounding: ``1e-12`` of the row's
        largest weight), ascending."""
        if not 1 <= n <= self.n_steps:
            raise ArgumentError("n", f"n={n!r} must be in [1, {self.n_steps}] (steps of this "
                                "lesson)")
        r = self.index if r is None else r
        step = self.steps[n - 1]
        shift = (step.w_after[r] - step.w_before[r]).abs()
        tol = 1e-12 * float(step.w_before[r].abs().max().clamp(min=1e-300))
        return [c for c in self.free_cols_after(n, r) if float(shift[c]) > tol]

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def K(self) -> int:
        return int(self.w0.shape[1])

    @property
    def coupled(self) -> bool:
        """Whether the lesson follows several rows (a row-coupled geometry)."""
        return len(self.rows) > 1

    @property
    def index(self) -> int:
        """Position of the asked ``row`` among :attr:`rows`."""
        return self.rows.index(self.row)

    @property
    def mean_diag(self) -> float:
        """``mean(diag H)``: ``λ = damp × mean_diag`` (``damp < 1``)."""
        return float(torch.diagonal(self.H).mean())

    @property
    def final_weight(self) -> torch.Tensor:
        """``(R, K)`` the rows after every step: ``true_obs``'s result for them."""
        return self.weight_after(self.n_steps)

    def weight_after(self, n: int) -> torch.Tensor:
        """``(R, K)`` the rows after the first ``n`` steps (``n = 0``: before any)."""
        self._check_n(n)
        return self.w_start if n == 0 else self.steps[n - 1].w_after

    def C_after(self, n: int) -> torch.Tensor:
        """``(R, K, K)`` each row's ``C`` after the first ``n`` steps."""
        self._check_n(n)
        return self.C.expand(len(self.rows), -1, -1) if n == 0 else self.steps[n - 1].C_after

    def error_after(self, n: int) -> float:
        """The rows' error ``Σ_r Δw_r H Δw_rᵀ`` after the first ``n`` steps."""
        self._check_n(n)
        return self.start_error if n == 0 else self.steps[n - 1].error

    def rel_error_after(self, n: int) -> float:
        e = self.error_after(n)
        return math.sqrt(e / self.ref) if self.ref > 0 else 0.0

    def cost_so_far(self, n: int) -> float:
        """``Σ ε`` of what the first ``n`` steps pruned (the chosen costs, layer units)."""
        self._check_n(n)
        return sum(s.chosen_cost for s in self.steps[:n])

    def damping_after(self, n: int) -> float:
        """``λ Σ_r ‖Δw_r‖²`` with ``Δw = w − w_start`` after ``n`` steps: the part of the damped
        loss that is not output error."""
        d = (self.weight_after(n) - self.w_start).to(torch.float64)
        return self.lam * float((d * d).sum())

    def error_gain(self, n: int) -> float:
        """The output error the first ``n`` steps added (``error_after(n) − start_error``)."""
        return self.error_after(n) - self.start_error

    def step_parts(self, n: int) -> tuple[float, float, float]:
        """Step ``n`` (1-based) in three numbers: its chosen cost ε, the output error it added
        and the damping term it added; the first is the sum of the other two."""
        if not 1 <= n <= self.n_steps:
            raise ArgumentError("n", f"n={n!r} must be in [1, {self.n_steps}] (steps of this "
                                "lesson)")
        return (self.steps[n - 1].chosen_cost, self.error_gain(n) - self.error_gain(n - 1),
                self.damping_after(n) - self.damping_after(n - 1))

    def damped_loss_after(self, n: int) -> float:
        """``Σ_r Δw_r H_d Δw_rᵀ`` with ``Δw = w − w_start``: what the chosen costs add up to
        (:meth:`cost_so_far`); equal to the output error gained since the start plus
        :meth:`damping_after` (dead inputs never move)."""
        d = (self.weight_after(n) - self.w_start).to(torch.float64)
        return float(((d @ self.Hd.to(torch.float64)) * d).sum())

    def pruned_cols_after(self, n: int, r: int | None = None) -> list[int]:
        """W columns of the lesson's ``r``-th row (default: the asked row) pruned by the first
        ``n`` steps, ascending."""
        self._check_n(n)
        r = self.index if r is None else r
        return sorted(c for s in self.steps[:n] for c in s.pruned_cols[r])

    def free_cols_after(self, n: int, r: int | None = None) -> list[int]:
        """W columns of the ``r``-th row not pruned by the first ``n`` steps, ascending: the
        ones step ``n``'s update moved (and later steps may still move)."""
        pruned = set(self.pruned_cols_after(n, r))
        return [c for c in range(self.K) if c not in pruned]

    def largest_move(self, n: int, r: int | None = None) -> int | None:
        """The column of the ``r``-th row that step ``n`` (1-based) moved most among those it
        left free (the first such on a tie); ``None`` when it left none or moved none."""
        if not 1 <= n <= self.n_steps:
            raise ArgumentError("n", f"n={n!r} must be in [1, {self.n_steps}] (steps of this "
                                "lesson)")
        r = self.index if r is None else r
        free = torch.tensor(self.free_cols_after(n, r), dtype=torch.long)
        if free.numel() == 0:
            return None
        step = self.steps[n - 1]
        shift = (step.w_after[r] - step.w_before[r]).abs()[free]
        if float(shift.max()) == 0:
            return None
        return int(free[torch.argmax(shift)])

    def schur_check(self, n: int, r: int | None = None) -> float:
        """How far the ``r``-th row's ``C`` after ``n`` steps is from ``(H_d[F, F])⁻¹`` on its
        free columns ``F`` (largest entry difference over the largest entry): ~1e-15 in float64.
        The downdate *is* the Schur complement: it gives the inverse over the weights left."""
        r = self.index if r is None else r
        F = torch.tensor(self.free_cols_after(n, r), dtype=torch.long)
        if F.numel() == 0:
            return 0.0
        C = self.C_after(n)[r].to(torch.float64)
        inv = torch.linalg.inv(self.Hd.to(torch.float64)[F][:, F])
        return float((C[F][:, F] - inv).abs().max() / inv.abs().max())

    def _check_n(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= self.n_steps:
            raise ArgumentError("n", f"n={n!r} must be in [0, {self.n_steps}] (steps of this "
                                "lesson)")


@functools.lru_cache(maxsize=1)
def coupled_toy() -> Layer:
    """The shipped :data:`COUPLED_TOY` layer (cached: do not modify its tensors in place)."""
    layer = load_layer(SAMPLE_DIR / COUPLED_TOY_FILE, COUPLED_TOY)
    layer.source = "sample: 16 x 64 toy layer for row-coupled lessons"
    return layer


def lesson_geometry(pattern: str, shape: tuple[int, int]) -> Geometry:
    """The preset ``pattern`` on ``shape`` ``(M, K)`` for a lesson; ``ArgumentError("pattern")``
    when it does not fit that shape."""
    try:
        return Geometry.preset(pattern, shape)
    except ValueError as err:
        raise ArgumentError("pattern", str(err)) from None


def _costs(cols: torch.Tensor, W: torch.Tensor, C: torch.Tensor, candidates: torch.Tensor,
           batch: torch.Tensor | None) -> torch.Tensor:
    """``(R, n_cand)`` candidate costs of one step for each row with ``obs.subset_costs``: each
    row's own C ``(R, K, K)`` when ``batch`` is given, else a shared ``(K, K)``."""
    w_blocks = W[torch.arange(W.shape[0])[:, None, None], cols.clamp(min=0)] * (cols >= 0)
    return obs.subset_costs(cols, w_blocks, C, candidates, batch=batch)


def _chosen(row_costs: torch.Tensor, candidates: torch.Tensor, greedy: bool,
            n_prune: int) -> tuple[int, ...]:
    """Indices into ``candidates`` of what the engine's selection prunes from the rows' costs
    ``(R, n_cand)`` (summed over the rows, as for one scope): the cheapest subset
    (``obs.choose_subsets``: ties go to the first), or the ``np`` cheapest single blocks when
    greedy (``obs.choose_blocks``)."""
    scope = torch.zeros(row_costs.shape[0], dtype=torch.long)
    if greedy:
        mask = obs.choose_blocks(row_costs, scope, n_prune)[0]
        return tuple(int(i) for i in torch.nonzero(mask).flatten())
    gs = int(candidates.max()) + 1
    mask = obs.choose_subsets(row_costs, scope, candidates, gs)[0]
    pruned = torch.zeros(candidates.shape[0], gs, dtype=torch.bool)
    pruned.scatter_(1, candidates, True)
    return (int(torch.nonzero((pruned == mask).all(1)).flatten()[0]),)


def _least_blocks(block_scores: torch.Tensor, candidates: torch.Tensor, greedy: bool,
                  n_prune: int) -> tuple[int, ...]:
    """Indices into ``candidates`` of the ``np`` blocks of least score summed over the rows
    (``block_scores`` ``(R, gs)``), as ``true_obs`` with independent scoring prunes them
    (``obs.choose_blocks``)."""
    scope = torch.zeros(block_scores.shape[0], dtype=torch.long)
    mask = obs.choose_blocks(block_scores, scope, n_prune)[0]
    return _candidates_of(torch.nonzero(mask).flatten().tolist(), candidates, greedy)


def _candidates_of(blocks: Sequence[int], candidates: torch.Tensor,
                   greedy: bool) -> tuple[int, ...]:
    """The candidates that prune exactly ``blocks``: the singles when greedy, else the one
    subset."""
    want = sorted(int(b) for b in blocks)
    if greedy:
        return tuple(want)
    match = (torch.sort(candidates, dim=1).values == torch.tensor(want)).all(1)
    return (int(torch.nonzero(match).flatten()[0]),)


def _cost(w: torch.Tensor, C: torch.Tensor, P: Sequence[int]) -> float:
    """``w_P (C_PP)⁻¹ w_Pᵀ`` of one row (0 for no columns)."""
    if not P:
        return 0.0
    idx = torch.tensor(P, dtype=torch.long)
    w_P = w[idx].to(torch.float64)
    return float(w_P @ torch.linalg.solve(C[idx][:, idx].to(torch.float64), w_P))


def _check_forced(forced: Mapping[int, Sequence[int]] | None, gs: int,
                  n_prune: int) -> dict[int, tuple[int, ...]]:
    """``forced`` checked: step indices ``>= 0`` to ``np`` distinct blocks in ``0..gs-1``."""
    out: dict[int, tuple[int, ...]] = {}
    for t, blocks in (forced or {}).items():
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ArgumentError("forced", f"forced step {t!r} must be an integer >= 0")
        try:
            b = tuple(sorted({int(x) for x in blocks}))
        except (TypeError, ValueError):
            raise ArgumentError("forced", f"forced[{t}]={blocks!r} must be block indices") \
                from None
        if len(b) != n_prune or len(b) != len(list(blocks)) or not all(0 <= x < gs for x in b):
            raise ArgumentError("forced", f"forced[{t}]={list(blocks)!r} must be {n_prune} "
                                f"distinct block indices in [0, {gs})")
        out[t] = b
    return out


def first_columns(W: torch.Tensor, H: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sub-problem on the first ``k`` input columns: ``W[:, :k]`` and ``H[:k, :k]``."""
    K = W.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= K:
        raise ArgumentError("k", f"k={k!r} must be an integer in [1, K={K}]")
    return W[:, :k].contiguous(), H[:k, :k].contiguous()


@dataclass(frozen=True)
class ModeOutcome:
    """One mode's result on the lesson's rows (from ``obsviz.prune`` with ``rows=rows``)."""

    method: str
    weight: torch.Tensor      # (R, K) the rows after pruning
    kept: torch.Tensor        # (R, K) bool
    error: float              # Σ_r Δw_r H Δw_rᵀ, undamped H
    rel_error: float

    @property
    def pruned_cols(self) -> list[list[int]]:
        """Per row, the columns pruned, ascending."""
        return [torch.nonzero(~k).flatten().tolist() for k in self.kept]


def same_mask_worse(outcomes: dict[str, ModeOutcome]) -> tuple[bool, bool]:
    """``(same, worse)``: whether ``interleaved`` kept exactly ``full``'s mask on the rows, and
    whether it then ended with the larger error (see :func:`interleaved_worse_rows`)."""
    full, inter = outcomes["full"], outcomes["interleaved"]
    same = bool(torch.equal(full.kept, inter.kept))
    return same, same and inter.error > full.error * (1 + 1e-9)


def mode_outcomes(W: torch.Tensor, H: torch.Tensor, geometry: Geometry, nnz: int,
                  rows: int | Sequence[int], damp: float = 0.01,
                  methods: tuple[str, ...] = COMPARED_MODES,
                  scoring: str = SCORING.default) -> dict[str, ModeOutcome]:
    """Each mode's final error on ``rows`` (a row, or a lesson's :attr:`Lesson.rows`; widened to
    whole coupling groups by ``obsviz.prune``), by running ``obsviz.prune`` on those rows only,
    every option at the Prune page's defaults but ``true_obs``'s ``scoring`` (the lesson's)."""
    from obsviz.prune import prune

    picked = torch.tensor([rows] if isinstance(rows, int) else list(rows), dtype=torch.long)
    out: dict[str, ModeOutcome] = {}
    for method in methods:
        extra = dict(scoring=scoring) if method == "true_obs" else {}
        res = prune(W, H, geometry, nnz, method=method, damp=damp, device="cpu", rows=picked,
                    **extra)
        r = res.rows
        Hs = (H + H.T) / 2
        e = float(row_error(W[r], res.weight[r], Hs).sum())
        ref = float(row_error(torch.zeros_like(W[r]), W[r], Hs).sum())
        out[method] = ModeOutcome(method, res.weight[r].clone(), res.mask[r].clone(), e,
                                  math.sqrt(e / ref) if ref > 0 else 0.0)
    return out


def interleaved_worse_rows(W: torch.Tensor, H: torch.Tensor, geometry: Geometry, nnz: int,
                           damp: float = 0.01) -> list[int]:
    """Rows where ``interleaved`` keeps exactly ``full``'s mask yet ends with a larger error,
    worst first (by the ratio of the two errors).

    With identical masks the two differ only in how they compensate: ``interleaved`` (like
    ``split``) rebuilds C on the columns of its chunk and those after it, so the weights kept in
    earlier chunks are frozen and can no longer make up for later removals; ``full`` keeps moving
    every weight not pruned yet, with the original C. Runs both on the whole ``W``: meant for the
    lesson's few columns.
    """
    from obsviz.prune import prune

    full = prune(W, H, geometry, nnz, method="full", damp=damp, device="cpu")
    inter = prune(W, H, geometry, nnz, method="interleaved", damp=damp, device="cpu")
    Hs = (H + H.T) / 2
    e_full, e_inter = row_error(W, full.weight, Hs), row_error(W, inter.weight, Hs)
    same = (full.mask == inter.mask).all(1)
    worse = same & (e_inter > e_full * (1 + 1e-9))
    rows = torch.nonzero(worse).flatten()
    ratio = e_inter[rows] / e_full[rows].clamp(min=1e-300)
    return rows[torch.argsort(ratio, descending=True, stable=True)].tolist()
