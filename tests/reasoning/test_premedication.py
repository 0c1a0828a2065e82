"""Premedication rule: required roles minus roles already ordered (by agent class)."""

import pytest

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
    # The text names its condition ("In rheumatoid arthritis, give…"): said once.
    assert "- Consider: In rheumatoid arthritis, give methylprednisolone" in "\n".join(f.points)
    assert not any("if rheumatoid arthritis" in p for p in f.points)
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


# -- agents a drug's knowledge rules out for a role (not_covered_by) ------------------------
# Obinutuzumab's label: hydrocortisone is not recommended as the premedication glucocorticoid
# (not effective). Both sides: hydrocortisone alone leaves the role missing; with
# dexamethasone or methylprednisolone it is covered; for other drugs hydrocortisone counts.


def _obinutuzumab_first_dose_with(*agent_ids: str):
    drafts = [("obinutuzumab", order("MedicationRequest/o", dose=1000))]
    agents = [(order(f"MedicationRequest/{a}", text=a), a) for a in agent_ids]
    return situation(drafts, agents=agents)


def test_hydrocortisone_does_not_fill_obinutuzumabs_corticosteroid_role(kb):
    s = _obinutuzumab_first_dose_with("hydrocortisone", "acetaminophen", "diphenhydramine")
    [f] = premedication.evaluate(s, kb)
    assert f.headline == "premedication missing (corticosteroid)"
    assert roles(f) == {"dexamethasone"}
    [note] = [p for p in f.points if p.startswith("- **Does not count:**")]
    assert "hydrocortisone is ordered, but not as the corticosteroid for obinutuzumab" in note
    assert "not been effective in reducing the rate of infusion reactions" in note
    assert "[" not in note  # a verified fact carries no evidence flag
    urls = {c.url for c in f.citations}
    assert "https://www.gazyva.com/hcp/cll/safety/irr-management.html" in urls
    assert any("Already ordered: H1 antihistamine, antipyretic/analgesic" in p for p in f.points)


@pytest.mark.parametrize("steroid", ["dexamethasone", "methylprednisolone"])
def test_a_recommended_glucocorticoid_covers_obinutuzumab_even_beside_hydrocortisone(kb, steroid):
    for agents in ((steroid,), (steroid, "hydrocortisone")):
        s = _obinutuzumab_first_dose_with(*agents, "acetaminophen", "diphenhydramine")
        assert premedication.evaluate(s, kb) == []


def test_hydrocortisone_alone_is_not_named_when_the_role_is_not_required(kb):
    # Obinutuzumab's later infusions need acetaminophen only: nothing about hydrocortisone.
    drafts = [("obinutuzumab", order("MedicationRequest/o", dose=1000))]
    hydrocortisone = order("MedicationRequest/h", text="hydrocortisone")
    s = situation(
        drafts,
        history=given("obinutuzumab", 3, dose=1000),
        agents=[(hydrocortisone, "hydrocortisone")],
    )
    [f] = premedication.evaluate(s, kb)
    assert roles(f) == {"acetaminophen"}
    assert not any("hydrocortisone" in p for p in f.points)


def test_hydrocortisone_covers_the_corticosteroid_role_of_drugs_without_the_exclusion(kb):
    ruled = [
        d.id
        for d in kb.drugs.values()
        for r in d.premedication
        for a in r.agents
        if any(x.agent == "hydrocortisone" for x in a.not_covered_by)
    ]
    assert set(ruled) == {"obinutuzumab"}
    fourth = situation(
        [("glofitamab", order("MedicationRequest/g", dose=30))],
        history=given("glofitamab", 3, dose=30),
        agents=[(order("MedicationRequest/h", text="hydrocortisone"), "hydrocortisone")],
    )
    [f] = premedication.evaluate(fourth, kb)
    assert "dexamethasone" not in roles(f)
    assert any("corticosteroid" in p for p in f.points if p.startswith("- Already ordered"))


def test_exclusions_of_every_applying_entry_for_a_role_hold(kb):
    from dataclasses import replace

    from cds_server.reasoning.dosing import DosePosition

    [with_exclusion] = [
        a for a in kb.drug("obinutuzumab").premedication[0].agents if a.not_covered_by
    ]
    plain = replace(with_exclusion, not_covered_by=())
    dosed_plain = replace(plain, dose=with_exclusion.dose)
    undosed_excluding = replace(with_exclusion, dose=None)
    regimen = kb.drug("obinutuzumab").premedication[0]
    pos = DosePosition(number=1, steps=frozenset(), prior=(), dose_mg=1000.0)
    for first, second in ((dosed_plain, undosed_excluding), (undosed_excluding, dosed_plain)):
        regimens = (replace(regimen, agents=(first,)), replace(regimen, agents=(second,)))
        required, _, _ = premedication.required_roles(regimens, pos)
        entry, _ = required["corticosteroid"]
        assert entry.dose == with_exclusion.dose  # the entry with a dose is kept
        assert [x.agent for x in entry.not_covered_by] == ["hydrocortisone"]


def test_an_entrys_dose_is_never_shown_as_its_alternatives_dose(kb):
    # Obinutuzumab: dexamethasone 20 mg or methylprednisolone 80 mg — "(or methylprednisolone)
    # 20 mg" would read as methylprednisolone 20 mg.
    [steroid] = [a for a in kb.drug("obinutuzumab").premedication[0].agents if a.not_covered_by]
    text = premedication.describe_agent(steroid, kb)
    assert text.startswith("dexamethasone 20 mg intravenous, completed at least 1 hour before")
    assert text.endswith("; or methylprednisolone at its own dose")
    alone = premedication.describe_agent(steroid, kb, alternatives=False)
    assert "methylprednisolone" not in alone
    s = _obinutuzumab_first_dose_with("acetaminophen", "diphenhydramine")
    [f] = premedication.evaluate(s, kb)
    [action] = f.actions
    assert action.label == f"Order {alone}"  # the suggestion orders dexamethasone only
    [undosed] = [
        a
        for r in kb.drug("obinutuzumab").premedication
        for a in r.agents
        if a.role == "h1-antihistamine" and a.dose is None
    ][:1]
    assert "own dose" not in premedication.describe_agent(undosed, kb)


def test_an_agent_no_longer_marketed_is_never_suggested(kb):
    """Elotuzumab's label names ranitidine 50 mg IV; ranitidine left the US market in 2020."""
    assert kb.agents["ranitidine"].marketed is False
    s = situation([("elotuzumab", order("MedicationRequest/e", dose=700))])
    [f] = premedication.evaluate(s, kb)
    assert "ranitidine" not in roles(f)
    [h2] = [a for a in f.actions if a.agent_name == "famotidine"]
    assert h2.dose_low is None and h2.label.endswith("— dose per institutional protocol")
    [missing] = [p for p in f.points if p.startswith("- **Missing:** ranitidine")]
    assert "ranitidine (no longer marketed) 50 mg" in missing


def test_an_ordered_agent_no_longer_marketed_still_covers_its_role(kb):
    ranitidine = order("MedicationRequest/rn", text="ranitidine 50 mg IV")
    s = situation(
        [("elotuzumab", order("MedicationRequest/e", dose=700))],
        agents=[(ranitidine, "ranitidine")],
    )
    [f] = premedication.evaluate(s, kb)
    assert "famotidine" not in roles(f)
    assert any("H2 antagonist" in p for p in f.points if p.startswith("- Already ordered"))


def test_paclitaxel_alternatives_leave_out_ranitidine(kb):
    s = situation([("paclitaxel", order("MedicationRequest/p", dose=300))])
    [f] = premedication.evaluate(s, kb)
    [h2] = [p for p in f.points if "cimetidine" in p and p.startswith("- **Missing:**")]
    assert "ranitidine" not in h2 and h2.endswith("; or famotidine at its own dose")
