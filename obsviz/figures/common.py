"""Helpers every figure module shares: pooling big maps, the block palette, layout defaults.

Figures never send millions of cells to the browser: a 2-D map larger than a budget is pooled
(``pool2d``) into at most ``max_cells`` cells first, and only a window is drawn cell by cell.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from obsviz.text import visible

#: Categorical colours for block ids. Eleven entries on purpose: a prime count means blocks that
#: sit next to each other (ids one apart, or a grid row apart) almost never share a colour.
BLOCK_PALETTE: tuple[str, ...] = (
    "#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2",
    "#EECA3B", "#9D755D", "#FF9DA6", "#5D6BD8", "#88D27A",
)

#: Colours with a fixed meaning across the app.
INK = "#262730"          # text, outlines
SCOPE_LINE = "#1B1E2B"   # scope outlines
MUTED = "#8A8FA3"        # secondary text, guides
KEPT = "#2E7D32"

FONT = dict(family="Source Sans Pro, Helvetica, Arial, sans-serif", size=13, color=INK)


def block_colour(block_id: int | np.ndarray) -> str | np.ndarray:
    """The palette colour of a block id (scalar) or the palette index of an id array."""
    if isinstance(block_id, np.ndarray):
        return block_id % len(BLOCK_PALETTE)
    return BLOCK_PALETTE[int(block_id) % len(BLOCK_PALETTE)]


def fade(hex_colour: str, amount: float = 0.6) -> str:
    """Blend a ``#rrggbb`` colour towards white by ``amount`` in [0, 1]."""
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    mix = [round(v + (255 - v) * amount) for v in (r, g, b)]
    return "#{:02X}{:02X}{:02X}".format(*mix)


#: The layout drawing's colours: the block palette, then its faded half for the blocks an example
#: mask prunes (palette index ``i`` pruned is ``i + len(BLOCK_PALETTE)``).
LAYOUT_COLOURS: tuple[str, ...] = BLOCK_PALETTE + tuple(fade(c, 0.62) for c in BLOCK_PALETTE)


def discrete_colorscale(colours: list[str]) -> list[list]:
    """A Plotly colorscale that maps the integers ``0..n-1`` (with ``zmin=-0.5``,
    ``zmax=n-0.5``) to ``colours`` exactly, with no blending between neighbours."""
    n = len(colours)
    scale: list[list] = []
    for i, c in enumerate(colours):
        scale.append([i / n, c])
        scale.append([(i + 1) / n, c])
    return scale


def plot_text(text: object) -> str:
    """Text for a Plotly label, legend entry, title, tick or hover, inert: Plotly renders a few
    HTML tags (``<b>``, links among them), so ``<``, ``>`` and ``&`` are escaped, and control and
    bidirectional characters (U+202E reverses what follows) are written as escapes
    (:func:`obsviz.text.visible`) — labels hold user file, layer and method names."""
    return visible(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def base_layout(**overrides) -> dict:
    """Layout defaults every obsviz figure starts from (white background, compact margins)."""
    layout = dict(
        font=FONT,
        paper_bgcolor="white",
        plot_bgcolor="white",
        margin=dict(l=56, r=16, t=40, b=44),
        hoverlabel=dict(bgcolor="white", font_size=13),
        showlegend=False,
    )
    layout.update(overrides)
    return layout


def tile_edges(n: int, bins: int) -> np.ndarray:
    """``bins + 1`` integer edges splitting ``range(n)`` into near-equal, non-empty parts."""
    return np.round(np.linspace(0, n, bins + 1)).astype(np.int64)


def pool_shape(shape: tuple[int, int], max_cells: int) -> tuple[int, int]:
    """The ``(rows, cols)`` a map of ``shape`` is pooled to: at most ``max_cells`` cells, the
    aspect ratio kept, never more cells than the map has along either axis."""
    M, K = shape
    if max_cells < 1:
        raise ValueError(f"max_cells={max_cells} must be a positive integer")
    if M * K <= max_cells:
        return M, K
    scale = math.sqrt(M * K / max_cells)
    rows = max(1, min(M, int(M / scale)))
    cols = max(1, min(K, max_cells // rows))
    return rows, cols


def pool2d(x: torch.Tensor | np.ndarray, max_cells: int,
           reduce: Literal["mean", "max"] = "mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pool a 2-D map ``(M, K)`` to at most ``max_cells`` cells.

    Returns ``(pooled, row_edges, col_edges)``: ``pooled`` is a float ``(R, C)`` array, and cell
    ``(i, j)`` covers rows ``row_edges[i]:row_edges[i+1]`` and columns
    ``col_edges[j]:col_edges[j+1]`` of ``x``. A map within budget comes back unchanged (as float).
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce={reduce!r} is unknown; valid: 'mean', 'max'")
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"x has shape {a.shape}; pool2d needs a 2-D map")
    a = a.astype(np.float64, copy=False)
    rows, cols = pool_shape(a.shape, max_cells)
    row_edges, col_edges = tile_edges(a.shape[0], rows), tile_edges(a.shape[1], cols)
    if (rows, cols) == a.shape:
        return a.copy(), row_edges, col_edges
    ufunc = np.add if reduce == "mean" else np.maximum
    out = ufunc.reduceat(ufunc.reduceat(a, row_edges[:-1], axis=0), col_edges[:-1], axis=1)
    if reduce == "mean":
        out = out / np.outer(np.diff(row_edges), np.diff(col_edges))
    return out, row_edges, col_edges
