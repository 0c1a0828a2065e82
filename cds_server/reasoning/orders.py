"""Which orders a hook's rules look at, and which premedication roles are already covered."""

from __future__ import annotations

from collections.abc import Callable

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Finding, RecognisedOrder, Situation
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


def covered_roles(situation: Situation, kb: KnowledgeBase) -> frozenset[str]:
    """Agent roles present among draft orders and orders in force (any agent of the role)."""
    roles: set[str] = set()
    for order, agent_id in situation.agents:
        if order.is_draft or order.status in IN_FORCE:
            roles.update(kb.agents[agent_id].roles)
    return frozenset(roles)


def agent_ordered(situation: Situation, agent_id: str) -> bool:
    """Is this agent in the draft orders or among the orders in force?"""
    return any(a == agent_id and (o.is_draft or o.status in IN_FORCE) for o, a in situation.agents)
