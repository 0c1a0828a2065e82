"""Deadlines for database work: a thread's calls end by its deadline even if the server is silent.

A database that accepts connections and then never answers (a frozen host, a network
partition, a paused process) leaves a driver waiting on its socket for as long as the outage
lasts: neither psycopg nor SQLAlchemy has a per-statement client timeout, and a server-side
``statement_timeout`` needs a server that answers. So:

* ``within(seconds)`` gives the calling thread a deadline (nested deadlines keep the earlier);
* ``install(engine)`` hooks the engine's pool: a connection checked out by a thread with a
  deadline is pinged (instead of SQLAlchemy's ``pool_pre_ping``, which runs before any event
  and so could not be bounded) and watched until it is checked in; if the deadline passes
  first, one watchdog thread per process aborts it — PostgreSQL: the socket is shut down, so
  the blocked call fails at once and the connection is discarded; SQLite: the running
  statement is interrupted. A checkout or a new connection after the deadline is refused at
  once (``DeadlineExceeded``). Waiting for a pooled connection is bounded by the engine's
  ``pool_timeout`` and opening one by the driver's connect timeout.

Work without a deadline (migrations at start-up, the command line) is only pinged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError

from cds_server.socketwatch import Watchdog, shut_down_descriptor

log = logging.getLogger(__name__)

_thread = threading.local()
_FRESH = "cds_fresh"  # connection-record info key: opened for this checkout, no ping needed


class DeadlineExceeded(SqlTimeoutError):
    """The thread's database deadline passed before its work could start or finish."""


def remaining() -> float | None:
    """Seconds left before the calling thread's deadline (None: no deadline)."""
    until = getattr(_thread, "until", None)
    return None if until is None else until - time.monotonic()


@contextmanager
def within(seconds: float) -> Iterator[None]:
    """Database work in this block must end within ``seconds`` (see the module docstring)."""
    before = getattr(_thread, "until", None)
    until = time.monotonic() + seconds
    _thread.until = until if before is None else min(before, until)
    try:
        yield
    finally:
        _thread.until = before


def _abort(dbapi_connection: Any) -> None:
    """Make whatever the connection is waiting for fail now (called from the watchdog)."""
    pgconn = getattr(dbapi_connection, "pgconn", None)
    if pgconn is not None:  # psycopg 3: shut the socket down (all descriptors of it)
        try:
            descriptor = pgconn.socket
        except Exception:
            return
        shut_down_descriptor(descriptor)
        return
    interrupt = getattr(dbapi_connection, "interrupt", None)  # sqlite3
    if interrupt is not None:
        interrupt()


def _abort_and_log(dbapi_connection: Any) -> None:
    _abort(dbapi_connection)
    log.warning("database deadline passed: connection aborted")


WATCHDOG: Watchdog[Any] = Watchdog("db-watchdog", _abort_and_log)


def install(engine: Engine) -> None:
    """Bound the engine's checkouts and the work on them by the calling thread's deadline."""
    pinged = engine.dialect.name != "sqlite"  # a local file: nothing to find dead

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> Any:
        left = remaining()
        if left is None or not pinged:
            return None  # the driver's own connect (bounded by its connect timeout; SQLite: local)
        if left <= 0:
            raise DeadlineExceeded("database deadline passed before connecting")
        return _connect_within(left, lambda: dialect.connect(*cargs, **cparams))

    @event.listens_for(engine.pool, "connect")
    def _fresh(dbapi_connection: Any, record: Any) -> None:
        record.info[_FRESH] = True

    @event.listens_for(engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        until = getattr(_thread, "until", None)
        fresh = record.info.pop(_FRESH, False)
        if until is not None:
            if time.monotonic() >= until:
                raise DeadlineExceeded("database deadline passed before the checkout")
            record.info["cds_ticket"] = WATCHDOG.watch(dbapi_connection, until)
        if fresh or not pinged:
            return
        try:  # the pre-ping, now bounded by the watchdog
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            _release(record)
            if until is not None and time.monotonic() >= until:
                raise DeadlineExceeded("database deadline passed during the ping") from None
            # Every connection opened before this one is suspect: the pool drops them all.
            raise InvalidatePoolError(f"ping failed ({type(exc).__name__})") from None

    @event.listens_for(engine.pool, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            _release(record)

    @event.listens_for(engine.pool, "invalidate")
    def _invalidate(dbapi_connection: Any, record: Any, exception: Any) -> None:
        _release(record)


def _connect_within(seconds: float, connect: Any) -> Any:
    """``connect()`` if it succeeds within ``seconds``, else ``DeadlineExceeded``.

    The driver cannot be interrupted while it connects (and psycopg's own timeout is whole
    seconds, at least 2), so the connect runs on a short-lived thread; one that finishes after
    its caller gave up (within the driver's connect timeout) closes what it opened.
    """
    lock = threading.Lock()
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            connection = connect()
        except BaseException as exc:
            with lock:
                outcome["error"] = exc
                done.set()
            return
        with lock:
            outcome["connection"] = connection
            done.set()
            abandoned = outcome.get("abandoned", False)
        if abandoned:
            connection.close()

    threading.Thread(target=run, name="db-connect", daemon=True).start()
    done.wait(seconds)
    with lock:
        if not done.is_set():
            outcome["abandoned"] = True
            raise DeadlineExceeded("database deadline passed while connecting")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["connection"]


def _release(record: Any) -> None:
    ticket = record.info.pop("cds_ticket", None)
    if ticket is not None:
        WATCHDOG.release(ticket)
