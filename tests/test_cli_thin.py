"""Issue 24.5 and 24.13 on the command line: ``hessian minilm`` resolves the shipped checkpoint
as ``model minilm`` does, and N is said beside K, with the thin-calibration warning."""

from __future__ import annotations

import torch

from obsviz.cli import main
from obsviz.hessian import thin_text
from obsviz.layers import SAMPLE_DIR, Layer, load_layer, save_layers

TEXT_FILE = SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"
QUERY = "encoder.layer.0.attention.self.query"




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


def test_model_names_its_thin_layers_before_the_run(minilm, tmp_path, capsys):
    """A one-block BERT (K = 32, and 64 for the MLP's output) on 40 tokens: N = 44 positions,
    so only encoder.layer.0.output.dense is thin, and ``model`` says so before it runs."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    cfg = transformers.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=64,
                                  max_position_embeddings=128)
    src = tmp_path / "tiny"
    transformers.BertModel(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    assert main(["model", str(src), "--methods", "magnitude", "--max-tokens", "40",
                 "--seq-len", "32", "--max-eval-tokens", "256", "--out", str(tmp_path / "out"),
                 "--no-store", "-q"]) == 0
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "thin calibration" in line)
    assert warning.startswith("warning: 1 of 6 layers (encoder.layer.0.output.dense): thin "
                              "calibration data: N = 44 calibration samples for K = 64 inputs")
