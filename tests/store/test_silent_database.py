"""A database that is reachable but never answers: hook calls and feedback end within the deadline.

PostgreSQL is reached through ``tests/tcpproxy.PausableProxy``; ``pause()`` silences it the
way a frozen host or a network partition does (connections are accepted, nothing comes back).
With ``DATABASE_TIMEOUT`` at its default (1.5 s) the snooze/de-duplication read must fail open
(200 with the same cards), feedback must answer 503 ``store-unavailable``, both within the
deadline plus a margin for the rest of the call, and everything must work again once the
database answers. Wall-clock bounds, not benchmarks: they catch hangs (before this, a call
waited as long as the outage).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_server.config import DEFAULTS
from cds_server.store import get_store
from tests.conftest import load_request
from tests.loghygiene import assert_clean_logs
from tests.store.conftest import HASH_KEY
from tests.store.flows import call, overridden, post_feedback, topics, with_session
from tests.tcpproxy import PausableProxy

BUDGET = DEFAULTS["DATABASE_TIMEOUT"]
MARGIN = 1.5  # the rest of the call (parsing, rules, cards) on a loaded 2-core machine
SIGN = "order-sign-contained-medication"


@pytest.fixture
def proxy() -> Iterator[PausableProxy]:
    with PausableProxy(5432) as running:
        yield running


@pytest.fixture
def silent_app(make_app: Any, pg_url: str, proxy: PausableProxy) -> Iterator[Flask]:
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    app = make_app(DATABASE_URL=url, PATIENT_HASH_KEY=HASH_KEY, AUTH_REQUIRED=False, DEMO=True)
    yield app
    proxy.resume()
    get_store(app).close()


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn(*args)
    return result, time.monotonic() - started


def _sign(client: FlaskClient, body: dict[str, Any]) -> Any:
    return client.post("/cds-services/infusion-safety", json=with_session(body))


def test_silent_database_fails_open_and_feedback_is_503_within_the_deadline(
    silent_app: Flask, proxy: PausableProxy, caplog: pytest.LogCaptureFixture
) -> None:
    assert BUDGET <= 2
    client = silent_app.test_client()
    body = load_request(SIGN)
    expected = topics(call(client, with_session(body)))  # healthy: pooled connections exist
    assert expected
    assert get_store(silent_app).flush()
    assert post_feedback(client, overridden("card-x")).status_code == 200

    proxy.pause()
    # The same encounter: with the database readable the card would be held back as already
    # shown in this session; unreadable, every card is shown (fail open).
    figures = []
    for _ in range(3):  # pooled connections first, then new ones (connect through the proxy)
        resp, took = _timed(_sign, client, body)
        figures.append(took)
        assert resp.status_code == 200
        assert topics(resp.get_json()["cards"]) == expected  # unfiltered: every card shown
        assert took < BUDGET + MARGIN, f"order-sign took {took:.2f} s with the database silent"
    resp, took = _timed(post_feedback, client, overridden("card-y"))
    assert resp.status_code == 503, resp.get_data()
    assert resp.get_json()["issue"][0]["details"]["coding"][0]["code"] == "store-unavailable"
    assert took < BUDGET + MARGIN, f"feedback took {took:.2f} s with the database silent"
    figures.append(took)
    print("silent database: order-sign ×3, feedback:", ", ".join(f"{t:.2f} s" for t in figures))
    assert "history lookup failed (DeadlineExceeded)" in caplog.text
    assert body["context"]["patientId"] not in caplog.text
    assert_clean_logs(caplog)

    proxy.resume()
    # The database is read again: the card already shown in this encounter is held back...
    resp, took = _timed(_sign, client, body)
    assert resp.status_code == 200 and topics(resp.get_json()["cards"]) == []
    assert took < BUDGET + MARGIN
    # ...a new encounter gets it, and feedback is stored again.
    assert topics(call(client, with_session(body, encounter="enc-after-outage"))) == expected
    assert post_feedback(client, overridden("card-z")).status_code == 200


def test_concurrent_calls_all_end_within_the_deadline(
    silent_app: Flask, proxy: PausableProxy
) -> None:
    body = load_request(SIGN)
    client = silent_app.test_client()
    call(client, with_session(body))
    proxy.pause()
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def one() -> None:
        resp, took = _timed(_sign, silent_app.test_client(), body)
        with lock:
            results.append((resp.status_code, took))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 6
    assert all(status == 200 for status, _ in results), results
    assert max(took for _, took in results) < BUDGET + MARGIN + 1.0, results
    proxy.resume()
    assert _sign(client, body).status_code == 200


def test_database_deadlines_are_validated() -> None:
    from cds_server import config

    for key in ("DATABASE_TIMEOUT", "DATABASE_CONNECT_TIMEOUT", "DATABASE_REPORT_TIMEOUT"):
        for bad in (0, -1, True, "1", 10_000):
            with pytest.raises(config.ConfigError, match=key):
                config.load(test_config={key: bad})
