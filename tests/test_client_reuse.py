"""What the FHIR transport keeps between hook calls, and that it keeps nothing it must not.

Against a real HTTP/1.1 server on loopback that records, per request, the client's port (one
per TCP connection) and the Authorization header: connections and request threads are
reused across calls, recreated after a fork, never carry another call's token, and a call
stuck past its deadline delays no other call. Name resolution is bounded by the deadline.
"""

from __future__ import annotations

import http.server
import ipaddress
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
import responses
from flask import Flask

from cds_server.cdshooks.errors import FhirUnavailable
from cds_server.fhirdata import client as fhir_client
from cds_server.fhirdata.client import FhirClient, FhirSettings, FhirTransport
from tests.conftest import TOKEN, every_key, fake_resolve, load_fixture, load_request
from tests.fakefhir import FakeFhir
from tests.fhirserver import wait_until

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
SETTINGS = FhirSettings(
    allow_http="always", allowed_networks=LOOPBACK, connect_timeout=1.0, read_timeout=5.0
)
# Wall time a call may take beyond its deadline: the grace for a timeout firing at the
# deadline to be reported as such, plus thread scheduling on a busy machine.
MARGIN = 1.0


@dataclass
class Seen:
    port: int  # the client's port: one per TCP connection
    path: str
    authorization: str | None


@dataclass
class Recorder:
    """A loopback HTTP/1.1 (keep-alive) server answering every GET with a Patient.

    Paths under ``/fhir/Stuck/`` wait for ``release``; under ``/fhir/Slow/`` take 50 ms
    (``peak`` counts requests in flight at once). With ``drop_second``, a connection's
    second request is answered by closing the connection (a server's keep-alive timeout).
    """

    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    drop_second: bool = False
    peak: int = 0
    _active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def ports(self, since: int = 0) -> set[int]:
        with self._lock:
            return {s.port for s in self.seen[since:]}

    def handle(self, handler: Any) -> None:
        with self._lock:
            self.seen.append(
                Seen(handler.client_address[1], handler.path, handler.headers.get("Authorization"))
            )
            self._active += 1
            self.peak = max(self.peak, self._active)
        try:
            handler.requests_on_connection += 1
            if self.drop_second and handler.requests_on_connection == 2:
                handler.close_connection = True
                return
            if handler.path.startswith("/fhir/Stuck/"):
                self.release.wait(30)
            if handler.path.startswith("/fhir/Slow/"):
                time.sleep(0.05)
            body = b'{"resourceType": "Patient", "id": "p"}'
            handler.send_response(200)
            handler.send_header("Content-Type", "application/fhir+json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        finally:
            with self._lock:
                self._active -= 1


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default backlog of 5 drops connections

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients going away (a call past its deadline, a closed pool) is normal here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture
def server() -> Iterator[Recorder]:
    recorder = Recorder()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        requests_on_connection = 0

        def do_GET(self) -> None:
            recorder.handle(self)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = _Server(("127.0.0.1", 0), Handler)
    recorder.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield recorder
    finally:
        recorder.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.fixture
def transport() -> Iterator[FhirTransport]:
    kept = FhirTransport()
    try:
        yield kept
    finally:
        kept.close()


def _hook_call(
    transport: FhirTransport,
    server: Recorder,
    token: str | None,
    paths: tuple[str, ...] = ("Patient/a", "Patient/b"),
    settings: FhirSettings = SETTINGS,
) -> dict[str, Any]:
    """What prefetch does for one hook call: a client, parallel reads, close."""
    with transport.client(server.base, token, settings) as client:
        return client.read_many(paths)


def _idle_threads(transport: FhirTransport) -> int:
    return len(transport._local().workers._idle)


# -- reuse, and no token carried over ----------------------------------------------------


def test_connections_are_reused_and_carry_only_the_current_calls_token(
    server: Recorder, transport: FhirTransport
) -> None:
    calls = [("tok-A", "Bearer tok-A"), ("tok-B", "Bearer tok-B"), (None, None), ("", None)]
    ports_per_call = []
    for token, expected in calls:
        start = len(server.seen)
        got = _hook_call(transport, server, token)
        assert all(isinstance(v, dict) for v in got.values()), got
        mine = server.seen[start:]
        assert len(mine) == 2
        assert [s.authorization for s in mine] == [expected, expected]
        ports_per_call.append(server.ports(start))
    # Later calls went over connections opened by the first one (keep-alive across calls).
    assert ports_per_call[1] & ports_per_call[0]
    assert ports_per_call[2] & (ports_per_call[0] | ports_per_call[1])


def test_the_apps_hook_calls_share_connections_and_not_tokens(
    make_app: Callable[..., Flask], fhir_auth: dict[str, Any]
) -> None:
    """Through the API: the app's transport is used, each call sends its own token only."""
    app = make_app()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        fhir = FakeFhir.from_bundle(
            "https://ehr.example.org/fhir",
            load_fixture("patients/lymphoma-first-rituximab.json"),
        ).register(rsps)
        for token in ("tok-first-call", "tok-second-call"):
            body = every_key(load_request("order-sign-rituximab"))
            del body["prefetch"]["allergies"]
            body["fhirServer"] = "https://ehr.example.org/fhir"
            body["fhirAuthorization"] = {**fhir_auth, "access_token": token}
            start = len(fhir.calls)
            resp = app.test_client().post("/cds-services/infusion-safety", json=body)
            assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
            assert [c.headers.get("Authorization") for c in fhir.calls[start:]] == [
                f"Bearer {token}"
            ]
    transport = app.extensions["cds_server"].transport
    assert list(transport._local().adapters) == [("https://ehr.example.org", "never", ())]


def test_request_threads_are_reused_across_calls(
    server: Recorder, transport: FhirTransport
) -> None:
    def idents(client: FhirClient) -> set[int]:
        together = threading.Barrier(4, timeout=5)  # four calls on four threads at once

        def ident() -> int:
            together.wait()
            return threading.get_ident()

        got = client.parallel(dict.fromkeys("abcd", ident))
        return {v for v in got.values() if isinstance(v, int)}

    with transport.client(server.base, TOKEN, SETTINGS) as client:
        first = idents(client)
    assert len(first) == 4
    assert wait_until(lambda: _idle_threads(transport) == 4)
    with transport.client(server.base, TOKEN, SETTINGS) as client:
        assert idents(client) == first


def test_a_forked_process_gets_its_own_threads_and_connections(
    server: Recorder, transport: FhirTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    _hook_call(transport, server, TOKEN)
    parent = transport._local()
    parent_ports = server.ports()
    assert wait_until(lambda: len(parent.workers._idle) == 2)

    child_pid = os.getpid() + 1_000_000
    monkeypatch.setattr(os, "getpid", lambda: child_pid)  # as in a gunicorn worker
    child = transport._local()
    assert child is not parent
    assert list(transport._states) == [child_pid]  # the parent's state is dropped
    assert child.workers is not parent.workers and not child.adapters

    start = len(server.seen)
    got = _hook_call(transport, server, TOKEN)
    assert all(isinstance(v, dict) for v in got.values())
    assert not server.ports(start) & parent_ports  # new connections, not the parent's
    assert len(parent.workers._idle) == 2  # the parent's threads were not used


# -- a stuck call delays no one -----------------------------------------------------------


def test_calls_stuck_past_their_deadline_do_not_block_the_next_call(
    server: Recorder, transport: FhirTransport
) -> None:
    stuck = FhirSettings(
        allow_http="always", allowed_networks=LOOPBACK, read_timeout=30.0, deadline=0.5
    )
    paths = tuple(f"Stuck/{i}" for i in range(stuck.max_workers))
    # More stuck requests than threads kept idle: the pool must grow, not queue.
    callers = [
        threading.Thread(target=_hook_call, args=(transport, server, TOKEN, paths, stuck))
        for _ in range(fhir_client.KEEP_IDLE_THREADS // stuck.max_workers + 1)
    ]
    started = time.monotonic()
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=stuck.deadline + MARGIN + 5)
    assert time.monotonic() - started < stuck.deadline + MARGIN
    assert wait_until(
        lambda: (
            sum(s.path.startswith("/fhir/Stuck/") for s in server.seen) == len(callers) * len(paths)
        )
    )
    assert not server.release.is_set()  # all of them still hold their thread

    started = time.monotonic()
    with transport.client(server.base, TOKEN, stuck) as client:
        got = client.read_many(["Patient/after"])
    assert time.monotonic() - started < stuck.deadline
    assert got["Patient/after"]["id"] == "p"


def test_a_call_runs_at_most_max_workers_requests_at_once(
    server: Recorder, transport: FhirTransport
) -> None:
    settings = FhirSettings(allow_http="always", allowed_networks=LOOPBACK, max_workers=2)
    got = _hook_call(transport, server, TOKEN, tuple(f"Slow/{i}" for i in range(8)), settings)
    assert all(isinstance(v, dict) for v in got.values())
    assert server.peak == 2


def test_a_dropped_keep_alive_connection_is_retried_once_on_a_new_one(
    server: Recorder, transport: FhirTransport
) -> None:
    server.drop_second = True
    assert isinstance(_hook_call(transport, server, TOKEN, ("Patient/a",))["Patient/a"], dict)
    got = _hook_call(transport, server, "tok-next", ("Patient/b",))
    assert isinstance(got["Patient/b"], dict), got
    assert [(s.path, s.authorization) for s in server.seen] == [
        ("/fhir/Patient/a", f"Bearer {TOKEN}"),
        ("/fhir/Patient/b", "Bearer tok-next"),  # on the kept connection: closed unanswered
        ("/fhir/Patient/b", "Bearer tok-next"),  # on a new connection
    ]
    assert server.seen[1].port == server.seen[0].port != server.seen[2].port


def test_the_adapter_is_bound_to_one_origin(transport: FhirTransport) -> None:
    adapter = transport.adapter("https://ehr.example.org/fhir", FhirSettings())
    request = requests.Request("GET", "https://elsewhere.example.net/fhir/Patient/1").prepare()
    with pytest.raises(requests.exceptions.InvalidURL):
        adapter.send(request)


# -- name resolution within the deadline ---------------------------------------------------


@pytest.fixture
def hanging_dns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names under ``hang.example.org`` resolve after 30 s (or when the test ends); the
    first lookup of ``hang-at-connect.localhost`` answers at once, later ones hang."""
    release = threading.Event()
    asked: list[str] = []

    def resolve(host: str, port: int) -> list[Any]:
        asked.append(host)
        if host.endswith("hang.example.org") or (
            host == "hang-at-connect.localhost" and asked.count(host) > 1
        ):
            release.wait(30)
        return fake_resolve(host, port)

    monkeypatch.setattr(fhir_client, "resolve_addresses", resolve)
    try:
        yield asked
    finally:
        release.set()


def test_a_hanging_name_lookup_ends_at_the_deadline(
    hanging_dns: list[str], transport: FhirTransport
) -> None:
    settings = FhirSettings(deadline=0.5)
    started = time.monotonic()
    with (
        responses.RequestsMock(assert_all_requests_are_fired=False) as rsps,
        transport.client("https://fhir.hang.example.org/fhir", TOKEN, settings) as client,
    ):
        got = client.read_many(["Patient/1", "Patient/2"])
        assert len(rsps.calls) == 0
    assert time.monotonic() - started < settings.deadline + MARGIN
    for outcome in got.values():
        assert isinstance(outcome, FhirUnavailable)
        assert "could not be resolved within the FHIR deadline" in outcome.message
    assert hanging_dns == ["fhir.hang.example.org"]  # one lookup for the call, not one each


def test_a_hook_call_answers_412_within_the_deadline_when_dns_hangs(
    hanging_dns: list[str], make_app: Callable[..., Flask], fhir_auth: dict[str, Any]
) -> None:
    deadline = 1.0
    body = load_request("order-sign-rituximab")
    del body["prefetch"]["allergies"]  # required: must be fetched
    body["fhirServer"] = "https://ehr.hang.example.org/fhir"
    body["fhirAuthorization"] = fhir_auth
    app = make_app(FHIR_DEADLINE=deadline)
    started = time.monotonic()
    resp = app.test_client().post("/cds-services/infusion-safety", json=body)
    assert time.monotonic() - started < deadline + MARGIN
    assert resp.status_code == 412
    issue = resp.get_json()["issue"][0]
    assert issue["details"]["coding"][0]["code"] == "prefetch-unavailable"
    assert "could not be resolved within the FHIR deadline" in issue["diagnostics"]


def test_a_hanging_lookup_at_connect_time_ends_at_the_connect_timeout(
    hanging_dns: list[str], server: Recorder, transport: FhirTransport
) -> None:
    settings = FhirSettings(
        allow_http="always", allowed_networks=LOOPBACK, connect_timeout=0.3, deadline=4.0
    )
    base = f"http://hang-at-connect.localhost:{server.port}/fhir"
    started = time.monotonic()
    with transport.client(base, TOKEN, settings) as client:
        got = client.read_many(["Patient/1"])
    assert time.monotonic() - started < settings.connect_timeout + MARGIN
    assert isinstance(got["Patient/1"], FhirUnavailable)
    assert "timed out" in got["Patient/1"].message
    assert server.seen == []
