"""Streamlit glue for the obsviz pages: shared state, the URL, cached calls into ``obsviz``.

The engine (``obsviz``) never imports Streamlit; this package is the only place that does,
besides the page scripts themselves.
"""
