"""Stored runs the Compare page can open: every finished run in the run store whose layer is here
(the current layer, a shipped sample, or the layer of a run in this session) — the app's own
runs from earlier sessions and the Sweep's alike. A run is opened into the session's collection
(``ui.runs.store``) under its stored trial key; its weights stay on disk until a chart needs them.
"""

from __future__ import annotations

from obsviz.store import StoredRun

from ui import layers, runs

#: Most stored runs listed (newest first).
MAX_LISTED = 5000


def stored_layers() -> list[dict]:
    """The run store's layers with finished runs, newest first: ``layer_hash``, ``label`` (the
    name stored with the newest run), ``shape``, ``runs`` (how many), ``open`` (how many are
    not in this session yet), ``layer`` (the ``ActiveLayer`` to open them on, or ``None`` when
    its weight and Hessian are not here)."""
    db = runs.run_store()
    if db is None:
        return []
    try:
        rows = db.runs(status="done", limit=MAX_LISTED)
    except Exception:
        return []
    in_session = runs.store()
    found: dict[str, dict] = {}
    for row in rows:
        if not row.layer_hash:
            continue
        entry = found.setdefault(row.layer_hash, {
            "layer_hash": row.layer_hash, "label": row.layer, "shape": row.shape, "runs": 0,
            "open": 0, "rows": []})
        entry["runs"] += 1
        if row.key not in in_session:
            entry["open"] += 1
            entry["rows"].append(row)
    here = _layers_here()
    for entry in found.values():
        entry["layer"] = here.get(entry["layer_hash"]) or _sample_named(entry)
    return list(found.values())


def _layers_here() -> dict[str, layers.ActiveLayer]:
    """Layers this session has (the current one, those of its runs), by digest (the store's
    layer hash)."""
    here = {run.layer.digest: run.layer for run in runs.store().values()}
    current = layers.current()
    if current is not None:
        here[current.digest] = current
    return here


def _sample_named(entry: dict) -> layers.ActiveLayer | None:
    """The shipped sample a stored layer is named after, when its content is the same."""
    if entry["label"] not in layers.sample_layer_names():
        return None
    found = layers.sample(entry["label"])
    return found if found is not None and found.digest == entry["layer_hash"] else None


def open_stored(entry: dict) -> list[str]:
    """Put the stored runs of ``entry`` (one of ``stored_layers()``) in the session; returns
    their run keys, oldest first."""
    layer = entry["layer"]
    if layer is None:
        return []
    runs.adopt_stored(layer)        # the app's own runs, under the keys the app gives them
    collection, keys = runs.store(), []
    for row in reversed(entry["rows"]):
        run = collection.get(row.key) or _run_of(row, layer)
        if run is None:
            continue
        collection.setdefault(run.key, run)
        keys.append(run.key)
    return keys


def _run_of(row: StoredRun, layer: layers.ActiveLayer) -> runs.Run | None:
    """A stored run written with other conventions (a sweep), kept under its stored key."""
    try:
        opts = dict(row.options)
        device = str(opts.pop("device", None) or row.device or "cpu")
        sample = opts.pop("sample", None)
        job = runs.Job(layer, row.geometry_obj(), int(row.nnz),
                       0.01 if row.damp is None else float(row.damp), device,
                       {**runs.DEFAULT_OPTIONS, **opts},
                       None if sample is None else tuple(sample))
        run = runs.Run(row.key or f"stored-{row.id}", job, row.method, None, None,
                       stored_id=row.id, rel_error=row.rel_error)
        run.seconds = float(row.seconds or 0.0)
        return run
    except Exception:      # a row this version cannot read: left out of the list it came from
        return None
