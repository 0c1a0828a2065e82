"""Persistence: the only package that touches SQL (SQLAlchemy 2, Alembic migrations).

SQLite file by default (zero setup), PostgreSQL by ``DATABASE_URL``. Public surface:
``init_app`` / ``get_store`` (``db``), ``Store`` and the report types.
"""

from __future__ import annotations

from cds_server.store.db import get_store, init_app
from cds_server.store.report import ReasonCount, Report, ReportRow
from cds_server.store.store import Store

__all__ = ["ReasonCount", "Report", "ReportRow", "Store", "get_store", "init_app"]
