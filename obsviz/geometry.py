"""Sparsity geometry: a view of W, a block shape (pruned together) and a scope shape (compete).

Vocabulary (docs/ALGORITHMS.md, "Geometry"):

- ``W`` is ``(M, K)``, row-major: element ``(r, c)`` sits at flat offset ``r*K + c``.
- The **view** ``(shape, stride)`` maps a view index ``(i0, ..., id)`` to the flat offset
  ``sum(i_k * stride_k)``. It must reach every element of W exactly once.
- The **block** shape ``b`` tiles the view; the block grid is ``g = view.shape / b``.
- The **scope** shape ``s`` (counted in blocks) tiles the grid; blocks of one scope compete and
  ``nnz`` of them are kept.

Blocks are numbered in row-major order of the block grid, scopes in row-major order of the scope
grid; inside a scope, blocks are numbered row-major over the scope shape.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from obsviz.errors import ArgumentError

#: The named reference patterns. Any ``"N:M"`` string is also a preset: keep ``N`` of every ``M``
#: consecutive weights of a row (``Geometry.nm``). ``2:4-pairs`` keeps 2 of every 4 column pairs
#: of a row (block ``(1, 2)``, scope ``(1, 4)``): 4 of every 8 weights, but in pairs.
PRESETS = ("2:4", "2:4-pairs", "coupled-2:4", "block16")
#: Each named preset's own nnz (an ``"N:M"`` keeps ``N``).
PRESET_NNZ = {"2:4": 2, "2:4-pairs": 2, "coupled-2:4": 2, "block16": 1}
_NM = re.compile(r"(\d+):(\d+)")
#: Most dimensions a view may have (torch tensors have at most 64; real views have 2–5).
MAX_RANK = 16


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_int_sequence(value) -> bool:
    try:
        return all(_is_int(v) for v in value)
    except TypeError:
        return False


def _as_shape(name: str, value: Sequence[int], allow_whole: bool) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ArgumentError(name, f"{name}={value!r} must be a sequence of integers") from None
    if any(int(v) != v for v in value):
        raise ArgumentError(name, f"{name}={value!r} must contain integers only")
    if not shape:
        raise ArgumentError(name, f"{name}={value!r} must have at least one dimension")
    for v in shape:
        if v == -1 and allow_whole:
            continue
        if v <= 0:
            valid = "positive integers or -1 (whole dimension)" if allow_whole else "positive"
            raise ArgumentError(name, f"{name}={shape} has size {v}; sizes must be {valid}")
    return shape


def _row_major_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return tuple(reversed(strides))


def _is_mixed_radix(shape: Sequence[int], stride: Sequence[int]) -> bool:
    """True when the view is a row-major layout of a permutation of its dims (dims of size 1
    aside): strides, smallest first, are 1, n₀, n₀n₁, … — a bijection onto ``[0, prod(shape))``,
    seen in ``O(rank)`` without enumerating a single offset."""
    dims = sorted((s, n) for n, s in zip(shape, stride, strict=True) if n > 1)
    expected = 1
    for s, n in dims:
        if s != expected:
            return False
        expected *= n
    return True


def _linear_index(shape: Sequence[int], coeff: Sequence[int], steps: Sequence[int] | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Row-major enumeration of ``sum_k (i_k * steps_k) * coeff_k`` over ``i`` in ``shape``.

    Returns a flat ``(prod(shape),)`` long tensor, built by broadcasting (no Python loop over
    elements).
    """
    steps = steps or [1] * len(shape)
    total = torch.zeros((), dtype=torch.long, device=device)
    for k, (n, c, s) in enumerate(zip(shape, coeff, steps, strict=True)):
        axis = torch.arange(n, dtype=torch.long, device=device) * (s * c)
        view = [1] * len(shape)
        view[k] = n
        total = total + axis.view(view)
    return total.reshape(-1)


def _broadcast_sum(terms: Sequence[torch.Tensor], out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i0, ..., id] = Σ_k terms[k][i_k]`` for 1-D ``terms``, by broadcasting. The axes are
    added longest last, so only the final addition is full size (and it may write straight into
    ``out``, e.g. a strided view of W's storage)."""
    d = len(terms)
    order = sorted(range(d), key=lambda k: terms[k].numel())
    total = None
    for n_done, k in enumerate(order):
        shape = [1] * d
        shape[k] = terms[k].numel()
        term = terms[k].view(shape)
        if total is None:
            total = term
        elif n_done == d - 1 and out is not None:
            return torch.add(total, term, out=out)
        else:
            total = total + term
    if out is not None:
        return out.copy_(total.expand(out.shape))
    return total.expand([t.numel() for t in terms]).contiguous()


def _index_dtype(numel: int) -> torch.dtype:
    """int32 when every index fits (half the memory traffic of int64), else int64."""
    return torch.int32 if numel < 2**31 else torch.long


@dataclass(frozen=True)
class GeometryFacts:
    """Counts a person reads off a geometry."""

    blocks: int
    scopes: int
    block_numel: int
    blocks_per_scope: int
    rows_per_scope: int
    is_row_coupled: bool


class Geometry:
    """A sparsity geometry over a weight of shape ``(M, K)``.

    Args:
        weight_shape: ``(M, K)``.
        block: block shape in view dims; ``-1`` is the whole dimension.
        scope: scope shape in blocks; ``-1`` is the whole grid dimension; missing trailing dims
            are ``-1``.
        view_shape, view_stride: the view; ``None`` means W itself. A shape without a stride is a
            row-major reshape.
        name: a label (presets set it).
        nnz: the preset's default number of blocks kept per scope (``None`` for free-form).

    Raises:
        ArgumentError: ``.argument`` names the argument (``"view_shape"``, ``"block"``, …); the
            message gives its value and what would be valid. The view is checked before the
            block and the scope, so a view that does not fit W is blamed on the view.
    """

    def __init__(
        self,
        weight_shape: Sequence[int],
        block: Sequence[int],
        scope: Sequence[int],
        view_shape: Sequence[int] | None = None,
        view_stride: Sequence[int] | None = None,
        *,
        name: str | None = None,
        nnz: int | None = None,
    ) -> None:
        weight_shape = _as_shape("weight_shape", weight_shape, allow_whole=False)
        if len(weight_shape) != 2:
            raise ArgumentError("weight_shape", f"weight_shape={weight_shape} must be 2-D (M, K)")
        M, K = weight_shape
        if view_shape is None:
            if view_stride is not None:
                raise ArgumentError("view_stride", "view_stride given without view_shape; give "
                                    "both or neither")
            view_shape, view_stride = (M, K), (K, 1)
        view_shape = _as_shape("view_shape", view_shape, allow_whole=False)
        if len(view_shape) > MAX_RANK:
            raise ArgumentError("view_shape", f"view_shape has rank {len(view_shape)}; a view has "
                                f"at most {MAX_RANK} dimensions")
        if view_stride is None:
            view_stride = _row_major_strides(view_shape)
        if not _is_int_sequence(view_stride):
            raise ArgumentError("view_stride",
                                f"view_stride={view_stride!r} must be a sequence of integers")
        view_stride = tuple(int(s) for s in view_stride)
        if len(view_stride) != len(view_shape):
            raise ArgumentError(
                "view_stride", f"view_stride={view_stride} has rank {len(view_stride)} but "
                f"view_shape={view_shape} has rank {len(view_shape)}; they must match")
        if any(s < 0 for s in view_stride):
            raise ArgumentError(
                "view_stride",
                f"view_stride={view_stride} has a negative stride; strides must be >= 0")
        # Before anything that costs time or memory in the size of the numbers (divisors, maps):
        # the view must hold exactly M×K elements and reach each once.
        _check_view_is_bijection((M, K), view_shape, view_stride)

        block_given = block = _as_shape("block", block, allow_whole=True)
        if len(block) != len(view_shape):
            raise ArgumentError(
                "block", f"block={block} has rank {len(block)} but the view {view_shape} has rank "
                f"{len(view_shape)}; give one block size per view dimension")
        block = tuple(v if b == -1 else b for b, v in zip(block, view_shape, strict=True))
        for k, (b, v) in enumerate(zip(block, view_shape, strict=True)):
            if v % b:
                raise ArgumentError(
                    "block",
                    f"block={block_given}: size {b} in dim {k} does not divide view size {v}; "
                    f"valid sizes: {_short(divisors(v))} or -1")
        grid = tuple(v // b for v, b in zip(view_shape, block, strict=True))

        scope_given = scope = _as_shape("scope", scope, allow_whole=True)
        if len(scope) > len(grid):
            raise ArgumentError(
                "scope", f"scope={scope} has rank {len(scope)} but the block grid {grid} has rank "
                f"{len(grid)}; give at most one size per grid dimension")
        scope = scope + (-1,) * (len(grid) - len(scope))
        scope = tuple(g if s == -1 else s for s, g in zip(scope, grid, strict=True))
        for k, (s, g) in enumerate(zip(scope, grid, strict=True)):
            if g % s:
                raise ArgumentError(
                    "scope", f"scope={scope_given}: size {s} in dim {k} does not divide block-grid "
                    f"size {g}; "
                    f"valid sizes: {_short(divisors(g))} or -1")

        self.weight_shape: tuple[int, int] = (M, K)
        self.view_shape: tuple[int, ...] = view_shape
        self.view_stride: tuple[int, ...] = view_stride
        self.block: tuple[int, ...] = block
        self.scope: tuple[int, ...] = scope
        self.grid: tuple[int, ...] = grid
        self.scope_grid: tuple[int, ...] = tuple(g // s for g, s in zip(grid, scope, strict=True))
        self.name = name
        self.nnz = nnz
        if nnz is not None:
            self.check_nnz(nnz)

    # ---- construction helpers -------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, weight_shape: Sequence[int]) -> Geometry:
        """One of the reference patterns (docs/ALGORITHMS.md, "Presets"):

        - ``"N:M"`` (``"2:4"``, ``"4:8"``, …): keep ``N`` of every ``M`` consecutive weights of
          a row (:meth:`nm`);
        - ``"2:4-pairs"``: keep 2 of every 4 column pairs of a row (block ``(1, 2)``, scope
          ``(1, 4)``);
        - ``"coupled-2:4"``: keep 2 of every 4 column pairs ``(c, c + 8)`` of a row;
        - ``"block16"``: one of two 16-wide row blocks, 8 rows apart, is kept.
        """
        shape = _as_shape("weight_shape", weight_shape, allow_whole=False)
        if len(shape) != 2:
            raise ArgumentError("weight_shape", f"weight_shape={shape} must be 2-D (M, K)")
        M, K = shape
        if name == "2:4-pairs":
            return cls(shape, block=(1, 2), scope=(1, 4), name=name, nnz=PRESET_NNZ[name])
        if name == "coupled-2:4":
            if K % 16:
                raise ArgumentError("preset",
                                    f"preset 'coupled-2:4' needs K divisible by 16; got K={K}")
            return cls(shape, block=(1, 1, 1, 2), scope=(1, 1, 4, 1),
                       view_shape=(M, K // 16, 8, 2), view_stride=(K, 16, 1, 8),
                       name=name, nnz=PRESET_NNZ[name])
        if name == "block16":
            if M % 16 or K % 16:
                raise ArgumentError("preset", f"preset 'block16' needs M and K divisible by 16; "
                                    f"got {shape}")
            return cls(shape, block=(1, 1, 1, 16), scope=(1, 1, 2, 1),
                       view_shape=(M // 16, 8, 2, K), view_stride=(16 * K, K, 8 * K, 1),
                       name=name, nnz=PRESET_NNZ[name])
        if isinstance(name, str) and ":" in name:
            n, _, m = name.partition(":")
            if n.isdigit() and m.isdigit():
                return cls.nm(int(n), int(m), shape)
        raise ArgumentError(
            "preset",
            f"preset={name!r} is unknown; valid: {', '.join(PRESETS)} or any 'N:M' such as '1:4'")

    @classmethod
    def nm(cls, n: int, m: int, weight_shape: Sequence[int]) -> Geometry:
        """General N:M: keep ``n`` of every ``m`` contiguous weights of a row."""
        if not (_is_int(m) and m > 0):
            raise ArgumentError("m", f"m={m!r} must be a positive integer")
        if not (_is_int(n) and 0 <= n <= m):
            raise ArgumentError("n", f"n={n!r} must be an integer in [0, m={m}]")
        n, m = int(n), int(m)
        shape = _as_shape("weight_shape", weight_shape, allow_whole=False)
        if len(shape) == 2 and shape[1] % m:
            K = shape[1]
            fits = [d for d in range(2, 65) if K % d == 0]   # cheap whatever K is
            hint = (f"group sizes that divide it: {', '.join(map(str, fits))}" if fits
                    else "no group size from 2 to 64 divides it")
            raise ArgumentError(
                "m", f"{n}:{m} keeps {n} of every {m} weights of a row, so the group size {m} "
                f"must divide the row length K = {K}; {hint}")
        return cls(shape, block=(1, 1), scope=(1, m), name=f"{n}:{m}", nnz=n)

    # ---- counts ---------------------------------------------------------------------------

    @property
    def block_numel(self) -> int:
        """Elements per block (``bk``)."""
        return math.prod(self.block)

    @property
    def blocks_per_scope(self) -> int:
        """Blocks competing in one scope (``gs``)."""
        return math.prod(self.scope)

    @property
    def n_blocks(self) -> int:
        return math.prod(self.grid)

    @property
    def n_scopes(self) -> int:
        return math.prod(self.scope_grid)

    def check_nnz(self, nnz: int) -> int:
        """Validate ``nnz`` (blocks kept per scope) and return it; ``ArgumentError("nnz")``."""
        gs = self.blocks_per_scope
        if not _is_int(nnz) or not 0 <= nnz <= gs:
            raise ArgumentError("nnz", f"nnz={nnz!r} must be an integer in [0, {gs}] (blocks per "
                                "scope)")
        return int(nnz)

    def prunes_nothing(self, nnz: int) -> bool:
        """True when ``nnz`` keeps every block of a scope: nothing is pruned (0 % sparsity)."""
        return self.check_nnz(nnz) == self.blocks_per_scope

    def run_name(self, nnz: int) -> str:
        """What pruning with ``nnz`` blocks kept per scope is called (:func:`run_name`)."""
        return run_name(self.name or f"free-form {self.describe()}", self.check_nnz(nnz))

    def pruned_per_scope(self, nnz: int) -> int:
        """``np = gs - nnz``."""
        return self.blocks_per_scope - self.check_nnz(nnz)

    def n_subsets(self, nnz: int) -> int:
        """Candidate pruning subsets per scope: ``C(gs, np)``."""
        return math.comb(self.blocks_per_scope, self.pruned_per_scope(nnz))

    def sparsity(self, nnz: int) -> float:
        """Fraction of weights pruned."""
        return self.pruned_per_scope(nnz) / self.blocks_per_scope

    @cached_property
    def rows_per_scope(self) -> int:
        """Most distinct W rows one scope touches."""
        if not self.is_row_coupled:
            return 1
        return int((self._scope_rows >= 0).sum(1).max())

    @cached_property
    def is_row_coupled(self) -> bool:
        """True when some scope spans several W rows (their decisions are made together)."""
        lo, hi = self._block_row_range
        return bool((hi.amax(1) > lo.amin(1)).any())

    @cached_property
    def _block_row_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(S, gs)`` first and last W row of every block of every scope."""
        rows = self._scope_elements // self.weight_shape[1]
        return rows.amin(-1), rows.amax(-1)

    @cached_property
    def _scope_rows(self) -> torch.Tensor:
        """``(S, R)`` long: distinct W rows of each scope, ascending, -1 padded. When every block
        lies in one row only the blocks' rows are compared (a sort over ``gs``, not ``gs·bk``)."""
        lo, hi = self._block_row_range
        if torch.equal(lo, hi):
            return distinct_sorted(lo.long())
        rows = self._scope_elements.reshape(self.n_scopes, -1) // self.weight_shape[1]
        return distinct_sorted(rows.long())

    def facts(self) -> GeometryFacts:
        return GeometryFacts(self.n_blocks, self.n_scopes, self.block_numel,
                             self.blocks_per_scope, self.rows_per_scope, self.is_row_coupled)

    # ---- induced maps ---------------------------------------------------------------------

    def block_elements(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Flat offsets of every block's elements, ``(n_blocks, bk)``, blocks in grid order."""
        base = _linear_index(self.grid, self.view_stride, self.block, device)
        within = _linear_index(self.block, self.view_stride, None, device)
        return base[:, None] + within[None, :]

    def scope_blocks(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Block ids of every scope, ``(n_scopes, gs)``, scopes in scope-grid order."""
        grid_strides = _row_major_strides(self.grid)
        base = _linear_index(self.scope_grid, grid_strides, self.scope, device)
        within = _linear_index(self.scope, grid_strides, None, device)
        return base[:, None] + within[None, :]

    def scope_elements(self, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.long) -> torch.Tensor:
        """Flat offsets of every element, ``(n_scopes, gs, bk)`` (computed once, then cached)."""
        return self._scope_elements.to(device, dtype)

    @cached_property
    def _scope_elements(self) -> torch.Tensor:
        # Element (scope g, block p in it, element w in the block) sits at view index
        # i_k = (g_k s_k + p_k) b_k + w_k: its offset is a sum of one term per (axis, part).
        d = len(self.view_shape)
        dtype = _index_dtype(math.prod(self.weight_shape))
        terms = []
        for part in range(3):
            for k in range(d):
                n = (self.scope_grid, self.scope, self.block)[part][k]
                unit = (self.scope[k] * self.block[k], self.block[k], 1)[part]
                terms.append(torch.arange(n, dtype=dtype) * (unit * self.view_stride[k]))
        out = _broadcast_sum(terms)
        return out.view(self.n_scopes, self.blocks_per_scope, self.block_numel)

    def _view_map(self, per_axis, dtype: torch.dtype) -> torch.Tensor:
        """``(M, K)``: at every element, ``Σ_k per_axis(k, g_k)`` of its block-grid index ``g``,
        written straight through the view's strides (one pass, no index tensor)."""
        M, K = self.weight_shape
        terms = [per_axis(k, torch.arange(v, dtype=torch.long) // b).to(dtype)
                 for k, (v, b) in enumerate(zip(self.view_shape, self.block, strict=True))]
        out = torch.empty(M * K, dtype=dtype)
        _broadcast_sum(terms, torch.as_strided(out, self.view_shape, self.view_stride))
        return out.view(M, K)

    def block_map(self, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """``(M, K)``: the block id of every weight."""
        strides = _row_major_strides(self.grid)
        return self._view_map(lambda k, g: g * strides[k], dtype)

    def scope_map(self, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """``(M, K)``: the scope id of every weight."""
        strides = _row_major_strides(self.scope_grid)
        return self._view_map(lambda k, g: (g // self.scope[k]) * strides[k], dtype)

    def block_in_scope_map(self, dtype: torch.dtype = torch.long) -> torch.Tensor:
        """``(M, K)``: the position of every weight's block inside its scope."""
        strides = _row_major_strides(self.scope)
        return self._view_map(lambda k, g: (g % self.scope[k]) * strides[k], dtype)

    def column_map(self) -> torch.Tensor:
        """``(n_blocks, bk)`` long: the W column of every element of every block."""
        return self.block_elements() % self.weight_shape[1]

    def row_coupling(self) -> torch.Tensor:
        """``(n_scopes, R)`` long: the distinct W rows each scope touches, ascending, padded with
        ``-1`` when scopes touch different numbers of rows."""
        return self._row_coupling.clone()

    @cached_property
    def _row_coupling(self) -> torch.Tensor:
        if not self.is_row_coupled:
            return self._block_row_range[0][:, :1].long()
        return self._scope_rows

    # ---- presentation ---------------------------------------------------------------------

    def describe(self) -> str:
        view = ("W" if self.is_plain_view
                else f"{self.view_shape} : {self.view_stride}")
        return f"view {view}, block {self.block}, scope {self.scope}"

    @property
    def is_plain_view(self) -> bool:
        M, K = self.weight_shape
        return self.view_shape == (M, K) and self.view_stride == (K, 1)

    def to_dict(self) -> dict:
        """Plain data; ``Geometry.from_dict`` rebuilds it."""
        return {"weight_shape": list(self.weight_shape), "view_shape": list(self.view_shape),
                "view_stride": list(self.view_stride), "block": list(self.block),
                "scope": list(self.scope), "name": self.name, "nnz": self.nnz}

    @classmethod
    def from_dict(cls, d: dict) -> Geometry:
        return cls(d["weight_shape"], d["block"], d["scope"], d.get("view_shape"),
                   d.get("view_stride"), name=d.get("name"), nnz=d.get("nnz"))

    @cached_property
    def key(self) -> str:
        """The geometry's identity as one canonical string: weight shape, view, block and scope
        (not the name, not the default ``nnz``). ``==``, ``hash``, every cache and every run key
        use it, e.g. ``"W 8x16 view (8, 16):(16, 1) block (1, 1) scope (1, 4)"``."""
        M, K = self.weight_shape
        return (f"W {M}x{K} view {self.view_shape}:{self.view_stride} block {self.block} "
                f"scope {self.scope}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"Geometry({label}{self.weight_shape}, {self.describe()})"


def run_name(name: str, nnz: int) -> str:
    """The name of what is run when a geometry called ``name`` keeps ``nnz`` blocks per scope,
    so that a name always says what was pruned: an ``"N:M"`` name keeps ``N`` = ``nnz``
    (``"4:8"`` at nnz 1 is ``"1:8"``); a named preset at another nnz than its own says so
    (``"block16 at nnz = 2"``); any other name (a description) is returned as it is, its nnz
    told apart elsewhere. Idempotent: ``run_name(run_name(n, k), k) == run_name(n, k)``."""
    nm = _NM.fullmatch(name)
    if nm:
        return f"{int(nnz)}:{nm.group(2)}"
    if name in PRESET_NNZ and int(nnz) != PRESET_NNZ[name]:
        return f"{name} at nnz = {int(nnz)}"
    return name


def nothing_pruned_text(name: str, blocks_per_scope: int) -> str:
    """The warning for a choice that prunes nothing (``Geometry.prunes_nothing``)."""
    return (f"{name} keeps all {blocks_per_scope} blocks of every scope: nothing is pruned "
            "(0 % sparsity, no error by construction). Lower nnz to prune.")


def _check_view_is_bijection(weight_shape: tuple[int, int], view_shape: tuple[int, ...],
                             view_stride: tuple[int, ...]) -> None:
    """``ArgumentError`` unless the view reaches every element of W exactly once: a wrong element
    count is the view shape's fault (``"view_shape"``); a right count mapped wrongly, the
    stride's (``"view_stride"``)."""
    M, K = weight_shape
    numel = M * K
    view_numel = math.prod(view_shape)
    if view_numel != numel:
        raise ArgumentError(
            "view_shape",
            f"view_shape={view_shape} has {view_numel} elements but W {weight_shape} has "
            f"{numel}; a view must reach every element exactly once")
    reach = sum((n - 1) * s for n, s in zip(view_shape, view_stride, strict=True))
    if reach >= numel:
        raise ArgumentError(
            "view_stride",
            f"view_shape={view_shape}, view_stride={view_stride} reaches flat offset {reach}, "
            f"outside W of shape {weight_shape} (offsets 0..{numel - 1})")
    if _is_mixed_radix(view_shape, view_stride):
        return  # a row-major layout of some permutation of the dims: a bijection, no count
    offsets = _linear_index(view_shape, view_stride)
    hits = torch.bincount(offsets, minlength=numel)
    missed = torch.nonzero(hits == 0).flatten()
    if missed.numel():
        twice = torch.nonzero(hits > 1).flatten()
        raise ArgumentError(
            "view_stride",
            f"view_shape={view_shape}, view_stride={view_stride} is not a bijection onto W "
            f"{weight_shape}: {missed.numel()} offsets missed (first {_short(missed.tolist())}), "
            f"{twice.numel()} hit more than once (first {_short(twice.tolist())})")


def distinct_sorted(values: torch.Tensor) -> torch.Tensor:
    """Distinct values of each row of ``(n, m)``, ascending, left-aligned, padded with -1."""
    s, _ = torch.sort(values, dim=1)
    dup = torch.zeros_like(s, dtype=torch.bool)
    dup[:, 1:] = s[:, 1:] == s[:, :-1]
    width = int((~dup).sum(1).max())
    big = torch.iinfo(torch.long).max
    s = torch.where(dup, torch.full_like(s, big), s)
    s, _ = torch.sort(s, dim=1)
    s = s[:, :width]
    return torch.where(s == big, torch.full_like(s, -1), s)


#: Most candidates :func:`divisors` tries: the list is a hint in an error message, so it stays
#: cheap however large the number is (all divisors up to ``n`` ≤ 2**32, the small ones above).
_DIVISOR_TRIALS = 2**16


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` ascending, in ``O(min(√n, 2**16))`` steps: complete for ``n ≤ 2**32``;
    above that, only the divisors ``≤ 2**16`` and their cofactors."""
    small = [d for d in range(1, min(math.isqrt(n), _DIVISOR_TRIALS) + 1) if n % d == 0]
    large = [n // d for d in reversed(small) if n // d != d]
    return small + large


def _short(items: list, n: int = 8) -> str:
    head = ", ".join(str(i) for i in items[:n])
    return f"[{head}{', ...' if len(items) > n else ''}]"
