"""User strings made safe to show: control characters as visible escapes.

A name from a config or a command line may hold bidirectional controls, which reorder
the text around them so that what a report shows is not what is stored. Every renderer
(HTML, Markdown, figures) shows them as escapes such as ``\\u202e``.
"""

from __future__ import annotations

#: Bidirectional control characters (embeddings, overrides, isolates, marks): in a name
#: they can reorder the text around them, so that what is shown is not what is stored.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                          "\u200e\u200f\u061c")


def visible_controls(text: object) -> str:
    """``text`` with bidirectional controls and other control characters (except tab and
    newline) shown as visible escapes such as ``\\u202e``, so they cannot reorder or hide
    the text around them.

    Args:
        text: any value; it is turned into a string first.

    Returns:
        The string, every such character replaced by its ``\\uXXXX`` escape.

    Example:
        >>> visible_controls("abc\\u202edef")
        'abc\\\\u202edef'
    """
    text = str(text)
    return "".join(f"\\u{ord(c):04x}" if c in BIDI_CONTROLS or _is_control(c) else c
                   for c in text)


def _is_control(c: str) -> bool:
    code = ord(c)
    return (code < 0x20 and c not in "\t\n\r") or 0x7f <= code < 0xa0
