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
    ├── UnknownService            404  unknown-service
    ├── NotFound                  404  not-found             (no such route)
    ├── MethodNotAllowed          405  method-not-allowed
    ├── PrefetchUnavailable       412  prefetch-unavailable  (names the missing ``keys``)
    ├── PayloadTooLarge           413  payload-too-large
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


class FhirUnavailable(CdsError):
    """A call to the client's FHIR server failed (timeout, status, size, bad JSON, policy)."""

    status = 502
    code = "fhir-unavailable"


class TemplateError(ValueError):
    """A prefetch template uses a token that is unknown or cannot be filled."""
