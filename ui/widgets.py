"""Widgets bound to session state: one convention for every page.

A widget's own key (``_g_pattern``, ``_p_nnz``, …) is Streamlit's and is forgotten when its page
is left; the value the app uses lives in a form (a dataclass from ``ui.forms``, or a dict) or a
plain session key, and each script run primes the widget from it. The widget writes back in its
``on_change`` callback, so the value is already current when the script starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st
import torch


def device_options() -> list[str]:
    """Devices pruning can run on here: ``cuda`` first when available, always ``cpu``."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


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


def _get(form: Any, field: str) -> Any:
    return form[field] if isinstance(form, dict) else getattr(form, field)


def _set(form: Any, field: str, value: Any) -> None:
    if isinstance(form, dict):
        form[field] = value
    else:
        setattr(form, field, value)


def form_widgets(form_key: str | Callable[[], Any], prefix: str,
                 after: Callable[[str], None] | None = None
                 ) -> tuple[Callable[[str], str], Callable[[str], None]]:
    """``(bind, changed)`` for widgets that edit the form ``st.session_state[form_key]`` (a
    ``ui.forms`` dataclass, or a dict; or the object ``form_key()`` returns, e.g. a dict inside
    a form) field by field:

    - ``bind(field)``: the widget key of ``field`` (``prefix + field``), primed with the form's
      value; pass it as ``key=``.
    - ``changed(field)``: the ``on_change`` callback (``args=(field,)``) that writes the
      widget's value into the form, then calls ``after(field)`` when given.
    """
    ss = st.session_state

    def form() -> Any:
        return form_key() if callable(form_key) else ss[form_key]

    def bind(field: str) -> str:
        key = f"{prefix}{field}"
        ss[key] = _get(form(), field)
        return key

    def changed(field: str) -> None:
        _set(form(), field, ss[f"{prefix}{field}"])
        if after is not None:
            after(field)

    return bind, changed


#: The red of a field in error (Streamlit's own error red), distinct from the focus ring, which
#: the theme's ``primaryColor`` (a blue, .streamlit/config.toml) draws.
ERROR_RED = "#ff4b4b"


#: The element that draws a widget's border (text input, number input, selectbox).
_BOXES = ('[data-testid="stTextInputRootElement"]', '[data-testid="stNumberInputContainer"]',
          '[data-baseweb="select"] > div', '[data-baseweb="input"]')


def mark_in_error(prefix: str, fields: list[str]) -> None:
    """Draw a red ring around the widgets of ``fields`` (keys ``prefix + field``), and only those:
    a field in error is marked, a focused one is not."""
    if not fields:
        return
    boxes = [f".st-key-{prefix}{field} {box}" for field in fields if field.isidentifier()
             for box in _BOXES]
    st.html(f"<style>{', '.join(boxes)} {{ border-color: {ERROR_RED} !important; "
            f"box-shadow: 0 0 0 1px {ERROR_RED}; }}</style>")


def limited_uploader(label: str, limit: int, key: str, **kwargs: Any):
    """``st.file_uploader`` that refuses files over ``limit`` bytes and says the limit once, in
    the label. Streamlit writes its own limit under the button in its units (512 MiB shows as
    "1GB" in a browser that counts 1000 bytes a kB): that line is hidden."""
    from obsviz.estimate import format_bytes

    st.html(f"<style>.st-key-{key} [data-testid='stFileUploaderDropzoneInstructions'] "
            "{ display: none; }</style>")
    return st.file_uploader(f"{label} (at most {format_bytes(limit)})", key=key,
                            max_upload_size=max(1, -(-limit // 2**20)), **kwargs)
