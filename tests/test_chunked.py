"""A body whose transfer encoding cannot be read is a 400 OperationOutcome, never a 500.

The fault run sent a malformed chunk-size line to gunicorn: its parser raises while the app
reads the body (``gunicorn.http.errors.InvalidChunkSize``; werkzeug's server an ``OSError``).
The WSGI input stream here raises exactly those, as the servers' readers do.
"""

from __future__ import annotations

import io
import socket
import threading
from typing import Any

import pytest
from flask import Flask
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize
from werkzeug.serving import make_server


class BrokenBody(io.RawIOBase):
    def __init__(self, error: Exception):
        self.error = error

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise self.error


@pytest.mark.parametrize(
    "error",
    [InvalidChunkSize(b"zz"), ChunkMissingTerminator(b"xx"), OSError("Invalid chunk header")],
)
@pytest.mark.parametrize(
    "path", ["/cds-services/infusion-safety", "/cds-services/infusion-safety/feedback"]
)
def test_unreadable_chunked_body_is_400(client: Any, error: Exception, path: str) -> None:
    resp = client.post(
        path,
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        # as gunicorn passes a chunked body: no length, the stream ends it
        environ_overrides={"wsgi.input": BrokenBody(error), "wsgi.input_terminated": True},
    )
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["resourceType"] == "OperationOutcome"
    # werkzeug turns an OSError while reading into its own 400 (ClientDisconnected), mapped
    # to ``bad-request``; the server parsers' errors are ``malformed-json``.
    expected = "bad-request" if isinstance(error, OSError) else "malformed-json"
    assert body["issue"][0]["details"]["coding"][0]["code"] == expected


def test_malformed_chunk_size_over_a_real_socket_is_400_json(app: Flask) -> None:
    """The same through werkzeug's HTTP server: the bytes a hostile client sends."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(
                b"POST /cds-services/infusion-safety HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\nZZZ-not-hex\r\n{}\r\n0\r\n\r\n"
            )
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        server.shutdown()
        thread.join(5)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"application/json" in head
    assert b"OperationOutcome" in payload
