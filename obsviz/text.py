"""Text from files, stores and users, made inert before it is shown anywhere.

A layer name is data: it may hold terminal escapes (``\\x1b]0;title\\x07``), a bidirectional
override (U+202E, which reverses the text that follows it on a page), zero-width or line-breaking
characters. ``visible`` writes every character that would not show as itself as its Python escape,
so the name reads as what it is. The CLI (``obsviz.cli.terminal_safe``), the figures
(``obsviz.figures.common.plot_text``) and the app (``ui.text.md``) all start from it.
"""

from __future__ import annotations

__all__ = ["visible"]


def visible(text: object) -> str:
    """``text`` with every non-printable character (control characters and ANSI/OSC escapes,
    bidirectional and other format characters such as U+202E, line and paragraph separators,
    spaces other than ' ') written as its Python escape (``\\x1b``, ``\\u202e``); idempotent."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
