"""``snooze_days`` on override reasons (cards/policy.yaml): loaded, shown on the reason's
display, validated; the clinical choice of which reasons snooze is pinned here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase
from tests.knowledge.test_loader import cards, edit, has, problems_of

__all__ = ["cards"]  # the fixture

SNOOZING = {
    "previously-tolerated": 90,
    "desensitization-planned": 90,
    "premedication-ordered-elsewhere": 1,
}


def test_which_reasons_snooze(kb: KnowledgeBase) -> None:
    days = {r.code: r.snooze_days for r in kb.policy.override_reasons}
    assert {code: d for code, d in days.items() if d} == SNOOZING
    for code in (
        "not-applicable",
        "allergy-record-incorrect",
        "rate-per-institutional-protocol",
        "admission-arranged",
        "pretreatment-given-elsewhere",
        "tocilizumab-available",
    ):
        assert days[code] is None, code


def test_display_says_so_where_it_snoozes(kb: KnowledgeBase) -> None:
    tolerated = kb.policy.reason("previously-tolerated")
    assert tolerated.shown("warning").endswith("— snooze 90 days")
    assert tolerated.shown("info").endswith("— snooze 90 days")
    assert tolerated.shown("critical") == tolerated.display  # a critical card never snoozes
    assert "snooze" not in tolerated.display
    assert (
        kb.policy.reason("premedication-ordered-elsewhere")
        .shown("warning")
        .endswith("— snooze 1 day")
    )
    assert "snooze" not in kb.policy.reason("not-applicable").shown("warning")


def test_hl7_non_adherence_mapping(kb: KnowledgeBase) -> None:
    """Pinned: each reason's HL7 CDS Hooks 3.0 non-adherence code (none where none fits)."""
    assert {r.code: r.hl7_non_adherence for r in kb.policy.override_reasons} == {
        "previously-tolerated": "action-performed-no-adverse-effect",
        "premedication-ordered-elsewhere": "indication-order-exists",
        "desensitization-planned": "indication-order-exists",
        "allergy-record-incorrect": "cds-not-applicable",
        "rate-per-institutional-protocol": "policy-contradicts",
        "admission-arranged": "indication-order-exists",
        "pretreatment-given-elsewhere": "action-completed",
        "tocilizumab-available": "action-completed",
        "doses-given-elsewhere": None,
        "benefit-outweighs-risk": "risk-benefit-ratio",
        "not-applicable": "cds-not-applicable",
    }


def test_invented_hl7_code_is_refused(cards: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["override_reasons"][0]["hl7_non_adherence"] = "patient-tolerated"

    edit(cards, "policy.yaml", change)
    assert has(problems_of(cards), "policy.yaml", "override_reasons.0.hl7_non_adherence", "")


def test_unknown_offer_condition_is_refused(cards: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["override_reasons"][0]["offered_when"] = "always-true"

    edit(cards, "policy.yaml", change)
    assert has(problems_of(cards), "policy.yaml", "override_reasons.0.offered_when", "")


@pytest.mark.parametrize("bad", [0, -3, 400, "90", 1.5])
def test_invalid_snooze_days(cards: Path, bad: Any) -> None:
    def change(d: dict[str, Any]) -> None:
        d["override_reasons"][0]["snooze_days"] = bad

    edit(cards, "policy.yaml", change)
    assert has(problems_of(cards), "policy.yaml", "override_reasons.0.snooze_days", "")


def test_snooze_days_is_optional(cards: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        for r in d["override_reasons"]:
            r.pop("snooze_days", None)

    edit(cards, "policy.yaml", change)
    assert all(r.snooze_days is None for r in load_knowledge(cards).policy.override_reasons)
