"""The multi-instance deployment for real, without Docker: what deploy/compose.yaml runs.

Two ``cds-server serve`` processes share PostgreSQL (card log, feedback, snoozes; the schema
migrated once beforehand by ``cds-server db upgrade``, as the compose file's migrate job does)
and Redis (the JWT replay cache), their secrets read from files (``CDS_<KEY>_FILE``). In front
of them Debian's nginx runs deploy/nginx/cds.conf.template, filled in as the nginx image does,
terminating TLS with a certificate made for the test. Checked: the proxy spreads calls over
both; a token spent at one instance is refused by the other; an override given through one
instance snoozes the card on the other; and an instance killed with SIGKILL in the middle of a
stream of feedback loses none that was answered 200, while the proxy keeps answering.

Needs nginx (``apt-get install -y nginx-light``; .ci/run installs it), PostgreSQL and Redis:
missing ones skip locally and fail under ``CI=true``, as the store tests do.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cds_server.sharedcache import CacheUnavailable, open_cache
from tests import jwtkit, servekit
from tests.conftest import ROOT, load_request, rule_of
from tests.store.conftest import require_postgres
from tests.store.flows import LATER_RITUXIMAB, overridden, scenario, topics, with_session

TEMPLATE = ROOT / "deploy" / "nginx" / "cds.conf.template"
REDIS_URL = "redis://127.0.0.1:6379/0"
RITUXIMAB = "order-sign-rituximab"  # a rate-titration warning for pat-lym-001
SIGN = "infusion-safety-sign"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why}, and CI requires it")
    pytest.skip(f"{why} (not CI)")


def _nginx() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        _unavailable("nginx is not installed (apt-get install -y nginx-light)")
    return str(found)


@dataclass
class Topology:
    proxy: str  # https://127.0.0.1:port
    instances: list[servekit.Served]
    database: sa.Engine
    tls: ssl.SSLContext

    def send(
        self, base: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """GET (no body) or POST JSON to ``base + path``; the status and the JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            base + path, data=data, method="GET" if body is None else "POST"
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        context = self.tls if base.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=15, context=context) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            text = error.read()
            try:
                return error.code, json.loads(text)
            except ValueError:
                return error.code, text.decode(errors="replace")


def _token(aud: str) -> str:
    return jwtkit.sign(jwtkit.claims(aud=aud))


def _service_aud(service: str, feedback: bool = False) -> str:
    return f"{jwtkit.PUBLIC_URL}/cds-services/{service}" + ("/feedback" if feedback else "")


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (the proxy's address in the test)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def render_template(values: dict[str, str]) -> str:
    """The template filled in as the nginx image's envsubst step does; every variable set."""
    text = TEMPLATE.read_text(encoding="utf-8")
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], text)


@contextmanager
def nginx_in_front(folder: Path, upstreams: list[str], tls: tuple[Path, Path]) -> Iterator[str]:
    """Debian's nginx on a free loopback port with the deploy template; its https base URL."""
    binary = _nginx()
    folder.mkdir(parents=True, exist_ok=True)
    port = servekit.free_port()
    values = {
        "CDS_LISTEN": f"127.0.0.1:{port}",
        "CDS_SERVER_NAME": "_",
        "CDS_TLS_CERTIFICATE": str(tls[0]),
        "CDS_TLS_CERTIFICATE_KEY": str(tls[1]),
    }
    values.update({f"CDS_UPSTREAM_{i}": u for i, u in enumerate(upstreams, start=1)})
    (folder / "cds.conf").write_text(render_template(values), encoding="utf-8")
    temp = {k: folder / k for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir()
    # As root the workers would run as nobody, who cannot read the test's folders.
    user = "user root;" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"""daemon off;
worker_processes 1;
pid {folder / "nginx.pid"};
{user}
events {{ worker_connections 128; }}
http {{
    access_log {folder / "access.log"};
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {folder / "cds.conf"};
}}
""",
        encoding="utf-8",
    )
    command = [binary, "-p", str(folder), "-e", str(folder / "error.log")]
    command += ["-c", str(folder / "nginx.conf")]
    checked = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    with (folder / "nginx.out").open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink)
    base = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (folder / "error.log").read_text(errors="replace")
            try:
                with urllib.request.urlopen(
                    f"{base}/healthz", timeout=2, context=_client_tls(tls[0])
                ) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "nginx did not answer"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def _client_tls(certificate: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificate))


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    _nginx()
    server = require_postgres()
    try:
        open_cache(REDIS_URL).close()
    except CacheUnavailable as exc:
        _unavailable(f"Redis at {REDIS_URL} is unreachable: {exc}")
    folder = tmp_path_factory.mktemp("topology")
    schema = f"cds_topology_{secrets.token_hex(6)}"
    admin = sa.create_engine(server)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    database_url = f"{server}?options=-csearch_path%3D{schema}"
    secret_dir = folder / "secrets"
    secret_dir.mkdir()
    files = {
        "DATABASE_URL": database_url,
        "PATIENT_HASH_KEY": secrets.token_urlsafe(48),
        "AUTH_CACHE": REDIS_URL,
    }
    env = {"CDS_DATABASE_AUTO_UPGRADE": "false"}
    for key, value in files.items():
        path = secret_dir / key.lower()
        path.write_text(value + "\n", encoding="utf-8")
        env[f"CDS_{key}_FILE"] = str(path)
    clients = jwtkit.write_clients(folder)
    # The compose file's migrate job: once, before the instances start.
    migrate_env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    migrate_env |= env | {"CDS_CLIENTS_FILE": str(clients), "CDS_PUBLIC_URL": jwtkit.PUBLIC_URL}
    migrated = subprocess.run(
        [sys.executable, "-c", "from cds_server.cli import main; main()", "db", "upgrade"],
        env=migrate_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    database = sa.create_engine(database_url)
    try:
        with ExitStack() as stack:
            instances = []
            for name in ("a", "b"):
                (folder / name).mkdir()
                instances.append(
                    stack.enter_context(
                        servekit.serving(
                            folder / name,
                            "--workers",
                            "1",
                            "--threads",
                            "4",
                            env=env,
                            public_url=jwtkit.PUBLIC_URL,
                            clients=clients,
                        )
                    )
                )
            tls = _certificate(folder)
            upstreams = [i.base.removeprefix("http://") for i in instances]
            proxy = stack.enter_context(nginx_in_front(folder / "nginx", upstreams, tls))
            yield Topology(proxy, instances, database, _client_tls(tls[0]))
    finally:
        database.dispose()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _access_lines(served: servekit.Served, request_line: str) -> int:
    return served.text().count(f'"{request_line} HTTP/1.1"')


def _wait_for(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def test_the_proxy_spreads_calls_over_both_instances(topology: Topology) -> None:
    before = [_access_lines(i, "GET /cds-services") for i in topology.instances]
    for _ in range(6):
        status, body = topology.send(
            topology.proxy, "/cds-services", token=_token(f"{jwtkit.PUBLIC_URL}/cds-services")
        )
        assert status == 200 and len(body["services"]) == 3

    def both_served() -> bool:
        now = [_access_lines(i, "GET /cds-services") for i in topology.instances]
        return sum(now) - sum(before) == 6 and all(n > b for n, b in zip(now, before, strict=True))

    assert _wait_for(both_served), [i.text()[-2000:] for i in topology.instances]


def test_a_token_spent_at_one_instance_is_refused_by_the_other(topology: Topology) -> None:
    a, b = (i.base for i in topology.instances)
    body = load_request(RITUXIMAB)
    token = _token(_service_aud(SIGN))
    assert topology.send(a, f"/cds-services/{SIGN}", body, token)[0] == 200
    status, answer = topology.send(b, f"/cds-services/{SIGN}", body, token)
    assert status == 401, answer
    # through the proxy: the second use is refused whichever instance gets it
    token = _token(_service_aud(SIGN))
    first = topology.send(topology.proxy, f"/cds-services/{SIGN}", with_session(body), token)
    again = topology.send(topology.proxy, f"/cds-services/{SIGN}", with_session(body), token)
    assert (first[0], again[0]) == (200, 401)


def _card_logged(topology: Topology, card_uuid: str) -> bool:
    with topology.database.connect() as connection:
        found = connection.execute(
            sa.text("SELECT count(*) FROM card_log WHERE card_uuid = :u"), {"u": card_uuid}
        ).scalar()
    return bool(found)


def test_an_override_through_one_instance_snoozes_the_card_on_the_other(
    topology: Topology,
) -> None:
    a, b = (i.base for i in topology.instances)
    path = f"/cds-services/{SIGN}"
    # A later infusion: its rate card offers "previously tolerated", which snoozes it.
    body = with_session(scenario(LATER_RITUXIMAB), encounter="enc-topology-1")
    status, answer = topology.send(a, path, body, _token(_service_aud(SIGN)))
    assert status == 200
    [card] = [c for c in answer["cards"] if rule_of(c) == "rate-titration"]
    # Another ordering session on the other instance still shows it (no de-duplication).
    later = with_session(scenario(LATER_RITUXIMAB), encounter="enc-topology-2")
    status, answer = topology.send(b, path, later, _token(_service_aud(SIGN)))
    assert ("rate-titration", "warning") in topics(answer["cards"])
    # The card log is written ≈ 0.2 s after the answer (README, "Status"): wait for the row.
    assert _wait_for(lambda: _card_logged(topology, card["uuid"]))
    feedback = {"feedback": [overridden(card["uuid"], "previously-tolerated")]}
    status, answer = topology.send(
        b, f"{path}/feedback", feedback, _token(_service_aud(SIGN, True))
    )
    assert status == 200, answer
    for base in (a, b, topology.proxy):
        again = with_session(scenario(LATER_RITUXIMAB), encounter=f"enc-{uuid.uuid4().hex[:8]}")
        status, answer = topology.send(base, path, again, _token(_service_aud(SIGN)))
        assert status == 200
        assert "rate-titration" not in {t for t, _ in topics(answer["cards"])}, base


def _kill_instance(served: servekit.Served) -> None:
    """SIGKILL the gunicorn arbiter and its workers at once: a crashed instance."""
    arbiter = served.process.pid
    children = Path(f"/proc/{arbiter}/task/{arbiter}/children").read_text().split()
    for pid in [arbiter, *map(int, children)]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    served.process.wait(timeout=10)


def test_killing_an_instance_loses_no_answered_feedback_and_the_proxy_keeps_answering(
    topology: Topology,
) -> None:
    """Runs last: it kills instance b."""
    path = f"/cds-services/{SIGN}/feedback"
    answered: list[tuple[str, int, bool]] = []  # card uuid, status, sent after the kill
    killed = threading.Event()
    stop = threading.Event()
    lock = threading.Lock()

    def send_feedback() -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            card = str(uuid.uuid4())
            after = killed.is_set()
            try:
                status, _ = topology.send(
                    topology.proxy,
                    path,
                    {"feedback": [overridden(card)]},
                    _token(_service_aud(SIGN, True)),
                )
            except OSError:
                status = 0
            with lock:
                answered.append((card, status, after))

    def count(after: bool) -> int:
        with lock:
            return sum(1 for _, s, a in answered if s == 200 and a == after)

    senders = [threading.Thread(target=send_feedback, daemon=True) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        assert _wait_for(lambda: count(False) >= 20, timeout=30)
        _kill_instance(topology.instances[1])
        killed.set()
        assert _wait_for(lambda: count(True) >= 40, timeout=40), answered[-5:]
    finally:
        stop.set()
        for sender in senders:
            sender.join(20)
    ok = [card for card, status, _ in answered if status == 200]
    with topology.database.connect() as connection:
        stored = {
            row[0]
            for row in connection.execute(
                sa.text("SELECT card_uuid FROM feedback WHERE card_uuid = ANY(:u)"), {"u": ok}
            )
        }
    assert set(ok) <= stored, f"answered 200 but not stored: {sorted(set(ok) - stored)}"
    failed = [status for _, status, _ in answered if status != 200]
    # Only calls the instance held when it died, or was accepting as it died, fail: nginx's
    # 502, as it re-sends no POST an instance may have received (deploy/nginx template).
    assert set(failed) <= {502} and len(failed) <= 2 * len(senders), failed
    assert all(status == 200 for _, status, _ in answered[-20:]), answered[-20:]
    # The proxy still answers readiness from the surviving instance.
    assert topology.send(topology.proxy, "/readyz")[0] == 200
