"""Premedication rule: required roles minus roles already ordered (by agent class)."""

from cds_server.reasoning import premedication

from .builders import given, order, situation


def roles(finding):
    return {a.agent_name for a in finding.actions}


def test_all_missing_gives_one_warning_with_a_suggestion_per_agent(kb):
    s = situation([("rituximab", order("MedicationRequest/r", dose=700))])
    [f] = premedication.evaluate(s, kb)
    assert f.indicator == "warning"
    assert f.topic == "premedication"
    assert roles(f) == {"acetaminophen", "diphenhydramine"}
    assert all(a.recommended for a in f.actions)
    codes = {a.coding.code for a in f.actions if a.coding}
    assert codes == {"161", "3498"}  # verified RxNorm INs from the knowledge


def test_agent_of_same_class_in_draft_covers_the_role(kb):
    cetirizine = order("MedicationRequest/c", text="cetirizine 10 mg PO")
    s = situation(
        [("rituximab", order("MedicationRequest/r", dose=700))], agents=[(cetirizine, "cetirizine")]
    )
    [f] = premedication.evaluate(s, kb)
    assert roles(f) == {"acetaminophen"}
    assert any("Already ordered: H1 antihistamine" in p for p in f.points)


def test_active_order_in_history_covers_the_role(kb):
    apap = order("MedicationRequest/a", status="active", draft=False)
    dph = order("MedicationRequest/d", status="active", draft=False)
    s = situation(
        [("rituximab", order("MedicationRequest/r", dose=700))],
        agents=[(apap, "acetaminophen"), (dph, "diphenhydramine")],
    )
    assert premedication.evaluate(s, kb) == []


def test_completed_premedication_in_history_does_not_cover(kb):
    old = order("MedicationRequest/a", status="completed", draft=False)
    s = situation([("rituximab", order("MedicationRequest/r"))], agents=[(old, "acetaminophen")])
    [f] = premedication.evaluate(s, kb)
    assert "acetaminophen" in roles(f)


def test_conditional_regimen_is_a_note_never_a_suggestion(kb):
    s = situation([("rituximab", order("MedicationRequest/r"))])
    [f] = premedication.evaluate(s, kb)
    assert any(p.startswith("- Consider, if rheumatoid arthritis") for p in f.points)
    assert "methylprednisolone" not in roles(f)


def test_glofitamab_fourth_dose_needs_corticosteroid_fifth_does_not(kb):
    fourth = situation(
        [("glofitamab", order("MedicationRequest/g", dose=30))],
        history=given("glofitamab", 3, dose=30),
    )
    fifth = situation(
        [("glofitamab", order("MedicationRequest/g", dose=30))],
        history=given("glofitamab", 4, dose=30),
    )
    [f4] = premedication.evaluate(fourth, kb)
    [f5] = premedication.evaluate(fifth, kb)
    assert "dexamethasone" in roles(f4)
    assert "dexamethasone" not in roles(f5)
    assert roles(f5) == {"acetaminophen", "diphenhydramine"}


def test_order_select_advises_only_on_selected_orders(kb):
    s = situation(
        [("rituximab", order("MedicationRequest/r", selected=False))], hook="order-select"
    )
    assert premedication.evaluate(s, kb) == []


def test_unrelated_drug_without_premedication_gives_nothing(kb):
    s = situation([("obinutuzumab", order("MedicationRequest/o"))])
    # obinutuzumab's premedication is knowledge-dependent; a drug with none must be silent.
    drug = kb.drug("obinutuzumab")
    result = premedication.evaluate(s, kb)
    assert bool(result) == bool(drug.premedication)
