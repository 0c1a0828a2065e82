"""CRS readiness: tocilizumab on hand, weight-based dose on both sides of the 30 kg band."""

import pytest

from cds_server.reasoning import crs

from .builders import order, situation


def sud1(weight=None, agents=None):
    return situation(
        [("glofitamab", order("MedicationRequest/g", dose=2.5))], weight_kg=weight, agents=agents
    )


@pytest.mark.parametrize(
    ("weight", "dose"),
    [(29.9, 359), (30, 240), (70, 560), (100, 800), (120, 800)],
)
def test_weight_based_tocilizumab_dose(kb, weight, dose):
    [f] = crs.evaluate(sud1(weight), kb)
    [action] = f.actions
    assert action.dose_low.value == dose and action.dose_low.unit == "mg"
    assert action.coding.code == "612865"


def test_without_weight_no_dose_is_computed(kb):
    [f] = crs.evaluate(sud1(None), kb)
    assert f.actions[0].dose_low is None
    assert any("weight" in u for u in f.unknowns)


def test_tocilizumab_already_ordered_silences_the_rule(kb):
    toci = order("MedicationRequest/t", text="tocilizumab PRN")
    assert crs.evaluate(sud1(70, agents=[(toci, "tocilizumab")]), kb) == []


def test_drug_without_crs_risk_is_ignored(kb):
    s = situation([("rituximab", order("MedicationRequest/r", dose=700))])
    assert crs.evaluate(s, kb) == []
