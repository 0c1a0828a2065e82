"""Every card the service gives for the fixture requests and the clinical scenarios.

Each fixture request (``fixtures/fhir/requests/*.json``, posted as the file's text) and each
scenario request (dates moved to today and posted as the scenario tests post it, keeping the
literal ``1e400``) goes through the Flask test client of a fresh app, so no card is held back
as a repeat of another call; so does each request of the example site overlay
(``fixtures/site-example/requests/``), to an app running that overlay. The apps' knowledge
pages are open, so cards carry their ``source.url``. The answers are computed once per test
session, per client profile.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from flask import Flask

from tests.conformance import check_response
from tests.conftest import REQUESTS, ROOT, service_for
from tests.scenarios.test_scenarios import load_scenario, request_text, scenario_names

Response = dict[str, Any]
OPEN = {"KNOWLEDGE_PAGES_PUBLIC": True}  # the settings of every app: pages open to browsers
SITE_EXAMPLE = ROOT / "fixtures" / "site-example"
_CACHE: dict[str, dict[str, Response]] = {}  # per client profile
_BODIES: dict[str, dict[str, Any]] = {}


def _post(app: Flask, body_text: str, hook_body: dict[str, Any]) -> Response:
    resp = app.test_client().post(
        f"/cds-services/{service_for(hook_body)}",
        data=body_text,
        content_type="application/json",
    )
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    result = resp.get_json()
    assert check_response(result) == [], check_response(result)
    return result


def every_response(make_app: Callable[..., Flask], profile: str = "generic") -> dict[str, Response]:
    """``{"requests/<name>" | "scenarios/<name>": response}`` for every fixture and scenario,
    as a client of ``profile`` (``CLIENT_PROFILE``) gets them."""
    if profile not in _CACHE:
        cache = _CACHE[profile] = {}
        for path in sorted(REQUESTS.glob("*.json")):
            text = path.read_text()
            _BODIES[f"requests/{path.stem}"] = json.loads(text)
            app = make_app(CLIENT_PROFILE=profile, **OPEN)
            cache[f"requests/{path.stem}"] = _post(app, text, json.loads(text))
        for name in scenario_names():
            body, _ = load_scenario(name)
            _BODIES[f"scenarios/{name}"] = body
            app = make_app(CLIENT_PROFILE=profile, **OPEN)
            cache[f"scenarios/{name}"] = _post(app, request_text(body), body)
        for path in sorted((SITE_EXAMPLE / "requests").glob("*.json")):
            text = path.read_text()
            _BODIES[f"site-example/{path.stem}"] = json.loads(text)
            app = make_app(CLIENT_PROFILE=profile, SITE_DIR=str(SITE_EXAMPLE), **OPEN)
            cache[f"site-example/{path.stem}"] = _post(app, text, json.loads(text))
    return _CACHE[profile]


def request_of(where: str) -> dict[str, Any]:
    """The request body (as a dict) behind ``every_response``'s ``where``."""
    return _BODIES[where]


def every_card(make_app: Callable[..., Flask]) -> Iterator[tuple[str, Response]]:
    """(where, card) for every card of every response."""
    for where, response in every_response(make_app).items():
        for i, card in enumerate(response["cards"]):
            yield f"{where} card {i} ({card['summary']})", card
