"""Pretreatment (prerequisite) rule.

When: a recognised draft order for a dose that the knowledge says needs an earlier drug
(e.g. glofitamab step-up dose 1 needs obinutuzumab pretreatment on cycle 1 day 1), and that
drug is neither among the draft orders nor in the history within the look-back window.
Then: ``warning`` quoting the label requirement. If the history is unknown, the card says
the pretreatment could not be checked (``info``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds_server.knowledge.model import KnowledgeBase, Prerequisite
from cds_server.model import Finding, Indicator, RecognisedOrder, Situation
from cds_server.reasoning.course import ADMINISTERED
from cds_server.reasoning.dosing import IN_FORCE, applies, position, step_labels
from cds_server.reasoning.orders import target_orders

TOPIC = "pretreatment"


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Pretreatment findings for every targeted order (see module docstring)."""
    out = []
    for recognised in target_orders(situation):
        drug = kb.drug(recognised.drug_id)
        if not drug.prerequisites:
            continue
        pos = position(situation, recognised, kb)
        for pre in drug.prerequisites:
            result = applies(pre.applies, pos)
            if result.value is False or result.conditional:
                continue
            finding = _check(situation, recognised, pre, kb, step_labels(drug, pos.steps or ()))
            if finding is not None:
                out.append(finding)
    return out


def satisfied(situation: Situation, pre: Prerequisite, recognised: RecognisedOrder) -> bool:
    """Is the required drug in this session's drafts or given/ordered within the window?"""
    if any(r.drug_id == pre.requires_drug for r in situation.orders):
        return True
    reference = recognised.order.authored_on or situation.now
    earliest = (
        reference - timedelta(days=pre.lookback_days)
        if pre.lookback_days
        else datetime.min.replace(tzinfo=UTC)
    )
    for r in situation.history:
        if r.drug_id != pre.requires_drug:
            continue
        if r.order.status not in ADMINISTERED | IN_FORCE:
            continue
        when = r.order.authored_on
        if when is None or earliest <= when <= reference:
            return True
    return False


def _check(
    situation: Situation,
    recognised: RecognisedOrder,
    pre: Prerequisite,
    kb: KnowledgeBase,
    labels: list[str],
) -> Finding | None:
    drug = kb.drug(recognised.drug_id)
    required = kb.drugs[pre.requires_drug].display
    required_name = kb.drugs[pre.requires_drug].name
    if situation.record.history_known and satisfied(situation, pre, recognised):
        return None
    known = situation.record.history_known
    indicator: Indicator = "warning" if known else "info"
    points = [f"- {pre.text}"]
    if labels:
        points.insert(0, f"- This dose is {' or '.join(labels)}.")
    if known:
        window = f"the last {pre.lookback_days} days of " if pre.lookback_days else ""
        points.append(
            f"- No {required_name} order or administration was found in the draft orders or in "
            f"{window}the medication history."
        )
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline=f"{required} pretreatment not found"
        if known
        else f"check {required} pretreatment",
        points=tuple(points),
        citations=pre.provenance.citations(),
        unknowns=() if known else ("the medication history (pretreatment could not be checked)",),
        order_ref=recognised.order.ref,
    )
