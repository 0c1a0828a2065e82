"""The Flask application factory: configuration, knowledge (loaded once), blueprints.

Nothing here holds mutable state: the knowledge base (with the site overlay of ``SITE_DIR``,
and one view per trusted client that names its own site folder) and the outbound FHIR
policy are built once per app and stored read-only in ``app.extensions["cds_server"]``, next
to the app's ``FhirTransport`` (its FHIR request threads and kept-alive connections).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from flask import Flask
from flask_cors import CORS

from cds_server import config, store
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge.overlay import load_view
from cds_server.knowledge.sitefile import SiteError
from cds_server.web import auth
from cds_server.web.runtime import EXTENSION, Runtime
from cds_server.web.trusted_clients import TrustedClients


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> Flask:
    """Build the app. Raises ``KnowledgeError`` (``SiteError`` for a site overlay) or
    ``ConfigError`` at once if either is bad.

    ``data_dir`` (default ``CDS_DATA_DIR``, else ``./instance``) is the instance folder.
    """
    app = Flask(__name__, instance_path=config.data_dir(data_dir), instance_relative_config=True)
    config.load(app.config, test_config, overrides, instance_path=app.instance_path)
    kb = load_knowledge(app.config["CARDS_DIR"])
    view = load_view(kb, app.config["SITE_DIR"])  # the site overlay, if any: SiteError at once
    clients = auth.init_app(app, blueprint="cds")  # CDS client JWTs on api.bp; fails fast
    app.extensions[EXTENSION] = Runtime(
        kb=view,
        fhir=FhirSettings.from_config(app.config),
        sites=tenant_views(kb, clients, app.config["SITE_DIR"], view),
    )
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

    from cds_server import analytics, sandbox
    from cds_server.web import api, knowledge, metrics, openapi, ops

    app.register_blueprint(api.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(knowledge.bp)  # /knowledge/: demo, KNOWLEDGE_PAGES_PUBLIC or admin token
    app.register_blueprint(openapi.bp)  # GET /openapi.json (public: no data in it)
    ops.init_app(app)  # GET /healthz, GET /readyz (public: probes)
    metrics.init_app(app)  # GET /metrics (admin token, like analytics); counts CDS requests
    sandbox.init_app(app)  # /sandbox: demo mode, or SANDBOX_ENABLED
    return app


def tenant_views(
    kb: KnowledgeBase,
    clients: TrustedClients | None,
    default_site: str | None,
    default_view: KnowledgeBase,
) -> Mapping[str, KnowledgeBase]:
    """The knowledge view of each trusted client's own site folder, built once (a folder
    named by several clients, or the service's own, is read once). ``SiteError`` names the
    client whose folder is invalid and every problem in it."""
    views: dict[str, KnowledgeBase] = {}
    own = str(Path(default_site).resolve()) if default_site else None
    for i, client in enumerate(clients.clients if clients else ()):
        if client.site is None or client.site in views:
            continue
        if own is not None and str(Path(client.site).resolve()) == own:
            views[client.site] = default_view
            continue
        try:
            views[client.site] = load_view(kb, client.site)
        except SiteError as exc:
            raise SiteError(
                f"{client.site} (the site of trusted client clients.{i}, iss {client.iss})",
                exc.problems,
            ) from None
    return MappingProxyType(views)


# A hook call allocates tens of thousands of short-lived objects; at the default threshold
# (700) the young generation is collected dozens of times per call. Measured on the
# benchmark's order-sign: ≈ 8 % of a call's CPU (bench/README.md).
GC_YOUNG_THRESHOLD = 20_000


def settle_heap() -> None:
    """Once the app is built, before serving: keep what start-up built (knowledge, schemas,
    modules; it lives as long as the process) out of the collector's full passes and out of
    copy-on-write after the fork, and collect young objects less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)
