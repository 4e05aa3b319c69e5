"""Text from users and files, made safe to show inside markdown.

Layer names, uploaded file names, geometry text and URL parameters are hostile: a name such as
``![x](http://host/u.png)`` would make every viewer's browser fetch that URL if it reached
``st.markdown``/``st.caption``/``st.error`` as markdown. Show such text with ``st.text``/
``st.code``, or pass it through ``md()`` before it goes into a markdown string (the one way the
app does it).
"""

from __future__ import annotations

import string

from obsviz.text import visible

#: Every ASCII punctuation character: CommonMark lets a backslash escape each of them.
_ESCAPED = {c: "\\" + c for c in string.punctuation}
#: Characters that start or end Streamlit's own markdown extensions (``:red[…]``,
#: ``:material/icon:``, emoji ``:smile:``, ``$math$``) and GFM autolinks (``www.``, ``http:``):
#: a backslash is not enough for them, so they get a word joiner (U+2060) next to them, which breaks
#: the pattern and shows nothing.
_BREAK = {":": ":\u2060", "$": "\\$\u2060", ".": "\u2060\\.", "@": "\\@\u2060"}
_FLAT = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
_TABLE = str.maketrans({**_ESCAPED, **_BREAK})


def md(value: object, limit: int = 300) -> str:
    """``value`` as text, safe inside markdown: every markdown special escaped, line breaks
    flattened, no link, image, HTML, colour, icon, emoji or math can come out of it, control and
    bidirectional characters shown as escapes (``obsviz.text.visible``: U+202E cannot reverse
    the text after it); cut to ``limit`` characters (a name is short; a page must stay
    readable)."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return visible(text.translate(_FLAT)).translate(_TABLE)
