"""Many parallel feedback POSTs from several processes: every item stored exactly once; and
SIGKILL of a real server (gunicorn, gthread workers) during a burst loses no POST answered 200.
Both on SQLite (WAL, synchronous=FULL) and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from tests.store.conftest import HASH_KEY, rows
from tests.store.flows import accepted, overridden
from tests.store.workers import post_all_feedback

PROCESSES = 4
ITEMS = 60


def test_parallel_feedback_from_several_processes_is_stored_exactly_once(
    db_url: str, raw: sa.Engine, cards_dir: Any
) -> None:
    when = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
    items = [
        accepted(f"card-{n}", f"s-{n}", when=when)
        if n % 2
        else overridden(f"card-{n}", "not-applicable", when=when)
        for n in range(ITEMS)
    ]
    # Exactly-once under contention, not latency: the processes migrate the empty database
    # while the others post, and a lock wait past the default 1.5 s deadline would answer 503
    # (correct, the client retries; tests/store/test_silent_database.py covers that bound). A
    # transaction PostgreSQL aborts as one of two waiting on each other also answers 503: the
    # workers retry a 503 as an EHR would, and every batch must end stored (200), once.
    settings = {"DATABASE_URL": db_url, "PATIENT_HASH_KEY": HASH_KEY, "DATABASE_TIMEOUT": 30.0}
    if cards_dir:
        settings["CARDS_DIR"] = str(cards_dir)
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [
        ctx.Process(target=post_all_feedback, args=(settings, items, seed, barrier, out))
        for seed in range(PROCESSES)  # every process also migrates the empty database
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    statuses = [s for r in results for s in r]
    assert statuses and set(statuses) == {200}
    stored = rows(raw, "feedback")
    assert len(stored) == ITEMS
    assert sorted(r["card_uuid"] for r in stored) == sorted(f"card-{n}" for n in range(ITEMS))
    assert len({r["item_key"] for r in stored}) == ITEMS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{base}/cds-services", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or the workers are still loading the knowledge
        time.sleep(0.2)
    raise AssertionError("server did not start:\n" + log.read_text()[-3000:])


def test_sigkill_during_a_feedback_burst_loses_nothing_answered_200(
    db_url: str, raw: sa.Engine, tmp_path: Path, cards_dir: Any
) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CDS_DATABASE_URL": db_url,
        "CDS_PATIENT_HASH_KEY": HASH_KEY,
        "CDS_AUTH_REQUIRED": "false",
        "CDS_LOG_LEVEL": "WARNING",
    }
    if cards_dir:
        env["CDS_CARDS_DIR"] = f'"{cards_dir}"'
    log = tmp_path / "server.log"
    command = [
        *(sys.executable, "-m", "gunicorn", "--worker-class", "gthread"),
        *("--workers", "2", "--threads", "4", "--bind", f"127.0.0.1:{port}"),
        *("--log-level", "warning", "cds_server.web.app:create_app()"),
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            command, env=env, stdout=sink, stderr=sink, start_new_session=True, cwd=tmp_path
        )
    try:
        _wait_ready(base, proc, log)
        acked: list[str] = []
        failed: list[str] = []
        lock = threading.Lock()
        stop = threading.Event()

        def burst(worker: int) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                card = f"crash-{worker}-{n}"
                n += 1
                body = {"feedback": [overridden(card, "not-applicable")]}
                try:
                    resp = session.post(
                        f"{base}/cds-services/infusion-safety/feedback", json=body, timeout=10
                    )
                except requests.RequestException:
                    with lock:
                        failed.append(card)
                    return  # the server is gone
                if resp.status_code == 200:
                    with lock:
                        acked.append(card)

        threads = [threading.Thread(target=burst, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while len(acked) < 150 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)  # master and workers, mid-burst
        proc.wait(timeout=10)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert len(acked) >= 150, log.read_text()[-3000:]
    assert failed, "the server was killed after the burst, not during it"
    stored = {r["card_uuid"] for r in rows(raw, "feedback")}
    print(f"answered 200: {len(acked)}, cut off: {len(failed)}, stored: {len(stored)}")
    lost = sorted(set(acked) - stored)
    assert lost == [], f"{len(lost)} feedback POSTs answered 200 are missing"
