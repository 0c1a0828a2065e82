"""Builds the ``PatientRecord`` of one hook call from the context and the resolved data.

* ``draftOrders``: a Bundle with or without ``type``, with or without ``entry``; resources
  other than MedicationRequest (ServiceRequest, NutritionOrder, DeviceRequest…) are skipped
  with a note. At order-select only the orders named in ``selections`` are ``selected``.
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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from cds_server.fhirdata.parse import (
    MODEL_FAILURES,
    NOT_GIVEN,
    MedicationTerms,
    ParseLog,
    birth_date,
    latest_weight,
    medication_ref_key,
    parse_allergy,
    parse_medication,
    parse_medication_administration,
    parse_medication_request,
    resources_of,
    unchecked_medication_terms,
)
from cds_server.fhirdata.prefetch import KeyData
from cds_server.model import Allergy, MedicationOrder, PatientRecord

_UNKNOWN = KeyData((), False, "unavailable")
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
) -> PatientRecord:
    """Parse everything into one immutable record; ``None`` key data means unknown.

    ``reads_history_order(terms, status)``: whether some rule reads a history order whose
    medication (codings, ingredient codings, texts) and ``status`` are these, both as sent
    (unchecked); history orders it certainly does not read are skipped unread.
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
    drafts: list[MedicationOrder] = []
    for i, res in enumerate(draft_order_resources(draft_orders)):
        rtype = str(res.get("resourceType"))
        if rtype == "Medication":
            continue
        if rtype != "MedicationRequest":
            log.warnings.append(f"draftOrders entry #{i} ({rtype[:40]}) not evaluated")
            continue
        ref = f"{rtype}/{res.get('id')}"
        where = f"draftOrders entry #{i}"
        order = _safely(
            log,
            where,
            parse_medication_request,
            res,
            where,
            log,
            meds,
            is_draft=True,
            selected=selected is None or ref in selected,
        )
        if order is not None:
            drafts.append(order)
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
        med = (index or {}).get(key) if key else None
        if med is None or key in out:
            continue
        checked_med = _safely(log, "Medication", parse_medication, med, "Medication", log)
        if checked_med is not None:
            out[key] = checked_med
    return out
