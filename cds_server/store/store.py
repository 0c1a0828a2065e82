"""``Store``: the one object the rest of the app uses to reach the database.

It hashes identifiers before anything touches SQL, implements the pipeline's read-only
``GuidanceHistory`` (failing open: if the database cannot be read, every card is shown), logs
issued cards (on the background ``CardLogWriter`` when it has one, else at once; a failure is
logged, never turned into a failed hook call) and stores feedback (a failure is a 503: the
client must not believe it was stored).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from cds_server.cdshooks.errors import StoreUnavailable
from cds_server.knowledge.model import CardPolicy
from cds_server.model import HookCall
from cds_server.store import cardlog, deadline, feedback, report, snooze
from cds_server.store.identity import keyed_hash
from cds_server.store.writer import CardLogWriter
from cds_server.suppression import IssuedCard, PriorGuidance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Store:
    engine: Engine
    key: bytes = field(repr=False)
    dedup_window: timedelta = timedelta(0)
    writer: CardLogWriter | None = None  # None: card-log rows are written synchronously
    # Deadline of each database operation of a hook call or a feedback POST (``DATABASE_TIMEOUT``)
    # and of the report (``DATABASE_REPORT_TIMEOUT``): see ``deadline``.
    timeout: float = 1.5
    report_timeout: float = 30.0

    def patient_hash(self, call: HookCall) -> str:
        """The call's patient as stored: keyed by the calling EHR (``HookCall.caller``) too."""
        return keyed_hash(self.key, "patient", call.patient_id, call.caller)

    def caller_hash(self, caller: str) -> str:
        """The calling EHR as stored (``HookCall.caller``, "" with authentication off)."""
        return keyed_hash(self.key, "caller", caller)

    def encounter_hash(self, call: HookCall) -> str | None:
        if not call.encounter_id:
            return None
        return keyed_hash(self.key, "encounter", call.encounter_id, call.caller)

    def prior_guidance(self, call: HookCall, now: datetime) -> PriorGuidance:
        """``GuidanceHistory`` for the pipeline; empty (show everything) if the DB fails."""
        # The uncommitted rows are read before the database: a row committed in between is
        # then seen twice (harmless) rather than not at all.
        pending = self.writer.pending_rows() if self.writer is not None else []
        try:
            with deadline.within(self.timeout):
                return snooze.prior_guidance(
                    self.engine,
                    call=call,
                    patient_hash=self.patient_hash(call),
                    encounter_hash=self.encounter_hash(call),
                    now=now,
                    window=self.dedup_window,
                    pending=pending,
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
        """Record issued cards: how many were queued (background writer) or newly written;
        -1 (logged) if they could not be."""
        batch = cardlog.rows(
            call=call,
            patient_hash=self.patient_hash(call),
            encounter_hash=self.encounter_hash(call),
            caller_hash=self.caller_hash(call.caller),
            issued=issued,
            issued_at=issued_at,
            knowledge_version=knowledge_version,
        )
        if self.writer is not None:
            return len(batch) if self.writer.submit(batch) else -1
        try:
            with deadline.within(self.timeout):
                return cardlog.write_rows(self.engine, batch)
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
        caller: str = "",
    ) -> feedback.FeedbackResult:
        """Store feedback durably; ``StoreUnavailable`` (503) if it could not be committed.

        ``caller`` (``HookCall.caller``): feedback on a card another EHR was shown is stored
        as feedback on an unknown card (it snoozes nothing).
        """
        try:
            with deadline.within(self.timeout):
                # The cards it is about may still be on their way to the card log; the wait
                # counts against the deadline (a stuck writer means a stuck database).
                self.flush(max(0.0, deadline.remaining() or 0.0))
                return feedback.record_feedback(
                    self.engine,
                    caller_hash=self.caller_hash(caller),
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

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait for the card-log rows queued so far to be written (True at once if none)."""
        return self.writer.flush(timeout) if self.writer is not None else True

    def close(self) -> None:
        """Write what is queued, then close the database connections (tests, shutdown)."""
        self.flush()
        self.engine.dispose()

    def report(self, since: datetime, until: datetime) -> report.Report:
        with deadline.within(self.report_timeout):
            self.flush(self.report_timeout)  # include the cards this process has just issued
            return report.build_report(self.engine, since, until)
