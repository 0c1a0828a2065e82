"""The database schema (SQLAlchemy Core). Changes go through an Alembic migration.

No table holds a patient or encounter identifier: both are stored as keyed hashes
(HMAC-SHA256, ``store.identity``), enough to join feedback and snoozes to cards. Free-text
override comments are not stored either (only whether one was given).

* ``card_log``  — every card issued: uuid, service, hook, hookInstance, rule (``source.topic``
  code), drug, indicator, suggestion uuids, the override reasons it offered, time, knowledge
  version, hashes.
* ``feedback``  — every distinct feedback item (``item_key`` unique: idempotent), whether its
  card was known, the outcome, accepted suggestions and the coded override reason (system,
  code and display).
* ``snooze``    — suppression windows created by snoozing override reasons.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)

# BIGINT identity on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY.
Id = BigInteger().with_variant(Integer(), "sqlite")


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in and out (timestamptz on PostgreSQL, naive UTC text on SQLite)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: the store only takes aware (UTC) times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value  # the driver's datetime (naive from SQLite)
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


HASH = 64  # hex SHA-256
TEXT_ID = 256  # protocol limit for client-chosen identifiers (hookInstance, card, codes)

card_log = Table(
    "card_log",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("card_uuid", String(TEXT_ID), nullable=False, unique=True),
    Column("issued_at", UtcDateTime(), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("hook", String(100), nullable=False),
    Column("hook_instance", String(TEXT_ID), nullable=False),
    Column("patient_hash", String(HASH), nullable=False),
    Column("encounter_hash", String(HASH), nullable=True),
    Column("rule", String(64), nullable=False),
    Column("drug_id", String(64), nullable=True),
    Column("indicator", String(16), nullable=False),
    Column("suggestion_uuids", Text(), nullable=False),  # JSON array
    Column("knowledge_version", String(128), nullable=False),
    # Keyed hash of the calling EHR (``HookCall.caller``); NULL for cards logged before 0002.
    Column("caller_hash", String(HASH), nullable=True),
    # JSON array of the codes of our override reasons the card offered; NULL before 0005.
    Column("offered_reasons", Text(), nullable=True),
    Index("ix_card_log_patient_issued", "patient_hash", "issued_at"),
    Index("ix_card_log_issued_at", "issued_at"),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("item_key", String(HASH), nullable=False, unique=True),
    Column("card_uuid", String(TEXT_ID), nullable=False),
    Column("service_id", String(64), nullable=False),
    Column("known_card", Boolean(), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("outcome_at", UtcDateTime(), nullable=False),
    Column("accepted_suggestions", Text(), nullable=False),  # JSON array of suggestion uuids
    Column("reason_system", String(2048), nullable=True),
    Column("reason_code", String(TEXT_ID), nullable=True),
    # As the client sent it (Epic's reason categories have no other name); NULL before 0003.
    Column("reason_display", String(TEXT_ID), nullable=True),
    Column("has_comment", Boolean(), nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
    Index("ix_feedback_card_uuid", "card_uuid"),
)

snooze = Table(
    "snooze",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("patient_hash", String(HASH), nullable=False),
    Column("rule", String(64), nullable=False),
    Column("drug_id", String(64), nullable=False),
    Column("starts_at", UtcDateTime(), nullable=False),
    Column("until", UtcDateTime(), nullable=False),
    Column("reason_code", String(TEXT_ID), nullable=False),
    Column("feedback_id", Id, ForeignKey("feedback.id"), nullable=False),
    Index("ix_snooze_patient_until", "patient_hash", "until"),
)
