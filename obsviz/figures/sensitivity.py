"""Figures of a layer-sensitivity scan (:func:`obsviz.sensitivity.scan`): the layers sorted by the
damage each does alone, coloured by what they do in their block, with the block number on each
bar; and the curve of end metric against the fraction of weights pruned, one real run per point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from obsviz.figures.common import MUTED, base_layout, plot_text
from obsviz.figures.model import drift_figure, layer_error_figure, short_layer_name
from obsviz.sensitivity import LAYER_KINDS, ranking

#: One colour per layer kind (``obsviz.sensitivity.LAYER_KINDS``): attention warm to cool, the
#: MLP in greens; anything else grey.
KIND_COLOURS = dict(zip(LAYER_KINDS, ("#E45756", "#F58518", "#EECA3B", "#D67236", "#B279A2",
                                      "#54A24B", "#2E7D6B", "#8A8FA3"), strict=True))
#: Longest tick label; longer layer names are shortened in the middle (hover shows them whole).
MAX_TICK = 34


def tick_label(name: str, block_list: str, limit: int = MAX_TICK) -> str:
    """``3 · attention.self.query``, shortened in the middle past ``limit`` characters."""
    text = short_layer_name(name, block_list)
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return f"{text[:head]}…{text[-(limit - 1 - head):]}"


def damage_figure(scan: Mapping, height: int = 460, selected: str | None = None) -> go.Figure:
    """The scan's layers sorted by damage (largest left), one bar each, coloured by kind, the
    block number above each bar; ``selected`` (a layer name) is outlined. Each bar's
    ``customdata`` is its layer name (what a click selects)."""
    block_list = scan["model"].get("block_list", "")
    order = ranking(scan)
    labels = [plot_text(tick_label(e["name"], block_list)) for e in order]
    # tick labels must be unique for a category axis: a repeat gets zero-width spaces
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        n = seen.get(lab, 0)
        seen[lab] = n + 1
        labels[i] = lab + "\u200b" * n
    fig = go.Figure()
    for kind in LAYER_KINDS:
        idx = [i for i, e in enumerate(order) if e["kind"] == kind]
        if not idx:
            continue
        fig.add_bar(
            x=[labels[i] for i in idx], y=[100 * order[i]["damage"] for i in idx],
            name=kind, marker=dict(color=KIND_COLOURS[kind], line=dict(
                color=["#1B1E2B" if order[i]["name"] == selected else "rgba(0,0,0,0)"
                       for i in idx], width=2.5)),
            text=[str(order[i]["block"]) for i in idx], textposition="outside",
            textfont=dict(size=10, color=MUTED), cliponaxis=False,
            customdata=[[plot_text(order[i]["name"]), 100 * order[i]["rel_error"],
                         order[i]["block"]] for i in idx],
            hovertemplate="%{customdata[0]}<br>block %{customdata[2]} · " + plot_text(kind)
                          + "<br>damage %{y:.3f} %<br>own error %{customdata[1]:.2f} %"
                          "<extra></extra>")
    fig.update_layout(**base_layout(height=height, margin=dict(l=60, r=20, t=30, b=190),
                                    showlegend=True, bargap=0.15, clickmode="event+select",
                                    legend=dict(orientation="h", y=1.02, yanchor="bottom",
                                                title_text="layer kind ")))
    fig.update_xaxes(categoryorder="array", categoryarray=labels, tickangle=-90,
                     tickfont=dict(size=10))
    fig.update_yaxes(title_text=f"damage alone, {plot_text(scan.get('damage', ''))} (%)",
                     rangemode="tozero")
    return fig


def curve_figure(checks: Sequence[Mapping], height: int = 340) -> go.Figure:
    """End-metric damage (%) against the fraction of the scanned layers' weights pruned (%),
    one point per checked plan (labelled with how many layers it spares), left to right."""
    pts = sorted((c for c in checks if c.get("damage") is not None),
                 key=lambda c: c["pruned_fraction"])
    fig = go.Figure(go.Scatter(
        x=[100 * c["pruned_fraction"] for c in pts], y=[100 * c["damage"] for c in pts],
        mode="lines+markers+text", text=[f"{c['k']} spared" for c in pts],
        textposition="top left", textfont=dict(size=10, color=MUTED),
        line=dict(color="#4C78A8", width=2), marker=dict(size=8),
        hovertemplate="%{text}<br>pruned %{x:.1f} %<br>damage %{y:.3f} %<extra></extra>"))
    fig.update_layout(**base_layout(height=height, margin=dict(l=60, r=20, t=20, b=50)))
    fig.update_xaxes(title_text="weights pruned (% of the scanned layers)", rangemode="tozero")
    fig.update_yaxes(title_text="damage of the real run (%)", rangemode="tozero")
    return fig


def plan_figures(report: Mapping) -> tuple[go.Figure, go.Figure]:
    """The Model page's error-per-layer and drift figures of checked plans
    (:func:`obsviz.sensitivity.checks_report`): one line per plan, a dash per plan after the
    first (plans of one method share its colour)."""
    figs = layer_error_figure(report), drift_figure(report)
    dashes = ("solid", "dash", "dot", "dashdot", "longdash")
    for fig in figs:
        for i, trace in enumerate(fig.data):
            trace.line.dash = dashes[i % len(dashes)]
    return figs
