"""GitHub-flavoured Markdown helpers for card ``detail``: tables, Markdown escaping, prose clean-up.

Text is escaped as Markdown, never as HTML: a plain-text client shows "< 30 kg" and
"Castells & Solensky", not "&lt; 30 kg" or "&amp;". Only what Markdown would turn into
markup an author did not write is escaped: a ``<`` that would open an HTML tag or an
autolink, an ``&`` that would start a character reference, and ``](`` that would close a
link. The emphasis and bullets the rules write stay Markdown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from cds_server.model import SEMANTIC_TAG

# "<" before a letter, "/", "!" or "?" opens raw HTML or an autolink in CommonMark.
_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
# "&" before "#" or a name and ";" is a character reference ("&amp;", "&#60;").
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")
_LINK_CLOSE = re.compile(r"\]\(")
_EMPTY_PARENS = re.compile(r"\s*\(\s*\)")
# Brackets inside brackets ("(first treatment dose (1.5 mg/kg, day 7))") read as one level.
_NESTED = re.compile(r"\(([^()]*?)\s*\(([^()]*)\)([^()]*)\)")
_SPACES = re.compile(r"(?<=\S)[ \t]{2,}")  # inside a line: an indent stays


def escape(text: str) -> str:
    """Neutralise raw HTML, character references and link syntax as Markdown does."""
    if "<" not in text and "&" not in text and "](" not in text:
        return text  # the common case (numbers, plain words): no regular expression run
    text = _TAG_OPEN.sub(r"\\<", text)
    text = _ENTITY.sub(r"\\&", text)
    return _LINK_CLOSE.sub(r"\\](", text)


def prose(text: str) -> str:
    """Coded displays cleaned for reading: semantic tags and empty parentheses removed, and
    brackets inside brackets written as one level."""
    if "(" not in text and "  " not in text and "\t" not in text:
        return text  # no parenthesis and no run of spaces: nothing to clean
    text = SEMANTIC_TAG.sub("", text)
    text = _EMPTY_PARENS.sub("", text)
    while (flat := _NESTED.sub(r"(\1 — \2\3)", text)) != text:
        text = flat
    return _SPACES.sub(" ", text)


def cell(text: str) -> str:
    """A table cell: escaped, with pipes and line breaks neutralised."""
    return escape(prose(text)).replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[Sequence[str]]) -> str:
    """A GFM table from a header row plus data rows ("" when there are no rows)."""
    if not rows:
        return ""
    header, *body = rows
    lines = [
        "| " + " | ".join(cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines.extend("| " + " | ".join(cell(c) for c in row) + " |" for row in body)
    return "\n".join(lines)
