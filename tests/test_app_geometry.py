"""The home page and the Geometry explorer, driven through Streamlit's AppTest."""

import pytest

from obsviz import Geometry

from apptest import errors, open_app, plain
from ui.forms import build_geometry


def open_geometry(**params: str):
    """The Geometry page, opened (as a link would) with ``params`` in the URL."""
    return open_app("pages/geometry.py", params)


def chosen(at) -> tuple[dict, int] | None:
    """The geometry (as a dict) and nnz the page's form stands for, as every page reads it."""
    geom, nnz, _ = build_geometry(at.session_state["geometry_form"], None)
    return None if geom is None else (geom.to_dict(), nnz)


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_home_runs_and_links_the_path_through_the_app():
    at = open_app()
    assert at.title[0].value == "obsviz"
    links = [link.label for link in at.get("page_link")]
    assert links == ["1 · Geometry", "2 · Prune", "3 · Compare", "4 · Model", "5 · Sensitivity",
                     "6 · Sweep", "7 · Learn"]
    assert any(m.label == "Device" for m in at.metric)


def test_placeholder_pages_run():
    for page in ("pages/prune.py", "pages/compare.py", "pages/learn.py"):
        open_app(page)


def test_preset_switch_updates_the_facts():
    at = open_geometry(pattern="2:4", weight="64, 128", nnz="2")
    facts = metrics(at)
    assert facts["Blocks"] == f"{64 * 128:,}" and facts["Blocks / scope"] == "4"

    at.selectbox(key="_g_pattern").set_value("block16").run()
    assert not at.exception, at.exception
    facts = metrics(at)
    assert facts["Blocks"] == f"{64 * 128 // 16:,}"
    assert facts["Blocks / scope"] == "2" and facts["Pruned / scope"] == "1"
    assert "Row-coupled:** Yes" in " ".join(md.value for md in at.markdown)
    assert chosen(at) == (Geometry.preset("block16", (64, 128)).to_dict(), 1)  # preset's nnz


def test_free_form_edit_builds_the_geometry():
    at = open_geometry(pattern="2:4", weight="64, 128", nnz="2")
    at.selectbox(key="_g_pattern").set_value("free-form").run()
    # Going free-form starts from the preset's fields.
    assert at.text_input(key="_g_block").value == "1, 1"
    assert at.text_input(key="_g_scope").value == "1, 4"
    at.text_input(key="_g_view").set_value("")
    at.text_input(key="_g_stride").set_value("")
    at.text_input(key="_g_block").set_value("2, 2")
    at.text_input(key="_g_scope").set_value("(2, 2)")
    at.text_input(key="_g_nnz").set_value("1").run()
    assert not at.exception, at.exception
    assert not at.error
    facts = metrics(at)
    assert facts["Blocks"] == f"{64 * 128 // 4:,}" and facts["Sparsity"] == "75.0%"
    spec, nnz = chosen(at)
    assert spec["block"] == [2, 2] and spec["scope"] == [2, 2] and nnz == 1


def test_free_form_accepts_expressions_in_m_and_k():
    at = open_geometry(pattern="free-form", weight="64, 128", nnz="2",
                       view="M, K/16, 8, 2", stride="K, 16, 1, 8", block="1, 1, 1, 2",
                       scope="1, 1, 4, 1")
    assert not at.error
    assert Geometry.from_dict(chosen(at)[0]) == Geometry.preset("coupled-2:4", (64, 128))


@pytest.mark.parametrize(("field", "text", "argument"), [
    ("_g_block", "1, 5", "block="),
    ("_g_scope", "1, 3", "scope="),
    ("_g_view", "64, 100", "view_shape="),
    ("_g_weight", "64", "weight_shape="),
])
def test_invalid_input_shows_the_engine_message(field, text, argument):
    at = open_geometry(pattern="free-form", weight="64, 128", nnz="2", view="", stride="",
                       block="1, 1", scope="1, 4")
    at.text_input(key=field).set_value(text).run()
    assert not at.exception, at.exception
    assert len(at.error) == 1 and errors(at)[0].startswith(argument)
    assert chosen(at) is None
    assert not at.metric                                     # nothing drawn from a bad geometry


def test_invalid_nnz_and_preset_shape_show_messages():
    at = open_geometry(pattern="2:4-pairs", weight="64, 128", nnz="2")
    at.text_input(key="_g_nnz").set_value("9").run()
    assert not at.exception
    assert errors(at)[0].startswith("nnz=9")
    at = open_geometry(pattern="coupled-2:4", weight="64, 100", nnz="2")
    assert errors(at)[0].startswith("preset 'coupled-2:4' needs K divisible by 16")


def test_query_params_round_trip():
    at = open_geometry(pattern="coupled-2:4", weight="64, 128", nnz="1", r0="0", c0="0")
    assert at.selectbox(key="_g_pattern").value == "coupled-2:4"
    assert chosen(at)[1] == 1
    at.selectbox(key="_g_pattern").set_value("N:M").run()
    at.number_input(key="_g_m").set_value(8).run()
    params = {k: at.query_params[k] for k in at.query_params}
    assert params["pattern"] == "N:M" and params["m"] == "8"
    spec = chosen(at)

    again = open_geometry(**params)
    assert chosen(again) == spec
    assert again.number_input(key="_g_m").value == 8


def test_big_layer_stays_windowed():
    at = open_geometry(pattern="block16", weight="4096, 11008", nnz="1", r0="1000", c0="5000")
    assert metrics(at)["Blocks"] == "2.82 M"
    charts = at.get("plotly_chart")
    assert charts and all(len(c.proto.spec) < 2_000_000 for c in charts)


def test_huge_weight_shape_in_the_url_is_a_field_error():
    at = open_geometry(pattern="2:4", weight="1000000, 1000000", nnz="2")
    assert len(at.error) == 1
    assert errors(at)[0].startswith("weight_shape=(1000000, 1000000)")
    assert "at most 268,435,456" in errors(at)[0]
    assert chosen(at) is None and not at.metric


def test_overlong_field_in_the_url_is_a_field_error():
    at = open_geometry(pattern="free-form", weight="64, 128", nnz="2", view="", stride="",
                       block="+".join(["1"] * 1500), scope="1, 4")
    assert len(at.error) == 1 and "characters long" in errors(at)[0]
    assert errors(at)[0].startswith("block=")


def test_an_unforeseen_engine_error_is_shown_not_raised(monkeypatch):
    from ui import state

    def broken(form, layer_shape):
        raise RuntimeError("cannot allocate 10 TB")

    monkeypatch.setattr(state, "build_geometry", broken)
    state._resolve.clear()
    try:
        at = open_geometry(pattern="2:4", weight="64, 128", nnz="2")
    finally:
        state._resolve.clear()   # nothing cached from the broken builder
    assert len(at.error) == 1
    assert "could not be built (RuntimeError)" in errors(at)[0]
    assert "10 TB" not in errors(at)[0]     # an unforeseen error's text stays in the server


def test_huge_subset_count_is_capped_and_says_greedy():
    # one scope of 384 * 384 blocks, half kept: C(147456, 73728) has ~44,000 digits
    at = open_geometry(pattern="free-form", weight="384, 384", nnz=str(384 * 384 // 2),
                       view="", stride="", block="1, 1", scope="-1, -1")
    facts = metrics(at)
    assert facts["Subsets / scope"] == "more than 10,000 → greedy"
    assert facts["Blocks / scope"] == f"{384 * 384}"
    at = open_geometry(pattern="2:4", weight="64, 128", nnz="2")
    assert metrics(at)["Subsets / scope"] == "6"


def test_a_link_with_bad_values_says_what_it_ignored():
    """Issue 24.14: ``?pattern=bogus&n=99&m=abc`` fell back to 2:4 without a word."""
    at = open_geometry(pattern="bogus", n="99", m="abc", weight="64, 128")
    assert not at.exception, at.exception
    said = " ".join(plain(w.value) for w in at.warning)
    assert "pattern='bogus' (no such pattern)" in said
    assert "m='abc' (not a whole number)" in said
    assert "n='99' (not used by 2:4)" in said and "showing 2:4" in said
    at.run()   # said once, not on every rerun
    assert not any("ignored" in plain(w.value) for w in at.warning)
    clean = open_geometry(pattern="2:4", weight="64, 128", nnz="2")
    assert not any("ignored" in plain(w.value) for w in clean.warning)


def test_an_n_m_whose_group_does_not_divide_k_answers_in_n_m_terms():
    at = open_geometry(pattern="N:M", n="2", m="5", weight="64, 128")
    message = errors(at)[0]
    assert message.startswith("2:5 keeps 2 of every 5 weights of a row")
    assert "group size 5 must divide the row length K = 128" in message
    assert "2, 4, 8, 16, 32, 64" in message and "scope=" not in message
