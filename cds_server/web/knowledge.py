"""The knowledge pages over HTTP (blueprint ``bp``, ``/knowledge/``), and the card links to them.

* ``GET /knowledge/`` and ``/knowledge/index.html`` — the index;
* ``GET /knowledge/{drugs,classes,agents,protocols}/<id>.html`` — one page each
  (``cds_server.knowledge_pages``), strict Content-Security-Policy, no script.

Access: open in demo mode and when ``KNOWLEDGE_PAGES_PUBLIC`` is set; otherwise as the
analytics (``admin.require_admin``): the bearer admin token, 403 without one configured.
Cards link to the pages (``source.url``) only where a browser can open them without a token.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from cds_server.cdshooks.errors import AdminDisabled, NotFound
from cds_server.knowledge_pages import html
from cds_server.knowledge_pages.links import PageKind, PageLinks
from cds_server.web import admin
from cds_server.web.runtime import EXTENSION, Runtime

bp = Blueprint("knowledge", __name__, url_prefix="/knowledge")


def pages_open() -> bool:
    """The pages answer without a token: demo mode, or ``KNOWLEDGE_PAGES_PUBLIC``."""
    return bool(current_app.config.get("DEMO") or current_app.config.get("KNOWLEDGE_PAGES_PUBLIC"))


def card_links() -> PageLinks | None:
    """The card-link settings for this request, or None when a clinician's browser could not
    open the pages (behind the admin token, or off): a link that answers 401 is a dead link."""
    if not pages_open():
        return None
    base = current_app.config.get("PUBLIC_URL") or request.url_root
    return PageLinks(base_url=base.rstrip("/"), index=_runtime().pages.index)


def _runtime() -> Runtime:
    runtime: Runtime = current_app.extensions[EXTENSION]
    return runtime


@bp.before_request
def _require_access() -> None:
    if pages_open():
        return
    try:
        admin.require_admin("Knowledge pages")
    except AdminDisabled:
        raise AdminDisabled(
            "Knowledge pages are disabled: set ADMIN_TOKEN (CDS_ADMIN_TOKEN) to read them with "
            "it, or KNOWLEDGE_PAGES_PUBLIC (CDS_KNOWLEDGE_PAGES_PUBLIC=true) to open them"
        ) from None


def _html(body: str) -> Response:
    response = Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = html.CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # The pages change only with the knowledge: revalidate, 304 while the version is the same.
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(_runtime().kb.version)
    response.make_conditional(request)
    return response


@bp.get("/")
@bp.get("/index.html")
def index() -> Response:
    return _html(html.render_index(_runtime().pages))


def _page(kind: PageKind, page_id: str) -> Response:
    site = _runtime().pages
    found = site.page(kind, page_id)
    if found is None:
        raise NotFound(f"No such {kind} page; the index is at /knowledge/")
    return _html(html.render_page(site, found))


@bp.get("/drugs/<drug>.html")
def drug_page(drug: str) -> Response:
    return _page("drug", drug)


@bp.get("/classes/<class_id>.html")
def class_page(class_id: str) -> Response:
    return _page("class", class_id)


@bp.get("/agents/<agent>.html")
def agent_page(agent: str) -> Response:
    return _page("agent", agent)


@bp.get("/protocols/<protocol>.html")
def protocol_page(protocol: str) -> Response:
    return _page("protocol", protocol)
