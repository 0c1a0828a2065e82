"""GET /cds-services: structure, routing data, valid 2.0 prefetch tokens, determinism."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_server.cdshooks import services
from cds_server.fhirdata import templates
from cds_server.knowledge.model import KnowledgeBase
from tests.conftest import load_request, rule_of, service_for


def test_discovery_structure(client: FlaskClient, kb: KnowledgeBase) -> None:
    resp = client.get("/cds-services")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    doc = resp.get_json()
    assert set(doc) == {"services"}
    entries = doc["services"]
    assert [(s["id"], s["hook"]) for s in entries] == [
        ("infusion-risk-summary", "patient-view"),
        ("infusion-safety-select", "order-select"),
        ("infusion-safety-sign", "order-sign"),
    ]
    # One entry, one id: clients (the CDS Hooks Sandbox, Epic) key services by URL.
    assert len({s["id"] for s in entries}) == len(entries)
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
    assert services.find("infusion-safety-sign", "order-sign").hook == "order-sign"
    assert services.find("infusion-safety-select", "order-select").hook == "order-select"
    assert services.find("infusion-risk-summary", "patient-view").hook == "patient-view"
    # The deprecated shared id answers both order hooks for existing registrations.
    assert services.find("infusion-safety", "order-sign").hook == "order-sign"
    assert services.find("infusion-safety", "order-select").hook == "order-select"


def test_deprecated_shared_id_is_not_listed_but_answers_both_hooks(
    make_app: Callable[..., Flask],
) -> None:
    listed = {s["id"] for s in make_app().test_client().get("/cds-services").get_json()["services"]}
    assert "infusion-safety" not in listed
    assert services.deprecated("infusion-safety")
    assert not services.deprecated("infusion-safety-sign")
    for name in ("order-select-rituximab", "order-sign-rituximab"):
        # A fresh service each time: the ordering-session de-duplication is not under test.
        old = (
            make_app().test_client().post("/cds-services/infusion-safety", json=load_request(name))
        )
        assert old.status_code == 200, old.get_data(as_text=True)
        body = load_request(name)
        new = make_app().test_client().post(f"/cds-services/{service_for(body)}", json=body)
        topics = [rule_of(c) for c in old.get_json()["cards"]]
        assert "rate-titration" in topics
        assert topics == [rule_of(c) for c in new.get_json()["cards"]]
    feedback = {
        "feedback": [
            {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:05:31Z"}
        ]
    }
    client = make_app().test_client()
    assert client.post("/cds-services/infusion-safety/feedback", json=feedback).status_code == 200
    for service_id in ("infusion-safety-select", "infusion-safety-sign"):
        resp = client.post(f"/cds-services/{service_id}/feedback", json=feedback)
        assert resp.status_code == 200


@pytest.mark.parametrize(
    ("select_id", "sign_id"),
    [
        ("infusion-safety-select", "infusion-safety-sign"),
        ("infusion-safety", "infusion-safety-sign"),  # registered before the split
        ("infusion-safety-select", "infusion-safety"),
    ],
)
def test_order_sign_after_order_select_holds_back_across_ids(
    make_app: Callable[..., Flask], select_id: str, sign_id: str
) -> None:
    client = make_app().test_client()
    sign = load_request("order-sign-rituximab")
    alone = make_app().test_client().post(f"/cds-services/{sign_id}", json=sign)
    assert "rate-titration" in [rule_of(c) for c in alone.get_json()["cards"]]
    select = load_request("order-select-rituximab")
    assert select["context"]["encounterId"] == sign["context"]["encounterId"]
    shown = client.post(f"/cds-services/{select_id}", json=select).get_json()["cards"]
    assert "rate-titration" in [rule_of(c) for c in shown]
    later = client.post(f"/cds-services/{sign_id}", json=load_request("order-sign-rituximab"))
    assert later.status_code == 200
    assert "rate-titration" not in [rule_of(c) for c in later.get_json()["cards"]]


def test_each_order_id_answers_only_its_hook(client: FlaskClient) -> None:
    select = load_request("order-select-rituximab")
    resp = client.post("/cds-services/infusion-safety-sign", json=select)
    assert resp.status_code == 400
    assert "order-sign" in resp.get_data(as_text=True)
    sign = load_request("order-sign-rituximab")
    assert client.post("/cds-services/infusion-safety-select", json=sign).status_code == 400


def test_order_ids_are_one_family() -> None:
    assert {services.family(i) for i in services.ids() if i != "infusion-risk-summary"} == {
        "infusion-safety"
    }
    assert services.family("infusion-risk-summary") == "infusion-risk-summary"
