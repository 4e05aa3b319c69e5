"""A sweep's runs as a table and as figures: error vs sparsity per method (with each method's
Pareto front), a layer × geometry heatmap per method at one sparsity, error vs seconds at one
sparsity; CSV and Parquet exports.

Tables keep the fraction ``rel_error`` (exports too); figures show it as a percentage. Figures
compare like with like: sparsity is ``target_sparsity`` (the fraction each scope prunes, the
sparsity of the rows pruned), a heatmap cell or a time point is one sparsity and one damping,
and a trial that prunes nothing (0 % sparsity, no error by construction) is in no figure:
``nothing_pruned`` lists those for the page to name.
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
from obsviz.sweep import target_sparsity

#: The table's columns, in order (exports write these).
TABLE_COLUMNS = ("id", "time", "sweep", "layer", "geometry", "nnz", "method", "options", "damp",
                 "rel_error", "sparsity", "target_sparsity", "seconds", "device", "status",
                 "error", "shape", "source", "layer_hash", "key", "obsviz_version",
                 "torch_version")


def runs_table(runs: Iterable) -> pd.DataFrame:
    """One row per stored run (:class:`obsviz.store.StoredRun`), ``TABLE_COLUMNS``;
    ``options`` as JSON text and ``shape`` as ``"M × K"``."""
    rows = []
    for r in runs:
        d = r.as_dict()
        d["options"] = json.dumps(d["options"], sort_keys=True)
        d["shape"] = " × ".join(str(v) for v in d["shape"])
        d["target_sparsity"] = target_sparsity(r.geometry_spec, r.nnz)
        rows.append({k: d.get(k) for k in TABLE_COLUMNS})
    df = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in ("rel_error", "sparsity", "target_sparsity", "seconds", "damp"):
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


def _charted(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs figures draw: those that prune something."""
    d = _done(df)
    return d[d["target_sparsity"] > 0]


def nothing_pruned(df: pd.DataFrame) -> pd.DataFrame:
    """The finished runs that prune nothing (0 % sparsity: nnz keeps every block of a scope):
    no figure draws them; the page names them."""
    d = _done(df)
    return d[d["target_sparsity"] == 0]


def sparsity_levels(df: pd.DataFrame) -> list[float]:
    """The sparsities the figures can show one at a time: every ``target_sparsity`` above 0 of
    a finished run, ascending."""
    return sorted(float(v) for v in _charted(df)["target_sparsity"].unique())


def at_level(df: pd.DataFrame, sparsity: float, damp: float | None = None) -> pd.DataFrame:
    """The rows of ``df`` at one sparsity (and one damping, when given)."""
    keep = df["target_sparsity"] == sparsity
    if damp is not None:
        keep &= df["damp"] == damp
    return df[keep]


def _hover(d: pd.DataFrame) -> list[str]:
    return [f"{plot_text(r.layer)} · {plot_text(r.geometry)} · nnz {r.nnz} · damp {r.damp:g}<br>"
            f"{plot_text(r.method)}: {format_rel_error(r.rel_error)}, sparsity "
            f"{r.target_sparsity:.1%}, {r.seconds:.3g} s" for r in d.itertuples()]


def pareto_figure(df: pd.DataFrame, height: int = 420) -> go.Figure:
    """Relative error (%) vs sparsity (``target_sparsity``), one colour per method; each
    method's Pareto front as a line (the runs no run of that method beats). Runs that prune
    nothing are left out."""
    fig = go.Figure()
    d = _charted(df)
    for method, g in d.groupby("method", sort=False):
        colour = method_colour(str(method))
        fig.add_trace(go.Scatter(
            x=g["target_sparsity"], y=100 * g["rel_error"], mode="markers", name=plot_text(method),
            marker=dict(color=colour, size=8, opacity=0.55), hovertext=_hover(g),
            hoverinfo="text", legendgroup=plot_text(method)))
        front = g[pareto_front(g["target_sparsity"], g["rel_error"])].sort_values(
            "target_sparsity")
        fig.add_trace(go.Scatter(
            x=front["target_sparsity"], y=100 * front["rel_error"], mode="lines+markers",
            name=plot_text(f"{method} front"), line=dict(color=colour, width=2),
            marker=dict(color=colour, size=9), hovertext=_hover(front), hoverinfo="text",
            legendgroup=plot_text(method), showlegend=False))
    fig.update_layout(**base_layout(height=height, showlegend=True,
                                    legend=dict(orientation="h", y=1.1)))
    fig.update_xaxes(title="sparsity (fraction pruned)", tickformat=".0%", range=[-0.02, 1.02])
    fig.update_yaxes(title="relative output error (%)", rangemode="tozero")
    return fig


def heatmap_table(df: pd.DataFrame, method: str, sparsity: float, damp: float | None = None,
                  aggfunc: str = "mean") -> pd.DataFrame:
    """Layers × geometries of one method at one sparsity (and damping, when given): each cell
    the ``aggfunc`` (``"mean"``, or ``"count"``) of ``rel_error`` over its finished runs — one
    run, unless runs differ in what the table does not show (options, rows) — NaN where none
    finished. Rows: every layer of ``df``; columns: the geometries run at that sparsity; both in
    first-seen order."""
    level = at_level(df, sparsity, damp)
    d = _done(level)
    d = d[d["method"] == method]
    layers = list(dict.fromkeys(df["layer"]))
    geoms = list(dict.fromkeys(level["geometry"]))
    table = d.pivot_table(index="layer", columns="geometry", values="rel_error", aggfunc=aggfunc)
    return table.reindex(index=layers, columns=geoms)


def heatmap_figure(df: pd.DataFrame, method: str, sparsity: float, damp: float | None = None,
                   height: int | None = None) -> go.Figure:
    """One method's relative error per layer × geometry at one sparsity (``heatmap_table``);
    the cell text is the percentage (``–`` where no run finished; ``mean of n`` where a cell
    holds several runs)."""
    t = heatmap_table(df, method, sparsity, damp)
    n = heatmap_table(df, method, sparsity, damp, aggfunc="count").to_numpy(dtype=float)
    z = t.to_numpy(dtype=float)
    text = [[("–" if np.isnan(v) else format_rel_error(v)
              + (f" (mean of {int(c)})" if c > 1 else "")) for v, c in zip(row, counts,
                                                                           strict=True)]
            for row, counts in zip(z, n, strict=True)]
    fig = go.Figure(go.Heatmap(
        z=100 * z, x=[plot_text(c) for c in t.columns], y=[plot_text(i) for i in t.index],
        text=text, texttemplate="%{text}", colorscale="Reds", zmin=0,
        colorbar=dict(title="error %"), hovertemplate="%{y} · %{x}: %{text}<extra></extra>"))
    title = plot_text(f"{method} · {sparsity:.1%} sparsity"
                      + ("" if damp is None else f" · damp {damp:g}"))
    fig.update_layout(**base_layout(height=height or max(220, 60 + 36 * len(t.index)),
                                    title=dict(text=title, x=0)))
    fig.update_yaxes(autorange="reversed")
    return fig


def time_figure(df: pd.DataFrame, sparsity: float | None = None, damp: float | None = None,
                height: int = 380) -> go.Figure:
    """Relative error (%) vs seconds (log scale), one colour per method: the runs at one
    sparsity (and damping) when given; runs that prune nothing are left out."""
    fig = go.Figure()
    d = _charted(df if sparsity is None else at_level(df, sparsity, damp))
    for method, g in d.groupby("method", sort=False):
        fig.add_trace(go.Scatter(
            x=g["seconds"].clip(lower=1e-4), y=100 * g["rel_error"], mode="markers",
            name=plot_text(method), marker=dict(color=method_colour(str(method)), size=8),
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
