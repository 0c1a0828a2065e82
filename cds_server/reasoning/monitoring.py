"""Monitoring and admission rule.

When: a recognised draft order whose dose (step-up step from the dose in mg or mg/kg with
the latest weight, or infusion number from prior doses) carries a monitoring requirement in
the knowledge: hospitalization, proximity to the treating centre, or observation tied to
specific doses (first infusion, step-up doses).
Then: hospitalization or proximity → ``warning`` stating the requirement and its duration,
with a text-coded ServiceRequest suggestion (no verified code exists for these orders);
timed observation of particular doses → ``info``. Other observation (every infusion, or
without a duration) is a routine reminder left to the patient-view summary.
Conditional requirements ("if CRS occurred with step-up dose 1") are shown as notes.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase, MonitoringRequirement
from cds_server.model import (
    Finding,
    Indicator,
    ProposedServiceRequest,
    RecognisedOrder,
    Situation,
)
from cds_server.reasoning import wording
from cds_server.reasoning.dosing import (
    DosePosition,
    applies,
    fmt_qty,
    position,
    step_labels,
    unchecked_condition,
)
from cds_server.reasoning.orders import each_order
from cds_server.reasoning.regimens import institution_point

TOPIC = "monitoring-admission"
_INTERRUPTIVE = ("hospitalization", "proximity")


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Monitoring findings for every targeted order (see module docstring)."""
    return each_order(situation, kb, _for_order)


def dose_specific(req: MonitoringRequirement) -> bool:
    """True when a requirement is tied to particular doses rather than every infusion."""
    app = req.applies
    return bool(app.steps or app.infusion_numbers or app.infusions == "first")


def interrupts_signing(req: MonitoringRequirement) -> bool:
    """Shown at order entry: admission, proximity, or timed observation of particular doses."""
    return req.kind in _INTERRUPTIVE or (dose_specific(req) and req.duration is not None)


def applicable(
    requirements: tuple[MonitoringRequirement, ...], pos: DosePosition
) -> tuple[list[MonitoringRequirement], list[MonitoringRequirement], list[MonitoringRequirement]]:
    """Requirements that apply, conditional ones, and ones that cannot be decided."""
    firm, conditional, undecided = [], [], []
    for req in requirements:
        result = applies(req.applies, pos)
        if result.value is False:
            continue
        if result.conditional:
            conditional.append(req)
        elif result.value is None:
            undecided.append(req)
        else:
            firm.append(req)
    return firm, conditional, undecided


def describe_position(drug_steps: list[str], pos: DosePosition) -> str | None:
    """ "This dose is step-up dose 1 (2.5 mg, cycle 1 day 8)." or the infusion number."""
    if drug_steps:
        return f"This dose is {' or '.join(drug_steps)}."
    if pos.number == 1:
        return "This is the patient's first dose of this drug."
    if pos.number:
        return f"This is dose {pos.number} of this drug for the patient."
    return None


def _conditional_only(
    display: str,
    drug_id: str,
    recognised: RecognisedOrder,
    pos: DosePosition,
    conditional: list[MonitoringRequirement],
) -> Finding | None:
    """An info card for admission/proximity that applies only under a condition we cannot check."""
    relevant = [r for r in conditional if r.kind in _INTERRUPTIVE]
    if not relevant:
        return None
    return Finding(
        topic=TOPIC,
        drug_id=drug_id,
        drug_name=display,
        indicator="info",
        headline="check whether this dose needs admission or proximity monitoring",
        points=tuple(_if_point(r, pos) for r in relevant),
        citations=tuple(c for r in relevant for c in r.provenance.citations()),
        unknowns=(*pos.unknowns, "the condition that decides it (not in the FHIR data)"),
        order_ref=recognised.order.ref,
    )


def _if_point(req: MonitoringRequirement, pos: DosePosition) -> str:
    """ "- If <condition>: **Hospitalization (24 h)** — <text>"; without the "If" when the text
    states the condition itself."""
    duration = f" ({fmt_qty(req.duration)})" if req.duration else ""
    condition = unchecked_condition(req.applies, pos)
    lead = "- " if wording.states(req.text, condition) else f"- If {condition}: "
    return f"{lead}**{req.kind.capitalize()}{duration}** — {req.text}"


def _for_order(
    situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase
) -> Finding | None:
    drug = kb.drug(recognised.drug_id)
    if not drug.monitoring:
        return None
    pos = position(situation, recognised, kb)
    firm, conditional, undecided = applicable(drug.monitoring, pos)
    shown = [r for r in firm if interrupts_signing(r)]
    maybe = [r for r in undecided if r.kind in _INTERRUPTIVE]
    if not shown and not maybe:
        return _conditional_only(drug.display, drug.id, recognised, pos, conditional)
    indicator: Indicator = (
        "warning" if any(r.kind in _INTERRUPTIVE for r in shown + maybe) else "info"
    )
    labels = step_labels(drug, pos.steps or ())
    points = []
    where = describe_position(labels, pos)
    if where:
        points.append(f"- {where}")
    for req in shown:
        duration = f" ({fmt_qty(req.duration)})" if req.duration else ""
        points.append(f"- **{req.kind.capitalize()}{duration}:** {req.text}")
        if req.site is not None:  # the site's time, beside the label's text (still cited)
            points.append(institution_point(req.site))
    for req in maybe:
        points.append(f"- **If this is the dose concerned — {req.kind}:** {req.text}")
    for req in conditional:
        points.append(wording.conditional("Also", unchecked_condition(req.applies, pos), req.text))
    unknowns = list(pos.unknowns)
    if maybe:
        unknowns.append("which dose of the schedule this is")
    main = next((r for r in shown + maybe if r.kind in _INTERRUPTIVE), (shown + maybe)[0])
    duration = f" for {fmt_qty(main.duration)}" if main.duration else ""
    headline = {
        "hospitalization": f"hospitalize{duration} for this dose",
        "proximity": f"patient must stay near the treating centre{duration}",
    }.get(main.kind, f"{main.kind}{duration} required for this dose")
    actions = tuple(
        ProposedServiceRequest(
            label=f"Order {req.kind}{' ' + fmt_qty(req.duration) if req.duration else ''}"
            f" for {drug.name}",
            text=f"{drug.display}: {req.text}",
            recommended=req.kind in _INTERRUPTIVE or req.duration is not None,
            for_order_ref=recognised.order.ref,
            referral=req.kind,
        )
        for req in shown + maybe
    )
    citations = tuple(c for r in shown + maybe + conditional for c in r.provenance.citations())
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline=headline,
        points=tuple(points),
        citations=citations,
        actions=actions,
        unknowns=tuple(unknowns),
        order_ref=recognised.order.ref,
    )
