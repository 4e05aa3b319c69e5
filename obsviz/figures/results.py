"""Figures of pruning results: the one place that turns results into heatmaps and charts.

- ``result_maps``: a result's per-element maps (error contribution ``ΔW ⊙ (ΔW H)``, kept mask,
  ``|ΔW|``) and its per-row relative error.
- ``side_by_side``: one map kind for several results, one shared colour scale, linked zoom.
- ``difference_figure``: where one result's error exceeds another's (red: the first loses more);
  ``row_difference`` and ``rows_losing_more``: the same, row by row.
- ``error_bar_figure`` and ``row_error_figure``: error by method, per-row error distribution.

Pure: tensors or arrays in, Plotly figures out. A heatmap figure sends at most ``MAX_CELLS``
cells to the browser in total: maps larger than their share are pooled with ``pool2d`` (the
mean over each tile), and the axes stay in W's row and column numbers at any pooling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from obsviz.figures.common import INK, KEPT, MUTED, base_layout, pool2d
from obsviz.methods import REGISTRY
from obsviz.metrics import element_contribution, row_rel_error

#: Most heatmap cells one figure sends to the browser, all panels together.
MAX_CELLS = 250_000

#: One colour per method, the same in every figure of the app (declared in ``obsviz.methods``).
METHOD_COLOURS: dict[str, str] = {name: m.color for name, m in REGISTRY.items()}

#: Diverging scale for signed error: blue below zero, white at zero, red above.
DIVERGING = [[0.0, "#2166AC"], [0.25, "#92C5DE"], [0.5, "#F7F7F7"], [0.75, "#F4A582"],
             [1.0, "#B2182B"]]
KEPT_SCALE = [[0.0, "#F2F2F2"], [1.0, KEPT]]
DELTA_SCALE = [[0.0, "#FFFFFF"], [0.15, "#DCE6F2"], [0.5, "#6A8FC7"], [1.0, "#1B2A5E"]]


@dataclass(frozen=True)
class MapKind:
    title: str        # what the colour means, for the colour bar and the hover
    colorscale: list
    signed: bool      # True: range symmetric about 0; False: from 0 up


MAP_KINDS: dict[str, MapKind] = {
    "error": MapKind("error ΔW⊙(ΔW H)", DIVERGING, signed=True),
    "mask": MapKind("kept fraction", KEPT_SCALE, signed=False),
    "delta": MapKind("|ΔW|", DELTA_SCALE, signed=False),
}

Window = tuple[int, int, int, int]  # (first row, end row, first column, end column), end exclusive


def method_colour(method: str) -> str:
    """The colour of ``method`` (a method name, or a label that starts with one)."""
    head = method.split(" ", 1)[0]
    return REGISTRY[head].color if head in REGISTRY else INK


# ---- maps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultMaps:
    """A result's maps, float32 numpy, ``(M, K)`` each, and its per-row relative error.

    Attributes:
        error: ``ΔW ⊙ (ΔW H)``; row ``r`` sums to row ``r``'s error.
        mask: 1 where kept, 0 where pruned.
        delta: ``|ΔW|``.
        row_rel_error: ``(R,)`` ``sqrt(ΔW_r H ΔW_rᵀ / W0_r H W0_rᵀ)`` over the pruned rows.
    """

    error: np.ndarray
    mask: np.ndarray
    delta: np.ndarray
    row_rel_error: np.ndarray

    def get(self, kind: str) -> np.ndarray:
        if kind not in MAP_KINDS:
            raise ValueError(f"kind={kind!r} is unknown; valid: {', '.join(MAP_KINDS)}")
        return getattr(self, kind)


def result_maps(W0: torch.Tensor, H: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                rows: torch.Tensor | None = None) -> ResultMaps:
    """The maps of one result: ``W0`` ``(M, K)`` the original weight, ``H`` ``(K, K)`` the
    undamped Hessian, ``weight``/``mask`` the result's; ``rows`` the pruned rows when a row
    sample was run (the per-row error covers them only)."""
    W0, H = W0.detach().cpu(), H.detach().cpu()
    weight, mask = weight.detach().cpu(), mask.detach().cpu()
    contribution = element_contribution(W0, weight, H)
    sel = slice(None) if rows is None else rows.cpu()
    return ResultMaps(
        error=contribution.to(torch.float32).numpy(),
        mask=mask.to(torch.float32).numpy(),
        delta=(weight - W0).abs().to(torch.float32).numpy(),
        row_rel_error=row_rel_error(W0[sel], weight[sel], H).to(torch.float32).numpy(),
    )


# ---- heatmaps ---------------------------------------------------------------------------------


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _crop(a: np.ndarray, window: Window | None) -> tuple[np.ndarray, int, int]:
    """``a`` cut to ``window`` (clamped to the map), and the window's first row and column."""
    if window is None:
        return a, 0, 0
    r0, r1, c0, c1 = window
    M, K = a.shape
    r0, c0 = max(0, min(r0, M - 1)), max(0, min(c0, K - 1))
    r1, c1 = max(r0 + 1, min(r1, M)), max(c0 + 1, min(c1, K))
    return a[r0:r1, c0:c1], r0, c0


def _pooled(a: np.ndarray, max_cells: int, window: Window | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``a`` cropped and mean-pooled; edges in W's coordinates (cell edges at ``i - 0.5``)."""
    cut, r0, c0 = _crop(a, window)
    z, row_edges, col_edges = pool2d(cut, max_cells, reduce="mean")
    return z.astype(np.float32), row_edges + r0 - 0.5, col_edges + c0 - 0.5


def _colour_range(values: Sequence[np.ndarray], signed: bool, quantile: float = 0.995
                  ) -> tuple[float, float]:
    """One range for every panel: up to the ``quantile`` of |values| (a few hot cells must not
    wash out the rest), symmetric about 0 for signed maps."""
    flat = np.concatenate([np.abs(v).ravel() for v in values]) if values else np.zeros(1)
    top = float(np.quantile(flat, quantile)) if flat.size else 0.0
    if not math.isfinite(top) or top <= 0:
        top = float(flat.max()) if flat.size and float(flat.max()) > 0 else 1.0
    return (-top, top) if signed else (0.0, top)


def _grid(n: int, columns: int) -> tuple[int, int]:
    cols = max(1, min(n, columns))
    return math.ceil(n / cols), cols


def side_by_side(maps: Mapping[str, np.ndarray | torch.Tensor], kind: str,
                 max_cells: int = MAX_CELLS, window: Window | None = None, columns: int = 4,
                 panel_height: int | None = None, width_hint: int = 1050) -> go.Figure:
    """One panel per result (``maps``: label -> ``(M, K)`` map of ``kind``), side by side.

    All panels share one colour scale (one colour bar) and their axes are linked: zooming one
    zooms all. ``window`` ``(r0, r1, c0, c1)`` draws only that part of W. The panels together
    send at most ``max_cells`` cells. Without ``panel_height``, panels are sized so that W's
    weights come out about square in a figure ``width_hint`` pixels wide.
    """
    if kind not in MAP_KINDS:
        raise ValueError(f"kind={kind!r} is unknown; valid: {', '.join(MAP_KINDS)}")
    if not maps:
        raise ValueError("maps is empty; give at least one result's map")
    spec = MAP_KINDS[kind]
    labels = list(maps)
    share = max(1, max_cells // len(labels))
    pooled = [_pooled(_as_array(maps[label]), share, window) for label in labels]
    zmin, zmax = (0.0, 1.0) if kind == "mask" else _colour_range([p[0] for p in pooled],
                                                                   spec.signed)
    n_rows, n_cols = _grid(len(labels), columns)
    if panel_height is None:
        _, row_edges0, col_edges0 = pooled[0]
        aspect = (row_edges0[-1] - row_edges0[0]) / (col_edges0[-1] - col_edges0[0])
        panel_height = int(min(480, max(180, (width_hint - 100) / n_cols * aspect)))
    fig = make_subplots(rows=n_rows, cols=n_cols, subplot_titles=labels,
                        horizontal_spacing=0.03, vertical_spacing=0.08 if n_rows > 1 else 0.0)
    tile = ""
    for i, (label, (z, row_edges, col_edges)) in enumerate(zip(labels, pooled, strict=True)):
        tall = (row_edges[-1] - row_edges[0]) / max(1, z.shape[0])
        wide = (col_edges[-1] - col_edges[0]) / max(1, z.shape[1])
        if tall > 1.01 or wide > 1.01:
            tile = f" (tiles of ≈{tall:.0f} × {wide:.0f} weights, mean per tile)"
        fig.add_trace(go.Heatmap(
            z=z, x=col_edges, y=row_edges, coloraxis="coloraxis",
            hovertemplate=(f"<b>{label}</b><br>row %{{y:.0f}}, column %{{x:.0f}}<br>"
                           f"{spec.title} %{{z:.3g}}<extra></extra>"),
        ), row=i // n_cols + 1, col=i % n_cols + 1)
    fig.update_xaxes(matches="x", showgrid=False, zeroline=False, ticks="outside",
                     tickfont=dict(size=11, color=MUTED))
    fig.update_yaxes(matches="y", autorange="reversed", showgrid=False, zeroline=False,
                     ticks="outside", tickfont=dict(size=11, color=MUTED))
    fig.update_yaxes(showticklabels=False)
    for r in range(n_rows):
        fig.update_yaxes(showticklabels=True, row=r + 1, col=1)
    coloraxis = dict(colorscale=spec.colorscale, cmin=zmin, cmax=zmax,
                     colorbar=dict(title=dict(text=spec.title, side="right"), thickness=12,
                                   len=0.9, outlinewidth=0))
    if spec.signed:
        coloraxis["cmid"] = 0.0
    fig.update_layout(**base_layout(
        height=panel_height * n_rows + 40, coloraxis=coloraxis,
        margin=dict(l=48, r=16, t=48, b=32), meta=dict(tiles=tile)))
    for annotation in fig.layout.annotations:
        annotation.font = dict(size=14, color=method_colour(annotation.text))
    return fig


def _pair(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor
          ) -> tuple[np.ndarray, np.ndarray]:
    """Two maps of one layer as arrays; a ``ValueError`` when their shapes differ."""
    za, zb = _as_array(a), _as_array(b)
    if za.shape != zb.shape:
        raise ValueError(f"a has shape {za.shape} but b has {zb.shape}; compare results of "
                         "one layer")
    return za, zb


def row_difference(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(M,)`` float64: each row's error under ``a`` minus its error under ``b`` (two error
    contribution maps ``(M, K)``, whose rows sum to the rows' errors); positive where ``a``
    loses more."""
    za, zb = _pair(a, b)
    return za.sum(1, dtype=np.float64) - zb.sum(1, dtype=np.float64)


def rows_losing_more(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> int:
    """How many rows have more error under ``a`` than under ``b`` (see ``row_difference``)."""
    return int((row_difference(a, b) > 0).sum())


def difference_figure(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor,
                      label_a: str, label_b: str, max_cells: int = MAX_CELLS,
                      window: Window | None = None, height: int = 420) -> go.Figure:
    """Where ``label_a`` loses error ``label_b`` does not: the heatmap of ``a - b`` (two error
    contribution maps ``(M, K)``), red where ``a`` has more error, blue where ``b`` has; beside
    it, the difference summed over each row's columns."""
    za, zb = _pair(a, b)
    diff = za.astype(np.float64) - zb.astype(np.float64)
    z, row_edges, col_edges = _pooled(diff, max_cells - 4096, window)
    zmin, zmax = _colour_range([z], signed=True)
    cut_a, r0, _ = _crop(za, window)
    per_row = row_difference(cut_a, _crop(zb, window)[0])
    fig = make_subplots(rows=1, cols=2, column_widths=[0.82, 0.18], shared_yaxes=True,
                        horizontal_spacing=0.02)
    fig.add_trace(go.Heatmap(
        z=z, x=col_edges, y=row_edges, coloraxis="coloraxis",
        hovertemplate=(f"row %{{y:.0f}}, column %{{x:.0f}}<br>{label_a} − {label_b}: "
                       "%{z:.3g}<extra></extra>")), row=1, col=1)
    rows_idx = np.arange(r0, r0 + per_row.size)
    step = max(1, per_row.size // 4096)
    colours = np.where(per_row[::step] >= 0, DIVERGING[-1][1], DIVERGING[0][1])
    fig.add_trace(go.Bar(
        x=per_row[::step].astype(np.float32), y=rows_idx[::step], orientation="h",
        marker=dict(color=colours, line=dict(width=0)),
        hovertemplate=f"row %{{y}}<br>row error, {label_a} − {label_b}: %{{x:.3g}}"
                      "<extra></extra>"), row=1, col=2)
    fig.update_yaxes(autorange="reversed", showgrid=False, zeroline=False)
    fig.update_xaxes(showgrid=False, zeroline=False, row=1, col=1)
    fig.update_xaxes(zeroline=True, zerolinecolor=MUTED, showgrid=False, tickfont=dict(size=10),
                     title=dict(text="per row", font=dict(size=12, color=MUTED)), row=1, col=2)
    fig.update_layout(**base_layout(
        height=height, bargap=0,
        coloraxis=dict(colorscale=DIVERGING, cmin=zmin, cmax=zmax, cmid=0.0,
                       colorbar=dict(title=dict(text=f"{label_a} − {label_b}", side="right"),
                                     thickness=12, outlinewidth=0)),
        margin=dict(l=48, r=16, t=24, b=40)))
    return fig


# ---- charts -----------------------------------------------------------------------------------


def error_bar_figure(errors: Mapping[str, float], height: int | None = None) -> go.Figure:
    """Relative error by result (``label -> rel_error``), least error on top."""
    if not errors:
        raise ValueError("errors is empty; give at least one result")
    order = sorted(errors, key=lambda k: errors[k])
    values = [errors[k] for k in order]
    fig = go.Figure(go.Bar(
        x=values, y=order, orientation="h",
        marker=dict(color=[method_colour(k) for k in order], line=dict(width=0)),
        text=[f"{v:.4f}" for v in values], textposition="outside", cliponaxis=False,
        hovertemplate="%{y}: relative error %{x:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", showgrid=False)
    fig.update_xaxes(title="relative output error ‖XΔWᵀ‖ / ‖XW₀ᵀ‖", showgrid=True,
                     gridcolor="#EEEEF2", rangemode="tozero",
                     range=[0, max(values) * 1.18 if max(values) > 0 else 1])
    fig.update_layout(**base_layout(height=height or 60 + 34 * len(order),
                                    margin=dict(l=16, r=24, t=16, b=44)))
    return fig


def row_error_figure(per_row: Mapping[str, np.ndarray | torch.Tensor], height: int = 360,
                     max_points: int = 2000) -> go.Figure:
    """The distribution of per-row relative error, one ECDF line per result: a line further
    left is better; its spread shows whether a method's error sits in a few rows."""
    if not per_row:
        raise ValueError("per_row is empty; give at least one result")
    fig = go.Figure()
    for label, values in per_row.items():
        v = np.sort(_as_array(values).astype(np.float64).ravel())
        if v.size == 0:
            continue
        idx = np.unique(np.linspace(0, v.size - 1, min(v.size, max_points)).astype(np.int64))
        fig.add_trace(go.Scatter(
            x=v[idx], y=(idx + 1) / v.size, mode="lines", name=label,
            line=dict(color=method_colour(label), width=2.2, shape="hv"),
            hovertemplate=f"{label}<br>%{{y:.0%}} of rows ≤ %{{x:.4f}}<extra></extra>"))
    fig.update_xaxes(title="per-row relative error", showgrid=True, gridcolor="#EEEEF2",
                     rangemode="tozero")
    fig.update_yaxes(title="fraction of rows", tickformat=".0%", range=[0, 1.02], showgrid=True,
                     gridcolor="#EEEEF2")
    fig.update_layout(**base_layout(height=height, showlegend=True,
                                    legend=dict(orientation="h", yanchor="bottom", y=1.02,
                                                x=0),
                                    margin=dict(l=56, r=16, t=16 + 22 * math.ceil(
                                        len(per_row) / 3), b=44)))
    return fig


def cell_count(fig: go.Figure) -> int:
    """Heatmap cells a figure sends (every heatmap trace's ``z`` size)."""
    return sum(int(np.asarray(t.z).size) for t in fig.data if t.type == "heatmap")
