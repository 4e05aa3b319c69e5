"""Estimates before running: the memory, flops and seconds a method needs on a layer of a given
geometry. The cost models themselves are declared with each method in :mod:`obsviz.methods`."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from functools import lru_cache

import torch

from obsviz import methods
from obsviz.errors import ArgumentError
from obsviz.geometry import Geometry
from obsviz.methods import BASELINES, METHODS, OBS_MODES, default_c_dtype

__all__ = ["memory_estimate", "flop_estimate", "time_estimate", "eta_text", "format_seconds",
           "available_memory",
           "require_memory", "reserve_memory", "held_memory",
           "format_bytes", "default_c_dtype", "METHODS", "OBS_MODES", "BASELINES"]


def memory_estimate(geometry: Geometry, method: str, rows: int | None = None,
                    device: str | torch.device = "cpu", chunk_size: int = 0,
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


#: Peak bytes per weight of what the Geometry page computes for a geometry: its maps (block,
#: scope and position maps plus the scope elements, as
#: :func:`obsviz.figures.geometry.compute_maps` builds them) and its facts (the row-step layout's
#: shape behind every method's memory figure). Measured 23–30 on 2048² weights
#: (``tests/test_hostile_numbers.py`` checks it), rounded up.
MAP_BYTES_PER_WEIGHT = 40


def geometry_maps_bytes(weight_shape: tuple[int, int]) -> int:
    """Peak working memory in bytes to build a geometry over ``weight_shape``, its maps and its
    facts (all the Geometry page computes on the whole of W)."""
    M, K = weight_shape
    return MAP_BYTES_PER_WEIGHT * int(M) * int(K)


# Memory promised to work in progress in this process (a server's sessions are threads of one
# process): a check counts it as taken, so two requests that each fit alone cannot together
# take more than what is free. Work holds its promise while it runs (:func:`reserve_memory`).
_held: dict[str, int] = {}
_held_lock = threading.Lock()


def held_memory(device: str | torch.device = "cpu") -> int:
    """Bytes promised to work still running in this process on ``device``."""
    with _held_lock:
        return _held.get(torch.device(device).type, 0)


def _check(need: int, device, what: str, argument: str) -> None:
    free, held = available_memory(device), _held.get(torch.device(device).type, 0)
    if free is not None and need > free - held:
        where = torch.device(device).type.upper()
        others = (f" ({format_bytes(held)} of it promised to other work in progress on this "
                  "server; try again when it ends)" if held else "")
        raise ArgumentError(
            argument, f"{what} needs about {format_bytes(need)} but only "
            f"{format_bytes(max(free - held, 0))} of {where} memory is free{others}; refused "
            "before allocating anything")


def require_memory(need: int, device: str | torch.device = "cpu", what: str = "this run",
                   argument: str = "geometry") -> None:
    """Refuse up front, before allocating, work whose estimate ``need`` (bytes) exceeds the memory
    free on ``device`` (CPU: ``MemAvailable``; CUDA: free plus cached) less what other work in
    progress holds (:func:`reserve_memory`). Raises :class:`~obsviz.errors.ArgumentError` naming
    ``argument``, with both numbers in words. Nothing is refused when the free memory cannot be
    read."""
    with _held_lock:
        _check(need, device, what, argument)


@contextlib.contextmanager
def reserve_memory(need: int, device: str | torch.device = "cpu", what: str = "this run",
                   argument: str = "geometry") -> Iterator[None]:
    """:func:`require_memory`, then hold ``need`` bytes as promised until the block ends, so that
    concurrent work (another session of the same server) is checked against it too."""
    dev = torch.device(device).type
    with _held_lock:
        _check(need, device, what, argument)
        _held[dev] = _held.get(dev, 0) + int(need)
    try:
        yield
    finally:
        with _held_lock:
            _held[dev] -= int(need)


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
    matmul rate, at the fraction of it the method's products reach (``flop_efficiency``)."""
    m = methods.get(method)
    rate = _flops_per_second(torch.device(device).type) * m.flop_efficiency
    # plus the Python-side cost of the sequential sweeps (per scope step or per column)
    overhead = m.overhead_s(geometry, rows)
    return overhead + flop_estimate(geometry, method, rows, n_splits) / rate


def format_seconds(seconds: float) -> str:
    """A duration in words: ``"0.4 s"``, ``"12 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``."""
    seconds = max(float(seconds), 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 120:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def eta_text(elapsed: float, fraction: float, estimate_s: float | None = None) -> str:
    """The time left, in words: from the pace so far once there is some progress (``fraction``
    of the work done in ``elapsed`` seconds), else from the estimate made before the run."""
    if fraction >= 0.02 and elapsed > 0:
        left = elapsed * (1 - fraction) / fraction
    elif estimate_s is not None:
        left = max(estimate_s - elapsed, 0.0)
    else:
        return "estimating the time left"
    if left < 1:
        return "under a second left"
    return f"about {left:.0f} s left" if left < 120 else f"about {left / 60:.0f} min left"
