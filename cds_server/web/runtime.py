"""What the request handlers share, built once per app: the knowledge views, the FHIR policy
and the client profiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from cds_server.fhirdata.client import FhirSettings, FhirTransport
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.content import Site, build_site
from cds_server.model import Coding
from cds_server.render.profiles import PROFILE_NAMES, ClientProfile


def _order_codes(kb: KnowledgeBase) -> Mapping[str, tuple[Coding, ...]]:
    """The site's own order codes of a knowledge view (none without a site overlay)."""
    return kb.site.order_codes if kb.site is not None else MappingProxyType({})


# Key of the Runtime in ``app.extensions``.
EXTENSION = "cds_server"


@dataclass(frozen=True)
class Runtime:
    """What request handlers need, built once at start-up.

    ``kb`` is the knowledge as the service's own site folder (``SITE_DIR``) has it, or the
    label knowledge alone; ``sites`` holds the view of each trusted client's own site folder.
    """

    kb: KnowledgeBase
    fhir: FhirSettings
    # Request threads and keep-alive connections to FHIR servers (created per process).
    transport: FhirTransport = field(default_factory=FhirTransport)
    sites: Mapping[str, KnowledgeBase] = field(default_factory=lambda: MappingProxyType({}))

    def kb_for(self, site: str | None) -> KnowledgeBase:
        """The knowledge a caller sees: its own site folder's view, else the service's."""
        return self.sites[site] if site is not None else self.kb

    @cached_property
    def profiles(self) -> Mapping[tuple[str, str], ClientProfile]:
        """How cards are shaped, by (knowledge version, profile name): each knowledge view
        brings its site's own order codes (built once, not per call)."""
        return MappingProxyType(
            {
                (kb.version, name): ClientProfile(name, _order_codes(kb))
                for kb in (self.kb, *self.sites.values())
                for name in PROFILE_NAMES
            }
        )

    def profile_for(self, kb: KnowledgeBase, name: str) -> ClientProfile:
        """The profile ``name`` for a caller who sees ``kb``."""
        return self.profiles[(kb.version, name)]

    @cached_property
    def page_sites(self) -> Mapping[str, Site]:
        """The knowledge pages of each view and their card-link index, by folder below
        ``/knowledge/``: "" the service's own view, ``site-<hash>`` (``Site.label``) each
        trusted client's own site view (and the service's own, if it has a site overlay).
        Built at first use (about 20 ms a view: not paid by an app that never serves a page
        or links a card)."""
        own = build_site(self.kb)
        sites = {"": own}
        if self.kb.site is not None:
            sites[self.kb.site.label] = own
        for kb in self.sites.values():
            root = self.pages_root(kb)
            if root not in sites:
                sites[root] = build_site(kb)
        return MappingProxyType(sites)

    @property
    def pages(self) -> Site:
        """The pages of the service's own knowledge view."""
        return self.page_sites[""]

    def pages_root(self, kb: KnowledgeBase) -> str:
        """The folder below ``/knowledge/`` of the pages of ``kb`` (a view of this runtime):
        "" for the service's own, ``site-<hash>`` for a trusted client's own site view."""
        if kb is self.kb or kb.site is None:
            return ""
        return kb.site.label
