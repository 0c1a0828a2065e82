"""The prefetch decision table, end to end (HTTP) and through ``pipeline.run``.

present → used, no outbound call · null → no data · OperationOutcome (top level or
search.mode=outcome) → missing · absent → fetched (only those keys, bearer token) ·
no way to get required data → 412 · paginated Bundles · medicationReference resolution.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from flask import Flask

from cds_server import pipeline
from cds_server.cdshooks.errors import PrefetchUnavailable
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.model import KnowledgeBase
from tests.conformance import check_response
from tests.conftest import FHIR, TOKEN, every_key, load_fixture, load_request
from tests.fakefhir import FakeFhir

SIGN = "/cds-services/infusion-safety-sign"
PATIENT1 = "patients/lymphoma-first-rituximab.json"


def _received(record: Any) -> int:
    """History orders received: read, and left unread (medicines no rule is about)."""
    return len(record.medication_history) + record.history_unread


def sign_request(drop: tuple[str, ...] = (), **prefetch: Any) -> dict[str, Any]:
    """The rituximab order-sign with every declared key prefetched, minus ``drop``, plus
    ``prefetch``."""
    body = every_key(load_request("order-sign-rituximab"))
    for key in drop:
        body["prefetch"].pop(key)
    body["prefetch"].update(prefetch)
    return body


def fake(rsps: Any, fixture: str = PATIENT1, base: str = FHIR) -> FakeFhir:
    return FakeFhir.from_bundle(base, load_fixture(fixture)).register(rsps)


def run(body: dict[str, Any], kb: KnowledgeBase, **settings: Any) -> pipeline.Evaluation:
    return pipeline.run(
        body, service_id="infusion-safety", kb=kb, settings=FhirSettings(**settings)
    )


def outcome(severity: str = "error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": "processing"}],
    }


# -- present / null ------------------------------------------------------------------------


def test_present_keys_make_no_outbound_call(client: Any, mocked_fhir: Any, fhir_auth: Any) -> None:
    server = fake(mocked_fhir)
    body = sign_request()
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200
    assert check_response(resp.get_json()) == []
    assert server.calls == []


def test_null_means_no_data_and_is_not_refetched(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir)
    body = sign_request(
        medications=None, allergies=None, weight=None, patient=None, administrations=None
    )
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    rec = result.record
    assert rec.medication_history == () and rec.allergies == () and rec.weight is None
    assert rec.history_known and rec.allergies_known and rec.weight_known
    assert rec.administrations == () and rec.administrations_known
    assert server.calls == []
    assert {k: v.source for k, v in result.resolved.data.items()} == dict.fromkeys(
        ("patient", "medications", "allergies", "weight", "administrations"), "null"
    )


def test_null_prefetch_without_fhir_server_is_200(client: Any) -> None:
    body = sign_request(medications=None, allergies=None)
    assert client.post(SIGN, json=body).status_code == 200


# -- OperationOutcome ---------------------------------------------------------------------


def test_top_level_operation_outcome_is_missing_412_without_server(client: Any) -> None:
    resp = client.post(SIGN, json=sign_request(medications=outcome()))
    assert resp.status_code == 412
    assert "medications" in resp.get_json()["issue"][0]["diagnostics"]


def test_top_level_operation_outcome_is_refetched(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir)
    body = sign_request(medications=outcome())
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert server.types_called() == ["MedicationRequest"]
    assert _received(result.record) == 4
    assert result.resolved.data["medications"].source == "fhir"
    assert any("OperationOutcome" in w for w in result.record.warnings)


@pytest.mark.parametrize("severity", ["error", "fatal"])
def test_search_mode_outcome_error_entry_is_missing(client: Any, severity: str) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": outcome(severity), "search": {"mode": "outcome"}}],
    }
    resp = client.post(SIGN, json=sign_request(allergies=bundle))
    assert resp.status_code == 412
    assert "allergies" in resp.get_json()["issue"][0]["diagnostics"]


def test_search_mode_outcome_information_entry_keeps_the_data(kb: KnowledgeBase) -> None:
    body = load_request("order-sign-operationoutcome-prefetch")
    result = run(body, kb)
    assert len(result.record.allergies) == 1  # informational outcome entry ignored
    assert result.record.weight_known is False  # weight was a top-level OperationOutcome
    assert result.record.weight is None
    assert any("weight" in w for w in result.record.warnings)


def test_optional_operation_outcome_without_server_is_200(client: Any) -> None:
    resp = client.post(SIGN, json=sign_request(weight=outcome(), patient=outcome()))
    assert resp.status_code == 200


# -- absent → fetch ----------------------------------------------------------------------------


def test_only_missing_keys_are_fetched_with_the_bearer_token(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir)
    body = sign_request(drop=("medications", "allergies"))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert sorted(server.types_called()) == ["AllergyIntolerance", "MedicationRequest"]
    for call in server.calls:
        assert call.headers["Authorization"] == f"Bearer {TOKEN}"
        assert call.headers["Accept"] == "application/fhir+json"
        assert call.query["patient"] == ["pat-lym-001"]
    meds = next(c for c in server.calls if "MedicationRequest" in c.path)
    assert meds.query["_include"] == ["MedicationRequest:medication"]
    assert "status" not in meds.query
    assert _received(result.record) == 4
    assert len(result.record.allergies) == 1
    assert result.resolved.fetched == ("allergies", "medications")


def test_all_keys_fetched_when_prefetch_is_omitted(
    client: Any, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir)
    body = sign_request()
    del body["prefetch"]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200
    assert sorted(server.types_called()) == [
        "AllergyIntolerance",
        "MedicationAdministration",
        "MedicationRequest",
        "Observation",
        "Patient",
    ]
    weight_call = next(c for c in server.calls if "Observation" in c.path)
    assert weight_call.query["code"] == ["http://loinc.org|29463-7"]
    assert weight_call.query["_sort"] == ["-date"]
    given = next(c for c in server.calls if "MedicationAdministration" in c.path)
    assert given.query == {
        "patient": ["pat-lym-001"],
        "_count": ["100"],
        "_include": ["MedicationAdministration:medication"],
    }


def test_empty_access_token_sends_no_authorization_header(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir)
    body = sign_request(drop=("allergies",))
    body.update(fhirServer=FHIR, fhirAuthorization={**fhir_auth, "access_token": ""})
    run(body, kb)
    assert server.types_called() == ["AllergyIntolerance"]
    assert "Authorization" not in server.calls[0].headers


def test_missing_required_without_fhir_server_is_412_json(client: Any) -> None:
    resp = client.post(SIGN, json=sign_request(drop=("medications", "allergies", "weight")))
    assert resp.status_code == 412
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    text = body["issue"][0]["diagnostics"]
    assert "allergies, medications" in text and "weight" not in text
    assert "fhirServer" in text
    assert body["issue"][0]["details"]["coding"][0]["code"] == "prefetch-unavailable"


def test_missing_optional_without_fhir_server_is_unknown(kb: KnowledgeBase) -> None:
    result = run(sign_request(drop=("weight", "patient")), kb)
    assert result.record.weight_known is False
    assert result.record.birth_date is None
    assert any("optional data 'weight' unavailable" in w for w in result.record.warnings)


def test_fhir_server_without_authorization(
    make_app: Callable[..., Flask], mocked_fhir: Any
) -> None:
    server = fake(mocked_fhir)
    body = sign_request(drop=("allergies",))
    body["fhirServer"] = FHIR
    strict = make_app().test_client().post(SIGN, json=body)
    assert strict.status_code == 412
    assert "without fhirAuthorization" in strict.get_json()["issue"][0]["diagnostics"]
    assert server.calls == []
    open_server = make_app(FHIR_ALLOW_UNAUTHENTICATED=True).test_client().post(SIGN, json=body)
    assert open_server.status_code == 200
    assert "Authorization" not in server.calls[0].headers


@pytest.mark.parametrize(
    ("policy", "url", "ok"),
    [
        ("never", "http://ehr.example.org/fhir", False),
        ("never", "http://127.0.0.1:8090/fhir", False),
        ("loopback", "http://127.0.0.1:8090/fhir", True),
        ("loopback", "http://localhost:8090/fhir", True),
        ("loopback", "http://ehr.example.org/fhir", False),
        ("always", "http://ehr.example.org/fhir", True),
        ("never", "https://ehr.example.org/fhir", True),
    ],
)
def test_http_fhir_server_policy(
    make_app: Callable[..., Flask],
    mocked_fhir: Any,
    fhir_auth: Any,
    policy: str,
    url: str,
    ok: bool,
) -> None:
    server = fake(mocked_fhir, base=url)
    body = sign_request(drop=("allergies",))
    body.update(fhirServer=url, fhirAuthorization=fhir_auth)
    resp = make_app(FHIR_ALLOW_HTTP=policy).test_client().post(SIGN, json=body)
    assert resp.status_code == (200 if ok else 412)
    assert bool(server.calls) is ok
    if not ok:
        assert "https" in resp.get_json()["issue"][0]["diagnostics"]


def test_origin_allow_list(
    make_app: Callable[..., Flask], mocked_fhir: Any, fhir_auth: Any
) -> None:
    fake(mocked_fhir)
    body = sign_request(drop=("allergies",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    other = make_app(FHIR_ALLOWED_ORIGINS=["https://other.example.org"]).test_client()
    assert other.post(SIGN, json=body).status_code == 412
    same = make_app(FHIR_ALLOWED_ORIGINS=["https://ehr.example.org"]).test_client()
    assert same.post(SIGN, json=body).status_code == 200


@pytest.mark.parametrize(
    ("failure", "status"), [(500, 412), (401, 412), (404, 412), ("timeout", 412), ("conn", 412)]
)
def test_fhir_failure_for_required_data_is_412(
    client: Any, mocked_fhir: Any, fhir_auth: Any, failure: Any, status: int
) -> None:
    url = f"{FHIR}/AllergyIntolerance"
    if failure == "timeout":
        mocked_fhir.get(url, body=requests.ReadTimeout("slow"))
    elif failure == "conn":
        mocked_fhir.get(url, body=requests.ConnectionError("refused"))
    else:
        mocked_fhir.get(url, status=failure, json={"resourceType": "OperationOutcome"})
    body = sign_request(drop=("allergies",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    resp = client.post(SIGN, json=body)
    assert resp.status_code == status
    assert "allergies" in resp.get_json()["issue"][0]["diagnostics"]


def test_fhir_failure_for_optional_data_is_unknown(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir)
    server.fail["Observation"] = 503
    body = sign_request(drop=("weight",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert result.record.weight_known is False
    assert any("HTTP 503" in w for w in result.record.warnings)


def test_redirects_are_not_followed(client: Any, mocked_fhir: Any, fhir_auth: Any) -> None:
    mocked_fhir.get(
        f"{FHIR}/AllergyIntolerance",
        status=302,
        headers={"Location": "https://elsewhere.example.net/steal"},
    )
    body = sign_request(drop=("allergies",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    assert client.post(SIGN, json=body).status_code == 412
    assert len(mocked_fhir.calls) == 1


def test_byte_cap(make_app: Callable[..., Flask], mocked_fhir: Any, fhir_auth: Any) -> None:
    fake(mocked_fhir)
    body = sign_request(drop=("medications",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    resp = make_app(FHIR_MAX_BYTES=200).test_client().post(SIGN, json=body)
    assert resp.status_code == 412
    assert "byte limit" in resp.get_json()["issue"][0]["diagnostics"]


def test_fetched_operation_outcome_counts_as_unavailable(
    client: Any, mocked_fhir: Any, fhir_auth: Any
) -> None:
    mocked_fhir.get(f"{FHIR}/AllergyIntolerance", json=outcome())
    body = sign_request(drop=("allergies",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    assert client.post(SIGN, json=body).status_code == 412


# -- pagination ----------------------------------------------------------------------------


def _paged_history(next_url: str) -> dict[str, Any]:
    bundle = load_fixture(PATIENT1)
    mrs = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
    ]
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(mrs),
        "link": [{"relation": "next", "url": next_url}],
        "entry": [{"resource": r} for r in mrs[:2]],
    }, mrs


def test_paginated_prefetch_next_followed_on_same_origin(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    page1, mrs = _paged_history(f"{FHIR}?_getpages=abc&_getpagesoffset=2")
    mocked_fhir.get(
        f"{FHIR}?_getpages=abc&_getpagesoffset=2",
        json={
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in mrs[2:]],
        },
    )
    body = sign_request(medications=page1)
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert len(mocked_fhir.calls) == 1
    assert mocked_fhir.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert _received(result.record) == 4
    assert result.record.history_known is True


def test_paginated_prefetch_next_on_other_origin_not_followed(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    page1, _ = _paged_history("https://attacker.example.net/fhir?page=2")
    body = sign_request(medications=page1)
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert len(mocked_fhir.calls) == 0
    assert _received(result.record) == 2
    assert result.record.history_known is False
    assert any("another origin" in w for w in result.record.warnings)


def test_paginated_prefetch_without_server_uses_first_page(kb: KnowledgeBase) -> None:
    result = run(load_request("order-sign-paginated-prefetch"), kb)
    assert _received(result.record) == 2
    assert result.record.history_known is False
    assert any("paginated" in w for w in result.record.warnings)


def test_fetched_search_follows_pages_up_to_the_cap(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    mrs = _paged_history("x")[1]

    def page(i: int) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "link": [{"relation": "next", "url": f"{FHIR}/MedicationRequest?page={i + 1}"}],
            "entry": [{"resource": mrs[i]}],
        }

    mocked_fhir.get(
        f"{FHIR}/MedicationRequest?patient=pat-lym-001&_count=100&_include=MedicationRequest:medication",
        json=page(0),
    )
    for i in (1, 2, 3):
        mocked_fhir.get(f"{FHIR}/MedicationRequest?page={i}", json=page(i))
    body = sign_request(drop=("medications",))
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    capped = run(body, kb, max_pages=3)
    assert _received(capped.record) == 3
    assert capped.record.history_known is False
    assert any("limit" in w for w in capped.record.warnings)


# -- medicationReference -------------------------------------------------------------------


def _codes(order: Any) -> set[str | None]:
    return {c.code for c in (*order.codings, *order.ingredient_codings)}


def test_contained_medication_resolved(kb: KnowledgeBase) -> None:
    result = run(load_request("order-sign-contained-medication"), kb)
    (draft,) = result.record.draft_orders
    assert "974779" in _codes(draft)


def test_medication_in_draft_orders_bundle_resolved(kb: KnowledgeBase) -> None:
    result = run(every_key(load_request("order-sign-medication-reference")), kb)
    (draft,) = result.record.draft_orders
    assert "2105824" in _codes(draft)
    assert not any("not resolved" in w for w in result.record.warnings)


def test_medication_resolved_via_include(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir, "patients/follicular-rituximab-biosimilar.json")
    body = every_key(load_request("order-sign-medication-reference"))
    body["context"]["draftOrders"]["entry"] = body["context"]["draftOrders"]["entry"][:1]
    del body["prefetch"]["medications"]
    history = [
        e["resource"]
        for e in load_fixture("patients/follicular-rituximab-biosimilar.json")["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
    ]
    history[0] = {k: v for k, v in history[0].items() if k != "medicationCodeableConcept"}
    history[0]["medicationReference"] = {"reference": "Medication/med-truxima-500"}
    server.resources = [
        r for r in server.resources if r["resourceType"] != "MedicationRequest"
    ] + history
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert server.types_called() == ["MedicationRequest"]  # one round trip, thanks to _include
    assert "2105824" in _codes(result.record.draft_orders[0])
    prior = next(
        o
        for o in result.record.medication_history
        if o.ref == f"MedicationRequest/{history[0]['id']}"
    )
    assert "2105824" in _codes(prior)


def test_medication_resolved_by_separate_read(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = fake(mocked_fhir, "patients/follicular-rituximab-biosimilar.json")
    body = every_key(load_request("order-sign-medication-reference"))
    body["context"]["draftOrders"]["entry"] = body["context"]["draftOrders"]["entry"][:1]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    result = run(body, kb)
    assert server.types_called() == ["Medication"]
    assert server.calls[0].path.endswith("/Medication/med-truxima-500")
    assert server.calls[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert "2105824" in _codes(result.record.draft_orders[0])


def test_unresolvable_medication_reference_is_a_warning(kb: KnowledgeBase, client: Any) -> None:
    body = every_key(load_request("order-sign-medication-reference"))
    body["context"]["draftOrders"]["entry"] = body["context"]["draftOrders"]["entry"][:1]
    result = run(body, kb)
    assert result.record.draft_orders[0].codings == ()
    assert any("not resolved" in w for w in result.record.warnings)
    assert client.post(SIGN, json=body).status_code == 200


def test_absolute_medication_reference_to_another_server_is_not_fetched(
    kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: Any
) -> None:
    body = every_key(load_request("order-sign-medication-reference"))
    body["context"]["draftOrders"]["entry"] = body["context"]["draftOrders"]["entry"][:1]
    order = body["context"]["draftOrders"]["entry"][0]["resource"]
    order["medicationReference"]["reference"] = "https://other.example.net/fhir/Medication/m1"
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    run(body, kb)
    assert len(mocked_fhir.calls) == 0


def test_prefetch_unavailable_names_keys() -> None:
    err = PrefetchUnavailable(["medications", "allergies"], "no fhirServer was sent")
    assert err.status == 412 and err.keys == ("allergies", "medications")
