"""The Learn page, driven through Streamlit's AppTest: step through a whole row and land exactly on
the engine's true_obs result for that row; step back, reset, switch layer, pattern and row."""

import re
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz.lesson import first_columns, interleaved_worse_rows
from obsviz.store import layer_hash

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 300  # seconds per run: the first run imports torch and plotly on a small CPU


def open_learn():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page("pages/learn.py").run()
    assert not at.exception, at.exception
    return at


def click(at, key: str):
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


def counter(at) -> str:
    return next(md.value for md in at.markdown if md.value.startswith("**Step "))


def true_obs_row(W, H, preset: str, row: int, damp: float = 0.01) -> torch.Tensor:
    geom = obsviz.Geometry.preset(preset, tuple(W.shape))
    res = obsviz.prune(W.double(), H.double(), geom, geom.nnz, method="true_obs", ng=1,
                       scoring="joint", damp=damp, device="cpu")
    return res.weight[row]


def test_stepping_through_the_toy_row_ends_on_true_obs():
    at = open_learn()
    assert at.title[0].value == "Learn OBS"
    assert at.session_state["learn_setup"]["source"] == "toy"
    assert at.session_state["learn_step"] == 0
    assert counter(at) == "**Step 0 of 4**"
    toy = obsviz.load_sample_layer("toy")
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 toy.weight[0].double())
    assert at.button(key="learn_back").disabled and at.button(key="learn_reset").disabled

    for n in range(1, 5):
        click(at, "learn_forward")
        assert at.session_state["learn_step"] == n
        assert counter(at).startswith(f"**Step {n} of 4**")
        assert any(h.value.startswith(f"Step {n}:") for h in at.subheader)
    assert at.button(key="learn_forward").disabled
    assert at.success, "the last step says the row is done"
    final = torch.tensor(at.session_state["learn_weights"], dtype=torch.float64)
    assert_close(final, true_obs_row(toy.weight, toy.hessian, "2:4", 0), rtol=0, atol=1e-12)
    assert int((final == 0).sum()) == 8

    click(at, "learn_back")
    assert at.session_state["learn_step"] == 3
    assert counter(at) == "**Step 3 of 4**"
    assert int((torch.tensor(at.session_state["learn_weights"]) == 0).sum()) == 6

    click(at, "learn_reset")
    assert at.session_state["learn_step"] == 0
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 toy.weight[0].double())


def test_changing_the_row_or_pattern_restarts_the_lesson():
    at = open_learn()
    click(at, "learn_forward")
    at.number_input(key="_l_row").set_value(3).run()
    assert not at.exception, at.exception
    assert at.session_state["learn_step"] == 0
    at.selectbox(key="_l_pattern").set_value("2:4-pairs").run()
    assert not at.exception, at.exception
    assert counter(at) == "**Step 0 of 2**"
    for _ in range(2):
        click(at, "learn_forward")
    toy = obsviz.load_sample_layer("toy")
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 true_obs_row(toy.weight, toy.hessian, "2:4-pairs", 3), rtol=0, atol=1e-12)
    assert any("flips" in md.value for md in at.markdown) is False  # past the flip: done
    setup = dict(at.session_state["learn_setup"])
    assert setup.pop("layer") == layer_hash(*first_columns(toy.weight, toy.hessian, 16))
    assert setup == {"source": "toy", "k": 16, "pattern": "2:4-pairs", "row": 3, "damp": 0.01}
    assert at.session_state["learn_step"] == 2


def test_loaded_layer_first_columns():
    at = open_learn()
    name = at.session_state["layer_name"]
    at.selectbox(key="_l_source").set_value("current").run()
    at.number_input(key="_l_row").set_value(5).run()
    assert not at.exception, at.exception
    assert counter(at) == "**Step 0 of 4**"        # 16 columns, 2:4
    for _ in range(4):
        click(at, "learn_forward")
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight, layer.hessian, 16)
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 true_obs_row(W, H, "2:4", 5), rtol=0, atol=1e-12)
    assert f"{name} (first columns)" in at.selectbox(key="_l_source").options
    assert any(c.value.startswith("Row 5 of W") for c in at.caption)

    other = next(n for n in obsviz.sample_layer_names() if n not in (name, "toy"))
    at.selectbox(key="_w_layer").set_value(other).run()     # another layer in use
    assert not at.exception, at.exception
    assert at.session_state["learn_step"] == 0              # the lesson starts over on it
    assert f"{other} (first columns)" in at.selectbox(key="_l_source").options
    assert any(c.value.startswith("Row 5 of W") for c in at.caption)
    layer = obsviz.load_sample_layer(other)
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 layer.weight[5, :16].double())


def test_block16_steps_the_coupled_rows_together():
    """block16 does not fit the toy (8 rows): the page says so and offers the sample layer; there
    it follows rows 0 and 8 together and ends on prune's true_obs for both."""
    at = open_learn()
    at.selectbox(key="_l_pattern").set_value("block16").run()
    assert not at.exception, at.exception
    assert at.error and "divisible by 16" in at.error[0].value
    click(at, "learn_use_layer")
    name = at.session_state["layer_name"]
    assert at.session_state["learn_setup"]["source"] == "current" and not at.error
    at.selectbox(key="_l_k").set_value(32).run()
    assert not at.exception, at.exception
    assert counter(at) == "**Step 0 of 2**"
    assert any("couples rows" in i.value and "0, 8" in i.value for i in at.info)
    for n in (1, 2):
        click(at, "learn_forward")
        lo = 16 * (n - 1)
        assert any(h.value == f"Step {n}: the scope of rows 0 and 8, columns {lo}–{lo + 15}"
                   for h in at.subheader)
    assert at.success
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight, layer.hessian, 32)
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 true_obs_row(W, H, "block16", 0), rtol=0, atol=1e-12)
    costs = next(t.value for t in at.table if "sum ε(P)" in t.value.columns)
    assert list(costs.columns) == ["row 0", "row 8", "sum ε(P)"] and len(costs) == 2
    assert len(at.tabs) == 2                      # each row's own C, downdated on its own


def test_coupled_2_4_titles_name_the_real_columns():
    at = open_learn()
    at.selectbox(key="_l_pattern").set_value("coupled-2:4").run()
    assert not at.exception, at.exception
    click(at, "learn_forward")
    assert any(h.value == "Step 1: the scope of columns 0–3, 8–11" for h in at.subheader)
    click(at, "learn_forward")
    assert any(h.value == "Step 2: the scope of columns 4–7, 12–15" for h in at.subheader)
    toy = obsviz.load_sample_layer("toy")
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 true_obs_row(toy.weight, toy.hessian, "coupled-2:4", 0), rtol=0, atol=1e-12)


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
    at.selectbox(key="_l_source").set_value("current").run()
    assert not at.exception, at.exception
    text = " ".join(md.value for md in at.markdown)
    for source in ("Hassibi", "Optimal Brain Surgeon", "1993", "Frantar", "SparseGPT", "2023",
                   "arXiv:2604.11315", "Schur complement"):
        assert source in text, source
    assert "Why interleaved can end worse than full with the same mask" in text
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight.double(), layer.hessian.double(), 16)
    geom = obsviz.Geometry.preset("2:4", tuple(W.shape))
    worse = interleaved_worse_rows(W, H, geom, 2)
    other = next(r for r in range(W.shape[0]) if r not in worse)
    at.number_input(key="_l_row").set_value(other).run()
    assert not any(s.value.startswith("Here: same mask") for s in at.success)
    click(at, "learn_show_worse")          # jump to the layer's clearest such row
    assert at.session_state["learn_setup"]["row"] == worse[0]
    assert at.session_state["learn_step"] == 0
    assert any(s.value.startswith("Here: same mask, interleaved") for s in at.success)
    click(at, "learn_forward")
    assert any("Schur complement" in c.value for c in at.caption)
