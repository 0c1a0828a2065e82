"""A small threaded FHIR server on loopback that answers every request after a fixed delay.

It serves the resources of a collection Bundle (``bench/data/fhir-store.json``) — one patient,
whatever patient id is asked for (the benchmark gives every call a new patient id) — and
supports what the service asks for: ``Type/id`` reads and ``Type?patient=…`` searches with
``_include=MedicationRequest:medication``, ``code`` (token), ``_sort=-date`` and ``_count``.
Answers are computed once per request shape and cached, so the server's own CPU stays small;
``GET /_stats`` returns how many FHIR requests it has answered.

Run alone: ``python -m bench.fakefhir --port 8099 --delay 0.1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

STORE = Path(__file__).resolve().parent / "data" / "fhir-store.json"
BASE_PATH = "/fhir"


class Store:
    """The resources, and the JSON answer of each URL (computed on first use)."""

    def __init__(self, resources: list[dict[str, Any]]):
        self.resources = resources
        self._answers: dict[str, tuple[int, bytes]] = {}
        self._lock = threading.Lock()
        self.count = 0

    @classmethod
    def load(cls, path: Path = STORE) -> Store:
        bundle = json.loads(path.read_text(encoding="utf-8"))
        return cls([e["resource"] for e in bundle.get("entry", [])])

    def answer(self, target: str) -> tuple[int, bytes]:
        shape = _shape(target)
        with self._lock:
            self.count += 1
            cached = self._answers.get(shape)
        if cached is None:
            status, body = self._compute(target)
            cached = (status, json.dumps(body, separators=(",", ":")).encode())
            with self._lock:
                self._answers[shape] = cached
        return cached

    def _compute(self, target: str) -> tuple[int, dict[str, Any]]:
        parts = urlsplit(target)
        tail = parts.path[len(BASE_PATH) :].strip("/")
        query = parse_qs(parts.query)
        rtype = tail.split("/")[0]
        if "/" in tail:
            rid = tail.split("/", 1)[1]
            for res in self.resources:
                if res["resourceType"] == rtype and (rtype == "Patient" or res.get("id") == rid):
                    return 200, res
            return 404, {"resourceType": "OperationOutcome", "issue": []}
        return 200, search(self.resources, rtype, query)


# The types whose ``medicationReference`` a ``Type:medication`` include follows.
_MEDICATION_USERS = frozenset({"MedicationRequest", "MedicationAdministration"})


def search(
    resources: list[dict[str, Any]], rtype: str, query: dict[str, list[str]]
) -> dict[str, Any]:
    """The searchset Bundle for ``rtype?query`` over ``resources`` (the parameters the service
    sends: ``code`` token, ``_sort=-date``, ``_count``, ``_include=MedicationRequest:medication``
    and ``_include=MedicationAdministration:medication``).

    Shared with the test suite's ``responses``-based fake (``tests/fakefhir.py``).
    """
    matches = [r for r in resources if r["resourceType"] == rtype]
    if "code" in query:
        code = query["code"][0].split("|")[-1]
        matches = [
            r
            for r in matches
            if any(c.get("code") == code for c in r.get("code", {}).get("coding", []))
        ]
    if query.get("_sort") == ["-date"]:
        matches.sort(key=lambda r: r.get("effectiveDateTime", ""), reverse=True)
    if "_count" in query:
        matches = matches[: int(query["_count"][0])]
    entries = [{"resource": r, "search": {"mode": "match"}} for r in matches]
    if query.get("_include") == [f"{rtype}:medication"] and rtype in _MEDICATION_USERS:
        wanted = {
            r.get("medicationReference", {}).get("reference", "").split("/")[-1] for r in matches
        }
        entries += [
            {"resource": r, "search": {"mode": "include"}}
            for r in resources
            if r["resourceType"] == "Medication" and r["id"] in wanted
        ]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    bundle["total"] = len(matches)
    if entries:
        bundle["entry"] = entries
    return bundle


def _shape(target: str) -> str:
    """The URL without its patient id: the store has one patient, whatever id is asked for."""
    parts = urlsplit(target)
    if parts.path.startswith(f"{BASE_PATH}/Patient/"):
        return f"{BASE_PATH}/Patient/*"
    query = sorted((k, v) for k, v in parse_qs(parts.query).items() if k != "patient")
    return f"{parts.path}?{query}"


class FakeFhirServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` with a deep accept queue, a store and a fixed delay."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], store: Store, delay: float):
        self.store = store
        self.delay = delay
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms ACK stall
    server: FakeFhirServer

    def do_GET(self) -> None:
        if self.path == "/_stats":
            self._send(200, json.dumps({"requests": self.server.store.count}).encode())
            return
        status, body = self.server.store.answer(self.path)
        time.sleep(self.server.delay)
        self._send(status, body)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve(port: int, delay: float, store_path: Path = STORE) -> FakeFhirServer:
    """Start the server on a background thread; ``port`` 0 picks a free port."""
    server = FakeFhirServer(("127.0.0.1", port), Store.load(store_path), delay)
    threading.Thread(target=server.serve_forever, name="fakefhir", daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.1, help="seconds per request")
    args = parser.parse_args()
    server = FakeFhirServer(("127.0.0.1", args.port), Store.load(), args.delay)
    print(f"ready http://127.0.0.1:{server.server_address[1]}{BASE_PATH}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
