"""Indication-specific facts (``applies.indications``): read from the order's own indication
(``reasonCode``, ``reasonReference``), shown when it matches, left out when the order names
another diagnosis, a "consider" note when it names none; odd indications never break a call."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import yaml
from flask.testing import FlaskClient

from cds_server import pipeline
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.loader import DEFAULT_CARDS_DIR, KnowledgeError, load_knowledge
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.content import applies_in_words
from cds_server.model import Coding
from cds_server.reasoning import monitoring, premedication
from cds_server.reasoning.dosing import position
from tests.reasoning.builders import order, situation
from tests.scenarios.test_scenarios import call, load_scenario

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10CM_OID = "urn:oid:2.16.840.1.113883.6.90"
RA_NOTE = "In rheumatoid arthritis, give methylprednisolone 100 mg IV"
CONSIDER_RA = f"- Consider: {RA_NOTE}"
LABEL_RA = f"- Label: {RA_NOTE}"


def no_fetch(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the indication is read from the request: no FHIR call")


def rituximab_request(change: Callable[[dict[str, Any], dict[str, Any]], None]) -> dict[str, Any]:
    """The first-rituximab scenario (premedication missing), its draft order changed."""
    body, _ = load_scenario("rituximab-first-premeds-missing")
    body = copy.deepcopy(body)
    change(body, body["context"]["draftOrders"]["entry"][0]["resource"])
    return body


def with_reason(*concepts: Any) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    def change(body: dict[str, Any], mr: dict[str, Any]) -> None:
        mr["reasonCode"] = list(concepts)

    return change


def coded(system: str, code: Any, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding]}


def evaluate(body: dict[str, Any], kb: KnowledgeBase) -> pipeline.Evaluation:
    return pipeline.run(
        body,
        service_id="infusion-safety-sign",
        kb=kb,
        settings=FhirSettings(),
        client_factory=no_fetch,
    )


def premedication_detail(evaluation: pipeline.Evaluation) -> str:
    [card] = [c for c in evaluation.response["cards"] if "premedication" in c["summary"]]
    return str(card["detail"])


def test_without_an_indication_the_ra_statement_is_a_consider_note(kb: KnowledgeBase) -> None:
    detail = premedication_detail(evaluate(rituximab_request(lambda b, mr: None), kb))
    assert CONSIDER_RA in detail


def test_a_lymphoma_coded_order_gets_no_rheumatoid_arthritis_line(kb: KnowledgeBase) -> None:
    dlbcl = coded(ICD10CM, "C83.30", "Diffuse large B-cell lymphoma, unspecified site")
    evaluation = evaluate(rituximab_request(with_reason(dlbcl)), kb)
    detail = premedication_detail(evaluation)
    assert "rheumatoid" not in detail
    assert "acetaminophen" in detail  # the every-infusion regimen still applies
    assert evaluation.record.warnings == ()


def test_a_ra_coded_order_gets_the_ra_premedication_as_applicable(kb: KnowledgeBase) -> None:
    ra = coded(ICD10CM, "M05.9", "Rheumatoid arthritis with rheumatoid factor, unspecified")
    evaluation = evaluate(rituximab_request(with_reason(ra)), kb)
    [card] = [c for c in evaluation.response["cards"] if "premedication" in c["summary"]]
    assert LABEL_RA in card["detail"] and "Consider" not in card["detail"]
    assert "corticosteroid" in card["summary"]
    labels = [s["label"] for s in card["suggestions"]]
    assert any("methylprednisolone 100 mg" in label for label in labels), labels


def test_epic_shaped_reason_code_by_oid_is_read(kb: KnowledgeBase) -> None:
    """Epic codes diagnoses by OID, next to its own diagnosis id, with the text it shows."""
    epic = {
        "coding": [
            {"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.696871", "code": "123456789"},
            {"system": ICD10CM_OID, "code": "C83.30", "display": "Diffuse large B-cell lymphoma"},
        ],
        "text": "Diffuse large B-cell lymphoma",
    }
    detail = premedication_detail(evaluate(rituximab_request(with_reason(epic)), kb))
    assert "rheumatoid" not in detail


def test_an_encounter_z_code_names_no_indication(kb: KnowledgeBase) -> None:
    """Z51.12 says why the patient is seen, not what is treated: the note stays."""
    z = coded(ICD10CM, "Z51.12", "Encounter for antineoplastic immunotherapy")
    detail = premedication_detail(evaluate(rituximab_request(with_reason(z)), kb))
    assert CONSIDER_RA in detail


def test_a_snomed_concept_that_matches_nothing_does_not_hide_the_note(kb: KnowledgeBase) -> None:
    """Without a terminology server a SNOMED concept cannot rule an indication out."""
    other = coded("http://snomed.info/sct", "109979007")
    detail = premedication_detail(evaluate(rituximab_request(with_reason(other)), kb))
    assert CONSIDER_RA in detail


@pytest.mark.parametrize(
    "garbage",
    [
        "lymphoma",
        [coded(ICD10CM, 12345), 7],
        [{"coding": "C83.30"}],
        [coded(ICD10CM, "not a code at all")],
        [coded(ICD10CM, "")],
        [{"text": "DLBCL"}],
    ],
)
def test_an_unreadable_reason_code_counts_as_none(
    client: FlaskClient, kb: KnowledgeBase, garbage: Any
) -> None:
    body = rituximab_request(lambda b, mr: mr.__setitem__("reasonCode", garbage))
    result = call(client, copy.deepcopy(body))  # 200, conformance checked
    [card] = [c for c in result["cards"] if "premedication" in c["summary"]]
    assert CONSIDER_RA in card["detail"]
    for warning in evaluate(body, kb).record.warnings:
        assert "reasonCode" in warning and "C83" not in warning and "lymphoma" not in warning


CONDITION = {
    "resourceType": "Condition",
    "id": "dx-1",
    "clinicalStatus": {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                "code": "active",
            }
        ]
    },
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                    "code": "encounter-diagnosis",
                }
            ]
        }
    ],
    "code": coded(ICD10CM, "C82.08", "Follicular lymphoma grade I, lymph nodes of multiple sites"),
    "subject": {"reference": "Patient/pat-scn-rtx-01"},
}


def in_draft_orders(body: dict[str, Any], mr: dict[str, Any]) -> None:
    mr["reasonReference"] = [{"reference": "Condition/dx-1"}]
    body["context"]["draftOrders"]["entry"].append({"resource": copy.deepcopy(CONDITION)})


def contained(body: dict[str, Any], mr: dict[str, Any]) -> None:
    mr["contained"] = [{**copy.deepcopy(CONDITION), "id": "dx"}]
    mr["reasonReference"] = [{"reference": "#dx"}]


def in_epic_encounter_dx_prefetch(body: dict[str, Any], mr: dict[str, Any]) -> None:
    """Epic's example prefetch has an ``encounterDx`` Condition search; the reference is
    absolute, as Epic writes references."""
    mr["reasonReference"] = [
        {"reference": "https://ehr.example.org/api/FHIR/R4/Condition/dx-1", "display": "FL"}
    ]
    body["prefetch"]["encounterDx"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": copy.deepcopy(CONDITION)}],
    }


@pytest.mark.parametrize("where", [in_draft_orders, contained, in_epic_encounter_dx_prefetch])
def test_reason_reference_to_a_condition_the_request_carries(
    kb: KnowledgeBase, where: Callable[[dict[str, Any], dict[str, Any]], None]
) -> None:
    evaluation = evaluate(rituximab_request(where), kb)
    assert "rheumatoid" not in premedication_detail(evaluation)
    [draft] = evaluation.record.draft_orders
    assert [c.code for c in draft.reasons] == ["C82.08"]


def test_a_refuted_condition_or_one_not_carried_names_no_indication(kb: KnowledgeBase) -> None:
    def refuted(body: dict[str, Any], mr: dict[str, Any]) -> None:
        in_draft_orders(body, mr)
        body["context"]["draftOrders"]["entry"][-1]["resource"]["verificationStatus"] = coded(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "refuted"
        )

    def not_carried(body: dict[str, Any], mr: dict[str, Any]) -> None:
        mr["reasonReference"] = [{"reference": "Condition/elsewhere"}]

    for change in (refuted, not_carried):
        assert CONSIDER_RA in premedication_detail(evaluate(rituximab_request(change), kb))


# -- Lemtrada (MS) against Campath (CLL): alemtuzumab 12 mg -----------------------------------


def lemtrada(*codes: str) -> Any:
    mr = order("MedicationRequest/a", dose=12)
    return situation(
        [("alemtuzumab", replace(mr, reasons=tuple(Coding(ICD10CM, c) for c in codes)))]
    )


def observation_after(s: Any, kb: KnowledgeBase) -> tuple[bool, bool]:
    """(firm, conditional): where Lemtrada's 2-hour observation falls for this order."""
    pos = position(s, s.orders[0], kb)
    firm, conditional, _ = monitoring.applicable(kb.drug("alemtuzumab").monitoring, pos)
    return (
        any(r.id == "lemtrada-2h-after" for r in firm),
        any(r.id == "lemtrada-2h-after" for r in conditional),
    )


def premedication_regimens(s: Any, kb: KnowledgeBase) -> list[str]:
    """The conditional ("consider") premedication regimens for this order."""
    pos = position(s, s.orders[0], kb)
    _, conditional, _ = premedication.required_roles(kb.drug("alemtuzumab").premedication, pos)
    return [r.id for r in conditional]


def test_lemtrada_observation_applies_to_a_multiple_sclerosis_order(kb: KnowledgeBase) -> None:
    assert observation_after(lemtrada("G35.A"), kb) == (True, False)  # FY2026 relapsing MS
    assert observation_after(lemtrada("G35"), kb) == (True, False)  # the code before FY2026
    # Its methylprednisolone still has a condition left (first 3 days of each course).
    assert premedication_regimens(lemtrada("G35.D"), kb) == ["lemtrada-methylprednisolone"]


def test_lemtrada_facts_stay_off_a_cll_order(kb: KnowledgeBase) -> None:
    cll = lemtrada("C91.10")
    assert observation_after(cll, kb) == (False, False)
    assert premedication_regimens(cll, kb) == []


def test_lemtrada_without_an_indication_stays_a_consider_note(kb: KnowledgeBase) -> None:
    assert observation_after(lemtrada(), kb) == (False, True)
    assert premedication_regimens(lemtrada(), kb) == ["lemtrada-methylprednisolone"]


# -- the knowledge ------------------------------------------------------------------------------


def test_indication_codes_are_checked_against_their_system(tmp_path: Any) -> None:
    root = tmp_path / "cards"
    shutil.copytree(DEFAULT_CARDS_DIR, root)
    policy = root / "policy.yaml"
    data = yaml.safe_load(policy.read_text())
    data["indications"][0]["codes"][0]["code"] = "M05.7.9"
    data["indications"][1]["codes"].append(
        {
            "system": "snomed",
            "code": "C82",
            "display": "x",
            "evidence": "verified",
            "cite": ["icd-10-cm-2026"],
        }
    )
    policy.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(root)
    assert {(p.file, p.field) for p in info.value.problems} == {
        ("policy.yaml", "indications.0.codes.0.code"),
        ("policy.yaml", "indications.1.codes.1.code"),
    }


def test_an_unknown_indication_in_a_drug_file_is_named(tmp_path: Any) -> None:
    root = tmp_path / "cards"
    shutil.copytree(DEFAULT_CARDS_DIR, root)
    drug = root / "drugs" / "rituximab.yaml"
    drug.write_text(drug.read_text().replace("[rheumatoid-arthritis]", "[rheumatoid-arthritiss]"))
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(root)
    assert [(p.file, p.field) for p in info.value.problems] == [
        ("drugs/rituximab.yaml", "applies.indications")
    ]
    assert "rheumatoid-arthritiss" in info.value.problems[0].message


@pytest.mark.parametrize(
    "change",
    [
        lambda body, mr: mr.__setitem__("reasonReference", "Condition/dx-1"),
        lambda body, mr: mr.__setitem__("reasonReference", [5, {"reference": 7}]),
        lambda body, mr: body["prefetch"].__setitem__(
            "encounterDx", {"resourceType": "Bundle", "entry": 5}
        ),
        lambda body, mr: (
            in_draft_orders(body, mr),
            body["context"]["draftOrders"]["entry"][-1]["resource"].__setitem__("code", "C82"),
        ),
    ],
)
def test_odd_reason_references_and_prefetch_never_break_a_call(
    client: FlaskClient, change: Callable[[dict[str, Any], dict[str, Any]], Any]
) -> None:
    body = rituximab_request(change)
    result = call(client, body)  # 200, conformance checked
    [card] = [c for c in result["cards"] if "premedication" in c["summary"]]
    assert CONSIDER_RA in card["detail"]


def test_knowledge_pages_say_which_indication_and_how_it_is_checked(kb: KnowledgeBase) -> None:
    drug = kb.drug("rituximab")
    [ra] = [r for r in drug.premedication if r.id == "ra-glucocorticoid"]
    words = applies_in_words(ra.applies, drug)
    assert "For: rheumatoid arthritis (ICD-10-CM M05, ICD-10-CM M06)" in words
    assert "left out when it names another diagnosis" in words and "Only if" not in words
