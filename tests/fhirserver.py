"""A real FHIR server on a loopback socket, with injectable faults (tests and ``tools/soak.py``).

``LiveFhir`` serves the resources of a fixture Bundle (reads and the searches the service
makes, through ``tests.fakefhir.FakeFhir``) from a ``ThreadingHTTPServer`` bound to a
loopback address, so timeouts, slow bodies, dropped connections and many-megabyte
responses really happen on a socket. A ``Fault`` registered for a resource type replaces
the normal answer for that type. Every request is recorded (path, query, headers) so tests
can assert where a token went. Bound only to 127.0.0.0/8: it never listens elsewhere.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakefhir import Call, FakeFhir

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Reply:
    """What a fault answers: status, headers and a body (bytes, or chunks with pauses)."""

    status: int = 200  # 0 = the normal answer (after ``delay``); -1 = ``chunks`` only, raw
    body: bytes = b""
    content_type: str = FHIR_JSON
    delay: float = 0.0  # before the status line
    chunks: tuple[bytes, ...] = ()  # sent one by one, ``pause`` apart (after ``body``)
    pause: float = 0.0
    length: int | None = None  # Content-Length to announce (None = the real length)
    headers: tuple[tuple[str, str], ...] = ()


Fault = Callable[[Call], Reply]


def json_bytes(value: Any) -> bytes:
    return json.dumps(value).encode()


def status(code: int, body: Any = None) -> Fault:
    """Answer ``code`` with an OperationOutcome (or ``body``)."""
    outcome = body or {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "security" if code in (401, 403) else "processing"}
        ],
    }
    return lambda call: Reply(code, json_bytes(outcome))


def raw(body: bytes, content_type: str = FHIR_JSON) -> Fault:
    """Answer 200 with these exact bytes (invalid JSON, HTML, an OperationOutcome…)."""
    return lambda call: Reply(200, body, content_type)


def redirect(location: str, code: int = 302) -> Fault:
    """Answer a redirect to ``location`` (the client must not follow it)."""
    return lambda call: Reply(code, b"", "text/plain", headers=(("Location", location),))


def delay(seconds: float, then: Fault | None = None) -> Fault:
    """Wait ``seconds`` before answering (normally, or as ``then`` says)."""

    def fault(call: Call) -> Reply:
        return replace(then(call) if then else Reply(status=0), delay=seconds)

    return fault


def drip(total: int, every: float, piece: int = 1) -> Fault:
    """Announce ``total`` bytes, then send ``piece`` bytes every ``every`` seconds (slowloris)."""
    n = max(1, total // piece)
    return lambda call: Reply(200, b"", chunks=(b" " * piece,) * n, pause=every, length=n * piece)


def slow_headers(every: float, count: int = 200) -> Fault:
    """A status line, then one header line every ``every`` seconds, ``count`` times."""
    lines = (b"HTTP/1.1 200 OK\r\n", *(b"X-Pad: %d\r\n" % i for i in range(count)))
    return lambda call: Reply(-1, chunks=lines, pause=every)


def huge(megabytes: int) -> Fault:
    """A valid searchset Bundle of about ``megabytes`` MiB, sent as fast as possible."""
    pad = "x" * (1024 * 1024)
    head = b'{"resourceType": "Bundle", "type": "searchset", "entry": ['
    entry = json_bytes(
        {"resource": {"resourceType": "AllergyIntolerance", "id": "big", "note": [{"text": pad}]}}
    )
    chunks = tuple(entry + (b"," if i < megabytes - 1 else b"") for i in range(megabytes))
    return lambda call: Reply(200, head, chunks=(*chunks, b"]}"))


def bundle_with_next(next_url: Callable[[Call], str], resource: dict[str, Any]) -> Fault:
    """A one-entry searchset Bundle whose ``next`` link is ``next_url(call)``."""
    return lambda call: Reply(
        200,
        json_bytes(
            {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": [{"relation": "next", "url": next_url(call)}],
                "entry": [{"resource": resource, "search": {"mode": "match"}}],
            }
        ),
    )


@dataclass
class LiveFhir:
    """A threaded HTTP FHIR server on ``host`` (loopback only) serving ``resources``."""

    resources: list[dict[str, Any]] = field(default_factory=list)
    host: str = "127.0.0.1"
    faults: dict[str, Fault] = field(default_factory=dict)  # resource type → fault
    calls: list[Call] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def from_bundle(cls, bundle: dict[str, Any], host: str = "127.0.0.1") -> LiveFhir:
        return cls([e["resource"] for e in bundle.get("entry", [])], host)

    @property
    def base(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://{self.host}:{self._server.server_address[1]}/fhir"

    @property
    def origin(self) -> str:
        return self.base.rsplit("/fhir", 1)[0]

    def start(self) -> LiveFhir:
        if not ipaddress.ip_address(self.host).is_loopback:
            raise ValueError("LiveFhir binds loopback addresses only")
        self._server = _Server((self.host, 0), _handler_for(self))
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def __enter__(self) -> LiveFhir:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def recorded(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def authorizations(self) -> set[str | None]:
        return {c.headers.get("Authorization") for c in self.recorded()}

    # -- serving -----------------------------------------------------------------------

    def _record(self, path: str, headers: dict[str, str]) -> Call:
        parts = urlsplit(path)
        call = Call(parts.path, parse_qs(parts.query), headers)
        with self._lock:
            self.calls.append(call)
        return call

    def _reply(self, call: Call, url: str) -> Reply:
        rtype = call.tail.split("?")[0].split("/")[0]
        fault = self.faults.get(rtype)
        reply = fault(call) if fault is not None else Reply(status=0)
        if reply.status:
            return reply
        data = FakeFhir(self.base, self.resources)
        code, _, body = data._handle(SimpleNamespace(url=url, headers=call.headers))
        return replace(reply, status=code, body=body.encode())

    def sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; False if it stopped."""
        return not self._stopping.wait(seconds)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops connections under load

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients closing idle keep-alive connections is normal: stay quiet about it."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _handler_for(server: LiveFhir) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            call = server._record(self.path, dict(self.headers.items()))
            reply = server._reply(call, f"http://{self.headers.get('Host', '')}{self.path}")
            if reply.delay and not server.sleep(reply.delay):
                return
            length = reply.length
            if length is None:
                length = len(reply.body) + sum(len(c) for c in reply.chunks)
            if reply.status < 0:
                self._raw(reply)
                return
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(length))
                for name, value in reply.headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
                for chunk in _paced(reply, server):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _raw(self, reply: Reply) -> None:
            self.close_connection = True
            try:
                for chunk in _paced(reply, server):
                    self.wfile.write(chunk)
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

    return Handler


def _paced(reply: Reply, server: LiveFhir) -> Iterator[bytes]:
    for chunk in reply.chunks:
        if reply.pause and not server.sleep(reply.pause):
            return
        yield chunk


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
