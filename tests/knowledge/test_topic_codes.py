"""Topic wire codes (cards/policy.yaml ``topics[].wire_code``): what every card sends as
``source.topic.code``, in the shape Epic accepts (ASCII letters and digits, at most 100),
distinct per topic; the loader refuses any other."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase
from tests.knowledge.test_loader import cards, edit, has, problems_of

__all__ = ["cards"]  # the fixture

EPIC_TOPIC_CODE = re.compile(r"^[A-Za-z0-9]{1,100}$")


def test_every_topic_has_a_distinct_epic_safe_wire_code(kb: KnowledgeBase) -> None:
    wire = [t.wire_code for t in kb.policy.topics]
    assert all(EPIC_TOPIC_CODE.match(code) for code in wire), wire
    assert len({c.casefold() for c in wire}) == len(wire)
    for t in kb.policy.topics:
        assert kb.policy.topic_sent_as(t.wire_code) is t
    with pytest.raises(KeyError):
        kb.policy.topic_sent_as("rate-titration")  # a rule's own name is not a wire code


def test_the_rules_keep_their_names(kb: KnowledgeBase) -> None:
    """Site overlays, the card log, snoozes and metrics name rules by ``code``: unchanged."""
    assert kb.policy.topic("rate-titration").wire_code == "RateTitration"
    assert kb.policy.topic("premedication").wire_code == "Premedication"


@pytest.mark.parametrize(
    "bad",
    ["rate-titration", "Rate Titration", "Prémédication", "A" * 101, "", "Card_1"],
)
def test_a_wire_code_epic_refuses_is_refused(cards: Path, bad: str) -> None:
    def change(d: dict[str, Any]) -> None:
        d["topics"][1]["wire_code"] = bad

    edit(cards, "policy.yaml", change)
    assert has(problems_of(cards), "policy.yaml", "topics.1.wire_code", "letters and digits")


def test_a_wire_code_of_100_characters_is_accepted(cards: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["topics"][1]["wire_code"] = "A" * 100

    edit(cards, "policy.yaml", change)
    assert load_knowledge(cards).policy.topics[1].wire_code == "A" * 100


def test_two_topics_with_one_wire_code_are_refused(cards: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        d["topics"][2]["wire_code"] = d["topics"][0]["wire_code"].upper()

    edit(cards, "policy.yaml", change)
    assert has(problems_of(cards), "policy.yaml", "topics.2.wire_code", "already topic 0")


def test_a_topic_without_wire_code_is_refused(cards: Path) -> None:
    def change(d: dict[str, Any]) -> None:
        del d["topics"][0]["wire_code"]

    edit(cards, "policy.yaml", change)
    assert has(problems_of(cards), "policy.yaml", "topics.0.wire_code", "")
