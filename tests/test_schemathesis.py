"""Schema-driven fuzzing: schemathesis generates requests from GET /openapi.json.

For every documented operation, positive (schema-valid) and negative (schema-violating)
requests are sent to the Flask app over WSGI. Every response must be: not a 5xx, a status the
document lists for that operation, the documented content type, a body matching the
documented schema, and — for every 4xx — a JSON OperationOutcome with an error code.
Nothing logged during the run may contain a token, a JWT or fixture patient data.

The budget is bounded for CI: ``MAX_EXAMPLES`` per operation and mode, deterministic under
``CI=true`` (random locally, so local runs keep exploring). The strategies are driven with
hypothesis directly (``as_strategy``) rather than through schemathesis' pytest plugin.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cds_server.cdshooks import services
from cds_server.web import openapi
from tests.conftest import TOKEN
from tests.loghygiene import leaks, logged_text

# FUZZ_SCALE=20 multiplies the budget for a deeper local hunt (CI runs the default).
MAX_EXAMPLES = 50 * int(os.environ.get("FUZZ_SCALE", "1"))
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef0123456789"
REQUIRED_KEYS = sorted({p.key for s in services.SERVICES for p in s.prefetch if p.required})
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
DOCUMENT = openapi.build()
# (method, path, mode): negative cases only where there is an input to get wrong.
CASES = sorted(
    (method.upper(), path, mode)
    for path, item in DOCUMENT["paths"].items()
    for method, op in item.items()
    if not path.endswith(".html") and not path.startswith("/knowledge/")  # pages for people
    for mode in (
        [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
        if op.get("requestBody") or op.get("parameters")
        else [GenerationMode.POSITIVE]
    )
)
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=list(HealthCheck),
)


def _with_required(case: Any, fill: bool) -> Any:
    body = case.body
    if fill and isinstance(body, dict) and isinstance(body.get("prefetch", {}), dict):
        prefetch = body.setdefault("prefetch", {})
        for key in REQUIRED_KEYS:
            prefetch.setdefault(key, None)
    return case


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES]
)
def test_api_conforms_to_its_openapi_document(
    make_app: Callable[..., Flask],
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    caplog.set_level(logging.DEBUG)
    api = schemathesis.openapi.from_wsgi("/openapi.json", make_app(ADMIN_TOKEN=ADMIN_TOKEN))
    operation = api[path][method]
    statuses: list[int] = []

    cases = operation.as_strategy(generation_mode=mode)
    if method == "POST" and not path.endswith("/feedback"):
        # Half of the hook calls carry the required prefetch keys (as null when the fuzzer
        # left them out), so that they get past 412 into the whole pipeline.
        cases = st.tuples(cases, st.booleans()).map(lambda pair: _with_required(*pair))
    admin = path.startswith("/analytics") or path == "/metrics"
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"} if admin else {}

    sent_instances: set[str] = set()

    @FUZZ
    @given(case=cases)
    def fuzz(case: Any) -> None:
        if isinstance(case.body, dict) and isinstance(case.body.get("hookInstance"), str):
            sent_instances.add(case.body["hookInstance"])
        response = case.call_and_validate(checks=CHECKS, headers=headers)
        statuses.append(response.status_code)
        if response.status_code >= 400:
            content_type = {k.lower(): v for k, v in response.headers.items()}["content-type"]
            assert content_type[0].startswith("application/json"), content_type
            body = response.json()
            assert body["resourceType"] == "OperationOutcome"
            assert body["issue"][0]["details"]["coding"][0]["code"]
        assert TOKEN not in response.text

    fuzz()
    counts = Counter(statuses)
    assert counts, "no request was sent"
    # Valid input gets past validation (the analytics window's "since < until" is a rule
    # across two parameters that OpenAPI cannot express).
    if mode == GenerationMode.POSITIVE and not path.startswith("/analytics"):
        assert not counts[400], counts
        assert counts[200], counts
    # Hypothesis also draws string constants from the project's own modules (a bench patient's
    # given name, test ids) and may send one as the hookInstance, which the service logs by
    # design: such a value is the fuzzer's, not a leak.
    found = leaks(logged_text(caplog), (TOKEN,))
    assert not {k: n for k, n in found.items() if k not in sent_instances}, found
