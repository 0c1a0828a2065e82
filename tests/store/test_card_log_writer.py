"""The background card-log writer: batching, failures, a full queue, and what stays visible
(session de-duplication and feedback) before its rows are committed."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from cds_server import pipeline
from cds_server.knowledge.model import KnowledgeBase
from cds_server.store import Store, cardlog, writer
from cds_server.store.engine import make_engine
from cds_server.store.writer import CardLogWriter
from tests.conftest import load_request
from tests.store.conftest import HASH_KEY, rows
from tests.store.flows import LATER_RITUXIMAB, overridden, scenario, with_session


class Gate:
    """A write function that records batches and can be held closed."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def __call__(self, batch: Sequence[Any]) -> int:
        self.entered.set()
        assert self.open.wait(10)
        self.batches.append(list(batch))
        return len(batch)


def test_rows_are_written_after_submit_and_flush_waits_for_them() -> None:
    gate = Gate()
    w = CardLogWriter(gate)
    assert w.submit([{"n": 1}, {"n": 2}])
    assert w.flush(5)
    assert gate.batches == [[{"n": 1}, {"n": 2}]]
    assert w.pending_rows() == []
    assert w.flush(0)  # nothing queued: true at once


def test_rows_submitted_during_a_write_share_the_next_commit() -> None:
    gate = Gate()
    gate.open.clear()
    w = CardLogWriter(gate)
    w.submit([{"n": 1}])
    assert gate.entered.wait(5)  # the first batch is being written (held)
    for n in range(2, 6):
        w.submit([{"n": n}])
    assert [r["n"] for r in w.pending_rows()] == [1, 2, 3, 4, 5]  # in flight + queued
    assert not w.flush(0.05)
    gate.open.set()
    assert w.flush(5)
    assert [[r["n"] for r in b] for b in gate.batches] == [[1], [2, 3, 4, 5]]


def test_a_failed_write_is_logged_and_the_writer_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky(batch: Sequence[Any]) -> int:
        calls.append(len(batch))
        if len(calls) == 1:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))
        return len(batch)

    w = CardLogWriter(flaky)
    w.submit([{"secret": "pat-123"}])
    assert w.flush(5)
    w.submit([{"n": 2}])
    assert w.flush(5)
    assert calls == [1, 1]
    assert "card log write failed (OperationalError): 1 row(s)" in caplog.text
    assert "pat-123" not in caplog.text


def test_a_full_queue_drops_new_rows_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    gate.open.clear()
    w = CardLogWriter(gate, max_pending=3)
    assert w.submit([{"n": 1}, {"n": 2}])
    assert gate.entered.wait(5)
    assert not w.submit([{"n": 3}, {"n": 4}])  # 2 + 2 > 3
    assert w.submit([{"n": 5}])
    assert w.dropped == 2
    assert "card log queue full: 2 row(s) dropped" in caplog.text
    gate.open.set()
    assert w.flush(5)
    assert [r["n"] for b in gate.batches for r in b] == [1, 2, 5]


def test_a_forked_child_starts_its_own_thread_without_the_parents_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = Gate()
    gate.open.clear()
    w = CardLogWriter(gate)
    w.submit([{"n": "parent"}])
    assert gate.entered.wait(5)
    real = writer.os.getpid()
    monkeypatch.setattr(writer.os, "getpid", lambda: real + 1)  # as seen after a fork
    w.submit([{"n": "child"}])
    assert [r["n"] for r in w.pending_rows()] == ["child"]
    gate.open.set()
    assert w.flush(5)
    assert ["child"] in [[r["n"] for r in b] for b in gate.batches]


# -- with a real database (SQLite file and PostgreSQL) -----------------------------------


@pytest.fixture
def held_store(db_url: str, store_app: Any) -> Iterator[tuple[Store, Gate]]:
    """A store on the migrated database whose card-log writes wait for ``gate.open``."""
    engine = make_engine(db_url)
    gate = Gate()

    def write(batch: Sequence[Any]) -> int:
        gate(batch)
        return cardlog.write_rows(engine, batch)

    store = Store(
        engine=engine,
        key=HASH_KEY.encode(),
        dedup_window=timedelta(minutes=60),
        writer=CardLogWriter(write),
    )
    yield store, gate
    gate.open.set()
    store.close()


def test_session_dedup_sees_cards_not_yet_committed(
    held_store: tuple[Store, Gate], kb: KnowledgeBase, raw: sa.Engine
) -> None:
    store, gate = held_store
    gate.open.clear()
    now = datetime.now(UTC)
    select = with_session(load_request("order-sign-rituximab"), hook="order-select")
    first = pipeline.run(select, service_id="infusion-safety", kb=kb, now=now, history=store)
    assert len(first.issued) == 1
    assert store.log_cards(first.situation.call, first.issued, issued_at=now, knowledge_version="t")
    assert gate.entered.wait(5)
    assert rows(raw, "card_log") == []  # not committed yet
    sign = with_session(select, hook="order-sign", instance=select["hookInstance"])
    later = now + timedelta(seconds=5)
    second = pipeline.run(sign, service_id="infusion-safety", kb=kb, now=later, history=store)
    assert second.response["cards"] == []  # the same card in the same session: held back
    assert [s.why for s in second.suppressed] == ["repeat-in-session"]
    other = with_session(sign, patient="pat-someone-else")
    third = pipeline.run(other, service_id="infusion-safety", kb=kb, now=later, history=store)
    assert len(third.response["cards"]) == 1  # another patient's session is not affected
    gate.open.set()
    assert store.flush()
    assert [r["card_uuid"] for r in rows(raw, "card_log")] == [first.issued[0].uuid]


def test_feedback_waits_for_its_card_to_be_logged(
    held_store: tuple[Store, Gate], kb: KnowledgeBase, raw: sa.Engine
) -> None:
    store, gate = held_store
    gate.open.clear()
    now = datetime.now(UTC)
    result = pipeline.run(scenario(LATER_RITUXIMAB), service_id="infusion-safety", kb=kb, now=now)
    store.log_cards(result.situation.call, result.issued, issued_at=now, knowledge_version="t")
    threading.Timer(0.2, gate.open.set).start()  # the write completes while feedback waits
    began = time.monotonic()
    stored = store.record_feedback(
        "infusion-safety",
        [overridden(result.issued[0].uuid, "previously-tolerated", when=now)],
        policy=kb.policy,
        received_at=now + timedelta(seconds=30),
    )
    assert time.monotonic() - began >= 0.15
    assert (stored.stored, stored.unknown_cards, stored.snoozes) == (1, 0, 1)
    assert [r["known_card"] for r in rows(raw, "feedback")] in ([True], [1])


def test_rows_gather_for_the_linger_and_flush_does_not_wait_for_it() -> None:
    gate = Gate()
    w = CardLogWriter(gate, linger=30.0)
    for n in range(3):
        w.submit([{"n": n}])
    assert gate.batches == []  # still gathering
    began = time.monotonic()
    assert w.flush(10)
    assert time.monotonic() - began < 10  # the flush cut the 30 s linger short
    assert [[r["n"] for r in b] for b in gate.batches] == [[0, 1, 2]]  # one commit for all


def test_the_linger_setting_is_validated(make_app: Any) -> None:
    from cds_server.config import ConfigError

    for bad in (-1, 6, "0.2", True):
        with pytest.raises(ConfigError, match="CARD_LOG_LINGER_SECONDS"):
            make_app(CARD_LOG_LINGER_SECONDS=bad)
