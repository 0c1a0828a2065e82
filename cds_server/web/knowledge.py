"""The knowledge pages over HTTP (blueprint ``bp``, ``/knowledge/``), and the card links to them.

* ``GET /knowledge/`` and ``/knowledge/index.html`` — the index;
* ``GET /knowledge/{drugs,classes,agents,protocols,institution-protocols}/<id>.html`` — one
  page each (``cds_server.knowledge_pages``), strict Content-Security-Policy, no script;
* ``GET /knowledge/site-<hash>/…`` — the same pages of another knowledge view: a trusted
  client's own site folder (``Site.label``), whose cards link there.

Access: open in demo mode and when ``KNOWLEDGE_PAGES_PUBLIC`` is set; otherwise as the
analytics (``admin.require_admin``): the bearer admin token, 403 without one configured.
Cards link to the pages (``source.url``) only where a browser can open them without a token.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from cds_server.cdshooks.errors import AdminDisabled, NotFound
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages import html
from cds_server.knowledge_pages.content import Site
from cds_server.knowledge_pages.links import PageKind, PageLinks
from cds_server.web import admin
from cds_server.web.runtime import EXTENSION, Runtime

bp = Blueprint("knowledge", __name__, url_prefix="/knowledge")


def pages_open() -> bool:
    """The pages answer without a token: demo mode, or ``KNOWLEDGE_PAGES_PUBLIC``."""
    return bool(current_app.config.get("DEMO") or current_app.config.get("KNOWLEDGE_PAGES_PUBLIC"))


def card_links(kb: KnowledgeBase) -> PageLinks | None:
    """The card-link settings for a caller who sees ``kb`` (the pages of that view), or None
    when a clinician's browser could not open the pages (behind the admin token, or off): a
    link that answers 401 is a dead link."""
    if not pages_open():
        return None
    runtime = _runtime()
    root = runtime.pages_root(kb)
    base = current_app.config.get("PUBLIC_URL") or request.url_root
    return PageLinks(base_url=base.rstrip("/"), index=runtime.page_sites[root].index, root=root)


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


def _site(view: str | None) -> Site:
    """The pages of the service's own view, or of the view ``site-<view>``."""
    found = _runtime().page_sites.get("" if view is None else f"site-{view}")
    if found is None:
        raise NotFound("No such knowledge view; the service's own pages are at /knowledge/")
    return found


def _html(body: str, site: Site) -> Response:
    response = Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = html.CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    # The pages change only with the knowledge: revalidate, 304 while the version is the same.
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(site.version)
    response.make_conditional(request)
    return response


@bp.get("/")
@bp.get("/index.html")
@bp.get("/site-<view>/")
@bp.get("/site-<view>/index.html")
def index(view: str | None = None) -> Response:
    site = _site(view)
    return _html(html.render_index(site), site)


def _page(kind: PageKind, page_id: str, view: str | None) -> Response:
    site = _site(view)
    found = site.page(kind, page_id)
    if found is None:
        raise NotFound(f"No such {kind} page; the index is at /knowledge/")
    return _html(html.render_page(site, found), site)


@bp.get("/drugs/<drug>.html")
@bp.get("/site-<view>/drugs/<drug>.html")
def drug_page(drug: str, view: str | None = None) -> Response:
    return _page("drug", drug, view)


@bp.get("/classes/<class_id>.html")
@bp.get("/site-<view>/classes/<class_id>.html")
def class_page(class_id: str, view: str | None = None) -> Response:
    return _page("class", class_id, view)


@bp.get("/agents/<agent>.html")
@bp.get("/site-<view>/agents/<agent>.html")
def agent_page(agent: str, view: str | None = None) -> Response:
    return _page("agent", agent, view)


@bp.get("/protocols/<protocol>.html")
@bp.get("/site-<view>/protocols/<protocol>.html")
def protocol_page(protocol: str, view: str | None = None) -> Response:
    return _page("protocol", protocol, view)


@bp.get("/institution-protocols/<protocol_id>.html")
@bp.get("/site-<view>/institution-protocols/<protocol_id>.html")
def institution_page(protocol_id: str, view: str | None = None) -> Response:
    return _page("institution", protocol_id, view)
