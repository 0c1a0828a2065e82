"""Patient-view summary: one info card when a planned dose needs something; none otherwise."""

from cds_server.model import RecognisedOrder
from cds_server.reasoning import run, summary

from .builders import allergy, given, order, situation


def planned(drug_id, dose):
    return RecognisedOrder(
        order(f"MedicationRequest/{drug_id}-next", dose=dose, status="active", draft=False),
        drug_id,
        "test",
    )


def test_planned_step_up_dose_is_summarised(kb):
    s = situation(history=[planned("glofitamab", 2.5)], hook="patient-view")
    [f] = summary.evaluate(s, kb)
    assert f.indicator == "info" and f.topic == "patient-summary"
    assert any("Glofitamab" in p and "hospitalization 24 h" in p for p in f.points)
    assert f.headline == "Glofitamab next dose needs hospitalization 24 h"


def test_known_reaction_to_planned_drug_is_summarised(kb):
    s = situation(
        history=[*given("carboplatin", 2, dose=600), planned("carboplatin", 600)],
        allergies=[allergy("carboplatin", anaphylaxis=True)],
        hook="patient-view",
    )
    [f] = summary.evaluate(s, kb)
    assert "severe reaction on record" in f.headline
    assert any("Do not give carboplatin by standard infusion" in p for p in f.points)
    assert f.indicator == "critical"


def test_summary_indicator_is_the_order_sign_indicator_for_the_same_fact(kb):
    """The same anaphylaxis to a planned dose: critical on order-sign and on patient-view; a
    dose tolerated since lowers both to warning, and the summary no longer says do not give."""
    for tolerated, want in ((False, "critical"), (True, "warning")):
        history = [*given("carboplatin", 2, dose=600)]
        if tolerated:
            history += given("carboplatin", 1, dose=600, start_days_ago=5)
        record = [allergy("carboplatin", anaphylaxis=True)]
        sign = situation(
            [("carboplatin", order("MedicationRequest/c", dose=600))],
            history=history,
            allergies=record,
        )
        [reaction] = [f for f in run(sign, kb) if f.topic == "prior-reaction"]
        view = situation(
            history=[*history, planned("carboplatin", 600)], allergies=record, hook="patient-view"
        )
        [f] = summary.evaluate(view, kb)
        assert reaction.indicator == f.indicator == want
        assert any("Do not give" in p for p in f.points) is (want == "critical")


def test_nothing_applies_gives_no_card(kb):
    s = situation(
        history=[*given("glofitamab", 3, dose=30), planned("glofitamab", 30)], hook="patient-view"
    )
    assert summary.evaluate(s, kb) == []


def test_summary_only_on_patient_view_and_other_rules_silent_there(kb):
    s = situation(history=[planned("glofitamab", 2.5)], hook="patient-view")
    findings = run(s, kb)
    assert [f.topic for f in findings] == ["patient-summary"]
    assert summary.evaluate(situation(history=[planned("glofitamab", 2.5)]), kb) == []
