"""The example site overlay, end to end through the pipeline with EHR-shaped requests: the
preferred H1 agent with its institution source (the label still cited), the 90-minute rituximab
regimen applied only when eligible, a rule switched off for one drug, an observation time, and
the jurisdiction setting (ex-US statements only under a matching one)."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_server import pipeline
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge.overlay import load_view
from cds_server.model import ProposedMedication, ProposedServiceRequest
from tests.conftest import FIXTURES, REQUESTS, ROOT, rule_of

EXAMPLE = ROOT / "fixtures" / "site-example"
CYCLE_2 = EXAMPLE / "requests" / "order-sign-rituximab-cycle-2.json"
CYCLE_2_DAY = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)  # the request's cycle 2 day 1
SCENARIO_DAY = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)  # the scenarios' "today"
SIGN = "infusion-safety-sign"


@pytest.fixture(scope="module")
def site(kb: KnowledgeBase) -> KnowledgeBase:
    return load_view(kb, EXAMPLE)


def evaluate(
    body: dict[str, Any], kb: KnowledgeBase, now: datetime = CYCLE_2_DAY, service: str = SIGN
) -> pipeline.Evaluation:
    return pipeline.run(copy.deepcopy(body), service_id=service, kb=kb, now=now)


def cards_of(ev: pipeline.Evaluation) -> dict[str, dict[str, Any]]:
    return {rule_of(c): c for c in ev.response["cards"]}


def cycle_2() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(CYCLE_2.read_text())
    return body


def draft(body: dict[str, Any]) -> dict[str, Any]:
    resource: dict[str, Any] = body["context"]["draftOrders"]["entry"][0]["resource"]
    return resource


def set_rate(body: dict[str, Any], value: float | None) -> dict[str, Any]:
    dose_and_rate = draft(body)["dosageInstruction"][0]["doseAndRate"][0]
    if value is None:
        del dose_and_rate["rateQuantity"]
    else:
        dose_and_rate["rateQuantity"]["value"] = value
    return body


def first_infusion() -> dict[str, Any]:
    """The same order with no earlier rituximab dose on record."""
    body = cycle_2()
    meds = body["prefetch"]["medications"]
    meds["entry"] = [e for e in meds["entry"] if "rituximab" not in e["resource"]["id"]]
    meds["total"] = len(meds["entry"])
    return body


def with_rituximab_reaction() -> dict[str, Any]:
    """The cycle 2 order of a patient with a (moderate) infusion reaction to rituximab on record."""
    body = cycle_2()
    allergies = body["prefetch"]["allergies"]
    allergies["entry"].append(
        {
            "fullUrl": "https://ehr.example.org/fhir/AllergyIntolerance/ai-001-rtx",
            "resource": {
                "resourceType": "AllergyIntolerance",
                "id": "ai-001-rtx",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                            "code": "confirmed",
                        }
                    ]
                },
                "type": "allergy",
                "category": ["medication"],
                "code": {
                    "coding": [
                        {
                            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                            "code": "121191",
                            "display": "rituximab",
                        }
                    ],
                    "text": "rituximab",
                },
                "patient": {"reference": "Patient/pat-lym-001"},
                "recordedDate": "2026-11-14",
                "reaction": [
                    {
                        "manifestation": [{"text": "rigors and flushing during the infusion"}],
                        "severity": "moderate",
                    }
                ],
            },
        }
    )
    allergies["total"] = len(allergies["entry"])
    return body


def test_the_preferred_h1_agent_is_shown_with_its_institution_source(
    kb: KnowledgeBase, site: KnowledgeBase
) -> None:
    label = cards_of(evaluate(cycle_2(), kb))["premedication"]
    local_ev = evaluate(cycle_2(), site)
    local = cards_of(local_ev)["premedication"]
    assert "**Missing:** diphenhydramine" in label["detail"]
    assert "Institution protocol" not in label["detail"]
    detail = local["detail"]
    assert "**Missing:** cetirizine 10 mg intravenous, before each infusion" in detail
    assert (
        "**Institution protocol ONC-PRE-07 v3** (Pharmacy & Therapeutics Committee, approved "
        "2026-09-14): cetirizine 10 mg intravenous instead of diphenhydramine." in detail
    )
    sources = detail.split("**Sources:**")[1]
    assert "Institution protocol ONC-PRE-07 v3" in sources and "*(institution)*" in sources
    # The label fact it replaces is still cited, as in the card without the overlay.
    for line in label["detail"].split("**Sources:**")[1].strip().splitlines():
        assert line in sources
    (suggestion,) = local["suggestions"]
    assert suggestion["label"] == "Order cetirizine 10 mg intravenous, before each infusion"
    resource = suggestion["actions"][0]["resource"]
    assert resource["medicationCodeableConcept"]["coding"][0]["code"] == "20610"
    assert resource["dosageInstruction"][0]["doseAndRate"][0]["doseQuantity"]["value"] == 10
    (action,) = next(f for f in local_ev.findings if f.topic == "premedication").actions
    assert isinstance(action, ProposedMedication) and action.agent_id == "cetirizine"
    assert site.site is not None and action.agent_id in site.site.order_codes
    assert local["source"]["label"].endswith(f"({site.version})")
    assert label["source"]["label"].endswith(f"({kb.version})")


def test_an_eligible_patient_gets_the_90_minute_schedule_accepted(
    kb: KnowledgeBase, site: KnowledgeBase
) -> None:
    label = cards_of(evaluate(cycle_2(), kb))["rate-titration"]
    assert label["indicator"] == "warning"
    assert "exceeds the start rate 100 mg/h" in label["summary"]
    card = cards_of(evaluate(cycle_2(), site))["rate-titration"]
    assert card["indicator"] == "info"
    assert card["summary"] == (
        "Rituximab: rate follows the institution's 90-minute infusion (ONC-RIT-04 v2)"
    )
    detail = card["detail"]
    assert (
        "Checked: infusion 2 or later of rituximab (this is infusion 2); no reaction to "
        "rituximab in the allergy records." in detail
    )
    assert "280 mg/h is within its first phase" in detail
    assert "left out" not in detail
    assert "**Confirm (not checked):** previously untreated follicular lymphoma or DLBCL" in detail
    assert "lymphocyte count below 5,000/mm3 before cycle 2" in detail
    assert "| 1 | 20% (140 mg) | 30 min | 280 mg/h |" in detail
    assert "| 2 | 80% (560 mg) | 60 min | 560 mg/h |" in detail
    sources = detail.split("**Sources:**")[1]
    assert sources.index("ONC-RIT-04 v2") < sources.index("Rituxan (rituximab) injection")
    assert "suggestions" not in card


def test_an_eligible_order_without_a_rate_is_offered_both_schedules(site: KnowledgeBase) -> None:
    card = cards_of(evaluate(set_rate(cycle_2(), None), site))["rate-titration"]
    assert card["indicator"] == "info"
    assert "titrate from 100 mg/h" in card["summary"]
    assert (
        "**Institution protocol ONC-RIT-04 v2** (Pharmacy & Therapeutics Committee, approved "
        "2026-09-14): 90-minute infusion" in card["detail"]
    )
    assert "140 mg over 30 min (280 mg/h), then 560 mg over 60 min (560 mg/h)" in card["detail"]


def test_an_eligible_order_faster_than_both_is_offered_both_rates(site: KnowledgeBase) -> None:
    card = cards_of(evaluate(set_rate(cycle_2(), 600), site))["rate-titration"]
    assert card["indicator"] == "warning"
    assert "exceeds the start rate 100 mg/h" in card["summary"]
    labels = [(s["label"], s.get("isRecommended", False)) for s in card["suggestions"]]
    assert labels == [
        ("Set the starting rate to 100 mg/h", True),
        ("Set the rate to 280 mg/h (first phase of the institution's 90-minute infusion)", False),
    ]


def test_a_first_infusion_gets_the_label_titration_only(
    kb: KnowledgeBase, site: KnowledgeBase
) -> None:
    label = cards_of(evaluate(first_infusion(), kb))["rate-titration"]
    local = cards_of(evaluate(first_infusion(), site))["rate-titration"]
    assert local["indicator"] == "warning"
    assert "exceeds the start rate 50 mg/h (First infusion)" in local["summary"]
    assert "ONC-RIT-04" not in local["detail"] and "90-minute" not in local["detail"]
    assert [s["label"] for s in local["suggestions"]] == ["Set the starting rate to 50 mg/h"]
    assert label["summary"] == local["summary"]


def test_a_reaction_on_record_keeps_the_label_titration_and_says_why(site: KnowledgeBase) -> None:
    card = cards_of(evaluate(with_rituximab_reaction(), site))["rate-titration"]
    assert card["indicator"] == "warning"
    assert "exceeds the start rate 100 mg/h (Subsequent infusions)" in card["summary"]
    assert (
        "Institution protocol ONC-RIT-04 v2: the 90-minute infusion is not for this patient "
        "(a reaction to rituximab is on record)." in card["detail"]
    )
    assert [s["label"] for s in card["suggestions"]] == ["Set the starting rate to 100 mg/h"]


def incomplete_history(body: dict[str, Any]) -> dict[str, Any]:
    """The medication search as a first page whose next page cannot be fetched."""
    body["prefetch"]["medications"]["link"].append(
        {"relation": "next", "url": "https://ehr.example.org/fhir/MedicationRequest?page=2"}
    )
    return body


def test_an_incomplete_history_applies_the_regimen_only_on_what_it_proves(
    site: KnowledgeBase,
) -> None:
    # A cycle 1 dose on record proves this is infusion 2 or later, however many pages follow.
    ev = evaluate(incomplete_history(cycle_2()), site)
    assert cards_of(ev)["rate-titration"]["indicator"] == "info"
    (finding,) = [f for f in ev.findings if f.topic == "rate-titration"]
    assert any(
        "infusion 2 or later of rituximab (earlier doses on record)" in p for p in finding.points
    )
    # Without one, whether it is a later infusion is unknown: not applied, and said.
    unknown = cards_of(evaluate(incomplete_history(first_infusion()), site))["rate-titration"]
    assert unknown["indicator"] == "warning"
    assert "90-minute" not in unknown["summary"]
    assert (
        "whether the institution's 90-minute infusion applies: whether this is infusion 2 or "
        "later (medication history)" in unknown["detail"]
    )


def test_a_rule_switched_off_gives_no_card_for_that_drug_only(
    kb: KnowledgeBase, site: KnowledgeBase
) -> None:
    body = json.loads(
        (FIXTURES / "scenarios" / "daratumumab-second-premeds-missing.request.json").read_text()
    )
    assert "premedication" in cards_of(evaluate(body, kb, SCENARIO_DAY))
    ev = evaluate(body, site, SCENARIO_DAY)
    assert "premedication" not in cards_of(ev)
    assert not [f for f in ev.findings if f.topic == "premedication"]
    assert not [c for c in ev.issued if c.topic == "premedication"]  # nothing to log or count
    # Premedication of other drugs is untouched (rituximab, above, still gets its card).
    assert "premedication" in cards_of(evaluate(cycle_2(), site))


def test_the_observation_time_of_the_site_is_shown_beside_the_label_text(
    kb: KnowledgeBase, site: KnowledgeBase
) -> None:
    body = json.loads((REQUESTS / "patient-view-lymphoma.json").read_text())
    for entry in body["prefetch"]["medications"]["entry"]:
        resource = entry["resource"]
        if resource["id"] == "mr-001-rituximab-c1":
            resource["medicationCodeableConcept"] = {
                "coding": [
                    {
                        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                        "code": "1298944",
                        "display": "pertuzumab",
                    }
                ],
                "text": "pertuzumab 420 mg IV",
            }
    summary = "infusion-risk-summary"
    label = cards_of(evaluate(body, kb, SCENARIO_DAY, summary))["patient-summary"]
    local = cards_of(evaluate(body, site, SCENARIO_DAY, summary))["patient-summary"]
    assert "next dose: observation 30 min. Observe for 30-60 minutes" in label["detail"]
    assert "next dose: observation 60 min. Observe for 30-60 minutes" in local["detail"]
    assert (
        "  - **Institution protocol ONC-OBS-02 v1** (Oncology Nursing Practice Council, approved "
        "2026-05-20): observation 60 min instead of 30 min." in local["detail"]
    )
    assert "*(institution)*" in local["detail"]


def test_the_allergy_referral_names_its_referral_id(site: KnowledgeBase) -> None:
    body = json.loads((REQUESTS / "patient-view-prior-reaction.json").read_text())
    # The patient's rituximab anaphylaxis, at order-sign of a new rituximab dose.
    sign = cycle_2()
    sign["prefetch"]["allergies"] = body["prefetch"]["allergies"]
    ev = evaluate(sign, site)
    referrals = [
        a
        for f in ev.findings
        for a in f.actions
        if isinstance(a, ProposedServiceRequest) and a.referral == "allergy-immunology"
    ]
    assert referrals and site.site is not None
    assert "allergy-immunology" in site.site.order_codes


def teclistamab_step_up_1() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (FIXTURES / "scenarios" / "teclistamab-sud1-mg-per-kg.request.json").read_text()
    )
    return body


def test_ex_us_statements_are_hidden_by_default(kb: KnowledgeBase) -> None:
    card = cards_of(evaluate(teclistamab_step_up_1(), kb, SCENARIO_DAY))["monitoring-admission"]
    assert "Hospitalize for 48 hours" in card["detail"]
    assert "EU-style SmPC" not in card["detail"] and "outside the US" not in card["detail"]


def test_ex_us_statements_appear_under_a_matching_jurisdiction(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    overlay = {
        "format": "infusion-site-overlay/1",
        "protocols": {
            "gov": {
                "document": "GOV-EU",
                "title": "Decision support under the EU SmPCs",
                "version": "1",
                "approved_by": "Drug and Therapeutics Committee",
                "approved_on": "2026-01-15",
            }
        },
        "jurisdiction": {"value": "EU", "protocol": "gov"},
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(overlay), encoding="utf-8")
    eu = load_view(kb, tmp_path)
    assert eu.jurisdiction == "EU"
    card = cards_of(evaluate(teclistamab_step_up_1(), eu, SCENARIO_DAY))["monitoring-admission"]
    assert "**Proximity (48 h):** EU-style SmPC: remain within proximity" in card["detail"]
    assert "Hospitalize for 48 hours" in card["detail"]  # the US label statement stays
    assert "verified, EU/HK" in card["detail"]  # the source says whose label it is
