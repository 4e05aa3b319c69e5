"""The method registry (``obsviz.methods``): one declaration per method, read by every consumer."""

from __future__ import annotations

import dataclasses
import re

import pytest
import torch

import obsviz
from obsviz import ArgumentError, methods
from obsviz.estimate import _flops_per_second, flop_estimate, memory_estimate, time_estimate
from obsviz.methods import OPTIONS, REGISTRY, Method, Option, get, resolve_options

import reference as ref


def test_registry_order_and_kinds():
    assert methods.METHODS == ("local", "full", "split", "interleaved", "true_obs", "magnitude",
                               "wanda", "obd", "sparsegpt")
    assert methods.OBS_MODES == ("local", "full", "split", "interleaved", "true_obs")
    assert methods.BASELINES == ("magnitude", "wanda", "obd", "sparsegpt")
    assert (obsviz.METHODS, obsviz.OBS_MODES, obsviz.BASELINES) == (
        methods.METHODS, methods.OBS_MODES, methods.BASELINES)
    assert all(m.kind in ("obs_mode", "baseline") for m in REGISTRY.values())
    assert all(name == m.name for name, m in REGISTRY.items())


def test_every_method_has_its_own_fixed_hex_colour_label_and_help():
    colours = [m.color for m in REGISTRY.values()]
    assert all(re.fullmatch(r"#[0-9A-Fa-f]{6}", c) for c in colours)
    assert len(set(colours)) == len(colours)
    assert all(m.label and m.help for m in REGISTRY.values())


def test_one_definition_per_option_name_and_defaults_pass_their_own_check():
    for method in REGISTRY.values():
        for option in method.options:
            assert OPTIONS[option.name] is option
            assert option.check(option.default) == option.default


def test_every_option_is_documented_in_prune_docstring():
    doc = obsviz.prune.__doc__
    for option in OPTIONS.values():
        assert f"``{option.name}``" in doc, option.name
        assert repr(option.default) in doc


def test_resolve_options_fills_defaults_and_keeps_only_the_methods_own():
    assert resolve_options("local") == {}
    assert resolve_options("split") == {"n_splits": 4}
    assert resolve_options("interleaved", n_splits=2, ng=8) == {"n_splits": 2}
    assert resolve_options("true_obs", ng=8, c_dtype=torch.float64) == {
        "ng": 8, "chunk_size": 0, "order": "left_to_right", "scoring": "independent",
        "c_dtype": "float64"}
    assert resolve_options("true_obs", c_dtype="fp16")["c_dtype"] == "float16"
    assert resolve_options("true_obs", c_dtype=None)["c_dtype"] == "auto"


@pytest.mark.parametrize("given, argument", [
    (dict(lr=0.1), "lr"),
    (dict(n_splits=0), "n_splits"),
    (dict(n_splits=2.0), "n_splits"),
    (dict(n_splits=True), "n_splits"),
    (dict(ng=-1), "ng"),
    (dict(order="random"), "order"),
    (dict(scoring=3), "scoring"),
    (dict(c_dtype="int8"), "c_dtype"),
    (dict(c_dtype=torch.int32), "c_dtype"),
])
@pytest.mark.parametrize("method", ["local", "true_obs"])
def test_bad_options_are_argument_errors_naming_the_option(method, given, argument):
    # checked even for a method that does not use them: a typo never passes silently
    with pytest.raises(ArgumentError) as info:
        resolve_options(method, **given)
    assert info.value.argument == argument
    assert argument in str(info.value)


def test_unknown_method_is_an_argument_error():
    for bad in ("prune_harder", None, 3):
        with pytest.raises(ArgumentError) as info:
            get(bad)
        assert info.value.argument == "method"
        assert "sparsegpt" in str(info.value)


def test_option_check_covers_int_float_str_choices_and_minimum():
    o = Option("x", 1.0, float, "a float", minimum=0.5)
    assert o.check(2) == 2.0 and isinstance(o.check(2), float)
    for bad in ("2", float("nan"), 0.1, True):
        with pytest.raises(ArgumentError, match=r"^x="):
            o.check(bad)


def test_estimates_read_the_registry():
    geom = obsviz.Geometry.preset("2:4", (64, 128))
    for name, method in REGISTRY.items():
        assert memory_estimate(geom, name) == method.memory(geom)
        assert flop_estimate(geom, name, n_splits=3) == method.flops(geom, n_splits=3)
        rate = _flops_per_second("cpu") * method.flop_efficiency
        assert time_estimate(geom, name) == pytest.approx(
            method.overhead_s(geom) + method.flops(geom) / rate)
        assert 0 < method.flop_efficiency <= 1
    assert flop_estimate(geom, "split", n_splits=8) > flop_estimate(geom, "split", n_splits=2)
    fp16 = memory_estimate(geom, "true_obs", c_dtype="float16")
    fp32 = memory_estimate(geom, "true_obs", c_dtype=torch.float32)
    # per row of a chunk: the factor U in C's dtype (s·K² entries: 2 bytes less each in fp16),
    # the refit (fp32 L of C_PP, (s·K)²/2, or with fp16 H_KK twice, 2·((1 − s)·K)²), and the
    # shared C twice in C's dtype
    s, K = 0.5, 128
    per_row = s * K * K * 2 + (s * K) ** 2 / 2 * 4 - 2 * ((1 - s) * K) ** 2 * 4
    assert fp32 - fp16 == int(64 * per_row + 2 * K * K * 2)
    # a chunk never holds more rows than the layer has (chunk_size 4096 on 64 rows: 64 rows)
    assert memory_estimate(geom, "true_obs", chunk_size=4096) == memory_estimate(
        geom, "true_obs", chunk_size=64)
    with pytest.raises(ArgumentError, match="method="):
        memory_estimate(geom, "nope")


def test_true_obs_chunk_rows_follow_the_layers_shape_and_even_out_over_the_workers(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    # MiniLM's shapes: 384 inputs 128 rows (1536 rows: 12 chunks), 1536 inputs 64 (6 chunks);
    # 384 × 384 at 128 would make 3 chunks for 2 workers: 4 of 96 instead
    assert methods.chunk_rows(384, 1536) == 128
    assert methods.chunk_rows(1536, 384) == 64
    assert methods.chunk_rows(384, 384) == 96
    assert methods.chunk_rows(64, 8) == 8            # a toy: every row in one chunk
    assert methods.chunk_rows(8, 1000) == 250        # 256 at most, 4 equal chunks
    for K in (8, 100, 384, 1000, 1536, 4096, 16384):
        for M in (1, 7, 300, 1536, 5000):
            rows = methods.chunk_rows(K, M)
            n = -(-M // rows)
            assert 1 <= rows <= 256 and (n == 1 or n % 2 == 0), (K, M, rows)
    assert methods.chunk_rows(384, 1536, chunk_size=16) == 16   # given: kept
    assert methods.chunk_rows(384, 10, chunk_size=16) == 10     # never more than the rows
    # the memory model counts the chunk the run uses
    geom = obsviz.Geometry.preset("2:4", (1536, 384))
    assert memory_estimate(geom, "true_obs") == memory_estimate(geom, "true_obs",
                                                                chunk_size=128)


def test_true_obs_batches_prune_about_32_weights_of_a_row_unless_ng_is_given():
    assert [methods.batch_steps(q) for q in (1, 2, 4, 16, 64)] == [32, 16, 8, 2, 1]
    assert methods.batch_steps(4, ng=5) == 5
    for preset, steps in (("2:4", 16), ("coupled-2:4", 8), ("2:4-pairs", 8), ("block16", 2)):
        geom = obsviz.Geometry.preset(preset, (64, 128))
        assert methods._batch_steps(geom, 0) == steps
        # the models read the same batches as the run: ng = 0 estimates as the explicit value
        for model in ("memory", "overhead_s"):
            assert getattr(REGISTRY["true_obs"], model)(geom) == getattr(
                REGISTRY["true_obs"], model)(geom, ng=steps)
    W, H = ref.random_layer(16, 64, seed=3)
    geom = obsviz.Geometry.preset("coupled-2:4", (16, 64))
    auto, given = (obsviz.prune(W, H, geom, 2, method="true_obs", ng=n) for n in (0, 8))
    assert torch.equal(auto.mask, given.mask) and torch.equal(auto.weight, given.weight)


def test_prune_records_the_resolved_options():
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=3)
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method="true_obs", device="cpu", ng=4)
    assert {k: res.options[k] for k in ("ng", "chunk_size", "order", "scoring", "c_dtype")} == {
        "ng": 4, "chunk_size": 0, "order": "left_to_right", "scoring": "independent",
        "c_dtype": "float64"}   # W is float64: auto resolves to float64
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method="split", device="cpu", ng=4)
    assert res.options["n_splits"] == 4 and "ng" not in res.options


def test_prune_names_an_unknown_option():
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=3)
    with pytest.raises(ArgumentError) as info:
        obsviz.prune(W, H, case.geometry(), case.nnz, method="full", lazy_batch=8)
    assert info.value.argument == "lazy_batch"


def test_a_method_added_to_the_registry_alone_is_runnable_estimated_and_coloured(monkeypatch):
    """Adding a method = one registry entry: prune, estimates and figure colours pick it up."""
    from obsviz import baselines
    from obsviz.figures.results import method_colour

    def random_blocks(p, seed):
        g = torch.Generator().manual_seed(seed)
        return baselines.score_and_zero(p, torch.rand(p.W.shape, generator=g,
                                                      dtype=p.W.dtype))

    seed = Option("seed", 0, int, "random seed", minimum=0)
    new = Method("random", "baseline", "random", "prune random blocks", "#123456", (seed,),
                 random_blocks, flop_model=lambda geometry, rows=None, **o: 1.0)
    monkeypatch.setitem(REGISTRY, "random", new)
    monkeypatch.setitem(OPTIONS, "seed", seed)
    case = ref.CASES["2:4"]
    W, H = ref.random_layer(*case.shape, seed=4)
    res = obsviz.prune(W, H, case.geometry(), case.nnz, method="random", seed=7, device="cpu")
    assert res.options["seed"] == 7
    assert (res.mask.view(-1, 4).sum(1) == 2).all()
    assert flop_estimate(case.geometry(), "random") == 1.0
    assert method_colour("random") == "#123456"


def test_methods_are_frozen_declarations():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["full"].color = "#000000"


def test_every_method_has_a_readable_plain_version_the_docs_point_to():
    from pathlib import Path

    from obsviz import modes, reference

    for name in methods.METHODS:
        assert callable(getattr(reference, name)), name
    for name in methods.OBS_MODES:
        assert f"obsviz.reference.{name}" in getattr(modes, name).__doc__, name
    root = Path(__file__).resolve().parent.parent
    assert "obsviz/reference.py" in (root / "docs" / "ALGORITHMS.md").read_text()


def test_no_docstring_or_doc_points_to_a_file_outside_the_repo():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = [*root.glob("obsviz/**/*.py"), *root.glob("docs/*.md"), root / "README.md"]
    assert not [str(f.relative_to(root)) for f in files if "DESIGN.md" in f.read_text()]


def test_the_cli_offers_every_method_and_one_flag_per_option():
    from obsviz.cli import _method_options, build_parser

    parser = build_parser()
    args = parser.parse_args(["prune", "f.safetensors", "--method", "interleaved",
                              "--n-splits", "3", "--c-dtype", "fp16", "--order", "largest_first"])
    assert _method_options(args) == {"n_splits": 3, "c_dtype": "fp16", "order": "largest_first"}
    assert _method_options(parser.parse_args(["prune", "f.safetensors"])) == {}
    prune_parser = next(a for a in parser._subparsers._group_actions[0].choices.values()
                        if a.prog.endswith("prune"))
    flags = {s for a in prune_parser._actions for s in a.option_strings}
    assert {f"--{o.replace('_', '-')}" for o in OPTIONS} <= flags
    method = next(a for a in prune_parser._actions if a.dest == "method")
    assert tuple(method.choices) == methods.METHODS
