"""GET /cds-services: structure, routing data, valid 2.0 prefetch tokens, determinism."""

from __future__ import annotations

from flask.testing import FlaskClient

from cds_server import services
from cds_server.fhirdata import templates
from cds_server.knowledge.model import KnowledgeBase


def test_discovery_structure(client: FlaskClient, kb: KnowledgeBase) -> None:
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    doc = resp.get_json()
    assert set(doc) == {"services"}
    entries = doc["services"]
    assert [(s["id"], s["hook"]) for s in entries] == [
        ("infusion-risk-summary", "patient-view"),
        ("infusion-safety", "order-select"),
        ("infusion-safety", "order-sign"),
    ]
    for entry in entries:
        assert set(entry) == {"hook", "id", "title", "description", "prefetch", "usageRequirements"}
        for key in ("hook", "id", "title", "description", "usageRequirements"):
            assert isinstance(entry[key], str) and entry[key].strip()
        assert kb.version in entry["usageRequirements"]
        assert " " not in entry["id"]
        assert set(entry["prefetch"]) == {
            "patient",
            "medications",
            "allergies",
            "weight",
            "administrations",
        }


def test_prefetch_templates(client: FlaskClient) -> None:
    entry = client.get("/cds-services").get_json()["services"][1]
    prefetch = entry["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["medications"].startswith("MedicationRequest?patient={{context.patientId}}")
    assert "status=" not in prefetch["medications"]  # history: every status
    assert prefetch["allergies"] == "AllergyIntolerance?patient={{context.patientId}}"
    assert prefetch["weight"] == (
        "Observation?patient={{context.patientId}}&code=http://loinc.org|29463-7"
        "&_sort=-date&_count=1"
    )
    # Doses given, every status (not-done/entered-in-error are dropped when read).
    assert prefetch["administrations"] == (
        "MedicationAdministration?patient={{context.patientId}}&_count=100"
    )


def test_every_token_is_a_valid_root_level_2_0_token(client: FlaskClient) -> None:
    for entry in client.get("/cds-services").get_json()["services"]:
        for key, template in entry["prefetch"].items():
            assert templates.problems(template, services.TOKEN_FIELDS[entry["hook"]]) == [], key
            for token in templates.tokens(template):
                assert token.startswith("context.") or token in templates.USER_TOKENS
                assert "draftOrders" not in token and "selections" not in token
                assert "(" not in token  # no FHIRPath in 2.0


def test_required_and_optional_keys_are_declared() -> None:
    flags = {p.key: p.required for p in services.PREFETCH}
    assert flags == {
        "patient": False,
        "medications": True,
        "allergies": True,
        "weight": False,
        "administrations": False,
    }


def test_trailing_slash_and_determinism(client: FlaskClient) -> None:
    first = client.get("/cds-services").get_data()
    assert client.get("/cds-services/").get_data() == first
    assert client.get("/cds-services").get_data() == first


def test_routing_by_id_and_hook() -> None:
    assert services.find("infusion-safety", "order-sign").hook == "order-sign"
    assert services.find("infusion-safety", "order-select").hook == "order-select"
    assert services.find("infusion-risk-summary", "patient-view").hook == "patient-view"
