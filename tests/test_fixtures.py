"""Every request in fixtures/fhir/requests round-trips: 200, conformant, deterministic."""

from __future__ import annotations

import json
import re

import pytest
from flask.testing import FlaskClient

from tests.conformance import check_response
from tests.conftest import FIXTURES, load_request, request_names, service_for

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def test_fixture_set_is_complete() -> None:
    names = request_names()
    assert {n.split("-")[0] + "-" + n.split("-")[1] for n in names} >= {
        "order-sign",
        "order-select",
        "patient-view",
    }
    assert len(names) >= 8


@pytest.mark.parametrize("name", request_names())
def test_fixture_round_trip(client: FlaskClient, name: str) -> None:
    body = load_request(name)
    resp = client.post(f"/cds-services/{service_for(body)}", json=body)
    assert resp.status_code == 200, resp.get_json()
    assert resp.mimetype == "application/json"
    result = resp.get_json()
    assert check_response(result) == []
    again = client.post(f"/cds-services/{service_for(body)}", json=body).get_json()
    strip = lambda r: UUID.sub("<uuid>", json.dumps(r, sort_keys=True))  # noqa: E731
    assert strip(again) == strip(result)


@pytest.mark.parametrize("name", sorted(p.stem for p in (FIXTURES / "feedback").glob("*.json")))
def test_feedback_fixtures_accepted(client: FlaskClient, name: str) -> None:
    body = json.loads((FIXTURES / "feedback" / f"{name}.json").read_text())
    resp = client.post("/cds-services/infusion-safety/feedback", json=body)
    assert resp.status_code == 200
    assert resp.get_data() == b""


def _patients(value: object) -> list[dict]:
    if isinstance(value, dict):
        found = [value] if value.get("resourceType") == "Patient" else []
        return found + [p for v in value.values() for p in _patients(v)]
    if isinstance(value, list):
        return [p for v in value for p in _patients(v)]
    return []


def test_fixture_patients_are_fictional() -> None:
    patients = [
        p for path in FIXTURES.rglob("*.json") for p in _patients(json.loads(path.read_text()))
    ]
    assert patients
    for patient in patients:
        assert all(n["family"].startswith("Fictional-") for n in patient["name"]), patient["id"]
