#!/usr/bin/env python3
"""Soak test: the service under gunicorn on loopback, sustained mixed load, for a bounded time.

    .venv/bin/python tools/soak.py                # 10 minutes (default)
    .venv/bin/python tools/soak.py --minutes 1    # a quick run

What it does, all on 127.0.0.1 and nowhere else:

1. starts two fake FHIR servers (``tests.fhirserver.LiveFhir``: one healthy, one whose
   AllergyIntolerance search fails), writes a trusted-clients file with a fresh ES384 key,
   and starts ``cds-server serve`` (gunicorn, 2 workers × 8 threads, authentication on,
   a SQLite database in the output folder unless ``--database-url`` is given), its output
   captured in ``server.log``;
2. runs ``--concurrency`` client threads until the time is up (or ``--max-requests``),
   each request signed with its own JWT (``jti``): the three hooks with prefetch (every
   fixture request and clinical scenario), the FHIR fallback (good and failing), feedback
   (accepted and overridden, on cards just issued), discovery and ``/openapi.json``, and bad
   requests (malformed JSON, invalid fields, unknown service, wrong method, missing data,
   no or a wrong JWT, invalid feedback) — each with the status it must get;
3. samples the RSS of every gunicorn worker every few seconds;
4. stops the server (SIGTERM) and checks: zero 5xx and zero unexpected statuses; RSS flat
   (least-squares slope after the warm-up, projected over the run, within tolerance); every
   feedback item answered 200 is in the database; and no fhirAuthorization token, JWT,
   patient id or patient name from the requests appears in the server's log.

It prints a report (latency percentiles per time window, RSS over time and its slope) and
writes it to ``<out>/report.md`` and ``<out>/report.json``. Exit status 0 only if every
check passed. Not part of the test suite (it takes minutes); see docs/robustness.md.
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.run import load_average, stop  # noqa: E402  (after the path set-up)
from cds_server.cli import SERVE_THREADS  # noqa: E402
from tests import fhirserver, loghygiene  # noqa: E402

FIXTURES = ROOT / "fixtures" / "fhir"
ISS = "https://soak-client.example.org"
KID = "soak-es384"
ACCESS_TOKEN = "soak-fhir-access-" + uuid.uuid4().hex  # must never reach a log
# Fixtures that need a server we do not run (an https fhirServer) or are 412 by design.
NOT_GOOD = {"order-sign-crd-style", "order-sign-operationoutcome-prefetch"}
SIGN = "/cds-services/infusion-safety-sign"


# -- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request to send and the status it must get."""

    kind: str
    method: str
    path: str
    expect: int
    body: bytes | None = None
    content_type: str = "application/json"
    auth: str = "good"  # good | none | bad
    feedback: tuple[dict[str, Any], ...] = ()  # items this feedback POST carries


def _json_bytes(body: Any) -> bytes:
    """JSON as an EHR sends it: a non-finite number read from a fixture (the literal 1e400 of
    rituximab-rate-not-finite) goes back out as that literal, not Python's invalid Infinity."""
    text = json.dumps(body).replace("-Infinity", "-1e400").replace("Infinity", "1e400")
    return text.encode()


def _service(body: dict[str, Any]) -> str:
    return {"patient-view": "infusion-risk-summary", "order-select": "infusion-safety-select"}.get(
        str(body.get("hook")), "infusion-safety-sign"
    )


def _good_bodies() -> list[dict[str, Any]]:
    files = sorted(glob.glob(str(FIXTURES / "requests" / "*.json")))
    files += sorted(glob.glob(str(FIXTURES / "scenarios" / "*.request.json")))
    bodies = []
    for name in files:
        stem = Path(name).name.removesuffix(".json").removesuffix(".request")
        if stem in NOT_GOOD:
            continue
        body = json.loads(Path(name).read_text())
        body.pop("fhirServer", None)  # never call anything but our own fake servers
        body.pop("fhirAuthorization", None)
        bodies.append(body)
    return bodies


def _secrets_from(bodies: list[dict[str, Any]], bundles: list[dict[str, Any]]) -> set[str]:
    """Patient ids and names that must never be logged."""
    found: set[str] = set()
    for body in bodies:
        found.add(str(body["context"]["patientId"]))
    resources = [r for b in bodies for r in _resources(b.get("prefetch") or {})]
    resources += [e["resource"] for b in bundles for e in b.get("entry", [])]
    for res in resources:
        if res.get("resourceType") == "Patient":
            found.add(str(res.get("id")))
            for name in res.get("name") or []:
                found.update(str(n) for n in [name.get("family"), *(name.get("given") or [])])
    return {s for s in found if s and s != "None" and len(s) >= 4}


def _resources(prefetch: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for value in prefetch.values():
        if isinstance(value, dict) and value.get("resourceType") == "Bundle":
            out += [e.get("resource") or {} for e in value.get("entry") or []]
        elif isinstance(value, dict):
            out.append(value)
    return out


class Mix:
    """Builds the next request: weighted kinds over the fixtures."""

    def __init__(self, good: list[dict[str, Any]], ehr: str, broken: str, rng: random.Random):
        self.good = good
        self.ehr = ehr
        self.broken = broken
        self.rng = rng
        self.cards: deque[dict[str, Any]] = deque(maxlen=500)  # recent cards (for feedback)
        self.lock = threading.Lock()
        self.kinds: list[tuple[str, int, Callable[[], Call]]] = [
            ("hook-prefetch", 46, self._good),
            ("hook-fallback", 8, lambda: self._fallback(self.ehr, 200)),
            ("hook-fallback-412", 3, lambda: self._fallback(self.broken, 412)),
            ("feedback", 14, self._feedback),
            ("discovery", 3, lambda: Call("discovery", "GET", "/cds-services", 200)),
            ("openapi", 1, lambda: Call("openapi", "GET", "/openapi.json", 200, auth="none")),
            ("bad-json", 4, self._bad_json),
            ("bad-field", 4, self._bad_field),
            ("unknown-service", 2, self._unknown_service),
            ("wrong-method", 1, lambda: Call("wrong-method", "GET", SIGN, 405)),
            ("unknown-route", 1, lambda: Call("unknown-route", "GET", "/cds-services/a/b/c", 404)),
            ("missing-data-412", 4, self._missing),
            ("no-jwt-401", 3, self._no_jwt),
            ("bad-jwt-401", 2, self._bad_jwt),
            ("bad-feedback", 4, self._bad_feedback),
        ]
        self.weights = [w for _, w, _ in self.kinds]

    def next(self) -> Call:
        _, _, make = self.rng.choices(self.kinds, self.weights)[0]
        return make()

    def remember(self, response: dict[str, Any]) -> None:
        with self.lock:
            self.cards.extend(c for c in response.get("cards", []) if c.get("uuid"))

    def _pick(self) -> dict[str, Any]:
        return copy.deepcopy(self.rng.choice(self.good))

    def _post(self, kind: str, body: Any, expect: int, path: str | None = None) -> Call:
        path = path or f"/cds-services/{_service(body)}"
        return Call(kind, "POST", path, expect, _json_bytes(body))

    def _good(self) -> Call:
        body = self._pick()
        body["hookInstance"] = str(uuid.uuid4())
        return self._post("hook-prefetch", body, 200)

    def _fallback(self, server: str, expect: int) -> Call:
        body = json.loads((FIXTURES / "requests" / "order-sign-rituximab.json").read_text())
        body["hookInstance"] = str(uuid.uuid4())
        del body["prefetch"]
        body["fhirServer"] = server
        body["fhirAuthorization"] = {
            "access_token": ACCESS_TOKEN,
            "token_type": "Bearer",
            "expires_in": 30,
            "scope": "patient/*.read",
            "subject": "infusion-safety-cds",
        }
        kind = "hook-fallback" if expect == 200 else "hook-fallback-412"
        return self._post(kind, body, expect)

    def _feedback(self) -> Call:
        with self.lock:
            card = self.rng.choice(self.cards) if self.cards else None
        stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
        if card is None:  # nothing issued yet: feedback on an unknown card is stored too
            card = {"uuid": str(uuid.uuid4())}
        suggestions = [s["uuid"] for s in card.get("suggestions", []) if s.get("uuid")]
        reasons = card.get("overrideReasons") or []
        if suggestions and self.rng.random() < 0.5:
            item: dict[str, Any] = {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": self.rng.choice(suggestions)}],
                "outcomeTimestamp": stamp,
            }
        else:
            reason = self.rng.choice(reasons) if reasons else None
            override: dict[str, Any] = {"userComment": "soak"}
            if reason:
                override["reason"] = {k: reason[k] for k in ("system", "code", "display")}
            item = {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": override,
                "outcomeTimestamp": stamp,
            }
        service = self.rng.choice(["infusion-safety-sign", "infusion-risk-summary"])
        body = {"feedback": [item]}
        return Call(
            "feedback",
            "POST",
            f"/cds-services/{service}/feedback",
            200,
            json.dumps(body).encode(),
            feedback=(item,),
        )

    def _bad_json(self) -> Call:
        raw = self.rng.choice([b"{", b"", b"[]", b'{"hook": NaN}', b"\xff\xfe"])
        return Call("bad-json", "POST", "/cds-services/infusion-safety-sign", 400, raw)

    def _bad_field(self) -> Call:
        body = self._pick()
        self.rng.choice(
            [
                lambda b: b.pop("hookInstance"),
                lambda b: b["context"].update(patientId="bad id/../x"),
                lambda b: b.update(hook=7),
                lambda b: b.update(prefetch=["x"]),
            ]
        )(body)
        return self._post("bad-field", body, 400)

    def _unknown_service(self) -> Call:
        return self._post("unknown-service", self._pick(), 404, "/cds-services/no-such-service")

    def _missing(self) -> Call:
        body = self._pick()
        body["hookInstance"] = str(uuid.uuid4())
        body["prefetch"].pop("medications", None)
        body["prefetch"].pop("allergies", None)
        return self._post("missing-data-412", body, 412)

    def _no_jwt(self) -> Call:
        return replace_call(self._good(), kind="no-jwt-401", expect=401, auth="none")

    def _bad_jwt(self) -> Call:
        return replace_call(self._good(), kind="bad-jwt-401", expect=401, auth="bad")

    def _bad_feedback(self) -> Call:
        item = {"card": "x", "outcome": "ignored", "outcomeTimestamp": "yesterday"}
        return Call(
            "bad-feedback",
            "POST",
            "/cds-services/infusion-safety-sign/feedback",
            400,
            json.dumps({"feedback": [item]}).encode(),
        )


def replace_call(call: Call, **changes: Any) -> Call:
    from dataclasses import replace

    return replace(call, **changes)


# -- authentication ------------------------------------------------------------------------


class Signer:
    """A trusted client's ES384 key: the clients file entry, and one JWT per request."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.other = ec.generate_private_key(ec.SECP384R1())  # signs the "bad" tokens
        self.issued = 0

    def clients_yaml(self, fhir_servers: list[str]) -> str:
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.key.public_key()))
        public.update(kid=KID, alg="ES384", use="sig")
        entry = {"iss": ISS, "jwks": {"keys": [public]}, "fhir_servers": fhir_servers}
        return json.dumps({"clients": [entry]})  # JSON is YAML

    def token(self, audience: str, *, bad: bool = False) -> str:
        now = int(time.time())
        claims = {
            "iss": ISS,
            "aud": audience,
            "iat": now,
            "exp": now + 300,
            "jti": uuid.uuid4().hex,
        }
        key = self.other if bad else self.key
        self.issued += 1
        return jwt.encode(claims, key, algorithm="ES384", headers={"kid": KID, "typ": "JWT"})


# -- measuring -----------------------------------------------------------------------------


@dataclass
class Sample:
    t: float
    kind: str
    status: int
    ms: float
    expected: int


@dataclass
class Results:
    samples: list[Sample] = field(default_factory=list)
    rss: list[tuple[float, dict[int, int]]] = field(default_factory=list)  # t, pid → KiB
    feedback_ok: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _children(pid: int) -> list[int]:
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return sorted(kids)


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y)."""
    if len(points) < 2:
        return 0.0
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


# -- running -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _default_auth_cache() -> str:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            return "redis://127.0.0.1:6379/15"
    except OSError:
        return "memory"


def _start_server(
    args: argparse.Namespace, out: Path, clients: Path, port: int, hash_key: str
) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env.update(
        CDS_AUTH_CACHE=args.auth_cache,
        CDS_FHIR_ALLOW_HTTP="loopback",
        CDS_DATABASE_URL=args.database_url,
        CDS_LOG_LEVEL="INFO",
        CDS_PATIENT_HASH_KEY=hash_key,
    )
    command = [
        sys.executable, "-c", "from cds_server.cli import main; main()", "serve",
        "--host", "127.0.0.1", "--port", str(port),
        "--workers", str(args.workers), "--threads", str(args.threads),
        "--public-url", f"http://127.0.0.1:{port}", "--clients", str(clients),
    ]  # fmt: skip
    log = (out / "server.log").open("wb")
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def _wait_ready(base: str, signer: Signer, server: Any, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise SystemExit(f"the server exited at start-up (status {server.returncode})")
        try:
            token = signer.token(f"{base}/cds-services")
            r = requests.get(
                f"{base}/cds-services", headers={"Authorization": f"Bearer {token}"}, timeout=2
            )
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise SystemExit("the server did not become ready in time")


def _client_loop(
    base: str, mix: Mix, signer: Signer, results: Results, started: float, end: float,
    budget: threading.Semaphore,
) -> None:  # fmt: skip
    session = requests.Session()
    session.trust_env = False
    while time.monotonic() < end and budget.acquire(blocking=False):
        call = mix.next()
        headers = {"Content-Type": call.content_type}
        if call.auth != "none":
            audience = base + call.path
            headers["Authorization"] = "Bearer " + signer.token(audience, bad=call.auth == "bad")
        t0 = time.monotonic()
        try:
            resp = session.request(
                call.method, base + call.path, data=call.body, headers=headers, timeout=30
            )
        except requests.RequestException as exc:
            with results.lock:
                name = type(exc).__name__
                results.transport_errors[name] = results.transport_errors.get(name, 0) + 1
            continue
        ms = (time.monotonic() - t0) * 1000
        if resp.status_code >= 400 and not resp.headers.get("Content-Type", "").startswith(
            "application/json"
        ):
            status = -resp.status_code  # a 4xx/5xx without a JSON body is a failure too
        else:
            status = resp.status_code
        if call.kind.startswith("hook") and resp.status_code == 200:
            mix.remember(resp.json())
        with results.lock:
            results.samples.append(Sample(t0 - started, call.kind, status, ms, call.expect))
            if call.feedback and resp.status_code == 200:
                results.feedback_ok.extend(call.feedback)


def _sample_rss(master: int, results: Results, started: float, end: float, every: float) -> None:
    while time.monotonic() < end:
        workers = {pid: _rss_kib(pid) for pid in _children(master)}
        point = {pid: kib for pid, kib in workers.items() if kib}
        if point:
            with results.lock:
                results.rss.append((time.monotonic() - started, point))
        time.sleep(every)


def _stored_feedback(
    database_url: str, items: list[dict[str, Any]], hash_key: str
) -> tuple[int, int] | str:
    """(found, missing) of the feedback items answered 200, or why it cannot be checked."""
    try:
        from sqlalchemy import select

        from cds_server.store.engine import make_engine, reading
        from cds_server.store.feedback import item_key
        from cds_server.store.identity import keyed_hash
        from cds_server.store.tables import feedback
        from cds_server.web.auth import Caller
        from cds_server.web.trusted_clients import TrustedClient
    except ImportError as exc:
        return f"not checked: the feedback store is not available ({exc})"
    # The items were sent by this soak's one client (no tenant claim), as the store keys them.
    sender = keyed_hash(hash_key.encode(), "caller", Caller(TrustedClient(iss=ISS)).namespace)
    wanted = {item_key(item, sender) for item in items}
    engine = make_engine(database_url)
    try:
        with reading(engine) as connection:
            stored = {row[0] for row in connection.execute(select(feedback.c.item_key))}
    finally:
        engine.dispose()
    return len(wanted & stored), len(wanted - stored)


def _scan_logs(text: str, secrets: set[str]) -> dict[str, int]:
    """Fixture patient ids and names, JWT-shaped strings (``tests.loghygiene``), this run's
    own secrets, and any traceback or unhandled error."""
    found = loghygiene.leaks(text, secrets)
    for marker in ("Traceback", "unhandled "):
        if marker in text:
            found[marker] = text.count(marker)
    return found


# -- report --------------------------------------------------------------------------------


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kib / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return (
        f"{platform.system()} {platform.release()}, {os.cpu_count()} CPU(s) ({cpu}), {mem} RAM, "
        f"Python {platform.python_version()}"
    )


def _report(args: argparse.Namespace, results: Results, extra: dict[str, Any]) -> dict[str, Any]:
    samples = results.samples
    duration = args.minutes * 60
    window = args.window
    windows = []
    for start in range(0, int(duration) + 1, window):
        part = [s for s in samples if start <= s.t < start + window]
        if not part:
            continue
        ms = [s.ms for s in part]
        windows.append(
            {
                "from_s": start,
                "requests": len(part),
                "rps": round(len(part) / min(window, max(1e-9, duration - start)), 1),
                "p50_ms": round(_percentile(ms, 50), 1),
                "p95_ms": round(_percentile(ms, 95), 1),
                "p99_ms": round(_percentile(ms, 99), 1),
                "max_ms": round(max(ms), 1),
                "5xx": sum(1 for s in part if abs(s.status) >= 500),
                "unexpected": sum(1 for s in part if s.status != s.expected),
            }
        )
    kinds: dict[str, dict[str, Any]] = {}
    for s in samples:
        k = kinds.setdefault(s.kind, {"requests": 0, "statuses": {}, "ms": []})
        k["requests"] += 1
        k["statuses"][str(s.status)] = k["statuses"].get(str(s.status), 0) + 1
        k["ms"].append(s.ms)
    for k in kinds.values():
        ms = k.pop("ms")
        k.update(p50_ms=round(_percentile(ms, 50), 1), p99_ms=round(_percentile(ms, 99), 1))

    warmup = min(120.0, duration * 0.2)
    series = [(t, sum(p.values()) / 1024) for t, p in results.rss]
    after = [(t / 60, mib) for t, mib in series if t >= warmup]
    slope = _slope(after)  # MiB per minute, all workers together
    mean = statistics.fmean(m for _, m in after) if after else 0.0
    span = (after[-1][0] - after[0][0]) if len(after) > 1 else 0.0
    growth = slope * span
    allowed = max(args.rss_tolerance_mib, mean * args.rss_tolerance / 100)
    rss_points = []
    for t, point in results.rss[:: max(1, len(results.rss) // 20)]:
        rss_points.append(
            {"t_s": round(t), "workers_mib": [round(v / 1024, 1) for v in point.values()]}
        )
    unexpected = [s for s in samples if s.status != s.expected]
    by_pair: dict[str, int] = {}
    for s in unexpected:
        key = f"{s.kind}: expected {s.expected}, got {s.status}"
        by_pair[key] = by_pair.get(key, 0) + 1
    all_ms = [s.ms for s in samples]
    return {
        "machine": _machine(),
        "started": extra["started"],
        "minutes": args.minutes,
        "workers": args.workers,
        "threads": args.threads,
        "concurrency": args.concurrency,
        "database": extra["database"],
        "auth_cache": args.auth_cache,
        "requests": len(samples),
        "rps": round(len(samples) / duration, 1) if duration else 0,
        "p50_ms": round(_percentile(all_ms, 50), 1),
        "p95_ms": round(_percentile(all_ms, 95), 1),
        "p99_ms": round(_percentile(all_ms, 99), 1),
        "max_ms": round(max(all_ms), 1) if all_ms else 0,
        "5xx": sum(1 for s in samples if abs(s.status) >= 500),
        "unexpected": by_pair,
        "transport_errors": results.transport_errors,
        "windows": windows,
        "kinds": kinds,
        "rss": {
            "warmup_s": warmup,
            "slope_mib_per_min": round(slope, 3),
            "growth_after_warmup_mib": round(growth, 2),
            "mean_mib": round(mean, 1),
            "allowed_growth_mib": round(allowed, 2),
            "flat": abs(growth) <= allowed,
            "first_mib": round(series[0][1], 1) if series else None,
            "last_mib": round(series[-1][1], 1) if series else None,
            "samples": rss_points,
        },
        "feedback": extra["feedback"],
        "log_leaks": extra["leaks"],
        "log_bytes": extra["log_bytes"],
        "jwts_issued": extra["jwts"],
        "load_average": extra["load_average"],
    }


def _markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Soak run {r['started']}",
        "",
        f"- machine: {r['machine']}; 1-minute load average {r['load_average']}",
        f"- {r['minutes']} min, gunicorn {r['workers']} workers × {r['threads']} threads, "
        f"{r['concurrency']} client threads, database {r['database']}, JWT replay cache "
        f"{r['auth_cache']}",
        f"- {r['requests']} requests ({r['rps']}/s), {r['jwts_issued']} JWTs; latency p50 "
        f"{r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms, max {r['max_ms']} ms",
        f"- 5xx: {r['5xx']}; unexpected statuses: {sum(r['unexpected'].values())} "
        f"{r['unexpected'] or ''}; transport errors: {r['transport_errors'] or 0}",
        f"- feedback: {r['feedback']}",
        f"- log leaks: {r['log_leaks'] or 'none'} (scanned {r['log_bytes']} bytes)",
        f"- RSS (all workers): {r['rss']['first_mib']} → {r['rss']['last_mib']} MiB; slope after "
        f"{r['rss']['warmup_s']:.0f} s warm-up {r['rss']['slope_mib_per_min']} MiB/min "
        f"(growth {r['rss']['growth_after_warmup_mib']} MiB, allowed "
        f"{r['rss']['allowed_growth_mib']}): {'flat' if r['rss']['flat'] else 'NOT FLAT'}",
        "",
        "| window from (s) | requests | req/s | p50 ms | p95 ms | p99 ms | max ms | 5xx |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in r["windows"]:
        lines.append(
            f"| {w['from_s']} | {w['requests']} | {w['rps']} | {w['p50_ms']} | {w['p95_ms']} "
            f"| {w['p99_ms']} | {w['max_ms']} | {w['5xx']} |"
        )
    lines += ["", "| kind | requests | statuses | p50 ms | p99 ms |", "|---|---:|---|---:|---:|"]
    for kind, k in sorted(r["kinds"].items()):
        lines.append(
            f"| {kind} | {k['requests']} | {k['statuses']} | {k['p50_ms']} | {k['p99_ms']} |"
        )
    lines += ["", "| t (s) | RSS per worker (MiB) |", "|---:|---|"]
    for p in r["rss"]["samples"]:
        lines.append(f"| {p['t_s']} | {', '.join(str(v) for v in p['workers_mib'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    parser.add_argument("--concurrency", type=int, default=4, help="client threads")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=SERVE_THREADS, help="as serve")
    parser.add_argument("--window", type=int, default=60, help="report window, seconds")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="hard cap")
    parser.add_argument("--database-url", default=None, help="default: SQLite in --out")
    parser.add_argument(
        "--auth-cache",
        default=None,
        help="JWT replay/JWKS cache: 'memory' or redis://… (default: Redis on 127.0.0.1:6379 "
        "db 15 if it answers, as several workers need; else memory)",
    )
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: temp)")
    parser.add_argument("--seed", type=int, default=20261121)
    parser.add_argument("--rss-every", type=float, default=5.0, help="RSS sample period, s")
    parser.add_argument("--rss-tolerance", type=float, default=5.0,
                        help="allowed RSS growth after warm-up, %% of the mean")  # fmt: skip
    parser.add_argument("--rss-tolerance-mib", type=float, default=8.0,
                        help="... or this many MiB, whichever is larger")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be between 0 and 1440")
    out = args.out or Path(tempfile.mkdtemp(prefix="cds-soak-"))
    out.mkdir(parents=True, exist_ok=True)
    args.database_url = args.database_url or f"sqlite:///{out / 'soak.sqlite3'}"
    args.auth_cache = args.auth_cache or _default_auth_cache()
    if args.auth_cache == "memory" and args.workers > 1:
        print("soak: no shared JWT replay cache (Redis): 1 worker (serve refuses more)")
        args.workers = 1
    started_at = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")

    patient = json.loads((FIXTURES / "patients" / "lymphoma-first-rituximab.json").read_text())
    good = _good_bodies()
    secrets = _secrets_from(good, [patient]) | {ACCESS_TOKEN}
    signer = Signer()
    results = Results()
    with (
        fhirserver.LiveFhir.from_bundle(patient) as ehr,
        fhirserver.LiveFhir.from_bundle(patient) as broken,
    ):
        broken.faults["AllergyIntolerance"] = fhirserver.status(500)
        clients = out / "clients.yaml"
        clients.write_text(signer.clients_yaml([ehr.base, broken.base]))
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        hash_key = "soak-" + uuid.uuid4().hex + uuid.uuid4().hex  # the store's, known here
        server = _start_server(args, out, clients, port, hash_key)
        try:
            _wait_ready(base, signer, server)
            print(f"soak: {args.minutes} min against {base}; output in {out}", flush=True)
            mix = Mix(good, ehr.base, broken.base, random.Random(args.seed))
            load_before = load_average()  # other processes' demand for the same CPUs
            started = time.monotonic()
            end = started + args.minutes * 60
            budget = threading.Semaphore(args.max_requests)
            threads = [
                threading.Thread(
                    target=_client_loop,
                    args=(base, mix, signer, results, started, end, budget),
                    daemon=True,
                )
                for _ in range(args.concurrency)
            ]
            threads.append(
                threading.Thread(
                    target=_sample_rss,
                    args=(server.pid, results, started, end, args.rss_every),
                    daemon=True,
                )
            )
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=args.minutes * 60 + 120)
            load_after = load_average()
        finally:
            stop(server, wait=30)
        fhir_calls = ehr.recorded() + broken.recorded()

    if any(c.headers.get("Authorization") != f"Bearer {ACCESS_TOKEN}" for c in fhir_calls):
        print("soak: a FHIR request came without the expected bearer token", file=sys.stderr)
    log_text = (out / "server.log").read_text(errors="replace")
    feedback = _stored_feedback(args.database_url, results.feedback_ok, hash_key)
    if isinstance(feedback, tuple):
        found, missing = feedback
        feedback_text: Any = {"answered_200": len(results.feedback_ok), "distinct_in_db": found,
                              "missing": missing}  # fmt: skip
    else:
        feedback_text = feedback
    report = _report(
        args,
        results,
        {
            "started": started_at,
            "database": args.database_url.split(":", 1)[0],
            "feedback": feedback_text,
            "leaks": _scan_logs(log_text, secrets),
            "log_bytes": len(log_text),
            "jwts": signer.issued,
            "load_average": f"{load_before} before, {load_after} at the end of the load",
        },
    )
    (out / "report.json").write_text(json.dumps(report, indent=2))
    text = _markdown(report)
    (out / "report.md").write_text(text)
    print(text)
    failures = []
    if report["5xx"]:
        failures.append(f"{report['5xx']} responses were 5xx")
    if report["unexpected"]:
        failures.append("unexpected statuses")
    if report["transport_errors"]:
        failures.append("transport errors")
    if not report["rss"]["flat"]:
        failures.append("RSS not flat")
    if report["log_leaks"]:
        failures.append("secrets or tracebacks in the server log")
    if isinstance(feedback, tuple) and feedback[1]:
        failures.append(f"{feedback[1]} feedback items answered 200 are not in the database")
    if not fhir_calls:
        failures.append("the FHIR fallback was never exercised")
    print("soak: " + ("FAILED: " + "; ".join(failures) if failures else "all checks passed"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
