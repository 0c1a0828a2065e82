"""Clinical rules: each module evaluates a ``Situation`` against the knowledge and returns Findings.

``RULES`` is the fixed evaluation order; adding a rule means adding one module and one line.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Finding, Situation
from cds_server.reasoning import (
    crs,
    monitoring,
    precautions,
    premedication,
    pretreatment,
    reactions,
    reasons,
    summary,
    titration,
    treatment_course,
    unchecked,
)

RULES = (
    reactions,
    treatment_course,
    precautions,
    premedication,
    titration,
    monitoring,
    pretreatment,
    crs,
    unchecked,
    summary,
)


def run(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Run every rule in ``RULES`` order and return their findings, less those of rules the
    knowledge's site switched off for a drug, after precedence, each with the override
    reasons that fit it (``reasons.fit``)."""
    findings: list[Finding] = []
    for rule in RULES:
        findings.extend(rule.evaluate(situation, kb))
    if kb.site is not None and kb.site.rules_off:
        # Rules a site switched off for a drug give no card (nothing logged, nothing counted).
        findings = [f for f in findings if not kb.site.switched_off(f.topic, f.drug_id)]
    return reasons.fit(apply_precedence(findings), situation, kb)


def apply_precedence(findings: list[Finding]) -> list[Finding]:
    """A critical "do not give by standard infusion" card silences standard-rate advice.

    Advising a standard titration rate for a drug the same response says must not be given
    by standard infusion would contradict it; the desensitization schedule replaces it.
    A reaction on record also silences informational course alerts for that drug ("the risk
    of a reaction rises from the 7th exposure"): the reaction card says more.
    """
    no_standard = {
        f.drug_id for f in findings if f.topic == reactions.TOPIC and f.indicator == "critical"
    }
    reacted = {f.drug_id for f in findings if f.topic == reactions.TOPIC}
    return [
        f
        for f in findings
        if not (f.topic == titration.TOPIC and f.drug_id in no_standard)
        and not (
            f.topic == treatment_course.TOPIC and f.indicator == "info" and f.drug_id in reacted
        )
    ]
