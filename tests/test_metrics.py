"""GET /metrics: Prometheus counters move with hook calls, FHIR fallbacks, feedback and refused
tokens; protected by the admin token outside the demo; no patient data or ids in the text;
several gunicorn workers report together (multiprocess mode of ``serve``)."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from cds_server.web import auth, metrics
from tests import jwtkit as kit
from tests.conftest import FHIR, ROOT, TOKEN, load_fixture, load_request, rule_of
from tests.fakefhir import FakeFhir
from tests.test_sharedcache import redis_url  # noqa: F401 (fixture)

ADMIN = "metrics-admin-token-0123456789abcdef0123456789"
SIGN = "/cds-services/infusion-safety-sign"
HEADERS = {"Authorization": f"Bearer {ADMIN}"}
SIGN_LABELS = {"endpoint": "service", "service": "infusion-safety-sign", "hook": "order-sign"}


def samples(client: FlaskClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, by name and sorted labels."""
    resp = client.get("/metrics", headers=HEADERS)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert resp.headers["Cache-Control"] == "no-store"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(resp.get_data(as_text=True))
        for s in family.samples
    }


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(ADMIN_TOKEN=ADMIN).test_client()


def test_a_hook_call_counts_its_request_latency_and_cards(client: FlaskClient) -> None:
    before = samples(client)
    body = load_request("order-sign-rituximab")
    resp = client.post(SIGN, json=body)
    assert resp.status_code == 200
    cards = resp.get_json()["cards"]
    assert cards
    after = samples(client)

    labels = {"endpoint": "service", "service": "infusion-safety-sign", "hook": "order-sign"}
    assert value(after, "cds_requests_total", **labels, status="200") == (
        value(before, "cds_requests_total", **labels, status="200") + 1
    )
    assert value(after, "cds_request_duration_seconds_count", **labels) == (
        value(before, "cds_request_duration_seconds_count", **labels) + 1
    )
    shown: dict[tuple[str, str], int] = {}
    for card in cards:
        key = (card["indicator"], rule_of(card))  # the label is the rule, not the wire code
        shown[key] = shown.get(key, 0) + 1
    for (indicator, topic), count in shown.items():
        card_labels = {**labels, "indicator": indicator, "topic": topic}
        del card_labels["endpoint"]
        assert value(after, "cds_cards_total", **card_labels) == (
            value(before, "cds_cards_total", **card_labels) + count
        )


def test_errors_are_counted_by_status(client: FlaskClient) -> None:
    before = samples(client)
    assert client.post(SIGN, data="{", content_type="application/json").status_code == 400
    assert client.post("/cds-services/no-such-service", json={}).status_code == 404
    after = samples(client)
    sign = {"endpoint": "service", "service": "infusion-safety-sign", "hook": "order-sign"}
    assert value(after, "cds_requests_total", **sign, status="400") == (
        value(before, "cds_requests_total", **sign, status="400") + 1
    )
    unknown = {"endpoint": "service", "service": "unknown", "hook": "unknown", "status": "404"}
    assert value(after, "cds_requests_total", **unknown) == (
        value(before, "cds_requests_total", **unknown) + 1
    )
    assert not any("no-such-service" in str(key) for key in after)


def test_feedback_stored_is_counted(client: FlaskClient) -> None:
    cards = client.post(SIGN, json=load_request("order-sign-rituximab")).get_json()["cards"]
    before = samples(client)
    item = {"outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:05:31Z"}
    body = {"feedback": [{**item, "card": cards[0]["uuid"]}, {**item, "card": "not-a-card"}]}
    assert client.post(f"{SIGN}/feedback", json=body).status_code == 200
    after = samples(client)
    for result in ("stored", "unknown_card"):
        labels = {"service": "infusion-safety-sign", "result": result}
        assert value(after, "cds_feedback_items_total", **labels) == (
            value(before, "cds_feedback_items_total", **labels) + 1
        )
    labels = {"endpoint": "feedback", "service": "infusion-safety-sign", "hook": ""}
    assert value(after, "cds_requests_total", **labels, status="200") == (
        value(before, "cds_requests_total", **labels, status="200") + 1
    )


def test_fhir_fallback_reads_and_failures_are_counted(
    client: FlaskClient, mocked_fhir: Any, fhir_auth: Any
) -> None:
    server = FakeFhir.from_bundle(
        FHIR, load_fixture("patients/follicular-rituximab-biosimilar.json")
    )
    server.fail["AllergyIntolerance"] = 500
    server.register(mocked_fhir)
    body = load_request("order-sign-administrations")
    del body["prefetch"]["administrations"]
    del body["prefetch"]["allergies"]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    before = samples(client)
    resp = client.post(SIGN, json=body)
    after = samples(client)
    # allergies are required: the failed search is a 412 naming them, and it is counted.
    assert resp.status_code == 412, resp.get_data(as_text=True)
    assert value(after, "cds_requests_total", **SIGN_LABELS, status="412") == (
        value(before, "cds_requests_total", **SIGN_LABELS, status="412") + 1
    )
    for resource, failed in (("MedicationAdministration", 0), ("AllergyIntolerance", 1)):
        labels = {"hook": "order-sign", "kind": "search", "resource": resource}
        assert value(after, "cds_fhir_requests_total", **labels) >= (
            value(before, "cds_fhir_requests_total", **labels) + 1
        )
        assert value(after, "cds_fhir_failures_total", **labels) == (
            value(before, "cds_fhir_failures_total", **labels) + failed
        )


def test_refused_tokens_are_counted_by_reason(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    client = kit.auth_app(make_app, tmp_path, ADMIN_TOKEN=ADMIN).test_client()
    before = samples(client)
    assert client.get("/cds-services").status_code == 401
    assert client.get("/cds-services", headers=kit.bearer("not-a-jwt")).status_code == 401
    assert client.get("/cds-services?access_token=x").status_code == 401
    after = samples(client)
    for reason in ("no_token", "malformed", "token_in_url"):
        assert value(after, "cds_auth_failures_total", reason=reason) == (
            value(before, "cds_auth_failures_total", reason=reason) + 1
        ), reason
    discovery = {"endpoint": "discovery", "service": "", "hook": "", "status": "401"}
    assert value(after, "cds_requests_total", **discovery) == (
        value(before, "cds_requests_total", **discovery) + 3
    )


def test_every_auth_failure_message_has_a_reason_code() -> None:
    """Each ``AuthFailure("…")`` raised in auth.py maps to a fixed reason, never "other"."""
    tree = ast.parse(Path(auth.__file__).read_text())
    messages = [
        node.args[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "AuthFailure"
        and node.args
    ]
    assert len(messages) > 20
    texts: list[str] = []
    while messages:
        message = messages.pop()
        if isinstance(message, ast.IfExp):  # "a" if known else "b"
            messages += [message.body, message.orelse]
        elif isinstance(message, ast.Constant):
            texts.append(message.value)
        else:  # an f-string: its literal parts, the values as "x"
            assert isinstance(message, ast.JoinedStr), ast.dump(message)
            texts.append(
                "".join(p.value if isinstance(p, ast.Constant) else "x" for p in message.values)
            )
    for text in texts:
        assert auth.AuthFailure(text).reason != "other", text


def test_metrics_need_the_admin_token_outside_the_demo(make_app: Callable[..., Flask]) -> None:
    client = make_app(ADMIN_TOKEN=ADMIN).test_client()
    for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": ADMIN}):
        resp = client.get("/metrics", headers=headers)
        assert resp.status_code == 401
        assert resp.get_json()["issue"][0]["details"]["coding"][0]["code"] == "admin-unauthorized"
    assert client.get("/metrics", headers=HEADERS).status_code == 200
    # No admin token configured: disabled outside the demo, open in it.
    assert make_app().test_client().get("/metrics").status_code == 403
    assert make_app(DEMO=True).test_client().get("/metrics").status_code == 200


def test_no_patient_data_or_ids_in_the_exposition(client: FlaskClient, fhir_auth: Any) -> None:
    body = load_request("order-sign-rituximab")
    body["hookInstance"] = "hook-instance-7f3a"
    assert client.post(SIGN, json=body).status_code == 200
    cards = client.post(SIGN, json=body).get_json()["cards"]
    feedback = {"card": "card-id-9c2e", "outcome": "overridden"}
    feedback["outcomeTimestamp"] = "2026-11-21T10:05:31Z"
    client.post(f"{SIGN}/feedback", json={"feedback": [feedback]})
    client.post(SIGN, json={**body, "fhirAuthorization": fhir_auth, "fhirServer": FHIR})
    text = client.get("/metrics", headers=HEADERS).get_data(as_text=True)
    context = body["context"]
    forbidden = [
        context["patientId"],
        context.get("userId"),
        context.get("encounterId"),
        "hook-instance-7f3a",
        "card-id-9c2e",
        TOKEN,
        FHIR,
        "ehr.example.org",
        *(card["uuid"] for card in cards),
    ]
    for needle in filter(None, forbidden):
        assert needle not in text, needle
    # Every label value is one of a bounded vocabulary.
    labels = set(re.findall(r'(\w+)="([^"]*)"', text))
    allowed = {"endpoint", "service", "hook", "status", "indicator", "topic", "kind"}
    allowed |= {"resource", "result", "reason", "le"}
    assert {name for name, _ in labels} <= allowed


def test_multiprocess_mode_sums_the_workers(tmp_path: Path) -> None:
    """What ``serve`` sets up: two processes' counts reach one exposition."""
    import subprocess
    import sys

    folder = tmp_path / "prom"
    folder.mkdir()
    script = (
        "from cds_server.web import metrics\n"
        f"metrics.use_multiprocess({str(folder)!r})\n"
        "metrics.FEEDBACK.labels('infusion-safety-sign', 'stored').inc(2)\n"
    )
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT)
    report = (
        "from cds_server.web import metrics\n"
        f"metrics.use_multiprocess({str(folder)!r})\n"
        "print(metrics.exposition().decode())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", report], check=True, cwd=ROOT, capture_output=True, text=True
    ).stdout
    assert 'cds_feedback_items_total{result="stored",service="infusion-safety-sign"} 4.0' in out, (
        out
    )


def test_labels_are_bounded() -> None:
    assert metrics.service_label("evil\nservice") == "unknown"
    assert metrics.hook_label("infusion-safety", "order-sign") == "order-sign"
    assert metrics.hook_label("infusion-safety", "x" * 500) == "unknown"
    assert metrics.hook_label("infusion-safety-select", "patient-view") == "order-select"


def test_serve_with_two_workers_reports_every_worker_and_removes_its_folder(
    tmp_path: Path,
    redis_url: str,  # noqa: F811
) -> None:
    """The real ``serve``: counts from both workers in each /metrics answer; the multiprocess
    folder lives in TMPDIR while it runs and is gone once it stops."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.servekit import get, serving

    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {
        "TMPDIR": str(temp),
        "CDS_AUTH_CACHE": redis_url,
        "CDS_ADMIN_TOKEN": ADMIN,
        "CDS_PATIENT_HASH_KEY": "h" * 32,
    }
    calls = 40
    with serving(tmp_path, "--workers", "2", env=env) as served:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda _: get(f"{served.base}/cds-services")[0], range(calls)))
        assert statuses == [401] * calls
        (folder,) = temp.glob("cds-metrics-*")
        assert list(folder.glob("counter_*.db"))
        for _ in range(4):  # whichever worker answers, it reports the calls of both
            status, body = get(f"{served.base}/metrics", HEADERS)
            assert status == 200
            text = body.decode()
            line = 'cds_auth_failures_total{reason="no_token"} '
            assert f"{line}{float(calls)}" in text, text
        assert get(f"{served.base}/metrics")[0] == 401
    assert not list(temp.glob("cds-metrics-*")), served.text()
