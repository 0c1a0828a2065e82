"""What must never appear in a log: tokens, JWTs, and the fixtures' patient ids and names.

Used by the in-process fuzz, property and failure-injection tests (on ``caplog``) and by
``tools/soak.py`` (on the gunicorn log). The fixtures are fictional, so their identifiers
are safe to name in a failure message.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "fhir"
# A compact JWS/JWT: base64url JSON header and payload both start with '{"' → "eyJ".
JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}")
MIN_GIVEN = 5  # shorter given names ("Max", "Sky") are ordinary words: not scanned


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


@cache
def fixture_secrets() -> frozenset[str]:
    """Every patient id and name in fixtures/fhir (family names, longer given names)."""
    found: set[str] = set()
    for path in FIXTURES.rglob("*.json"):
        for obj in _walk(json.loads(path.read_text())):
            context = obj.get("context")
            if isinstance(context, dict) and isinstance(context.get("patientId"), str):
                found.add(context["patientId"])
            if obj.get("resourceType") != "Patient":
                continue
            if isinstance(obj.get("id"), str):
                found.add(obj["id"])
            for name in obj.get("name") or ():
                if isinstance(name.get("family"), str):
                    found.add(name["family"])
                found.update(g for g in name.get("given") or () if len(g) >= MIN_GIVEN)
    return frozenset(s for s in found if s)


def leaks(text: str, extra: Iterable[str] = ()) -> dict[str, int]:
    """Secret → occurrences in ``text`` (whole words), plus JWT-shaped strings."""
    found: dict[str, int] = {}
    secrets = sorted({*fixture_secrets(), *extra}, key=len, reverse=True)
    words = "|".join(re.escape(s) for s in secrets if s)
    for hit in re.findall(rf"(?<![\w-])(?:{words})(?![\w-])", text) if words else ():
        found[hit] = found.get(hit, 0) + 1
    jwts = len(JWT_SHAPED.findall(text))
    if jwts:
        found["<JWT-shaped string>"] = jwts
    return found


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )


def assert_clean_logs(caplog: pytest.LogCaptureFixture, extra: Iterable[str] = ()) -> None:
    """No token, JWT, patient id or patient name in anything captured."""
    from tests.conftest import TOKEN

    found = leaks(logged_text(caplog), (TOKEN, *extra))
    assert not found, f"secrets in the logs: {found}"
