"""Figures of a sparsity geometry: the layout of blocks and scopes on W, the column map, the
row-coupling map, an overview of where a window sits, and a PNG export of the layout.

The expensive step is ``compute_maps`` (every element's block, scope and position in its scope,
``O(M*K)``); callers cache its result per geometry. Every figure then reads a bounded window
of it, so a 4096 x 11008 layer draws as fast as a 16 x 16 one.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from obsviz.figures.common import (
    BLOCK_PALETTE,
    INK,
    LAYOUT_COLOURS,
    MUTED,
    SCOPE_LINE,
    base_layout,
    block_colour,
    discrete_colorscale,
)
from obsviz.geometry import Geometry, GeometryFacts

#: Largest window drawn cell by cell (rows, cols); larger layers are viewed through a window.
MAX_WINDOW = (64, 128)
#: Most rows / columns the column map and the row-coupling map show.
MAX_MAP_SPAN = 64
#: Colour of the row-coupling map's scopes (blocks own the categorical palette).
SCOPE_COLOUR = "#4C78A8"


# ---- maps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeometryMaps:
    """Every element's labels under one geometry, computed once per geometry.

    Attributes:
        geometry: the geometry the maps belong to.
        block, scope, position: ``(M, K)`` int tensors: block id, scope id, and the position of
            the element's block inside its scope (``0..gs-1``).
        scope_elements: ``(n_scopes, gs, bk)`` flat offsets into W of every scope's elements.
        facts: the geometry's counts.
    """

    geometry: Geometry
    block: torch.Tensor
    scope: torch.Tensor
    position: torch.Tensor
    scope_elements: torch.Tensor
    facts: GeometryFacts

    def block_columns(self, scope_id: int, position: int) -> np.ndarray:
        """Distinct W columns of the block at ``position`` in scope ``scope_id``, ascending."""
        offsets = self.scope_elements[scope_id, position].numpy()
        return np.unique(offsets % self.geometry.weight_shape[1])

    def scope_rows(self, scope_id: int) -> np.ndarray:
        """Distinct W rows the scope touches, ascending."""
        offsets = self.scope_elements[scope_id].reshape(-1).numpy()
        return np.unique(offsets // self.geometry.weight_shape[1])


def compute_maps(geometry: Geometry) -> GeometryMaps:
    """Label every element of W with its block, scope and position in scope (``O(M*K)``),
    stored as int32 when W is small enough (the app keeps these cached)."""
    M, K = geometry.weight_shape
    dtype = torch.int32 if M * K < 2**31 else torch.long
    return GeometryMaps(geometry, geometry.block_map(dtype), geometry.scope_map(dtype),
                        geometry.block_in_scope_map(dtype),
                        geometry.scope_elements(dtype=dtype), geometry.facts())


# ---- the window -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutWindow:
    """A window ``rows r0..r0+n-1, columns c0..c0+m-1`` of the maps, as ``(n, m)`` arrays."""

    r0: int
    c0: int
    block: np.ndarray
    scope: np.ndarray
    position: np.ndarray
    weight_shape: tuple[int, int]
    blocks_per_scope: int
    label: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.block.shape

    def pruned(self, nnz: int | None) -> np.ndarray | None:
        """An example mask: the last ``gs - nnz`` blocks of every scope pruned (True)."""
        if nnz is None:
            return None
        return self.position >= nnz


def clamp_window(weight_shape: tuple[int, int], r0: int, c0: int,
                 rows: int = MAX_WINDOW[0], cols: int = MAX_WINDOW[1]) -> tuple[int, int, int, int]:
    """``(r0, c0, rows, cols)`` moved and shrunk to fit inside W and ``MAX_WINDOW``."""
    M, K = weight_shape
    rows = max(1, min(rows, M, MAX_WINDOW[0]))
    cols = max(1, min(cols, K, MAX_WINDOW[1]))
    r0 = max(0, min(int(r0), M - rows))
    c0 = max(0, min(int(c0), K - cols))
    return r0, c0, rows, cols


def layout_window(maps: GeometryMaps, r0: int = 0, c0: int = 0, rows: int = MAX_WINDOW[0],
                  cols: int = MAX_WINDOW[1]) -> LayoutWindow:
    """Cut a window (clamped to W and ``MAX_WINDOW``) out of the maps."""
    geom = maps.geometry
    r0, c0, rows, cols = clamp_window(geom.weight_shape, r0, c0, rows, cols)
    cut = (slice(r0, r0 + rows), slice(c0, c0 + cols))
    return LayoutWindow(
        r0, c0,
        maps.block[cut].numpy().astype(np.int64),
        maps.scope[cut].numpy().astype(np.int64),
        maps.position[cut].numpy().astype(np.int64),
        geom.weight_shape, geom.blocks_per_scope, geom.name or "free-form")


def scope_outline_segments(scope: np.ndarray, r0: int = 0, c0: int = 0
                           ) -> list[tuple[float, float, float, float]]:
    """Line segments ``(x0, y0, x1, y1)`` between cells of different scopes, merged into runs,
    plus the window frame. Cell ``(i, j)`` is the unit square centred on ``(c0+j, r0+i)``."""
    n, m = scope.shape
    segs: list[tuple[float, float, float, float]] = []
    # Horizontal boundaries: between rows i and i+1; vertical ones: between columns j and j+1.
    for i, j0, j1 in _runs(scope[1:, :] != scope[:-1, :]):
        y = r0 + i + 0.5
        segs.append((c0 + j0 - 0.5, y, c0 + j1 - 0.5, y))
    for j, i0, i1 in _runs((scope[:, 1:] != scope[:, :-1]).T):
        x = c0 + j + 0.5
        segs.append((x, r0 + i0 - 0.5, x, r0 + i1 - 0.5))
    left, right, top, bottom = c0 - 0.5, c0 + m - 0.5, r0 - 0.5, r0 + n - 0.5
    segs += [(left, top, right, top), (right, top, right, bottom),
             (right, bottom, left, bottom), (left, bottom, left, top)]
    return segs


def _runs(flags: np.ndarray) -> list[tuple[int, int, int]]:
    """``(line, start, stop)`` for every run of True along axis 1 of a 2-D bool array."""
    padded = np.zeros((flags.shape[0], flags.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = flags
    step = np.diff(padded, axis=1)
    lines, starts = np.nonzero(step == 1)
    _, stops = np.nonzero(step == -1)
    return list(zip(lines.tolist(), starts.tolist(), stops.tolist(), strict=True))


# ---- the layout figure ------------------------------------------------------------------------


def _cell_colours(window: LayoutWindow, nnz: int | None) -> np.ndarray:
    """Index into ``LAYOUT_COLOURS`` per cell; pruned cells of the example mask use the faded
    half."""
    index = block_colour(window.block)
    pruned = window.pruned(nnz)
    return index if pruned is None else index + len(BLOCK_PALETTE) * pruned


def layout_figure(window: LayoutWindow, nnz: int | None = None, width: int = 760
                  ) -> go.Figure:
    """Every element of the window coloured by its block, scopes outlined.

    With ``nnz``, an example mask is drawn: in every scope the blocks at positions ``>= nnz``
    are faded and hatched (one of the candidate subsets the pruner chooses between).
    Hover shows (row, col), block id, scope id and the position in the scope. ``width`` is
    the plot's expected width in pixels; the height follows from square cells.
    """
    n, m = window.shape
    rows = np.arange(window.r0, window.r0 + n)
    cols = np.arange(window.c0, window.c0 + m)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    custom = np.stack([rr, cc, window.block, window.scope, window.position], axis=-1)
    pruned = window.pruned(nnz)
    state = (np.where(pruned, "pruned in the example mask", "kept in the example mask")
             if pruned is not None else np.full((n, m), ""))
    fig = go.Figure(go.Heatmap(
        z=_cell_colours(window, nnz), x=cols, y=rows, customdata=custom, text=state,
        colorscale=discrete_colorscale(list(LAYOUT_COLOURS)), zmin=-0.5,
        zmax=len(LAYOUT_COLOURS) - 0.5,
        showscale=False, xgap=0, ygap=0,
        hovertemplate=("row %{customdata[0]}, col %{customdata[1]}<br>"
                       "block %{customdata[2]}<br>scope %{customdata[3]} "
                       "(position %{customdata[4]})<br>%{text}<extra></extra>"),
    ))
    cell = width / m
    if pruned is not None and pruned.any() and cell >= 14:   # hatch only where it is legible
        py, px = np.nonzero(pruned)
        fig.add_trace(go.Scatter(
            x=cols[px], y=rows[py], mode="markers", hoverinfo="skip",
            marker=dict(symbol="line-ne", size=min(16, cell * 0.7),
                        line=dict(width=1, color="rgba(38,39,48,0.5)")),
        ))
    xs, ys = _segments_to_xy(scope_outline_segments(window.scope, window.r0, window.c0))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip",
                             line=dict(color=SCOPE_LINE, width=1.6)))
    height = max(180, min(900, round(cell * n) + 72))
    fig.update_layout(**base_layout(height=height))
    fig.update_xaxes(title="W column", range=[cols[0] - 0.5, cols[-1] + 0.5], side="top",
                     showgrid=False, zeroline=False, ticks="outside", constrain="domain",
                     **_ticks(m))
    fig.update_yaxes(title="W row", range=[rows[-1] + 0.5, rows[0] - 0.5], showgrid=False,
                     zeroline=False, ticks="outside", scaleanchor="x", constrain="domain",
                     **_ticks(n))
    fig.update_layout(margin=dict(l=56, r=16, t=56, b=16))
    return fig


def _ticks(span: int) -> dict:
    """Major ticks every 4, 8 or 16 cells: multiples of 8 are where most patterns repeat."""
    step = 4 if span <= 32 else 8 if span <= 80 else 16
    return dict(dtick=step, tick0=0)


def _segments_to_xy(segs: list[tuple[float, float, float, float]]) -> tuple[list, list]:
    xs: list = []
    ys: list = []
    for x0, y0, x1, y1 in segs:
        xs += [x0, x1, None]
        ys += [y0, y1, None]
    return xs, ys


# ---- column map and row coupling --------------------------------------------------------------


def _first_seen(values: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct value, in order of appearance."""
    _, first = np.unique(values, return_index=True)
    return np.sort(first)


def _offset_pattern(groups: list[np.ndarray]) -> list[tuple[int, ...]]:
    """Distinct patterns ``members - first member`` among ``groups``, most common first."""
    counts: dict[tuple[int, ...], int] = {}
    for g in groups:
        key = tuple(int(v) for v in g - g[0])
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts, key=lambda k: -counts[k])


def describe_offsets(offsets: tuple[int, ...], noun: str = "column", var: str = "c") -> str:
    """Human words for one offset pattern: ``(0, 8)`` -> ``"columns c and c+8"``."""
    n = len(offsets)
    if n == 1:
        return f"a single {noun}"
    if n > 2 and offsets == tuple(range(n)):
        return f"{n} neighbouring {noun}s ({var} … {var}+{n - 1})"
    terms = [var if o == 0 else f"{var}+{o}" for o in offsets]
    if n > 6:
        return f"{n} {noun}s: " + ", ".join(terms[:4]) + f", …, {terms[-1]}"
    return f"{noun}s " + ", ".join(terms[:-1]) + f" and {terms[-1]}"


def column_pattern(maps: GeometryMaps, row: int, c0: int, span: int = 32
                   ) -> tuple[list[int], list[np.ndarray], list[tuple[int, ...]]]:
    """Blocks met along W row ``row`` in columns ``c0..c0+span-1`` (in order), the W columns each
    touches, and the distinct column-offset patterns among them."""
    M, K = maps.geometry.weight_shape
    row = min(max(0, row), M - 1)
    c0, span = max(0, min(c0, K - 1)), max(1, min(span, MAX_MAP_SPAN))
    cut = slice(c0, min(K, c0 + span))
    blocks = maps.block[row, cut].numpy()
    scopes, positions = maps.scope[row, cut].numpy(), maps.position[row, cut].numpy()
    first = _first_seen(blocks)
    ids = [int(blocks[i]) for i in first]
    columns = [maps.block_columns(int(scopes[i]), int(positions[i])) for i in first]
    return ids, columns, _offset_pattern(columns)


def row_pattern(maps: GeometryMaps, col: int, r0: int, span: int = 32
                ) -> tuple[list[int], list[np.ndarray], list[tuple[int, ...]]]:
    """Scopes met along W column ``col`` in rows ``r0..r0+span-1`` (in order), the W rows each
    touches, and the distinct row-offset patterns among them."""
    M, K = maps.geometry.weight_shape
    col = min(max(0, col), K - 1)
    r0, span = max(0, min(r0, M - 1)), max(1, min(span, MAX_MAP_SPAN))
    scopes = maps.scope[r0:min(M, r0 + span), col].numpy()
    ids = [int(scopes[i]) for i in _first_seen(scopes)]
    rows = [maps.scope_rows(s) for s in ids]
    return ids, rows, _offset_pattern(rows)


def pattern_sentence(patterns: list[tuple[int, ...]], what: str, noun: str, var: str) -> str:
    """``"every block here touches columns c and c+8"`` from ``column_pattern``'s patterns."""
    if len(patterns) == 1:
        return f"every {what} here touches {describe_offsets(patterns[0], noun, var)}"
    shown = "; ".join(describe_offsets(p, noun, var) for p in patterns[:3])
    more = f" (+{len(patterns) - 3} more)" if len(patterns) > 3 else ""
    return f"{what}s here touch {shown}{more}"


def column_map_figure(maps: GeometryMaps, row: int = 0, c0: int = 0, span: int = 32
                      ) -> go.Figure:
    """Which W columns each block touches: one line per block met along W row ``row``
    (columns ``c0..c0+span-1``), a dot on every column the block occupies.

    Dots and bars use the block colours of ``layout_figure``; a block's bar length is the
    distance between its outermost columns (8 for the pairs of ``coupled-2:4``).
    """
    ids, columns, patterns = column_pattern(maps, row, c0, span)
    K = maps.geometry.weight_shape[1]
    lo, hi = max(0, c0), min(K, c0 + max(1, min(span, MAX_MAP_SPAN))) - 1
    fig = go.Figure()
    for y, (b, cs) in enumerate(zip(ids, columns, strict=True)):
        colour = block_colour(b)
        inside = cs[(cs >= lo) & (cs <= hi)]
        a, z = max(int(cs.min()), lo), min(int(cs.max()), hi)
        fig.add_trace(go.Scatter(
            x=[a - 0.3 if cs.min() < lo else a, z + 0.3 if cs.max() > hi else z], y=[y, y],
            mode="lines", line=dict(color=colour, width=3), hoverinfo="skip"))
        fig.add_trace(go.Scatter(
            x=inside, y=np.full(inside.shape, y), mode="markers",
            marker=dict(symbol="square", size=11, color=colour, line=dict(color=INK, width=0.6)),
            hovertemplate=f"block {b}<br>W column %{{x}}<br>touches {len(cs)} column(s)"
                          "<extra></extra>"))
    _map_layout(fig, len(ids), "block", lo, hi, "W column")
    sentence = pattern_sentence(patterns, "block", "column", "c")
    fig.update_layout(title=dict(text=f"Row {row}: {sentence}", font=dict(size=14)))
    return fig


def row_coupling_figure(maps: GeometryMaps, col: int = 0, r0: int = 0, span: int = 32
                        ) -> go.Figure:
    """Which W rows share a scope: one vertical line per scope met along W column ``col``
    (rows ``r0..r0+span-1``), a dot on every W row the scope spans. A single dot means the row
    decides alone; a tall line joins rows whose decisions are made together."""
    ids, rows, patterns = row_pattern(maps, col, r0, span)
    M = maps.geometry.weight_shape[0]
    lo, hi = max(0, r0), min(M, r0 + max(1, min(span, MAX_MAP_SPAN))) - 1
    fig = go.Figure()
    for x, (s, rs) in enumerate(zip(ids, rows, strict=True)):
        inside = rs[(rs >= lo) & (rs <= hi)]
        a, z = max(int(rs.min()), lo), min(int(rs.max()), hi)
        fig.add_trace(go.Scatter(
            x=[x, x], y=[a, z], mode="lines", hoverinfo="skip",
            line=dict(color=SCOPE_COLOUR if len(rs) > 1 else MUTED, width=3)))
        fig.add_trace(go.Scatter(
            x=np.full(inside.shape, x), y=inside, mode="markers",
            marker=dict(symbol="square", size=11,
                        color=SCOPE_COLOUR if len(rs) > 1 else MUTED,
                        line=dict(color=INK, width=0.6)),
            hovertemplate=f"scope {s}<br>W row %{{y}}<br>spans {len(rs)} row(s)"
                          "<extra></extra>"))
    _map_layout(fig, len(ids), "scope", lo, hi, "W row", vertical=True)
    sentence = pattern_sentence(patterns, "scope", "row", "r")
    fig.update_layout(title=dict(text=f"Column {col}: {sentence}", font=dict(size=14)))
    return fig


def _map_layout(fig: go.Figure, count: int, what: str, lo: int, hi: int, axis_title: str,
                vertical: bool = False) -> None:
    span = hi - lo + 1
    pos_axis = dict(title=axis_title, range=[lo - 0.7, hi + 0.7], showgrid=True,
                    gridcolor="#D5D8E0", zeroline=False, ticks="outside",
                    minor=dict(dtick=1, showgrid=True, gridcolor="#F0F1F5"), **_ticks(span))
    item_axis = dict(title=f"{what}s, in order met", showticklabels=False, showgrid=False,
                     zeroline=False, range=[count - 0.5, -0.5] if not vertical
                     else [-0.5, count - 0.5])
    size = (max(240, min(620, 14 * span + 110)) if vertical
            else max(200, min(620, 24 * count + 110)))
    if vertical:
        fig.update_xaxes(**item_axis)
        fig.update_yaxes(**pos_axis, autorange=False)
        fig.update_yaxes(range=[hi + 0.7, lo - 0.7])
    else:
        fig.update_xaxes(**pos_axis)
        fig.update_yaxes(**item_axis)
    fig.update_layout(**base_layout(height=size, margin=dict(l=56, r=16, t=48, b=44)))


# ---- overview and PNG ------------------------------------------------------------------------


def overview_figure(weight_shape: tuple[int, int], window: tuple[int, int, int, int],
                    background: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
                    ) -> go.Figure:
    """Where the window ``(r0, c0, rows, cols)`` sits in W. ``background`` is ``pool2d``'s
    ``(pooled, row_edges, col_edges)`` of a map of W (e.g. ``|W|`` of the loaded layer)."""
    M, K = weight_shape
    r0, c0, rows, cols = window
    fig = go.Figure()
    if background is not None and background[1][-1] == M and background[2][-1] == K:
        pooled, re, ce = background
        fig.add_trace(go.Heatmap(
            z=pooled, x=(ce[:-1] + ce[1:] - 1) / 2, y=(re[:-1] + re[1:] - 1) / 2,
            colorscale="Greys", showscale=False,
            hovertemplate="rows ≈ %{y:.0f}, cols ≈ %{x:.0f}<br>max |w| %{z:.3g}<extra></extra>"))
    fig.add_shape(type="rect", x0=-0.5, y0=-0.5, x1=K - 0.5, y1=M - 0.5,
                  line=dict(color=MUTED, width=1))
    fig.add_shape(type="rect", x0=c0 - 0.5, y0=r0 - 0.5, x1=c0 + cols - 0.5, y1=r0 + rows - 0.5,
                  line=dict(color="#E45756", width=2), fillcolor="rgba(228,87,86,0.25)")
    # A marker too: on a big layer the window is a speck.
    fig.add_trace(go.Scatter(x=[c0 + cols / 2], y=[r0 + rows / 2], mode="markers",
                             marker=dict(symbol="circle-open", size=12, color="#E45756",
                                         line=dict(width=2)),
                             hovertemplate=f"window: rows {r0}–{r0 + rows - 1}, "
                                           f"columns {c0}–{c0 + cols - 1}<extra></extra>"))
    fig.update_xaxes(range=[-0.5, K - 0.5], showgrid=False, zeroline=False, title="W column",
                     nticks=4)
    fig.update_yaxes(range=[M - 0.5, -0.5], showgrid=False, zeroline=False, title="W row",
                     scaleanchor="x", constrain="domain", nticks=4)
    fig.update_layout(**base_layout(height=240, margin=dict(l=56, r=8, t=8, b=40)))
    return fig


def layout_png(window: LayoutWindow, nnz: int | None = None, title: str | None = None,
               dpi: int = 150) -> bytes:
    """The layout drawing of ``layout_figure`` as PNG bytes (matplotlib, no browser needed)."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import to_rgb
    from matplotlib.figure import Figure
    from matplotlib.ticker import MultipleLocator

    n, m = window.shape
    rgb = np.array([to_rgb(c) for c in LAYOUT_COLOURS])[_cell_colours(window, nnz)]
    cell = 0.16 if m > 64 else 0.28
    fig = Figure(figsize=(max(4.0, m * cell + 1.4), max(2.5, n * cell + 1.3)), dpi=dpi)
    ax = fig.add_subplot()
    extent = (window.c0 - 0.5, window.c0 + m - 0.5, window.r0 + n - 0.5, window.r0 - 0.5)
    ax.imshow(rgb, extent=extent, interpolation="nearest", aspect="equal")
    pruned = window.pruned(nnz)
    if pruned is not None and pruned.any():
        xe = np.arange(window.c0, window.c0 + m + 1) - 0.5
        ye = np.arange(window.r0, window.r0 + n + 1) - 0.5
        ax.pcolor(xe, ye, np.ma.masked_where(~pruned, np.ones((n, m))), hatch="////",
                  facecolor="none", edgecolor=(0.15, 0.15, 0.19, 0.45), linewidth=0)
    segs = [((x0, y0), (x1, y1)) for x0, y0, x1, y1 in
            scope_outline_segments(window.scope, window.r0, window.c0)]
    ax.add_collection(LineCollection(segs, colors=SCOPE_LINE, linewidths=1.1))
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.xaxis.set_major_locator(MultipleLocator(_ticks(m)["dtick"]))
    ax.yaxis.set_major_locator(MultipleLocator(_ticks(n)["dtick"]))
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("W column")
    ax.set_ylabel("W row")
    M, K = window.weight_shape
    text = title or f"{window.label} on W {M}×{K}: colour = block, outline = scope"
    if nnz is not None:
        text += f", hatched = pruned (example, nnz={nnz})"
    fig.suptitle(text, fontsize=9, y=0.995)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
