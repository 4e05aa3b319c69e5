"""The Geometry page's form (``ui.forms``): typed text -> a geometry, or one message per field."""

from dataclasses import replace

import pytest

import obsviz
from obsviz import ArgumentError

from ui import forms
from ui.forms import (
    MAX_FIELD_CHARS,
    MAX_WEIGHTS,
    build_geometry,
    default_form,
    parse_float,
    parse_int,
    parse_shape,
)


def test_typed_weight_shape_over_the_limit_is_a_weight_field_error():
    form = replace(default_form((64, 128)), use_layer=False, weight="1000000, 1000000")
    geom, nnz, errors = build_geometry(form, None)
    assert geom is None and nnz is None and list(errors) == ["weight"]
    assert errors["weight"].startswith("weight_shape=(1000000, 1000000)")
    assert f"at most {MAX_WEIGHTS:,}" in errors["weight"]


def test_a_loaded_layer_shape_is_not_capped_by_the_typed_limit():
    # 4096 x 11008 (a LLaMA MLP) is under the limit either way
    form = replace(default_form((4096, 11008)), use_layer=False, weight="4096, 11008")
    geom, _, errors = build_geometry(form, None)
    assert not errors and geom.weight_shape == (4096, 11008)


def test_overlong_field_is_refused_before_it_is_parsed():
    text = "+".join(["1"] * 1500)  # 3 KB: used to be a RecursionError traceback
    with pytest.raises(ValueError, match=rf"block='1\+1.*'… is 2,999 characters long; a shape "
                                         rf"is at most {MAX_FIELD_CHARS}"):
        parse_shape("block", text)
    form = replace(default_form((64, 128)), pattern="free-form", block=text)
    _, _, errors = build_geometry(form, None)
    assert list(errors) == ["block"] and "characters long" in errors["block"]


@pytest.mark.parametrize("text", ["1+" * 100_000 + "1", "-" * 100_000 + "1"])
def test_nesting_too_deep_to_evaluate_is_the_field_message(monkeypatch, text):
    monkeypatch.setattr(forms, "MAX_FIELD_CHARS", 10**7)  # past the length check
    with pytest.raises(ValueError, match=r"^scope='.*'… is too deeply nested or too large"):
        parse_shape("scope", text)


def test_short_expressions_still_parse():
    assert parse_shape("view_shape", "M, K/16, 8, 2", 64, 128) == (64, 8, 8, 2)
    assert parse_shape("scope", "1, " + "(" * 60 + "2" + ")" * 60 + ", 3") == (1, 2, 3)


# ---- numbers typed by a user (issue 11, item 9): never a value the user did not see ------------


@pytest.mark.parametrize("text", ["abc", "", "  ", "1.5", "2e3", "0x10", "٣", "1_000", "--1"])
def test_a_typed_integer_that_is_not_one_is_refused_naming_the_field(text):
    with pytest.raises(ArgumentError, match=r"^nnz=.* is not a whole number") as err:
        parse_int("nnz", text)
    assert err.value.argument == "nnz"


@pytest.mark.parametrize("text", ["abc", "", "nan", "inf", "-inf", "1e400", "0.0.1"])
def test_a_typed_number_that_is_not_one_is_refused_naming_the_field(text):
    with pytest.raises(ArgumentError, match=r"^damp=") as err:
        parse_float("damp", text)
    assert err.value.argument == "damp"


def test_typed_numbers_are_read_exactly_and_out_of_range_is_refused():
    assert parse_int("nnz", " 12 ") == 12 and parse_int("nnz", "+3") == 3
    assert parse_float("damp", "1e-3") == 0.001 and parse_float("damp", " 0.01") == 0.01
    with pytest.raises(ArgumentError, match=r"^damp=-0.1 must be at least 0"):
        parse_float("damp", "-0.1", minimum=0.0)
    with pytest.raises(ArgumentError, match=r"^nnz=-1 must be at least 0"):
        parse_int("nnz", "-1", minimum=0)


@pytest.mark.parametrize(("nnz", "field"), [("abc", "nnz"), ("5", "nnz"), ("-1", "nnz")])
def test_a_bad_nnz_is_the_nnz_field_error_and_builds_nothing(nnz, field):
    form = replace(default_form((64, 128)), use_layer=False, weight="64, 128", nnz=nnz)
    geom, got, errors = build_geometry(form, None)
    assert geom is None and got is None and list(errors) == [field]
    assert errors[field].startswith(f"nnz={nnz!r}" if nnz == "abc" else f"nnz={nnz}")


def test_the_chosen_nnz_travels_beside_the_geometry_which_keeps_its_own():
    form = replace(default_form((64, 128)), use_layer=False, weight="64, 128", nnz="3")
    geom, nnz, errors = build_geometry(form, None)
    assert not errors and nnz == 3
    assert geom.nnz == 2      # the preset's default: the object is never given the user's budget


@pytest.mark.parametrize("change, field", [
    (dict(view="M, K + 1"), "view"),
    (dict(view="M, K", stride="K, 2"), "stride"),
    (dict(block="1, 5"), "block"),
    (dict(scope="1, 5"), "scope"),
    (dict(nnz="9"), "nnz"),
    (dict(nnz="two"), "nnz"),
])
def test_errors_go_to_the_field_the_engine_names_not_by_message_text(change, field):
    form = replace(default_form((384, 384)), **{"pattern": "free-form", "block": "1, 1",
                                                "scope": "1, 4", "view": "", "stride": "",
                                                **change})
    _, _, errors = build_geometry(form, None)
    assert list(errors) == [field], errors


def test_a_message_that_merely_starts_like_an_argument_is_not_routed_by_its_text():
    # routing reads ArgumentError.argument, never the wording
    assert forms.field_of(ValueError("block=(1, 3) …")) == "pattern"
    assert forms.field_of(obsviz.ArgumentError("scope", "anything")) == "scope"


def test_preset_budget_starts_a_new_preset_from_its_own_nnz():
    from ui.forms import PruneForm, preset_budget

    form = {"preset": "4:8", "nnz": 1}
    preset_budget(form)("preset")
    assert form["nnz"] == 4
    preset_budget(form)("damp")          # another field leaves nnz
    form["preset"] = "not a preset"
    preset_budget(form)("preset")
    assert form["nnz"] == 4
    typed = PruneForm()
    typed.preset = "2:4"
    typed.nnz = "3"
    preset_budget(typed, text=True)("preset")
    assert typed.nnz == "2"
