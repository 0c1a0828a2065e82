"""Alembic environment: runs on the connection ``store.db.upgrade`` passes in.

Used programmatically (``cds-server db upgrade`` or app start-up), never with an alembic.ini:
``store.db`` builds the Alembic config and puts an open connection, already inside a
transaction (and, on PostgreSQL, holding an advisory lock), in ``config.attributes``.
"""

from __future__ import annotations

from alembic import context

from cds_server.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cds_server.store.db.upgrade (cds-server db upgrade)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTER TABLE via copy
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
