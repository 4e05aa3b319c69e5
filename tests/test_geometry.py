"""The geometry engine against hand-worked cases and an independent slow enumeration.

The reference enumeration below is written from the vocabulary of docs/ALGORITHMS.md alone: walk
every view index, take its flat offset ``sum(i_k * stride_k)``, and read off the block
(``i_k // b_k`` in the block grid) and the scope (``g_k // s_k`` in the scope grid). Blocks,
scopes and the elements inside a block are numbered row-major, as ``obsviz/geometry.py``
documents.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

import obsviz
from obsviz import Geometry

# ---- the reference patterns, as docs/ALGORITHMS.md describes them ---------------------------


def preset_spec(name: str, M: int, K: int) -> dict:
    """View, block, scope and default nnz of a preset, as docs/ALGORITHMS.md describes them."""
    if name == "2:4":
        return dict(view_shape=(M, K), view_stride=(K, 1), block=(1, 1), scope=(1, 4), nnz=2)
    if name == "2:4-pairs":
        return dict(view_shape=(M, K), view_stride=(K, 1), block=(1, 2), scope=(1, 4), nnz=2)
    if name == "coupled-2:4":
        return dict(view_shape=(M, K // 16, 8, 2), view_stride=(K, 16, 1, 8),
                    block=(1, 1, 1, 2), scope=(1, 1, 4, 1), nnz=2)
    if name == "block16":
        return dict(view_shape=(M // 16, 8, 2, K), view_stride=(16 * K, K, 8 * K, 1),
                    block=(1, 1, 1, 16), scope=(1, 1, 2, 1), nnz=1)
    raise AssertionError(name)


# ---- an independent, slow, pure-Python enumeration ------------------------------------------


def _row_major(index: tuple[int, ...], shape: tuple[int, ...]) -> int:
    flat = 0
    for i, n in zip(index, shape, strict=True):
        flat = flat * n + i
    return flat


def reference_maps(weight_shape, block, scope, view_shape=None, view_stride=None) -> dict:
    """Every map of a geometry by brute force over view indices (no engine helpers)."""
    M, K = weight_shape
    if view_shape is None:
        view_shape, view_stride = (M, K), (K, 1)
    if view_stride is None:
        view_stride = tuple(math.prod(view_shape[k + 1:]) for k in range(len(view_shape)))
    block = tuple(v if b == -1 else b for b, v in zip(block, view_shape, strict=True))
    grid = tuple(v // b for v, b in zip(view_shape, block, strict=True))
    scope = tuple(scope) + (-1,) * (len(grid) - len(scope))
    scope = tuple(g if s == -1 else s for s, g in zip(scope, grid, strict=True))
    scope_grid = tuple(g // s for g, s in zip(grid, scope, strict=True))
    n_blocks, n_scopes, bk = math.prod(grid), math.prod(scope_grid), math.prod(block)

    block_map = [[None] * K for _ in range(M)]
    scope_map = [[None] * K for _ in range(M)]
    pos_map = [[None] * K for _ in range(M)]
    columns = [[None] * bk for _ in range(n_blocks)]
    scope_rows = [set() for _ in range(n_scopes)]
    for idx in itertools.product(*(range(n) for n in view_shape)):
        r, c = divmod(sum(i * s for i, s in zip(idx, view_stride, strict=True)), K)
        g = tuple(i // b for i, b in zip(idx, block, strict=True))
        within = tuple(i % b for i, b in zip(idx, block, strict=True))
        u = tuple(gk // sk for gk, sk in zip(g, scope, strict=True))
        in_scope = tuple(gk % sk for gk, sk in zip(g, scope, strict=True))
        b_id, s_id = _row_major(g, grid), _row_major(u, scope_grid)
        assert block_map[r][c] is None, "the reference case is not a bijection"
        block_map[r][c], scope_map[r][c] = b_id, s_id
        pos_map[r][c] = _row_major(in_scope, scope)
        columns[b_id][_row_major(within, block)] = c
        scope_rows[s_id].add(r)

    width = max(len(rows) for rows in scope_rows)
    coupling = [sorted(rows) + [-1] * (width - len(rows)) for rows in scope_rows]
    return dict(block_map=torch.tensor(block_map), scope_map=torch.tensor(scope_map),
                block_in_scope_map=torch.tensor(pos_map), column_map=torch.tensor(columns),
                row_coupling=torch.tensor(coupling), block=block, scope=scope,
                n_blocks=n_blocks, n_scopes=n_scopes, block_numel=bk,
                blocks_per_scope=math.prod(scope))


# ---- the cases every map is checked on ------------------------------------------------------

FREE_FORM = {
    "1:4": dict(weight_shape=(4, 16), block=(1, 1), scope=(1, 4)),
    "3:8": dict(weight_shape=(4, 16), block=(1, 1), scope=(1, 8)),
    "tiles-2x2": dict(weight_shape=(8, 12), block=(2, 2), scope=(1, 2)),
    "whole-input-channels": dict(weight_shape=(6, 10), block=(-1, 1), scope=(1, -1)),
    "whole-output-rows": dict(weight_shape=(6, 10), block=(1, -1), scope=(-1, 1)),
    "scope-padded-to-whole-row": dict(weight_shape=(4, 8), block=(1, 2), scope=(1,)),
    "tiles-scope-padded": dict(weight_shape=(8, 12), block=(2, 2), scope=(2,)),
    "transposed-view": dict(weight_shape=(8, 6), block=(1, 2), scope=(1, 2),
                            view_shape=(6, 8), view_stride=(1, 6)),
    "transposed-view-tiles": dict(weight_shape=(4, 6), block=(2, 2), scope=(1, 2),
                                  view_shape=(6, 4), view_stride=(1, 6)),
    "3d-view-column-halves": dict(weight_shape=(4, 8), block=(1, 1, 2), scope=(2, 1, 1),
                                  view_shape=(2, 4, 4), view_stride=(4, 8, 1)),
    "3d-view-row-pairs": dict(weight_shape=(8, 4), block=(1, 1, 4), scope=(2, 1, 1),
                              view_shape=(2, 4, 4), view_stride=(4, 8, 1)),
    "row-major-reshape-without-stride": dict(weight_shape=(4, 8), block=(1, 2, 1),
                                             scope=(1, 1, 4), view_shape=(4, 2, 4)),
    "1d-view-straddling-rows": dict(weight_shape=(2, 6), block=(2,), scope=(2,),
                                    view_shape=(12,), view_stride=(1,)),
}

PRESET_CASES = [("2:4", 16, 32), ("2:4-pairs", 16, 32), ("coupled-2:4", 16, 32),
                ("coupled-2:4", 32, 32), ("block16", 32, 32), ("block16", 16, 48)]


def _preset_case(name: str, M: int, K: int) -> tuple[Geometry, dict]:
    spec = preset_spec(name, M, K)
    spec.pop("nnz")
    return Geometry.preset(name, (M, K)), dict(weight_shape=(M, K), **spec)


def all_cases():
    for name, M, K in PRESET_CASES:
        yield pytest.param(*_preset_case(name, M, K), id=f"{name}-{M}x{K}")
    for name, kwargs in FREE_FORM.items():
        yield pytest.param(Geometry(**kwargs), kwargs, id=name)


# ---- every map equals the brute-force enumeration -------------------------------------------


@pytest.mark.parametrize(("geom", "spec"), list(all_cases()))
def test_maps_match_brute_force_enumeration_of_view_indices(geom, spec):
    ref = reference_maps(**spec)
    M, K = spec["weight_shape"]
    for name in ("block_map", "scope_map", "block_in_scope_map", "column_map", "row_coupling"):
        got = getattr(geom, name)()
        assert got.dtype == torch.long, name
        assert torch.equal(got, ref[name]), name
    assert geom.block_map().shape == geom.scope_map().shape == (M, K)
    assert geom.column_map().shape == (geom.n_blocks, geom.block_numel)
    assert geom.row_coupling().shape[0] == geom.n_scopes


@pytest.mark.parametrize(("geom", "spec"), list(all_cases()))
def test_counts_and_resolved_shapes_match_brute_force(geom, spec):
    ref = reference_maps(**spec)
    assert geom.block == ref["block"]
    assert geom.scope == ref["scope"]
    assert geom.n_blocks == ref["n_blocks"]
    assert geom.n_scopes == ref["n_scopes"]
    assert geom.block_numel == ref["block_numel"]
    assert geom.blocks_per_scope == ref["blocks_per_scope"]
    rows_per_scope = int((ref["row_coupling"] >= 0).sum(1).max())
    assert geom.is_row_coupled == (rows_per_scope > 1)


@pytest.mark.parametrize(("geom", "spec"), list(all_cases()))
def test_every_weight_is_in_exactly_one_block_and_scope_of_the_promised_sizes(geom, spec):
    M, K = spec["weight_shape"]
    blocks, scopes = geom.block_map().flatten(), geom.scope_map().flatten()
    # each id in range, each block holds block_numel weights, each scope its gs blocks
    assert blocks.min() == 0 and blocks.max() == geom.n_blocks - 1
    assert scopes.min() == 0 and scopes.max() == geom.n_scopes - 1
    assert torch.all(torch.bincount(blocks) == geom.block_numel)
    assert torch.all(torch.bincount(scopes) == geom.block_numel * geom.blocks_per_scope)
    assert geom.n_blocks * geom.block_numel == M * K
    assert geom.n_scopes * geom.blocks_per_scope == geom.n_blocks
    # a block never straddles two scopes
    scope_of_block = torch.full((geom.n_blocks,), -1, dtype=torch.long)
    scope_of_block[blocks] = scopes
    assert torch.equal(scope_of_block[blocks], scopes)
    assert torch.all(torch.bincount(scope_of_block) == geom.blocks_per_scope)


# ---- hand-worked maps -----------------------------------------------------------------------


def test_2_4_blocks_are_single_weights_and_scopes_four_contiguous_columns():
    geom = Geometry.preset("2:4", (2, 8))
    assert torch.equal(geom.block_map(), torch.arange(16).view(2, 8))
    assert geom.scope_map().tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [2, 2, 2, 2, 3, 3, 3, 3]]
    assert geom.column_map().flatten().tolist() == list(range(8)) * 2


def test_2_4_pairs_blocks_are_column_pairs_and_scopes_eight_columns():
    geom = Geometry.preset("2:4-pairs", (2, 8))
    assert geom.block_map().tolist() == [[0, 0, 1, 1, 2, 2, 3, 3], [4, 4, 5, 5, 6, 6, 7, 7]]
    assert geom.scope_map().tolist() == [[0] * 8, [1] * 8]
    assert geom.column_map().tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]] * 2


def test_coupled_2_4_block_of_origin_is_columns_0_and_8():
    geom = Geometry.preset("coupled-2:4", (16, 32))
    members = (geom.block_map() == geom.block_map()[0, 0]).nonzero().tolist()
    assert members == [[0, 0], [0, 8]]
    assert geom.column_map()[geom.block_map()[0, 0]].tolist() == [0, 8]


def test_coupled_2_4_scope_of_origin_is_columns_0_to_3_and_8_to_11():
    geom = Geometry.preset("coupled-2:4", (16, 32))
    members = (geom.scope_map() == geom.scope_map()[0, 0]).nonzero().tolist()
    assert members == [[0, c] for c in (0, 1, 2, 3, 8, 9, 10, 11)]


def test_coupled_2_4_maps_of_one_row_pair_columns_eight_apart():
    geom = Geometry.preset("coupled-2:4", (1, 32))
    # column c: 16-group q = c // 16, offset j = c % 8 inside the group; block q*8 + j
    expected_blocks = [*range(8), *range(8), *range(8, 16), *range(8, 16)]
    expected_scopes = ([0] * 4 + [1] * 4) * 2 + ([2] * 4 + [3] * 4) * 2
    assert geom.block_map().tolist() == [expected_blocks]
    assert geom.scope_map().tolist() == [expected_scopes]
    assert geom.column_map().tolist() == [[c, c + 8] for c in (*range(8), *range(16, 24))]


def test_block16_block_of_origin_is_row_0_columns_0_to_15():
    geom = Geometry.preset("block16", (32, 32))
    members = (geom.block_map() == geom.block_map()[0, 0]).nonzero().tolist()
    assert members == [[0, c] for c in range(16)]


def test_block16_scope_of_origin_spans_rows_0_and_8_over_16_columns():
    geom = Geometry.preset("block16", (32, 32))
    members = (geom.scope_map() == geom.scope_map()[0, 0]).nonzero().tolist()
    assert members == [[r, c] for r in (0, 8) for c in range(16)]
    assert geom.row_coupling()[geom.scope_map()[0, 0]].tolist() == [0, 8]


def test_block16_maps_of_one_16_row_group():
    geom = Geometry.preset("block16", (16, 16))
    # view index (0, a, h, c) is row a + 8h: block a*2 + h, scope a
    assert geom.block_map().tolist() == [[(r % 8) * 2 + r // 8] * 16 for r in range(16)]
    assert geom.scope_map().tolist() == [[r % 8] * 16 for r in range(16)]
    assert geom.block_in_scope_map().tolist() == [[r // 8] * 16 for r in range(16)]


def test_block16_couples_rows_r_and_r_plus_8_of_each_16_row_group():
    geom = Geometry.preset("block16", (32, 32))
    # scope grid (2, 8, 1, 2): scope g*16 + a*2 + q holds rows 16g + a and 16g + a + 8
    expected = [[16 * g + a, 16 * g + a + 8] for g in range(2) for a in range(8) for _ in range(2)]
    assert geom.row_coupling().tolist() == expected
    assert geom.is_row_coupled


@pytest.mark.parametrize("name", ["2:4", "2:4-pairs", "coupled-2:4", "1:4", "3:8"])
def test_row_local_presets_are_not_row_coupled(name):
    geom = Geometry.preset(name, (16, 32))
    rows_per_scope = 32 // (geom.blocks_per_scope * geom.block_numel)
    expected = [[s // rows_per_scope] for s in range(geom.n_scopes)]
    assert geom.row_coupling().tolist() == expected
    assert not geom.is_row_coupled


def test_tiles_2x2_with_scope_1x2_span_two_rows_and_four_columns():
    geom = Geometry((4, 4), block=(2, 2), scope=(1, 2))
    assert geom.block_map().tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert geom.scope_map().tolist() == [[0] * 4, [0] * 4, [1] * 4, [1] * 4]
    assert geom.column_map().tolist() == [[0, 1, 0, 1], [2, 3, 2, 3]] * 2
    assert geom.row_coupling().tolist() == [[0, 1], [2, 3]]
    assert geom.is_row_coupled
    assert (geom.block_numel, geom.blocks_per_scope) == (4, 2)


def test_whole_input_channels_block_is_a_column_and_scope_the_whole_layer():
    geom = Geometry((3, 4), block=(-1, 1), scope=(1, -1))
    assert geom.block == (3, 1) and geom.scope == (1, 4)
    assert geom.block_map().tolist() == [[0, 1, 2, 3]] * 3
    assert geom.scope_map().tolist() == [[0] * 4] * 3
    assert geom.column_map().tolist() == [[c] * 3 for c in range(4)]
    assert geom.row_coupling().tolist() == [[0, 1, 2]]
    assert geom.is_row_coupled


def test_whole_output_rows_block_is_a_row_and_scope_all_rows():
    geom = Geometry((3, 4), block=(1, -1), scope=(-1, 1))
    assert geom.block == (1, 4) and geom.scope == (3, 1)
    assert geom.block_map().tolist() == [[0] * 4, [1] * 4, [2] * 4]
    assert geom.scope_map().tolist() == [[0] * 4] * 3
    assert geom.column_map().tolist() == [[0, 1, 2, 3]] * 3
    assert geom.row_coupling().tolist() == [[0, 1, 2]]
    assert geom.is_row_coupled


def test_transposed_view_groups_weights_down_a_column():
    # view (K, M) : (1, K) reads W column by column; view index (c, r) is W[r, c]
    geom = Geometry((2, 4), block=(2, 1), scope=(1, 2), view_shape=(4, 2), view_stride=(1, 4))
    assert geom.block_map().tolist() == [[0, 0, 2, 2], [1, 1, 3, 3]]
    assert geom.scope_map().tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    assert geom.column_map().tolist() == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert geom.row_coupling().tolist() == [[0, 1], [0, 1]]
    assert geom.is_row_coupled
    assert not geom.is_plain_view


def test_row_coupling_pads_with_minus_one_when_scopes_touch_different_row_counts():
    # flat view of a 2x6 W in scopes of 4 offsets: 0..3, 4..7 (straddles), 8..11
    geom = Geometry((2, 6), block=(2,), scope=(2,), view_shape=(12,), view_stride=(1,))
    assert geom.row_coupling().tolist() == [[0, -1], [0, 1], [1, -1]]
    assert geom.is_row_coupled


def test_scope_missing_trailing_dims_are_whole_dimension():
    assert Geometry((4, 8), block=(1, 2), scope=(1,)).scope == (1, 4)
    assert Geometry((8, 12), block=(2, 2), scope=(2,)).scope == (2, 6)
    assert Geometry((4, 8), block=(1, 2), scope=(1,)) == Geometry((4, 8), (1, 2), (1, -1))


def test_default_view_is_w_itself():
    geom = Geometry((4, 8), block=(1, 1), scope=(1, 4), view_shape=None, view_stride=None)
    assert (geom.view_shape, geom.view_stride) == ((4, 8), (8, 1))
    assert geom.is_plain_view
    explicit = Geometry((4, 8), (1, 1), (1, 4), view_shape=(4, 8), view_stride=(8, 1))
    assert geom == explicit


# ---- presets, N:M, counts -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2:4", "2:4-pairs", "coupled-2:4", "block16"])
def test_preset_is_the_design_table_geometry_with_its_default_nnz(name):
    M, K = 32, 64
    spec = preset_spec(name, M, K)
    nnz = spec.pop("nnz")
    geom = Geometry.preset(name, (M, K))
    assert geom == Geometry((M, K), **spec)
    assert (geom.view_shape, geom.view_stride) == (spec["view_shape"], spec["view_stride"])
    assert geom.nnz == nnz
    assert geom.name == name
    assert name in obsviz.PRESETS


@pytest.mark.parametrize(("n", "m"), [(1, 4), (3, 8), (2, 4), (0, 4), (4, 4)])
def test_nm_and_nm_string_keep_n_of_every_m_contiguous_columns(n, m):
    geom = Geometry.nm(n, m, (4, 16))
    assert geom == Geometry((4, 16), block=(1, 1), scope=(1, m))
    assert geom == Geometry.preset(f"{n}:{m}", (4, 16))
    assert geom.nnz == n and Geometry.preset(f"{n}:{m}", (4, 16)).nnz == n
    assert geom.scope_map()[0].tolist() == [c // m for c in range(16)]


@pytest.mark.parametrize(
    ("name", "shape", "counts"),
    [
        # (n_blocks, n_scopes, block_numel, blocks_per_scope, n_subsets, pruned, sparsity)
        ("2:4", (32, 32), (1024, 256, 1, 4, 6, 2, 0.5)),
        ("2:4-pairs", (32, 32), (512, 128, 2, 4, 6, 2, 0.5)),
        ("coupled-2:4", (32, 32), (512, 128, 2, 4, 6, 2, 0.5)),
        ("block16", (32, 32), (64, 32, 16, 2, 2, 1, 0.5)),
        ("1:4", (32, 32), (1024, 256, 1, 4, 4, 3, 0.75)),
        ("3:8", (32, 32), (1024, 128, 1, 8, 56, 5, 0.625)),
    ],
)
def test_preset_counts_at_default_nnz(name, shape, counts):
    geom = Geometry.preset(name, shape)
    nnz = geom.nnz
    got = (geom.n_blocks, geom.n_scopes, geom.block_numel, geom.blocks_per_scope,
           geom.n_subsets(nnz), geom.pruned_per_scope(nnz), geom.sparsity(nnz))
    assert got == counts


def test_counts_follow_nnz_over_its_whole_range():
    geom = Geometry((4, 16), block=(1, 1), scope=(1, 8))
    for nnz in range(9):
        assert geom.check_nnz(nnz) == nnz
        assert geom.pruned_per_scope(nnz) == 8 - nnz
        assert geom.n_subsets(nnz) == math.comb(8, 8 - nnz)
        assert geom.sparsity(nnz) == pytest.approx((8 - nnz) / 8)


def test_tiles_counts():
    geom = Geometry((8, 12), block=(2, 2), scope=(1, 3))
    assert (geom.n_blocks, geom.n_scopes, geom.block_numel, geom.blocks_per_scope) == (24, 8, 4, 3)
    assert geom.n_subsets(1) == 3 and geom.sparsity(1) == pytest.approx(2 / 3)


# ---- plain-data round trip ------------------------------------------------------------------


@pytest.mark.parametrize(("geom", "spec"), list(all_cases()))
def test_to_dict_from_dict_round_trips_through_json(geom, spec):
    data = json.loads(json.dumps(geom.to_dict()))
    again = Geometry.from_dict(data)
    assert again == geom and hash(again) == hash(geom)
    assert (again.name, again.nnz) == (geom.name, geom.nnz)
    assert torch.equal(again.scope_map(), geom.scope_map())


def test_from_dict_without_view_is_plain_w():
    geom = Geometry.from_dict({"weight_shape": [4, 8], "block": [1, 1], "scope": [1, 4]})
    assert geom.is_plain_view and geom.nnz is None


# ---- bad input: ValueError naming the argument, the value and what would be valid -----------

BAD_INPUTS = {
    "block-not-dividing": (
        dict(weight_shape=(16, 32), block=(1, 3), scope=(1, 1)),
        [r"block=\(1, 3\)", "does not divide", r"valid sizes: \[1, 2, 4, 8, 16, 32\] or -1"]),
    "scope-not-dividing": (
        dict(weight_shape=(16, 32), block=(1, 2), scope=(1, 3)),
        [r"scope=\(1, 3\)", "does not divide", r"valid sizes: \[1, 2, 4, 8, 16\] or -1"]),
    "block-rank-mismatch": (
        dict(weight_shape=(16, 32), block=(1, 1, 1), scope=(1, 4)),
        [r"block=\(1, 1, 1\)", "rank 3", r"view \(16, 32\) has rank 2"]),
    "scope-rank-too-high": (
        dict(weight_shape=(16, 32), block=(1, 1), scope=(1, 1, 4)),
        [r"scope=\(1, 1, 4\)", "rank 3", "at most one size per grid dimension"]),
    "stride-rank-mismatch": (
        dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), view_shape=(4, 8),
             view_stride=(8, 1, 1)),
        [r"view_stride=\(8, 1, 1\)", r"view_shape=\(4, 8\)", "must match"]),
    "weight-not-2d": (
        dict(weight_shape=(4, 8, 2), block=(1, 1), scope=(1, 4)),
        [r"weight_shape=\(4, 8, 2\)", r"2-D \(M, K\)"]),
    "view-misses-and-repeats-offsets": (
        dict(weight_shape=(4, 4), block=(1, 1), scope=(1, 4), view_shape=(4, 4),
             view_stride=(2, 1)),
        [r"view_shape=\(4, 4\), view_stride=\(2, 1\)", "not a bijection",
         r"6 offsets missed \(first \[10, 11, 12, 13, 14, 15\]\)",
         r"hit more than once \(first \[2, 3, 4"]),
    "view-repeats-with-zero-stride": (
        dict(weight_shape=(4, 4), block=(1, 1), scope=(1, 4), view_shape=(4, 4),
             view_stride=(0, 1)),
        [r"stride=\(0, 1\)", "not a bijection", "missed", "hit more than once"]),
    "view-reaches-outside-w": (
        dict(weight_shape=(4, 4), block=(1, 1), scope=(1, 4), view_shape=(4, 4),
             view_stride=(4, 2)),
        [r"stride=\(4, 2\)", "reaches flat offset 18", r"offsets 0\.\.15"]),
    "view-has-too-few-elements": (
        dict(weight_shape=(4, 4), block=(1, 1), scope=(1, 4), view_shape=(2, 4),
             view_stride=(4, 1)),
        [r"view_shape=\(2, 4\) has 8 elements", "has 16", "every element exactly once"]),
    "view-negative-stride": (
        dict(weight_shape=(4, 4), block=(1, 1), scope=(1, 4), view_shape=(4, 4),
             view_stride=(4, -1)),
        [r"view_stride=\(4, -1\)", ">= 0"]),
    "stride-without-shape": (
        dict(weight_shape=(4, 4), block=(1, 1), scope=(1, 4), view_stride=(4, 1)),
        ["view_stride", "without view_shape", "give both or neither"]),
    "block-zero": (
        dict(weight_shape=(4, 8), block=(0, 1), scope=(1, 4)),
        [r"block=\(0, 1\)", "size 0", r"positive integers or -1 \(whole dimension\)"]),
    "block-negative": (
        dict(weight_shape=(4, 8), block=(1, -2), scope=(1, 4)),
        [r"block=\(1, -2\)", "size -2", "positive integers or -1"]),
    "scope-zero": (
        dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 0)),
        [r"scope=\(1, 0\)", "size 0", "positive integers or -1"]),
    "weight-shape-zero": (
        dict(weight_shape=(0, 8), block=(1, 1), scope=(1, 4)),
        [r"weight_shape=\(0, 8\)", "size 0", "must be positive"]),
    "weight-shape-whole-is-not-a-size": (
        dict(weight_shape=(-1, 8), block=(1, 1), scope=(1, 4)),
        [r"weight_shape=\(-1, 8\)", "size -1", "must be positive"]),
    "view-shape-zero": (
        dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), view_shape=(0, 8)),
        [r"view_shape=\(0, 8\)", "size 0", "must be positive"]),
    "block-not-integer": (
        dict(weight_shape=(4, 8), block=(1.5, 1), scope=(1, 4)),
        [r"block=\(1\.5, 1\)", "integers only"]),
    "block-not-a-sequence": (
        dict(weight_shape=(4, 8), block=2, scope=(1, 4)),
        ["block=2", "sequence of integers"]),
    "block-empty": (
        dict(weight_shape=(4, 8), block=(), scope=(1, 4)),
        [r"block=\(\)", "at least one dimension"]),
    "preset-nnz-out-of-range": (
        dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), nnz=5),
        ["nnz=5", r"\[0, 4\]", "blocks per scope"]),
}


@pytest.mark.parametrize(("kwargs", "fragments"), list(BAD_INPUTS.values()),
                         ids=list(BAD_INPUTS))
def test_bad_geometry_raises_value_error_naming_argument_value_and_valid_range(kwargs, fragments):
    with pytest.raises(ValueError, match=fragments[0]) as info:
        Geometry(**kwargs)
    for fragment in fragments[1:]:
        info.match(fragment)


@pytest.mark.parametrize(
    ("call", "fragments"),
    [
        (lambda: Geometry.preset("2:5", (4, 8)),
         ["2:5 keeps 2 of every 5 weights", "row length K = 8", "sizes that divide it: 2, 4, 8"]),
        (lambda: Geometry.preset("coupled-2:4", (4, 24)),
         ["coupled-2:4", "K divisible by 16", "K=24"]),
        (lambda: Geometry.preset("block16", (24, 32)),
         ["block16", "M and K divisible by 16", r"\(24, 32\)"]),
        (lambda: Geometry.preset("2:4-pairs", (4, 12)),
         [r"scope=\(1, 4\)", "block-grid size 6"]),
        (lambda: Geometry.preset("bogus", (4, 8)),
         ["preset='bogus'", "2:4, 2:4-pairs, coupled-2:4, block16", "'N:M'"]),
        (lambda: Geometry.preset("2:4", (4, 8, 1)), [r"weight_shape=\(4, 8, 1\)", "2-D"]),
        (lambda: Geometry.nm(5, 4, (4, 8)), ["n=5", r"\[0, m=4\]"]),
        (lambda: Geometry.nm(1, 0, (4, 8)), ["m=0", "positive integer"]),
    ],
    ids=["nm-string-not-dividing", "coupled-k-not-16", "block16-m-not-16", "2-4-pairs-k-not-8",
         "unknown-preset", "preset-weight-not-2d", "nm-n-above-m", "nm-m-zero"],
)
def test_bad_preset_raises_value_error_naming_argument_and_value(call, fragments):
    with pytest.raises(ValueError, match=fragments[0]) as info:
        call()
    for fragment in fragments[1:]:
        info.match(fragment)


@pytest.mark.parametrize("stride", [(8.5, 1), ("8", "1")], ids=["float", "str"])
def test_non_integer_view_stride_is_rejected_not_truncated(stride):
    # block/scope/view_shape reject 1.5 and "2"; a stride of 8.5 must not silently become 8
    with pytest.raises(ValueError, match=r"view_stride=.*integer"):
        Geometry((4, 8), (1, 1), (1, 4), view_shape=(4, 8), view_stride=stride)


@pytest.mark.parametrize("name", [None, 24])
def test_preset_name_that_is_not_a_string_raises_value_error(name):
    with pytest.raises(ValueError, match=r"preset="):
        Geometry.preset(name, (4, 8))


@pytest.mark.parametrize("nnz", [-1, 5, 2.0, True, "2"])
def test_check_nnz_rejects_anything_but_an_int_in_0_to_blocks_per_scope(nnz):
    geom = Geometry.preset("2:4", (4, 8))
    with pytest.raises(ValueError, match=r"nnz=.*must be an integer in \[0, 4\]"):
        geom.check_nnz(nnz)
    with pytest.raises(ValueError, match=r"nnz="):
        geom.sparsity(nnz)


# ---- a real layer size ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["2:4", "block16"])
def test_maps_of_a_4096_by_11008_weight_are_computed(name):
    # shapes only; speed belongs in benchmarks/ (row_coupling is left out: it alone takes seconds)
    M, K = 4096, 11008
    geom = Geometry.preset(name, (M, K))
    blocks, scopes = geom.block_map(), geom.scope_map()
    assert blocks.shape == scopes.shape == (M, K)
    assert blocks.dtype == scopes.dtype == torch.long
    assert int(blocks.max()) == geom.n_blocks - 1 and int(scopes.max()) == geom.n_scopes - 1
    # spot checks against the hand-worked pattern, at the far corner of W
    if name == "2:4":
        assert int(scopes[M - 1, K - 1]) == (M * K) // 4 - 1
    else:
        assert int(scopes[0, 0]) == int(scopes[8, 15]) != int(scopes[1, 0])
        assert int(blocks[M - 1, K - 16]) == int(blocks[M - 1, K - 1]) == geom.n_blocks - 1


# ---- preset names say what they are; errors name their argument --------------------------------


@pytest.mark.parametrize("n, m", [(4, 8), (2, 4), (1, 4), (3, 8), (8, 16)])
def test_plain_n_m_means_any_n_of_m_consecutive_weights(n, m):
    geom = Geometry.preset(f"{n}:{m}", (4, 32))
    assert geom == Geometry.nm(n, m, (4, 32))
    assert (geom.block, geom.scope, geom.nnz) == ((1, 1), (1, m), n)
    assert geom.scope_map()[0].tolist() == [c // m for c in range(32)]


def test_2_4_pairs_is_2_of_4_column_pairs_not_4_of_8():
    pairs, nm48 = Geometry.preset("2:4-pairs", (2, 16)), Geometry.preset("4:8", (2, 16))
    assert (pairs.block, pairs.scope, pairs.nnz) == ((1, 2), (1, 4), 2)
    assert pairs != nm48 and pairs.key != nm48.key
    assert "4:8" not in obsviz.PRESETS


def test_a_view_that_does_not_fit_w_is_blamed_on_the_view_not_the_scope():
    with pytest.raises(obsviz.ArgumentError) as info:
        Geometry((384, 384), block=(1, 1), scope=(1, 4), view_shape=(384, 385))
    assert info.value.argument == "view_shape"
    assert str(info.value).startswith("view_shape=(384, 385)")


@pytest.mark.parametrize("kwargs, argument", [
    (dict(weight_shape=(4, 8, 1), block=(1, 1), scope=(1, 4)), "weight_shape"),
    (dict(weight_shape=(4, 8), block=(1, 3), scope=(1, 4)), "block"),
    (dict(weight_shape=(4, 8), block=(1, 1, 1), scope=(1, 4)), "block"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 3)), "scope"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 1, 1)), "scope"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), view_stride=(8, 1)), "view_stride"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), view_shape=(4, 8),
          view_stride=(8, 2)), "view_stride"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), view_shape=(4, 8),
          view_stride=(1, 1)), "view_stride"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), view_shape=(4, 8),
          view_stride=(8, -1)), "view_stride"),
    (dict(weight_shape=(4, 8), block=(1, 1), scope=(1, 4), nnz=5), "nnz"),
    (dict(weight_shape=(4, 8), block="ab", scope=(1, 4)), "block"),
])
def test_every_geometry_error_carries_its_argument(kwargs, argument):
    with pytest.raises(obsviz.ArgumentError) as info:
        Geometry(**kwargs)
    assert info.value.argument == argument
    assert argument in str(info.value)


@pytest.mark.parametrize("call, argument", [
    (lambda: Geometry.preset("bogus", (4, 8)), "preset"),
    (lambda: Geometry.preset("coupled-2:4", (4, 24)), "preset"),
    (lambda: Geometry.preset("2:5", (4, 8)), "m"),
    (lambda: Geometry.nm(5, 4, (4, 8)), "n"),
    (lambda: Geometry.nm(1, 0, (4, 8)), "m"),
    (lambda: Geometry.preset("2:4", (4, 8)).check_nnz(7), "nnz"),
])
def test_preset_and_nnz_errors_carry_their_argument(call, argument):
    with pytest.raises(obsviz.ArgumentError) as info:
        call()
    assert info.value.argument == argument


def test_one_key_is_the_identity_used_by_eq_and_hash():
    a = Geometry.preset("2:4", (8, 16))
    b = Geometry((8, 16), (1, 1), (1, 4), view_shape=(8, 16), view_stride=(16, 1), name="x", nnz=1)
    c = Geometry.preset("1:4", (8, 16))  # same geometry, another budget and name
    assert a.key == b.key == c.key
    assert a == b == c and len({a, b, c}) == 1 and hash(a) == hash(a.key)
    d = Geometry.preset("2:4-pairs", (8, 16))
    assert d != a and d.key != a.key
    assert Geometry.from_dict(d.to_dict()).key == d.key


def test_a_name_says_what_is_run():
    """nnz overrides a preset's N: 4:8 at nnz 1 is 1:8; a named preset at another nnz says so;
    a choice that keeps every block of a scope prunes nothing."""
    from obsviz.geometry import run_name

    assert [run_name("4:8", k) for k in (1, 4, 8)] == ["1:8", "4:8", "8:8"]
    assert run_name("2:4", 1) == "1:4" and run_name("block16", 1) == "block16"
    assert run_name("block16", 2) == "block16 at nnz = 2"
    assert run_name("coupled-2:4", 1) == "coupled-2:4 at nnz = 1"
    desc = "view W, block (1, 2), scope (1, 4)"
    assert run_name(desc, 3) == desc
    for name, k in (("4:8", 1), ("block16", 2), ("2:4-pairs", 3)):
        assert run_name(run_name(name, k), k) == run_name(name, k)
    g = Geometry.preset("block16", (32, 32))
    assert g.run_name(2) == "block16 at nnz = 2" and g.prunes_nothing(2)
    assert not g.prunes_nothing(1) and Geometry.preset("2:4", (4, 8)).prunes_nothing(4)
    assert Geometry.preset("4:8", (4, 8)).run_name(1) == "1:8"
