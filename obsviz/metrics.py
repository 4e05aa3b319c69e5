"""How good a pruned weight is: output error under the undamped H, its per-row and per-element
parts, sparsity, and whether the mask honours the geometry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obsviz.geometry import Geometry


def row_error(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(M,)``: ``ΔW_r H ΔW_rᵀ`` for each row."""
    dW = (W - W0).to(torch.float64)
    return ((dW @ H.to(torch.float64)) * dW).sum(1)


def element_contribution(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(M, K)``: ``ΔW ⊙ (ΔW H)``; each row sums to that row's error."""
    dW = (W - W0).to(torch.float64)
    return dW * (dW @ H.to(torch.float64))


def rel_error(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> float:
    """``sqrt(tr(ΔW H ΔWᵀ) / tr(W0 H W0ᵀ))`` = ``‖X ΔWᵀ‖_F / ‖X W0ᵀ‖_F``."""
    ref = row_error(torch.zeros_like(W0), W0, H).sum()
    err = row_error(W0, W, H).sum()
    if ref <= 0:
        return 0.0 if err <= 0 else float("inf")
    return float(torch.sqrt(err.clamp(min=0) / ref))


def sparsity(mask: torch.Tensor) -> float:
    """Fraction of weights pruned (``mask`` is True where kept)."""
    return 1.0 - float(mask.float().mean())


@dataclass(frozen=True)
class Validity:
    blocks_whole: bool        # every block kept or pruned whole
    scopes_exact: bool        # every scope keeps exactly nnz blocks
    bad_blocks: int
    bad_scopes: int

    @property
    def ok(self) -> bool:
        return self.blocks_whole and self.scopes_exact


def validity(mask: torch.Tensor, geometry: Geometry, nnz: int) -> Validity:
    """Check a kept-mask ``(M, K)`` against the geometry and its budget."""
    flat = mask.reshape(-1).cpu()
    kept_elems = flat[geometry.block_elements()].sum(1)
    bk = geometry.block_numel
    whole = (kept_elems == 0) | (kept_elems == bk)
    kept_blocks = (kept_elems == bk)[geometry.scope_blocks()].sum(1)
    exact = kept_blocks == nnz
    return Validity(bool(whole.all()), bool(exact.all()), int((~whole).sum()),
                    int((~exact).sum()))
