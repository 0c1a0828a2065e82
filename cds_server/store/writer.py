"""``CardLogWriter``: writes card-log rows on a background thread, in batches, off the request path.

A hook call hands its rows to ``submit`` and answers at once; one thread per process writes
everything pending in one transaction, after letting rows gather for ``linger`` seconds (so
calls share a commit — one per call cost more CPU than the rest of the store's work — and
SQLite sees one writer per process instead of one per request thread). Until its commit, a
row stays in ``pending`` where the same process's session de-duplication and feedback still
see it (``pending_rows``; ``flush`` skips the linger). The thread is started on first use in
each process (gunicorn forks workers after the app is built, and threads do not survive a
fork) and drains what is left at interpreter exit.

The card log is an audit and de-duplication aid, not part of the answer: a batch that fails
because of one of its rows is written again row by row, so only the bad row is lost; a
failed write is logged (counts only) and dropped, as a synchronous write failure always
was; when more than ``max_pending`` rows wait (the database is down or far too slow), new
rows are dropped and counted rather than letting memory grow.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError

log = logging.getLogger(__name__)

Row = Mapping[str, Any]
WriteBatch = Callable[[Sequence[Row]], int]


class CardLogWriter:
    """A per-process background writer for card-log rows (see the module docstring)."""

    def __init__(
        self,
        write: WriteBatch,
        *,
        max_pending: int = 10_000,
        exit_wait: float = 5.0,
        linger: float = 0.0,
    ):
        self._write = write
        self._linger = linger
        self._max_pending = max_pending
        self._exit_wait = exit_wait
        self._lock = threading.Condition()
        self._pending: list[Row] = []  # submitted, not yet committed (incl. the batch in flight)
        self._submitted = 0  # rows accepted so far (sequence numbers for ``flush``)
        self._done = 0  # rows handled so far (committed, or dropped after a failure)
        self._dropped = 0
        self._pid: int | None = None  # the process whose thread is running
        self._waiters = 0  # flush() calls waiting: the writer skips its linger for them

    def submit(self, rows: Sequence[Row]) -> bool:
        """Queue ``rows`` for writing; False (and a log line) if the queue is full."""
        if not rows:
            return True
        with self._lock:
            if len(self._pending) + len(rows) > self._max_pending:
                self._dropped += len(rows)
                log.error(
                    "card log queue full: %d row(s) dropped (%d so far)", len(rows), self._dropped
                )
                return False
            self._ensure_thread()
            self._pending.extend(rows)
            self._submitted += len(rows)
            self._lock.notify_all()
        return True

    def pending_rows(self) -> list[Row]:
        """Rows submitted in this process and not yet committed (a snapshot)."""
        with self._lock:
            return list(self._pending)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every row submitted so far is handled; False on timeout."""
        with self._lock:
            target = self._submitted
            self._waiters += 1
            self._lock.notify_all()
            try:
                return self._lock.wait_for(lambda: self._done >= target, timeout)
            finally:
                self._waiters -= 1

    @property
    def dropped(self) -> int:
        return self._dropped

    # -- the writer thread ----------------------------------------------------------------

    def _ensure_thread(self) -> None:
        """Start this process's thread (called with the lock held)."""
        pid = os.getpid()
        if self._pid == pid:
            return
        if self._pid is not None:  # a forked child: the parent's rows are the parent's
            self._pending.clear()
            self._done = self._submitted
        self._pid = pid
        threading.Thread(target=self._run, args=(pid,), name="card-log-writer", daemon=True).start()
        atexit.register(self.flush, self._exit_wait)

    def _run(self, pid: int) -> None:
        # ``pid``: the process this thread serves. After a fork only the child's own thread
        # may touch the queue (a real fork leaves no other; tests simulate one in-process).
        while True:
            with self._lock:
                self._lock.wait_for(lambda: len(self._pending) > 0 or self._pid != pid)
                if self._linger > 0:  # let more rows join this commit, unless someone waits
                    self._lock.wait_for(lambda: self._waiters > 0, self._linger)
                if self._pid != pid:
                    return
                batch = list(self._pending)  # the writer alone removes rows, from the front
            self._write_isolated(batch)
            with self._lock:
                if self._pid != pid:
                    return
                del self._pending[: len(batch)]
                self._done += len(batch)
                self._lock.notify_all()

    def _write_isolated(self, batch: list[Row]) -> None:
        """Write ``batch``; if a row makes it fail, write the others one by one and drop only
        the rows that fail alone (a bad row must never cost another caller's rows). When the
        database itself is unavailable, retrying row by row would only wait longer: the
        batch is dropped."""
        try:
            self._write(batch)
            return
        except Exception as exc:  # the thread must survive any failure
            if len(batch) == 1 or _unavailable(exc):
                log.error("card log write failed (%s): %d row(s)", type(exc).__name__, len(batch))
                return
        dropped: dict[str, int] = {}
        for row in batch:
            try:
                self._write([row])
            except Exception as exc:
                dropped[type(exc).__name__] = dropped.get(type(exc).__name__, 0) + 1
                if _unavailable(exc):
                    break  # the rest would wait in vain; counted below
        if dropped:
            log.error(
                "card log write failed for %d of %d row(s) (%s); the others were written",
                sum(dropped.values()),
                len(batch),
                ", ".join(sorted(dropped)),
            )


def _unavailable(exc: Exception) -> bool:
    """The database cannot be reached or did not answer in time (not a problem of one row)."""
    return isinstance(exc, OperationalError | SqlTimeoutError | DisconnectionError)
