"""``reading_once``: the session look-up's one statement, outside a transaction on PostgreSQL,
must never leave a pooled connection in autocommit for the writes that reuse it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from cds_server.store import db
from cds_server.store.engine import make_engine, reading_once, writing

SCRATCH = sa.Table("scratch_reading_once", sa.MetaData(), sa.Column("n", sa.Integer))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = make_engine(db_url)
    db.upgrade(engine)
    yield engine
    engine.dispose()


def _in_transaction(connection: sa.Connection) -> bool:
    """Whether the database connection has a transaction open (asked of the driver)."""
    dbapi: Any = connection.connection.dbapi_connection
    if connection.dialect.name == "postgresql":
        return bool(dbapi.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)
    return bool(dbapi.in_transaction)


def test_the_read_is_outside_a_transaction_only_on_postgresql(engine: sa.Engine) -> None:
    with reading_once(engine) as connection:
        assert connection.execute(sa.select(sa.literal(1))).scalar() == 1
        assert _in_transaction(connection) is (engine.dialect.name != "postgresql")


def test_a_write_after_the_read_is_still_atomic(engine: sa.Engine) -> None:
    SCRATCH.create(engine)
    for _ in range(3):  # the pool hands the same connection back
        with reading_once(engine) as connection:
            connection.execute(sa.select(sa.literal(1))).all()
    with pytest.raises(RuntimeError), writing(engine) as connection:
        connection.execute(SCRATCH.insert().values(n=1))
        assert _in_transaction(connection)
        raise RuntimeError("rolled back")
    with writing(engine) as connection:
        connection.execute(SCRATCH.insert().values(n=2))
    with engine.connect() as connection:
        assert connection.execute(sa.select(SCRATCH.c.n)).scalars().all() == [2]
