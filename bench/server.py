"""The application gunicorn runs during the benchmark: the real app plus a floor endpoint.

``create()`` builds the production app with ``create_app`` and benchmark overrides (plain
http to the loopback fake FHIR server only), then adds ``POST /bench/floor``: it reads the
body exactly as a hook call does (``api._json_body``: Content-Type, UTF-8, JSON object) and
answers a fixed card list — the cards of workload 1, computed once at start-up — so the
floor costs what the framework, the body parsing and the response encoding cost, and
nothing else. The floor exists only in this module; the production app never has it.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from cds_server import pipeline
from cds_server.web import api
from cds_server.web.app import create_app, settle_heap

DATA = Path(__file__).resolve().parent / "data"
FLOOR_PATH = "/bench/floor"

# Everything as in production except: plain http to the fake FHIR server on 127.0.0.1, and a
# fixed patient-hash key (the database is a fresh file per run, so nothing is written to the
# instance folder). Caller authentication is on when ``create`` gets a trusted-clients file
# (``bench/run`` signs a JWT per request), off otherwise (``bench/run --no-auth``).
BENCH_OVERRIDES: dict[str, Any] = {
    "FHIR_ALLOW_HTTP": "loopback",
    "FHIR_ALLOWED_NETWORKS": ["127.0.0.0/8"],
    "AUTH_REQUIRED": False,
    "PATIENT_HASH_KEY": "bench-patient-hash-key-not-a-secret-0123456789",
    "LOG_LEVEL": "INFO",
}


def floor_cards(app: Flask) -> dict[str, Any]:
    """The response of workload 1, evaluated once at start-up (fixed uuids)."""
    body = json.loads((DATA / "order-sign.json").read_text(encoding="utf-8"))
    runtime = app.extensions["cds_server"]
    counter = iter(range(1_000_000))
    return pipeline.evaluate(
        body,
        service_id="infusion-safety-sign",
        kb=runtime.kb,
        settings=runtime.fhir,
        now=datetime.now(UTC),  # as a live call would be evaluated
        new_uuid=lambda: f"00000000-0000-4000-8000-{next(counter):012d}",
    )


def _floor() -> Response:
    api._json_body()  # the same body reading and checks as a hook call
    return jsonify(current_app.config["BENCH_FLOOR_RESPONSE"])


def create(
    database_url: str | None = None,
    clients_file: str | None = None,
    public_url: str | None = None,
    **overrides: Any,
) -> Flask:
    """The benchmark app (gunicorn: ``'bench.server:create(database_url="sqlite:///…")'``).

    With ``clients_file`` (and the ``public_url`` the JWT audiences are built on), every
    hook call must carry a JWT from a client of that file, as under ``cds-server serve``.
    """
    if database_url:
        overrides["DATABASE_URL"] = database_url
    if clients_file:
        overrides |= {"AUTH_REQUIRED": True, "CLIENTS_FILE": clients_file, "PUBLIC_URL": public_url}
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )  # as ``cds-server serve`` does: one log line per call, like production
    app = create_app(overrides={**BENCH_OVERRIDES, **overrides})
    app.config["BENCH_FLOOR_RESPONSE"] = floor_cards(app)
    floor = Blueprint("bench_floor", __name__)
    floor.add_url_rule(FLOOR_PATH, "floor", _floor, methods=["POST"])
    app.register_blueprint(floor)
    settle_heap()  # as ``cds-server serve`` does once the app is built
    return app
