"""A sweep's runs as a table and as figures: error vs sparsity per method (with each method's
Pareto front), a layer × geometry heatmap per method, error vs seconds; CSV and Parquet exports.

Tables keep the fraction ``rel_error`` (exports too); figures show it as a percentage.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from obsviz.figures.common import base_layout, plot_text
from obsviz.figures.results import method_colour
from obsviz.metrics import format_rel_error

#: The table's columns, in order (exports write these).
TABLE_COLUMNS = ("id", "time", "sweep", "layer", "geometry", "nnz", "method", "options", "damp",
                 "rel_error", "sparsity", "seconds", "device", "status", "error", "shape",
                 "source", "layer_hash", "key", "obsviz_version", "torch_version")


def runs_table(runs: Iterable) -> pd.DataFrame:
    """One row per stored run (:class:`obsviz.store.StoredRun`), ``TABLE_COLUMNS``;
    ``options`` as JSON text and ``shape`` as ``"M × K"``."""
    rows = []
    for r in runs:
        d = r.as_dict()
        d["options"] = json.dumps(d["options"], sort_keys=True)
        d["shape"] = " × ".join(str(v) for v in d["shape"])
        rows.append({k: d.get(k) for k in TABLE_COLUMNS})
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in ("rel_error", "sparsity", "seconds", "damp"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    return df


def pareto_front(sparsity: Sequence[float], error: Sequence[float]) -> np.ndarray:
    """``(n,)`` bool: the points no other point dominates. ``j`` dominates ``i`` when it is at
    least as sparse with no more error, and strictly better in one of the two."""
    s = np.asarray(sparsity, dtype=float)
    e = np.asarray(error, dtype=float)
    keep = np.zeros(len(s), dtype=bool)
    best = np.inf  # the lowest error among strictly sparser points
    for level in np.unique(s)[::-1]:
        at = s == level
        lowest = e[at].min()
        if lowest < best:
            keep |= at & (e == lowest)
        best = min(best, lowest)
    return keep


def _done(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "done") & df["rel_error"].notna()]


def _hover(d: pd.DataFrame) -> list[str]:
    return [f"{plot_text(r.layer)} · {plot_text(r.geometry)} · nnz {r.nnz} · damp {r.damp:g}<br>"
            f"{r.method}: {format_rel_error(r.rel_error)}, sparsity {r.sparsity:.1%}, "
            f"{r.seconds:.3g} s" for r in d.itertuples()]


def pareto_figure(df: pd.DataFrame, height: int = 420) -> go.Figure:
    """Relative error (%) vs sparsity, one colour per method; each method's Pareto front as a
    line (the runs no run of that method beats)."""
    fig = go.Figure()
    d = _done(df)
    for method, g in d.groupby("method", sort=False):
        colour = method_colour(str(method))
        fig.add_trace(go.Scatter(
            x=g["sparsity"], y=100 * g["rel_error"], mode="markers", name=str(method),
            marker=dict(color=colour, size=8, opacity=0.55), hovertext=_hover(g),
            hoverinfo="text", legendgroup=str(method)))
        front = g[pareto_front(g["sparsity"], g["rel_error"])].sort_values("sparsity")
        fig.add_trace(go.Scatter(
            x=front["sparsity"], y=100 * front["rel_error"], mode="lines+markers",
            name=f"{method} front", line=dict(color=colour, width=2),
            marker=dict(color=colour, size=9), hovertext=_hover(front), hoverinfo="text",
            legendgroup=str(method), showlegend=False))
    fig.update_layout(**base_layout(height=height, showlegend=True,
                                    legend=dict(orientation="h", y=1.1)))
    fig.update_xaxes(title="sparsity (fraction pruned)", tickformat=".0%", range=[-0.02, 1.02])
    fig.update_yaxes(title="relative output error (%)", rangemode="tozero")
    return fig


def heatmap_table(df: pd.DataFrame, method: str) -> pd.DataFrame:
    """Layers × geometries of one method's mean ``rel_error`` over its finished runs (NaN where
    none finished); rows and columns in first-seen order."""
    d = _done(df)
    d = d[d["method"] == method]
    layers = list(dict.fromkeys(df["layer"]))
    geoms = list(dict.fromkeys(df["geometry"]))
    table = d.pivot_table(index="layer", columns="geometry", values="rel_error", aggfunc="mean")
    return table.reindex(index=layers, columns=geoms)


def heatmap_figure(df: pd.DataFrame, method: str, height: int | None = None) -> go.Figure:
    """One method's mean relative error per layer × geometry; the cell text is the percentage
    (``–`` where no run finished)."""
    t = heatmap_table(df, method)
    z = t.to_numpy(dtype=float)
    text = [[("–" if np.isnan(v) else format_rel_error(v)) for v in row] for row in z]
    fig = go.Figure(go.Heatmap(
        z=100 * z, x=[plot_text(c) for c in t.columns], y=[plot_text(i) for i in t.index],
        text=text, texttemplate="%{text}", colorscale="Reds", zmin=0,
        colorbar=dict(title="error %"), hovertemplate="%{y} · %{x}: %{text}<extra></extra>"))
    fig.update_layout(**base_layout(height=height or max(220, 60 + 36 * len(t.index)),
                                    title=dict(text=str(method), x=0)))
    fig.update_yaxes(autorange="reversed")
    return fig


def time_figure(df: pd.DataFrame, height: int = 380) -> go.Figure:
    """Relative error (%) vs seconds (log scale), one colour per method."""
    fig = go.Figure()
    for method, g in _done(df).groupby("method", sort=False):
        fig.add_trace(go.Scatter(
            x=g["seconds"].clip(lower=1e-4), y=100 * g["rel_error"], mode="markers",
            name=str(method), marker=dict(color=method_colour(str(method)), size=8),
            hovertext=_hover(g), hoverinfo="text"))
    fig.update_layout(**base_layout(height=height, showlegend=True,
                                    legend=dict(orientation="h", y=1.1)))
    fig.update_xaxes(title="seconds per trial", type="log")
    fig.update_yaxes(title="relative output error (%)", rangemode="tozero")
    return fig


def display_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table people read: the relative error as a percentage string next to the rest."""
    out = df.drop(columns=["key", "layer_hash", "obsviz_version", "torch_version", "source"])
    out["time"] = [str(t)[:19].replace("T", " ") for t in df["time"]]  # UTC, to the second
    out.insert(out.columns.get_loc("rel_error"), "relative error",
               [("–" if pd.isna(v) else format_rel_error(v)) for v in df["rel_error"]])
    return out.drop(columns=["rel_error"])


def csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode("utf-8")


def parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False, engine="pyarrow")
    return buf.getvalue()
