"""Marshmallow schemas for the ``cards/*.yaml`` knowledge format (unknown keys are errors).

The format is documented for pharmacists in ``cards/README.md``; this module is its
machine-checked definition. Schemas validate structure and vocabulary only; citation
ids and cross-file references are checked by the loader.
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from cds_server.knowledge.model import DayRange, Source

FORMAT = "infusion-cds-knowledge/2"

EVIDENCE = validate.OneOf(["verified", "secondary", "unverified"])
ROLES = validate.OneOf(
    [
        "h1-antihistamine",
        "h2-antagonist",
        "corticosteroid",
        "antipyretic",
        "leukotriene-antagonist",
        "il6-antagonist",
        "anaphylaxis-treatment",
        "antiemetic",
    ]
)
CODE_SYSTEMS = validate.OneOf(["rxnorm", "atc", "snomed", "ndc"])
ID = validate.Regexp(r"^[a-z0-9][a-z0-9-]*$", error="must be lower-case letters, digits and '-'")
# A jurisdiction setting: an ISO 3166 country code (US, CH, GB…) or EU.
JURISDICTION = validate.Regexp(
    r"^[A-Z]{2}$", error="must be a 2-letter code in capitals: a country (US, CH, GB…) or EU"
)
NON_EMPTY = validate.Length(min=1)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class ProvenanceFields(_Strict):
    """Fields every fact carries: evidence level and citations."""

    evidence = fields.String(required=True, validate=EVIDENCE)
    cite = fields.List(fields.String(), required=True, validate=NON_EMPTY)
    jurisdiction = fields.String()
    note = fields.String()


SOURCE_KINDS = validate.OneOf(["label", "paper", "guideline", "website", "dataset"])


class ReadCopySchema(_Strict):
    """The copy of a source actually read (e.g. a drugs.com or manufacturer page of a label)."""

    title = fields.String(required=True, validate=NON_EMPTY)
    url = fields.Url(schemes={"http", "https"})


class SourceSchema(_Strict):
    title = fields.String(required=True, validate=NON_EMPTY)
    kind = fields.String(required=True, validate=SOURCE_KINDS)
    url = fields.Url(schemes={"http", "https"})
    label_version = fields.String()
    spl_set_id = fields.String(
        validate=validate.Regexp(
            r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$",
            error="must be a DailyMed SPL set id (lower-case UUID)",
        )
    )
    doi = fields.String(
        validate=validate.Regexp(r"^10\.\d{4,9}/\S+$", error="must be a DOI such as 10.1000/xyz")
    )
    pmid = fields.String(validate=validate.Regexp(r"^\d{1,9}$", error="must be digits"))
    pmcid = fields.String(validate=validate.Regexp(r"^PMC\d+$", error="must look like PMC1234567"))
    publisher = fields.String(validate=NON_EMPTY)
    year = fields.Integer(validate=validate.Range(min=1900, max=2100))
    section = fields.String(validate=NON_EMPTY)
    read = fields.Nested(ReadCopySchema)
    no_primary_id = fields.String(validate=NON_EMPTY)
    jurisdiction = fields.String()

    @validates_schema
    def _primary_or_why_not(self, data: dict[str, Any], **_: Any) -> None:
        """A reviewer must be able to open the primary document, or read why there is none."""
        if not Source.from_yaml("", data).primary_identifier and not data.get("no_primary_id"):
            raise ValidationError(
                "name the primary document (spl_set_id, doi, pmid, pmcid, or publisher and "
                "year for a guideline or dataset) or say why none exists in no_primary_id",
                field_name="no_primary_id",
            )


class QuantitySchema(_Strict):
    value = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    unit = fields.String(required=True, validate=NON_EMPTY)


class DoseRangeSchema(_Strict):
    value = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    min = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    max = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    unit = fields.String(required=True, validate=NON_EMPTY)

    @validates_schema
    def _one_form(self, data: dict[str, Any], **_: Any) -> None:
        if "value" in data and ("min" in data or "max" in data):
            raise ValidationError("give either value or min/max, not both")
        if "value" not in data and not ("min" in data and "max" in data):
            raise ValidationError("give value, or both min and max")
        if "min" in data and "max" in data and data["min"] > data["max"]:
            raise ValidationError("min is greater than max")


DAYS = validate.Range(min=0)


class DayRangeSchema(_Strict):
    more_than = fields.Integer(strict=True, validate=DAYS)
    at_least = fields.Integer(strict=True, validate=DAYS)
    at_most = fields.Integer(strict=True, validate=DAYS)
    less_than = fields.Integer(strict=True, validate=DAYS)

    @validates_schema
    def _bounds(self, data: dict[str, Any], **_: Any) -> None:
        if not data:
            raise ValidationError("give more_than/at_least and/or at_most/less_than")
        if "more_than" in data and "at_least" in data:
            raise ValidationError("give more_than or at_least, not both")
        if "at_most" in data and "less_than" in data:
            raise ValidationError("give at_most or less_than, not both")
        days = DayRange(**data)
        if days.first is not None and days.last is not None and days.first > days.last:
            raise ValidationError("the range is empty")


class ExposureCountSchema(_Strict):
    at_least = fields.Integer(strict=True, required=True, validate=validate.Range(min=2))


class CycleStartField(fields.Field):
    """``every`` or a list of cycle numbers (1-based)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        if value == "every":
            return value
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            return value
        raise ValidationError("must be 'every' or a list of cycle numbers (1, 2, ...)")


class ApplicabilitySchema(_Strict):
    infusions = fields.String(validate=validate.OneOf(["first", "subsequent", "all"]))
    infusion_numbers = fields.List(fields.Integer(validate=validate.Range(min=1)))
    steps = fields.List(fields.String(validate=ID))
    condition = fields.String(validate=NON_EMPTY)
    exposures = fields.Nested(ExposureCountSchema)
    gap_days = fields.Nested(DayRangeSchema)
    cycle_start = CycleStartField()
    restart = fields.Boolean(truthy={True}, falsy={False})
    jurisdictions = fields.List(fields.String(validate=JURISDICTION), validate=NON_EMPTY)
    indications = fields.List(fields.String(validate=ID), validate=NON_EMPTY)


class CodeSchema(ProvenanceFields):
    system = fields.String(required=True, validate=CODE_SYSTEMS)
    code = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9.-]+$"))
    display = fields.String()
    tty = fields.String()


class BiosimilarSchema(_Strict):
    name = fields.String(required=True, validate=NON_EMPTY)
    brand = fields.String()


class IdentitySchema(_Strict):
    names = fields.List(fields.String(validate=NON_EMPTY), required=True, validate=NON_EMPTY)
    brands = fields.List(fields.String(validate=NON_EMPTY))
    biosimilars = fields.List(fields.Nested(BiosimilarSchema))
    exclude_terms = fields.List(fields.String(validate=NON_EMPTY))
    exclude_routes = fields.List(fields.String(validate=NON_EMPTY))
    codes = fields.List(fields.Nested(CodeSchema))


class NotCoveringSchema(ProvenanceFields):
    agent = fields.String(required=True, validate=ID)
    reason = fields.String(required=True, validate=NON_EMPTY)


class PremedAgentSchema(ProvenanceFields):
    role = fields.String(required=True, validate=ROLES)
    agent = fields.String(validate=ID)
    alternatives = fields.List(fields.String(validate=ID))
    not_covered_by = fields.List(fields.Nested(NotCoveringSchema))
    dose = fields.Nested(DoseRangeSchema)
    route = fields.String()
    timing = fields.String(required=True, validate=NON_EMPTY)
    required = fields.Boolean(load_default=True)


class PremedRegimenSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    applies = fields.Nested(ApplicabilitySchema, required=True)
    agents = fields.List(fields.Nested(PremedAgentSchema), required=True, validate=NON_EMPTY)
    text = fields.String()


class RateScheduleSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    label = fields.String(required=True, validate=NON_EMPTY)
    kind = fields.String(
        required=True, validate=validate.OneOf(["titrated", "fixed-duration", "rapid"])
    )
    applies = fields.Nested(ApplicabilitySchema, required=True)
    start = fields.Nested(QuantitySchema)
    increment = fields.Nested(QuantitySchema)
    every_min = fields.Float(validate=validate.Range(min=0, min_inclusive=False))
    steps = fields.List(fields.Nested(QuantitySchema))
    max = fields.Nested(QuantitySchema)
    duration = fields.Nested(QuantitySchema)
    text = fields.String()

    @validates_schema
    def _shape(self, data: dict[str, Any], **_: Any) -> None:
        kind = data.get("kind")
        if kind == "titrated":
            if "start" not in data:
                raise ValidationError("a titrated schedule needs a start rate", "start")
            if ("increment" in data or "steps" in data) and "every_min" not in data:
                raise ValidationError("increments or steps need every_min", "every_min")
            units = {data[k]["unit"] for k in ("start", "increment", "max") if k in data}
            units |= {s["unit"] for s in data.get("steps", [])}
            if len(units) > 1:
                raise ValidationError(f"rates use different units: {sorted(units)}")
        if kind == "fixed-duration" and "duration" not in data:
            raise ValidationError("a fixed-duration schedule needs a duration", "duration")
        if kind == "rapid" and "text" not in data and "duration" not in data:
            raise ValidationError("a rapid schedule needs a duration or a text", "text")


class DoseStepSchema(_Strict):
    id = fields.String(required=True, validate=ID)
    label = fields.String(required=True, validate=NON_EMPTY)
    dose = fields.Nested(QuantitySchema, required=True)
    day = fields.String()


class StepUpScheduleSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    label = fields.String(required=True, validate=NON_EMPTY)
    steps = fields.List(fields.Nested(DoseStepSchema), required=True, validate=NON_EMPTY)


class DosingScheduleSchema(_Strict):
    label = fields.String(required=True, validate=NON_EMPTY)
    every_days = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class RestartRuleSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    after_steps = fields.List(fields.String(validate=ID), required=True, validate=NON_EMPTY)
    gap_days = fields.Nested(DayRangeSchema, required=True)
    schedule = fields.Nested(DosingScheduleSchema)
    restart_at = fields.String(validate=ID)
    text = fields.String(required=True, validate=NON_EMPTY)


class CourseAlertSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    applies = fields.Nested(ApplicabilitySchema, required=True)
    indicator = fields.String(required=True, validate=validate.OneOf(["info", "warning"]))
    headline = fields.String(required=True, validate=NON_EMPTY)
    text = fields.String(required=True, validate=NON_EMPTY)


class AllergyRiskSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    terms = fields.List(fields.String(validate=NON_EMPTY), required=True, validate=NON_EMPTY)
    applies = fields.Nested(ApplicabilitySchema, load_default=dict)
    indicator = fields.String(required=True, validate=validate.OneOf(["info", "warning"]))
    headline = fields.String(required=True, validate=NON_EMPTY)
    text = fields.String(required=True, validate=NON_EMPTY)


class AvoidedAgentSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    role = fields.String(required=True, validate=ROLES)
    headline = fields.String(required=True, validate=NON_EMPTY)
    text = fields.String(required=True, validate=NON_EMPTY)


class MonitoringSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    kind = fields.String(
        required=True,
        validate=validate.OneOf(["hospitalization", "observation", "proximity", "vital-signs"]),
    )
    applies = fields.Nested(ApplicabilitySchema, required=True)
    duration = fields.Nested(QuantitySchema)
    text = fields.String(required=True, validate=NON_EMPTY)


class PrerequisiteSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    applies = fields.Nested(ApplicabilitySchema, required=True)
    requires_drug = fields.String(required=True, validate=ID)
    lookback_days = fields.Integer(validate=validate.Range(min=1))
    text = fields.String(required=True, validate=NON_EMPTY)


class TocilizumabReadinessSchema(ProvenanceFields):
    applies = fields.Nested(ApplicabilitySchema, required=True)
    doses_on_hand = fields.Integer(validate=validate.Range(min=1))
    text = fields.String(required=True, validate=NON_EMPTY)


class ReactionSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    kind = fields.String(
        required=True,
        validate=validate.OneOf(
            ["management", "rechallenge", "after-severe", "contraindication", "desensitization"]
        ),
    )
    grades = fields.String()
    text = fields.String(required=True, validate=NON_EMPTY)


class CrossReactivitySchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    members = fields.List(fields.String(validate=ID), required=True, validate=NON_EMPTY)
    text = fields.String(required=True, validate=NON_EMPTY)


class WeightBandSchema(_Strict):
    min_kg = fields.Float()
    max_kg = fields.Float()
    dose = fields.Nested(QuantitySchema, required=True)


class WeightBasedDosingSchema(ProvenanceFields):
    id = fields.String(required=True, validate=ID)
    indication = fields.String(required=True, validate=NON_EMPTY)
    bands = fields.List(fields.Nested(WeightBandSchema), required=True, validate=NON_EMPTY)
    max_dose = fields.Nested(QuantitySchema)
    route = fields.String()
    text = fields.String()


class _FileHeader(_Strict):
    format = fields.String(required=True, validate=validate.Equal(FORMAT))
    id = fields.String(required=True, validate=ID)
    kind = fields.String(required=True)
    name = fields.String(required=True, validate=NON_EMPTY)
    sources = fields.Dict(
        keys=fields.String(validate=ID), values=fields.Nested(SourceSchema), required=True
    )
    notes = fields.List(fields.String(validate=NON_EMPTY))


class DrugFileSchema(_FileHeader):
    display = fields.String(required=True, validate=NON_EMPTY)
    drug_class = fields.String(validate=ID)
    families = fields.List(fields.String(validate=ID))
    route = fields.String()
    label = fields.String(validate=ID)
    crs_risk = fields.Boolean(load_default=False)
    desensitization_eligible = fields.Boolean(load_default=False)
    desensitization_protocol = fields.String(validate=ID, load_default=None)
    identity = fields.Nested(IdentitySchema, required=True)
    premedication = fields.List(fields.Nested(PremedRegimenSchema))
    rate_schedules = fields.List(fields.Nested(RateScheduleSchema))
    step_up = fields.List(fields.Nested(StepUpScheduleSchema))
    monitoring = fields.List(fields.Nested(MonitoringSchema))
    prerequisites = fields.List(fields.Nested(PrerequisiteSchema))
    tocilizumab = fields.List(fields.Nested(TocilizumabReadinessSchema))
    reactions = fields.List(fields.Nested(ReactionSchema))
    restart = fields.List(fields.Nested(RestartRuleSchema))
    course_alerts = fields.List(fields.Nested(CourseAlertSchema))
    allergy_risks = fields.List(fields.Nested(AllergyRiskSchema))
    avoided_agents = fields.List(fields.Nested(AvoidedAgentSchema))
    new_cycle_after_days = fields.Integer(strict=True, validate=validate.Range(min=1))


class ClassFileSchema(_FileHeader):
    members = fields.List(fields.String(validate=ID), required=True, validate=NON_EMPTY)
    identity = fields.Nested(IdentitySchema, required=True)
    cross_reactivity = fields.List(fields.Nested(CrossReactivitySchema))


class MarketStatusSchema(ProvenanceFields):
    marketed = fields.Boolean(required=True)
    text = fields.String(required=True, validate=NON_EMPTY)


class AgentFileSchema(_FileHeader):
    roles = fields.List(fields.String(validate=ROLES), required=True, validate=NON_EMPTY)
    # Not marketed (in the jurisdiction): never suggested; still counts when already ordered.
    market_status = fields.Nested(MarketStatusSchema)
    identity = fields.Nested(IdentitySchema, required=True)
    weight_based_dosing = fields.List(fields.Nested(WeightBasedDosingSchema))


class ProtocolFileSchema(_FileHeader, ProvenanceFields):
    bag_dilutions = fields.List(
        fields.Float(validate=validate.Range(min=1)), required=True, validate=NON_EMPTY
    )
    steps = fields.List(fields.Nested(lambda: ProtocolStepSchema()), required=True)
    step_minutes = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))
    convention = fields.String(
        required=True, validate=validate.OneOf(["adjusted-concentration", "full-strength"])
    )
    min_final_rate_ml_h = fields.Float()
    text = fields.String(required=True)


class ProtocolStepSchema(_Strict):
    bag = fields.Integer(required=True, validate=validate.Range(min=1))
    rate_ml_h = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))


class CodeDisplaySchema(_Strict):
    code = fields.String(required=True, validate=ID)
    display = fields.String(required=True, validate=NON_EMPTY)


# What cards send as ``source.topic.code``: Epic accepts only ASCII letters and digits, at most
# 100 characters, and ties a clinician's override to the code (Epic's CDS Hooks tutorial,
# "Card Attributes"), so every client gets codes of that shape.
WIRE_CODE = validate.Regexp(
    r"^[A-Za-z0-9]{1,100}$", error="must be 1 to 100 ASCII letters and digits (no '-', no space)"
)


class TopicSchema(CodeDisplaySchema):
    wire_code = fields.String(required=True, validate=WIRE_CODE)
    override_reasons = fields.List(fields.String(validate=ID), load_default=list)


# Codes of HL7's CodeSystem non-adherence-reason-codes (CDS Hooks 3.0 ballot,
# http://terminology.hl7.org/CodeSystem/non-adherence-reason-codes): an override reason may
# name the one that fits it, so that override reports compare across services.
HL7_NON_ADHERENCE = validate.OneOf(
    [
        "cds-not-applicable",
        "patient-ineligible",
        "indication-order-exists",
        "action-completed",
        "action-unsuccessful",
        "action-performed-no-adverse-effect",
        "action-not-priority",
        "cds-suboptimal-context",
        "limited-time",
        "wrong-time-workflow",
        "inappropriate-recipient",
        "need-more-info",
        "recipient-disagrees-evidence",
        "does-not-align-latest-evidence",
        "expert-contradicts",
        "policy-contradicts",
        "recipient-does-not-trust",
        "recipient-concerns-outcomes",
        "risk-benefit-ratio",
        "mitigate-risk-negative-outcome",
        "likely-negative-health-outcomes",
        "patient-contraindication",
        "does-not-align-preferences",
        "patient-fears-discomfort",
        "patient-does-not-want-change",
        "cultural-religious-reason",
        "prefers-alternative",
        "patient-refuses",
        "not-convenient-feasible",
        "inadequate-support",
        "service-not-available",
        "implementation-challenges",
        "too-costly-uncovered",
        "recipient-does-not-understand",
        "comorbidity-disability",
    ]
)
# When a reason can be true for a card (checked per card by reasoning/reasons.py).
REASON_CONDITIONS = validate.OneOf(["prior-reaction-or-dose"])


class OverrideReasonSchema(CodeDisplaySchema):
    snooze_days = fields.Integer(strict=True, validate=validate.Range(min=1, max=365))
    offered_when = fields.String(validate=REASON_CONDITIONS)
    hl7_non_adherence = fields.String(validate=HL7_NON_ADHERENCE)


class ReactionCodeSchema(ProvenanceFields):
    system = fields.String(required=True, validate=CODE_SYSTEMS)
    code = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9.-]+$"))
    display = fields.String(required=True)


class SevereReactionSchema(_Strict):
    manifestation_codes = fields.List(fields.Nested(ReactionCodeSchema), required=True)
    manifestation_terms = fields.List(fields.String(validate=NON_EMPTY), required=True)
    text = fields.String(required=True)


class EngineSchema(_Strict):
    dose_match_tolerance = fields.Float(
        required=True, validate=validate.Range(min=0, max=0.5, min_inclusive=False)
    )
    desensitization_terms = fields.List(fields.String(validate=NON_EMPTY), required=True)
    severe_reaction = fields.Nested(SevereReactionSchema, required=True)


# An ICD-10-CM code or category as written in the classification ("M05", "C83.3", "G35.A");
# a SNOMED CT concept id (digits).
ICD10CM_CODE = validate.Regexp(
    r"^[A-Z][0-9][0-9A-Z](\.[0-9A-Z]{1,4})?$", error="must be an ICD-10-CM code such as C83.3"
)
SNOMED_CONCEPT = validate.Regexp(r"^[1-9][0-9]{5,17}$", error="must be a SNOMED CT concept id")


class IndicationCodeSchema(ProvenanceFields):
    system = fields.String(required=True, validate=validate.OneOf(["icd-10-cm", "snomed"]))
    code = fields.String(required=True, validate=NON_EMPTY)
    display = fields.String(required=True, validate=NON_EMPTY)

    @validates_schema
    def _code_of_its_system(self, data: dict[str, Any], **_: Any) -> None:
        check = ICD10CM_CODE if data.get("system") == "icd-10-cm" else SNOMED_CONCEPT
        try:
            check(data.get("code", ""))
        except ValidationError as err:
            raise ValidationError(err.messages, field_name="code") from err


class NotIndicationSchema(ProvenanceFields):
    """ICD-10-CM codes that say why a patient is seen, not what is treated (a chapter letter
    such as ``Z`` is allowed here)."""

    system = fields.String(required=True, validate=validate.Equal("icd-10-cm"))
    code = fields.String(required=True, validate=validate.Regexp(r"^[A-Z][0-9A-Z.]{0,7}$"))
    display = fields.String(required=True, validate=NON_EMPTY)


class IndicationSchema(_Strict):
    id = fields.String(required=True, validate=ID)
    display = fields.String(required=True, validate=NON_EMPTY)
    codes = fields.List(fields.Nested(IndicationCodeSchema), required=True, validate=NON_EMPTY)


class PolicyFileSchema(_Strict):
    format = fields.String(required=True, validate=validate.Equal(FORMAT))
    kind = fields.String(required=True, validate=validate.Equal("policy"))
    publisher = fields.String(required=True, validate=NON_EMPTY)
    publisher_url = fields.Url(schemes={"https"})
    topic_system = fields.String(required=True, validate=NON_EMPTY)
    topics = fields.List(fields.Nested(TopicSchema), required=True, validate=NON_EMPTY)
    override_reason_system = fields.String(required=True, validate=NON_EMPTY)
    override_reasons = fields.List(
        fields.Nested(OverrideReasonSchema), required=True, validate=NON_EMPTY
    )
    sources = fields.Dict(
        keys=fields.String(validate=ID), values=fields.Nested(SourceSchema), required=True
    )
    engine = fields.Nested(EngineSchema, required=True)
    indications = fields.List(fields.Nested(IndicationSchema), load_default=list)
    not_indications = fields.List(fields.Nested(NotIndicationSchema), load_default=list)


SCHEMAS: dict[str, type[Schema]] = {
    "drug": DrugFileSchema,
    "class": ClassFileSchema,
    "agent": AgentFileSchema,
    "protocol": ProtocolFileSchema,
    "policy": PolicyFileSchema,
}


def flatten_errors(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Turn marshmallow's nested error dict into ``(field.path, message)`` pairs."""
    out: list[tuple[str, str]] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            path = f"{prefix}.{key}" if prefix and key != "_schema" else (prefix or str(key))
            if key == "_schema":
                path = prefix or "(file)"
            out.extend(flatten_errors(value, path))
    elif isinstance(messages, list):
        for msg in messages:
            if isinstance(msg, dict | list):
                out.extend(flatten_errors(msg, prefix))
            else:
                out.append((prefix or "(file)", str(msg)))
    else:
        out.append((prefix or "(file)", str(messages)))
    return out
