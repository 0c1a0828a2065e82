"""Cards, feedback and snoozes stored before the topic wire codes keep working after them.

Before, a card's ``source.topic.code`` was its rule's name (``rate-titration``) and the card log
and snoozes stored that. Cards now send a wire code (``RateTitration``) while the store keeps
the rule's name, so no stored row has to change: a database written by the old code (here at
revision 0003, rows inserted as that code wrote them) is upgraded to head by the app at start-up,
and its snoozes still snooze, feedback on its cards still matches and snoozes, and the report
counts its cards under the same rule as new ones. On SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import Flask

from cds_server.store import db, get_store
from cds_server.store.engine import make_engine
from cds_server.store.identity import keyed_hash
from tests.conftest import load_request
from tests.store.conftest import HASH_KEY, rows
from tests.store.flows import OUR_REASONS, call, iso, topics, with_session

RITUXIMAB_PATIENT = "pat-lym-001"  # order-sign-rituximab: a rate-titration warning
PACLITAXEL_PATIENT = "pat-crd-005"  # order-sign-crd-style: a premedication warning


def _patient(patient_id: str) -> str:
    return keyed_hash(HASH_KEY.encode("utf-8"), "patient", patient_id)


def _old_rows(engine: sa.Engine, now: datetime) -> None:
    """What the code before the wire codes stored: rules by their own names."""
    card_log = (
        "INSERT INTO card_log (card_uuid, issued_at, service_id, hook, hook_instance,"
        " patient_hash, encounter_hash, rule, drug_id, indicator, suggestion_uuids,"
        " knowledge_version, caller_hash) VALUES (:uuid, :at, 'infusion-safety', 'order-sign',"
        " :hi, :patient, NULL, :rule, :drug, 'warning', '[]', 'before', NULL)"
    )
    with engine.begin() as connection:
        connection.execute(
            sa.text(card_log),
            [
                {
                    "uuid": "old-rate-card",
                    "at": now - timedelta(days=3),
                    "hi": "old-hi-1",
                    "patient": _patient(RITUXIMAB_PATIENT),
                    "rule": "rate-titration",
                    "drug": "rituximab",
                },
                {
                    "uuid": "old-premed-card",
                    "at": now - timedelta(hours=2),
                    "hi": "old-hi-2",
                    "patient": _patient(PACLITAXEL_PATIENT),
                    "rule": "premedication",
                    "drug": "paclitaxel",
                },
            ],
        )
        feedback_id = connection.execute(
            sa.text(
                "INSERT INTO feedback (item_key, card_uuid, service_id, known_card, outcome,"
                " outcome_at, accepted_suggestions, reason_system, reason_code, reason_display,"
                " has_comment, received_at) VALUES ('k-old', 'old-rate-card', 'infusion-safety',"
                " :yes, 'overridden', :at, '[]', :system, 'previously-tolerated', NULL, :no, :at)"
                " RETURNING id"
            ),
            {"at": now - timedelta(days=3), "system": OUR_REASONS, "yes": True, "no": False},
        ).scalar_one()
        connection.execute(
            sa.text(
                "INSERT INTO snooze (patient_hash, rule, drug_id, starts_at, until, reason_code,"
                " feedback_id) VALUES (:patient, 'rate-titration', 'rituximab', :start, :until,"
                " 'previously-tolerated', :fid)"
            ),
            {
                "patient": _patient(RITUXIMAB_PATIENT),
                "start": now - timedelta(days=3),
                "until": now + timedelta(days=87),
                "fid": feedback_id,
            },
        )


def test_a_database_from_before_the_wire_codes_keeps_working(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    engine = make_engine(db_url)
    now = datetime.now(UTC)
    try:
        assert db.upgrade(engine, "0003") == "0003"
        _old_rows(engine, now)
    finally:
        engine.dispose()
    app = make_app(DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY)  # upgrades to head
    store = get_store(app)
    client = app.test_client()
    try:
        assert db.current_revision(store.engine) == db.head_revision()

        # 1. The snooze stored before still holds the rate card back; another patient gets it.
        rituximab = with_session(load_request("order-sign-rituximab"), encounter="enc-after")
        assert ("rate-titration", "warning") not in topics(call(client, rituximab))
        other = with_session(rituximab, patient="pat-someone-else")
        cards = call(client, other)
        [shown] = [c for c in cards if c["source"]["topic"]["code"] == "RateTitration"]

        # 2. Feedback on a card issued before: matched (known card), and its reason snoozes.
        item = {
            "card": "old-premed-card",
            "outcome": "overridden",
            "outcomeTimestamp": iso(now - timedelta(hours=1)),
            "overrideReason": {
                "reason": {"system": OUR_REASONS, "code": "premedication-ordered-elsewhere"}
            },
        }
        resp = client.post("/cds-services/infusion-safety-sign/feedback", json={"feedback": [item]})
        assert resp.status_code == 200
        feedback = rows(store.engine, "feedback")
        [stored] = [f for f in feedback if f["card_uuid"] == "old-premed-card"]
        assert stored["known_card"]
        [new_snooze] = [s for s in rows(store.engine, "snooze") if s["drug_id"] == "paclitaxel"]
        assert new_snooze["rule"] == "premedication"
        paclitaxel = with_session(load_request("order-sign-crd-style"), encounter="enc-later")
        assert "premedication" not in {rule for rule, _ in topics(call(client, paclitaxel))}

        # 3. New cards are logged under the rule's name: the report counts old and new together.
        assert store.flush()
        logged = {r["card_uuid"]: r["rule"] for r in rows(store.engine, "card_log")}
        assert logged[shown["uuid"]] == "rate-titration"
        report = store.report(now - timedelta(days=30), now + timedelta(minutes=5))
        [rate] = [r for r in report.by_rule() if r.rule == "rate-titration"]
        assert rate.issued == 2 and rate.overridden == 1
        assert set(logged.values()) == {"rate-titration", "premedication"}
    finally:
        store.close()
