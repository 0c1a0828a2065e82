"""Request limits beyond the byte size (``MAX_CONTENT_LENGTH``, enforced by Flask → 413).

* JSON nesting depth (``MAX_JSON_DEPTH``) → 400 ``malformed-json``: nothing the CDS Hooks or
  FHIR wire needs is nested that deep, and deep input is how recursive code is made to fail;
* draft orders in ``context.draftOrders`` (``MAX_DRAFT_ORDERS``) → 413 ``limit-exceeded``;
* resources across all ``prefetch`` values (``MAX_PREFETCH_RESOURCES``) → 413 ``limit-exceeded``;
* text that is not Unicode (an unpaired surrogate escape such as ``"\\ud800"``, which JSON
  allows and no UTF-8 database, log or EHR can hold) → 400 ``malformed-json``.

Counting is done before validation and tolerates any shape (validation reports shape errors).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from cds_server.cdshooks.errors import LimitExceeded, MalformedJson

# Bytes the depth count reads: brackets and quotes (everything else is dropped), with braces
# read as brackets (for nesting depth an object and an array are alike).
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b'[]{}"')
_ESCAPE = re.compile(rb"\\.", re.DOTALL)  # a backslash and the character it escapes
_STRING = re.compile(rb'"[^"]*"')


def json_text_depth_exceeds(text: bytes, limit: int) -> bool:
    """True if ``text`` (UTF-8 JSON that ``json.loads`` accepted) nests objects/arrays more
    than ``limit`` levels deep.

    Reads the text, not the parsed value, with bytes operations that run in C: it runs on
    every request body, and walking the parsed value node by node cost as much as parsing.
    Escapes are removed first (so ``\\"`` ends no string), then everything but brackets and
    quotes; what is left between quotes is inside strings. Each pass then removes the
    innermost pairs, one level per pass.
    """
    if b"\\" in text:
        text = _ESCAPE.sub(b"", text)
    marks = text.translate(_BRACKETS, _NOT_BRACKETS).replace(b'""', b"")
    if b'"' in marks:
        marks = _STRING.sub(b"", marks)  # brackets inside strings
    depth = 0
    while marks:
        depth += 1
        if depth > limit:
            return True
        marks = marks.replace(b"[]", b"")
    return False


def check_depth(text: bytes, limit: int) -> None:
    """400 if the JSON ``text`` (already parsed successfully) nests deeper than ``limit``."""
    if json_text_depth_exceeds(text, limit):
        raise MalformedJson(f"The request body is nested deeper than {limit} levels")


# A \uD800-\uDFFF escape: only then can parsed JSON hold a surrogate (UTF-8 bytes cannot).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def check_unicode(text: bytes, body: Any) -> None:
    """400 if the parsed ``body`` of the JSON ``text`` holds an unpaired surrogate, in a key or
    a value. A pair (an escaped emoji) was joined by the parser and is fine."""
    if not _SURROGATE_ESCAPE.search(text):
        return
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise MalformedJson(
            "The request body holds invalid Unicode: an unpaired surrogate escape (\\uD800-\\uDFFF)"
        ) from None


def _entries(value: Any) -> int:
    """Resources in one draftOrders/prefetch value: a Bundle's entries, an array's items, else 1."""
    if isinstance(value, list):
        return len(value)
    if isinstance(value, Mapping):
        entries = value.get("entry")
        if value.get("resourceType") == "Bundle":
            return len(entries) if isinstance(entries, list) else 0
        return 1
    return 0


def check_hook_request(
    body: Mapping[str, Any], *, max_draft_orders: int, max_prefetch: int
) -> None:
    """413 if the hook request holds more draft orders or prefetch resources than allowed."""
    context = body.get("context")
    drafts = _entries(context.get("draftOrders")) if isinstance(context, Mapping) else 0
    if drafts > max_draft_orders:
        raise LimitExceeded(
            f"context.draftOrders holds {drafts} orders; at most {max_draft_orders} are processed"
        )
    prefetch = body.get("prefetch")
    total = sum(_entries(v) for v in prefetch.values()) if isinstance(prefetch, Mapping) else 0
    if total > max_prefetch:
        raise LimitExceeded(
            f"prefetch holds {total} resources; at most {max_prefetch} are processed"
        )
