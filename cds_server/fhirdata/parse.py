"""Tolerant FHIR R4 parsing (``fhir.resources.R4B``) of JSON resources into plain ``model`` objects.

Every resource is first *checked* (``checked``): a plain one (``plainfhir.is_plain``) is
read as the JSON it is; any other is validated with its R4B model and read from the model's
dump, which has the same element names and shapes. Either way the readers below read
validated JSON, so both paths give the same result (``tests/test_speedups.py``).

Real clients send imperfect R4: ``category`` as an object instead of an array, non-FHIR
properties such as ``_resolvedMedication``, draft orders without ``medication[x]``. Such
quirks are repaired; a resource that still fails validation is skipped with a warning that
names only the resource type, its position and the failing element paths — never values,
because values may be patient data.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B.allergyintolerance import AllergyIntolerance
from fhir.resources.R4B.condition import Condition
from fhir.resources.R4B.medication import Medication
from fhir.resources.R4B.medicationadministration import MedicationAdministration
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from cds_server.model import (
    DAYS_PER_WEEK,
    UCUM,
    Allergy,
    Coding,
    MedicationOrder,
    Quantity,
    Reaction,
    UnreadElement,
    Weight,
)
from cds_server.plainfhir import is_plain

# Fields that are lists in R4 but that some clients send as a single object.
_LIST_FIELDS = {
    "MedicationRequest": (
        "category",
        "dosageInstruction",
        "identifier",
        "note",
        "reasonCode",
        "reasonReference",
    ),
    "Condition": ("category", "identifier", "note"),
    "AllergyIntolerance": ("category", "reaction", "note", "identifier"),
    "Observation": ("category", "identifier", "performer"),
    "Medication": ("ingredient", "identifier"),
    "Patient": ("identifier", "name"),
    "MedicationAdministration": (
        "identifier",
        "note",
        "performer",
        "reasonCode",
        "statusReason",
    ),
}
_MODELS = {
    "MedicationRequest": MedicationRequest,
    "AllergyIntolerance": AllergyIntolerance,
    "Observation": Observation,
    "Medication": Medication,
    "Patient": Patient,
    "MedicationAdministration": MedicationAdministration,
    "Condition": Condition,
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
        shown = ", ".join(p for p in paths[:5] if p) + (" …" if len(paths) > 5 else "")
        at = f" ({shown})" if shown else ""  # a whole-resource error has no path to name
        self.warnings.append(f"{rtype} {where} skipped: invalid FHIR R4{at}")


def _repair(resource: Mapping[str, Any]) -> dict[str, Any]:
    """Wrap single objects that R4 defines as arrays (a copy only when something is wrapped)."""
    names = _LIST_FIELDS.get(str(resource.get("resourceType")), ())
    wrap = [name for name in names if isinstance(resource.get(name), dict)]
    fixed = dict(resource) if wrap or not isinstance(resource, dict) else resource
    for name in wrap:
        fixed[name] = [fixed[name]]
    return fixed


def _model_validate(
    model: Any, rtype: str, data: dict[str, Any], where: str, log: ParseLog
) -> Any | None:
    """Validate one (repaired) resource with its R4B model, tolerating unknown properties."""
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


def element_path(loc: Iterable[Any]) -> str:
    """A validation error location as a FHIR element path: ``dosageInstruction[0].route``."""
    out = ""
    for step in loc:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


# Why an element could not be read, from the validation error's type (never its message or
# input: they may quote the value).
_ERROR_REASONS = {
    "string_type": "wrong type (text expected)",
    "list_type": "wrong type (array expected)",
    "dict_type": "wrong type (object expected)",
    "model_type": "wrong type (object expected)",
    "model_attributes_type": "wrong type (object expected)",
    "bool_type": "wrong type (true/false expected)",
    "bool_parsing": "wrong type (true/false expected)",
    "int_type": "not a valid integer",
    "int_parsing": "not a valid integer",
    "float_type": "not a valid number",
    "decimal_type": "not a valid number",
    "literal_error": "not an allowed code",
    "enum": "not an allowed code",
}
# Required elements: while salvaging, a stand-in lets the rest validate; it is removed after.
_STAND_INS: dict[str, Any] = {
    "status": "unknown",
    "intent": "order",
    "subject": {"display": "-"},
}
_MEDICATION_CHOICE = "medicationCodeableConcept"
_DROPPED = object()
_SALVAGE_ROUNDS = 8


def _reason(error: Mapping[str, Any], value: Any) -> str:
    kind = str(error.get("type", ""))
    if kind.endswith("missing"):
        return "required but missing"
    if isinstance(value, float) and not math.isfinite(value):
        return "not a finite number"
    if kind in _ERROR_REASONS:
        return _ERROR_REASONS[kind]
    if kind.startswith(("datetime", "date")):
        return "not a valid dateTime"
    if kind == "json_invalid" or (isinstance(value, str) and kind.endswith("_type")):
        return "wrong type (object expected)"
    message = str(error.get("msg", ""))
    for word, reason in (
        ("DateTime", "not a valid dateTime"),
        ("Instant", "not a valid instant"),
        ("Date", "not a valid date"),
        ("Decimal", "not a valid number"),
        ("Integer", "not a valid integer"),
    ):
        if word in message:
            return reason
    return f"not valid FHIR R4 ({kind[:40] or 'unknown error'})"


def _at(data: Any, loc: tuple[Any, ...]) -> tuple[Any, Any] | None:
    """(parent, key) of the element at ``loc`` in ``data``, or None when it is not there."""
    parent = data
    for step in loc[:-1]:
        if not _has(parent, step):
            return None
        parent = parent[step]
    key = loc[-1] if loc else None
    return (parent, key) if _has(parent, key) else None


def _has(parent: Any, key: Any) -> bool:
    if isinstance(parent, dict):
        return isinstance(key, str) and key in parent
    return isinstance(parent, list) and isinstance(key, int) and 0 <= key < len(parent)


def _sweep(value: Any) -> Any:
    """Remove dropped elements; an array left empty by dropping is dropped too."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            swept = _sweep(v)
            if swept is not _DROPPED:
                out[k] = swept
        return out
    if isinstance(value, list):
        items = [swept for v in value if (swept := _sweep(v)) is not _DROPPED]
        return items if items or not value else _DROPPED
    return value


def salvaged(
    model: Any, data: dict[str, Any]
) -> tuple[dict[str, Any] | None, tuple[UnreadElement, ...]]:
    """What validates of a resource its model rejects: every invalid element is dropped (and
    reported with its path and why), the rest validated again; None when nothing validates."""
    work = copy.deepcopy(data)
    unread: dict[str, UnreadElement] = {}
    stand_ins: set[str] = set()
    for _ in range(_SALVAGE_ROUNDS):
        try:
            validated = model.model_validate(work)
        except ValidationError as exc:
            errors = exc.errors()
        except MODEL_FAILURES:
            return None, tuple(unread.values())
        else:
            dumped: dict[str, Any] = validated.model_dump(by_alias=True, exclude_none=True)
            for name in stand_ins:
                dumped.pop(name, None)
            return dumped, tuple(unread.values())
        progressed = False
        for error in errors:
            loc = tuple(error.get("loc") or ())
            if (
                not loc
                and _MEDICATION_CHOICE not in stand_ins
                and not any(
                    name in work for name in ("medicationCodeableConcept", "medicationReference")
                )
            ):
                # The one root-level rule: medication[x] is required.
                work[_MEDICATION_CHOICE] = {"text": "-"}
                stand_ins.add(_MEDICATION_CHOICE)
                unread.setdefault("medication[x]", UnreadElement("medication[x]", "missing"))
                progressed = True
            if not loc:
                continue
            path = element_path(loc)
            found = _at(work, loc)
            if str(error.get("type", "")).endswith("missing"):
                element = loc[0]
                if (
                    len(loc) == 1
                    and isinstance(element, str)
                    and element in _STAND_INS
                    and element not in stand_ins
                ):
                    work[element] = copy.deepcopy(_STAND_INS[element])
                    stand_ins.add(element)
                    unread.setdefault(path, UnreadElement(path, "required but missing"))
                    progressed = True
                    continue
                # A required child is missing: drop its parent element instead.
                loc, found = loc[:-1], _at(work, loc[:-1]) if len(loc) > 1 else None
                path = element_path(loc)
            for cut in range(len(loc) - 1, 0, -1):
                if found is not None:
                    break
                # The error names a place the data does not have (a model validator's
                # "root" under a number in a list of objects): drop the element it is in.
                found, path = _at(work, loc[:cut]), element_path(loc[:cut])
            if found is None:
                continue
            parent, key = found
            if parent[key] is _DROPPED:
                continue
            if error.get("type") != "extra_forbidden":  # unknown properties: dropped silently
                unread.setdefault(path, UnreadElement(path, _reason(error, parent[key])))
            parent[key] = _DROPPED
            progressed = True
        if not progressed:
            return None, tuple(unread.values())
        work = _sweep(work)
    return None, tuple(unread.values())


def checked(
    resource: Any,
    where: str,
    log: ParseLog,
    *,
    plain: bool = True,
    unread: list[UnreadElement] | None = None,
) -> dict[str, Any] | None:
    """The resource as validated JSON (quirks repaired, unknown properties dropped), or None.

    A plain resource is returned as it came (repaired); any other goes through its R4B model
    and comes back as the model's dump (the same element names and shapes).
    ``plain=False`` always takes the model (the reference for the fast path).
    ``unread``, when given, asks for a tolerant read: a resource the model rejects is
    ``salvaged`` and the elements left out are appended to it.
    """
    if not isinstance(resource, Mapping):
        log.warnings.append(f"{where} skipped: not a JSON object")
        return None
    rtype = str(resource.get("resourceType"))
    model = _MODELS.get(rtype)
    if model is None:
        return None
    data = _repair(resource)
    if plain and is_plain(rtype, data):
        return data
    scratch = log if unread is None else ParseLog()
    validated = _model_validate(model, rtype, data, where, scratch)
    if validated is None:
        if unread is None:
            return None
        kept, lost = salvaged(model, data)
        unread.extend(lost)
        if kept is None:
            log.warnings.extend(scratch.warnings)
            return None
        shown = ", ".join(u.path for u in lost[:5]) + (" …" if len(lost) > 5 else "")
        log.warnings.append(f"{rtype} {where}: elements not read ({shown or 'invalid'})")
        return kept
    # Python mode: values keep the model's types (Decimal, date, datetime), read as before.
    dumped: dict[str, Any] = validated.model_dump(by_alias=True, exclude_none=True)
    return dumped


def resources_of(value: Any) -> list[Mapping[str, Any]]:
    """The resources in a prefetch value or a FHIR search result: Bundle entries or one resource."""
    if not isinstance(value, Mapping):
        return []
    if value.get("resourceType") == "Bundle":
        out = []
        entries = value.get("entry")
        for entry in entries if isinstance(entries, list) else ():
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


def _codings(concept: Mapping[str, Any] | None) -> tuple[Coding, ...]:
    if not concept:
        return ()
    return tuple(
        Coding(system=c.get("system"), code=c.get("code"), display=c.get("display"))
        for c in concept.get("coding") or ()
    )


def _texts(concept: Mapping[str, Any] | None) -> tuple[str, ...]:
    if not concept:
        return ()
    text = concept.get("text")
    out = [text] if text else []
    out.extend(c["display"] for c in concept.get("coding") or () if c.get("display"))
    return tuple(out)


def _unit(quantity: Mapping[str, Any]) -> str | None:
    code = quantity.get("code")
    raw = code if quantity.get("system") == UCUM and code else quantity.get("unit")
    raw = raw or code
    if not raw or not isinstance(raw, str):
        return None
    unit = raw.strip()
    return _UNIT_ALIASES.get(unit.lower(), unit)


_TO_MG = {"g": 1000.0, "µg": 0.001}


def _number(value: Any) -> float | None:
    """A FHIR decimal as a float; None when absent or beyond float's range (the model
    allows such values)."""
    if value is None:
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _quantity(q: Mapping[str, Any] | None) -> Quantity | None:
    """A FHIR Quantity with a normalised unit; masses in g or µg are converted to mg."""
    value = _number(q.get("value")) if q else None
    if q is None or value is None:
        return None
    unit = _unit(q)
    if not unit:
        return None
    if unit in _TO_MG:
        return Quantity(value * _TO_MG[unit], "mg")
    return Quantity(value, unit)


def _ratio_rate(ratio: Mapping[str, Any]) -> Quantity | None:
    """``rateRatio`` (e.g. 50 mg per 1 h) → a rate quantity such as 50 mg/h."""
    num, den = ratio.get("numerator") or {}, ratio.get("denominator") or {}
    top, bottom = _number(num.get("value")), _number(den.get("value"))
    if top is None or not bottom:
        return None
    num_unit, den_unit = _unit(num), _unit(den)
    if not num_unit or not den_unit:
        return None
    per = {"h": 1.0, "min": 1.0, "d": 1.0}.get(den_unit)
    if per is None:
        return None
    return Quantity(top / bottom, f"{num_unit}/{den_unit}")


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
        try:
            parsed = datetime(year, month, day)
        except ValueError:  # the model lets some impossible dates through (2026-02-30)
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


JSON = Mapping[str, Any]
# What names an order's medication: codings, ingredient codings, texts.
MedicationTerms = tuple[tuple[Coding, ...], tuple[Coding, ...], tuple[str, ...]]


def _medication_codes(med: JSON) -> MedicationTerms:
    """Codings, ingredient codings and texts of a checked Medication."""
    codings = _codings(med.get("code"))
    texts = list(_texts(med.get("code")))
    ingredients: list[Coding] = []
    for ing in med.get("ingredient") or ():
        concept = ing.get("itemCodeableConcept")
        if concept:
            ingredients.extend(_codings(concept))
            texts.extend(_texts(concept))
        display = (ing.get("itemReference") or {}).get("display")
        if display:
            texts.append(display)
    return codings, tuple(ingredients), tuple(texts)


def medication_ref_key(reference: str | None) -> str | None:
    """``Medication/123``, ``https://x/fhir/Medication/123`` → ``Medication/123``."""
    if not reference:
        return None
    # Up to 256 characters: Epic's ids are longer than FHIR's 64.
    match = re.search(r"(Medication/[A-Za-z0-9\-.]{1,256})(/_history/.*)?$", reference)
    return match.group(1) if match else None


def condition_ref_key(reference: Any) -> str | None:
    """``Condition/123``, ``https://x/fhir/Condition/123`` → ``Condition/123``."""
    if not isinstance(reference, str):
        return None
    match = re.search(r"(Condition/[A-Za-z0-9\-.]{1,256})(/_history/.*)?$", reference)
    return match.group(1) if match else None


# Verification statuses that take a Condition back: it names no indication.
_WITHDRAWN = frozenset({"refuted", "entered-in-error"})


def _reasons(mr: JSON, conditions: Mapping[str, JSON] | None) -> tuple[Coding, ...]:
    """The order's indication: codings of its ``reasonCode`` and of the Conditions its
    ``reasonReference`` names (contained, or among ``conditions``: checked Condition JSON by
    ``Condition/<id>``) unless refuted or entered in error. A reference the request does not
    carry is not fetched: the indication is then what ``reasonCode`` says."""
    found = [c for concept in mr.get("reasonCode") or () for c in _codings(concept)]
    for ref in mr.get("reasonReference") or ():
        target = ref.get("reference")
        condition: JSON | None = None
        if isinstance(target, str) and target.startswith("#"):
            condition = next(
                (
                    c
                    for c in mr.get("contained") or ()
                    if c.get("resourceType") == "Condition" and c.get("id") == target[1:]
                ),
                None,
            )
        elif conditions:
            key = condition_ref_key(target)
            condition = conditions.get(key) if key else None
        if condition is not None and _status(condition.get("verificationStatus")) not in _WITHDRAWN:
            found.extend(_codings(condition.get("code")))
    return tuple(c for c in found if c.code)


def parse_condition(resource: Any, where: str, log: ParseLog) -> dict[str, Any] | None:
    """A Condition resource as checked JSON (for ``reasonReference`` resolution)."""
    return checked(resource, where, log)


def parse_medication(
    resource: Mapping[str, Any], where: str, log: ParseLog, *, plain: bool = True
) -> dict[str, Any] | None:
    """A Medication resource as checked JSON (for ``medicationReference`` resolution)."""
    return checked(resource, where, log, plain=plain)


def _ordered_dose(dosage: JSON, path: str, read: _Reader) -> Quantity | None:
    """The dose of Epic's ``ordered-dose`` extension (read only without a ``doseQuantity``)."""
    for x, extension in enumerate(dosage.get("extension") or ()):
        if isinstance(extension, Mapping) and extension.get("url") == EPIC_ORDERED_DOSE:
            return read.quantity(extension.get("valueQuantity"), f"{path}.extension[{x}]")
    return None


def _route(route: JSON | None) -> str | None:
    """A dosage route as text: its ``text``, else the first coding's display or code."""
    if not route:
        return None
    text: str | None = route.get("text")
    if text:
        return text
    names = (c.get("display") or c.get("code") for c in route.get("coding") or ())
    return next((name for name in names if name), None)


def _kind(resource: JSON) -> str:
    """The resource type named in a warning (an order unless it says it is an administration)."""
    administration = resource.get("resourceType") == "MedicationAdministration"
    return "MedicationAdministration" if administration else "MedicationRequest"


def _medication_terms(
    mr: JSON,
    medications: Mapping[str, JSON] | None,
    where: str,
    log: ParseLog,
    unread: list[UnreadElement] | None = None,
) -> MedicationTerms:
    """Codings, ingredient codings and texts naming an order's medication (contained or
    referenced Medications resolved); a warning if it names none that can be read."""
    codings: tuple[Coding, ...] = ()
    ingredients: tuple[Coding, ...] = ()
    texts: tuple[str, ...] = ()
    concept = mr.get("medicationCodeableConcept")
    reference = mr.get("medicationReference")
    if concept is not None:
        codings = _codings(concept)
        texts = _texts(concept)
    elif reference is not None:
        ref = reference.get("reference")
        med = None
        if ref and ref.startswith("#"):
            for contained in mr.get("contained") or ():
                if contained.get("id") == ref[1:] and contained.get("resourceType") == "Medication":
                    med = contained
                    break
        elif medications:
            key = medication_ref_key(ref)
            med = medications.get(key) if key else None
        if med is not None:
            codings, ingredients, texts = _medication_codes(med)
        elif ref:
            log.warnings.append(f"{_kind(mr)} {where}: medicationReference not resolved")
            if unread is not None:
                unread.append(UnreadElement("medicationReference", "reference not resolved"))
        if reference.get("display"):
            texts = (*texts, reference["display"])
    else:
        log.warnings.append(f"{_kind(mr)} {where}: no medication[x]")
    return codings, ingredients, texts


# The elements ``_medication_terms`` reads: the same objects give the same terms.
_MEDICATION_ELEMENTS = ("medicationCodeableConcept", "medicationReference", "contained")
# Epic's ordered dose, sent beside (or instead of) ``doseQuantity`` (fhir.epic.com CDS Hooks
# tutorial, example request). Its ``…/admin-amount`` is the amount given (e.g. 2 tablets), not
# the dose, and is not read.
EPIC_ORDERED_DOSE = "https://open.epic.com/fhir/extensions/ordered-dose"


def unchecked_medication_terms(
    resource: Mapping[str, Any], medications: Mapping[str, JSON] | None = None
) -> MedicationTerms | None:
    """What ``parse_medication_request`` would read as the order's medication, taken from the
    resource *before* it is checked — or None whenever that is not certain (odd shapes or
    types, an unresolved reference, no medication), so the caller then parses it in full.

    Lets the medication history skip orders for medicines no rule is about without checking
    and reading them (``record.build_record``): the check cannot change these values, since
    a plain resource is read as it came and the R4B models keep strings as they are.
    """
    scratch = ParseLog()
    try:
        codings, ingredients, texts = _medication_terms(resource, medications, "-", scratch)
    except (AttributeError, TypeError, KeyError):
        return None
    values = [v for c in (*codings, *ingredients) for v in (c.system, c.code, c.display)]
    clean = all(v is None or isinstance(v, str) for v in values)
    if scratch.warnings or not clean or not all(isinstance(t, str) for t in texts):
        return None
    if not (codings or ingredients or texts):
        return None  # names no medicine: the full parse decides (and warns)
    return codings, ingredients, texts


class _Reader:
    """Reads an order's quantities and dates element by element, noting each it cannot read
    (non-finite, zero or negative where a positive value is needed, no unit, not a date)."""

    def __init__(self, unread: list[UnreadElement]):
        self.unread = unread

    def miss(self, path: str, reason: str) -> None:
        if all(u.path != path for u in self.unread):
            self.unread.append(UnreadElement(path, reason))

    def number(self, value: Any, path: str) -> float | None:
        """A positive finite number, else None (noted)."""
        if value is None:
            return None
        try:
            number = float(value)
        except (OverflowError, TypeError, ValueError):
            number = math.inf
        if not math.isfinite(number):
            self.miss(path, "not a finite number")
            return None
        if number <= 0:
            self.miss(path, "must be greater than zero")
            return None
        return number

    def quantity(self, q: Mapping[str, Any] | None, path: str) -> Quantity | None:
        """``_quantity``, with every reason it gives None noted (absent: nothing to note)."""
        if not q:
            return None
        value = self.number(q.get("value"), f"{path}.value")
        if value is None:
            return None
        unit = _unit(q)
        if not unit:
            self.miss(f"{path}.unit", "no unit")
            return None
        return Quantity(value * _TO_MG[unit], "mg") if unit in _TO_MG else Quantity(value, unit)

    def rate(self, dr: Mapping[str, Any], path: str) -> Quantity | None:
        if dr.get("rateQuantity"):
            rate = self.quantity(dr["rateQuantity"], f"{path}.rateQuantity")
            where = f"{path}.rateQuantity.unit"
        elif dr.get("rateRatio"):
            ratio = dr["rateRatio"]
            where = f"{path}.rateRatio"
            num, den = ratio.get("numerator") or {}, ratio.get("denominator") or {}
            top = self.number(num.get("value"), f"{where}.numerator.value")
            bottom = self.number(den.get("value"), f"{where}.denominator.value")
            rate = _ratio_rate(ratio) if top is not None and bottom is not None else None
            if rate is None and top is not None and bottom is not None:
                self.miss(where, "not a rate per hour or minute")
        else:
            return None
        if rate is not None and rate.unit.rsplit("/", 1)[-1] not in _RATE_TIMES:
            self.miss(where, "unit is not a rate per hour or minute")
            return None
        return rate

    def moment(self, value: Any, path: str) -> datetime | None:
        if value is None:
            return None
        when = _datetime(value)
        if when is None:
            self.miss(path, "not a valid dateTime")
        return when


_RATE_TIMES = frozenset({"h", "min", "d"})


def parse_medication_request(
    resource: Mapping[str, Any],
    where: str,
    log: ParseLog,
    medications: Mapping[str, JSON] | None = None,
    *,
    is_draft: bool = False,
    selected: bool = True,
    plain: bool = True,
    terms: MedicationTerms | None = None,
    draft_index: int | None = None,
    unread: list[UnreadElement] | None = None,
    conditions: Mapping[str, JSON] | None = None,
) -> MedicationOrder | None:
    """Flatten one MedicationRequest, resolving contained or referenced Medications.

    ``medications``: checked Medication JSON by ``Medication/<id>`` (``parse_medication``).
    ``plain`` as for ``checked``. ``terms``: ``unchecked_medication_terms`` of ``resource``,
    if already read; used when the check kept the resource's own medication elements.
    A draft order is read tolerantly: invalid elements are left out and listed in
    ``MedicationOrder.unread`` (and in ``unread``, when given, also if nothing could be read).
    A draft order's indication is read (``reasons``), resolving ``reasonReference`` against
    ``conditions`` (``parse_condition`` JSON by ``Condition/<id>``).
    """
    lost: list[UnreadElement] = [] if unread is None else unread
    mr = checked(resource, where, log, plain=plain, unread=lost if is_draft else None)
    if mr is None:
        return None
    if terms is None or any(mr.get(k) is not resource.get(k) for k in _MEDICATION_ELEMENTS):
        terms = _medication_terms(mr, medications, where, log, lost)
    codings, ingredients, texts = terms
    read = _Reader(lost)

    dose = rate = None
    route = dosage_text = None
    when = None
    repeat_days = None
    for d, dosage in enumerate(mr.get("dosageInstruction") or ()):
        dosage_text = dosage_text or dosage.get("text")
        route = route or _route(dosage.get("route"))
        for r, dr in enumerate(dosage.get("doseAndRate") or ()):
            path = f"dosageInstruction[{d}].doseAndRate[{r}]"
            if dose is None:
                dose = read.quantity(dr.get("doseQuantity"), f"{path}.doseQuantity")
            if rate is None:
                rate = read.rate(dr, path)
        if dose is None:
            dose = _ordered_dose(dosage, f"dosageInstruction[{d}]", read)
        timing = dosage.get("timing") or {}
        for e, event in enumerate(timing.get("event") or ()):
            moment = read.moment(event, f"dosageInstruction[{d}].timing.event[{e}]")
            when = when or moment
        repeat_days = repeat_days or _repeat_days(timing.get("repeat"))
        bounds = (timing.get("repeat") or {}).get("boundsPeriod") or {}
        if when is None and isinstance(bounds, Mapping):
            when = _datetime(bounds.get("start"))
    authored = read.moment(mr.get("authoredOn"), "authoredOn") or when
    volume = _infusion_volume(mr, (*texts, dosage_text or ""), read)
    rid = mr.get("id")
    return MedicationOrder(
        ref=f"MedicationRequest/{rid}" if rid else None,
        status=mr.get("status"),
        intent=mr.get("intent"),
        codings=codings,
        ingredient_codings=ingredients,
        texts=texts,
        dose=dose,
        rate=rate,
        volume=volume,
        route=route,
        dosage_text=dosage_text,
        authored_on=authored,
        planned=when,
        plan_texts=_plan_texts(mr) if is_draft else (),
        repeat_days=repeat_days,
        is_draft=is_draft,
        selected=selected,
        unread=tuple(lost),
        draft_index=draft_index,
        reasons=_reasons(mr, conditions) if is_draft else (),
        resource=dict(resource),
    )


_PERIOD_DAYS = {"d": 1, "wk": DAYS_PER_WEEK}


def _repeat_days(repeat: Any) -> float | None:
    """Days between doses of a ``timing.repeat`` of once per period in days or weeks ("every
    2 weeks": frequency 1, period 2, periodUnit wk → 14); None for any other repeat."""
    if not isinstance(repeat, Mapping) or repeat.get("frequency", 1) != 1:
        return None
    period, unit = _number(repeat.get("period")), repeat.get("periodUnit")
    if period is None or period <= 0 or unit not in _PERIOD_DAYS:
        return None
    return period * _PERIOD_DAYS[unit]


def _plan_texts(mr: JSON) -> tuple[str, ...]:
    """Texts that may say where a dose sits in its plan ("Cycle 2 Day 1"): the treatment plan
    or order set it is based on (``basedOn.display``), ``groupIdentifier``, the timing's code
    text, and the order's notes. Non-strings are ignored."""
    found: list[Any] = [
        *(
            (ref or {}).get("display")
            for ref in mr.get("basedOn") or ()
            if isinstance(ref, Mapping)
        ),
        (mr.get("groupIdentifier") or {}).get("value"),
        *(
            ((d.get("timing") or {}).get("code") or {}).get("text")
            for d in mr.get("dosageInstruction") or ()
            if isinstance(d, Mapping)
        ),
        *((n or {}).get("text") for n in mr.get("note") or () if isinstance(n, Mapping)),
    ]
    return tuple(t for t in found if isinstance(t, str) and t)


_VOLUME_TEXT = re.compile(r"(\d+(?:\.\d+)?)\s*ml\b", re.IGNORECASE)


def _infusion_volume(mr: JSON, texts: Iterable[str], read: _Reader) -> Quantity | None:
    """The infusion bag volume: ``dispenseRequest.quantity`` in mL, else "… 250 mL" in the text
    (a positive volume only; an unreadable quantity is noted in ``read``)."""
    dispensed = (mr.get("dispenseRequest") or {}).get("quantity")
    q = read.quantity(dispensed, "dispenseRequest.quantity")
    if q is not None and q.unit == "mL":
        return q
    for text in texts:
        match = _VOLUME_TEXT.search(text or "")
        if match and float(match.group(1)) > 0:
            return Quantity(float(match.group(1)), "mL")
    return None


def _status(concept: JSON | None) -> str | None:
    """A clinical/verification status: the first coded value, else the text in lower case."""
    if not concept:
        return None
    for c in concept.get("coding") or ():
        if c.get("code"):
            return str(c["code"])
    text = concept.get("text")
    return text.lower() if text else None


def parse_allergy(
    resource: Mapping[str, Any], where: str, log: ParseLog, *, plain: bool = True
) -> Allergy | None:
    """Flatten one AllergyIntolerance (``plain`` as for ``checked``)."""
    ai = checked(resource, where, log, plain=plain)
    if ai is None:
        return None
    codings = list(_codings(ai.get("code")))
    texts = list(_texts(ai.get("code")))
    reactions = []
    for r in ai.get("reaction") or ():
        codings.extend(_codings(r.get("substance")))
        texts.extend(_texts(r.get("substance")))
        manifestations = r.get("manifestation") or ()
        reactions.append(
            Reaction(
                manifestations=tuple(c for m in manifestations for c in _codings(m)),
                manifestation_texts=tuple(t for m in manifestations for t in _texts(m)),
                severity=r.get("severity"),
                onset=_datetime(r.get("onset")),
                description=r.get("description"),
            )
        )
    onset = _datetime(ai.get("onsetDateTime"))
    rid = ai.get("id")
    return Allergy(
        ref=f"AllergyIntolerance/{rid}" if rid else None,
        clinical_status=_status(ai.get("clinicalStatus")),
        verification_status=_status(ai.get("verificationStatus")),
        criticality=ai.get("criticality"),
        category=tuple(ai.get("category") or ()),
        codings=tuple(codings),
        texts=tuple(texts),
        reactions=tuple(reactions),
        recorded=_datetime(ai.get("recordedDate")) or onset,
        notes=tuple(n["text"] for n in ai.get("note") or () if n.get("text")),
    )


def latest_weight(
    resources: Iterable[Mapping[str, Any]], log: ParseLog, *, plain: bool = True
) -> Weight | None:
    """The most recent valid body-weight Observation, in kg (``plain`` as for ``checked``)."""
    best: Weight | None = None
    for i, res in enumerate(resources):
        if res.get("resourceType") != "Observation":
            continue
        obs = checked(res, f"#{i}", log, plain=plain)
        if obs is None or obs.get("status") in ("entered-in-error", "cancelled"):
            continue
        codes = {c.get("code") for c in (obs.get("code") or {}).get("coding") or ()}
        if codes and BODY_WEIGHT_LOINC not in codes:
            continue
        q = obs.get("valueQuantity")
        value = _number(q.get("value")) if q else None
        if q is None or value is None:
            continue
        unit = (q.get("code") or q.get("unit") or "").strip()
        factor = _WEIGHT_TO_KG.get(unit) or _WEIGHT_TO_KG.get(unit.lower())
        if factor is None:
            log.warnings.append(f"Observation #{i}: body weight unit not understood")
            continue
        when = _datetime(obs.get("effectiveDateTime")) or _datetime(obs.get("issued"))
        candidate = Weight(kg=value * factor, effective=when)
        if best is None or (when and (best.effective is None or when > best.effective)):
            best = candidate
    return best


def birth_date(
    resources: Iterable[Mapping[str, Any]], log: ParseLog, *, plain: bool = True
) -> date | None:
    """The Patient's birth date, if a valid Patient resource gives a full one."""
    for i, res in enumerate(resources):
        if res.get("resourceType") == "Patient":
            patient = checked(res, f"#{i}", log, plain=plain)
            bd = patient.get("birthDate") if patient is not None else None
            if not bd:
                continue
            if isinstance(bd, date):  # the model's full date
                return bd
            if isinstance(bd, str) and len(bd) == len("YYYY-MM-DD"):  # plain: a full date
                return date.fromisoformat(bd)
            return None  # partial ("1962", "1962-03")
    return None


# MedicationAdministration statuses that record no dose given: they count for nothing.
NOT_GIVEN = frozenset({"not-done", "entered-in-error"})
_REQUEST_REF = re.compile(r"(?:^|/)(MedicationRequest/[A-Za-z0-9\-.]{1,256})(?:/_history/[^/]*)?$")


def request_ref_key(reference: Any) -> str | None:
    """``MedicationRequest/123``, ``https://x/fhir/MedicationRequest/123/_history/2`` →
    ``MedicationRequest/123``; a contained, conditional or other-type reference → None."""
    if not isinstance(reference, str):
        return None
    match = _REQUEST_REF.search(reference)
    return match.group(1) if match else None


def parse_medication_administration(
    resource: Mapping[str, Any],
    where: str,
    log: ParseLog,
    medications: Mapping[str, JSON] | None = None,
    *,
    plain: bool = True,
) -> MedicationOrder | None:
    """Flatten one MedicationAdministration as a dose given (``source="administration"``).

    Its effective time (``effectiveDateTime``, else ``effectivePeriod.start``) goes in
    ``authored_on``, the MedicationRequest it carried out in ``fulfils``; the medication is
    read as for a MedicationRequest, dose, rate and route from ``dosage``. The status is kept
    as sent (callers drop ``NOT_GIVEN``). ``medications`` and ``plain`` as for
    ``parse_medication_request``.
    """
    ma = checked(resource, where, log, plain=plain)
    if ma is None:
        return None
    codings, ingredients, texts = _medication_terms(ma, medications, where, log)
    dosage = ma.get("dosage") or {}
    rate = _quantity(dosage.get("rateQuantity"))
    if rate is None and dosage.get("rateRatio"):
        rate = _ratio_rate(dosage["rateRatio"])
    dosage_text = dosage.get("text")
    period = ma.get("effectivePeriod") or {}
    reasons = ma.get("statusReason") or ()
    rid = ma.get("id")
    return MedicationOrder(
        ref=f"MedicationAdministration/{rid}" if rid else None,
        status=ma.get("status"),
        intent=None,
        codings=codings,
        ingredient_codings=ingredients,
        texts=texts,
        dose=_quantity(dosage.get("dose")),
        rate=rate,
        # The charted dosage first: a product's name may hold its vial size ("500 mg/50 mL").
        volume=_infusion_volume(ma, (dosage_text or "", *texts), _Reader([])),
        route=_route(dosage.get("route")),
        dosage_text=dosage_text,
        authored_on=_datetime(ma.get("effectiveDateTime")) or _datetime(period.get("start")),
        source="administration",
        fulfils=request_ref_key((ma.get("request") or {}).get("reference")),
        status_reason_codings=tuple(c for r in reasons for c in _codings(r)),
        status_reason_texts=tuple(t for r in reasons for t in _texts(r)),
        resource=dict(resource),
    )
