"""What the request handlers share, built once per app: the knowledge, the FHIR policy and
the client profiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType

from cds_server.fhirdata.client import FhirSettings, FhirTransport
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.content import Site, build_site
from cds_server.render.profiles import PROFILE_NAMES, ClientProfile


def _profiles() -> Mapping[str, ClientProfile]:
    return MappingProxyType({name: ClientProfile(name) for name in PROFILE_NAMES})


# Key of the Runtime in ``app.extensions``.
EXTENSION = "cds_server"


@dataclass(frozen=True)
class Runtime:
    """What request handlers need, built once at start-up."""

    kb: KnowledgeBase
    fhir: FhirSettings
    # Request threads and keep-alive connections to FHIR servers (created per process).
    transport: FhirTransport = field(default_factory=FhirTransport)
    # How cards are shaped for each kind of client, by profile name (built once, not per call).
    profiles: Mapping[str, ClientProfile] = field(default_factory=_profiles)

    @cached_property
    def pages(self) -> Site:
        """The knowledge pages and their card-link index, built at first use (about 20 ms:
        not paid by an app that never serves a page or links a card)."""
        return build_site(self.kb)
