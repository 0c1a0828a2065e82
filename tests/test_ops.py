"""GET /healthz and GET /readyz: public probes; readiness names each failed dependency, in time;
``serve`` writes no access-log line for /healthz."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_server.sharedcache import RedisCache
from cds_server.web import ops
from tests import jwtkit, servekit
from tests.test_sharedcache import redis_url  # noqa: F401 (fixture)

HASH_KEY = "k" * 32


def _outcome(resp: Any) -> list[dict[str, Any]]:
    """The per-check issues of a 503 ``not-ready`` OperationOutcome from /readyz."""
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["details"]["coding"][0]["code"] == "not-ready"
    return body["issue"][1:]  # type: ignore[no-any-return]


def test_healthz_answers_ok_and_is_never_cached(app: Flask) -> None:
    resp = app.test_client().get("/healthz")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}
    assert resp.headers["Cache-Control"] == "no-store"


def test_readyz_reports_each_check(app: Flask) -> None:
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ready"
    assert body["checks"] == {"knowledge": "ok", "database": "ok", "sharedCache": "not configured"}
    assert body["knowledgeVersion"] == app.extensions["cds_server"].kb.version
    assert resp.headers["Cache-Control"] == "no-store"


def test_probes_need_no_client_jwt_when_authentication_is_on(make_app: Any, tmp_path: Path) -> None:
    client = jwtkit.auth_app(make_app, tmp_path).test_client()
    assert client.get("/cds-services").status_code == 401
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (a hung dependency)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def _postgresql_app(make_app: Any, port: int) -> Flask:
    url = f"postgresql://test:test@127.0.0.1:{port}/test"
    return make_app(  # type: ignore[no-any-return]
        DATABASE_URL=url, PATIENT_HASH_KEY=HASH_KEY, DATABASE_AUTO_UPGRADE=False
    )


def test_readyz_names_a_stopped_database_within_two_seconds(make_app: Any) -> None:
    client = _postgresql_app(make_app, _closed_port()).test_client()
    started = time.monotonic()
    resp = client.get("/readyz")
    assert time.monotonic() - started < 2
    issues = _outcome(resp)
    assert resp.get_json()["issue"][0]["diagnostics"] == "Not ready: database"
    assert [i["expression"] for i in issues] == [["database"]]
    assert issues[0]["diagnostics"] == "database: OperationalError"
    assert client.get("/healthz").status_code == 200  # alive all the same


def test_readyz_gives_a_hung_database_one_second_and_starts_no_second_check(
    make_app: Any, black_hole: int
) -> None:
    client = _postgresql_app(make_app, black_hole).test_client()
    outcomes = []
    for _ in range(2):
        started = time.monotonic()
        resp = client.get("/readyz")
        assert time.monotonic() - started < 2
        issues = _outcome(resp)
        assert [i["expression"] for i in issues] == [["database"]]
        outcomes.append(issues[0]["diagnostics"])
    assert outcomes == [
        f"database: no answer within {ops.CHECK_TIMEOUT:g} s",
        "database: an earlier check has not answered yet",
    ]


def test_readyz_checks_redis_when_it_is_the_shared_cache(
    make_app: Any,
    tmp_path: Path,
    black_hole: int,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,  # noqa: F811
) -> None:
    app = jwtkit.auth_app(make_app, tmp_path, AUTH_CACHE=redis_url)
    client = app.test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["checks"]["sharedCache"] == "ok"

    # Redis goes away after start-up (here: a server that never answers).
    verifier = app.extensions["cds_server.web.auth"]
    monkeypatch.setattr(verifier, "cache", RedisCache(f"redis://127.0.0.1:{black_hole}/0"))
    started = time.monotonic()
    resp = client.get("/readyz")
    assert time.monotonic() - started < 2
    issues = _outcome(resp)
    assert resp.get_json()["issue"][0]["diagnostics"] == "Not ready: sharedCache"
    assert [i["expression"] for i in issues] == [["sharedCache"]]
    assert str(black_hole) not in str(resp.get_json())  # the kind of error, never the address


def test_readyz_says_when_the_knowledge_is_missing(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(app.extensions, "cds_server")
    issues = _outcome(app.test_client().get("/readyz"))
    assert [(i["expression"], i["diagnostics"]) for i in issues] == [
        (["knowledge"], "knowledge: not loaded")
    ]


def test_serve_logs_no_access_line_for_healthz(tmp_path: Path) -> None:
    """The real ``serve`` (gunicorn): /healthz leaves no access-log line, other paths do."""
    with servekit.serving(tmp_path, "--workers", "1") as served:
        for _ in range(3):
            assert servekit.get(f"{served.base}/healthz")[0] == 200
        assert servekit.get(f"{served.base}/cds-services")[0] == 401
    log = served.log
    text = log.read_text()
    assert '"GET /readyz HTTP/1.1" 200' in text
    assert '"GET /cds-services HTTP/1.1" 401' in text
    assert "/healthz" not in text
