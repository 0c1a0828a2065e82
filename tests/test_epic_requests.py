"""Epic's requests, as its published examples shape them (fixtures/fhir/clients/epic): each
gives its cards end to end, without a FHIR call; Epic's quirks one by one."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_server import pipeline
from cds_server.cdshooks import protocol
from cds_server.fhirdata import prefetch
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.model import KnowledgeBase
from tests.conftest import FIXTURES, rule_of, service_for
from tests.scenarios.test_scenarios import ANCHOR, _shift_dates, call, card_problems, keys, today

EPIC = FIXTURES / "clients" / "epic"


def request_names() -> list[str]:
    return sorted(p.name.removesuffix(".expected.json") for p in EPIC.glob("*.expected.json"))


def load(name: str) -> dict[str, Any]:
    """The request with its dates moved to today, as the scenario tests do."""
    body = json.loads((EPIC / f"{name}.json").read_text())
    return _shift_dates(body, (today() - ANCHOR).days)  # type: ignore[no-any-return]


def no_fhir_calls(*args: Any, **kw: Any) -> Any:
    raise AssertionError("everything needed is in the request: no FHIR call expected")


def run(body: dict[str, Any], kb: KnowledgeBase) -> pipeline.Evaluation:
    return pipeline.run(
        body,
        service_id=service_for(body),
        kb=kb,
        settings=FhirSettings(),
        client_factory=no_fhir_calls,
    )


def test_every_request_fixture_has_its_expected_cards() -> None:
    requests = {p.stem for p in EPIC.glob("*.json")} - {
        p.name.removesuffix(".json") for p in EPIC.glob("*.expected.json")
    }
    hooks = {n for n in requests if not n.startswith("feedback-")}
    assert hooks == set(request_names())
    assert {"order-sign", "order-select", "patient-view-enter-allergy"} <= hooks


@pytest.mark.parametrize("name", request_names())
def test_epic_request_gives_its_cards(client: FlaskClient, kb: KnowledgeBase, name: str) -> None:
    body = load(name)
    expected = json.loads((EPIC / f"{name}.expected.json").read_text())
    result = call(client, copy.deepcopy(body))  # HTTP, conformance checked
    problems: list[str] = []
    by_key = {(rule_of(c), c["summary"].split(": ", 1)[0]): c for c in result["cards"]}
    for want in expected["cards"]:
        found = by_key.get((want["topic"], want["drug"]))
        if found is None:
            problems.append(f"missing card {want['topic']}/{want['drug']}")
        else:
            problems.extend(card_problems(found, want))
    if expected["no_other_cards"]:
        wanted = sorted((w["topic"], w["indicator"], w["drug"]) for w in expected["cards"])
        if keys(result) != wanted:
            problems.append(f"cards {keys(result)}, expected exactly {wanted}")
    assert not problems, "\n".join(problems)
    # Everything was read from the request: no warning, nothing fetched, nothing missing.
    evaluation = run(body, kb)
    assert evaluation.record.warnings == ()
    assert evaluation.resolved.fetched == ()


def test_medications_in_draft_orders_and_absolute_references_resolve_locally(
    kb: KnowledgeBase,
) -> None:
    body = load("order-sign")
    entries = body["context"]["draftOrders"]["entry"]
    assert [e["resource"]["resourceType"] for e in entries] == ["MedicationRequest", "Medication"]
    draft = entries[0]["resource"]
    assert len(draft["id"]) > 64  # Epic's ids are longer than FHIR's
    assert "medicationCodeableConcept" not in draft
    evaluation = run(body, kb)
    (order,) = evaluation.record.draft_orders
    assert [c.code for c in order.codings] == ["121191"]  # from the Medication entry
    history = {h.texts[0] for h in evaluation.record.medication_history}
    assert {"acetaminophen", "diphenhydramine"} <= history  # absolute references, included
    absolute = [
        e["resource"]["medicationReference"]["reference"]
        for e in body["prefetch"]["medications"]["entry"]
        if "medicationReference" in e["resource"]
    ]
    assert absolute and all(r.startswith("https://") for r in absolute)

    # Without the Medication entries the draft is only known by its display text, and the
    # premedication history orders by Epic's upper-case display: the entries are what is read.
    bare = copy.deepcopy(body)
    bare["context"]["draftOrders"]["entry"] = entries[:1]
    bare["prefetch"]["medications"]["entry"] = [
        e for e in bare["prefetch"]["medications"]["entry"] if e["search"]["mode"] != "include"
    ]
    bare.pop("fhirServer")
    bare.pop("fhirAuthorization")
    unresolved = run(bare, kb)
    assert unresolved.record.draft_orders[0].codings == ()
    assert any("medicationReference not resolved" in w for w in unresolved.record.warnings)


def test_order_select_takes_epic_length_ids_in_selections(kb: KnowledgeBase) -> None:
    body = load("order-select")
    (selected,) = body["context"]["selections"]
    assert len(selected) > 64 + len("MedicationRequest/")
    (order,) = run(body, kb).record.draft_orders
    assert order.selected


def test_ordered_dose_extension_is_read_when_dose_quantity_is_absent(kb: KnowledgeBase) -> None:
    body = load("order-sign")
    dosage = body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]
    assert dosage["extension"][0]["url"] == "https://open.epic.com/fhir/extensions/ordered-dose"
    del dosage["doseAndRate"][0]["doseQuantity"]
    (order,) = run(copy.deepcopy(body), kb).record.draft_orders
    assert (order.dose.value, order.dose.unit) == (700.0, "mg")  # type: ignore[union-attr]
    dosage["extension"][0]["url"] = "https://open.epic.com/fhir/extensions/admin-amount"
    (order,) = run(body, kb).record.draft_orders
    assert order.dose is None  # the amount given is not the dose


def test_dose_quantity_wins_over_the_extension(kb: KnowledgeBase) -> None:
    body = load("order-sign")
    dosage = body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]
    dosage["extension"][0]["valueQuantity"]["value"] = 1
    (order,) = run(body, kb).record.draft_orders
    assert order.dose.value == 700.0  # type: ignore[union-attr]


def _no_results(severity: str) -> dict[str, Any]:
    body = load("order-sign")
    bundle = copy.deepcopy(body["prefetch"]["allergies"])
    bundle["entry"][0]["resource"]["issue"][0]["severity"] = severity
    return bundle


@pytest.mark.parametrize("severity", ["warning", "information"])
def test_epic_no_results_bundle_is_known_empty_data(severity: str) -> None:
    bundle = _no_results(severity)
    assert prefetch.classify(bundle)[0] == "use"
    spec = prefetch.PrefetchSpec(
        "allergies", "AllergyIntolerance?patient={{context.patientId}}", required=True
    )
    resolved = prefetch.resolve(
        (spec,),
        context={"patientId": "pat-lym-001"},
        prefetch={"allergies": bundle},
        fhir_server=None,
        fhir_authorization=None,
        settings=FhirSettings(),
    )
    data = resolved.data["allergies"]
    assert (data.resources, data.known) == ((), True)
    assert resolved.warnings == ()


@pytest.mark.parametrize("severity", ["error", "fatal"])
def test_an_outcome_with_an_error_stays_missing(client: FlaskClient, severity: str) -> None:
    body = load("order-sign")
    body["prefetch"]["allergies"] = _no_results(severity)
    body.pop("fhirServer")
    body.pop("fhirAuthorization")
    resp = client.post("/cds-services/infusion-safety-sign", json=body)
    assert resp.status_code == 412  # required, and nothing to fetch it from
    assert "allergies" in resp.get_data(as_text=True)


def test_bpa_trigger_action_is_recognised_and_logged_without_phi(
    make_app: Callable[..., Flask], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = make_app().test_client()
    for name, trigger in (("order-sign", "23"), ("order-select", "18")):
        body = load(name)
        assert protocol.load_hook_request(body).epic_trigger == trigger
        assert client.post(f"/cds-services/{service_for(body)}", json=body).status_code == 200
    assert "epic-trigger=23 (sign orders)" in caplog.text
    assert "epic-trigger=18 (enter order)" in caplog.text
    assert "pat-lym-001" not in caplog.text and "fictional-epic-access-token" not in caplog.text
    body = load("patient-view-enter-allergy")
    assert protocol.load_hook_request(body).epic_trigger is None  # no number documented
    body["extension"][protocol.EPIC_TRIGGER] = "<script>"
    assert protocol.load_hook_request(body).epic_trigger == "other"
    body["extension"][protocol.EPIC_TRIGGER] = 60
    assert protocol.load_hook_request(body).epic_trigger == "60"
