"""Which orders the rules look at: orders to advise on, agents already ordered, history read."""

from __future__ import annotations

from collections.abc import Callable

from cds_server.knowledge.model import KnowledgeBase, PremedAgent
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


def covering_agents(entry: PremedAgent, ordered: frozenset[str], kb: KnowledgeBase) -> list[str]:
    """The ordered agents that fill ``entry``'s role: any agent of that role (famotidine covers
    "H2 antagonist"), except those the entry rules out (``not_covered_by``)."""
    excluded = {x.agent for x in entry.not_covered_by}
    return sorted(a for a in ordered if entry.role in kb.agents[a].roles and a not in excluded)


def agent_ordered(situation: Situation, agent_id: str) -> bool:
    """Is this agent in the draft orders or among the orders in force?"""
    return any(a == agent_id and (o.is_draft or o.status in IN_FORCE) for o, a in situation.agents)


def history_order_read(kind: MedicineKind | None, status: object) -> bool:
    """Whether any rule reads a history order, told from its medicine and its status alone:
    every order for a knowledge-base drug (prior doses, reactions, pretreatment), an agent's
    only while in force (``ordered_agents``, ``agent_ordered``), nothing else. A status that
    is not a string cannot be told: the order is read."""
    if kind == "drug":
        return True
    return kind == "agent" and (not isinstance(status, str) or status in IN_FORCE)
