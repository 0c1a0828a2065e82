"""A TCP proxy on loopback that can go silent: a database or Redis that stops answering.

``PausableProxy(port)`` forwards 127.0.0.1:<its port> to 127.0.0.1:``port``. ``pause()``
makes it a server that is reachable but never answers (a frozen host, a network partition):
it still accepts connections, and reads what it is sent, but forwards nothing either way
until ``resume()``. Bounded: at most ``max_connections`` at once, every thread is a daemon
polling a stop flag, and ``close()`` (or leaving the ``with`` block) ends them all.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any


class PausableProxy:
    def __init__(self, upstream_port: int, *, max_connections: int = 64):
        self._upstream = ("127.0.0.1", upstream_port)
        self._max = max_connections
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self.accepted = 0
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def pause(self) -> None:
        self._forwarding.clear()

    def resume(self) -> None:
        self._forwarding.set()

    def close(self) -> None:
        self._stop.set()
        self._forwarding.set()
        with self._lock:
            for sock in self._sockets:
                sock.close()
        self._listener.close()
        for thread in list(self._threads):
            thread.join(2)

    def __enter__(self) -> PausableProxy:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                if len(self._sockets) >= 2 * self._max:
                    client.close()
                    continue
                self.accepted += 1
                self._sockets.add(client)
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self._upstream, timeout=2)
            with self._lock:
                self._sockets.add(upstream)
            held: dict[socket.socket, bytes] = {client: b"", upstream: b""}
            peer = {client: upstream, upstream: client}
            while not self._stop.is_set():
                readable, _, _ = select.select([client, upstream], [], [], 0.05)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    held[sock] += data
                if self._forwarding.is_set():
                    for sock, data in held.items():
                        if data:
                            peer[sock].sendall(data)
                            held[sock] = b""
        except OSError:
            return
        finally:
            with self._lock:
                for sock in (client, upstream):
                    if sock is not None:
                        self._sockets.discard(sock)
                        sock.close()
