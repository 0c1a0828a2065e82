"""Clinical rules: each module evaluates a ``Situation`` against the knowledge and returns Findings.

``RULES`` is the fixed evaluation order; adding a rule means adding one module and one line.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Finding, Situation
from cds_server.reasoning import (
    crs,
    monitoring,
    premedication,
    pretreatment,
    reactions,
    summary,
    titration,
)

RULES = (reactions, premedication, titration, monitoring, pretreatment, crs, summary)


def run(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Run every rule in ``RULES`` order and return their findings."""
    findings: list[Finding] = []
    for rule in RULES:
        findings.extend(rule.evaluate(situation, kb))
    return findings
