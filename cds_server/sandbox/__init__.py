"""The ``/sandbox`` page for integration testers and demos (blueprint ``bp``).

Registered by ``init_app`` in demo mode, or in any mode when ``SANDBOX_ENABLED`` is true. The
page itself (``templates/sandbox.html``, ``static/sandbox.js``) builds CDS Hooks requests in the
browser and calls the public HTTP API exactly as an EHR would — discovery, service, feedback,
on this or any other CDS service — so nothing here imports the clinical layers. Server side it
offers only read-only helpers, with no patient data of their own beyond the fictional fixtures:

* ``GET  /sandbox/``                          the page;
* ``GET  /sandbox/api/drugs``                 the knowledge base's drugs (``catalogue``);
* ``GET  /sandbox/api/fixtures``              fictional fixture patients and scenarios;
* ``GET  /sandbox/api/fixtures/<group>/<name>`` one of them, as a FHIR collection Bundle;
* ``GET  /sandbox/demo-jwks.json``            demo only: the PUBLIC key of the demo's test key;
* ``POST /sandbox/api/token``                 demo only: a JWT signed with that key for an ``aud``.

Every response carries a strict Content-Security-Policy: scripts and styles from this origin
only, no inline script, no off-site images; ``connect-src`` is open because the tester may
call any CDS service.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request

from cds_server.cdshooks.errors import InvalidRequest, NotFound
from cds_server.config import ConfigError
from cds_server.sandbox import catalogue, fixtures, testkey

EXTENSION = "cds_server.sandbox"
MAX_AUD_CHARS = 2048
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src *; base-uri 'none'; form-action 'none'; frame-ancestors 'self'"
)

bp = Blueprint(
    "sandbox",
    __name__,
    url_prefix="/sandbox",
    template_folder="templates",
    static_folder="static",
)


class SandboxState:
    """What the sandbox needs, built once at start-up and never changed."""

    def __init__(self, fixture_patients: Any, key: testkey.TestKey | None):
        self.fixtures = fixture_patients
        self.key = key


def enabled(config: Any) -> bool:
    """The sandbox is served in demo mode, or when ``SANDBOX_ENABLED`` is true."""
    return bool(config.get("DEMO")) or bool(config.get("SANDBOX_ENABLED"))


def init_app(app: Flask) -> None:
    """Register the blueprint if enabled; in demo mode only, hold the demo's test key."""
    key = app.config.get("SANDBOX_TEST_KEY")
    if key is not None and not isinstance(key, testkey.TestKey):
        raise ConfigError("SANDBOX_TEST_KEY is set by `cds-server demo` only")
    if not app.config.get("DEMO"):
        if key is not None:
            raise ConfigError("SANDBOX_TEST_KEY (a private test key) is allowed in demo mode only")
    elif key is None:
        key = testkey.generate()
    if not enabled(app.config):
        return
    folder = app.config.get("SANDBOX_FIXTURES_DIR")
    app.extensions[EXTENSION] = SandboxState(fixtures.load_fixtures(folder), key)
    app.register_blueprint(bp)


def _state() -> SandboxState:
    return current_app.extensions[EXTENSION]  # type: ignore[no-any-return]


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.path.startswith("/sandbox/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def index() -> str:
    state = _state()
    key = state.key
    return render_template(
        "sandbox.html",
        demo=bool(current_app.config.get("DEMO")),
        signing=key is not None,
        demo_iss=key.iss if key else None,
        jwks_path="/sandbox/demo-jwks.json" if key else None,
        discovery_path="/cds-services",
        kb_version=current_app.extensions["cds_server"].kb.version,
    )


@bp.get("/api/drugs")
def drugs() -> Response:
    return jsonify(catalogue.catalogue(current_app.extensions["cds_server"].kb))


@bp.get("/api/fixtures")
def fixture_list() -> Response:
    return jsonify({"fixtures": [p.listing() for p in _state().fixtures.values()]})


@bp.get("/api/fixtures/<group>/<name>")
def fixture_detail(group: str, name: str) -> Response:
    patient = _state().fixtures.get(f"{group}/{name}")
    if patient is None:
        raise NotFound("No such fixture patient; the list is at /sandbox/api/fixtures")
    return jsonify(patient.detail(date.today()))


@bp.get("/demo-jwks.json")
def demo_jwks() -> Response:
    key = _state().key
    if key is None:
        raise NotFound("The demo test key exists only in demo mode")
    return jsonify(key.public_jwks())


@bp.post("/api/token")
def demo_token() -> Response:
    key = _state().key
    if key is None:
        raise NotFound("The demo test key exists only in demo mode")
    body = request.get_json(silent=True)
    aud = body.get("aud") if isinstance(body, dict) else None
    parts = urlsplit(aud) if isinstance(aud, str) and len(aud) <= MAX_AUD_CHARS else None
    if (
        not isinstance(aud, str)
        or parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
    ):
        raise InvalidRequest(
            'Send a JSON object {"aud": "<the http(s) URL about to be called>"}',
            fields={"aud": ["must be an http(s) URL"]},
        )
    return jsonify({"token": key.sign(aud), "iss": key.iss, "kid": key.kid})
