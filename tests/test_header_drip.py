"""A FHIR server that drips its headers: the hook call's deadline ends the threads it started.

``http.client`` reads a response's status line and headers line by line with only the socket
timeout, so a server sending one header line every 0.2 s (under the read timeout) held the
request thread for as long as it dripped — after the hook call had answered. The attack run
counted 8 → 133 threads in a worker after 64 such calls. Now the socket of a request still
waiting for its headers is shut down at the call's deadline (``fhirdata/client.py``
``_SocketWatchdog``): no request thread outlives its call by more than a small grace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask

from cds_server.cdshooks.errors import FhirUnavailable
from cds_server.fhirdata import client as fhir_client
from cds_server.fhirdata.client import FhirClient, FhirSettings
from cds_server.socketwatch import WATCHDOG
from cds_server.web.app import EXTENSION
from tests import fhirserver as fs
from tests.conftest import TOKEN, every_key, load_fixture, load_request

CONNECT, READ, DEADLINE = 0.5, 0.5, 1.0
GRACE = 0.5  # a thread may outlive its call's deadline by this much
ALLOWANCE = 1.0  # evaluating the request once the FHIR calls are over, generously
DRIP = 0.2  # seconds between header lines (under the read timeout: no socket timeout fires)
TYPES = ("Patient", "MedicationRequest", "AllergyIntolerance", "Observation")
TYPES += ("MedicationAdministration",)


@pytest.fixture
def dripping() -> Iterator[fs.LiveFhir]:
    """Every read and search answers a status line, then a header line every 0.2 s (~20 s)."""
    server = fs.LiveFhir.from_bundle(load_fixture("patients/lymphoma-first-rituximab.json"))
    server.faults.update(dict.fromkeys(TYPES, fs.slow_headers(DRIP, count=99)))
    with server:
        yield server


def _ours() -> int:
    """Threads of this process except the test FHIR server's own handler threads."""
    return sum(1 for t in threading.enumerate() if "process_request_thread" not in t.name)


def test_a_request_waiting_for_dripped_headers_ends_at_the_deadline(
    dripping: fs.LiveFhir,
) -> None:
    """The calling thread itself is released at the deadline (it waited ~20 s before)."""
    settings = FhirSettings(
        connect_timeout=CONNECT, read_timeout=READ, deadline=DEADLINE, allow_http="loopback"
    )
    started = time.monotonic()
    with (
        FhirClient(dripping.base, TOKEN, settings) as client,
        pytest.raises(FhirUnavailable, match="FHIR deadline exceeded"),
    ):
        client.get("AllergyIntolerance?patient=x")
    assert time.monotonic() - started < DEADLINE + GRACE
    assert dripping.recorded(), "the request reached the dripping server"


def test_no_request_thread_outlives_its_call(make_app: Any, dripping: fs.LiveFhir) -> None:
    """48 hook calls (8 at a time) whose every FHIR request drips its headers: each answers
    412 within the budget, and once the last has answered, every request thread is idle
    (or gone) within the deadline plus a grace — not left reading for the drip's ~20 s."""
    app: Flask = make_app(
        FHIR_ALLOW_HTTP="loopback",
        FHIR_CONNECT_TIMEOUT=CONNECT,
        FHIR_READ_TIMEOUT=READ,
        FHIR_DEADLINE=DEADLINE,
    )
    body = every_key(load_request("order-sign-rituximab"))
    body["prefetch"] = {}
    body["fhirServer"] = dripping.base
    body["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "infusion-safety-cds",
    }
    baseline = _ours()

    def call(_: int) -> tuple[int, float]:
        started = time.monotonic()
        resp = app.test_client().post("/cds-services/infusion-safety-sign", json=body)
        return resp.status_code, time.monotonic() - started

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(48)))
    last_answer = time.monotonic()
    assert {status for status, _ in answers} == {412}
    assert max(seconds for _, seconds in answers) < DEADLINE + GRACE + ALLOWANCE, answers
    assert len(dripping.recorded()) >= 48 * 2  # every call really waited on drips

    workers = app.extensions[EXTENSION].transport._local().workers  # this process's

    def all_idle() -> bool:
        return workers.running == 0 and workers.threads <= fhir_client.KEEP_IDLE_THREADS

    assert fs.wait_until(all_idle, timeout=DEADLINE + GRACE), (workers.running, workers.threads)
    assert time.monotonic() - last_answer < DEADLINE + GRACE
    # Idle request threads kept for the next calls and, at most, this module's watchdog and
    # the database's (one per process each): nothing else stays. (Before: 320 request
    # threads, all still reading drips.)
    assert _ours() <= baseline + fhir_client.KEEP_IDLE_THREADS + 2
    assert WATCHDOG.aborted >= 48
