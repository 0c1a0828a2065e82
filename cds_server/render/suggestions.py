"""Turns proposed actions into CDS Hooks suggestions carrying FHIR R4 resources (R4B-validated),
shaped for the client's profile (``render.profiles``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from cds_server.model import (
    RXNORM,
    UCUM,
    Coding,
    ProposedAction,
    ProposedMedication,
    ProposedRateChange,
    ProposedServiceRequest,
    Quantity,
)
from cds_server.plainfhir import is_plain
from cds_server.render.profiles import (
    EPIC_ORDER_NOTE,
    GENERIC,
    RXNORM_OID,
    ClientProfile,
    fhir_coding,
)

_UCUM_CODES = {"mg": "mg", "mg/h": "mg/h", "mL/h": "mL/h", "mL/min": "mL/min", "mg/min": "mg/min"}


class InvalidSuggestion(Exception):
    """A generated resource failed FHIR R4 validation (a programming error, never client input)."""


def _quantity(q: Quantity) -> dict[str, Any]:
    out: dict[str, Any] = {"value": q.value, "unit": q.unit}
    if q.unit in _UCUM_CODES:
        out |= {"system": UCUM, "code": _UCUM_CODES[q.unit]}
    return out


def _codings(p: ProposedMedication, profile: ClientProfile) -> list[dict[str, str]]:
    """The site's own codes first (``epic``), then ours; RxNorm also under Epic's OID."""
    out = profile.site_codings(p.agent_id)
    if p.coding is not None:
        ours = fhir_coding(p.coding)
        out.append(ours)
        if profile.epic and p.coding.system == RXNORM:
            out.append({**ours, "system": RXNORM_OID})
    return out


def medication_request(
    p: ProposedMedication, patient_id: str, profile: ClientProfile = GENERIC
) -> dict[str, Any]:
    """A draft MedicationRequest for a missing agent."""
    concept: dict[str, Any] = {"text": p.agent_name}
    codings = _codings(p, profile)
    if codings:
        concept["coding"] = codings
    dose = ""
    if p.dose_low is not None and p.dose_high is not None:
        low, high = p.dose_low, p.dose_high
        dose = (
            f" {low.value:g} {low.unit}"
            if low.value == high.value
            else (f" {low.value:g}–{high.value:g} {high.unit}")
        )
    route = f" {p.route}" if p.route else ""
    dosage: dict[str, Any] = {"text": f"{p.agent_name}{dose}{route}, {p.timing_text}"}
    if p.route:
        dosage["route"] = {"text": p.route}
    if p.dose_low is not None and p.dose_high is not None:
        if p.dose_low.value == p.dose_high.value:
            dosage["doseAndRate"] = [{"doseQuantity": _quantity(p.dose_low)}]
        else:
            dosage["doseAndRate"] = [
                {"doseRange": {"low": _quantity(p.dose_low), "high": _quantity(p.dose_high)}}
            ]
    resource = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "medicationCodeableConcept": concept,
        "dosageInstruction": [dosage],
    }
    return _validated(MedicationRequest, resource)


def service_request(
    p: ProposedServiceRequest, patient_id: str, profile: ClientProfile = GENERIC
) -> dict[str, Any]:
    """A draft, text-coded ServiceRequest (admission, observation, referral)."""
    code: dict[str, Any] = {"text": p.label.removeprefix("Order ")}
    codings = profile.site_codings(p.referral)
    if p.coding is not None:
        codings.append(fhir_coding(Coding(p.coding.system, p.coding.code)))
    if codings:
        code["coding"] = codings
    resource = {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient_id}"},
        "code": code,
        "note": [{"text": p.text}],
    }
    return _validated(ServiceRequest, resource)


def rate_update(p: ProposedRateChange) -> dict[str, Any]:
    """The whole draft order with its first rate replaced (CDS Hooks update = whole resource)."""
    assert p.order.resource is not None
    if not p.order.resource.get("id"):
        raise InvalidSuggestion("the draft order has no id, so an update cannot name it")
    resource = copy.deepcopy(dict(p.order.resource))
    resource.pop("_resolvedMedication", None)
    if isinstance(resource.get("category"), dict):
        resource["category"] = [resource["category"]]
    for dosage in resource.get("dosageInstruction") or ():
        for dr in dosage.get("doseAndRate") or ():
            if any(k in dr for k in ("rateQuantity", "rateRatio", "rateRange")):
                for k in ("rateQuantity", "rateRatio", "rateRange"):
                    dr.pop(k, None)
                dr["rateQuantity"] = _quantity(p.new_rate)
                return _validated(MedicationRequest, resource)
    raise InvalidSuggestion("the order has no rate to update")


def _validated(model: Any, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` if it is valid R4 (plain ones pass without the model), else raise."""
    if is_plain(resource["resourceType"], resource):
        return resource
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        raise InvalidSuggestion(
            f"{resource['resourceType']}: {exc.error_count()} error(s)"
        ) from exc
    return resource


def description(action: ProposedAction, profile: ClientProfile = GENERIC) -> str:
    """What the clinician reads of an action: its label, which names the dose, route and
    timing (or the new rate). Epic ignores the suggested resource's details, so there it
    also says to check them, and a service request carries its reason."""
    if not profile.epic:
        return action.label
    if isinstance(action, ProposedMedication):
        return f"{action.label}. {EPIC_ORDER_NOTE}"
    if isinstance(action, ProposedServiceRequest):
        return f"{action.label} — {action.text}"
    return action.label


def suggestion(
    action: ProposedAction,
    patient_id: str,
    new_uuid: Callable[[], str],
    profile: ClientProfile = GENERIC,
) -> dict[str, Any]:
    """One CDS Hooks suggestion with a single action."""
    if isinstance(action, ProposedMedication):
        act = {
            "type": "create",
            "description": description(action, profile),
            "resource": medication_request(action, patient_id, profile),
        }
    elif isinstance(action, ProposedServiceRequest):
        act = {
            "type": "create",
            "description": description(action, profile),
            "resource": service_request(action, patient_id, profile),
        }
    else:
        act = {"type": "update", "description": action.label, "resource": rate_update(action)}
    return {
        "label": action.label,
        "uuid": new_uuid(),
        "isRecommended": action.recommended,
        "actions": [act],
    }
