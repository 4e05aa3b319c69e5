"""Memory estimates before running: what each method needs on a layer of a given geometry."""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from obsviz.geometry import Geometry
from obsviz.layout import layout_bytes, layout_shape

OBS_MODES = ("local", "full", "split", "interleaved", "true_obs")
BASELINES = ("magnitude", "wanda", "obd", "sparsegpt")
METHODS = OBS_MODES + BASELINES
#: The options of ``obsviz.prune`` each method uses (the others ignore theirs).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "split": ("n_splits",),
    "interleaved": ("n_splits",),
    "true_obs": ("ng", "chunk_size", "order", "scoring", "c_dtype"),
}


def default_c_dtype(device: str | torch.device) -> torch.dtype:
    """Per-row C dtype of ``true_obs``: fp16 on CUDA (tensor-core Schur updates), fp32 on CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def memory_estimate(geometry: Geometry, method: str, rows: int | None = None,
                    device: str | torch.device = "cpu", chunk_size: int = 16,
                    c_dtype: torch.dtype | None = None) -> int:
    """Peak working memory in bytes (an estimate within a small factor) to prune ``rows`` rows
    (default all) of a layer with this geometry."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; valid: {', '.join(METHODS)}")
    M, K = geometry.weight_shape
    rows = M if rows is None else rows
    f32 = 4
    weights = 4 * rows * K * f32               # W, its copy, the mask and the error map
    layout = layout_bytes(geometry)            # the row-step layout (all rows, then sampled)
    shared_c = 2 * K * K * f32                 # H_d and C
    if method in ("magnitude", "wanda"):
        return weights
    if method == "true_obs":
        item = torch.empty((), dtype=c_dtype or default_c_dtype(device)).element_size()
        coupled = min(rows, geometry.rows_per_scope)
        chunk_rows = max(chunk_size, coupled)
        return weights + layout + shared_c + 2 * chunk_rows * K * K * item
    extra = {"split": K * K * f32, "interleaved": K * K * f32}.get(method, 0)
    return weights + layout + shared_c + extra


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Free bytes on the device, or ``None`` when unknown."""
    device = torch.device(device)
    if device.type == "cuda":  # free on the device plus what torch holds cached but unused
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + cached)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def flop_estimate(geometry: Geometry, method: str, rows: int | None = None,
                  n_splits: int = 4) -> float:
    """Floating-point operations, to the leading order, to prune ``rows`` rows (default all)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; valid: {', '.join(METHODS)}")
    M, K = geometry.weight_shape
    rows = M if rows is None else rows
    sparsity = 1 - 1 / max(1, geometry.blocks_per_scope)  # the largest np, a safe bound
    inverse = K ** 3 / 3
    if method in ("magnitude", "wanda", "obd"):
        return 10.0 * rows * K
    if method == "local":  # one Cholesky of the scope's part of a row, per (row, step)
        _, T, gs, Lb = layout_shape(geometry)
        return inverse + rows * T * ((gs * Lb) ** 3 / 3 + 4 * (gs * Lb) ** 2)
    if method == "true_obs":  # every pruned column of every row downdates a K × K inverse
        return inverse + 2.0 * rows * K * K * K * sparsity
    chunks = n_splits if method in ("split", "interleaved") else 1
    return chunks * inverse + 2.0 * rows * K * K


@lru_cache(maxsize=4)
def _flops_per_second(device: str) -> float:
    n = 512
    a = torch.randn(n, n, device=device)
    (a @ a).sum().item()
    start = time.perf_counter()
    for _ in range(4):
        b = a @ a
    b.sum().item()
    return 4 * 2 * n ** 3 / max(time.perf_counter() - start, 1e-6)


def time_estimate(geometry: Geometry, method: str, rows: int | None = None,
                  device: str | torch.device = "cpu", n_splits: int = 4) -> float:
    """Seconds, roughly (within a small factor): leading-order flops over this device's measured
    matmul rate, at a fraction of peak that small batched kernels reach."""
    rate = _flops_per_second(torch.device(device).type) * 0.25
    K = geometry.weight_shape[1]
    # Python-side cost of the sequential sweeps (per scope step or per column).
    overhead = {"magnitude": 0.05, "wanda": 0.05, "obd": 0.05, "local": 0.2,
                "sparsegpt": 0.1 + 5e-4 * K}.get(method, 0.2 + 1e-3 * K)
    return overhead + flop_estimate(geometry, method, rows, n_splits) / rate
