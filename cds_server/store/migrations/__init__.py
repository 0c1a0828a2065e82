"""Alembic migrations for ``cds_server.store`` (shipped in the package; run via ``store.db``)."""
