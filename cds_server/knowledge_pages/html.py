"""The knowledge pages as HTML (Jinja, every text autoescaped) and as a static folder.

The same bytes are served under ``/knowledge/`` and written by ``cds-server check-cards
--html DIR``: links between pages are relative, the style is inline and allowed by its hash
in the Content-Security-Policy, and nothing is loaded from elsewhere (no script, no image, no
font). Only http(s) URLs from the knowledge become links.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.content import Overlays, Page, Site, build_site
from cds_server.knowledge_pages.links import INDEX, relative

STYLE = resources.files("cds_server.knowledge_pages").joinpath("templates/knowledge/style.css")
CSS = STYLE.read_text(encoding="utf-8")
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
# In the page (a static copy opened from disk has no headers) and, served, as a header too
# (frame-ancestors only works as a header).
CSP_META = (
    f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src 'none'; base-uri 'none'; "
    "form-action 'none'"
)
CSP = f"{CSP_META}; frame-ancestors 'none'"

# Characters a URL may hold as they are; anything else (a quote, a space) is percent-encoded.
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"


def safe_url(url: str | None) -> str | None:
    """An http(s) URL as a valid link target (e.g. openFDA's ``search=…:"Rituxan"`` with its
    quotes percent-encoded), else None: a knowledge file cannot inject a script link."""
    if not url or not url.startswith(("https://", "http://")):
        return None
    return quote(url, safe=_URL_SAFE)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("cds_server.knowledge_pages", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["safe_url"] = safe_url
    env.globals["relative"] = relative
    env.globals["css"] = Markup(CSS)  # our own stylesheet, never knowledge text
    env.globals["csp"] = CSP_META
    return env


ENV = _environment()


def render_index(site: Site) -> str:
    return ENV.get_template("knowledge/index.html").render(site=site, here=INDEX)


def render_page(site: Site, page: Page, overlays: Overlays | None = None) -> str:
    """One page. Its site overlay entries (``page.overlays``) and ``overlays`` (per section
    anchor, more entries) are shown each beside the fact it ``replaces`` (or at the section's
    top)."""
    shown = dict(page.overlays)
    for section, entries in (overlays or {}).items():
        shown[section] = (*shown.get(section, ()), *entries)
    return ENV.get_template("knowledge/page.html").render(
        site=site, page=page, here=page.path, overlays=shown
    )


def write_site(kb: KnowledgeBase, folder: Path) -> list[Path]:
    """Write ``index.html`` and one file per page into ``folder``; return the files written."""
    site = build_site(kb)
    written = [folder / INDEX]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INDEX).write_text(render_index(site), encoding="utf-8")
    for page in site.pages:
        target = folder / page.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render_page(site, page), encoding="utf-8")
        written.append(target)
    return written
