"""Which override reasons each finding offers: the topic's reasons that can be true here.

A reason of ``cards/policy.yaml`` with ``offered_when: prior-reaction-or-dose`` ("Patient has
tolerated this drug before") is offered only when the patient has a reaction to the drug or
its class on record, or an earlier dose of it: never on a first infusion without a reaction.
"""

from __future__ import annotations

from dataclasses import replace

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Finding, Situation
from cds_server.reasoning.dosing import prior_administrations

_IGNORED = frozenset({"entered-in-error", "refuted"})


def fit(findings: list[Finding], situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """``findings`` with ``override_reasons`` set to the reasons that fit each one."""
    return [replace(f, override_reasons=offered(f, situation, kb)) for f in findings]


def offered(finding: Finding, situation: Situation, kb: KnowledgeBase) -> tuple[str, ...]:
    """The finding's own reasons, else its topic's, less those whose condition is not met."""
    policy = kb.policy
    codes = finding.override_reasons or policy.topic(finding.topic).override_reasons
    return tuple(
        code for code in codes if _met(policy.reason(code).offered_when, finding, situation, kb)
    )


def _met(condition: str | None, finding: Finding, situation: Situation, kb: KnowledgeBase) -> bool:
    if condition is None:
        return True
    if condition == "prior-reaction-or-dose":
        return reaction_on_record(finding.drug_id, situation, kb) or bool(
            finding.drug_id in kb.drugs and prior_administrations(situation, finding.drug_id)
        )
    raise ValueError(f"unknown override-reason condition {condition!r}")


def reaction_on_record(drug_id: str, situation: Situation, kb: KnowledgeBase) -> bool:
    """A recognised allergy record (not entered in error or refuted) to the drug, its class,
    or another drug of its class."""
    if drug_id not in kb.drugs:
        return False
    classes = kb.classes_of(drug_id)
    related = {("drug", drug_id)}
    for cls in classes:
        related.add(("class", cls.id))
        related.update(("drug", member) for member in cls.members)
    return any(
        (ra.target_kind, ra.target_id) in related
        for ra in situation.allergies
        if ra.allergy.verification_status not in _IGNORED
    )
