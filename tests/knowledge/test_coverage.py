"""The coverage table printed by ``cds-server check-cards``."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from cds_server.knowledge.coverage import (
    ABSENT,
    DRUG_COLUMNS,
    coverage_rows,
    evidence_cell,
    format_coverage,
)
from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import Drug, KnowledgeBase, Provenance


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    return load_knowledge()


def prov(evidence: str) -> Provenance:
    return Provenance(evidence=evidence, sources=())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("levels", "cell"),
    [
        ((), ABSENT),
        (("verified",), "V"),
        (("secondary", "secondary"), "S"),
        (("unverified",), "U"),
        (("unverified", "verified"), "V/U"),
        (("secondary", "verified"), "V/S"),
        (("unverified", "secondary"), "S/U"),
        (("verified", "secondary", "unverified"), "V/U"),
    ],
)
def test_evidence_cell(levels: tuple[str, ...], cell: str) -> None:
    assert evidence_cell(prov(level) for level in levels) == cell


def test_one_row_per_drug_agent_and_class(kb: KnowledgeBase) -> None:
    rows = coverage_rows(kb)
    assert [r.id for r in rows if r.kind == "drug"] == sorted(kb.drugs)
    assert [r.id for r in rows if r.kind == "agent"] == sorted(kb.agents)
    assert [r.id for r in rows if r.kind == "class"] == sorted(kb.classes)
    for row in rows:
        if row.kind == "drug":
            assert tuple(name for name, _ in row.cells) == DRUG_COLUMNS


def _expected_cell(provenances: list[Provenance]) -> str:
    levels = {p.evidence for p in provenances}
    order = [lvl for lvl in ("verified", "secondary", "unverified") if lvl in levels]
    if not order:
        return ABSENT
    letters = {"verified": "V", "secondary": "S", "unverified": "U"}
    best, worst = letters[order[0]], letters[order[-1]]
    return best if best == worst else f"{best}/{worst}"


def _check_drug_row(drug: Drug, kb: KnowledgeBase) -> None:
    (row,) = [r for r in coverage_rows(kb) if r.kind == "drug" and r.id == drug.id]
    premed = [r.provenance for r in drug.premedication]
    premed += [a.provenance for r in drug.premedication for a in r.agents]
    assert row.cell("premed") == _expected_cell(premed)
    assert row.cell("rates") == _expected_cell([r.provenance for r in drug.rate_schedules])
    assert row.cell("step-up") == _expected_cell([s.provenance for s in drug.step_up])
    assert row.cell("monitoring") == _expected_cell([m.provenance for m in drug.monitoring])
    assert row.cell("toci") == _expected_cell([t.provenance for t in drug.tocilizumab])
    codes = row.cell("codes")
    if drug.identity.codes:
        evidence = _expected_cell([c.provenance for c in drug.identity.codes])
        assert codes.endswith(f" {evidence}")
    else:
        assert codes == ABSENT


def test_rows_reflect_the_facts_of_every_drug(kb: KnowledgeBase) -> None:
    for drug in kb.drugs.values():
        _check_drug_row(drug, kb)


def test_rituximab_row(kb: KnowledgeBase) -> None:
    (row,) = [r for r in coverage_rows(kb) if r.id == "rituximab"]
    assert row.cell("class") == "anti-cd20"
    assert row.cell("codes").startswith("rxnorm,atc,snomed ")
    assert row.cell("step-up") == ABSENT  # rituximab has no step-up dosing


def test_absent_sections_and_desensitization_flag(kb: KnowledgeBase) -> None:
    bare = {
        **{f: getattr(kb.drugs["rituximab"], f) for f in Drug.__dataclass_fields__},
        "premedication": (),
        "rate_schedules": (),
        "reactions": (),
        "desensitization_eligible": True,
    }
    drug = Drug(**bare)
    small = KnowledgeBase(
        version="test",
        format=kb.format,
        drugs=MappingProxyType({"rituximab": drug}),
        classes=MappingProxyType({}),
        agents=MappingProxyType({}),
        protocols=MappingProxyType({}),
        policy=kb.policy,
    )
    (row,) = coverage_rows(small)
    assert row.cell("premed") == ABSENT
    assert row.cell("rates") == ABSENT
    assert row.cell("reactions") == ABSENT
    assert row.cell("desens") == "eligible"
    text = format_coverage(small)
    assert "agent" not in text.splitlines()[0]
    assert text.splitlines()[-1] == (
        "1 drugs, 0 classes, 0 agents, 0 protocols; knowledge version test"
    )


def test_format_coverage_lists_everything_and_the_version(kb: KnowledgeBase) -> None:
    text = format_coverage(kb)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["drug", "class", "codes"]
    for drug_id in kb.drugs:
        assert any(line.startswith(f"{drug_id} ") for line in lines), drug_id
    for agent_id in kb.agents:
        assert any(line.startswith(f"{agent_id} ") for line in lines), agent_id
    for class_id in kb.classes:
        assert any(line.startswith(f"{class_id} ") for line in lines), class_id
    assert lines[-1] == (
        f"{len(kb.drugs)} drugs, {len(kb.classes)} classes, {len(kb.agents)} agents, "
        f"{len(kb.protocols)} protocols; knowledge version {kb.version}"
    )
    assert "V verified" in text


def test_restart_tables_and_course_facts_have_their_columns(kb) -> None:
    rows = {r.id: r for r in coverage_rows(kb) if r.kind == "drug"}
    assert rows["teclistamab"].cell("restart") == "V"
    assert rows["elranatamab"].cell("restart") == "V/S"
    assert rows["glofitamab"].cell("restart") == "—"  # table not found: not encoded
    assert rows["carboplatin"].cell("course") == "V"
    assert rows["lisocabtagene-maraleucel"].cell("course") == "S"
