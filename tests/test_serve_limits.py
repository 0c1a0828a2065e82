"""The real ``serve`` (gunicorn): oversized headers and long URLs get the app's JSON answers;
stalled uploads do not starve legitimate calls.

gunicorn checks header lines and the request line before the app sees a request, and answers
431/414 in HTML. With its defaults (8 190-byte header lines, 4 094-byte request line) a token
between 8 190 bytes and the app's own cap (``auth.MAX_TOKEN_CHARS``, 16 384) got that HTML,
and the app's cap could never be reached. ``serve`` now allows 20 480-byte header lines and an
8 190-byte request line (gunicorn's largest finite one): the app answers first, in JSON.

Stalled uploads: clients that send their headers and a few bytes of the body, then nothing,
held a request thread each for ever (gunicorn has no body-read timeout for its threaded
workers); 40 of them made every legitimate call time out. The app now reads a body under
``REQUEST_BODY_TIMEOUT`` (``socketwatch``: the connection is shut down when it passes).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from cds_server import cli
from cds_server.web import auth
from tests import jwtkit, servekit
from tests.conftest import load_request

THREADS = 4
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``cds-server serve`` (1 worker × 4 threads, REQUEST_BODY_TIMEOUT 1 s, the test EHR's
    key trusted) on a free loopback port; its base URL."""
    folder = tmp_path_factory.mktemp("serve")
    env = {
        "CDS_DATABASE_URL": f"sqlite:///{folder / 'cds.sqlite3'}",
        "CDS_REQUEST_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    with servekit.serving(
        folder,
        "--workers",
        "1",
        "--threads",
        str(THREADS),
        env=env,
        public_url=jwtkit.PUBLIC_URL,
        clients=jwtkit.write_clients(folder),
    ) as running:
        yield running.base
    log = running.log
    assert "Traceback" not in log.read_text()


def _raw(
    base: str, head: bytes, body: bytes = b"", timeout: float = 10.0
) -> tuple[int, str, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body``; the
    status, content type and body of the answer."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, payload = data.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), fields.get("Content-Type", ""), payload


def _jwt_shaped(chars: int) -> str:
    """A compact-JWS-looking string of ``chars`` characters (never a valid token)."""
    head = "eyJhbGciOiJFUzM4NCJ9."
    return head + "A" * (chars - len(head) - 2) + ".x"


def _is_json_outcome(status: int, content_type: str, payload: bytes, expected: int) -> None:
    assert status == expected, (status, payload[:300])
    assert content_type.startswith("application/json"), (content_type, payload[:300])
    outcome = json.loads(payload)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"]


@pytest.mark.parametrize(
    "chars", [9_000, auth.MAX_TOKEN_CHARS + 1, cli.SERVE_MAX_HEADER_BYTES - 100]
)
def test_an_oversized_token_gets_the_apps_json_401(served: str, chars: int) -> None:
    """Tokens over gunicorn's default 8 190-byte header line, over the app's own cap and
    just under serve's header limit: the app's JSON 401, not gunicorn's HTML 431."""
    head = f"GET /cds-services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_jwt_shaped(chars)}"
    _is_json_outcome(*_raw(served, head.encode()), expected=401)


def test_a_long_url_gets_the_apps_json_answer(served: str) -> None:
    """A 7 000-byte path (over gunicorn's default 4 094-byte request line): the app's JSON
    answer (here 405: the service URL takes POST), not gunicorn's HTML 414."""
    head = f"GET /cds-services/{'x' * 7000} HTTP/1.1\r\nHost: x"
    _is_json_outcome(*_raw(served, head.encode()), expected=405)


def test_beyond_serves_limits_gunicorn_still_refuses(served: str) -> None:
    """What the documented limits mean: past them gunicorn answers before the app."""
    over = cli.SERVE_MAX_HEADER_BYTES + 10
    head = f"GET /cds-services HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {_jwt_shaped(over)}"
    assert _raw(served, head.encode())[0] in (400, 431)
    long_line = f"GET /{'x' * (cli.SERVE_MAX_REQUEST_LINE + 10)} HTTP/1.1\r\nHost: x"
    assert _raw(served, long_line.encode())[0] in (400, 414)


def _sign_head(length: int) -> bytes:
    token = jwtkit.sign(jwtkit.claims(aud=jwtkit.SIGN_AUD))
    return (
        "POST /cds-services/infusion-safety-sign HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}"
    ).encode()


def test_stalled_uploads_do_not_starve_a_legitimate_call(served: str) -> None:
    """Three times as many authenticated uploads as threads stall after 10 body bytes; a
    legitimate call queued behind them is still answered (each stalled one holds a thread
    for at most REQUEST_BODY_TIMEOUT, then its connection is closed)."""
    port = int(served.rsplit(":", 1)[1])
    stalled = []
    for _ in range(3 * THREADS):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(_sign_head(5000) + b"\r\n\r\n" + b'{"hook": "')
        stalled.append(sock)
    time.sleep(0.2)  # all of them reach a thread before the legitimate call
    try:
        body = json.dumps(load_request("order-sign-rituximab")).encode()
        started = time.monotonic()
        status, _ct, payload = _raw(served, _sign_head(len(body)), body, timeout=20)
        took = time.monotonic() - started
        assert status == 200, payload[:300]
        assert json.loads(payload)["cards"]
        # Queued behind 3 rounds of stalled uploads, each ended at the body timeout.
        assert took < 3 * BODY_TIMEOUT + 5, took
        for sock in stalled:  # every stalled connection was closed by the server
            sock.settimeout(5)
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    finally:
        for sock in stalled:
            sock.close()


def test_request_body_timeout_is_validated() -> None:
    from cds_server import config

    assert config.load(test_config={})["REQUEST_BODY_TIMEOUT"] == 10
    for bad in (0, -1, True, "1", 301):
        with pytest.raises(config.ConfigError, match="REQUEST_BODY_TIMEOUT"):
            config.load(test_config={"REQUEST_BODY_TIMEOUT": bad})
