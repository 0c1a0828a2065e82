"""Database fixtures: every store test runs on SQLite (a temp file) and on PostgreSQL.

PostgreSQL is the server at 127.0.0.1:5432, database ``test`` (trust auth), which CI has too.
Each test gets its own schema (``search_path``), created before and dropped after it. When
the server is unreachable the PostgreSQL cases are skipped locally and FAIL under ``CI=true``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_server.store import get_store

PG_SERVER = "postgresql+psycopg://{user}@127.0.0.1:5432/test"
PG_USERS = ("postgres", "root")
HASH_KEY = "test-patient-hash-key-0123456789abcdef"
_PG_STATE: dict[str, str | None] = {}


def postgres_base() -> str | None:
    """The URL of the reachable test server (cached), or None."""
    if "url" not in _PG_STATE:
        _PG_STATE["url"] = None
        for user in PG_USERS:
            url = PG_SERVER.format(user=user)
            engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
            try:
                with engine.connect() as connection:
                    connection.execute(sa.text("SELECT 1"))
            except sa.exc.OperationalError:
                continue
            finally:
                engine.dispose()
            _PG_STATE["url"] = url
            break
    return _PG_STATE["url"]


def require_postgres() -> str:
    url = postgres_base()
    if url is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432/test is unreachable, and CI requires it")
        pytest.skip("PostgreSQL at 127.0.0.1:5432/test is unreachable (not CI)")
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    base = require_postgres()
    schema = f"cds_test_{secrets.token_hex(6)}"
    admin = sa.create_engine(base)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on a SQLite file and on PostgreSQL (own schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cds.sqlite3'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def store_app(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    """The app on ``db_url`` (demo settings: no JWT; analytics open)."""
    app = make_app(DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY, AUTH_REQUIRED=False, DEMO=True)
    yield app
    get_store(app).close()


@pytest.fixture
def raw(db_url: str) -> Iterator[sa.Engine]:
    """An independent engine on the same database (a second connection, for checks)."""
    engine = sa.create_engine(db_url)
    yield engine
    engine.dispose()


def rows(engine: sa.Engine, table: str) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        result = connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY id"))
        return [dict(r._mapping) for r in result]


def as_utc(value: Any) -> datetime:
    """A timestamp read with plain SQL (SQLite: naive UTC text; PostgreSQL: aware)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
