"""Clinical rules: each module evaluates a ``Situation`` against the knowledge and returns Findings."""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Finding, Situation


def run(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Run every rule in a fixed order and return their findings."""
    return []
