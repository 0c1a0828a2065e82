"""Prometheus metrics of the CDS endpoints at ``GET /metrics`` (admin token, like analytics).

What is counted (every label value comes from a fixed set — never a patient, user, order,
hookInstance, card id, URL or token):

* ``cds_requests_total{endpoint, service, hook, status}`` and the latency histogram
  ``cds_request_duration_seconds{endpoint, service, hook}`` of discovery, service calls and
  feedback (``endpoint``: discovery | service | feedback; ``service`` a known id or
  ``unknown``; ``hook`` the service's hook, ``unknown`` when it could not be told, ``""`` for
  discovery and feedback);
* ``cds_cards_total{service, hook, indicator, topic}``: cards returned (``topic`` is the rule's
  code in the knowledge, ``premedication``…, found from the card's ``source.topic`` wire code);
* ``cds_fhir_requests_total{hook, kind, resource}`` and ``cds_fhir_failures_total{…}``: reads
  and searches sent to the EHR's FHIR server when prefetch lacked the data (each with its pages);
* ``cds_feedback_items_total{service, result}``: stored (about a logged card), unknown_card
  (stored, about a card not in the log), duplicate (already stored, ignored); and
  ``cds_snoozes_total{service}``;
* ``cds_auth_failures_total{reason}``: refused client JWTs, by ``auth.AuthFailure.reason``.

Several gunicorn workers share their counts through prometheus-client's multiprocess mode:
``cds-server serve`` runs inside ``shared_between_workers`` (a temporary folder it owns, set
up before the app is built) and marks stopped workers with ``mark_worker_dead``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from cds_server import config
from cds_server.cdshooks import services
from cds_server.fhirdata.client import FetchResult, FhirClient, FhirSettings, FhirTransport
from cds_server.suppression import IssuedCard
from cds_server.web import admin

UNKNOWN = "unknown"
# Hook calls wait on FHIR servers (deadline FHIR_DEADLINE, 4 s by default).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
# The resource types the service reads or searches (services.PREFETCH, Medication by id).
FHIR_RESOURCES = frozenset(
    {
        "Patient",
        "MedicationRequest",
        "MedicationStatement",
        "MedicationAdministration",
        "Medication",
        "AllergyIntolerance",
        "Observation",
    }
)
INDICATORS = frozenset({"info", "warning", "critical"})
FEEDBACK_RESULTS = ("stored", "unknown_card", "duplicate")

REGISTRY = CollectorRegistry()
REQUESTS = Counter(
    "cds_requests",
    "CDS requests answered, by endpoint, service, hook and HTTP status",
    ["endpoint", "service", "hook", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "cds_request_duration_seconds",
    "Time to answer a CDS request, by endpoint, service and hook",
    ["endpoint", "service", "hook"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
CARDS = Counter(
    "cds_cards",
    "Cards returned, by service, hook, indicator and topic (rule)",
    ["service", "hook", "indicator", "topic"],
    registry=REGISTRY,
)
FHIR_REQUESTS = Counter(
    "cds_fhir_requests",
    "Reads and searches sent to the EHR's FHIR server for data prefetch lacked",
    ["hook", "kind", "resource"],
    registry=REGISTRY,
)
FHIR_FAILURES = Counter(
    "cds_fhir_failures",
    "FHIR reads and searches that failed (error, timeout, refused address, bad answer)",
    ["hook", "kind", "resource"],
    registry=REGISTRY,
)
FEEDBACK = Counter(
    "cds_feedback_items",
    "Feedback items received, by service and what became of them",
    ["service", "result"],
    registry=REGISTRY,
)
SNOOZES = Counter(
    "cds_snoozes", "Snoozes started by override feedback", ["service"], registry=REGISTRY
)
AUTH_FAILURES = Counter(
    "cds_auth_failures", "Client JWTs refused, by reason", ["reason"], registry=REGISTRY
)

_SERVICE_IDS = frozenset(s.id for s in services.SERVICES)
_ONLY_HOOK = {
    sid: hooks[0]
    for sid in _SERVICE_IDS
    if len(hooks := [s.hook for s in services.SERVICES if s.id == sid]) == 1
}
_HOOKS = frozenset(s.hook for s in services.SERVICES)
_ENDPOINTS = {
    "cds.discovery": "discovery",
    "cds.call_service": "service",
    "cds.feedback": "feedback",
}


def use_multiprocess(folder: str) -> None:
    """Share metrics between worker processes through files in ``folder`` (an empty folder
    owned by the caller, removed when the server stops). Call before the workers start."""
    config.set_metrics_dir(folder)
    # The value class is chosen when prometheus_client is imported; metrics' label children
    # (created on first use, in the workers) take the one in place then.
    values.ValueClass = values.get_value_class()


@contextmanager
def shared_between_workers() -> Iterator[str]:
    """Multiprocess mode in a fresh temporary folder for the life of the server: created
    empty (the library requires a folder wiped between runs), removed at exit by the process
    that made it (never by a forked worker leaving through here); the previous mode restored."""
    owner = os.getpid()
    previous = config.metrics_dir(), values.ValueClass
    folder = tempfile.mkdtemp(prefix="cds-metrics-")
    use_multiprocess(folder)
    try:
        yield folder
    finally:
        if os.getpid() == owner:
            config.set_metrics_dir(previous[0])
            values.ValueClass = previous[1]
            shutil.rmtree(folder, ignore_errors=True)


def mark_worker_dead(pid: int) -> None:
    """gunicorn's ``child_exit`` hook: a stopped worker's live values no longer count."""
    if config.metrics_dir():
        multiprocess.mark_process_dead(pid)


def exposition() -> bytes:
    """The metrics in Prometheus' text format: of every worker in multiprocess mode."""
    if config.metrics_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def service_label(service_id: Any) -> str:
    return service_id if service_id in _SERVICE_IDS else UNKNOWN


def hook_label(service_id: Any, hook: Any = None) -> str:
    """The hook of a call: the service's only hook, else the one evaluated, else unknown."""
    if service_id in _ONLY_HOOK:
        return _ONLY_HOOK[service_id]
    return hook if hook in _HOOKS else UNKNOWN


def _started() -> None:
    g.cds_metrics_started = time.perf_counter()


def _answered(response: Response) -> Response:
    endpoint = _ENDPOINTS.get(request.endpoint or "")
    started = g.pop("cds_metrics_started", None)
    if endpoint is None or started is None:
        return response
    if endpoint == "discovery":
        service, hook = "", ""
    else:
        service_id = (request.view_args or {}).get("service_id")
        service = service_label(service_id)
        hook = hook_label(service_id, g.get("cds_hook")) if endpoint == "service" else ""
    REQUESTS.labels(endpoint, service, hook, str(response.status_code)).inc()
    LATENCY.labels(endpoint, service, hook).observe(time.perf_counter() - started)
    reason = g.get("cds_auth_failure")
    if isinstance(reason, str):
        AUTH_FAILURES.labels(reason).inc()
    return response


def record_call(service_id: str, hook: str, issued: Iterable[IssuedCard]) -> None:
    """A hook call was answered with the cards ``issued`` (labelled by their rule, the
    topic's own name in cards/policy.yaml, as the card log records it)."""
    g.cds_hook = hook
    service, hook_name = service_label(service_id), hook_label(service_id, hook)
    for card in issued:
        indicator = card.indicator if card.indicator in INDICATORS else UNKNOWN
        CARDS.labels(service, hook_name, indicator, card.rule).inc()


def record_feedback(
    service_id: str, stored: int, duplicates: int, unknown: int, snoozes: int
) -> None:
    """One feedback POST, committed: items stored (``unknown`` of them about cards not in
    the card log), duplicates ignored, snoozes started."""
    service = service_label(service_id)
    counts = (stored - unknown, unknown, duplicates)
    for result, count in zip(FEEDBACK_RESULTS, counts, strict=True):
        if count:
            FEEDBACK.labels(service, result).inc(count)
    if snoozes:
        SNOOZES.labels(service).inc(snoozes)


def _fhir_labels(relative: str) -> tuple[str, str]:
    path, query_mark, _ = relative.partition("?")
    resource = path.split("/", 1)[0]
    return ("search" if query_mark else "read"), (
        resource if resource in FHIR_RESOURCES else "other"
    )


class CountedFhirClient(FhirClient):
    """A ``FhirClient`` that counts its reads and searches (``get``) and their failures."""

    def __init__(self, *args: Any, hook: str = UNKNOWN, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_hook = hook

    def get(self, relative: str) -> FetchResult:
        labels = (self.metrics_hook, *_fhir_labels(relative))
        FHIR_REQUESTS.labels(*labels).inc()
        try:
            return super().get(relative)
        except Exception:
            FHIR_FAILURES.labels(*labels).inc()
            raise


def counted_client_factory(
    transport: FhirTransport, service_id: str, hook_sent: Any = None
) -> Callable[[str, str | None, FhirSettings], FhirClient]:
    """The ``prefetch.ClientFactory`` of one hook call, its FHIR requests counted."""
    hook = hook_label(service_id, hook_sent)

    def make(base_url: str, access_token: str | None, settings: FhirSettings) -> FhirClient:
        return CountedFhirClient(base_url, access_token, settings, transport=transport, hook=hook)

    return make


def init_app(app: Flask) -> None:
    """Time and count the CDS endpoints; serve ``GET /metrics``."""
    app.before_request(_started)
    app.after_request(_answered)
    app.add_url_rule("/metrics", "metrics", _metrics, methods=["GET"])


def _metrics() -> Response:
    admin.require_admin("Metrics")
    response = Response(exposition(), mimetype=None, content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response
