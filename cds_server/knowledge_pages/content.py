"""The knowledge pages as data: every fact of a drug, class, agent or protocol, in words.

``build_site(kb)`` returns the index data and one ``Page`` per drug, class, agent and
desensitization protocol. A page is a list of ``Section``s; on drug pages the sections are
the card topics of ``cards/policy.yaml`` (anchor = topic id) that have facts for the drug.
Each ``Fact`` carries when it applies (in words), its evidence level and its sources with
their primary identifier and the copy read. Pure functions of the knowledge model.

Built from a knowledge view with a site overlay (``kb.site``), the pages show the label
knowledge (``kb.label_knowledge``) with each institution entry (``OverlayEntry``) beside the
label fact it changes, the label fact kept and marked as replaced for this site; a page per
institution protocol lists every entry it backs, and the index names the overlay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from types import MappingProxyType

from cds_server.knowledge import coverage
from cds_server.knowledge.model import (
    Agent,
    Applicability,
    DesensitizationProtocol,
    Drug,
    DrugClass,
    Identity,
    KnowledgeBase,
    LocalProtocol,
    LocalRegimen,
    PremedAgent,
    Provenance,
    SiteChange,
    SiteEntry,
    Source,
)
from cds_server.knowledge.model import Site as SiteOverlay
from cds_server.knowledge_pages.links import INDEX, PageIndex, PageKind, page_path
from cds_server.model import ATC, NDC, RXNORM, SNOMED, Evidence, Quantity
from cds_server.reasoning.dosing import fmt_number, fmt_qty
from cds_server.reasoning.premedication import ROLE_NAMES

# The agent of ``Drug.tocilizumab`` (the readiness facts name no agent id: it is always this one).
TOCILIZUMAB = "tocilizumab"
# Sections that are not a card topic.
CODES = "codes"
SOURCES = "sources"
SYSTEM_NAMES = {RXNORM: "RxNorm", ATC: "ATC", SNOMED: "SNOMED CT", NDC: "NDC"}
KIND_TITLES: dict[PageKind, str] = {
    "drug": "Drugs",
    "class": "Drug classes",
    "agent": "Premedication and rescue agents",
    "protocol": "Desensitization protocols",
    "institution": "Institution protocols (site overlay)",
}
# The section of a page listing the site's entries about its subject.
SITE_SECTION = "site-overlay"
# The card topic a kind of site entry changes (its section on a drug page).
ENTRY_TOPICS = {
    "premedication": "premedication",
    "rate-schedule": "rate-titration",
    "observation-time": "monitoring-admission",
}


# -- the view model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A piece of text, linked to another page (``path`` below the pages' root) when given."""

    text: str
    path: str | None = None


@dataclass(frozen=True)
class CitedSource:
    """A source as a reviewer needs it: what it is, which version, how to find the primary
    document, and the copy actually read."""

    id: str
    title: str
    kind: str | None
    label_version: str | None
    primary_identifier: str | None
    primary_url: str | None
    read_title: str | None
    read_url: str | None
    no_primary_id: str | None
    jurisdiction: str | None


@dataclass(frozen=True)
class Fact:
    """One fact: a title, when it applies, its values, text, evidence and sources.

    ``details`` are (label, value) rows, a value being a sequence of ``Link``s; ``table`` is a
    header row and rows; ``parts`` are facts inside this one (a regimen's agents).
    """

    anchor: str
    title: str
    applies: str | None = None
    details: tuple[tuple[str, tuple[Link, ...]], ...] = ()
    text: str | None = None
    table: tuple[tuple[str, ...], ...] = ()
    evidence: Evidence | None = None
    jurisdiction: str | None = None
    note: str | None = None
    sources: tuple[CitedSource, ...] = ()
    parts: tuple[Fact, ...] = ()
    # Sources listed with numbers (a table's rows refer to them).
    numbered: bool = False


@dataclass(frozen=True)
class Section:
    """A part of a page; ``topic`` is the card topic it holds the facts of, if any."""

    anchor: str
    title: str
    facts: tuple[Fact, ...]
    topic: str | None = None
    intro: str | None = None


@dataclass(frozen=True)
class Page:
    kind: PageKind
    id: str
    title: str
    path: str
    overview: tuple[tuple[str, tuple[Link, ...]], ...]
    notes: tuple[str, ...]
    sections: tuple[Section, ...]
    sources: tuple[CitedSource, ...]
    source_file: str
    # Per section anchor, the site's entries shown there (none without a site overlay).
    overlays: Mapping[str, tuple[OverlayEntry, ...]] = field(
        default_factory=lambda: MappingProxyType({})
    )

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(s.topic for s in self.sections if s.topic)


@dataclass(frozen=True)
class IndexRow:
    """One line of the index: a page and its cells (``coverage``: mostly evidence levels)."""

    link: Link
    cells: tuple[Link, ...]


@dataclass(frozen=True)
class IndexTable:
    kind: PageKind
    title: str
    columns: tuple[str, ...]
    rows: tuple[IndexRow, ...]


@dataclass(frozen=True)
class Site:
    """Every page, the index tables, and the card-link index."""

    version: str
    pages: tuple[Page, ...]
    tables: tuple[IndexTable, ...]
    coverage: tuple[str, ...]
    index: PageIndex
    index_path: str = INDEX
    overlay: OverlaySummary | None = None
    _by_key: MappingProxyType[tuple[str, str], Page] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_key = MappingProxyType({(p.kind, p.id): p for p in self.pages})
        object.__setattr__(self, "_by_key", by_key)

    def page(self, kind: str, page_id: str) -> Page | None:
        return self._by_key.get((kind, page_id))


@dataclass(frozen=True)
class OverlayEntry:
    """An institution protocol entry shown beside the label fact it changes.

    ``replaces`` is the anchor of the fact it changes on that page (None: it adds to the
    section); ``document``/``version``/``approved_by``/``approved_on`` say which local protocol
    and who approved it; ``protocol_path`` is that protocol's page. ``title`` names what the
    site does (a local regimen's name), ``details`` are (label, value) rows like a fact's.
    """

    section: str
    text: str
    document: str
    version: str
    approved_by: str
    approved_on: date
    replaces: str | None = None
    entry_id: str | None = None
    title: str | None = None
    details: tuple[tuple[str, tuple[Link, ...]], ...] = ()
    protocol_title: str | None = None
    protocol_path: str | None = None
    source_file: str | None = None
    # The site switched the section's rule off for this page's drug.
    switches_off: bool = False

    @property
    def short_name(self) -> str:
        """ "ONC-PRE-07 v3"."""
        return f"{self.document} v{self.version}"


Overlays = Mapping[str, Sequence[OverlayEntry]]


@dataclass(frozen=True)
class OverlaySummary:
    """Which site overlay the pages show: its name, hash, jurisdiction and files."""

    name: str
    digest: str
    jurisdiction: str
    files: tuple[str, ...]
    entries: int


# -- sources and evidence ----------------------------------------------------------------------


def cited(source: Source, provenance: Provenance | None = None) -> CitedSource:
    jurisdiction = (provenance.jurisdiction if provenance else None) or source.jurisdiction
    return CitedSource(
        id=source.id,
        title=source.title,
        kind=source.kind,
        label_version=source.label_version,
        primary_identifier=source.primary_identifier,
        primary_url=source.primary_url,
        read_title=source.read_title,
        read_url=source.read_url,
        no_primary_id=source.no_primary_id,
        jurisdiction=jurisdiction,
    )


def _fact(
    anchor: str,
    title: str,
    provenance: Provenance,
    *,
    applies: str | None = None,
    details: Sequence[tuple[str, Sequence[Link]]] = (),
    text: str | None = None,
    table: Sequence[Sequence[str]] = (),
    parts: Sequence[Fact] = (),
) -> Fact:
    return Fact(
        anchor=anchor,
        title=title,
        applies=applies,
        details=tuple((label, tuple(value)) for label, value in details if value),
        text=text,
        table=tuple(tuple(row) for row in table),
        evidence=provenance.evidence,
        jurisdiction=provenance.jurisdiction,
        note=provenance.note,
        sources=tuple(cited(s, provenance) for s in provenance.sources),
        parts=tuple(parts),
    )


def _words(*texts: str) -> tuple[Link, ...]:
    return tuple(Link(t) for t in texts if t)


# -- applicability in words --------------------------------------------------------------------


def _series(items: Sequence[str]) -> str:
    """ "1", "1 and 2", "1, 2 and 3"."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def step_names(drug: Drug, step_ids: Iterable[str]) -> list[str]:
    """ "step-up dose 1 (2.5 mg, cycle 1 day 8)" for each step id (the id when unknown)."""
    wanted = list(step_ids)
    known = {s.id: s for schedule in drug.step_up for s in schedule.steps}
    out = []
    for step_id in wanted:
        step = known.get(step_id)
        if step is None:
            out.append(step_id)
            continue
        where = f", {step.day}" if step.day else ""
        out.append(f"{step.label} ({fmt_qty(step.dose)}{where})")
    return out


_SYSTEM_NAMES = {"icd-10-cm": "ICD-10-CM", "snomed": "SNOMED CT"}


def applies_in_words(app: Applicability, drug: Drug | None = None) -> str:
    """When a fact applies, as a sentence; checked keys first, the unchecked condition last."""
    parts: list[str] = []
    if app.infusions == "first":
        parts.append("the first infusion of this drug")
    elif app.infusions == "subsequent":
        parts.append("every infusion after the first")
    if app.infusion_numbers:
        numbers = [str(n) for n in app.infusion_numbers]
        parts.append(f"infusion{'s' if len(numbers) > 1 else ''} {_series(numbers)} of this drug")
    if app.steps:
        names = step_names(drug, app.steps) if drug else list(app.steps)
        parts.append(f"the step-up dose{'s' if len(names) > 1 else ''} {_series(names)}")
    if app.exposures_at_least is not None:
        parts.append(f"the {_ordinal(app.exposures_at_least)} exposure to the drug or later")
    if app.gap_days is not None:
        parts.append(f"a dose given when the time since the last dose is {app.gap_days.describe()}")
    if app.cycle_start == "every":
        parts.append("the first dose of every cycle")
    elif app.cycle_start:
        cycles = [str(c) for c in app.cycle_start]
        parts.append(f"the first dose of cycle{'s' if len(cycles) > 1 else ''} {_series(cycles)}")
    if app.restart is True:
        parts.append("a dose that restarts the course after a delay (a restart row applies)")
    elif app.restart is False:
        parts.append("a dose that does not restart the course")
    checked = "; ".join(parts) if parts else "every infusion"
    text = f"Applies to {checked}."
    if app.indications:
        named = "; ".join(
            f"{i.display} ({', '.join(f'{_SYSTEM_NAMES[c.system]} {c.code}' for c in i.codes)})"
            for i in app.indications
        )
        text += (
            f" For: {named} — checked against the indication the order names (its reason "
            "codes): left out when it names another diagnosis, a “consider” note when it names "
            "none."
        )
    if app.condition:
        text += (
            f" Only if: {app.condition} — the service cannot check this, so the card shows it "
            "as a “consider” note and never as a one-click suggestion."
        )
    return text


# -- drug pages --------------------------------------------------------------------------------


def _agent_link(kb: KnowledgeBase, agent_id: str) -> Link:
    agent = kb.agents.get(agent_id)
    if agent is None:
        return Link(agent_id)
    name = agent.name + ("" if agent.marketed else " (no longer marketed)")
    return Link(name, page_path("agent", agent_id))


def _subject_link(kb: KnowledgeBase, subject: str) -> Link:
    """A drug or agent id as a link to its page."""
    if subject in kb.drugs:
        return Link(kb.drugs[subject].display, page_path("drug", subject))
    if subject in kb.agents:
        return _agent_link(kb, subject)
    return Link(subject)


def _dose(entry: PremedAgent) -> str | None:
    d = entry.dose
    if d is None:
        return None
    amount = fmt_number(d.min) if d.single else f"{fmt_number(d.min)}–{fmt_number(d.max)}"
    return f"{amount} {d.unit}"


def _premed_agent(kb: KnowledgeBase, regimen_id: str, i: int, entry: PremedAgent) -> Fact:
    role = ROLE_NAMES[entry.role]
    excluded = tuple(
        _fact(
            f"premedication-{regimen_id}-{i}-not-{x.agent}",
            f"Does not count as the {role}: {kb.agents[x.agent].name}"
            if x.agent in kb.agents
            else f"Does not count as the {role}: {x.agent}",
            x.provenance,
            text=x.reason,
        )
        for x in entry.not_covered_by
    )
    return _fact(
        f"premedication-{regimen_id}-{i}",
        role[0].upper() + role[1:],
        entry.provenance,
        details=(
            (
                "Agent",
                (_agent_link(kb, entry.agent),) if entry.agent else _words("any of the role"),
            ),
            ("Alternatives", tuple(_agent_link(kb, a) for a in entry.alternatives)),
            ("Dose", _words(_dose(entry) or "not given in the source: dose per prescriber")),
            ("Route", _words(entry.route or "")),
            ("Timing", _words(entry.timing)),
            ("Required", _words("yes" if entry.required else "no (optional)")),
        ),
        parts=excluded,
    )


def _premedication(drug: Drug, kb: KnowledgeBase) -> list[Fact]:
    return [
        _fact(
            f"premedication-{r.id}",
            f"Regimen “{r.id}”",
            r.provenance,
            applies=applies_in_words(r.applies, drug),
            text=r.text,
            parts=[_premed_agent(kb, r.id, i, a) for i, a in enumerate(r.agents, 1)],
        )
        for r in drug.premedication
    ]


def _q(q: Quantity | None) -> str:
    return fmt_qty(q) if q is not None else ""


def _rates(drug: Drug) -> list[Fact]:
    facts = []
    for r in drug.rate_schedules:
        increment = (
            f"{fmt_qty(r.increment)} every {fmt_number(r.every_min)} min"
            if r.increment is not None and r.every_min is not None
            else _q(r.increment)
        )
        steps = ", ".join(fmt_qty(s) for s in r.steps)
        if steps and r.every_min is not None:
            steps += f" (each step {fmt_number(r.every_min)} min)"
        facts.append(
            _fact(
                f"rate-{r.id}",
                f"{r.label} ({r.kind})",
                r.provenance,
                applies=applies_in_words(r.applies, drug),
                details=(
                    ("Start", _words(_q(r.start))),
                    ("Increase", _words(increment)),
                    ("Steps", _words(steps)),
                    ("Maximum", _words(_q(r.max))),
                    ("Duration", _words(_q(r.duration))),
                ),
                text=r.text,
            )
        )
    return facts


def _course(drug: Drug) -> list[Fact]:
    facts = [
        _fact(
            f"stepup-{s.id}",
            f"Step-up schedule: {s.label}",
            s.provenance,
            table=[
                ("Step", "Dose", "When"),
                *((f"{d.label} ({d.id})", fmt_qty(d.dose), d.day or "") for d in s.steps),
            ],
        )
        for s in drug.step_up
    ]
    facts += [
        _fact(
            f"restart-{r.id}",
            "Restart after a delay",
            r.provenance,
            details=(
                ("Last dose given", _words(_series(step_names(drug, r.after_steps)))),
                *(
                    (
                        (
                            "Dosing schedule",
                            _words(f"{r.schedule.label} (every {r.schedule.every_days} days)"),
                        ),
                    )
                    if r.schedule
                    else ()
                ),
                ("Time since it", _words(r.gap_days.describe())),
                (
                    "Next dose",
                    _words(
                        _series(step_names(drug, [r.restart_at]))
                        if r.restart_at
                        else "continue the schedule"
                    ),
                ),
            ),
            text=r.text,
        )
        for r in drug.restart
    ]
    facts += [
        _fact(
            f"alert-{a.id}",
            f"Course alert ({a.indicator}): {a.headline}",
            a.provenance,
            applies=applies_in_words(a.applies, drug),
            text=a.text,
        )
        for a in drug.course_alerts
    ]
    return facts


def _monitoring(drug: Drug) -> list[Fact]:
    return [
        _fact(
            f"monitoring-{m.id}",
            m.kind[0].upper() + m.kind[1:].replace("-", " "),
            m.provenance,
            applies=applies_in_words(m.applies, drug),
            details=(("Duration", _words(_q(m.duration))),),
            text=m.text,
        )
        for m in drug.monitoring
    ]


def _prerequisites(drug: Drug, kb: KnowledgeBase) -> list[Fact]:
    return [
        _fact(
            f"prerequisite-{p.id}",
            f"Pretreatment: {_subject_link(kb, p.requires_drug).text}",
            p.provenance,
            applies=applies_in_words(p.applies, drug),
            details=(
                ("Requires", (_subject_link(kb, p.requires_drug),)),
                (
                    "Within",
                    _words(
                        f"{p.lookback_days} days before the dose"
                        if p.lookback_days is not None
                        else "no time limit given"
                    ),
                ),
            ),
            text=p.text,
        )
        for p in drug.prerequisites
    ]


def _tocilizumab(drug: Drug, kb: KnowledgeBase) -> list[Fact]:
    return [
        _fact(
            f"tocilizumab-{i}",
            "Tocilizumab on hand before the dose",
            t.provenance,
            applies=applies_in_words(t.applies, drug),
            details=(
                ("Agent", (_subject_link(kb, TOCILIZUMAB),)),
                (
                    "Doses on hand",
                    _words(str(t.doses_on_hand) if t.doses_on_hand is not None else "not given"),
                ),
            ),
            text=t.text,
        )
        for i, t in enumerate(drug.tocilizumab, 1)
    ]


def _reactions(drug: Drug, kb: KnowledgeBase) -> list[Fact]:
    facts = [
        _fact(
            f"reaction-{r.id}",
            r.kind[0].upper()
            + r.kind[1:].replace("-", " ")
            + (f" (grades {r.grades})" if r.grades else ""),
            r.provenance,
            text=r.text,
        )
        for r in drug.reactions
    ]
    for cls in kb.classes_of(drug.id):
        for x in cls.cross_reactivity:
            if drug.id not in x.members:
                continue
            others = [m for m in x.members if m != drug.id]
            facts.append(
                _fact(
                    f"cross-{cls.id}-{x.id}",
                    f"Cross-reactivity in the class {cls.name}",
                    x.provenance,
                    details=(
                        ("Class", (Link(cls.name, page_path("class", cls.id)),)),
                        ("With", tuple(_subject_link(kb, m) for m in others)),
                    ),
                    text=x.text,
                )
            )
    return facts


def _precautions(drug: Drug, kb: KnowledgeBase) -> list[Fact]:
    facts = [
        _fact(
            f"allergy-risk-{a.id}",
            f"Allergy that raises the risk ({a.indicator}): {a.headline}",
            a.provenance,
            applies=applies_in_words(a.applies, drug),
            details=(("Words matched in allergy records", _words(", ".join(a.terms))),),
            text=a.text,
        )
        for a in drug.allergy_risks
    ]
    facts += [
        _fact(
            f"avoid-{a.id}",
            f"Agent to avoid: {a.headline}",
            a.provenance,
            details=(
                ("Role", _words(ROLE_NAMES[a.role])),
                ("Agents of the role", tuple(_agent_link(kb, g.id) for g in _role(kb, a.role))),
            ),
            text=a.text,
        )
        for a in drug.avoided_agents
    ]
    return facts


def _role(kb: KnowledgeBase, role: str) -> list[Agent]:
    return sorted(kb.agents_with_role(role), key=lambda a: a.id)


def _identity(identity: Identity) -> list[Fact]:
    """Names, brands and exclusions (recognition lists, uncited), then the codes: one table,
    each code with its evidence level and the numbers of its sources in the list below it."""
    biosimilars = [f"{name} ({brand})" if brand else name for name, brand in identity.biosimilars]
    names = Fact(
        anchor="names",
        title="Names the service recognises",
        details=tuple(
            (label, (Link(", ".join(values)),))
            for label, values in (
                ("Names", identity.names),
                ("Brands", identity.brands),
                ("Biosimilars", biosimilars),
                ("Text that means another product", identity.exclude_terms),
                ("Routes that mean another product", identity.exclude_routes),
            )
            if values
        ),
        text="Recognition lists, not clinical facts: they carry no citation.",
    )
    if not identity.codes:
        return [names]
    sources: dict[tuple[str, str], CitedSource] = {}
    rows = []
    for entry in identity.codes:
        numbers = []
        for source in entry.provenance.sources:
            key = (source.id, source.title)
            if key not in sources:
                sources[key] = cited(source, entry.provenance)
            numbers.append(str(list(sources).index(key) + 1))
        system = entry.coding.system or ""
        rows.append(
            (
                SYSTEM_NAMES.get(system, system or "(no system)"),
                entry.coding.code or "",
                entry.coding.display or "",
                entry.tty or "",
                entry.provenance.evidence,
                ", ".join(numbers),
            )
        )
    codes = Fact(
        anchor="code-list",
        title="Codes",
        table=(("System", "Code", "Display", "Term type", "Evidence", "Sources"), *rows),
        sources=tuple(sources.values()),
        numbered=True,
    )
    return [names, codes]


def _section(
    anchor: str, title: str, facts: Sequence[Fact], *, topic: bool, intro: str | None = None
) -> Section | None:
    if not facts and intro is None:
        return None
    return Section(
        anchor=anchor,
        title=title,
        facts=tuple(facts),
        topic=anchor if topic else None,
        intro=intro,
    )


def _topic_title(kb: KnowledgeBase, code: str) -> str:
    try:
        return kb.policy.topic(code).display
    except KeyError:
        return code


def drug_page(drug: Drug, kb: KnowledgeBase, site_topics: Iterable[str] = ()) -> Page:
    """The drug's page; ``site_topics``: topics a site overlay changes, given a section even
    when the label has no fact there (a local regimen, a rule switched off)."""
    site_topics = frozenset(site_topics)
    crs_intro = None
    if drug.crs_risk:
        crs_intro = "This drug can cause cytokine release syndrome (crs_risk)." + (
            " A CRS-readiness card asks for tocilizumab on hand when a fact below applies to "
            "the dose and none is ordered."
            if drug.tocilizumab
            else " The file has no tocilizumab-on-hand fact, so no CRS-readiness card is given."
        )
    reactions_intro = (
        "The references report rapid desensitization for this drug (desensitization_eligible): "
        "a verified desensitization protocol can make the card critical after a definite "
        "severe reaction to it."
        if drug.desensitization_eligible
        else None
    )
    course = _course(drug)
    course_intro = None
    if drug.new_cycle_after_days is not None:
        course_intro = (
            f"Without a cycle in the order's text, a dose given more than "
            f"{drug.new_cycle_after_days} days after the last one starts a new cycle "
            "(new_cycle_after_days: the drug file gives this number without a citation of its "
            "own; see the notes above)."
        )
    topics: list[tuple[str, list[Fact], str | None]] = [
        ("premedication", _premedication(drug, kb), None),
        ("rate-titration", _rates(drug), None),
        ("treatment-course", course, course_intro),
        ("monitoring-admission", _monitoring(drug), None),
        ("pretreatment", _prerequisites(drug, kb), None),
        ("crs-readiness", _tocilizumab(drug, kb), crs_intro),
        ("prior-reaction", _reactions(drug, kb), reactions_intro),
        ("label-precaution", _precautions(drug, kb), None),
    ]
    sections = [
        _section(
            code,
            _topic_title(kb, code),
            facts,
            topic=True,
            intro=intro
            or (
                "The label knowledge has no fact for this topic; this site's entry is below."
                if code in site_topics and not facts
                else None
            ),
        )
        for code, facts, intro in topics
    ]
    protocol, why_none = kb.desensitization_protocol(drug)
    if kb.protocols:
        sections.append(
            Section(
                anchor="desensitization-protocols",
                title="Desensitization protocol",
                facts=(_protocol_summary(protocol),) if protocol else (),
                intro="After a definite severe reaction to this drug, the prior-reaction card "
                "shows this protocol's schedule computed from the order's dose, bag volume and "
                "final rate."
                if protocol
                else f"No schedule is computed for this drug: not known {why_none}.",
            )
        )
    sections.append(_section(CODES, "Names and codes", _identity(drug.identity), topic=False))
    cls = kb.classes.get(drug.drug_class or "")
    overview: list[tuple[str, tuple[Link, ...]]] = [
        ("Ingredient", _words(drug.name)),
        (
            "Class",
            (Link(cls.name, page_path("class", cls.id)),)
            if cls
            else _words(drug.drug_class or "none"),
        ),
        ("Families", _words(", ".join(drug.families))),
        ("Route", _words(drug.route or "")),
        ("Main label", _words(drug.label.title if drug.label else "none named")),
        ("CRS risk", _words("yes" if drug.crs_risk else "no")),
        ("Desensitization reported", _words("yes" if drug.desensitization_eligible else "no")),
    ]
    label = (cited(drug.label),) if drug.label else ()
    return _page(
        "drug", drug.id, drug.display, overview, drug.notes, sections, drug.source_file, label
    )


def _protocol_summary(p: DesensitizationProtocol) -> Fact:
    return Fact(
        anchor=f"protocol-{p.id}",
        title=p.name,
        details=(("Steps, bags and sources", (Link(p.name, page_path("protocol", p.id)),)),),
    )


def _page(
    kind: PageKind,
    page_id: str,
    title: str,
    overview: Sequence[tuple[str, Sequence[Link]]],
    notes: Sequence[str],
    sections: Iterable[Section | None],
    source_file: str,
    extra_sources: Iterable[CitedSource] = (),
) -> Page:
    kept = tuple(s for s in sections if s is not None)
    seen: dict[tuple[str, str], CitedSource] = {}
    for source in (*extra_sources, *_all_sources(f for s in kept for f in s.facts)):
        seen.setdefault((source.id, source.title), source)
    return Page(
        kind=kind,
        id=page_id,
        title=title,
        path=page_path(kind, page_id),
        overview=tuple((label, tuple(value)) for label, value in overview if value),
        notes=tuple(notes),
        sections=kept,
        sources=tuple(seen.values()),
        source_file=source_file,
    )


def _all_sources(facts: Iterable[Fact]) -> Iterable[CitedSource]:
    for fact in facts:
        yield from fact.sources
        yield from _all_sources(fact.parts)


# -- class, agent and protocol pages -----------------------------------------------------------


def class_page(cls: DrugClass, kb: KnowledgeBase) -> Page:
    cross = [
        _fact(
            f"cross-{x.id}",
            "Cross-reactivity between " + _series([_subject_link(kb, m).text for m in x.members]),
            x.provenance,
            details=(("Members", tuple(_subject_link(kb, m) for m in x.members)),),
            text=x.text,
        )
        for x in cls.cross_reactivity
    ]
    sections = [
        _section("prior-reaction", _topic_title(kb, "prior-reaction"), cross, topic=True),
        _section(CODES, "Names and codes", _identity(cls.identity), topic=False),
    ]
    overview = [("Members", tuple(_subject_link(kb, m) for m in cls.members))]
    return _page("class", cls.id, cls.name, overview, _class_notes(cls), sections, cls.source_file)


def _class_notes(cls: DrugClass) -> tuple[str, ...]:
    return (
        "An allergy recorded to the class (by one of its names or codes below) counts as a "
        "reaction to each member.",
    )


def agent_page(agent: Agent, kb: KnowledgeBase) -> Page:
    uses = _uses(agent, kb)
    used_by = (
        [
            Fact(
                anchor="drugs",
                title="Drugs whose facts name this agent",
                details=tuple((use, tuple(links)) for use, links in uses.items()),
                text="Each use is a fact on the drug's page, with its sources.",
            )
        ]
        if uses
        else []
    )
    dosing = [
        _fact(
            f"dosing-{w.id}",
            f"Weight-based dosing: {w.indication}",
            w.provenance,
            details=(("Route", _words(w.route or "")), ("Maximum dose", _words(_q(w.max_dose)))),
            table=[
                ("Weight", "Dose"),
                *((_band(b.min_kg, b.max_kg), fmt_qty(b.dose)) for b in w.bands),
            ],
            text=w.text,
        )
        for w in agent.weight_based_dosing
    ]
    market = []
    if agent.market_status is not None:
        market.append(
            _fact(
                "marketed",
                "Marketed" if agent.marketed else "No longer marketed: never suggested",
                agent.market_status,
                text=agent.market_text,
            )
        )
    sections = [
        _section("used-by", "Where the service uses this agent", used_by, topic=False),
        _section("weight-based-dosing", "Weight-based dosing", dosing, topic=False),
        _section("market-status", "Market status", market, topic=False),
        _section(CODES, "Names and codes", _identity(agent.identity), topic=False),
    ]
    overview = [
        ("Roles", _words(", ".join(ROLE_NAMES[r] for r in agent.roles))),
        ("Marketed", _words("yes" if agent.marketed else "no (never suggested)")),
    ]
    return _page("agent", agent.id, agent.name, overview, (), sections, agent.source_file)


def _uses(agent: Agent, kb: KnowledgeBase) -> dict[str, list[Link]]:
    """How drugs' facts use an agent ("H1 antihistamine (default)", "Pretreatment before"…),
    each with the drugs, in drug-id order."""
    uses: dict[str, list[Link]] = {}

    def add(use: str, drug: Drug) -> None:
        link = Link(drug.display, page_path("drug", drug.id))
        if link not in uses.setdefault(use, []):
            uses[use].append(link)

    for drug in sorted(kb.drugs.values(), key=lambda d: d.id):
        for regimen in drug.premedication:
            for entry in regimen.agents:
                role = ROLE_NAMES[entry.role]
                if entry.agent == agent.id:
                    add(f"Premedication: {role} (default)", drug)
                elif agent.id in entry.alternatives:
                    add(f"Premedication: {role} (alternative)", drug)
                elif any(x.agent == agent.id for x in entry.not_covered_by):
                    add(f"Does not count as the {role}", drug)
        if any(p.requires_drug == agent.id for p in drug.prerequisites):
            add("Pretreatment before the dose", drug)
        if drug.tocilizumab and agent.id == TOCILIZUMAB:
            add("On hand before the dose (CRS readiness)", drug)
        if any(a.role in agent.roles for a in drug.avoided_agents):
            add("Its role is to be avoided with", drug)
    return uses


def _band(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{fmt_number(low)} kg to under {fmt_number(high)} kg"
    if low is not None:
        return f"{fmt_number(low)} kg or more"
    if high is not None:
        return f"under {fmt_number(high)} kg"
    return "any weight"


def protocol_page(p: DesensitizationProtocol, kb: KnowledgeBase) -> Page:
    bags = [
        (str(i), f"1/{fmt_number(d)} of the final concentration" if d != 1 else "full strength")
        for i, d in enumerate(p.bag_dilutions, 1)
    ]
    steps = [
        (str(i), str(bag), fmt_number(rate), fmt_number(p.step_minutes))
        for i, (bag, rate) in enumerate(zip(p.step_bags, p.step_rates_ml_h, strict=True), 1)
    ]
    final = len(steps) + 1
    steps.append((str(final), str(len(p.bag_dilutions)), "the order's final rate", "until empty"))
    schedule = _fact(
        "schedule",
        p.name,
        p.provenance,
        details=(
            ("Bag-3 convention", _words(p.convention)),
            (
                "Lowest final rate",
                _words(
                    f"{fmt_number(p.min_final_rate_ml_h)} mL/h" if p.min_final_rate_ml_h else ""
                ),
            ),
        ),
        table=[("Step", "Bag", "Rate (mL/h)", "Minutes"), *steps],
        text=p.text,
    )
    dilutions = Fact(
        anchor="bags",
        title="Bags",
        table=(("Bag", "Concentration"), *bags),
        text="The bags' concentrations, as used by the schedule above (same sources).",
    )
    eligible = tuple(
        Link(d.display, page_path("drug", d.id))
        for d in sorted(kb.drugs.values(), key=lambda d: d.id)
        if d.desensitization_eligible
    )
    users = (
        [
            Fact(
                anchor="eligible",
                title="Drugs with desensitization reported",
                details=(("Drugs", eligible),),
                text="For these drugs the protocol, when verified, can make the prior-reaction "
                "card critical after a definite severe reaction. The schedule itself is shown "
                "after a definite severe reaction to any drug.",
            )
        ]
        if eligible
        else []
    )
    sections = [
        _section("desensitization", "Desensitization schedule", [schedule, dilutions], topic=False),
        _section("drugs", "Drugs with desensitization reported", users, topic=False),
    ]
    return _page("protocol", p.id, p.name, (), (), sections, p.source_file)


# -- the site ----------------------------------------------------------------------------------


def build_site(kb: KnowledgeBase) -> Site:
    """Every page of the knowledge base, the index tables and the card-link index.

    With a site overlay (``kb.site``) the facts are the label knowledge's, each institution
    entry shown beside the label fact it changes, and a page per institution protocol."""
    view, kb = kb, kb.label_knowledge
    overlay = view.site
    drug_overlays = (
        {k: _drug_overlays(view, overlay, k) for k in kb.drugs} if overlay is not None else {}
    )
    pages: tuple[Page, ...] = (
        *(drug_page(kb.drugs[k], kb, drug_overlays.get(k, {}).keys()) for k in sorted(kb.drugs)),
        *(class_page(kb.classes[k], kb) for k in sorted(kb.classes)),
        *(agent_page(kb.agents[k], kb) for k in sorted(kb.agents)),
        *(protocol_page(kb.protocols[k], kb) for k in sorted(kb.protocols)),
    )
    summary = None
    tables = _tables(kb, pages)
    if overlay is not None:
        pages = tuple(_with_overlay(p, kb, overlay, drug_overlays.get(p.id)) for p in pages)
        pages += tuple(
            institution_page(p, kb, overlay)
            for p in sorted(overlay.protocols.values(), key=lambda p: p.document)
        )
        summary = OverlaySummary(
            name=overlay.name,
            digest=overlay.digest,
            jurisdiction=overlay.jurisdiction,
            files=overlay.files,
            entries=len(overlay.entries),
        )
        tables = (_institution_table(overlay), *tables)
    # Cards name a drug; a class or agent page answers for an id that is no drug.
    links: dict[str, tuple[str, frozenset[str]]] = {}
    for kind in ("drug", "class", "agent"):
        for page in pages:
            if page.kind == kind:
                links.setdefault(page.id, (page.path, page.topics))
    return Site(
        version=view.version,
        pages=pages,
        tables=tables,
        coverage=tuple(coverage.citation_summary(kb)),
        index=PageIndex(MappingProxyType(links)),
        overlay=summary,
    )


def _tables(kb: KnowledgeBase, pages: Sequence[Page]) -> tuple[IndexTable, ...]:
    titles = {(p.kind, p.id): p.title for p in pages}
    rows = coverage.coverage_rows(kb)
    tables = []
    kinds: tuple[tuple[PageKind, tuple[str, ...]], ...] = (
        ("drug", coverage.DRUG_COLUMNS),
        ("class", coverage.CLASS_COLUMNS),
        ("agent", coverage.AGENT_COLUMNS),
    )
    for kind, columns in kinds:
        tables.append(
            IndexTable(
                kind=kind,
                title=KIND_TITLES[kind],
                columns=columns,
                rows=tuple(
                    IndexRow(
                        Link(titles[(kind, r.id)], page_path(kind, r.id)),
                        tuple(_cell(kb, column, r.cell(column)) for column in columns),
                    )
                    for r in rows
                    if r.kind == kind
                ),
            )
        )
    tables.append(
        IndexTable(
            kind="protocol",
            title=KIND_TITLES["protocol"],
            columns=("evidence",),
            rows=tuple(
                IndexRow(
                    Link(p.name, page_path("protocol", p.id)),
                    (Link(coverage.evidence_cell([p.provenance])),),
                )
                for p in sorted(kb.protocols.values(), key=lambda p: p.id)
            ),
        )
    )
    return tuple(tables)


def _cell(kb: KnowledgeBase, column: str, value: str) -> Link:
    """A coverage cell; the drug's class as a link to its page."""
    if column == "class" and value in kb.classes:
        return Link(kb.classes[value].name, page_path("class", value))
    return Link(value)


# -- the site overlay --------------------------------------------------------------------------


def _overlay(
    section: str,
    protocol: LocalProtocol,
    text: str,
    *,
    entry: SiteEntry | None = None,
    entry_id: str | None = None,
    replaces: str | None = None,
    title: str | None = None,
    details: Sequence[tuple[str, Sequence[Link]]] = (),
    switches_off: bool = False,
) -> OverlayEntry:
    return OverlayEntry(
        section=section,
        text=text,
        document=protocol.document,
        version=protocol.version,
        approved_by=protocol.approved_by,
        approved_on=protocol.approved_on,
        replaces=replaces,
        entry_id=entry.id if entry else entry_id,
        title=title,
        details=tuple((label, tuple(value)) for label, value in details if value),
        protocol_title=protocol.title,
        protocol_path=page_path("institution", protocol.id),
        source_file=entry.source_file if entry else None,
        switches_off=switches_off,
    )


def _change(
    section: str, change: SiteChange, replaces: str, details: Sequence[tuple[str, Sequence[Link]]]
) -> OverlayEntry:
    """A site's change to one label fact, shown beside it."""
    return _overlay(
        section,
        change.protocol,
        change.statement,
        entry_id=change.entry_id,
        replaces=replaces,
        details=details,
    )


def _drug_overlays(
    view: KnowledgeBase, site: SiteOverlay, drug_id: str
) -> dict[str, list[OverlayEntry]]:
    """Per section of a drug's page, the site's entries: each change beside the label fact
    it replaces (read from the view's facts), a rule switched off at the top of its topic."""
    label = view.label_knowledge
    drug = view.drugs[drug_id]
    found: dict[str, list[OverlayEntry]] = defaultdict(list)
    for regimen in drug.premedication:
        for i, agent in enumerate(regimen.agents, 1):
            if agent.site is None:
                continue
            found["premedication"].append(
                _change(
                    "premedication",
                    agent.site,
                    f"premedication-{regimen.id}-{i}",
                    (
                        ("Agent", (_agent_link(label, agent.agent),) if agent.agent else ()),
                        ("Dose", _words(_dose(agent) or "as the institution's protocol says")),
                        ("Route", _words(agent.route or "")),
                        ("Timing", _words(agent.timing)),
                        ("Alternatives", tuple(_agent_link(label, a) for a in agent.alternatives)),
                    ),
                )
            )
    for requirement in drug.monitoring:
        if requirement.site is not None:
            found["monitoring-admission"].append(
                _change(
                    "monitoring-admission",
                    requirement.site,
                    f"monitoring-{requirement.id}",
                    (("Duration", _words(_q(requirement.duration))),),
                )
            )
    for local in drug.local_regimens:
        found["rate-titration"].append(_local_regimen(local, drug))
    for entry in site.entries:
        if entry.kind == "rule-off" and entry.topic and drug_id in entry.drugs:
            topic = _topic_title(label, entry.topic)
            found[entry.topic].append(
                _overlay(
                    entry.topic,
                    entry.protocol,
                    f"The “{topic}” rule gives no card for {drug.display} at this site: nothing "
                    "is shown, logged or counted about it. The label facts below are kept for "
                    "reference; they do not reach a prescriber here.",
                    entry=entry,
                    title="Rule switched off at this site",
                    switches_off=True,
                )
            )
    return dict(found)


def _local_regimen(regimen: LocalRegimen, drug: Drug) -> OverlayEntry:
    """A local regimen beside the label schedule it replaces, with who it is for: what the
    engine checks, what the prescriber confirms."""
    rules = regimen.eligibility
    checked = []
    if rules.from_infusion is not None:
        checked.append(
            f"this is at least the {_ordinal(rules.from_infusion)} infusion of {drug.name} "
            "(prior doses on record)"
        )
    if rules.no_reaction_on_record:
        checked.append(f"no reaction to {drug.name} in the allergy records")
    text = f"{regimen.site.statement} ({fmt_number(regimen.minutes)} min in all)."
    return _overlay(
        "rate-titration",
        regimen.site.protocol,
        f"{text} {regimen.text}" if regimen.text else text,
        entry_id=regimen.id,
        replaces=f"rate-{regimen.replaces.id}" if regimen.replaces else None,
        title=f"Local regimen: {regimen.label} (eligible patients only)",
        details=(
            (
                "The service checks",
                _words("; ".join(checked) or "nothing: every condition is the prescriber's"),
            ),
            (
                "The prescriber confirms",
                _words("; ".join(rules.not_checked) or "nothing more"),
            ),
            (
                "On the rate card",
                _words(
                    "for an eligible patient, an order within the first phase's rate is "
                    "accepted and the conditions to confirm are named, a faster order is "
                    "offered this regimen beside the label's schedule; when a checked "
                    "condition fails the label's schedule applies, and when one cannot be "
                    "checked the card says so"
                ),
            ),
        ),
    )


def _entry_links(
    kb: KnowledgeBase, entry: SiteEntry, drug: Drug | None = None
) -> tuple[tuple[str, tuple[Link, ...]], ...]:
    """Where an entry applies, as links: its subject's page, the drugs it changes (at the
    topic it changes), the label facts it stands in for (``drug``'s alone on its page)."""
    topic = ENTRY_TOPICS.get(entry.kind) or entry.topic
    subject: tuple[Link, ...]
    if entry.scope == "site":
        subject = _words("the whole site")
    elif entry.scope == "referral":
        subject = _words(f"the referral {entry.target}")
    elif entry.scope == "class" and entry.target in kb.classes:
        subject = (Link(kb.classes[entry.target].name, page_path("class", entry.target)),)
    else:
        subject = (_subject_link(kb, entry.target),)
    drugs = tuple(
        Link(
            kb.drugs[d].display,
            page_path("drug", d) + (f"#{topic}" if topic else ""),
        )
        for d in entry.drugs
        if d in kb.drugs
    )
    return (
        ("For", subject),
        ("Drugs it changes", drugs if entry.scope != "drug" or len(drugs) > 1 else ()),
        ("Agents it chooses or replaces", tuple(_agent_link(kb, a) for a in entry.agents)),
        (
            "Label facts it stands in for",
            _words(
                "; ".join(
                    r
                    for r in entry.replaces
                    if drug is None or r.startswith(f"{drug.source_file}:")
                )
            ),
        ),
    )


def _codes_text(site: SiteOverlay, target: str) -> tuple[Link, ...]:
    return tuple(
        Link(f"{c.code}" + (f" ({c.display})" if c.display else "") + f" — {c.system}")
        for c in site.order_codes.get(target, ())
    )


def _summary_entry(
    kb: KnowledgeBase,
    site: SiteOverlay,
    entry: SiteEntry,
    shown: Sequence[Link],
    drug: Drug | None,
) -> OverlayEntry:
    """An entry in the "at this site" list at the top of a page."""
    details: list[tuple[str, Sequence[Link]]] = [*_entry_links(kb, entry, drug)]
    if entry.kind == "order-codes":
        details.append(("Codes", _codes_text(site, entry.target)))
    details.append(("Shown beside", tuple(shown)))
    return _overlay(SITE_SECTION, entry.protocol, entry.summary, entry=entry, details=details)


def _with_overlay(
    page: Page,
    kb: KnowledgeBase,
    site: SiteOverlay,
    beside: Mapping[str, Sequence[OverlayEntry]] | None,
) -> Page:
    """The page with the site's entries: beside the label facts they change (drug pages) and
    listed in a section of their own at the top (drug, class and agent pages)."""
    if page.kind not in ("drug", "class", "agent"):
        return page
    scope = page.kind
    entries = site.entries_for(scope, page.id)
    if not entries:
        return page
    titles = {s.anchor: s.title for s in page.sections}
    facts = {f.anchor: f.title for s in page.sections for top in s.facts for f in (top, *top.parts)}
    where: dict[str, list[Link]] = defaultdict(list)
    for section, shown in (beside or {}).items():
        for item in shown:
            anchor = item.replaces or section
            text = titles.get(section, section) + (
                f" › {facts[item.replaces]}" if item.replaces in facts else ""
            )
            link = Link(text, f"{page.path}#{anchor}")
            if item.entry_id and link not in where[item.entry_id]:
                where[item.entry_id].append(link)
    drug = kb.drugs.get(page.id) if scope == "drug" else None
    listed = tuple(_summary_entry(kb, site, e, where.get(e.id, ()), drug) for e in entries)
    overlays = {SITE_SECTION: listed, **{k: tuple(v) for k, v in (beside or {}).items()}}
    name = site.name
    intro = (
        f"These pages show the knowledge with the site overlay of {name}. Its entries about "
        f"this {scope} are listed here"
        + (", and each is shown beside the label fact it changes." if beside else ".")
    )
    top = Section(
        anchor=SITE_SECTION, title="At this site: institution protocols", facts=(), intro=intro
    )
    return replace(page, sections=(top, *page.sections), overlays=MappingProxyType(overlays))


def institution_page(protocol: LocalProtocol, kb: KnowledgeBase, site: SiteOverlay) -> Page:
    """One institution protocol: its document, version, approval and every entry it backs."""
    entries = [e for e in site.entries if e.protocol.id == protocol.id]
    backed = []
    for entry in entries:
        details: list[tuple[str, Sequence[Link]]] = [
            ("Entry", _words(f"{entry.id} ({entry.kind}) in {entry.source_file}")),
            *_entry_links(kb, entry),
        ]
        if entry.kind == "order-codes":
            details.append(("Codes", _codes_text(site, entry.target)))
        backed.append(
            Fact(
                anchor=f"entry-{entry.id}",
                title=entry.summary[0].upper() + entry.summary[1:],
                details=tuple((label, tuple(value)) for label, value in details if value),
            )
        )
    sections = [_section("entries", "Entries it backs", backed, topic=False)]
    overview = [
        ("Document", _words(protocol.document)),
        ("Title", _words(protocol.title)),
        ("Version", _words(protocol.version)),
        ("Approved by", _words(protocol.approved_by)),
        ("Approved on", _words(protocol.approved_on.isoformat())),
        ("Address", _words(protocol.url or "")),
        ("Site", _words(site.name)),
    ]
    notes = (
        "An institution's own approved protocol, from the site overlay: cards built from its "
        "entries cite it next to the label fact they replace.",
        "Its sources below are the published documents it rests on (based_on)."
        if protocol.based_on
        else "It names no published source it rests on (based_on).",
    )
    return _page(
        "institution",
        protocol.id,
        protocol.name,
        overview,
        notes,
        sections,
        ", ".join(sorted({e.source_file for e in entries})) or "the site overlay",
        tuple(cited(s) for s in protocol.based_on),
    )


def _institution_table(site: SiteOverlay) -> IndexTable:
    counts: dict[str, int] = defaultdict(int)
    for entry in site.entries:
        counts[entry.protocol.id] += 1
    return IndexTable(
        kind="institution",
        title=KIND_TITLES["institution"],
        columns=("title", "version", "approved by", "approved on", "entries"),
        rows=tuple(
            IndexRow(
                Link(p.document, page_path("institution", p.id)),
                _words(
                    p.title,
                    p.version,
                    p.approved_by,
                    p.approved_on.isoformat(),
                    str(counts[p.id]),
                ),
            )
            for p in sorted(site.protocols.values(), key=lambda p: p.document)
        ),
    )
