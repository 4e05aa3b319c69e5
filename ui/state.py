"""The app's shared state: one place that says what lives in ``st.session_state`` and the URL.

Session-state keys (every page may read them; only the pages named write them):

- ``geometry``: ``dict`` from ``Geometry.to_dict()`` with ``nnz`` set to the chosen budget, or
  ``None`` while the form is invalid. Written by the Geometry page; read with
  ``current_geometry()``.
- ``nnz``: ``int``, blocks kept per scope (same as ``geometry["nnz"]``).
- ``layer_name``: ``str | None``, the sample layer in use (``None`` when none can be loaded).
  Written by the sidebar; read with ``loaded_layer()``.
- ``device``: ``"cuda"`` or ``"cpu"``, the device pruning runs on. Written by the sidebar.
- ``geometry_form``: ``dict``, the Geometry page's inputs as typed (see ``ui.forms``), kept so
  that leaving and re-opening the page restores them.
- ``prune_form``: ``dict``, the Prune page's inputs (geometry source, preset, nnz, damping,
  methods and their options, row sample), kept like ``geometry_form``. Written by the Prune page.
- ``layer_source``, ``user_layer``: where the Prune page's layer comes from and the last
  uploaded or checkpoint-built layer (see ``ui.layers``).
- ``results``, ``last_run``, ``run_pending``: finished pruning results keyed by the content of
  their inputs, the latest run's per-method outcome, the methods a stopped run left (see
  ``ui.runs``, ``ui.runner``). ``compare_pick``: the results the Compare page shows.
- ``learn_setup``: ``dict`` of the Learn page's choices: ``source`` (``"toy"`` or the sidebar's
  layer name), ``k`` (first columns used), ``pattern`` (preset), ``row``, ``damp``. Written by
  the Learn page.
- ``learn_step``: ``int``, scopes of the lesson's row decided so far (0 … the row's scope
  count); ``learn_weights``: ``list[float]``, that row's weights after those steps. Written by
  the Learn page (its buttons "Step forward", "Step back", "Reset").

The URL: the Geometry page mirrors ``geometry_form`` into ``st.query_params`` (``pattern``,
``weight``, ``layer``, ``nnz``, free-form ``view``/``stride``/``block``/``scope``, ``n``/``m``
for N:M, the window ``r0``/``c0``), so a copied link reproduces the geometry. A session that
starts from such a link reads them once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import streamlit as st
import torch

from obsviz import Geometry, layers
from obsviz.figures.common import pool2d
from obsviz.figures.geometry import GeometryMaps, compute_maps, layout_png, layout_window

from ui.forms import PATTERNS, WINDOWS, build_geometry, default_form

FALLBACK_SHAPE = (384, 384)

#: Form fields that travel in the URL, and how each is read back.
_QUERY_FIELDS: dict[str, type] = {
    "pattern": str, "weight": str, "nnz": int, "n": int, "m": int, "view": str, "stride": str,
    "block": str, "scope": str, "r0": int, "c0": int, "win": str,
}


# ---- device and layer -------------------------------------------------------------------------


def device_options() -> list[str]:
    """Devices pruning can run on here: ``cuda`` first when available, always ``cpu``."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def sample_layer_names() -> list[str]:
    try:
        return list(layers.sample_layer_names())
    except Exception:  # a broken sample set must not take the app down
        return []


@st.cache_resource(show_spinner="Loading the sample layer…", max_entries=4)
def _load_layer(name: str) -> layers.Layer:
    return layers.load_sample_layer(name)


def sample_layer(name: str) -> layers.Layer:
    """The shipped sample layer ``name``, loaded once and shared by every page and session
    (read-only: never modify its tensors). The one way the app loads a sample.

    Raises:
        ValueError: ``name`` is not a sample layer; OSError: its file cannot be read.
    """
    return _load_layer(name)


def loaded_layer() -> layers.Layer | None:
    """The sample layer in use (``.name``, ``.weight (M, K)``, ``.hessian (K, K)``, …) or
    ``None`` when no layer can be loaded."""
    name = st.session_state.get("layer_name")
    if not name:
        return None
    try:
        return sample_layer(name)
    except Exception as err:  # shown once in the sidebar; pages fall back to a free shape
        st.session_state["layer_error"] = f"{name}: {err}"
        return None


def layer_shape() -> tuple[int, int] | None:
    layer = loaded_layer()
    return None if layer is None else (int(layer.weight.shape[0]), int(layer.weight.shape[1]))


def init_state() -> None:
    """Defaults for the shared keys (idempotent; every page calls it first)."""
    ss = st.session_state
    if "device" not in ss or ss["device"] not in device_options():
        ss["device"] = device_options()[0]
    if "layer_name" not in ss:
        names = sample_layer_names()
        wanted = st.query_params.get("layer")
        default = layers.DEFAULT_SAMPLE
        ss["layer_name"] = (wanted if wanted in names
                            else default if default in names
                            else names[0] if names else None)


def sidebar() -> None:
    """The device and the loaded layer, shown (and chosen) on every page."""
    init_state()
    ss = st.session_state
    with st.sidebar:
        st.markdown("#### Running on")
        device_select("_w_device", help="Pruning runs here. CUDA is offered when a GPU is "
                                        "visible.")
        names = sample_layer_names()
        if names:
            ss["_w_layer"] = ss["layer_name"] if ss["layer_name"] in names else names[0]
            st.selectbox("Layer", names, key="_w_layer", on_change=copy_widget,
                         args=("_w_layer", "layer_name"),
                         help="A real layer shipped with obsviz (weight and Hessian).")
        layer = loaded_layer()
        if layer is not None:
            M, K = layer.weight.shape
            st.caption(f"**{layer.name}** · W {M} × {K} · {getattr(layer, 'nsamples', '?')} "
                       f"calibration samples")
        else:
            st.caption("No layer loaded: pages use a shape you choose.")
            if ss.get("layer_error"):
                st.caption(f"Could not load {ss['layer_error']}")
        geom = current_geometry()
        if geom is not None:
            st.markdown("#### Geometry")
            st.caption(f"**{geom.name or 'free-form'}**, nnz = {ss.get('nnz')} · "
                       f"{geom.describe()}")


# ---- widgets bound to session state ------------------------------------------------------------


def copy_widget(widget_key: str, target: str) -> None:
    """An ``on_change`` callback: the widget's value into session state under ``target``
    (a cleared widget, e.g. a segmented control, leaves ``target`` as it was)."""
    if st.session_state[widget_key] is not None:
        st.session_state[target] = st.session_state[widget_key]


def device_select(key: str, where: Any = st, help: str | None = None) -> None:
    """The device selectbox (widget key ``key``, drawn in ``where``: ``st``, a column, …),
    showing ``device`` and writing the choice back to it."""
    st.session_state[key] = st.session_state["device"]
    where.selectbox("Device", device_options(), key=key, on_change=copy_widget,
                    args=(key, "device"), help=help)


def form_widgets(form_key: str, prefix: str, after: Callable[[str], None] | None = None
                 ) -> tuple[Callable[[str], str], Callable[[str], None]]:
    """``(bind, changed)`` for widgets that edit the form ``st.session_state[form_key]`` (a
    dict) field by field. Widgets forget their state when their page is left; the form
    remembers, so each run primes the widgets from it:

    - ``bind(field)``: the widget key of ``field`` (``prefix + field``), primed with the form's
      value; pass it as ``key=``.
    - ``changed(field)``: the ``on_change`` callback (``args=(field,)``) that writes the
      widget's value into the form, then calls ``after(field)`` when given.
    """
    ss = st.session_state

    def bind(field: str) -> str:
        key = f"{prefix}{field}"
        ss[key] = ss[form_key][field]
        return key

    def changed(field: str) -> None:
        ss[form_key][field] = ss[f"{prefix}{field}"]
        if after is not None:
            after(field)

    return bind, changed


# ---- geometry ---------------------------------------------------------------------------------


def form_from_query(base: dict) -> dict:
    """``base`` with every form field the URL carries replaced by the URL's value."""
    form = dict(base)
    params = st.query_params
    for key, kind in _QUERY_FIELDS.items():
        if key in params:
            try:
                form[key] = kind(params[key])
            except ValueError:
                continue
    if form["pattern"] not in PATTERNS:
        form["pattern"] = base["pattern"]
    if form["win"] not in WINDOWS:
        form["win"] = base["win"]
    if "weight" in params:
        form["use_layer"] = "layer" in params
    return form


def form_to_query(form: dict) -> None:
    """Mirror the form into the URL (only the fields the chosen pattern uses)."""
    wanted: dict[str, str] = {"pattern": form["pattern"], "weight": form["weight"]}
    if form["pattern"] == "N:M":
        wanted |= {"n": str(form["n"]), "m": str(form["m"])}
    else:
        wanted["nnz"] = str(form["nnz"])
    if form["pattern"] == "free-form":
        wanted |= {k: form[k] for k in ("view", "stride", "block", "scope")}
    if form.get("use_layer") and st.session_state.get("layer_name"):
        wanted["layer"] = st.session_state["layer_name"]
    if form.get("r0"):
        wanted["r0"] = str(form["r0"])
    if form.get("c0"):
        wanted["c0"] = str(form["c0"])
    if form.get("win") != default_form()["win"]:
        wanted["win"] = form["win"]
    if dict(st.query_params) != wanted:
        st.query_params.from_dict(wanted)


def geometry_form() -> dict:
    """The Geometry page's inputs: from this session, else from the URL, else the defaults."""
    ss = st.session_state
    if "geometry_form" not in ss:
        shape = layer_shape() or FALLBACK_SHAPE
        ss["geometry_form"] = form_from_query(default_form(shape))
    return ss["geometry_form"]


def store_geometry(geom: Geometry | None, nnz: int | None) -> None:
    """Publish the page's geometry to the other pages (``None`` while the form is invalid)."""
    ss = st.session_state
    if geom is None:
        ss["geometry"] = None
        return
    spec = geom.to_dict()
    spec["nnz"] = nnz
    ss["geometry"], ss["nnz"] = spec, nnz


def resolve_geometry() -> tuple[Geometry | None, int | None, dict[str, str]]:
    """The form -> ``(geometry, nnz, errors)`` (see ``ui.forms.build_geometry``), published under
    ``geometry``/``nnz``. Built once per distinct form: building checks the view over all of W,
    which takes a while on big layers."""
    form = {k: v for k, v in geometry_form().items() if k not in ("r0", "c0", "win")}
    shape = layer_shape()
    geom, nnz, errors = _resolve(spec_key(form), shape)
    store_geometry(geom, nnz)
    return geom, nnz, errors


@st.cache_resource(max_entries=16, show_spinner=False)
def _resolve(form_key: str, layer_shape: tuple[int, int] | None
             ) -> tuple[Geometry | None, int | None, dict[str, str]]:
    try:
        return build_geometry(json.loads(form_key), layer_shape)
    except Exception as err:  # anything the engine did not foresee: a message, never a traceback
        return None, None, {"pattern": f"This geometry could not be built "
                                       f"({type(err).__name__}: {err}); try a smaller shape."}


def current_geometry() -> Geometry | None:
    """The geometry the user chose (on the Geometry page, or in the link they opened), with
    ``.nnz`` the chosen budget; ``None`` while the form is invalid. Treat it as read-only: it is
    shared by every page and cached."""
    return resolve_geometry()[0]


def spec_key(spec: dict) -> str:
    """A canonical text form of a geometry spec (or form), for cache keys."""
    return json.dumps(spec, sort_keys=True)


# Maps hold (M, K) int tensors (hundreds of MB for a 4096 x 11008 layer): cache_resource keeps
# them without the pickle round trip cache_data would make on every rerun; figures only read.
# The key is the geometry's content; ``_geom`` (not hashed) is the object it describes.
@st.cache_resource(max_entries=2, show_spinner="Labelling every weight with its block and scope…")
def geometry_maps(key: str, _geom: Geometry) -> GeometryMaps:
    """Block, scope and position maps of a geometry, computed once per geometry."""
    return compute_maps(_geom)


def maps_of(geom: Geometry) -> GeometryMaps:
    """The cached maps of ``geom`` (the budget and the name do not change them)."""
    return geometry_maps(geom.key, geom)


@st.cache_data(max_entries=16, show_spinner="Drawing the PNG…")
def _layout_png(key: str, window: tuple[int, int, int, int], nnz: int | None,
                _geom: Geometry) -> bytes:
    return layout_png(layout_window(maps_of(_geom), *window), nnz)


def layout_png_bytes(geom: Geometry, r0: int, c0: int, rows: int, cols: int,
                     nnz: int | None) -> bytes:
    """The PNG of the layout window ``rows x cols`` at ``(r0, c0)``, drawn once per window."""
    return _layout_png(geom.key, (r0, c0, rows, cols), nnz, geom)


@st.cache_data(max_entries=4, show_spinner=False)
def _pooled_layer(name: str) -> tuple:
    return pool2d(sample_layer(name).weight.abs(), 12_000, reduce="max")


def pooled_layer() -> tuple | None:
    """``|W|`` of the loaded layer max-pooled to a few thousand cells (``pool2d``'s triple)."""
    name = st.session_state.get("layer_name")
    return None if not name or loaded_layer() is None else _pooled_layer(name)
