"""One hook call, end to end: the only place where one stage calls the next.

``parse → route → resolve prefetch → build record → recognise → reason → suppress → render → dump``

Like HAPI's ``CdsServiceRegistryImpl.callService``, the pipeline both validates the request
and encodes the response, so every caller (the HTTP API, ``cds-server explain``, tests,
library users) gets the same checks. ``now`` and the uuid factory are injected so that the
same request with the same knowledge gives the same cards.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cds_server import reasoning, recognition, suppression
from cds_server.cdshooks import protocol, services
from cds_server.fhirdata import prefetch, record
from cds_server.fhirdata.client import FhirSettings
from cds_server.fhirdata.parse import resources_of
from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.links import PageLinks
from cds_server.model import Finding, HookCall, PatientRecord, Situation
from cds_server.reasoning.orders import history_order_read
from cds_server.render.cards import card, prepare
from cds_server.render.profiles import GENERIC, ClientProfile


def _uuid4() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True)
class Evaluation:
    """Every intermediate result of one call (for ``explain`` and tests)."""

    request: protocol.HookRequest
    service: services.Service
    resolved: prefetch.Resolved
    record: PatientRecord
    situation: Situation
    findings: tuple[Finding, ...]
    response: dict[str, Any]
    # The cards as the card log records them, and what snooze/de-duplication held back.
    issued: tuple[suppression.IssuedCard, ...] = ()
    suppressed: tuple[suppression.Suppressed, ...] = ()


def run(
    body: Mapping[str, Any],
    *,
    service_id: str,
    kb: KnowledgeBase,
    settings: FhirSettings | None = None,
    now: datetime | None = None,
    new_uuid: Callable[[], str] = _uuid4,
    client_factory: prefetch.ClientFactory | None = None,
    history: suppression.GuidanceHistory | None = None,
    caller: str = "",
    page_links: PageLinks | None = None,
    profile: ClientProfile = GENERIC,
) -> Evaluation:
    """Evaluate one hook request body against the service ``service_id``.

    ``history`` (read-only; ``cds_server.store`` in the app) lets snoozed and already-shown
    non-critical cards be held back; without it every card is shown. ``caller``: whose patient
    ids the request's are (``HookCall.caller``). ``page_links``: the base URL and index of
    the knowledge pages, for each card's ``source.url`` (None: no link). ``profile``: the
    calling client's kind, which shapes the cards (``render.profiles``; spec-pure CDS Hooks
    2.0 by default).

    Raises ``CdsError`` subclasses: ``UnknownService`` (404), ``InvalidRequest`` and
    ``HookMismatch`` (400), ``PrefetchUnavailable`` (412).
    """
    services.require(service_id)
    request = protocol.load_hook_request(body)
    service = services.find(service_id, request.hook)
    settings = settings or FhirSettings()
    now = now or datetime.now(UTC)
    context = request.context
    draft_resources = record.draft_order_resources(context.get("draftOrders"))

    resolved = prefetch.resolve(
        service.prefetch,
        context=context,
        prefetch=request.prefetch,
        fhir_server=request.fhir_server,
        fhir_authorization=(
            request.fhir_authorization.as_mapping() if request.fhir_authorization else None
        ),
        settings=settings,
        extra_resources=draft_resources,
        client_factory=client_factory,
    )
    recogniser = recognition.recogniser_for(kb)
    patient_record = record.build_record(
        patient_id=context["patientId"],
        draft_orders=context.get("draftOrders"),
        selections=context.get("selections") if request.hook == "order-select" else None,
        patient=resolved.data.get(services.PATIENT),
        medications=resolved.data.get(services.MEDICATIONS),
        allergies=resolved.data.get(services.ALLERGIES),
        weight=resolved.data.get(services.WEIGHT),
        medication_index=resolved.medications,
        warnings=resolved.warnings,
        reads_history_order=lambda terms, status: history_order_read(
            recogniser.medicine_kind(*terms), status
        ),
        carried=[
            *draft_resources,
            *(r for value in (request.prefetch or {}).values() for r in resources_of(value)),
        ],
    )
    patient_record = record.with_administrations(
        patient_record,
        resolved.data.get(services.ADMINISTRATIONS),
        resolved.medications,
        reads=lambda terms: recogniser.medicine_kind(*terms) is not None,
    )

    ordered = recognition.recognise_orders(patient_record.draft_orders, kb)
    taken = recognition.recognise_orders(patient_record.medication_history, kb)
    situation = Situation(
        call=HookCall(
            hook=request.hook,
            service_id=service.id,
            hook_instance=request.hook_instance,
            patient_id=context["patientId"],
            user_id=context.get("userId"),
            encounter_id=context.get("encounterId"),
            now=now,
            caller=caller,
        ),
        record=patient_record,
        orders=ordered,
        history=taken,
        allergies=recognition.recognise_allergies(patient_record.allergies, kb),
        now=now,
        agents=recognition.recognise_agents(
            (*patient_record.draft_orders, *patient_record.medication_history),
            kb,
            drugs=(*ordered, *taken),  # already recognised: not recognised twice
        ),
        # Doses given: kept apart from ``history`` (the treatment-course rule merges them).
        administrations=recognition.recognise_orders(patient_record.administrations, kb),
    )
    findings = tuple(reasoning.run(situation, kb))
    ready = prepare(findings)  # merged, gated and sorted once, as the cards show them
    held = (
        suppression.decide(ready, situation.call, history.prior_guidance(situation.call, now), now)
        if history is not None
        else {}
    )
    shown = [f for f in ready if (f.topic, f.drug_id) not in held]
    cards = [
        card(
            f,
            kb,
            new_uuid=new_uuid,
            patient_id=context["patientId"],
            warnings=patient_record.warnings,
            page_links=page_links,
            profile=profile,
        )
        for f in shown
    ]
    return Evaluation(
        request=request,
        service=service,
        resolved=resolved,
        record=patient_record,
        situation=situation,
        findings=findings,
        response=protocol.dump_response(cards),
        issued=suppression.issued_cards(zip(shown, cards, strict=True)),
        suppressed=tuple(held.values()),
    )


def evaluate(
    body: Mapping[str, Any],
    *,
    service_id: str,
    kb: KnowledgeBase,
    settings: FhirSettings | None = None,
    now: datetime | None = None,
    new_uuid: Callable[[], str] = _uuid4,
    client_factory: prefetch.ClientFactory | None = None,
) -> dict[str, Any]:
    """The CDS Hooks response body (``{"cards": [...]}``) for one hook request body."""
    return run(
        body,
        service_id=service_id,
        kb=kb,
        settings=settings,
        now=now,
        new_uuid=new_uuid,
        client_factory=client_factory,
    ).response
