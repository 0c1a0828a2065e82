"""What the request handlers share, built once per app: the knowledge and the FHIR policy."""

from __future__ import annotations

from dataclasses import dataclass, field

from cds_server.fhirdata.client import FhirSettings, FhirTransport
from cds_server.knowledge.model import KnowledgeBase

# Key of the Runtime in ``app.extensions``.
EXTENSION = "cds_server"


@dataclass(frozen=True)
class Runtime:
    """What request handlers need, built once at start-up."""

    kb: KnowledgeBase
    fhir: FhirSettings
    # Request threads and keep-alive connections to FHIR servers (created per process).
    transport: FhirTransport = field(default_factory=FhirTransport)
