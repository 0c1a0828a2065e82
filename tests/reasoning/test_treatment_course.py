"""Treatment course: every restart row on both sides of its gap, skipped steps, course alerts,
cycle starts, unknown courses, and the knowledge format's new constructs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cds_server.knowledge.loader import KnowledgeError, load_knowledge
from cds_server.knowledge.model import DayRange, Drug, KnowledgeBase, RestartRule
from cds_server.model import RecognisedOrder
from cds_server.reasoning import treatment_course
from cds_server.reasoning.course import course_of, cycle_day_in_text
from cds_server.reasoning.dosing import dose_in_mg, position
from tests.reasoning.builders import days_ago, order, situation

WEIGHT = 80.0


def _rows(kb: KnowledgeBase) -> list[tuple[str, RestartRule]]:
    """Every restart row of the knowledge base, with its drug."""
    return [(d.id, r) for d in kb.drugs.values() for r in d.restart]


def _step(drug: Drug, step_id: str):
    return next(st for s in drug.step_up for st in s.steps if st.id == step_id)


def _case(
    kb: KnowledgeBase,
    drug_id: str,
    row: RestartRule,
    gap: int,
    ordered_step: str,
    *,
    repeat_days: float | None = None,
):
    """Last dose: the row's first step, ``gap`` days before a draft of ``ordered_step``; its
    order states the row's dosing schedule (``repeat_days``, else the row's own, if any)."""
    drug = kb.drug(drug_id)
    last = _step(drug, row.after_steps[0])
    target = _step(drug, ordered_step)
    history = [
        RecognisedOrder(
            order(
                f"MedicationRequest/{drug_id}-last",
                dose=last.dose.value,
                unit=last.dose.unit,
                status="completed",
                when=days_ago(gap),
                repeat_days=repeat_days or (row.schedule.every_days if row.schedule else None),
            ),
            drug_id,
            "test",
        )
    ]
    draft = order(
        f"MedicationRequest/{drug_id}-draft", dose=target.dose.value, unit=target.dose.unit
    )
    return situation([(drug_id, draft)], history=history, weight_kg=WEIGHT)


def _highest_step(drug: Drug) -> str:
    return max(
        (st for s in drug.step_up for st in s.steps),
        key=lambda st: dose_in_mg(st.dose, WEIGHT) or 0,
    ).id


ROWS = _rows(load_knowledge())


def test_every_restart_drug_is_exercised() -> None:
    drugs = {d for d, _ in ROWS}
    assert {"teclistamab", "elranatamab", "alemtuzumab", "epcoritamab", "mosunetuzumab"} <= drugs


@pytest.mark.parametrize(("drug_id", "row"), ROWS, ids=[f"{d}:{r.id}" for d, r in ROWS])
def test_restart_row_fires_at_its_lower_bound_and_upper_bound(
    kb: KnowledgeBase, drug_id: str, row: RestartRule
) -> None:
    drug = kb.drug(drug_id)
    gaps = [row.gap_days.first or 0] + ([row.gap_days.last] if row.gap_days.last else [])
    for gap in gaps:
        s = _case(kb, drug_id, row, gap, _highest_step(drug))
        course = course_of(s, s.orders[0], kb)
        assert course.gap_days == gap
        assert course.restart == row, (drug_id, row.id, gap)
        findings = treatment_course.evaluate(s, kb)
        if row.restart_at is None:
            assert not findings
            continue
        target_mg = dose_in_mg(_step(drug, row.restart_at).dose, WEIGHT)
        top_mg = dose_in_mg(_step(drug, _highest_step(drug)).dose, WEIGHT)
        if top_mg <= target_mg * 1.1:
            continue  # the order already restarts at the row's step
        [finding] = findings
        expected = "critical" if row.provenance.evidence == "verified" else "warning"
        assert finding.indicator == expected
        assert f"{gap} days since the last dose" in finding.headline
        assert any(row.text in p for p in finding.points)


def test_just_outside_each_restart_row_another_row_or_none_applies(kb: KnowledgeBase) -> None:
    for drug_id, row in _rows(kb):
        below = (row.gap_days.first or 0) - 1
        if below < 0:
            continue
        s = _case(kb, drug_id, row, below, _highest_step(kb.drug(drug_id)))
        assert course_of(s, s.orders[0], kb).restart != row, (drug_id, row.id, below)


def test_teclistamab_ordered_at_the_restart_step_gets_no_restart_card_but_its_monitoring(
    kb: KnowledgeBase,
) -> None:
    drug = kb.drug("teclistamab")
    row = next(r for r in drug.restart if r.id == "after-treatment-dose-over-56-days")
    s = _case(kb, "teclistamab", row, 70, "tec-sud1")
    assert treatment_course.evaluate(s, kb) == []
    pos = position(s, s.orders[0], kb)
    assert pos.restarted and pos.steps == frozenset({"tec-sud1"})


def test_restart_needs_a_complete_history(kb: KnowledgeBase) -> None:
    drug = kb.drug("teclistamab")
    row = next(r for r in drug.restart if r.id == "after-treatment-dose-over-56-days")
    s = _case(kb, "teclistamab", row, 70, "tec-full1")
    incomplete = situation(
        [("teclistamab", s.orders[0].order)],
        history=list(s.history),
        weight_kg=WEIGHT,
        history_known=False,
    )
    assert course_of(incomplete, incomplete.orders[0], kb).restart is None


def test_first_full_dose_without_step_up_is_critical_and_sud1_is_not(kb: KnowledgeBase) -> None:
    full = order("MedicationRequest/d", dose=1.5, unit="mg/kg")
    [finding] = treatment_course.evaluate(situation([("teclistamab", full)], weight_kg=WEIGHT), kb)
    assert finding.indicator == "critical" and "step-up dose 1" in finding.headline
    sud1 = order("MedicationRequest/d", dose=0.06, unit="mg/kg")
    assert treatment_course.evaluate(situation([("teclistamab", sud1)], weight_kg=WEIGHT), kb) == []


def test_unknown_history_never_means_first_dose(kb: KnowledgeBase) -> None:
    full = order("MedicationRequest/d", dose=1.5, unit="mg/kg")
    s = situation([("teclistamab", full)], weight_kg=WEIGHT, history_known=False)
    assert course_of(s, s.orders[0], kb).exposures is None
    # No skipped-step or restart claim without a history, but never silence: the card says
    # what could not be checked.
    [finding] = treatment_course.evaluate(s, kb)
    assert finding.indicator == "info"
    assert "medication history incomplete" in finding.headline
    assert "restart-after-delay table" in finding.points[1]


def test_an_incomplete_history_is_said_for_carboplatin_exposures(kb: KnowledgeBase) -> None:
    draft = order("MedicationRequest/d", dose=600)
    s = situation([("carboplatin", draft)], history_known=False)
    [finding] = treatment_course.evaluate(s, kb)
    assert (finding.indicator, finding.drug_id) == ("info", "carboplatin")
    assert "7th or later exposure" in finding.points[1]
    complete = situation([("carboplatin", draft)])
    assert treatment_course.evaluate(complete, kb) == []


def test_a_dose_dated_in_the_future_makes_the_gap_unknown(kb: KnowledgeBase) -> None:
    history = [
        RecognisedOrder(
            order("MedicationRequest/h", dose=120, status="completed", when=days_ago(-30)),
            "teclistamab",
            "test",
        )
    ]
    draft = order("MedicationRequest/d", dose=1.5, unit="mg/kg", when=days_ago(-40))
    s = situation([("teclistamab", draft)], history=history, weight_kg=WEIGHT)
    course = course_of(s, s.orders[0], kb)
    assert course.gap_days is None and course.unknowns


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("blinatumomab 28 mcg/day, cycle 2 day 1", (2, 1)),
        ("C3D8 glofitamab 30 mg", (3, 8)),
        ("Cycle 4, Day 15", (4, 15)),
        ("cycle 1 days 1-7", (1, 1)),
        ("Cycle 5", (5, None)),
        ("carboplatin AUC 5 in 250 mL", None),
        ("dexamethasone 20 mg IV", None),
    ],
)
def test_cycle_and_day_are_read_from_order_texts(text: str, expected) -> None:
    assert cycle_day_in_text(order("MedicationRequest/x", text=text)) == expected


def test_blinatumomab_cycle_inferred_from_the_dates(kb: KnowledgeBase) -> None:
    bags = [
        RecognisedOrder(
            order(
                f"MedicationRequest/b{i}", dose=28, unit="mcg", status="completed", when=days_ago(d)
            ),
            "blinatumomab",
            "test",
        )
        for i, d in enumerate((84, 77, 70, 63, 42, 35, 28, 21))
    ]
    draft = order("MedicationRequest/d", dose=28, unit="mcg")
    s = situation([("blinatumomab", draft)], history=bags)
    course = course_of(s, s.orders[0], kb)
    assert (course.cycle, course.day, course.cycle_start) == (3, 1, True)
    same = bags[:4] + [
        RecognisedOrder(
            order(
                f"MedicationRequest/c{d}", dose=28, unit="mcg", status="completed", when=days_ago(d)
            ),
            "blinatumomab",
            "test",
        )
        for d in (12, 5)
    ]
    s2 = situation([("blinatumomab", draft)], history=same)
    course = course_of(s2, s2.orders[0], kb)
    assert (course.cycle, course.day, course.cycle_start) == (2, 13, False)


def test_carboplatin_exposure_alert_from_the_seventh_exposure(kb: KnowledgeBase) -> None:
    from tests.reasoning.builders import given

    draft = order("MedicationRequest/d", dose=600)
    six = treatment_course.evaluate(
        situation([("carboplatin", draft)], history=given("carboplatin", 6, dose=600)), kb
    )
    five = treatment_course.evaluate(
        situation([("carboplatin", draft)], history=given("carboplatin", 5, dose=600)), kb
    )
    assert [f.indicator for f in six] == ["info"] and "exposure 7" in six[0].points[0]
    assert five == []


def _write_drug(tmp_path: Path, kb_dir: Path, extra: dict) -> Path:
    import shutil

    target = tmp_path / "cards"
    shutil.copytree(kb_dir, target)
    path = target / "drugs" / "teclistamab.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(extra)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return target


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {
                "restart": [
                    {
                        "id": "x",
                        "after_steps": ["nope"],
                        "gap_days": {"more_than": 7},
                        "restart_at": "tec-sud1",
                        "text": "t",
                        "evidence": "verified",
                        "cite": ["jnj-restart"],
                    }
                ]
            },
            "unknown step id 'nope'",
        ),
        (
            {
                "restart": [
                    {
                        "id": "a",
                        "after_steps": ["tec-sud1"],
                        "gap_days": {"more_than": 7},
                        "restart_at": "tec-sud1",
                        "text": "t",
                        "evidence": "verified",
                        "cite": ["jnj-restart"],
                    },
                    {
                        "id": "b",
                        "after_steps": ["tec-sud1"],
                        "gap_days": {"at_least": 10},
                        "restart_at": "tec-sud1",
                        "text": "t",
                        "evidence": "verified",
                        "cite": ["jnj-restart"],
                    },
                ]
            },
            "overlap",
        ),
        (
            {
                "restart": [
                    {
                        "id": "x",
                        "after_steps": ["tec-sud1"],
                        "gap_days": {"more_than": 9, "at_most": 3},
                        "text": "t",
                        "evidence": "verified",
                        "cite": ["jnj-restart"],
                    }
                ]
            },
            "the range is empty",
        ),
        (
            {
                "course_alerts": [
                    {
                        "id": "x",
                        "applies": {"cycle_start": "every"},
                        "indicator": "info",
                        "headline": "h",
                        "text": "t",
                        "evidence": "verified",
                        "cite": ["jnj-restart"],
                    }
                ]
            },
            "new_cycle_after_days",
        ),
        (
            {
                "course_alerts": [
                    {
                        "id": "x",
                        "applies": {"cycle_start": [0]},
                        "indicator": "info",
                        "headline": "h",
                        "text": "t",
                        "evidence": "verified",
                        "cite": ["jnj-restart"],
                    }
                ]
            },
            "cycle numbers",
        ),
    ],
)
def test_check_cards_rejects_broken_course_knowledge(
    tmp_path: Path, extra: dict, message: str
) -> None:
    from cds_server.knowledge.loader import DEFAULT_CARDS_DIR

    with pytest.raises(KnowledgeError) as err:
        load_knowledge(_write_drug(tmp_path, DEFAULT_CARDS_DIR, extra))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("days", "inside"),
    [
        (DayRange(more_than=56), {57: True, 56: False}),
        (DayRange(at_least=29, at_most=56), {28: False, 29: True, 56: True, 57: False}),
        (DayRange(more_than=42, less_than=84), {42: False, 43: True, 83: True, 84: False}),
    ],
)
def test_day_ranges(days: DayRange, inside: dict[int, bool]) -> None:
    assert {d: days.contains(d) for d in inside} == inside


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            {
                "basedOn": [
                    {"reference": "CarePlan/tp1", "display": "LYMPHOMA GLOFITAMAB, Cycle 2, Day 1"}
                ]
            },
            (2, 1),
        ),
        ({"groupIdentifier": {"system": "urn:oid:1.2.3", "value": "C3D1"}}, (3, 1)),
        ({"note": [{"text": "Cycle 4 day 8 per protocol"}]}, (4, 8)),
        ({}, None),
    ],
)
def test_cycle_and_day_are_read_from_the_plan_an_ehr_order_carries(extra: dict, expected) -> None:
    from cds_server.fhirdata.parse import ParseLog, parse_medication_request

    resource = {
        "resourceType": "MedicationRequest",
        "id": "mr1",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "glofitamab 30 mg"},
        **extra,
    }
    parsed = parse_medication_request(resource, "draft", ParseLog(), is_draft=True)
    assert parsed is not None
    assert cycle_day_in_text(parsed) == expected


def _teclistamab_after(gap: int, repeat_days: float | None, kb: KnowledgeBase):
    drug = kb.drug("teclistamab")
    weekly = next(r for r in drug.restart if r.id == "after-treatment-dose-29-to-56-days")
    s = _case(kb, "teclistamab", weekly, gap, "tec-full1", repeat_days=repeat_days)
    if repeat_days is None:  # the row's own schedule would be stated: state none
        last = s.history[0]
        s = situation(
            [("teclistamab", s.orders[0].order)],
            history=[RecognisedOrder(replace(last.order, repeat_days=None), "teclistamab", "t")],
            weight_kg=WEIGHT,
        )
    return s


def test_a_weekly_patient_sees_only_the_weekly_restart_row(kb: KnowledgeBase) -> None:
    s = _teclistamab_after(40, 7, kb)
    [finding] = treatment_course.evaluate(s, kb)
    assert finding.indicator == "critical"
    text = "\n".join(finding.points)
    assert "weekly treatment dose, 29 to 56 days ago" in text
    assert "every 2 weeks" not in text.lower()
    assert "was not decided" not in text


def test_an_every_2_weeks_patient_continues_where_a_weekly_one_restarts(kb: KnowledgeBase) -> None:
    s = _teclistamab_after(40, 14, kb)
    course = course_of(s, s.orders[0], kb)
    assert course.restart is not None and course.restart.id == "after-2-weekly-dose-up-to-63-days"
    assert course.schedule_unknown is None
    assert treatment_course.evaluate(s, kb) == []
    later = _teclistamab_after(70, 14, kb)
    [finding] = treatment_course.evaluate(later, kb)
    assert "every 2 weeks, 64 to 112 days ago" in "\n".join(finding.points)
    assert "weekly treatment dose" not in "\n".join(finding.points)


def test_an_untold_schedule_shows_both_rows_says_why_and_is_not_critical(kb: KnowledgeBase) -> None:
    s = _teclistamab_after(40, None, kb)
    [finding] = treatment_course.evaluate(s, kb)
    text = "\n".join(finding.points)
    assert finding.indicator == "warning"
    assert "weekly schedule: Last dose a weekly treatment dose, 29 to 56 days ago" in text
    assert "every 2 weeks schedule: Last dose a treatment dose every 2 weeks, 63 days" in text
    assert "not stated in its order (no repeat interval)" in text
    assert "step-up dose 2" in finding.headline or "0.3 mg/kg" in finding.headline


def test_an_untold_schedule_where_both_rows_agree_keeps_the_tier(kb: KnowledgeBase) -> None:
    s = _teclistamab_after(120, None, kb)
    [finding] = treatment_course.evaluate(s, kb)
    assert finding.indicator == "critical"  # both schedules restart at step-up dose 1
    assert "was not decided" in "\n".join(finding.points)


@pytest.mark.parametrize(
    ("repeat", "days"),
    [
        ({"frequency": 1, "period": 2, "periodUnit": "wk"}, 14),
        ({"period": 1, "periodUnit": "wk"}, 7),
        ({"frequency": 1, "period": 14, "periodUnit": "d"}, 14),
        ({"frequency": 2, "period": 1, "periodUnit": "wk"}, None),
        ({"frequency": 1, "period": 1, "periodUnit": "mo"}, None),
        ({"boundsPeriod": {"start": "2026-01-01"}}, None),
    ],
)
def test_an_orders_repeat_interval_is_read_in_days(repeat: dict, days: float | None) -> None:
    from cds_server.fhirdata.parse import ParseLog, parse_medication_request

    resource = {
        "resourceType": "MedicationRequest",
        "id": "tec-q2w",
        "status": "completed",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "teclistamab-cqyv 1.5 mg/kg SC"},
        "authoredOn": "2026-01-05",
        "dosageInstruction": [
            {
                "timing": {"repeat": repeat},
                "doseAndRate": [{"doseQuantity": {"value": 1.5, "unit": "mg/kg"}}],
            }
        ],
    }
    parsed = parse_medication_request(resource, "history", ParseLog())
    assert parsed is not None and parsed.repeat_days == days
