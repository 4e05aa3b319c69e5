"""Test data and the slow, obviously-correct re-implementations the tests compare with.

The plain-loop algorithms live in ``obsviz/reference.py`` (readable documentation of every
method, re-exported here); this module adds the test layers, the geometries every proof must
cover and properties such as the normal-equation residual. The plain versions use nothing of the
fast engine except the geometry's maps, so agreement with ``obsviz.prune`` is evidence, not a
tautology.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from obsviz import Geometry
from obsviz.reference import (  # noqa: F401  (the tests use them as ref.<name>)
    DTYPE,
    MAX_SUBSETS,
    REFERENCES,
    Layout,
    Prepared,
    Result,
    eps,
    exhaustive_selection,
    full,
    interleaved,
    least_blocks,
    local,
    magnitude,
    obd,
    obs_remove,
    prepare,
    schur_downdate,
    select,
    sparsegpt,
    split,
    subset_cost,
    true_obs,
    wanda,
)

# ---- test data ----------------------------------------------------------------------------------

def random_inputs(N: int, K: int, seed: int) -> torch.Tensor:
    """``(N, K)`` correlated calibration inputs: iid normals mixed by a random matrix, plus a
    per-feature scale, so H is far from diagonal yet well conditioned."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(N, K, generator=g, dtype=DTYPE)
    mix = torch.eye(K, dtype=DTYPE) + 0.5 * torch.randn(K, K, generator=g, dtype=DTYPE) / K**0.5
    scale = 0.5 + torch.rand(K, generator=g, dtype=DTYPE)
    return (Z @ mix) * scale


def random_layer(M: int, K: int, seed: int, N: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """A float64 weight ``(M, K)`` and the Hessian ``H = XᵀX / N`` ``(K, K)`` of random inputs."""
    g = torch.Generator().manual_seed(seed + 1_000_003)
    W = torch.randn(M, K, generator=g, dtype=DTYPE)
    X = random_inputs(N, K, seed)
    return W, X.T @ X / N


@dataclass(frozen=True)
class Case:
    """A geometry to test, with the weight shape and budget the tests use for it."""

    name: str
    shape: tuple[int, int]
    nnz: int
    make: Callable[[tuple[int, int]], Geometry]

    def geometry(self) -> Geometry:
        return self.make(self.shape)


def _free(block, scope, view=None):
    def make(shape):
        M, K = shape
        if view == "transposed":  # view index (i, j) -> flat offset i + j*K: W column i, row j
            return Geometry(shape, block, scope, view_shape=(K, M), view_stride=(1, K))
        return Geometry(shape, block, scope)
    return make


#: Every geometry ALGORITHMS.md's proof has to cover, each at a tiny size.
CASES = {
    "2:4": Case("2:4", (8, 16), 2, lambda s: Geometry.preset("2:4", s)),
    "2:4-pairs": Case("2:4-pairs", (8, 16), 2, lambda s: Geometry.preset("2:4-pairs", s)),
    "coupled-2:4": Case("coupled-2:4", (8, 32), 2, lambda s: Geometry.preset("coupled-2:4", s)),
    "block16": Case("block16", (16, 32), 1, lambda s: Geometry.preset("block16", s)),
    "1:4": Case("1:4", (8, 16), 1, lambda s: Geometry.nm(1, 4, s)),
    "3:8": Case("3:8", (8, 16), 3, lambda s: Geometry.nm(3, 8, s)),
    "tiles": Case("tiles", (8, 16), 1, _free((2, 2), (1, 2))),
    "input-channels": Case("input-channels", (6, 8), 4, _free((-1, 1), (1, -1))),
    "output-rows": Case("output-rows", (8, 16), 2, _free((1, -1), (4, 1))),
    "transposed": Case("transposed", (16, 8), 2, _free((1, 4), (1, 4), view="transposed")),
    # block16 row-wise (two 16-wide blocks of a row compete): few subsets, large blocks
    "row-blocks": Case("row-blocks", (4, 64), 1, _free((1, 16), (1, 2))),
}
PRESET_CASES = ("2:4", "2:4-pairs", "coupled-2:4", "block16")
#: Whole input channels with C(32, 16) subsets per scope: selection must fall back to greedy.
GREEDY_CASE = Case("input-channels-greedy", (6, 32), 16, _free((-1, 1), (1, -1)))


# ---- properties -----------------------------------------------------------------------------

def normal_equation_residual(W0: torch.Tensor, W: torch.Tensor, mask: torch.Tensor,
                             H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """``(M,)``: per row, ``‖(H_d (w − w0))[kept]‖ / ‖H_d w0‖`` (0 when the kept weights are the
    exact damped least-squares re-fit under the row's mask). Live columns only: dead inputs
    are decoupled from everything in ``H_d`` and zeroed by design."""
    p = prepare(W0, H, damp)
    live = torch.diagonal(H.to(DTYPE)) != 0
    G = (W.to(DTYPE) - p.W) @ p.Hd                     # rows of H_d (w − w0); H_d is symmetric
    scale = (p.W @ p.Hd).norm(dim=1).clamp(min=1e-300)
    return (G * (mask & live)).norm(dim=1) / scale
