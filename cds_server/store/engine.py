"""SQLAlchemy engines and transactions, with the durability settings each database needs.

* **SQLite** (the zero-setup default): WAL journal with ``synchronous=FULL`` so a committed
  transaction is on disk before ``COMMIT`` returns; a 30 s busy timeout; writers start with
  ``BEGIN IMMEDIATE`` (no lock-upgrade deadlocks between processes), readers with a plain
  ``BEGIN``; a page cache of ``SQLITE_CACHE_KIB`` per connection. An in-memory URL
  (``sqlite://``) gets one shared connection (tests).
* **PostgreSQL** (``postgresql://`` is driven by psycopg 3): a commit returns after the WAL
  flush (``synchronous_commit`` is left at its default, ``on``); connections are checked
  before use (a ping at checkout) so a restarted database does not fail the next request.

Every engine is bounded in time (``deadline``): waiting for a pooled connection by
``pool_timeout``, opening one by ``connect_timeout``, and the work of a thread that set a
deadline (``deadline.within``) by that deadline, even when the server never answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.pool import StaticPool

from cds_server.store import deadline

WRITE = "cds_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
SQLITE_BUSY_SECONDS = 30
# Page cache per connection (SQLite's default: 2000 KiB). In WAL mode a connection empties its
# cache when a transaction starts after another connection's commit, so under load a cache
# lives for one transaction and buys little; but a transaction that reads many pages (the
# session look-up over a growing card log) fills it, malloc keeps what it frees, and each
# pooled connection thus added up to 2 MiB to a worker's RSS as the database grew.
SQLITE_CACHE_KIB = 256
# Connections kept per worker process: one per request thread of ``cds-server serve`` (8) and
# one for the card-log writer, so none is opened and closed per call under load. Opened only
# when needed; ``max_overflow`` more for bursts (other thread counts, scripts).
POOL_SIZE = 10
MAX_OVERFLOW = 10
# Seconds to wait for a pooled connection, and to open one (psycopg counts whole seconds, at
# least 2). The store's per-operation deadline (``DATABASE_TIMEOUT``) bounds both as well.
POOL_TIMEOUT = 1.5
CONNECT_TIMEOUT = 2


def normalise_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` → the psycopg 3 driver; others unchanged."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_memory(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def make_engine(
    url: str, *, pool_timeout: float = POOL_TIMEOUT, connect_timeout: float = CONNECT_TIMEOUT
) -> Engine:
    """An engine for ``url`` with the settings above."""
    url = normalise_url(url)
    backend = make_url(url).get_backend_name()
    if backend != "sqlite":
        engine = create_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_timeout=pool_timeout,
            connect_args=(
                {"connect_timeout": max(2, math.ceil(connect_timeout))}
                if backend == "postgresql"
                else {}
            ),
        )
        deadline.install(engine)
        return engine
    if is_memory(url):
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(
            url,
            pool_size=POOL_SIZE,
            max_overflow=MAX_OVERFLOW,
            pool_timeout=pool_timeout,
            connect_args={"timeout": SQLITE_BUSY_SECONDS},
        )
    _sqlite_events(engine)
    deadline.install(engine)
    return engine


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN (pysqlite's own handling defers it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")  # negative: KiB, not pages
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction, committed (durably) when the block ends without an exception."""
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            yield connection


@contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (a consistent snapshot; rolled back at the end)."""
    with engine.connect() as connection, connection.begin() as transaction:
        yield connection
        transaction.rollback()


@contextmanager
def reading_once(engine: Engine) -> Iterator[Connection]:
    """A connection for one read-only statement (consistent by itself): on PostgreSQL outside a
    transaction, which saves the BEGIN and ROLLBACK round trips; elsewhere as ``reading``."""
    if engine.dialect.name != "postgresql":
        with reading(engine) as connection:
            yield connection
        return
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def clean(text: str) -> str:
    """A client-chosen string as the database can hold it (PostgreSQL text has no NUL)."""
    return text.replace("\x00", "\ufffd")


def insert_ignoring_statement(connection: Connection, table: Table, key: str) -> Any:
    """INSERT … ON CONFLICT (key) DO NOTHING, in the connection's dialect (rows bound later)."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table).on_conflict_do_nothing(index_elements=[key])


def insert_ignoring(
    connection: Connection, table: Table, row: Mapping[str, Any], key: str, returning: Any = None
) -> Any:
    """Insert one row unless ``key`` exists; the RETURNING row, or None on a conflict."""
    statement = insert_ignoring_statement(connection, table, key).values(**row)
    if returning is None:
        return connection.execute(statement).rowcount
    return connection.execute(statement.returning(returning)).first()
