"""A geometry's numbers as the pages show them: counts short enough for a metric, the candidate
subsets per scope, and the memory each method needs against what is free on the device.

Pure (no Streamlit), like ``ui.forms``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from obsviz import Geometry
from obsviz.estimate import available_memory, format_bytes
from obsviz.methods import METHODS, get
from obsviz.obs import MAX_SUBSETS, count_subsets


def count(n: int) -> str:
    """A count that fits a metric: 73,728, 2.82 M or ~10^301."""
    if n < 1_000_000:
        return f"{n:,}"
    return f"{n / 1e6:.2f} M" if n < 10**9 else f"~10^{math.floor(math.log10(n))}"


def subsets_per_scope(blocks_per_scope: int, pruned: int) -> tuple[str, bool]:
    """``C(gs, np)``, the candidate masks of one scope, as a metric's text, and whether it is
    above ``MAX_SUBSETS`` (selection then falls back to greedy). Counted only up to the limit:
    the exact binomial can take minutes."""
    subsets = count_subsets(blocks_per_scope, pruned, cap=MAX_SUBSETS)
    greedy = subsets > MAX_SUBSETS
    return (f"more than {MAX_SUBSETS:,} → greedy" if greedy else count(subsets)), greedy


def memory_fits(geometry: Geometry, methods: Sequence[str], device: str,
                rows: int | None = None, options: dict | None = None) -> list[dict]:
    """Per method: ``method``, ``memory`` (bytes needed for ``rows`` rows, default all, with
    ``options``, see ``obsviz.methods``), ``free`` (bytes free on ``device`` now, ``None`` when
    unknown) and ``fits`` (``True`` when the free memory is unknown)."""
    free = available_memory(device)
    table = []
    for method in methods:
        need = get(method).memory(geometry, rows, device, **(options or {}))
        table.append({"method": method, "memory": need, "free": free,
                      "fits": free is None or need < free})
    return table


def memory_table(geometry: Geometry, device: str) -> tuple[dict[str, list[str]], int | None]:
    """Every method's memory for all rows, as table columns (``method``, ``needs``, ``fits``:
    ✓, "too big", or empty when the free memory is unknown), and the bytes free now."""
    fits = memory_fits(geometry, METHODS, device)
    table = {"method": [e["method"] for e in fits],
             "needs": [format_bytes(e["memory"]) for e in fits],
             "fits": ["" if e["free"] is None else "✓" if e["fits"] else "too big"
                      for e in fits]}
    return table, fits[0]["free"]
