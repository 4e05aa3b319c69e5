"""Baselines on the same geometry: ``magnitude``, ``wanda``, ``obd`` (score, no compensation) and
``sparsegpt`` (column-sequential OBS with lazy batch updates).

Each has a plain-loop twin in :mod:`obsviz.reference` (the unbatched SparseGPT sweep included).
"""

from __future__ import annotations

import bisect

import torch

from obsviz import obs
from obsviz.errors import ArgumentError
from obsviz.modes import Problem, entries, mark_pruned


def score_and_zero(p: Problem, element_score: torch.Tensor) -> torch.Tensor:
    """Per scope, prune the ``np`` blocks of least summed element score; no compensation."""
    e = entries(p.layout)
    pruned = obs.choose_blocks(obs.block_scores(e.cols, element_score, e.rows), e.scope,
                               p.n_prune)
    kept = torch.ones_like(p.W, dtype=torch.bool)
    mark_pruned(kept, e, pruned)
    p.W.mul_(kept)
    return kept


def magnitude(p: Problem) -> torch.Tensor:
    """Block L2 norm (ranking by Σ w² is the same)."""
    return score_and_zero(p, p.W * p.W)


def wanda(p: Problem) -> torch.Tensor:
    """``|w| · ‖x_c‖`` per element, summed over the block; ``‖x_c‖ ∝ sqrt(H_cc)``."""
    return score_and_zero(p, p.W.abs() * torch.diagonal(p.H).clamp(min=0).sqrt())


def obd(p: Problem) -> torch.Tensor:
    """Optimal Brain Damage: ``w² / C_cc``, no compensation."""
    return score_and_zero(p, p.W * p.W / torch.diagonal(p.C))


def sparsegpt(p: Problem, lazy: int = 128) -> torch.Tensor:
    """SparseGPT: sweep the columns left to right with the upper Cholesky factor ``U`` of C
    (``C = UᵀU``); pruning column ``i`` updates columns ``> i`` by ``err ⊗ U[i, i:]``; updates to
    columns beyond the current lazy block are batched.

    Masks are chosen when the sweep reaches a scope's leftmost column, from the current weights
    with the SparseGPT score ``w² / U_cc²`` summed over each block and over the scope's rows. Lazy
    blocks end only where no scope straddles the cut, so every choice reads up-to-date weights.
    """
    W, layout = p.W, p.layout
    M, K = W.shape
    U, info = torch.linalg.cholesky_ex(p.C, upper=True)          # C = Uᵀ U
    if int(info) > 0:
        raise ArgumentError("damp", "the damped inverse Hessian is not positive definite; raise "
                            "damp")
    d = torch.diagonal(U)
    score_scale = 1.0 / (d * d)
    kept = torch.ones(M, K, dtype=torch.bool, device=W.device)

    e = entries(layout)
    start = layout.scope_start[e.scope]
    order = torch.argsort(start, stable=True)
    counts = torch.bincount(start, minlength=K)
    bounds = [0, *torch.cumsum(counts, 0).tolist()]  # host-side: read once per column
    cuts = cut_points(layout, K).tolist()

    i1 = 0
    while i1 < K:
        # The last cut within `lazy` columns, else the first one past it.
        j = bisect.bisect_right(cuts, i1 + lazy) - 1
        i2 = cuts[j] if cuts[j] > i1 else cuts[bisect.bisect_right(cuts, i1)]
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            lo, hi = bounds[col], bounds[col + 1]
            if hi > lo:
                sel = order[lo:hi]
                ecols = e.cols[sel]
                vals = W1[e.rows[sel, None, None], (ecols - i1).clamp(min=0)] * (ecols >= 0)
                scores = (vals * vals * score_scale[ecols.clamp(min=0)] * (ecols >= 0)).sum(-1)
                pruned = obs.choose_blocks(scores, e.scope[sel], p.n_prune)
                hit = pruned.unsqueeze(-1) & (ecols >= 0)
                rows = e.rows[sel, None, None].expand_as(ecols)
                kept[rows[hit], ecols[hit]] = False
            w = W1[:, i]
            err = (w * ~kept[:, col]) / U[col, col]
            W1[:, i:].sub_(err[:, None] * U[col, col:i2][None, :])
            W1[:, i] = w * kept[:, col]
            Err1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:].sub_(Err1 @ U[i1:i2, i2:])
        p.progress(i2 / K, f"columns {i2}/{K}")
        i1 = i2
    W.mul_(kept)
    return kept


def cut_points(layout, K: int) -> torch.Tensor:
    """Columns ``c`` (0..K) where a lazy block may end: no scope spans both ``c-1`` and ``c``."""
    cover = torch.zeros(K + 2, dtype=torch.long, device=layout.scope_start.device)
    cover.index_add_(0, layout.scope_start + 1, torch.ones_like(layout.scope_start))
    cover.index_add_(0, layout.scope_end + 1, -torch.ones_like(layout.scope_end))
    blocked = torch.cumsum(cover, 0)[:K + 1] > 0
    return torch.nonzero(~blocked).flatten()
