"""The CDS services this server offers, declared as data (HAPI ``@CdsService`` style).

Every discovery entry has its own id (clients such as the CDS Hooks Sandbox and Epic key a
service by its URL, so two entries sharing an id collapse into one): ``infusion-safety-select``
(order-select) and ``infusion-safety-sign`` (order-sign). The former shared id
``infusion-safety`` still answers both hooks for existing registrations but is deprecated and
not listed, so calls are routed by id *and* hook. The order services form one *family*: the
ordering-session de-duplication and snoozes never depend on which of these ids was called.
Prefetch templates use only root-level context tokens (2.0 §prefetch-tokens); each key says
whether the service can work without it. Ids and keys are stable identifiers: feedback and
de-duplication depend on them, so never change their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds_server.cdshooks.errors import HookMismatch, UnknownService
from cds_server.fhirdata.prefetch import PrefetchSpec
from cds_server.knowledge.model import KnowledgeBase

PATIENT = "patient"
MEDICATIONS = "medications"
ALLERGIES = "allergies"
WEIGHT = "weight"
ADMINISTRATIONS = "administrations"

BODY_WEIGHT = "http://loinc.org|29463-7"

# Root-level primitive context fields that may appear in tokens, per hook (Hook Library STU1).
TOKEN_FIELDS: dict[str, frozenset[str]] = {
    "patient-view": frozenset({"userId", "patientId", "encounterId"}),
    "order-select": frozenset({"userId", "patientId", "encounterId"}),
    "order-sign": frozenset({"userId", "patientId", "encounterId"}),
}

PREFETCH: tuple[PrefetchSpec, ...] = (
    PrefetchSpec(PATIENT, "Patient/{{context.patientId}}", required=False),
    PrefetchSpec(
        MEDICATIONS,
        # Every status: prior doses decide first vs subsequent infusion.
        "MedicationRequest?patient={{context.patientId}}&_count=100",
        required=True,
        include="MedicationRequest:medication",
    ),
    PrefetchSpec(ALLERGIES, "AllergyIntolerance?patient={{context.patientId}}", required=True),
    PrefetchSpec(
        WEIGHT,
        f"Observation?patient={{{{context.patientId}}}}&code={BODY_WEIGHT}&_sort=-date&_count=1",
        required=False,
    ),
    PrefetchSpec(
        ADMINISTRATIONS,
        # Doses given, every status (not-done and entered-in-error are dropped when read).
        "MedicationAdministration?patient={{context.patientId}}&_count=100",
        required=False,
        include="MedicationAdministration:medication",
        # Most EHRs do not send it: its absence alone is no news for the cards.
        quiet_when_absent=True,
    ),
)

_USAGE = (
    "Send prefetch for the keys 'medications' (all statuses, for prior doses) and 'allergies' "
    "(required), and 'patient', 'weight' and 'administrations' (optional; doses given); or "
    "send fhirServer with fhirAuthorization granting read access to Patient, "
    "MedicationRequest, Medication, AllergyIntolerance, Observation and "
    "MedicationAdministration for this patient. Without either the service answers "
    "412. Draft orders are read as FHIR R4 MedicationRequests; other order types are ignored. "
    "Knowledge version {version}."
)


@dataclass(frozen=True)
class Service:
    """One (id, hook) entry of the discovery document."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: tuple[PrefetchSpec, ...] = PREFETCH
    # The ids answering for the same guidance (ordering session, snoozes): the family name.
    family: str = ""
    # Deprecated ids answer but are not listed in discovery (ids there must be unique).
    listed: bool = True

    def discovery(self, kb: KnowledgeBase) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "usageRequirements": _USAGE.format(version=kb.version),
        }
        if self.prefetch:
            entry["prefetch"] = {p.key: p.template for p in self.prefetch}
        return entry


ORDER_SELECT_ID = "infusion-safety-select"
ORDER_SIGN_ID = "infusion-safety-sign"
DEPRECATED_ORDER_ID = "infusion-safety"
ORDER_FAMILY = "infusion-safety"

_ORDER_DESCRIPTION = (
    "Checks draft infusion orders (monoclonal antibodies, bispecific T-cell engagers, taxanes "
    "and other agents in the knowledge base) for infusion-reaction safety: required "
    "premedication, first-infusion rate titration, monitoring, prior hypersensitivity "
    "reactions and cytokine-release readiness. Focuses on the selected orders at order-select "
    "and on all draft orders at order-sign."
)

SERVICES: tuple[Service, ...] = (
    Service(
        id="infusion-risk-summary",
        hook="patient-view",
        title="Infusion reaction risk summary",
        description=(
            "Summarises infusion-reaction risk for the patient's current and planned infusions: "
            "documented reactions to infusion agents and what to prepare before the next dose."
        ),
    ),
    Service(
        id=ORDER_SELECT_ID,
        hook="order-select",
        title="Infusion reaction safety check (order-select)",
        description=_ORDER_DESCRIPTION,
        family=ORDER_FAMILY,
    ),
    Service(
        id=ORDER_SIGN_ID,
        hook="order-sign",
        title="Infusion reaction safety check (order-sign)",
        description=_ORDER_DESCRIPTION,
        family=ORDER_FAMILY,
    ),
    # Deprecated: the former id shared by both order hooks (one discovery id for two entries
    # is lost by clients that key services by URL). Kept answering for existing registrations.
    Service(
        id=DEPRECATED_ORDER_ID,
        hook="order-select",
        title="Infusion reaction safety check",
        description=_ORDER_DESCRIPTION,
        family=ORDER_FAMILY,
        listed=False,
    ),
    Service(
        id=DEPRECATED_ORDER_ID,
        hook="order-sign",
        title="Infusion reaction safety check",
        description=_ORDER_DESCRIPTION,
        family=ORDER_FAMILY,
        listed=False,
    ),
)


def discovery(kb: KnowledgeBase) -> dict[str, Any]:
    """The discovery document: listed services, sorted by id then hook (deterministic)."""
    ordered = sorted((s for s in SERVICES if s.listed), key=lambda s: (s.id, s.hook))
    return {"services": [s.discovery(kb) for s in ordered]}


def ids() -> frozenset[str]:
    """Every id that answers, listed or deprecated."""
    return frozenset(s.id for s in SERVICES)


def family(service_id: str) -> str:
    """The family of ``service_id``: ids answering for the same guidance share it."""
    for s in SERVICES:
        if s.id == service_id:
            return s.family or s.id
    return service_id


def deprecated(service_id: str) -> bool:
    """Whether ``service_id`` answers only for existing registrations (not in discovery)."""
    return any(s.id == service_id for s in SERVICES) and not any(
        s.id == service_id and s.listed for s in SERVICES
    )


def require(service_id: str) -> None:
    """Raise ``UnknownService`` (404) unless some service has this id."""
    if service_id not in ids():
        raise UnknownService(f"No CDS service with id '{_safe(service_id)}'")


def find(service_id: str, hook: str | None) -> Service:
    """The service for (id, hook); ``UnknownService`` (404) or ``HookMismatch`` (400)."""
    require(service_id)
    candidates = [s for s in SERVICES if s.id == service_id]
    for service in candidates:
        if service.hook == hook:
            return service
    hooks = ", ".join(sorted(s.hook for s in candidates))
    raise HookMismatch(
        f"Service '{service_id}' handles the hook(s) {hooks}, not '{_safe(hook or '')}'",
        fields={"hook": [f"must be one of: {hooks}"]},
    )


def _safe(text: str) -> str:
    """Echo client text only in a short, printable form."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return cleaned[:64] + ("…" if len(cleaned) > 64 else "")
