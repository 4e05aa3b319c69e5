"""The layer Hessian ``H = XᵀX / N``, its damping and its inverse ``C = H_d⁻¹``."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from obsviz.errors import ArgumentError


class HessianAccumulator:
    """Accumulates ``H = XᵀX / N`` over batches of calibration inputs ``X`` ``(n, K)``, so N can be
    far larger than memory (the way SparseGPT hooks a layer)."""

    def __init__(self, K: int, dtype: torch.dtype = torch.float64, device: str = "cpu") -> None:
        self.H = torch.zeros(K, K, dtype=dtype, device=device)
        self.nsamples = 0

    def add(self, X: torch.Tensor) -> None:
        X = X.reshape(-1, X.shape[-1]).to(self.H)
        if X.shape[1] != self.H.shape[0]:
            raise ArgumentError(
                "X", f"inputs have {X.shape[1]} features but the Hessian is {tuple(self.H.shape)}")
        n = X.shape[0]
        if n == 0:
            return
        total = self.nsamples + n
        # Running mean keeps the scale of H independent of N.
        self.H.mul_(self.nsamples / total).addmm_(X.T, X, alpha=1.0 / total)
        self.nsamples = total

    def result(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.H.to(dtype)


def hessian_from_inputs(X: torch.Tensor | Iterable[torch.Tensor], batch: int = 4096) -> tuple[
        torch.Tensor, int]:
    """``H = XᵀX / N`` from ``(N, K)`` inputs (or an iterable of ``(n, K)`` batches).

    Returns ``(H (K, K) float32, N)``.
    """
    chunks = [X[i:i + batch] for i in range(0, X.shape[0], batch)] if isinstance(
        X, torch.Tensor) else X
    acc = None
    for chunk in chunks:
        if acc is None:
            acc = HessianAccumulator(chunk.shape[-1])
        acc.add(chunk)
    if acc is None:
        raise ArgumentError("X", "X is empty: no calibration inputs to build a Hessian from")
    return acc.result(), acc.nsamples


def dead_columns(H: torch.Tensor) -> torch.Tensor:
    """``(K,)`` bool: inputs that never fire (zero Hessian diagonal)."""
    return torch.diagonal(H) == 0


#: The damping ``prune`` uses unless told otherwise (relative: 1 % of the mean diagonal).
DAMP_DEFAULT = 0.01
#: The largest damping accepted. Below 1 damping is relative (``λ = damp · mean(diag H)``), from 1
#: on it is ``λ`` itself; past 10⁶ H no longer matters and every OBS mode is magnitude pruning.
DAMP_MAX = 1e6


def check_damp(damp: float) -> float:
    """``damp`` as a float, or an ``ArgumentError("damp")`` unless it is a number in
    ``[0, DAMP_MAX]``: the one check of every damping obsviz takes (``prune``, the pages, the
    command line and sweep specs)."""
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not (
            math.isfinite(damp) and 0 <= damp <= DAMP_MAX):
        raise ArgumentError(
            "damp", f"damp={damp!r} must be a number from 0 to {DAMP_MAX:g}: below 1 it is "
            "relative (λ = damp × mean(diag H), e.g. 0.01), from 1 on it is λ itself")
    return float(damp)


def damping(H: torch.Tensor, damp: float) -> float:
    """``λ = damp * mean(diag H)`` when ``damp < 1`` (relative damping, as SparseGPT), else
    ``λ = damp`` (absolute)."""
    if damp < 1:
        return float(damp * torch.diagonal(H).double().mean())   # a float32 sum can overflow
    return float(damp)


def damped(H: torch.Tensor, damp: float) -> torch.Tensor:
    """``H_d = H + λI`` with dead inputs given a unit diagonal (as SparseGPT does)."""
    Hd = H.clone()
    diag = torch.diagonal(Hd)
    diag[dead_columns(H)] = 1.0
    diag += damping(H, damp)
    return Hd


def check_hessian(H: torch.Tensor, damp: float | None = None,
                  dtype: torch.dtype = torch.float32) -> None:
    """Raise :class:`~obsviz.errors.ArgumentError` for an ``H`` that cannot be ``XᵀX / N``, from
    checks in ``O(K²)``: a negative diagonal entry, or a zero diagonal entry whose row is not zero
    (then H is indefinite). With ``damp``: also when the damping ``λ`` would overflow ``dtype``
    (the precision the pruning works in). Indefinite matrices that pass these checks are named by
    :func:`spd_inverse` when their factorisation fails.
    """
    d = torch.diagonal(H)
    negative = torch.nonzero(d < 0).flatten()
    if negative.numel():
        i = int(negative[0])
        raise ArgumentError(
            "H", f"H has {negative.numel()} negative diagonal entries (first H[{i}, {i}] = "
            f"{float(d[i]):.4g}); a Hessian H = XᵀX / N has a non-negative diagonal (was it "
            "negated?)")
    zero_rows = torch.nonzero(d == 0).flatten()
    if zero_rows.numel():
        live = H[zero_rows].abs().amax(1) > 0
        if bool(live.any()):
            i = int(zero_rows[torch.nonzero(live).flatten()[0]])
            raise ArgumentError(
                "H", f"H is indefinite: H[{i}, {i}] = 0 but row {i} is not zero; in H = XᵀX / N a "
                "zero diagonal entry (an input that never fires) has an all-zero row")
    if damp is not None:
        limit = torch.finfo(dtype).max
        lam = damping(H, damp) + float(d.double().max()) if d.numel() else 0.0
        if not lam < limit:
            raise ArgumentError(
                "damp", f"damp={damp!r} is too large: the damped diagonal ({lam:.3g}) overflows "
                f"{str(dtype).removeprefix('torch.')} (largest {limit:.3g}); use a damp below 1 "
                "(a fraction of the mean diagonal of H, e.g. 0.01) or a smaller absolute value")


def spd_inverse(A: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric positive-definite matrix through its Cholesky factor.

    Raises :class:`~obsviz.errors.ArgumentError` when ``A`` is not positive definite, saying
    whether it is indefinite (``"H"``: a negative eigenvalue) or singular (``"damp"``: zero damping
    on a singular H); the diagnosis costs one eigenvalue solve, on failure only.
    """
    L, info = torch.linalg.cholesky_ex(A)
    if int(info.max()) > 0:
        if not bool(torch.isfinite(A).all()):
            raise ArgumentError(
                "H", "the damped Hessian has non-finite values: H or the damping overflowed; "
                "use a smaller damp or rescale H")
        low = float(torch.linalg.eigvalsh(A.double()).min())
        scale = float(torch.diagonal(A).abs().max())
        if low < -1e-6 * scale:
            raise ArgumentError(
                "H", f"the damped Hessian is indefinite (smallest eigenvalue {low:.3g}, largest "
                f"diagonal {scale:.3g}): H itself is not positive semi-definite, which H = XᵀX / "
                "N always is; check how H was built (raising damp above the negative eigenvalue "
                "only hides it)")
        raise ArgumentError(
            "damp", "the damped Hessian is singular (not positive definite; singular H with no or "
                 "too little damping); raise damp, e.g. damp=0.01")
    return torch.cholesky_inverse(L)


def inverse_hessian(H: torch.Tensor, damp: float) -> torch.Tensor:
    """``C = H_d⁻¹`` ``(K, K)``."""
    return spd_inverse(damped(H, damp))


# ---- how much calibration data is behind H -----------------------------------------------------
# The one rule (and its wording) for thin calibration data, used wherever H is made or used: the
# `hessian` command, the layer loader, the Prune, Model and Sweep pages and reports.


def is_thin(nsamples: int | None, K: int) -> bool:
    """``N < K``: ``H = XᵀX / N`` from fewer calibration samples than inputs has rank at most
    ``N < K``, so only the damping makes it invertible. ``nsamples`` 0 or ``None`` means the N
    was not recorded: not known to be thin."""
    return bool(nsamples) and int(nsamples) < int(K)


def samples_text(nsamples: int | None, K: int) -> str:
    """N beside K, as every page and command says it: ``"N = 281 calibration samples for
    K = 384 inputs"``, or ``"N not recorded (K = 384 inputs)"`` for a file that does not say."""
    if not nsamples:
        return f"N not recorded (K = {int(K):,} inputs)"
    n = int(nsamples)
    return f"N = {n:,} calibration sample{'s' if n != 1 else ''} for K = {int(K):,} inputs"


def thin_text(nsamples: int | None, K: int, name: str | None = None) -> str | None:
    """The warning for thin calibration data (``is_thin``), or ``None`` when N ≥ K or N is not
    recorded. ``name``: the layer, put in front."""
    if not is_thin(nsamples, K):
        return None
    head = f"{name}: " if name else ""
    return (f"{head}thin calibration data: {samples_text(nsamples, K)} (N < K), so H = XᵀX / N is "
            f"rank-deficient (rank ≤ {int(nsamples):,}) and only the damping makes it invertible; "
            "the layer's own error then looks better than what the model will do. Use at least "
            f"{int(K):,} calibration samples (tokens).")
