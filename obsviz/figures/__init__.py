"""Figure builders: pure functions from engine objects to Plotly figures (and PNG bytes).

Nothing here imports Streamlit; pages call these and hand the figures to ``st.plotly_chart``.
"""

from obsviz.figures.common import BLOCK_PALETTE, base_layout, pool2d
from obsviz.figures.geometry import (
    GeometryMaps,
    LayoutWindow,
    column_map_figure,
    compute_maps,
    layout_figure,
    layout_png,
    layout_window,
    overview_figure,
    row_coupling_figure,
)

__all__ = [
    "BLOCK_PALETTE", "GeometryMaps", "LayoutWindow", "base_layout", "column_map_figure",
    "compute_maps", "layout_figure", "layout_png", "layout_window", "overview_figure",
    "pool2d", "row_coupling_figure",
]
