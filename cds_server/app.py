"""The Flask application factory: configuration, knowledge (loaded once), blueprints.

Nothing here holds mutable state: the knowledge base and the outbound FHIR policy are
built once per app and stored read-only in ``app.extensions["cds_server"]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_cors import CORS

from cds_server import auth, config, store
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase

EXTENSION = "cds_server"


@dataclass(frozen=True)
class Runtime:
    """What request handlers need, built once at start-up."""

    kb: KnowledgeBase
    fhir: FhirSettings


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Flask:
    """Build the app. Raises ``KnowledgeError`` or ``ConfigError`` at once if either is bad."""
    app = Flask(__name__, instance_relative_config=True)
    config.load(app.config, test_config, overrides, instance_path=app.instance_path)
    kb = load_knowledge(app.config["CARDS_DIR"])
    app.extensions[EXTENSION] = Runtime(kb=kb, fhir=FhirSettings.from_config(app.config))
    auth.init_app(app, blueprint="cds")  # CDS client JWTs on api.bp; fails fast if misconfigured
    store.init_app(app)  # card log, feedback, snooze (SQLite by default); migrates the schema

    origins = app.config["CORS_ORIGINS"]
    if origins:
        CORS(
            app,
            resources={r"/cds-services*": {"origins": origins}},
            methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
            supports_credentials=False,
            max_age=600,
        )

    from cds_server import analytics, api, openapi, sandbox

    app.register_blueprint(api.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(openapi.bp)  # GET /openapi.json (public: no data in it)
    sandbox.init_app(app)  # /sandbox: demo mode, or SANDBOX_ENABLED
    return app
