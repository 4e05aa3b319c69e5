"""The OBS compensation modes: ``local``, ``full``, ``split``, ``interleaved`` and ``true_obs``.

Each takes a :class:`Problem` (working copy of W, H, damped H, C and the row-step layout) and
prunes ``problem.W`` in place, returning the kept mask. docs/ALGORITHMS.md gives the table of modes
and the math; the comments below say how each is realised on the row-step layout
(``obsviz.layout``). The methods are declared (options, cost models) in ``obsviz.methods``.

Each mode has a plain-loop twin in :mod:`obsviz.reference` (``obsviz.reference.local``,
``.full``, ``.split``, ``.interleaved``, ``.true_obs``): the same algorithm written to be read
line by line, which the tests hold this fast version to.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from obsviz import obs
from obsviz.errors import ArgumentError
from obsviz.hessian import spd_inverse
from obsviz.layout import RowSteps, row_chunks

Progress = Callable[[float, str], None]


@dataclass
class Problem:
    W: torch.Tensor          # (M, K) working copy, pruned in place
    H: torch.Tensor          # (K, K) undamped, dead inputs on a unit diagonal
    Hd: torch.Tensor         # (K, K) damped
    C: torch.Tensor          # (K, K) = Hd⁻¹
    layout: RowSteps
    n_prune: int             # np: blocks pruned per scope
    progress: Progress
    notes: dict = field(default_factory=dict)   # facts for result.options (e.g. greedy)

    @property
    def gs(self) -> int:
        return self.layout.cols.shape[2]


@dataclass(frozen=True)
class Entries:
    """A flat list of (row, step) entries of the layout."""

    rows: torch.Tensor       # (E,)
    steps: torch.Tensor      # (E,)
    cols: torch.Tensor       # (E, gs, Lb)
    scope: torch.Tensor      # (E,)


def entries(layout: RowSteps, t0: int = 0, t1: int | None = None,
            rows: torch.Tensor | None = None) -> Entries:
    """The non-padding entries with step in ``[t0, t1)`` (of ``rows`` if given, renumbered
    ``0..len(rows)-1``)."""
    scope = layout.scope[:, t0:t1]
    cols = layout.cols[:, t0:t1]
    if rows is not None:
        scope, cols = scope[rows], cols[rows]
    r, t = torch.nonzero(scope >= 0, as_tuple=True)
    return Entries(r, t + t0, cols[r, t], scope[r, t])


def weights_at(W: torch.Tensor, e: Entries) -> torch.Tensor:
    """``(E, gs, Lb)`` weights of the entries' elements (0 at padding)."""
    return W[e.rows[:, None, None], e.cols.clamp(min=0)] * (e.cols >= 0)


def select_shared(p: Problem, C: torch.Tensor, e: Entries) -> torch.Tensor:
    """Pruned-block mask ``(E, gs)`` from the OBS cost under a shared ``C`` and the current W."""
    pruned, greedy = obs.select(e.cols, weights_at(p.W, e), C, e.scope, p.n_prune)
    if greedy:
        p.notes["selection"] = "greedy"
    return pruned


def mark_pruned(kept: torch.Tensor, e: Entries, pruned_blocks: torch.Tensor) -> None:
    """Clear ``kept`` ``(M, K)`` at the elements of the entries' pruned blocks."""
    hit = pruned_blocks.unsqueeze(-1) & (e.cols >= 0)
    r = e.rows[:, None, None].expand_as(e.cols)
    kept[r[hit], e.cols[hit]] = False


def pruned_at_step(layout: RowSteps, kept: torch.Tensor, t: int) -> torch.Tensor:
    """``(M, q)`` pruned columns of every row at step ``t`` (-1 padded)."""
    idx = layout.cols[:, t].reshape(kept.shape[0], -1)
    return obs.compact(idx, ~obs.gather_masked(kept, idx).bool() & (idx >= 0))


# ---- local ------------------------------------------------------------------------------------

def local(p: Problem) -> torch.Tensor:
    """Select per (row, scope) by exhaustive cost; compensate only the scope's own kept weights in
    each row: ``δ_K = w_P (C_PP)⁻¹ C_P,K`` with the shared, fixed C. Plain version:
    :func:`obsviz.reference.local`."""
    e = entries(p.layout)
    kept = torch.ones_like(p.W, dtype=torch.bool)
    pruned = select_shared(p, p.C, e)
    mark_pruned(kept, e, pruned)
    p.progress(0.5, "compensating within scopes")
    E, gs, Lb = e.cols.shape
    n = gs * Lb
    step = max(1, (1 << 22) // (n * n))
    for e0 in range(0, E, step):
        sl = slice(e0, min(E, e0 + step))
        idx = e.cols[sl].reshape(-1, n)
        ok = idx >= 0
        pm = (pruned[sl].unsqueeze(-1) & (e.cols[sl] >= 0)).reshape(-1, n)
        w = weights_at(p.W, Entries(e.rows[sl], e.steps[sl], e.cols[sl], e.scope[sl]))
        w = w.reshape(-1, n).to(p.C.dtype)
        C_SS = obs.principal(p.C, idx)
        eye = torch.eye(n, dtype=C_SS.dtype, device=C_SS.device)
        C_PP = torch.where(pm.unsqueeze(-1) & pm.unsqueeze(-2), C_SS, eye)
        z = obs.spd_solve(C_PP, w * pm)
        new = torch.where(pm, torch.zeros_like(w), w - (z.unsqueeze(-2) @ C_SS).squeeze(-2))
        r = e.rows[sl][:, None].expand_as(idx)
        p.W[r[ok], idx[ok]] = new[ok].to(p.W.dtype)
    return kept


# ---- full / split / interleaved ---------------------------------------------------------------

def full(p: Problem) -> torch.Tensor:
    """Select once; then scopes in order, each row's pruned set compensating every not-yet-pruned
    column of its row with the fixed C. Plain version: :func:`obsviz.reference.full`."""
    return chunked(p, n_splits=1, reselect=False)


def split(p: Problem, n_splits: int) -> torch.Tensor:
    """As ``full``, the scope sequence cut into ``n_splits`` chunks; each chunk uses
    ``C = (H_d restricted to the columns not frozen by earlier chunks)⁻¹``. Plain version:
    :func:`obsviz.reference.split`."""
    return chunked(p, n_splits=n_splits, reselect=False)


def interleaved(p: Problem, n_splits: int) -> torch.Tensor:
    """As ``split``, with the masks of each chunk re-selected with that chunk's C and the
    current W. Plain version: :func:`obsviz.reference.interleaved`."""
    if not p.layout.aligned:
        raise ArgumentError(
            "method",
            "method='interleaved' needs every scope at the same step in all its rows; this "
            "geometry's scopes are not aligned across rows (use 'split' or 'full')")
    return chunked(p, n_splits=n_splits, reselect=True)


def chunked(p: Problem, n_splits: int, reselect: bool) -> torch.Tensor:
    layout = p.layout
    M, K = p.W.shape
    T = layout.n_steps
    per_chunk = math.ceil(T / n_splits)
    kept = torch.ones(M, K, dtype=torch.bool, device=p.W.device)
    if not reselect:
        e = entries(layout)
        mark_pruned(kept, e, select_shared(p, p.C, e))
    # A column is frozen once every step that holds it is behind us.
    valid = layout.cols >= 0
    steps = torch.arange(T, device=p.W.device)[None, :, None, None].expand_as(layout.cols)
    last_step = torch.full((K,), -1, dtype=torch.long, device=p.W.device)
    last_step.scatter_reduce_(0, layout.cols[valid], steps[valid], "amax")
    alive = torch.ones(M, K, dtype=p.W.dtype, device=p.W.device)
    for t0 in range(0, T, per_chunk):
        t1 = min(T, t0 + per_chunk)
        C = p.C if t0 == 0 else restricted_inverse(p.Hd, last_step >= t0)
        if reselect:
            e = entries(layout, t0, t1)
            mark_pruned(kept, e, select_shared(p, C, e))
        for t in range(t0, t1):
            obs.obs_update_shared(p.W, C, pruned_at_step(layout, kept, t), alive)
            if t % 16 == 0:
                p.progress(t / T, f"scope step {t + 1}/{T}")
    return kept


def restricted_inverse(Hd: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """``(K, K)``: ``(Hd[A, A])⁻¹`` on the active columns ``A``, zero elsewhere (so frozen columns
    are neither compensated nor read)."""
    C = torch.zeros_like(Hd)
    a = torch.nonzero(active).flatten()
    C[a[:, None], a[None, :]] = spd_inverse(Hd[a[:, None], a[None, :]])
    return C


# ---- true OBS ---------------------------------------------------------------------------------

def true_obs(p: Problem, ng: int, chunk_size: int, order: str, scoring: str,
             c_dtype: torch.dtype) -> torch.Tensor:
    """Exact OBS per row: every row keeps its own C, Schur-downdated as its weights go, so each
    decision sees all earlier ones (``ng`` steps are decided on the batch's small system, then
    applied to the K × K C at once: see :func:`decide_batch`). Coupled rows (one scope over
    several rows) are processed in the same chunk and decide together.

    Plain version, one row, one step and one subset at a time: :func:`obsviz.reference.true_obs`
    (the same masks and weights; ``ng`` and ``chunk_size`` only change the speed)."""
    layout = p.layout
    M, K = p.W.shape
    chunks = row_chunks(layout, chunk_size)
    if any(c.numel() > 1 for c in chunks) and not layout.aligned:
        raise ArgumentError(
            "method",
            "method='true_obs' on a row-coupled geometry needs every scope at the same step in "
            "all its rows; this geometry's scopes are not aligned across rows")
    step_order = scope_step_order(p) if order == "largest_first" else torch.arange(
        layout.n_steps, device=p.W.device)
    kept = torch.ones(M, K, dtype=torch.bool, device=p.W.device)
    batches = [step_order[i:i + ng] for i in range(0, layout.n_steps, ng)]
    for ci, rows in enumerate(chunks):
        p.progress(ci / len(chunks), f"rows chunk {ci + 1}/{len(chunks)} ({rows.numel()} rows)")
        W = p.W[rows]
        C = p.C.to(c_dtype).expand(rows.numel(), K, K).clone()
        kept_c = torch.ones_like(W, dtype=torch.bool)
        cols_c, scope_c = layout.cols[rows], layout.scope[rows]
        for ts in batches:
            cols = cols_c[:, ts]                                           # (B, nt, gs, Lb)
            scope = scope_c[:, ts]                                         # (B, nt)
            S = cols.reshape(rows.numel(), -1)                             # the batch's columns
            if not bool((S >= 0).any()):
                continue
            pruned_S = decide_batch(p, W, C, S, scope, cols.shape[2:], scoring)
            P = obs.compact(S, pruned_S)
            obs.obs_update_per_row(W, C, P)
            obs.zero_at(kept_c, P)
            W.mul_(kept_c)  # earlier pruned weights stay exactly zero
        p.W[rows] = W
        kept[rows] = kept_c
    return kept


def decide_batch(p: Problem, W: torch.Tensor, C: torch.Tensor, S: torch.Tensor,
                 scope: torch.Tensor, block_shape: tuple[int, int], scoring: str) -> torch.Tensor:
    """The masks of one batch of steps, decided one step after another.

    The decisions only read C and w on the batch's own columns ``S`` ``(B, n)``, so they run on
    the small system ``(C_SS, w_S)``, which the same OBS update + Schur downdate keeps exact after
    each step; the ``K × K`` downdate is then applied once for the whole batch (OBS removals
    compose). So every decision sees all earlier ones, whatever ``ng`` is.

    Returns ``(B, n)`` bool: the positions of ``S`` pruned.
    """
    B, n = S.shape
    gs, Lb = block_shape
    rows = torch.arange(B, device=S.device)
    C_SS = obs.principal(C, S, rows)                                    # (B, n, n)
    w_S = obs.gather_masked(W, S).to(C_SS.dtype)                        # (B, n)
    pruned_S = torch.zeros(B, n, dtype=torch.bool, device=S.device)
    here = torch.arange(gs * Lb, device=S.device).view(gs, Lb)
    for j in range(scope.shape[1]):
        r = torch.nonzero(scope[:, j] >= 0).flatten()
        if r.numel() == 0:
            continue
        pos = j * gs * Lb + here                                        # positions in S
        pos = torch.where(S[r][:, pos] >= 0, pos, -1)                   # (E, gs, Lb)
        e = Entries(r, torch.full_like(r, j), pos, scope[r, j])
        if scoring == "independent":
            d = torch.diagonal(C_SS, dim1=-2, dim2=-1)
            pruned = obs.choose_blocks(obs.block_scores(pos, w_S * w_S / d, r), e.scope,
                                       p.n_prune)
        else:
            pruned, greedy = obs.select(pos, weights_at(w_S, e), C_SS, e.scope, p.n_prune,
                                        batch=r)
            if greedy:
                p.notes["selection"] = "greedy"
        step_pruned = torch.zeros(B, gs * Lb, dtype=torch.bool, device=S.device)
        step_pruned[r] = (pruned.unsqueeze(-1) & (pos >= 0)).reshape(r.numel(), -1)
        # Later steps only read positions from this step on: update that trailing block alone.
        a0 = j * gs * Lb
        step_pos = here.reshape(-1).expand(B, -1)
        obs.obs_update_per_row(w_S[:, a0:], C_SS[:, a0:, a0:],
                               obs.compact(step_pos, step_pruned))
        pruned_S[:, j * gs * Lb:(j + 1) * gs * Lb] |= step_pruned
    return pruned_S


def scope_step_order(p: Problem) -> torch.Tensor:
    """Steps by descending pre-scored OBS cost (shared C, summed over rows): the costly scopes are
    decided first, while C is closest to the truth."""
    e = entries(p.layout)
    gs = p.gs
    subsets = obs.prune_subsets(gs, p.n_prune, p.W.device)
    w = weights_at(p.W, e)
    if subsets is None:
        singles = torch.arange(gs, device=p.W.device)[:, None]
        c = obs.subset_costs(e.cols, w, p.C, singles)
        best = c.topk(p.n_prune, dim=1, largest=False).values.sum(1)
    else:
        best = obs.subset_costs(e.cols, w, p.C, subsets).min(1).values
    score = torch.zeros(p.layout.n_steps, dtype=best.dtype, device=best.device)
    score.index_add_(0, e.steps, best)
    return torch.argsort(score, descending=True)
