"""RSS of one process before and after a burst of near-cap FHIR responses (run as a script).

``python -m tests.memburst [--no-trim] [--calls N] [--threads N] [--megabytes N]`` starts a
loopback FHIR server whose AllergyIntolerance search answers a valid Bundle of about
``--megabytes`` MiB (under ``FHIR_MAX_BYTES``, 10 MiB), builds the app (SQLite in a temporary
folder) and sends ``--calls`` order-sign calls that read allergies from it, ``--threads`` at a
time, then one more alone, each response closed as a WSGI server does. It prints one JSON
line: RSS (MiB, /proc/self/statm) after a warm-up call, the highest seen during the burst,
and after it; the heap trims done. ``--no-trim`` turns the trim off. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-trim", action="store_true")
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--megabytes", type=int, default=9)
    args = parser.parse_args()

    from cds_server.fhirdata import client as fhir_client
    from cds_server.web import app as app_module
    from tests import fhirserver as fs
    from tests.conftest import TOKEN, every_key, fake_resolve, load_fixture, load_request

    fhir_client.resolve_addresses = fake_resolve  # type: ignore[assignment]
    if args.no_trim:
        fhir_client.HEAP._trim = None
    server = fs.LiveFhir.from_bundle(load_fixture("patients/lymphoma-first-rituximab.json"))
    server.faults["AllergyIntolerance"] = fs.huge(args.megabytes)
    server.start()
    folder = tempfile.TemporaryDirectory()
    app = app_module.create_app(
        {
            "TESTING": True,
            "AUTH_REQUIRED": False,
            "DATABASE_URL": f"sqlite:///{folder.name}/cds.sqlite3",
            "FHIR_ALLOW_HTTP": "loopback",
            "FHIR_DEADLINE": 20.0,
            "FHIR_READ_TIMEOUT": 10.0,
        }
    )
    body = every_key(load_request("order-sign-rituximab"))
    body["prefetch"].pop("allergies")
    body["fhirServer"] = server.base
    body["fhirAuthorization"] = {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/*.read",
        "subject": "infusion-safety-cds",
    }
    statuses: list[int] = []

    def call(_: Any = None) -> None:
        resp = app.test_client().post("/cds-services/infusion-safety-sign", json=body)
        statuses.append(resp.status_code)
        resp.close()  # what a WSGI server does once the answer is sent

    call()
    time.sleep(0.2)
    baseline = rss_mib()
    peak = baseline
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss_mib())

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    with ThreadPoolExecutor(args.threads) as pool:
        list(pool.map(call, range(args.calls)))
    call()  # and one more, alone: the service keeps taking calls
    done.set()
    watcher.join()
    time.sleep(0.2)
    after = rss_mib()
    server.stop()
    folder.cleanup()
    print(
        json.dumps(
            {
                "baseline_mib": round(baseline, 1),
                "peak_mib": round(peak, 1),
                "after_mib": round(after, 1),
                "statuses": sorted(set(statuses)),
                "calls": len(statuses),
                "trims": fhir_client.HEAP.trims,
                "trim_available": fhir_client.HEAP.available,
            }
        )
    )


if __name__ == "__main__":
    main()
