"""card log: the calling EHR of each card

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21

Feedback on a card counts only when the EHR that sends it issued the call that showed the card
(``feedback.record_feedback``). Cards logged before this revision have no caller (NULL) and are
matched as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("card_log") as batch:
        batch.add_column(sa.Column("caller_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("card_log") as batch:
        batch.drop_column("caller_hash")
