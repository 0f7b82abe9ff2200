"""User strings as report text: escaped for Markdown and HTML, controls made visible.

A run's names and texts (experiment, models, attacks, options, methods, the description,
references' claims and sources) come from a config or a ``results.json`` a user may have
edited. In the reports they are shown as written and can never become markup:

- HTML: Jinja2's autoescaping, after :func:`html_text`;
- Markdown: :func:`md_text`, applied to every value a ``README.md`` template prints.

Both first pass the string through :func:`robustkit.core.text.visible_controls`
(the helper the figures use too): bidirectional overrides, embeddings, isolates and marks
(U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and other control characters are
shown as visible escapes such as ``\\u202e``, so they cannot reorder the text around them.

Example:
    >>> md_text("[click](http://evil) *now*")
    '\\\\[click\\\\](http://evil) \\\\*now\\\\*'
"""

from __future__ import annotations

import html
import re
from typing import Any

from markupsafe import Markup

from robustkit.core.text import visible_controls

__all__ = ["MarkdownText", "html_text", "md_finalize", "md_text", "visible_controls"]

# Characters that start or end Markdown constructs anywhere in a line: code spans,
# emphasis and strong (``*``), strikethrough (``~``), links and images (``[``, ``]``),
# tables (``|``), headings (``#``), math on GitHub (``$``), and the backslash itself.
_ANYWHERE = re.compile(r"([\\`*~\[\]|#$])")
# ``_`` opens or closes emphasis only next to a non-alphanumeric character (CommonMark's
# flanking rules); between two letters or digits (``integrated_gradients``) it is inert
# and left alone, so names stay readable in the raw file.
_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
# Constructs recognised only at the start of a line, each a marker followed by a space or
# the end: lists (``- a``, ``+ a``, ``1. a``, ``1) a``), thematic breaks and setext
# underlines (``---``, ``===``), block quotes (``>``, already ``&gt;``). ``-0.5`` or
# ``90.0`` is no marker and stays as it is. An ordered list's marker is escaped after its
# digits (``1\.``): a backslash before a digit would be shown.
_LINE_START = re.compile(r"^([-+=])(?=[\s=+-]|$)")
_ORDERED = re.compile(r"^(\d{1,9})([.)])(?=\s|$)")


class MarkdownText(str):
    """A string already escaped for Markdown; :func:`md_text` returns it unchanged."""


def md_text(value: Any) -> MarkdownText:
    """``value`` as inert Markdown text, safe inline and in a table cell.

    Newlines become spaces (a name cannot start a heading, a list or a new table row);
    ``&``, ``<`` and ``>`` become HTML entities (Markdown viewers render raw HTML);
    Markdown's punctuation is backslash-escaped (links, images, emphasis, code, headings,
    tables); a leading list or quote marker is escaped; controls are made visible.

    Args:
        value: any value; it is turned into a string first.

    Returns:
        The escaped text, a :class:`MarkdownText` (escaping it again changes nothing).

    Example:
        >>> md_text("# Title | a_b _c_")
        '\\\\# Title \\\\| a_b \\\\_c\\\\_'
    """
    if isinstance(value, MarkdownText):
        return value
    text = visible_controls(value)
    text = " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).lstrip()
    text = html.escape(text, quote=False)
    text = _ANYWHERE.sub(r"\\\1", text)
    text = _UNDERSCORE.sub(r"\\_", text)
    text = _LINE_START.sub(r"\\\1", text)
    text = _ORDERED.sub(r"\1\\\2", text)
    return MarkdownText(text)


def md_finalize(value: Any) -> Any:
    """Jinja2 ``finalize`` for Markdown templates: every string printed is :func:`md_text`.

    Numbers are printed as they are; Markdown a template means (``**bold**``, tables,
    ``![figure](path)``) is template text, never a value.
    """
    return md_text(value) if isinstance(value, str) else value


def html_text(value: Any) -> Any:
    """Jinja2 ``finalize`` for HTML templates: controls made visible; autoescaping then
    turns ``<``, ``>``, ``&`` and quotes into entities. Markup (``tojson``'s output,
    already escaped, non-ASCII as ``\\u`` escapes) is left as it is."""
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible_controls(value)
    return value
