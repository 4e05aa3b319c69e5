"""The OBS primitives every mode shares: principal submatrices of C, the removal cost
``ε(P) = w_P (C_PP)⁻¹ w_Pᵀ``, the optimal update ``w ← w − w_P (C_PP)⁻¹ C_P,:``, the Schur downdate
``C ← C − C_:,P (C_PP)⁻¹ C_P,:`` and subset selection per scope.

Index sets are padded with ``-1``; a padded position behaves as if absent (identity in C_PP, zero
weight), so one batched call serves sets of different sizes.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from itertools import combinations
from typing import TypeVar

import torch

from obsviz.errors import ArgumentError

#: Subset counts above this are not enumerated; selection falls back to greedy.
MAX_SUBSETS = 10_000


# ---- threads ----------------------------------------------------------------------------------

#: Operations of at least this many flops run on torch's thread count, all others on one thread
#: inside :func:`one_thread` (measured on the shared 2-core machine: two threads gained only on
#: the large products of 384 × 1536 layers, and cost up to 10× on small batched operations).
PARALLEL_FLOPS = 1e8

_state = threading.local()   # .threads: torch's thread count outside one_thread (unset: not inside)


@contextmanager
def one_thread():
    """Run the enclosed operations on one thread, except those that :func:`threads_for` names
    large. Split over several OpenMP threads, a batched operation on tiny systems waits for
    every thread, and on a busy machine for a descheduled one (a batch of 16 32 × 32 Cholesky
    factors: 16 ms with two threads against 0.07 ms with one). Per Python thread: the workers
    of :func:`map_chunks` run on one thread each and never widen."""
    n = torch.get_num_threads()
    if n == 1 or getattr(_state, "threads", 0):
        yield
        return
    _state.threads = n
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _state.threads = 0


@contextmanager
def threads_for(flops: float):
    """Inside :func:`one_thread`: torch's own thread count for an operation of ``flops`` of at
    least ``PARALLEL_FLOPS``, else one thread."""
    n = getattr(_state, "threads", 0)
    if not n or flops < PARALLEL_FLOPS:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(1)


def chunk_workers(device: torch.device | str, threads: int, n_chunks: int) -> int:
    """How many worker threads share a run's independent chunks of rows: on a CPU one per torch
    thread (each then on one thread of its own), at most one per chunk; elsewhere one (a GPU
    already runs each operation wide). Measured on the 2-core machine: a 384 × 1536 ``true_obs``
    2:4 took 4.5 s with two chunks at a time on one thread each, 9.0 s with one chunk at a time
    and two OpenMP threads for its large products (most of its operations are small)."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(threads, n_chunks))


_T = TypeVar("_T")
_R = TypeVar("_R")


def map_chunks(fn: Callable[[_T, int], _R], items: Sequence[_T], workers: int,
               progress: Callable[[int, int], None] | None = None) -> list[_R]:
    """``fn(item, slot)`` for every item, on ``workers`` threads of one torch thread each, the
    results in the items' order. ``slot`` (``0 .. workers − 1``) is the worker's own: no two
    calls at a time share one, so it can name reused buffers. ``progress(done, total)`` is
    called on the caller's thread before the first item and as items finish (it may raise to
    stop: items not started are dropped, the error passes on, as does the first error of
    ``fn``). With one worker everything runs in order on the caller's thread."""
    n = len(items)
    report = progress or (lambda done, total: None)
    if workers <= 1 or n <= 1:
        out = []
        for i, item in enumerate(items):
            report(i, n)
            out.append(fn(item, 0))
        return out
    slots: queue.SimpleQueue[int] = queue.SimpleQueue()
    for s in range(workers):
        slots.put(s)

    def run(item: _T) -> _R:
        torch.set_num_threads(1)
        slot = slots.get()
        try:
            with torch.no_grad():   # grad mode is per thread
                return fn(item, slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(workers, thread_name_prefix="obsviz-chunk") as pool:
        futures = [pool.submit(run, item) for item in items]
        try:
            report(0, n)
            for done, future in enumerate(as_completed(futures), 1):
                future.result()
                if done < n:
                    report(done, n)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return [future.result() for future in futures]


class Workspace:
    """Buffers kept from one chunk of rows to the next: a fresh large tensor costs its page
    faults every time (a 12 MB temporary: 6–9 ms on the 2-core machine). ``take`` returns the
    named buffer's first entries as a tensor of ``shape``, growing it when too small; what it
    held before is not kept, and a taken tensor stays valid only until the name is taken again."""

    def __init__(self, device: torch.device | str):
        self.device = device
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._buffers.get(name)
        if buf is None or buf.dtype != dtype or buf.numel() < n:
            buf = self._buffers[name] = torch.empty(n, dtype=dtype, device=self.device)
        return buf[:n].view(shape)


# ---- small SPD systems ------------------------------------------------------------------------

def spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Solve ``A x = b`` for a batch of small SPD ``A`` ``(..., q, q)``, ``b`` ``(..., q)``.

    Closed forms for q = 1 and 2, a Cholesky solve otherwise (batched ``inv`` has failed inside
    MKL on small CPUs; Cholesky has not).
    """
    q = A.shape[-1]
    if q == 0:
        return b.clone()
    if q == 1:
        return b / A[..., 0, :]
    if q == 2:
        a, c, d = A[..., 0, 0], A[..., 0, 1], A[..., 1, 1]
        det = a * d - c * c
        x0 = (d * b[..., 0] - c * b[..., 1]) / det
        x1 = (a * b[..., 1] - c * b[..., 0]) / det
        return torch.stack((x0, x1), dim=-1)
    L = _cholesky(A)
    return torch.cholesky_solve(b.unsqueeze(-1), L).squeeze(-1)


def _cholesky(A: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(A)
    if int(info.max()) > 0:  # lost definiteness to rounding: retry with a tiny jitter
        eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        scale = torch.diagonal(A, dim1=-2, dim2=-1).abs().mean(-1, keepdim=True).unsqueeze(-1)
        L, info = torch.linalg.cholesky_ex(A + 1e-7 * scale * eye)
        if int(info.max()) > 0:
            raise ArgumentError("damp", "a C_PP block is not positive definite; raise damp")
    return L


def cost(C_PP: torch.Tensor, w_P: torch.Tensor) -> torch.Tensor:
    """``ε = w_P (C_PP)⁻¹ w_Pᵀ`` for a batch: ``(..., q, q)``, ``(..., q)`` → ``(...)``."""
    return (spd_solve(C_PP, w_P) * w_P).sum(-1)


# ---- gathering from C -------------------------------------------------------------------------

def principal(C: torch.Tensor, idx: torch.Tensor, batch: torch.Tensor | None = None
              ) -> torch.Tensor:
    """``C_PP`` for index sets ``idx`` ``(..., q)`` (``-1`` = padding → identity row/column).

    ``C`` is shared ``(K, K)``, or per row ``(B, K, K)`` with ``batch`` ``(...)`` naming the row of
    each set. Returns ``(..., q, q)`` in float32 or wider.
    """
    ok = idx >= 0
    i = idx.clamp(min=0)
    if batch is None:
        sub = C[i.unsqueeze(-1), i.unsqueeze(-2)]
    else:
        sub = C[batch[..., None, None], i.unsqueeze(-1), i.unsqueeze(-2)]
    sub = sub.to(torch.promote_types(sub.dtype, torch.float32))
    both = ok.unsqueeze(-1) & ok.unsqueeze(-2)
    eye = torch.eye(idx.shape[-1], dtype=sub.dtype, device=sub.device)
    return torch.where(both, sub, eye)


def unique_ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(x, return_inverse=True)`` for integer ``x``: by a table over
    ``[min x, max x]`` (one pass and a cumulative sum) when that range is at most a few times
    the size of ``x``, as ids of steps, scopes and patterns are; else by the sort."""
    if x.numel() == 0:
        return torch.unique(x, return_inverse=True)
    lo, hi = (int(v) for v in torch.aminmax(x))
    if hi - lo >= 4 * x.numel() + 4096:
        return torch.unique(x, return_inverse=True)
    shifted = x - lo
    present = torch.zeros(hi - lo + 1, dtype=torch.bool, device=x.device)
    present[shifted] = True
    rank = torch.cumsum(present, 0) - 1
    return torch.nonzero(present).squeeze(1) + lo, rank[shifted]


def gather_masked(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[row, idx]`` for ``x`` ``(R, K)`` and ``idx`` ``(R, ...)``; zero where ``idx`` is -1."""
    flat = idx.reshape(idx.shape[0], -1)
    out = x.gather(1, flat.clamp(min=0)) * (flat >= 0)
    return out.view(idx.shape)


def compact(idx: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Move the entries of ``idx`` ``(..., n)`` where ``keep`` is set to the front; pad with -1.
    The width is the largest count over the batch."""
    keep = keep & (idx >= 0)
    width = int(keep.sum(-1).max()) if keep.numel() else 0
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :width]
    out = idx.gather(-1, order)
    return torch.where(keep.gather(-1, order), out, torch.full_like(out, -1))


# ---- updates ----------------------------------------------------------------------------------

def obs_update_shared(W: torch.Tensor, C: torch.Tensor, P: torch.Tensor,
                      alive: torch.Tensor | None = None) -> None:
    """Remove ``P`` ``(M, q)`` from each row of ``W`` ``(M, K)`` in place with the optimal update
    under a shared ``C``: ``w ← w − w_P (C_PP)⁻¹ C_P,:``, then ``w_P = 0``.

    ``alive`` ``(M, K)`` bool limits the update to columns not pruned yet (it is updated too).
    """
    if P.shape[-1] == 0:
        return
    w_P = gather_masked(W, P)
    z = spd_solve(principal(C, P), w_P).to(W.dtype) * (P >= 0)    # (M, q)
    # δ = Z C[U, :] with U the columns pruned in any row: one GEMM when U is small (a step of a
    # regular geometry touches the same few columns in every row).
    U = torch.unique(P[P >= 0])
    if U.numel() <= 4 * P.shape[1]:
        Z = torch.zeros(W.shape[0], U.numel(), dtype=W.dtype, device=W.device)
        Z.scatter_add_(1, torch.searchsorted(U, P.clamp(min=0)), z)
        delta = Z @ C[U].to(W.dtype)
    else:
        delta = torch.zeros_like(W)
        for q in range(P.shape[1]):  # q is small; each term is an (M, K) row gather of C
            delta.addcmul_(z[:, q:q + 1], C[P[:, q].clamp(min=0)].to(W.dtype))
    if alive is not None:
        delta.mul_(alive)
    W.sub_(delta)
    zero_at(W, P)
    if alive is not None:
        zero_at(alive, P)


def obs_update_per_row(W: torch.Tensor, C: torch.Tensor, P: torch.Tensor,
                       keep_exact: torch.Tensor | slice | None = None) -> None:
    """Remove ``P`` ``(B, q)`` from rows ``W`` ``(B, K)`` whose inverses ``C`` ``(B, K, K)`` are
    their own, in place: the optimal update, then the Schur downdate
    ``C ← C − C_:,P (C_PP)⁻¹ C_P,:`` (so later choices see the pruned weights as fixed at 0).

    ``keep_exact`` names the columns of C that are read afterwards (a slice or sorted indices);
    only they are downdated (an empty set: no downdate). Reads of C must then go through those
    columns (``C[:, :, cols]``), never through its rows. ``None``: all of C."""
    if P.shape[-1] == 0:
        return
    B, K = W.shape
    q = P.shape[1]
    ok = P >= 0
    Pc = P.clamp(min=0)
    C_xP = C.gather(2, Pc.unsqueeze(1).expand(B, K, q))              # (B, K, q)
    work = torch.promote_types(C.dtype, torch.float32)
    C_xP = C_xP.to(work) * ok.unsqueeze(1)
    C_PP = with_identity(C_xP.gather(1, Pc.unsqueeze(2).expand(B, q, q)), ok)
    w_P = gather_masked(W, P).to(work)
    L = _cholesky(C_PP)
    z = torch.cholesky_solve(w_P.unsqueeze(-1), L)                  # (B, q, 1)
    W.sub_(torch.bmm(C_xP, z).squeeze(-1).to(W.dtype))
    zero_at(W, P)
    if keep_exact is None:
        schur_downdate(C, C_xP, L)
    elif isinstance(keep_exact, slice) or keep_exact.numel():
        # C[:, keep] −= C_:,P (C_PP)⁻¹ C_P,keep; (C_PP)⁻¹ from the small factor (a batched
        # triangular solve against K right-hand sides is far slower on CPU).
        G = torch.cholesky_inverse(L) * (ok.unsqueeze(-1) & ok.unsqueeze(-2))
        left = C_xP.to(C.dtype)
        if isinstance(keep_exact, slice):   # in place: no (B, K, |keep|) temporary
            right = torch.bmm(G, C_xP[:, keep_exact].transpose(1, 2)).to(C.dtype)
            C[:, :, keep_exact].baddbmm_(left, right, alpha=-1.0)
        else:   # scattered columns: a temporary of at most 64 columns at a time
            for c in keep_exact.split(64):
                right = torch.bmm(G, C_xP[:, c].transpose(1, 2)).to(C.dtype)
                C.index_add_(2, c, torch.bmm(left, right), alpha=-1)


def schur_downdate(C: torch.Tensor, C_xP: torch.Tensor, L: torch.Tensor) -> None:
    """``C ← C − C_:,P (C_PP)⁻¹ C_P,:`` in place, with ``C_PP = L Lᵀ``: ``F = C_:,P L⁻ᵀ``, then
    ``C −= F Fᵀ`` (one symmetric rank-q update per row)."""
    F = _schur_factor(C_xP, L).to(C.dtype)
    C.baddbmm_(F, F.transpose(1, 2), alpha=-1.0)


def _schur_factor(C_xP: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """``F = C_:,P L⁻ᵀ`` ``(B, K, q)``. ``L⁻¹`` is formed on the small ``q × q`` system (a
    batched triangular solve against ``K`` right-hand sides is far slower on CPU)."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    return torch.bmm(C_xP, L_inv.transpose(1, 2))


def small_spd_inverse(A: torch.Tensor) -> torch.Tensor:
    """``A⁻¹`` for a batch of small SPD ``A`` ``(..., q, q)``: closed forms for q ≤ 2 (batched
    LAPACK calls cost far more than the arithmetic at these sizes), Cholesky otherwise."""
    q = A.shape[-1]
    if q == 0:
        return A.clone()
    if q == 1:
        return 1 / A
    if q == 2:
        f = A.reshape(*A.shape[:-2], 4)
        a, c, d = f[..., 0], f[..., 1], f[..., 3]
        neg_c = -c
        inv = torch.stack((d, neg_c, neg_c, a), -1) / (a * d - c * c).unsqueeze(-1)
        return inv.view(A.shape)
    return torch.cholesky_inverse(_cholesky(A))


def with_identity(C_PP: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """``C_PP`` ``(B, q, q)`` with padding rows/columns (``ok`` False) set to the identity's."""
    both = ok.unsqueeze(-1) & ok.unsqueeze(-2)
    eye = torch.eye(C_PP.shape[-1], dtype=C_PP.dtype, device=C_PP.device)
    return torch.where(both, C_PP, eye)


def pattern_inverses(C_steps: torch.Tensor, pruned: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(C_PP)⁻¹`` of every row's pruned set ``P`` at every step of a shared ``C``, each
    distinct (step, ``P``) inverted once: ``C_steps`` ``(S, m, m)`` the steps' blocks of C,
    ``pruned`` ``(R, S, m)`` bool. Returns ``(G, which)``: ``G`` ``(D, m, m)`` the inverses
    embedded in the step's ``m × m`` (zero off ``P``, so ``G @ w`` is the update's ``z``
    scattered), ``which`` ``(R, S)`` the index into ``G`` of each row's set at each step; or
    ``None`` when steps are wider than 32 columns or there are more sets than rows (then
    nothing is shared, and ``G`` would outgrow one step's per-row inverses). Rows share few
    patterns (an ``n:m`` step has ``C(m, n)``), so this replaces ``R`` small factorizations
    per step by ``D`` in all."""
    R, S, m = pruned.shape
    if m > 32 or m + S.bit_length() > 62:
        return None
    dev = pruned.device
    bits = torch.arange(m, device=dev)
    code = (pruned.long() << bits).sum(-1) + (torch.arange(S, device=dev) << m)   # (R, S)
    uniq, which = unique_ids(code)
    D = uniq.numel()
    if D > R:
        return None
    pattern = ((uniq.unsqueeze(-1) >> bits) & 1).bool()                          # (D, m)
    P = compact(bits.expand(D, m), pattern)                                        # (D, q)
    ok = P >= 0
    Pc = P.clamp(min=0)
    q = P.shape[1]
    Cs = C_steps[uniq >> m]                                                        # (D, m, m)
    C_PP = Cs.gather(1, Pc.unsqueeze(2).expand(D, q, m)).gather(2, Pc.unsqueeze(1).expand(D, q, q))
    both = ok.unsqueeze(-1) & ok.unsqueeze(-2)
    G = small_spd_inverse(with_identity(C_PP, ok)) * both
    out = torch.zeros(D, m * m, dtype=G.dtype, device=dev)
    out.scatter_add_(1, (Pc.unsqueeze(2) * m + Pc.unsqueeze(1)).reshape(D, -1), G.reshape(D, -1))
    return out.view(D, m, m), which


def obs_remove_small(w: torch.Tensor, C: torch.Tensor, P: torch.Tensor, start: int = 0) -> None:
    """The OBS update and Schur downdate of :func:`obs_update_per_row` on small systems: ``w``
    ``(B, n)``, ``C`` ``(B, n, n)`` (views are fine: both are written in place), ``P`` ``(B, q)``
    positions (-1 padded). Only positions from ``start`` on are updated (earlier ones are not
    read again); pruned positions among them are set to exactly 0."""
    B, n = w.shape
    q = P.shape[1]
    if q == 0:
        return
    ok = P >= 0
    padded = not bool(ok.all())
    Pc = P.clamp(min=0) if padded else P
    C_Px = C.gather(1, Pc.unsqueeze(2).expand(B, q, n))                      # (B, q, n)
    C_PP = C_Px.gather(2, Pc.unsqueeze(1).expand(B, q, q))
    w_P = w.gather(1, Pc)
    if padded:
        C_Px = C_Px * ok.unsqueeze(2)
        C_PP = with_identity(C_PP * (ok.unsqueeze(-1) & ok.unsqueeze(-2)), ok)
        w_P = w_P * ok
    G = small_spd_inverse(C_PP)
    if padded:
        G = G * (ok.unsqueeze(-1) & ok.unsqueeze(-2))
    z = torch.bmm(G, w_P.unsqueeze(-1))                                       # (B, q, 1)
    C_Pt = C_Px[:, :, start:]
    w[:, start:].sub_(torch.bmm(z.transpose(1, 2), C_Pt).squeeze(1))
    C[:, start:, start:].sub_(torch.bmm(C_Pt.transpose(1, 2), torch.bmm(G, C_Pt)))  # C: a view
    if padded:
        hit = torch.zeros_like(w).scatter_add_(1, Pc, ok.to(w.dtype))  # add: padding clamps to 0
        w.masked_fill_(hit > 0, 0)
    else:
        w.scatter_(1, P, 0.0)


def principal_per_row(C: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``C_r[idx_r, idx_r]`` ``(B, n, n)`` for per-row ``C`` ``(B, K, K)`` and ``idx`` ``(B, n)``
    (-1 = padding → identity); float32 or wider. Each entry is read at its own row and column
    (only C's columns need be exact, see :func:`obs_update_per_row`)."""
    B, n = idx.shape
    K = C.shape[-1]
    ok = idx >= 0
    i = idx.clamp(min=0)
    if C.is_contiguous():   # the same entries by one gather of the n × n (the two read B·K·n)
        flat = (torch.arange(B, device=idx.device).view(B, 1, 1) * (K * K)
                + i.unsqueeze(2) * K + i.unsqueeze(1))
        sub = C.view(-1).take(flat)
    else:
        sub = C.gather(2, i.unsqueeze(1).expand(B, K, n)).gather(1, i.unsqueeze(2).expand(B, n, n))
    sub = sub.to(torch.promote_types(sub.dtype, torch.float32))
    return sub if bool(ok.all()) else with_identity(sub, ok)


def zero_at(x: torch.Tensor, idx: torch.Tensor) -> None:
    """``x[r, idx[r]] = 0`` for the non-padding entries of ``idx`` ``(R, q)``, in place."""
    ok = idx >= 0
    if ok.any():
        r = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(idx)
        x[r[ok], idx[ok]] = 0


# ---- subsets and selection --------------------------------------------------------------------

def count_subsets(gs: int, n_prune: int, cap: int = MAX_SUBSETS) -> int:
    """``C(gs, np)`` when it is at most ``cap``, else ``cap + 1`` — without computing a huge
    binomial (C(4·10⁶, 2·10⁶) would take minutes)."""
    k = min(n_prune, gs - n_prune)
    if k < 0:
        return 0
    count = 1
    for i in range(k):  # C(gs, i+1) = C(gs, i) (gs - i) / (i + 1), exact at every step
        count = count * (gs - i) // (i + 1)
        if count > cap:
            return cap + 1
    return count


def prune_subsets(gs: int, n_prune: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """All ``C(gs, np)`` pruning subsets as block indices ``(n_sub, np)``, or ``None`` when there
    are more than ``MAX_SUBSETS`` (then selection is greedy)."""
    if count_subsets(gs, n_prune) > MAX_SUBSETS:
        return None
    subsets = list(combinations(range(gs), n_prune))
    return torch.tensor(subsets, dtype=torch.long, device=device).view(len(subsets), n_prune)


def column_sets(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The distinct column sets of entries ``cols`` ``(E, gs, Lb)``: ``(sets (D, gs, Lb),
    which (E,))`` with ``cols == sets[which]``, or ``None`` when there are more than ``E / 4``
    (too few entries share one to be worth grouping)."""
    E = cols.shape[0]
    flat = cols.reshape(E, -1)
    # Candidate groups by a 1-D key (a 1-D unique is cheap), then checked whole: the last column
    # and where the first real one sits (entries of a row-coupled scope hold their own row's
    # blocks and padding for the others', so the first column alone is often -1).
    first_real = (flat >= 0).to(torch.int8).argmax(1)
    key, which = unique_ids(flat.amax(1) * (flat.shape[1] + 1) + first_real)
    if 4 * key.numel() > E:
        return None
    first = torch.full((key.numel(),), E, dtype=torch.long, device=cols.device)
    first.scatter_reduce_(0, which, torch.arange(E, device=cols.device), "amin")
    sets = flat[first]
    if not bool((sets[which] == flat).all()):
        return None
    return sets.view(-1, *cols.shape[1:]), which


def subset_costs(cols: torch.Tensor, w: torch.Tensor, C: torch.Tensor, subsets: torch.Tensor,
                 batch: torch.Tensor | None = None, max_elems: int = 1 << 24) -> torch.Tensor:
    """OBS cost of pruning each subset of blocks, per step entry.

    Args:
        cols: ``(E, gs, Lb)`` W columns of each entry's blocks (-1 padding).
        w: ``(E, gs, Lb)`` the weights there (anything at padding).
        C: shared ``(K, K)`` or per-row ``(B, K, K)`` (then ``batch`` ``(E,)`` names the row).
        subsets: ``(n_sub, np)`` block indices.

    Returns ``(E, n_sub)``: ``ε = w_P (C_PP)⁻¹ w_Pᵀ`` with ``P`` the subset's elements in that row.
    """
    E = cols.shape[0]
    n_sub, n_prune = subsets.shape
    q = n_prune * cols.shape[2]
    out = torch.empty(E, n_sub, dtype=torch.promote_types(C.dtype, torch.float32),
                      device=cols.device)
    groups = column_sets(cols) if batch is None and E > 1 else None
    if groups is not None:
        # A shared C: entries with the same columns (a step of a regular geometry, in every
        # row) share each subset's (C_PP)⁻¹; form those once and only gather them.
        sets, which = groups
        P = sets[:, subsets].reshape(sets.shape[0], n_sub, q)
        G = small_spd_inverse(principal(C, P))                      # (D, n_sub, q, q)
        D = sets.shape[0]
        if E % D == 0 and torch.equal(which.view(-1, D), torch.arange(
                D, device=cols.device).expand(E // D, D)):
            # Entries cycle through the sets (row by row, step by step): one batched
            # product per (set, subset) over all rows.
            wm = (w * (cols >= 0)).view(E // D, D, *cols.shape[1:])
            res = out.view(E // D, D, n_sub)
            n = cols.shape[1] * cols.shape[2]
            if n * n <= 4 * n_sub * q:
                # ε = Σ_ij G_ij w_i w_j over the set's n weights, with each subset's inverse
                # embedded in n × n: one batched product per set of the weights' pairwise
                # products and every subset at once (no reduction over a tiny q).
                pos = (subsets.unsqueeze(-1) * cols.shape[2]
                       + torch.arange(cols.shape[2], device=cols.device)).reshape(n_sub, q)
                flat_pos = (pos.unsqueeze(-1) * n + pos.unsqueeze(-2)).reshape(1, n_sub, q * q)
                Gk = torch.zeros(D, n_sub, n * n, dtype=out.dtype, device=cols.device).scatter_(
                    2, flat_pos.expand(D, -1, -1), G.reshape(D, n_sub, q * q).to(out.dtype))
                step = max(1, max_elems // max(1, D * n * n))
                for r0 in range(0, E // D, step):
                    w_e = wm[r0:r0 + step].reshape(-1, D, n).transpose(0, 1).to(out.dtype)
                    pairs = (w_e.unsqueeze(-1) * w_e.unsqueeze(-2)).reshape(D, -1, n * n)
                    res[r0:r0 + step] = torch.bmm(pairs, Gk.transpose(1, 2)).transpose(0, 1)
                return out
            step = max(1, max_elems // max(1, D * n_sub * q))
            for r0 in range(0, E // D, step):
                w_P = wm[r0:r0 + step][:, :, subsets].reshape(-1, D, n_sub, q)
                w_P = w_P.to(out.dtype)
                wG = torch.einsum("rdsq,dsqp->rdsp", w_P, G)
                res[r0:r0 + step] = (wG * w_P).sum(-1)
            return out
        wm = w * (cols >= 0)
        step = max(1, max_elems // max(1, n_sub * q * q))
        if D <= 256:
            # Few sets: the entries of each set meet its inverses in one batched product.
            order = torch.argsort(which)
            bounds = torch.searchsorted(which[order], torch.arange(D + 1, device=cols.device))
            for d, (a, b) in enumerate(zip(bounds[:-1].tolist(), bounds[1:].tolist(),
                                           strict=True)):
                for e0 in range(a, b, step):
                    sel = order[e0:min(b, e0 + step)]
                    w_P = wm[sel][:, subsets].reshape(-1, n_sub, q).to(out.dtype)
                    wG = torch.einsum("esq,sqp->esp", w_P, G[d])
                    out[sel] = (wG * w_P).sum(-1)
            return out
        for e0 in range(0, E, step):
            e1 = min(E, e0 + step)
            w_P = wm[e0:e1][:, subsets].reshape(e1 - e0, n_sub, q).to(out.dtype)
            outer = w_P.unsqueeze(-1) * w_P.unsqueeze(-2)                 # no tiny matmuls
            out[e0:e1] = (G[which[e0:e1]] * outer).sum((-2, -1))
        return out
    step = max(1, max_elems // max(1, n_sub * q * q))
    for e0 in range(0, E, step):
        e1 = min(E, e0 + step)
        P = cols[e0:e1][:, subsets].reshape(e1 - e0, n_sub, q)
        w_P = (w[e0:e1] * (cols[e0:e1] >= 0))[:, subsets].reshape(e1 - e0, n_sub, q)
        b = None if batch is None else batch[e0:e1, None].expand(-1, n_sub)
        out[e0:e1] = cost(principal(C, P, b), w_P.to(out.dtype))
    return out


def block_scores(cols: torch.Tensor, element_score: torch.Tensor,
                 rows: torch.Tensor) -> torch.Tensor:
    """Sum of a per-element score over each block's elements: ``(E, gs)`` for entries at
    ``rows`` ``(E,)`` with columns ``cols`` ``(E, gs, Lb)``; ``element_score`` is ``(M, K)``."""
    vals = element_score[rows[:, None, None], cols.clamp(min=0)]
    return torch.where(cols >= 0, vals, torch.zeros_like(vals)).sum(-1)  # padding: 0, not NaN·0


def choose_subsets(costs: torch.Tensor, scope: torch.Tensor, subsets: torch.Tensor,
                   gs: int) -> torch.Tensor:
    """Per scope, the subset of least total cost over the scope's entries.

    ``costs`` ``(E, n_sub)``, ``scope`` ``(E,)`` → pruned-block mask per entry ``(E, gs)``."""
    local, inverse = unique_ids(scope)
    total = torch.zeros(local.numel(), costs.shape[1], dtype=costs.dtype, device=costs.device)
    total.index_add_(0, inverse, costs)
    best = total.argmin(1)
    mask = torch.zeros(subsets.shape[0], gs, dtype=torch.bool, device=costs.device)
    mask.scatter_(1, subsets, True)
    return mask[best][inverse]


def choose_blocks(scores: torch.Tensor, scope: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Per scope, the ``np`` blocks of least total score (scores add over the scope's entries).

    ``scores`` ``(E, gs)``, ``scope`` ``(E,)`` → pruned-block mask per entry ``(E, gs)``."""
    local, inverse = unique_ids(scope)
    total = torch.zeros(local.numel(), scores.shape[1], dtype=scores.dtype, device=scores.device)
    total.index_add_(0, inverse, scores)
    idx = total.topk(n_prune, dim=1, largest=False).indices
    mask = torch.zeros_like(total, dtype=torch.bool).scatter_(1, idx, True)
    return mask[inverse]


def select(cols: torch.Tensor, w: torch.Tensor, C: torch.Tensor, scope: torch.Tensor,
           n_prune: int, batch: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    """OBS mask selection for step entries: exhaustive over subsets when their number is at most
    ``MAX_SUBSETS``, else greedy (the ``np`` blocks with the least cost each on their own).

    Returns the pruned-block mask ``(E, gs)`` and whether the selection was greedy.
    """
    gs = cols.shape[1]
    subsets = prune_subsets(gs, n_prune, cols.device)
    if subsets is None:
        singles = torch.arange(gs, device=cols.device)[:, None]
        return choose_blocks(subset_costs(cols, w, C, singles, batch), scope, n_prune), True
    return choose_subsets(subset_costs(cols, w, C, subsets, batch), scope, subsets, gs), False


# ---- true_obs: the factor of the pruned set, and the final refit -------------------------------

def append_factor(Ut: torch.Tensor, n_u: int, wp: torch.Tensor, C_pi: torch.Tensor | None,
                  C: torch.Tensor, pi: torch.Tensor, Q: torch.Tensor, lo: int, hi: int,
                  C_SS: torch.Tensor, ws: Workspace
                  ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Add a batch's pruned positions ``Q`` ``(B, q)`` (-1 padded, in ``[lo, hi)``) to each row's
    factor ``U = L⁻¹ C_P,F`` on the positions still to decide (``hi`` on), in place: ``Ut`` is
    ``Uᵀ`` ``(B, N, ·)``, whose columns ``n_u .. n_u + q`` it writes (a position's factor is
    one contiguous row: the rows at Q are gathered whole, and every product reads plain GEMM
    operands). ``wp`` ``(B, N)`` (``w'``) follows; temporaries live in ``ws``.

    With ``L_new = [[L, 0], [U_Qᵀ, L_QQ]]``: ``L_QQ L_QQᵀ = C'_QQ``, read from the batch's
    downdated system ``C_SS`` ``(B, hi − lo, hi − lo)`` (``C_SS − U_Sᵀ U_S``, as its decisions
    saw it); ``C'_F,Q = C_F,Q − U_Fᵀ U_Q``; the new columns of ``Uᵀ`` ``C'_F,Q L_QQ⁻ᵀ`` and
    ``v_Q = L_QQ⁻¹ w'_Q``, so ``w'_F −= C'_F,Q (C'_QQ)⁻¹ w'_Q``. Positions are those of ``pi``
    ``(B, N)`` (W columns, -1 padding); ``C_pi`` is C in that order when every row shares it,
    else ``C`` is gathered per row. With ``hi`` at the end (no F) only ``L_QQ`` and ``v_Q`` are
    formed.

    Returns the new block row of ``L``, ``(U_Qᵀ, L_QQ)`` ``(B, q, n_u)``, ``(B, q, q)`` (zero
    rows and an identity diagonal at padding), and ``v_Q`` ``(B, q)``: ``v = L⁻¹ w0_P`` grows by
    forward substitution, and :func:`refit_from_factor` needs both."""
    B, q = Q.shape
    N = pi.shape[1]
    dtype = Ut.dtype
    work = torch.promote_types(dtype, torch.float32)
    ok = Q >= 0
    padded = not bool(ok.all())
    Qc = torch.where(ok, Q, lo)   # padding reads position lo (written in every row of Ut)
    flat = (torch.arange(B, device=Q.device).unsqueeze(1) * N + Qc).reshape(-1)
    U_Qt = Ut.view(B * N, Ut.shape[2])[:, :n_u].index_select(0, flat).view(B, q, n_u)   # U_Qᵀ
    if padded:
        U_Qt = U_Qt * ok.unsqueeze(-1)
    L = _cholesky(principal_per_row(C_SS, torch.where(ok, Q - lo, -1)).to(work))   # C'_QQ
    eye = torch.eye(q, dtype=work, device=Q.device)
    L_inv = torch.linalg.solve_triangular(L, eye.expand_as(L), upper=False)
    v = torch.bmm(L_inv, (wp.gather(1, Qc) * ok).unsqueeze(-1))         # (B, q, 1)
    if hi < N:
        width = N - hi
        if C_pi is not None:      # C's rows at Q on F: C_F,Q = (C_Q,F)ᵀ
            C_QF = torch.index_select(C_pi[:, hi:], 0, Qc.reshape(-1),
                                      out=ws.take("C_Q", (B * q, width), dtype))
            C_FQ = C_QF.view(B, q, width).transpose(1, 2)              # (B, |F|, q)
        else:
            cols = pi[:, hi:]
            rows = gather_masked(pi + 1, Q).long() - 1                 # W columns of Q
            C_QF = C[rows.clamp(min=0).unsqueeze(-1), cols.clamp(min=0).unsqueeze(1)]
            C_FQ = (C_QF * (cols >= 0).unsqueeze(1)).to(dtype).transpose(1, 2)
        with threads_for(2.0 * B * q * n_u * width):
            R_F = torch.baddbmm(C_FQ, Ut[:, hi:, :n_u], U_Qt.transpose(1, 2), alpha=-1,
                                out=ws.take("R", (B, width, q), dtype))   # C'_F,Q
        R_F = R_F.to(work)
        if padded:
            R_F = R_F * ok.unsqueeze(1)
        L_inv_t = L_inv.transpose(1, 2)
        with threads_for(2.0 * B * q * q * width):
            if dtype == work:   # the new columns straight into Ut
                torch.bmm(R_F, L_inv_t, out=Ut[:, hi:, n_u:n_u + q])
            else:
                Ut[:, hi:, n_u:n_u + q] = torch.bmm(R_F, L_inv_t).to(dtype)
        wp[:, hi:].sub_(torch.bmm(R_F, torch.bmm(L_inv_t, v)).squeeze(-1).to(wp.dtype))
    return (U_Qt.to(work), L), v.squeeze(-1)


def refit_from_factor(C: torch.Tensor, W0: torch.Tensor, kept: torch.Tensor,
                      L_rows: list[tuple[torch.Tensor, torch.Tensor]], v: list[torch.Tensor],
                      P_cols: list[torch.Tensor]) -> torch.Tensor:
    """The exact refit of rows ``W0`` ``(B, K)`` on their masks ``kept``: pruned weights 0,
    ``w_K = w0_K − C_KP (C_PP)⁻¹ w0_P`` (``= w0_K + H_KK⁻¹ H_KP w0_P``, the minimiser of
    ``(w − w0) H_d (w − w0)ᵀ`` with ``w_P = 0``), from the Cholesky factor ``L Lᵀ = C_PP`` that
    :func:`append_factor` built block row by block row (``L_rows``, ``v = L⁻¹ w0_P``): one back
    substitution ``z = L⁻ᵀ v`` per row, then ``Δ = z C_P,:`` (one product with C).

    ``P_cols`` are the W columns of each block row's pruned elements (-1: padding)."""
    B, K = W0.shape
    work = v[0].dtype if v else torch.promote_types(C.dtype, torch.float32)
    n = sum(v_b.shape[1] for v_b in v)
    y = torch.zeros(B, n, dtype=work, device=W0.device)                 # Σ later zᵀ L_rows
    z_all = []
    end = n
    for (off, L_b), v_b in zip(reversed(L_rows), reversed(v), strict=True):
        n0 = end - v_b.shape[1]
        rhs = (v_b - y[:, n0:end]).unsqueeze(-1)
        z = torch.linalg.solve_triangular(L_b.transpose(1, 2), rhs, upper=True)   # (B, q, 1)
        if n0:
            y[:, :n0].add_(torch.bmm(z.transpose(1, 2), off).squeeze(1))
        z_all.append(z.squeeze(-1))
        end = n0
    if not z_all:
        return W0 * kept
    z = torch.cat(z_all[::-1], 1)                                         # (B, n)
    cols = torch.cat(P_cols, 1)
    z_full = torch.zeros(B, K, dtype=work, device=W0.device).scatter_add_(
        1, cols.clamp(min=0), z * (cols >= 0))
    with threads_for(2.0 * B * K * K):
        delta = z_full @ C.to(work)
    return ((W0.to(work) - delta) * kept).to(W0.dtype)


def refit_kept(Hd: torch.Tensor, W0: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The exact damped refit of rows ``W0`` ``(B, K)`` on their masks ``kept``: pruned weights 0,
    ``w_K = w0_K + H_KK⁻¹ H_KP w0_P`` (the minimiser of ``(w − w0) H_d (w − w0)ᵀ`` with
    ``w_P = 0``). One batched Cholesky of ``H_KK``, per group of rows with the same kept columns."""
    B, K = W0.shape
    work = Hd.dtype
    idx = compact(torch.arange(K, device=W0.device).expand(B, K), kept)  # (B, k), -1 padded
    r = (W0 * ~kept).to(work) @ Hd                                       # H_:P w0_P
    rhs = gather_masked(r, idx)
    key = kept.to(work) @ torch.rand(K, dtype=work, device=W0.device,
                                     generator=torch.Generator(W0.device).manual_seed(0))
    _, which = torch.unique(key, return_inverse=True)
    first = torch.full((int(which.max()) + 1,), B, dtype=torch.long, device=W0.device)
    first.scatter_reduce_(0, which, torch.arange(B, device=W0.device), "amin")
    def H_KK(i: torch.Tensor) -> torch.Tensor:
        if bool((i >= 0).all()):   # no padding: a plain gather
            return Hd[i.unsqueeze(-1), i.unsqueeze(-2)]
        return principal(Hd, i)
    with threads_for(B * idx.shape[1] ** 3 / 3):
        if first.numel() < B and bool((kept[first][which] == kept).all()):
            L = _cholesky(H_KK(idx[first]))[which]                      # one per kept set
        else:
            L = _cholesky(H_KK(idx))
        delta = torch.cholesky_solve(rhs.unsqueeze(-1), L).squeeze(-1) * (idx >= 0)
    out = (W0.to(work) * kept).scatter_add(1, idx.clamp(min=0), delta)
    return out.to(W0.dtype)
