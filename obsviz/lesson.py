"""One row of a layer walked through structured OBS, one scope at a time (the Learn page).

A :class:`Lesson` is ``true_obs`` with ``ng=1``, ``scoring="joint"``, ``order="left_to_right"`` on a
single row, recorded step by step: for every scope of the row (left to right) the candidate
subsets and their costs ``ε(P) = w_P (C_PP)⁻¹ w_Pᵀ``, the chosen one, the row before and after the
update ``w ← w − w_P (C_PP)⁻¹ C_P,:``, and the row's ``C`` before and after the Schur downdate
``C ← C − C_:,P (C_PP)⁻¹ C_P,:``. Every number comes from the engine's own primitives
(``obsviz.obs``, ``obsviz.hessian``, ``obsviz.metrics``), so the lesson's last row is exactly what
``obsviz.prune(..., method="true_obs", ng=1, scoring="joint")`` gives for that row.

The lesson follows one row, so it needs a geometry whose scopes each lie in a single row (N:M,
``2:4-pairs``, ``coupled-2:4``, ...); row-coupled geometries are refused with a ``ValueError``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obsviz import obs
from obsviz.geometry import Geometry
from obsviz.hessian import check_damp, damped, damping, dead_columns, inverse_hessian
from obsviz.layout import row_steps
from obsviz.metrics import row_error

__all__ = ["COMPARED_MODES", "Lesson", "LessonStep", "ModeOutcome", "first_columns",
           "lesson_geometry", "mode_outcomes"]

#: The modes the lesson's side panel compares, in the order they are shown.
COMPARED_MODES = ("local", "full", "interleaved", "true_obs")


@dataclass(frozen=True)
class LessonStep:
    """One scope of the row, decided and removed.

    Attributes:
        index: position of the step in the lesson (0-based); also the layout's step number.
        scope: the scope's id in the geometry.
        cols: ``(gs, Lb)`` W columns of the scope's blocks in this row (-1 padding).
        candidates: ``(n_cand, np)`` block indices (0..gs-1) of each candidate subset; when the
            subsets are too many to enumerate (``greedy``) the candidates are the single blocks
            ``(gs, 1)``.
        costs: ``(n_cand,)`` ``ε(P) = w_P (C_PP)⁻¹ w_Pᵀ`` of each candidate with the row's current
            weights and its current (downdated) ``C`` — what ``true_obs`` ranks by.
        frozen_costs: ``(n_cand,)`` the same costs with the original weights and the original
            ``C`` — what ``local`` and ``full`` rank by.
        chosen: indices into ``candidates`` of what was pruned (one subset; ``np`` singles when
            greedy).
        greedy: whether the subsets were too many to enumerate.
        pruned_blocks: block indices (0..gs-1) pruned in this step.
        pruned_cols: W columns zeroed in this step, ascending.
        w_before, w_after: ``(K,)`` the row before and after the OBS update.
        C_before, C_after: ``(K, K)`` the row's ``C`` before and after the Schur downdate.
        error: the row's error ``Δw H Δwᵀ`` after this step (undamped ``H``).
        rel_error: ``sqrt(error / (w0 H w0ᵀ))``.
    """

    index: int
    scope: int
    cols: torch.Tensor
    candidates: torch.Tensor
    costs: torch.Tensor
    frozen_costs: torch.Tensor
    chosen: tuple[int, ...]
    greedy: bool
    pruned_blocks: tuple[int, ...]
    pruned_cols: tuple[int, ...]
    w_before: torch.Tensor
    w_after: torch.Tensor
    C_before: torch.Tensor
    C_after: torch.Tensor
    error: float
    rel_error: float

    @property
    def block_cols(self) -> list[list[int]]:
        """The W columns of each block of the scope (padding dropped)."""
        return [[c for c in block if c >= 0] for block in self.cols.tolist()]

    @property
    def scope_cols(self) -> list[int]:
        """Every W column of the scope in this row, ascending."""
        return sorted(c for block in self.block_cols for c in block)

    @property
    def frozen_chosen(self) -> tuple[int, ...]:
        """What ``local``/``full`` would prune here (indices into ``candidates``)."""
        return _chosen(self.frozen_costs, self.candidates, self.greedy, len(self.pruned_blocks))

    @property
    def max_cost_change(self) -> float:
        """The largest relative change from ``frozen_costs`` to ``costs`` over the candidates:
        how far what this row has been through moved the prices."""
        change = (self.costs - self.frozen_costs).abs() / self.frozen_costs.abs().clamp(min=1e-30)
        return float(change.max())

    def candidate_cols(self, i: int) -> list[int]:
        """The W columns candidate ``i`` would prune, ascending."""
        blocks = self.block_cols
        return sorted(c for b in self.candidates[i].tolist() for c in blocks[b])


@dataclass(frozen=True)
class Lesson:
    """The whole step-through of one row; immutable, computed at :meth:`start`.

    Attributes:
        geometry, nnz, row, damp: what was asked for.
        w0: ``(K,)`` the row as given.
        w_start: ``(K,)`` the row pruning starts from (weights of dead inputs set to 0, as
            ``obsviz.prune`` does; equal to ``w0`` when no input is dead).
        H: ``(K, K)`` the undamped Hessian (symmetrised), used for the error.
        Hd: ``(K, K)`` the damped Hessian ``H + λI`` (dead inputs on a unit diagonal).
        C: ``(K, K)`` ``H_d⁻¹``, the row's ``C`` before any step.
        lam: the damping ``λ``.
        dead: ``(K,)`` bool, inputs that never fire.
        n_prune: blocks pruned per scope (``np = gs − nnz``).
        steps: one :class:`LessonStep` per scope of the row, left to right.
        start_error: the row's error before the first step (non-zero only with dead inputs).
        ref: ``w0 H w0ᵀ``, the scale the relative error divides by.
    """

    geometry: Geometry
    nnz: int
    row: int
    damp: float
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
              damp: float = 0.01) -> Lesson:
        """Walk row ``row`` of ``W`` ``(M, K)`` with Hessian ``H`` ``(K, K)`` through OBS.

        Works in float64 when ``W`` is float64, else float32 (as ``obsviz.prune`` on CPU).
        Raises ``ValueError`` for bad inputs and for row-coupled geometries.
        """
        from obsviz.prune import check_inputs  # the same argument checks as prune

        check_inputs(W, H, geometry)
        geometry.check_nnz(nnz)
        M, K = geometry.weight_shape
        if isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < M:
            raise ValueError(f"row={row!r} must be an integer in [0, {M})")
        damp = check_damp(damp)
        if geometry.is_row_coupled:
            raise _row_coupled(geometry)

        dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
        Hs = H.detach().cpu().to(dtype)
        Hs = (Hs + Hs.T) / 2
        dead = dead_columns(Hs)
        Hd = damped(Hs, damp)
        C = inverse_hessian(Hs, damp)
        w0 = W.detach().cpu().to(dtype)[row].clone()
        w = w0.clone()
        w[dead] = 0

        n_prune = geometry.pruned_per_scope(nnz)
        layout = row_steps(geometry)
        cols_row, scope_row = layout.cols[row], layout.scope[row]    # (T, gs, Lb), (T,)
        gs = cols_row.shape[1]
        subsets = obs.prune_subsets(gs, n_prune)
        greedy = subsets is None
        candidates = torch.arange(gs)[:, None] if greedy else subsets

        def err(x: torch.Tensor) -> float:
            return float(row_error(w0[None], x[None], Hs)[0])

        ref = float(row_error(torch.zeros_like(w0)[None], w0[None], Hs)[0])
        start_error = err(w)
        Wr = w[None].clone()                       # (1, K): the row, as true_obs holds it
        Cr = C.clone()[None]                       # (1, K, K): the row's own C
        kept = torch.ones_like(Wr, dtype=torch.bool)
        steps: list[LessonStep] = []
        for t in range(cols_row.shape[0]):
            if int(scope_row[t]) < 0 or n_prune == 0:
                continue
            cols = cols_row[t]                                        # (gs, Lb)
            costs = _costs(cols, Wr[0], Cr, candidates, batch=True)
            frozen = _costs(cols, w, C, candidates, batch=False)
            chosen = _chosen(costs, candidates, greedy, n_prune)
            pruned_blocks = sorted({b for i in chosen for b in candidates[i].tolist()})
            hit = torch.zeros(gs, dtype=torch.bool)
            hit[pruned_blocks] = True
            # The update and the downdate, exactly as true_obs applies them to this row.
            idx = cols.reshape(1, -1)
            P = obs.compact(idx, (hit[:, None] & (cols >= 0)).reshape(1, -1))
            w_before, C_before = Wr[0].clone(), Cr[0].clone()
            obs.zero_at(kept, P)
            obs.obs_update_per_row(Wr, Cr, P)
            Wr.mul_(kept)                           # earlier pruned weights stay exactly 0
            w_after = Wr[0].clone()
            e = err(w_after)
            steps.append(LessonStep(
                index=len(steps), scope=int(scope_row[t]), cols=cols.clone(),
                candidates=candidates, costs=costs, frozen_costs=frozen, chosen=chosen,
                greedy=greedy, pruned_blocks=tuple(pruned_blocks),
                pruned_cols=tuple(sorted(int(c) for c in P[0].tolist() if c >= 0)),
                w_before=w_before, w_after=w_after, C_before=C_before, C_after=Cr[0].clone(),
                error=e, rel_error=(e / ref) ** 0.5 if ref > 0 else 0.0))
        return cls(geometry=geometry, nnz=int(nnz), row=row, damp=damp, w0=w0,
                   w_start=w, H=Hs, Hd=Hd, C=C, lam=damping(Hs, damp), dead=dead,
                   n_prune=n_prune, steps=tuple(steps), start_error=start_error, ref=ref)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def K(self) -> int:
        return int(self.w0.shape[0])

    @property
    def final_weight(self) -> torch.Tensor:
        """``(K,)`` the row after every step: ``true_obs``'s result for this row."""
        return self.weight_after(self.n_steps)

    def weight_after(self, n: int) -> torch.Tensor:
        """``(K,)`` the row after the first ``n`` steps (``n = 0``: before any)."""
        self._check_n(n)
        return self.w_start if n == 0 else self.steps[n - 1].w_after

    def C_after(self, n: int) -> torch.Tensor:
        """``(K, K)`` the row's ``C`` after the first ``n`` steps."""
        self._check_n(n)
        return self.C if n == 0 else self.steps[n - 1].C_after

    def error_after(self, n: int) -> float:
        """The row's error ``Δw H Δwᵀ`` after the first ``n`` steps."""
        self._check_n(n)
        return self.start_error if n == 0 else self.steps[n - 1].error

    def rel_error_after(self, n: int) -> float:
        e = self.error_after(n)
        return (e / self.ref) ** 0.5 if self.ref > 0 else 0.0

    def pruned_cols_after(self, n: int) -> list[int]:
        """W columns pruned by the first ``n`` steps, ascending."""
        self._check_n(n)
        return sorted(c for s in self.steps[:n] for c in s.pruned_cols)

    def free_cols_after(self, n: int) -> list[int]:
        """W columns not pruned by the first ``n`` steps, ascending: the ones step ``n``'s update
        moved (and later steps may still move)."""
        pruned = set(self.pruned_cols_after(n))
        return [c for c in range(self.K) if c not in pruned]

    def largest_move(self, n: int) -> int | None:
        """The column step ``n`` (1-based) moved most among those it left free (the first such
        on a tie); ``None`` when it left none."""
        if not 1 <= n <= self.n_steps:
            raise ValueError(f"n={n!r} must be in [1, {self.n_steps}] (steps of this lesson)")
        free = torch.tensor(self.free_cols_after(n), dtype=torch.long)
        if free.numel() == 0:
            return None
        step = self.steps[n - 1]
        shift = (step.w_after - step.w_before).abs()[free]
        return int(free[torch.argmax(shift)])

    def _check_n(self, n: int) -> None:
        if not 0 <= n <= self.n_steps:
            raise ValueError(f"n={n!r} must be in [0, {self.n_steps}] (steps of this lesson)")


def _row_coupled(geometry: Geometry) -> ValueError:
    return ValueError(
        f"geometry {geometry.name or geometry.describe()!r} is row-coupled (a scope spans "
        f"{geometry.rows_per_scope} rows), so its rows are decided together; the lesson follows "
        "one row at a time and does not support it. Pick a geometry whose scopes lie in one "
        "row, e.g. preset '2:4'")


def lesson_geometry(pattern: str, shape: tuple[int, int]) -> Geometry:
    """The preset ``pattern`` on ``shape`` ``(M, K)`` for a lesson. A row-coupled pattern is
    refused first (whatever the shape), then the preset's own shape checks apply."""
    probe = Geometry.preset(pattern, (16, 16))      # every preset fits 16 x 16
    if probe.is_row_coupled:
        raise _row_coupled(probe)
    return Geometry.preset(pattern, shape)


def _costs(cols: torch.Tensor, w: torch.Tensor, C: torch.Tensor, candidates: torch.Tensor,
           batch: bool) -> torch.Tensor:
    """``(n_cand,)`` candidate costs for one step with ``obs.subset_costs``: the row's own C
    ``(1, K, K)`` when ``batch``, else a shared ``(K, K)``."""
    w_blocks = w[cols.clamp(min=0)] * (cols >= 0)
    b = torch.zeros(1, dtype=torch.long) if batch else None
    return obs.subset_costs(cols[None], w_blocks[None], C, candidates, batch=b)[0]


def _chosen(costs: torch.Tensor, candidates: torch.Tensor, greedy: bool,
            n_prune: int) -> tuple[int, ...]:
    """Indices into ``candidates`` of what the engine's selection prunes: the cheapest subset
    (``obs.choose_subsets``: ties go to the first), or the ``np`` cheapest single blocks when
    greedy (``obs.choose_blocks``)."""
    scope = torch.zeros(1, dtype=torch.long)
    if greedy:
        mask = obs.choose_blocks(costs[None], scope, n_prune)[0]
        return tuple(int(i) for i in torch.nonzero(mask).flatten())
    gs = int(candidates.max()) + 1
    mask = obs.choose_subsets(costs[None], scope, candidates, gs)[0]
    pruned = torch.zeros(candidates.shape[0], gs, dtype=torch.bool)
    pruned.scatter_(1, candidates, True)
    return (int(torch.nonzero((pruned == mask).all(1)).flatten()[0]),)


def first_columns(W: torch.Tensor, H: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sub-problem on the first ``k`` input columns: ``W[:, :k]`` and ``H[:k, :k]``."""
    K = W.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= K:
        raise ValueError(f"k={k!r} must be an integer in [1, K={K}]")
    return W[:, :k].contiguous(), H[:k, :k].contiguous()


@dataclass(frozen=True)
class ModeOutcome:
    """One mode's result on the lesson's row (from ``obsviz.prune`` with ``rows=[row]``)."""

    method: str
    weight: torch.Tensor      # (K,) the row after pruning
    kept: torch.Tensor        # (K,) bool
    error: float              # Δw H Δwᵀ, undamped H
    rel_error: float


def mode_outcomes(W: torch.Tensor, H: torch.Tensor, geometry: Geometry, nnz: int, row: int,
                  damp: float = 0.01, methods: tuple[str, ...] = COMPARED_MODES
                  ) -> dict[str, ModeOutcome]:
    """Each mode's final error on row ``row``, by running ``obsviz.prune`` on that row only
    (``true_obs`` with ``ng=1, scoring="joint"``, the lesson's own settings)."""
    from obsviz.prune import prune

    rows = torch.tensor([row])
    Hs = (H + H.T) / 2
    w0 = W[row:row + 1]
    ref = float(row_error(torch.zeros_like(w0), w0, Hs)[0])
    out: dict[str, ModeOutcome] = {}
    for method in methods:
        extra = dict(ng=1, scoring="joint") if method == "true_obs" else {}
        res = prune(W, H, geometry, nnz, method=method, damp=damp, device="cpu", rows=rows,
                    **extra)
        w = res.weight[row:row + 1]
        e = float(row_error(w0, w, Hs)[0])
        out[method] = ModeOutcome(method, w[0].clone(), res.mask[row].clone(), e,
                                  (e / ref) ** 0.5 if ref > 0 else 0.0)
    return out
