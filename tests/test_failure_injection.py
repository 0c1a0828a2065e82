"""The FHIR fallback against a real, misbehaving FHIR server on loopback.

Each case breaks one thing (timeouts, slow or endless bodies, error statuses, garbage, an
OperationOutcome instead of a Bundle, paging loops, paging or redirects to another host,
many megabytes) and checks, for the whole hook call:

* it finishes within the configured FHIR deadline (wall time, plus a fixed allowance for
  evaluating the request — a bound, not a benchmark);
* it answers 412 naming the required keys that could not be read, or 200 with conformant
  cards built from the data that could be read (the per-case behaviour is documented in
  docs/robustness.md);
* the bearer token reached the allowed server only: every request it received carried it,
  and the other server (a second loopback host) received nothing;
* no token, patient id or patient name was logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask

from tests import fhirserver as fs
from tests.conformance import check_response
from tests.conftest import TOKEN, every_key, load_fixture, load_request
from tests.fakefhir import Call
from tests.loghygiene import assert_clean_logs

SIGN = "/cds-services/infusion-safety-sign"
PATIENT = "patients/lymphoma-first-rituximab.json"

CONNECT, READ, DEADLINE = 0.5, 0.5, 1.5
# Evaluating the request once the FHIR calls are over (parse, rules, cards), generously.
ALLOWANCE = 1.0
SETTINGS = {
    "FHIR_ALLOW_HTTP": "loopback",
    "FHIR_CONNECT_TIMEOUT": CONNECT,
    "FHIR_READ_TIMEOUT": READ,
    "FHIR_DEADLINE": DEADLINE,
}
ALL_KEYS = ("patient", "medications", "allergies", "weight", "administrations")
TYPES = (
    "Patient",
    "MedicationRequest",
    "AllergyIntolerance",
    "Observation",
    "MedicationAdministration",
)


@dataclass
class Servers:
    ehr: fs.LiveFhir  # the fhirServer of the request: the only one that may get the token
    other: fs.LiveFhir  # another host: must never be called


@pytest.fixture
def servers() -> Iterator[Servers]:
    bundle = load_fixture(PATIENT)
    with (
        fs.LiveFhir.from_bundle(bundle) as ehr,
        fs.LiveFhir.from_bundle(bundle, host="127.0.0.2") as other,
    ):
        yield Servers(ehr, other)


def _request(servers: Servers, drop: tuple[str, ...] = ALL_KEYS) -> dict[str, Any]:
    body = every_key(load_request("order-sign-rituximab"))
    for key in drop:
        body["prefetch"].pop(key, None)
    body["fhirServer"] = servers.ehr.base
    body["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "infusion-safety-cds",
    }
    return body


def _mr(i: int) -> dict[str, Any]:
    history = [
        e["resource"]
        for e in load_fixture(PATIENT)["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
    ]
    return history[i % len(history)]


@dataclass(frozen=True)
class Case:
    id: str
    faults: Callable[[Servers], dict[str, fs.Fault]]
    status: int
    keys: tuple[str, ...] = ()  # 412: the keys named; 200: keys whose data is incomplete
    warning: str = ""  # 200: a warning that must reach the cards' detail
    drop: tuple[str, ...] = ALL_KEYS
    calls: int | None = None  # requests the fhirServer must have received, if fixed


def _same(fault: fs.Fault) -> Callable[[Servers], dict[str, fs.Fault]]:
    return lambda s: {"AllergyIntolerance": fault}


def _paged_mrs(next_url: Callable[[Servers, Call], str]) -> Callable[[Servers], dict[str, Any]]:
    def faults(s: Servers) -> dict[str, fs.Fault]:
        return {"MedicationRequest": fs.bundle_with_next(lambda c: next_url(s, c), _mr(0))}

    return faults


def _loop_url(s: Servers, call: Call) -> str:
    query = "&".join(f"{k}={v[0]}" for k, v in call.query.items())
    return f"{s.ehr.base}/MedicationRequest?{query}"  # the very page it came from


def _slow_pages(s: Servers) -> dict[str, fs.Fault]:
    page = fs.bundle_with_next(lambda c: f"{s.ehr.base}/MedicationRequest?page=n", _mr(1))
    return {"MedicationRequest": fs.delay(READ * 0.8, page)}


CASES = [
    # The required key fails → 412 naming it.
    Case("timeout", _same(fs.delay(30)), 412, ("allergies",)),
    Case("slow-body-drip", _same(fs.drip(10_000, 0.05)), 412, ("allergies",)),
    Case("slow-headers-drip", _same(fs.slow_headers(READ * 0.8)), 412, ("allergies",)),
    Case(
        "every-key-drips-headers",
        lambda s: dict.fromkeys(TYPES, fs.slow_headers(READ * 0.8)),
        412,
        ("allergies", "medications"),
    ),
    Case("401", _same(fs.status(401)), 412, ("allergies",)),
    Case("403", _same(fs.status(403)), 412, ("allergies",)),
    Case("404", _same(fs.status(404)), 412, ("allergies",)),
    Case("500", _same(fs.status(500)), 412, ("allergies",)),
    Case(
        "invalid-json", _same(fs.raw(b'{"resourceType": "Bundle", "entry": [')), 412, ("allergies",)
    ),
    Case("html", _same(fs.raw(b"<html>Login</html>", "text/html")), 412, ("allergies",)),
    Case(
        "operation-outcome-200",
        _same(
            fs.raw(
                fs.json_bytes(
                    {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "too-costly"}],
                    }
                )
            )
        ),
        412,
        ("allergies",),
    ),
    Case("many-megabytes", _same(fs.huge(24)), 412, ("allergies",)),
    Case(
        "redirect-to-other-host",
        lambda s: {"AllergyIntolerance": fs.redirect(f"{s.other.base}/AllergyIntolerance")},
        412,
        ("allergies",),
    ),
    Case(
        "everything-fails",
        lambda s: dict.fromkeys(TYPES, fs.status(500)),
        412,
        ("allergies", "medications"),
    ),
    # Optional data fails → 200, that data unknown, a warning in the cards.
    Case(
        "optional-500",
        lambda s: {"Observation": fs.status(500)},
        200,
        ("weight",),
        "HTTP 500",
        drop=("weight",),
    ),
    Case(
        "optional-timeout",
        lambda s: {"Patient": fs.delay(30)},
        200,
        ("patient",),
        "timed out",
        drop=("patient",),
    ),
    # Slow but within the budget → 200 with complete data.
    Case(
        "slow-within-budget",
        lambda s: dict.fromkeys(TYPES, fs.delay(READ * 0.6)),
        200,
    ),
    # Paging trouble → 200 with the pages that could be read, marked incomplete.
    Case(
        "next-loops",
        _paged_mrs(_loop_url),
        200,
        ("medications",),
        "leads back to a page read",
        drop=("medications",),
        calls=1,  # the page is not read again
    ),
    Case(
        "next-other-host",
        _paged_mrs(lambda s, c: f"{s.other.base}/MedicationRequest?p=2"),
        200,
        ("medications",),
        "another origin",
        drop=("medications",),
    ),
    Case(
        "paging-past-deadline",
        _slow_pages,
        200,
        ("medications",),
        "paging stopped",
        drop=("medications",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fhir_failure(
    make_app: Callable[..., Flask],
    servers: Servers,
    caplog: pytest.LogCaptureFixture,
    case: Case,
) -> None:
    caplog.set_level(logging.DEBUG)
    servers.ehr.faults.update(case.faults(servers))
    client = make_app(**SETTINGS).test_client()

    started = time.monotonic()
    resp = client.post(SIGN, json=_request(servers, case.drop))
    elapsed = time.monotonic() - started

    assert elapsed < DEADLINE + ALLOWANCE, f"{elapsed:.2f}s > deadline {DEADLINE}s"
    assert resp.status_code == case.status, resp.get_data(as_text=True)[:400]
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    if case.status == 412:
        assert body["issue"][0]["details"]["coding"][0]["code"] == "prefetch-unavailable"
        text = body["issue"][0]["diagnostics"]
        for key in case.keys:
            assert f"{key}" in text, text
    else:
        assert check_response(body) == []
        assert body["cards"], "the rituximab order always gets cards"
        details = " ".join(c.get("detail", "") for c in body["cards"])
        assert case.warning in details, details[-600:]
        for key in case.keys:  # the cards say which data was incomplete or unavailable
            assert f"'{key}'" in details, details[-600:]

    # The token went to the fhirServer only, on every request it received.
    received = servers.ehr.recorded()
    assert received, "the fallback called the FHIR server"
    if case.calls is not None:
        assert len(received) == case.calls, [c.tail for c in received]
    assert servers.ehr.authorizations() == {f"Bearer {TOKEN}"}
    assert servers.other.recorded() == []
    for call in received:
        assert TOKEN not in call.path and TOKEN not in json.dumps(call.query)

    assert_clean_logs(caplog)


def test_connection_refused_is_412_quickly(
    make_app: Callable[..., Flask], servers: Servers
) -> None:
    body = _request(servers)
    servers.ehr.stop()  # nothing listens on that port any more
    started = time.monotonic()
    resp = make_app(**SETTINGS).test_client().post(SIGN, json=body)
    assert time.monotonic() - started < DEADLINE + ALLOWANCE
    assert resp.status_code == 412
    assert "could not reach" in resp.get_json()["issue"][0]["diagnostics"]


def test_medication_read_failures_leave_cards(
    make_app: Callable[..., Flask], servers: Servers
) -> None:
    """medicationReference reads failing: 200, the order is unrecognised and says why."""
    servers.ehr.faults["Medication"] = fs.status(500)
    body = every_key(load_request("order-sign-medication-reference"))
    entries = body["context"]["draftOrders"]["entry"]
    entries[:] = [e for e in entries if e["resource"]["resourceType"] != "Medication"]
    body["fhirServer"] = servers.ehr.base
    body["fhirAuthorization"] = _request(servers)["fhirAuthorization"]
    started = time.monotonic()
    resp = make_app(**SETTINGS).test_client().post("/cds-services/infusion-safety", json=body)
    assert time.monotonic() - started < DEADLINE + ALLOWANCE
    assert resp.status_code == 200
    assert check_response(resp.get_json()) == []
    assert [c.tail for c in servers.ehr.recorded()] == ["Medication/med-truxima-500"]
    assert servers.ehr.authorizations() == {f"Bearer {TOKEN}"}
    assert servers.other.recorded() == []
