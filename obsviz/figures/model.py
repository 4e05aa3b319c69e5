"""Figures of a whole-model run (the report of :func:`obsviz.model.run_methods`): each layer's
relative error by method, each block's drift, and the layer × method heatmap. Errors are shown as
percentages, as everywhere in obsviz."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from obsviz.figures.common import base_layout, plot_text
from obsviz.figures.results import method_colour


def short_layer_name(name: str, block_list: str) -> str:
    """``encoder.layer.3.attention.self.query`` -> ``3 · attention.self.query``."""
    rest = name[len(block_list) + 1:] if block_list and name.startswith(block_list + ".") else name
    block, _, local = rest.partition(".")
    return f"{block} · {local}" if local else rest


def _layers(report: Mapping) -> list[str]:
    """Every layer that some method pruned, in the order the first such method pruned them."""
    seen: dict[str, None] = {}
    for entry in report["methods"].values():
        for lr in entry["layers"]:
            seen.setdefault(lr["name"], None)
    return list(seen)


def layer_error_figure(report: Mapping, height: int = 380) -> go.Figure:
    """Each layer's own relative error (%), one line per method, layers in pipeline order."""
    block_list = report["model"].get("block_list", "")
    names = _layers(report)
    labels = [plot_text(short_layer_name(n, block_list)) for n in names]
    fig = go.Figure()
    for method, entry in report["methods"].items():
        shown = plot_text(method)
        err = {lr["name"]: 100 * lr["rel_error"] for lr in entry["layers"]}
        fig.add_scatter(x=labels, y=[err.get(n) for n in names], name=shown,
                        mode="lines+markers", line=dict(color=method_colour(method), width=2),
                        marker=dict(size=6),
                        hovertemplate="%{x}<br>" + shown + ": %{y:.2f} %<extra></extra>")
    fig.update_layout(**base_layout(height=height, margin=dict(l=60, r=20, t=20, b=120),
                                    showlegend=True,
                                    legend=dict(orientation="h", y=1.02, yanchor="bottom")))
    fig.update_yaxes(title_text="relative error (%)", rangemode="tozero")
    fig.update_xaxes(tickangle=-60, tickfont=dict(size=10))
    return fig


def drift_figure(report: Mapping, height: int = 320) -> go.Figure:
    """Each block's output drift (relative error vs the dense block on held-out text, %)."""
    fig = go.Figure()
    for method, entry in report["methods"].items():
        shown = plot_text(method)
        drift = entry.get("drift")
        if not drift:
            continue
        fig.add_scatter(x=list(range(len(drift))), y=[100 * d for d in drift], name=shown,
                        mode="lines+markers", line=dict(color=method_colour(method), width=2),
                        hovertemplate="block %{x}<br>" + shown + ": %{y:.2f} %<extra></extra>")
    fig.update_layout(**base_layout(height=height, margin=dict(l=60, r=20, t=20, b=50),
                                    showlegend=True,
                                    legend=dict(orientation="h", y=1.02, yanchor="bottom")))
    fig.update_xaxes(title_text="block", dtick=1)
    fig.update_yaxes(title_text="drift of the block output (%)", rangemode="tozero")
    return fig


def layer_method_heatmap(report: Mapping, height: int | None = None) -> go.Figure:
    """Layers (rows) × methods (columns), coloured by the layer's relative error (%)."""
    block_list = report["model"].get("block_list", "")
    names = _layers(report)
    methods = list(report["methods"])
    z = []
    for n in names:
        row = []
        for m in methods:
            err = {lr["name"]: lr["rel_error"] for lr in report["methods"][m]["layers"]}
            row.append(100 * err[n] if n in err else None)
        z.append(row)
    fig = go.Figure(go.Heatmap(
        z=z, x=[plot_text(m) for m in methods],
        y=[plot_text(short_layer_name(n, block_list)) for n in names],
        colorscale="Viridis", colorbar=dict(title="error %"),
        hovertemplate="%{y}<br>%{x}: %{z:.2f} %<extra></extra>"))
    fig.update_layout(**base_layout(height=height or max(300, 16 * len(names) + 80),
                                    margin=dict(l=200, r=20, t=20, b=60)))
    fig.update_yaxes(autorange="reversed", tickfont=dict(size=10))
    return fig
