"""Start the real ``cds-server serve`` (gunicorn) in a subprocess for a test, and stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

CLIENTS = ROOT / "fixtures" / "trusted-clients" / "sandbox.yaml"


@dataclass
class Served:
    base: str
    log: Path
    process: subprocess.Popen[bytes]

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


@contextmanager
def serving(
    folder: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    log_name: str = "serve.log",
    public_url: str = "https://cds.example.org",
    clients: Path = CLIENTS,
) -> Iterator[Served]:
    """``serve`` on a free port with the sandbox's trusted clients, a data folder in
    ``folder``, no ``CDS_*`` variable of the caller's; ready (``/readyz`` 200) when yielded.
    stdout and stderr both go to ``folder/log_name``."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    environment.update(env or {})
    command = [
        sys.executable,
        "-c",
        "from cds_server.cli import main; main()",
        "serve",
        "--port",
        str(port),
        "--public-url",
        public_url,
        "--clients",
        str(clients),
        "--data-dir",
        str(folder / "data"),
        *args,
    ]
    log = folder / log_name
    with log.open("wb") as sink:
        process = subprocess.Popen(command, env=environment, cwd=ROOT, stdout=sink, stderr=sink)
    served = Served(f"http://127.0.0.1:{port}", log, process)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, served.text()
            try:
                if get(f"{served.base}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, served.text()
            time.sleep(0.2)
        yield served
    finally:
        process.terminate()
        process.wait(timeout=30)
