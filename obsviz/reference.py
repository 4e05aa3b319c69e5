"""The algorithms in plain Python: every method of obsviz, written to be read.

This is the readable version of ``docs/ALGORITHMS.md``: loops over rows, scopes and subsets, in
float64, with ``torch.linalg.solve``/``inv`` on tiny matrices. Clarity beats speed — use it on
layers of a few dozen rows and columns, to see what a method does step by step, or to check a
fast implementation. The fast engine (``obsviz.modes``, ``obsviz.baselines``) must give the same
masks and weights; the test suite holds them to it.

Nothing of the engine is used except the geometry's maps (``scope_map`` and
``block_in_scope_map``): the scope order, the steps, the chunks, the frozen columns and every update
are re-derived here from the document, so agreement with ``obsviz.prune`` is evidence, not a
tautology.

Start with :func:`true_obs` (exact OBS per row): each step picks a scope's blocks with the row's
current ``C``, removes them with the OBS update :func:`obs_remove` and shrinks ``C`` with the Schur
complement :func:`schur_downdate`.

Example (a toy layer; every function here takes the same arguments)::

    import obsviz
    from obsviz import reference

    layer = obsviz.load_sample_layer("toy")                 # W (8, 16)
    geom = obsviz.Geometry.preset("2:4", layer.shape)
    slow = reference.true_obs(layer.weight, layer.hessian, geom, 2)
    fast = obsviz.prune(layer.weight.double(), layer.hessian.double(), geom, 2, method="true_obs")
    assert (slow.mask == fast.mask).all()

Conventions: ``W`` is ``(M, K)``, masks are ``(M, K)`` bool with True = kept, a scope's blocks are
named by their position ``j`` in the scope (``0..gs-1``), and a pruning choice of a scope is a
tuple of such positions. Each function takes ``(W, H, geometry, nnz, ..., damp)`` and returns a
:class:`Result` (weights and mask).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from obsviz.geometry import Geometry

#: ALGORITHMS.md: above this many subsets per scope, selection is greedy.
MAX_SUBSETS = 10_000

DTYPE = torch.float64


# ---- the geometry read off its maps -------------------------------------------------------------

class Layout:
    """Scopes, blocks and per-row steps, exactly as ALGORITHMS.md's "Steps" paragraph says.

    ``cells[s][j]`` lists the ``(row, col)`` of block ``j`` of scope ``s``; ``steps[r]`` lists the
    scopes touching row ``r`` by (leftmost W column, scope id); ``step_of[s]`` is the scope's step
    index (this reference handles aligned layouts only, which every preset is).
    """

    def __init__(self, geometry: Geometry) -> None:
        M, K = geometry.weight_shape
        self.M, self.K = M, K
        self.gs = geometry.blocks_per_scope
        n_scopes = geometry.n_scopes
        scope_of = geometry.scope_map().tolist()
        pos_of = geometry.block_in_scope_map().tolist()
        self.cells = [[[] for _ in range(self.gs)] for _ in range(n_scopes)]
        for r in range(M):
            for c in range(K):
                self.cells[scope_of[r][c]][pos_of[r][c]].append((r, c))
        self.rows_of = [sorted({r for block in scope for r, _ in block}) for scope in self.cells]
        self.leftmost = [min(c for block in scope for _, c in block) for scope in self.cells]
        order = sorted(range(n_scopes), key=lambda s: (self.leftmost[s], s))
        self.steps = [[s for s in order if r in self.rows_of[s]] for r in range(M)]
        self.T = len(self.steps[0])
        assert all(len(row) == self.T for row in self.steps), "rows with different step counts"
        step_index = {}
        for r in range(M):
            for t, s in enumerate(self.steps[r]):
                step_index.setdefault(s, set()).add(t)
        assert all(len(ts) == 1 for ts in step_index.values()), "layout is not aligned"
        self.step_of = [step_index[s].pop() for s in range(n_scopes)]
        self.scopes = list(range(n_scopes))

    def cols(self, s: int, r: int, blocks=None) -> list[int]:
        """W columns, ascending, of scope ``s`` in row ``r`` (only of ``blocks`` if given)."""
        chosen = range(self.gs) if blocks is None else blocks
        return sorted(c for j in chosen for rr, c in self.cells[s][j] if rr == r)

    def mask(self, pruned: dict[int, tuple[int, ...]]) -> torch.Tensor:
        """Kept-mask from ``{scope: pruned block positions}``."""
        kept = torch.ones(self.M, self.K, dtype=torch.bool)
        for s, blocks in pruned.items():
            for j in blocks:
                for r, c in self.cells[s][j]:
                    kept[r, c] = False
        return kept


# ---- common ground --------------------------------------------------------------------------

@dataclass
class Prepared:
    W: torch.Tensor    # (M, K) working weights: dead input columns set to 0
    H: torch.Tensor    # (K, K) symmetrised, undamped (dead inputs: unit diagonal)
    Hd: torch.Tensor   # (K, K) damped
    C: torch.Tensor    # (K, K) = Hd⁻¹


def prepare(W: torch.Tensor, H: torch.Tensor, damp: float = 0.01) -> Prepared:
    """ALGORITHMS.md "Common ground": symmetrise, handle dead inputs, damp, invert (in original
    units; the engine's ``obsviz.prepare`` also works at unit scale, which changes nothing)."""
    W = W.to(DTYPE).clone()
    H = H.to(DTYPE)
    H = (H + H.T) / 2
    diag = torch.diagonal(H).clone()
    dead = diag == 0
    lam = damp * float(diag.mean()) if damp < 1 else damp
    Hu = H.clone()
    for c in torch.nonzero(dead).flatten().tolist():
        Hu[c, c] = 1.0
        W[:, c] = 0.0
    Hd = Hu + lam * torch.eye(H.shape[0], dtype=DTYPE)
    return Prepared(W, Hu, Hd, torch.linalg.inv(Hd))


def eps(w: torch.Tensor, C: torch.Tensor, P: list[int]) -> float:
    """OBS cost of removing the columns ``P`` from the row ``w``: ``w_P (C_PP)⁻¹ w_Pᵀ``."""
    if not P:
        return 0.0
    w_P = w[P]
    return float(w_P @ torch.linalg.solve(C[P][:, P], w_P))


def obs_remove(w: torch.Tensor, C: torch.Tensor, P: list[int], stay_zero=()) -> torch.Tensor:
    """``w − w_P (C_PP)⁻¹ C_P,:`` then ``w_P = 0``; columns in ``stay_zero`` remain 0."""
    if not P:
        return w
    coef = torch.linalg.solve(C[P][:, P], w[P])     # (C_PP)⁻¹ w_Pᵀ; C_PP is symmetric
    new = w - coef @ C[P, :]
    new[P] = 0.0
    new[list(stay_zero)] = 0.0
    return new


def schur_downdate(C: torch.Tensor, P: list[int]) -> torch.Tensor:
    """``C − C_:,P (C_PP)⁻¹ C_P,:``."""
    return C - C[:, P] @ torch.linalg.inv(C[P][:, P]) @ C[P, :]


def subset_cost(lay: Layout, W: torch.Tensor, C_of: Callable[[int], torch.Tensor], s: int,
                blocks) -> float:
    """Cost of pruning ``blocks`` of scope ``s``: ``Σ_r ε_r(P_r)`` with row ``r``'s C."""
    return sum(eps(W[r], C_of(r), lay.cols(s, r, blocks)) for r in lay.rows_of[s])


def least_blocks(scores: list[float], n_prune: int) -> tuple[int, ...]:
    """The ``n_prune`` block positions of least score (ties: the lower position)."""
    return tuple(sorted(sorted(range(len(scores)), key=lambda j: (scores[j], j))[:n_prune]))


def select(lay: Layout, W: torch.Tensor, C_of, s: int, n_prune: int) -> tuple[tuple, bool]:
    """Exhaustive selection for scope ``s`` (least cost, first in ``combinations`` order on ties),
    or greedy when there are more than ``MAX_SUBSETS`` subsets. Returns (blocks, greedy)."""
    if math.comb(lay.gs, n_prune) > MAX_SUBSETS:
        singles = [subset_cost(lay, W, C_of, s, (j,)) for j in range(lay.gs)]
        return least_blocks(singles, n_prune), True
    best, best_cost = None, math.inf
    for subset in itertools.combinations(range(lay.gs), n_prune):
        cost = subset_cost(lay, W, C_of, s, subset)
        if cost < best_cost:
            best, best_cost = subset, cost
    return best, False


@dataclass
class Result:
    weight: torch.Tensor
    mask: torch.Tensor
    greedy: bool = False


def _setup(W, H, geometry, nnz, damp):
    return Layout(geometry), prepare(W, H, damp), geometry.blocks_per_scope - nnz


def exhaustive_selection(W, H, geometry, nnz, damp=0.01) -> Result:
    """The mask that `local`, `full` and `split` use: every scope selected once, shared C."""
    lay, p, n_prune = _setup(W, H, geometry, nnz, damp)
    pruned, greedy = {}, False
    for s in lay.scopes:
        pruned[s], g = select(lay, p.W, lambda r: p.C, s, n_prune)
        greedy |= g
    return Result(p.W * lay.mask(pruned), lay.mask(pruned), greedy)


# ---- the OBS modes ------------------------------------------------------------------------------

def local(W, H, geometry, nnz, damp=0.01) -> Result:
    """Per (row, scope): ``δ_K = w_P (C_PP)⁻¹ C_P,K`` off the scope's kept columns, ``w_P = 0``."""
    lay, p, n_prune = _setup(W, H, geometry, nnz, damp)
    sel = exhaustive_selection(W, H, geometry, nnz, damp)
    out = p.W.clone()
    for s in lay.scopes:
        for r in lay.rows_of[s]:
            S = lay.cols(s, r)
            P = [c for c in S if not sel.mask[r, c]]
            K_ = [c for c in S if sel.mask[r, c]]
            if not P:
                continue
            coef = torch.linalg.solve(p.C[P][:, P], p.W[r, P])
            out[r, K_] = p.W[r, K_] - coef @ p.C[P][:, K_]
            out[r, P] = 0.0
    return Result(out, sel.mask, sel.greedy)


def _chunked(W, H, geometry, nnz, damp, n_splits: int, reselect: bool) -> Result:
    """`full` (n_splits=1), `split` and `interleaved` as ALGORITHMS.md describes them."""
    lay, p, n_prune = _setup(W, H, geometry, nnz, damp)
    M, K, T = lay.M, lay.K, lay.T
    per_chunk = math.ceil(T / n_splits)
    # steps holding each column, in any row
    held = [set() for _ in range(K)]
    for r in range(M):
        for t, s in enumerate(lay.steps[r]):
            for c in lay.cols(s, r):
                held[c].add(t)
    Wk = p.W.clone()
    pruned, greedy = {}, False
    if not reselect:
        for s in lay.scopes:
            pruned[s], g = select(lay, Wk, lambda r: p.C, s, n_prune)
            greedy |= g
    gone = [set() for _ in range(M)]    # columns pruned so far, per row
    for t0 in range(0, T, per_chunk):
        t1 = min(T, t0 + per_chunk)
        if t0 == 0:
            Ck = p.C
        else:
            active = [c for c in range(K) if max(held[c]) >= t0]    # not frozen
            Ck = torch.zeros(K, K, dtype=DTYPE)
            Ck[torch.tensor(active)[:, None], torch.tensor(active)[None, :]] = torch.linalg.inv(
                p.Hd[active][:, active])
        if reselect:
            for s in lay.scopes:
                if t0 <= lay.step_of[s] < t1:
                    pruned[s], g = select(lay, Wk, lambda r, Ck=Ck: Ck, s, n_prune)
                    greedy |= g
        for t in range(t0, t1):
            for r in range(M):
                s = lay.steps[r][t]
                P = lay.cols(s, r, pruned[s])
                Wk[r] = obs_remove(Wk[r], Ck, P, gone[r])
                gone[r].update(P)
    return Result(Wk, lay.mask(pruned), greedy)


def full(W, H, geometry, nnz, damp=0.01) -> Result:
    """Select every scope once with the shared C; then step by step, each row's pruned elements
    are removed by the OBS update with that same fixed C."""
    return _chunked(W, H, geometry, nnz, damp, 1, reselect=False)


def split(W, H, geometry, nnz, n_splits, damp=0.01) -> Result:
    """As :func:`full`, the steps cut into ``n_splits`` chunks; chunk ``k`` uses ``C_k``, the
    inverse of ``H_d`` on the columns not frozen by earlier chunks."""
    return _chunked(W, H, geometry, nnz, damp, n_splits, reselect=False)


def interleaved(W, H, geometry, nnz, n_splits, damp=0.01) -> Result:
    """As :func:`split`, each chunk's masks selected at its start with ``C_k`` and the current
    weights."""
    return _chunked(W, H, geometry, nnz, damp, n_splits, reselect=True)


def true_obs(W, H, geometry, nnz, order="left_to_right", scoring="independent",
             damp=0.01, forced=None) -> Result:
    """Exact OBS: every row with its own C; the steps are taken one at a time, each step's masks
    chosen with the rows' current C and weights, then removed with the OBS update and followed by
    the Schur downdate of C, so every decision sees all earlier ones. (``ng`` and ``chunk_size``
    only change the engine's speed, so they do not appear here.)

    ``forced`` (``{scope: block positions}``, optional) prunes those blocks of those scopes
    instead of choosing (a student overruling OBS on the Learn page); every other scope is
    chosen as usual, with the C and weights the forced removals left.

    ``largest_first`` orders the steps by descending ``Σ_r`` of the least cost, under the shared
    C and the starting W, of the step's elements in row ``r`` (ties: the earlier step).
    """
    lay, p, n_prune = _setup(W, H, geometry, nnz, damp)
    M, T = lay.M, lay.T
    if order == "left_to_right":
        sequence = list(range(T))
    else:
        score = [0.0] * T
        for r in range(M):
            for t, s in enumerate(lay.steps[r]):
                if math.comb(lay.gs, n_prune) > MAX_SUBSETS:
                    singles = sorted(eps(p.W[r], p.C, lay.cols(s, r, (j,))) for j in range(lay.gs))
                    score[t] += sum(singles[:n_prune])
                else:
                    score[t] += min(eps(p.W[r], p.C, lay.cols(s, r, subset))
                                    for subset in itertools.combinations(range(lay.gs), n_prune))
        sequence = sorted(range(T), key=lambda t: (-score[t], t))
    Wk = p.W.clone()
    Cs = [p.C.clone() for _ in range(M)]     # every row starts from the same C = H_d⁻¹ ...
    pruned, greedy = {}, False
    gone = [set() for _ in range(M)]         # columns each row has lost so far
    for t in sequence:
        for s in [s for s in lay.scopes if lay.step_of[s] == t]:
            # 1. choose the scope's blocks with each row's *current* C and weights
            if forced and s in forced:
                pruned[s] = tuple(sorted(forced[s]))
            elif scoring == "joint":
                pruned[s], g = select(lay, Wk, lambda r: Cs[r], s, n_prune)
                greedy |= g
            else:
                scores = [sum(float(Wk[r, c] ** 2 / Cs[r][c, c]) for r, c in lay.cells[s][j])
                          for j in range(lay.gs)]
                pruned[s] = least_blocks(scores, n_prune)
            # 2. remove them from every row of the scope: the OBS update compensates the row's
            #    other weights, and the Schur downdate (the Schur complement of C_PP in C) makes
            #    the row's C the inverse of H_d on the columns it still has, exactly
            for r in lay.rows_of[s]:
                P = lay.cols(s, r, pruned[s])
                if P:
                    Wk[r] = obs_remove(Wk[r], Cs[r], P, gone[r])
                    Cs[r] = schur_downdate(Cs[r], P)
                    gone[r].update(P)
    return Result(Wk, lay.mask(pruned), greedy)


# ---- baselines ------------------------------------------------------------------------------

def _score_and_zero(W, H, geometry, nnz, damp, element_score) -> Result:
    lay, p, n_prune = _setup(W, H, geometry, nnz, damp)
    pruned = {}
    for s in lay.scopes:
        scores = [sum(element_score(p, r, c) for r, c in lay.cells[s][j]) for j in range(lay.gs)]
        pruned[s] = least_blocks(scores, n_prune)
    mask = lay.mask(pruned)
    return Result(p.W * mask, mask)


def magnitude(W, H, geometry, nnz, damp=0.01) -> Result:
    """Prune the blocks of least ``Σ w²``; no compensation."""
    return _score_and_zero(W, H, geometry, nnz, damp, lambda p, r, c: float(p.W[r, c] ** 2))


def wanda(W, H, geometry, nnz, damp=0.01) -> Result:
    """Prune the blocks of least ``Σ |w| · sqrt(H_cc)``; no compensation."""
    return _score_and_zero(W, H, geometry, nnz, damp,
                           lambda p, r, c: float(p.W[r, c].abs() * p.H[c, c].sqrt()))


def obd(W, H, geometry, nnz, damp=0.01) -> Result:
    """Optimal Brain Damage: prune the blocks of least ``Σ w² / C_cc``; no compensation."""
    return _score_and_zero(W, H, geometry, nnz, damp,
                           lambda p, r, c: float(p.W[r, c] ** 2 / p.C[c, c]))


def sparsegpt(W, H, geometry, nnz, damp=0.01) -> Result:
    """The unbatched SparseGPT sweep: one column at a time, ``U`` the upper Cholesky factor of C.

    A scope's mask is chosen when the sweep reaches its leftmost column, from the weights as
    they are then (score ``Σ w_c² / U_cc²`` over the block's elements and the scope's rows)."""
    lay, p, n_prune = _setup(W, H, geometry, nnz, damp)
    U = torch.linalg.cholesky(p.C, upper=True)
    assert torch.allclose(U.T @ U, p.C)
    Wk = p.W.clone()
    kept = torch.ones(lay.M, lay.K, dtype=torch.bool)
    for i in range(lay.K):
        for s in lay.scopes:
            if lay.leftmost[s] != i:
                continue
            scores = [sum(float(Wk[r, c] ** 2 / U[c, c] ** 2) for r, c in lay.cells[s][j])
                      for j in range(lay.gs)]
            for j in least_blocks(scores, n_prune):
                for r, c in lay.cells[s][j]:
                    kept[r, c] = False
        err = Wk[:, i] * (~kept[:, i]) / U[i, i]
        Wk[:, i:] -= err[:, None] * U[i, i:][None, :]
        Wk[~kept[:, i], i] = 0.0
    return Result(Wk * kept, kept)


#: The methods without options beyond ``damp``, by name.
REFERENCES = {"local": local, "full": full, "magnitude": magnitude, "wanda": wanda, "obd": obd,
              "sparsegpt": sparsegpt}
