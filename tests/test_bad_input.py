"""Malformed and hostile requests: each gets the right 4xx and a useful JSON body, never 500."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask

from tests.conftest import load_request

SIGN = "/cds-services/infusion-safety"
FEEDBACK = "/cds-services/infusion-safety/feedback"
AUTH = {
    "access_token": "t",
    "token_type": "Bearer",
    "expires_in": 30,
    "scope": "patient/*.read",
    "subject": "cds",
}


def sign(mutate: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any]:
    body = load_request("order-sign-rituximab")
    if mutate:
        mutate(body)
    return {"json": body}


def select(mutate: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    body = load_request("order-select-rituximab")
    mutate(body)
    return {"json": body}


def raw(data: bytes | str, content_type: str | None = "application/json") -> dict[str, Any]:
    kw: dict[str, Any] = {"data": data}
    if content_type:
        kw["content_type"] = content_type
    return kw


def fb(**item: Any) -> dict[str, Any]:
    base = {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:05:31Z"}
    base.update(item)
    return {"json": {"feedback": [{k: v for k, v in base.items() if v is not None}]}}


@dataclass
class Case:
    id: str
    request: dict[str, Any]
    status: int
    code: str
    needle: str
    method: str = "post"
    path: str = SIGN
    config: dict[str, Any] = field(default_factory=dict)


def _ctx(**values: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is KeyError:
                body["context"].pop(key)
            else:
                body["context"][key] = value

    return mutate


def _top(**values: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(body: dict[str, Any]) -> None:
        for key, value in values.items():
            if value is KeyError:
                body.pop(key)
            else:
                body[key] = value

    return mutate


CASES = [
    # -- transport and JSON
    Case("malformed-json", raw("{"), 400, "malformed-json", "not valid JSON"),
    Case("empty-body", raw(""), 400, "malformed-json", "empty"),
    Case("json-array", raw("[]"), 400, "malformed-json", "must be a JSON object"),
    Case("json-string", raw('"hello"'), 400, "malformed-json", "must be a JSON object"),
    Case("nan-constant", raw('{"hook": NaN}'), 400, "malformed-json", "not valid JSON"),
    Case("not-utf8", raw(b'{"hook": "\xff\xfe"}'), 400, "malformed-json", "UTF-8"),
    Case("deep-nesting", raw("[" * 100_000 + "]" * 100_000), 400, "malformed-json", "nested"),
    Case("text-plain", raw("{}", "text/plain"), 400, "unsupported-content-type", "Content-Type"),
    Case("no-content-type", raw("{}", None), 400, "unsupported-content-type", "Content-Type"),
    Case(
        "form-encoded",
        {"data": {"hook": "order-sign"}},
        400,
        "unsupported-content-type",
        "application/json",
    ),
    Case(
        "too-large",
        raw("{" + " " * 5000 + "}"),
        413,
        "payload-too-large",
        "limit",
        config={"MAX_CONTENT_LENGTH": 1000},
    ),
    # -- envelope
    Case("missing-hook", sign(_top(hook=KeyError)), 400, "invalid-request", "hook"),
    Case("hook-not-string", sign(_top(hook=7)), 400, "invalid-request", "hook"),
    Case(
        "missing-hookInstance",
        sign(_top(hookInstance=KeyError)),
        400,
        "invalid-request",
        "hookInstance",
    ),
    Case("empty-hookInstance", sign(_top(hookInstance="")), 400, "invalid-request", "hookInstance"),
    Case("missing-context", sign(_top(context=KeyError)), 400, "invalid-request", "context"),
    Case("context-not-object", sign(_top(context="Patient/1")), 400, "invalid-request", "context"),
    Case("hook-mismatch", sign(_top(hook="patient-view")), 400, "hook-mismatch", "order-sign"),
    Case("unknown-hook", sign(_top(hook="order-dispatch")), 400, "hook-mismatch", "order-dispatch"),
    Case(
        "unknown-service",
        sign(),
        404,
        "unknown-service",
        "no-such-service",
        path="/cds-services/no-such-service",
    ),
    Case(
        "auth-without-server",
        sign(_top(fhirAuthorization=AUTH)),
        400,
        "invalid-request",
        "fhirServer is required",
    ),
    Case(
        "auth-missing-token",
        sign(
            _top(
                fhirServer="https://ehr.example.org/fhir",
                fhirAuthorization={**AUTH, "access_token": KeyError},
            )
        ),
        400,
        "invalid-request",
        "fhirAuthorization",
    ),
    Case(
        "auth-wrong-token-type",
        sign(
            _top(
                fhirServer="https://ehr.example.org/fhir",
                fhirAuthorization={**AUTH, "token_type": "MAC"},
            )
        ),
        400,
        "invalid-request",
        "token_type",
    ),
    Case(
        "fhirServer-javascript",
        sign(_top(fhirServer="javascript:alert(1)")),
        400,
        "invalid-request",
        "fhirServer",
    ),
    Case(
        "fhirServer-credentials",
        sign(_top(fhirServer="https://u:p@ehr.example.org/fhir")),
        400,
        "invalid-request",
        "fhirServer",
    ),
    Case("prefetch-not-object", sign(_top(prefetch=["x"])), 400, "invalid-request", "prefetch"),
    Case(
        "prefetch-value-string",
        sign(lambda b: b["prefetch"].update(medications="none")),
        400,
        "invalid-request",
        "prefetch.medications",
    ),
    # -- context
    Case(
        "missing-patientId",
        sign(_ctx(patientId=KeyError)),
        400,
        "invalid-request",
        "context.patientId",
    ),
    Case(
        "patientId-number", sign(_ctx(patientId=12345)), 400, "invalid-request", "context.patientId"
    ),
    Case(
        "patientId-query-injection",
        sign(_ctx(patientId="1&_include=*")),
        400,
        "invalid-request",
        "FHIR id",
    ),
    Case(
        "patientId-path-traversal",
        sign(_ctx(patientId="../Patient")),
        400,
        "invalid-request",
        "FHIR id",
    ),
    Case(
        "encounterId-invalid",
        sign(_ctx(encounterId="enc 1")),
        400,
        "invalid-request",
        "context.encounterId",
    ),
    Case("missing-userId", sign(_ctx(userId=KeyError)), 400, "invalid-request", "context.userId"),
    Case(
        "missing-draftOrders",
        sign(_ctx(draftOrders=KeyError)),
        400,
        "invalid-request",
        "context.draftOrders",
    ),
    Case(
        "draftOrders-not-bundle",
        sign(_ctx(draftOrders={"resourceType": "MedicationRequest"})),
        400,
        "invalid-request",
        "Bundle",
    ),
    Case(
        "draftOrders-entry-not-array",
        sign(_ctx(draftOrders={"resourceType": "Bundle", "entry": {"resource": {}}})),
        400,
        "invalid-request",
        "context.draftOrders",
    ),
    Case(
        "draftOrders-entry-without-resource",
        sign(_ctx(draftOrders={"resourceType": "Bundle", "entry": [{"fullUrl": "x"}]})),
        400,
        "invalid-request",
        "entry.0.resource",
    ),
    Case(
        "select-without-selections",
        select(_ctx(selections=KeyError)),
        400,
        "invalid-request",
        "context.selections",
    ),
    Case(
        "select-bad-selection",
        select(_ctx(selections=["rituximab"])),
        400,
        "invalid-request",
        "relative reference",
    ),
    # -- methods and routes
    Case("get-service", {}, 405, "method-not-allowed", "POST", method="get"),
    Case("put-discovery", {}, 405, "method-not-allowed", "GET", method="put", path="/cds-services"),
    Case("unknown-route", {}, 404, "not-found", "/cds-services", method="get", path="/admin"),
    # -- feedback
    Case(
        "feedback-unknown-service",
        fb(),
        404,
        "unknown-service",
        "nope",
        path="/cds-services/nope/feedback",
    ),
    Case(
        "feedback-empty-list",
        {"json": {"feedback": []}},
        400,
        "invalid-request",
        "feedback",
        path=FEEDBACK,
    ),
    Case(
        "feedback-bad-outcome",
        fb(outcome="ignored"),
        400,
        "invalid-request",
        "outcome",
        path=FEEDBACK,
    ),
    Case(
        "feedback-accepted-without-suggestions",
        fb(outcome="accepted"),
        400,
        "invalid-request",
        "acceptedSuggestions",
        path=FEEDBACK,
    ),
    Case(
        "feedback-timestamp-not-rfc3339",
        fb(outcomeTimestamp="yesterday"),
        400,
        "invalid-request",
        "outcomeTimestamp",
        path=FEEDBACK,
    ),
    Case(
        "feedback-timestamp-without-zone",
        fb(outcomeTimestamp="2026-11-21T10:05:31"),
        400,
        "invalid-request",
        "RFC 3339",
        path=FEEDBACK,
    ),
    Case(
        "feedback-empty-override-reason",
        fb(overrideReason={}),
        400,
        "invalid-request",
        "reason or a userComment",
        path=FEEDBACK,
    ),
    Case(
        "feedback-missing-card",
        fb(card=None),
        400,
        "invalid-request",
        "feedback.0.card",
        path=FEEDBACK,
    ),
]


def _resolve_key_errors(value: Any) -> Any:
    """``KeyError`` as a dict value in a case means "drop this key"."""
    if isinstance(value, dict):
        return {k: _resolve_key_errors(v) for k, v in value.items() if v is not KeyError}
    if isinstance(value, list):
        return [_resolve_key_errors(v) for v in value]
    return value


def test_there_are_at_least_20_cases() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request(make_app: Callable[..., Flask], case: Case) -> None:
    client = make_app(**case.config).test_client()
    kwargs = dict(case.request)
    if "json" in kwargs:
        kwargs["json"] = _resolve_key_errors(kwargs["json"])
    resp = getattr(client, case.method)(case.path, **kwargs)
    assert resp.status_code == case.status, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    first = body["issue"][0]
    assert first["details"]["coding"][0]["code"] == case.code
    text = json.dumps(body)
    assert case.needle in text, text[:500]


def test_405_names_allowed_methods(client: Any) -> None:
    resp = client.get(SIGN)
    assert resp.status_code == 405
    assert "POST" in resp.headers["Allow"]


def test_all_field_problems_reported_at_once(client: Any) -> None:
    body = load_request("order-sign-rituximab")
    del body["hookInstance"]
    body["context"]["patientId"] = "bad id"
    del body["context"]["draftOrders"]
    resp = client.post(SIGN, json=body)
    paths = {i["expression"][0] for i in resp.get_json()["issue"] if "expression" in i}
    assert paths == {"hookInstance", "context.patientId", "context.draftOrders"}


def test_unknown_keys_and_extensions_are_tolerated(client: Any) -> None:
    body = load_request("order-sign-rituximab")
    body["extension"] = {"com.example.flag": True}
    body["somethingNew"] = {"x": 1}
    body["context"]["extension"] = {"org.example": 1}
    body["context"]["futureField"] = "y"
    body["fhirAuthorization"] = {**AUTH, "patient": "pat-lym-001", "extra": 1}
    body["fhirServer"] = "https://ehr.example.org/fhir"
    body["prefetch"]["medicationRequestBundle"] = {"resourceType": "Bundle", "type": "collection"}
    assert client.post(SIGN, json=body).status_code == 200


def test_fhir_json_content_type_is_accepted(client: Any) -> None:
    body = json.dumps(load_request("order-sign-rituximab"))
    resp = client.post(SIGN, data=body, content_type="application/fhir+json; charset=utf-8")
    assert resp.status_code == 200
