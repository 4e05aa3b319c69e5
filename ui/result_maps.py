"""The per-result maps the Compare page draws: computed once per run (cached by run key) as
whole-layer previews, and every weight of a window on demand."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
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
    layer, result = _run.layer.layer, _run.result
    return rfig.result_maps(layer.weight, layer.hessian, result.weight, result.mask, result.rows,
                            row_ref=_row_ref(_run.layer.digest, layer))


@st.cache_resource(max_entries=64, show_spinner="Reading the stored weights…")
def _stored(key: str, window: rfig.Window | None, _run: Run) -> dict[str, rfig.Tiles]:
    return rfig.stored_maps(_run.result.weight, _run.result.mask, window)


def stored(run: Run, window: rfig.Window | None = None) -> dict[str, rfig.Tiles]:
    """The maps of a run whose layer's W and H are not here, from its stored pruned weight and
    mask (``rfig.stored_maps``), once per run key and window."""
    return _stored(run.key, None if window is None else tuple(window), run)


@st.cache_resource(max_entries=64, show_spinner=False)
def _window(key: str, window: rfig.Window, _run: Run) -> tuple[dict[str, rfig.Tiles], np.ndarray]:
    layer, result = _run.layer.layer, _run.result
    return rfig.window_maps(layer.weight, layer.hessian, result.weight, result.mask, window)


def window(run: Run, window: rfig.Window) -> tuple[dict[str, rfig.Tiles], np.ndarray]:
    """Every weight of ``window`` of ``run`` (once per run key and window): the maps by kind,
    and each row's error summed over the window's columns."""
    return _window(run.key, tuple(window), run)


@st.cache_resource(max_entries=24, show_spinner=False)
def _figure(kind: str, window: rfig.Window | None, shown: tuple, _panels: Callable) -> go.Figure:
    return rfig.side_by_side(_panels(), kind)


def side_by_side(kind: str, window: rfig.Window | None, shown: list[tuple[str, rfig.Label]],
                 panels: Callable[[], list[rfig.Panel]]) -> go.Figure:
    """``rfig.side_by_side`` of ``panels()``, built once per map kind, window and what is shown
    (``shown``: each result's run key and label, in order): a rerun re-sends the same images
    without colouring and encoding them again."""
    ident = tuple((key, label.variant, label.setting, label.full, label.terse)
                  for key, label in shown)
    return _figure(kind, window, ident, panels)
