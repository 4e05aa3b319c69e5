"""The cached per-result maps the Compare page draws."""

from __future__ import annotations

import streamlit as st

from obsviz.figures import results as rfig

from ui.runs import Run


@st.cache_resource(max_entries=12, show_spinner="Computing error maps…")
def maps(key: str, _run: Run) -> rfig.ResultMaps:
    """A stored run's maps (error contribution, mask, |ΔW|, per-row error), once per run."""
    layer = _run.layer.layer
    return rfig.result_maps(layer.weight, layer.hessian, _run.result.weight, _run.result.mask,
                            _run.result.rows)
