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
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


class SocketWatchdog:
    """Shuts watched sockets down when their deadline passes (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, socket.socket] = {}
        self._tickets = itertools.count()
        self._pid: int | None = None
        self.aborted = 0

    def watch(self, sock: socket.socket, until: float) -> int:
        """Shut ``sock`` down at ``until`` (``time.monotonic``) unless ``release`` comes first."""
        with self._lock:
            if self._pid != os.getpid():  # first use in this process
                self._pid = os.getpid()
                self._heap.clear()
                self._watched.clear()
                threading.Thread(target=self._run, name="socket-watchdog", daemon=True).start()
            ticket = next(self._tickets)
            self._watched[ticket] = sock
            heapq.heappush(self._heap, (until, ticket))
            if self._heap[0][1] == ticket:
                self._lock.notify()
            return ticket

    def release(self, ticket: int) -> None:
        with self._lock:
            self._watched.pop(ticket, None)

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
                sock = self._watched.pop(ticket)
                self.aborted += 1
                # Under the lock: a socket released meanwhile is never touched.
                shut_down(sock)


def shut_down(sock: socket.socket) -> None:
    """Shut the connection of ``sock`` down for every descriptor of it."""
    try:
        twin = socket.socket(fileno=os.dup(sock.fileno()))
    except (OSError, ValueError):  # already closed
        return
    try:
        twin.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        twin.close()


WATCHDOG = SocketWatchdog()
