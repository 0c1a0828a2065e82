"""CRS-readiness rule (T-cell engagers and CAR-T).

When: a recognised draft order for a drug with ``crs_risk`` whose knowledge requires
tocilizumab on hand for this dose, and no tocilizumab order is among the draft orders or the
orders in force.
Then: ``warning`` quoting the requirement, with a suggestion to order tocilizumab as needed
for CRS; when the latest weight is known the dose is computed from the knowledge's weight
bands (e.g. 8 mg/kg, capped), otherwise the dose is left to the prescriber and the card says
the weight was missing.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase, WeightBasedDosing
from cds_server.model import Finding, ProposedMedication, Quantity, RecognisedOrder, Situation
from cds_server.reasoning.dosing import applies, fmt_qty, position, step_labels
from cds_server.reasoning.orders import agent_ordered, each_order

TOPIC = "crs-readiness"
TOCILIZUMAB = "tocilizumab"


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """CRS-readiness findings (see module docstring)."""
    if TOCILIZUMAB not in kb.agents or agent_ordered(situation, TOCILIZUMAB):
        return []
    return each_order(situation, kb, _for_order)


def weight_based_dose(dosing: WeightBasedDosing, weight_kg: float) -> Quantity | None:
    """The dose for this weight from the weight bands, capped at the maximum dose."""
    for band in dosing.bands:
        if band.min_kg is not None and weight_kg < band.min_kg:
            continue
        if band.max_kg is not None and weight_kg >= band.max_kg:
            continue
        if band.dose.unit != "mg/kg":
            return band.dose
        mg = band.dose.value * weight_kg
        if dosing.max_dose is not None and mg > dosing.max_dose.value:
            mg = dosing.max_dose.value
        return Quantity(round(mg), "mg")
    return None


def _for_order(
    situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase
) -> Finding | None:
    drug = kb.drug(recognised.drug_id)
    if not drug.crs_risk or not drug.tocilizumab:
        return None
    pos = position(situation, recognised, kb)
    needed = [t for t in drug.tocilizumab if applies(t.applies, pos).value is not False]
    if not needed:
        return None
    agent = kb.agents[TOCILIZUMAB]
    dosing = agent.weight_based_dosing[0] if agent.weight_based_dosing else None
    weight = situation.record.weight
    unknowns = list(pos.unknowns)
    dose = None
    points = [f"- {t.text}" for t in needed]
    labels = step_labels(drug, pos.steps or ())
    if labels:
        points.insert(0, f"- This dose is {' or '.join(labels)}.")
    points.append("- No tocilizumab order was found in the draft orders or active orders.")
    if dosing is not None:
        bands = "; ".join(
            f"{fmt_qty(b.dose)}"
            + (f" if ≥ {b.min_kg:g} kg" if b.min_kg is not None else "")
            + (f" if < {b.max_kg:g} kg" if b.max_kg is not None else "")
            for b in dosing.bands
        )
        cap = f", maximum {fmt_qty(dosing.max_dose)}" if dosing.max_dose else ""
        points.append(
            f"- Tocilizumab for {dosing.indication}: {bands}{cap}. {dosing.text or ''}".rstrip()
        )
        if weight is not None:
            dose = weight_based_dose(dosing, weight.kg)
            if dose is not None:
                points.append(f"- For the latest weight ({weight.kg:.1f} kg): **{fmt_qty(dose)}**.")
        else:
            unknowns.append("the patient's weight (tocilizumab dose not computed)")
    citations = tuple(c for t in needed for c in t.provenance.citations())
    if dosing is not None:
        citations += dosing.provenance.citations()
    code = next(
        (
            e.coding
            for e in agent.identity.codes
            if e.tty == "IN" and e.provenance.evidence == "verified"
        ),
        None,
    )
    action = ProposedMedication(
        label=f"Order tocilizumab {fmt_qty(dose)} IV as needed for CRS"
        if dose
        else "Order tocilizumab as needed for CRS — dose by weight per institutional protocol",
        agent_name=agent.name,
        coding=code,
        dose_low=dose,
        dose_high=dose,
        route=dosing.route if dosing else None,
        timing_text=f"as needed for cytokine release syndrome after {drug.name}; "
        "available before the infusion",
        recommended=True,
        for_order_ref=recognised.order.ref,
        agent_id=TOCILIZUMAB,
    )
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator="warning",
        headline="tocilizumab must be available before this dose",
        points=tuple(points),
        citations=citations,
        actions=(action,),
        unknowns=tuple(unknowns),
        order_ref=recognised.order.ref,
    )
