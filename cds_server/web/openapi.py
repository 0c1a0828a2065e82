"""The OpenAPI 3 description of the HTTP API, generated from the ``protocol`` schemas.

Served at ``GET /openapi.json`` (blueprint ``bp``). It documents discovery, one service call
per service id (its request body typed per hook from ``protocol.CONTEXT_SCHEMAS`` and the
``services`` declarations), feedback per service id, and the error bodies (FHIR
``OperationOutcome``). It is for integrators, and it drives the schema-based fuzzing in the
test suite, so it states what the service really does: the response schemas add the CDS
Hooks 2.0 required fields and value sets (``protocol`` constants) to the output schemas,
which only say what may be written.
"""

from __future__ import annotations

import copy
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify
from marshmallow import Schema, fields, validate

from cds_server import __version__
from cds_server.cdshooks import protocol, services
from cds_server.knowledge_pages.links import FOLDERS, PageKind

OPENAPI_VERSION = "3.0.3"
bp = Blueprint("openapi", __name__)

JSON = "application/json"
FHIR_JSON = "application/fhir+json"

# -- error bodies (documentation schemas: ``protocol.error_body`` writes them) ---------------


class ErrorCodingDoc(Schema):
    system = fields.String(required=True, validate=validate.OneOf([protocol.ERROR_SYSTEM]))
    code = fields.String(required=True)


class ErrorDetailsDoc(Schema):
    coding = fields.List(fields.Nested(ErrorCodingDoc), required=True)
    text = fields.String(required=True)


class IssueDoc(Schema):
    severity = fields.String(required=True, validate=validate.OneOf(["error"]))
    code = fields.String(required=True)
    details = fields.Nested(ErrorDetailsDoc)
    diagnostics = fields.String(required=True)
    expression = fields.List(fields.String())


class OperationOutcomeDoc(Schema):
    """Every error: ``issue[0].details.coding[0].code`` is the stable error code."""

    resourceType = fields.String(required=True, validate=validate.OneOf(["OperationOutcome"]))
    issue = fields.List(fields.Nested(IssueDoc), required=True, validate=validate.Length(min=1))


ERRORS: dict[int, str] = {
    400: "Malformed JSON, wrong Content-Type, invalid fields (one issue per field), or a hook "
    "this service id does not handle",
    401: "Authentication required or failed (when client authentication is on)",
    403: "Disabled in this deployment (analytics or metrics without an admin token)",
    404: "Unknown service id or route",
    405: "Method not allowed (the Allow header lists the allowed ones)",
    412: "Required prefetch data was neither sent nor readable from fhirServer; the "
    "diagnostics name the keys",
    413: "Request body larger than the configured limit, or more draft orders or prefetch "
    "resources than the service processes",
    500: "Unexpected failure (never caused by client input); logged without data",
    503: "A dependency (database, shared authentication cache) is unavailable: retry (at "
    "/readyz: one issue per failed check, its name in expression)",
}

# -- CDS Hooks 2.0 response rules, added to the output schemas ------------------------------

REQUIRED_OUT: dict[str, tuple[str, ...]] = {
    "Response": ("cards",),
    "Card": ("uuid", "summary", "indicator", "source"),
    "Source": ("label",),
    "Suggestion": ("label", "uuid"),
    "Action": ("type", "description"),
    "Link": ("label", "url", "type"),
    "Coding": ("system", "code"),
    "Discovery": ("services",),
    "Service": ("hook", "id", "description"),
}
ENUMS_OUT: dict[tuple[str, str], tuple[str, ...]] = {
    ("Card", "indicator"): protocol.INDICATORS,
    ("Card", "selectionBehavior"): protocol.SELECTION_BEHAVIORS,
    ("Action", "type"): protocol.ACTION_TYPES,
    ("Link", "type"): protocol.LINK_TYPES,
}
OUT_SCHEMAS: dict[str, type[Schema]] = {
    "Response": protocol.ResponseOut,
    "Card": protocol.CardOut,
    "Source": protocol.SourceOut,
    "Suggestion": protocol.SuggestionOut,
    "Action": protocol.ActionOut,
    "Link": protocol.LinkOut,
    "Coding": protocol.CodingOut,
    "Discovery": protocol.DiscoveryOut,
    "Service": protocol.ServiceOut,
}

# -- inbound shapes the marshmallow fields cannot express ----------------------------------

FHIR_RESOURCE: dict[str, Any] = {
    "type": "object",
    "description": "A FHIR R4 resource (read tolerantly: invalid resources are skipped)",
    "required": ["resourceType"],
    "properties": {"resourceType": {"type": "string", "minLength": 1}},
}
DRAFT_ORDERS: dict[str, Any] = {
    "description": "A Bundle of draft request resources (a bare array of resources is also "
    "accepted); MedicationRequests are checked, other order types ignored",
    "oneOf": [
        {
            "type": "object",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"type": "string", "enum": ["Bundle"]},
                "type": {"type": "string"},
                "entry": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["resource"],
                        "properties": {"resource": {"$ref": "#/components/schemas/FhirResource"}},
                    },
                },
            },
        },
        {"type": "array", "items": {"$ref": "#/components/schemas/FhirResource"}},
    ],
}
RFC3339_FORMAT = {"format": "date-time", "pattern": protocol.RFC3339.pattern}


def _attributes(self: Any, field: fields.Field, **kw: Any) -> dict[str, Any]:
    """apispec attribute function: JSON Schema for the custom protocol fields."""
    if isinstance(field, protocol.DraftOrdersField):
        return copy.deepcopy(DRAFT_ORDERS)
    if isinstance(field, protocol.PrefetchField):
        value = {
            "type": "object",
            "nullable": True,
            "required": ["resourceType"],
            "properties": {"resourceType": {"type": "string", "minLength": 1}},
        }
        declared = {p.key: p for s in services.SERVICES for p in s.prefetch}
        return {
            "description": "Prefetch key → resource, Bundle or null (null = the client has "
            "no data); keys the service did not declare are ignored",
            "properties": {
                key: {
                    **value,
                    "description": f"{'Required' if p.required else 'Optional'}: {p.template}",
                }
                for key, p in sorted(declared.items())
            },
            "additionalProperties": value,
        }
    if any(getattr(v, "__name__", "") == "_rfc3339" for v in field.validators):
        return dict(RFC3339_FORMAT)
    if isinstance(field, fields.Url):
        return {"format": "uri", "pattern": "^https?://[^@?#]+$"}
    return {}


def _request_schema(hook: str) -> type[Schema]:
    """``HookRequestSchema`` with ``hook`` fixed and ``context`` typed for ``hook``."""
    context = protocol.CONTEXT_SCHEMAS[hook]
    return type(
        _schema_name(hook),
        (protocol.HookRequestSchema,),
        {
            "hook": fields.String(required=True, validate=validate.OneOf([hook])),
            "context": fields.Nested(context, required=True),
        },
    )


def _schema_name(hook: str) -> str:
    return "".join(part.title() for part in hook.split("-")) + "Request"


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": ERRORS[code],
            "content": {JSON: {"schema": {"$ref": "#/components/schemas/OperationOutcome"}}},
        }
        for code in codes
    }


def _json_body(ref: str, description: str) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{ref}"}
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": schema}, FHIR_JSON: {"schema": schema}},
    }


_DEPRECATED = (
    "Deprecated: the former id shared by order-select and order-sign, kept answering both "
    "for existing registrations and not listed in discovery. Use the id of each hook's own "
    "discovery entry."
)


def _deprecation(service_id: str) -> dict[str, Any]:
    return {"deprecated": True} if services.deprecated(service_id) else {}


def _service_call(service_id: str, hooks: list[services.Service]) -> dict[str, Any]:
    refs = [{"$ref": f"#/components/schemas/{_schema_name(s.hook)}"} for s in hooks]
    schema = refs[0] if len(refs) == 1 else {"anyOf": refs}
    prefetch = hooks[0].prefetch
    keys = ", ".join(
        f"`{p.key}` ({'required' if p.required else 'optional'}: `{p.template}`)" for p in prefetch
    )
    note = f"{_DEPRECATED}\n\n" if services.deprecated(service_id) else ""
    return {
        **_deprecation(service_id),
        "operationId": f"call-{service_id}",
        "summary": f"{hooks[0].title} ({', '.join(s.hook for s in hooks)})",
        "description": f"{note}{hooks[0].description}\n\nPrefetch keys: {keys}.",
        "tags": ["services"],
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": schema}, FHIR_JSON: {"schema": schema}},
        },
        "responses": {
            "200": {
                "description": "The cards (possibly none)",
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/Response"}}},
            },
            **_errors(400, 401, 404, 405, 412, 413, 500, 503),
        },
        "security": [{"cdsClient": []}],
    }


def _feedback(service_id: str) -> dict[str, Any]:
    return {
        **_deprecation(service_id),
        "operationId": f"feedback-{service_id}",
        "summary": f"Feedback on cards of {service_id}",
        "tags": ["feedback"],
        "requestBody": _json_body("Feedback", "Outcomes of cards (CDS Hooks 2.0 feedback)"),
        "responses": {
            "200": {"description": "Stored (empty body)"},
            **_errors(400, 401, 404, 405, 413, 500, 503),
        },
        "security": [{"cdsClient": []}],
    }


def _analytics(path: str, media: str, summary: str) -> dict[str, Any]:
    window = [
        {
            "name": name,
            "in": "query",
            "required": False,
            "description": f"{what} of the window (a date, YYYY-MM-DD, or an ISO time); "
            "since must be before until",
            "schema": {"type": "string", "format": "date"},
        }
        for name, what in (("since", "Start"), ("until", "End"))
    ]
    body = {"type": "object"} if media == JSON else {"type": "string"}
    return {
        "operationId": "analytics-" + path.rsplit("/", 1)[-1].replace(".", "-"),
        "summary": summary,
        "tags": ["analytics"],
        "parameters": window,
        "responses": {
            "200": {"description": summary, "content": {media: {"schema": body}}},
            **_errors(400, 401, 403, 405, 500, 503),
        },
        "security": [{"adminToken": []}],
    }


# Each kind of knowledge page and the name of its path parameter (cds_server/web/knowledge.py).
PAGE_PARAMETERS: tuple[tuple[PageKind, str], ...] = (
    ("drug", "drug"),
    ("class", "class_id"),
    ("agent", "agent"),
    ("protocol", "protocol"),
    ("institution", "protocol_id"),
)


def _knowledge_pages(spec: APISpec) -> None:
    """``/knowledge/…`` (cds_server/web/knowledge.py): HTML pages for people."""
    html = {"text/html": {"schema": {"type": "string"}}}
    access = (
        "Open in demo mode and with KNOWLEDGE_PAGES_PUBLIC; otherwise the admin token, as "
        "for the analytics."
    )
    pages: list[tuple[str, str, str, str | None]] = [
        ("/", "knowledge-root", "The knowledge pages' index", None),
        ("/index.html", "knowledge-index", "The knowledge pages' index", None),
    ]
    pages += [
        (
            f"/{FOLDERS[kind]}/{{{parameter}}}.html",
            f"knowledge-{kind}",
            f"The knowledge page of a {kind}: every fact with when it applies, its evidence "
            "level and its sources"
            + (
                " (a site overlay's protocol: its approval and every entry it backs)"
                if kind == "institution"
                else ""
            ),
            parameter,
        )
        for kind, parameter in PAGE_PARAMETERS
    ]
    view = {
        "name": "view",
        "in": "path",
        "required": True,
        "description": "The hash of a site overlay (the knowledge version's +site- part): the "
        "pages of a trusted client's own site view, which its cards link to",
        "schema": {"type": "string", "pattern": "^[0-9a-f]+$"},
    }
    for root, prefix, extra in (
        ("/knowledge", "", None),
        ("/knowledge/site-{view}", "view-", view),
    ):
        for tail, operation_id, summary, parameter in pages:
            path = root + tail
            operation_id = operation_id.replace("knowledge-", f"knowledge-{prefix}", 1)
            operation: dict[str, Any] = {
                "operationId": operation_id,
                "summary": summary,
                "description": access,
                "tags": ["knowledge"],
                "responses": {
                    "200": {
                        "description": "The page (no script, no external resource)",
                        "content": html,
                    },
                    "304": {
                        "description": "Not modified since the ETag sent (same knowledge version)"
                    },
                    **_errors(401, 403, 404, 405, 500),
                },
                "security": [{}, {"adminToken": []}],
            }
            parameters = [extra] if extra else []
            if parameter:
                parameters.append(
                    {
                        "name": parameter,
                        "in": "path",
                        "required": True,
                        "description": "Its id in cards/ (the file name without .yaml), or in the "
                        "site overlay for an institution protocol",
                        "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
                    }
                )
            if parameters:
                operation["parameters"] = parameters
            spec.path(path=path, operations={"get": operation})


def _probes(spec: APISpec) -> None:
    """``/healthz`` and ``/readyz`` (cds_server/web/ops.py): no authentication."""
    status = {"type": "object", "properties": {"status": {"type": "string"}}}
    ready = {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "string"}},
            "knowledgeVersion": {"type": "string"},
        },
    }
    for path, operation_id, summary, body, errors in (
        ("/healthz", "healthz", "Liveness: the process answers", status, (405, 500)),
        (
            "/readyz",
            "readyz",
            "Readiness: knowledge loaded, database and shared cache (if configured) reachable; "
            "503 names the failed checks",
            ready,
            (405, 500, 503),
        ),
    ):
        spec.path(
            path=path,
            operations={
                "get": {
                    "operationId": operation_id,
                    "summary": summary,
                    "tags": ["operations"],
                    "responses": {
                        "200": {"description": summary, "content": {JSON: {"schema": body}}},
                        **_errors(*errors),
                    },
                }
            },
        )


def _refine(spec: dict[str, Any]) -> None:
    """Add the CDS Hooks 2.0 required fields and value sets to the output schemas."""
    schemas = spec["components"]["schemas"]
    for name, required in REQUIRED_OUT.items():
        schemas[name]["required"] = sorted(required)
    for (name, prop), values in ENUMS_OUT.items():
        schemas[name]["properties"][prop]["enum"] = list(values)
    _cross_field_rules(schemas)
    summary = schemas["Card"]["properties"]["summary"]
    summary.update(minLength=1, maxLength=protocol.SUMMARY_MAX - 1)
    schemas["Response"]["properties"]["cards"]["description"] = "May be empty"


def _cross_field_rules(schemas: dict[str, Any]) -> None:
    """The ``validates_schema`` rules of the inbound schemas, in JSON Schema terms."""
    schemas["FhirAuthorization"]["properties"]["token_type"]["pattern"] = (
        "^[Bb][Ee][Aa][Rr][Ee][Rr]$"
    )
    for hook in protocol.CONTEXT_SCHEMAS:  # fhirAuthorization requires fhirServer
        schemas[_schema_name(hook)]["anyOf"] = [
            {"required": ["fhirServer"]},
            {"not": {"required": ["fhirAuthorization"]}},
        ]
    schemas["FeedbackItem"]["anyOf"] = [  # accepted requires acceptedSuggestions
        {"properties": {"outcome": {"enum": ["overridden"]}}},
        {"required": ["acceptedSuggestions"]},
    ]
    schemas["OverrideReason"]["anyOf"] = [  # a reason or a (non-empty) comment
        {"required": ["reason"]},
        {"required": ["userComment"], "properties": {"userComment": {"minLength": 1}}},
    ]


def build(version: str = __version__) -> dict[str, Any]:
    """The OpenAPI document as a dict (a pure function of the code; a few ms to build)."""
    plugin = MarshmallowPlugin(schema_name_resolver=_resolve_name)
    spec = APISpec(
        title="Infusion safety CDS Hooks service",
        version=version,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": "CDS Hooks 2.0 service checking infusion orders for "
            "infusion-reaction and cytokine-release safety. Errors are FHIR OperationOutcomes "
            f"with a stable code in issue[0].details.coding (system {protocol.ERROR_SYSTEM}).",
            "license": {"name": "Apache-2.0"},
        },
    )
    plugin.converter.add_attribute_function(_attributes)  # type: ignore[union-attr]
    spec.components.security_scheme(
        "cdsClient",
        {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "CDS Hooks 2.0 client JWT (ES384/RS384, aud = the endpoint's "
            "public URL); not required by the local demo",
        },
    )
    spec.components.security_scheme(
        "adminToken",
        {"type": "http", "scheme": "bearer", "description": "The configured ADMIN_TOKEN"},
    )
    spec.components.schema("FhirResource", copy.deepcopy(FHIR_RESOURCE))
    spec.components.schema("Response", schema=protocol.ResponseOut)  # nested ones follow
    spec.components.schema("Discovery", schema=protocol.DiscoveryOut)
    spec.components.schema("Feedback", schema=protocol.FeedbackSchema)
    spec.components.schema("OperationOutcome", schema=OperationOutcomeDoc)
    for hook in protocol.CONTEXT_SCHEMAS:
        spec.components.schema(_schema_name(hook), schema=_request_schema(hook))

    spec.path(
        path="/cds-services",
        operations={
            "get": {
                "operationId": "discovery",
                "summary": "Discovery: the services, their hooks and prefetch templates",
                "tags": ["discovery"],
                "responses": {
                    "200": {
                        "description": "The services",
                        "content": {JSON: {"schema": {"$ref": "#/components/schemas/Discovery"}}},
                    },
                    **_errors(401, 405, 500, 503),
                },
                "security": [{"cdsClient": []}],
            }
        },
    )
    by_id: dict[str, list[services.Service]] = {}
    for service in services.SERVICES:
        by_id.setdefault(service.id, []).append(service)
    for service_id, hooks in sorted(by_id.items()):
        spec.path(
            path=f"/cds-services/{service_id}",
            operations={"post": _service_call(service_id, hooks)},
        )
        spec.path(
            path=f"/cds-services/{service_id}/feedback",
            operations={"post": _feedback(service_id)},
        )
    for path, media, summary in (
        ("/analytics/report", JSON, "Cards issued, accepted and overridden per rule and drug"),
        ("/analytics/report.html", "text/html", "The same report as an HTML page"),
    ):
        spec.path(path=path, operations={"get": _analytics(path, media, summary)})
    _knowledge_pages(spec)
    _probes(spec)
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format; no patient data)",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "Prometheus text format 0.0.4",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403, 405, 500),
                },
                "security": [{"adminToken": []}],
            }
        },
    )
    spec.path(
        path="/openapi.json",
        operations={
            "get": {
                "operationId": "openapi",
                "summary": "This OpenAPI description",
                "tags": ["meta"],
                "responses": {
                    "200": {"description": "OpenAPI 3 document", "content": {JSON: {}}},
                    **_errors(405),
                },
            }
        },
    )
    document = spec.to_dict()
    _refine(document)
    return document


_NAMES: dict[type[Schema], str] = {
    **{schema: name for name, schema in OUT_SCHEMAS.items()},
    protocol.FeedbackSchema: "Feedback",
    protocol.FeedbackItemSchema: "FeedbackItem",
    protocol.AcceptedSuggestionSchema: "AcceptedSuggestion",
    protocol.OverrideReasonSchema: "OverrideReason",
    protocol.CodingSchema: "FeedbackCoding",
    protocol.FhirAuthorizationSchema: "FhirAuthorization",
    OperationOutcomeDoc: "OperationOutcome",
    IssueDoc: "OperationOutcomeIssue",
    ErrorDetailsDoc: "ErrorDetails",
    ErrorCodingDoc: "ErrorCoding",
}


def _resolve_name(schema: Any) -> str:
    """Component names without the ``Schema``/``Out``/``Doc`` suffixes."""
    cls = schema if isinstance(schema, type) else type(schema)
    if cls in _NAMES:
        return _NAMES[cls]
    name = cls.__name__
    for suffix in ("Schema", "Out", "Doc"):
        name = name.removesuffix(suffix)
    return name


@bp.get("/openapi.json")
def openapi_json() -> Response:
    """The OpenAPI document."""
    return jsonify(build())
