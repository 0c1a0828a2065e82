"""What real clients send (card-design-and-clients.md §5.3 items 3-4), and draftOrders shapes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_server import pipeline
from cds_server.fhirdata.client import FhirSettings
from cds_server.fhirdata.prefetch import KeyData
from cds_server.fhirdata.record import build_record
from cds_server.knowledge.model import KnowledgeBase
from tests.conformance import check_response
from tests.conftest import FHIR, load_fixture, load_request
from tests.fakefhir import FakeFhir

SIGN = "/cds-services/infusion-safety"


def _run(body: dict[str, Any], kb: KnowledgeBase) -> pipeline.Evaluation:
    return pipeline.run(body, service_id="infusion-safety", kb=kb, settings=FhirSettings())


# -- item 3: prefetch present / omitted / null / OperationOutcome / keys under other names ----


def test_crd_style_request_other_key_names_and_empty_token(
    kb: KnowledgeBase, mocked_fhir: Any
) -> None:
    """CRD generator: own key names, our keys absent, access_token "" → fetch, no auth header."""
    server = FakeFhir.from_bundle(FHIR, load_fixture("patients/crd-paclitaxel.json"))
    server.register(mocked_fhir)
    body = load_request("order-sign-crd-style")
    for key in ("patient", "medications", "allergies", "weight"):
        del body["prefetch"][key]
    result = _run(body, kb)
    assert sorted(server.types_called()) == [
        "AllergyIntolerance",
        "MedicationAdministration",
        "MedicationRequest",
        "Observation",
        "Patient",
    ]
    assert all("Authorization" not in c.headers for c in server.calls)
    assert result.record.weight is not None and result.record.weight.kg == 59.0
    (draft,) = result.record.draft_orders
    assert "56946" in {c.code for c in draft.codings}  # Medication came with _include
    assert result.record.medication_history == ()  # the draft itself is not "history"


def test_crd_style_request_round_trips_with_prefetch(client: FlaskClient) -> None:
    resp = client.post(SIGN, json=load_request("order-sign-crd-style"))
    assert resp.status_code == 200
    assert check_response(resp.get_json()) == []


def test_sandbox_style_request_without_fhir_authorization_and_omitted_keys(
    client: FlaskClient,
) -> None:
    """The Sandbox sends fhirServer without fhirAuthorization and omits keys it cannot fill."""
    body = load_request("order-sign-rituximab")
    body["fhirServer"] = "https://sandbox.example.org/fhir"
    del body["prefetch"]["weight"]
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200  # only an optional key is missing


# -- item 4: draft-order quirks ------------------------------------------------------------


def _draft(body: dict[str, Any]) -> dict[str, Any]:
    return body["context"]["draftOrders"]["entry"][0]["resource"]


@pytest.mark.parametrize(
    "quirk",
    ["category-object", "resolved-medication", "no-medication", "status-active", "all"],
)
def test_draft_order_quirks_never_500(client: FlaskClient, kb: KnowledgeBase, quirk: str) -> None:
    body = load_request("order-sign-rituximab")
    order = _draft(body)
    if quirk in ("category-object", "all"):
        order["category"] = order["category"][0]
    if quirk in ("resolved-medication", "all"):
        order["_resolvedMedication"] = {"resourceType": "Medication", "code": {"text": "x"}}
    if quirk in ("status-active", "all"):
        order["status"] = "active"
    if quirk in ("no-medication", "all"):
        del order["medicationCodeableConcept"]
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200
    assert check_response(resp.get_json()) == []
    record = _run(body, kb).record
    if quirk in ("no-medication", "all"):
        # Tolerated: parsed without a drug, or skipped — either way with a warning, never a 500.
        assert all(not o.codings for o in record.draft_orders)
        assert any("draftOrders entry #0" in w for w in record.warnings)
        return
    (draft,) = record.draft_orders
    assert draft.is_draft
    assert "121191" in {c.code for c in draft.codings}
    if quirk == "status-active":
        assert draft.status == "active"


def test_invalid_draft_order_is_kept_with_its_unread_element(kb: KnowledgeBase) -> None:
    body = load_request("order-sign-rituximab")
    _draft(body)["status"] = {"not": "a code"}
    result = _run(body, kb)
    (draft,) = result.record.draft_orders
    assert draft.status is None
    assert [(u.path, u.reason) for u in draft.unread] == [("status", "wrong type (text expected)")]
    assert "121191" in {c.code for c in draft.codings}
    assert any("draftOrders entry #0" in w and "status" in w for w in result.record.warnings)
    assert "a code" not in " ".join(result.record.warnings)


# -- draftOrders shapes and selections ---------------------------------------------------


def _order(rid: str) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": "draft",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "rituximab"},
    }


@pytest.mark.parametrize(
    "draft_orders",
    [
        {"resourceType": "Bundle", "entry": [{"resource": _order("a")}]},
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": _order("a")}]},
    ],
    ids=["without-type", "with-type"],
)
def test_bundle_with_or_without_type(draft_orders: dict[str, Any]) -> None:
    rec = build_record(patient_id="p1", draft_orders=draft_orders)
    assert [o.ref for o in rec.draft_orders] == ["MedicationRequest/a"]


def test_bundle_without_entry() -> None:
    rec = build_record(patient_id="p1", draft_orders={"resourceType": "Bundle"})
    assert rec.draft_orders == ()


def test_other_order_types_are_skipped_with_a_note() -> None:
    others = [
        {"resourceType": t, "id": f"x{i}", "status": "draft", "intent": "order"}
        for i, t in enumerate(["ServiceRequest", "NutritionOrder", "DeviceRequest"])
    ]
    bundle = {"resourceType": "Bundle", "entry": [{"resource": r} for r in [*others, _order("a")]]}
    rec = build_record(patient_id="p1", draft_orders=bundle)
    assert [o.ref for o in rec.draft_orders] == ["MedicationRequest/a"]
    assert sum("not evaluated" in w for w in rec.warnings) == 3


def test_selections_mark_selected_orders() -> None:
    bundle = {"resourceType": "Bundle", "entry": [{"resource": _order(r)} for r in "abc"]}
    rec = build_record(
        patient_id="p1",
        draft_orders=bundle,
        selections=["MedicationRequest/c", "MedicationRequest/a", "MedicationRequest/zzz"],
    )
    assert {o.ref: o.selected for o in rec.draft_orders} == {
        "MedicationRequest/a": True,
        "MedicationRequest/b": False,
        "MedicationRequest/c": True,
    }
    assert any("1 selection(s) not found" in w for w in rec.warnings)


def test_order_sign_marks_every_draft_selected(kb: KnowledgeBase) -> None:
    rec = _run(load_request("order-sign-rituximab"), kb).record
    assert all(o.selected and o.is_draft for o in rec.draft_orders)


def test_order_select_fixture_selection(kb: KnowledgeBase) -> None:
    body = load_request("order-select-rituximab")
    rec = pipeline.run(body, service_id="infusion-safety", kb=kb).record
    selected = {o.ref for o in rec.draft_orders if o.selected}
    assert selected == {"MedicationRequest/mr-001-rituximab-c1"}
    assert any("NutritionOrder" in w for w in rec.warnings)
    assert any("draftOrders entry #3" in w for w in rec.warnings)  # no medication[x]


def test_draft_orders_as_a_bare_array_are_accepted(client: FlaskClient) -> None:
    body = load_request("order-sign-rituximab")
    body["context"]["draftOrders"] = [_draft(body)]
    assert client.post(SIGN, json=body).status_code == 200


def test_draft_order_is_not_counted_as_history() -> None:
    order = _order("a")
    rec = build_record(
        patient_id="p1",
        draft_orders={"resourceType": "Bundle", "entry": [{"resource": order}]},
        medications=KeyData((copy.deepcopy(order), _order("b")), True, "prefetch"),
    )
    assert [o.ref for o in rec.medication_history] == ["MedicationRequest/b"]


def test_unknown_key_data_means_unknown_flags() -> None:
    rec = build_record(patient_id="p1")
    assert (rec.history_known, rec.allergies_known, rec.weight_known) == (False, False, False)
