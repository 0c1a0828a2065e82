"""Every SQLite connection gets the engine's settings (durability and a bounded page cache),
and the bound holds: a read transaction over many pages keeps SQLite's heap within it."""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_server.store import get_store
from cds_server.store.engine import (
    SQLITE_BUSY_SECONDS,
    SQLITE_CACHE_KIB,
    make_engine,
    writing,
)
from tests.conftest import load_request
from tests.store.conftest import HASH_KEY
from tests.store.flows import call, overridden, post_feedback

SQLITE_DEFAULT_CACHE_KIB = 2000  # SQLite's own default (PRAGMA cache_size = -2000)


def settings(dbapi_connection: Any) -> dict[str, Any]:
    cursor = dbapi_connection.cursor()
    try:
        return {
            name: cursor.execute(f"PRAGMA {name}").fetchone()[0]
            for name in (
                "journal_mode",
                "synchronous",
                "foreign_keys",
                "busy_timeout",
                "cache_size",
            )
        }
    finally:
        cursor.close()


EXPECTED = {
    "journal_mode": "wal",
    "synchronous": 2,  # FULL
    "foreign_keys": 1,
    "busy_timeout": SQLITE_BUSY_SECONDS * 1000,
    "cache_size": -SQLITE_CACHE_KIB,  # negative: KiB
}


def test_the_page_cache_is_smaller_than_sqlites_default() -> None:
    assert 0 < SQLITE_CACHE_KIB < SQLITE_DEFAULT_CACHE_KIB


def test_every_pooled_connection_gets_the_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'settings.sqlite3'}")
    try:
        held = [engine.connect() for _ in range(3)]  # three distinct connections at once
        raw = [c.connection.dbapi_connection for c in held]
        assert len({id(r) for r in raw}) == 3
        for r in raw:
            assert settings(r) == EXPECTED
        for c in held:
            c.close()
        engine.dispose()  # a connection opened after a dispose (as in a forked worker)
        with engine.connect() as connection:
            assert settings(connection.connection.dbapi_connection) == EXPECTED
    finally:
        engine.dispose()


def test_an_in_memory_database_gets_the_page_cache_bound_too() -> None:
    engine = make_engine("sqlite://")
    try:
        with engine.connect() as connection:
            value = connection.exec_driver_sql("PRAGMA cache_size").scalar_one()
        assert value == -SQLITE_CACHE_KIB
    finally:
        engine.dispose()


@pytest.fixture
def sqlite_app(make_app: Callable[..., Flask], tmp_path: Path) -> Iterator[Flask]:
    url = f"sqlite:///{tmp_path / 'app.sqlite3'}"
    app = make_app(DATABASE_URL=url, PATIENT_HASH_KEY=HASH_KEY, AUTH_REQUIRED=False, DEMO=True)
    yield app
    get_store(app).close()


def test_the_app_and_its_card_log_writer_use_only_configured_connections(
    sqlite_app: Flask,
) -> None:
    """Hook call (request thread), card log (writer thread), feedback: every checkout."""
    engine = get_store(sqlite_app).engine
    seen: list[tuple[str, dict[str, Any]]] = []

    def on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        seen.append((threading.current_thread().name, settings(dbapi_connection)))

    sa.event.listen(engine, "checkout", on_checkout)
    try:
        client = sqlite_app.test_client()
        cards = call(client, load_request("order-sign-contained-medication"))
        assert get_store(sqlite_app).flush()
        assert post_feedback(client, overridden(cards[0]["uuid"])).status_code == 200
    finally:
        sa.event.remove(engine, "checkout", on_checkout)
    threads = {name for name, _ in seen}
    assert "card-log-writer" in threads
    assert threads - {"card-log-writer"}  # and the request thread
    assert all(values == EXPECTED for _, values in seen), seen


# -- the bound holds (SQLite's own memory counters, through the library the module uses) --


def _sqlite_library() -> Any:
    """The libsqlite3 that the ``sqlite3`` module uses, with its status API; else skip."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        pytest.skip("no shared libsqlite3 to read SQLite's memory counters from")
    lib = ctypes.CDLL(name)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    lib.sqlite3_status64.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64),
        ctypes.POINTER(ctypes.c_int64),
        ctypes.c_int,
    ]
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        pytest.skip("the sqlite3 module does not use the shared libsqlite3")
    before = lib.sqlite3_memory_used()
    probe = sqlite3.connect(":memory:")
    probe.execute("CREATE TABLE t (x)")
    opened = lib.sqlite3_memory_used()
    probe.close()
    if opened <= before:  # a statically linked copy: this library sees nothing
        pytest.skip("the sqlite3 module does not use the shared libsqlite3 (no memory counted)")
    return lib


def _peak_since_reset(lib: Any) -> int:
    """SQLite's heap high-water mark since the last call (SQLITE_STATUS_MEMORY_USED)."""
    current, high = ctypes.c_int64(), ctypes.c_int64()
    assert lib.sqlite3_status64(0, ctypes.byref(current), ctypes.byref(high), 1) == 0
    return high.value


def test_a_read_over_many_pages_keeps_sqlites_heap_within_the_cache_bound(
    tmp_path: Path,
) -> None:
    lib = _sqlite_library()
    engine = make_engine(f"sqlite:///{tmp_path / 'big.sqlite3'}")
    try:
        with writing(engine) as connection:  # ≈ 6 MiB of rows: far more than either cache
            connection.exec_driver_sql("CREATE TABLE filler (id INTEGER PRIMARY KEY, x BLOB)")
            connection.exec_driver_sql(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6000) "
                "INSERT INTO filler (x) SELECT randomblob(1000) FROM n"
            )
        engine.dispose()  # start from a connection with an empty page cache
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1 FROM sqlite_master LIMIT 1").all()
            connection.rollback()
            idle = lib.sqlite3_memory_used()
            _peak_since_reset(lib)
            total = connection.exec_driver_sql("SELECT sum(length(x)) FROM filler").scalar()
            connection.rollback()
            peak = _peak_since_reset(lib)
        assert total == 6000 * 1000
        growth_kib = (peak - idle) / 1024
        # The cache plus statement working memory; with SQLite's default cache this is ≈ 2 MiB.
        assert growth_kib < 2 * SQLITE_CACHE_KIB, growth_kib
    finally:
        engine.dispose()


def test_the_pool_keeps_a_connection_for_every_serve_thread_and_the_writer(db_url: str) -> None:
    """Under load each of ``serve``'s request threads and the card-log writer holds a
    connection at once; the pool keeps them all, so none is opened and closed per call."""
    from cds_server.cli import SERVE_THREADS

    engine = make_engine(db_url)
    try:
        held = [engine.connect() for _ in range(SERVE_THREADS + 1)]
        for connection in held:
            connection.execute(sa.text("SELECT 1"))
        raw = {id(c.connection.dbapi_connection) for c in held}
        for connection in held:
            connection.close()
        assert engine.pool.checkedin() == SERVE_THREADS + 1  # overflow would have been closed
        again = [engine.connect() for _ in range(SERVE_THREADS + 1)]
        assert {id(c.connection.dbapi_connection) for c in again} == raw  # reused, not reopened
        for connection in again:
            connection.close()
    finally:
        engine.dispose()
