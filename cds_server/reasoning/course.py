"""The treatment course of one ordered drug: doses given, exposures, gap, step reached, cycle.

Built once per ordered dose and call (``course_of``, memoised on the ``Situation``) from the
MedicationRequest history and, when the EHR gives them, MedicationAdministrations. A completed
administration is stronger evidence than an order: an order carried out by an administration
we hold counts once, with the administration's date. Missing or contradictory dates make the
gap and cycle *unknown* (``None``), never "first dose".
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from cds_server.knowledge.model import DoseStep, Drug, KnowledgeBase, RestartRule
from cds_server.model import (
    MICROGRAM_UNITS,
    MICROGRAMS_PER_MG,
    MedicationOrder,
    Quantity,
    RecognisedOrder,
    Situation,
)

# MedicationRequest statuses that mean the dose was (at least partly) given.
ADMINISTERED = frozenset({"completed", "stopped"})
# MedicationAdministration statuses that mean the dose was (at least partly) given.
ADMINISTRATION_GIVEN = frozenset({"completed", "stopped", "in-progress", "on-hold"})
# A dose dated this far after "now" is a contradiction, not a dose given.
_CLOCK_SKEW = timedelta(days=1)
_CYCLE_DAY = re.compile(
    r"\b(?:cycle|cyc|c)\s*#?\s*(?P<cycle>\d+)\s*[,/;:-]?\s*(?:day|days|d)\s*#?\s*(?P<day>\d+)\b",
    re.IGNORECASE,
)
_CYCLE_ONLY = re.compile(r"\bcycle\s*#?\s*(?P<cycle>\d+)\b", re.IGNORECASE)


@dataclass(frozen=True)
class GivenDose:
    """One earlier dose of the drug, as the record shows it."""

    when: datetime | None
    dose: Quantity | None
    status: str | None
    evidence: Literal["administration", "order"]
    ref: str | None
    steps: frozenset[str] = frozenset()
    # Days between doses its order states (``timing.repeat``), for an administration the order
    # it carried out; None when no order we hold states it.
    repeat_days: float | None = None


@dataclass(frozen=True)
class TreatmentCourse:
    """Where an ordered dose falls in the patient's course of one drug.

    ``exposures``: doses given before this one (None when the history is unknown).
    ``gap_days``: whole days from the last dose given to this dose (None when unknown or no
    earlier dose). ``last_steps``: step-up steps whose dose level the last dose matches.
    ``cycle``/``day``: from the order's own text, else inferred from the dates
    (``cycle_source``). ``restart``: the restart-table row that applies, if any.
    ``restart_rows``: the rows that may apply: the row of the last dose's dosing schedule, or,
    when the table has a row per schedule and the schedule cannot be told, one per schedule
    (``schedule_unknown`` then says why); ``restart`` is the earliest restart among them.
    """

    drug_id: str
    reference: datetime
    given: tuple[GivenDose, ...]
    exposures: int | None
    gap_days: int | None
    last: GivenDose | None
    last_steps: frozenset[str] | None
    steps_given: frozenset[str]
    cycle: int | None
    day: int | None
    cycle_source: str | None
    restart: RestartRule | None
    unknowns: tuple[str, ...] = ()
    restart_rows: tuple[RestartRule, ...] = ()
    schedule_unknown: str | None = None

    @property
    def cycle_start(self) -> bool | None:
        return None if self.day is None else self.day == 1

    @property
    def restarts(self) -> bool:
        """A restart row applies and sends this dose back to a step (not "continue")."""
        return self.restart is not None and self.restart.restart_at is not None


def course_of(
    situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase
) -> TreatmentCourse:
    """The course for one ordered dose, computed once per call."""
    key = ("course", id(recognised.order))
    found = situation.memo.get(key)
    if found is None:
        found = situation.memo[key] = build(situation, recognised, kb)
    return found


def dose_mg(dose: Quantity | None, weight_kg: float | None) -> float | None:
    """An ordered dose in mg (mg as is; µg converted; mg/kg with the weight), else None.

    Parsing already converts g to mg, so no other mass unit reaches the rules.
    """
    if dose is None:
        return None
    unit = dose.unit.lower()
    if unit == "mg":
        return dose.value
    if unit in MICROGRAM_UNITS:
        return dose.value / MICROGRAMS_PER_MG
    if unit == "mg/kg" and weight_kg is not None:
        return dose.value * weight_kg
    return None


def matches_step(
    actual_mg: float | None, step: DoseStep, weight_kg: float | None, tol: float
) -> bool | None:
    """Is a dose in mg at ``step``'s level (within ``tol``)? None when it cannot be compared."""
    if actual_mg is None:
        return None
    target = dose_mg(step.dose, weight_kg)
    if target is None:
        return None
    return abs(actual_mg - target) <= tol * target


def steps_at_level(
    drug: Drug, dose: Quantity | None, weight: float | None, tol: float
) -> frozenset[str] | None:
    """Step ids whose dose level ``dose`` matches (None when it cannot be compared)."""
    if not drug.step_up:
        return frozenset()
    actual = dose_mg(dose, weight)
    if actual is None:
        return None
    return frozenset(
        step.id
        for schedule in drug.step_up
        for step in schedule.steps
        if matches_step(actual, step, weight, tol)
    )


def doses_given(
    situation: Situation, drug_id: str, order: MedicationOrder | None = None
) -> tuple[MedicationOrder, ...]:
    """Earlier doses of a drug, unsorted: MedicationAdministrations given, and history orders
    completed or stopped that no administration we hold carried out (never ``order`` itself)."""
    own = order.ref if order is not None else None
    administrations = [
        r.order
        for r in situation.administrations
        if r.drug_id == drug_id and r.order.status in ADMINISTRATION_GIVEN
    ]
    fulfilled = {a.fulfils for a in administrations if a.fulfils}
    orders = [
        r.order
        for r in situation.history
        if r.drug_id == drug_id
        and r.order.status in ADMINISTERED
        and r.order.ref not in fulfilled
        and (own is None or r.order.ref != own)
    ]
    return (*administrations, *orders)


def _given(
    situation: Situation, drug: Drug, order: MedicationOrder, weight: float | None, tol: float
) -> list[GivenDose]:
    stated = {r.order.ref: r.order.repeat_days for r in situation.history if r.order.ref}
    return [
        GivenDose(
            o.authored_on,
            o.dose,
            o.status,
            "administration" if o.source == "administration" else "order",
            o.fulfils if o.source == "administration" else o.ref,
            steps_at_level(drug, o.dose, weight, tol) or frozenset(),
            (stated.get(o.fulfils) if o.fulfils else None)
            if o.source == "administration"
            else o.repeat_days,
        )
        for o in doses_given(situation, drug.id, order)
    ]


def reference_date(situation: Situation, order: MedicationOrder) -> datetime:
    """When this dose is to be given: the order's planned time, its date, else now."""
    return order.planned or order.authored_on or situation.now


def build(situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase) -> TreatmentCourse:
    """Reconstruct the course of ``recognised``'s drug up to this ordered dose."""
    drug = kb.drug(recognised.drug_id)
    order = recognised.order
    record = situation.record
    weight = record.weight.kg if record.weight else None
    tol = kb.policy.engine.dose_match_tolerance
    when = reference_date(situation, order)
    unknowns: list[str] = []
    doses = [
        d for d in _given(situation, drug, order, weight, tol) if d.when is None or d.when <= when
    ]
    future = [d for d in doses if d.when is not None and d.when > situation.now + _CLOCK_SKEW]
    undated = [d for d in doses if d.when is None]
    given = tuple(sorted(doses, key=lambda d: (d.when is None, d.when)))
    exposures = len(given) if record.history_known else None
    if not record.history_known:
        unknowns.append("the complete medication history (doses given before)")
    dates_usable = not undated and not future
    if undated:
        unknowns.append("the date of an earlier dose (the gap since the last dose)")
    if future:
        unknowns.append("the dates of earlier doses (one is dated in the future)")
    last = given[-1] if given and dates_usable else None
    gap = (when.date() - last.when.date()).days if last and last.when else None
    last_steps = last.steps if last else None
    steps_given = frozenset(s for d in given for s in d.steps)
    cycle, day, source = _cycle(
        drug, order, given if dates_usable else None, when, record.history_known
    )
    rows, schedule_unknown = (
        _restart_rows(drug, last_steps, gap, last.repeat_days if last else None)
        if record.history_known
        else ((), None)
    )
    return TreatmentCourse(
        drug_id=drug.id,
        reference=when,
        given=given,
        exposures=exposures,
        gap_days=gap,
        last=last,
        last_steps=last_steps,
        steps_given=steps_given,
        cycle=cycle,
        day=day,
        cycle_source=source,
        restart=_earliest_restart(drug, rows),
        unknowns=tuple(unknowns),
        restart_rows=rows,
        schedule_unknown=schedule_unknown,
    )


def _restart_rows(
    drug: Drug, last_steps: frozenset[str] | None, gap: int | None, every_days: float | None
) -> tuple[tuple[RestartRule, ...], str | None]:
    """The restart-table rows for the last step given and the gap: of the last dose's dosing
    schedule when the table has rows per schedule and the record states it; else every
    schedule's row, with why the schedule could not be told."""
    if not drug.restart or not last_steps or gap is None:
        return (), None
    rows = tuple(
        r for r in drug.restart if last_steps & set(r.after_steps) and r.gap_days.contains(gap)
    )
    schedules = sorted({r.schedule for r in rows if r.schedule}, key=lambda s: s.every_days)
    if not schedules:
        return rows, None
    mine = tuple(r for r in rows if r.schedule is None or r.schedule.every_days == every_days)
    if any(r.schedule for r in mine):
        return mine, None
    names = " or ".join(s.label for s in schedules)
    if every_days is None:
        return rows, (
            f"the dosing schedule of the last dose ({names}) is not stated in its order "
            "(no repeat interval), so each schedule's row is shown"
        )
    return rows, (
        f"the last dose's order repeats every {every_days:g} days, which is not a schedule of "
        f"the label's table ({names}), so each schedule's row is shown"
    )


def _earliest_restart(drug: Drug, rows: tuple[RestartRule, ...]) -> RestartRule | None:
    """The row to follow among ``rows``: the earliest restart (the safer reading)."""
    if not rows:
        return None
    order = {st.id: i for s in drug.step_up for i, st in enumerate(s.steps)}
    # "Continue" rows rank after every restart: the safer reading wins when schedules overlap.
    return min(rows, key=lambda r: order.get(r.restart_at, math.inf) if r.restart_at else math.inf)


def cycle_day_in_text(order: MedicationOrder) -> tuple[int, int | None] | None:
    """Cycle and day as EHR order texts write them ("C2D1", "cycle 2 day 1", "Cycle 3"): the
    dosage text, then the plan texts (treatment plan, order group, timing code, notes), then
    the medication texts."""
    texts = (order.dosage_text, *order.plan_texts, *order.texts)
    for text in texts:
        if not text:
            continue
        match = _CYCLE_DAY.search(text)
        if match:
            return int(match["cycle"]), int(match["day"])
    for text in texts:
        match = _CYCLE_ONLY.search(text or "")
        if match:
            return int(match["cycle"]), None
    return None


def _cycle(
    drug: Drug,
    order: MedicationOrder,
    given: tuple[GivenDose, ...] | None,
    when: datetime,
    history_known: bool,
) -> tuple[int | None, int | None, str | None]:
    stated = cycle_day_in_text(order)
    if stated is not None:
        return stated[0], stated[1], "the order's text"
    gap_rule = drug.new_cycle_after_days
    if gap_rule is None or given is None or not history_known:
        return None, None, None
    if not given:
        return 1, 1, "no earlier dose on record"
    starts = [given[0]]
    for before, after in itertools.pairwise(given):
        if before.when and after.when and (after.when.date() - before.when.date()).days > gap_rule:
            starts.append(after)
    last = given[-1]
    assert last.when is not None  # dates_usable
    if (when.date() - last.when.date()).days > gap_rule:
        return len(starts) + 1, 1, f"the dates (more than {gap_rule} days since the last dose)"
    first = starts[-1].when
    assert first is not None
    return len(starts), (when.date() - first.date()).days + 1, "the dates of this cycle's doses"
