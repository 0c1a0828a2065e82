"""POST /cds-services/{id}/feedback: the 2.0 shapes are validated and accepted (storage later)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_server.cdshooks import protocol
from tests.conftest import FIXTURES

URL = "/cds-services/infusion-safety/feedback"
ITEM = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:05:31Z"}


@pytest.mark.parametrize(
    "item",
    [
        {**ITEM, "outcome": "accepted", "acceptedSuggestions": [{"id": "s1"}]},
        ITEM,
        {**ITEM, "overrideReason": {"reason": {"code": "x", "system": "https://e.org/r"}}},
        {**ITEM, "overrideReason": {"userComment": "not relevant"}},
        {**ITEM, "outcomeTimestamp": "2026-11-21T10:05:31.123+01:00", "extension": {"a": 1}},
        {**ITEM, "card": "unknown-card-uuid-is-fine"},
    ],
)
def test_valid_feedback_is_accepted(client: FlaskClient, item: dict[str, Any]) -> None:
    resp = client.post(URL, json={"feedback": [item]})
    assert resp.status_code == 200
    assert resp.get_data() == b""
    assert "Content-Type" not in resp.headers


def test_several_items_and_services(client: FlaskClient) -> None:
    body = {"feedback": [ITEM, {**ITEM, "card": "c2"}]}
    assert client.post(URL, json=body).status_code == 200
    assert client.post("/cds-services/infusion-risk-summary/feedback", json=body).status_code == 200


def test_load_feedback_returns_items() -> None:
    items = protocol.load_feedback({"feedback": [ITEM], "extra": True})
    assert items == [ITEM]


@pytest.mark.parametrize(
    "stamp",
    [
        "0001-01-01T00:00:03+03:00",  # a valid date-time, but before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "2026-02-30T10:00:00Z",
        "2026-11-21T10:05:31",  # no time zone
    ],
)
def test_an_outcome_time_that_is_no_utc_instant_is_a_400(client: FlaskClient, stamp: str) -> None:
    resp = client.post(URL, json={"feedback": [{**ITEM, "outcomeTimestamp": stamp}]})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["resourceType"] == "OperationOutcome"


EPIC = FIXTURES / "clients" / "epic"


@pytest.mark.parametrize("name", sorted(p.stem for p in EPIC.glob("feedback-*.json")))
def test_epic_feedback_fixtures_are_accepted(client: FlaskClient, name: str) -> None:
    body = json.loads((EPIC / f"{name}.json").read_text())
    assert client.post("/cds-services/infusion-safety-sign/feedback", json=body).status_code == 200


def test_epic_override_reasons_read_in_the_spec_form() -> None:
    body = json.loads((EPIC / "feedback-override-extension.json").read_text())
    (item,) = protocol.load_feedback(body)
    assert "overrideReasons" not in item
    assert item["overrideReason"] == {
        "reason": {
            "system": protocol.EPIC_REASON_CATEGORY,
            "code": "45",
            "display": "Does not meet criteria",
        },
        "userComment": "User Entered Free Text",
    }
    body = json.loads((EPIC / "feedback-override-reason.json").read_text())
    (item,) = protocol.load_feedback(body)
    assert item["overrideReason"]["reason"] == {
        "system": "urn:infusion-safety-cds:override-reason",
        "code": "previously-tolerated",
        "display": "Patient has tolerated this drug before (since any reaction on record)",
    }


def test_the_spec_form_wins_over_epics_when_both_carry_a_reason() -> None:
    ours = {"system": "urn:infusion-safety-cds:override-reason", "code": "not-applicable"}
    item = {
        **ITEM,
        "overrideReason": {"reason": ours},
        "overrideReasons": {"reason": {"system": "https://e.org/r", "code": "other"}},
    }
    (loaded,) = protocol.load_feedback({"feedback": [item]})
    assert loaded["overrideReason"] == {"reason": ours}
