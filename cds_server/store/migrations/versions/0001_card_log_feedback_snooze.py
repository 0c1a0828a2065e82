"""card log, feedback and snooze

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "card_log",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("card_uuid", sa.String(256), nullable=False),
        sa.Column("issued_at", When, nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("hook", sa.String(100), nullable=False),
        sa.Column("hook_instance", sa.String(256), nullable=False),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("encounter_hash", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("drug_id", sa.String(64), nullable=True),
        sa.Column("indicator", sa.String(16), nullable=False),
        sa.Column("suggestion_uuids", sa.Text(), nullable=False),
        sa.Column("knowledge_version", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_card_log"),
        sa.UniqueConstraint("card_uuid", name="uq_card_log_card_uuid"),
    )
    op.create_index("ix_card_log_patient_issued", "card_log", ["patient_hash", "issued_at"])
    op.create_index("ix_card_log_issued_at", "card_log", ["issued_at"])

    op.create_table(
        "feedback",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("item_key", sa.String(64), nullable=False),
        sa.Column("card_uuid", sa.String(256), nullable=False),
        sa.Column("service_id", sa.String(64), nullable=False),
        sa.Column("known_card", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("outcome_at", When, nullable=False),
        sa.Column("accepted_suggestions", sa.Text(), nullable=False),
        sa.Column("reason_system", sa.String(2048), nullable=True),
        sa.Column("reason_code", sa.String(256), nullable=True),
        sa.Column("has_comment", sa.Boolean(), nullable=False),
        sa.Column("received_at", When, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
        sa.UniqueConstraint("item_key", name="uq_feedback_item_key"),
    )
    op.create_index("ix_feedback_card_uuid", "feedback", ["card_uuid"])

    op.create_table(
        "snooze",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("patient_hash", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("drug_id", sa.String(64), nullable=False),
        sa.Column("starts_at", When, nullable=False),
        sa.Column("until", When, nullable=False),
        sa.Column("reason_code", sa.String(256), nullable=False),
        sa.Column("feedback_id", Id, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_snooze"),
        sa.ForeignKeyConstraint(
            ["feedback_id"], ["feedback.id"], name="fk_snooze_feedback_id_feedback"
        ),
    )
    op.create_index("ix_snooze_patient_until", "snooze", ["patient_hash", "until"])


def downgrade() -> None:
    op.drop_index("ix_snooze_patient_until", table_name="snooze")
    op.drop_table("snooze")
    op.drop_index("ix_feedback_card_uuid", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_card_log_issued_at", table_name="card_log")
    op.drop_index("ix_card_log_patient_issued", table_name="card_log")
    op.drop_table("card_log")
