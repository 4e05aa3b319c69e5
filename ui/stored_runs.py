"""Stored runs are results: the run store's finished runs (the app's own from earlier sessions
and the Sweep's alike) listed in the session's collection (``ui.runs.store``), after a restart as
before it, by ``sync``; ``latest`` is the latest run's results, the default a restart leaves.

A stored run is listed on its layer when that is here (the current layer, a shipped sample of
the same content, the layer of a run in this session), else on what the store knows of the layer
(``ui.layers.stored``: its name, shape and digest), so that its metrics and tables come from the
store alone; what needs W and H (the error maps, the per-row errors) says so. When the layer is
here later (the file uploaded again), its runs move onto it. Weights stay on disk until a chart
needs them.

Session-state key (declared in ``ui.state.KEYS``; this module owns it): ``results_adopted``,
``dict``: what of the run store is listed (its newest row id, the layers here then, whether it
holds more than ``MAX_LISTED``, the latest run's keys).
"""

from __future__ import annotations

import dataclasses

import streamlit as st

from obsviz.store import StoredRun

from ui import layers, runs

#: Most stored runs listed (newest first).
MAX_LISTED = 1000


def sync() -> bool:
    """List the run store's finished runs (the newest ``MAX_LISTED``) in the session's
    collection, oldest first among its own by row id; again only when the store has a newer
    run or a stored layer is here now. Returns whether the store holds more than are listed."""
    db = runs.run_store()
    if db is None:
        return False
    ss = st.session_state
    here = _layers_here()
    try:
        newest = db.runs(status="done", limit=1)
    except Exception:   # unreadable now: the session's own runs are still there
        return False
    mark = {"newest": newest[0].id if newest else 0, "here": sorted(here)}
    seen = ss.get("results_adopted")
    if isinstance(seen, dict) and {k: seen.get(k) for k in mark} == mark:
        return bool(seen.get("more"))
    try:
        rows = db.runs(status="done", limit=MAX_LISTED)
    except Exception:
        return False
    collection = runs.store()
    try:   # every name each run was asked for by (layers of the same contents share a run)
        names = db.layer_names([r.id for r in rows if r.layer_hash and r.key])
    except Exception:
        names = {}
    for row in reversed(rows):      # oldest first
        if not row.layer_hash or not row.key:
            continue
        for name in names.get(row.id) or [row.layer]:
            layer = _layer_named(row, name, here)
            listed = collection.get(runs.named_key(row.key, name))
            if listed is not None and (listed.layer.loaded or not layer.loaded):
                continue
            run = runs.from_row(row, layer)
            if run is not None:
                collection[run.key] = run
    order = sorted(enumerate(collection.values()), key=lambda ir: (
        ir[1].stored_id if ir[1].stored_id is not None else float("inf"), ir[0]))
    collection.clear()
    collection.update((run.key, run) for _, run in order)
    ss["results_adopted"] = {**mark, "more": len(rows) >= MAX_LISTED,
                             "latest": _latest_block(rows)}
    return len(rows) >= MAX_LISTED


def latest() -> list[str]:
    """The run keys of the latest stored run (oldest first), as before a restart: the newest
    rows of one job (layer, geometry, nnz, damping, row sample; the app's own runs before a
    sweep's), those listed in the collection."""
    seen = st.session_state.get("results_adopted")
    keys = seen.get("latest", []) if isinstance(seen, dict) else []
    collection = runs.store()
    return [k for k in keys if k in collection]


def _latest_block(rows: list[StoredRun]) -> list[str]:
    own = [r for r in rows if r.sweep is None] or rows

    def job(r: StoredRun) -> tuple:
        return (r.layer_hash, r.geometry, r.nnz, r.damp, r.sweep,
                repr(r.options.get("sample")), r.options.get("device"))

    block = []
    for r in own:       # newest first: up to the first row of another job
        if block and job(r) != job(own[0]):
            break
        block.append(runs.named_key(r.key, r.layer))
    return block[::-1]


def _layers_here() -> dict[str, layers.ActiveLayer]:
    """Layers this session has (the current one, those of its runs), by digest (the store's
    layer hash); only loaded ones."""
    here = {run.layer.digest: run.layer for run in runs.store().values() if run.layer.loaded}
    current = layers.current()
    if current is not None:
        here[current.digest] = current
    return here


def _layer_named(row: StoredRun, name: str,
                 here: dict[str, layers.ActiveLayer]) -> layers.ActiveLayer:
    """The layer a stored run is listed on under ``name`` (one of the names it was asked for
    by): a layer of its contents here (under that name: the contents are the same), else the
    shipped sample of that name and contents, else what the store knows of it."""
    found = here.get(row.layer_hash)
    if found is not None:
        return found if found.label == name else dataclasses.replace(found, label=name)
    return _sample_named(row, name) or layers.stored(row.layer_hash, name, row.shape)


def _sample_named(row: StoredRun, name: str) -> layers.ActiveLayer | None:
    """The shipped sample ``name``, when its content is the stored layer's."""
    if name not in layers.sample_layer_names():
        return None
    found = layers.sample(name)
    return found if found is not None and found.digest == row.layer_hash else None
