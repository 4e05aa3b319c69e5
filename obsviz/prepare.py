"""``prepare(W, H, damp)``: the one place a layer is made ready for pruning.

Every method (through ``obsviz.prune``) and the Learn page's ``Lesson`` start from what this
returns, so "exactly what prune gives" rests on one function:

1. the working dtype: float64 when W is float64, else float32;
2. ``H`` symmetrised: ``(H + Hᵀ) / 2``;
3. dead inputs (zero diagonal: inputs that never fire) found, their weights set to 0 (they are free
   to go, as in SparseGPT) and their diagonal set to 1 so the system stays invertible;
4. damping: ``H_d = H + λI`` with ``λ = damp · mean(diag H)`` (``damp < 1``) or ``λ = damp``;
5. unit scale: ``Hu``, ``Hd`` and ``C`` are divided by ``scale = mean(diag H_d)``. Every decision
   and update is invariant to H's scale, and a fp16 per-row C must not overflow because the
   inputs were large;
6. ``C = H_d⁻¹`` (at unit scale) through a Cholesky factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obsviz.hessian import check_damp, check_hessian, damped, damping, dead_columns, spd_inverse


@dataclass(frozen=True)
class Prepared:
    """A layer ready for pruning. ``(M, K)`` and ``(K, K)`` tensors on one device, one dtype."""

    W0: torch.Tensor      # (M, K) the weight as given
    W: torch.Tensor       # (M, K) where pruning starts: W0 with the weights of dead inputs at 0
    H0: torch.Tensor      # (K, K) symmetrised, undamped, original scale: errors are measured in it
    dead: torch.Tensor    # (K,) bool: inputs that never fire
    lam: float            # the damping λ, original scale
    scale: float          # mean diagonal of H_d, original scale; Hu, Hd, C below are divided by it
    Hu: torch.Tensor      # (K, K) H0 / scale, dead inputs on a unit diagonal
    Hd: torch.Tensor      # (K, K) (H0 + λI) / scale, dead inputs on a unit diagonal (+λ)
    C: torch.Tensor       # (K, K) Hd⁻¹ (so C · scale⁻¹ is the original-scale inverse)

    @property
    def dtype(self) -> torch.dtype:
        return self.W0.dtype


def working_dtype(W: torch.Tensor) -> torch.dtype:
    """float64 work stays float64 (exactness checks); everything else runs in float32."""
    return torch.float64 if W.dtype == torch.float64 else torch.float32


@torch.no_grad()
def prepare(W: torch.Tensor, H: torch.Tensor, damp: float = 0.01,
            device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Prepared:
    """``W`` ``(M, K)`` and ``H`` ``(K, K)`` -> :class:`Prepared` (steps 1–6 of the module doc).

    ``W`` and ``H`` are never modified. Raises ``ArgumentError`` for a bad ``damp`` (``"damp"``),
    an H that cannot be XᵀX/N (``"H"``: negative diagonal, indefinite) or a singular damped H.
    """
    damp = check_damp(damp)
    dtype = dtype or working_dtype(W)
    check_hessian(H, damp, dtype)  # O(K²): a negated or impossible H, a damping that overflows
    W0 = W.detach().to(device, dtype).contiguous()   # the modes index W as one flat vector
    H0 = H.detach().to(device, dtype)
    H0 = (H0 * 0.5).add_(H0.T, alpha=0.5)   # (H0 + H0ᵀ) / 2 exactly, not overflowing near the top
    dead = dead_columns(H0)
    Hu = H0.clone()
    torch.diagonal(Hu)[dead] = 1.0
    Hd = damped(H0, damp)
    scale = float(torch.diagonal(Hd).double().mean())
    Hu, Hd = Hu / scale, Hd / scale
    C = spd_inverse(Hd)
    Wp = W0.clone()
    Wp[:, dead] = 0
    return Prepared(W0=W0, W=Wp, H0=H0, dead=dead, lam=damping(H0, damp), scale=scale, Hu=Hu,
                    Hd=Hd, C=C)
