"""The OBS lesson (obsviz.lesson): one row stepped through true_obs, scope by scope.

The lesson must be the engine's own true_obs (ng=1, joint scoring, left to right) on that row,
its listed costs must explain its choices, and its running error must be the metric's.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz.lesson import COMPARED_MODES, Lesson, first_columns, lesson_geometry, mode_outcomes
from obsviz.metrics import row_error


def toy(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    layer = obsviz.load_sample_layer("toy")
    return layer.weight.to(dtype), layer.hessian.to(dtype)


def real16(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    layer = obsviz.load_sample_layer(obsviz.DEFAULT_SAMPLE)
    W, H = first_columns(layer.weight, layer.hessian, 16)
    return W.to(dtype), H.to(dtype)


def engine_row(W, H, geom, row, damp=0.01) -> torch.Tensor:
    res = obsviz.prune(W, H, geom, geom.nnz, method="true_obs", ng=1, scoring="joint",
                       damp=damp, device="cpu")
    return res.weight[row]


@pytest.mark.parametrize("preset", ["2:4", "2:4-pairs", "coupled-2:4", "1:4", "2:8"])
def test_toy_final_row_equals_true_obs_ng1_joint(preset):
    W, H = toy()
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    for row in range(W.shape[0]):
        lesson = Lesson.start(W, H, geom, geom.nnz, row)
        assert_close(lesson.final_weight, engine_row(W, H, geom, row), rtol=0, atol=1e-12)


@pytest.mark.parametrize("row", [0, 7, 200, 383])
def test_real_layer_first_16_columns_final_row_equals_true_obs(row):
    W, H = real16()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, row)
    assert_close(lesson.final_weight, engine_row(W, H, geom, row), rtol=0, atol=1e-12)


def test_float32_final_row_within_1e_5_of_true_obs():
    for W, H in (toy(torch.float32), real16(torch.float32)):
        geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
        pruned = obsviz.prune(W, H, geom, 2, method="true_obs", ng=1, scoring="joint").weight
        for row in range(4):
            lesson = Lesson.start(W, H, geom, 2, row)
            assert lesson.final_weight.dtype == torch.float32
            assert_close(lesson.final_weight, pruned[row], rtol=0, atol=1e-5)


def test_each_step_prunes_the_argmin_of_its_listed_costs():
    W, H = toy()
    for preset in ("2:4", "2:4-pairs", "coupled-2:4"):
        geom = obsviz.Geometry.preset(preset, tuple(W.shape))
        lesson = Lesson.start(W, H, geom, geom.nnz, 3)
        for step in lesson.steps:
            assert not step.greedy
            assert step.chosen == (int(step.costs.argmin()),)
            assert step.pruned_blocks == tuple(sorted(step.candidates[step.chosen[0]].tolist()))
            assert list(step.pruned_cols) == step.candidate_cols(step.chosen[0])
            assert torch.all(step.w_after[list(step.pruned_cols)] == 0)


def test_chosen_cost_is_w_P_C_PP_inverse_w_P():
    """The bar chart's numbers are the textbook ε(P), read off the step's own w and C."""
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    for step in Lesson.start(W, H, geom, 2, 5).steps:
        for i in range(len(step.costs)):
            P = step.candidate_cols(i)
            w_P = step.w_before[P]
            expected = w_P @ torch.linalg.solve(step.C_before[P][:, P], w_P)
            assert_close(step.costs[i], expected, rtol=1e-10, atol=1e-14)


def test_running_error_equals_metrics_row_error():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 2)
    w0 = W[2:3]
    Hs = (H + H.T) / 2
    assert lesson.error_after(0) == 0.0
    for n, step in enumerate(lesson.steps, start=1):
        expected = float(row_error(w0, step.w_after[None], Hs)[0])
        assert step.error == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert lesson.error_after(n) == step.error
        ref = float(row_error(torch.zeros_like(w0), w0, Hs)[0])
        assert step.rel_error == pytest.approx((expected / ref) ** 0.5, rel=1e-12)
    errors = [s.error for s in lesson.steps]
    assert errors == sorted(errors)  # each removal can only add error


def test_C_after_last_step_is_symmetric_and_zero_on_pruned():
    W, H = real16()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 11)
    C = lesson.steps[-1].C_after
    assert_close(C, C.T, rtol=0, atol=1e-12 * float(C.abs().max()))
    pruned = lesson.pruned_cols_after(lesson.n_steps)
    assert float(C[pruned].abs().max()) < 1e-9 * float(lesson.C.abs().max())


def test_steps_walk_the_row_left_to_right_and_chain():
    W, H = toy()
    geom = obsviz.Geometry.preset("coupled-2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 0)
    assert lesson.n_steps == 2
    starts = [min(s.scope_cols) for s in lesson.steps]
    assert starts == sorted(starts)
    assert lesson.steps[0].scope_cols == [0, 1, 2, 3, 8, 9, 10, 11]   # pairs 8 columns apart
    for a, b in zip(lesson.steps, lesson.steps[1:], strict=False):
        assert torch.equal(a.w_after, b.w_before) and torch.equal(a.C_after, b.C_before)
    assert torch.equal(lesson.weight_after(0), W[0])
    assert len(lesson.pruned_cols_after(2)) == 8


def test_first_step_prices_like_local_and_full():
    """Before anything is pruned the two ways of pricing agree; afterwards they may not."""
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4-pairs", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 3)
    first = lesson.steps[0]
    assert_close(first.costs, first.frozen_costs, rtol=1e-12, atol=0)
    flips = [s.index for s in lesson.steps if set(s.chosen) != set(s.frozen_chosen)]
    assert flips == [1]   # the page points students at this row to watch a choice flip


def test_mode_outcomes_come_from_prune_on_the_row():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    out = mode_outcomes(W, H, geom, 2, 4)
    assert tuple(out) == COMPARED_MODES
    lesson = Lesson.start(W, H, geom, 2, 4)
    assert_close(out["true_obs"].weight, lesson.final_weight, rtol=0, atol=1e-12)
    assert out["true_obs"].error == pytest.approx(lesson.steps[-1].error, rel=1e-10)
    for method in COMPARED_MODES:
        extra = dict(ng=1, scoring="joint") if method == "true_obs" else {}
        res = obsviz.prune(W, H, geom, 2, method=method, rows=torch.tensor([4]), **extra)
        assert_close(out[method].weight, res.weight[4], rtol=0, atol=0)
        assert int(out[method].kept.sum()) == 8


def test_damping_is_the_engines():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 0, damp=0.1)
    assert lesson.lam == pytest.approx(0.1 * float(torch.diagonal(H).mean()))
    assert_close(lesson.Hd, H + lesson.lam * torch.eye(16, dtype=H.dtype))
    assert_close(lesson.C @ lesson.Hd, torch.eye(16, dtype=H.dtype), rtol=0, atol=1e-10)
    assert_close(lesson.final_weight, engine_row(W, H, geom, 0, damp=0.1), rtol=0, atol=1e-12)


def test_row_coupled_geometry_is_refused_with_a_clear_error():
    W, H = real16()
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    with pytest.raises(ValueError, match=r"row-coupled.*one row.*'2:4'"):
        Lesson.start(W, H, geom, 1, 0)


def test_lesson_geometry_refuses_row_coupled_patterns_whatever_the_shape():
    with pytest.raises(ValueError, match=r"row-coupled.*'2:4'"):
        lesson_geometry("block16", (8, 16))        # block16 could not even be built here
    with pytest.raises(ValueError, match="divisible by 16"):
        lesson_geometry("coupled-2:4", (8, 8))
    assert lesson_geometry("2:4-pairs", (8, 16)) == obsviz.Geometry.preset("2:4-pairs", (8, 16))


@pytest.mark.parametrize("kwargs, match", [
    (dict(row=8), r"row=8 must be an integer in \[0, 8\)"),
    (dict(row=-1), r"row=-1"),
    (dict(nnz=5), r"nnz=5"),
    (dict(damp=-1.0), r"damp=-1.0"),
    (dict(damp=float("inf")), r"damp=inf must be a finite number"),   # as obsviz.prune says
])
def test_bad_arguments_name_themselves(kwargs, match):
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    args = dict(nnz=2, row=0, damp=0.01) | kwargs
    with pytest.raises(ValueError, match=match):
        Lesson.start(W, H, geom, args["nnz"], args["row"], args["damp"])


def test_first_columns_checks_k():
    W, H = toy()
    W8, H8 = first_columns(W, H, 8)
    assert W8.shape == (8, 8) and H8.shape == (8, 8) and torch.equal(W8, W[:, :8])
    with pytest.raises(ValueError, match="k=17"):
        first_columns(W, H, 17)


def test_greedy_selection_when_subsets_are_too_many():
    torch.manual_seed(0)
    X = torch.randn(64, 16, dtype=torch.float64)
    W = torch.randn(2, 16, dtype=torch.float64)
    H = X.T @ X / 64
    geom = obsviz.Geometry.nm(8, 16, (2, 16))   # C(16, 8) = 12870 subsets: greedy
    lesson = Lesson.start(W, H, geom, 8, 1)
    step = lesson.steps[0]
    assert step.greedy and step.candidates.shape == (16, 1) and len(step.chosen) == 8
    assert set(step.chosen) == set(torch.topk(step.costs, 8, largest=False).indices.tolist())
    assert_close(lesson.final_weight, engine_row(W, H, geom, 1), rtol=0, atol=1e-12)


def test_largest_move_is_the_free_column_the_step_moved_most():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4-pairs", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, 3)
    for n, step in enumerate(lesson.steps, start=1):
        free = lesson.free_cols_after(n)
        pruned = set(lesson.pruned_cols_after(n))
        assert free == [c for c in range(lesson.K) if c not in pruned]
        shift = (step.w_after - step.w_before).abs()
        expected = max(free, key=lambda c: float(shift[c])) if free else None
        assert lesson.largest_move(n) == expected
    with pytest.raises(ValueError, match="n=0"):
        lesson.largest_move(0)


def test_max_cost_change_compares_the_downdated_and_frozen_prices():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4-pairs", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, 3)
    first, later = lesson.steps[0], lesson.steps[1]
    assert first.max_cost_change == pytest.approx(0.0, abs=1e-12)   # nothing pruned yet
    relative = [abs(float(a - b)) / max(abs(float(b)), 1e-30)
                for a, b in zip(later.costs, later.frozen_costs, strict=True)]
    assert later.max_cost_change == pytest.approx(max(relative)) and max(relative) > 0
