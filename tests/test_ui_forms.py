"""The Geometry page's form (``ui.forms``): typed text -> a geometry, or one message per field."""

import pytest

import obsviz

from ui import forms
from ui.forms import MAX_FIELD_CHARS, MAX_WEIGHTS, build_geometry, default_form, parse_shape


def test_typed_weight_shape_over_the_limit_is_a_weight_field_error():
    form = {**default_form((64, 128)), "use_layer": False, "weight": "1000000, 1000000"}
    geom, nnz, errors = build_geometry(form, None)
    assert geom is None and nnz is None and list(errors) == ["weight"]
    assert errors["weight"].startswith("weight_shape=(1000000, 1000000)")
    assert f"at most {MAX_WEIGHTS:,}" in errors["weight"]


def test_a_loaded_layer_shape_is_not_capped_by_the_typed_limit():
    # 4096 x 11008 (a LLaMA MLP) is under the limit either way
    form = {**default_form((4096, 11008)), "use_layer": False, "weight": "4096, 11008"}
    geom, _, errors = build_geometry(form, None)
    assert not errors and geom.weight_shape == (4096, 11008)


def test_overlong_field_is_refused_before_it_is_parsed():
    text = "+".join(["1"] * 1500)  # 3 KB: used to be a RecursionError traceback
    with pytest.raises(ValueError, match=rf"block='1\+1.*'… is 2,999 characters long; a shape "
                                         rf"is at most {MAX_FIELD_CHARS}"):
        parse_shape("block", text)
    form = {**default_form((64, 128)), "pattern": "free-form", "block": text}
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


@pytest.mark.parametrize("change, field", [
    (dict(view="M, K + 1"), "view"),
    (dict(view="M, K", stride="K, 2"), "stride"),
    (dict(block="1, 5"), "block"),
    (dict(scope="1, 5"), "scope"),
    (dict(nnz="9"), "nnz"),
    (dict(nnz="two"), "nnz"),
])
def test_errors_go_to_the_field_the_engine_names_not_by_message_text(change, field):
    form = {**default_form((384, 384)), "pattern": "free-form", "block": "1, 1",
            "scope": "1, 4", "view": "", "stride": "", **change}
    _, _, errors = build_geometry(form, None)
    assert list(errors) == [field], errors


def test_a_message_that_merely_starts_like_an_argument_is_not_routed_by_its_text():
    # routing reads ArgumentError.argument, never the wording
    assert forms.field_of(ValueError("block=(1, 3) …")) == "pattern"
    assert forms.field_of(obsviz.ArgumentError("scope", "anything")) == "scope"
