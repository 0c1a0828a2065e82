"""HTTP helpers for store tests: fixture requests, hook calls and feedback bodies."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import FIXTURES, rule_of, service_for

OUR_REASONS = "urn:infusion-safety-cds:override-reason"


def scenario(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((FIXTURES / "scenarios" / f"{name}.request.json").read_text()))


# A second rituximab infusion (one dose given three weeks before the fixtures' date): its
# rate-titration warning offers "previously tolerated" (snooze 90 days), which a first
# infusion's card does not (``reasoning.reasons``).
LATER_RITUXIMAB = "rituximab-later-rate-above"


def with_session(
    body: dict[str, Any],
    *,
    hook: str | None = None,
    instance: str | None = None,
    encounter: str | None = "keep",
    patient: str | None = None,
) -> dict[str, Any]:
    """A copy of ``body`` with another hook, hookInstance (default: new), encounter, patient."""
    out = copy.deepcopy(body)
    out["hookInstance"] = instance or str(uuid.uuid4())
    if hook:
        out["hook"] = hook
        if hook == "order-select":
            ids = [e["resource"]["id"] for e in out["context"]["draftOrders"]["entry"]]
            out["context"]["selections"] = [f"MedicationRequest/{i}" for i in ids]
        else:
            out["context"].pop("selections", None)
    if encounter is None:
        out["context"].pop("encounterId", None)
    elif encounter != "keep":
        out["context"]["encounterId"] = encounter
    if patient:
        out["context"]["patientId"] = patient
    return out


def call(client: FlaskClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = client.post(f"/cds-services/{service_for(body)}", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["cards"]  # type: ignore[no-any-return]


def topics(cards: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((rule_of(c), c["indicator"]) for c in cards)


def card_for(cards: list[dict[str, Any]], topic: str) -> dict[str, Any]:
    return next(c for c in cards if rule_of(c) == topic)


def iso(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")


def overridden(
    card: str, code: str | None = None, *, system: str = OUR_REASONS, when: datetime | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"card": card, "outcome": "overridden", "outcomeTimestamp": iso(when)}
    if code:
        item["overrideReason"] = {"reason": {"system": system, "code": code}}
    return item


def accepted(card: str, *suggestions: str, when: datetime | None = None) -> dict[str, Any]:
    return {
        "card": card,
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": s} for s in suggestions],
        "outcomeTimestamp": iso(when),
    }


def post_feedback(client: FlaskClient, *items: dict[str, Any], service: str = "infusion-safety"):
    return client.post(f"/cds-services/{service}/feedback", json={"feedback": list(items)})
