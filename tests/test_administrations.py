"""MedicationAdministration as evidence of doses given (optional prefetch key ``administrations``).

Parsed into ``MedicationOrder(source="administration")`` (effective time, the order carried out,
medication, dose, rate, route), ``not-done``/``entered-in-error`` dropped, recognised into
``Situation.administrations`` and never into ``history``; prefetched, fetched through the FHIR
fallback, or unknown (optional: never 412). No rule reads them yet: the cards are the same.
"""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_server import pipeline
from cds_server.explain import explain_evaluation
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Quantity
from tests.conftest import FHIR, NO_ADMINISTRATIONS, load_fixture, load_request
from tests.fakefhir import FakeFhir
from tests.scenarios.test_scenarios import load_scenario, scenario_names

SIGN = "/cds-services/infusion-safety"
REQUEST = "order-sign-administrations"  # pat-fl-003, rituximab-abbs cycle 3
PATIENT = "patients/follicular-rituximab-biosimilar.json"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def run(body: dict[str, Any], kb: KnowledgeBase) -> pipeline.Evaluation:
    return pipeline.run(body, service_id="infusion-safety", kb=kb, settings=FhirSettings())


def by_id(ev: pipeline.Evaluation) -> dict[str, Any]:
    return {o.ref.split("/", 1)[1]: o for o in ev.record.administrations if o.ref}


def administrations_bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }


def cards_without_uuids(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in card.items() if k != "uuid"}
        | {"suggestions": [UUID.sub("<uuid>", str(s)) for s in card.get("suggestions", ())]}
        for card in response["cards"]
    ]


# -- parsing ---------------------------------------------------------------------------------


def test_prefetched_administrations_are_read_as_doses_given(kb: KnowledgeBase) -> None:
    ev = run(load_request(REQUEST), kb)
    rec = ev.record
    assert rec.administrations_known is True
    given = by_id(ev)
    # not-done (cetirizine declined) and entered-in-error count for nothing; ondansetron is a
    # medicine no rule is about: left unread.
    assert sorted(given) == [
        "mad-003-apap-c2",
        "mad-003-dex-c3",
        "mad-003-rtx-c1",
        "mad-003-rtx-c2a",
        "mad-003-rtx-c2b",
    ]
    assert rec.administrations_unread == 1
    assert all(o.source == "administration" and not o.is_draft for o in given.values())

    c1 = given["mad-003-rtx-c1"]  # Epic-style: medicationReference, effectivePeriod
    assert (c1.status, c1.intent) == ("completed", None)
    assert c1.authored_on == datetime(2026, 10, 3, 9, 40, tzinfo=UTC)  # the period's start
    assert c1.fulfils == "MedicationRequest/mr-003-rtx-c1"  # relative reference
    assert "2105824" in {c.code for c in c1.codings}  # the included Medication resolved
    assert (c1.dose, c1.rate, c1.route) == (Quantity(600.0, "mg"), Quantity(50.0, "mg/h"), "IV")
    assert c1.volume == Quantity(500.0, "mL")  # "600 mg in 500 mL NS"

    stopped = given["mad-003-rtx-c2a"]
    assert stopped.status == "stopped"
    assert stopped.fulfils == "MedicationRequest/mr-003-rtx-c2"  # absolute URL → type/id
    assert stopped.rate == Quantity(100.0, "mg/h")  # rateRatio 100 mg / 1 h
    assert stopped.status_reason_texts == ("Infusion-related reaction: rigors, infusion stopped",)

    resumed = given["mad-003-rtx-c2b"]
    assert resumed.fulfils == "MedicationRequest/mr-003-rtx-c2"  # absolute, with _history
    assert resumed.rate == Quantity(50.0, "mg/h")  # unit "mg/hr" normalised as for orders

    running = given["mad-003-dex-c3"]
    assert running.status == "in-progress" and running.fulfils is None
    assert running.authored_on == datetime(2026, 11, 21, 8, 50, tzinfo=UTC)
    assert given["mad-003-apap-c2"].authored_on == datetime(2026, 10, 31, 9, 5, tzinfo=UTC)
    assert not any("MedicationAdministration" in w for w in rec.warnings)


def test_administrations_are_recognised_apart_from_the_history(kb: KnowledgeBase) -> None:
    ev = run(load_request(REQUEST), kb)
    s = ev.situation
    assert sorted((r.order.ref, r.drug_id) for r in s.administrations) == [
        ("MedicationAdministration/mad-003-rtx-c1", "rituximab"),
        ("MedicationAdministration/mad-003-rtx-c2a", "rituximab"),
        ("MedicationAdministration/mad-003-rtx-c2b", "rituximab"),
    ]
    assert all(r.order.source == "request" for r in s.history)
    assert all(o.source == "request" for o in ev.record.medication_history)
    assert not any(o.source == "administration" for o, _ in s.agents)


def test_invalid_administration_is_skipped_with_a_warning_naming_no_value(
    kb: KnowledgeBase,
) -> None:
    body = load_request(REQUEST)
    good = body["prefetch"]["administrations"]["entry"][0]["resource"]
    bad = copy.deepcopy(good) | {"id": "mad-bad", "effectiveDateTime": "SECRET-not-a-date"}
    bad.pop("effectivePeriod")
    no_status = {k: v for k, v in copy.deepcopy(good).items() if k != "status"} | {"id": "mad-ns"}
    body["prefetch"]["administrations"] = administrations_bundle(good, bad, no_status)
    ev = run(body, kb)
    assert sorted(by_id(ev)) == ["mad-003-rtx-c1"]
    skipped = [w for w in ev.record.warnings if "administrations #" in w]
    assert len(skipped) == 2, ev.record.warnings
    assert all(w.startswith("MedicationAdministration administrations #") for w in skipped)
    assert not any("SECRET" in w for w in ev.record.warnings)


def test_unresolved_medication_reference_is_a_warning_about_an_administration(
    kb: KnowledgeBase,
) -> None:
    body = load_request(REQUEST)
    c1 = body["prefetch"]["administrations"]["entry"][0]["resource"]
    body["prefetch"]["administrations"] = administrations_bundle(c1)  # no included Medication
    body["context"]["draftOrders"]["entry"] = body["context"]["draftOrders"]["entry"][:1]
    ev = run(body, kb)
    assert (
        "MedicationAdministration administrations #0: medicationReference not resolved"
        in ev.record.warnings
    )
    # The reference's display still names the product: recognised by text.
    assert [r.drug_id for r in ev.situation.administrations] == ["rituximab"]


@pytest.mark.parametrize("value", [None, NO_ADMINISTRATIONS])
def test_null_or_empty_is_known_none(kb: KnowledgeBase, value: Any) -> None:
    body = load_request(REQUEST)
    body["prefetch"]["administrations"] = value
    ev = run(body, kb)
    assert ev.record.administrations == () and ev.record.administrations_known is True
    assert ev.situation.administrations == ()


# -- prefetch decision table -------------------------------------------------------------------


def test_absent_key_is_fetched_through_the_fallback(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = FakeFhir.from_bundle(FHIR, load_fixture(PATIENT)).register(mocked_fhir)
    body = load_request(REQUEST)
    prefetched = by_id(run(body, kb))
    del body["prefetch"]["administrations"]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    ev = run(body, kb)
    assert server.types_called() == ["MedicationAdministration"]  # Medication by _include
    (call,) = server.calls
    assert call.query == {
        "patient": ["pat-fl-003"],
        "_count": ["100"],
        "_include": ["MedicationAdministration:medication"],
    }
    assert call.headers["Authorization"] == f"Bearer {fhir_auth['access_token']}"
    assert ev.resolved.data["administrations"].source == "fhir"
    assert ev.resolved.fetched == ("administrations",)
    assert ev.record.administrations_known is True
    assert by_id(ev) == prefetched


def test_fetched_administrations_follow_pages(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    body = load_request(REQUEST)
    entries = body["prefetch"].pop("administrations")["entry"]
    first = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": f"{FHIR}/MedicationAdministration?page=2"}],
        "entry": entries[:4],
    }
    mocked_fhir.get(
        f"{FHIR}/MedicationAdministration?patient=pat-fl-003&_count=100"
        "&_include=MedicationAdministration:medication",
        json=first,
    )
    mocked_fhir.get(
        f"{FHIR}/MedicationAdministration?page=2",
        json={"resourceType": "Bundle", "type": "searchset", "entry": entries[4:]},
    )
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    ev = run(body, kb)
    assert len(mocked_fhir.calls) == 2
    assert len(ev.record.administrations) == 5 and ev.record.administrations_known is True


def test_absent_key_without_server_is_unknown_quietly_and_the_cards_are_the_same(
    client: FlaskClient, kb: KnowledgeBase
) -> None:
    scenario, _ = load_scenario("rituximab-later-rate-above")
    assert "administrations" not in scenario["prefetch"]
    ev = run(copy.deepcopy(scenario), kb)
    assert ev.record.administrations_known is False
    assert ev.resolved.data["administrations"].source == "unavailable"
    assert not any("administrations" in w for w in ev.record.warnings)  # no card line for it
    resp = client.post(SIGN, json=scenario)
    assert resp.status_code == 200
    assert [c["summary"] for c in resp.get_json()["cards"]] == [
        c["summary"] for c in ev.response["cards"]
    ]
    assert resp.get_json()["cards"]  # this scenario has a rate card


@pytest.mark.parametrize(
    "why",
    ["an OperationOutcome", "a Bundle reporting an error"],
)
def test_operation_outcome_is_missing_optional_never_412(
    client: FlaskClient, kb: KnowledgeBase, why: str
) -> None:
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "x"}]}
    value = (
        outcome
        if why == "an OperationOutcome"
        else {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": outcome, "search": {"mode": "outcome"}}],
        }
    )
    body = load_request(REQUEST)
    body["prefetch"]["administrations"] = value
    ev = run(body, kb)
    assert ev.record.administrations == () and ev.record.administrations_known is False
    assert any(w.startswith(f"prefetch 'administrations' was {why}") for w in ev.record.warnings)
    assert client.post(SIGN, json=body).status_code == 200


def test_fetch_failure_is_unknown_with_a_warning_not_412(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = FakeFhir.from_bundle(FHIR, load_fixture(PATIENT)).register(mocked_fhir)
    server.fail["MedicationAdministration"] = 403  # e.g. the app was not granted the scope
    body = load_request(REQUEST)
    del body["prefetch"]["administrations"]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    ev = run(body, kb)
    assert ev.record.administrations_known is False
    assert any(
        "optional data 'administrations' unavailable" in w and "403" in w
        for w in ev.record.warnings
    )


# -- same cards with and without administrations (no rule reads them yet) ----------------------


def _given(order: dict[str, Any], i: int) -> dict[str, Any]:
    """The MedicationAdministration a nurse charts for a completed or stopped order."""
    dosage = (order.get("dosageInstruction") or [{}])[0]
    dose_and_rate = (dosage.get("doseAndRate") or [{}])[0]
    medication = {
        k: order[k] for k in ("medicationCodeableConcept", "medicationReference") if k in order
    }
    given: dict[str, Any] = {
        "resourceType": "MedicationAdministration",
        "id": f"mad-{i}",
        "status": order["status"],
        **medication,
        "subject": order["subject"],
        "effectiveDateTime": order.get("authoredOn", "2026-11-01"),
        "request": {"reference": f"MedicationRequest/{order['id']}"},
    }
    dose = {"route": dosage["route"]} if "route" in dosage else {}
    if "doseQuantity" in dose_and_rate:
        dose["dose"] = dose_and_rate["doseQuantity"]
    if "rateQuantity" in dose_and_rate:
        dose["rateQuantity"] = dose_and_rate["rateQuantity"]
    if dose:
        given["dosage"] = dose
    return given


def with_administrations(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """``body`` with an administration for every completed or stopped order of its history,
    plus a not-done and an entered-in-error copy of the first."""
    body = copy.deepcopy(body)
    history = body["prefetch"].get("medications") or {}
    orders = [
        e["resource"]
        for e in history.get("entry", ())
        if e["resource"].get("resourceType") == "MedicationRequest"
        and e["resource"].get("status") in ("completed", "stopped")
        and "subject" in e["resource"]
        # An administration needs its time (effective[x] is required): undated orders stay orders.
        and "authoredOn" in e["resource"]
    ]
    given = [_given(o, i) for i, o in enumerate(orders)]
    if given:
        given += [given[0] | {"id": "mad-nd", "status": "not-done"}]
        given += [given[0] | {"id": "mad-eie", "status": "entered-in-error"}]
    includes = [e for e in history.get("entry", ()) if e.get("search", {}).get("mode") == "include"]
    bundle = administrations_bundle(*given)
    bundle["entry"] += includes
    body["prefetch"]["administrations"] = bundle
    return body, len(orders)


def _without_administrations() -> list[str]:
    """Scenarios whose EHR sent no administrations (those that did test them themselves)."""
    return [n for n in scenario_names() if "administrations" not in load_scenario(n)[0]["prefetch"]]


@pytest.mark.parametrize("name", _without_administrations())
def test_scenario_cards_are_the_same_with_administrations(
    client: FlaskClient, kb: KnowledgeBase, name: str
) -> None:
    body, _ = load_scenario(name)
    plain = _post(client, body)
    given_body, expected = with_administrations(body)
    given = _post(client, given_body)
    assert (plain.status_code, given.status_code) == (200, 200)
    # The treatment-course card names its evidence; everything else must be identical.
    assert _same_evidence(cards_without_uuids(given.get_json())) == cards_without_uuids(
        plain.get_json()
    )
    ev = pipeline.run(given_body, service_id=_service(body), kb=kb)
    assert ev.record.administrations_known is True
    assert len(ev.record.administrations) + ev.record.administrations_unread == expected


def _post(client: FlaskClient, body: dict[str, Any]) -> Any:
    """POST as an EHR would: non-finite numbers stay the literals the scenario holds (1e400)."""
    text = json.dumps(body).replace("-Infinity", "-1e400").replace("Infinity", "1e400")
    return client.post(
        f"/cds-services/{_service(body)}", data=text, content_type="application/json"
    )


def _same_evidence(cards: Any) -> Any:
    return json.loads(json.dumps(cards).replace("(administration record)", "(completed order)"))


def _service(body: dict[str, Any]) -> str:
    return "infusion-risk-summary" if body["hook"] == "patient-view" else "infusion-safety"


def test_some_scenarios_carry_recognised_administrations(kb: KnowledgeBase) -> None:
    """The comparison above is not vacuous: drugs' administrations are recognised."""
    recognised = 0
    for name in scenario_names():
        body, _ = with_administrations(load_scenario(name)[0])
        ev = pipeline.run(body, service_id=_service(body), kb=kb)
        recognised += len(ev.situation.administrations)
        assert len(ev.situation.history) == len(
            pipeline.run(load_scenario(name)[0], service_id=_service(body), kb=kb).situation.history
        )
    assert recognised >= 20


# -- explain ---------------------------------------------------------------------------------


def test_explain_lists_the_administrations_read(kb: KnowledgeBase) -> None:
    text = explain_evaluation(run(load_request(REQUEST), kb), kb)
    assert (
        "Administrations (prefetch): 8 received (completed 4, entered-in-error 1, in-progress 1, "
        "not-done 1, stopped 1); 5 read; +1 no rule reads, not read; "
        "2 not-done/entered-in-error, count for nothing"
    ) in text
    assert "Recognised administrations: rituximab 3 (completed 2, stopped 1)" in text
    body = load_request(REQUEST)
    del body["prefetch"]["administrations"]
    assert "Administrations: UNKNOWN" in explain_evaluation(run(body, kb), kb)
