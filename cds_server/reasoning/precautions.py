"""Label precautions rule: allergies that raise a drug's risk, and agents the label says to avoid.

When: a targeted draft order of a drug whose knowledge lists ``allergy_risks`` (an allergy
record, not entered-in-error or refuted, whose texts name one of the terms — e.g. alpha-gal or
red meat allergy before cetuximab) or ``avoided_agents`` (a draft order, in the same order
set, for an agent of the role the label says to avoid — e.g. a prophylactic corticosteroid
with a CAR-T product whose label says to avoid it).
Then: one card per drug, with the knowledge's indicator for an allergy risk and ``warning``
for an avoided agent, naming the allergy record or the draft order.
"""

from __future__ import annotations

import re

from cds_server.knowledge.model import Drug, KnowledgeBase
from cds_server.model import Allergy, Citation, Finding, Indicator, RecognisedOrder, Situation
from cds_server.reasoning.dosing import applies, position
from cds_server.reasoning.orders import target_orders

TOPIC = "label-precaution"
_IGNORED = frozenset({"entered-in-error", "refuted"})
_NO_ALLERGY_REASONS = ("benefit-outweighs-risk", "not-applicable")
_WORDS = re.compile(r"[\W_]+")


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Precaution findings for every targeted order (see module docstring)."""
    out = []
    for recognised in target_orders(situation):
        drug = kb.drug(recognised.drug_id)
        if not (drug.allergy_risks or drug.avoided_agents):
            continue
        finding = _finding(situation, recognised, drug, kb)
        if finding is not None:
            out.append(finding)
    return out


def _words(text: str) -> str:
    return " " + " ".join(w for w in _WORDS.split(text.casefold()) if w) + " "


def _names(allergy: Allergy) -> str:
    texts = [*allergy.texts, *(c.display or "" for c in allergy.codings), *allergy.notes]
    return _words(" ".join(texts))


def _finding(
    situation: Situation, recognised: RecognisedOrder, drug: Drug, kb: KnowledgeBase
) -> Finding | None:
    points: list[str] = []
    citations: list[Citation] = []
    indicators: list[Indicator] = []
    headlines: list[str] = []
    allergy_named = False
    allergies = [a for a in situation.record.allergies if a.verification_status not in _IGNORED]
    pos = position(situation, recognised, kb) if drug.allergy_risks else None
    for risk in drug.allergy_risks:
        if pos is not None and applies(risk.applies, pos).value is False:
            continue
        terms = [_words(t) for t in risk.terms]
        named = [a for a in allergies if any(t in _names(a) for t in terms)]
        if not named:
            continue
        allergy_named = True
        for allergy in named:
            what = allergy.texts[0] if allergy.texts else "an allergy record"
            kind = f" ({', '.join(allergy.category)})" if allergy.category else ""
            points.append(f"- Allergy record: {what}{kind}.")
        points.append(f"- {risk.text}")
        citations.extend(risk.provenance.citations())
        indicators.append(risk.indicator)
        headlines.append(risk.headline)
    for avoided in drug.avoided_agents:
        drafted = [
            (order, kb.agents[agent].name)
            for order, agent in situation.agents
            if order.is_draft and avoided.role in kb.agents[agent].roles
        ]
        if not drafted:
            continue
        for order, name in drafted:
            points.append(f"- Draft order: {name} ({order.ref or 'no id'}).")
        points.append(f"- {avoided.text}")
        citations.extend(avoided.provenance.citations())
        indicators.append("warning")
        headlines.append(avoided.headline)
    if not indicators:
        return None
    indicator: Indicator = "warning" if "warning" in indicators else "info"
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline="; ".join(dict.fromkeys(headlines)),
        points=tuple(points),
        citations=tuple(citations),
        # "Allergy record incorrect" fits only a card that names an allergy record.
        override_reasons=() if allergy_named else _NO_ALLERGY_REASONS,
        order_ref=recognised.order.ref,
    )
