"""Deadlines for blocking socket reads: a watchdog shuts a socket down at its reader's deadline.

A blocking read with a socket timeout ends only when no byte arrives for that long; a peer
that sends a byte now and then (a FHIR server dripping its headers, a client dripping its
upload) holds the reading thread for as long as it likes. ``WATCHDOG.watch(sock, until)``
shuts the connection down at ``until`` (every descriptor of it, TLS ones too, as
``store/deadline.py`` does for database connections), so the blocked read fails at once;
``release`` before then leaves the socket alone. One watchdog thread per process, started on
first use (threads do not survive a fork).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Watchdog(Generic[T]):
    """One thread per process that calls ``abort`` on each watched item whose deadline passes
    (a socket here; a database connection in ``store/deadline.py``)."""

    def __init__(self, name: str, abort: Callable[[T], None]) -> None:
        self._name = name
        self._abort = abort
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, T] = {}
        self._tickets = itertools.count()
        self._pid: int | None = None
        self.aborted = 0

    def watch(self, item: T, until: float) -> int:
        """Abort ``item`` at ``until`` (``time.monotonic``) unless ``release`` comes first."""
        with self._lock:
            if self._pid != os.getpid():  # first use in this process (threads die in a fork)
                self._pid = os.getpid()
                self._heap.clear()
                self._watched.clear()
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
            ticket = next(self._tickets)
            self._watched[ticket] = item
            heapq.heappush(self._heap, (until, ticket))
            if self._heap[0][1] == ticket:
                self._lock.notify()
            return ticket

    def release(self, ticket: int) -> None:
        with self._lock:
            self._watched.pop(ticket, None)

    def _run(self) -> None:
        pid = os.getpid()
        with self._lock:
            while self._pid == pid:
                while self._heap and self._heap[0][1] not in self._watched:
                    heapq.heappop(self._heap)  # released in time
                if not self._heap:
                    self._lock.wait()
                    continue
                until, ticket = self._heap[0]
                wait = until - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
                heapq.heappop(self._heap)
                item = self._watched.pop(ticket)
                self.aborted += 1
                # Under the lock: an item released meanwhile (a connection back in its pool,
                # perhaps another thread's by now) is never touched.
                try:
                    self._abort(item)
                except Exception as exc:
                    log.error("%s: abort failed (%s)", self._name, type(exc).__name__)


class SocketWatchdog(Watchdog[socket.socket]):
    """Shuts watched sockets down when their deadline passes (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__("socket-watchdog", shut_down)

    @contextmanager
    def within(self, sock: socket.socket | None, seconds: float) -> Iterator[None]:
        """Reads of ``sock`` in this block end within ``seconds`` (nothing if no socket)."""
        if sock is None:
            yield
            return
        ticket = self.watch(sock, time.monotonic() + seconds)
        try:
            yield
        finally:
            self.release(ticket)


def shut_down(sock: socket.socket) -> None:
    """Shut the connection of ``sock`` down for every descriptor of it."""
    try:
        descriptor = sock.fileno()
    except (OSError, ValueError):  # already closed
        return
    shut_down_descriptor(descriptor)


def shut_down_descriptor(descriptor: int) -> None:
    """Shut down the connection behind a socket descriptor (a duplicate is used, so the owner's
    descriptor stays valid and its blocked read fails at once)."""
    try:
        twin = socket.socket(fileno=os.dup(descriptor))
    except (OSError, ValueError):  # already closed
        return
    try:
        twin.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        twin.close()


WATCHDOG = SocketWatchdog()
