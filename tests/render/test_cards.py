"""Rendering: card hygiene, merging, critical gating, escaping, FHIR-valid suggestions."""

import itertools

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_server.knowledge.loader import load_knowledge
from cds_server.model import (
    Citation,
    Coding,
    Finding,
    ProposedMedication,
    ProposedRateChange,
    ProposedServiceRequest,
    Quantity,
)
from cds_server.render.cards import render_cards, within_budget
from tests.reasoning.builders import order

VERIFIED = Citation("Label", "https://example.org/label", "2026", "verified")
UNVERIFIED = Citation("Memory", None, None, "unverified")


@pytest.fixture(scope="module")
def kb():
    return load_knowledge()


def uuids():
    counter = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(counter):012d}"


def finding(**kw):
    base = dict(
        topic="premedication",
        drug_id="rituximab",
        drug_name="Rituximab",
        indicator="warning",
        headline="premedication missing",
        points=("- a point",),
        citations=(VERIFIED,),
    )
    return Finding(**(base | kw))


def render(kb, findings, **kw):
    return render_cards(findings, kb, new_uuid=uuids(), patient_id="p1", **kw)


def test_card_shape(kb):
    [card] = render(kb, [finding()])
    assert card["uuid"] and card["indicator"] == "warning"
    assert card["source"]["topic"] == {
        "system": kb.policy.system,
        "code": "Premedication",
        "display": kb.policy.topic("premedication").display,
    }
    assert kb.version in card["source"]["label"]
    assert {r["code"] for r in card["overrideReasons"]} >= {"premedication-ordered-elsewhere"}
    assert all(r["display"] and r["system"] for r in card["overrideReasons"])
    assert "**Sources:**" in card["detail"] and "(verified)" in card["detail"]
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_summary_is_cut_below_140(kb):
    [card] = render(kb, [finding(headline="x" * 300)])
    assert len(card["summary"]) < 140


def test_same_topic_and_drug_merge_into_one_card(kb):
    cards = render(kb, [finding(points=("- a",)), finding(points=("- b",), indicator="info")])
    assert len(cards) == 1
    assert "- a" in cards[0]["detail"] and "- b" in cards[0]["detail"]
    assert cards[0]["indicator"] == "warning"


def test_cards_sorted_by_indicator(kb):
    cards = render(
        kb,
        [
            finding(indicator="info", topic="rate-titration"),
            finding(indicator="critical", topic="prior-reaction"),
            finding(indicator="warning"),
        ],
    )
    assert [c["indicator"] for c in cards] == ["critical", "warning", "info"]


def test_critical_without_any_verified_fact_is_lowered(kb):
    [card] = render(
        kb, [finding(indicator="critical", topic="prior-reaction", citations=(UNVERIFIED,))]
    )
    assert card["indicator"] == "warning"
    [kept] = render(kb, [finding(indicator="critical", topic="prior-reaction")])
    assert kept["indicator"] == "critical"


def test_html_in_patient_or_knowledge_text_is_escaped_as_markdown(kb):
    points = ("- <script>alert(1)</script> & <b>x</b> &amp; [a](https://evil.example) < 30 kg",)
    [card] = render(kb, [finding(points=points)])
    detail = card["detail"]
    assert "\\<script>alert(1)\\</script>" in detail and "\\<b>" in detail
    assert "\\&amp;" in detail and "[a\\](https" in detail
    # what cannot become markup is left as written: no HTML entities in the text
    assert "& \\<b>" in detail and "< 30 kg" in detail and "&lt;" not in detail


def test_semantic_tags_and_empty_parentheses_are_removed(kb):
    points = ("- Anaphylaxis (disorder), Hives (finding), Severe (qualifier value); code ()",)
    [card] = render(kb, [finding(points=points, headline="Urticaria (disorder) on record")])
    assert "- Anaphylaxis, Hives, Severe; code" in card["detail"]
    assert card["summary"] == "Rituximab: Urticaria on record"


def test_suggestions_are_valid_fhir_r4_with_uuids(kb):
    actions = (
        ProposedMedication(
            label="Order diphenhydramine",
            agent_name="diphenhydramine",
            coding=Coding("http://www.nlm.nih.gov/research/umls/rxnorm", "3498", "diphenhydramine"),
            dose_low=Quantity(25, "mg"),
            dose_high=Quantity(50, "mg"),
            route="intravenous",
            timing_text="30 minutes before rituximab",
            recommended=True,
        ),
        ProposedServiceRequest(label="Order hospitalization 24 h", text="Admit for 24 h"),
        ProposedRateChange(
            label="Set the starting rate to 50 mg/h",
            order=order("MedicationRequest/r", dose=700, rate=100),
            new_rate=Quantity(50, "mg/h"),
        ),
    )
    [card] = render(kb, [finding(actions=actions)])
    assert card["selectionBehavior"] == "any"
    assert len({s["uuid"] for s in card["suggestions"]} | {card["uuid"]}) == 4
    med, service, update = (s["actions"][0] for s in card["suggestions"])
    assert med["type"] == "create" and service["type"] == "create" and update["type"] == "update"
    MedicationRequest.model_validate(med["resource"])
    ServiceRequest.model_validate(service["resource"])
    MedicationRequest.model_validate(update["resource"])
    dose = med["resource"]["dosageInstruction"][0]["doseAndRate"][0]["doseRange"]
    assert (dose["low"]["value"], dose["high"]["value"]) == (25, 50)
    rate = update["resource"]["dosageInstruction"][0]["doseAndRate"][0]["rateQuantity"]
    assert rate["value"] == 50 and rate["unit"] == "mg/h"
    assert update["resource"]["id"] == "r"  # the whole resource, same id


def test_no_empty_or_null_fields(kb):
    [card] = render(kb, [finding(points=(), citations=())])

    def walk(value):
        assert value is not None and value not in ("", [], {})
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(card)


def test_rate_update_for_a_draft_without_id_is_dropped_not_sent(kb):
    nameless = order("MedicationRequest/r", dose=700, rate=100)
    resource = dict(nameless.resource)
    resource.pop("id")
    action = ProposedRateChange(
        label="Set the starting rate to 50 mg/h",
        order=type(nameless)(**{**nameless.__dict__, "resource": resource}),
        new_rate=Quantity(50, "mg/h"),
    )
    [card] = render(kb, [finding(actions=(action,))])
    assert "suggestions" not in card


def test_suggested_resources_are_checked_plain_first_then_by_the_model() -> None:
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    from cds_server.render.suggestions import InvalidSuggestion, _validated

    plain = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "diphenhydramine"},
    }
    assert _validated(MedicationRequest, plain) is plain
    # valid R4 the plain check does not cover (an extension): accepted through the model
    extended = {**plain, "extension": [{"url": "http://example.org/x", "valueString": "y"}]}
    assert _validated(MedicationRequest, extended) is extended
    for broken in ({**plain, "status": ""}, {**plain, "intent": 5}, {**plain, "subject": "p1"}):
        with pytest.raises(InvalidSuggestion):
            _validated(MedicationRequest, broken)
    missing = {k: v for k, v in plain.items() if k != "status"}
    with pytest.raises(InvalidSuggestion):
        _validated(MedicationRequest, missing)


def test_budget_leaves_out_whole_conditional_notes_first():
    points = [
        "- **Missing:** diphenhydramine 50 mg.",
        "- Label: " + "l" * 300 + ".",
        "- Consider, if rheumatoid arthritis: " + "c" * 300 + ".",
        "- Also, if treated under the EU SmPC: " + "e" * 300 + ".",
    ]
    kept = within_budget(points, 0, budget=500)
    assert kept[:2] == points[:2]  # whole points, never a part of one
    assert kept[2] == "- 2 more notes left out to keep this card short (see the sources)."
    assert len(kept) == 3
    assert within_budget(points[:2], 0, budget=500) == points[:2]


def test_budget_keeps_the_first_point_and_what_changes_the_action():
    points = [
        "- Reaction on record: " + "r" * 400,
        "- **Do not give by standard infusion.**",
        "- Tier lowered: a later dose was completed.",
        "- Desensitization outcomes: " + "d" * 400,
    ]
    kept = within_budget(points, 0, budget=600)
    assert kept == [
        *points[:3],
        "- 1 more note left out to keep this card short (see the sources).",
    ]


def test_sources_are_listed_once_strongest_first(kb):
    lee_a = Citation(
        "Lee, Matulonis, Castells. Carboplatin 12-step. Gynecol Oncol 2004", None, None, "verified"
    )
    lee_b = Citation(
        "Lee CW, Matulonis UA, Castells MC. Carboplatin 12-step. Gynecol Oncol 2004",
        None,
        None,
        "secondary",
    )
    site = Citation("Patient site", "https://example.org/p", None, "unverified")
    same_url = Citation("Patient site, other wording", "https://example.org/p/", None, "unverified")
    [card] = render(kb, [finding(citations=(site, lee_a, same_url, lee_b, VERIFIED))])
    sources = card["detail"].split("**Sources:**\n")[1].split("\n")
    assert sources == [
        "- [Label — 2026](https://example.org/label) *(verified)*",
        "- Lee CW, Matulonis UA, Castells MC. Carboplatin 12-step. Gynecol Oncol 2004"
        " *(secondary)*",
        "- [Patient site](https://example.org/p) *(unverified)*",
    ]


def test_sub_bullets_keep_their_indent(kb):
    [card] = render(kb, [finding(points=("- A point", "  - its sub-point  with  spaces"))])
    assert card["detail"].startswith("- A point\n  - its sub-point with spaces")
