"""Site overlay facts on cards: the institution line beside a label fact it changes, and a
site's local regimens (eligibility checked against the treatment course and the allergy
records, phase rates computed from the ordered dose).

A local regimen is offered only when every condition the engine can check holds; the
conditions it cannot check (a lab value, a diagnosis) are named for the prescriber to
confirm, never assumed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cds_server.knowledge.model import (
    Applicability,
    KnowledgeBase,
    LocalRegimen,
    SiteChange,
)
from cds_server.model import MINUTES_PER_HOUR, Quantity, RecognisedOrder, Situation
from cds_server.reasoning.dosing import DosePosition, applies, dose_in_mg, fmt_number, fmt_qty
from cds_server.reasoning.reactions import relevant_allergies


def institution_point(change: SiteChange, indent: str = "") -> str:
    """ "- **Institution protocol ONC-PRE-07 v3** (Pharmacy & Therapeutics Committee,
    approved 2026-09-14): cetirizine 10 mg intravenous instead of diphenhydramine."."""
    protocol = change.protocol
    return f"{indent}- **{protocol.name}** ({protocol.approval}): {change.statement}."


@dataclass(frozen=True)
class Assessment:
    """Whether a local regimen applies to one ordered dose, and why.

    ``eligible`` is True when every check holds, False when one fails, None when one could
    not be made. ``by_patient``: a check about this patient failed (a reaction on record),
    not merely the dose's place in the course.
    """

    regimen: LocalRegimen
    eligible: bool | None
    met: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    unknown: tuple[str, ...] = ()
    by_patient: bool = False


def assess(
    regimen: LocalRegimen,
    situation: Situation,
    recognised: RecognisedOrder,
    pos: DosePosition,
    kb: KnowledgeBase,
) -> Assessment:
    """Check a local regimen's eligibility against the course and the allergy records."""
    drug = kb.drug(recognised.drug_id)
    rules = regimen.eligibility
    met: list[str] = []
    failed: list[str] = []
    unknown: list[str] = []
    by_patient = False
    first = rules.from_infusion
    if first is not None:
        held = applies(Applicability(exposures_at_least=first), pos).value
        if held is None:
            unknown.append(f"whether this is infusion {first} or later (medication history)")
        elif held:
            which = f"this is infusion {pos.number}" if pos.number else "earlier doses on record"
            met.append(f"infusion {first} or later of {drug.name} ({which})")
        else:
            failed.append(f"this is infusion {pos.number} of {drug.name}")
    if rules.no_reaction_on_record:
        if not situation.record.allergies_known:
            unknown.append(f"the allergy records (a reaction to {drug.name})")
        elif any(m.relation == "same-agent" for m in relevant_allergies(situation, recognised, kb)):
            failed.append(f"a reaction to {drug.name} is on record")
            by_patient = True
        else:
            met.append(f"no reaction to {drug.name} in the allergy records")
    eligible = False if failed else (None if unknown else True)
    return Assessment(regimen, eligible, tuple(met), tuple(failed), tuple(unknown), by_patient)


@dataclass(frozen=True)
class Phase:
    """One phase of a local regimen for an ordered dose: the amount, over how long, the rate."""

    percent: float
    amount: Quantity
    minutes: float
    rate: Quantity


def phases_for(
    regimen: LocalRegimen, recognised: RecognisedOrder, situation: Situation
) -> tuple[Phase, ...] | None:
    """The regimen's phases for the ordered dose in mg (None without a dose in mg, or in
    mg/kg without a weight)."""
    weight = situation.record.weight.kg if situation.record.weight else None
    total = dose_in_mg(recognised.order.dose, weight)
    if total is None or not total > 0:
        return None
    return tuple(
        Phase(
            percent=p.percent,
            amount=Quantity(total * p.fraction, "mg"),
            minutes=p.minutes,
            rate=Quantity(total * p.fraction * MINUTES_PER_HOUR / p.minutes, "mg/h"),
        )
        for p in regimen.phases
    )


def phase_table(phases: tuple[Phase, ...]) -> tuple[tuple[str, ...], ...]:
    """Phase, share of the dose (amount), over, rate."""
    return (
        ("Phase", "Share of the dose", "Over", "Rate"),
        *(
            (
                str(i),
                f"{fmt_number(p.percent)}% ({fmt_qty(p.amount)})",
                f"{fmt_number(p.minutes)} min",
                fmt_qty(p.rate),
            )
            for i, p in enumerate(phases, start=1)
        ),
    )


def describe_phases(regimen: LocalRegimen, phases: tuple[Phase, ...] | None) -> str:
    """ "140 mg over 30 min (280 mg/h), then 560 mg over 60 min (560 mg/h)", or the shares."""
    if phases is None:
        return ", then ".join(
            f"{fmt_number(p.percent)}% of the dose over {fmt_number(p.minutes)} min"
            for p in regimen.phases
        )
    return ", then ".join(
        f"{fmt_qty(p.amount)} over {fmt_number(p.minutes)} min ({fmt_qty(p.rate)})" for p in phases
    )
