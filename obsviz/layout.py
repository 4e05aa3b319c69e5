"""The row-step layout: a geometry re-indexed the way the OBS math consumes it.

The loss is a sum over W rows (``L = Σ_r ΔW_r H ΔW_rᵀ``), so every mode works row by row. For each
row ``r`` we list the scopes that touch it in scope order (by their leftmost column); the ``t``-th
of them is *step* ``t`` of that row. A step holds the scope's elements that lie in row ``r``,
grouped by block:

    cols[r, t, j, l]   W column of the l-th element of block j (of the scope) in row r, or -1
    scope[r, t]        the scope's id, or -1 for padding

A scope spanning several rows (row-coupled geometries, multi-row blocks) appears as one step in
each of its rows; its cost is the sum of those steps' costs. When every scope sits at the same
step index in all of its rows, the layout is *aligned* (true of every preset and of any geometry
whose scopes tile W in a regular way).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from obsviz.errors import ArgumentError
from obsviz.geometry import Geometry, distinct_sorted


@dataclass(frozen=True)
class RowSteps:
    cols: torch.Tensor          # (M, T, gs, Lb) long, -1 = padding
    scope: torch.Tensor         # (M, T) long, -1 = padding
    scope_step: torch.Tensor    # (S,) step index of each scope (its first row's, if not aligned)
    scope_start: torch.Tensor   # (S,) leftmost W column of each scope
    scope_end: torch.Tensor     # (S,) rightmost W column of each scope
    n_scopes: int
    aligned: bool

    @property
    def valid(self) -> torch.Tensor:
        """``(M, T, gs, Lb)`` bool: real elements (not padding)."""
        return self.cols >= 0

    @property
    def n_steps(self) -> int:
        return self.cols.shape[1]

    def to(self, device: torch.device | str) -> RowSteps:
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return RowSteps(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                           for k, v in fields.items()})


@lru_cache(maxsize=16)
def layout_shape(geometry: Geometry) -> tuple[int, int, int, int]:
    """``(M, T, gs, Lb)`` of :func:`row_steps` without building it (to check memory first).

    Cheap in memory (it runs before every estimate): from the geometry's cached block rows, and
    only for blocks that span several rows a sort over their elements."""
    M, K = geometry.weight_shape
    lo, hi = geometry._block_row_range                           # (S, gs) first and last row
    S, gs = lo.shape
    if geometry.is_row_coupled:
        per_row = torch.bincount(geometry.row_coupling().reshape(-1) + 1, minlength=M + 1)[1:]
    else:
        per_row = torch.bincount(lo[:, 0].long(), minlength=M)
    if torch.equal(lo, hi):   # every block in one row (all presets): Lb is the block's size
        return M, int(per_row.max()), gs, geometry.block_numel
    # Lb: most elements one block has in one row (rows sorted inside each block, then counted).
    rows = geometry.scope_elements() // K
    bk = rows.shape[2]
    block_rows = torch.sort(rows.reshape(S * gs, bk), dim=1).values
    key = torch.arange(S * gs)[:, None] * M + block_rows
    _, counts = torch.unique_consecutive(key.reshape(-1), return_counts=True)
    return M, int(per_row.max()), gs, int(counts.max())


def layout_bytes(geometry: Geometry) -> int:
    """Memory of the row-step layout of ``geometry``."""
    M, T, gs, Lb = layout_shape(geometry)
    return 8 * M * T * (gs * Lb + 1)


@lru_cache(maxsize=4)
def row_steps(geometry: Geometry) -> RowSteps:
    """Build the row-step layout of ``geometry`` (cached; vectorised, no loop over elements).

    Only two global sorts, over scopes and over (scope, row) pairs; everything else works inside
    a scope or a block. Two shortcuts give the same layout with less work: geometries whose
    scope ids already list the layout (:func:`_row_steps_in_order`), and geometries whose blocks
    each lie in one row with ascending columns (all presets), handled block by block.
    """
    fast = _row_steps_in_order(geometry)
    if fast is not None:
        return fast
    M, K = geometry.weight_shape
    lo, hi = geometry._block_row_range
    if torch.equal(lo, hi):
        elements = geometry.scope_elements(dtype=geometry._scope_elements.dtype)
        cols = elements % K
        if elements.shape[2] == 1 or bool((cols[..., 1:] > cols[..., :-1]).all()):
            return _row_steps_by_blocks(geometry, lo.long(), cols)
    elements = geometry.scope_elements()                          # (S, gs, bk)
    S, gs, bk = elements.shape
    rows, cols = elements // K, elements % K
    scope_start = cols.reshape(S, -1).amin(1)
    scope_end = cols.reshape(S, -1).amax(1)

    # The rows of each scope, and the slot (index into them) of every element.
    if geometry.is_row_coupled:
        scope_rows = distinct_sorted(rows.reshape(S, -1))          # (S, R), -1 padded
        slot = torch.searchsorted(torch.where(scope_rows < 0, M, scope_rows),
                                  rows.reshape(S, -1))
    else:
        scope_rows = rows[:, 0, :1]
        slot = torch.zeros(S, gs * bk, dtype=torch.long)
    pair_row, pair_scope, pair_step, step_of = _scope_steps(M, scope_start, scope_rows)
    T = int(pair_step.max()) + 1

    # Position of each element among its block's elements in the same row, columns ascending.
    key, perm = torch.sort(rows * K + cols, dim=-1)
    new_row = torch.ones_like(key, dtype=torch.bool)
    new_row[..., 1:] = (key[..., 1:] // K) != (key[..., :-1] // K)
    idx = torch.arange(bk).expand_as(key)
    first = torch.where(new_row, idx, torch.zeros_like(idx)).cummax(-1).values
    pos = torch.empty_like(perm).scatter_(-1, perm, idx - first)
    Lb = int(pos.max()) + 1

    step = step_of.gather(1, slot).view(S, gs, bk)
    block = torch.arange(gs)[None, :, None].expand(S, gs, bk)
    out_cols = torch.full((M, T, gs, Lb), -1, dtype=torch.long)
    out_cols[rows, step, block, pos] = cols
    return _finish(out_cols, pair_row, pair_scope, pair_step, step_of, scope_start, scope_end)


def _scope_steps(M: int, scope_start: torch.Tensor, scope_rows: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step per (scope, row) pair, numbered in scope order (leftmost column, then id) within
    each row: ``pair_row``, ``pair_scope``, ``pair_step`` and ``step_of`` ``(S, R)`` (-1 where
    ``scope_rows`` is padding)."""
    S = scope_start.numel()
    rank = torch.empty(S, dtype=torch.long)
    rank[torch.argsort(scope_start * S + torch.arange(S))] = torch.arange(S)
    ok = scope_rows >= 0
    pair_row = scope_rows[ok]
    pair_scope = torch.arange(S)[:, None].expand_as(scope_rows)[ok]
    order = torch.argsort(pair_row * S + rank[pair_scope])
    row_first = torch.searchsorted(pair_row[order], torch.arange(M))
    pair_step = torch.empty_like(order)
    pair_step[order] = torch.arange(order.numel()) - row_first[pair_row[order]]
    step_of = torch.full(scope_rows.shape, -1, dtype=torch.long)
    step_of[ok] = pair_step
    return pair_row, pair_scope, pair_step, step_of


def _finish(out_cols, pair_row, pair_scope, pair_step, step_of, scope_start, scope_end
            ) -> RowSteps:
    M, T = out_cols.shape[:2]
    out_scope = torch.full((M, T), -1, dtype=torch.long)
    out_scope[pair_row, pair_step] = pair_scope
    step_lo = torch.where(step_of >= 0, step_of, T).amin(1)
    return RowSteps(cols=out_cols, scope=out_scope, scope_step=step_lo,
                    scope_start=scope_start, scope_end=scope_end,
                    n_scopes=scope_start.numel(),
                    aligned=bool((step_lo == step_of.amax(1)).all()))


def _row_steps_by_blocks(geometry: Geometry, block_row: torch.Tensor, cols: torch.Tensor
                         ) -> RowSteps:
    """:func:`row_steps` when every block lies in one row (``block_row`` ``(S, gs)``) with its
    columns ``cols`` ``(S, gs, bk)`` ascending: an element's position in its block is its index,
    so whole blocks are placed at once instead of single elements."""
    M, _ = geometry.weight_shape
    S, gs, bk = cols.shape
    scope_start = cols[..., 0].long().amin(1)
    scope_end = cols[..., -1].long().amax(1)
    if geometry.is_row_coupled:
        scope_rows = geometry._scope_rows                         # (S, R), -1 padded
        slot = torch.searchsorted(torch.where(scope_rows < 0, M, scope_rows), block_row)
    else:
        scope_rows = block_row[:, :1]
        slot = torch.zeros(S, gs, dtype=torch.long)
    pair_row, pair_scope, pair_step, step_of = _scope_steps(M, scope_start, scope_rows)
    T = int(pair_step.max()) + 1
    step = step_of.gather(1, slot)                                # (S, gs)
    out_cols = torch.full((M, T, gs, bk), -1, dtype=torch.long)
    at = (block_row * T + step) * gs + torch.arange(gs)
    out_cols.view(M * T * gs, bk)[at.reshape(-1)] = cols.reshape(S * gs, bk).long()
    return _finish(out_cols, pair_row, pair_scope, pair_step, step_of, scope_start, scope_end)


def _row_steps_in_order(geometry: Geometry) -> RowSteps | None:
    """The layout without any sort or scatter, when the scope ids already list it: no scope spans
    two rows, scope ids run row by row in scope order with the same number per row, and every
    block's elements are in ascending columns (all presets that do not couple rows). Then
    ``cols`` is the element columns, reshaped. ``None`` when the geometry is not like that."""
    if geometry.is_row_coupled:
        return None
    M, K = geometry.weight_shape
    elements = geometry.scope_elements(dtype=geometry._scope_elements.dtype)   # narrow ints
    S, gs, bk = elements.shape
    if S % M:
        return None
    T = S // M
    first = elements[:, 0, 0]
    if not torch.equal(first // K, torch.arange(M, dtype=first.dtype).repeat_interleave(T)):
        return None
    cols = elements % K
    flat = cols.view(S, gs * bk)
    start, end = flat.amin(1), flat.amax(1)
    if T > 1 and not bool((start.view(M, T)[:, 1:] > start.view(M, T)[:, :-1]).all()):
        return None
    if bk > 1 and not bool((cols[..., 1:] > cols[..., :-1]).all()):
        return None
    steps = torch.arange(T).repeat(M)
    return RowSteps(cols=cols.view(M, T, gs, bk).long(),
                    scope=torch.arange(S).view(M, T), scope_step=steps,
                    scope_start=start.long(), scope_end=end.long(), n_scopes=S, aligned=True)


def row_groups(layout: RowSteps) -> torch.Tensor:
    """``(M,)`` label of each row's coupling group: rows sharing a scope, transitively, get the
    same label (the group's smallest row)."""
    M = layout.scope.shape[0]
    rows = torch.arange(M, device=layout.scope.device)[:, None].expand_as(layout.scope)
    ok = layout.scope >= 0
    r, s = rows[ok], layout.scope[ok]
    label = torch.arange(M, device=rows.device)
    while True:
        per_scope = torch.full((layout.n_scopes,), M, dtype=torch.long, device=rows.device)
        per_scope.scatter_reduce_(0, s, label[r], "amin")
        new = label.scatter_reduce(0, r, per_scope[s], "amin")
        new = new[new]  # pointer jumping: converge in O(log diameter) rounds
        if torch.equal(new, label):
            return label
        label = new


def row_chunks(layout: RowSteps, chunk_size: int) -> list[torch.Tensor]:
    """Split the rows into chunks of about ``chunk_size`` rows that never cut a coupling group
    (a group larger than ``chunk_size`` is a chunk of its own)."""
    label = row_groups(layout)
    M = label.numel()
    order = torch.argsort(label * M + torch.arange(M, device=label.device))
    _, sizes = torch.unique_consecutive(label[order], return_counts=True)
    chunks, start, current = [], 0, 0
    for size in sizes.tolist():
        if current and current + size > chunk_size:
            chunks.append(order[start:start + current])
            start, current = start + current, 0
        current += size
    chunks.append(order[start:start + current])
    return chunks


def restrict_rows(layout: RowSteps, rows: torch.Tensor) -> RowSteps:
    """The layout of a subset of rows (closed under coupling, see :func:`coupled_closure`);
    scope ids stay global."""
    return RowSteps(layout.cols[rows], layout.scope[rows], layout.scope_step, layout.scope_start,
                    layout.scope_end, layout.n_scopes, layout.aligned)


def coupled_closure(layout: RowSteps, rows: torch.Tensor) -> torch.Tensor:
    """``rows`` plus every row coupled to them (sorted): the smallest row set on which the
    geometry's scopes are whole."""
    label = row_groups(layout)
    return torch.nonzero(torch.isin(label, label[rows])).flatten()


def row_sample(geometry: Geometry, first: int | None = None, every: int | None = None
               ) -> torch.Tensor:
    """Rows for a quick what-if run: the ``first`` N rows, or every ``every``-th row, widened to
    whole coupling groups so the geometry stays valid on them."""
    M = geometry.weight_shape[0]
    if first is not None and every is not None:
        raise ArgumentError("every", "give first or every, not both")
    if first is not None:
        if not 1 <= first <= M:
            raise ArgumentError("first", f"first={first} must be in [1, M={M}]")
        rows = torch.arange(first)
    elif every is not None:
        if not 1 <= every <= M:
            raise ArgumentError("every", f"every={every} must be in [1, M={M}]")
        rows = torch.arange(0, M, every)
    else:
        return torch.arange(M)
    return coupled_closure(row_steps(geometry), rows)
