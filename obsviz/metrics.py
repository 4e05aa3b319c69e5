"""How good a pruned weight is: output error under the undamped H, its per-row and per-element
parts, sparsity, and whether the mask honours the geometry."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from obsviz.geometry import Geometry


def format_rel_error(x: float) -> str:
    """The one way a relative error is shown to a person: a percentage, ``"12.34 %"``.
    (The API, reports and exports keep the fraction ``rel_error``.)"""
    return f"{100 * x:.2f} %"


def row_error(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(M,)``: ``ΔW_r H ΔW_rᵀ`` for each row."""
    dW = (W - W0).to(torch.float64)
    return ((dW @ H.to(torch.float64)) * dW).sum(1)


def row_rel_error(W0: torch.Tensor, W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``(M,)``: ``sqrt(ΔW_r H ΔW_rᵀ / W0_r H W0_rᵀ)``, each row's relative output error."""
    ref = row_error(torch.zeros_like(W0), W0, H).clamp(min=1e-30)
    return torch.sqrt(row_error(W0, W, H).clamp(min=0) / ref)


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


def validity(mask: torch.Tensor, geometry: Geometry, nnz: int,
             rows: torch.Tensor | None = None) -> Validity:
    """Check a kept-mask ``(M, K)`` against the geometry and its budget (only the scopes inside
    ``rows`` when a row sample was pruned)."""
    flat = mask.reshape(-1).cpu()
    elements = geometry.block_elements()
    kept_elems = flat[elements].sum(1)
    bk = geometry.block_numel
    whole = (kept_elems == 0) | (kept_elems == bk)
    scope_blocks = geometry.scope_blocks()
    if rows is not None:
        inside = torch.zeros(geometry.weight_shape[0], dtype=torch.bool)
        inside[rows.cpu()] = True
        block_inside = inside[elements // geometry.weight_shape[1]].all(1)
        scope_blocks = scope_blocks[block_inside[scope_blocks].all(1)]
        whole = whole | ~block_inside
    kept_blocks = (kept_elems == bk)[scope_blocks].sum(1)
    exact = kept_blocks == nnz
    return Validity(bool(whole.all()), bool(exact.all()), int((~whole).sum()),
                    int((~exact).sum()))


def summarize(W0: torch.Tensor, H: torch.Tensor, geometry: Geometry, result) -> dict:
    """A result's report as plain data (the metrics table, the CLI's JSON, the CSV download).

    ``result`` is a :class:`obsviz.PruneResult`; when it covers a row sample, the row metrics are
    over the sampled rows only.
    """
    rows = result.rows
    H = H.to(W0.device)
    W0r, Wr, mask = W0, result.weight.to(W0.device), result.mask.to(W0.device)
    if rows is not None:
        W0r, Wr, mask = W0[rows], result.weight[rows], result.mask[rows]
    rel_row = row_rel_error(W0r, Wr, H)
    q = torch.quantile(rel_row, torch.tensor([0.5, 0.9, 0.99], dtype=rel_row.dtype,
                                             device=rel_row.device))
    valid = validity(result.mask, geometry, result.options.get("nnz", 0), rows=rows)
    return {
        "method": result.method,
        "rel_error": result.rel_error,
        "row_rel_error_p50": float(q[0]),
        "row_rel_error_p90": float(q[1]),
        "row_rel_error_p99": float(q[2]),
        "row_rel_error_max": float(rel_row.max()),
        "sparsity": sparsity(mask),
        "valid": valid.ok,
        "bad_blocks": valid.bad_blocks,
        "bad_scopes": valid.bad_scopes,
        "seconds": result.seconds,
        "rows": int(W0r.shape[0]),
        "geometry": geometry.to_dict(),
        "options": dict(result.options),
    }
