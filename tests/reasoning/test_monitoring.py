"""Monitoring/admission and pretreatment rules around glofitamab step-up doses."""

import pytest

from cds_server.model import RecognisedOrder
from cds_server.reasoning import monitoring, pretreatment

from .builders import days_ago, given, order, situation


def glofit(dose, prior=()):
    return situation([("glofitamab", order("MedicationRequest/g", dose=dose))], history=list(prior))


def test_step_up_dose_1_requires_24_h_hospitalization(kb):
    [f] = monitoring.evaluate(glofit(2.5), kb)
    assert f.indicator == "warning"
    assert "hospitalize for 24 h" in f.headline
    assert any("step-up dose 1 (2.5 mg, cycle 1 day 8)" in p for p in f.points)
    [action] = f.actions
    assert action.recommended and "Hospitalize" in action.text


@pytest.mark.parametrize("dose", [2.25, 2.5, 2.75])
def test_dose_rounding_within_tolerance_still_matches_step(kb, dose):
    assert monitoring.evaluate(glofit(dose), kb)


@pytest.mark.parametrize("dose", [2.2, 2.8])
def test_dose_outside_tolerance_is_not_the_step(kb, dose):
    assert monitoring.evaluate(glofit(dose), kb) == []


def test_step_up_dose_2_only_reminds_of_the_crs_conditional_admission(kb):
    [f] = monitoring.evaluate(glofit(10, given("glofitamab", 1, dose=2.5)), kb)
    assert f.indicator == "info" and not f.actions
    assert any("If any-grade CRS occurred with step-up dose 1" in p for p in f.points)


def test_repeat_of_a_dose_level_is_not_a_step_up(kb):
    assert monitoring.evaluate(glofit(2.5, given("glofitamab", 1, dose=2.5)), kb) == []


def test_maintenance_dose_gives_nothing(kb):
    assert monitoring.evaluate(glofit(30, given("glofitamab", 3, dose=30)), kb) == []


def test_missing_dose_falls_back_to_the_number_of_prior_doses(kb):
    [f] = monitoring.evaluate(glofit(None), kb)
    assert "hospitalize" in f.headline
    assert any("taken from the number of prior doses (0)" in u for u in f.unknowns)


def obinutuzumab_given(days):
    return RecognisedOrder(
        order("MedicationRequest/o", dose=1000, status="completed", when=days_ago(days)),
        "obinutuzumab",
        "test",
    )


def test_missing_obinutuzumab_pretreatment_warns(kb):
    [f] = pretreatment.evaluate(glofit(2.5), kb)
    assert f.indicator == "warning" and f.topic == "pretreatment"


@pytest.mark.parametrize(("days", "cards"), [(7, 0), (21, 0), (22, 1), (60, 1)])
def test_pretreatment_lookback_window(kb, days, cards):
    s = glofit(2.5, [obinutuzumab_given(days)])
    assert len(pretreatment.evaluate(s, kb)) == cards


def test_pretreatment_in_the_same_order_session_counts(kb):
    s = situation(
        [
            ("glofitamab", order("MedicationRequest/g", dose=2.5)),
            ("obinutuzumab", order("MedicationRequest/o", dose=1000)),
        ]
    )
    assert pretreatment.evaluate(s, kb) == []


def test_pretreatment_only_for_step_up_dose_1(kb):
    assert pretreatment.evaluate(glofit(10, given("glofitamab", 1, dose=2.5)), kb) == []


def test_unknown_history_says_pretreatment_could_not_be_checked(kb):
    s = situation([("glofitamab", order("MedicationRequest/g", dose=2.5))], history_known=False)
    [f] = pretreatment.evaluate(s, kb)
    assert f.indicator == "info" and f.unknowns
