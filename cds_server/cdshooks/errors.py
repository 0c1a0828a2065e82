"""Every failure a client can cause, as one exception tree.

Each class carries the HTTP status it maps to and a stable machine-readable ``code``.
Errors are raised where they happen and turned into a response only in ``api.py``.
Messages name fields, keys and problems, never values: a value may be patient data or a token.

::

    CdsError                      500  internal-error
    ├── BadRequest                400  bad-request
    │   ├── MalformedJson         400  malformed-json
    │   ├── UnsupportedMediaType  400  unsupported-content-type
    │   ├── InvalidRequest        400  invalid-request       (field → messages in ``fields``)
    │   └── HookMismatch          400  hook-mismatch         (service id exists, other hook)
    ├── Unauthorized              401  unauthorized          (CDS client JWT refused; no detail,
    │                                                         the reason is only logged)
    ├── AdminUnauthorized         401  admin-unauthorized    (analytics: bearer admin token)
    ├── AdminDisabled             403  admin-disabled        (analytics: no admin token set)
    ├── UnknownService            404  unknown-service
    ├── NotFound                  404  not-found             (no such route)
    ├── MethodNotAllowed          405  method-not-allowed
    ├── PrefetchUnavailable       412  prefetch-unavailable  (names the missing ``keys``)
    ├── PayloadTooLarge           413  payload-too-large
    │   └── LimitExceeded         413  limit-exceeded        (too many draft orders or prefetch
    │                                                         resources)
    ├── StoreUnavailable          503  store-unavailable     (feedback not durably stored: retry)
    ├── AuthUnavailable           503  auth-unavailable      (replay/JWKS cache unreachable: retry)
    ├── NotReady                  503  not-ready             (GET /readyz: the failed checks in
    │                                                         ``fields``)
    └── FhirUnavailable           502  fhir-unavailable      (internal: the FHIR server failed;
                                                              prefetch turns it into 412 or a
                                                              warning, so it should never escape)

``TemplateError`` (a ``ValueError``) is a programming/declaration error in a prefetch
template, not a client error; it is raised by ``fhirdata.templates``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence


class CdsError(Exception):
    """Base class: an HTTP status, a stable code and a message safe to show and to log."""

    status: int = 500
    code: str = "internal-error"

    def __init__(self, message: str, *, fields: Mapping[str, Sequence[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields: dict[str, list[str]] = {k: list(v) for k, v in (fields or {}).items()}


class BadRequest(CdsError):
    status = 400
    code = "bad-request"


class MalformedJson(BadRequest):
    code = "malformed-json"


class UnsupportedMediaType(BadRequest):
    code = "unsupported-content-type"


class InvalidRequest(BadRequest):
    code = "invalid-request"


class HookMismatch(BadRequest):
    code = "hook-mismatch"


class UnknownService(CdsError):
    status = 404
    code = "unknown-service"


class NotFound(CdsError):
    status = 404
    code = "not-found"


class MethodNotAllowed(CdsError):
    status = 405
    code = "method-not-allowed"


class PrefetchUnavailable(CdsError):
    """Required data was neither prefetched nor fetchable (CDS Hooks 2.0: 412)."""

    status = 412
    code = "prefetch-unavailable"

    def __init__(self, keys: Iterable[str], reason: str):
        self.keys = tuple(sorted(keys))
        super().__init__(
            f"Required prefetch data unavailable for key(s) {', '.join(self.keys)}: {reason}. "
            "Send these keys in prefetch, or send fhirServer with fhirAuthorization so the "
            "service can read them."
        )


class PayloadTooLarge(CdsError):
    status = 413
    code = "payload-too-large"


class LimitExceeded(PayloadTooLarge):
    """The request holds more draft orders or prefetch resources than the service processes."""

    code = "limit-exceeded"


class Unauthorized(CdsError):
    """The caller is not an authenticated, trusted CDS client. The message never says why."""

    status = 401
    code = "unauthorized"


class AuthUnavailable(CdsError):
    """Authentication could not be decided (the shared replay/JWKS cache is unreachable)."""

    status = 503
    code = "auth-unavailable"


class NotReady(CdsError):
    """A readiness check failed (``GET /readyz``); ``fields`` maps each failed check to why."""

    status = 503
    code = "not-ready"


class FhirUnavailable(CdsError):
    """A call to the client's FHIR server failed (timeout, status, size, bad JSON, policy)."""

    status = 502
    code = "fhir-unavailable"


class AdminUnauthorized(CdsError):
    """An admin endpoint was called without the configured bearer admin token."""

    status = 401
    code = "admin-unauthorized"


class AdminDisabled(CdsError):
    """Admin endpoints are off: no admin token is configured and this is not the demo."""

    status = 403
    code = "admin-disabled"


class StoreUnavailable(CdsError):
    """The database could not durably store what the client sent; the client may retry."""

    status = 503
    code = "store-unavailable"


class TemplateError(ValueError):
    """A prefetch template uses a token that is unknown or cannot be filled."""
