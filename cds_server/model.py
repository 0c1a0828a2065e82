"""Plain data objects that cross stage boundaries (FHIR data → recognition → reasoning → render).

This module imports nothing from the package and nothing from Flask, requests or
fhir.resources: rules read these frozen dataclasses, never raw JSON or HTTP requests.
Missing data is represented explicitly (``None`` or a ``*_known`` flag), never as False.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

Indicator = Literal["info", "warning", "critical"]
Evidence = Literal["verified", "secondary", "unverified"]
# How a card's source is tagged: a knowledge fact's evidence level, or ``institution`` for a
# site's own approved protocol (a site overlay: ``cds_server.knowledge.sitefile``).
SourceTag = Literal["verified", "secondary", "unverified", "institution"]
# What an order's medicine is to the rules: a knowledge-base drug, or a premedication/rescue agent.
MedicineKind = Literal["drug", "agent"]

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
SNOMED = "http://snomed.info/sct"
NDC = "http://hl7.org/fhir/sid/ndc"
UCUM = "http://unitsofmeasure.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
# The same code systems by OID, as Epic sends diagnoses (HL7 terminology: ICD-10-CM
# 2.16.840.1.113883.6.90, SNOMED CT 2.16.840.1.113883.6.96).
ICD10CM_OID = "urn:oid:2.16.840.1.113883.6.90"
SNOMED_OID = "urn:oid:2.16.840.1.113883.6.96"
MINUTES_PER_HOUR = 60.0
DAYS_PER_WEEK = 7
MICROGRAMS_PER_MG = 1000.0
MICROGRAM_UNITS = frozenset({"µg", "ug", "mcg"})
# Presentation limits of "could not check" cards (not clinical facts): codes listed per order,
# and the longest order reference used as-is in a card key before it is hashed (its hash length).
CODES_SHOWN_PER_ORDER = 5
ORDER_KEY_MAX = 50
ORDER_KEY_HASH = 16

# SNOMED CT fully specified names end in a semantic tag: "Anaphylaxis (disorder)".
SEMANTIC_TAG = re.compile(
    r"\s*\((?:disorder|finding|qualifier value|morphologic abnormality|substance|product|"
    r"medicinal product|medicinal product form|clinical drug|procedure|observable entity|"
    r"situation|event|body structure|organism|physical object|regime/therapy|"
    r"record artifact|environment|attribute|specimen|social concept|occupation|person|"
    r"life style|special concept|physical force|cell|cell structure|real clinical drug)\)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Coding:
    """A code from a code system (FHIR Coding, reduced)."""

    system: str | None
    code: str | None
    display: str | None = None


@dataclass(frozen=True)
class Quantity:
    """A value with a unit as written (``mg``, ``mg/kg``, ``mL/h``, ``mg/h``, ``h``, ``min``)."""

    value: float
    unit: str


@dataclass(frozen=True)
class UnreadElement:
    """An element of an order that could not be read: its path and why (never its value)."""

    path: str
    reason: str


@dataclass(frozen=True)
class UnreadableDraft:
    """A ``draftOrders`` entry from which no MedicationRequest could be built.

    ``index`` is its 0-based position in ``draftOrders``; ``ref`` is ``Type/id`` when it has one.
    """

    index: int
    resource_type: str | None
    ref: str | None
    reason: str
    selected: bool = True


@dataclass(frozen=True)
class MedicationOrder:
    """One MedicationRequest, flattened from FHIR (a draft order or a history entry).

    ``resource`` is the original JSON object; it is opaque to rules and read only by
    the renderer, which needs the whole resource to propose an ``update`` action.
    """

    ref: str | None
    status: str | None
    intent: str | None
    codings: tuple[Coding, ...] = ()
    ingredient_codings: tuple[Coding, ...] = ()
    texts: tuple[str, ...] = ()
    dose: Quantity | None = None
    rate: Quantity | None = None
    volume: Quantity | None = None
    route: str | None = None
    dosage_text: str | None = None
    authored_on: datetime | None = None
    # When the dose is to be given, if the order says (``dosageInstruction.timing.event`` or
    # ``timing.repeat.boundsPeriod.start``); else the order's date is taken.
    planned: datetime | None = None
    # Texts that may place the dose in its plan (basedOn display, groupIdentifier, timing code
    # text, notes), read for cycle and day; draft orders only (the dose being placed).
    plan_texts: tuple[str, ...] = ()
    # Days between doses when the order states a repeat of once per period in days or weeks
    # (``dosageInstruction.timing.repeat``: "every 2 weeks" → 14); else None.
    repeat_days: float | None = None
    is_draft: bool = False
    selected: bool = True
    # "administration" for a MedicationAdministration read as a dose given (its effective time
    # in ``authored_on``); ``fulfils`` is then the MedicationRequest reference it carried out.
    source: Literal["request", "administration"] = "request"
    fulfils: str | None = None
    # An administration's ``statusReason`` (why not given, why stopped: e.g. a reaction).
    status_reason_codings: tuple[Coding, ...] = ()
    status_reason_texts: tuple[str, ...] = ()
    # Elements that could not be read (invalid, non-finite or absurd): their values are None.
    unread: tuple[UnreadElement, ...] = ()
    # 0-based position in ``draftOrders`` (draft orders only), to name an order without an id.
    draft_index: int | None = None
    # The order's indication (draft orders only): the codings of its ``reasonCode`` and of the
    # Conditions its ``reasonReference`` names that the request carries.
    reasons: tuple[Coding, ...] = ()
    resource: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Reaction:
    """One AllergyIntolerance.reaction entry."""

    manifestations: tuple[Coding, ...] = ()
    manifestation_texts: tuple[str, ...] = ()
    severity: str | None = None
    onset: datetime | None = None
    description: str | None = None


@dataclass(frozen=True)
class Allergy:
    """One AllergyIntolerance, flattened from FHIR."""

    ref: str | None
    clinical_status: str | None
    verification_status: str | None
    criticality: str | None
    category: tuple[str, ...] = ()
    codings: tuple[Coding, ...] = ()
    texts: tuple[str, ...] = ()
    reactions: tuple[Reaction, ...] = ()
    recorded: datetime | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Weight:
    """The latest body weight, converted to kilograms."""

    kg: float
    effective: datetime | None = None


@dataclass(frozen=True)
class PatientRecord:
    """Everything the rules may read about one patient for one hook call.

    ``*_known`` is False when the data could be neither prefetched nor fetched:
    rules must then say what they could not check rather than assume "none".
    ``warnings`` describe what could not be read; they never contain patient data.
    """

    patient_id: str
    birth_date: date | None = None
    weight: Weight | None = None
    draft_orders: tuple[MedicationOrder, ...] = ()
    # draftOrders entries no MedicationRequest could be built from (reported, never dropped).
    unreadable_drafts: tuple[UnreadableDraft, ...] = ()
    medication_history: tuple[MedicationOrder, ...] = ()
    # History orders left unread: those no rule reads (``record.build_record``).
    history_unread: int = 0
    allergies: tuple[Allergy, ...] = ()
    # MedicationAdministrations (optional prefetch key): False when the EHR gave none and none
    # could be fetched; rules then rely on MedicationRequest history alone.
    administrations: tuple[MedicationOrder, ...] = ()
    administrations_known: bool = False
    # Administrations left unread: those for medicines that are neither a knowledge-base drug
    # nor a premedication/rescue agent (``record.with_administrations``).
    administrations_unread: int = 0
    history_known: bool = True
    allergies_known: bool = True
    weight_known: bool = True
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class HookCall:
    """The protocol facts of one hook invocation that reasoning may need."""

    hook: str
    service_id: str
    hook_instance: str
    patient_id: str
    user_id: str | None = None
    encounter_id: str | None = None
    now: datetime | None = None
    # Whose ids ``patient_id`` and ``encounter_id`` are (``auth.caller_namespace``): two EHRs
    # may both have a patient "123". "" when the caller is not authenticated.
    caller: str = ""


@dataclass(frozen=True)
class RecognisedOrder:
    """An order matched to a knowledge-base drug, and how it was matched."""

    order: MedicationOrder
    drug_id: str
    matched_by: str


@dataclass(frozen=True)
class RecognisedAllergy:
    """An allergy matched to a drug or a drug class of the knowledge base."""

    allergy: Allergy
    target_kind: Literal["drug", "class"]
    target_id: str
    matched_by: str


@dataclass(frozen=True)
class Situation:
    """What the rules evaluate: the call, the record, and the recognised data.

    ``orders``: recognised draft orders; ``history``: recognised history orders;
    ``agents``: (order, agent id) for premedication/rescue agents among the draft orders and
    the history orders in force.
    """

    call: HookCall
    record: PatientRecord
    orders: tuple[RecognisedOrder, ...]
    history: tuple[RecognisedOrder, ...]
    allergies: tuple[RecognisedAllergy, ...]
    now: datetime
    agents: tuple[tuple[MedicationOrder, str], ...] = ()
    # Recognised MedicationAdministrations (doses given), when the EHR provides them.
    administrations: tuple[RecognisedOrder, ...] = ()
    # Per-call memo of values derived from this situation (dose positions, treatment
    # courses), filled lazily by the rules that need them; never compared, never shown, never
    # copied (not an __init__ argument: dataclasses.replace gives a new situation its own).
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False, init=False)


@dataclass(frozen=True)
class Citation:
    """A fact's provenance as shown on a card."""

    title: str
    url: str | None
    label_version: str | None
    evidence: SourceTag
    jurisdiction: str | None = None


@dataclass(frozen=True)
class ProposedMedication:
    """A draft MedicationRequest to create (e.g. a missing premedication).

    ``agent_id``: the knowledge's agent (``cards/agents/``), the key of a site's own order
    codes for it (an Epic preference-list item).
    """

    label: str
    agent_name: str
    coding: Coding | None
    dose_low: Quantity | None
    dose_high: Quantity | None
    route: str | None
    timing_text: str
    recommended: bool
    for_order_ref: str | None = None
    agent_id: str | None = None


@dataclass(frozen=True)
class ProposedRateChange:
    """Replace the rate of a draft order (an ``update`` action with the whole resource)."""

    label: str
    order: MedicationOrder
    new_rate: Quantity
    recommended: bool = True


# What a suggested ServiceRequest orders, as a site names it when it maps its own order codes
# (Epic preference-list or order-set items) to ours: the allergy/immunology referral or a
# monitoring kind of the knowledge (``monitoring[].kind`` in cards/drugs/).
# Epic's code system for a site's preference-list items in suggested orders.
EPIC_PREFERENCE_LIST_ITEM = "urn:com.epic.cdshooks.action.code.system.preference-list-item"
REFERRALS = ("allergy-immunology", "hospitalization", "observation", "proximity", "vital-signs")


@dataclass(frozen=True)
class ProposedServiceRequest:
    """A text-coded ServiceRequest to create (admission, observation, referral).

    ``referral``: what it orders, one of ``REFERRALS`` (the key of a site's own order codes
    for it).
    """

    label: str
    text: str
    coding: Coding | None = None
    recommended: bool = True
    for_order_ref: str | None = None
    referral: str | None = None


ProposedAction = ProposedMedication | ProposedRateChange | ProposedServiceRequest


@dataclass(frozen=True)
class Finding:
    """One rule's conclusion about one drug problem, before it becomes a card.

    ``topic`` names the rule (stable; used for feedback and de-duplication).
    ``points`` are Markdown paragraphs or bullets built from knowledge text;
    ``table`` is an optional header row plus rows, ``table_notes`` the lines that present it
    (what it was computed from; shown with it, outside the detail budget). ``unknowns``
    lists what the rule could not check. ``critical_eligible`` is True only when every fact
    that drove a critical indicator is verified.
    """

    topic: str
    drug_id: str
    drug_name: str
    indicator: Indicator
    headline: str
    points: tuple[str, ...] = ()
    table: tuple[tuple[str, ...], ...] = ()
    table_notes: tuple[str, ...] = ()
    citations: tuple[Citation, ...] = ()
    actions: tuple[ProposedAction, ...] = ()
    unknowns: tuple[str, ...] = ()
    override_reasons: tuple[str, ...] = ()
    order_ref: str | None = None
