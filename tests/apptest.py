"""Shared helpers of the AppTest suites: open the app at a page, read what it shows as text."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 180  # seconds per run; the first run imports torch and plotly

#: The app records every run in the run store: each app opened here gets a fresh one (or the one
#: it is given), never the user's.
STORE_DIR = Path(tempfile.mkdtemp(prefix="obsviz-apptest-"))


def fresh_store() -> Path:
    return Path(tempfile.mkdtemp(dir=STORE_DIR)) / "runs.sqlite"


def open_app(page: str | None = None, params: dict[str, str] | None = None,
             state: dict | None = None, store: Path | None = None):
    """The app opened (as a link would) with ``params`` in the URL and ``state`` in the session,
    then switched to ``page`` (``"pages/prune.py"``), recording runs in ``store`` (default: a
    fresh run store). The entrypoint runs first: it registers the pages (``st.navigation``) and
    draws the shared sidebar, as the server does."""
    os.environ["OBSVIZ_STORE"] = str(store or fresh_store())
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    for key, value in (params or {}).items():
        at.query_params[key] = value
    for key, value in (state or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, at.exception
    if page is not None:
        at.switch_page(page).run()
        assert not at.exception, at.exception
    return at


def run_methods(at, methods: list[str]):
    """On the Prune page: choose ``methods`` and press Run."""
    at.multiselect(key="_p_methods").set_value(methods).run()
    assert not at.exception, at.exception
    next(b for b in at.button if b.label == "Run").click().run()
    assert not at.exception, at.exception
    return at


_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")


def plain(markdown: str) -> str:
    """Markdown made by ``ui.text.md`` read back as the text a user sees."""
    return _ESCAPE.sub(r"\1", markdown).replace("\u2060", "")


def errors(at) -> list[str]:
    """Every error box on the page, as text."""
    return [plain(e.value) for e in at.error]
