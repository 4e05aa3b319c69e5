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

# Results: side-by-side heatmaps, the difference view, error charts (the Compare page).
from obsviz.figures.results import (  # noqa: E402
    MAX_CELLS,
    METHOD_COLOURS,
    ResultMaps,
    difference_figure,
    error_bar_figure,
    result_maps,
    row_error_figure,
    side_by_side,
)

__all__ += [
    "MAX_CELLS", "METHOD_COLOURS", "ResultMaps", "difference_figure", "error_bar_figure",
    "result_maps", "row_error_figure", "side_by_side",
]

# Lesson: the Learn page's step-through of one row (matrices, candidate costs, row updates).
from obsviz.figures.lesson import (  # noqa: E402
    candidates_figure,
    downdate_figures,
    error_figure,
    matrix_heatmap,
    modes_figure,
    row_figure,
)

__all__ += [
    "candidates_figure", "downdate_figures", "error_figure", "matrix_heatmap", "modes_figure",
    "row_figure",
]
