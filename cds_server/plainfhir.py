"""A fast validation check for plainly valid FHIR resources of the types a hook call reads
or suggests.

Validating with the ``fhir.resources`` R4B models costs about 0.1 ms per resource, and an
order-sign call for an oncology patient carries dozens of MedicationRequests. Most of them
are *plain*: they use only common elements, with well-formed values (so are most Patients
and body-weight Observations, checked the same way). ``is_plain`` checks that in compiled
code (a ``pydantic_core`` schema built once at import); a plain resource is then read as the
JSON it is, without building the model (``fhirdata/parse.py``).

The plain check is deliberately **stricter** than the R4B models: only the elements listed
below, no empty strings, arrays or nulls, codes and URIs in printable ASCII, dates only in
their common full forms, decimals as JSON numbers of moderate size, and the model's rules
on required elements and choice types. A resource that passes is one the model accepts;
every other resource goes to the model exactly as before (repairs, unknown-property
trimming, warnings). ``tests/test_speedups.py`` checks that both paths give the same
parse result over every fixture and thousands of mutations of them.

Shared by parsing (``fhirdata/parse.py``) and by the check of suggested resources
(``render/suggestions.py``): a suggestion that passes here needs no model validation.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import SchemaValidator, ValidationError
from pydantic_core import core_schema as cs

# -- primitives (each at least as strict as the FHIR R4 primitive it stands for) ---------------

_STRING = cs.str_schema(strict=True, pattern="[!-~]")  # some printable ASCII
_CODE = cs.str_schema(strict=True, pattern=r"^[!-~]+( [!-~]+)*$")
_URI = cs.str_schema(strict=True, pattern=r"^[!-~]+$")
# Up to 256 characters, not FHIR's 64: Epic's ids are longer (≈ 200 in its published
# draftOrders) and the R4B models accept them, so they need not leave the fast path.
_ID = cs.str_schema(strict=True, pattern=r"^[A-Za-z0-9\-.]{1,256}$")
_BOOLEAN = cs.bool_schema(strict=True)
_DECIMAL = cs.union_schema(
    [
        cs.int_schema(strict=True, ge=-(10**15), le=10**15),
        cs.float_schema(strict=True, allow_inf_nan=False),
    ]
)
_INTEGER = cs.int_schema(strict=True, ge=0, le=2**31 - 1)
# Full dates and date-times that exist in the calendar, 1900-2099; February 29 is left to
# the model (leap years), like every other form (partial dates, leap seconds…). ASCII
# digits only: ``\d`` would also match other scripts' digits.
_D = "[0-9]"
_DAY = (
    f"((0[13578]|1[02])-(0[1-9]|[12]{_D}|3[01])"
    f"|(0[469]|11)-(0[1-9]|[12]{_D}|30)"
    f"|02-(0[1-9]|1{_D}|2[0-8]))"
)
_TIME = (
    f"T([01]{_D}|2[0-3]):[0-5]{_D}:[0-5]{_D}([.]{_D}{{1,6}})?"
    f"(Z|[+-]((0{_D}|1[0-3]):[0-5]{_D}|14:00))"
)
_YMD = f"(19|20){_D}{_D}-{_DAY}"
_DATE = cs.str_schema(strict=True, pattern=f"^{_YMD}$")
_DATE_TIME = cs.str_schema(strict=True, pattern=f"^{_YMD}({_TIME})?$")
_INSTANT = cs.str_schema(strict=True, pattern=f"^{_YMD}{_TIME}$")  # time and zone required

# Choice elements ``x[x]``: at most one of each group (the model's rule).
_DOSE = frozenset(("doseQuantity", "doseRange"))
_RATE = frozenset(("rateQuantity", "rateRatio", "rateRange"))
_MEDICATION = frozenset(("medicationCodeableConcept", "medicationReference"))
_ITEM = frozenset(("itemCodeableConcept", "itemReference"))


# -- complex types: {name: spec}; "!name" is required; [spec] is a non-empty array --------
# Compiled to typed-dict schemas: the check builds no objects beyond the dicts it returns
# (about half the cost of model instances), and callers read the JSON they passed in.


class _Object(dict[str, Any]):
    """An element spec: ``{name: spec}`` (distinct from a compiled primitive schema)."""


def _compile(spec: Any) -> Any:
    if isinstance(spec, _Object):
        fields = {
            name.lstrip("!"): cs.typed_dict_field(_compile(sub), required=name.startswith("!"))
            for name, sub in spec.items()
        }
        return cs.typed_dict_schema(fields, extra_behavior="forbid", strict=True)
    if isinstance(spec, list):
        return cs.list_schema(_compile(spec[0]), min_length=1, strict=True)
    return spec


def _object(**fields: Any) -> Any:
    return _compile(_Object(fields))


_CODING = _object(system=_URI, version=_STRING, code=_CODE, display=_STRING, userSelected=_BOOLEAN)
_CONCEPT = _object(coding=[_CODING], text=_STRING)
_IDENTIFIER = _object(use=_CODE, system=_URI, value=_STRING)
_REFERENCE = _object(reference=_STRING, display=_STRING, type=_URI)
_QUANTITY = _object(value=_DECIMAL, unit=_STRING, system=_URI, code=_CODE)  # no comparator
_RANGE = _object(low=_QUANTITY, high=_QUANTITY)
_RATIO = _object(numerator=_QUANTITY, denominator=_QUANTITY)
_ANNOTATION = _compile(_Object({"!text": _STRING, "authorString": _STRING}))
_META = _object(versionId=_ID, profile=[_URI], source=_URI)
_TIMING = _object(event=[_DATE_TIME], code=_CONCEPT)
_DOSE_AND_RATE = _object(
    type=_CONCEPT,
    doseQuantity=_QUANTITY,
    doseRange=_RANGE,
    rateQuantity=_QUANTITY,
    rateRatio=_RATIO,
    rateRange=_RANGE,
)
_DOSAGE = _object(
    sequence=_INTEGER,
    text=_STRING,
    additionalInstruction=[_CONCEPT],
    patientInstruction=_STRING,
    timing=_TIMING,
    asNeededBoolean=_BOOLEAN,
    site=_CONCEPT,
    route=_CONCEPT,
    method=_CONCEPT,
    doseAndRate=[_DOSE_AND_RATE],
)

_MEDICATION_REQUEST = _compile(
    _Object(
        {
            "!resourceType": cs.literal_schema(["MedicationRequest"]),
            "id": _ID,
            "meta": _META,
            "identifier": [_IDENTIFIER],
            "!status": _CODE,
            "statusReason": _CONCEPT,
            "!intent": _CODE,
            "category": [_CONCEPT],
            "priority": _CODE,
            "doNotPerform": _BOOLEAN,
            "medicationCodeableConcept": _CONCEPT,
            "medicationReference": _REFERENCE,
            "!subject": _REFERENCE,
            "encounter": _REFERENCE,
            "authoredOn": _DATE_TIME,
            "requester": _REFERENCE,
            "recorder": _REFERENCE,
            "reasonCode": [_CONCEPT],
            "reasonReference": [_REFERENCE],
            "courseOfTherapyType": _CONCEPT,
            "note": [_ANNOTATION],
            "dosageInstruction": [_DOSAGE],
            "dispenseRequest": _object(quantity=_QUANTITY, numberOfRepeatsAllowed=_INTEGER),
        }
    )
)

_REACTION = _compile(
    _Object(
        {
            "substance": _CONCEPT,
            "!manifestation": [_CONCEPT],
            "description": _STRING,
            "onset": _DATE_TIME,
            "severity": _CODE,
            "exposureRoute": _CONCEPT,
            "note": [_ANNOTATION],
        }
    )
)
_ALLERGY_INTOLERANCE = _compile(
    _Object(
        {
            "!resourceType": cs.literal_schema(["AllergyIntolerance"]),
            "id": _ID,
            "meta": _META,
            "identifier": [_IDENTIFIER],
            "clinicalStatus": _CONCEPT,
            "verificationStatus": _CONCEPT,
            "type": _CODE,
            "category": [_CODE],
            "criticality": _CODE,
            "code": _CONCEPT,
            "!patient": _REFERENCE,
            "encounter": _REFERENCE,
            "onsetDateTime": _DATE_TIME,
            "recordedDate": _DATE_TIME,
            "recorder": _REFERENCE,
            "asserter": _REFERENCE,
            "lastOccurrence": _DATE_TIME,
            "note": [_ANNOTATION],
            "reaction": [_REACTION],
        }
    )
)

_INGREDIENT = _object(
    itemCodeableConcept=_CONCEPT, itemReference=_REFERENCE, isActive=_BOOLEAN, strength=_RATIO
)
_MEDICATION_RESOURCE = _compile(
    _Object(
        {
            "!resourceType": cs.literal_schema(["Medication"]),
            "id": _ID,
            "meta": _META,
            "identifier": [_IDENTIFIER],
            "code": _CONCEPT,
            "status": _CODE,
            "manufacturer": _REFERENCE,
            "form": _CONCEPT,
            "amount": _RATIO,
            "ingredient": [_INGREDIENT],
        }
    )
)

_HUMAN_NAME = _object(
    use=_CODE, text=_STRING, family=_STRING, given=[_STRING], prefix=[_STRING], suffix=[_STRING]
)
_CONTACT_POINT = _object(system=_CODE, value=_STRING, use=_CODE)  # no rank (positiveInt)
_ADDRESS = _object(
    use=_CODE,
    type=_CODE,
    text=_STRING,
    line=[_STRING],
    city=_STRING,
    district=_STRING,
    state=_STRING,
    postalCode=_STRING,
    country=_STRING,
)
_PATIENT = _compile(
    _Object(
        {
            "!resourceType": cs.literal_schema(["Patient"]),
            "id": _ID,
            "meta": _META,
            "identifier": [_IDENTIFIER],
            "active": _BOOLEAN,
            "name": [_HUMAN_NAME],
            "telecom": [_CONTACT_POINT],
            "gender": _CODE,
            "birthDate": _DATE,
            "address": [_ADDRESS],
            "maritalStatus": _CONCEPT,
            "generalPractitioner": [_REFERENCE],
            "managingOrganization": _REFERENCE,
        }
    )
)
_OBSERVATION = _compile(
    _Object(
        {
            "!resourceType": cs.literal_schema(["Observation"]),
            "id": _ID,
            "meta": _META,
            "identifier": [_IDENTIFIER],
            "!status": _CODE,
            "category": [_CONCEPT],
            "!code": _CONCEPT,
            "subject": _REFERENCE,
            "encounter": _REFERENCE,
            "effectiveDateTime": _DATE_TIME,
            "issued": _INSTANT,
            "performer": [_REFERENCE],
            "valueQuantity": _QUANTITY,
            "note": [_ANNOTATION],
        }
    )
)

# Only for the check of suggested resources (admission, observation, referral): the elements
# a draft ServiceRequest of ours can hold, and a few common ones.
_SERVICE_REQUEST = _compile(
    _Object(
        {
            "!resourceType": cs.literal_schema(["ServiceRequest"]),
            "id": _ID,
            "meta": _META,
            "identifier": [_IDENTIFIER],
            "!status": _CODE,
            "!intent": _CODE,
            "category": [_CONCEPT],
            "priority": _CODE,
            "code": _CONCEPT,
            "!subject": _REFERENCE,
            "encounter": _REFERENCE,
            "authoredOn": _DATE_TIME,
            "reasonCode": [_CONCEPT],
            "note": [_ANNOTATION],
        }
    )
)

_VALIDATORS: dict[str, SchemaValidator] = {
    "MedicationRequest": SchemaValidator(_MEDICATION_REQUEST),
    "AllergyIntolerance": SchemaValidator(_ALLERGY_INTOLERANCE),
    "Medication": SchemaValidator(_MEDICATION_RESOURCE),
    "Patient": SchemaValidator(_PATIENT),
    "Observation": SchemaValidator(_OBSERVATION),
    "ServiceRequest": SchemaValidator(_SERVICE_REQUEST),
}
TYPES = frozenset(_VALIDATORS)


def _choices_ok(rtype: str, data: dict[str, Any]) -> bool:
    """The choice rules the schema cannot express (``data`` has passed the schema)."""
    if rtype == "Medication":
        return all(len(i.keys() & _ITEM) == 1 for i in data.get("ingredient", ()))
    if rtype != "MedicationRequest":
        return True
    if len(data.keys() & _MEDICATION) != 1:
        return False
    for dosage in data.get("dosageInstruction", ()):
        for dr in dosage.get("doseAndRate", ()):
            if len(dr.keys() & _DOSE) > 1 or len(dr.keys() & _RATE) > 1:
                return False
    return True


def is_plain(rtype: str, data: Any) -> bool:
    """True if ``data`` is a plain resource of type ``rtype`` (so the R4B model accepts it)."""
    validator = _VALIDATORS.get(rtype)
    if validator is None or not isinstance(data, dict):
        return False
    try:
        validator.validate_python(data)
    except ValidationError:
        return False
    return _choices_ok(rtype, data)
