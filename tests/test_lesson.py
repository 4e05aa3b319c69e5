"""The OBS lesson (obsviz.lesson): rows stepped through true_obs, scope by scope.

The lesson must be the engine's own true_obs (ng=1, joint scoring, left to right) on its rows
(one row, or the rows a row-coupled geometry decides together), its listed costs must explain its
choices, its running error must be the metric's, and the identities the page states (costs add up
to the damped loss; the downdate is the Schur complement) must hold exactly.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz import reference
from obsviz.errors import ArgumentError
from obsviz.lesson import (
    COMPARED_MODES,
    COUPLED_TOY,
    MAX_ROWS,
    SCORINGS,
    Lesson,
    column_ranges,
    coupled_toy,
    first_columns,
    interleaved_worse_rows,
    lesson_geometry,
    mode_outcomes,
    same_mask_worse,
)
from obsviz.methods import SCORING
from obsviz.metrics import row_error


def toy(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    layer = obsviz.load_sample_layer("toy")
    return layer.weight.to(dtype), layer.hessian.to(dtype)


def real(k: int = 16, dtype: torch.dtype = torch.float64, name: str = obsviz.DEFAULT_SAMPLE
         ) -> tuple[torch.Tensor, torch.Tensor]:
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight, layer.hessian, k)
    return W.to(dtype), H.to(dtype)


def engine_rows(W, H, geom, rows, damp=0.01, scoring=SCORING.default) -> torch.Tensor:
    """prune's true_obs at the Prune page's defaults (but ``scoring``) on ``rows``."""
    res = obsviz.prune(W, H, geom, geom.nnz, method="true_obs", scoring=scoring, damp=damp,
                       device="cpu")
    return res.weight[list(rows)]


def coupled(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    layer = coupled_toy()
    return layer.weight.to(dtype), layer.hessian.to(dtype)


# ---- the lesson is true_obs -------------------------------------------------------------------


def test_scorings_start_with_prunes_default():
    """Learn and Prune use the same true_obs default: the lesson's scoring is prune's."""
    assert SCORINGS[0] == SCORING.default == "independent" and set(SCORINGS) == {
        "independent", "joint"}
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    assert Lesson.start(W, H, geom, 2, 0).scoring == SCORING.default


@pytest.mark.parametrize("scoring", SCORINGS)
@pytest.mark.parametrize("preset", ["2:4", "2:4-pairs", "4:8", "coupled-2:4", "1:4", "2:8"])
def test_toy_final_row_equals_true_obs(preset, scoring):
    W, H = toy()
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    pruned = engine_rows(W, H, geom, range(W.shape[0]), scoring=scoring)
    for row in range(W.shape[0]):
        lesson = Lesson.start(W, H, geom, geom.nnz, row, scoring=scoring)
        assert lesson.rows == (row,) and not lesson.coupled and not lesson.overruled_steps
        assert_close(lesson.final_weight, pruned[[row]], rtol=0, atol=1e-12)


@pytest.mark.parametrize("row", [0, 7, 200, 383])
def test_real_layer_first_16_columns_final_row_equals_true_obs(row):
    W, H = real()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, row)
    assert_close(lesson.final_weight, engine_rows(W, H, geom, [row]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [16, 32])
@pytest.mark.parametrize("preset", ["block16", "coupled-2:4"])
def test_block16_and_coupled_final_rows_equal_true_obs(preset, k):
    """Row-coupled block16 steps rows r and r + 8 together; coupled-2:4 couples columns. Either
    way the lesson's rows end exactly where prune's true_obs (ng=1, joint) puts them."""
    W, H = real(k)
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    pruned = engine_rows(W, H, geom, range(W.shape[0]))
    for row in (0, 5, 13, 200, 383):
        lesson = Lesson.start(W, H, geom, geom.nnz, row)
        if preset == "block16":
            partner = row + 8 if row % 16 < 8 else row - 8
            assert lesson.rows == tuple(sorted((row, partner))) and lesson.coupled
            assert lesson.n_steps == k // 16
        else:
            assert lesson.rows == (row,)
        assert lesson.rows[lesson.index] == row
        assert_close(lesson.final_weight, pruned[list(lesson.rows)], rtol=0, atol=1e-12)


def test_block16_each_scope_prunes_one_rows_block_by_the_summed_cost():
    W, H = real(32)
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 1, 3, scoring="joint")
    for step in lesson.steps:
        assert step.row_costs.shape == (2, 2) and step.costs.shape == (2,)
        # candidate j prunes block j, which lies in one row only: the other row's cost is 0
        assert float(step.row_costs[1, 0]) == 0.0 and float(step.row_costs[0, 1]) == 0.0
        assert step.chosen == (int(step.costs.argmin()),)
        lo = 16 * step.index
        cols = tuple(range(lo, lo + 16))
        assert sorted([step.pruned_cols[0], step.pruned_cols[1]]) == sorted([cols, ()])
        assert step.label == f"rows 3 and 11, columns {lo}–{lo + 15}"
        assert step.candidate_label(0) == f"row 3: {lo}–{lo + 15}"


def test_a_scope_over_four_rows_is_stepped_together():
    """A free-form geometry whose scopes span 4 rows (one block of 4 columns per row, keep 2)."""
    torch.manual_seed(0)
    X = torch.randn(96, 8, dtype=torch.float64)
    H = X.T @ X / 96
    W = torch.randn(8, 8, dtype=torch.float64)
    geom = obsviz.Geometry((8, 8), block=(1, 4), scope=(4, 1), nnz=2)
    assert geom.is_row_coupled and geom.rows_per_scope == 4
    pruned = engine_rows(W, H, geom, range(8))
    lesson = Lesson.start(W, H, geom, 2, 6)
    assert lesson.rows == (4, 5, 6, 7) and lesson.n_steps == 2
    assert lesson.steps[0].candidates.shape == (6, 2)      # C(4, 2) pairs of rows' blocks
    assert_close(lesson.final_weight, pruned[4:8], rtol=0, atol=1e-12)


def test_float32_final_row_within_1e_5_of_true_obs():
    for W, H in (toy(torch.float32), real(16, torch.float32)):
        geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
        pruned = obsviz.prune(W, H, geom, 2, method="true_obs").weight
        for row in range(4):
            lesson = Lesson.start(W, H, geom, 2, row)
            assert lesson.final_weight.dtype == torch.float32
            assert_close(lesson.final_weight[0], pruned[row], rtol=0, atol=1e-5)


# ---- what the steps say -----------------------------------------------------------------------


@pytest.mark.parametrize("scoring", SCORINGS)
def test_each_step_prunes_the_argmin_of_its_listed_scores(scoring):
    """OBS prunes the candidate of least score: ε itself when joint; when independent, the sum
    of w_c² / C_cc over the candidate's weights (current w and C), which the step lists too."""
    W, H = toy()
    for preset in ("2:4", "2:4-pairs", "4:8", "coupled-2:4"):
        geom = obsviz.Geometry.preset(preset, tuple(W.shape))
        lesson = Lesson.start(W, H, geom, geom.nnz, 3, scoring=scoring)
        for step in lesson.steps:
            assert not step.greedy and not step.overruled and step.chosen == step.obs_chosen
            assert step.chosen == (int(step.scores.argmin()),)
            C = step.C_before[0]
            for i in range(len(step.scores)):
                P = step.candidate_cols(i)
                alone = float((step.w_before[0, P] ** 2 / torch.diagonal(C)[P]).sum())
                want = alone if scoring == "independent" else float(step.costs[i])
                assert float(step.scores[i]) == pytest.approx(want, rel=1e-10)
            assert step.pruned_blocks == tuple(sorted(step.candidates[step.chosen[0]].tolist()))
            assert list(step.pruned_cols[0]) == step.candidate_cols(step.chosen[0])
            assert torch.all(step.w_after[0, list(step.pruned_cols[0])] == 0)


def test_chosen_cost_is_w_P_C_PP_inverse_w_P():
    """The bar chart's numbers are the textbook ε(P), read off the step's own w and C."""
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    for step in Lesson.start(W, H, geom, 2, 5).steps:
        for i in range(len(step.costs)):
            P = step.candidate_cols(i)
            w_P = step.w_before[0, P]
            expected = w_P @ torch.linalg.solve(step.C_before[0][P][:, P], w_P)
            assert_close(step.costs[i], expected, rtol=1e-10, atol=1e-14)
        P, w_P, C_PP = step.pruned_system()
        assert P == step.candidate_cols(step.chosen[0])
        assert step.chosen_cost == pytest.approx(float(w_P @ torch.linalg.solve(C_PP, w_P)),
                                                 rel=1e-10)


@pytest.mark.parametrize("preset, k", [("2:4", 16), ("coupled-2:4", 32), ("block16", 32)])
def test_chosen_costs_add_up_to_the_damped_loss(preset, k):
    """What the page says where the numbers are: Σ ε = Δw H_d Δwᵀ = Δw H Δwᵀ + λ‖Δw‖², so the
    chosen costs exceed the error by exactly the damping term."""
    W, H = real(k)
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, 9, damp=0.1)
    assert lesson.cost_so_far(0) == 0 and lesson.damping_after(0) == 0
    for n in range(1, lesson.n_steps + 1):
        total = lesson.cost_so_far(n)
        assert total == pytest.approx(lesson.damped_loss_after(n), rel=1e-10)
        assert total == pytest.approx(lesson.error_after(n) + lesson.damping_after(n), rel=1e-10)
        assert lesson.damping_after(n) > 0 and total > lesson.error_after(n)
        d = lesson.weight_after(n) - lesson.w_start
        assert lesson.damping_after(n) == pytest.approx(lesson.lam * float((d * d).sum()))
        eps, gain, damping = lesson.step_parts(n)
        assert eps == pytest.approx(gain + damping, rel=1e-9)
        assert eps == pytest.approx(total - lesson.cost_so_far(n - 1), rel=1e-12)


def test_costs_add_up_to_the_damped_loss_with_dead_inputs():
    W, H = toy()
    H = H.clone()
    H[3, :] = 0
    H[:, 3] = 0                                  # input 3 never fires
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 1)
    assert bool(lesson.dead[3]) and float(lesson.w_start[0, 3]) == 0.0
    assert_close(lesson.final_weight, engine_rows(W, H, geom, [1]), rtol=0, atol=1e-12)
    n = lesson.n_steps
    assert lesson.cost_so_far(n) == pytest.approx(
        lesson.error_after(n) - lesson.start_error + lesson.damping_after(n), rel=1e-10)


@pytest.mark.parametrize("preset, k", [("2:4", 16), ("coupled-2:4", 32), ("block16", 32)])
def test_downdate_is_the_schur_complement(preset, k):
    """After n steps each row's C over its free weights F is (H_d[F, F])⁻¹, and zero on the
    pruned ones."""
    W, H = real(k)
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, 11)
    for n in range(lesson.n_steps + 1):
        for r in range(len(lesson.rows)):
            assert lesson.schur_check(n, r) < 1e-9
            F = lesson.free_cols_after(n, r)
            C = lesson.C_after(n)[r]
            if F:
                assert_close(C[F][:, F], torch.linalg.inv(lesson.Hd[F][:, F]), rtol=1e-8,
                             atol=1e-10 * float(C.abs().max()))
            pruned = lesson.pruned_cols_after(n, r)
            if pruned:
                assert float(C[pruned].abs().max()) < 1e-9 * float(lesson.C.abs().max())


def test_running_error_equals_metrics_row_error():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 2)
    w0 = W[2:3]
    Hs = (H + H.T) / 2
    ref = float(row_error(torch.zeros_like(w0), w0, Hs)[0])
    assert lesson.error_after(0) == 0.0
    for n, step in enumerate(lesson.steps, start=1):
        expected = float(row_error(w0, step.w_after, Hs)[0])
        assert step.error == pytest.approx(expected, rel=1e-12, abs=1e-15)
        assert lesson.error_after(n) == step.error
        assert step.rel_error == pytest.approx((expected / ref) ** 0.5, rel=1e-12)
    errors = [s.error for s in lesson.steps]
    assert errors == sorted(errors)  # each removal can only add error


def test_coupled_rows_error_is_the_sum_over_rows():
    W, H = real(32)
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 1, 20)
    w0 = W[list(lesson.rows)]
    for step in lesson.steps:
        per_row = row_error(w0, step.w_after, (H + H.T) / 2)
        assert_close(step.row_errors, per_row, rtol=1e-12, atol=0)
        assert step.error == pytest.approx(float(per_row.sum()), rel=1e-12)
    ref = float(row_error(torch.zeros_like(w0), w0, (H + H.T) / 2).sum())
    assert lesson.rel_error_after(lesson.n_steps) == pytest.approx(
        math.sqrt(lesson.steps[-1].error / ref), rel=1e-12)


def test_steps_walk_the_row_left_to_right_and_chain():
    W, H = toy()
    geom = obsviz.Geometry.preset("coupled-2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 0)
    assert lesson.n_steps == 2
    starts = [min(s.scope_cols()) for s in lesson.steps]
    assert starts == sorted(starts)
    assert lesson.steps[0].scope_cols() == [0, 1, 2, 3, 8, 9, 10, 11]   # pairs 8 columns apart
    for a, b in zip(lesson.steps, lesson.steps[1:], strict=False):
        assert torch.equal(a.w_after, b.w_before) and a.C_after is b.C_before
    assert torch.equal(lesson.weight_after(0), W[0:1])
    assert len(lesson.pruned_cols_after(2)) == 8


def test_step_titles_name_the_real_column_set():
    """coupled-2:4's first scope is columns {0–3, 8–11}, not "0–11"."""
    W, H = toy()
    geom = obsviz.Geometry.preset("coupled-2:4", tuple(W.shape))
    labels = [s.label for s in Lesson.start(W, H, geom, 2, 0).steps]
    assert labels == ["columns 0–3, 8–11", "columns 4–7, 12–15"]
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    assert Lesson.start(W, H, geom, 2, 0).steps[1].label == "columns 4–7"


@pytest.mark.parametrize("cols, text", [
    ([0, 1, 2, 3, 8, 9, 10, 11], "0–3, 8–11"), ([5], "5"), ([3, 1, 2], "1–3"),
    ([0, 2, 4], "0, 2, 4"), ([0, 1, 1, 2, 7], "0–2, 7"), ([], ""),
])
def test_column_ranges(cols, text):
    assert column_ranges(cols) == text


def test_first_step_prices_like_local_and_full():
    """Before anything is pruned the two ways of pricing agree; afterwards they may not."""
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4-pairs", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 3, scoring="joint")
    first = lesson.steps[0]
    assert_close(first.costs, first.frozen_costs, rtol=1e-12, atol=0)
    assert_close(first.scores, first.costs, rtol=0, atol=0)      # joint ranks by ε itself
    flips = [s.index for s in lesson.steps if s.choice_flips]
    assert flips == [1]


# ---- the modes side by side -------------------------------------------------------------------


@pytest.mark.parametrize("scoring", SCORINGS)
def test_mode_outcomes_come_from_prune_on_the_rows(scoring):
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 4, scoring=scoring)
    out = mode_outcomes(W, H, geom, 2, lesson.rows, scoring=scoring)
    assert tuple(out) == COMPARED_MODES and "split" in out
    assert_close(out["true_obs"].weight, lesson.final_weight, rtol=0, atol=1e-12)
    assert out["true_obs"].error == pytest.approx(lesson.steps[-1].error, rel=1e-10)
    for method in COMPARED_MODES:   # the Prune page's defaults
        extra = dict(scoring=scoring) if method == "true_obs" else {}
        res = obsviz.prune(W, H, geom, 2, method=method, rows=torch.tensor([4]), **extra)
        assert_close(out[method].weight[0], res.weight[4], rtol=0, atol=0)
        assert int(out[method].kept.sum()) == 8 and len(out[method].pruned_cols[0]) == 8


def test_mode_outcomes_on_coupled_rows():
    W, H = real(32)
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 1, 2)
    out = mode_outcomes(W, H, geom, 1, lesson.rows)
    assert_close(out["true_obs"].weight, lesson.final_weight, rtol=0, atol=1e-12)
    for m in COMPARED_MODES:
        assert out[m].weight.shape == (2, 32)
        assert sum(len(c) for c in out[m].pruned_cols) == 32     # one block of 16 per scope


def test_interleaved_ends_worse_than_full_with_the_same_mask_on_a_real_row():
    """The case the page explains, found on a real layer: interleaved keeps full's mask on the
    row, yet ends with a larger error. With that mask it is exactly split (same chunks, same
    rebuilt C): the difference to full is only that the earlier chunks' kept weights are frozen.
    """
    W, H = real(16, name="layer0.query")
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    rows = interleaved_worse_rows(W, H, geom, 2)
    assert len(rows) > 100          # the usual case on a real layer, not a corner
    row = rows[0]
    out = mode_outcomes(W, H, geom, 2, row)
    assert torch.equal(out["interleaved"].kept, out["full"].kept)
    assert out["interleaved"].error > 1.05 * out["full"].error
    assert same_mask_worse(out) == (True, True)
    assert_close(out["interleaved"].weight, out["split"].weight, rtol=0, atol=1e-12)
    assert out["true_obs"].error < out["full"].error
    ratios = []
    for r in rows[:5]:
        o = mode_outcomes(W, H, geom, 2, r, methods=("full", "interleaved"))
        ratios.append(o["interleaved"].error / o["full"].error)
    assert ratios == sorted(ratios, reverse=True)            # worst first


def test_same_mask_worse_is_false_when_the_masks_differ():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    worse = set(interleaved_worse_rows(W, H, geom, 2))
    for row in range(W.shape[0]):
        same, bad = same_mask_worse(mode_outcomes(W, H, geom, 2, row))
        assert bad == (row in worse)
        assert same or not bad


# ---- damping, arguments, limits ---------------------------------------------------------------


def test_damping_is_the_engines():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 0, damp=0.1)
    assert lesson.mean_diag == pytest.approx(float(torch.diagonal(H).mean()))
    assert lesson.lam == pytest.approx(0.1 * float(torch.diagonal(H).mean()))
    assert_close(lesson.Hd, H + lesson.lam * torch.eye(16, dtype=H.dtype))
    assert_close(lesson.C @ lesson.Hd, torch.eye(16, dtype=H.dtype), rtol=0, atol=1e-10)
    assert_close(lesson.final_weight, engine_rows(W, H, geom, [0], damp=0.1), rtol=0, atol=1e-12)


def test_lesson_geometry_says_when_a_pattern_does_not_fit():
    with pytest.raises(ArgumentError, match="divisible by 16") as err:
        lesson_geometry("block16", (8, 16))        # the toy has 8 rows
    assert err.value.argument == "pattern"
    with pytest.raises(ArgumentError, match="divisible by 16"):
        lesson_geometry("coupled-2:4", (8, 8))
    assert lesson_geometry("2:4-pairs", (8, 16)) == obsviz.Geometry.preset("2:4-pairs", (8, 16))
    assert lesson_geometry("block16", (16, 32)).is_row_coupled


def test_too_many_coupled_rows_are_refused():
    W = torch.zeros(2 * MAX_ROWS, 4, dtype=torch.float64)
    H = torch.eye(4, dtype=torch.float64)
    geom = obsviz.Geometry((2 * MAX_ROWS, 4), block=(1, 4), scope=(2 * MAX_ROWS, 1), nnz=1)
    with pytest.raises(ArgumentError, match=f"coupled to {2 * MAX_ROWS} rows") as err:
        Lesson.start(W, H, geom, 1, 0)
    assert err.value.argument == "geometry"


def test_memory_is_checked_before_computing():
    W = torch.zeros(1, 2048, dtype=torch.float64)
    H = torch.eye(2048, dtype=torch.float64)
    geom = obsviz.Geometry.preset("2:4", (1, 2048))
    with pytest.raises(ArgumentError, match="MiB of C matrices") as err:
        Lesson.start(W, H, geom, 2, 0)
    assert err.value.argument == "W"


@pytest.mark.parametrize("kwargs, match, argument", [
    (dict(row=8), r"row=8 must be an integer in \[0, 8\)", "row"),
    (dict(row=-1), r"row=-1", "row"),
    (dict(row=True), r"row=True", "row"),
    (dict(nnz=5), r"nnz=5", None),
    (dict(damp=-1.0), r"damp=-1.0", None),
    (dict(damp=float("inf")), r"damp=inf must be a number from 0 to", None),   # as prune says
])
def test_bad_arguments_name_themselves(kwargs, match, argument):
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    args = dict(nnz=2, row=0, damp=0.01) | kwargs
    with pytest.raises(ValueError, match=match) as err:
        Lesson.start(W, H, geom, args["nnz"], args["row"], args["damp"])
    if argument is not None:
        assert err.value.argument == argument


def test_first_columns_checks_k():
    W, H = toy()
    W8, H8 = first_columns(W, H, 8)
    assert W8.shape == (8, 8) and H8.shape == (8, 8) and torch.equal(W8, W[:, :8])
    with pytest.raises(ArgumentError, match="k=17"):
        first_columns(W, H, 17)


def test_greedy_selection_when_subsets_are_too_many():
    torch.manual_seed(0)
    X = torch.randn(64, 16, dtype=torch.float64)
    W = torch.randn(2, 16, dtype=torch.float64)
    H = X.T @ X / 64
    geom = obsviz.Geometry.nm(8, 16, (2, 16))   # C(16, 8) = 12870 subsets: greedy
    for scoring in SCORINGS:
        lesson = Lesson.start(W, H, geom, 8, 1, scoring=scoring)
        step = lesson.steps[0]
        assert step.greedy and step.candidates.shape == (16, 1) and len(step.chosen) == 8
        assert set(step.chosen) == set(torch.topk(step.scores, 8, largest=False).indices.tolist())
        assert_close(lesson.final_weight, engine_rows(W, H, geom, [1], scoring=scoring), rtol=0,
                     atol=1e-12)
        # the chosen cost is the joint ε of the 8 columns together, not a sum of singles
        assert lesson.cost_so_far(1) == pytest.approx(lesson.damped_loss_after(1), rel=1e-10)
        with pytest.raises(ArgumentError, match="too many to list"):
            lesson.overrule(1, 0)


def test_largest_move_is_the_free_column_the_step_moved_most():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4-pairs", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, geom.nnz, 3)
    for n, step in enumerate(lesson.steps, start=1):
        free = lesson.free_cols_after(n)
        pruned = set(lesson.pruned_cols_after(n))
        assert free == [c for c in range(lesson.K) if c not in pruned]
        shift = (step.w_after[0] - step.w_before[0]).abs()
        expected = max(free, key=lambda c: float(shift[c])) if free else None
        assert lesson.largest_move(n) == expected
    with pytest.raises(ArgumentError, match="n=0"):
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


# ---- the lesson's figures and formulas --------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    (0.00048, r"4.8 \times 10^{-4}"), (-0.00048, r"-4.8 \times 10^{-4}"), (0.0123, "0.0123"),
    (2.5, "2.5"), (0, "0"), (12345.0, r"1.23 \times 10^{4}"), (1e-10, r"1 \times 10^{-10}"),
])
def test_tex_number_writes_powers_of_ten_for_katex(value, text):
    from obsviz.figures.lesson import tex_matrix, tex_number

    assert tex_number(value) == text
    assert "e" not in tex_number(value).replace(r"\times", "")
    assert tex_matrix([[value, 1.0]]) == r"\begin{bmatrix}" + text + r" & 1\end{bmatrix}"


def test_error_figure_keeps_the_modes_ticks_clear_of_the_path_and_its_labels():
    from obsviz.figures.lesson import error_figure

    finals = {"local": 0.30, "full": 0.2003, "split": 0.2001, "interleaved": 0.21,
              "true_obs": 0.19}
    fig = error_figure([0, 0.1, 0.15, 0.19], 3, finals)
    path = [t for t in fig.data if t.name == "this lesson"][0]
    assert max(path.x) == 3 and list(path.text)[-1] == "19.00 %"
    ticks = [t for t in fig.data if t.name in finals]
    assert len(ticks) == 5 and all(min(t.x) > max(path.x) + 0.25 for t in ticks)
    labels = sorted(a.y for a in fig.layout.annotations)
    assert all(b - a > 0.09 * 30 - 1e-9 for a, b in zip(labels, labels[1:], strict=False))
    assert {a.text for a in fig.layout.annotations} >= {"full 20.03 %", "true_obs 19.00 %"}


def test_row_figure_legend_shows_the_rows_colour_whatever_is_pruned_first():
    from obsviz.figures.lesson import CHOSEN, ROW, row_figure

    fig = row_figure(torch.ones(8), torch.ones(8), pruned_now=[0], scope_cols=[0, 1, 2, 3])
    bars = [t for t in fig.data if t.type == "bar"]
    assert [t.name for t in bars] == ["before", "after"] and len(bars[1].x) == 8
    assert bars[1].marker.color[0] == CHOSEN and bars[1].showlegend is False
    swatch = [t for t in fig.data if t.name == "after" and t.type == "scatter"]
    assert len(swatch) == 1 and swatch[0].marker.color == ROW


# ---- the row-coupled toy: block16 over rows r and r + 8 ----------------------------------------


@pytest.mark.parametrize("scoring", SCORINGS)
def test_coupled_toy_block16_steps_each_row_with_its_own_compensation(scoring):
    """On the shipped 16 × 64 toy, block16 follows rows 0 and 8 through four scopes. At every
    step one of the two rows gives up its 16-column block; that row alone moves, by its own
    OBS update with its own C (a plain formula here, not the engine's), and its own C is
    downdated; the other row keeps its weights and its C exactly. The last weights are prune's."""
    W, H = coupled()
    assert coupled_toy().name == COUPLED_TOY and tuple(W.shape) == (16, 64)
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 1, 0, scoring=scoring)
    assert lesson.rows == (0, 8) and lesson.coupled and lesson.n_steps == 4 >= 2
    losers = []
    gone: list[set[int]] = [set(), set()]
    for n, step in enumerate(lesson.steps, start=1):
        assert step.label == f"rows 0 and 8, columns {16 * (n - 1)}–{16 * n - 1}"
        lost = [r for r in range(2) if step.pruned_cols[r]]
        assert len(lost) == 1                      # the coupled choice: one row gives up a block
        losers.append(lost[0])
        for r in range(2):
            P = list(step.pruned_cols[r])
            w, C = step.w_before[r], step.C_before[r]
            if not P:
                assert torch.equal(step.w_after[r], w) and torch.equal(step.C_after[r], C)
                assert lesson.moved_cols(n, r) == []
                continue
            assert P == list(range(16 * (n - 1), 16 * n))
            expected = reference.obs_remove(w, C, P, gone[r])     # w − w_P (C_PP)⁻¹ C_P,:
            assert_close(step.w_after[r], expected, rtol=0, atol=1e-12)
            assert_close(step.C_after[r], reference.schur_downdate(C, P), rtol=1e-10,
                         atol=1e-12 * float(C.abs().max()))
            gone[r].update(P)
            free = lesson.free_cols_after(n, r)
            assert lesson.moved_cols(n, r) == free and len(free) == 64 - 16 * len(
                [x for x in losers if x == r])         # every weight it still has moved
        assert step.chosen_cost == pytest.approx(
            sum(reference.eps(step.w_before[r], step.C_before[r], list(step.pruned_cols[r]))
                for r in range(2)), rel=1e-10)
    assert set(losers) == {0, 1}                   # both rows give up blocks on this toy
    assert_close(lesson.final_weight, engine_rows(W, H, geom, (0, 8), scoring=scoring), rtol=0,
                 atol=1e-12)
    slow = reference.true_obs(W, H, geom, 1, scoring=scoring)
    assert_close(lesson.final_weight, slow.weight[[0, 8]], rtol=0, atol=1e-10)


def test_coupled_toy_scorings_disagree_where_the_page_says():
    """Independent scoring (Prune's default) and joint scoring pick different rows at the first
    step of rows 0 and 8: the page shows both numbers, and joint ends lower."""
    W, H = coupled()
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    ind = Lesson.start(W, H, geom, 1, 0, scoring="independent")
    joint = Lesson.start(W, H, geom, 1, 0, scoring="joint")
    first = ind.steps[0]
    assert first.chosen != joint.steps[0].chosen and first.chosen[0] != first.cheapest
    assert joint.rel_errors[-1] < ind.rel_errors[-1]


def forced_by_scope(lesson: Lesson, forced: dict[int, tuple[int, ...]]) -> dict:
    """A lesson's ``forced`` (by step) as the reference takes it (by scope id)."""
    return {lesson.steps[t].scope: blocks for t, blocks in forced.items()}


CASES = [("toy", "2:4", 2, "independent"), ("toy", "2:4-pairs", 3, "joint"),
         ("toy", "coupled-2:4", 5, "independent"), ("coupled", "block16", 0, "independent"),
         ("coupled", "block16", 3, "joint"), ("coupled", "1:4", 9, "joint")]


@pytest.mark.parametrize("layer, preset, row, scoring", CASES)
def test_an_overruled_step_continues_as_the_reference_with_that_mask_forced(
        layer, preset, row, scoring):
    """The student prunes another candidate at step n: the lesson's steps before n are OBS's,
    step n prunes the pick, the later ones are OBS's own choices again on the new state, and
    the last weights equal the plain-loop reference (obsviz.reference.true_obs) with that mask
    forced, on every row the lesson follows."""
    W, H = toy() if layer == "toy" else coupled()
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    obs_path = Lesson.start(W, H, geom, geom.nnz, row, scoring=scoring)
    rows = list(obs_path.rows)
    for n in range(1, obs_path.n_steps + 1):
        step = obs_path.steps[n - 1]
        others = [i for i in range(len(step.costs)) if i not in step.chosen]
        for pick in others[:2]:
            forced = obs_path.overrule(n, pick)
            yours = Lesson.start(W, H, geom, geom.nnz, row, scoring=scoring, forced=forced)
            assert yours.overruled_steps == [n]
            assert yours.steps[n - 1].chosen == (pick,)
            assert yours.steps[n - 1].obs_chosen == step.obs_chosen
            for a, b in zip(obs_path.steps[:n - 1], yours.steps[:n - 1], strict=True):
                assert torch.equal(a.w_after, b.w_after)
            slow = reference.true_obs(W, H, geom, geom.nnz, scoring=scoring,
                                      forced=forced_by_scope(yours, forced))
            assert_close(yours.final_weight, slow.weight[rows], rtol=0, atol=1e-10)
            assert torch.equal(yours.final_weight != 0, slow.mask[rows])
            err = float(row_error(W[rows], slow.weight[rows], (H + H.T) / 2).sum())
            assert yours.error_after(yours.n_steps) == pytest.approx(err, rel=1e-9)
            n_cost = yours.steps[n - 1].chosen_cost
            assert n_cost == pytest.approx(float(step.costs[pick]), rel=1e-10)


def test_overruling_again_keeps_earlier_picks_and_drops_later_ones():
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    lesson = Lesson.start(W, H, geom, 2, 1)
    f3 = lesson.overrule(3, 0 if lesson.steps[2].chosen != (0,) else 1)
    at3 = Lesson.start(W, H, geom, 2, 1, forced=f3)
    f1 = at3.overrule(1, 5 if at3.steps[0].chosen != (5,) else 4)
    assert set(f1) == {0}                                  # step 3's pick was on another state
    f4 = at3.overrule(4, 2)
    assert set(f4) == {2, 3}
    again = Lesson.start(W, H, geom, 2, 1, forced=at3.overrule(3, at3.steps[2].obs_chosen[0]))
    assert not again.overruled_steps                       # picking OBS's own is no overrule


@pytest.mark.parametrize("forced, match", [
    ({0: (0,)}, "must be 2 distinct"), ({0: (0, 0)}, "must be 2 distinct"),
    ({0: (0, 4)}, r"in \[0, 4\)"), ({-1: (0, 1)}, ">= 0"), ({9: (0, 1)}, "has 4 steps"),
    ({0: "ab"}, "block indices"),
])
def test_bad_forced_choices_are_refused(forced, match):
    W, H = toy()
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    with pytest.raises(ArgumentError, match=match) as err:
        Lesson.start(W, H, geom, 2, 0, forced=forced)
    assert err.value.argument == "forced"
