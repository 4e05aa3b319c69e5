"""``obsviz.prune``: the one entry point to every method (DESIGN.md section 3)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from obsviz import baselines, modes
from obsviz.estimate import (
    BASELINES,
    METHODS,
    OBS_MODES,
    available_memory,
    default_c_dtype,
    format_bytes,
    memory_estimate,
    require_memory,
)
from obsviz.geometry import Geometry
from obsviz.errors import ArgumentError
from obsviz.hessian import check_damp, check_hessian, damped, dead_columns, spd_inverse
from obsviz.layout import (
    coupled_closure,
    layout_bytes,
    layout_shape,
    restrict_rows,
    row_steps,
)
from obsviz.metrics import rel_error

__all__ = ["PruneResult", "prune", "METHODS", "OBS_MODES", "BASELINES", "resolve_device"]

ORDERS = ("left_to_right", "largest_first")
SCORINGS = ("independent", "joint")
C_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
            "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


@dataclass
class PruneResult:
    weight: torch.Tensor      # (M, K) pruned and compensated, dtype and device of the input W
    mask: torch.Tensor        # (M, K) bool, True = kept
    rel_error: float          # sqrt(tr(ΔW H ΔWᵀ) / tr(W0 H W0ᵀ)), undamped H
    seconds: float
    method: str
    options: dict = field(default_factory=dict)
    rows: torch.Tensor | None = None   # the rows pruned, when a row sample was asked for


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when present, else CPU. Asking for an absent CUDA is a ``ValueError``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a device; use 'cpu' or 'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available here; use 'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def _resolve_c_dtype(c_dtype, device: torch.device, w_dtype: torch.dtype) -> torch.dtype:
    if c_dtype is None:  # float64 work stays float64 (exactness checks); else the device default
        return torch.float64 if w_dtype == torch.float64 else default_c_dtype(device)
    if isinstance(c_dtype, torch.dtype) and c_dtype.is_floating_point:
        return c_dtype
    if isinstance(c_dtype, str) and c_dtype.lower().removeprefix("torch.") in C_DTYPES:
        return C_DTYPES[c_dtype.lower().removeprefix("torch.")]
    raise ValueError(f"c_dtype={c_dtype!r} is not a float dtype; use None, 'float16', "
                     "'bfloat16', 'float32' or 'float64'")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    return value


def check_inputs(W: torch.Tensor, H: torch.Tensor, geometry: Geometry) -> None:
    """Raise ``ValueError`` naming the argument when W or H do not fit the geometry."""
    if not isinstance(geometry, Geometry):
        raise ValueError(f"geometry={geometry!r} must be an obsviz.Geometry")
    for name, x in (("W", W), ("H", H)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"{name} has dtype {x.dtype}; a floating dtype is needed")
    if tuple(W.shape) != geometry.weight_shape:
        raise ValueError(f"W has shape {tuple(W.shape)} but the geometry is for "
                         f"{geometry.weight_shape}")
    K = geometry.weight_shape[1]
    if tuple(H.shape) != (K, K):
        raise ValueError(f"H has shape {tuple(H.shape)}; it must be (K, K) = ({K}, {K})")
    if not torch.isfinite(W).all():
        raise ValueError(f"W has {int((~torch.isfinite(W)).sum())} non-finite values (NaN/inf)")
    if not torch.isfinite(H).all():
        raise ValueError(f"H has {int((~torch.isfinite(H)).sum())} non-finite values (NaN/inf)")


@torch.no_grad()
def prune(
    W: torch.Tensor,
    H: torch.Tensor,
    geometry: Geometry,
    nnz: int,
    method: str = "true_obs",
    damp: float = 0.01,
    device: str | torch.device | None = None,
    n_splits: int = 4,
    ng: int = 64,
    chunk_size: int = 16,
    order: str = "left_to_right",
    scoring: str = "independent",
    c_dtype: torch.dtype | str | None = None,
    progress: Callable[[float, str], None] | None = None,
    rows: torch.Tensor | None = None,
    **unknown,
) -> PruneResult:
    """Prune ``W`` ``(M, K)`` to ``nnz`` kept blocks per scope of ``geometry``.

    ``H`` ``(K, K)`` is the layer Hessian ``XᵀX/N``. ``W`` is never modified. Options that a
    method does not use are ignored. Raises ``ValueError`` naming the offending argument.

    ``c_dtype`` is the dtype of ``true_obs``'s per-row C: by default fp16 on CUDA, fp32 on CPU,
    and fp64 whenever W is fp64.

    ``rows`` (optional, long indices) prunes only those rows — widened to whole coupling groups —
    for a quick what-if run; other rows are returned unchanged and the error covers the sampled
    rows only (``result.rows``).
    """
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; valid: damp, device, n_splits, "
                         "ng, chunk_size, order, scoring, c_dtype, progress, rows")
    if method not in METHODS:
        raise ValueError(f"method={method!r} is unknown; valid: {', '.join(METHODS)}")
    check_inputs(W, H, geometry)
    geometry.check_nnz(nnz)
    check_damp(damp)
    check_hessian(H, damp, torch.float64 if W.dtype == torch.float64 else torch.float32)
    n_splits = _positive_int("n_splits", n_splits)
    ng = _positive_int("ng", ng)
    chunk_size = _positive_int("chunk_size", chunk_size)
    if order not in ORDERS:
        raise ValueError(f"order={order!r} is unknown; valid: {', '.join(ORDERS)}")
    if scoring not in SCORINGS:
        raise ValueError(f"scoring={scoring!r} is unknown; valid: {', '.join(SCORINGS)}")
    dev = resolve_device(device)
    c_dt = _resolve_c_dtype(c_dtype, dev, W.dtype)
    report = progress or (lambda fraction, message: None)
    require_memory(memory_estimate(geometry, method, None if rows is None else _check_rows(
        rows, geometry.weight_shape[0]).numel(), dev, chunk_size, c_dt, ng), dev,
        f"method={method!r} on W {geometry.weight_shape}", "chunk_size" if method == "true_obs"
        else "geometry")

    t_start = time.perf_counter()
    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    W0 = W.detach().to(dev, dtype)
    H0 = H.detach().to(dev, dtype)
    H0 = (H0 + H0.T) / 2
    dead = dead_columns(H0)
    Hu = H0.clone()
    torch.diagonal(Hu)[dead] = 1.0
    Hd = damped(H0, damp)
    # Work at unit scale (mean diagonal 1): every decision and update is invariant to H's scale,
    # and a fp16 per-row C must not overflow because the inputs were large.
    scale = float(torch.diagonal(Hd).mean())
    Hu, Hd = Hu / scale, Hd / scale
    report(0.0, "inverting the damped Hessian")
    C = spd_inverse(Hd)
    Wp = W0.clone()
    Wp[:, dead] = 0  # inputs that never fire: their weights are free to go (as in SparseGPT)

    n_prune = geometry.pruned_per_scope(nnz)
    options = {"nnz": nnz, "damp": damp, "device": dev.type, "selection": "exhaustive",
               "dead_inputs": int(dead.sum())}
    if method in ("split", "interleaved"):
        options["n_splits"] = n_splits
    if method == "true_obs":
        options.update(ng=ng, chunk_size=chunk_size, order=order, scoring=scoring,
                       c_dtype=str(c_dt).removeprefix("torch."))
    report(0.0, "laying out blocks and scopes")
    _check_layout_fits(geometry)
    layout = row_steps(geometry)
    if rows is not None:
        rows = _check_rows(rows, geometry.weight_shape[0])
        rows = coupled_closure(layout, rows)
        options["rows"] = rows.numel()
        layout = restrict_rows(layout, rows)
        rows = rows.to(dev)
        W0, Wp = W0[rows], Wp[rows]
    kept = torch.ones_like(Wp, dtype=torch.bool)
    if n_prune == 0:
        Wp = W0.clone()
    else:
        problem = modes.Problem(Wp, Hu, Hd, C, layout.to(dev), n_prune, report)
        kept = _run(problem, method, n_splits, ng, chunk_size, order, scoring, c_dt)
        options.update(problem.notes)
    error = rel_error(W0, Wp, H0)
    if rows is not None:  # put the sampled rows back into the whole layer
        Wp_all = W.detach().to(dev, dtype).clone()
        Wp_all[rows] = Wp
        kept_all = torch.ones_like(Wp_all, dtype=torch.bool)
        kept_all[rows] = kept
        Wp, kept = Wp_all, kept_all
    report(1.0, "done")
    seconds = time.perf_counter() - t_start
    return PruneResult(weight=Wp.to(W.device, W.dtype), mask=kept.to(W.device),
                       rel_error=error, seconds=seconds, method=method, options=options,
                       rows=None if rows is None else rows.cpu())


def _check_layout_fits(geometry: Geometry) -> None:
    need, free = layout_bytes(geometry), available_memory("cpu")
    if free is not None and need > free // 2:
        M, T, gs, Lb = layout_shape(geometry)
        raise ValueError(
            f"geometry={geometry.describe()} on {geometry.weight_shape}: its row-step layout "
            f"({M} rows × {T} steps × {gs} blocks × {Lb}) needs {format_bytes(need)}, more than "
            f"half of the {format_bytes(free)} free; scopes that span many rows with one block "
            "per row are the usual cause — use a smaller scope")


def _check_rows(rows, M: int) -> torch.Tensor:
    dtype = getattr(rows, "dtype", None)
    if isinstance(dtype, torch.dtype):
        bad = dtype == torch.bool or dtype.is_floating_point or dtype.is_complex
    elif dtype is not None:  # numpy
        bad = getattr(dtype, "kind", "i") in ("f", "c", "b")
    else:
        bad = isinstance(rows, list | tuple) and any(isinstance(r, bool | float) for r in rows)
    if bad:
        raise ArgumentError(
            "rows", f"rows must be integer row indices, not {dtype or 'bools/floats'}: a bool "
            "mask would be read as rows 0 and 1 and floats would be truncated; for a mask pass "
            "torch.nonzero(mask).flatten()")
    try:
        rows = torch.as_tensor(rows, dtype=torch.long).flatten().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"rows={rows!r} must be integer row indices") from None
    if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= M:
        raise ValueError(f"rows must be a non-empty set of indices in [0, {M}); got "
                         f"{rows.numel()} indices")
    return torch.unique(rows)


def _run(p: modes.Problem, method: str, n_splits: int, ng: int, chunk_size: int, order: str,
         scoring: str, c_dtype: torch.dtype) -> torch.Tensor:
    if method == "local":
        return modes.local(p)
    if method == "full":
        return modes.full(p)
    if method == "split":
        return modes.split(p, n_splits)
    if method == "interleaved":
        return modes.interleaved(p, n_splits)
    if method == "true_obs":
        return modes.true_obs(p, ng, chunk_size, order, scoring, c_dtype)
    return getattr(baselines, method)(p)
