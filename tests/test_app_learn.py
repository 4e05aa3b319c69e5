"""The Learn page, driven through Streamlit's AppTest: step through a whole row and land exactly on
the engine's true_obs result for that row; step back, reset, switch layer, pattern and row."""

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

import obsviz
from obsviz.lesson import first_columns

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
    assert at.session_state["learn_setup"] == {"source": "toy", "k": 16, "pattern": "2:4-pairs",
                                               "row": 3, "damp": 0.01}


def test_loaded_layer_first_columns():
    at = open_learn()
    name = at.session_state["layer_name"]
    at.selectbox(key="_l_source").set_value(name).run()
    at.number_input(key="_l_row").set_value(5).run()
    assert not at.exception, at.exception
    assert counter(at) == "**Step 0 of 4**"        # 16 columns, 2:4
    for _ in range(4):
        click(at, "learn_forward")
    layer = obsviz.load_sample_layer(name)
    W, H = first_columns(layer.weight, layer.hessian, 16)
    assert_close(torch.tensor(at.session_state["learn_weights"], dtype=torch.float64),
                 true_obs_row(W, H, "2:4", 5), rtol=0, atol=1e-12)


def test_row_coupled_pattern_says_it_is_not_supported():
    at = open_learn()
    at.selectbox(key="_l_pattern").set_value("block16").run()
    assert not at.exception, at.exception
    assert at.error and "row-coupled" in at.error[0].value
    assert "2:4" in at.info[0].value
    at.selectbox(key="_l_pattern").set_value("2:4").run()
    assert not at.error and counter(at) == "**Step 0 of 4**"
