"""Where an order sits in a drug's course: prior administrations, infusion number, step-up step.

Shared by the rules. Missing data gives ``None`` (unknown), never a guess: a rule that gets
``None`` must say what it could not determine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cds_server.knowledge.model import Applicability, Drug, KnowledgeBase
from cds_server.model import (
    MedicationOrder,
    Quantity,
    RecognisedOrder,
    Situation,
)
from cds_server.reasoning import indications
from cds_server.reasoning.course import (
    TreatmentCourse,
    course_of,
    dose_mg,
    doses_given,
    matches_step,
)

# Statuses that mean an order is in force (covers premedication, planned doses).
IN_FORCE = frozenset({"active", "on-hold"})


@dataclass(frozen=True)
class DosePosition:
    """Where one order sits: its infusion number and the step-up steps its dose matches.

    ``number`` is None when the history is unknown or incomplete; ``min_number`` is then
    what the history we do have proves (2 once one earlier dose is seen). ``steps`` is None
    when the step cannot be determined (no dose, or an mg/kg step without a weight), and
    empty when the dose is not a step-up dose. ``jurisdiction``: the knowledge's setting,
    against which facts restricted to some jurisdictions are checked. ``indication``: what
    the order names as its indication, against which facts restricted to indications are
    checked.
    """

    number: int | None
    steps: frozenset[str] | None
    prior: tuple[MedicationOrder, ...]
    dose_mg: float | None
    unknowns: tuple[str, ...] = ()
    min_number: int = 1
    course: TreatmentCourse | None = None
    jurisdiction: str = "US"
    indication: indications.OrderIndication = indications.NONE

    @property
    def restarted(self) -> bool:
        """This dose restarts the step-up schedule after a delay (a restart row applies)."""
        return self.course is not None and self.course.restarts


@dataclass(frozen=True)
class Applies:
    """The result of checking an ``Applicability`` against a dose position."""

    value: bool | None
    conditional: bool


def prior_administrations(
    situation: Situation, drug_id: str, order: MedicationOrder | None = None
) -> tuple[MedicationOrder, ...]:
    """Earlier administrations of a drug, oldest first: MedicationAdministrations given, and
    history orders completed or stopped that no administration we hold carried out."""
    found = [
        o
        for o in doses_given(situation, drug_id, order)
        if order is None
        or order.authored_on is None
        or o.authored_on is None
        or o.authored_on <= order.authored_on
    ]
    return tuple(sorted(found, key=lambda o: (o.authored_on is None, o.authored_on)))


dose_in_mg = dose_mg


def position(situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase) -> DosePosition:
    """Infusion number and step-up step of one ordered dose (computed once per call: every
    rule asks for it)."""
    key = ("position", id(recognised.order), recognised.drug_id)
    found = situation.memo.get(key)
    if found is None:
        found = situation.memo[key] = _position(situation, recognised, kb)
    return found


def _position(situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase) -> DosePosition:
    drug = kb.drug(recognised.drug_id)
    order = recognised.order
    record = situation.record
    weight = record.weight.kg if record.weight else None
    prior = prior_administrations(situation, drug.id, order)
    unknowns: list[str] = []
    number = len(prior) + 1 if record.history_known else None
    if number is None and not prior:
        unknowns.append("the patient's medication history (first or later infusion)")
    elif number is None:
        unknowns.append("the complete medication history (exact dose number)")
    ordered_unit = order.dose.unit.lower() if order.dose else None
    dose_mg = dose_in_mg(order.dose, weight)
    course = course_of(situation, recognised, kb) if drug.step_up or _course_facts(drug) else None
    restarted = course is not None and course.restarts
    # After a restart the step-up doses are given again: earlier doses no longer make a dose
    # "not the first at its level", so each step's premedication and monitoring apply again.
    steps = _steps(drug, order, dose_mg, () if restarted else prior, weight, number, kb, unknowns)
    if ordered_unit == "mg/kg" and weight is None:
        unknowns.append("the patient's weight (the dose is ordered in mg/kg)")
    return DosePosition(
        number,
        steps,
        prior,
        dose_mg,
        tuple(unknowns),
        len(prior) + 1,
        course=course,
        jurisdiction=kb.jurisdiction,
        indication=indications.of_order(order, kb.policy),
    )


def _course_facts(drug: Drug) -> bool:
    """Does any fact of the drug depend on the course (exposures, gap, cycle, restart)?"""
    return bool(drug.restart or drug.course_alerts or drug.new_cycle_after_days)


def _steps(
    drug: Drug,
    order: MedicationOrder,
    dose_mg: float | None,
    prior: tuple[MedicationOrder, ...],
    weight: float | None,
    number: int | None,
    kb: KnowledgeBase,
    unknowns: list[str],
) -> frozenset[str] | None:
    if not drug.step_up:
        return frozenset()
    tol = kb.policy.engine.dose_match_tolerance
    prior_mg = [dose_in_mg(p.dose, weight) for p in prior]
    matched: set[str] = set()
    undecided = False
    for schedule in drug.step_up:
        for step in schedule.steps:
            hit = matches_step(dose_mg, step, weight, tol)
            if hit is None:
                undecided = True
                continue
            if not hit:
                continue
            # A step is the FIRST administration at that dose level.
            earlier = [matches_step(mg, step, weight, tol) for mg in prior_mg]
            if any(earlier):
                continue
            matched.add(step.id)
    if matched:
        return frozenset(matched)
    if not undecided:
        return frozenset()
    # Dose unknown or not comparable: fall back to the position in the schedule.
    if weight is None and any(st.dose.unit == "mg/kg" for s in drug.step_up for st in s.steps):
        unknowns.append("the patient's weight (step-up doses are in mg/kg)")
    if number is not None:
        by_position = {s.steps[number - 1].id for s in drug.step_up if len(s.steps) >= number}
        if by_position:
            why = "no ordered dose" if dose_mg is None else "dose not comparable"
            unknowns.append(
                f"the step ({why}); taken from the number of prior doses ({number - 1})"
            )
            return frozenset(by_position)
        return frozenset()
    unknowns.append("which step-up dose this is (no comparable dose and no history)")
    return None


def applies(app: Applicability, pos: DosePosition) -> Applies:
    """Does a fact apply to this dose? Every key given must hold (they are ANDed).

    ``value`` is False as soon as one key fails, None when one cannot be determined.
    ``conditional``: the fact holds only under a condition left unchecked, its ``condition``
    or its indications when the order's indication does not decide them.
    """
    checks: list[bool | None] = []
    conditional = app.condition is not None
    if app.jurisdictions:  # a setting, always known
        checks.append(pos.jurisdiction in app.jurisdictions)
    if app.indications:
        held = indications.holds(app.indications, pos.indication)
        if held is False:
            checks.append(False)
        elif held is None:
            conditional = True
    if app.steps:
        checks.append(None if pos.steps is None else bool(pos.steps & set(app.steps)))
    if app.infusion_numbers:
        checks.append(None if pos.number is None else pos.number in app.infusion_numbers)
    if app.infusions == "first":
        checks.append(pos.number == 1 if pos.number else (False if pos.min_number > 1 else None))
    elif app.infusions == "subsequent":
        checks.append(pos.number > 1 if pos.number else (True if pos.min_number > 1 else None))
    if app.exposures_at_least is not None:
        checks.append(
            pos.number >= app.exposures_at_least
            if pos.number
            else (True if pos.min_number >= app.exposures_at_least else None)
        )
    course = pos.course
    if app.gap_days is not None:
        if course is None or (course.gap_days is None and course.given):
            checks.append(None)
        else:
            checks.append(course.gap_days is not None and app.gap_days.contains(course.gap_days))
    if app.cycle_start is not None:
        start = course.cycle_start if course else None
        if start is None:
            checks.append(None)
        elif not start or app.cycle_start == "every":
            checks.append(start)
        else:
            checks.append(
                None if course is None or course.cycle is None else course.cycle in app.cycle_start
            )
    if app.restart is not None:
        checks.append(None if course is None else pos.restarted == app.restart)
    value: bool | None = True
    if False in checks:
        value = False
    elif None in checks:
        value = None
    return Applies(value=value, conditional=conditional)


def unchecked_condition(app: Applicability, pos: DosePosition) -> str:
    """The condition a note about this fact names ("" when nothing is left unchecked): its
    ``condition`` (written whole, indication included), else its indications when the
    order's indication does not decide them ("rheumatoid arthritis")."""
    if app.condition:
        return app.condition
    if app.indications and indications.holds(app.indications, pos.indication) is None:
        return " or ".join(i.display for i in app.indications)
    return ""


def step_labels(drug: Drug, step_ids: Iterable[str]) -> list[str]:
    """Human labels of the given steps, e.g. "step-up dose 1 (2.5 mg, cycle 1 day 8)"."""
    wanted = set(step_ids)
    out = []
    for schedule in drug.step_up:
        for step in schedule.steps:
            if step.id in wanted:
                where = f", {step.day}" if step.day else ""
                out.append(f"{step.label} ({fmt_qty(step.dose)}{where})")
    return out


def fmt_number(value: float) -> str:
    """12.0 → "12", 2.5 → "2.5", 1000 → "1,000"."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.2f}".rstrip("0").rstrip(".")


def fmt_qty(q: Quantity) -> str:
    return f"{fmt_number(q.value)} {q.unit}"
