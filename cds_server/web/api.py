"""HTTP endpoints (blueprint ``bp``): discovery, service call, feedback — plus error mapping.

Views only read the body and delegate. Every error is mapped to JSON here, once: a
``CdsError`` becomes its status with an OperationOutcome body; werkzeug's 404/405/413/400
are translated into the matching ``CdsError``; anything else is logged by exception type
and location only (never the message, which might contain data) and answered 500.
Log lines carry the service id, hook, hookInstance, status and timings — never the
patient id, the context, prefetch data or tokens.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as WzMethodNotAllowed
from werkzeug.exceptions import NotFound as WzNotFound

from cds_server import pipeline, store
from cds_server.cdshooks import protocol, services
from cds_server.cdshooks.errors import (
    BadRequest,
    CdsError,
    MalformedJson,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from cds_server.fhirdata.client import HEAP
from cds_server.knowledge.model import KnowledgeBase
from cds_server.socketwatch import WATCHDOG
from cds_server.web import auth, knowledge, limits, metrics
from cds_server.web.runtime import EXTENSION, Runtime

log = logging.getLogger(__name__)
bp = Blueprint("cds", __name__)


@bp.after_request
def _return_memory_after_large_fhir_reads(response: Response) -> Response:
    """Once the answer is sent, give the heap a call's large FHIR responses left back to the
    OS (``fhirdata.client.HEAP``; glibc only)."""
    response.call_on_close(HEAP.release)
    return response


JSON_TYPES = ("application/json", "application/fhir+json")


def _runtime() -> Runtime:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


def _knowledge() -> KnowledgeBase:
    """The knowledge the caller sees: its trusted-clients entry's site view, else the
    service's (never another client's)."""
    return _runtime().kb_for(auth.caller_site())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_body() -> dict[str, Any]:
    """The request body as a JSON object, or a 400/413 ``CdsError``."""
    mimetype = request.mimetype or ""
    if mimetype not in JSON_TYPES:
        shown = mimetype[:60] or "none"
        raise UnsupportedMediaType(f"Content-Type must be application/json (got {shown})")
    try:
        # A client that stops sending its body must not hold this thread: under gunicorn
        # the socket is shut down at REQUEST_BODY_TIMEOUT (the read then fails: 400).
        with WATCHDOG.within(
            request.environ.get("gunicorn.socket"), current_app.config["REQUEST_BODY_TIMEOUT"]
        ):
            raw = request.get_data(cache=False)  # RequestEntityTooLarge beyond the limit
    except HTTPException:
        raise
    except Exception:
        # The server could not read the body: a malformed chunk-size line or terminator
        # (gunicorn's ParseException, werkzeug's OSError), a body cut short.
        raise MalformedJson(
            "The request body could not be read (malformed chunked encoding or cut short)"
        ) from None
    if request.content_length is None and len(raw) >= current_app.config["MAX_CONTENT_LENGTH"]:
        raise RequestEntityTooLarge()  # chunked body: werkzeug stops at the limit silently
    if not raw.strip():
        raise MalformedJson("The request body is empty; a JSON object is required")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise MalformedJson("The request body is not UTF-8") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise MalformedJson(
            f"The request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except (ValueError, RecursionError):
        raise MalformedJson("The request body is not valid JSON (or nested too deeply)") from None
    if not isinstance(body, dict):
        raise MalformedJson("The request body must be a JSON object")
    limits.check_depth(raw, current_app.config["MAX_JSON_DEPTH"])
    limits.check_unicode(raw, body)
    return body


@bp.get("/cds-services", strict_slashes=False)
def discovery() -> Response:
    return jsonify(protocol.dump_discovery(services.discovery(_knowledge())))


@bp.post("/cds-services/<service_id>", strict_slashes=False)
def call_service(service_id: str) -> Response:
    started = time.perf_counter()
    services.require(service_id)
    body = _json_body()
    limits.check_hook_request(
        body,
        max_draft_orders=current_app.config["MAX_DRAFT_ORDERS"],
        max_prefetch=current_app.config["MAX_PREFETCH_RESOURCES"],
    )
    runtime = _runtime()
    kb = _knowledge()
    profile = runtime.profile_for(kb, auth.client_profile())
    now = datetime.now(UTC)
    cards_store = store.get_store()
    result = pipeline.run(
        body,
        service_id=service_id,
        kb=kb,
        settings=auth.fhir_settings(runtime.fhir),  # only the caller's trusted fhirServers
        now=now,
        client_factory=metrics.counted_client_factory(
            runtime.transport, service_id, body.get("hook")
        ),
        history=cards_store,
        caller=auth.caller_namespace(),
        page_links=knowledge.card_links(kb),
        profile=profile,
    )
    cards_store.log_cards(
        result.situation.call, result.issued, issued_at=now, knowledge_version=kb.version
    )
    metrics.record_call(service_id, result.service.hook, result.issued)
    trigger = result.request.epic_trigger
    log.info(
        "call service=%s hook=%s%s%s hookInstance=%s cards=%d held=%d fetched=%s warnings=%d "
        "ms=%.0f",
        result.service.id,
        result.service.hook,
        f" profile={profile.name}" if profile.name != "generic" else "",
        f" epic-trigger={trigger} ({protocol.EPIC_TRIGGERS.get(trigger, 'undocumented')})"
        if trigger
        else "",
        protocol_safe(result.request.hook_instance),
        len(result.response["cards"]),
        len(result.suppressed),
        ",".join(result.resolved.fetched) or "-",
        len(result.record.warnings),
        (time.perf_counter() - started) * 1000,
    )
    return jsonify(result.response)


@bp.post("/cds-services/<service_id>/feedback", strict_slashes=False)
def feedback(service_id: str) -> Response:
    services.require(service_id)
    items = protocol.load_feedback(_json_body())
    outcomes = sorted({i["outcome"] for i in items})
    stored = store.get_store().record_feedback(
        service_id,
        items,
        policy=_runtime().kb.policy,
        received_at=datetime.now(UTC),
        caller=auth.caller_namespace(),
    )
    metrics.record_feedback(
        service_id, stored.stored, stored.duplicates, stored.unknown_cards, stored.snoozes
    )
    log.info(
        "feedback service=%s items=%d outcomes=%s stored=%d duplicates=%d unknown_cards=%d "
        "snoozes=%d",
        service_id,
        len(items),
        ",".join(outcomes),
        stored.stored,
        stored.duplicates,
        stored.unknown_cards,
        stored.snoozes,
    )
    # Answered only after the commit (durable). 200 with an empty body, as the reference
    # service does (an empty JSON object is not allowed).
    response = Response(status=200)
    del response.headers["Content-Type"]
    return response


def protocol_safe(text: str) -> str:
    """A client-chosen identifier, shortened and printable, for a log line."""
    cleaned = "".join(ch if ch.isprintable() and not ch.isspace() else "?" for ch in text)
    return cleaned[:64]


# -- error mapping ----------------------------------------------------------------------


def error_response(error: CdsError, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(protocol.error_body(error))
    response.status_code = error.status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


@bp.app_errorhandler(CdsError)
def _cds_error(error: CdsError) -> Response:
    log.info("rejected %s %s: %d %s", request.method, _route(), error.status, error.code)
    return error_response(error, {"WWW-Authenticate": "Bearer"} if error.status == 401 else None)


@bp.app_errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    headers = {}
    mapped: CdsError
    if isinstance(error, WzNotFound):
        mapped = NotFound("No such endpoint; CDS services are listed at /cds-services")
    elif isinstance(error, WzMethodNotAllowed):
        allowed = ", ".join(sorted(error.valid_methods or ()))
        mapped = MethodNotAllowed(f"Method {request.method} not allowed here (allowed: {allowed})")
        if allowed:
            headers["Allow"] = allowed
    elif isinstance(error, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        mapped = PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes")
    elif error.code == 400:
        mapped = BadRequest("The request could not be read")
    else:
        mapped = CdsError(error.name)
        mapped.status = int(error.code or 500)
        mapped.code = error.name.lower().replace(" ", "-")
    log.info("rejected %s %s: %d %s", request.method, _route(), mapped.status, mapped.code)
    return error_response(mapped, headers)


@bp.app_errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
    log.error(
        "unhandled %s at %s during %s %s", type(error).__name__, where, request.method, _route()
    )
    return error_response(CdsError("Internal error; the failure has been logged"))


def _route() -> str:
    """The matched route pattern (e.g. ``/cds-services/<service_id>``), else a fixed label."""
    rule = request.url_rule
    return rule.rule if rule is not None else "(no route)"
