"""The fast paths of the engine against the plain formulas they replace.

Each check runs in float64 on small random SPD systems and must agree to rounding: the closed-form
small inverses, the small-system OBS removal (`obs_remove_small`), the column-restricted Schur
downdate, the lazy column blocks of `full`/`split`/`interleaved` against the step-by-step update,
and the strided-write geometry maps against a scatter of the element offsets.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz import modes, obs
from obsviz.geometry import Geometry

import reference as ref

TIGHT = dict(rtol=1e-9, atol=1e-11)


def spd(B: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(B, n, 3 * n, generator=g, dtype=torch.float64)
    return X @ X.transpose(1, 2) / (3 * n) + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("q", [1, 2, 3, 5])
def test_small_spd_inverse_is_the_inverse(q):
    A = spd(7, q, seed=q)
    assert_close(obs.small_spd_inverse(A), torch.linalg.inv(A), **TIGHT)


def direct_removal(w, C, P):
    """Plain formulas, one row at a time: w ← w − w_P (C_PP)⁻¹ C_P,:, w_P = 0,
    C ← C − C_:,P (C_PP)⁻¹ C_P,:."""
    w, C = w.clone(), C.clone()
    for r in range(w.shape[0]):
        p = [int(i) for i in P[r] if i >= 0]
        if not p:
            continue
        G = torch.linalg.inv(C[r][p][:, p])
        w[r] -= w[r, p] @ G @ C[r][p]
        w[r, p] = 0
        C[r] -= C[r][:, p] @ G @ C[r][p]
    return w, C


@pytest.mark.parametrize("start", [0, 3])
def test_obs_remove_small_matches_the_plain_formulas_including_padding(start):
    B, n = 4, 9
    C = spd(B, n, seed=1)
    w = torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    P = torch.tensor([[3, 5], [4, -1], [-1, -1], [8, 3]])
    w_ref, C_ref = direct_removal(w, C, P)
    obs.obs_remove_small(w, C, P, start=start)
    assert_close(w[:, start:], w_ref[:, start:], **TIGHT)
    assert_close(C[:, start:, start:], C_ref[:, start:, start:], **TIGHT)


@pytest.mark.parametrize("keep", [slice(6, 12), torch.tensor([1, 7, 10])])
def test_downdate_restricted_to_later_columns_keeps_those_columns_exact(keep):
    B, K = 3, 12
    C = spd(B, K, seed=3)
    W = torch.randn(B, K, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    P = torch.tensor([[0, 2, 4], [1, 3, -1], [5, 0, 2]])
    W_ref, C_ref = direct_removal(W, C, P)
    obs.obs_update_per_row(W, C, P, keep_exact=keep)
    assert_close(W, W_ref, **TIGHT)
    assert_close(C[:, :, keep], C_ref[:, :, keep], **TIGHT)


@pytest.mark.parametrize("method", ["full", "split", "interleaved"])
@pytest.mark.parametrize("preset", ["2:4", "coupled-2:4", "block16"])
def test_lazy_column_blocks_equal_the_step_by_step_update(method, preset, monkeypatch):
    W, H = ref.random_layer(32, 64, seed=5)
    geom = Geometry.preset(preset, (32, 64))
    monkeypatch.setattr(modes, "LAZY_COLUMNS", 16)   # several blocks per chunk
    fast = obsviz.prune(W, H, geom, geom.nnz, method=method, n_splits=3)
    monkeypatch.setattr(modes, "column_regular", lambda layout: False)
    slow = obsviz.prune(W, H, geom, geom.nnz, method=method, n_splits=3)
    assert torch.equal(fast.mask, slow.mask)
    assert_close(fast.weight, slow.weight, **TIGHT)


def test_principal_per_row_reads_each_rows_entries_contiguous_or_not():
    C = spd(3, 6, seed=18)
    idx = torch.tensor([[4, 1, 2], [0, 5, -1], [3, -1, -1]])
    want = torch.eye(3, dtype=C.dtype).repeat(3, 1, 1)
    for r in range(3):
        for a in range(3):
            for b in range(3):
                if idx[r, a] >= 0 and idx[r, b] >= 0:
                    want[r, a, b] = C[r, idx[r, a], idx[r, b]]
    assert torch.equal(obs.principal_per_row(C, idx), want)
    assert torch.equal(obs.principal_per_row(C.transpose(1, 2), idx), want)   # symmetric C
    full = idx[:1].expand(3, -1)
    assert torch.equal(obs.principal_per_row(C, full),
                       C[torch.arange(3)[:, None, None], full[:, :, None], full[:, None, :]])


@pytest.mark.parametrize("values", [
    [5, 3, 5, 9, 3, 3],                      # a small range: the table
    [-4, 7, -4, 0],                          # negative ids
    [0, 10 ** 9, 7, 10 ** 9],                # a range far wider than the ids: the sort
    []])
def test_unique_ids_equals_torch_unique(values):
    x = torch.tensor(values, dtype=torch.long)
    got_values, got_inverse = obs.unique_ids(x)
    want_values, want_inverse = torch.unique(x, return_inverse=True)
    assert torch.equal(got_values, want_values)
    assert torch.equal(got_inverse, want_inverse)


def test_pattern_inverses_embed_each_rows_inverse_and_share_them():
    S, m, R = 3, 4, 100
    C_steps = spd(S, m, seed=12)
    g = torch.Generator().manual_seed(13)
    pruned = torch.rand(R, S, m, generator=g) < 0.5
    G, which = obs.pattern_inverses(C_steps, pruned)
    assert G.shape[0] <= S * 2 ** m and G.shape[0] == torch.unique(which).numel()
    for r in range(R):
        for s in range(S):
            P = torch.nonzero(pruned[r, s]).flatten()
            want = torch.zeros(m, m, dtype=C_steps.dtype)
            if P.numel():
                want[P[:, None], P[None, :]] = torch.linalg.inv(C_steps[s][P][:, P])
            assert_close(G[which[r, s]], want, **TIGHT)
    # more distinct sets than rows (two rows, each step its own): nothing gained, declined
    own = torch.tensor([[[1, 0, 0], [0, 1, 0]], [[0, 0, 1], [1, 1, 0]]], dtype=torch.bool)
    assert obs.pattern_inverses(spd(2, 3, seed=15), own) is None


@pytest.mark.parametrize("method", ["full", "split", "interleaved"])
@pytest.mark.parametrize("preset", ["2:4", "coupled-2:4", "4:8"])
def test_shared_pattern_inverses_equal_the_per_row_solves(method, preset, monkeypatch):
    W, H = ref.random_layer(32, 64, seed=16)
    geom = Geometry.preset(preset, (32, 64))
    monkeypatch.setattr(modes, "LAZY_COLUMNS", 16)
    fast = obsviz.prune(W, H, geom, geom.nnz, method=method, n_splits=3)
    monkeypatch.setattr(obs, "pattern_inverses", lambda *a: None)
    slow = obsviz.prune(W, H, geom, geom.nnz, method=method, n_splits=3)
    assert torch.equal(fast.mask, slow.mask)
    assert_close(fast.weight, slow.weight, **TIGHT)


@pytest.mark.parametrize("sub", [1, 3, 64])
def test_true_obs_sub_batches_change_speed_not_result(sub, monkeypatch):
    W, H = ref.random_layer(8, 64, seed=6)
    geom = Geometry.preset("2:4", (8, 64))
    base = obsviz.prune(W, H, geom, geom.nnz, method="true_obs", ng=1)
    monkeypatch.setattr(modes, "SUB_STEPS", sub)
    res = obsviz.prune(W, H, geom, geom.nnz, method="true_obs", ng=16)
    assert torch.equal(res.mask, base.mask)
    assert_close(res.weight, base.weight, **TIGHT)


@pytest.mark.parametrize("geom", [
    Geometry.preset("coupled-2:4", (32, 64)), Geometry.preset("block16", (32, 64)),
    Geometry((12, 20), block=(2, 1, 2), scope=(1, 5), view_shape=(4, 5, 12)),
], ids=["coupled-2:4", "block16", "free-form"])
def test_strided_maps_equal_a_scatter_of_element_offsets(geom):
    M, K = geom.weight_shape
    blocks = geom.block_elements()[geom.scope_blocks()]             # (S, gs, bk), int64
    assert torch.equal(geom.scope_elements(), blocks)
    S, gs, bk = blocks.shape
    expect = {"scope": torch.arange(S)[:, None, None], "position": torch.arange(gs)[None, :, None]}
    for name, ids in expect.items():
        out = torch.empty(M * K, dtype=torch.long)
        out[blocks.reshape(-1)] = ids.expand_as(blocks).reshape(-1)
        got = geom.scope_map() if name == "scope" else geom.block_in_scope_map()
        assert torch.equal(got, out.view(M, K))
        got32 = (geom.scope_map(torch.int32) if name == "scope"
                 else geom.block_in_scope_map(torch.int32))
        assert got32.dtype == torch.int32 and torch.equal(got32.long(), out.view(M, K))
    out = torch.empty(M * K, dtype=torch.long)
    be = geom.block_elements()
    out[be.reshape(-1)] = torch.arange(be.shape[0])[:, None].expand_as(be).reshape(-1)
    assert torch.equal(geom.block_map(), out.view(M, K))


def assert_same_layout(fast, slow) -> None:
    for k in ("cols", "scope", "scope_step", "scope_start", "scope_end"):
        assert torch.equal(getattr(fast, k), getattr(slow, k)), k
    assert (fast.n_scopes, fast.aligned) == (slow.n_scopes, slow.aligned)


@pytest.mark.parametrize("geom", [
    Geometry.preset("2:4", (32, 64)), Geometry.preset("4:8", (48, 96)),
    Geometry.preset("2:4-pairs", (32, 64)), Geometry.preset("coupled-2:4", (48, 96)),
    Geometry((32, 64), block=(1, 1, 4), scope=(1, 2, 1), view_shape=(32, 16, 4),
             view_stride=(64, 1, 16)),
], ids=["2:4", "4:8", "2:4-pairs", "coupled-2:4", "strided-free-form"])
def test_layout_read_off_in_order_equals_the_sorted_construction(geom, monkeypatch):
    from obsviz import layout
    fast = layout._row_steps_in_order(geom)
    assert fast is not None
    monkeypatch.setattr(layout, "_row_steps_in_order", lambda g: None)
    layout.row_steps.cache_clear()
    slow = layout.row_steps(geom)
    layout.row_steps.cache_clear()
    assert_same_layout(fast, slow)


def test_layout_of_row_coupled_or_unordered_geometries_takes_the_sorted_construction():
    from obsviz import layout
    assert layout._row_steps_in_order(Geometry.preset("block16", (32, 64))) is None
    assert layout._row_steps_in_order(Geometry((32, 64), block=(2, 2), scope=(1, 4))) is None


@pytest.mark.parametrize("geom", [
    Geometry.preset("block16", (48, 96)), Geometry((32, 64), block=(1, 4), scope=(4, 2)),
    Geometry.preset("2:4", (32, 64)),
], ids=["block16", "coupled-free-form", "2:4"])
def test_layout_placed_block_by_block_equals_the_element_construction(geom, monkeypatch):
    from obsviz import layout
    layout.row_steps.cache_clear()
    monkeypatch.setattr(layout, "_row_steps_in_order", lambda g: None)
    fast = layout.row_steps(geom)
    lo, hi = geom._block_row_range
    monkeypatch.setitem(geom.__dict__, "_block_row_range", (lo, hi + 1))  # not "one row each"
    layout.row_steps.cache_clear()
    slow = layout.row_steps(geom)
    layout.row_steps.cache_clear()
    assert_same_layout(fast, slow)


def assert_local_equals_the_per_entry_solve(W, H, geom, fast, monkeypatch) -> None:
    """``fast`` (a ``local`` result) equals ``local`` with neither batched compensation path,
    and the plain reference."""
    monkeypatch.setattr(modes, "local_regular", lambda *a: False)
    monkeypatch.setattr(modes, "local_grouped", lambda *a: False)
    slow = obsviz.prune(W, H, geom, geom.nnz, method="local")
    assert torch.equal(fast.mask, slow.mask)
    assert_close(fast.weight, slow.weight, **TIGHT)
    assert_close(fast.weight, ref.local(W, H, geom, geom.nnz).weight, **TIGHT)


@pytest.mark.parametrize("preset", ["2:4", "4:8", "coupled-2:4", "2:4-pairs"])
def test_local_per_subset_compensation_equals_the_per_entry_solve(preset, monkeypatch):
    W, H = ref.random_layer(24, 64, seed=7)
    geom = Geometry.preset(preset, (24, 64))
    used = []
    real = modes.local_regular
    monkeypatch.setattr(modes, "local_regular", lambda *a: used.append(real(*a)) or used[-1])
    fast = obsviz.prune(W, H, geom, geom.nnz, method="local")
    assert used == [True]
    assert_local_equals_the_per_entry_solve(W, H, geom, fast, monkeypatch)


@pytest.mark.parametrize("preset", ["block16", "coupled-2:4", "2:4"])
def test_local_grouped_compensation_equals_the_per_entry_solve(preset, monkeypatch):
    # block16's entries hold one real block and padding: not regular, but few (column set,
    # pruned blocks) pairs; the others are forced onto this path
    W, H = ref.random_layer(32, 64, seed=11)
    geom = Geometry.preset(preset, (32, 64))
    used = []
    real = modes.local_grouped
    monkeypatch.setattr(modes, "local_regular", lambda *a: False)
    monkeypatch.setattr(modes, "local_grouped", lambda *a: used.append(real(*a)) or used[-1])
    fast = obsviz.prune(W, H, geom, geom.nnz, method="local")
    assert used == [True]
    assert_local_equals_the_per_entry_solve(W, H, geom, fast, monkeypatch)


@pytest.mark.parametrize("preset", ["2:4", "coupled-2:4", "block16", "4:8"])
def test_true_obs_chunks_side_by_side_change_speed_not_result(preset):
    # chunks of 4 rows (block16: 16): one at a time on one thread, or two and three at a time
    # on worker threads
    W, H = ref.random_layer(32, 64, seed=11)
    geom = Geometry.preset(preset, (32, 64))
    n = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(obsviz.prune(W, H, geom, geom.nnz, method="true_obs", chunk_size=4))
    finally:
        torch.set_num_threads(n)
    for res in results[1:]:
        assert torch.equal(res.mask, results[0].mask)
        assert_close(res.weight, results[0].weight, **TIGHT)


def test_map_chunks_keeps_order_and_gives_each_running_call_its_own_slot():
    busy, seen = set(), []

    def fn(item, slot):
        assert slot not in busy and 0 <= slot < 2
        busy.add(slot)
        seen.append(torch.get_num_threads())
        x = torch.randn(64, 64) @ torch.randn(64, 64)   # some real work, GIL released
        busy.discard(slot)
        return item * 10, x.requires_grad

    reports = []
    out = obs.map_chunks(fn, list(range(9)), 2, lambda done, total: reports.append((done, total)))
    assert [o[0] for o in out] == [i * 10 for i in range(9)]
    assert set(seen) == {1} and not any(o[1] for o in out)
    assert reports == [(i, 9) for i in range(9)]


@pytest.mark.parametrize("workers", [1, 2])
def test_map_chunks_passes_on_the_first_error_and_a_stop_from_progress(workers):
    def fn(item, slot):
        if item == 3:
            raise ValueError("item 3")
        return item

    with pytest.raises(ValueError, match="item 3"):
        obs.map_chunks(fn, list(range(6)), workers)
    started = []

    def stop(done, total):
        if done == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        obs.map_chunks(lambda item, slot: (started.append(item), time.sleep(0.01)), list(range(50)),
                       workers, stop)
    assert len(started) < 50


def test_workspace_reuses_a_buffer_and_grows_it():
    ws = obs.Workspace("cpu")
    a = ws.take("x", (4, 5), torch.float32)
    b = ws.take("x", (2, 3), torch.float32)
    assert b.data_ptr() == a.data_ptr() and b.shape == (2, 3) and b.is_contiguous()
    c = ws.take("x", (10, 10), torch.float32)
    assert c.shape == (10, 10)
    assert ws.take("x", (3,), torch.float64).dtype == torch.float64
    assert ws.take("y", (0, 7), torch.float32).shape == (0, 7)
