"""Card text and choices over every fixture request and every clinical scenario (issue 18).

Each test reads every card the service gives for ``fixtures/fhir/requests/*.json`` and
``fixtures/fhir/scenarios/*.request.json`` (``tests/render/every_response.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Flask

from cds_server import pipeline
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Situation
from cds_server.render import markdown
from cds_server.render.cards import DETAIL_BUDGET, MAX_SOURCES, TABLE_HEADING
from cds_server.render.markdown import SEMANTIC_TAG
from tests.conftest import rule_of, service_for
from tests.render.every_response import every_card, every_response, request_of

GIVEN = frozenset({"completed", "stopped"})
_IGNORED = frozenset({"entered-in-error", "refuted"})


def _reasons(card: dict[str, Any]) -> dict[str, str]:
    return {r["code"]: r["display"] for r in card.get("overrideReasons", ())}


def _drug_id(card: dict[str, Any], kb: KnowledgeBase) -> str | None:
    shown = card["summary"].split(": ", 1)[0]
    return next((d.id for d in kb.drugs.values() if d.display == shown), None)


def _situation(where: str, kb: KnowledgeBase) -> Situation:
    body = request_of(where)
    ev = pipeline.run(body, service_id=service_for(body), kb=kb, settings=FhirSettings())
    return ev.situation


def _reaction_or_dose(situation: Situation, drug_id: str, kb: KnowledgeBase) -> bool:
    """A reaction to the drug, its class or a class member on record, or a dose given."""
    related = {("drug", drug_id)}
    for cls in kb.classes_of(drug_id):
        related |= {("class", cls.id)} | {("drug", m) for m in cls.members}
    reaction = any(
        (a.target_kind, a.target_id) in related
        for a in situation.allergies
        if a.allergy.verification_status not in _IGNORED
    )
    dose = any(
        r.drug_id == drug_id and r.order.status in GIVEN
        for r in (*situation.history, *situation.administrations)
    )
    return reaction or dose


def test_every_fixture_and_scenario_answers(make_app: Callable[..., Flask]) -> None:
    responses = every_response(make_app)
    assert len(responses) >= 55
    assert sum(len(r["cards"]) for r in responses.values()) >= 100


def test_previously_tolerated_only_with_a_prior_reaction_or_dose(
    make_app: Callable[..., Flask], kb: KnowledgeBase
) -> None:
    offered = withheld = 0
    wrong = []
    for where, card in every_card(make_app):
        if "previously-tolerated" not in kb.policy.topic(rule_of(card)).override_reasons:
            continue
        drug_id = _drug_id(card, kb)
        assert drug_id is not None, where
        fits = _reaction_or_dose(_situation(where.split(" card ")[0], kb), drug_id, kb)
        has = "previously-tolerated" in _reasons(card)
        offered += has
        withheld += not has
        if has != fits:
            wrong.append(f"{where}: offered={has}, prior reaction or dose={fits}")
    assert not wrong, "\n".join(wrong)
    assert offered and withheld  # both cases occur in the fixtures


def test_first_infusion_rate_card_offers_no_tolerance_reason(
    make_app: Callable[..., Flask],
) -> None:
    [card] = every_response(make_app)["requests/order-sign-rituximab"]["cards"]
    assert card["source"]["topic"]["code"] == "RateTitration"
    assert list(_reasons(card)) == ["rate-per-institutional-protocol", "not-applicable"]


def test_snooze_wording_only_where_the_reason_would_snooze(
    make_app: Callable[..., Flask], kb: KnowledgeBase
) -> None:
    seen = set()
    for where, card in every_card(make_app):
        for code, display in _reasons(card).items():
            days = kb.policy.reason(code).snooze_days
            snoozes = bool(days) and card["indicator"] != "critical"
            assert ("snooze" in display) is snoozes, f"{where}: {code}: {display!r}"
            assert "unless critical" not in display, where
            assert "see comment" not in display, where
            seen.add((card["indicator"] == "critical", snoozes, bool(days)))
    # a snoozing reason appears on critical cards (without the wording) and on others (with it)
    assert (True, False, True) in seen and (False, True, True) in seen


def test_allergy_record_reason_only_on_cards_that_name_an_allergy(
    make_app: Callable[..., Flask],
) -> None:
    for where, card in every_card(make_app):
        if "allergy-record-incorrect" in _reasons(card):
            detail = card.get("detail", "").casefold()
            assert "allergy record" in detail or "on record" in detail, where


# -- clean text ------------------------------------------------------------------------------

HTML_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-f]+|[a-z]+);", re.IGNORECASE)
NESTED = re.compile(r"\([^()]*\([^()]*\)[^()]*\)")


def _texts(card: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, text) for every text a prescriber reads on a card."""
    out = [("summary", card["summary"]), ("detail", card.get("detail", ""))]
    out += [("suggestion label", s["label"]) for s in card.get("suggestions", ())]
    out += [("link label", link["label"]) for link in card.get("links", ())]
    out += [("override reason", r["display"]) for r in card.get("overrideReasons", ())]
    return out


def test_no_html_entities_semantic_tags_or_empty_parentheses(
    make_app: Callable[..., Flask],
) -> None:
    wrong = []
    for where, card in every_card(make_app):
        for what, text in _texts(card):
            for problem, found in (
                ("HTML entity", HTML_ENTITY.search(text)),
                ("semantic tag", SEMANTIC_TAG.search(text)),
                ("empty parentheses", re.search(r"\(\s*\)", text)),
            ):
                if found:
                    wrong.append(f"{where}: {what}: {problem} {found.group(0)!r}")
    assert not wrong, "\n".join(wrong[:30])


def test_no_brackets_inside_brackets_in_prose(make_app: Callable[..., Flask]) -> None:
    wrong = []
    for where, card in every_card(make_app):
        prose = card.get("detail", "").split("**Sources:**")[0]
        lines = [line for line in prose.split("\n") if not line.startswith("|")]
        for text in [card["summary"], *lines, *(s["label"] for s in card.get("suggestions", ()))]:
            if NESTED.search(text):
                wrong.append(f"{where}: {text[:160]!r}")
    assert not wrong, "\n".join(wrong[:30])


def test_no_evidence_flag_in_an_order_label(make_app: Callable[..., Flask]) -> None:
    flagged_details = 0
    for where, card in every_card(make_app):
        for s in card.get("suggestions", ()):
            assert "[unverified]" not in s["label"] and "[secondary]" not in s["label"], where
        detail = card.get("detail", "")
        flagged_details += "[unverified]" in detail or "[secondary]" in detail
    assert flagged_details  # the detail still says so


def test_every_summary_names_the_drug_and_the_fact(
    make_app: Callable[..., Flask], kb: KnowledgeBase
) -> None:
    names = {d.display for d in kb.drugs.values()} | {
        "Planned infusions",
        "Unidentified order",
        "Unreadable draft order",
    }
    for where, card in every_card(make_app):
        drug, _, fact = card["summary"].partition(": ")
        assert drug in names, where
        assert len(fact) >= 12, where
        assert "related drug or its class" not in fact, where
        if drug == "Planned infusions":
            assert any(name in fact for name in names), where


# -- detail budget and sources -----------------------------------------------------------------

LINK = re.compile(r"\[((?:[^\]\\]|\\.)*)\]\(([^)]*)\)")
# An institution's protocol (the example site overlay's cards) is listed first.
EVIDENCE = {"institution": 0, "verified": 1, "secondary": 2, "unverified": 3}


def _prose_and_sources(card: dict[str, Any]) -> tuple[str, list[str]]:
    detail = card.get("detail", "")
    prose, _, sources = detail.partition("\n\n**Sources:**\n")
    # a table and the lines presenting it (under TABLE_HEADING) are outside the budget
    paragraphs = [p for p in prose.split("\n\n") if not p.startswith((TABLE_HEADING, "|"))]
    prose = "\n\n".join(paragraphs)
    return prose, [line for line in sources.split("\n") if line]


def test_detail_budget_before_the_sources(make_app: Callable[..., Flask]) -> None:
    trimmed = 0
    for where, card in every_card(make_app):
        prose, _ = _prose_and_sources(card)
        assert len(prose) <= DETAIL_BUDGET, f"{where}: {len(prose)} characters\n{prose}"
        trimmed += "left out to keep this card short" in prose
    assert trimmed  # some cards needed it


def test_sources_once_each_few_strongest_first_linked_only_with_a_url(
    make_app: Callable[..., Flask],
) -> None:
    for where, card in every_card(make_app):
        _, lines = _prose_and_sources(card)
        listed = [line for line in lines if not line.startswith("- and ")]
        assert len(listed) <= MAX_SOURCES, where
        ranks = [EVIDENCE[re.search(r"\*\((\w+)", line).group(1)] for line in listed]
        assert ranks == sorted(ranks), where
        urls = [m.group(2) for line in listed for m in LINK.finditer(line)]
        assert all(u.startswith("https://") for u in urls), where
        assert len(urls) == len(set(urls)), where
        titles = [re.sub(r"\W+", " ", LINK.sub(r"\1", line)).casefold() for line in listed]
        assert len(titles) == len(set(titles)), where
        for link in card.get("links", ()):
            assert link["url"].startswith("https://"), where


# -- suggestions -----------------------------------------------------------------------------


def test_every_suggested_medication_carries_a_dose_or_says_protocol(
    make_app: Callable[..., Flask], kb: KnowledgeBase
) -> None:
    unmarketed = {a.name for a in kb.agents.values() if not a.marketed}
    assert "ranitidine" in unmarketed
    protocol = dosed = 0
    for where, card in every_card(make_app):
        for s in card.get("suggestions", ()):
            resource = s["actions"][0].get("resource", {})
            if (
                resource.get("resourceType") != "MedicationRequest"
                or s["actions"][0]["type"] != "create"
            ):
                continue
            dosage = resource["dosageInstruction"][0]
            has_dose = any(
                "doseQuantity" in dr or "doseRange" in dr for dr in dosage.get("doseAndRate", ())
            )
            says_protocol = "per institutional protocol" in s["label"]
            assert has_dose != says_protocol, f"{where}: {s['label']}"
            protocol += says_protocol
            dosed += has_dose
            name = resource["medicationCodeableConcept"]["text"]
            assert name not in unmarketed and not any(u in s["label"] for u in unmarketed), where
    assert protocol and dosed


# -- readability (issue 18: read as a prescriber would) ------------------------------------------


def test_sources_are_not_repeated_as_link_buttons(make_app: Callable[..., Flask]) -> None:
    """The Sources block lists each source once, linked where it has a URL; a ``links``
    button repeating it was noise (issue 18)."""
    linked = 0
    for where, card in every_card(make_app):
        _, lines = _prose_and_sources(card)
        in_detail = {m.group(2) for line in lines for m in LINK.finditer(line)}
        linked += bool(in_detail)
        for link in card.get("links", ()):
            assert link["url"] not in card.get("detail", ""), where
    assert linked  # sources with a URL are still links


def test_a_condition_is_said_once(make_app: Callable[..., Flask], kb: KnowledgeBase) -> None:
    """A conditional note whose text names its condition ("In rheumatoid arthritis, give…")
    does not say it again in front ("Consider, if rheumatoid arthritis: In rheumatoid…")."""
    from cds_server.reasoning.wording import states

    pairs = {
        (fact.applies.condition, fact.text)
        for drug in kb.drugs.values()
        for fact in (*drug.premedication, *drug.monitoring)
        if fact.applies.condition and fact.text and states(fact.text, fact.applies.condition)
    }
    assert pairs  # the knowledge has such texts
    seen = 0
    for where, card in every_card(make_app):
        detail = card.get("detail", "")
        for condition, text in pairs:
            said_once = markdown.escape(markdown.prose(text))
            seen += said_once in detail
            assert f"if {condition}: {text}" not in detail, where
            assert f"If {condition}: " not in detail or said_once not in detail, where
    assert seen  # such notes are on cards, said once
