"""How a rule words a note that holds only under a condition the service cannot check."""

from __future__ import annotations

import re

_SPACE = re.compile(r"\s+")


def _plain(text: str) -> str:
    return _SPACE.sub(" ", text).strip().rstrip(".").casefold()


def states(text: str, condition: str) -> bool:
    """The knowledge text already says its condition ("In rheumatoid arthritis, give …")."""
    cond = _plain(condition)
    return bool(cond) and cond in _plain(text)


def conditional(lead: str, condition: str, text: str) -> str:
    """A note line: "- Consider, if <condition>: <text>", or "- Consider: <text>" when the
    text states the condition itself (a knowledge text stands alone, so it often does; the
    card then says it once)."""
    if states(text, condition):
        return f"- {lead}: {text}"
    return f"- {lead}, if {condition}: {text}".rstrip()
