"""Orders not checked: targeted draft orders the service could not fully read or identify.

When: a targeted draft order (``orders.target_orders``: at order-select the selected ones)
(a) is for a knowledge-base drug but has an unread element that the rules read (dose, rate,
bag volume, date, route, medication, instructions text); (b) cannot be identified at all: no
drug or agent recognised and no name or text to read (a bare unknown NDC, a local code
without display, an unresolved ``medicationReference``, no medication); or (c) is a
``draftOrders`` entry no MedicationRequest could be built from.
Then: (a) ``warning`` naming the order, each unread element with its reason, and what was
therefore not checked (the other rules still ran on what could be read); (b) ``warning`` when
the order looks like an infusion (IV or infusion route, a rate, a bag volume), else ``info``,
showing the codes as sent so a pharmacist can map them; (c) ``warning`` naming the entry and
why. An order identified by name but for a medicine no rule is about (ondansetron) is
checked: no card.
"""

from __future__ import annotations

import hashlib
import re

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import (
    Finding,
    Indicator,
    MedicationOrder,
    Situation,
    UnreadableDraft,
    UnreadElement,
)
from cds_server.reasoning.orders import target_orders

TOPIC = "order-not-checked"
OVERRIDE_REASONS = ("not-applicable",)

# What an unread element is, and which checks could therefore not be made, by element path.
_KINDS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("rateQuantity", "rateRatio", "rateRange"),
        "rate",
        "the rate against the titration schedule",
    ),
    (
        ("doseQuantity", "doseRange"),
        "dose",
        "which dose or step-up dose this is (admission, pretreatment and premedication by step)",
    ),
    (
        ("dispenseRequest",),
        "bag volume",
        "a rate in mL/h against a schedule in mg/h (bag concentration)",
    ),
    (
        ("authoredOn", "timing"),
        "date",
        "the order's date (look-back windows, which earlier doses precede it)",
    ),
    (("route",), "route", "the route (products told apart by route)"),
    (
        ("medicationCodeableConcept", "medicationReference", "contained"),
        "medication",
        "the medication from the elements not read",
    ),
    (
        ("dosageInstruction", "note"),
        "dosage instructions",
        "dose, rate, route or instructions in the elements not read",
    ),
)
# Route words that make an order look like an infusion (47625008: SNOMED CT intravenous route).
_INFUSION_ROUTE = frozenset({"intravenous", "iv", "infusion", "47625008"})
_INFUSION_ELEMENTS = ("rateQuantity", "rateRatio", "rateRange", "dispenseRequest")
_WORDS = re.compile(r"[a-z0-9]+")


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Findings for orders that could not be (fully) checked (see module docstring)."""
    out: list[Finding] = []
    for recognised in target_orders(situation):
        needed = [u for u in recognised.order.unread if _kind(u) is not None]
        if needed:
            drug = kb.drug(recognised.drug_id)
            out.append(_partly_read(recognised.order, drug.id, drug.display, needed))
    identified = {id(r.order) for r in situation.orders} | {id(o) for o, _ in situation.agents}
    select = situation.call.hook == "order-select"
    for order in situation.record.draft_orders:
        if select and not order.selected:
            continue
        if id(order) in identified or order.texts:
            continue  # recognised, or named (a medicine no rule is about is checked)
        out.append(_unidentified(order))
    for entry in situation.record.unreadable_drafts:
        if not select or entry.selected:
            out.append(_unreadable(entry))
    return out


def _kind(element: UnreadElement) -> tuple[str, str] | None:
    """(kind, what was not checked) of an element the rules read, else None."""
    for names, kind, unchecked in _KINDS:
        if any(name in element.path for name in names):
            return kind, unchecked
    return None


def order_name(order: MedicationOrder) -> str:
    """The order as sent: its reference, else its position in draftOrders."""
    position = f"draft order {order.draft_index + 1}" if order.draft_index is not None else ""
    if order.ref:
        return f"{order.ref} ({position})" if position else order.ref
    return position or "a draft order without id"


def _order_key(ref: str | None, index: int | None) -> str:
    """A stable per-order key in place of a drug id (so two such orders give two cards),
    short enough for the card log."""
    raw = ref or f"#{index}"
    return "order:" + hashlib.sha1(raw.encode(), usedforsecurity=False).hexdigest()


def _elements(unread: list[UnreadElement] | tuple[UnreadElement, ...]) -> list[str]:
    return [f"- `{u.path}`: {u.reason}" for u in unread]


def _partly_read(
    order: MedicationOrder, drug_id: str, display: str, needed: list[UnreadElement]
) -> Finding:
    kinds = list(dict.fromkeys(k[0] for u in needed if (k := _kind(u))))
    missed = list(dict.fromkeys(k[1] for u in needed if (k := _kind(u))))
    points = [
        f"- Order **{order_name(order)}**: these elements could not be read and were left out:",
        *_elements(needed),
        "- The other checks ran on what could be read. Correct the order to have it checked "
        "in full.",
    ]
    return Finding(
        topic=TOPIC,
        drug_id=drug_id,
        drug_name=display,
        indicator="warning",
        headline=f"order could not be fully checked — {', '.join(kinds)} not readable",
        points=tuple(points),
        unknowns=tuple(missed),
        override_reasons=OVERRIDE_REASONS,
        order_ref=order.ref,
    )


def looks_like_infusion(order: MedicationOrder) -> bool:
    """An IV or infusion route, a rate or a bag volume (read or not)."""
    if order.rate is not None or order.volume is not None:
        return True
    if any(name in u.path for u in order.unread for name in _INFUSION_ELEMENTS):
        return True
    return bool(_INFUSION_ROUTE & set(_WORDS.findall((order.route or "").casefold())))


def _unidentified(order: MedicationOrder) -> Finding:
    codes = [
        f"`{c.system or '(no system)'}` | `{c.code}`"
        for c in (*order.codings, *order.ingredient_codings)
        if c.code
    ]
    shown = list(dict.fromkeys(codes))
    points = [f"- Order **{order_name(order)}** names no medicine the service can identify."]
    if shown:
        points.append("- Codes as sent (none is known to this service): " + "; ".join(shown))
    else:
        points.append("- It carries no medication code or name.")
    points.extend(_elements(order.unread))
    points.append("- Check the order by hand; a pharmacist can add its code to the knowledge base.")
    infusion = looks_like_infusion(order)
    indicator: Indicator = "warning" if infusion else "info"
    return Finding(
        topic=TOPIC,
        drug_id=_order_key(order.ref, order.draft_index),
        drug_name="Unidentified order",
        indicator=indicator,
        headline="could not tell which medicine it is — infusion-safety checks were not run",
        points=tuple(points),
        unknowns=("premedication, rate, monitoring, pretreatment, CRS and prior-reaction checks",),
        override_reasons=OVERRIDE_REASONS,
        order_ref=order.ref,
    )


def _unreadable(entry: UnreadableDraft) -> Finding:
    name = entry.ref or (entry.resource_type or "entry")
    points = (
        f"- draftOrders entry {entry.index + 1} ({name}) could not be read as a "
        f"MedicationRequest: {entry.reason}.",
        "- Check the order by hand: if it is a medicine, none of its safety checks were run.",
    )
    return Finding(
        topic=TOPIC,
        drug_id=_order_key(entry.ref, entry.index),
        drug_name="Unreadable draft order",
        indicator="warning",
        headline=f"draft order {entry.index + 1} could not be read — not checked",
        points=points,
        unknowns=("every infusion-safety check for this order",),
        override_reasons=OVERRIDE_REASONS,
        order_ref=entry.ref,
    )
