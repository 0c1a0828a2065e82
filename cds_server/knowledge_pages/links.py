"""Where each knowledge page lives, and the link a card's ``source.url`` gets.

Paths are the same served (under ``/knowledge/``) and written as static files
(``check-cards --html DIR``): ``index.html``, ``drugs/<id>.html``, ``classes/<id>.html``,
``agents/<id>.html``, ``protocols/<id>.html`` and, with a site overlay,
``institution-protocols/<id>.html``. A page's sections about a card topic have the topic id
(``cards/policy.yaml``) as their anchor, so a card links to exactly that part. The service
serves its own knowledge view at ``/knowledge/`` and each other view (a trusted client's own
site folder) at ``/knowledge/site-<hash>/`` (``knowledge.model.Site.label``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote

PageKind = Literal["drug", "class", "agent", "protocol", "institution"]

# URL prefix of the served pages (``cds_server/web/knowledge.py``).
PREFIX = "/knowledge"
INDEX = "index.html"
FOLDERS: dict[PageKind, str] = {
    "drug": "drugs",
    "class": "classes",
    "agent": "agents",
    "protocol": "protocols",
    "institution": "institution-protocols",
}


def page_path(kind: PageKind, page_id: str) -> str:
    """``drugs/rituximab.html``: the page's path below the pages' root."""
    return f"{FOLDERS[kind]}/{quote(page_id, safe='')}.html"


def relative(from_path: str, to_path: str) -> str:
    """The relative link from one page to another (``../classes/anti-cd20.html``)."""
    target, _, fragment = to_path.partition("#")
    link = posixpath.relpath(target, posixpath.dirname(from_path) or ".")
    return f"{link}#{fragment}" if fragment else link


@dataclass(frozen=True)
class PageIndex:
    """Which page a card about a drug, class or agent links to, and its topic anchors.

    ``pages`` maps a drug, class or agent id to its page path and the topic ids that have a
    section there. Drugs are looked up first: a card's ``drug_id`` names a drug, or
    something that is not a page (``patient``, an unidentified order).
    """

    pages: Mapping[str, tuple[str, frozenset[str]]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    def card_path(self, subject: str, topic: str) -> str | None:
        """``drugs/rituximab.html#rate-titration``; the page alone when it has no section for
        the topic; None when the subject has no page."""
        found = self.pages.get(subject)
        if found is None:
            return None
        path, topics = found
        return f"{path}#{topic}" if topic in topics else path


@dataclass(frozen=True)
class PageLinks:
    """What ``render`` needs to give a card its ``source.url``: the absolute base URL of the
    service (``PUBLIC_URL``, else the request's root URL), the page index of the caller's
    knowledge view, and that view's folder below ``/knowledge/`` ("" for the service's own)."""

    base_url: str
    index: PageIndex
    root: str = ""

    def card_url(self, subject: str, topic: str) -> str | None:
        path = self.index.card_path(subject, topic)
        if not path:
            return None
        folder = f"{PREFIX}/{self.root}" if self.root else PREFIX
        return f"{self.base_url.rstrip('/')}{folder}/{path}"
