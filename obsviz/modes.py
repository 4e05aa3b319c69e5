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
    flat = e.rows[:, None, None] * W.shape[1] + e.cols.clamp(min=0)
    return W.reshape(-1)[flat] * (e.cols >= 0)


def select_shared(p: Problem, C: torch.Tensor, e: Entries) -> torch.Tensor:
    """Pruned-block mask ``(E, gs)`` from the OBS cost under a shared ``C`` and the current W."""
    pruned, greedy = obs.select(e.cols, weights_at(p.W, e), C, e.scope, p.n_prune)
    if greedy:
        p.notes["selection"] = "greedy"
    return pruned


def mark_pruned(kept: torch.Tensor, e: Entries, pruned_blocks: torch.Tensor) -> None:
    """Clear ``kept`` ``(M, K)`` at the elements of the entries' pruned blocks."""
    hit = pruned_blocks.unsqueeze(-1) & (e.cols >= 0)
    flat = e.rows[:, None, None] * kept.shape[1] + e.cols
    kept.view(-1)[flat[hit]] = False


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
    if local_regular(p, e, pruned, kept) or local_grouped(p, e, pruned):
        return kept
    E, gs, Lb = e.cols.shape
    n = gs * Lb
    q = p.n_prune * Lb
    Wf = p.W.reshape(-1)
    step = max(1, (1 << 22) // (q * n + n))
    for e0 in range(0, E, step):
        sl = slice(e0, min(E, e0 + step))
        idx = e.cols[sl].reshape(-1, n)
        ok = idx >= 0
        flat = e.rows[sl, None] * p.W.shape[1] + idx.clamp(min=0)       # (e, n) into W
        w = (Wf[flat] * ok).to(p.C.dtype)
        pm = (pruned[sl].unsqueeze(-1) & (e.cols[sl] >= 0)).reshape(-1, n)
        pos = obs.compact(torch.arange(n, device=idx.device).expand_as(idx), pm)  # (e, q')
        okP = pos >= 0
        pc = pos.clamp(min=0)
        K = p.C.shape[0]
        C_PS = p.C.reshape(-1)[idx.gather(1, pc).clamp(min=0).unsqueeze(-1) * K
                               + idx.clamp(min=0).unsqueeze(1)]
        C_PS = C_PS * (okP.unsqueeze(-1) & ok.unsqueeze(1))              # (e, q', n)
        G = obs.small_spd_inverse(obs.with_identity(C_PS.gather(
            2, pc.unsqueeze(1).expand(-1, pos.shape[1], -1)), okP))
        G = G * (okP.unsqueeze(-1) & okP.unsqueeze(-2))
        z = (G @ (w.gather(1, pc) * okP).unsqueeze(-1)).transpose(1, 2)  # (e, 1, q')
        new = torch.where(pm, torch.zeros_like(w), w - (z @ C_PS).squeeze(1))
        Wf[flat[ok]] = new[ok].to(p.W.dtype)
    return kept


def local_grouped(p: Problem, e: Entries, pruned: torch.Tensor, max_groups: int = 1024) -> bool:
    """``local``'s compensation when few (column set, pruned blocks) pairs cover all entries (a
    row-coupled geometry such as ``block16``: each row's entries hold its own blocks and padding
    for the other rows'): per pair ``(C_PP)⁻¹ C_P,S`` is formed once and applied to its entries
    together. Returns False (nothing done) when the entries do not group like that."""
    E, gs, Lb = e.cols.shape
    if gs > 30:       # the pair key below is the set's index times 2^gs plus the pruned bits
        return False
    groups = obs.column_sets(e.cols)
    if groups is None:
        return False
    sets, which = groups
    bits = 1 << torch.arange(gs, device=pruned.device)
    pair, inverse = obs.unique_ids(which * (1 << gs) + (pruned.long() * bits).sum(1))
    if pair.numel() > max_groups:
        return False
    order = torch.argsort(inverse)
    bounds = torch.searchsorted(inverse[order], torch.arange(pair.numel() + 1,
                                                             device=order.device)).tolist()
    for g in range(pair.numel()):
        sel = order[bounds[g]:bounds[g + 1]]
        cols = e.cols[sel[0]]                                            # (gs, Lb), one set
        real = cols >= 0
        S = cols[real]                                                   # the scope's columns
        in_P = (pruned[sel[0]].unsqueeze(-1) & real)[real]              # which of S are pruned
        if not bool(in_P.any()):
            continue
        P = S[in_P]
        G = obs.small_spd_inverse(p.C[P.unsqueeze(-1), P.unsqueeze(-2)].unsqueeze(0))[0]
        comp = G @ p.C[P.unsqueeze(-1), S.unsqueeze(-2)]                 # (q, n)
        rows = e.rows[sel]
        w = p.W[rows.unsqueeze(-1), S].to(comp.dtype)                    # (entries, n)
        new = w - w[:, in_P] @ comp
        new[:, in_P] = 0
        p.W[rows.unsqueeze(-1), S] = new.to(p.W.dtype)
    return True


def local_regular(p: Problem, e: Entries, pruned: torch.Tensor, kept: torch.Tensor) -> bool:
    """``local``'s compensation when the entries run row by row through the same ``D`` column
    sets (a column-regular layout without padding, every row holding every step): per (set,
    subset) the compensation ``(C_PP)⁻¹ C_P,S`` is formed once, and each entry applies its own.
    Returns False (nothing done) when the layout is not like that."""
    E, gs, Lb = e.cols.shape
    M = p.W.shape[0]
    if E % M or not bool((e.cols >= 0).all()):
        return False
    D = E // M
    cols = e.cols.view(M, D, gs, Lb)
    if not (torch.equal(e.rows, torch.arange(M, device=e.rows.device).repeat_interleave(D))
            and bool((cols == cols[:1]).all())):
        return False
    subsets = obs.prune_subsets(gs, p.n_prune, p.W.device)
    if subsets is None or gs > 62:
        return False
    n, q = gs * Lb, p.n_prune * Lb
    within = torch.arange(Lb, device=p.W.device)
    Ppos = (subsets.unsqueeze(-1) * Lb + within).reshape(-1, q)            # (n_sub, q) in S
    # The subset index of every entry's pruned blocks, through their bit codes.
    bits = 1 << torch.arange(gs, device=p.W.device)
    sub_code = (bits[subsets]).sum(1)
    order = torch.argsort(sub_code)
    which = order[torch.searchsorted(sub_code[order], (pruned.long() * bits).sum(1))]
    which = which.view(M, D)
    S = cols[0].reshape(D, n)
    C_SS = p.C[S.unsqueeze(-1), S.unsqueeze(-2)]                              # (D, n, n)
    C_PS = C_SS[:, Ppos]                                                      # (D, n_sub, q, n)
    G = obs.small_spd_inverse(C_PS.gather(3, Ppos[None, :, None, :].expand(D, -1, q, -1)))
    comp = G @ C_PS                                                           # (D, n_sub, q, n)
    flat_S = S.reshape(-1)
    n_sub = subsets.shape[0]
    # With few subsets and large blocks (block16 row-wise: 2 subsets, each a (16, 32)
    # compensation), each entry's pruned weights are placed in the slot of its subset (zeros in
    # the others) and meet every subset's compensation in one batched product per column set:
    # n_sub times the multiply-adds, but no per-entry gather of a (q, n) compensation.
    spread = n_sub <= 4 and q * n >= 64
    comp_d = comp.reshape(D, n_sub * q, n)
    step = max(1, (1 << 22) // max(1, D * (n_sub * q + n) if spread else D * q * n))
    for r0 in range(0, M, step):
        r1 = min(M, r0 + step)
        w = p.W[r0:r1, flat_S].view(r1 - r0, D, n).to(comp.dtype)
        idx = which[r0:r1]                                                    # (R, D)
        w_P = w.gather(2, Ppos[idx])                                          # (R, D, q)
        if spread:
            u = w.new_zeros(r1 - r0, D, n_sub, q)
            u.scatter_(2, idx[..., None, None].expand(-1, -1, 1, q), w_P.unsqueeze(2))
            delta = torch.bmm(u.view(r1 - r0, D, -1).transpose(0, 1), comp_d).transpose(0, 1)
        else:
            c = comp[torch.arange(D, device=w.device), idx]                  # (R, D, q, n)
            delta = (w_P.unsqueeze(-2) @ c).squeeze(-2)
        new = (w - delta) * kept[r0:r1, flat_S].view(r1 - r0, D, n)
        p.W[r0:r1, flat_S] = new.reshape(r1 - r0, -1).to(p.W.dtype)
    return True


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
    regular = column_regular(layout)
    if regular:   # every row holds the same columns at each step: row 0 tells
        valid, steps = valid[:1], steps[:1]
    last_step = torch.full((K,), -1, dtype=torch.long, device=p.W.device)
    last_step.scatter_reduce_(0, layout.cols[:valid.shape[0]][valid], steps[valid], "amax")
    alive = None if regular else torch.ones(M, K, dtype=p.W.dtype, device=p.W.device)
    for t0 in range(0, T, per_chunk):
        t1 = min(T, t0 + per_chunk)
        C = p.C if t0 == 0 else restricted_inverse(p.Hd, last_step >= t0)
        if reselect:
            e = entries(layout, t0, t1)
            mark_pruned(kept, e, select_shared(p, C, e))
        if regular:
            compensate_steps(p, C, kept, t0, t1)
            continue
        for t in range(t0, t1):
            obs.obs_update_shared(p.W, C, pruned_at_step(layout, kept, t), alive)
            if t % 16 == 0:
                p.progress(t / T, f"scope step {t + 1}/{T}")
    if regular:   # later chunks neither read nor (with C zero on frozen columns) move them
        p.W.mul_(kept)
    return kept


#: Columns whose updates are applied step by step before the rest of W catches up (as
#: SparseGPT's lazy batches).
LAZY_COLUMNS = 128


def column_regular(layout: RowSteps) -> bool:
    """Whether every row's step ``t`` holds the same columns, for every ``t`` (all presets)."""
    return bool((layout.cols == layout.cols[:1]).all())


def compensate_steps(p: Problem, C: torch.Tensor, kept: torch.Tensor, t0: int, t1: int) -> None:
    """Steps ``t0 .. t1-1`` of ``full``/``split``/``interleaved`` on a column-regular layout: each
    row removes its pruned elements of the step with the OBS update under the shared ``C``.

    A pruned element is only read at its own step, so updates to already-pruned columns need
    not be masked: the caller zeroes them once every step is done. Steps are taken in
    blocks of about ``LAZY_COLUMNS`` columns: inside a block the update touches the block's
    columns alone; the rest of W receives the block's accumulated update in one product. The
    rows share C, so each distinct pruned set of a step is inverted once
    (:func:`obs.pattern_inverses`) when few are; else every row's at every step."""
    W = p.W
    M = W.shape[0]
    U = p.layout.cols[0, t0:t1].reshape(t1 - t0, -1)                   # (steps, m)
    m = U.shape[1]
    per_block = max(1, LAZY_COLUMNS // m)
    for b0 in range(0, t1 - t0, per_block):
        b1 = min(t1 - t0, b0 + per_block)
        Ub = U[b0:b1].reshape(-1)
        ok = Ub >= 0
        Uc = Ub.clamp(min=0)
        C_rows = C[Uc]                                                  # (nb, K)
        Cb = C_rows[:, Uc] * (ok[:, None] & ok[None, :])                # (nb, nb)
        Wb = W[:, Uc] * ok
        pruned_b = ~kept[:, Uc] & ok
        nb = b1 - b0
        Z = W.new_zeros(nb, M, m)       # the steps' updates z (zero off P, so at padding too)
        Cd = Cb.view(nb, m, nb, m).diagonal(dim1=0, dim2=2).permute(2, 0, 1)   # (nb, m, m)
        inverses = obs.pattern_inverses(Cd, pruned_b.view(M, nb, m))
        for s in range(nb):
            sl = slice(s * m, (s + 1) * m)
            if inverses is not None:
                G, which = inverses
                torch.bmm(G[which[:, s]], Wb[:, sl].unsqueeze(-1), out=Z[s].unsqueeze(-1))
            else:
                P = obs.compact(torch.arange(m, device=W.device).expand(M, m), pruned_b[:, sl])
                if P.shape[1] == 0:
                    continue
                okP = P >= 0
                Pc = P.clamp(min=0)
                Cm = Cb[sl, sl]
                G = obs.small_spd_inverse(obs.with_identity(Cm[Pc[:, :, None], Pc[:, None, :]],
                                                            okP))
                z = (G @ (Wb[:, sl].gather(1, Pc) * okP).unsqueeze(-1)).squeeze(-1) * okP
                Z[s].scatter_add_(1, Pc, z)
            Wb.addmm_(Z[s], Cb[sl], alpha=-1)
        W.sub_(Z.transpose(0, 1).reshape(M, nb * m) @ C_rows)          # the rest of W
        W[:, Uc[ok]] = Wb[:, ok]                                        # the block's own
        p.progress((t0 + b1) / p.layout.n_steps, f"scope step {t0 + b1}/{p.layout.n_steps}")


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
    """Exact OBS per row (see :func:`true_obs_steps`). On a CPU, chunks of rows run side by side,
    one per torch thread, each on one thread (:func:`obs.chunk_workers`); a run of one chunk
    runs on one thread but for the large products (:func:`obs.one_thread`). Plain version:
    :func:`obsviz.reference.true_obs`."""
    threads = torch.get_num_threads()
    with obs.one_thread():
        return true_obs_steps(p, ng, chunk_size, order, scoring, c_dtype, threads)


def true_obs_steps(p: Problem, ng: int, chunk_size: int, order: str, scoring: str,
                   c_dtype: torch.dtype, threads: int = 1) -> torch.Tensor:
    """Exact OBS per row: each decision sees every earlier one of its row (the row's C is the
    inverse of H_d on the columns it still has).

    Per chunk of rows the state is small: the columns are put in decision order (batch after
    batch of ``ng`` steps), and each row keeps a factor ``U = L⁻¹ C_P,F`` of its pruned set P on
    the columns F still to decide (``L Lᵀ = C_PP``), with ``w'_F = w_F − vᵀ U_F``. A batch's
    small system is ``C_SS − U_Sᵀ U_S`` (decided by :func:`decide_batch`); its pruned set Q then
    appends ``q`` rows to U (one product of ``q × |P| × |F|``). Once the mask is decided, the
    kept weights are the exact damped refit ``w_K = w0_K − C_KP (C_PP)⁻¹ w0_P``
    (:func:`obs.refit_from_factor`, from the Cholesky factor of ``C_PP`` the batches built; with
    an fp16/bf16 C, from ``H_KK`` instead, :func:`obs.refit_kept`): a sequence of OBS removals
    composes exactly to it. Chunks are independent: up to ``threads`` of them run at a time
    (:func:`obs.map_chunks`), each worker reusing its own buffers (:class:`obs.Workspace`).

    Plain version, one row, one step and one subset at a time: :func:`obsviz.reference.true_obs`
    (the same masks and weights; ``ng`` and ``chunk_size`` only change the speed)."""
    layout = p.layout
    M, K = p.W.shape
    coupled = shares_scopes(layout)
    chunks = row_chunks(layout, chunk_size)
    if coupled and not layout.aligned:
        raise ArgumentError(
            "method",
            "method='true_obs' on a row-coupled geometry needs every scope at the same step in "
            "all its rows; this geometry's scopes are not aligned across rows")
    step_order = scope_step_order(p) if order == "largest_first" else torch.arange(
        layout.n_steps, device=p.W.device)
    kept = torch.ones(M, K, dtype=torch.bool, device=p.W.device)
    batches = [step_order[i:i + ng] for i in range(0, layout.n_steps, ng)]
    first = (first_batch_decisions(p, batches[0], chunk_size, c_dtype)
             if scoring == "independent" and not coupled and batches else None)
    gs, Lb = layout.cols.shape[2:]
    m = gs * Lb
    bounds = [0]
    for ts in batches:
        bounds.append(bounds[-1] + ts.numel() * m)
    order_all = torch.cat(batches) if batches else step_order
    pi_all = layout.cols[:, order_all].reshape(M, -1)                   # (M, N) decision order
    N = pi_all.shape[1]
    shared = bool((pi_all == pi_all[:1]).all())
    C = p.C.to(c_dtype)
    C_pi = obs.principal(C, pi_all[0]).to(c_dtype) if shared else None   # (N, N)
    work = torch.promote_types(c_dtype, torch.float32)
    exact_factor = c_dtype == work
    # rows U can get: the pruned elements of every batch but the last (no columns after it)
    cap = (layout.n_steps - (batches[-1].numel() if batches else 0)) * p.n_prune * Lb
    workers = obs.chunk_workers(p.W.device, threads, len(chunks))
    spaces = [obs.Workspace(p.W.device) for _ in range(workers)]

    def prune_chunk(rows: torch.Tensor, slot: int) -> None:
        ws = spaces[slot]
        B = rows.numel()
        pi = pi_all[rows]
        W0 = p.W[rows]
        wp = obs.gather_masked(W0, pi).to(work)                             # w' in decision order
        # Uᵀ: only the positions and columns written are ever read (batch b's from its end on)
        Ut = ws.take("Ut", (B, N, cap), c_dtype)
        n_u = 0
        kept_c = torch.ones_like(W0, dtype=torch.bool)
        scope_c = layout.scope[rows]
        L_rows, v, P_cols = [], [], []                                  # L Lᵀ = C_PP, v = L⁻¹ w0_P
        for bi, ts in enumerate(batches):
            lo, hi = bounds[bi], bounds[bi + 1]
            S = pi[:, lo:hi]
            if not bool((S >= 0).any()):
                continue
            U_St = Ut[:, lo:hi, :n_u]                                   # U_Sᵀ (B, n, n_u)
            if shared:
                C_SS = C_pi[lo:hi, lo:hi].expand(B, -1, -1)
            else:
                C_SS = obs.principal(C, S).to(c_dtype)
            C_SS = torch.baddbmm(C_SS, U_St, U_St.transpose(1, 2), alpha=-1).to(work)
            if bi == 0 and first is not None:
                pruned_S = first[rows]
            else:
                pruned_S = decide_batch(p, C_SS.clone(), wp[:, lo:hi].clone(), S,
                                        scope_c[:, ts], (gs, Lb), scoring, coupled)
            Q = obs.compact(torch.arange(lo, hi, device=S.device).expand(B, -1), pruned_S)
            if Q.shape[1] == 0:
                continue
            Q_cols = obs.gather_masked(pi + 1, Q).long() - 1                # W columns of Q
            obs.zero_at(kept_c, Q_cols)
            rows_b, v_b = obs.append_factor(Ut, n_u, wp, C_pi, C, pi, Q, lo, hi, C_SS, ws)
            L_rows.append(rows_b)
            v.append(v_b)
            P_cols.append(Q_cols)
            n_u += Q.shape[1]
        if exact_factor:
            p.W[rows] = obs.refit_from_factor(p.C, W0, kept_c, L_rows, v, P_cols)
        else:   # a factor in a low-precision C is only that exact: the refit is from H
            p.W[rows] = obs.refit_kept(p.Hd, W0, kept_c)
        kept[rows] = kept_c   # chunks hold disjoint rows: workers never write the same entry

    obs.map_chunks(prune_chunk, chunks, workers, lambda done, total: p.progress(
        done / total, f"chunks of rows done: {done}/{total}"))
    return kept


def first_batch_decisions(p: Problem, steps: torch.Tensor, chunk_size: int,
                          c_dtype: torch.dtype) -> torch.Tensor | None:
    """The first batch's masks of every row, decided for many rows at a time.

    Every row enters the first batch with the shared C and its original weights, so its small
    system needs no factor yet: rows are taken in groups as large as the memory of one chunk's
    factors allows (far fewer steps of Python for the same arithmetic). Only for the
    case :func:`decide_batch_independent` covers; ``None`` otherwise (e.g. padding)."""
    layout = p.layout
    M, K = p.W.shape
    cols = layout.cols[:, steps]                                          # (M, nt, gs, Lb)
    S = cols.reshape(M, -1)
    if not bool((S >= 0).all()):
        return None
    nt, gs, Lb = cols.shape[1:]
    n = S.shape[1]
    C = p.C.to(c_dtype)
    per_row = 12 * n * n + 8 * n
    budget = min(M, chunk_size) * (K * K * C.element_size() + per_row + 4 * K * n)
    group = max(chunk_size, budget // per_row)
    regular = bool((S == S[:1]).all())
    out = torch.zeros(M, n, dtype=torch.bool, device=p.W.device)
    for g0 in range(0, M, group):
        rows = torch.arange(g0, min(M, g0 + group), device=p.W.device)
        if regular:   # the same columns in every row: one gather, shared
            C_SS = obs.principal(C, S[0]).expand(rows.numel(), n, n)
        else:
            C_SS = obs.principal(C, S[rows])                              # (B, n, n)
        w_S = obs.gather_masked(p.W[rows], S[rows]).to(C_SS.dtype)
        out[rows] = decide_batch_independent(p, C_SS, w_S, nt, gs, Lb)
    return out


def shares_scopes(layout: RowSteps) -> bool:
    """Whether some scope holds elements of several rows (a row-coupled geometry)."""
    s = layout.scope[layout.scope >= 0]
    return s.numel() > 0 and int(torch.bincount(s, minlength=layout.n_scopes).max()) > 1


#: Steps decided on one contiguous small system inside a batch (see :func:`decide_batch`).
SUB_STEPS = 8


def decide_batch(p: Problem, C_SS: torch.Tensor, w_S: torch.Tensor, S: torch.Tensor,
                 scope: torch.Tensor, block_shape: tuple[int, int], scoring: str,
                 coupled: bool = True) -> torch.Tensor:
    """The masks of one batch of steps, decided one step after another.

    The decisions only read C and w on the batch's own columns ``S`` ``(B, n)``, so they run on
    the small system ``(C_SS, w_S)`` (both written in place), which the same OBS update + Schur
    downdate keeps exact after each step. So every decision sees all earlier ones, whatever
    ``ng`` is. Without ``coupled`` (no scope spans two rows) each row chooses its own blocks.

    The same composition is used once more inside the batch: ``SUB_STEPS`` steps at a time are
    decided on their own (smaller) system, and their union is then removed from the rest of the
    batch's system in one update.

    Returns ``(B, n)`` bool: the positions of ``S`` pruned.
    """
    B, n = S.shape
    gs, Lb = block_shape
    m = gs * Lb
    nt = scope.shape[1]
    valid = (S >= 0).view(B, nt, gs, Lb)
    present = (scope >= 0).any(0).tolist()
    full = bool(valid.all())
    if full and scoring == "independent" and not coupled:
        return decide_batch_independent(p, C_SS, w_S, nt, gs, Lb)
    pruned_S = torch.zeros(B, n, dtype=torch.bool, device=S.device)
    for s0 in range(0, nt, SUB_STEPS):
        s1 = min(nt, s0 + SUB_STEPS)
        lo, hi = s0 * m, s1 * m
        if not any(present[s0:s1]):
            continue
        C2, w2 = C_SS[:, lo:hi, lo:hi].clone(), w_S[:, lo:hi].clone()
        diag = torch.diagonal(C2, dim1=-2, dim2=-1)                     # a view: follows updates
        for j in range(s0, s1):
            if present[j]:
                pruned_S[:, j * m:(j + 1) * m] = decide_step(
                    p, w2, C2, diag, (j - s0) * m, valid[:, j], scope[:, j], scoring, coupled, full)
        if hi < n:   # remove the sub-batch's pruned positions from the rest of the system
            P = obs.compact(torch.arange(lo, hi, device=S.device).expand(B, -1),
                            pruned_S[:, lo:hi])
            obs.obs_remove_small(w_S[:, lo:], C_SS[:, lo:, lo:], torch.where(P >= 0, P - lo, -1),
                                 start=hi - lo)
    return pruned_S


def decide_batch_independent(p: Problem, C_SS: torch.Tensor, w_S: torch.Tensor, nt: int,
                             gs: int, Lb: int) -> torch.Tensor:
    """:func:`decide_batch` for the common case — independent scoring, no scope over two rows,
    no padding — with the fewest operations per step.

    The weights ride along as one more row and column of the system,
    ``A = [[C_SS, w_Sᵀ], [w_S, ·]]``: eliminating ``P`` from ``A`` (its Schur complement) is the
    OBS update of ``w`` and the downdate of ``C`` at once. Pruned positions of ``w`` are left as
    they are (rounding-size values): they are not read again here, and the pruned mask is what
    the caller applies."""
    B, n = w_S.shape
    m = gs * Lb
    A = torch.empty(B, n + 1, n + 1, dtype=C_SS.dtype, device=C_SS.device)
    A[:, :n, :n] = C_SS
    A[:, n, :n] = w_S
    A[:, :n, n] = w_S
    A[:, n, n] = 0
    pruned_S = torch.zeros(B, n, dtype=torch.bool, device=w_S.device)
    within = torch.arange(Lb, device=w_S.device)
    for s0 in range(0, nt, SUB_STEPS):
        s1 = min(nt, s0 + SUB_STEPS)
        lo, hi = s0 * m, s1 * m
        sel = torch.cat((torch.arange(lo, hi, device=w_S.device),
                         torch.tensor([n], device=w_S.device)))
        A2 = A.index_select(1, sel).index_select(2, sel)                # (B, m2 + 1, m2 + 1)
        d = torch.diagonal(A2, dim1=-2, dim2=-1)
        chosen = []
        for a in range(0, hi - lo, m):
            w_j = A2[:, -1, a:a + m]
            score = w_j * w_j / d[:, a:a + m]
            if Lb > 1:
                score = score.view(B, gs, Lb).sum(-1)
            idx = score.topk(p.n_prune, dim=1, largest=False).indices
            P = a + (idx if Lb == 1 else (idx.unsqueeze(-1) * Lb + within).reshape(B, -1))
            chosen.append(P)
            schur_eliminate(A2, P, a)
        P = torch.cat(chosen, 1)                                        # relative to lo
        pruned_S[:, lo:hi].scatter_(1, P, True)
        if hi < n:   # the sub-batch's removals, on the rest of the batch's system
            schur_eliminate(A[:, lo:, lo:], P, hi - lo)
    return pruned_S


def schur_eliminate(A: torch.Tensor, P: torch.Tensor, start: int) -> None:
    """``A ← A − A_:,P (A_PP)⁻¹ A_P,:`` on ``A[:, start:, start:]`` (in place; ``A`` ``(B, n, n)``
    symmetric, ``P`` ``(B, q)`` positions without padding)."""
    B, n, _ = A.shape
    q = P.shape[1]
    rows = A.gather(1, P.unsqueeze(2).expand(B, q, n))                  # (B, q, n)
    G = obs.small_spd_inverse(rows.gather(2, P.unsqueeze(1).expand(B, q, q)))
    tail = rows[:, :, start:]
    A[:, start:, start:].sub_(torch.bmm(tail.transpose(1, 2), torch.bmm(G, tail)))


def decide_step(p: Problem, w: torch.Tensor, C: torch.Tensor, diag: torch.Tensor, a0: int,
                ok: torch.Tensor, scope_j: torch.Tensor, scoring: str, coupled: bool,
                full: bool = False) -> torch.Tensor:
    """Decide one step whose elements sit at positions ``a0 .. a0 + gs·Lb`` of the small system
    ``(w, C)`` ``(B, n)``, ``(B, n, n)`` (``diag`` is C's diagonal), then remove the pruned ones
    from it (from ``a0`` on: earlier positions are not read again). ``ok`` ``(B, gs, Lb)``: real
    elements; ``scope_j`` ``(B,)``: each row's scope at this step (-1: none); ``full``: every
    element is real (no padding anywhere in the step).

    Returns the ``(B, gs·Lb)`` pruned mask of the step."""
    B, gs, Lb = ok.shape
    m = gs * Lb
    if scoring == "independent" and not coupled:
        w_j = w[:, a0:a0 + m].view(B, gs, Lb)
        score = w_j * w_j / diag[:, a0:a0 + m].view(B, gs, Lb)
        score = (score if full else torch.where(ok, score, 0)).sum(-1)
        idx = score.topk(p.n_prune, dim=1, largest=False).indices      # (B, np)
        if full:   # every element real: no padding to mask
            P = idx if Lb == 1 else (idx.unsqueeze(-1) * Lb + torch.arange(
                Lb, device=w.device)).reshape(B, -1)
            obs.obs_remove_small(w[:, a0:], C[:, a0:, a0:], P)
            return torch.zeros(B, m, dtype=torch.bool, device=w.device).scatter_(1, P, True)
    else:
        here = torch.arange(a0, a0 + m, device=w.device).view(gs, Lb)
        r = torch.nonzero(scope_j >= 0).flatten()
        pos = torch.where(ok[r], here, -1)                              # (E, gs, Lb)
        e = Entries(r, torch.zeros_like(r), pos, scope_j[r])
        if scoring == "independent":
            pruned = obs.choose_blocks(obs.block_scores(pos, w * w / diag, r), e.scope,
                                       p.n_prune)
        else:
            pruned, greedy = obs.select(pos, weights_at(w, e), C, e.scope, p.n_prune, batch=r)
            if greedy:
                p.notes["selection"] = "greedy"
        blocks = torch.zeros(B, gs, device=w.device)
        blocks[r] = pruned.to(blocks.dtype)
        idx = blocks.topk(p.n_prune, dim=1).indices                     # rows without it: no P
    okP = ok.gather(1, idx.unsqueeze(-1).expand(-1, -1, Lb)).reshape(B, -1)
    within = torch.arange(Lb, device=w.device)
    P = torch.where(okP, (idx.unsqueeze(-1) * Lb + within).reshape(B, -1), -1)
    obs.obs_remove_small(w[:, a0:], C[:, a0:, a0:], P)
    chosen = torch.zeros(B, gs, dtype=torch.bool, device=w.device).scatter_(1, idx, True)
    return (chosen.unsqueeze(-1) & ok).reshape(B, m)


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
