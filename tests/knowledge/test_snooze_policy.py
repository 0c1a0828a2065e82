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


def test_display_says_so(kb: KnowledgeBase) -> None:
    tolerated = kb.policy.reason("previously-tolerated")
    assert tolerated.display.endswith("— snooze 90 days unless critical")
    assert kb.policy.reason("premedication-ordered-elsewhere").display.endswith(
        "— snooze 1 day unless critical"
    )
    assert "snooze" not in kb.policy.reason("not-applicable").display


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
