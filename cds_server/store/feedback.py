"""Feedback: every item stored once (idempotent), snoozes created in the same transaction.

The idempotency key of an item is SHA-256 over (card uuid, outcome, outcome time as a UTC
instant, sorted accepted suggestion ids, override reason system and code, the sending EHR's
``caller_hash``): the same feedback posted twice by one EHR (a client retry, the same item
twice in one body, the same instant in another time-zone offset) is stored once, and one EHR's
items never make another's look like duplicates. The free-text ``userComment`` is neither stored
nor part of the key (it may contain patient data); only whether one was given is kept.
Feedback for an unknown card uuid is stored with ``known_card`` false. Items arrive with their
override reason in the spec's form whatever form the client used (``protocol.load_feedback``
reads Epic's ``overrideReasons`` too). An override with a reason of ours that its card did not
offer is stored like any other but snoozes nothing (logged by its shape, never its code).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, select

from cds_server.knowledge.model import CardPolicy
from cds_server.store import snooze
from cds_server.store.engine import clean, insert_ignoring, writing
from cds_server.store.tables import TEXT_ID, card_log, feedback

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeedbackResult:
    """What one POST did (counts only: safe to log)."""

    stored: int = 0
    duplicates: int = 0
    unknown_cards: int = 0
    snoozes: int = 0


def outcome_time(value: str) -> datetime:
    """An RFC 3339 ``outcomeTimestamp`` (validated by ``protocol``) as an aware UTC datetime."""
    return datetime.fromisoformat(value.upper().replace("Z", "+00:00")).astimezone(UTC)


def _accepted(item: Mapping[str, Any]) -> list[str]:
    return sorted({clean(str(s["id"])) for s in item.get("acceptedSuggestions") or ()})


def _reason(item: Mapping[str, Any]) -> Mapping[str, Any] | None:
    return (item.get("overrideReason") or {}).get("reason")


def _display(reason: Mapping[str, Any] | None) -> str | None:
    shown = (reason or {}).get("display")
    if not isinstance(shown, str) or not shown.strip():
        return None
    return clean(shown.strip())[:TEXT_ID]


def item_key(item: Mapping[str, Any], caller_hash: str | None = None) -> str:
    """The idempotency key of one feedback item (see the module docstring)."""
    reason = _reason(item) or {}
    parts = [
        clean(str(item["card"])),
        item["outcome"],
        outcome_time(item["outcomeTimestamp"]).isoformat(timespec="microseconds"),
        _accepted(item),
        clean(str(reason.get("system", ""))),
        clean(str(reason.get("code", ""))),
    ]
    if caller_hash is not None:
        parts.append(caller_hash)
    canonical = json.dumps(parts, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def record_feedback(
    engine: Engine,
    *,
    service_id: str,
    items: Sequence[Mapping[str, Any]],
    policy: CardPolicy,
    received_at: datetime,
    caller_hash: str | None = None,
) -> FeedbackResult:
    """Store ``items`` in one transaction; return after the commit (durable) or raise.

    ``caller_hash``: the sending EHR (``Store.caller_hash``). A card logged for another EHR
    counts as unknown; a card logged before callers were recorded (NULL) matches any.
    """
    stored = duplicates = unknown = snoozes = 0
    with writing(engine) as connection:
        uuids = sorted({clean(str(i["card"])) for i in items})
        cards = {
            row.card_uuid: dict(row._mapping)
            for row in connection.execute(
                select(
                    card_log.c.card_uuid,
                    card_log.c.patient_hash,
                    card_log.c.rule,
                    card_log.c.drug_id,
                    card_log.c.indicator,
                    card_log.c.caller_hash,
                    card_log.c.offered_reasons,
                ).where(card_log.c.card_uuid.in_(uuids))
            )
            if caller_hash is None or row.caller_hash in (None, caller_hash)
        }
        for item in items:
            card_uuid = clean(str(item["card"]))
            card = cards.get(card_uuid)
            reason = _reason(item)
            comment = (item.get("overrideReason") or {}).get("userComment")
            outcome_at = outcome_time(item["outcomeTimestamp"])
            inserted = insert_ignoring(
                connection,
                feedback,
                {
                    "item_key": item_key(item, caller_hash),
                    "card_uuid": card_uuid,
                    "service_id": service_id,
                    "known_card": card is not None,
                    "outcome": item["outcome"],
                    "outcome_at": outcome_at,
                    "accepted_suggestions": json.dumps(_accepted(item)),
                    "reason_system": clean(reason["system"]) if reason else None,
                    "reason_code": clean(reason["code"]) if reason else None,
                    "reason_display": _display(reason),
                    "has_comment": bool(comment and str(comment).strip()),
                    "received_at": received_at,
                },
                "item_key",
                returning=feedback.c.id,
            )
            if inserted is None:
                duplicates += 1
                continue
            stored += 1
            unknown += card is None
            if card is None or item["outcome"] != "overridden":
                continue
            _log_if_not_offered(policy, card, reason)
            days = snooze.snooze_days(policy, card, reason)
            if days and reason:
                snooze.create(
                    connection,
                    feedback_id=inserted.id,
                    card=card,
                    reason_code=reason["code"],
                    days=days,
                    outcome_at=outcome_at,
                    received_at=received_at,
                )
                snoozes += 1
    return FeedbackResult(stored, duplicates, unknown, snoozes)


def _log_if_not_offered(
    policy: CardPolicy, card: Mapping[str, Any], reason: Mapping[str, Any] | None
) -> None:
    """Say so when a reason of ours was not among those its card offered (it snoozes nothing).

    The code itself is client text: only whether it is one of ``cards/policy.yaml``'s is said.
    """
    if not reason or reason.get("system") != policy.override_system:
        return
    offered = snooze.offered(policy, card)
    if reason.get("code") in offered:
        return
    known = any(r.code == reason.get("code") for r in policy.override_reasons)
    log.warning(
        "override reason not offered on its card, stored without a snooze: our system, %s; "
        "the %s card offered %d reason(s)%s",
        "a code of cards/policy.yaml" if known else "a code unknown to cards/policy.yaml",
        card["rule"],
        len(offered),
        "" if card.get("offered_reasons") is not None else " (its rule's: logged before 0005)",
    )
