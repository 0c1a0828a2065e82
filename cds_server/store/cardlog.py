"""The card log: one row per card issued, written after rendering (no patient data)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from cds_server.model import HookCall
from cds_server.store.engine import clean, insert_ignoring_statement, writing
from cds_server.store.tables import card_log
from cds_server.suppression import IssuedCard


def rows(
    *,
    call: HookCall,
    patient_hash: str,
    encounter_hash: str | None,
    caller_hash: str,
    issued: Sequence[IssuedCard],
    issued_at: datetime,
    knowledge_version: str,
) -> list[dict[str, Any]]:
    """The ``card_log`` rows for ``issued`` (one per card)."""
    return [
        {
            "card_uuid": clean(card.uuid),
            "issued_at": issued_at,
            "service_id": call.service_id,
            "hook": clean(call.hook),
            "hook_instance": clean(call.hook_instance),
            "patient_hash": patient_hash,
            "encounter_hash": encounter_hash,
            "rule": card.rule,
            "drug_id": card.drug,
            "indicator": card.indicator,
            "suggestion_uuids": json.dumps(list(card.suggestion_uuids)),
            "offered_reasons": json.dumps(list(card.offered_reasons)),
            "knowledge_version": knowledge_version,
            "caller_hash": caller_hash,
        }
        for card in issued
    ]


def write_rows(engine: Engine, batch: Sequence[Mapping[str, Any]]) -> int:
    """Insert ``batch`` in one committed transaction (a uuid already logged is skipped)."""
    if not batch:
        return 0
    with writing(engine) as connection:
        statement = insert_ignoring_statement(connection, card_log, "card_uuid")
        return int(connection.execute(statement, [dict(r) for r in batch]).rowcount)
