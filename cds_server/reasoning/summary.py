"""Patient-view summary rule.

When: the chart is opened (patient-view) and the patient has infusion orders in force
(active or on hold) for knowledge-base drugs, and for at least one of them the next dose
needs hospitalization, proximity or dose-specific observation, or the patient has a
reaction recorded to that drug or its class.
Then: one concise ``info`` card listing, per drug, what the next dose needs and the known
reactions. Nothing when nothing applies.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Citation, Finding, RecognisedOrder, Situation
from cds_server.reasoning.dosing import IN_FORCE, fmt_qty, position, step_labels
from cds_server.reasoning.monitoring import applicable, dose_specific
from cds_server.reasoning.reactions import describe, relevant_allergies

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
    for drug_id, recognised in sorted(planned.items()):
        drug = kb.drug(drug_id)
        pos = position(situation, recognised, kb)
        firm, _, undecided = applicable(drug.monitoring, pos)
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
            short.append(f"{drug.display} next dose needs {req.kind}{duration}")
            citations.extend(req.provenance.citations())
        if undecided:
            unknowns.append(f"which {drug.name} dose is next")
        for match in relevant_allergies(situation, recognised, kb):
            severity = "severe " if match.severe else ""
            lines.append(f"- **{drug.display}** (planned): {describe(match)}")
            if match.severe and match.relation == "same-agent" and not match.tolerated_since:
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
            indicator="info",
            headline="; ".join(dict.fromkeys(short)) or "upcoming infusion risks",
            points=tuple(lines),
            citations=tuple(citations),
            unknowns=tuple(unknowns),
        )
    ]
