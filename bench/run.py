"""The benchmark: gunicorn on loopback, four workloads at a fixed concurrency, one table.

``bench/run`` (or ``.venv/bin/python -m bench.run``) starts, on 127.0.0.1:

* the fake FHIR server (``bench/fakefhir.py``, its own process, fixed delay per request);
* gunicorn running ``bench.server:create()`` with the options of ``cds-server serve``
  (gthread workers, ``--workers`` × ``--threads``, app preloaded, access log on);

then, for each workload, warms up, drives it with ``wrk`` (or the Python generator) at
``--connections`` for ``--duration`` seconds, and reads the workers' CPU time (utime+stime
in ``/proc/<pid>/stat``) before and after and their peak RSS (``VmHWM``). Finally it times
``cds-server demo`` from launch until discovery answers. ``--smoke`` is the short version
the test suite runs: seconds long, every answer checked, exit status 1 on any error and
never on timing.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import fixture
from bench.jwtgen import ALGORITHM, ALGORITHMS, Signer
from bench.loadgen import BodyTemplate, Check, LoadResult, python_load, wrk_load, wrk_path
from cds_server.cli import SERVE_THREADS

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The demo keeps its database in the run's folder, not in the source tree's instance folder.
DEMO_ENV = {"CDS_PATIENT_HASH_KEY": "bench-demo-patient-hash-key-not-a-secret-0123"}

TARGET_P99_MS = 50.0
TARGET_FLOOR_RATIO = 0.5
TARGET_FETCH_RATIO = 1.5
TARGET_DEMO_S = 2.0
TARGET_RSS_MB = 200.0


@dataclass(frozen=True)
class Workload:
    key: str
    title: str
    path: str
    source: str  # file in bench/data


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "order-sign",
        "1 order-sign, full prefetch",
        "/cds-services/infusion-safety-sign",
        "order-sign.json",
    ),
    Workload(
        "patient-view",
        "2 patient-view, full prefetch",
        "/cds-services/infusion-risk-summary",
        "patient-view.json",
    ),
    Workload(
        "no-prefetch",
        "3 order-sign, no prefetch (FHIR)",
        "/cds-services/infusion-safety-sign",
        "order-sign-no-prefetch.json",
    ),
    Workload("floor", "4 floor (parse + fixed cards)", "/bench/floor", "order-sign.json"),
)


@dataclass
class Measured:
    """One workload's figures."""

    workload: str
    title: str
    load: LoadResult
    cpu_ms_per_request: float
    peak_rss_mb: float
    fhir_requests_per_call: int | None = None
    worker_cpu_split: tuple[float, ...] = ()  # each worker's share of the CPU time
    runs: tuple[Measured, ...] = ()  # with --repeat: each measured run, in order
    set_aside: tuple[Measured, ...] = ()  # runs not counted: one worker did the work (balanced)


# gunicorn hands each new connection to whichever worker accepts first, and wrk keeps its
# connections for the whole run: now and then one worker gets all of them (CPU split 0/100)
# and the run measures one worker, at half the throughput, not the two of the targets. Such
# a run is listed, not counted, and run again (at most REBALANCE_LIMIT times per workload).
BALANCE_SHARE = 0.75
REBALANCE_LIMIT = 3


def balanced(m: Measured) -> bool:
    """Did every worker do a fair part of the run (no worker above ``BALANCE_SHARE``)?"""
    return len(m.worker_cpu_split) < 2 or max(m.worker_cpu_split) <= BALANCE_SHARE


def combine(runs: Sequence[Measured]) -> Measured:
    """One workload's figures over repeated runs (``--repeat``): the median of each run's
    latency percentiles and CPU per request, throughput over all runs together, the highest
    RSS; each run is kept in ``runs``. A shared machine disturbs some runs more than others,
    and the median is not moved by one disturbed run."""
    if len(runs) == 1:
        return runs[0]
    loads = [m.load for m in runs]
    requests = sum(lr.requests for lr in loads)
    errors: dict[str, int] = {}
    for lr in loads:
        for kind, count in lr.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    load = LoadResult(
        generator=loads[0].generator,
        requests=requests,
        duration=sum(lr.duration for lr in loads),
        p50=statistics.median(lr.p50 for lr in loads),
        p95=statistics.median(lr.p95 for lr in loads),
        p99=statistics.median(lr.p99 for lr in loads),
        mean=sum(lr.mean * lr.requests for lr in loads) / requests if requests else 0.0,
        max=max(lr.max for lr in loads),
        errors=errors,
    )
    splits = [m.worker_cpu_split for m in runs if m.worker_cpu_split]
    return Measured(
        workload=runs[0].workload,
        title=runs[0].title,
        load=load,
        cpu_ms_per_request=statistics.median(m.cpu_ms_per_request for m in runs),
        peak_rss_mb=max(m.peak_rss_mb for m in runs),
        fhir_requests_per_call=runs[0].fhir_requests_per_call,
        worker_cpu_split=tuple(round(statistics.fmean(x), 2) for x in zip(*splits, strict=True)),
        runs=tuple(runs),
    )


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def http_get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def http_post(
    port: int, path: str, body: bytes, token: str | None = None, timeout: float = 30.0
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_until_answers(
    port: int,
    path: str,
    proc: subprocess.Popen[Any],
    limit: float,
    statuses: range = range(200, 201),
) -> float:
    """Seconds until ``GET path`` answers one of ``statuses`` (200; ``RuntimeError`` if the
    process dies first)."""
    began = time.perf_counter()
    while time.perf_counter() - began < limit:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_get(port, path, timeout=1.0)[0] in statuses:
                return time.perf_counter() - began
        time.sleep(0.005)
    raise RuntimeError(f"nothing answered {path} on port {port} within {limit:.0f} s")


def stop(proc: subprocess.Popen[Any], wait: float = 15) -> None:
    """Terminate a process we started, by its PID; kill it if it does not stop in ``wait`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def fake_fhir(delay: float, log: Path) -> Iterator[tuple[str, int]]:
    """The fake FHIR server in its own process: yields (base URL, port)."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.fakefhir", "--port", "0", "--delay", str(delay)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("ready "):
            raise RuntimeError(f"the fake FHIR server did not start (see {log})")
        base = line.removeprefix("ready ")
        yield base, int(base.rsplit(":", 1)[1].split("/")[0])
    finally:
        stop(proc)
        if proc.stdout is not None:
            proc.stdout.close()


@contextlib.contextmanager
def gunicorn(
    port: int, workers: int, threads: int, logdir: Path, app_args: dict[str, str]
) -> Iterator[subprocess.Popen[Any]]:
    """gunicorn with the options of ``cds-server serve``, running the benchmark app."""
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(ROOT),
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--timeout",
        "30",
        "--graceful-timeout",
        "10",
        "--preload",
        "--access-logfile",
        str(logdir / "access.log"),
        "--error-logfile",
        str(logdir / "error.log"),
        "--log-level",
        "info",
        "--name",
        "cds-server-bench",
    ]
    if "--no-control-socket" in _gunicorn_help():
        cmd.append("--no-control-socket")
    call = ", ".join(f"{name}={value!r}" for name, value in app_args.items())
    cmd.append(f"bench.server:create({call})")
    with (logdir / "gunicorn.out").open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        # With authentication on, discovery answers 401 without a JWT: any answer means ready.
        wait_until_answers(port, "/cds-services", proc, limit=60, statuses=range(200, 500))
        deadline = time.monotonic() + 20
        while len(worker_pids(proc.pid)) < workers and time.monotonic() < deadline:
            time.sleep(0.05)
        yield proc
    finally:
        stop(proc)


def database_url(args: argparse.Namespace, logdir: Path) -> str:
    """``--database-url``, else a fresh SQLite file in the run's folder."""
    return args.database_url or f"sqlite:///{logdir / 'bench.sqlite3'}"


def _gunicorn_help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, check=False
    )
    return out.stdout


def worker_pids(master: int) -> list[int]:
    """The children of the gunicorn master (its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == master:
            pids.append(int(entry.name))
    return sorted(pids)


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes, in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / CLK_TCK


def peak_rss_mb(pids: list[int]) -> float:
    """The largest VmHWM (peak resident set) among the processes, in MB."""
    peak = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return peak / 1024


def demo_ready_seconds(port: int, logdir: Path) -> float:
    """Seconds from launching ``cds-server demo`` until it answers discovery."""
    exe = Path(sys.executable).parent / "cds-server"
    cmd = [str(exe)] if exe.exists() else [shutil.which("cds-server") or "cds-server"]
    with (logdir / "demo.log").open("a") as log:
        began = time.perf_counter()
        proc = subprocess.Popen(
            [*cmd, "demo", "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **DEMO_ENV,
                "CDS_DATABASE_URL": f"sqlite:///{logdir / 'demo.sqlite3'}",
            },
        )
    try:
        wait_until_answers(port, "/cds-services", proc, limit=60)
        return time.perf_counter() - began
    finally:
        stop(proc)


# -- bodies and checks --------------------------------------------------------------------


def prepare_bodies(folder: Path, fhir_base: str) -> dict[str, Path]:
    """Compact body templates (as EHRs send them); workload 3 names the fake FHIR server.

    ``hookInstance``, ``encounterId`` and ``patientId`` become placeholders that the load
    generators fill with new values for every request: each call is a new ordering session
    of a new patient, so the service's card log and session look-ups work as in production
    (one body replayed unchanged would be one ever-growing session of one patient).
    """
    out = {}
    for w in WORKLOADS:
        data = json.loads((DATA / w.source).read_text(encoding="utf-8"))
        if data.get("fhirServer") == fixture.FAKE_FHIR_PLACEHOLDER:
            data["fhirServer"] = fhir_base
        data["hookInstance"] = "@@HOOK@@"
        data["context"]["encounterId"] = "@@ENC@@"
        data["context"]["patientId"] = "@@PAT@@"
        raw = json.dumps(data, separators=(",", ":")).encode()
        assert all(raw.count(f"@@{n}@@".encode()) == 1 for n in ("HOOK", "ENC", "PAT"))
        path = folder / f"{w.key}.json"
        path.write_bytes(raw)
        out[w.key] = path
    return out


def card_signature(raw: bytes) -> list[tuple[str, str, int]]:
    """What must not change between two answers: each card's indicator, summary, suggestions."""
    cards = json.loads(raw)["cards"]
    return sorted((c["indicator"], c["summary"], len(c.get("suggestions", []))) for c in cards)


def checker(expected: list[tuple[str, str, int]]) -> Check:
    def check(status: int, raw: bytes) -> str | None:
        try:
            got = card_signature(raw)
        except (ValueError, KeyError, TypeError):
            return "answer is not a card list"
        return None if got == expected else "cards differ from the first answer"

    return check


# -- the run ------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    wrk = wrk_path()
    wrk_version = ""
    if wrk:
        out = subprocess.run([wrk, "--version"], capture_output=True, text=True, check=False)
        wrk_version = (
            (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else ""
        )
    import gunicorn

    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "wrk": wrk_version,
        "kernel": platform.release(),
    }


def load_average() -> str:
    """The 1-minute load average: other processes' demand for the same CPUs."""
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().split()[0]
    return "?"


def run(args: argparse.Namespace, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every workload; return the figures (and ``problems``: errors, never timings)."""
    say(HEADER)
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if wrk_path() else "python"
        if loadgen == "python" and not args.smoke:
            say(
                "NOTE: wrk not found (Debian/Ubuntu: sudo apt-get install -y wrk); using the "
                "Python load generator, which competes with the server for CPU."
            )
    if loadgen == "wrk" and not wrk_path():
        raise SystemExit("wrk is not installed: sudo apt-get install -y wrk (or --loadgen python)")
    problems: list[str] = []
    results: list[Measured] = []
    load_before = load_average()
    logdir = args.logdir or Path(tempfile.mkdtemp(prefix="cds-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    public_url = f"http://{HOST}:{port}"
    signer = Signer(args.alg) if args.auth else None
    with contextlib.ExitStack() as stack:
        fhir_base, fhir_port = stack.enter_context(fake_fhir(args.delay, logdir / "fakefhir.log"))
        app_args = {"database_url": database_url(args, logdir)}
        if signer is not None:
            clients = signer.clients_file(logdir / "trusted-clients.yaml", [fhir_base])
            app_args |= {"clients_file": str(clients), "public_url": public_url}
        master = stack.enter_context(gunicorn(port, args.workers, args.threads, logdir, app_args))
        bodies = prepare_bodies(logdir, fhir_base)
        pids = worker_pids(master.pid)
        say(
            f"gunicorn pid {master.pid}, workers {pids}, port {port}; fake FHIR {fhir_base} "
            f"(delay {args.delay * 1000:.0f} ms); logs in {logdir}"
        )
        signatures: dict[str, list[tuple[str, str, int]]] = {}
        salt = 0  # each load run fills the placeholders with values of its own
        for w in WORKLOADS:
            if args.only and w.key not in args.only:
                continue
            body = BodyTemplate(bodies[w.key].read_bytes())
            fhir0 = _fhir_count(fhir_port)
            needs_jwt = signer is not None and w.path.startswith("/cds-services")
            first_token = signer.sign(public_url + w.path, int(time.time())) if needs_jwt else None
            status, raw = http_post(port, w.path, body.render(0xFFF, 0), first_token)
            fhir_calls = _fhir_count(fhir_port) - fhir0  # FHIR requests of one hook call
            if status != 200:
                problems.append(f"{w.key}: first answer HTTP {status}: {raw[:300]!r}")
                continue
            signatures[w.key] = card_signature(raw)
            if not signatures[w.key]:
                say(f"NOTE: {w.key} answers no cards")
            rate = 300.0 if args.smoke else 1000.0  # req/s assumed until a warm-up measures it
            if args.warmup > 0:
                salt += 1
                tokens = _tokens(
                    signer if needs_jwt else None,
                    public_url + w.path,
                    rate * args.warmup,
                    logdir / f"tokens-{salt}.txt",
                )
                warm = _load(
                    loadgen,
                    port,
                    w,
                    bodies[w.key],
                    body,
                    args.connections,
                    args.warmup,
                    None,
                    salt,
                    tokens,
                )
                rate = warm.throughput
            runs: list[Measured] = []
            set_aside: list[Measured] = []
            for repeat in range(args.repeat):
                while True:
                    cpu0 = cpu_seconds(pids)
                    per0 = [cpu_seconds([p]) for p in pids]
                    check = checker(signatures[w.key]) if args.smoke else None
                    salt += 1
                    tokens = _tokens(
                        signer if needs_jwt else None,
                        public_url + w.path,
                        2 * rate * args.duration,
                        logdir / f"tokens-{salt}.txt",
                    )
                    load = _load(
                        loadgen,
                        port,
                        w,
                        bodies[w.key],
                        body,
                        args.connections,
                        args.duration,
                        check,
                        salt,
                        tokens,
                    )
                    cpu = cpu_seconds(pids) - cpu0
                    per = [cpu_seconds([p]) - c0 for p, c0 in zip(pids, per0, strict=True)]
                    one = Measured(
                        workload=w.key,
                        title=w.title,
                        load=load,
                        cpu_ms_per_request=cpu * 1000 / load.requests if load.requests else 0.0,
                        peak_rss_mb=peak_rss_mb(pids),
                        fhir_requests_per_call=fhir_calls if w.key == "no-prefetch" else None,
                        worker_cpu_split=tuple(round(x / cpu, 2) if cpu else 0.0 for x in per),
                    )
                    if load.error_count:
                        problems.append(
                            f"{w.key}: {load.error_count} error(s) under load: {load.errors}"
                        )
                    if load.requests == 0:
                        problems.append(f"{w.key}: no request completed")
                    if args.smoke or balanced(one) or len(set_aside) >= REBALANCE_LIMIT:
                        break
                    set_aside.append(one)
                    say(_row(one, "  unbalanced: not counted"))
                runs.append(one)
                if args.repeat > 1:
                    say(_row(one, f"  run {repeat + 1}/{args.repeat}"))
            m = replace(combine(runs), set_aside=tuple(set_aside))
            results.append(m)
            say(_row(m, f"{m.title} (median of {len(runs)})" if len(runs) > 1 else None))
        for a, b in (("order-sign", "no-prefetch"), ("order-sign", "floor")):
            if a in signatures and b in signatures and signatures[a] != signatures[b]:
                problems.append(f"{b}: cards differ from {a} (same patient, same data)")
        if worker_pids(master.pid) != pids:
            problems.append("a gunicorn worker died or was restarted during the run")
    demo = []
    for _ in range(args.demo_runs):
        try:
            demo.append(demo_ready_seconds(free_port(), logdir))
        except RuntimeError as exc:
            problems.append(f"demo: {exc}")
    return {
        "machine": machine(),
        "settings": {
            "workers": args.workers,
            "threads": args.threads,
            "connections": args.connections,
            "duration_s": args.duration,
            "repeat": args.repeat,
            "warmup_s": args.warmup,
            "fhir_delay_ms": args.delay * 1000,
            "loadgen": loadgen,
            "auth": args.auth,
            "alg": args.alg,
            "database": args.database_url.split(":", 1)[0] if args.database_url else "sqlite file",
        },
        "results": results,
        "demo_ready_s": demo,
        "problems": problems,
        "logs": str(logdir),
        "load_average": f"{load_before} before, {load_average()} after",
    }


def _fhir_count(port: int) -> int:
    return int(json.loads(http_get(port, "/_stats")[1])["requests"])


def _load(
    loadgen: str,
    port: int,
    w: Workload,
    body_file: Path,
    body: BodyTemplate,
    connections: int,
    duration: float,
    check: Check | None,
    salt: int,
    tokens: Path | None,
) -> LoadResult:
    if loadgen == "wrk":
        return wrk_load(
            HOST,
            port,
            w.path,
            body_file,
            connections=connections,
            duration=duration,
            salt=salt,
            tokens_file=tokens,
        )
    return python_load(
        HOST,
        port,
        w.path,
        body,
        connections=connections,
        duration=duration,
        check=check,
        salt=salt,
        tokens=tokens.read_text().split() if tokens else None,
    )


def _tokens(signer: Signer | None, aud: str, expected: float, path: Path) -> Path | None:
    """A file of one JWT per request to come (twice the expected count, at least 500)."""
    if signer is None:
        return None
    return signer.tokens(aud, max(500, int(2 * expected)), path)


# -- output -------------------------------------------------------------------------------

HEADER = (
    f"{'workload':34s} {'req/s':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} "
    f"{'CPU ms/req':>10s} {'peak RSS/worker MB':>18s} {'errors':>6s}  CPU split by worker"
)


def _row(m: Measured, label: str | None = None) -> str:
    lr = m.load
    return (
        f"{label or m.title:34s} {lr.throughput:8.1f} {lr.p50:8.1f} {lr.p95:8.1f} {lr.p99:8.1f} "
        f"{m.cpu_ms_per_request:10.2f} {m.peak_rss_mb:18.1f} {lr.error_count:6d}  "
        + "/".join(f"{x:.0%}" for x in m.worker_cpu_split)
    )


def report(out: dict[str, Any]) -> str:
    """The table, the ratios and the targets, as text."""
    mach, st = out["machine"], out["settings"]
    lines = [
        f"machine: {mach['nproc']} CPU(s), {mach['cpu']}, Python {mach['python']}, "
        f"gunicorn {mach['gunicorn']}, kernel {mach['kernel']}; "
        f"load average {out['load_average']} the run",
        f"settings: {st['workers']} workers × {st['threads']} threads (gthread), "
        f"concurrency {st['connections']}, "
        + (f"{st['repeat']} × " if st.get("repeat", 1) > 1 else "")
        + f"{st['duration_s']:g} s per workload after "
        f"{st['warmup_s']:g} s warm-up, fake FHIR delay {st['fhir_delay_ms']:.0f} ms, "
        f"caller JWTs {st.get('alg', ALGORITHM) + ' verified' if st['auth'] else 'off'}, "
        f"store {st['database']}, "
        f"load generator {st['loadgen']}" + (f" ({mach['wrk']})" if st["loadgen"] == "wrk" else ""),
        "",
        HEADER,
        *(_row(m) for m in out["results"]),
        "",
    ]
    for m in out["results"]:
        if m.runs:
            lines.append(
                f"{m.title}, each of {len(m.runs)} runs: req/s "
                + ", ".join(f"{r.load.throughput:.0f}" for r in m.runs)
                + "; p99 ms "
                + ", ".join(f"{r.load.p99:.1f}" for r in m.runs)
            )
        if m.set_aside:
            lines.append(
                f"{m.title}: {len(m.set_aside)} run(s) not counted, one worker doing the work "
                "(CPU split "
                + ", ".join("/".join(f"{x:.0%}" for x in r.worker_cpu_split) for r in m.set_aside)
                + "; req/s "
                + ", ".join(f"{r.load.throughput:.0f}" for r in m.set_aside)
                + "): run again"
            )
    if any(m.runs for m in out["results"]):
        lines.append("(table: median of the runs' percentiles and CPU, throughput over all runs)")
    if any(m.runs or m.set_aside for m in out["results"]):
        lines.append("")
    by = {m.workload: m for m in out["results"]}
    checks: list[tuple[str, bool]] = []
    if "order-sign" in by and "floor" in by and by["floor"].load.throughput:
        ratio = by["order-sign"].load.throughput / by["floor"].load.throughput
        lines.append(f"workload 1 throughput ÷ floor throughput: {ratio:.2f}")
        checks.append(
            (
                f"workload 1 throughput ≥ {TARGET_FLOOR_RATIO:.0%} of the floor",
                ratio >= TARGET_FLOOR_RATIO,
            )
        )
    if "order-sign" in by:
        p99 = by["order-sign"].load.p99
        checks.append((f"workload 1 p99 < {TARGET_P99_MS:.0f} ms ({p99:.1f})", p99 < TARGET_P99_MS))
    if "no-prefetch" in by:
        m = by["no-prefetch"]
        delay = st["fhir_delay_ms"]
        ratio = m.load.p50 / delay
        lines.append(
            f"workload 3 p50 ÷ fake FHIR delay: {ratio:.2f} "
            f"({m.fhir_requests_per_call} FHIR requests per hook call)"
        )
        checks.append(
            (f"workload 3 p50 < {TARGET_FETCH_RATIO} × delay", ratio < TARGET_FETCH_RATIO)
        )
    if out["demo_ready_s"]:
        ready = sorted(out["demo_ready_s"])
        median = ready[len(ready) // 2]
        lines.append(
            "cds-server demo ready (launch → discovery answers): "
            + ", ".join(f"{x:.2f} s" for x in ready)
            + f" (median {median:.2f} s)"
        )
        checks.append((f"demo ready < {TARGET_DEMO_S:g} s", median < TARGET_DEMO_S))
    if out["results"]:
        rss = max(m.peak_rss_mb for m in out["results"])
        checks.append(
            (f"peak RSS per worker < {TARGET_RSS_MB:.0f} MB ({rss:.0f})", rss < TARGET_RSS_MB)
        )
    lines.append("")
    lines.extend(f"target {'met ' if ok else 'MISSED'}  {name}" for name, ok in checks)
    if out["problems"]:
        lines.append("")
        lines.extend(f"ERROR: {p}" for p in out["problems"])
    return "\n".join(lines)


def _json_measured(m: Measured) -> dict[str, Any]:
    return {
        **asdict(m),
        "load": {**asdict(m.load), "throughput": m.load.throughput},
        "runs": [_json_measured(r) for r in m.runs],
        "set_aside": [_json_measured(r) for r in m.set_aside],
    }


def to_json(out: dict[str, Any]) -> dict[str, Any]:
    data = dict(out)
    data["results"] = [_json_measured(m) for m in out["results"]]
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description="Benchmark the CDS service.")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per workload")
    p.add_argument("--connections", type=int, default=8, help="concurrency (default 8)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument(
        "--threads", type=int, default=SERVE_THREADS, help="threads per worker (as serve)"
    )
    p.add_argument("--delay", type=float, default=0.1, help="fake FHIR delay, seconds")
    p.add_argument("--loadgen", choices=("auto", "wrk", "python"), default="auto")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measured runs per workload; the table shows their medians and lists each run",
    )
    p.add_argument("--demo-runs", type=int, default=3)
    p.add_argument("--only", nargs="*", choices=[w.key for w in WORKLOADS])
    p.add_argument("--json", type=Path, help="also write the figures to this file")
    p.add_argument("--logdir", type=Path, help="server logs (default: a new temporary folder)")
    p.add_argument(
        "--database-url",
        help="the service's database (default: a fresh SQLite file in --logdir)",
    )
    p.add_argument(
        "--no-auth",
        dest="auth",
        action="store_false",
        help="no caller authentication (default: a signed JWT per request, as in production)",
    )
    p.add_argument(
        "--alg",
        choices=ALGORITHMS,
        default=ALGORITHM,
        help=f"the callers' JWT algorithm (default {ALGORITHM}, Epic's default; the CDS Hooks "
        "Sandbox signs ES384)",
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="seconds-long run, Python generator, every answer checked; fails only on errors",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.warmup, args.delay = 1.0, 0.0, 0.02
        args.loadgen, args.demo_runs = "python", 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run(args, say=lambda s: print(s, flush=True))
    print()
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(to_json(out), indent=2) + "\n")
    return 1 if out["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
