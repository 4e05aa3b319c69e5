"""The app's shared state, declared: every ``st.session_state`` key with its one owner (``KEYS``),
the current layer and device (drawn once, in the sidebar, by the entrypoint ``app.py``), the
geometry the user chose, and the URL.

What pages call (keep it small and stable):

- ``current_layer()``: the current layer (``ui.layers.ActiveLayer``: ``.layer`` with ``.weight
  (M, K)``, ``.hessian (K, K)``; ``.label``; ``.digest``) or ``None``. One layer for every page:
  a sample, an uploaded file or a checkpoint layer; the sidebar names it.
- ``loaded_layer()``: the same, as the ``obsviz.layers.Layer`` itself; ``layer_shape()``.
- ``chosen_geometry()``: ``(geometry, nnz)`` chosen on the Geometry page (or in the link that
  opened the app), or ``None`` while that form is invalid. ``nnz`` is the user's budget; the
  ``Geometry`` object is cached and shared by every session: never modify it.
- ``device()``: where pruning runs (``"cuda"`` or ``"cpu"``).
- ``form_widgets``/``device_select``/``copy_widget`` (``ui.widgets``), ``sample_layer`` (the
  shipped samples, ``ui.layers``).

The URL: the Geometry page mirrors ``geometry_form`` into ``st.query_params`` (``pattern``,
``weight``, ``layer``, ``nnz``, free-form ``view``/``stride``/``block``/``scope``, ``n``/``m``
for N:M, the window ``r0``/``c0``/``win``), so a copied link reproduces the geometry. A session
that starts from such a link reads them once. URL values are hostile text: they go through the
form's parsers, and are shown only as text (``ui.text.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

import streamlit as st

from obsviz import ArgumentError, Geometry
from obsviz import layers as L
from obsviz.estimate import geometry_maps_bytes, require_memory, reserve_memory
from obsviz.figures.common import pool2d
from obsviz.figures.geometry import (
    GeometryMaps,
    column_map_figure,
    compute_maps,
    layout_figure,
    layout_png,
    layout_window,
    row_coupling_figure,
)
from obsviz.layout import layout_shape

from ui import calibration, layers
from ui.forms import PATTERNS, WINDOWS, GeometryForm, PruneForm, build_geometry, default_form
from ui.layers import ActiveLayer, sample_layer, sample_layer_names
from ui.text import md
from ui.widgets import copy_widget, device_options, device_select, form_widgets, mark_in_error

__all__ = ["KEYS", "WIDGET_PREFIXES", "chosen_geometry", "copy_widget", "current_layer",
           "device", "device_select", "draw_sidebar", "form_widgets", "init_state", "layer_shape",
           "loaded_layer", "mark_in_error", "require_entrypoint", "sample_layer",
           "sample_layer_names"]

FALLBACK_SHAPE = (384, 384)


@dataclass(frozen=True)
class Key:
    """One session-state key: who writes it (``owner``), what it holds."""

    owner: str
    holds: str


#: Every session-state key the app uses, with its one owner (the only code that writes it).
#: Pages read shared keys through the functions above, not by name.
KEYS: dict[str, Key] = {
    "entered": Key("ui.state", "True once a run of this session went through the entrypoint"),
    "device": Key("app.py sidebar (ui.state)", '"cuda" | "cpu": where pruning runs'),
    "layer_source": Key("ui.layers", '"sample" | "upload" | "checkpoint": the current layer'),
    "layer_name": Key("ui.layers", "str | None: the sample layer chosen"),
    "user_layer": Key("ui.layers", "ActiveLayer | None: the uploaded or checkpoint layer"),
    "layer_error": Key("ui.layers", "str: why the chosen sample could not be loaded"),
    "upload_error": Key("ui.layers", "str | None: the file the latest upload could not load "
                        "(no layer is current from it)"),
    "geometry_form": Key("pages/geometry.py", "ui.forms.GeometryForm: its inputs as typed"),
    "link_ignored": Key("ui.state", "list[str]: URL values the Geometry form could not use"),
    "prune_form": Key("pages/prune.py", "ui.forms.PruneForm: its inputs as typed"),
    "results": Key("ui.runs", "dict[run key, Run]: the session's finished runs (and stored "
                              "ones it asked for again)"),
    "results_adopted": Key("ui.stored_runs", "dict: what of the run store is listed in "
                           "results (its newest row, the layers here then, the latest run)"),
    "last_run": Key("ui.runner", "list[dict]: per method of the latest Run click, its outcome"),
    "run_pending": Key("ui.runner", "list[str]: methods a running (or stopped) run has left"),
    "model_run_owner": Key("ui.runner", "the owner of this session's Model run folder: the "
                           "folder is removed when the session (and so this) goes"),
    "compare_pick": Key("pages/compare.py", "the results the Compare page shows"),
    "learn_setup": Key("ui.learn", "dict: the Learn page's choices"),
    "learn_step": Key("ui.learn", "int: scopes of the lesson's row decided so far"),
    "learn_weights": Key("pages/learn.py", "list[float]: that row's weights after those steps"),
    "learn_forced": Key("ui.learn", "dict[int, tuple[int, ...]]: the steps the student overruled "
                        "(step index → pruned blocks)"),
    "learn_picks": Key("ui.learn", "int: counts the student's picks (keys the cost chart, so a "
                       "new pick starts with no selection)"),
    "model_form": Key("pages/model.py", "the Model page's inputs"),
    "model_result": Key("pages/model.py", "the whole-model result the Model page shows (its "
                        "own run or one opened from the run database)"),
    "sensitivity_form": Key("pages/sensitivity.py", "the Sensitivity page's inputs"),
    "sensitivity_result": Key("pages/sensitivity.py", "the scan the Sensitivity page shows "
                              "(its own or one opened from the run database), its checked "
                              "plans and the layer clicked"),
    "sweep_open": Key("pages/sweep.py", "the stored sweep the Sweep page shows"),
    "sweep_running": Key("pages/sweep.py", "whether a sweep is running in this session"),
    "sweep_last": Key("pages/sweep.py", "the Sweep page's latest sweep"),
    "sweep_filters": Key("pages/sweep.py", "dict: the Sweep page's filter choices and the "
                         "values they were offered, for the sweep shown"),
}

#: Widget keys: Streamlit's own, one prefix per owner; forgotten when their page is left, so
#: each is primed from the key above that holds the value (see ``ui.widgets``).
WIDGET_PREFIXES: dict[str, str] = {
    "_w_": "app.py sidebar", "_g_": "pages/geometry.py", "_p_": "pages/prune.py (and ui.layers)",
    "_c_": "pages/compare.py", "_l_": "pages/learn.py", "_m_": "pages/model.py",
    "_s_": "pages/sweep.py", "_n_": "pages/sensitivity.py",
}

#: Form fields that travel in the URL (see ``form_to_query``).
_QUERY_FIELDS = ("pattern", "weight", "nnz", "n", "m", "view", "stride", "block", "scope", "r0",
                 "c0", "win")


def require_entrypoint() -> None:
    """Make sure this page runs with what the entrypoint (``app.py``) gives every page: the
    navigation and the shared sidebar. Call it first thing in a page.

    Streamlit runs a page file on its own, without the entrypoint, when a ``pages/`` folder
    exists and the entrypoint has not yet run in this server process (the first session of a
    fresh server opened at a page link; every AppTest run), and lists the raw files of
    ``pages/`` as the navigation. That legacy mode (Streamlit's
    ``PagesManager.uses_pages_directory``, which ``st.navigation`` itself turns off) is turned
    off here; a session's first run then starts again through ``app.py`` (it has no click to
    lose), a later one draws the shared sidebar here instead.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if not PagesManager.uses_pages_directory:
        return
    PagesManager.uses_pages_directory = False
    if not st.session_state.get("entered"):
        st.rerun()
    draw_sidebar()


def init_state() -> None:
    """Defaults for the shared keys (idempotent; the entrypoint calls it on every run)."""
    from obsviz.store import default_store_path

    from ui import runner

    runner.start_up(str(default_store_path()))   # once per process: what dead ones left
    ss = st.session_state
    if "device" not in ss or ss["device"] not in device_options():
        ss["device"] = device_options()[0]
    layers.init()


def device() -> str:
    init_state()
    return st.session_state["device"]


# ---- the current layer ------------------------------------------------------------------------


def current_layer() -> ActiveLayer | None:
    """The current layer, shared by every page (``None`` when none is loaded)."""
    return layers.current()


def loaded_layer() -> L.Layer | None:
    """The current layer's ``obsviz.layers.Layer`` (``.name``, ``.weight (M, K)``, ``.hessian
    (K, K)``, …), or ``None``."""
    active = current_layer()
    return None if active is None else active.layer


def layer_shape() -> tuple[int, int] | None:
    layer = loaded_layer()
    return None if layer is None else (int(layer.weight.shape[0]), int(layer.weight.shape[1]))


def draw_sidebar() -> None:
    """The shared widgets: the device and the current layer, then what the pages share (the
    layer's shape, the chosen geometry). Drawn once per run by the entrypoint, around
    ``st.navigation``; pages never call it."""
    init_state()
    ss = st.session_state
    ss["entered"] = True
    with st.sidebar:
        st.markdown("#### Running on")
        device_select("_w_device", help="Pruning runs here. CUDA is offered when a GPU is "
                                        "visible.")
        options = layers.choices()
        chosen = layers.current_choice()
        failed = layers.failed_upload()
        if options:
            ss["_w_layer"] = (None if failed else chosen if chosen in options
                              else next(iter(options)))
            st.selectbox("Layer", list(options), key="_w_layer", format_func=options.get,
                         on_change=lambda: layers.choose(ss["_w_layer"]),
                         placeholder="No layer in use",
                         help="The layer every page works on: a real layer shipped with "
                              "obsviz, or one you uploaded (or built from a checkpoint) on the "
                              "Prune page.")
        active = current_layer()
        if active is not None:
            st.caption(f"**{md(active.label)}** · {calibration.layer_facts(active.layer)}")
        elif failed:
            st.caption(f"No layer in use: {md(failed)} was not loaded. Pick one above.")
        else:
            st.caption("No layer loaded: pages use a shape you choose.")
            if ss.get("layer_error"):
                st.caption(md(ss["layer_error"]))
        chosen_geom = chosen_geometry()
        if chosen_geom is not None:
            geom, nnz = chosen_geom
            st.markdown("#### Geometry")
            st.caption(f"**{md(geom.run_name(nnz)) if geom.name else 'free-form'}**, "
                       f"nnz = {nnz} · "
                       f"{geom.describe()}")


# ---- the geometry form and the URL ------------------------------------------------------------


def form_from_query(base: GeometryForm) -> GeometryForm:
    """``base`` with every form field the URL carries replaced by the URL's value (as text the
    form's parsers read). A value of the wrong kind, or one the pattern does not use, is left
    out and listed in ``link_ignored`` (the Geometry page says what, see :func:`link_ignored`)."""
    params = st.query_params
    kinds = {f.name: f.type for f in fields(GeometryForm)}
    form = GeometryForm(**vars(base))
    ignored: list[str] = []
    for key in _QUERY_FIELDS:
        if key not in params:
            continue
        value = params[key]
        if kinds[key] in ("int", int):
            try:
                value = int(value)
            except ValueError:
                ignored.append(f"{key}={_short_value(value)} (not a whole number)")
                continue
        setattr(form, key, value)
    if form.pattern not in PATTERNS:
        ignored.append(f"pattern={_short_value(form.pattern)} (no such pattern)")
        form.pattern = base.pattern
    if form.win not in WINDOWS:
        ignored.append(f"win={_short_value(form.win)} (no such window)")
        form.win = base.win
    unused = [k for k in ("n", "m") if k in params and form.pattern != "N:M"]
    unused += [k for k in ("view", "stride", "block", "scope")
               if k in params and form.pattern != "free-form"]
    ignored += [f"{k}={_short_value(params[k])} (not used by {form.pattern})" for k in unused
                if not any(i.startswith(f"{k}=") for i in ignored)]
    if "weight" in params:
        form.use_layer = "layer" in params
    st.session_state["link_ignored"] = ignored
    return form


def _short_value(text: str, limit: int = 24) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def link_ignored() -> list[str]:
    """What the link that opened this session carried and the form could not use, each item
    ``field=value (why)``; given once (the page that shows it says it on its first draw)."""
    return st.session_state.pop("link_ignored", None) or []


def form_to_query(form: GeometryForm) -> None:
    """Mirror the form into the URL (only the fields the chosen pattern uses)."""
    wanted: dict[str, str] = {"pattern": form.pattern, "weight": form.weight}
    if form.pattern == "N:M":
        wanted |= {"n": str(form.n), "m": str(form.m)}
    else:
        wanted["nnz"] = str(form.nnz)
    if form.pattern == "free-form":
        wanted |= {k: getattr(form, k) for k in ("view", "stride", "block", "scope")}
    active = current_layer()
    if form.use_layer and active is not None and active.kind == "sample":
        wanted["layer"] = active.label
    if form.r0:
        wanted["r0"] = str(form.r0)
    if form.c0:
        wanted["c0"] = str(form.c0)
    if form.win != GeometryForm.win:
        wanted["win"] = form.win
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def geometry_form() -> GeometryForm:
    """The Geometry page's inputs: from this session, else from the URL, else the defaults."""
    ss = st.session_state
    if "geometry_form" not in ss:
        shape = layer_shape() or FALLBACK_SHAPE
        ss["geometry_form"] = form_from_query(default_form(shape))
    return ss["geometry_form"]


def prune_form(methods: list[str], options: dict) -> PruneForm:
    """The Prune page's inputs (created with ``methods`` chosen and ``options`` on first use)."""
    ss = st.session_state
    if "prune_form" not in ss:
        ss["prune_form"] = PruneForm(methods=list(methods), options=dict(options))
    return ss["prune_form"]


def resolve_geometry() -> tuple[Geometry | None, int | None, dict[str, str]]:
    """The form -> ``(geometry, nnz, errors)`` (see ``ui.forms.build_geometry``). Built once per
    distinct form and layer shape (building checks the view over all of W, which takes a while
    on big layers); the maps it needs are checked against free memory first."""
    form = geometry_form()
    geom, nnz, errors = _resolve(spec_key(form.spec()), layer_shape())
    if geom is not None:
        try:
            require_maps_memory(geom)
        except ArgumentError as err:
            return None, None, {"weight": str(err)}
    return geom, nnz, errors


def chosen_geometry() -> tuple[Geometry, int] | None:
    """``(geometry, nnz)`` the user chose, or ``None`` while the form is invalid. The geometry is
    shared by every session: read-only."""
    geom, nnz, _ = resolve_geometry()
    return None if geom is None else (geom, nnz)


@st.cache_resource(max_entries=16, show_spinner=False)
def _resolve(form_key: str, layer_shape: tuple[int, int] | None
             ) -> tuple[Geometry | None, int | None, dict[str, str]]:
    try:
        return build_geometry(GeometryForm(**json.loads(form_key)), layer_shape)
    except Exception as err:  # anything the engine did not foresee: a message, never a traceback
        return None, None, {"pattern": f"This geometry could not be built "
                                       f"({type(err).__name__}); try a smaller shape."}


def spec_key(spec: dict) -> str:
    """A canonical text form of a geometry spec (or form), for cache keys."""
    return json.dumps(spec, sort_keys=True)


# ---- the geometry's maps ----------------------------------------------------------------------

def _maps_need(geom: Geometry) -> tuple[int, str]:
    M, K = geom.weight_shape
    return geometry_maps_bytes((M, K)), f"labelling every weight of W {M} × {K}"


def require_maps_memory(geom: Geometry) -> None:
    """Refuse, before anything is allocated, a geometry whose maps and facts would not fit in
    the memory free now, less what other sessions' work in progress holds (a typed shape of
    2**28 weights needs ~10 GiB): ``obsviz.estimate``'s estimate and check.

    Raises:
        ArgumentError: ``weight_shape``, with what is needed and what is free.
    """
    need, what = _maps_need(geom)
    require_memory(need, "cpu", what=what, argument="weight_shape")


# Maps hold (M, K) int tensors (hundreds of MB for a 4096 x 11008 layer): cache_resource keeps
# them without the pickle round trip cache_data would make on every rerun; figures only read.
# The key is the geometry's content; ``_geom`` (not hashed) is the object it describes.
@st.cache_resource(max_entries=2, show_spinner="Labelling every weight with its block and scope…")
def geometry_maps(key: str, _geom: Geometry) -> GeometryMaps:
    """Block, scope and position maps of a geometry, computed once per geometry, with their
    memory (and the facts', computed next) held from other sessions while they are built."""
    need, what = _maps_need(_geom)
    with reserve_memory(need, "cpu", what=what, argument="weight_shape"):
        maps = compute_maps(_geom)
        layout_shape(_geom)   # the facts' part, cached on the geometry
        return maps


def maps_of(geom: Geometry) -> GeometryMaps:
    """The cached maps of ``geom`` (the budget and the name do not change them). Refused (the
    page stops with the reason) when another session took the memory since the first check."""
    try:
        return geometry_maps(geom.key, geom)
    except ArgumentError as err:
        st.error(md(str(err)), icon="⚠️")
        st.stop()


@st.cache_resource(max_entries=24, show_spinner=False)
def _figure(kind: str, key: str, args: tuple, _geom: Geometry):
    """A Geometry-page figure, built once per geometry and arguments and shared read-only (a
    preset switch back and forth redraws nothing on the server)."""
    maps = maps_of(_geom)
    if kind == "layout":
        r0, c0, rows, cols, nnz = args
        return layout_figure(layout_window(maps, r0, c0, rows, cols), nnz)
    if kind == "columns":
        return column_map_figure(maps, *args)
    return row_coupling_figure(maps, *args)


def geometry_figure(kind: str, geom: Geometry, *args):
    """``kind`` = ``"layout"`` (``r0, c0, rows, cols, nnz``), ``"columns"`` (the column map,
    ``r0, c0, n``) or ``"rows"`` (the row coupling, ``c0, r0, n``) of ``geom``."""
    return _figure(kind, f"{geom.key} · {geom.name}", tuple(args), geom)


@st.cache_data(max_entries=16, show_spinner="Drawing the PNG…")
def _layout_png(key: str, window: tuple[int, int, int, int], nnz: int | None,
                _geom: Geometry) -> bytes:
    return layout_png(layout_window(maps_of(_geom), *window), nnz)


def layout_png_bytes(geom: Geometry, r0: int, c0: int, rows: int, cols: int,
                     nnz: int | None) -> bytes:
    """The PNG of the layout window ``rows x cols`` at ``(r0, c0)``, drawn once per window."""
    return _layout_png(geom.key, (r0, c0, rows, cols), nnz, geom)


@st.cache_data(max_entries=4, show_spinner=False)
def _pooled_layer(digest: str, _layer: L.Layer) -> tuple:
    return pool2d(_layer.weight.abs(), 12_000, reduce="max")


def pooled_layer() -> tuple | None:
    """``|W|`` of the current layer max-pooled to a few thousand cells (``pool2d``'s triple)."""
    active = current_layer()
    return None if active is None else _pooled_layer(active.digest, active.layer)
