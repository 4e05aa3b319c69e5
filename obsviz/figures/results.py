"""Figures of pruning results: the one place that turns results into heatmaps and charts.

- ``short_labels``: what each shown result is called — its method plus only what differs between
  the results shown together — and its full description (for hover and tables).
- ``result_maps``: a result's maps, computed once: whole-layer previews pooled to at most
  ``PREVIEW_CELLS`` tiles (error contribution ``ΔW ⊙ (ΔW H)``, kept fraction, ``|ΔW|``) and its
  per-row error. ``window_maps``: every weight of a window, computed on demand.
- ``side_by_side``: one map kind for several results as images, one panel per result, grouped
  into rows by setting (geometry, nnz, …) and into columns by method; one colour scale, linked
  zoom.
- ``difference_figure``: where one result's error exceeds another's (red: the first loses
  more), beside it the difference per row.
- ``error_bar_figure`` and ``row_error_figure``: error by method, per-row error distribution.

Colour always means the method (``method_colour``); a setting (e.g. a geometry) is told apart by
the bars' pattern, the lines' dash and the heatmaps' rows (``setting_style``).

Pure: tensors or arrays in, Plotly figures out. Heatmaps go to the browser as PNG images of at
most ``MAX_PIXELS`` pixels per figure (pooled: the mean over each tile), never as matrices;
their axes stay in W's row and column numbers at any pooling.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go
import torch

from obsviz.figures.common import INK, KEPT, MUTED, base_layout, plot_text, pool_shape, tile_edges
from obsviz.methods import REGISTRY
from obsviz.metrics import format_rel_error, row_error

#: Most tiles a result's whole-layer preview keeps per map kind.
PREVIEW_CELLS = 65_536
#: Most image pixels one heatmap figure sends to the browser, all panels together.
MAX_PIXELS = 600_000
#: Kept for callers that bound a figure's cells (the difference view's image uses it).
MAX_CELLS = 250_000

#: One colour per method, the same in every figure of the app (declared in ``obsviz.methods``).
METHOD_COLOURS: dict[str, str] = {name: m.color for name, m in REGISTRY.items()}

#: Diverging scale for signed error: blue below zero, white at zero, red above.
DIVERGING = [[0.0, "#2166AC"], [0.25, "#92C5DE"], [0.5, "#F7F7F7"], [0.75, "#F4A582"],
             [1.0, "#B2182B"]]
KEPT_SCALE = [[0.0, "#F2F2F2"], [1.0, KEPT]]
DELTA_SCALE = [[0.0, "#FFFFFF"], [0.15, "#DCE6F2"], [0.5, "#6A8FC7"], [1.0, "#1B2A5E"]]

#: How the n-th setting (geometry, nnz, layer, … — whatever differs beside the method) is drawn:
#: bar pattern, line dash, marker. Colour stays the method's.
SETTING_PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")
SETTING_DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SETTING_MARKERS = ("circle", "square", "diamond", "triangle-up", "cross", "star")


@dataclass(frozen=True)
class MapKind:
    title: str        # what the colour means, for the colour bar and the hover
    colorscale: list
    signed: bool      # True: range symmetric about 0; False: from 0 up


MAP_KINDS: dict[str, MapKind] = {
    "error": MapKind("error ΔW⊙(ΔW H)", DIVERGING, signed=True),
    "mask": MapKind("kept fraction", KEPT_SCALE, signed=False),
    "delta": MapKind("|ΔW|", DELTA_SCALE, signed=False),
    # what a stored result shows without its layer's W and H: the pruned weights themselves
    "weight": MapKind("|W| pruned", DELTA_SCALE, signed=False),
}
#: The map kinds computed from W, H and the result (``result_maps``); ``"weight"`` needs the
#: result only (``stored_maps``).
LAYER_KINDS = ("error", "mask", "delta")

Window = tuple[int, int, int, int]  # (first row, end row, first column, end column), end exclusive


def method_colour(method: str) -> str:
    """The colour of ``method`` (a method name, or a label that starts with one)."""
    head = method.split(" ", 1)[0]
    return REGISTRY[head].color if head in REGISTRY else INK


def _check_kind(kind: str) -> MapKind:
    if kind not in MAP_KINDS:
        raise ValueError(f"kind={kind!r} is unknown; valid: {', '.join(MAP_KINDS)}")
    return MAP_KINDS[kind]


# ---- labels -----------------------------------------------------------------------------------

#: What describes a result, in the order descriptions list it. ``method`` and ``options`` make
#: its *variant* (a heatmap column, coloured by method); the others its *setting* (a heatmap
#: row, a bar pattern, a line dash).
FACETS = ("method", "options", "geometry", "nnz", "sample", "damp", "device", "layer")


@dataclass(frozen=True)
class Label:
    """What one result is called among the results shown with it.

    Attributes:
        method: the method's name (its colour).
        variant: the method plus the options that differ from another shown result of the same
            method: ``"true_obs (ng=64)"``.
        setting: the facets other than method and options that differ between the shown
            results, ``" · "``-joined (``"block16"``, ``"2:4 · layer0.query"``); ``""`` when
            every shown result has the same.
        short: ``variant`` and ``setting`` together, unique among the shown results.
        full: every facet: for hover and the table.
        terse: ``variant`` with the option values only (``"true_obs (64, 32)"``), for where
            ``variant`` does not fit.
    """

    method: str
    variant: str
    setting: str
    short: str
    full: str
    terse: str = ""


def _text(value: object) -> str:
    return "" if value is None else str(value)


def _options_text(options: Mapping[str, object], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={options[k]}" for k in keys)


def short_labels(descriptions: Sequence[Mapping[str, object]]) -> list[Label]:
    """Labels for results shown together, from each one's facets (``FACETS``; ``method``
    required, ``options`` a mapping, every other value shown as its text).

    A label names the method and only what differs between the shown results, so that nine
    methods on one layer read ``"full"``, ``"sparsegpt"``… and the same nine on two geometries
    add ``"2:4"`` or ``"block16"``. Results that agree on every facet are numbered
    (``"full #2"``) so that every short label is unique.
    """
    if not descriptions:
        return []
    for i, d in enumerate(descriptions):
        if not d.get("method"):
            raise ValueError(f"descriptions[{i}] has no 'method'")
    methods = [str(d["method"]) for d in descriptions]
    options = [dict(d.get("options") or {}) for d in descriptions]

    variants, terse = [], []
    for method, opts in zip(methods, options, strict=True):
        same = [o for m, o in zip(methods, options, strict=True) if m == method]
        keys = list(dict.fromkeys(k for o in same for k in o))
        differ = [k for k in keys if k in opts and len({repr(o.get(k)) for o in same}) > 1]
        variants.append(method + (f" ({_options_text(opts, differ)})" if differ else ""))
        terse.append(method + (f" ({', '.join(str(opts[k]) for k in differ)})" if differ
                               else ""))

    others = [f for f in FACETS if f not in ("method", "options")]
    others += sorted({k for d in descriptions for k in d} - set(FACETS))
    differ = [f for f in others if len({_text(d.get(f)) for d in descriptions}) > 1]
    settings = [" · ".join(_text(d.get(f)) or "–" for f in differ) for d in descriptions]

    seen: dict[tuple[str, str], int] = {}
    labels = []
    for d, method, opts, variant, tight, setting in zip(
            descriptions, methods, options, variants, terse, settings, strict=True):
        count = seen[(variant, setting)] = seen.get((variant, setting), 0) + 1
        if count > 1:
            variant, tight = f"{variant} #{count}", f"{tight} #{count}"
        full = " · ".join(t for t in [
            method + (f" ({_options_text(opts, list(opts))})" if opts else ""),
            *(_text(d.get(f)) for f in others)] if t)
        labels.append(Label(method, variant, setting,
                            variant + (f" · {setting}" if setting else ""), full, tight))
    return labels


def settings_of(labels: Sequence[Label]) -> list[str]:
    """The distinct settings of ``labels``, in order of first appearance."""
    return list(dict.fromkeys(label.setting for label in labels))


def variants_of(labels: Sequence[Label]) -> list[str]:
    """The distinct variants of ``labels``: by method (the registry's order), then as they
    come."""
    order = {m: i for i, m in enumerate(REGISTRY)}
    first = {v: i for i, v in enumerate(dict.fromkeys(label.variant for label in labels))}
    method = {label.variant: label.method for label in labels}
    return sorted(first, key=lambda v: (order.get(method[v], len(order)), first[v]))


def setting_style(index: int) -> dict[str, str]:
    """How the ``index``-th setting is drawn: ``pattern`` (bars), ``dash`` (lines), ``marker``."""
    return {"pattern": SETTING_PATTERNS[index % len(SETTING_PATTERNS)],
            "dash": SETTING_DASHES[index % len(SETTING_DASHES)],
            "marker": SETTING_MARKERS[index % len(SETTING_MARKERS)]}


def error_by_variant(labels: Sequence[Label], errors: Sequence[float]
                     ) -> tuple[list[str], list[str], list[list[float | None]]]:
    """The what-if table: one row per variant, one column per setting, each cell that result's
    relative error (``None`` where that variant was not run in that setting)."""
    if len(labels) != len(errors):
        raise ValueError(f"labels has {len(labels)} entries but errors has {len(errors)}")
    rows, cols = variants_of(labels), settings_of(labels)
    cells: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    for label, error in zip(labels, errors, strict=True):
        cells[rows.index(label.variant)][cols.index(label.setting)] = float(error)
    return rows, cols, cells


# ---- maps -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiles:
    """A map as it is drawn: ``z`` ``(R, C)`` float32, tile ``(i, j)`` the mean over W's rows
    ``row_edges[i]:row_edges[i+1]`` and columns ``col_edges[j]:col_edges[j+1]`` (one weight per
    tile when not pooled)."""

    z: np.ndarray
    row_edges: np.ndarray     # (R + 1,) int64, in W's row numbers
    col_edges: np.ndarray     # (C + 1,) int64, in W's column numbers

    @property
    def span(self) -> tuple[int, int, int, int]:
        """The ``(r0, r1, c0, c1)`` of W these tiles cover."""
        return (int(self.row_edges[0]), int(self.row_edges[-1]), int(self.col_edges[0]),
                int(self.col_edges[-1]))

    @property
    def tile(self) -> tuple[float, float]:
        """Mean tile size in weights ``(rows, columns)``; ``(1, 1)`` when not pooled."""
        r0, r1, c0, c1 = self.span
        return (r1 - r0) / self.z.shape[0], (c1 - c0) / self.z.shape[1]

    def pool(self, max_cells: int) -> Tiles:
        """The same map in at most ``max_cells`` tiles, each the exact mean of the weights it
        covers (tiles are merged weighted by how many weights each holds)."""
        R, C = self.z.shape
        rows, cols = pool_shape((R, C), max_cells)
        if (rows, cols) == (R, C):
            return self
        ri, ci = tile_edges(R, rows), tile_edges(C, cols)
        area = np.outer(np.diff(self.row_edges), np.diff(self.col_edges)).astype(np.float64)
        total = self.z.astype(np.float64) * area
        sums = np.add.reduceat(np.add.reduceat(total, ri[:-1], axis=0), ci[:-1], axis=1)
        areas = np.add.reduceat(np.add.reduceat(area, ri[:-1], axis=0), ci[:-1], axis=1)
        return Tiles((sums / areas).astype(np.float32), self.row_edges[ri], self.col_edges[ci])


def tiles(a: np.ndarray | torch.Tensor, max_cells: int = PREVIEW_CELLS, r0: int = 0,
          c0: int = 0) -> Tiles:
    """A 2-D map ``a`` (W's rows from ``r0``, columns from ``c0``) mean-pooled into at most
    ``max_cells`` tiles."""
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if a.ndim != 2:
        raise ValueError(f"a has shape {a.shape}; a map is 2-D")
    rows, cols = pool_shape(a.shape, max_cells)
    re, ce = tile_edges(a.shape[0], rows), tile_edges(a.shape[1], cols)
    if (rows, cols) == a.shape:
        z = a.astype(np.float32)
    else:
        z = np.add.reduceat(np.add.reduceat(a.astype(np.float64), re[:-1], axis=0), ce[:-1],
                            axis=1) / np.outer(np.diff(re), np.diff(ce))
    return Tiles(z.astype(np.float32), re + r0, ce + c0)


@dataclass(frozen=True)
class ResultMaps:
    """A result's whole-layer maps as previews (``Tiles``, at most ``PREVIEW_CELLS`` each) and
    its per-row error.

    Attributes:
        error: ``ΔW ⊙ (ΔW H)``, mean per tile; row ``r`` of the full map sums to ``row_error[r]``.
        mask: the kept fraction per tile (1 kept, 0 pruned).
        delta: ``|ΔW|``, mean per tile.
        row_error: ``(M,)`` float64 ``ΔW_r H ΔW_rᵀ``, every row.
        row_rel_error: ``(R,)`` ``sqrt(ΔW_r H ΔW_rᵀ / W0_r H W0_rᵀ)`` over the pruned rows.
    """

    error: Tiles
    mask: Tiles
    delta: Tiles
    row_error: np.ndarray
    row_rel_error: np.ndarray

    def get(self, kind: str) -> Tiles:
        _check_kind(kind)
        return getattr(self, kind)

    @property
    def nbytes(self) -> int:
        return sum(t.z.nbytes for t in (self.error, self.mask, self.delta)) + \
            self.row_error.nbytes + self.row_rel_error.nbytes


def _maps_of_rows(W0: torch.Tensor, H: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                  r0: int, r1: int, c0: int, c1: int) -> dict[str, np.ndarray]:
    """Every weight's maps over rows ``r0:r1`` and columns ``c0:c1``, float32 (maps to look
    at; ``metrics.element_contribution`` is the float64 reference the tests hold them to):
    the error contribution ``ΔW ⊙ (ΔW H)`` of those columns costs ``(r1 - r0) × K × (c1 - c0)``,
    not ``× K``."""
    dW = (weight[r0:r1] - W0[r0:r1]).to(torch.float32)
    cols = dW[:, c0:c1]
    return {"error": (cols * (dW @ H[:, c0:c1].to(torch.float32))).numpy(),
            "mask": mask[r0:r1, c0:c1].to(torch.float32).numpy(),
            "delta": cols.abs().numpy()}


def result_maps(W0: torch.Tensor, H: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                rows: torch.Tensor | None = None, max_cells: int = PREVIEW_CELLS,
                chunk_elements: int = 1 << 22, row_ref: np.ndarray | None = None
                ) -> ResultMaps:
    """The maps of one result: ``W0`` ``(M, K)`` the original weight, ``H`` ``(K, K)`` the
    undamped Hessian, ``weight``/``mask`` the result's; ``rows`` the pruned rows when a row
    sample was run (the per-row relative error covers them only). ``row_ref``: the layer's
    ``(M,)`` ``W0_r H W0_rᵀ`` (``layer_row_ref``) when already known — the same for every
    result of a layer.

    The full ``(M, K)`` maps are never held at once: rows are taken a band of about
    ``chunk_elements`` weights at a time (whole preview tiles each), and each band is summed
    into its tiles.
    """
    W0, H = W0.detach().cpu(), H.detach().cpu()
    weight, mask = weight.detach().cpu(), mask.detach().cpu()
    M, K = W0.shape
    R, C = pool_shape((M, K), max_cells)
    re, ce = tile_edges(M, R), tile_edges(K, C)
    sums = {kind: np.zeros((R, C)) for kind in LAYER_KINDS}
    row_error = np.empty(M)
    band = max(1, chunk_elements // max(1, K))
    i = 0
    while i < R:
        j = i + 1
        while j < R and re[j + 1] - re[i] <= band:
            j += 1
        part = _maps_of_rows(W0, H, weight, mask, int(re[i]), int(re[j]), 0, K)
        row_error[re[i]:re[j]] = part["error"].sum(1, dtype=np.float64)
        for kind, full in part.items():
            sums[kind][i:j] = np.add.reduceat(np.add.reduceat(full, re[i:j] - re[i], axis=0,
                                                              dtype=np.float64), ce[:-1], axis=1)
        i = j
    area = np.outer(np.diff(re), np.diff(ce))
    sel = slice(None) if rows is None else rows.cpu().numpy()
    ref = layer_row_ref(W0, H) if row_ref is None else np.asarray(row_ref)
    # metrics.row_rel_error, from the row errors already summed above
    rel = np.sqrt(np.clip(row_error[sel], 0, None) / np.clip(ref[sel], 1e-30, None))
    return ResultMaps(
        *(Tiles((sums[kind] / area).astype(np.float32), re, ce) for kind in LAYER_KINDS),
        row_error=row_error, row_rel_error=rel.astype(np.float32))


def layer_row_ref(W0: torch.Tensor, H: torch.Tensor) -> np.ndarray:
    """``(M,)`` float64 ``W0_r H W0_rᵀ``: each row's output energy, the denominator of its
    relative error."""
    W0 = W0.detach().cpu()
    return row_error(torch.zeros_like(W0), W0, H.detach().cpu()).numpy()


def window_maps(W0: torch.Tensor, H: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                window: Window) -> tuple[dict[str, Tiles], np.ndarray]:
    """Every weight of ``window`` ``(r0, r1, c0, c1)`` (clamped to W): the maps by kind, and
    ``(r1 - r0,)`` float64, each window row's error contribution summed over the window's
    columns."""
    r0, r1, c0, c1 = clamp_window(tuple(W0.shape), window)
    part = _maps_of_rows(W0.detach().cpu(), H.detach().cpu(), weight.detach().cpu(),
                         mask.detach().cpu(), r0, r1, c0, c1)
    maps = {kind: Tiles(full, np.arange(r0, r1 + 1), np.arange(c0, c1 + 1))
            for kind, full in part.items()}
    return maps, part["error"].sum(1, dtype=np.float64)


def stored_maps(weight: torch.Tensor, mask: torch.Tensor, window: Window | None = None,
                max_cells: int = PREVIEW_CELLS) -> dict[str, Tiles]:
    """The maps a result shows from its own pruned weight and mask, without the layer's W and
    H (a stored result whose layer is not here): the kept fraction (``"mask"``) and ``|W|``
    after pruning (``"weight"``), mean per tile; of ``window`` (every weight) when given."""
    weight, mask = weight.detach().cpu(), mask.detach().cpu()
    r0, r1, c0, c1 = ((0, *weight.shape[:1], 0, weight.shape[1]) if window is None
                      else clamp_window(tuple(weight.shape), window))
    cells = max_cells if window is None else (r1 - r0) * (c1 - c0)
    return {"mask": tiles(mask[r0:r1, c0:c1].to(torch.float32), cells, r0, c0),
            "weight": tiles(weight[r0:r1, c0:c1].abs().to(torch.float32), cells, r0, c0)}


def clamp_window(shape: tuple[int, int], window: Window) -> Window:
    """``window`` cut to a map of ``shape``, at least one weight."""
    r0, r1, c0, c1 = window
    M, K = shape
    r0, c0 = max(0, min(r0, M - 1)), max(0, min(c0, K - 1))
    return r0, max(r0 + 1, min(r1, M)), c0, max(c0 + 1, min(c1, K))


# ---- images -----------------------------------------------------------------------------------


LUT_SIZE = 1025  # odd: the middle of a diverging scale (0) is a sample of its own


def _lut(colorscale: list) -> np.ndarray:
    """``(LUT_SIZE, 3)`` uint8: the colour scale sampled at evenly spaced points (linear in RGB
    between stops, as Plotly draws it)."""
    stops = np.array([s for s, _ in colorscale], dtype=np.float64)
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for _, c in colorscale],
                   dtype=np.float64)
    t = np.linspace(0.0, 1.0, LUT_SIZE)
    return np.stack([np.interp(t, stops, rgb[:, ch]) for ch in range(3)], 1).round().astype(
        np.uint8)


def colour_image(z: np.ndarray, colorscale: list, zmin: float, zmax: float) -> np.ndarray:
    """``(R, C, 3)`` uint8: each value of ``z`` coloured by ``colorscale`` over ``[zmin, zmax]``
    (values beyond are clipped; NaN is white)."""
    z = np.asarray(z, dtype=np.float64)
    span = zmax - zmin if zmax > zmin else 1.0
    t = np.clip((np.nan_to_num(z, nan=zmin) - zmin) / span, 0.0, 1.0)
    img = _lut(colorscale)[np.rint(t * (LUT_SIZE - 1)).astype(np.intp)]
    img[np.isnan(z)] = 255
    return img


def png_data_uri(img: np.ndarray) -> str:
    """An ``(R, C, 3)`` uint8 image as a ``data:image/png;base64,…`` URI."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img), mode="RGB").save(buf, format="PNG",
                                                                compress_level=3)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _image_trace(t: Tiles, colorscale: list, zmin: float, zmax: float, hover: str,
                 axis: int) -> dict:
    r0, r1, c0, c1 = t.span
    dy, dx = (r1 - r0) / t.z.shape[0], (c1 - c0) / t.z.shape[1]
    suffix = "" if axis == 1 else str(axis)
    return dict(type="image", source=png_data_uri(colour_image(t.z, colorscale, zmin, zmax)),
                x0=c0 - 0.5 + dx / 2, dx=dx, y0=r0 - 0.5 + dy / 2, dy=dy,
                xaxis=f"x{suffix}", yaxis=f"y{suffix}", hovertemplate=hover)


def _colour_range(values: Sequence[np.ndarray], signed: bool, quantile: float = 0.995
                  ) -> tuple[float, float]:
    """One range for every panel: up to the ``quantile`` of |values| (a few hot cells must not
    wash out the rest), symmetric about 0 for signed maps."""
    flat = np.concatenate([np.abs(v).ravel() for v in values]) if values else np.zeros(1)
    flat = flat[np.isfinite(flat)]
    top = float(np.quantile(flat, quantile)) if flat.size else 0.0
    if not math.isfinite(top) or top <= 0:
        top = float(flat.max()) if flat.size and float(flat.max()) > 0 else 1.0
    return (-top, top) if signed else (0.0, top)


def _colour_bar(kind: MapKind, zmin: float, zmax: float, title: str, y: float = 0.5,
                length: float = 0.9) -> tuple[dict, dict]:
    """A trace that draws nothing but carries the colour bar, and the ``coloraxis`` it uses."""
    axis = dict(colorscale=kind.colorscale, cmin=zmin, cmax=zmax,
                colorbar=dict(title=dict(text=title, side="right"), thickness=12, len=length,
                              y=y, yanchor="middle", outlinewidth=0))
    trace = dict(type="scatter", x=[None], y=[None], mode="markers", hoverinfo="skip",
                 showlegend=False,
                 marker=dict(color=[zmin, zmax], coloraxis="coloraxis", size=0.1))
    return trace, axis


def _title(label: Label, width_px: float, font_px: float = 13.0) -> str:
    """A panel's title: the variant, or its terse form where the variant does not fit, cut to
    fit at worst."""
    if _fit(label.variant, width_px, font_px) == label.variant:
        return label.variant
    return _fit(label.terse or label.variant, width_px, font_px)


def _fit(text: str, width_px: float, font_px: float = 13.0) -> str:
    """``text`` cut (with an ellipsis) to fit ``width_px`` at about ``0.58 × font_px`` per
    character."""
    room = max(3, int(width_px / (0.58 * font_px)))
    return text if len(text) <= room else text[:room - 1] + "…"


# ---- heatmaps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Panel:
    """One result's map in ``side_by_side``."""

    label: Label
    tiles: Tiles


def grid_columns(n: int, aspect: float, width: int, min_width: int = 90,
                 min_height: int = 110) -> int:
    """How many panels of ``aspect`` (height / width of what they show) go side by side in
    ``width`` pixels: as many as keep each at least ``min_width`` wide and ``min_height``
    tall, spread evenly over the rows that takes."""
    fit = max(1, min(int(width // min_width), int(width * aspect // min_height)))
    rows = math.ceil(n / fit)
    return max(1, math.ceil(n / rows))


def side_by_side(panels: Sequence[Panel], kind: str, width_hint: int = 1100,
                 max_pixels: int = MAX_PIXELS, title_px: int = 13) -> go.Figure:
    """One panel per result, as images: rows of panels by setting (a header names it when
    results differ beyond their method), columns by variant (the same method in the same
    column), so that e.g. 2:4 and block16 of each method sit one above the other.

    All panels share one colour scale (one colour bar) and their axes are linked: zooming one
    zooms all. Panel titles are the variant, cut to the panel's width (the full description is
    on hover); together the images hold at most ``max_pixels`` pixels. Every panel must show
    the same part of one W.
    """
    spec = _check_kind(kind)
    if not panels:
        raise ValueError("panels is empty; give at least one result's map")
    spans = {p.tiles.span for p in panels}
    if len(spans) > 1:
        raise ValueError(f"panels show different parts of W ({sorted(spans)}); compare results "
                         "of one layer, one window")
    r0, r1, c0, c1 = spans.pop()
    labels = [p.label for p in panels]
    settings, variants = settings_of(labels), variants_of(labels)
    aspect = (r1 - r0) / (c1 - c0)
    usable = width_hint - 150                  # the y ticks and the colour bar
    n_cols = grid_columns(len(variants), aspect, usable)
    lines = math.ceil(len(variants) / n_cols)  # panel rows per setting
    panel_w = usable / n_cols
    panel_h = int(min(440, max(110, panel_w * aspect)))
    share = max(1024, min(max_pixels // len(panels), int(2 * panel_w) * int(2 * panel_h)))
    drawn = [p.tiles.pool(share) for p in panels]
    zmin, zmax = (0.0, 1.0) if kind == "mask" else _colour_range([t.z for t in drawn],
                                                                   spec.signed)

    header = 24 if any(settings) else 0        # px: a setting's name above its rows
    title, gap = title_px + 9, 34              # px: a panel's title; below a panel row (its
                                               # x tick labels, then air)
    top, bottom = 8, 30
    height = top + bottom + len(settings) * (header + lines * (title + panel_h + gap))
    plot_h = height - top - bottom

    def frac(px_from_top: float) -> float:
        return 1.0 - (px_from_top - top) / plot_h

    data: list[dict] = []
    layout: dict = {}
    annotations: list[dict] = []
    hgap = 0.012
    col_w = (1.0 - hgap * (n_cols - 1)) / n_cols
    y = float(top)
    axis = 0
    tick = dict(showgrid=False, zeroline=False, ticks="outside",
                tickfont=dict(size=10, color=MUTED))
    for setting in settings:
        if header:
            annotations.append(dict(
                text=f"<b>{plot_text(_fit(setting, usable * 0.9, 14))}</b>",
                hovertext=plot_text(setting), x=0, xref="paper", xanchor="left",
                y=frac(y + header - 4), yref="paper", yanchor="bottom", showarrow=False,
                font=dict(size=14, color=INK)))
            y += header
        for line in range(lines):
            row_top = y + line * (title + panel_h + gap)
            for c in range(n_cols):
                v = line * n_cols + c
                if v >= len(variants):
                    break
                found = [i for i, label in enumerate(labels)
                         if label.setting == setting and label.variant == variants[v]]
                if not found:
                    continue
                i = found[0]
                axis += 1
                suffix = "" if axis == 1 else str(axis)
                x0 = c * (col_w + hgap)
                layout[f"xaxis{suffix}"] = dict(
                    domain=[x0, x0 + col_w], anchor=f"y{suffix}", range=[c0 - 0.5, c1 - 0.5],
                    **({} if axis == 1 else {"matches": "x"}), **tick)
                layout[f"yaxis{suffix}"] = dict(
                    domain=[frac(row_top + title + panel_h), frac(row_top + title)],
                    anchor=f"x{suffix}", range=[r1 - 0.5, r0 - 0.5], scaleanchor=False,
                    showticklabels=c == 0, **({} if axis == 1 else {"matches": "y"}), **tick)
                full = labels[i].full
                data.append(_image_trace(
                    drawn[i], spec.colorscale, zmin, zmax, axis=axis,
                    hover=f"<b>{plot_text(full)}</b><br>row %{{y:.0f}}, column %{{x:.0f}}"
                          "<extra></extra>"))
                annotations.append(dict(
                    text=plot_text(_title(labels[i], panel_w, title_px)),
                    hovertext=plot_text(full), x=x0 + col_w / 2, xref="paper",
                    xanchor="center", y=frac(row_top + title - 3), yref="paper",
                    yanchor="bottom", showarrow=False,
                    font=dict(size=title_px, color=method_colour(labels[i].method))))
        y += lines * (title + panel_h + gap)
    tr, coloraxis = _colour_bar(spec, zmin, zmax, spec.title, length=min(0.9, 400 / plot_h))
    tr.update(xaxis="x", yaxis="y")
    data.append(tr)
    if spec.signed:
        coloraxis["cmid"] = 0.0
    tall, wide = max(t.tile[0] for t in drawn), max(t.tile[1] for t in drawn)
    tiles_text = (f" (tiles of ≈{tall:.0f} × {wide:.0f} weights, mean per tile)"
                  if tall > 1.01 or wide > 1.01 else "")
    return go.Figure(data=data, layout=dict(**base_layout(
        height=height, coloraxis=coloraxis, annotations=annotations,
        margin=dict(l=48, r=16, t=top, b=bottom), meta=dict(tiles=tiles_text)), **layout))


def rows_losing_more(row_error_a: np.ndarray, row_error_b: np.ndarray) -> int:
    """How many rows have more error under ``a`` than under ``b`` (two ``(M,)`` per-row
    errors)."""
    a, b = np.asarray(row_error_a), np.asarray(row_error_b)
    if a.shape != b.shape:
        raise ValueError(f"row_error_a has shape {a.shape} but row_error_b has {b.shape}; "
                         "compare results of one layer")
    return int((a > b).sum())


def rows_losing_more_text(row_error_a: np.ndarray, row_error_b: np.ndarray, label_a: str,
                          label_b: str) -> str:
    """The sentence under the difference view: in how many rows A has more error than B, out of
    the rows either pruned (a row sample leaves the other rows as they are, error 0 in both)."""
    worse = rows_losing_more(row_error_a, row_error_b)
    M = np.asarray(row_error_a).size
    pruned = int(((np.asarray(row_error_a) > 0) | (np.asarray(row_error_b) > 0)).sum())
    of = f"{M:,} rows" if pruned == M else f"the {pruned:,} rows either pruned ({M:,} in all)"
    return f"A = {label_a}: larger error than B = {label_b} in {worse:,} of {of}."


def difference_figure(a: Tiles, b: Tiles, row_diff: np.ndarray, label_a: str, label_b: str,
                      max_pixels: int = MAX_CELLS, height: int = 420) -> go.Figure:
    """Where ``label_a`` loses error ``label_b`` does not: the map of ``a - b`` (two error maps
    over the same part of one W, tiled alike), red where ``a`` has more error, blue where
    ``b`` has; beside it ``row_diff``, each row's error under ``a`` minus under ``b`` (one
    entry per row of the part shown)."""
    if a.span != b.span or a.z.shape != b.z.shape:
        raise ValueError(f"a covers {a.span} in {a.z.shape} tiles but b covers {b.span} in "
                         f"{b.z.shape}; compare results of one layer, one window")
    r0, r1, c0, c1 = a.span
    row_diff = np.asarray(row_diff, dtype=np.float64).ravel()
    if row_diff.size != r1 - r0:
        raise ValueError(f"row_diff has {row_diff.size} entries for {r1 - r0} rows")
    diff = Tiles(a.z.astype(np.float64) - b.z.astype(np.float64), a.row_edges, a.col_edges)
    diff = diff.pool(max_pixels)
    zmin, zmax = _colour_range([diff.z], signed=True)
    title = f"{label_a} − {label_b}"
    image = _image_trace(diff, DIVERGING, zmin, zmax, axis=1,
                         hover=f"row %{{y:.0f}}, column %{{x:.0f}}<extra>{plot_text(title)}"
                               "</extra>")
    step = max(1, row_diff.size // 4096)
    rows_idx = np.arange(r0, r1)[::step]
    shown = row_diff[::step]
    bars = dict(type="bar", x=shown.astype(np.float32), y=rows_idx, orientation="h",
                xaxis="x2", yaxis="y",
                marker=dict(color=np.where(shown >= 0, DIVERGING[-1][1], DIVERGING[0][1]),
                            line=dict(width=0)),
                hovertemplate=f"row %{{y}}<br>row error, {plot_text(title)}: %{{x:.3g}}"
                              "<extra></extra>")
    tr, coloraxis = _colour_bar(MAP_KINDS["error"], zmin, zmax, "A − B")
    tr.update(xaxis="x", yaxis="y")
    coloraxis["cmid"] = 0.0
    return go.Figure(data=[image, bars, tr], layout=base_layout(
        height=height, bargap=0, coloraxis=coloraxis,
        xaxis=dict(domain=[0, 0.8], range=[c0 - 0.5, c1 - 0.5], showgrid=False,
                   zeroline=False),
        yaxis=dict(range=[r1 - 0.5, r0 - 0.5], scaleanchor=False, showgrid=False,
                   zeroline=False),
        xaxis2=dict(domain=[0.82, 1.0], anchor="y", zeroline=True, zerolinecolor=MUTED,
                    showgrid=False, tickfont=dict(size=10),
                    title=dict(text="per row", font=dict(size=12, color=MUTED))),
        margin=dict(l=48, r=16, t=24, b=40)))


# ---- charts -----------------------------------------------------------------------------------


def error_bar_figure(labels: Sequence[Label], errors: Sequence[float]) -> go.Figure:
    """Relative error by method, least error on top: one bar per result, coloured by method;
    when results differ beyond their method, each setting is a patterned series of bars
    (with a legend above the chart). Values are printed beside the bars as percentages."""
    if not labels:
        raise ValueError("labels is empty; give at least one result")
    if len(labels) != len(errors):
        raise ValueError(f"labels has {len(labels)} entries but errors has {len(errors)}")
    settings = settings_of(labels)
    best = {}
    for label, e in zip(labels, errors, strict=True):
        best[label.variant] = min(best.get(label.variant, math.inf), float(e))
    order = sorted(best, key=best.get)
    top = max(float(e) for e in errors)
    data = []
    for s, setting in enumerate(settings):
        mine = {label.variant: (label, float(e))
                for label, e in zip(labels, errors, strict=True) if label.setting == setting}
        ys = [v for v in order if v in mine]
        style = setting_style(s)
        data.append(go.Bar(
            x=[100 * mine[v][1] for v in ys], y=[plot_text(v) for v in ys], orientation="h",
            name=plot_text(setting or "result"),
            marker=dict(color=[method_colour(mine[v][0].method) for v in ys],
                        line=dict(width=0.6 if len(settings) > 1 else 0, color=INK),
                        pattern=dict(shape=style["pattern"], fgcolor=INK, size=6,
                                     solidity=0.3)),
            text=[format_rel_error(mine[v][1]) for v in ys], textposition="outside",
            cliponaxis=False, textfont=dict(size=12, color=INK),
            customdata=[plot_text(mine[v][0].full) for v in ys],
            hovertemplate="%{customdata}<br>relative error %{text}<extra></extra>"))
    n_bars = len(labels)
    legend = len(settings) > 1
    fig = go.Figure(data=data)
    fig.update_yaxes(autorange="reversed", showgrid=False, automargin=True,
                     tickfont=dict(size=13))
    fig.update_xaxes(title="relative output error ‖XΔWᵀ‖ / ‖XW₀ᵀ‖", showgrid=True,
                     gridcolor="#EEEEF2", ticksuffix=" %", automargin=True,
                     range=[0, 100 * top * 1.3 if top > 0 else 100])
    fig.update_layout(**base_layout(
        height=80 + 22 * n_bars + 14 * len(order) + (40 if legend else 0),
        barmode="group", bargap=0.25, bargroupgap=0.05, showlegend=legend,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, xanchor="left",
                    title=dict(text="setting "), traceorder="normal"),
        margin=dict(l=16, r=24, t=16, b=44)))
    return fig


def row_error_figure(labels: Sequence[Label], per_row: Sequence[np.ndarray | torch.Tensor],
                     height: int = 380, max_points: int = 2000) -> go.Figure:
    """The distribution of per-row relative error, one ECDF line per result: a line further
    left is better; its spread shows whether a method's error sits in a few rows. Colour is
    the method, the dash the setting; the legend sits beside the plot, never on it."""
    if not labels:
        raise ValueError("labels is empty; give at least one result")
    if len(labels) != len(per_row):
        raise ValueError(f"labels has {len(labels)} entries but per_row has {len(per_row)}")
    settings = settings_of(labels)
    fig = go.Figure()
    for label, values in zip(labels, per_row, strict=True):
        v = np.sort(_as_array(values).astype(np.float64).ravel())
        if v.size == 0:
            continue
        idx = np.unique(np.linspace(0, v.size - 1, min(v.size, max_points)).astype(np.int64))
        s = settings.index(label.setting)
        grouped = len(settings) > 1
        fig.add_trace(go.Scatter(
            x=100 * v[idx], y=(idx + 1) / v.size, mode="lines", name=plot_text(label.variant),
            legendgroup=f"s{s}",
            legendgrouptitle=dict(text=plot_text(_fit(label.setting, 180))) if grouped else None,
            line=dict(color=method_colour(label.method), width=2.2, shape="hv",
                      dash=setting_style(s)["dash"]),
            hovertemplate=f"{plot_text(label.full)}<br>%{{y:.0%}} of rows ≤ %{{x:.2f}} %"
                          "<extra></extra>"))
    fig.update_xaxes(title="per-row relative error", showgrid=True, gridcolor="#EEEEF2",
                     rangemode="tozero", ticksuffix=" %")
    fig.update_yaxes(title="fraction of rows", tickformat=".0%", range=[0, 1.02], showgrid=True,
                     gridcolor="#EEEEF2")
    fig.update_layout(**base_layout(
        height=max(height, 90 + 21 * len(labels) + 34 * len(settings)), showlegend=True,
        legend=dict(x=1.02, xanchor="left", y=1, yanchor="top", groupclick="toggleitem",
                    tracegroupgap=10, font=dict(size=12)),
        margin=dict(l=56, r=16, t=16, b=44)))
    return fig


def _as_array(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def image_pixels(fig: go.Figure) -> int:
    """Image pixels a figure sends (every image trace's PNG size)."""
    from PIL import Image

    total = 0
    for t in fig.data:
        if t.type == "image" and t.source:
            raw = base64.b64decode(t.source.split(",", 1)[1])
            w, h = Image.open(io.BytesIO(raw)).size
            total += w * h
    return total
