"""CPU per request without gunicorn, sockets or concurrency: a steadier figure than a load run.

``.venv/bin/python -m bench.inprocess`` sends each workload's request through the benchmark
app's Flask test client, one at a time (same app, same settings, caller JWTs verified, store
on, a new session per request), and prints the process CPU time per request: the best of
five rounds, so other processes on the machine disturb it little. Workload 3 fetches from the
fake FHIR server, run in its own process with no delay (its CPU is not counted).
"""

from __future__ import annotations

import argparse
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import run
from bench.jwtgen import ALGORITHM, ALGORITHMS, Signer
from bench.loadgen import BodyTemplate
from bench.server import create

PUBLIC_URL = "http://bench.invalid"


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(requests: int, rounds: int, alg: str = ALGORITHM) -> dict[str, float]:
    """Best-of-``rounds`` CPU milliseconds per request, per workload."""
    folder = Path(tempfile.mkdtemp(prefix="cds-bench-inprocess-"))
    fake = subprocess.Popen(
        [sys.executable, "-m", "bench.fakefhir", "--port", "0", "--delay", "0"],
        cwd=run.ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert fake.stdout is not None
        fhir_base = fake.stdout.readline().split()[1]
        signer = Signer(alg)
        app = create(
            database_url=f"sqlite:///{folder / 'bench.sqlite3'}",
            clients_file=str(signer.clients_file(folder / "clients.yaml", [fhir_base])),
            public_url=PUBLIC_URL,
        )
        logging.getLogger().setLevel(logging.WARNING)  # the per-call INFO line is not measured
        bodies = run.prepare_bodies(folder, fhir_base)
        client = app.test_client()
        out: dict[str, float] = {}
        for w in run.WORKLOADS:
            template = BodyTemplate(bodies[w.key].read_bytes())
            needs_jwt = w.path.startswith("/cds-services")
            best = float("inf")
            for r in range(rounds + 1):  # round 0 warms up
                now = int(time.time())  # tokens are signed before the clock starts
                tokens = [signer.sign(PUBLIC_URL + w.path, now) for _ in range(requests)]
                began = cpu_seconds()
                for n in range(requests):
                    headers = {"Authorization": f"Bearer {tokens[n]}"} if needs_jwt else None
                    answer = client.post(
                        w.path,
                        data=template.render(r, n),
                        content_type="application/json",
                        headers=headers,
                    )
                    if answer.status_code != 200:
                        raise SystemExit(
                            f"{w.key}: HTTP {answer.status_code} {answer.data[:200]!r}"
                        )
                if r:
                    best = min(best, (cpu_seconds() - began) * 1000 / requests)
            out[w.key] = best
        return out
    finally:
        fake.terminate()
        fake.wait()
        if fake.stdout is not None:
            fake.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.inprocess", description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alg", choices=ALGORITHMS, default=ALGORITHM, help="callers' JWTs")
    args = parser.parse_args(argv)
    figures = measure(args.requests, args.rounds, args.alg)
    print(f"{'workload':34s} {'CPU ms/req (in process, best round)':>36s}")
    for w in run.WORKLOADS:
        print(f"{w.title:34s} {figures[w.key]:36.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
