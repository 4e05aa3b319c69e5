"""The Learn page, driven through Streamlit's AppTest: step through a whole row and land exactly on
the engine's true_obs result for that row (at the Prune page's defaults); step back, reset,
switch layer, geometry (every preset, N:M, the Geometry page's free-form) and row; overrule a
step and land on the plain-loop reference with that mask forced."""

import re

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz import reference
from obsviz.lesson import COUPLED_TOY, coupled_toy, first_columns, interleaved_worse_rows
from obsviz.methods import SCORING
from obsviz.store import layer_hash

from apptest import open_app
from ui.forms import GeometryForm
from ui.learn import GEOMETRIES, PAGE


def open_learn(state: dict | None = None):
    return open_app("pages/learn.py", state=state)


def click(at, key: str):
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def choose(at, key: str, value):
    widget = at.selectbox(key=key) if key != "_l_row" else at.number_input(key=key)
    widget.set_value(value).run()
    assert not at.exception, at.exception
    return at


def counter(at) -> str:
    return next(md.value for md in at.markdown if md.value.startswith("**Step "))


def weights(at) -> torch.Tensor:
    return torch.tensor(at.session_state["learn_weights"], dtype=torch.float64)


def true_obs_rows(W, H, geom, rows, scoring=SCORING.default, damp: float = 0.01):
    res = obsviz.prune(W.double(), H.double(), geom, geom.nnz, method="true_obs",
                       scoring=scoring, damp=damp, device="cpu")
    return res.weight[rows]


def test_stepping_through_the_toy_row_ends_on_true_obs():
    at = open_learn()
    assert at.title[0].value == "Learn OBS"
    setup = at.session_state["learn_setup"]
    assert setup["source"] == "toy" and setup["geometry"] == PAGE     # the Geometry page's 2:4
    assert at.selectbox(key="_l_scoring").value == SCORING.default    # the Prune page's
    assert at.session_state["learn_step"] == 0
    assert counter(at) == "**Step 0 of 4**"
    toy = obsviz.load_sample_layer("toy")
    assert_close(weights(at), toy.weight[0].double())
    assert at.button(key="learn_back").disabled and at.button(key="learn_reset").disabled

    for n in range(1, 5):
        click(at, "learn_forward")
        assert at.session_state["learn_step"] == n
        assert counter(at).startswith(f"**Step {n} of 4**")
        assert any(h.value.startswith(f"Step {n}:") for h in at.subheader)
    assert at.button(key="learn_forward").disabled
    done = at.success[0].value
    assert done.startswith("Done: all 4 scopes decided; row 0 keeps 8 of 16 weights.")
    assert "scoring='independent')` (the Prune page's default)" in done
    geom = obsviz.Geometry.preset("2:4", tuple(toy.weight.shape))
    assert_close(weights(at), true_obs_rows(toy.weight, toy.hessian, geom, 0), rtol=0, atol=1e-12)
    assert int((weights(at) == 0).sum()) == 8

    click(at, "learn_back")
    assert counter(at) == "**Step 3 of 4**"
    assert int((weights(at) == 0).sum()) == 6
    click(at, "learn_reset")
    assert at.session_state["learn_step"] == 0
    assert_close(weights(at), toy.weight[0].double())


def test_changing_the_row_or_geometry_restarts_the_lesson():
    at = open_learn()
    click(at, "learn_forward")
    choose(at, "_l_row", 3)
    assert at.session_state["learn_step"] == 0
    choose(at, "_l_geometry", "2:4-pairs")
    assert counter(at) == "**Step 0 of 2**"
    for _ in range(2):
        click(at, "learn_forward")
    toy = obsviz.load_sample_layer("toy")
    geom = obsviz.Geometry.preset("2:4-pairs", tuple(toy.weight.shape))
    assert_close(weights(at), true_obs_rows(toy.weight, toy.hessian, geom, 3), rtol=0,
                 atol=1e-12)
    setup = dict(at.session_state["learn_setup"])
    assert setup.pop("layer") == layer_hash(*first_columns(toy.weight, toy.hessian, 16))
    assert setup == {"source": "toy", "k": 16, "geometry": "2:4-pairs", "n": 2, "m": 4,
                     "row": 3, "damp": 0.01, "scoring": "independent"}


def test_the_geometry_pages_geometry_is_where_the_lesson_starts():
    """The sidebar's geometry (the Geometry page's form, here 4:8 as N:M) is the default."""
    form = GeometryForm(pattern="N:M", n=4, m=8)
    at = open_learn({"geometry_form": form})
    assert "Geometry page (4:8)" in at.selectbox(key="_l_geometry").options
    assert any("**4:8**" in c.value for c in at.caption)
    assert counter(at) == "**Step 0 of 2**"


def test_loaded_layer_first_columns():
    at = open_learn()
    name = at.session_state["layer_name"]
    choose(at, "_l_source", "current")
    choose(at, "_l_row", 5)
    assert counter(at) == "**Step 0 of 4**"        # 16 columns, 2:4
    for _ in range(4):
        click(at, "learn_forward")
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight, layer.hessian, 16)
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    assert_close(weights(at), true_obs_rows(W, H, geom, 5), rtol=0, atol=1e-12)
    assert f"{name} (first columns)" in at.selectbox(key="_l_source").options
    assert any(c.value.startswith("Row 5 of W") for c in at.caption)

    other = next(n for n in obsviz.sample_layer_names() if n not in (name, "toy"))
    at.selectbox(key="_w_layer").set_value(other).run()     # another layer in use
    assert not at.exception, at.exception
    assert at.session_state["learn_step"] == 0              # the lesson starts over on it
    assert f"{other} (first columns)" in at.selectbox(key="_l_source").options
    layer = obsviz.load_sample_layer(other)
    assert_close(weights(at), layer.weight[5, :16].double())


def test_block16_on_the_coupled_toy_steps_rows_r_and_r_plus_8_together():
    """block16 does not fit the 8 × 16 toy: the page says why and offers what fits; on the
    16 × 64 coupled toy it follows rows 0 and 8 through four scopes, one row giving up its block
    at each, each row compensating on its own, and ends on prune's true_obs for both."""
    at = open_learn()
    choose(at, "_l_geometry", "block16")
    assert at.error and "cannot be shown at lesson size (W 8 × 16)" in at.error[0].value
    assert "divisible by 16" in at.error[0].value
    assert any(i.value.startswith("It fits the coupled toy (16 × 64) with 16, 32 or 64 columns")
               for i in at.info)
    fits = [b for b in at.button if b.label.startswith("Use the coupled toy")]
    assert [b.label for b in fits] == ["Use the coupled toy (16 × 64), 64 columns"]
    fits[0].click().run()
    assert not at.exception, at.exception
    assert at.session_state["learn_setup"]["source"] == COUPLED_TOY and not at.error
    assert counter(at) == "**Step 0 of 4**"
    note = next(i.value for i in at.info if "couples rows" in i.value)
    assert "rows 0 and 8" in note and "follows both" in note
    W, H = coupled_toy().weight, coupled_toy().hessian
    geom = obsviz.Geometry.preset("block16", tuple(W.shape))
    for n in range(1, 5):
        click(at, "learn_forward")
        lo = 16 * (n - 1)
        assert any(h.value == f"Step {n}: the scope of rows 0 and 8, columns {lo}–{lo + 15}"
                   for h in at.subheader)
        rows = [c.value for c in at.caption if re.match(r"Row (0|8): ", c.value)]
        assert len(rows) == 2
        assert sum("nothing pruned here, and its weights stay as they were" in r
                   for r in rows) == 1
        moved = next(r for r in rows if "drop to exactly 0" in r)
        assert f"columns {lo}–{lo + 15} drop to exactly 0" in moved
        assert "with its own C" in moved
        costs = next(t.value for t in at.table if "sum ε(P)" in t.value.columns)
        assert list(costs.columns) == ["row 0", "row 8", "sum ε(P)"] and len(costs) == 2
        assert len(at.tabs) == 2                   # each row's own C, downdated on its own
    assert_close(weights(at), true_obs_rows(W, H, geom, 0), rtol=0, atol=1e-12)
    assert "row 0 keeps" in at.success[0].value and "row 8 keeps" in at.success[0].value


@pytest.mark.parametrize("geometry", [g for g in GEOMETRIES if g != PAGE])
def test_every_preset_and_n_m_opens_on_the_page(geometry):
    """Every preset and N:M opens: a lesson, or the reason it cannot be shown and a size that
    fits (one click away)."""
    at = open_learn()
    if geometry == "N:M":
        choose(at, "_l_geometry", "N:M")
        at.number_input(key="_l_m").set_value(8).run()
        at.number_input(key="_l_n").set_value(3).run()
        assert not at.exception, at.exception
        assert any("**3:8**" in c.value for c in at.caption)
    else:
        choose(at, "_l_geometry", geometry)
    if at.error:
        fit = next(b for b in at.button if b.label.startswith("Use "))
        fit.click().run()
        assert not at.exception, at.exception
    assert not at.error
    click(at, "learn_forward")
    assert counter(at).startswith("**Step 1 of ")


def test_a_free_form_geometry_from_the_geometry_page():
    """A free-form geometry written in M and K follows the lesson's size; one written in numbers
    for another W is refused with why and what would work."""
    form = GeometryForm(pattern="free-form", view="", stride="", block="1, K/4", scope="2, 1",
                        nnz="1")
    at = open_learn({"geometry_form": form})
    assert not at.error, [e.value for e in at.error]
    assert any("free-form" in c.value for c in at.caption)
    assert any("couples rows" in i.value for i in at.info)
    click(at, "learn_forward")
    assert any(h.value.startswith("Step 1: the scope of rows 0 and 1") for h in at.subheader)

    literal = GeometryForm(pattern="free-form", view="24, 8, 2, 384",
                           stride="6144, 384, 3072, 1", block="1, 1, 1, 16",
                           scope="1, 1, 2, 1", nnz="1")
    at = open_learn({"geometry_form": literal})
    assert at.error and "cannot be shown at lesson size" in at.error[0].value
    assert any("write its shapes in M and K" in i.value for i in at.info)


def test_overruling_a_step_continues_from_that_choice_beside_obs():
    """Pick another candidate at step 2: the lesson goes on from it, the page shows both paths
    and the difference, and the last weights equal the plain-loop reference with that mask
    forced."""
    at = open_learn()
    click(at, "learn_forward")
    click(at, "learn_forward")
    pick = at.selectbox(key=next(k for k in [s.key for s in at.selectbox]
                                 if k and k.startswith("_l_pick_")))
    obs_choice = pick.value
    other = next(i for i in pick.options if i != pick.format_func(obs_choice))
    pick.select(other).run()
    assert not at.exception, at.exception
    forced = at.session_state["learn_forced"]
    assert list(forced) == [1]
    warning = at.warning[0].value
    assert warning.startswith("You overruled OBS at step 2. After step 2 your error is")
    assert [m.label for m in at.metric][:2] == ["error (yours)", "OBS's path"]
    assert any("You pruned" in c.value for c in at.caption)
    for _ in range(2):
        click(at, "learn_forward")
    assert "Your path ends at" in at.success[0].value
    ledger = next(d.value for d in at.dataframe if "difference" in d.value.columns)
    assert list(ledger["overruled"]) == ["", "yes", "", ""]
    toy = obsviz.load_sample_layer("toy")
    geom = obsviz.Geometry.preset("2:4", tuple(toy.weight.shape))
    scope = int(geom.scope_map()[0, 4])              # step 2 of row 0: columns 4–7
    slow = reference.true_obs(toy.weight, toy.hessian, geom, 2, forced={scope: forced[1]})
    assert_close(weights(at), slow.weight[0], rtol=0, atol=1e-10)
    # back to OBS at step 2: the lesson is OBS's own path again
    click(at, "learn_back")
    click(at, "learn_back")
    click(at, "learn_obs_here")
    assert not at.warning and at.session_state["learn_step"] == 2
    for _ in range(2):
        click(at, "learn_forward")
    assert_close(weights(at), true_obs_rows(toy.weight, toy.hessian, geom, 0), rtol=0,
                 atol=1e-12)


NUMBER_IN_E = re.compile(r"\d\s*(\\mathrm\{e\}|e)\s*[-+−]?\s*\d")


def test_the_numbers_read_right():
    """ε and Δw H Δwᵀ side by side with why they differ (the damping term), numbers in KaTeX as
    powers of ten, the relative error as a percentage."""
    at = open_learn()
    at.select_slider(key="_l_damp").set_value(0.0001).run()    # small λ: numbers like 2.7e-4
    for _ in range(2):
        click(at, "learn_forward")
    why = [md.value for md in at.markdown if md.value.startswith("**Why Σ ε is larger")]
    assert why and "damped" in why[0] and "undamped H" in why[0]
    identity = next(l.value for l in at.latex if r"\sum\varepsilon" in l.value)
    assert r"\lambda \lVert\Delta w\rVert^2" in identity
    formulas = [l.value for l in at.latex]
    assert any(r"\times 10^{-" in f for f in formulas)
    assert not [f for f in formulas if NUMBER_IN_E.search(f)], formulas
    percent = re.compile(r"^\d+\.\d\d %$")
    assert percent.match(at.metric[0].value), at.metric[0].value
    modes = next(t.value for t in at.table if "error" in t.value.columns)
    assert list(modes.index) == ["local", "full", "split", "interleaved", "true_obs"]
    assert all(percent.match(v) for v in modes["error"])


def test_schur_complement_sources_and_the_interleaved_case():
    at = open_learn()
    name = at.session_state["layer_name"]
    choose(at, "_l_source", "current")
    text = " ".join(md.value for md in at.markdown)
    for source in ("Hassibi", "Optimal Brain Surgeon", "1993", "Frantar", "SparseGPT", "2023",
                   "arXiv:2604.11315"):
        assert source in text, source
    assert any(e.label == "Why interleaved can end worse than full with the same mask"
               for e in at.expander)
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight.double(), layer.hessian.double(), 16)
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    worse = interleaved_worse_rows(W, H, geom, 2)
    other = next(r for r in range(W.shape[0]) if r not in worse)
    choose(at, "_l_row", other)
    assert not any(s.value.startswith("Here: same mask") for s in at.success)
    click(at, "learn_show_worse")          # jump to the layer's clearest such row
    assert at.session_state["learn_setup"]["row"] == worse[0]
    assert at.session_state["learn_step"] == 0
    assert any(s.value.startswith("Here: same mask, interleaved") for s in at.success)
    click(at, "learn_forward")
    assert any("Schur complement" in c.value for c in at.caption)
