"""Citations are self-contained: every source names its primary document or why there is none."""

from __future__ import annotations

from pathlib import Path

from cds_server.knowledge.coverage import citation_summary
from cds_server.knowledge.loader import load_knowledge
from tests.knowledge.test_loader import RITUX, cards, edit, problems_of

__all__ = ["cards"]

REPO = Path(__file__).resolve().parents[2]


def test_no_file_of_the_repository_points_outside_it() -> None:
    """Reviewers have only the repository: no citation may lean on our private notes."""
    offenders = [
        str(p.relative_to(REPO))
        for folder in ("cards", "cds_server", "fixtures")
        for p in (REPO / folder).rglob("*")
        if p.is_file()
        and p.suffix in {".yaml", ".py", ".md", ".json", ".html", ".txt"}
        and "shared/reference" in p.read_text(encoding="utf-8", errors="replace")
    ]
    assert offenders == []


def test_every_shipped_source_names_its_primary_document_or_why_not() -> None:
    kb = load_knowledge()
    assert kb.sources
    for file, source in kb.sources:
        assert source.primary_identifier or source.no_primary_id, (file, source.id)
        if source.primary_identifier and source.kind == "label":
            assert source.primary_url and source.primary_url.startswith(
                "https://dailymed.nlm.nih.gov/"
            ), (file, source.id)


def test_a_source_without_primary_document_or_reason_is_refused(cards: Path) -> None:
    def strip(d: dict) -> None:
        sid = d["label"]
        d["sources"][sid] = {"kind": "website", "title": "Somebody's page"}

    edit(cards, RITUX, strip)
    problems = problems_of(cards)
    assert any(
        p.file == RITUX and p.field.endswith("no_primary_id") and "primary document" in p.message
        for p in problems
    ), problems


def test_via_is_no_longer_a_field(cards: Path) -> None:
    def add_via(d: dict) -> None:
        d["sources"][d["label"]]["via"] = "notes §1"

    edit(cards, RITUX, add_via)
    assert any(p.file == RITUX and "via" in p.field for p in problems_of(cards))


def test_source_needs_a_kind(cards: Path) -> None:
    edit(cards, RITUX, lambda d: d["sources"][d["label"]].pop("kind"))
    assert any(p.file == RITUX and p.field.endswith(".kind") for p in problems_of(cards))


def test_primary_links_and_identifiers() -> None:
    kb = load_knowledge()
    by_kind = {s.kind: s for _, s in kb.sources if s.primary_identifier}
    label = by_kind["label"]
    assert label.primary_identifier == f"DailyMed SPL set id {label.spl_set_id}"
    assert label.primary_url == (
        f"https://dailymed.nlm.nih.gov/dailymed/lookup.cfm?setid={label.spl_set_id}"
    )
    paper = by_kind["paper"]
    assert paper.primary_url in {
        f"https://doi.org/{paper.doi}",
        f"https://pubmed.ncbi.nlm.nih.gov/{paper.pmid}/",
        f"https://pmc.ncbi.nlm.nih.gov/articles/{paper.pmcid}/",
    }


def test_check_cards_reports_citation_coverage() -> None:
    kb = load_knowledge()
    facts, sources = citation_summary(kb)
    assert facts.startswith(f"Facts: {sum(kb.fact_evidence.values())} (")
    assert "verified" in facts and "secondary" in facts and "unverified" in facts
    with_primary = sum(1 for _, s in kb.sources if s.primary_identifier)
    assert f"Sources: {len(kb.sources)}; with a primary identifier {with_primary}" in sources
    assert sum(kb.fact_evidence.values()) > len(kb.drugs)


def test_a_website_never_shows_as_verifying_a_fact() -> None:
    """A patient or manufacturer page cited beside the label shows as secondary on the card."""
    kb = load_knowledge()
    glofitamab = kb.drug("glofitamab")
    checked = 0
    for fact in glofitamab.monitoring:
        kinds = {s.kind for s in fact.provenance.sources}
        if fact.provenance.evidence == "verified" and "website" in kinds:
            checked += 1
            pairs = zip(fact.provenance.sources, fact.provenance.citations(), strict=True)
            for source, citation in pairs:
                expected = "secondary" if source.kind == "website" else "verified"
                assert citation.evidence == expected, source.id
    assert checked, "glofitamab has a verified monitoring fact citing a website"
