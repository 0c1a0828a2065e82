"""feedback: the display of the override reason

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07

Epic sends override reasons built in Epic as a category code with a display (feedback
``overrideReasons.extension``); the report shows reasons by code *and* display. Rows stored
before this revision have no display (NULL): the report falls back to the code.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("reason_display", sa.String(256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("reason_display")
