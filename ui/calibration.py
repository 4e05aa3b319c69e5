"""How much calibration data is behind each H, shown where H is used: N beside K, and the one
thin-calibration warning (``obsviz.hessian.thin_text``: N < K) on the Prune page, the sidebar and
the Model page's plan."""

from __future__ import annotations

import streamlit as st

from obsviz.layers import Layer
from obsviz.model import calibration_samples, calibration_table, thin_warning

from ui.text import md


def layer_facts(layer: Layer) -> str:
    """``W M × K · N = … calibration samples for K = … inputs`` (or "N not recorded"), as
    markdown."""
    M, K = layer.shape
    return f"W {M} × {K} · {md(layer.samples_text)}"


def layer_warning(layer: Layer) -> None:
    """The thin-calibration warning of ``layer``, when its file records N < K."""
    if layer.thin_text:
        st.warning(md(layer.thin_text, limit=600), icon="⚠️")


def plan_calibration(layers: list, tokenizer, text: str, max_tokens: int, seq_len: int) -> None:
    """Before a model run: the N every layer's H will be built from, beside each layer's K, and
    the warning for the layers where N < K."""
    try:
        n = calibration_samples(tokenizer, text, max_tokens, seq_len)
    except ValueError:   # empty text, too short a seq_len: the run itself says why
        return
    table = calibration_table(layers, n)
    warning = thin_warning(layers, n)
    if warning:
        st.warning(md(warning, limit=900), icon="⚠️")
    widths = sorted({row["K"] for row in table})
    st.caption(f"Every layer's H = XᵀX / N from N = {n:,} calibration token positions; "
               f"K (inputs) {' / '.join(f'{k:,}' for k in widths)}"
               + ("." if warning else ": N ≥ K for every layer."))
    with st.expander(f"N and K per layer ({len(table)})"):
        st.dataframe({"layer": [r["layer"] for r in table], "K": [r["K"] for r in table],
                      "N": [r["N"] for r in table],
                      "N < K": ["thin" if r["thin"] else "" for r in table]},
                     hide_index=True, width="stretch")
