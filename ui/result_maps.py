"""The per-result maps the Compare page draws: computed once per run (cached by run key) as
whole-layer previews, and every weight of a window on demand."""

from __future__ import annotations

import numpy as np
import streamlit as st

from obsviz.figures import results as rfig

from ui.runs import Run


@st.cache_resource(max_entries=16, show_spinner=False)
def _row_ref(digest: str, _layer) -> np.ndarray:
    """The layer's per-row output energy ``W0_r H W0_rᵀ``, once per layer."""
    return rfig.layer_row_ref(_layer.weight, _layer.hessian)


@st.cache_resource(max_entries=64, show_spinner="Computing error maps…")
def maps(key: str, _run: Run) -> rfig.ResultMaps:
    """A run's maps (error contribution, kept fraction, |ΔW| as previews of at most
    ``rfig.PREVIEW_CELLS`` tiles each, per-row error), once per run key."""
    layer = _run.layer.layer
    return rfig.result_maps(layer.weight, layer.hessian, _run.result.weight, _run.result.mask,
                            _run.result.rows, row_ref=_row_ref(_run.layer.digest, layer))


def window(run: Run, window: rfig.Window) -> tuple[dict[str, rfig.Tiles], object]:
    """Every weight of ``window`` of ``run``: the maps by kind, and each row's error summed over
    the window's columns."""
    layer = run.layer.layer
    return rfig.window_maps(layer.weight, layer.hessian, run.result.weight, run.result.mask,
                            window)
