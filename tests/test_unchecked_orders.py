"""Never 200 with silence for a draft order that could not be evaluated, and NDC recognition.

Each kind of bad element in a draft order leads to a 200 with an ``order-not-checked`` card
naming the order and the element; never a 500, never zero cards.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_server.recognition import ndc_product
from tests.conformance import check_response
from tests.conftest import load_request, rule_of

SIGN = "/cds-services/infusion-safety"
TOPIC = "order-not-checked"


def _draft(body: dict[str, Any]) -> dict[str, Any]:
    return body["context"]["draftOrders"]["entry"][0]["resource"]


def _dr(order: dict[str, Any]) -> dict[str, Any]:
    return order["dosageInstruction"][0]["doseAndRate"][0]


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(order: dict[str, Any]) -> None:
        node = order
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value

    return mutate


_DR = ("dosageInstruction", 0, "doseAndRate", 0)
RATE = "dosageInstruction[0].doseAndRate[0].rateQuantity"
DOSE = "dosageInstruction[0].doseAndRate[0].doseQuantity"

# (case id, mutation of the rituximab draft order, element path named, reason named)
BAD_ELEMENTS: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("invalid-date", _set(("authoredOn",), "21/11/2026"), "authoredOn", "not a valid dateTime"),
    ("impossible-date", _set(("authoredOn",), "2026-02-30"), "authoredOn", "not a valid"),
    ("rate-inf", _set((*_DR, "rateQuantity", "value"), float("inf")), f"{RATE}.value", "finite"),
    ("rate-nan", _set((*_DR, "rateQuantity", "value"), float("nan")), f"{RATE}.value", "number"),
    ("rate-zero", _set((*_DR, "rateQuantity", "value"), 0), f"{RATE}.value", "greater than zero"),
    ("rate-negative", _set((*_DR, "rateQuantity", "value"), -50), f"{RATE}.value", "greater"),
    ("dose-zero", _set((*_DR, "doseQuantity", "value"), 0), f"{DOSE}.value", "greater than zero"),
    ("dose-negative", _set((*_DR, "doseQuantity", "value"), -700), f"{DOSE}.value", "greater"),
    (
        "volume-zero",
        _set(("dispenseRequest", "quantity", "value"), 0),
        "dispenseRequest.quantity.value",
        "greater than zero",
    ),
    (
        "volume-negative",
        _set(("dispenseRequest", "quantity", "value"), -500),
        "dispenseRequest.quantity.value",
        "greater than zero",
    ),
    ("rate-wrong-type", _set((*_DR, "rateQuantity", "value"), "fast"), f"{RATE}.value", "number"),
    ("route-wrong-type", _set(("dosageInstruction", 0, "route"), "IV"), "route", "wrong type"),
    ("dose-no-unit", _set((*_DR, "doseQuantity"), {"value": 700}), f"{DOSE}.unit", "no unit"),
    (
        "rate-unknown-unit",
        _set((*_DR, "rateQuantity"), {"value": 50, "unit": "mg"}),
        f"{RATE}.unit",
        "not a rate",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "path", "reason"),
    [pytest.param(m, p, r, id=i) for i, m, p, r in BAD_ELEMENTS],
)
def test_each_bad_element_gets_a_card_naming_order_and_element(
    client: FlaskClient, mutate: Callable[[dict[str, Any]], None], path: str, reason: str
) -> None:
    body = load_request("order-sign-rituximab")
    order = _draft(body)
    mutate(order)
    text = json.dumps(body).replace("-Infinity", "-1e400").replace("Infinity", "1e400")
    resp = client.post(SIGN, data=text.replace("NaN", "1e400"), content_type="application/json")
    assert resp.status_code == 200, resp.get_json()
    result = resp.get_json()
    assert check_response(result) == []
    cards = [c for c in result["cards"] if rule_of(c) == TOPIC]
    assert len(cards) == 1, [c["summary"] for c in result["cards"]]
    (card,) = cards
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Rituximab: order could not be fully checked")
    assert f"MedicationRequest/{order['id']}" in card["detail"]
    assert path in card["detail"] and reason in card["detail"]
    assert "Could not check" in card["detail"]


def test_unresolvable_reference_is_an_unidentified_infusion(client: FlaskClient) -> None:
    body = load_request("order-sign-rituximab")
    order = _draft(body)
    del order["medicationCodeableConcept"]
    order["medicationReference"] = {"reference": "Medication/not-there"}
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200
    cards = [c for c in resp.get_json()["cards"] if rule_of(c) == TOPIC]
    (card,) = cards
    assert card["indicator"] == "warning"  # IV route and a rate: an infusion
    assert card["summary"].startswith("Unidentified order: could not tell which medicine")
    assert "medicationReference" in card["detail"] and "reference not resolved" in card["detail"]


def test_unidentified_order_without_infusion_signs_is_info(client: FlaskClient) -> None:
    body = load_request("order-sign-rituximab")
    order = _draft(body)
    order["medicationCodeableConcept"] = {
        "coding": [{"system": "https://ehr.example.org/formulary", "code": "LOCAL-77"}]
    }
    order.pop("dispenseRequest", None)
    order["dosageInstruction"] = [{"route": {"text": "oral"}}]
    resp = client.post(SIGN, json=body)
    (card,) = [c for c in resp.get_json()["cards"] if rule_of(c) == TOPIC]
    assert card["indicator"] == "info"
    assert "LOCAL-77" in card["detail"] and "https://ehr.example.org/formulary" in card["detail"]


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "MedicationStatement", "id": "ms1", "status": "active"},
        {"resourceType": "medicationrequest", "id": "x"},
    ],
    ids=["other-medication-type", "misspelt-type"],
)
def test_entry_that_is_not_a_medication_request_gets_a_card(
    client: FlaskClient, resource: dict[str, Any]
) -> None:
    body = load_request("order-sign-rituximab")
    body["context"]["draftOrders"]["entry"].append({"resource": resource})
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200
    cards = [c for c in resp.get_json()["cards"] if rule_of(c) == TOPIC]
    (card,) = cards
    assert card["indicator"] == "warning"
    assert card["summary"].startswith("Unreadable draft order: draft order 2 could not be read")
    assert "not a MedicationRequest" in card["detail"] or "resourceType" in card["detail"]


def test_entry_that_is_not_an_object_is_a_precise_400(client: FlaskClient) -> None:
    body = load_request("order-sign-rituximab")
    body["context"]["draftOrders"]["entry"].append({"resource": "MedicationRequest/1"})
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 400
    assert "entry.1.resource" in json.dumps(resp.get_json())


def test_order_select_reports_only_selected_orders(client: FlaskClient) -> None:
    body = load_request("order-sign-rituximab")
    body["hook"] = "order-select"
    order = _draft(body)
    body["context"]["selections"] = ["MedicationRequest/other"]
    order["authoredOn"] = "yesterday"
    resp = client.post("/cds-services/infusion-safety", json=body)
    assert resp.status_code == 200
    codes = [rule_of(c) for c in resp.get_json()["cards"]]
    assert TOPIC not in codes


@pytest.mark.parametrize(
    ("code", "product"),
    [
        ("50242-125", "50242-0125"),  # product NDC 5-3
        ("50242-0125", "50242-0125"),  # product NDC 5-4
        ("0781-3317", "00781-3317"),  # product NDC 4-4
        ("0781-3317-01", "00781-3317"),  # 10-digit 4-4-2
        ("50242-125-01", "50242-0125"),  # 10-digit 5-3-2
        ("12345-6789-1", "12345-6789"),  # 10-digit 5-4-1
        ("50242-0125-01", "50242-0125"),  # 11-digit 5-4-2
        ("50242012501", "50242-0125"),  # 11-digit, no hyphens (Epic)
        (" 50242012501 ", "50242-0125"),
    ],
)
def test_ndc_forms_reduce_to_the_product(code: str, product: str) -> None:
    assert ndc_product(code) == product


@pytest.mark.parametrize(
    "code",
    [
        "",
        "5024212501",
        "502421250",
        "50242-12-01",
        "123-4567-89",
        "50242-0125-011",
        "abc",
        "5０242012501",
    ],
)
def test_invalid_or_ambiguous_ndcs_are_none(code: str) -> None:
    assert ndc_product(code) is None
