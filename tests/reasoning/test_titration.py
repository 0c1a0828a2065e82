"""Rate-titration rule, with vectors on both sides of the start rate."""

import pytest

from cds_server.reasoning import titration

from .builders import given, order, situation


def run(kb, *, rate=None, unit="mg/h", prior=0, dose=700, volume=None, history_known=True):
    s = situation(
        [
            (
                "rituximab",
                order("MedicationRequest/r", dose=dose, rate=rate, rate_unit=unit, volume=volume),
            )
        ],
        history=given("rituximab", prior, dose=dose),
        history_known=history_known,
    )
    return titration.evaluate(s, kb)


@pytest.mark.parametrize(("rate", "cards"), [(25, 0), (50, 0), (51, 1), (100, 1)])
def test_first_infusion_threshold_50_mg_h(kb, rate, cards):
    found = run(kb, rate=rate)
    assert len(found) == cards
    if cards:
        assert found[0].indicator == "warning"
        [action] = found[0].actions
        assert action.new_rate.value == 50
        assert found[0].table[1][0] == "50 mg/h"


@pytest.mark.parametrize(("rate", "cards"), [(100, 0), (101, 1), (150, 1)])
def test_subsequent_infusion_threshold_100_mg_h(kb, rate, cards):
    found = run(kb, rate=rate, prior=1)
    assert len(found) == cards
    if cards:
        assert found[0].actions[0].new_rate.value == 100


def test_no_rate_shows_the_schedule_as_info(kb):
    [f] = run(kb, rate=None)
    assert f.indicator == "info"
    assert f.table[0] == ("Start", "Increase", "Every", "Maximum")
    assert f.table[1] == ("50 mg/h", "50 mg/h", "30 min", "400 mg/h")


def test_rapid_schedule_is_only_an_eligibility_note(kb):
    [f] = run(kb, rate=None, prior=1)
    assert any("90-minute" in p and "May be eligible" in p for p in f.points)
    assert f.table[1][0] == "100 mg/h"


def test_unknown_history_uses_the_slowest_schedule_and_says_so(kb):
    [f] = run(kb, rate=None, history_known=False)
    assert f.table[1][0] == "50 mg/h"
    assert any("first or later" in u for u in f.unknowns)


@pytest.mark.parametrize(("ml_h", "cards"), [(25, 0), (26, 1)])
def test_ml_per_hour_is_converted_through_the_bag_concentration(kb, ml_h, cards):
    # 500 mg in 250 mL = 2 mg/mL: 25 mL/h = 50 mg/h (allowed), 26 mL/h = 52 mg/h (too fast).
    found = run(kb, rate=ml_h, unit="mL/h", dose=500, volume=250)
    assert len(found) == cards
    if cards:
        assert found[0].actions[0].new_rate.unit == "mL/h"
        assert found[0].actions[0].new_rate.value == pytest.approx(25)


def test_rate_in_other_unit_without_volume_is_reported_not_guessed(kb):
    [f] = run(kb, rate=80, unit="mL/h", volume=None)
    assert f.indicator == "info"
    assert not f.actions
    assert any("compares with the schedule in mg/h" in u for u in f.unknowns)


def test_incomplete_history_with_an_earlier_dose_is_still_a_later_infusion(kb):
    # Page 1 of a paginated history already shows one dose: this cannot be the first infusion.
    [f] = run(kb, rate=None, prior=1, history_known=False)
    assert f.table[1][0] == "100 mg/h"
    assert any("exact dose number" in u for u in f.unknowns)
