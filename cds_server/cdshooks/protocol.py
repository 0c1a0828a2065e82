"""The CDS Hooks 2.0 wire format: marshmallow schemas for what comes in and what goes out.

Inbound (tolerant): unknown keys and ``extension`` objects are ignored everywhere; every
problem is collected and reported at once, keyed by its JSON path. Outbound (strict): only
declared fields are written and ``null`` or empty optional values are dropped (2.0 "JSON
elements SHALL NOT be null or empty"), except the required ``cards`` array, which may be
empty. Error bodies are FHIR ``OperationOutcome`` resources (3.0-ballot recommendation).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    missing,
    post_dump,
    validate,
    validates_schema,
)

from cds_server.cdshooks.errors import CdsError, InvalidRequest

SUMMARY_MAX = 140  # summary must be *shorter* than 140 characters
INDICATORS = ("info", "warning", "critical")
SELECTION_BEHAVIORS = ("at-most-one", "any")
ACTION_TYPES = ("create", "update", "delete")
LINK_TYPES = ("absolute", "smart")
ERROR_SYSTEM = "urn:infusion-safety-cds:error"

# Epic's feedback for acknowledgment reasons built in Epic (fhir.epic.com CDS Hooks tutorial,
# "Feedback"): ``overrideReasons.extension`` holds the reason's category, display and title.
# The category key doubles as the code system of the category code we store.
EPIC_REASON_CATEGORY = "com.epic.cdshooks.feedback.overrideReason.reasonCategory"
EPIC_REASON_DISPLAY = "com.epic.cdshooks.feedback.overrideReason.reasonDisplay"
EPIC_REASON_TITLE = "com.epic.cdshooks.feedback.overrideReason.reasonTitle"

# Epic's request extension naming the Epic workflow step that fired the hook; Epic sends its
# own triggers (Enter Allergy, IP Admission…) as patient-view. Documented values (fhir.epic.com
# CDS Hooks tutorial, "Epic Extensions"; others exist):
EPIC_TRIGGER = "com.epic.cdshooks.request.bpa-trigger-action"
EPIC_TRIGGERS = {
    "5": "general OPA section",
    "6": "enter problem",
    "7": "enter diagnosis",
    "18": "enter order",
    "23": "sign orders",
    "26": "IP admission",
    "27": "IP discharge",
    "29": "IP transfer",
    "60": "open patient chart",
}
_TRIGGER_VALUE = re.compile(r"^[0-9]{1,6}$")

log = logging.getLogger(__name__)

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# Epic's resource ids are opaque and longer than FHIR's 64 characters (≈ 200 in its published
# draftOrders): references to orders and medications take ids up to 256 characters.
RELATIVE_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,256}$")
# Years 0002-9998: with its offset, every such date-time is also a UTC instant (0001 and 9999
# are not always: 0001-01-01T00:00:00+03:00 is in year 0 in UTC).
_YEAR = r"(000[2-9]|00[1-9]\d|0[1-9]\d{2}|[1-8]\d{3}|9[0-8]\d{2}|99[0-8]\d|999[0-8])"
RFC3339 = re.compile(
    rf"^{_YEAR}-\d{{2}}-\d{{2}}[Tt]\d{{2}}:\d{{2}}:\d{{2}}(\.\d+)?([Zz]|[+-]\d{{2}}:\d{{2}})$"
)

_ID_MESSAGE = "must be a FHIR id (letters, digits, '-' and '.', at most 64 characters)"
_REF_MESSAGE = "must be a relative reference such as 'MedicationRequest/123'"


# --------------------------------------------------------------------------------------
# Inbound
# --------------------------------------------------------------------------------------


class _In(Schema):
    class Meta:
        unknown = EXCLUDE


def _string(required: bool = False, max_len: int = 256, **kw: Any) -> fields.String:
    return fields.String(required=required, validate=validate.Length(min=1, max=max_len), **kw)


class DraftOrdersField(fields.Raw):
    """``draftOrders``: a Bundle (``type`` and ``entry`` optional) of request resources.

    A bare JSON array of resources (the appointment-book example quirk) is wrapped in a
    collection Bundle.
    """

    def _deserialize(self, value: Any, attr: Any, data: Any, **kw: Any) -> Any:
        if isinstance(value, list):
            value = {
                "resourceType": "Bundle",
                "type": "collection",
                "entry": [{"resource": r} for r in value],
            }
        if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
            raise ValidationError("must be a FHIR Bundle of draft orders")
        entries = value.get("entry")
        if entries is None:
            return value
        if not isinstance(entries, list):
            raise ValidationError({"entry": ["must be an array"]})
        errors: dict[str, list[str]] = {}
        for i, entry in enumerate(entries):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
                errors[f"entry.{i}.resource"] = ["must be a FHIR resource"]
        if errors:
            raise ValidationError(errors)
        return value


class PrefetchField(fields.Dict):
    """``prefetch``: key → resource, Bundle or ``null`` (``null`` for the whole object = none)."""

    def __init__(self, **kw: Any):
        super().__init__(keys=fields.String(), values=fields.Raw(allow_none=True), **kw)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kw: Any) -> Any:
        result = super()._deserialize(value, attr, data, **kw)
        errors = {}
        for key, item in result.items():
            if item is not None and not (
                isinstance(item, dict) and isinstance(item.get("resourceType"), str)
            ):
                errors[key] = ["must be a FHIR resource, a Bundle or null"]
        if errors:
            raise ValidationError(errors)
        return result


# What ``Authorization: Bearer <token>`` can carry: visible ASCII, no spaces (RFC 6750's
# b64token is a subset); "" means no Authorization header.
_BEARER_TOKEN = re.compile(r"^[!-~]*$")


class FhirAuthorizationSchema(_In):
    access_token = fields.String(
        required=True,
        validate=validate.Regexp(
            _BEARER_TOKEN,
            error="must be a bearer token: visible ASCII characters, no spaces or line breaks",
        ),
    )
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True, strict=True, validate=validate.Range(min=0))
    scope = fields.String(required=True)
    subject = fields.String(required=True)
    patient = fields.String(validate=validate.Regexp(FHIR_ID, error=_ID_MESSAGE))

    @validates_schema
    def _bearer(self, data: dict[str, Any], **kw: Any) -> None:
        if "token_type" in data and data["token_type"].lower() != "bearer":
            raise ValidationError("must be 'Bearer'", "token_type")


class _ContextBase(_In):
    userId = _string(required=True)
    patientId = fields.String(required=True, validate=validate.Regexp(FHIR_ID, error=_ID_MESSAGE))
    encounterId = fields.String(validate=validate.Regexp(FHIR_ID, error=_ID_MESSAGE))


class PatientViewContext(_ContextBase):
    pass


class OrderSignContext(_ContextBase):
    draftOrders = DraftOrdersField(required=True)


class OrderSelectContext(OrderSignContext):
    selections = fields.List(
        fields.String(validate=validate.Regexp(RELATIVE_REF, error=_REF_MESSAGE)),
        required=True,
    )


CONTEXT_SCHEMAS: dict[str, type[Schema]] = {
    "patient-view": PatientViewContext,
    "order-select": OrderSelectContext,
    "order-sign": OrderSignContext,
}


def _plain_base_url(url: str) -> None:
    try:
        parts = urlsplit(url)
    except ValueError:
        raise ValidationError("is not a valid URL") from None
    if "@" in parts.netloc or parts.query or parts.fragment or len(url) > 2048:
        raise ValidationError("must be a plain base URL (no credentials, query or fragment)")


class HookRequestSchema(_In):
    hook = _string(required=True, max_len=100)
    hookInstance = _string(required=True)
    fhirServer = fields.Url(schemes={"http", "https"}, require_tld=False, validate=_plain_base_url)
    fhirAuthorization = fields.Nested(FhirAuthorizationSchema)
    context = fields.Dict(required=True)
    prefetch = PrefetchField(allow_none=True)
    extension = fields.Raw()

    @validates_schema(skip_on_field_errors=False)
    def _rules(self, data: dict[str, Any], **kw: Any) -> None:
        if "fhirAuthorization" in data and "fhirServer" not in data:
            raise ValidationError(
                "fhirServer is required when fhirAuthorization is present", "fhirServer"
            )


@dataclass(frozen=True)
class FhirAuthorization:
    """``fhirAuthorization``; the token never appears in ``repr`` (logs, tracebacks)."""

    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None

    def as_mapping(self) -> dict[str, Any]:
        return {"access_token": self.access_token, "scope": self.scope, "patient": self.patient}


@dataclass(frozen=True)
class HookRequest:
    """A validated hook call. ``context`` keeps the wire names (``patientId``…)."""

    hook: str
    hook_instance: str
    context: Mapping[str, Any] = field(repr=False)
    prefetch: Mapping[str, Any] | None = field(default=None, repr=False)
    fhir_server: str | None = None
    fhir_authorization: FhirAuthorization | None = None
    extension: Any = field(default=None, repr=False)

    @property
    def epic_trigger(self) -> str | None:
        """Epic's ``bpa-trigger-action`` (a number as a string; ``"other"`` if it is not one),
        or None when not sent. Safe to log: a workflow step, never patient data."""
        if not isinstance(self.extension, Mapping) or EPIC_TRIGGER not in self.extension:
            return None
        value = self.extension[EPIC_TRIGGER]
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        return value if isinstance(value, str) and _TRIGGER_VALUE.match(value) else "other"


def _flatten(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages → {"context.patientId": ["…"]}."""
    out: dict[str, list[str]] = {}
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            shown = str(key)[:64]  # keys can be client-chosen (prefetch keys)
            name = prefix if key == "_schema" else (f"{prefix}.{shown}" if prefix else shown)
            for k, v in _flatten(value, name).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(messages, list | tuple):
        for item in messages:
            for k, v in _flatten(item, prefix).items():
                out.setdefault(k, []).extend(v)
    else:
        out.setdefault(prefix or "(body)", []).append(str(messages))
    return out


def _invalid(errors: Mapping[str, list[str]], what: str) -> InvalidRequest:
    names = ", ".join(sorted(errors))
    return InvalidRequest(f"Invalid {what}: {names}", fields=errors)


# Built once, like ``_RESPONSE_OUT``: building them per call was ≈ 3 % of a call's CPU (py-spy);
# loading keeps no state on the instance (no ``context``), so one instance serves every thread.
_HOOK_REQUEST_IN = HookRequestSchema()
_CONTEXT_IN: dict[str, Schema] = {hook: cls() for hook, cls in CONTEXT_SCHEMAS.items()}


def load_hook_request(body: Any) -> HookRequest:
    """Validate a service-call body; raise ``InvalidRequest`` (400) listing every problem."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object")
    errors: dict[str, list[str]] = {}
    try:
        env = _HOOK_REQUEST_IN.load(body)
    except ValidationError as exc:
        errors.update(_flatten(exc.messages))
        env = exc.valid_data if isinstance(exc.valid_data, dict) else {}
    context = env.get("context")
    schema = _CONTEXT_IN.get(str(body.get("hook")))
    if schema is not None and isinstance(context, Mapping):
        try:
            context = schema.load(context)
        except ValidationError as exc:
            errors.update(_flatten(exc.messages, "context"))
    if errors:
        raise _invalid(errors, "request")
    auth = env.get("fhirAuthorization")
    return HookRequest(
        hook=env["hook"],
        hook_instance=env["hookInstance"],
        context=dict(context or {}),
        prefetch=env.get("prefetch"),
        fhir_server=env.get("fhirServer"),
        fhir_authorization=FhirAuthorization(**auth) if auth else None,
        extension=env.get("extension"),
    )


# -- feedback ---------------------------------------------------------------------------


class CodingSchema(_In):
    code = _string(required=True)
    system = _string(required=True, max_len=2048)
    display = fields.String()


class AcceptedSuggestionSchema(_In):
    id = _string(required=True)


class OverrideReasonSchema(_In):
    reason = fields.Nested(CodingSchema)
    userComment = fields.String()

    @validates_schema
    def _reason_or_comment(self, data: dict[str, Any], **kw: Any) -> None:
        if "reason" not in data and not data.get("userComment"):
            raise ValidationError("must contain a reason or a userComment")


def _rfc3339(value: str) -> None:
    if not RFC3339.match(value):
        raise ValidationError(
            "must be an RFC 3339 date-time with a time zone (years 0002-9998), "
            "e.g. 2026-11-21T10:05:31Z"
        )
    try:
        # In UTC too: 0001-01-01T00:00:00+03:00 exists, but not as a UTC instant.
        datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(UTC)
    except (ValueError, OverflowError):
        raise ValidationError("is not a valid date-time (or not representable in UTC)") from None


class FeedbackItemSchema(_In):
    card = _string(required=True)
    outcome = fields.String(required=True, validate=validate.OneOf(("accepted", "overridden")))
    acceptedSuggestions = fields.List(
        fields.Nested(AcceptedSuggestionSchema), validate=validate.Length(min=1)
    )
    overrideReason = fields.Nested(OverrideReasonSchema)
    # Epic's form (plural key, an object): read tolerantly by ``_override_reason``, never a 400.
    overrideReasons = fields.Raw(
        allow_none=True,
        metadata={
            "description": "Epic's form of overrideReason: {reason: Coding, userComment} or "
            "{extension: {<Epic reason category, display, title>}, userComment}"
        },
    )
    outcomeTimestamp = fields.String(required=True, validate=_rfc3339)

    @validates_schema
    def _accepted(self, data: dict[str, Any], **kw: Any) -> None:
        if data.get("outcome") == "accepted" and not data.get("acceptedSuggestions"):
            raise ValidationError("is required when outcome is 'accepted'", "acceptedSuggestions")


class FeedbackSchema(_In):
    feedback = fields.List(
        fields.Nested(FeedbackItemSchema), required=True, validate=validate.Length(min=1, max=100)
    )


_FEEDBACK_IN = FeedbackSchema()


_EPIC_CODING = CodingSchema()


def load_feedback(body: Any) -> list[dict[str, Any]]:
    """Validate a feedback body; return its items; raise ``InvalidRequest`` (400).

    Each item's override reason is returned in the spec's form (``overrideReason`` with a
    ``reason`` Coding and ``userComment``) whatever form it came in — the spec's, or Epic's
    ``overrideReasons`` object with a ``reason`` Coding or an ``extension`` naming an Epic
    reason category. A form not understood is kept as "no coded reason" and logged by its
    shape (key names only, never values); it is not an error.
    """
    if not isinstance(body, Mapping):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        items: list[dict[str, Any]] = _FEEDBACK_IN.load(body)["feedback"]
    except ValidationError as exc:
        raise _invalid(_flatten(exc.messages), "feedback") from None
    for index, item in enumerate(items):
        if "overrideReasons" not in item:
            continue
        epic = item.pop("overrideReasons")
        if item.get("overrideReason", {}).get("reason"):
            continue  # the spec's form came too, with a coded reason: it wins
        reason, comment = _override_reason(epic, index)
        merged = dict(item.get("overrideReason") or {})
        if reason is not None:
            merged["reason"] = reason
        if comment is not None and "userComment" not in merged:
            merged["userComment"] = comment
        if merged:
            item["overrideReason"] = merged
    return items


def _override_reason(value: Any, index: int) -> tuple[dict[str, Any] | None, Any]:
    """(reason Coding or None, userComment or None) from Epic's ``overrideReasons``."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping):
        _unread(index, f"overrideReasons is a JSON {_json_type(value)}")
        return None, None
    comment = value.get("userComment")
    comment = comment if isinstance(comment, str) else None
    if "reason" in value:
        try:
            coding = _EPIC_CODING.load(value["reason"])
        except ValidationError:
            _unread(index, f"overrideReasons.reason {_shape(value['reason'])}")
            return None, comment
        return {k: coding[k] for k in ("system", "code", "display") if coding.get(k)}, comment
    extension = value.get("extension")
    if isinstance(extension, Mapping) and EPIC_REASON_CATEGORY in extension:
        category = extension[EPIC_REASON_CATEGORY]
        if isinstance(category, int) and not isinstance(category, bool):
            category = str(category)
        if isinstance(category, str) and 0 < len(category.strip()) <= 256:
            reason = {"system": EPIC_REASON_CATEGORY, "code": category.strip()}
            for key in (EPIC_REASON_DISPLAY, EPIC_REASON_TITLE):
                shown = extension.get(key)
                if isinstance(shown, str) and shown.strip():
                    reason["display"] = shown.strip()
                    break
            return reason, comment
        _unread(index, f"overrideReasons.extension {_shape(extension)}")
        return None, comment
    if set(value) - {"userComment"}:
        _unread(index, f"overrideReasons {_shape(value)}")
    return None, comment


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {str: "string", list: "array", int: "number", float: "number"}.get(type(value), "value")


def _shape(value: Any) -> str:
    """A value's shape for a log line: its key names (printable, shortened), never its content."""
    if not isinstance(value, Mapping):
        return f"(a JSON {_json_type(value)})"
    names = sorted("".join(c if c.isprintable() else "?" for c in str(k))[:60] for k in value)
    more = f", +{len(names) - 8} more" if len(names) > 8 else ""
    return "{" + ", ".join(names[:8]) + more + "}"


def _unread(index: int, shape: str) -> None:
    log.warning(
        "feedback item %d: override reason not understood, stored without a coded reason: %s",
        index,
        shape,
    )


# --------------------------------------------------------------------------------------
# Outbound
# --------------------------------------------------------------------------------------


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | list | tuple | dict) and len(value) == 0)


def _pruned(value: Any, key: str = "") -> Any:
    """JSON without null or empty values at any depth (FHIR JSON allows neither), except in
    the ``_element`` arrays where FHIR aligns extensions with nulls."""
    if isinstance(value, dict):
        items = ((k, _pruned(v, str(k))) for k, v in value.items())
        return {k: v for k, v in items if not _empty(v)}
    if isinstance(value, list) and not key.startswith("_"):
        return [v for v in (_pruned(item, key) for item in value) if not _empty(v)]
    return value


class PrunedRaw(fields.Raw):
    """A FHIR resource in a response (e.g. a draft order echoed in an update action)."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kw: Any) -> Any:
        return _pruned(value)


class _Out(Schema):
    """Writes declared fields only and drops null/empty optional values."""

    KEEP_EMPTY: tuple[str, ...] = ()

    class Meta:
        # marshmallow's default, said: apispec before 6.8.3 writes ``additionalProperties:
        # false`` into /openapi.json only for a schema that declares it
        unknown = RAISE

    @post_dump
    def _prune(self, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k in self.KEEP_EMPTY or not _empty(v)}


class CodingOut(_Out):
    system = fields.String()
    code = fields.String()
    display = fields.String()


class SourceOut(_Out):
    label = fields.String()
    url = fields.String()
    icon = fields.String()
    topic = fields.Nested(CodingOut)


class LinkOut(_Out):
    label = fields.String()
    url = fields.String()
    type = fields.String()
    appContext = fields.String()
    autolaunchable = fields.Boolean()


class ActionOut(_Out):
    type = fields.String()
    description = fields.String()
    resource = PrunedRaw()
    resourceId = fields.Raw()


class SuggestionOut(_Out):
    label = fields.String()
    uuid = fields.String()
    isRecommended = fields.Boolean()
    actions = fields.List(fields.Nested(ActionOut))


class CardOut(_Out):
    uuid = fields.String()
    summary = fields.String()
    detail = fields.String()
    indicator = fields.String()
    source = fields.Nested(SourceOut)
    suggestions = fields.List(fields.Nested(SuggestionOut))
    selectionBehavior = fields.String()
    overrideReasons = fields.List(fields.Nested(CodingOut))
    links = fields.List(fields.Nested(LinkOut))
    extension = fields.Raw()


class ResponseOut(_Out):
    KEEP_EMPTY = ("cards",)
    cards = fields.List(fields.Nested(CardOut))
    systemActions = fields.List(fields.Nested(ActionOut))
    extension = fields.Raw()


class ServiceOut(_Out):
    hook = fields.String()
    title = fields.String()
    description = fields.String()
    id = fields.String()
    prefetch = fields.Dict(keys=fields.String(), values=fields.String())
    usageRequirements = fields.String()
    extension = fields.Raw()


class DiscoveryOut(_Out):
    KEEP_EMPTY = ("services",)
    services = fields.List(fields.Nested(ServiceOut))


Dump = Callable[[Any], Any]


def compile_dump(schema: _Out) -> Dump:
    """``schema.dump`` as plain nested functions that give the same output, built once.

    The ``_Out`` schemas stay the declaration (and the OpenAPI document's source); walking
    them through marshmallow on every call cost ≈ 7 % of an order-sign's CPU (py-spy).
    Only the walk over nested schemas is compiled; every other field is written by its
    public ``Field.serialize``, as marshmallow's own walk does, and ``_Out``'s pruning is
    repeated here. Marshmallow's public API only (no private attribute, so no version of it
    can make this fail at import): the hooks a schema declares cannot be listed that way,
    which is why ``tests/test_speedups.py`` compares both writers on every fixture's response
    and on mutated cards. Refuses (``TypeError``) nested fields it does not reproduce.
    """
    if schema.only or schema.exclude or schema.many:
        raise TypeError(f"{type(schema).__name__}: options compile_dump cannot copy")
    steps = [
        (fld.data_key or name, _compile_field(name, fld))
        for name, fld in schema.dump_fields.items()
    ]
    keep = frozenset(schema.KEEP_EMPTY)

    def dump(obj: Any) -> Any:
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            return schema.dump(obj)  # attribute access: marshmallow's own walk
        out: dict[str, Any] = {}
        for key, write in steps:
            value = write(obj)
            if value is missing:
                continue
            if key in keep or not _empty(value):
                out[key] = value
        return out

    return dump


def _compile_field(name: str, fld: fields.Field) -> Callable[[Mapping[str, Any]], Any]:
    """How one field of a schema is written from a mapping: ``missing`` when it is absent."""
    nested = _compile_nested(fld)
    if nested is None:
        if _reads_its_key(name, fld):
            # marshmallow finds an absent key by catching a KeyError; most are absent
            return lambda obj: fld.serialize(name, obj) if name in obj else missing
        return lambda obj: fld.serialize(name, obj)
    if fld.attribute is not None or fld.dump_default is not missing:
        raise TypeError(f"field {name}: a nested field with attribute or dump_default")

    def write(obj: Mapping[str, Any]) -> Any:
        value = obj.get(name, missing)
        return value if value is missing else nested(value)

    return write


def _reads_its_key(name: str, fld: fields.Field) -> bool:
    """The field writes nothing when its own key is absent from a dict (no other attribute,
    no default, not computed, not a name a dict answers as an attribute)."""
    computed = isinstance(fld, fields.Method | fields.Function | fields.Constant)
    return (
        fld.attribute is None
        and fld.dump_default is missing
        and not computed
        and not hasattr(dict, name)
    )


def _compile_nested(fld: fields.Field) -> Callable[[Any], Any] | None:
    """A nested ``_Out`` schema (or a list of them) as a compiled function; None for a leaf."""
    if isinstance(fld, fields.Nested):
        if fld.many or not isinstance(fld.schema, _Out):
            raise TypeError(f"Nested field {fld.name}: only single _Out schemas compile")
        return compile_dump(fld.schema)
    if isinstance(fld, fields.List):
        each = _compile_nested(fld.inner)
        if each is None:
            return None  # a list of leaves: Field.serialize writes it
        return lambda value: None if value is None else [each(v) for v in value]
    return None


# Built once, at import; they keep no state, so they serve every thread.
_DUMP_RESPONSE = compile_dump(ResponseOut())
_DUMP_DISCOVERY = compile_dump(DiscoveryOut())


def dump_response(
    cards: Sequence[Mapping[str, Any]], system_actions: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The 200 body of a service call: ``{"cards": [...]}`` (+ ``systemActions`` if any)."""
    out: dict[str, Any] = _DUMP_RESPONSE(
        {"cards": list(cards), "systemActions": list(system_actions or [])}
    )
    return out


def dump_discovery(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The discovery body: ``{"services": [...]}``."""
    out: dict[str, Any] = _DUMP_DISCOVERY({"services": list(doc.get("services") or [])})
    return out


def error_body(error: CdsError) -> dict[str, Any]:
    """A FHIR OperationOutcome describing ``error`` (and each invalid field)."""
    details = {
        "coding": [{"system": ERROR_SYSTEM, "code": error.code}],
        "text": error.message,
    }
    issue_code = {
        400: "invalid",
        401: "login",
        404: "not-found",
        405: "not-supported",
        412: "incomplete",
        413: "too-long",
        503: "transient",
    }.get(error.status, "exception")
    issues: list[dict[str, Any]] = [
        {"severity": "error", "code": issue_code, "details": details, "diagnostics": error.message}
    ]
    for path, messages in sorted(error.fields.items()):
        for message in messages:
            issues.append(
                {
                    "severity": "error",
                    "code": issue_code,
                    "diagnostics": f"{path}: {message}",
                    "expression": [path],
                }
            )
    return {"resourceType": "OperationOutcome", "issue": issues}
