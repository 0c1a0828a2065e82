"""Which orders the rules look at: orders to advise on, agents already ordered, history read."""

from __future__ import annotations

from collections.abc import Callable

from cds_server.knowledge.model import KnowledgeBase, NotCovering, PremedAgent
from cds_server.model import Finding, MedicineKind, RecognisedOrder, Situation
from cds_server.reasoning.dosing import IN_FORCE


def target_orders(situation: Situation) -> tuple[RecognisedOrder, ...]:
    """Orders to advise on: the selected draft orders (order-select) or all of them (order-sign)."""
    if situation.call.hook == "order-select":
        return tuple(r for r in situation.orders if r.order.selected)
    return situation.orders


def each_order(
    situation: Situation,
    kb: KnowledgeBase,
    check: Callable[[Situation, RecognisedOrder, KnowledgeBase], Finding | None],
) -> list[Finding]:
    """Apply a per-order check to every targeted order, keeping the findings it returns."""
    return [f for r in target_orders(situation) if (f := check(situation, r, kb)) is not None]


def ordered_agents(situation: Situation) -> frozenset[str]:
    """Premedication and rescue agents among the draft orders and the orders in force."""
    return frozenset(a for o, a in situation.agents if o.is_draft or o.status in IN_FORCE)


def role_covered(entry: PremedAgent, ordered: frozenset[str], kb: KnowledgeBase) -> bool:
    """Does an ordered agent fill ``entry``'s role? Any agent of that role does (famotidine
    covers "H2 antagonist"), except those the entry rules out (``not_covered_by``)."""
    excluded = {x.agent for x in entry.not_covered_by}
    return any(entry.role in kb.agents[a].roles and a not in excluded for a in ordered)


def ruled_out(entry: PremedAgent, ordered: frozenset[str]) -> tuple[NotCovering, ...]:
    """The ordered agents ``entry`` rules out of its role, with the knowledge's reasons."""
    return tuple(x for x in entry.not_covered_by if x.agent in ordered)


def agent_ordered(situation: Situation, agent_id: str) -> bool:
    """Is this agent in the draft orders or among the orders in force?"""
    return agent_id in ordered_agents(situation)


def history_order_read(kind: MedicineKind | None, status: object) -> bool:
    """Whether any rule reads a history order, told from its medicine and its status alone:
    every order for a knowledge-base drug (prior doses, reactions, pretreatment), an agent's
    only while in force (``ordered_agents``, ``agent_ordered``), nothing else. A status that
    is not a string cannot be told: the order is read."""
    if kind == "drug":
        return True
    return kind == "agent" and (not isinstance(status, str) or status in IN_FORCE)
