"""card_log: the override reasons each card offered

Revision ID: 0005
Revises: 0003
Create Date: 2026-12-14

A card offers only the override reasons that can be true for it (issue 18: "has tolerated
this drug before" needs a reaction or an earlier dose on record), so a snooze keys on the
reasons that card offered, not on every reason of its rule. The column holds their codes as
a JSON array; cards logged before this revision have NULL there and keep the rule's reasons.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("card_log") as batch:
        batch.add_column(sa.Column("offered_reasons", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("card_log") as batch:
        batch.drop_column("offered_reasons")
