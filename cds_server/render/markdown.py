"""GitHub-flavoured Markdown helpers for card ``detail``: tables and escaping, never raw HTML."""

from __future__ import annotations

from collections.abc import Sequence

_HTML = str.maketrans({"<": "&lt;", ">": "&gt;", "&": "&amp;"})


def escape(text: str) -> str:
    """Neutralise HTML in text (patient data and knowledge text alike); Markdown stays intact."""
    return text.translate(_HTML)


def cell(text: str) -> str:
    """A table cell: escaped, with pipes and line breaks neutralised."""
    return escape(text).replace("|", "\\|").replace("\n", " ")


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
