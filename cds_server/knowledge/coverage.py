"""What the knowledge base knows about each drug, agent and class, with evidence levels.

``coverage_rows`` returns the data; ``format_coverage`` renders it as the plain-text table
that ``cds-server check-cards`` prints. A cell shows the evidence levels of the facts in
that section: ``V`` (verified), ``S`` (secondary), ``U`` (unverified); a mixed section
shows its best and worst level (``V/U``); ``—`` means nothing is known. ``restart`` is the
restart-after-delay table; ``course`` the course alerts and label precautions (allergy risks,
avoided agents).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from cds_server.knowledge.model import (
    EVIDENCE_LEVELS,
    Agent,
    Drug,
    DrugClass,
    Identity,
    KnowledgeBase,
    Provenance,
)
from cds_server.model import ATC, NDC, RXNORM, SNOMED

__all__ = [
    "ABSENT",
    "AGENT_COLUMNS",
    "CLASS_COLUMNS",
    "DRUG_COLUMNS",
    "CoverageRow",
    "citation_summary",
    "coverage_rows",
    "evidence_cell",
    "format_coverage",
]

ABSENT = "—"
_LETTER = {"verified": "V", "secondary": "S", "unverified": "U"}
_SYSTEM_NAMES = {RXNORM: "rxnorm", ATC: "atc", SNOMED: "snomed", NDC: "ndc"}

DRUG_COLUMNS: tuple[str, ...] = (
    "class",
    "codes",
    "premed",
    "rates",
    "step-up",
    "restart",
    "course",
    "monitoring",
    "prereq",
    "toci",
    "reactions",
    "desens",
)
AGENT_COLUMNS: tuple[str, ...] = ("roles", "codes", "weight-based dosing")
CLASS_COLUMNS: tuple[str, ...] = ("members", "allergy names", "codes", "cross-reactivity")


@dataclass(frozen=True)
class CoverageRow:
    """One line of the coverage table: a drug, agent or class and its cells by column."""

    kind: Literal["drug", "agent", "class"]
    id: str
    cells: tuple[tuple[str, str], ...]

    def cell(self, column: str) -> str:
        for name, value in self.cells:
            if name == column:
                return value
        raise KeyError(column)


def evidence_cell(provenances: Iterable[Provenance]) -> str:
    """``V``, ``S`` or ``U`` when one level is present, ``best/worst`` when mixed, else ``—``."""
    present = {p.evidence for p in provenances}
    levels = [lvl for lvl in EVIDENCE_LEVELS if lvl in present]
    if not levels:
        return ABSENT
    best, worst = _LETTER[levels[0]], _LETTER[levels[-1]]
    return best if best == worst else f"{best}/{worst}"


def _codes_cell(identity: Identity) -> str:
    if not identity.codes:
        return ABSENT
    systems: list[str] = []
    for entry in identity.codes:
        name = _SYSTEM_NAMES.get(entry.coding.system or "", entry.coding.system or "?")
        if name not in systems:
            systems.append(name)
    ordered = [s for s in _SYSTEM_NAMES.values() if s in systems]
    ordered += [s for s in systems if s not in ordered]
    return f"{','.join(ordered)} {evidence_cell(e.provenance for e in identity.codes)}"


def _drug_row(drug: Drug) -> CoverageRow:
    premed = [r.provenance for r in drug.premedication]
    premed += [a.provenance for r in drug.premedication for a in r.agents]
    desens = [r.provenance for r in drug.reactions if r.kind == "desensitization"]
    desens_cell = evidence_cell(desens)
    if desens_cell == ABSENT and drug.desensitization_eligible:
        desens_cell = "eligible"
    cells = (
        ("class", drug.drug_class or ABSENT),
        ("codes", _codes_cell(drug.identity)),
        ("premed", evidence_cell(premed)),
        ("rates", evidence_cell(r.provenance for r in drug.rate_schedules)),
        ("step-up", evidence_cell(s.provenance for s in drug.step_up)),
        ("restart", evidence_cell(r.provenance for r in drug.restart)),
        (
            "course",
            evidence_cell(
                [a.provenance for a in drug.course_alerts]
                + [a.provenance for a in drug.allergy_risks]
                + [a.provenance for a in drug.avoided_agents]
            ),
        ),
        ("monitoring", evidence_cell(m.provenance for m in drug.monitoring)),
        ("prereq", evidence_cell(p.provenance for p in drug.prerequisites)),
        ("toci", evidence_cell(t.provenance for t in drug.tocilizumab)),
        (
            "reactions",
            evidence_cell(r.provenance for r in drug.reactions if r.kind != "desensitization"),
        ),
        ("desens", desens_cell),
    )
    return CoverageRow("drug", drug.id, cells)


def _agent_row(agent: Agent) -> CoverageRow:
    cells = (
        ("roles", ",".join(agent.roles)),
        ("codes", _codes_cell(agent.identity)),
        ("weight-based dosing", evidence_cell(w.provenance for w in agent.weight_based_dosing)),
    )
    return CoverageRow("agent", agent.id, cells)


def _class_row(cls: DrugClass) -> CoverageRow:
    cells = (
        ("members", ",".join(cls.members)),
        ("allergy names", str(len(cls.identity.names) + len(cls.identity.brands))),
        ("codes", _codes_cell(cls.identity)),
        ("cross-reactivity", evidence_cell(c.provenance for c in cls.cross_reactivity)),
    )
    return CoverageRow("class", cls.id, cells)


def coverage_rows(kb: KnowledgeBase) -> tuple[CoverageRow, ...]:
    """Drug rows, then agent rows, then class rows, each sorted by id."""
    return (
        *(_drug_row(kb.drugs[k]) for k in sorted(kb.drugs)),
        *(_agent_row(kb.agents[k]) for k in sorted(kb.agents)),
        *(_class_row(kb.classes[k]) for k in sorted(kb.classes)),
    )


def _table(title: str, columns: tuple[str, ...], rows: list[CoverageRow]) -> list[str]:
    header = (title, *columns)
    body = [(r.id, *(r.cell(c) for c in columns)) for r in rows]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [fmt(header), rule, *(fmt(line) for line in body)]


def format_coverage(kb: KnowledgeBase) -> str:
    """The coverage table as plain text: drugs, agents, classes, a legend and a summary."""
    rows = coverage_rows(kb)
    lines: list[str] = []
    for kind, title, columns in (
        ("drug", "drug", DRUG_COLUMNS),
        ("agent", "agent", AGENT_COLUMNS),
        ("class", "class", CLASS_COLUMNS),
    ):
        selected = [r for r in rows if r.kind == kind]
        if selected:
            lines.extend(_table(title, columns, selected))
            lines.append("")
    lines.append(
        "Evidence: V verified, S secondary, U unverified; V/U = best/worst of a mixed section; "
        f"{ABSENT} = nothing known."
    )
    lines.append(
        "Columns: premed = premedication, prereq = prerequisites, toci = tocilizumab on hand, "
        "desens = desensitization (eligible = flagged, no fact)."
    )
    lines.extend(citation_summary(kb))
    lines.append(
        f"{len(kb.drugs)} drugs, {len(kb.classes)} classes, {len(kb.agents)} agents, "
        f"{len(kb.protocols)} protocols; knowledge version {kb.version}"
    )
    return "\n".join(lines)


def citation_summary(kb: KnowledgeBase) -> list[str]:
    """Citation coverage: facts per evidence level, and sources with a primary identifier."""
    facts = sum(kb.fact_evidence.values())
    by_level = ", ".join(f"{kb.fact_evidence.get(e, 0)} {e}" for e in EVIDENCE_LEVELS)
    sources = [s for _, s in kb.sources]
    kinds = Counter(
        "label (SPL set id)"
        if s.spl_set_id
        else "paper (DOI/PMID)"
        if s.doi or s.pmid or s.pmcid
        else f"{s.kind} (publisher, year)"
        for s in sources
        if s.primary_identifier
    )
    primary = sum(kinds.values())
    explained = sum(1 for s in sources if not s.primary_identifier and s.no_primary_id)
    return [
        f"Facts: {facts} ({by_level}).",
        f"Sources: {len(sources)}; with a primary identifier {primary}"
        + (f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})" if kinds else "")
        + f"; without, explained why {explained}.",
    ]


def format_site(kb: KnowledgeBase) -> str:
    """A site overlay as ``check-cards --site`` lists it: each entry with what it changes, the
    label facts it overrides, and its protocol's approval; then the protocols themselves."""
    site = kb.site
    if site is None:
        return "No site overlay."
    lines = [
        f"Site overlay {site.folder}: {site.name} ({len(site.files)} file(s), "
        f"{len(site.entries)} entries); jurisdiction {site.jurisdiction}; "
        f"knowledge version {kb.version}",
    ]
    for entry in site.entries:
        target = entry.target if entry.scope == "site" else f"{entry.scope} {entry.target}"
        lines.append(
            f"- {entry.id} ({entry.kind}, {target or 'the whole site'}; {entry.source_file}): "
            f"{entry.summary}"
        )
        if entry.drugs and entry.scope != "drug":
            lines.append(f"    drugs: {', '.join(entry.drugs)}")
        for replaced in entry.replaces:
            lines.append(f"    overrides {replaced}")
        lines.append(f"    {entry.protocol.attribution}")
    lines.append("Protocols:")
    for protocol in site.protocols.values():
        cited = sum(1 for e in site.entries if e.protocol.id == protocol.id)
        lines.append(
            f"- {protocol.attribution}: {protocol.title}; cited by {cited} entr"
            + ("y" if cited == 1 else "ies")
        )
        for source in protocol.based_on:
            where = source.primary_identifier or source.no_primary_id or "no identifier"
            lines.append(f"    based on: {source.title} [{where}]")
    return "\n".join(lines)
