"""Treatment-course rule: restarts after a delay, skipped step-up doses, course-point alerts.

When: a targeted draft order of a drug whose knowledge has a restart table, a step-up
schedule or course alerts (``cards/drugs/*.yaml``: ``restart``, ``step_up``,
``course_alerts``), read against the course reconstructed from the history
(``reasoning.course``).
Then:
- the time since the last dose falls in a restart row and the ordered dose is above the step
  the row restarts at → ``critical`` when the row is verified and the history complete, else
  ``warning``: "restart at step-up dose 1"; the restarted step's pretreatment and monitoring
  apply again (``applies.restart``, and steps matched afresh in ``dosing.position``);
- no dose of the drug on record and the ordered dose is not the first step-up dose, or the
  ordered dose jumps over a step → the same tiers: "step-up dose 1 not on record";
- earlier doses without usable dates for a drug with a restart table → ``info``: the gap,
  and so the restart rule, could not be checked;
- a course alert whose applicability holds (e.g. the 7th exposure) → its own indicator.
"""

from __future__ import annotations

from cds_server.knowledge.model import DoseStep, Drug, KnowledgeBase, StepUpSchedule
from cds_server.model import Finding, Indicator, RecognisedOrder, Situation
from cds_server.reasoning.course import TreatmentCourse, dose_mg, steps_at_level
from cds_server.reasoning.dosing import (
    IN_FORCE,
    DosePosition,
    applies,
    fmt_qty,
    position,
    step_labels,
)
from cds_server.reasoning.orders import target_orders

TOPIC = "treatment-course"


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Treatment-course findings for every targeted order (see module docstring)."""
    out: list[Finding] = []
    for recognised in target_orders(situation):
        drug = kb.drug(recognised.drug_id)
        if not (drug.restart or drug.step_up or drug.course_alerts):
            continue
        pos = position(situation, recognised, kb)
        if pos.course is None:
            continue
        if not situation.record.history_known and (drug.restart or drug.course_alerts):
            out.append(_not_checked(recognised, drug, pos.course))
        finding = _restart(situation, recognised, drug, pos, pos.course, kb) or _skipped(
            situation, recognised, drug, pos.course, kb
        )
        if finding is not None:
            out.append(finding)
        out.extend(_alerts(recognised, drug, pos))
    return out


def _not_checked(recognised: RecognisedOrder, drug: Drug, course: TreatmentCourse) -> Finding:
    """The history is incomplete: the restart table and course alerts could not be applied."""
    checks = [
        *(["the label's restart-after-delay table"] if drug.restart else []),
        *(
            [f"course alerts ({', '.join(a.headline for a in drug.course_alerts)})"]
            if drug.course_alerts
            else []
        ),
    ]
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator="info",
        headline="treatment course not checked: medication history incomplete",
        points=(
            "- The medication history could not be read in full, so the doses given before, "
            "the time since the last one and the exposure count are unknown.",
            f"- Not checked: {'; '.join(checks)}.",
        ),
        citations=(
            *(c for row in drug.restart[:1] for c in row.provenance.citations()),
            *(c for alert in drug.course_alerts for c in alert.provenance.citations()),
        ),
        unknowns=course.unknowns,
        order_ref=recognised.order.ref,
    )


def _tier(verified: bool, situation: Situation) -> Indicator:
    return "critical" if verified and situation.record.history_known else "warning"


def _last_dose_line(course: TreatmentCourse) -> str:
    last = course.last
    if last is None or last.when is None:
        return "- No earlier dose on record."
    dose = fmt_qty(last.dose) if last.dose else "dose not stated"
    source = "administration record" if last.evidence == "administration" else "completed order"
    return (
        f"- Last dose: {dose} on {last.when.date().isoformat()} ({source}), "
        f"**{course.gap_days} days** before this dose."
    )


def _restart(
    situation: Situation,
    recognised: RecognisedOrder,
    drug: Drug,
    pos: DosePosition,
    course: TreatmentCourse,
    kb: KnowledgeBase,
) -> Finding | None:
    if not drug.restart:
        return None
    if course.given and course.gap_days is None and situation.record.history_known:
        return Finding(
            topic=TOPIC,
            drug_id=drug.id,
            drug_name=drug.display,
            indicator="info",
            headline="time since the last dose unknown: restart rules not checked",
            points=(
                f"- {len(course.given)} earlier dose(s) on record, but their dates are missing "
                "or contradictory, so the label's restart-after-delay table could not be applied.",
            ),
            citations=drug.restart[0].provenance.citations(),
            unknowns=course.unknowns,
            order_ref=recognised.order.ref,
        )
    row = course.restart
    if row is None or row.restart_at is None:  # course.restarts, spelled out for the types
        return None
    target = _step(drug, row.restart_at)
    weight = situation.record.weight.kg if situation.record.weight else None
    target_mg = dose_mg(target.dose, weight) if target else None
    ordered_mg = pos.dose_mg
    comparable = ordered_mg is not None and target_mg is not None
    if (
        ordered_mg is not None
        and target_mg is not None
        and ordered_mg <= target_mg * (1 + kb.policy.engine.dose_match_tolerance)
    ):
        return None  # the order restarts at (or below) the step the label asks for
    label = step_labels(drug, (row.restart_at,))[0]
    points = [
        f"- **Restart at {label}.**",
        _last_dose_line(course),
        *_table_lines(course),
    ]
    unknowns = list(course.unknowns)
    if not comparable:
        points.append("- The ordered dose could not be compared with that step.")
        unknowns.extend(pos.unknowns)
    else:
        points.append(
            f"- Ordered: {fmt_qty(recognised.order.dose)}." if recognised.order.dose else ""
        )
    points.append(
        "- Give the pretreatment of the step-up schedule and the monitoring of the restarted "
        "step again."
    )
    indicator = _tier(row.provenance.evidence == "verified", situation) if comparable else "warning"
    if len({r.restart_at for r in course.restart_rows}) > 1:
        indicator = "warning"  # the schedules' rows disagree and the schedule is not known
    citations = tuple(
        dict.fromkeys(c for r in course.restart_rows for c in r.provenance.citations())
    )
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline=f"{course.gap_days} days since the last dose: restart at "
        + (fmt_qty(target.dose) if target else label),
        points=tuple(p for p in points if p),
        citations=citations or row.provenance.citations(),
        unknowns=tuple(unknowns),
        order_ref=recognised.order.ref,
    )


def _table_lines(course: TreatmentCourse) -> list[str]:
    """The label's restart row for this dose; one per dosing schedule, and why, when the
    schedule of the last dose cannot be told."""
    rows = [r for r in course.restart_rows if r.schedule] if course.schedule_unknown else []
    if not rows:
        assert course.restart is not None
        return [f"- Label restart table: {course.restart.text}"]
    return [
        *(
            f"- Label restart table, {r.schedule.label} schedule: {r.text}"
            for r in rows
            if r.schedule
        ),
        f"- Which row applies was not decided: {course.schedule_unknown}; the earlier restart is "
        "asked for.",
    ]


def _step(drug: Drug, step_id: str) -> DoseStep | None:
    return next((st for s in drug.step_up for st in s.steps if st.id == step_id), None)


def _skipped(
    situation: Situation,
    recognised: RecognisedOrder,
    drug: Drug,
    course: TreatmentCourse,
    kb: KnowledgeBase,
) -> Finding | None:
    """A dose ordered beyond the next step-up dose the record shows (or with none on record)."""
    if not drug.step_up or not situation.record.history_known or course.exposures is None:
        return None
    if course.restart is not None:
        return None  # a restart row decides what comes next
    weight = situation.record.weight.kg if situation.record.weight else None
    tol = kb.policy.engine.dose_match_tolerance
    dose = recognised.order.dose
    ordered = steps_at_level(drug, dose, weight, tol)
    if not ordered or dose is None:
        return None  # not comparable, or not a step-up-schedule dose level
    given = course.steps_given
    missing: list[tuple[StepUpSchedule, list[str]]] = []
    for schedule in drug.step_up:
        ids = [st.id for st in schedule.steps]
        here = [i for i, sid in enumerate(ids) if sid in ordered]
        if not here:
            continue
        index = max(here)
        skipped = [sid for sid in ids[:index] if sid not in given]
        if not skipped:
            return None  # in this schedule the dose follows the steps given
        missing.append((schedule, skipped))
    if not missing:
        return None
    schedule, skipped = min(missing, key=lambda m: len(m[1]))
    labels = step_labels(drug, skipped)
    verified = schedule.provenance.evidence == "verified"
    none_given = course.exposures == 0
    points = [
        "- No dose of this drug is on record."
        if none_given
        else f"- On record: {course.exposures} earlier dose(s), not {', '.join(labels)}.",
        f"- Ordered: {fmt_qty(dose)}"
        + (f" ({' or '.join(step_labels(drug, ordered))})" if ordered else "")
        + ".",
        f"- {schedule.label}: "
        + ", ".join(step_labels(drug, [st.id for st in schedule.steps]))
        + ".",
    ]
    if none_given:
        points.append(
            "- If step-up doses were given elsewhere, record them; otherwise start the schedule "
            "at step-up dose 1."
        )
    first = labels[0]
    indicator = _tier(verified, situation)
    standing = [
        r.order
        for r in situation.history
        if r.drug_id == drug.id
        and r.order.status in IN_FORCE
        and r.order.ref != recognised.order.ref
    ]
    if standing:
        # Doses given under an order still in force may be missing from what we were sent.
        indicator = "warning"
        points.append(
            f"- {len(standing)} order(s) for this drug are still active: check the administration "
            "record for doses given under them."
        )
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline=f"step-up dosing skipped: {first} not on record",
        points=tuple(points),
        citations=schedule.provenance.citations(),
        unknowns=course.unknowns,
        order_ref=recognised.order.ref,
    )


def _alerts(recognised: RecognisedOrder, drug: Drug, pos: DosePosition) -> list[Finding]:
    out = []
    for alert in drug.course_alerts:
        result = applies(alert.applies, pos)
        if result.value is not True or result.conditional:
            continue
        where = []
        if alert.applies.exposures_at_least and pos.number:
            where.append(f"- This is exposure {pos.number} to {drug.name}.")
        out.append(
            Finding(
                topic=TOPIC,
                drug_id=drug.id,
                drug_name=drug.display,
                indicator=alert.indicator,
                headline=alert.headline,
                points=(*where, f"- {alert.text}"),
                citations=alert.provenance.citations(),
                unknowns=pos.unknowns,
                order_ref=recognised.order.ref,
            )
        )
    return out
