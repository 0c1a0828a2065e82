"""Builds the ``PatientRecord`` of one hook call from the context and the resolved data.

* ``draftOrders``: a Bundle with or without ``type``, with or without ``entry``; other order
  types (ServiceRequest, NutritionOrder, DeviceRequest…) are skipped with a note. A draft
  MedicationRequest with invalid elements is kept: what can be read is read and the rest is
  listed in ``MedicationOrder.unread``; an entry no MedicationRequest can be built from is
  kept in ``PatientRecord.unreadable_drafts`` (the ``unchecked`` rule reports both). At
  order-select only the orders named in ``selections`` are ``selected``. A draft order's
  indication is its ``reasonCode`` and the Conditions its ``reasonReference`` names that the
  request carries (contained, in ``draftOrders`` or in any prefetch value: Epic's prefetch
  may carry the encounter diagnoses); a reference to a Condition not carried is not fetched.
* Medication history: every MedicationRequest of the ``medications`` data, minus those that
  are also draft orders (a client may send an existing order as the draft, e.g. re-signing),
  and minus those no rule reads (``reads_history_order``, when given: e.g. medicines no rule
  is about, or a premedication no longer in force), told from their medication and status
  alone; those are neither checked nor read (counted).
* Allergies, the latest body weight and the birth date, each with a ``*_known`` flag.
* MedicationAdministrations (``with_administrations``, optional data): doses given, read like
  orders; ``not-done`` and ``entered-in-error`` ones count for nothing and are dropped, those
  for medicines no rule is about are skipped unread (counted).

Parsing goes through ``parse.py`` (tolerant R4B); warnings never carry patient data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from cds_server.fhirdata.parse import (
    MODEL_FAILURES,
    NOT_GIVEN,
    MedicationTerms,
    ParseLog,
    birth_date,
    condition_ref_key,
    latest_weight,
    medication_ref_key,
    parse_allergy,
    parse_condition,
    parse_medication,
    parse_medication_administration,
    parse_medication_request,
    resources_of,
    unchecked_medication_terms,
)
from cds_server.fhirdata.prefetch import KeyData
from cds_server.model import (
    Allergy,
    MedicationOrder,
    PatientRecord,
    UnreadableDraft,
    UnreadElement,
)

_UNKNOWN = KeyData((), False, "unavailable")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,256}$")  # Epic's ids are longer than FHIR's 64
T = TypeVar("T")


def _safely(
    log: ParseLog, where: str, parse: Callable[..., T | None], *args: Any, **kwargs: Any
) -> T | None:
    """Run one parse; a resource that makes the model library fail is skipped with a warning."""
    try:
        return parse(*args, **kwargs)
    except MODEL_FAILURES:
        log.warnings.append(f"{where} skipped: could not be parsed as FHIR R4")
        return None


def draft_order_resources(draft_orders: Any) -> list[Mapping[str, Any]]:
    """The resources of a ``draftOrders`` value (Bundle, single resource or nothing)."""
    return resources_of(draft_orders) if isinstance(draft_orders, Mapping) else []


# Order types of CDS Hooks' draftOrders that are not medication orders: not evaluated (noted).
OTHER_ORDER_TYPES = frozenset(
    {
        "ServiceRequest",
        "NutritionOrder",
        "DeviceRequest",
        "VisionPrescription",
        "SupplyRequest",
        "CommunicationRequest",
        "Appointment",
        "Task",
        "CarePlan",
        "RequestGroup",
        "ImmunizationRecommendation",
    }
)
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]{0,39}$")


def _draft_entries(draft_orders: Any) -> list[tuple[int, Any]]:
    """(position, resource) of every ``draftOrders`` entry, however malformed: a Bundle's
    entries (outcome entries left out) or a single resource."""
    if not isinstance(draft_orders, Mapping):
        return []
    if draft_orders.get("resourceType") != "Bundle":
        return [(0, draft_orders)]
    entries = draft_orders.get("entry")
    if not isinstance(entries, list):
        return []
    out: list[tuple[int, Any]] = []
    for i, entry in enumerate(entries):
        search = entry.get("search") if isinstance(entry, Mapping) else None
        if isinstance(search, Mapping) and search.get("mode") == "outcome":
            continue
        out.append((i, entry.get("resource") if isinstance(entry, Mapping) else entry))
    return out


def _referenced_conditions(
    draft_orders: Any, resources: Sequence[Mapping[str, Any]], log: ParseLog
) -> dict[str, Any]:
    """The checked Conditions among ``resources`` that a draft order's ``reasonReference``
    names, by ``Condition/<id>`` (only those are checked)."""
    wanted: set[str] = set()
    for _, res in _draft_entries(draft_orders):
        refs = res.get("reasonReference") if isinstance(res, Mapping) else None
        for ref in refs if isinstance(refs, list) else [refs]:
            key = condition_ref_key(ref.get("reference")) if isinstance(ref, Mapping) else None
            if key:
                wanted.add(key)
    found: dict[str, Any] = {}
    for res in resources:
        rid = res.get("id")
        key = f"Condition/{rid}" if isinstance(rid, str) else None
        if res.get("resourceType") != "Condition" or key not in wanted or key in found:
            continue
        condition = _safely(log, "Condition", parse_condition, res, "Condition (indication)", log)
        if condition is not None and key is not None:
            found[key] = condition
    return found


def _draft_orders(
    draft_orders: Any,
    selected: set[str] | None,
    meds: Mapping[str, Mapping[str, Any]],
    log: ParseLog,
    conditions: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[list[MedicationOrder], list[UnreadableDraft]]:
    """The draft MedicationRequests, read tolerantly, and the entries none could be built from."""
    drafts: list[MedicationOrder] = []
    unreadable: list[UnreadableDraft] = []
    for i, res in _draft_entries(draft_orders):
        where = f"draftOrders entry #{i}"
        if not isinstance(res, Mapping):
            log.warnings.append(f"{where} not evaluated: not a FHIR resource")
            unreadable.append(UnreadableDraft(i, None, None, "not a FHIR resource (JSON object)"))
            continue
        raw_type = res.get("resourceType")
        rtype = raw_type if isinstance(raw_type, str) and _TYPE_NAME.match(raw_type) else None
        rid = res.get("id")
        ref = f"{rtype}/{rid}" if rtype and isinstance(rid, str) and _ID.match(rid) else None
        is_selected = selected is None or (ref is not None and ref in selected)
        if rtype in ("Medication", "OperationOutcome"):
            continue
        if rtype in OTHER_ORDER_TYPES:
            log.warnings.append(f"{where} ({rtype}) not evaluated")
            continue
        if rtype != "MedicationRequest":
            log.warnings.append(f"{where} ({rtype or 'no resource type'}) not evaluated")
            why = f"a {rtype}, not a MedicationRequest" if rtype else "no valid resourceType"
            unreadable.append(UnreadableDraft(i, rtype, ref, why, is_selected))
            continue
        lost: list[UnreadElement] = []
        try:
            order = parse_medication_request(
                res,
                where,
                log,
                meds,
                is_draft=True,
                selected=is_selected,
                draft_index=i,
                unread=lost,
                conditions=conditions,
            )
        except MODEL_FAILURES:
            order = None
        if order is not None:
            drafts.append(order)
            continue
        shown = ", ".join(f"{u.path} ({u.reason})" for u in lost[:3])
        why = f"invalid: {shown}" if shown else "could not be read as FHIR R4"
        unreadable.append(UnreadableDraft(i, rtype, ref, why, is_selected))
    return drafts, unreadable


def _dedupe(items: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def build_record(
    *,
    patient_id: str,
    draft_orders: Any = None,
    selections: Sequence[str] | None = None,
    patient: KeyData | None = None,
    medications: KeyData | None = None,
    allergies: KeyData | None = None,
    weight: KeyData | None = None,
    medication_index: Mapping[str, Mapping[str, Any]] | None = None,
    warnings: Sequence[str] = (),
    reads_history_order: Callable[[MedicationTerms, Any], bool] | None = None,
    carried: Sequence[Mapping[str, Any]] = (),
) -> PatientRecord:
    """Parse everything into one immutable record; ``None`` key data means unknown.

    ``reads_history_order(terms, status)``: whether some rule reads a history order whose
    medication (codings, ingredient codings, texts) and ``status`` are these, both as sent
    (unchecked); history orders it certainly does not read are skipped unread.
    ``carried``: every other resource the request carries (``draftOrders`` entries, prefetch
    values), where a draft order's ``reasonReference`` is looked up.
    """
    log = ParseLog()
    patient = patient or _UNKNOWN
    medications = medications or _UNKNOWN
    allergies = allergies or _UNKNOWN
    weight = weight or _UNKNOWN

    meds = {}
    for ref, res in sorted((medication_index or {}).items()):
        med = _safely(log, "Medication", parse_medication, res, "Medication", log)
        if med is not None:
            meds[ref] = med

    selected = set(selections) if selections is not None else None
    conditions = _referenced_conditions(draft_orders, carried, log)
    drafts, unreadable = _draft_orders(draft_orders, selected, meds, log, conditions)
    if selected is not None:
        refs = {
            f"{r.get('resourceType')}/{r.get('id')}" for r in draft_order_resources(draft_orders)
        }
        unmatched = len(selected - refs)
        if unmatched:
            log.warnings.append(f"{unmatched} selection(s) not found in draftOrders")

    draft_refs = {o.ref for o in drafts if o.ref}
    history: list[MedicationOrder] = []
    unread = 0
    for i, res in enumerate(medications.resources):
        if res.get("resourceType") != "MedicationRequest":
            continue
        if f"MedicationRequest/{res.get('id')}" in draft_refs:
            continue
        terms = None
        if reads_history_order is not None:
            terms = unchecked_medication_terms(res, meds)
            if terms is not None and not reads_history_order(terms, res.get("status")):
                unread += 1
                continue
        where = f"medications #{i}"
        order = _safely(log, where, parse_medication_request, res, where, log, meds, terms=terms)
        if order is not None:
            history.append(order)

    found: list[Allergy] = []
    for i, res in enumerate(allergies.resources):
        if res.get("resourceType") != "AllergyIntolerance":
            continue
        where = f"allergies #{i}"
        allergy = _safely(log, where, parse_allergy, res, where, log)
        if allergy is not None:
            found.append(allergy)

    return PatientRecord(
        patient_id=patient_id,
        birth_date=birth_date(patient.resources, log),  # ``checked`` skips what fails
        weight=latest_weight(weight.resources, log),
        draft_orders=tuple(drafts),
        unreadable_drafts=tuple(unreadable),
        medication_history=tuple(history),
        allergies=tuple(found),
        history_unread=unread,
        history_known=medications.known,
        allergies_known=allergies.known,
        weight_known=weight.known,
        warnings=_dedupe([*warnings, *log.warnings]),
    )


def with_administrations(
    record: PatientRecord,
    data: KeyData | None,
    medication_index: Mapping[str, Mapping[str, Any]] | None = None,
    *,
    reads: Callable[[MedicationTerms], bool] | None = None,
) -> PatientRecord:
    """``record`` with the MedicationAdministrations of ``data`` (None: unknown).

    Administrations with a ``NOT_GIVEN`` status (as sent) are dropped unread; ``reads(terms)``,
    when given, says whether some rule reads an administration of this medication (codings,
    ingredient codings, texts as sent): those it does not are skipped unread and counted.
    """
    data = data or _UNKNOWN
    log = ParseLog()
    received = [
        (i, res)
        for i, res in enumerate(data.resources)
        if res.get("resourceType") == "MedicationAdministration"
        and not (isinstance(res.get("status"), str) and res["status"] in NOT_GIVEN)
    ]
    meds = _referenced_medications(medication_index, [res for _, res in received], log)
    given: list[MedicationOrder] = []
    unread = 0
    for i, res in received:
        if reads is not None:
            terms = unchecked_medication_terms(res, meds)
            if terms is not None and not reads(terms):
                unread += 1
                continue
        where = f"administrations #{i}"
        order = _safely(log, where, parse_medication_administration, res, where, log, meds)
        if order is not None:
            given.append(order)
    return replace(
        record,
        administrations=tuple(given),
        administrations_known=data.known,
        administrations_unread=unread,
        warnings=_dedupe([*record.warnings, *log.warnings]),
    )


def _referenced_medications(
    index: Mapping[str, Mapping[str, Any]] | None,
    resources: Sequence[Mapping[str, Any]],
    log: ParseLog,
) -> dict[str, Any]:
    """The checked Medications of ``index`` that ``resources`` name by ``medicationReference``."""
    out: dict[str, Any] = {}
    for res in resources:
        ref = res.get("medicationReference")
        text = ref.get("reference") if isinstance(ref, Mapping) else None
        key = medication_ref_key(text) if isinstance(text, str) else None
        if not key:
            continue
        med = (index or {}).get(key)
        if med is None or key in out:
            continue
        checked_med = _safely(log, "Medication", parse_medication, med, "Medication", log)
        if checked_med is not None:
            out[key] = checked_med
    return out
