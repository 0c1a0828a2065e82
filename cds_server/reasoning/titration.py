"""Rate-titration rule.

When: a recognised draft order of a drug with a *titrated* rate schedule for this infusion
(first vs subsequent decided from the patient's history), and either the order's rate is
above the schedule's start rate (same unit), or the order carries no rate.
Then: rate above the start → ``warning`` with the schedule and an update suggestion that sets
the start rate; no rate → ``info`` with the schedule. An order already at or below the start
rate gets no card (already handled). Rapid schedules whose conditions the service cannot
check are mentioned as "may be eligible" notes only. Rates in different units (mg/h vs mL/h)
are converted through the bag concentration when dose and volume are known; otherwise the
card says the rate could not be compared.

A site's local regimen for the drug (a site overlay, e.g. a 90-minute rituximab infusion) is
checked for eligibility (``regimens.assess``): for an eligible patient, an order at or below
its first-phase rate gets an ``info`` card naming the conditions to confirm instead of a
warning, and a faster or rate-less order is offered it beside the label's schedule; for an
ineligible one the label's schedule applies as without the overlay, with a note when the
patient (a reaction on record) rules it out.
"""

from __future__ import annotations

from cds_server.knowledge.model import KnowledgeBase, RateSchedule
from cds_server.model import (
    MINUTES_PER_HOUR,
    Finding,
    Indicator,
    MedicationOrder,
    ProposedRateChange,
    Quantity,
    RecognisedOrder,
    Situation,
)
from cds_server.reasoning import regimens
from cds_server.reasoning.dosing import (
    DosePosition,
    applies,
    fmt_number,
    fmt_qty,
    position,
    unchecked_condition,
)
from cds_server.reasoning.orders import each_order

TOPIC = "rate-titration"


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Rate findings for every targeted order (see module docstring)."""
    return each_order(situation, kb, _for_order)


def schedule_table(schedule: RateSchedule) -> tuple[tuple[str, ...], ...]:
    """A compact table: start, increase, every, maximum."""
    increase = (
        fmt_qty(schedule.increment)
        if schedule.increment
        else " → ".join(fmt_number(s.value) for s in schedule.steps) + f" {schedule.steps[0].unit}"
        if schedule.steps
        else "—"
    )
    every = f"{fmt_number(schedule.every_min)} min" if schedule.every_min else "—"
    return (
        ("Start", "Increase", "Every", "Maximum"),
        (
            fmt_qty(schedule.start) if schedule.start else "—",
            increase,
            every,
            fmt_qty(schedule.max) if schedule.max else "—",
        ),
    )


def convert(q: Quantity, unit: str, mg_per_ml: float | None) -> Quantity | None:
    """A rate in another unit: per-minute ↔ per-hour, and mg ↔ mL through the concentration."""
    if q.unit == unit:
        return q
    try:
        amount_from, time_from = q.unit.split("/")
        amount_to, time_to = unit.split("/")
    except ValueError:
        return None
    value = q.value
    if (time_from, time_to) == ("min", "h"):
        value *= MINUTES_PER_HOUR
    elif (time_from, time_to) == ("h", "min"):
        value /= MINUTES_PER_HOUR
    elif time_from != time_to:
        return None
    if amount_from != amount_to:
        if mg_per_ml is None or not mg_per_ml > 0:
            return None
        if (amount_from, amount_to) == ("mL", "mg"):
            value *= mg_per_ml
        elif (amount_from, amount_to) == ("mg", "mL"):
            value /= mg_per_ml
        else:
            return None
    return Quantity(value, unit)


def concentration(order: MedicationOrder) -> float | None:
    """mg/mL of the bag, when the order gives a positive dose in mg and a positive volume."""
    if order.dose is None or order.volume is None or order.dose.unit != "mg":
        return None
    if not (order.dose.value > 0 and order.volume.value > 0):
        return None  # parsing leaves such values out; never divide by them
    return order.dose.value / order.volume.value


def _comparable_rate(order: MedicationOrder, unit: str) -> Quantity | None:
    """The order's rate expressed in the schedule's unit (None when it cannot be converted)."""
    if order.rate is None:
        return None
    return convert(order.rate, unit, concentration(order))


def _start_in_order_unit(order: MedicationOrder, schedule: RateSchedule) -> Quantity | None:
    """The schedule's start rate expressed in the order's own rate unit (for the update)."""
    assert schedule.start is not None
    if order.rate is None:
        return schedule.start
    return convert(schedule.start, order.rate.unit, concentration(order))


def choose(
    drug_schedules: tuple[RateSchedule, ...], pos: DosePosition
) -> tuple[list[RateSchedule], list[RateSchedule], bool]:
    """Schedules that apply to this dose, rapid/conditional ones, and whether any is undecided."""
    standard: list[RateSchedule] = []
    optional: list[RateSchedule] = []
    undecided = False
    for schedule in drug_schedules:
        result = applies(schedule.applies, pos)
        if result.value is False:
            continue
        if result.value is None:
            undecided = True
        if result.conditional or schedule.kind == "rapid":
            optional.append(schedule)
        else:
            standard.append(schedule)
    return standard, optional, undecided


def specificity(schedule: RateSchedule) -> tuple[bool, bool]:
    """Step-specific beats infusion-number-specific beats first/subsequent/all."""
    app = schedule.applies
    return (bool(app.steps), bool(app.infusion_numbers))


def most_specific(schedules: list[RateSchedule]) -> list[RateSchedule]:
    """Keep only the schedules of the highest specificity (e.g. obinutuzumab's C1D2 table)."""
    if not schedules:
        return schedules
    top = max(specificity(s) for s in schedules)
    return [s for s in schedules if specificity(s) == top]


def _for_order(
    situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase
) -> Finding | None:
    drug = kb.drug(recognised.drug_id)
    pos = position(situation, recognised, kb)
    standard, optional, undecided = choose(drug.rate_schedules, pos)
    titrated = most_specific([s for s in standard if s.kind == "titrated" and s.start is not None])
    if not titrated:
        return None
    # With an unknown history, the most cautious (lowest) start rate is shown.
    schedule = min(titrated, key=lambda s: s.start.value if s.start else 0)
    order = recognised.order
    assert schedule.start is not None
    comparable = _comparable_rate(order, schedule.start.unit)
    local = [regimens.assess(r, situation, recognised, pos, kb) for r in drug.local_regimens]
    offered = next((a for a in local if a.eligible), None)
    # Above the label's start rate (a warning without the overlay), but within an eligible
    # local regimen's first phase: the order follows the institution's protocol.
    if offered is not None and comparable is not None and comparable.value > schedule.start.value:
        accepted = _accepted(situation, recognised, kb, pos, schedule, offered)
        if accepted is not None:
            return accepted
    points: list[str] = []
    actions: tuple[ProposedRateChange, ...] = ()
    indicator: Indicator
    unknowns = list(pos.unknowns)
    if undecided:
        unknowns.append("whether this is a first or later infusion; the slowest schedule is shown")
    which = "first" if pos.number == 1 else "later" if pos.number else "unknown-position"
    if order.rate is not None and comparable is None:
        missing = "" if concentration(order) else " (no dose in mg and bag volume to convert)"
        unknowns.append(
            f"how the ordered rate ({fmt_qty(order.rate)}) compares with the schedule in "
            f"{schedule.start.unit}{missing}"
        )
        indicator, headline = (
            "info",
            f"titrate from {fmt_qty(schedule.start)} ({schedule.label})",
        )
    elif (
        comparable is not None
        and order.rate is not None
        and comparable.value > schedule.start.value
    ):
        indicator = "warning"
        caveat = " (history incomplete: slowest schedule)" if undecided else ""
        converted = f" (≈ {fmt_qty(comparable)})" if comparable.unit != order.rate.unit else ""
        headline = (
            f"ordered rate {fmt_qty(order.rate)}{converted} exceeds the start rate "
            f"{fmt_qty(schedule.start)} ({schedule.label}){caveat}"
        )
        points.append(
            f"- The order starts at **{fmt_qty(order.rate)}**"
            + (f" (≈ {fmt_qty(comparable)})" if comparable.unit != order.rate.unit else "")
            + f"; the label allows a start of **{fmt_qty(schedule.start)}** for this infusion."
        )
        new_rate = _start_in_order_unit(order, schedule)
        if new_rate is not None and order.resource is not None:
            actions = (
                ProposedRateChange(
                    label=f"Set the starting rate to {fmt_qty(new_rate)}",
                    order=order,
                    new_rate=new_rate,
                ),
            )
    elif comparable is not None:
        return None  # already at or below the allowed start rate
    else:
        indicator, headline = (
            "info",
            f"titrate from {fmt_qty(schedule.start)} ({schedule.label})",
        )
    position_text = {
        "first": "This is the patient's **first** infusion of this drug.",
        "later": f"This is infusion **{pos.number}** of this drug for the patient.",
    }.get(which)
    if position_text:
        points.insert(0, f"- {position_text}")
    if schedule.text:
        points.append(f"- {schedule.text}")
    for opt in optional:
        unchecked = unchecked_condition(opt.applies, pos)
        condition = f" if {unchecked}" if unchecked else ""
        detail = opt.text or (fmt_qty(opt.duration) if opt.duration else "")
        if opt.kind == "rapid":
            points.append(f"- May be eligible{condition}: **{opt.label}** — {detail}")
        else:
            start = f"start {fmt_qty(opt.start)}; " if opt.start else ""
            points.append(f"- Instead{condition}: **{opt.label}** — {start}{detail}".rstrip("; —"))
    citations = schedule.provenance.citations() + tuple(
        c for opt in optional for c in opt.provenance.citations()
    )
    for assessment in local:
        more_points, more_actions, unknown = _local_notes(
            situation, recognised, assessment, indicator
        )
        points.extend(more_points)
        actions += more_actions
        unknowns.extend(unknown)
        if more_points:
            citations = assessment.regimen.citations() + citations
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline=headline,
        points=tuple(points),
        table=schedule_table(schedule),
        citations=citations,
        actions=actions,
        unknowns=tuple(unknowns),
        order_ref=order.ref,
    )


def _in_mg_per_hour(order: MedicationOrder) -> Quantity | None:
    return _comparable_rate(order, "mg/h")


def _accepted(
    situation: Situation,
    recognised: RecognisedOrder,
    kb: KnowledgeBase,
    pos: DosePosition,
    schedule: RateSchedule,
    assessment: regimens.Assessment,
) -> Finding | None:
    """The info card of an order that follows an eligible local regimen (its rate at or below
    the regimen's first phase), or None when it does not."""
    regimen = assessment.regimen
    phases = regimens.phases_for(regimen, recognised, situation)
    rate = _in_mg_per_hour(recognised.order)
    if phases is None or rate is None or recognised.order.rate is None:
        return None
    tolerance = kb.policy.engine.dose_match_tolerance  # rounding of a computed rate
    if rate.value > phases[0].rate.value * (1 + tolerance):
        return None
    assert schedule.start is not None
    drug = kb.drug(recognised.drug_id)
    protocol = regimen.site.protocol
    points = [
        f"- **{protocol.name}** ({protocol.approval}): {regimen.label} instead of the label's "
        f"{schedule.label.lower()} (start {fmt_qty(schedule.start)}); "
        f"{fmt_qty(recognised.order.rate)} is within its first phase.",
        *_eligibility_points(assessment),
    ]
    if regimen.text:
        points.append(f"- {regimen.text}")
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator="info",
        headline=(
            f"rate follows the institution's {regimen.label} "
            f"({regimen.site.protocol.document} v{regimen.site.protocol.version})"
        ),
        points=tuple(points),
        table=regimens.phase_table(phases),
        table_notes=(f"Computed from the ordered dose of {fmt_qty(recognised.order.dose)}.",)
        if recognised.order.dose
        else (),
        citations=regimen.citations() + schedule.provenance.citations(),
        unknowns=pos.unknowns,
        order_ref=recognised.order.ref,
    )


def _eligibility_points(assessment: regimens.Assessment) -> list[str]:
    """What was checked, and what the prescriber must confirm."""
    points = []
    if assessment.met:
        points.append(f"- Checked: {'; '.join(assessment.met)}.")
    if assessment.regimen.eligibility.not_checked:
        points.append(
            "- **Confirm (not checked):** "
            + "; ".join(assessment.regimen.eligibility.not_checked)
            + "."
        )
    return points


def _local_notes(
    situation: Situation,
    recognised: RecognisedOrder,
    assessment: regimens.Assessment,
    indicator: Indicator,
) -> tuple[list[str], tuple[ProposedRateChange, ...], list[str]]:
    """A local regimen beside the label's schedule: offered when eligible, said when the
    patient rules it out, named as unknown when it could not be decided."""
    regimen = assessment.regimen
    order = recognised.order
    if assessment.eligible is None:
        why = "; ".join(assessment.unknown)
        return [], (), [f"whether the institution's {regimen.label} applies: {why}"]
    if assessment.eligible is False:
        if not assessment.by_patient:
            return [], (), []  # e.g. a first infusion: the regimen is for later ones
        note = (
            f"- {regimen.site.protocol.name}: the {regimen.label} is not for this patient "
            f"({'; '.join(assessment.failed)})."
        )
        return [note], (), []
    phases = regimens.phases_for(regimen, recognised, situation)
    points = [
        regimens.institution_point(regimen.site)[:-1]
        + f"; for this dose: {regimens.describe_phases(regimen, phases)}.",
        *_eligibility_points(assessment),
    ]
    actions: tuple[ProposedRateChange, ...] = ()
    if indicator == "warning" and phases and order.rate is not None and order.resource is not None:
        first = convert(phases[0].rate, order.rate.unit, concentration(order))
        if first is not None:
            actions = (
                ProposedRateChange(
                    label=f"Set the rate to {fmt_qty(first)} (first phase of the institution's "
                    f"{regimen.label})",
                    order=order,
                    new_rate=first,
                    recommended=False,
                ),
            )
    return points, actions, []
