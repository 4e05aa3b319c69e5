"""Figures of the OBS lesson (the Learn page): small matrices with every number written in, the
candidate costs of a scope, one row before and after an update, C before and after a Schur
downdate, the running error, and the modes' final errors.

Pure functions: tensors or lists in, Plotly figures out. The lesson works on a few dozen columns at
most, so nothing here pools.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
import torch

from obsviz.figures.common import INK, MUTED, base_layout, fade
from obsviz.figures.results import METHOD_COLOURS
from obsviz.lesson import column_runs
from obsviz.metrics import format_rel_error

#: Diverging scale centred at 0 (blue negative, red positive), used by every matrix.
DIVERGING = "RdBu_r"
#: The lesson is true_obs, so what it chooses and prunes wears true_obs's colour; costs priced
#: the way local/full price them wear full's. The row itself is neutral.
CHOSEN = METHOD_COLOURS["true_obs"]
FROZEN = METHOD_COLOURS["full"]
OTHER = "#B8BFCC"
ROW_BEFORE = "#CDD2DC"
ROW = "#4A5670"
#: Matrices up to this size get their numbers written in every cell.
MAX_TEXT_K = 16


def fmt(v: float, digits: int = 3) -> str:
    """A number in ``digits`` significant digits, short enough for a heatmap cell."""
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 10 ** digits or a < 1e-3:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.{digits}g}"


def tex_number(v: float, digits: int = 3) -> str:
    """A number for KaTeX in ``digits`` significant digits: ``0.00048`` → ``4.8 \\times 10^{-4}``,
    ``0.0123`` → ``0.0123``, ``-2.5`` → ``-2.5`` (never ``e`` notation, which KaTeX sets as a
    letter and a binary minus: "4.8e − 4")."""
    v = float(v)
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else r"\text{" + str(v) + "}"
    a = abs(v)
    if 1e-3 <= a < 10 ** digits:
        return f"{v:.{digits}g}"
    mantissa, exponent = f"{v:.{digits - 1}e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return rf"{mantissa} \times 10^{{{int(exponent)}}}"


def tex_matrix(rows: Sequence[Sequence[float]]) -> str:
    """A KaTeX ``bmatrix`` of the numbers in ``rows``, each written with :func:`tex_number`."""
    body = r" \\ ".join(" & ".join(tex_number(v) for v in r) for r in rows)
    return r"\begin{bmatrix}" + body + r"\end{bmatrix}"


def cell(v: float) -> str:
    """At most 4 characters for a heatmap cell: ``.24``, ``-.71``, ``2.7``, ``15``, ``0``."""
    a = abs(v)
    if a < 0.005:
        return "0"
    if a < 1:
        return f"{v:.2f}".replace("0.", ".", 1)
    if a < 10:
        return f"{v:.1f}"
    return f"{v:.0f}" if a < 1000 else f"{v:.0e}".replace("e+0", "e")


def _np(x: torch.Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _outline(cols: Sequence[int], K: int, colour: str, width: float = 2.5,
             dash: str | None = None) -> list[dict]:
    """Rectangles (data coordinates of a ``K × K`` heatmap) around the rows and the columns of
    each contiguous run of ``cols``."""
    runs = column_runs(cols)
    line = dict(color=colour, width=width, dash=dash)
    shapes: list[dict] = []
    for a, b in runs:
        shapes.append(dict(type="rect", x0=a - 0.5, x1=b + 0.5, y0=-0.5, y1=K - 0.5, line=line))
        shapes.append(dict(type="rect", x0=-0.5, x1=K - 0.5, y0=a - 0.5, y1=b + 0.5, line=line))
    return shapes


def matrix_heatmap(A: torch.Tensor | np.ndarray, title: str, *, zmax: float | None = None,
                   highlight: Sequence[int] = (), muted: Sequence[int] = (),
                   height: int = 400, colorbar: bool = True, text: bool | None = None,
                   outline: str = INK) -> go.Figure:
    """A ``(K, K)`` matrix on a diverging scale centred at 0, every number written in when
    ``text`` (default: ``K <= MAX_TEXT_K``; 2 significant digits above 8 columns).

    ``highlight`` outlines those rows/columns (the current scope); ``muted`` draws a dotted
    outline (columns already pruned). ``zmax`` fixes the scale so two matrices compare."""
    a = _np(A)
    K = a.shape[0]
    zmax = float(zmax if zmax is not None else max(np.abs(a).max(), 1e-12))
    labels = [[fmt(v) if K <= 8 else cell(v) for v in r] for r in a]
    text = K <= MAX_TEXT_K if text is None else text
    ticks = list(range(K))
    fig = go.Figure(go.Heatmap(
        z=a, x=ticks, y=ticks, colorscale=DIVERGING, zmin=-zmax, zmax=zmax, zmid=0,
        text=labels, texttemplate="%{text}" if text else None,
        textfont=dict(size=(10 if colorbar else 9) if K > 8 else 12), xgap=1, ygap=1,
        showscale=colorbar,
        colorbar=dict(thickness=10, len=0.85, outlinewidth=0),
        hovertemplate="row %{y}, column %{x}: %{z:.5g}<extra></extra>"))
    shapes = _outline(muted, K, MUTED, 1.5, "dot") + _outline(highlight, K, outline, 2.5)
    step = 1 if K <= 16 else 4
    fig.update_layout(**base_layout(
        title=dict(text=title, font_size=15, x=0.02), height=height, shapes=shapes,
        margin=dict(l=34, r=8, t=40, b=30)))
    fig.update_xaxes(tickvals=ticks[::step], side="bottom", showgrid=False, zeroline=False,
                     tickfont_size=10, constrain="domain", constraintoward="left")
    fig.update_yaxes(tickvals=ticks[::step], autorange="reversed", showgrid=False,
                     zeroline=False, tickfont_size=10, scaleanchor="x", constrain="domain",
                     constraintoward="top")
    return fig


def downdate_figures(C_before: torch.Tensor, C_after: torch.Tensor, pruned_now: Sequence[int],
                     pruned_before: Sequence[int] = (), height: int = 420,
                     text: bool | None = None) -> tuple[go.Figure, go.Figure, go.Figure]:
    """``C`` before and after a Schur downdate (one shared scale) and the change
    ``after − before`` (its own scale, set by the entries outside the pruned rows and columns);
    the rows and columns pruned now are outlined in the accent colour."""
    b, a = _np(C_before), _np(C_after)
    zmax = max(np.abs(b).max(), np.abs(a).max(), 1e-12)
    common = dict(highlight=pruned_now, muted=pruned_before, height=height, text=text,
                  outline=CHOSEN)
    before = matrix_heatmap(b, "C before", zmax=zmax, colorbar=False, **common)
    after = matrix_heatmap(a, "C after the downdate", zmax=zmax, colorbar=False, **common)
    # The pruned rows/columns change most (they drop to 0); scale the colours by the rest, where
    # the lesson is: how C over the weights still free moves.
    d = a - b
    rest = np.ones(d.shape[0], dtype=bool)
    rest[list(pruned_now)] = False
    inner = np.abs(d[np.ix_(rest, rest)]).max() if rest.any() else 0.0
    change = matrix_heatmap(d, "change = after − before", colorbar=False,
                            zmax=float(inner) if inner > 0 else None, **common)
    return before, after, change


def candidates_figure(labels: Sequence[str], costs: Sequence[float] | torch.Tensor,
                      chosen: Sequence[int], *, title: str = "cost ε(P) of each candidate",
                      compare: Sequence[float] | torch.Tensor | None = None,
                      compare_chosen: Sequence[int] = (), names: tuple[str, str] = (
                          "now", "original C and w"), height: int = 320,
                      marks: Sequence[tuple[int, str, str]] | None = None,
                      clickable: bool = False) -> go.Figure:
    """One bar per candidate subset (``labels``: which columns it prunes), the ``chosen`` ones in
    the accent colour with their cost written on top. With ``compare``, a second series beside
    each bar (the same candidates priced another way), its own choice outlined.

    ``marks`` (``(candidate, text, colour)``) replaces the marks above the picks; ``clickable``
    says so in the hover text (the page lets a click on a bar choose that candidate)."""
    c = _np(costs)
    n = len(labels)
    picked = set(chosen)
    rest = OTHER if compare is None else fade(CHOSEN, 0.6)
    colours = [CHOSEN if i in picked else rest for i in range(n)]
    fig = go.Figure(go.Bar(
        x=list(labels), y=c, name=names[0], marker=dict(color=colours, line_width=0),
        text=[fmt(v) for v in c], textposition="outside", cliponaxis=False,
        textfont=dict(size=11 if n <= 12 else 9), constraintext="none",
        textangle=0 if compare is None else -90,
        hovertemplate="%{x}<br>" + names[0].split(":")[0] + " = %{y:.5g}"
        + ("<br>click: prune this instead" if clickable else "")
        + "<extra>" + names[0] + "</extra>"))
    top = float(c.max()) if n else 1.0
    if compare is not None:
        f = _np(compare)
        top = max(top, float(f.max()))
        theirs = set(compare_chosen)
        fig.add_bar(
            x=list(labels), y=f, name=names[1],
            marker=dict(color=[FROZEN if i in theirs else fade(FROZEN, 0.6) for i in range(n)],
                        line_width=0),
            text=[fmt(v) for v in f], textposition="outside", cliponaxis=False,
            textfont=dict(size=11 if n <= 12 else 9, color=MUTED), constraintext="none",
            textangle=-90,
            hovertemplate="%{x}<br>" + names[1].split(":")[0] + " = %{y:.5g}"
            + ("<br>click: prune this instead" if clickable else "")
            + "<extra>" + names[1] + "</extra>")
    # Mark the pick(s) right above their bars: one mark when both ways pick the same subset.
    ours = sorted(picked)
    others = sorted(set(compare_chosen)) if compare is not None else []
    notes: list[tuple[int, float, str, str, float]] = []
    if marks is not None:
        top_of = (lambda i: float(c[i])) if compare is None else (
            lambda i: max(float(c[i]), float(f[i])))
        notes = [(i, top_of(i), text, colour, 0.0) for i, text, colour in marks]
    elif compare is None:
        notes = [(i, float(c[i]), "cheapest", CHOSEN, 0.0) for i in ours]
    elif ours == others:
        notes = [(i, max(float(c[i]), float(f[i])), "both pick this", INK, 0.0) for i in ours]
    else:
        notes = [(i, float(c[i]), "true_obs", CHOSEN, -0.2) for i in ours]
        notes += [(i, float(f[i]), "local/full", FROZEN, 0.2) for i in others]
    lift = 30 if compare is None else 58    # clear the value written above the bar
    annotations = [dict(x=i + dx, y=y, xref="x", yref="y", yshift=lift, text=f"{label}<br>▼",
                        showarrow=False, font=dict(color=colour, size=11))
                   for i, y, label, colour, dx in notes]
    fig.update_layout(**base_layout(
        title=dict(text=title, font_size=15, x=0.02), height=height, barmode="group",
        bargap=0.25, showlegend=compare is not None, annotations=annotations,
        legend=dict(orientation="h", yanchor="top", y=-0.2, x=0),
        margin=dict(l=56, r=16, t=44, b=60 if compare is None else 90)))
    fig.update_yaxes(title_text="ε(P)", range=[0, top * (1.3 if compare is None else 1.55) or 1],
                     gridcolor="#EEE",
                     zeroline=True, zerolinecolor=MUTED)
    crowded = sum(len(label) + 2 for label in labels) > 60
    fig.update_xaxes(tickangle=-35 if crowded else 0, type="category",
                     range=[-0.5, n - 0.5])
    return fig


def row_figure(w_before: torch.Tensor, w_after: torch.Tensor | None = None, *,
               scope_cols: Sequence[int] = (), pruned_now: Sequence[int] = (),
               pruned_before: Sequence[int] = (), scopes: Sequence[Sequence[int]] = (),
               names: tuple[str, str] = ("before", "after"), height: int = 320) -> go.Figure:
    """The row as bars, one per column: ``w_before`` faint, ``w_after`` solid beside it (when
    given). The current scope is shaded, the weights pruned now are marked ✕ at 0, earlier
    pruned columns are labelled in grey. ``scopes`` (column lists) draws light scope separators."""
    b = _np(w_before)
    K = b.shape[0]
    x = list(range(K))
    now, gone = set(pruned_now), set(pruned_before)
    small = K <= MAX_TEXT_K
    fig = go.Figure()
    fig.add_bar(x=x, y=b, name=names[0],
                marker=dict(color=ROW_BEFORE, line_width=0),
                text=[fmt(v) for v in b] if small and w_after is None else None,
                textposition="outside", cliponaxis=False, textfont_size=10,
                constraintext="none",
                hovertemplate="column %{x}: %{y:.4f}<extra>" + names[0] + "</extra>")
    if w_after is not None:
        a = _np(w_after)
        colours = [MUTED if c in gone else CHOSEN if c in now else ROW for c in x]
        labelled = set(scope_cols) - now - gone if scope_cols else set()
        fig.add_bar(x=x, y=a, name=names[1], marker=dict(color=colours, line_width=0),
                    text=[fmt(v) if c in labelled else "" for c, v in enumerate(a)],
                    textposition="outside", cliponaxis=False, textfont_size=11,
                    constraintext="none", showlegend=False, legendgroup="after",
                    hovertemplate="column %{x}: %{y:.4f}<extra>" + names[1] + "</extra>")
        # The legend's swatch: the row's colour, whatever colour the first bar has.
        # (a marker, not a bar: an empty bar trace would still take a slot in each group)
        fig.add_scatter(x=[None], y=[None], mode="markers", name=names[1], legendgroup="after",
                        marker=dict(symbol="square", size=11, color=ROW), hoverinfo="skip")
        top = max(np.abs(a).max(), np.abs(b).max())
    else:
        top = np.abs(b).max()
    top = float(top) * 1.3 or 1.0
    if now:
        fig.add_scatter(x=sorted(now), y=[0] * len(now), mode="markers", name="pruned now",
                        marker=dict(symbol="x-thin", size=14, line=dict(width=3, color=CHOSEN)),
                        hoverinfo="skip")
    if gone:
        fig.add_scatter(x=sorted(gone), y=[0] * len(gone), mode="markers", name="pruned before",
                        marker=dict(symbol="x-thin", size=10, line=dict(width=2, color=MUTED)),
                        hoverinfo="skip")
    shapes = []
    for cols in scopes[1:]:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=min(cols) - 0.5,
                           x1=min(cols) - 0.5, y0=0, y1=1,
                           line=dict(color="#D5D8E0", width=1, dash="dot")))
    if scope_cols:
        shapes.append(dict(type="rect", xref="x", yref="paper", x0=min(scope_cols) - 0.5,
                           x1=max(scope_cols) + 0.5, y0=0, y1=1, layer="below", line_width=0,
                           fillcolor="rgba(242, 165, 65, 0.16)"))
    fig.update_layout(**base_layout(
        height=height, barmode="group", bargap=0.2, bargroupgap=0.05, shapes=shapes,
        showlegend=w_after is not None,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        margin=dict(l=56, r=16, t=36, b=40)))
    fig.update_xaxes(tickvals=x if K <= 32 else x[::4], title_text="column", showgrid=False)
    fig.update_yaxes(title_text="weight", range=[-top, top], gridcolor="#EEE", zeroline=True,
                     zerolinecolor=INK, zerolinewidth=1)
    return fig


def error_figure(rel_errors: Sequence[float], n_steps: int,
                 finals: Mapping[str, float] | None = None, height: int = 300,
                 yours: Sequence[float] | None = None) -> go.Figure:
    """The rows' relative error after each step taken so far (step 0 = before any), on an axis
    that already spans the whole lesson; ``finals`` marks where each mode ends, as short
    ticks right of the last step with the mode's name and error beside them (labels nudged apart
    when close), so no value written on the path sits on them. ``yours``: the student's path
    (where they overruled OBS), drawn beside OBS's own, its values written below its points."""
    y = [100 * v for v in rel_errors]
    fig = go.Figure()
    mine = [100 * v for v in yours] if yours is not None else []
    top = max([*y, *mine, 1e-9, *(100 * v for v in (finals or {}).values())])
    x0, x1 = n_steps + 0.35, n_steps + 0.85            # the finals' ticks, right of the path
    gap = 0.09 * top                                   # least vertical distance between labels
    placed: list[float] = []
    annotations = []
    for method, value in sorted((finals or {}).items(), key=lambda kv: kv[1]):
        v = 100 * value
        colour = METHOD_COLOURS.get(method, MUTED)
        fig.add_scatter(x=[x0, x1], y=[v, v], mode="lines", name=method, showlegend=False,
                        line=dict(color=colour, width=3),
                        hovertemplate=f"{method} ends at {format_rel_error(value)}<extra></extra>")
        at = max(v, placed[-1] + gap) if placed else v
        placed.append(at)
        annotations.append(dict(x=x1, y=at, xref="x", yref="y", xanchor="left", showarrow=False,
                                text=f"{method} {format_rel_error(value)}",
                                font=dict(size=10, color=colour)))
    fig.add_scatter(x=list(range(len(y))), y=y, mode="lines+markers+text",
                    name="this lesson" if yours is None else "OBS",
                    line=dict(color=CHOSEN, width=3), marker=dict(size=9, color=CHOSEN),
                    text=[format_rel_error(v / 100) for v in y], textposition="top center",
                    textfont=dict(size=10, color=CHOSEN), cliponaxis=False,
                    showlegend=yours is not None,
                    hovertemplate="after step %{x}: %{y:.3f} %<extra>OBS</extra>")
    if yours is not None:
        fig.add_scatter(x=list(range(len(mine))), y=mine, mode="lines+markers+text", name="yours",
                        line=dict(color=INK, width=3, dash="dash"),
                        marker=dict(size=9, color=INK, symbol="diamond"),
                        text=[""] + [format_rel_error(v / 100) for v in mine[1:]],
                        textposition="bottom center", textfont=dict(size=10, color=INK),
                        cliponaxis=False,
                        hovertemplate="after step %{x}: %{y:.3f} %<extra>yours</extra>")
    top = max(top, placed[-1] if placed else 0)
    fig.update_layout(**base_layout(
        height=height, showlegend=yours is not None, annotations=annotations,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, x=0),
        margin=dict(l=48, r=112 if finals else 12, t=24 if yours is None else 40, b=40)))
    fig.update_xaxes(range=[-0.3, (x1 if finals else n_steps) + 0.05], title_text="steps taken",
                     showgrid=False, tickvals=list(range(n_steps + 1)))
    fig.update_yaxes(range=[0, top * 1.25], ticksuffix=" %", gridcolor="#EEE",
                     title_text="error")
    return fig


def modes_figure(rel_errors: Mapping[str, float], highlight: str = "true_obs",
                 height: int = 220) -> go.Figure:
    """Each mode's final relative error on the row as a horizontal bar, ``highlight`` in full
    colour and the rest faded; the value is written at the bar's end."""
    methods = list(rel_errors)
    v = [100 * rel_errors[m] for m in methods]
    colours = [METHOD_COLOURS.get(m, ROW) if m == highlight
               else fade(METHOD_COLOURS.get(m, ROW), 0.35) for m in methods]
    fig = go.Figure(go.Bar(
        x=v, y=methods, orientation="h", marker=dict(color=colours, line_width=0),
        text=[format_rel_error(rel_errors[m]) for m in methods], textposition="outside",
        cliponaxis=False, hovertemplate="%{y}: %{x:.3f} %<extra></extra>"))
    fig.update_layout(**base_layout(height=height, margin=dict(l=84, r=56, t=8, b=32)))
    fig.update_xaxes(range=[0, max([*v, 1e-9]) * 1.3], ticksuffix=" %", gridcolor="#EEE")
    fig.update_yaxes(autorange="reversed")
    return fig
