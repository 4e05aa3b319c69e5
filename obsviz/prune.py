"""``obsviz.prune``: the one entry point to every method of :mod:`obsviz.methods`."""

from __future__ import annotations

import math
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from obsviz import methods as registry
from obsviz.errors import ArgumentError
from obsviz.estimate import available_memory, format_bytes, reserve_memory
from obsviz.geometry import Geometry
from obsviz.hessian import DAMP_DEFAULT, check_damp
from obsviz.layout import (
    coupled_closure,
    layout_bytes,
    layout_shape,
    restrict_rows,
    row_steps,
)
from obsviz.methods import BASELINES, C_DTYPES, METHODS, OBS_MODES
from obsviz.metrics import rel_error
from obsviz.modes import Problem
from obsviz.prepare import prepare

__all__ = ["PruneResult", "prune", "METHODS", "OBS_MODES", "BASELINES", "C_DTYPES",
           "resolve_device"]

# The valid values of two true_obs options (their home is obsviz.methods).
ORDERS = registry.ORDER.choices
SCORINGS = registry.SCORING.choices


@dataclass
class PruneResult:
    """What ``prune`` returns. ``rel_error`` is ``sqrt(tr(ΔW H ΔWᵀ) / tr(W0 H W0ᵀ))`` under the
    undamped H; ``prune`` computes it (two ``M × K × K`` products in float64) when it is first
    read, not while it prunes, so ``seconds`` is the pruning alone and a caller that never reads
    the error never pays for it (on a 384 × 1536 layer it costs about what ``local`` does)."""

    weight: torch.Tensor      # (M, K) pruned and compensated, dtype and device of the input W
    mask: torch.Tensor        # (M, K) bool, True = kept
    error: float | Callable[[], float] = field(repr=False)   # rel_error, or how to compute it
    seconds: float            # the pruning, from the inversion of H to the last mask
    method: str
    options: dict = field(default_factory=dict)
    rows: torch.Tensor | None = None   # the rows pruned, when a row sample was asked for

    @property
    def rel_error(self) -> float:
        """``sqrt(tr(ΔW H ΔWᵀ) / tr(W0 H W0ᵀ))``, undamped H (computed once, when first read)."""
        if callable(self.error):
            self.error = float(self.error())
        return self.error


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → CUDA when present, else CPU. Asking for an absent CUDA is an
    ``ArgumentError("device")``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ArgumentError("device", f"device={device!r} is not a device; use 'cpu' or "
                            "'cuda'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("device", f"device={device!r} but CUDA is not available here; use "
                            "'cpu'")
    if dev.type not in ("cpu", "cuda"):
        raise ArgumentError("device", f"device={device!r} is not supported; use 'cpu' or "
                            "'cuda'")
    return dev


def check_inputs(W: torch.Tensor, H: torch.Tensor, geometry: Geometry) -> None:
    """Raise ``ArgumentError`` naming the argument when W or H do not fit the geometry."""
    if not isinstance(geometry, Geometry):
        raise ArgumentError("geometry", f"geometry={geometry!r} must be an obsviz.Geometry")
    for name, x in (("W", W), ("H", H)):
        if not isinstance(x, torch.Tensor):
            raise ArgumentError(name, f"{name} must be a torch.Tensor, got {type(x).__name__}")
        kind = ("sparse" if x.layout != torch.strided else "meta" if x.is_meta
                else "nested" if x.is_nested else None if x.device.type in ("cpu", "cuda")
                else f"{x.device.type}")
        if kind is not None:
            raise ArgumentError(name, f"{name} is a {kind} tensor; prune needs a dense tensor of "
                                "numbers on the CPU or a CUDA device")
        if not x.dtype.is_floating_point:
            raise ArgumentError(name, f"{name} has dtype {x.dtype}; a floating dtype is needed")
    if tuple(W.shape) != geometry.weight_shape:
        raise ArgumentError("W", f"W has shape {tuple(W.shape)} but the geometry is for "
                            f"{geometry.weight_shape}")
    K = geometry.weight_shape[1]
    if tuple(H.shape) != (K, K):
        raise ArgumentError("H", f"H has shape {tuple(H.shape)}; it must be (K, K) = ({K}, {K})")
    for name, x in (("W", W), ("H", H)):
        if not torch.isfinite(x).all():
            raise ArgumentError(name, f"{name} has {int((~torch.isfinite(x)).sum())} non-finite "
                                "values (NaN/inf)")


def _options_doc() -> str:
    """Every method option, one paragraph each, from the registry (for ``prune.__doc__``)."""
    lines = []
    for option in registry.OPTIONS.values():
        users = ", ".join(m.name for m in registry.REGISTRY.values() if option in m.options)
        lines += textwrap.wrap(f"{option.describe()}. Used by {users}.", width=92,
                               initial_indent="    ", subsequent_indent="        ")
    return "\n".join(lines)


@torch.no_grad()
def prune(
    W: torch.Tensor,
    H: torch.Tensor,
    geometry: Geometry,
    nnz: int,
    method: str = "true_obs",
    damp: float = DAMP_DEFAULT,
    device: str | torch.device | None = None,
    progress: Callable[[float, str], None] | None = None,
    rows: torch.Tensor | None = None,
    **method_options,
) -> PruneResult:
    """Prune ``W`` ``(M, K)`` to ``nnz`` kept blocks per scope of ``geometry``.

    Args:
        W: ``(M, K)`` the weight; never modified.
        H: ``(K, K)`` the layer Hessian ``XᵀX/N``.
        geometry: the sparsity geometry (view, block, scope) over ``(M, K)``.
        nnz: blocks kept per scope, in ``[0, blocks per scope]``.
        method: one of ``obsviz.METHODS`` (see :mod:`obsviz.methods`).
        damp: ``λ = damp · mean(diag H)`` when ``damp < 1``, else ``λ = damp``; at most
            ``obsviz.hessian.DAMP_MAX``. Methods that never read the damped H (magnitude,
            Wanda) take any valid damp and ignore it.
        device: ``"cpu"``, ``"cuda"``, or ``None`` for CUDA when present.
        progress: called as ``progress(fraction, message)`` while it runs.
        rows: optional long indices: prune only those rows — widened to whole coupling groups —
            for a quick what-if run; other rows are returned unchanged and the error covers the
            sampled rows only (``result.rows``).
        **method_options: the method's options, below. Options of other methods are checked and
            ignored (one set of options can go with every method); a name no method declares is
            an error.

    Method options (name, type, default, valid values; from ``obsviz.methods.OPTIONS``):

{options}

    Returns:
        A :class:`PruneResult`; ``options`` records what was used (the method's options with
        their defaults filled, nnz, damp, device, dead inputs, how masks were selected).

    Raises:
        ArgumentError: naming the offending argument (``ValueError`` subclass).
    """
    opts = registry.resolve_options(method, **method_options)  # checks method and options
    spec = registry.get(method)
    check_inputs(W, H, geometry)
    geometry.check_nnz(nnz)
    damp = check_damp(damp)
    dev = resolve_device(device)
    report = progress or (lambda fraction, message: None)
    n_rows = None if rows is None else _check_rows(rows, geometry.weight_shape[0]).numel()
    need = spec.memory(geometry, n_rows, dev, **opts)
    with reserve_memory(need, dev, f"method={method!r} on W {geometry.weight_shape}",
                        "chunk_size" if method == "true_obs" else "geometry"):
        return _prune(W, H, geometry, nnz, method, spec, opts, damp, dev, report, rows)


def _prune(W, H, geometry, nnz, method, spec, opts, damp, dev, report, rows) -> PruneResult:
    """``prune`` once its arguments are checked and its memory is held."""
    t_start = time.perf_counter()
    report(0.0, "inverting the damped Hessian")
    prep = prepare(W, H, damp if spec.uses_damping else DAMP_DEFAULT, dev)
    # Every method is equivariant in W's scale, so it works on W · s with s a power of two that
    # brings max |W| near 1 (exact in floating point): squared scores of W · 1e20 would overflow
    # float32 and those of W · 1e-23 underflow, giving other masks. The result is divided back.
    s = weight_scale(prep.W)
    Wp = prep.W * s

    n_prune = geometry.pruned_per_scope(nnz)
    options = {"nnz": nnz, "damp": damp, "device": dev.type, "selection": "exhaustive",
               "dead_inputs": int(prep.dead.sum()), **opts}
    report(0.0, "laying out blocks and scopes")
    _check_layout_fits(geometry)
    layout = row_steps(geometry)
    if rows is not None:
        rows = _check_rows(rows, geometry.weight_shape[0])
        rows = coupled_closure(layout, rows)
        options["rows"] = rows.numel()
        layout = restrict_rows(layout, rows)
        rows = rows.to(dev)
        Wp = Wp[rows]
    kept = torch.ones_like(Wp, dtype=torch.bool)
    if n_prune == 0:
        Wp = (prep.W0 if rows is None else prep.W0[rows]).clone()
    else:
        problem = Problem(Wp, prep.Hu, prep.Hd, prep.C, layout.to(dev), n_prune, report)
        kept = spec.run(problem, **opts)
        options.update(problem.notes)
        Wp = Wp / s
    if rows is not None:  # put the sampled rows back into the whole layer
        Wp_all = prep.W0.clone()
        Wp_all[rows] = Wp
        kept_all = torch.ones_like(Wp_all, dtype=torch.bool)
        kept_all[rows] = kept
        Wp, kept = Wp_all, kept_all
    report(1.0, "done")
    seconds = time.perf_counter() - t_start
    weight = _fit_dtype(Wp, W.dtype, method).to(W.device)
    # the error is that of the weights returned, rounded to W's dtype
    returned = weight.to(prep.dtype) if rows is None else weight.to(dev, prep.dtype)[rows]
    W0s, H0 = (prep.W0 if rows is None else prep.W0[rows]), prep.H0
    return PruneResult(weight=weight, mask=kept.to(W.device),
                       error=lambda: rel_error(W0s, returned, H0), seconds=seconds,
                       method=method, options=options, rows=None if rows is None else rows.cpu())


prune.__doc__ = prune.__doc__.replace("{options}", _options_doc())


def weight_scale(W: torch.Tensor) -> float:
    """A power of two ``s`` with ``max |W · s|`` in ``[0.5, 1)`` (1 for an all-zero W)."""
    peak = float(W.abs().max()) if W.numel() else 0.0
    if not peak > 0:
        return 1.0
    return math.ldexp(1.0, -math.frexp(peak)[1])


def _fit_dtype(weight: torch.Tensor, dtype: torch.dtype, method: str) -> torch.Tensor:
    """``weight`` (the working precision) cast to the caller's ``dtype``; a compensation that
    leaves that dtype's range (float16 stops at 65504) is refused rather than returned as inf."""
    out = weight.to(dtype)
    if dtype != weight.dtype and not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).sum())
        raise ArgumentError(
            "W", f"method={method!r}: {bad} compensated weights exceed the range of "
            f"{str(dtype).removeprefix('torch.')} (largest {torch.finfo(dtype).max:.6g}); prune "
            "a float32 copy of W (W.float()) to keep them")
    return out


def _check_layout_fits(geometry: Geometry) -> None:
    need, free = layout_bytes(geometry), available_memory("cpu")
    if free is not None and need > free // 2:
        M, T, gs, Lb = layout_shape(geometry)
        raise ArgumentError(
            "geometry",
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
        raise ArgumentError("rows", f"rows={rows!r} must be integer row indices") from None
    if rows.numel() == 0 or int(rows.min()) < 0 or int(rows.max()) >= M:
        raise ArgumentError("rows", f"rows must be a non-empty set of indices in [0, {M}); got "
                            f"{rows.numel()} indices")
    return torch.unique(rows)
