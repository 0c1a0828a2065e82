"""What the request handlers share, built once per app: the knowledge views and the FHIR policy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cds_server.fhirdata.client import FhirSettings, FhirTransport
from cds_server.knowledge.model import KnowledgeBase

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
