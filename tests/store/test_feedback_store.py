"""Feedback is stored idempotently and durably; the card log holds no patient identifiers."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_server.store import get_store
from cds_server.store.feedback import item_key
from tests.conftest import load_request
from tests.store.conftest import HASH_KEY, as_utc, rows
from tests.store.flows import accepted, call, card_for, overridden, post_feedback

T0 = datetime(2026, 11, 21, 10, 5, 31, tzinfo=UTC)


def test_card_log_records_every_card_without_patient_ids(store_app: Flask, raw: sa.Engine) -> None:
    body = load_request("order-sign-contained-medication")
    cards = call(store_app.test_client(), body)
    assert get_store(store_app).flush()  # the card log is written after the answer
    logged = rows(raw, "card_log")
    assert [r["card_uuid"] for r in logged] == [c["uuid"] for c in cards]
    row, card = logged[0], cards[0]
    assert (row["service_id"], row["hook"], row["hook_instance"]) == (
        "infusion-safety-sign",
        "order-sign",
        body["hookInstance"],
    )
    assert (row["rule"], row["drug_id"], row["indicator"]) == (
        "premedication",
        "obinutuzumab",
        "warning",
    )
    assert json.loads(row["suggestion_uuids"]) == [s["uuid"] for s in card["suggestions"]]
    patient, encounter = body["context"]["patientId"], body["context"]["encounterId"]
    expected = hmac.new(
        HASH_KEY.encode(), f"patient\x00\x00{patient}".encode(), hashlib.sha256
    ).hexdigest()
    assert row["patient_hash"] == expected
    assert row["encounter_hash"] not in (None, encounter)
    dump = json.dumps([rows(raw, t) for t in ("card_log", "feedback", "snooze")], default=str)
    assert patient not in dump and encounter not in dump


def test_same_feedback_twice_is_stored_once(store_app: Flask, raw: sa.Engine) -> None:
    client = store_app.test_client()
    card = call(client, load_request("order-sign-contained-medication"))[0]
    item = accepted(card["uuid"], card["suggestions"][0]["uuid"], when=T0)
    assert post_feedback(client, item, item).status_code == 200  # twice in one body
    assert post_feedback(client, item).status_code == 200  # a retry
    # the same instant written with another offset is the same feedback
    same = {**item, "outcomeTimestamp": "2026-11-21T11:05:31.000+01:00"}
    assert post_feedback(client, same).status_code == 200
    stored = rows(raw, "feedback")
    assert len(stored) == 1
    assert stored[0]["known_card"]
    assert json.loads(stored[0]["accepted_suggestions"]) == [card["suggestions"][0]["uuid"]]
    assert as_utc(stored[0]["outcome_at"]) == T0


@pytest.mark.parametrize(
    "change",
    [
        {"outcome": "overridden", "acceptedSuggestions": None},
        {"outcomeTimestamp": "2026-11-21T10:05:32Z"},
        {"acceptedSuggestions": [{"id": "another"}]},
        {"card": "another-card"},
    ],
)
def test_different_feedback_is_stored_separately(
    store_app: Flask, raw: sa.Engine, change: dict[str, object]
) -> None:
    client = store_app.test_client()
    item = accepted("card-1", "s1", when=T0)
    other = {k: v for k, v in {**item, **change}.items() if v is not None}
    assert post_feedback(client, item, other).status_code == 200
    assert len(rows(raw, "feedback")) == 2


def test_reason_is_part_of_the_key_but_the_comment_is_not_stored(
    store_app: Flask, raw: sa.Engine
) -> None:
    client = store_app.test_client()
    with_reason = overridden("card-1", "not-applicable", when=T0)
    other_reason = overridden("card-1", "previously-tolerated", when=T0)
    comment = "Jane Doe MRN 12345 tolerated it"
    with_reason["overrideReason"]["userComment"] = comment
    assert post_feedback(client, with_reason, other_reason).status_code == 200
    stored = rows(raw, "feedback")
    assert [r["reason_code"] for r in stored] == ["not-applicable", "previously-tolerated"]
    assert [bool(r["has_comment"]) for r in stored] == [True, False]
    assert comment not in json.dumps(stored, default=str)
    assert "Jane" not in json.dumps(stored, default=str)


def test_unknown_cards_are_recorded_as_such(store_app: Flask, raw: sa.Engine) -> None:
    client = store_app.test_client()
    resp = post_feedback(client, overridden("0f4a9c1e-unknown", when=T0))
    assert resp.status_code == 200 and resp.get_data() == b""
    [row] = rows(raw, "feedback")
    assert row["card_uuid"] == "0f4a9c1e-unknown"
    assert not row["known_card"]
    assert rows(raw, "snooze") == []


def test_200_means_committed(store_app: Flask, raw: sa.Engine) -> None:
    """A second, independent connection sees the item as soon as the POST has answered."""
    client = store_app.test_client()
    for n in range(5):
        assert post_feedback(client, overridden(f"card-{n}", when=T0)).status_code == 200
        with raw.connect() as connection:
            count = connection.execute(sa.text("SELECT count(*) FROM feedback")).scalar_one()
        assert count == n + 1


def test_sqlite_is_in_wal_mode_with_full_sync(store_app: Flask) -> None:
    engine = get_store(store_app).engine
    if engine.dialect.name != "sqlite":
        with engine.connect() as connection:
            assert connection.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "on"
        return
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL


def test_feedback_that_cannot_be_stored_is_a_503_and_calls_still_work(
    store_app: Flask, raw: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    client = store_app.test_client()
    body = load_request("order-sign-contained-medication")
    with raw.begin() as connection:
        connection.execute(sa.text("DROP TABLE snooze"))
        connection.execute(sa.text("DROP TABLE feedback"))
        connection.execute(sa.text("DROP TABLE card_log"))
    get_store(store_app).close()
    resp = post_feedback(client, overridden("card-1", when=T0))
    assert resp.status_code == 503
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "store-unavailable"
    # hook calls fail open: every card is shown, the card log failure is only logged
    cards = call(client, body)
    assert card_for(cards, "premedication")["indicator"] == "warning"
    assert get_store(store_app).flush()
    assert "card log write failed" in caplog.text
    assert body["context"]["patientId"] not in caplog.text


def test_item_key_is_stable() -> None:
    item = overridden("c", "previously-tolerated", when=T0)
    assert item_key(item) == item_key(json.loads(json.dumps(item)))
    later = overridden("c", "previously-tolerated", when=T0 + timedelta(seconds=1))
    assert item_key(item) != item_key(later)
    # The sending EHR is part of the key: the same item from two EHRs is two items.
    assert item_key(item, "ehr-a") == item_key(json.loads(json.dumps(item)), "ehr-a")
    assert item_key(item, "ehr-a") != item_key(item, "ehr-b")
