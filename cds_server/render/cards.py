"""Turns Findings into CDS Hooks 2.0 card objects (JSON-ready dicts)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Finding


def render_cards(
    findings: Sequence[Finding], kb: KnowledgeBase, *, new_uuid: Callable[[], str]
) -> list[dict[str, Any]]:
    """One card per finding, sorted by indicator then drug."""
    return []
