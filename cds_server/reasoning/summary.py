"""Patient-view summary rule.

When: the chart is opened (patient-view) and the patient has infusion orders in force
(active or on hold) for knowledge-base drugs, and for at least one of them the next dose
needs hospitalization, proximity or dose-specific observation, or the patient has a
reaction recorded to that drug or its class.
Then: one concise card listing, per drug, what the next dose needs and the known reactions.
Its indicator is ``info`` for what the next dose needs, and for a reaction on record the
indicator the prior-reaction rule gives the same order at order-sign (a documented anaphylaxis
to a planned carboplatin dose is ``critical`` on both). Nothing when nothing applies.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Citation, Finding, Indicator, RecognisedOrder, Situation
from cds_server.reasoning import monitoring
from cds_server.reasoning.dosing import IN_FORCE, fmt_qty, position, step_labels
from cds_server.reasoning.monitoring import applicable, dose_specific
from cds_server.reasoning.reactions import assess, describe, relevant_allergies
from cds_server.reasoning.regimens import institution_point

TOPIC = "patient-summary"


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """At most one summary finding (see module docstring)."""
    if situation.call.hook != "patient-view":
        return []
    planned: dict[str, RecognisedOrder] = {}
    for r in situation.history:
        if r.order.status in IN_FORCE and r.drug_id not in planned:
            planned[r.drug_id] = r
    lines: list[str] = []
    short: list[str] = []
    citations: list[Citation] = []
    unknowns: list[str] = []
    indicators: list[Indicator] = ["info"]
    for drug_id, recognised in sorted(planned.items()):
        drug = kb.drug(drug_id)
        pos = position(situation, recognised, kb)
        firm, _, undecided = applicable(drug.monitoring, pos)
        if kb.site is not None and kb.site.switched_off(monitoring.TOPIC, drug_id):
            firm, undecided = [], []  # the site switched this drug's monitoring rule off
        needs = [
            r
            for r in firm
            if r.kind in ("hospitalization", "proximity") or dose_specific(r) or r.duration
        ]
        labels = step_labels(drug, pos.steps or ())
        which = f" ({' or '.join(labels)})" if labels else ""
        for req in needs:
            duration = f" {fmt_qty(req.duration)}" if req.duration else ""
            lines.append(f"- **{drug.display}** next dose{which}: {req.kind}{duration}. {req.text}")
            if req.site is not None:
                lines.append(institution_point(req.site, indent="  "))
            short.append(f"{drug.display} next dose needs {req.kind}{duration}")
            citations.extend(req.provenance.citations())
        if undecided:
            unknowns.append(f"which {drug.name} dose is next")
        reaction = assess(situation, recognised, kb)
        if reaction is not None:
            indicators.append(reaction.indicator)
            citations.extend(reaction.citations)
        for match in relevant_allergies(situation, recognised, kb):
            severity = "severe " if match.severe else ""
            lines.append(f"- **{drug.display}** (planned): {describe(match)}")
            critical = reaction is not None and reaction.indicator == "critical"
            if critical and match.severe and match.relation == "same-agent":
                lines.append(
                    f"  - Do not give {drug.name} by standard infusion: discuss rapid "
                    "desensitization with allergy/immunology before the next dose."
                )
            short.append(f"{drug.display}: {severity}reaction on record")
        unknowns.extend(u for u in pos.unknowns if u not in unknowns)
    if not lines:
        return []
    return [
        Finding(
            topic=TOPIC,
            drug_id="patient",
            drug_name="Planned infusions",
            indicator=min(indicators, key=("critical", "warning", "info").index),
            headline="; ".join(dict.fromkeys(short)) or "upcoming infusion risks",
            points=tuple(lines),
            citations=tuple(citations),
            unknowns=tuple(unknowns),
        )
    ]
