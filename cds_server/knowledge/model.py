"""Immutable objects the knowledge base is made of, built from validated ``cards/*.yaml``.

Every clinical number lives in a ``Fact``-like object that carries its evidence level and
citations; rules read these objects and never the YAML.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from types import MappingProxyType
from typing import Any, Literal

from cds_server.model import Citation, Coding, Evidence, Quantity

EVIDENCE_LEVELS: tuple[Evidence, ...] = ("verified", "secondary", "unverified")

AgentRole = Literal[
    "h1-antihistamine",
    "h2-antagonist",
    "corticosteroid",
    "antipyretic",
    "leukotriene-antagonist",
    "il6-antagonist",
    "anaphylaxis-treatment",
    "antiemetic",
]
# How a role is named in prose ("H1 antihistamine").
ROLE_NAMES: Mapping[str, str] = MappingProxyType(
    {
        "h1-antihistamine": "H1 antihistamine",
        "h2-antagonist": "H2 antagonist",
        "corticosteroid": "corticosteroid",
        "antipyretic": "antipyretic/analgesic",
        "leukotriene-antagonist": "leukotriene antagonist",
        "il6-antagonist": "IL-6 antagonist",
        "anaphylaxis-treatment": "anaphylaxis treatment",
        "antiemetic": "antiemetic",
    }
)


@dataclass(frozen=True)
class Source:
    """A citable source named in a knowledge file."""

    id: str
    title: str
    url: str | None = None
    label_version: str | None = None
    jurisdiction: str | None = None
    kind: str | None = None
    spl_set_id: str | None = None
    doi: str | None = None
    pmid: str | None = None
    pmcid: str | None = None
    publisher: str | None = None
    year: int | None = None
    section: str | None = None
    read_title: str | None = None
    read_url: str | None = None
    no_primary_id: str | None = None

    @property
    def primary_identifier(self) -> str | None:
        """How a reviewer finds the primary document, or None when the source names none."""
        if self.spl_set_id:
            return f"DailyMed SPL set id {self.spl_set_id}"
        if self.doi:
            return f"doi:{self.doi}"
        if self.pmid:
            return f"PMID {self.pmid}"
        if self.pmcid:
            return self.pmcid
        if self.kind in ("guideline", "dataset") and self.publisher and self.year:
            return f"{self.publisher} {self.year}" + (f", {self.section}" if self.section else "")
        return None

    @classmethod
    def from_yaml(cls, sid: str, s: Mapping[str, Any]) -> Source:
        """A ``sources:`` entry as the schema (``SourceSchema``) reads it."""
        return cls(
            id=sid,
            title=s["title"],
            url=s.get("url"),
            label_version=s.get("label_version"),
            jurisdiction=s.get("jurisdiction"),
            kind=s.get("kind"),
            spl_set_id=s.get("spl_set_id"),
            doi=s.get("doi"),
            pmid=s.get("pmid"),
            pmcid=s.get("pmcid"),
            publisher=s.get("publisher"),
            year=s.get("year"),
            section=s.get("section"),
            read_title=s.get("read", {}).get("title"),
            read_url=s.get("read", {}).get("url"),
            no_primary_id=s.get("no_primary_id"),
        )

    def shown_evidence(self, fact_evidence: Evidence) -> Evidence:
        """The level a card shows beside this source: a website (a manufacturer, patient or
        payer page) never verifies a fact by itself, so it is shown as secondary at most."""
        if self.kind == "website" and fact_evidence == "verified":
            return "secondary"
        return fact_evidence

    @property
    def primary_url(self) -> str | None:
        """The primary document's address (DailyMed, doi.org, PubMed), else the given URL."""
        if self.spl_set_id:
            return f"https://dailymed.nlm.nih.gov/dailymed/lookup.cfm?setid={self.spl_set_id}"
        if self.doi:
            return f"https://doi.org/{self.doi}"
        if self.pmid:
            return f"https://pubmed.ncbi.nlm.nih.gov/{self.pmid}/"
        if self.pmcid:
            return f"https://pmc.ncbi.nlm.nih.gov/articles/{self.pmcid}/"
        return self.url


@dataclass(frozen=True)
class LocalProtocol:
    """An institution's own approved protocol document, which site overlay entries cite."""

    id: str
    document: str
    title: str
    version: str
    approved_by: str
    approved_on: date
    url: str | None = None
    # The published sources the protocol rests on (for reviewers; cards cite the protocol).
    based_on: tuple[Source, ...] = ()

    @property
    def name(self) -> str:
        """ "Institution protocol ONC-PRE-07 v3"."""
        return f"Institution protocol {self.document} v{self.version}"

    @property
    def approval(self) -> str:
        """ "Pharmacy & Therapeutics Committee, approved 2026-09-14"."""
        return f"{self.approved_by}, approved {self.approved_on.isoformat()}"

    @property
    def attribution(self) -> str:
        """ "Institution protocol ONC-PRE-07 v3 (Pharmacy & Therapeutics Committee, approved
        2026-09-14)"."""
        return f"{self.name} ({self.approval})"

    def citation(self) -> Citation:
        """The protocol as a card's source, tagged ``institution``."""
        return Citation(
            title=f"{self.attribution}: {self.title}",
            url=self.url,
            label_version=None,
            evidence="institution",
        )


@dataclass(frozen=True)
class SiteChange:
    """What a site overlay entry changed in one fact, said on the card next to the label fact:
    "Institution protocol ONC-PRE-07 v3 (…, approved 2026-09-14): cetirizine instead of
    diphenhydramine"."""

    entry_id: str
    protocol: LocalProtocol
    statement: str

    @property
    def line(self) -> str:
        return f"{self.protocol.attribution}: {self.statement}"


@dataclass(frozen=True)
class Provenance:
    """Evidence level plus the sources of one fact.

    ``institution``: the site's protocol that changed this fact (a site overlay); it is cited
    first, beside the label sources the fact keeps.
    """

    evidence: Evidence
    sources: tuple[Source, ...]
    jurisdiction: str | None = None
    note: str | None = None
    institution: LocalProtocol | None = None

    def citations(self) -> tuple[Citation, ...]:
        """Render-ready citations for this fact."""
        local = (self.institution.citation(),) if self.institution else ()
        return local + tuple(
            Citation(
                title=s.title,
                url=s.primary_url,
                label_version=s.label_version,
                evidence=s.shown_evidence(self.evidence),
                jurisdiction=self.jurisdiction or s.jurisdiction,
            )
            for s in self.sources
        )


@dataclass(frozen=True)
class DayRange:
    """A range of whole days (``more_than``/``at_least`` below, ``at_most``/``less_than`` above)."""

    more_than: int | None = None
    at_least: int | None = None
    at_most: int | None = None
    less_than: int | None = None

    def contains(self, days: int) -> bool:
        return (
            (self.more_than is None or days > self.more_than)
            and (self.at_least is None or days >= self.at_least)
            and (self.at_most is None or days <= self.at_most)
            and (self.less_than is None or days < self.less_than)
        )

    @property
    def first(self) -> int | None:
        """The first whole day inside the range (None: open below)."""
        return self.more_than + 1 if self.more_than is not None else self.at_least

    @property
    def last(self) -> int | None:
        """The last whole day inside the range (None: open above)."""
        return self.less_than - 1 if self.less_than is not None else self.at_most

    def describe(self) -> str:
        """ "more than 56 days", "8 to 28 days", "7 days or more"."""
        low, high = self.first, self.last
        if low is not None and high is not None:
            return f"{low} to {high} days"
        if self.more_than is not None:
            return f"more than {self.more_than} days"
        if low is not None:
            return f"{low} days or more"
        if self.less_than is not None:
            return f"less than {self.less_than} days"
        return f"{high} days or less" if high is not None else "any time"


@dataclass(frozen=True)
class IndicationCode:
    """A code an order's indication is matched against: an ICD-10-CM code or category, which
    matches itself and every code under it (``C83.3`` matches ``C83.30``), or a SNOMED CT
    concept, which matches only itself (no terminology server: no subsumption)."""

    system: Literal["icd-10-cm", "snomed"]
    code: str
    display: str
    provenance: Provenance


@dataclass(frozen=True)
class Indication:
    """An indication a fact may hold for only (``applies.indications``), defined once in
    ``cards/policy.yaml``: how it reads on a card and the codes that name it."""

    id: str
    display: str
    codes: tuple[IndicationCode, ...]


@dataclass(frozen=True)
class Applicability:
    """Which administrations a fact applies to (every key given must hold).

    ``infusions``: ``first`` (no earlier administration), ``subsequent``, or ``all``.
    ``infusion_numbers``: explicit 1-based administration numbers. ``steps``: step-up
    step ids. ``exposures_at_least``: this dose is at least the N-th exposure to the drug.
    ``gap_days``: days since the last dose given. ``cycle_start``: this dose starts a
    treatment cycle (``"every"`` or the cycle numbers). ``restart``: this dose restarts the
    course after a delay (a ``restart`` row of the drug applies). ``condition``: a clinical
    condition the service cannot check; facts with a condition are shown as "consider" notes
    and never turned into suggestions. ``jurisdictions``: the fact holds only where the
    service's jurisdiction (a site overlay's setting, default ``US``) is one of these.
    ``indications``: the fact holds only for these indications, checked against the order's
    own (its ``reasonCode``/``reasonReference``): shown when they match, left out when the
    order names another, a "consider" note when it names none (``condition``, when given, is
    the text shown; else the indications' displays).
    """

    infusions: Literal["first", "subsequent", "all"] = "all"
    infusion_numbers: tuple[int, ...] = ()
    steps: tuple[str, ...] = ()
    condition: str | None = None
    exposures_at_least: int | None = None
    gap_days: DayRange | None = None
    cycle_start: tuple[int, ...] | Literal["every"] | None = None
    restart: bool | None = None
    jurisdictions: tuple[str, ...] = ()
    indications: tuple[Indication, ...] = ()


@dataclass(frozen=True)
class DoseRange:
    """A dose: a single value (``min == max``) or a range, with a unit."""

    min: float
    max: float
    unit: str

    @property
    def single(self) -> bool:
        return self.min == self.max


@dataclass(frozen=True)
class NotCovering:
    """An agent of the role that does not count for it with this drug (e.g. hydrocortisone
    as obinutuzumab's premedication glucocorticoid: the label says it was not effective)."""

    agent: str
    reason: str
    provenance: Provenance


@dataclass(frozen=True)
class PremedAgent:
    """One agent of a premedication regimen."""

    role: AgentRole
    agent: str | None
    alternatives: tuple[str, ...]
    dose: DoseRange | None
    route: str | None
    timing: str
    required: bool
    provenance: Provenance
    not_covered_by: tuple[NotCovering, ...] = ()
    # Set when a site overlay chose this agent (and its dose, route, timing) for the role.
    site: SiteChange | None = None


@dataclass(frozen=True)
class PremedRegimen:
    """Premedication that applies to some administrations of a drug."""

    id: str
    applies: Applicability
    agents: tuple[PremedAgent, ...]
    text: str | None
    provenance: Provenance


@dataclass(frozen=True)
class RateSchedule:
    """How fast an infusion may run (titrated, fixed-duration or rapid)."""

    id: str
    label: str
    kind: Literal["titrated", "fixed-duration", "rapid"]
    applies: Applicability
    start: Quantity | None
    increment: Quantity | None
    every_min: float | None
    steps: tuple[Quantity, ...]
    max: Quantity | None
    duration: Quantity | None
    text: str | None
    provenance: Provenance


@dataclass(frozen=True)
class RatePhase:
    """One part of a local regimen: a share of the dose (percent) over a time (minutes)."""

    percent: float
    minutes: float

    @property
    def fraction(self) -> float:
        """The share as a fraction of the dose (20 % → 0.2)."""
        return self.percent / 100


@dataclass(frozen=True)
class Eligibility:
    """Who a site's local regimen is for: what the engine checks, and what it cannot.

    ``from_infusion``: this dose is at least the N-th of the drug (prior doses on record).
    ``no_reaction_on_record``: no allergy record (not refuted or entered in error) of a
    reaction to the drug itself. ``not_checked``: conditions the service cannot check (a lab
    value, a diagnosis): named on the card for the prescriber to confirm, never assumed.
    """

    from_infusion: int | None
    no_reaction_on_record: bool
    not_checked: tuple[str, ...] = ()


@dataclass(frozen=True)
class LocalRegimen:
    """A site's own rate regimen for a drug (e.g. a 90-minute rapid infusion), offered to
    eligible patients; ``replaces`` is the label schedule it stands in for (still cited)."""

    id: str
    drug_id: str
    label: str
    phases: tuple[RatePhase, ...]
    eligibility: Eligibility
    text: str | None
    site: SiteChange
    replaces: RateSchedule | None = None

    @property
    def minutes(self) -> float:
        return sum(p.minutes for p in self.phases)

    def citations(self) -> tuple[Citation, ...]:
        """The institution's protocol first, then the label fact it replaces."""
        label = self.replaces.provenance.citations() if self.replaces else ()
        return (self.site.protocol.citation(), *label)


@dataclass(frozen=True)
class DoseStep:
    """One dose of a step-up schedule."""

    id: str
    label: str
    dose: Quantity
    day: str | None


@dataclass(frozen=True)
class StepUpSchedule:
    """A step-up dosing schedule (e.g. glofitamab DLBCL)."""

    id: str
    label: str
    steps: tuple[DoseStep, ...]
    provenance: Provenance


@dataclass(frozen=True)
class RestartRule:
    """One row of a label's restart-after-delay table.

    The last dose given was one of ``after_steps`` (matched by dose level) and the time since
    it is in ``gap_days``: continue the schedule (``restart_at`` is None), or give step
    ``restart_at`` next (a repeat of that step or a return to step-up dose 1), with
    pretreatment and that step's monitoring again.
    """

    id: str
    after_steps: tuple[str, ...]
    gap_days: DayRange
    restart_at: str | None
    text: str
    provenance: Provenance
    # The dosing schedule the row is for, when the label's table has one row set per schedule
    # (teclistamab: weekly, every 2 weeks); None: any schedule.
    schedule: DosingSchedule | None = None


@dataclass(frozen=True)
class DosingSchedule:
    """A maintenance dosing schedule a restart row is for: "weekly" (every 7 days)."""

    label: str
    every_days: int


@dataclass(frozen=True)
class Alert:
    """A fact shown on its own card when its ``applies`` holds: indicator, headline, text."""

    id: str
    applies: Applicability
    indicator: Literal["info", "warning"]
    headline: str
    text: str
    provenance: Provenance


@dataclass(frozen=True)
class CourseAlert(Alert):
    """An alert for a point of the course (e.g. the 7th exposure, a cycle start)."""


@dataclass(frozen=True)
class AllergyRisk(Alert):
    """A recorded allergy, not to the drug itself, that raises the drug's reaction risk
    (e.g. alpha-gal or red meat allergy before cetuximab). ``terms`` are matched, case-folded
    and word by word, in the allergy record's code texts, displays and notes."""

    terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class AvoidedAgent:
    """Agents of a role the label says to avoid with this drug (e.g. prophylactic systemic
    corticosteroids with some CAR-T products): a draft order for one is flagged."""

    id: str
    role: AgentRole
    headline: str
    text: str
    provenance: Provenance


@dataclass(frozen=True)
class MonitoringRequirement:
    """Observation, hospitalization or proximity requirement for some administrations."""

    id: str
    kind: Literal["hospitalization", "observation", "proximity", "vital-signs"]
    applies: Applicability
    duration: Quantity | None
    text: str
    provenance: Provenance
    # Set when a site overlay changed the duration (an observation time).
    site: SiteChange | None = None


@dataclass(frozen=True)
class Prerequisite:
    """Something that must have happened before an administration (e.g. pretreatment)."""

    id: str
    applies: Applicability
    requires_drug: str
    lookback_days: int | None
    text: str
    provenance: Provenance


@dataclass(frozen=True)
class TocilizumabReadiness:
    """Tocilizumab that must be available before administration."""

    applies: Applicability
    doses_on_hand: int | None
    text: str
    provenance: Provenance


@dataclass(frozen=True)
class ReactionGuidance:
    """What to do about a reaction: management, rechallenge, contraindication."""

    id: str
    kind: Literal[
        "management", "rechallenge", "after-severe", "contraindication", "desensitization"
    ]
    grades: str | None
    text: str
    provenance: Provenance


@dataclass(frozen=True)
class CrossReactivity:
    """A cross-reactivity statement between drugs of a class."""

    id: str
    members: tuple[str, ...]
    text: str
    provenance: Provenance


@dataclass(frozen=True)
class CodeEntry:
    """A code for a drug, agent or class, with its provenance."""

    coding: Coding
    tty: str | None
    provenance: Provenance


@dataclass(frozen=True)
class Identity:
    """How a drug is named and coded, for recognition."""

    names: tuple[str, ...]
    brands: tuple[str, ...]
    biosimilars: tuple[tuple[str, str | None], ...]
    exclude_terms: tuple[str, ...]
    codes: tuple[CodeEntry, ...]
    exclude_routes: tuple[str, ...] = ()


@dataclass(frozen=True)
class WeightBand:
    """A weight-based dose for a weight range (kg, min inclusive, max exclusive)."""

    min_kg: float | None
    max_kg: float | None
    dose: Quantity


@dataclass(frozen=True)
class WeightBasedDosing:
    """Weight-based dosing of an agent (e.g. tocilizumab for CRS)."""

    id: str
    indication: str
    bands: tuple[WeightBand, ...]
    max_dose: Quantity | None
    route: str | None
    text: str | None
    provenance: Provenance


@dataclass(frozen=True)
class Drug:
    """One infusion drug of the knowledge base."""

    id: str
    name: str
    display: str
    drug_class: str | None
    families: tuple[str, ...]
    route: str | None
    label: Source | None
    identity: Identity
    premedication: tuple[PremedRegimen, ...]
    rate_schedules: tuple[RateSchedule, ...]
    step_up: tuple[StepUpSchedule, ...]
    monitoring: tuple[MonitoringRequirement, ...]
    prerequisites: tuple[Prerequisite, ...]
    tocilizumab: tuple[TocilizumabReadiness, ...]
    reactions: tuple[ReactionGuidance, ...]
    desensitization_eligible: bool
    crs_risk: bool
    notes: tuple[str, ...]
    source_file: str
    restart: tuple[RestartRule, ...] = ()
    course_alerts: tuple[CourseAlert, ...] = ()
    # The protocol a desensitization of this drug follows (``protocols/<id>``); None: the
    # knowledge base's only protocol, if it has exactly one.
    desensitization_protocol: str | None = None
    allergy_risks: tuple[AllergyRisk, ...] = ()
    avoided_agents: tuple[AvoidedAgent, ...] = ()
    # Days without a dose after which the next dose starts a new cycle (blinatumomab: an
    # interruption of more than 7 days); None when the label gives no such rule.
    new_cycle_after_days: int | None = None
    # A site overlay's own regimens for this drug (none in the label knowledge).
    local_regimens: tuple[LocalRegimen, ...] = ()


@dataclass(frozen=True)
class DrugClass:
    """A drug class with class-level facts (cross-reactivity, allergy names)."""

    id: str
    name: str
    members: tuple[str, ...]
    identity: Identity
    cross_reactivity: tuple[CrossReactivity, ...]
    source_file: str


@dataclass(frozen=True)
class Agent:
    """A premedication or rescue agent (diphenhydramine, dexamethasone, tocilizumab…)."""

    id: str
    name: str
    roles: tuple[AgentRole, ...]
    identity: Identity
    weight_based_dosing: tuple[WeightBasedDosing, ...]
    source_file: str
    # False when the agent is no longer marketed (``market_status``): never suggested, but an
    # order for it still covers its role.
    marketed: bool = True
    market_status: Provenance | None = None
    market_text: str | None = None


@dataclass(frozen=True)
class DesensitizationProtocol:
    """A multi-bag rapid desensitization protocol (dilutions, step rates and times)."""

    id: str
    name: str
    bag_dilutions: tuple[float, ...]
    step_bags: tuple[int, ...]
    step_rates_ml_h: tuple[float, ...]
    step_minutes: float
    convention: Literal["adjusted-concentration", "full-strength"]
    min_final_rate_ml_h: float | None
    text: str
    provenance: Provenance
    source_file: str


@dataclass(frozen=True)
class Topic:
    """A rule topic and the override reasons it offers.

    ``code`` names the rule inside the service (knowledge, site overlays, the card log,
    snoozes, metrics); ``wire_code`` is what cards send as ``source.topic.code`` (letters and
    digits only, at most 100: what Epic accepts).
    """

    code: str
    display: str
    wire_code: str
    override_reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class OverrideReason:
    """A coded override reason offered on cards.

    ``snooze_days``: choosing it suppresses the same rule for the same patient and drug for
    that many days (never a critical card); ``None`` = no snooze. ``offered_when``: a
    condition the card's patient must meet for the reason to be offered (``None`` = always).
    ``hl7_non_adherence``: the fitting code of HL7's non-adherence-reason-codes, if any.
    """

    code: str
    display: str
    snooze_days: int | None = None
    offered_when: str | None = None
    hl7_non_adherence: str | None = None

    def shown(self, indicator: str) -> str:
        """The display on a card: a reason that would snooze this card says for how long."""
        if not self.snooze_days or indicator == "critical":
            return self.display
        days = self.snooze_days
        return f"{self.display} — snooze {days} day{'s' if days != 1 else ''}"


@dataclass(frozen=True)
class EngineSettings:
    """Engine parameters kept with the knowledge (not clinical facts, but reviewed like them).

    ``dose_match_tolerance``: relative difference under which an ordered dose is taken to be a
    step-up dose (absorbs rounding of mg/kg doses). ``severe_codes``/``severe_terms``: reaction
    manifestations that make a documented reaction severe (anaphylaxis and the like).
    """

    dose_match_tolerance: float
    desensitization_terms: tuple[str, ...]
    severe_codes: tuple[Coding, ...]
    severe_terms: tuple[str, ...]
    severe_text: str
    severe_provenance: tuple[Provenance, ...] = ()


@dataclass(frozen=True)
class CardPolicy:
    """Rule topics and override reasons, declared once in ``cards/policy.yaml``."""

    system: str
    topics: tuple[Topic, ...]
    override_system: str
    override_reasons: tuple[OverrideReason, ...]
    publisher: str
    publisher_url: str | None
    engine: EngineSettings
    # Indications facts may be restricted to, by id; ICD-10-CM codes or categories that say
    # why a patient is seen rather than what is treated (ignored in an order's indication).
    indications: Mapping[str, Indication] = field(default_factory=lambda: MappingProxyType({}))
    not_indications: tuple[IndicationCode, ...] = ()

    def topic(self, code: str) -> Topic:
        for t in self.topics:
            if t.code == code:
                return t
        raise KeyError(code)

    def topic_sent_as(self, wire_code: str) -> Topic:
        """The topic whose cards carry ``source.topic.code`` ``wire_code``."""
        for t in self.topics:
            if t.wire_code == wire_code:
                return t
        raise KeyError(wire_code)

    def reason(self, code: str) -> OverrideReason:
        for r in self.override_reasons:
            if r.code == code:
                return r
        raise KeyError(code)


SiteEntryKind = Literal[
    "jurisdiction", "premedication", "rate-schedule", "observation-time", "rule-off", "order-codes"
]
SiteScope = Literal["site", "drug", "class", "agent", "referral"]


@dataclass(frozen=True)
class SiteEntry:
    """One approved entry of a site overlay as a reviewer lists it: what it changes, where,
    on whose authority. ``drugs``: the drugs whose facts it changes (resolved against the
    label knowledge); ``agents``: the agents it chooses or replaces; ``replaces``: the label
    facts it stands in for; ``topic``: the rule a ``rule-off`` entry switches off."""

    id: str
    kind: SiteEntryKind
    scope: SiteScope
    target: str
    summary: str
    protocol: LocalProtocol
    source_file: str
    drugs: tuple[str, ...] = ()
    replaces: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    topic: str | None = None


@dataclass(frozen=True)
class AgentPreference:
    """A site's preferred agent for a premedication role, for a drug, a class, or wherever
    the label suggests one agent (``scope``/``target``). Dose, route and timing are the
    site's (its protocol), given or left to the protocol."""

    entry_id: str
    scope: Literal["drug", "class", "agent"]
    target: str
    role: AgentRole
    agent: str
    dose: DoseRange | None
    route: str | None
    timing: str | None
    protocol: LocalProtocol


@dataclass(frozen=True)
class ObservationTime:
    """A site's observation time for one of a drug's observation requirements."""

    entry_id: str
    drug_id: str
    requirement: str
    duration: Quantity
    protocol: LocalProtocol


# Characters of a site overlay's hash in the knowledge version (and its pages' folder).
SITE_HASH_LENGTH = 12


@dataclass(frozen=True)
class Site:
    """A validated site overlay: an institution's approved changes to the label knowledge.

    ``rules_off`` holds (rule topic, drug id) pairs the site switched off; ``order_codes``
    the site's preference-list/order-set codes by agent id or referral id.
    """

    name: str
    folder: str
    digest: str
    jurisdiction: str
    protocols: Mapping[str, LocalProtocol]
    entries: tuple[SiteEntry, ...] = ()
    preferences: tuple[AgentPreference, ...] = ()
    regimens: tuple[LocalRegimen, ...] = ()
    observation_times: tuple[ObservationTime, ...] = ()
    rules_off: frozenset[tuple[str, str]] = frozenset()
    order_codes: Mapping[str, tuple[Coding, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    files: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``site-d81d668a10de``: how the knowledge version names this overlay (and the folder
        of its knowledge pages)."""
        return f"site-{self.digest[:SITE_HASH_LENGTH]}"

    def switched_off(self, topic: str, drug_id: str) -> bool:
        """Did the site switch the rule ``topic`` off for this drug?"""
        return (topic, drug_id) in self.rules_off

    def entries_for(self, scope: SiteScope, target: str) -> tuple[SiteEntry, ...]:
        """The entries about a drug, class, agent or referral, with their approval metadata:
        a drug's include those of its class and the agent-wide ones that change it; an
        agent's, the preferences that choose or replace it."""
        return tuple(
            e
            for e in self.entries
            if (e.scope == scope and e.target == target)
            or (scope == "drug" and target in e.drugs)
            or (scope == "agent" and target in e.agents)
        )


@dataclass(frozen=True)
class KnowledgeBase:
    """The whole validated knowledge base, with lookup indexes, read-only."""

    version: str
    format: str
    drugs: MappingProxyType[str, Drug]
    classes: MappingProxyType[str, DrugClass]
    agents: MappingProxyType[str, Agent]
    protocols: MappingProxyType[str, DesensitizationProtocol]
    policy: CardPolicy
    files: tuple[str, ...] = field(default=())
    # Every source with the file that names it, and the number of facts per evidence level
    # (what ``check-cards`` reports as citation coverage).
    sources: tuple[tuple[str, Source], ...] = field(default=())
    fact_evidence: MappingProxyType[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # The jurisdiction facts are shown for (``Applicability.jurisdictions``): a site
    # overlay's setting, else US. ``site``: the overlay this view applies (None: the label
    # knowledge alone); ``base``: the label knowledge the view was built from.
    jurisdiction: str = "US"
    site: Site | None = None
    base: KnowledgeBase | None = None

    @property
    def label_knowledge(self) -> KnowledgeBase:
        """The knowledge without any site overlay (identities, codes: never changed by one)."""
        return self.base or self

    def drug(self, drug_id: str) -> Drug:
        return self.drugs[drug_id]

    def desensitization_protocol(self, drug: Drug) -> tuple[DesensitizationProtocol | None, str]:
        """The protocol a desensitization of ``drug`` follows: the one its file names
        (``desensitization_protocol``), else the knowledge base's only one. Without either,
        None and what could not be told (a schedule from an arbitrary protocol would be a
        guess)."""
        if drug.desensitization_protocol:
            return self.protocols[drug.desensitization_protocol], ""
        if len(self.protocols) == 1:
            return next(iter(self.protocols.values())), ""
        if not self.protocols:
            return None, "a desensitization protocol in the knowledge base"
        names = ", ".join(sorted(self.protocols))
        return None, (
            f"which desensitization protocol applies: the knowledge base has several ({names}) "
            f"and {drug.source_file} names none (desensitization_protocol)"
        )

    def classes_of(self, drug_id: str) -> tuple[DrugClass, ...]:
        """Every class that lists ``drug_id`` as a member."""
        return tuple(c for c in self.classes.values() if drug_id in c.members)

    def agents_with_role(self, role: str) -> tuple[Agent, ...]:
        return tuple(a for a in self.agents.values() if role in a.roles)
