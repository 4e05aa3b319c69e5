"""Estimates before running: the memory, flops and seconds a method needs on a layer of a given
geometry. The cost models themselves are declared with each method in :mod:`obsviz.methods`."""

from __future__ import annotations

import time
from functools import lru_cache

import torch

from obsviz import methods
from obsviz.errors import ArgumentError
from obsviz.geometry import Geometry
from obsviz.methods import BASELINES, METHODS, OBS_MODES, default_c_dtype

__all__ = ["memory_estimate", "flop_estimate", "time_estimate", "available_memory",
           "format_bytes", "default_c_dtype", "METHODS", "OBS_MODES", "BASELINES"]


def memory_estimate(geometry: Geometry, method: str, rows: int | None = None,
                    device: str | torch.device = "cpu", chunk_size: int = 16,
                    c_dtype: torch.dtype | str | None = None, ng: int | None = None) -> int:
    """Peak working memory in bytes (an estimate within a small factor) to prune ``rows`` rows
    (default all) of a layer with this geometry: the method's model in :mod:`obsviz.methods`
    (measured peaks are 0.7–1.0 of it, see ``tests/test_hostile.py``)."""
    opts = {"chunk_size": chunk_size, "c_dtype": c_dtype}
    if ng is not None:
        opts["ng"] = ng
    return methods.get(method).memory(geometry, rows, device, **opts)


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


#: Peak bytes per weight of a geometry's maps (block, scope and position maps plus the scope
#: elements, as :func:`obsviz.figures.geometry.compute_maps` builds them): measured 25–33 on
#: 1024² and 2048² weights (``tests/test_hostile.py`` checks it), rounded up.
MAP_BYTES_PER_WEIGHT = 40


def geometry_maps_bytes(weight_shape: tuple[int, int]) -> int:
    """Peak working memory in bytes to build a geometry over ``weight_shape`` and its maps."""
    M, K = weight_shape
    return MAP_BYTES_PER_WEIGHT * int(M) * int(K)


def require_memory(need: int, device: str | torch.device = "cpu", what: str = "this run",
                   argument: str = "geometry") -> None:
    """Refuse up front, before allocating, work whose estimate ``need`` (bytes) exceeds the memory
    free on ``device`` (CPU: ``MemAvailable``; CUDA: free plus cached). Raises
    :class:`~obsviz.errors.ArgumentError` naming ``argument``, with both numbers in words.
    Nothing is refused when the free memory cannot be read."""
    free = available_memory(device)
    if free is not None and need > free:
        where = torch.device(device).type.upper()
        raise ArgumentError(
            argument, f"{what} needs about {format_bytes(need)} but only {format_bytes(free)} "
            f"of {where} memory is free; refused before allocating anything")


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def flop_estimate(geometry: Geometry, method: str, rows: int | None = None,
                  n_splits: int = 4) -> float:
    """Floating-point operations, to the leading order, to prune ``rows`` rows (default all):
    the method's model in :mod:`obsviz.methods`."""
    return methods.get(method).flops(geometry, rows, n_splits=n_splits)


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
    # plus the Python-side cost of the sequential sweeps (per scope step or per column)
    overhead = methods.get(method).overhead_s(geometry.weight_shape[1])
    return overhead + flop_estimate(geometry, method, rows, n_splits) / rate
