"""Issue 24.5 and 24.9: thin calibration data (N < K) said wherever H is made or used, in one
wording (``obsviz.hessian``), and one default of calibration tokens for every model run."""

from __future__ import annotations

import inspect

import torch

from obsviz.hessian import is_thin, samples_text, thin_text
from obsviz.layers import Layer, load_layer, save_layers
from obsviz.sweep import parse_spec, plan, sweep


def _layer(name: str = "thin", n: int = 10, K: int = 32, M: int = 8) -> Layer:
    X = torch.randn(n, K)
    return Layer(name, torch.randn(M, K), X.T @ X / n, nsamples=n)


def test_the_rule_and_its_wording_live_in_one_place():
    assert is_thin(281, 384) and not is_thin(384, 384) and not is_thin(34_204, 384)
    assert not is_thin(0, 384) and not is_thin(None, 384)   # not recorded: not known to be thin
    assert samples_text(281, 384) == "N = 281 calibration samples for K = 384 inputs"
    assert samples_text(0, 384) == "N not recorded (K = 384 inputs)"
    assert "0 calibration samples" not in samples_text(0, 384)
    text = thin_text(281, 384, "fc1")
    assert text.startswith("fc1: thin calibration data: N = 281 calibration samples for K = 384")
    assert "rank-deficient" in text and "damping" in text
    assert thin_text(2082, 384) is None and thin_text(0, 384) is None


def test_the_loader_reads_the_recorded_n_and_says_when_it_is_thin(tmp_path):
    path = tmp_path / "layers.safetensors"
    unrecorded = Layer("plain", torch.randn(4, 16), torch.eye(16))          # nsamples 0
    save_layers(path, [_layer("thin", n=10, K=32), _layer("thick", n=64, K=32), unrecorded])
    thin, thick, plain = (load_layer(path, name) for name in ("thin", "thick", "plain"))
    assert thin.nsamples == 10 and thin.samples_text.startswith("N = 10 calibration samples")
    assert thin.thin_text == thin_text(10, 32, "thin")
    assert thick.nsamples == 64 and thick.thin_text is None
    # a file that does not record N says so, never "0 calibration samples"
    assert plain.nsamples == 0 and plain.samples_text == "N not recorded (K = 16 inputs)"
    assert plain.thin_text is None
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        assert "plain.nsamples" not in f.keys() and "thin.nsamples" in f.keys()


def test_inputs_give_their_n_and_a_thin_one_is_said(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "inputs.safetensors"
    save_file({"fc.weight": torch.randn(4, 24), "fc.inputs": torch.randn(5, 24)}, str(path))
    layer = load_layer(path)
    assert layer.nsamples == 5 and layer.thin_text == thin_text(5, 24, "fc")


def test_a_sweep_over_a_thin_layer_says_so_before_and_in_its_report(tmp_path):
    spec = parse_spec({"name": "thin", "layers": [_layer("thin"), _layer("thick", n=64)],
                       "grid": {"presets": ["2:4"], "methods": ["magnitude"]}})
    planned = plan(spec, "cpu")
    assert planned.thin == [thin_text(10, 32, "thin")]
    assert planned.thin[0] in planned.warnings
    report = sweep(spec, store=tmp_path / "r.sqlite", device="cpu")
    assert report.thin == planned.thin


def test_one_default_of_calibration_tokens_for_every_model_run():
    from obsviz import model
    from obsviz.cli import build_parser

    assert model.MAX_TOKENS == 2048 and model.MAX_EVAL_TOKENS == 2048
    params = inspect.signature(model.ModelRun).parameters
    assert params["max_tokens"].default == model.MAX_TOKENS
    assert params["max_eval_tokens"].default == model.MAX_EVAL_TOKENS
    for command in ("model", "sensitivity"):
        args = build_parser().parse_args([command, "minilm", "--out", "x"])
        assert (args.max_tokens, args.max_eval_tokens) == (model.MAX_TOKENS,
                                                           model.MAX_EVAL_TOKENS), command


def test_a_model_plan_names_its_thin_layers_before_the_run():
    from obsviz.geometry import Geometry
    from obsviz.model import LayerPlan, calibration_table, thin_warning

    def lp(name, shape):
        return LayerPlan(name, 0, name, shape, Geometry.preset("2:4", shape), 2, "sparsegpt", {})

    layers = [lp("q", (384, 384)), lp("up", (1536, 384)), lp("down", (384, 1536))]
    table = calibration_table(layers, 1000)
    assert [(r["layer"], r["K"], r["N"], r["thin"]) for r in table] == [
        ("q", 384, 1000, False), ("up", 384, 1000, False), ("down", 1536, 1000, True)]
    text = thin_warning(layers, 1000)
    assert text.startswith("1 of 3 layers (down): thin calibration data: N = 1,000")
    assert thin_warning(layers, 2082) is None
