"""The card log: one row per card issued, written after rendering (no patient data)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine

from cds_server.model import HookCall
from cds_server.store.engine import clean, insert_ignoring, writing
from cds_server.store.tables import card_log
from cds_server.suppression import IssuedCard


def log_cards(
    engine: Engine,
    *,
    call: HookCall,
    patient_hash: str,
    encounter_hash: str | None,
    issued: Sequence[IssuedCard],
    issued_at: datetime,
    knowledge_version: str,
) -> int:
    """Record ``issued`` cards in one committed transaction; return how many were new."""
    if not issued:
        return 0
    written = 0
    with writing(engine) as connection:
        for card in issued:
            written += insert_ignoring(
                connection,
                card_log,
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
                    "knowledge_version": knowledge_version,
                },
                "card_uuid",
            )
    return written
