"""Tolerant FHIR R4 parsing (``fhir.resources.R4B``) of JSON resources into plain ``model`` objects.

Real clients send imperfect R4: ``category`` as an object instead of an array, non-FHIR
properties such as ``_resolvedMedication``, draft orders without ``medication[x]``. Such
quirks are repaired; a resource that still fails validation is skipped with a warning that
names only the resource type, its position and the failing element paths — never values,
because values may be patient data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from cds_server.model import (
    UCUM,
    Allergy,
    Coding,
    MedicationOrder,
    Quantity,
    Reaction,
    Weight,
)
from cds_server.plainfhir import plain_view

# Fields that are lists in R4 but that some clients send as a single object.
_LIST_FIELDS = {
    "MedicationRequest": ("category", "dosageInstruction", "identifier", "note", "reasonCode"),
    "AllergyIntolerance": ("category", "reaction", "note", "identifier"),
    "Observation": ("category", "identifier", "performer"),
    "Medication": ("ingredient", "identifier"),
    "Patient": ("identifier", "name"),
}
_MODELS = {
    "MedicationRequest": MedicationRequest,
    "AllergyIntolerance": AllergyIntolerance,
    "Observation": Observation,
    "Medication": Medication,
    "Patient": Patient,
}
_UNIT_ALIASES = {
    "milligram": "mg",
    "milligrams": "mg",
    "mg/hr": "mg/h",
    "mg/hour": "mg/h",
    "ml/hr": "mL/h",
    "ml/h": "mL/h",
    "ml/hour": "mL/h",
    "ml/min": "mL/min",
    "mg/min": "mg/min",
    "ug": "µg",
    "mcg": "µg",
    "mg/kg": "mg/kg",
    "ml": "mL",
    "h": "h",
    "hr": "h",
    "hour": "h",
    "min": "min",
}
_WEIGHT_TO_KG = {"kg": 1.0, "g": 0.001, "[lb_av]": 0.45359237, "lb": 0.45359237, "lbs": 0.45359237}
BODY_WEIGHT_LOINC = "29463-7"
# What the FHIR model library may raise on hostile input (besides ValidationError, a ValueError).
MODEL_FAILURES = (TypeError, ValueError, KeyError, AttributeError, RecursionError)


@dataclass
class ParseLog:
    """Warnings collected while parsing (no patient data, only types, positions and paths)."""

    warnings: list[str] = field(default_factory=list)

    def skip(self, rtype: str, where: str, exc: ValidationError) -> None:
        paths = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
        shown = ", ".join(paths[:5]) + (" …" if len(paths) > 5 else "")
        self.warnings.append(f"{rtype} {where} skipped: invalid FHIR R4 ({shown})")


def _repair(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap single objects that R4 defines as arrays."""
    fixed = dict(resource)
    for name in _LIST_FIELDS.get(str(resource.get("resourceType")), ()):
        if name in fixed and isinstance(fixed[name], dict):
            fixed[name] = [fixed[name]]
    return fixed


def validate(resource: Any, where: str, log: ParseLog, *, plain: bool = False) -> Any | None:
    """Validate one JSON resource with its R4B model, tolerating unknown properties.

    With ``plain``, a MedicationRequest, Medication or AllergyIntolerance that passes the
    stricter plain check (``plainfhir.py``) is returned as a model-shaped ``PlainView`` instead.
    """
    if not isinstance(resource, Mapping):
        log.warnings.append(f"{where} skipped: not a JSON object")
        return None
    rtype = str(resource.get("resourceType"))
    model = _MODELS.get(rtype)
    if model is None:
        return None
    data = _repair(resource)
    if plain:
        view = plain_view(rtype, data)
        if view is not None:
            return view
    try:
        return model.model_validate(data)
    except MODEL_FAILURES as exc:
        if not isinstance(exc, ValidationError):
            # fhir_core can raise plain errors on badly typed nested resources.
            log.warnings.append(f"{rtype} {where} skipped: invalid FHIR R4 structure")
            return None
        extra = {
            e["loc"][0]
            for e in exc.errors()
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1
        }
        if extra:
            trimmed = {k: v for k, v in data.items() if k not in extra}
            try:
                return model.model_validate(trimmed)
            except ValidationError as exc2:
                log.skip(rtype, where, exc2)
                return None
            except MODEL_FAILURES:
                log.warnings.append(f"{rtype} {where} skipped: invalid FHIR R4 structure")
                return None
        log.skip(rtype, where, exc)
        return None


def resources_of(value: Any) -> list[Mapping[str, Any]]:
    """The resources in a prefetch value or a FHIR search result: Bundle entries or one resource."""
    if not isinstance(value, Mapping):
        return []
    if value.get("resourceType") == "Bundle":
        out = []
        for entry in value.get("entry") or ():
            if not isinstance(entry, Mapping):
                continue
            search = entry.get("search")
            if isinstance(search, Mapping) and search.get("mode") == "outcome":
                continue
            res = entry.get("resource")
            if isinstance(res, Mapping) and res.get("resourceType") != "OperationOutcome":
                out.append(res)
        return out
    if value.get("resourceType") == "OperationOutcome":
        return []
    return [value]


def _codings(concept: Any) -> tuple[Coding, ...]:
    if concept is None:
        return ()
    return tuple(
        Coding(system=c.system, code=c.code, display=c.display) for c in (concept.coding or ())
    )


def _texts(concept: Any) -> tuple[str, ...]:
    if concept is None:
        return ()
    out = [concept.text] if concept.text else []
    out.extend(c.display for c in (concept.coding or ()) if c.display)
    return tuple(out)


def _unit(quantity: Any) -> str | None:
    raw = quantity.code if quantity.system == UCUM and quantity.code else quantity.unit
    raw = raw or quantity.code
    if not raw:
        return None
    return _UNIT_ALIASES.get(raw.strip().lower(), raw.strip())


_TO_MG = {"g": 1000.0, "µg": 0.001}


def _quantity(q: Any) -> Quantity | None:
    """A FHIR Quantity with a normalised unit; masses in g or µg are converted to mg."""
    if q is None or q.value is None:
        return None
    unit = _unit(q)
    if not unit:
        return None
    if unit in _TO_MG:
        return Quantity(float(q.value) * _TO_MG[unit], "mg")
    return Quantity(float(q.value), unit)


def _ratio_rate(ratio: Any) -> Quantity | None:
    """``rateRatio`` (e.g. 50 mg per 1 h) → a rate quantity such as 50 mg/h."""
    num, den = ratio.numerator, ratio.denominator
    if num is None or den is None or num.value is None or not den.value:
        return None
    num_unit, den_unit = _unit(num), _unit(den)
    if not num_unit or not den_unit:
        return None
    per = {"h": 1.0, "min": 1.0, "d": 1.0}.get(den_unit)
    if per is None:
        return None
    return Quantity(float(num.value) / float(den.value), f"{num_unit}/{den_unit}")


def _datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        match = re.match(r"^(\d{4})(?:-(\d{2}))?(?:-(\d{2}))?", text)
        if not match:
            return None
        year, month, day = (int(g) if g else 1 for g in match.groups())
        parsed = datetime(year, month, day)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _medication_codes(
    med: Medication,
) -> tuple[tuple[Coding, ...], tuple[Coding, ...], tuple[str, ...]]:
    codings = _codings(med.code)
    texts = list(_texts(med.code))
    ingredients: list[Coding] = []
    for ing in med.ingredient or ():
        concept = getattr(ing, "itemCodeableConcept", None)
        if concept is not None:
            ingredients.extend(_codings(concept))
            texts.extend(_texts(concept))
        ref = getattr(ing, "itemReference", None)
        if ref is not None and ref.display:
            texts.append(ref.display)
    return codings, tuple(ingredients), tuple(texts)


def medication_ref_key(reference: str | None) -> str | None:
    """``Medication/123``, ``https://x/fhir/Medication/123`` → ``Medication/123``."""
    if not reference:
        return None
    match = re.search(r"(Medication/[A-Za-z0-9\-.]{1,64})(/_history/.*)?$", reference)
    return match.group(1) if match else None


def parse_medication(
    resource: Mapping[str, Any], where: str, log: ParseLog, *, plain: bool = True
) -> Any | None:
    """Validate a Medication resource (for ``medicationReference`` resolution); a plain one
    comes back as a ``PlainView`` unless ``plain`` is False."""
    return validate(resource, where, log, plain=plain)


def parse_medication_request(
    resource: Mapping[str, Any],
    where: str,
    log: ParseLog,
    medications: Mapping[str, Medication] | None = None,
    *,
    is_draft: bool = False,
    selected: bool = True,
    plain: bool = True,
) -> MedicationOrder | None:
    """Flatten one MedicationRequest, resolving contained or referenced Medications.

    ``plain=False`` always validates with the R4B model (the reference for the fast path).
    """
    mr = validate(resource, where, log, plain=plain)
    if mr is None:
        return None
    codings: tuple[Coding, ...] = ()
    ingredients: tuple[Coding, ...] = ()
    texts: tuple[str, ...] = ()
    if mr.medicationCodeableConcept is not None:
        codings = _codings(mr.medicationCodeableConcept)
        texts = _texts(mr.medicationCodeableConcept)
    elif mr.medicationReference is not None:
        ref = mr.medicationReference.reference
        med = None
        if ref and ref.startswith("#"):
            for contained in mr.contained or ():
                if getattr(contained, "id", None) == ref[1:] and isinstance(contained, Medication):
                    med = contained
                    break
        elif medications:
            key = medication_ref_key(ref)
            med = medications.get(key) if key else None
        if med is not None:
            codings, ingredients, texts = _medication_codes(med)
        elif ref:
            log.warnings.append(f"MedicationRequest {where}: medicationReference not resolved")
        if mr.medicationReference.display:
            texts = (*texts, mr.medicationReference.display)
    else:
        log.warnings.append(f"MedicationRequest {where}: no medication[x]")

    dose = rate = None
    route = dosage_text = None
    when = None
    for dosage in mr.dosageInstruction or ():
        dosage_text = dosage_text or dosage.text
        if route is None and dosage.route is not None:
            route = dosage.route.text or next(
                (c.display or c.code for c in dosage.route.coding or () if c.display or c.code),
                None,
            )
        for dr in dosage.doseAndRate or ():
            dose = dose or _quantity(getattr(dr, "doseQuantity", None))
            if rate is None:
                rate = _quantity(getattr(dr, "rateQuantity", None))
            if rate is None and getattr(dr, "rateRatio", None) is not None:
                rate = _ratio_rate(dr.rateRatio)
        if when is None and dosage.timing is not None and dosage.timing.event:
            when = _datetime(dosage.timing.event[0])
    authored = _datetime(mr.authoredOn) or when
    volume = _infusion_volume(mr, (*texts, dosage_text or ""))
    return MedicationOrder(
        ref=f"MedicationRequest/{mr.id}" if mr.id else None,
        status=mr.status,
        intent=mr.intent,
        codings=codings,
        ingredient_codings=ingredients,
        texts=texts,
        dose=dose,
        rate=rate,
        volume=volume,
        route=route,
        dosage_text=dosage_text,
        authored_on=authored,
        is_draft=is_draft,
        selected=selected,
        resource=dict(resource),
    )


_VOLUME_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*ml\b", re.IGNORECASE)


def _infusion_volume(mr: MedicationRequest, texts: Iterable[str]) -> Quantity | None:
    """The infusion bag volume: ``dispenseRequest.quantity`` in mL, else "… 250 mL" in the text."""
    dispense = mr.dispenseRequest
    if dispense is not None and dispense.quantity is not None:
        q = _quantity(dispense.quantity)
        if q is not None and q.unit == "mL":
            return q
    for text in texts:
        match = _VOLUME_TEXT.search(text or "")
        if match:
            return Quantity(float(match.group(1)), "mL")
    return None


def parse_allergy(
    resource: Mapping[str, Any], where: str, log: ParseLog, *, plain: bool = True
) -> Allergy | None:
    """Flatten one AllergyIntolerance (``plain`` as for ``parse_medication_request``)."""
    ai = validate(resource, where, log, plain=plain)
    if ai is None:
        return None

    def status(concept: Any) -> str | None:
        if concept is None:
            return None
        for c in concept.coding or ():
            if c.code:
                return c.code
        return concept.text.lower() if concept.text else None

    codings = list(_codings(ai.code))
    texts = list(_texts(ai.code))
    reactions = []
    for r in ai.reaction or ():
        codings.extend(_codings(r.substance))
        texts.extend(_texts(r.substance))
        manifestations = [c for m in r.manifestation or () for c in _codings(m)]
        mtexts = [t for m in r.manifestation or () for t in _texts(m)]
        reactions.append(
            Reaction(
                manifestations=tuple(manifestations),
                manifestation_texts=tuple(mtexts),
                severity=r.severity,
                onset=_datetime(r.onset),
                description=r.description,
            )
        )
    onset = _datetime(getattr(ai, "onsetDateTime", None))
    return Allergy(
        ref=f"AllergyIntolerance/{ai.id}" if ai.id else None,
        clinical_status=status(ai.clinicalStatus),
        verification_status=status(ai.verificationStatus),
        criticality=ai.criticality,
        category=tuple(ai.category or ()),
        codings=tuple(codings),
        texts=tuple(texts),
        reactions=tuple(reactions),
        recorded=_datetime(ai.recordedDate) or onset,
        notes=tuple(n.text for n in ai.note or () if n.text),
    )


def latest_weight(resources: Iterable[Mapping[str, Any]], log: ParseLog) -> Weight | None:
    """The most recent valid body-weight Observation, in kg."""
    best: Weight | None = None
    for i, res in enumerate(resources):
        if res.get("resourceType") != "Observation":
            continue
        obs = validate(res, f"#{i}", log)
        if obs is None or obs.status in ("entered-in-error", "cancelled"):
            continue
        codes = {c.code for c in (obs.code.coding or ())} if obs.code else set()
        if codes and BODY_WEIGHT_LOINC not in codes:
            continue
        q = obs.valueQuantity
        if q is None or q.value is None:
            continue
        unit = (q.code or q.unit or "").strip()
        factor = _WEIGHT_TO_KG.get(unit) or _WEIGHT_TO_KG.get(unit.lower())
        if factor is None:
            log.warnings.append(f"Observation #{i}: body weight unit not understood")
            continue
        when = _datetime(obs.effectiveDateTime) or _datetime(obs.issued)
        candidate = Weight(kg=float(q.value) * factor, effective=when)
        if best is None or (when and (best.effective is None or when > best.effective)):
            best = candidate
    return best


def birth_date(resources: Iterable[Mapping[str, Any]], log: ParseLog) -> date | None:
    """The Patient's birth date, if a valid Patient resource is present."""
    for i, res in enumerate(resources):
        if res.get("resourceType") == "Patient":
            patient = validate(res, f"#{i}", log)
            if patient is not None and patient.birthDate:
                bd = patient.birthDate
                return bd if isinstance(bd, date) else None
    return None
