"""Snoozes: an override with a snoozing reason becomes a suppression window; lookups for the
pipeline (running snoozes of a patient, cards already shown in the ordering session)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Select,
    bindparam,
    literal,
    null,
    or_,
    select,
    union_all,
)

from cds_server.knowledge.model import CardPolicy
from cds_server.model import HookCall
from cds_server.store.engine import clean, reading_once
from cds_server.store.tables import card_log, snooze
from cds_server.suppression import ORDER_HOOKS, PriorGuidance, ShownCard, Snooze


def offered(policy: CardPolicy, card: Mapping[str, Any]) -> frozenset[str]:
    """The codes of our override reasons ``card`` (a card_log row) offered.

    As logged with the card; a card logged before that was recorded (revision 0005, NULL)
    is taken to have offered every reason of its rule, as before.
    """
    recorded = card.get("offered_reasons")
    if recorded is not None:
        codes = json.loads(recorded)
        return frozenset(c for c in codes if isinstance(c, str))
    try:
        return frozenset(policy.topic(card["rule"]).override_reasons)
    except KeyError:
        return frozenset()


def snooze_days(
    policy: CardPolicy, card: Mapping[str, Any], reason: Mapping[str, Any] | None
) -> int | None:
    """Days to snooze for an ``overridden`` feedback on ``card`` (a card_log row), or None.

    Only a reason of our own system that the knowledge marks ``snooze_days`` and that this
    card offered (``offered``); never for a critical card or a card without a drug.
    """
    if not reason or reason.get("system") != policy.override_system:
        return None
    if card["indicator"] == "critical" or not card["drug_id"]:
        return None
    code = reason.get("code")
    if code not in offered(policy, card):
        return None
    try:
        return policy.reason(code).snooze_days
    except KeyError:
        return None


def create(
    connection: Connection,
    *,
    feedback_id: int,
    card: Mapping[str, Any],
    reason_code: str,
    days: int,
    outcome_at: datetime,
    received_at: datetime,
) -> None:
    """Insert the window; it starts at the override (never later than its receipt)."""
    starts = min(outcome_at, received_at)
    connection.execute(
        snooze.insert().values(
            patient_hash=card["patient_hash"],
            rule=card["rule"],
            drug_id=card["drug_id"],
            starts_at=starts,
            until=starts + timedelta(days=days),
            reason_code=reason_code,
            feedback_id=feedback_id,
        )
    )


# One statement per look-up (a round trip and a query plan less than two, which PostgreSQL
# pays in full), built once (construction cost more than running it) and bound per call: the
# running snoozes of the patient, then (``kind`` "shown") the cards shown in the session.
def _snoozes() -> Select[Any]:
    return (
        select(
            literal("snooze").label("kind"),
            snooze.c.rule,
            snooze.c.drug_id,
            snooze.c.until,
            snooze.c.reason_code,
            null().label("indicator"),
            null().label("hook"),
            null().label("hook_instance"),
        )
        .where(snooze.c.patient_hash == bindparam("patient"))
        .where(snooze.c.until > bindparam("now"))
        .where(snooze.c.starts_at <= bindparam("now"))
    )


def _shown(*session: ColumnElement[bool]) -> Select[Any]:
    return select(
        literal("shown"),
        card_log.c.rule,
        card_log.c.drug_id,
        null(),
        null(),
        card_log.c.indicator,
        card_log.c.hook,
        card_log.c.hook_instance,
    ).where(
        card_log.c.patient_hash == bindparam("patient"),
        card_log.c.issued_at >= bindparam("since"),
        card_log.c.issued_at <= bindparam("now"),
        card_log.c.drug_id.is_not(None),
        *session,
    )


_SNOOZES_ONLY = _snoozes()
# The session: the same hookInstance, or the same encounter when the call has one.
_WITH_SHOWN_IN_INSTANCE = union_all(
    _snoozes(), _shown(card_log.c.hook_instance == bindparam("instance"))
)
_WITH_SHOWN_IN_SESSION = union_all(
    _snoozes(),
    _shown(
        or_(
            card_log.c.hook_instance == bindparam("instance"),
            card_log.c.encounter_hash == bindparam("encounter"),
        )
    ),
)


def prior_guidance(
    engine: Engine,
    *,
    call: HookCall,
    patient_hash: str,
    encounter_hash: str | None,
    now: datetime,
    window: timedelta,
    pending: Sequence[Mapping[str, Any]] = (),
) -> PriorGuidance:
    """Running snoozes of the patient, and the cards shown in this ordering session.

    ``pending``: card-log rows of this process not yet committed (``CardLogWriter``); those
    of the same session count as shown too.
    """
    in_session = window > timedelta(0) and call.hook in ORDER_HOOKS
    since = now - window
    params: dict[str, Any] = {"patient": patient_hash, "now": now}
    statement: Executable = _SNOOZES_ONLY
    if in_session:
        statement = _WITH_SHOWN_IN_INSTANCE if encounter_hash is None else _WITH_SHOWN_IN_SESSION
        params |= {
            "since": since,
            "instance": clean(call.hook_instance),
            "encounter": encounter_hash,
        }
    snoozes: list[Snooze] = []
    shown: list[ShownCard] = []
    with reading_once(engine) as connection:
        for r in connection.execute(statement, params):
            if r.kind == "snooze":
                snoozes.append(Snooze(r.rule, r.drug_id, r.until, r.reason_code))
            else:
                shown.append(ShownCard(r.rule, r.drug_id, r.indicator, r.hook, r.hook_instance))
    if in_session:
        shown += (
            ShownCard(r["rule"], r["drug_id"], r["indicator"], r["hook"], r["hook_instance"])
            for r in pending
            if _in_session(r, call, patient_hash, encounter_hash, since, now)
        )
    return PriorGuidance(snoozes=tuple(snoozes), shown=tuple(shown))


def _in_session(
    row: Mapping[str, Any],
    call: HookCall,
    patient_hash: str,
    encounter_hash: str | None,
    since: datetime,
    until: datetime,
) -> bool:
    """The SQL filter above, for one uncommitted row."""
    same_session = row["hook_instance"] == clean(call.hook_instance) or (
        encounter_hash is not None and row["encounter_hash"] == encounter_hash
    )
    return (
        row["patient_hash"] == patient_hash
        and since <= row["issued_at"] <= until
        and row["drug_id"] is not None
        and same_session
    )
