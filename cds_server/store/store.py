"""``Store``: the one object the rest of the app uses to reach the database.

It hashes identifiers before anything touches SQL, implements the pipeline's read-only
``GuidanceHistory`` (failing open: if the database cannot be read, every card is shown), logs
issued cards (a failure is logged, never turned into a failed hook call) and stores feedback
(a failure is a 503: the client must not believe it was stored).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cds_server.errors import StoreUnavailable
from cds_server.knowledge.model import CardPolicy
from cds_server.model import HookCall
from cds_server.store import cardlog, feedback, report, snooze
from cds_server.store.identity import keyed_hash
from cds_server.suppression import IssuedCard, PriorGuidance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Store:
    engine: Engine
    key: bytes = field(repr=False)
    dedup_window: timedelta = timedelta(0)
    tenant: str = ""

    def patient_hash(self, patient_id: str) -> str:
        return keyed_hash(self.key, "patient", patient_id, self.tenant)

    def encounter_hash(self, encounter_id: str | None) -> str | None:
        if not encounter_id:
            return None
        return keyed_hash(self.key, "encounter", encounter_id, self.tenant)

    def prior_guidance(self, call: HookCall, now: datetime) -> PriorGuidance:
        """``GuidanceHistory`` for the pipeline; empty (show everything) if the DB fails."""
        try:
            return snooze.prior_guidance(
                self.engine,
                call=call,
                patient_hash=self.patient_hash(call.patient_id),
                encounter_hash=self.encounter_hash(call.encounter_id),
                now=now,
                window=self.dedup_window,
            )
        except SQLAlchemyError as exc:
            log.error("history lookup failed (%s): cards shown unfiltered", type(exc).__name__)
            return PriorGuidance()

    def log_cards(
        self,
        call: HookCall,
        issued: Sequence[IssuedCard],
        *,
        issued_at: datetime,
        knowledge_version: str,
    ) -> int:
        """Record issued cards; on a database failure log it and return -1."""
        try:
            return cardlog.log_cards(
                self.engine,
                call=call,
                patient_hash=self.patient_hash(call.patient_id),
                encounter_hash=self.encounter_hash(call.encounter_id),
                issued=issued,
                issued_at=issued_at,
                knowledge_version=knowledge_version,
            )
        except SQLAlchemyError as exc:
            log.error("card log write failed (%s): %d card(s)", type(exc).__name__, len(issued))
            return -1

    def record_feedback(
        self,
        service_id: str,
        items: Sequence[Mapping[str, Any]],
        *,
        policy: CardPolicy,
        received_at: datetime,
    ) -> feedback.FeedbackResult:
        """Store feedback durably; ``StoreUnavailable`` (503) if it could not be committed."""
        try:
            return feedback.record_feedback(
                self.engine,
                service_id=service_id,
                items=items,
                policy=policy,
                received_at=received_at,
            )
        except SQLAlchemyError as exc:
            log.error("feedback write failed (%s)", type(exc).__name__)
            raise StoreUnavailable(
                "Feedback could not be stored; nothing was recorded. Retry later."
            ) from None

    def report(self, since: datetime, until: datetime) -> report.Report:
        return report.build_report(self.engine, since, until)
