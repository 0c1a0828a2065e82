"""What the request handlers share, built once per app: the knowledge, the FHIR policy and
the client profiles."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from cds_server.fhirdata.client import FhirSettings, FhirTransport
from cds_server.knowledge.model import KnowledgeBase
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
