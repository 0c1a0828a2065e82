"""What the request handlers share, built once per app: the knowledge and the FHIR policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from cds_server.fhirdata.client import FhirSettings, FhirTransport
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.content import Site, build_site

# Key of the Runtime in ``app.extensions``.
EXTENSION = "cds_server"


@dataclass(frozen=True)
class Runtime:
    """What request handlers need, built once at start-up."""

    kb: KnowledgeBase
    fhir: FhirSettings
    # Request threads and keep-alive connections to FHIR servers (created per process).
    transport: FhirTransport = field(default_factory=FhirTransport)

    @cached_property
    def pages(self) -> Site:
        """The knowledge pages and their card-link index, built at first use (about 20 ms:
        not paid by an app that never serves a page or links a card)."""
        return build_site(self.kb)
