"""Every pruning method, declared once: name, kind, options, run function, cost model, colour.

``obsviz.prune``, the estimates, the figures, the app's option panels and the command line all
read this registry; adding a method is one :class:`Method` entry here (plus its run function).

Two kinds:

- ``"obs_mode"``: the OBS compensation modes (``local``, ``full``, ``split``, ``interleaved``,
  ``true_obs``, see :mod:`obsviz.modes`);
- ``"baseline"``: the methods they are compared with (``magnitude``, ``wanda``, ``obd``,
  ``sparsegpt``, see :mod:`obsviz.baselines`).

Adding a method:

1. write ``run(problem, **options) -> kept mask`` (it prunes ``problem.W`` in place; see
   :class:`obsviz.modes.Problem`) in ``modes.py`` or ``baselines.py``;
2. declare it below: ``Method(name, kind, label, help, colour, options, run, memory model,
   flop model)``, with any new :class:`Option`;
3. write its plain-loop twin in ``obsviz/reference.py`` and a test that the two agree.

``obsviz.prune``, its docstring, ``estimate``'s memory/flop/time estimates, the figures' colours
and the CLI's ``--method`` choices and option flags follow from the declaration.

An option's name is unique across methods: ``n_splits`` means the same thing to ``split`` and
``interleaved``. So one set of options can be passed with every method (a comparison runs many
methods with the same settings): each method takes the options it declares and ignores those
that belong to other methods; a name no method declares is an error.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from obsviz import baselines, modes, obs
from obsviz.errors import ArgumentError
from obsviz.geometry import Geometry
from obsviz.layout import layout_bytes, layout_shape

__all__ = ["Option", "Method", "REGISTRY", "METHODS", "OBS_MODES", "BASELINES", "OPTIONS",
           "C_DTYPES", "get", "resolve_options", "default_c_dtype", "c_dtype_of"]

#: Names accepted for ``true_obs``'s ``c_dtype`` -> the torch dtype. ``"auto"`` (or ``None``) is
#: the device default (:func:`default_c_dtype`), fp64 whenever W is fp64.
C_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
            "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
            "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
            "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}


def default_c_dtype(device: str | torch.device) -> torch.dtype:
    """Per-row C dtype of ``true_obs``: fp16 on CUDA (tensor-core Schur updates), fp32 on CPU."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


def c_dtype_of(name: str, device: str | torch.device, w_dtype: torch.dtype = torch.float32
               ) -> torch.dtype:
    """The torch dtype a (checked) ``c_dtype`` option stands for on ``device``."""
    if name == "auto":  # float64 work stays float64 (exactness checks); else the device default
        return torch.float64 if w_dtype == torch.float64 else default_c_dtype(device)
    return C_DTYPES[name]


def _parse_c_dtype(value) -> str:
    """``None``/``"auto"``, a float ``torch.dtype`` or one of :data:`C_DTYPES`' names -> the
    canonical name (``"auto"``, ``"float16"``, ``"bfloat16"``, ``"float32"``, ``"float64"``)."""
    if value is None:
        return "auto"
    if isinstance(value, torch.dtype) and value.is_floating_point:
        value = str(value)
    if isinstance(value, str):
        key = value.lower().removeprefix("torch.")
        if key == "auto":
            return "auto"
        if key in C_DTYPES:
            return str(C_DTYPES[key]).removeprefix("torch.")
    raise ArgumentError("c_dtype", f"c_dtype={value!r} is not a float dtype; use 'auto' (or None), "
                        "'float16', 'bfloat16', 'float32' or 'float64'")


@dataclass(frozen=True)
class Option:
    """One tunable of a method: its default, type, help text and what values are valid."""

    name: str
    default: Any
    type: type                          # int | float | str
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    parse: Callable[[Any], Any] | None = None   # custom check/normaliser (replaces the type check)

    def check(self, value):
        """``value`` checked (and normalised); :class:`ArgumentError` naming the option if bad."""
        if self.parse is not None:
            return self.parse(value)
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ArgumentError(self.name, f"{self.name}={value!r} must be an integer"
                                    + self._range())
            value = int(value)
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
                raise ArgumentError(self.name, f"{self.name}={value!r} must be a number"
                                    + self._range())
            value = float(value)
        elif not isinstance(value, self.type):
            raise ArgumentError(self.name, f"{self.name}={value!r} must be a "
                                f"{self.type.__name__}" + self._range())
        if self.choices is not None and value not in self.choices:
            raise ArgumentError(self.name, f"{self.name}={value!r} is unknown; valid: "
                                + ", ".join(str(c) for c in self.choices))
        if self.minimum is not None and value < self.minimum:
            raise ArgumentError(self.name, f"{self.name}={value!r} must be >= {self.minimum:g}"
                                + (" (a positive integer)" if self.type is int
                                   and self.minimum == 1 else ""))
        return value

    def _range(self) -> str:
        if self.choices is not None:
            return f"; valid: {', '.join(str(c) for c in self.choices)}"
        if self.minimum is not None:
            return f" >= {self.minimum:g}"
        return ""

    def describe(self) -> str:
        """``name (type, default …): help`` — one line of the docs."""
        kind = self.type.__name__
        valid = (f"; one of {', '.join(repr(c) for c in self.choices)}" if self.choices
                 else f"; >= {self.minimum:g}" if self.minimum is not None else "")
        return f"``{self.name}`` ({kind}, default ``{self.default!r}``{valid}): {self.help}"


# ---- the options --------------------------------------------------------------------------------

N_SPLITS = Option(
    "n_splits", 4, int, "chunks the scope sequence is cut into; each chunk re-inverts the damped "
    "Hessian restricted to the columns not yet frozen", minimum=1)
NG = Option(
    "ng", 0, int, "scope steps decided per batch on the batch's small system before each "
    "row's factor of its pruned set grows once; the result is the same for every ng, only "
    "speed changes; 0: from the geometry, the steps that prune about 32 weights of a row "
    "(see batch_steps: 16 for 2:4, 8 for coupled-2:4, 2 for block16)",
    minimum=0)
CHUNK_SIZE = Option(
    "chunk_size", 0, int, "rows processed together (each holds its own factor of its pruned "
    "set); 0: chosen from the layer's shape (see chunk_rows: 64 rows when K ≥ 768, 128 for "
    "K = 384, evened out over the worker threads); row-coupled scopes widen a chunk to whole "
    "coupling groups", minimum=0)
ORDER = Option(
    "order", "left_to_right", str, "order in which a row's scope steps are decided: left to "
    "right, or largest pre-scored OBS cost first", choices=("left_to_right", "largest_first"))
SCORING = Option(
    "scoring", "independent", str, "how a step's blocks are scored: each weight's w²/C_cc summed "
    "per block (independent), or the exact joint OBS cost of each subset (joint)",
    choices=("independent", "joint"))
C_DTYPE = Option(
    "c_dtype", "auto", str, "dtype of C and of each row's factor: 'auto' is fp16 on CUDA, "
    "fp32 on CPU and fp64 whenever W is fp64; also 'float16', 'bfloat16', 'float32', "
    "'float64' or a torch dtype",
    choices=("auto", "float16", "bfloat16", "float32", "float64"), parse=_parse_c_dtype)


# ---- cost models --------------------------------------------------------------------------------
# Memory in bytes (within a small factor) and floating-point operations (leading order) to prune
# `rows` rows (default all) of a layer with a geometry.

_F32 = 4


def _rows(geometry: Geometry, rows: int | None) -> int:
    return geometry.weight_shape[0] if rows is None else rows


def _weights_bytes(geometry: Geometry, rows: int | None) -> int:
    return 4 * _rows(geometry, rows) * geometry.weight_shape[1] * _F32  # W, copy, mask, error map


def _score_memory(geometry, rows=None, device="cpu", **options) -> int:
    return _weights_bytes(geometry, rows)


def _obs_memory(extra_kk: int = 0):
    """Weights, the row-step layout, H, H_d, their unit-scale copies, C and one temporary, plus
    ``extra_kk`` more K × K fp32 matrices."""
    def memory(geometry, rows=None, device="cpu", **options) -> int:
        K = geometry.weight_shape[1]
        return (_weights_bytes(geometry, rows) + layout_bytes(geometry)
                + (6 + extra_kk) * K * K * _F32)
    return memory


def _sparsity(geometry: Geometry) -> float:
    """The fraction of weights the geometry's own nnz prunes (one half when it has none)."""
    return 1 - geometry.nnz / max(1, geometry.blocks_per_scope) if geometry.nnz else 0.5


def _c_bytes(c_dtype: str, device) -> int:
    """Bytes of one entry of C (and of each row's factor) in ``true_obs``'s ``c_dtype``."""
    return torch.empty((), dtype=c_dtype_of(c_dtype, device)).element_size()


def chunk_rows(K: int, n_rows: int, chunk_size: int = 0, device: torch.device | str = "cpu"
               ) -> int:
    """The rows of one ``true_obs`` chunk of a layer with ``K`` inputs (``n_rows`` rows pruned):
    ``chunk_size``, or for 0 (the default) one from the layer's shape. A chunk's small operations
    cost the same whatever K, its products grow with K: about 64 · 1024 / K rows (a power of
    two, 64 to 256), then as many equal chunks as that makes, a multiple of the worker threads
    (:func:`obsviz.obs.chunk_workers`) so that none waits for the last. (A coupling group larger
    than this is a chunk of its own, :func:`obsviz.layout.row_chunks`.) Measured with two
    threads (docs/BENCHMARKS.md): 1536 × 384 2:4 1.7 s with 64 rows, 1.4 s with 128; 384 × 1536
    3.7 s with 64, 4.8 s with 32, 5.1 s with 128; 384 × 384 0.5–0.7 s with 64, 0.42–0.46 s
    with 96."""
    if chunk_size:
        return min(n_rows, chunk_size)
    target = min(256, max(64, 2 ** round(math.log2(65536 / K))))
    n_chunks = -(-n_rows // target)
    workers = obs.chunk_workers(device, torch.get_num_threads(), n_chunks)
    n_chunks = -(-n_chunks // workers) * workers
    return max(1, -(-n_rows // n_chunks))


#: Weights of a row pruned per true_obs batch that ``ng = 0`` aims at. Measured
#: (docs/BENCHMARKS.md, benchmarks/bench_ng.py) the fastest ``ng`` prunes about this many
#: whatever the pattern: 16 steps of 2:4 (2 a step), 8 of coupled-2:4 and 2:4-pairs (4),
#: 2 of block16 (16): the batch's factor and decisions cost about q³ per row and batch, the
#: rest a fixed amount per batch.
BATCH_PRUNED = 32


def batch_steps(pruned_per_step: int, ng: int = 0) -> int:
    """The scope steps of one ``true_obs`` batch: ``ng``, or for 0 (the default) as many as
    prune about :data:`BATCH_PRUNED` weights of a row, ``pruned_per_step`` at each."""
    if ng:
        return ng
    return max(1, round(BATCH_PRUNED / max(1, pruned_per_step)))


def _batch_steps(geometry: Geometry, ng: int) -> int:
    """:func:`batch_steps` for a geometry at its own nnz (half its blocks when it has none)."""
    Lb = layout_shape(geometry)[3]
    n_prune = (geometry.pruned_per_scope(geometry.nnz) if geometry.nnz
               else geometry.blocks_per_scope // 2)
    return batch_steps(n_prune * Lb, ng)


def _chunk(geometry: Geometry, rows: int | None, chunk_size: int, device) -> tuple[int, int]:
    """The rows of a chunk as :func:`chunk_rows` makes them, widened to a coupling group, and
    the worker threads that share the chunks (:func:`obsviz.obs.chunk_workers`)."""
    n_rows = _rows(geometry, rows)
    chunk = min(n_rows, max(chunk_rows(geometry.weight_shape[1], n_rows, chunk_size, device),
                            geometry.rows_per_scope))
    return chunk, obs.chunk_workers(device, torch.get_num_threads(), -(-n_rows // chunk))


def _true_obs_memory(geometry, rows=None, device="cpu", chunk_size=0, c_dtype="auto", ng=0,
                     **options) -> int:
    K = geometry.weight_shape[1]
    item = _c_bytes(c_dtype, device)
    # A chunk is chunk_rows rows (or one coupling group when that is larger, and never more
    # than the rows pruned). Per row of a chunk: the factor U of its pruned set (s·K rows
    # over the K positions, in C's dtype), the block rows of L (L Lᵀ = C_PP, (s·K)²/2 in fp32;
    # with an fp16/bf16 C the refit factors H_KK instead, ((1 − s)·K)² twice), the batch's
    # small system C_SS over n = (ng steps) × gs × Lb columns with its mask and copy (~12 bytes
    # an entry), and the columns of C a batch's update reads and forms (3 × K × n). Shared: C
    # in C's dtype and in decision order. On a CPU a chunk's worth per worker thread
    # (obs.chunk_workers). Measured peaks (resident memory of real runs, tests/test_hostile.py)
    # are 0.5–1.2 of this.
    rows_c, workers = _chunk(geometry, rows, chunk_size, device)
    _, T, gs, Lb = layout_shape(geometry)
    n = min(_batch_steps(geometry, ng), T) * gs * Lb
    s = _sparsity(geometry)
    refit = (s * K) ** 2 / 2 * _F32 if item >= _F32 else 2 * ((1 - s) * K) ** 2 * _F32
    per_row = s * K * K * item + refit + 12 * n * n + 3 * K * n * max(item, _F32)
    return int(_obs_memory()(geometry, rows) + 2 * K * K * item + workers * rows_c * per_row)


def _inverse_flops(geometry: Geometry) -> float:
    return geometry.weight_shape[1] ** 3 / 3


def _score_flops(geometry, rows=None, **options) -> float:
    # the scores, and the inverse of H_d that prepare forms for every method (a Cholesky
    # factor, K³/3, and the inverse from it, 2K³/3): most of a 384 × 1536 layer's time
    return 10.0 * _rows(geometry, rows) * geometry.weight_shape[1] + 3 * _inverse_flops(geometry)


def _local_flops(geometry, rows=None, **options) -> float:
    # one Cholesky of the scope's part of a row, per (row, step)
    _, T, gs, Lb = layout_shape(geometry)
    return _inverse_flops(geometry) + _rows(geometry, rows) * T * (
        (gs * Lb) ** 3 / 3 + 4 * (gs * Lb) ** 2)


def _sweep_flops(chunks_option: str | None = None):
    """One (or ``n_splits``) inverses plus a rank-update sweep over every row."""
    def flops(geometry, rows=None, **options) -> float:
        K = geometry.weight_shape[1]
        chunks = options.get(chunks_option, N_SPLITS.default) if chunks_option else 1
        return chunks * _inverse_flops(geometry) + 2.0 * _rows(geometry, rows) * K * K
    return flops


def _true_obs_flops(geometry, rows=None, c_dtype="auto", device="cpu", **options) -> float:
    # per row: the factor of the pruned set P on the columns F still to decide grows by
    # 2·q·|P|·|F| per batch (Σ ≈ s²·K³/3 at sparsity s: K³/12 at 50 %); the refit from that
    # factor is O(K²), but with an fp16/bf16 C it is one Cholesky of the kept part of H_d,
    # ((1 − s)·K)³/3
    K = geometry.weight_shape[1]
    s = _sparsity(geometry)
    exact = _c_bytes(c_dtype, device) >= _F32
    per_row = s * s * K ** 3 / 3 + (4 * K * K if exact else ((1 - s) * K) ** 3 / 3)
    return _inverse_flops(geometry) + _rows(geometry, rows) * per_row


# Overheads fitted to the layers of a whole MiniLM 2:4 run on the 2-core CPU machine with two
# threads (benchmarks/bench_model.py, docs/BENCHMARKS.md: measured per layer 384 × 384,
# 1536 × 384, 384 × 1536), the flops counted at the method's fraction of the measured matmul
# rate (Method.flop_efficiency, obsviz.estimate.time_estimate).

def _sweep_overhead(geometry, rows=None, **options) -> float:
    # local, full, split, interleaved: a fixed part and a per-weight part (masks, the sweeps'
    # copies): interleaved 0.055 s on 384 × 384, 0.13 s on 1536 × 384, 0.36 s on 384 × 1536
    return 0.02 + 1.5e-7 * _rows(geometry, rows) * geometry.weight_shape[1]


def _score_overhead(geometry, rows=None, **options) -> float:
    # magnitude, wanda, obd: 0.012 s on 384 × 384, 0.035 s on 1536 × 384 (the inverse counted
    # as flops: 0.11 s on 384 × 1536)
    return 0.01 + 3e-8 * _rows(geometry, rows) * geometry.weight_shape[1]


def _sparsegpt_overhead(geometry, rows=None, **options) -> float:
    # a fixed part and a per-weight part (masks, the lazy-batch copies): 0.12 s on 384 × 384,
    # 0.31 s on 1536 × 384, 0.63 s on 384 × 1536
    return 0.05 + 4.5e-7 * _rows(geometry, rows) * geometry.weight_shape[1]


def _true_obs_overhead(geometry, rows=None, ng=0, chunk_size=0, device="cpu",
                       **options) -> float:
    # the small operations of the decisions and the factor's gathers: about 0.22 ms per row and
    # batch of ng steps, spread over the chunk workers (0.36 s on 384 × 384, 1.2 s on
    # 1536 × 384, 3.6 s on 384 × 1536, flops included, with two workers)
    _, T, _, _ = layout_shape(geometry)
    _, workers = _chunk(geometry, rows, chunk_size, device)
    return 0.05 + 2.2e-4 * _rows(geometry, rows) * -(-T // _batch_steps(geometry, ng)) / workers


# ---- run functions ------------------------------------------------------------------------------

def _run_true_obs(p: modes.Problem, ng: int, chunk_size: int, order: str, scoring: str,
                  c_dtype: str) -> torch.Tensor:
    dtype = c_dtype_of(c_dtype, p.W.device, p.C.dtype)
    p.notes["c_dtype"] = str(dtype).removeprefix("torch.")
    rows = chunk_rows(p.W.shape[1], p.W.shape[0], chunk_size, p.W.device)
    ng = batch_steps(p.n_prune * p.layout.cols.shape[3], ng)
    return modes.true_obs(p, ng, rows, order, scoring, dtype)


# ---- the registry -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Method:
    """One pruning method. ``run(problem, **options)`` prunes ``problem.W`` in place and returns
    the kept mask; ``options`` are exactly the method's own, checked, defaults filled."""

    name: str
    kind: str                        # "obs_mode" | "baseline"
    label: str                       # a short human name
    help: str                        # one sentence: what it does
    color: str                       # a fixed hex colour, the same in every figure
    options: tuple[Option, ...]
    run: Callable[..., torch.Tensor]
    memory_model: Callable[..., int] = _obs_memory()
    flop_model: Callable[..., float] = _sweep_flops()
    # seconds beyond the flops (Python-side steps, memory traffic): (geometry, rows, **options)
    overhead_model: Callable[..., float] = _sweep_overhead
    # the fraction of the measured matmul rate its leading-order flops reach
    flop_efficiency: float = 0.25
    uses_damping: bool = True        # False: the damped H is never read (damp is ignored)

    @property
    def option_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.options)

    def defaults(self) -> dict:
        return {o.name: o.default for o in self.options}

    def memory(self, geometry: Geometry, rows: int | None = None, device="cpu",
               **options) -> int:
        """Peak working memory in bytes (an estimate within a small factor) to prune ``rows``
        rows (default all). Options of other methods are ignored."""
        return int(self.memory_model(geometry, rows, device, **self._own(options)))

    def flops(self, geometry: Geometry, rows: int | None = None, **options) -> float:
        """Floating-point operations, to the leading order, to prune ``rows`` rows."""
        return float(self.flop_model(geometry, rows, **self._own(options)))

    def overhead_s(self, geometry: Geometry, rows: int | None = None, **options) -> float:
        """Seconds beyond the flops (Python-side steps, memory traffic) to prune ``rows`` rows."""
        return float(self.overhead_model(geometry, rows, **self._own(options)))

    def _own(self, options: dict) -> dict:
        return resolve_options(self.name, **options)


REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("local", "obs_mode", "local OBS",
           "select per (row, scope) by exhaustive OBS cost; compensate only the scope's own kept "
           "weights, with the shared fixed C",
           "#72B7B2", (), modes.local, flop_model=_local_flops),
    Method("full", "obs_mode", "full OBS",
           "select once with the shared C; then scope by scope, each row's pruned set "
           "compensates every not-yet-pruned column of its row",
           "#4C78A8", (), modes.full),
    Method("split", "obs_mode", "split OBS",
           "as full, the scope sequence cut into n_splits chunks, each with C re-inverted on the "
           "columns not yet frozen",
           "#9D755D", (N_SPLITS,), modes.split, _obs_memory(1), _sweep_flops("n_splits")),
    Method("interleaved", "obs_mode", "interleaved OBS",
           "as split, each chunk's masks re-selected with that chunk's C and the current W",
           "#F58518", (N_SPLITS,), modes.interleaved, _obs_memory(1), _sweep_flops("n_splits")),
    Method("true_obs", "obs_mode", "true OBS",
           "exact OBS per row: every row keeps its own C (as a factor of its pruned set), "
           "downdated as its weights go, so every decision sees all earlier ones",
           "#E45756", (NG, CHUNK_SIZE, ORDER, SCORING, C_DTYPE), _run_true_obs,
           _true_obs_memory, _true_obs_flops, _true_obs_overhead, flop_efficiency=0.35),
    Method("magnitude", "baseline", "magnitude",
           "prune the blocks of least L2 norm; no compensation",
           "#8A8FA3", (), baselines.magnitude, _score_memory, _score_flops, _score_overhead,
           uses_damping=False),
    Method("wanda", "baseline", "Wanda",
           "prune the blocks of least |w|·‖x‖ (Wanda's score); no compensation",
           "#B279A2", (), baselines.wanda, _score_memory, _score_flops, _score_overhead,
           uses_damping=False),
    Method("obd", "baseline", "OBD",
           "Optimal Brain Damage: prune the blocks of least w²/C_cc; no compensation",
           "#EECA3B", (), baselines.obd, _obs_memory(), _score_flops, _score_overhead),
    Method("sparsegpt", "baseline", "SparseGPT",
           "SparseGPT: sweep the columns left to right, compensating later columns through the "
           "Cholesky factor of C, with lazy batch updates",
           "#54A24B", (), baselines.sparsegpt,
           overhead_model=_sparsegpt_overhead),
)}

METHODS: tuple[str, ...] = tuple(REGISTRY)
OBS_MODES: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.kind == "obs_mode")
BASELINES: tuple[str, ...] = tuple(n for n, m in REGISTRY.items() if m.kind == "baseline")


def _all_options() -> dict[str, Option]:
    found: dict[str, Option] = {}
    for method in REGISTRY.values():
        for option in method.options:
            if found.setdefault(option.name, option) is not option:
                raise RuntimeError(f"option {option.name!r} is declared twice, differently")
    return found


#: Every option of every method, by name (one definition per name).
OPTIONS: dict[str, Option] = _all_options()


def get(name: str) -> Method:
    """The method called ``name``; :class:`ArgumentError` (``"method"``) when there is none."""
    if not isinstance(name, str) or name not in REGISTRY:
        raise ArgumentError("method", f"method={name!r} is unknown; valid: {', '.join(METHODS)}")
    return REGISTRY[name]


def resolve_options(name: str, **given) -> dict:
    """The options of method ``name``: ``given`` ones checked, the rest at their defaults.

    Options that belong to other methods are checked and left out; a name that no method
    declares raises :class:`ArgumentError` naming it. ``None`` means "the default".
    """
    method = get(name)
    for key, value in given.items():
        if key not in OPTIONS:
            valid = ", ".join(method.option_names) or "none"
            raise ArgumentError(key, f"{key}={value!r} is not an option of any method; "
                                f"{name}'s options: {valid}; all: {', '.join(OPTIONS)}")
        if value is not None:
            OPTIONS[key].check(value)
    return {o.name: o.check(o.default if given.get(o.name) is None else given[o.name])
            for o in method.options}
