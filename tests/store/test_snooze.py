"""Snooze: an override with a snoozing reason that its card offered hides the same rule for the
same patient and drug for the knowledge's ``snooze_days``; never a critical card; other patients
unaffected; a reason the card did not offer is stored and snoozes nothing."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_server import pipeline
from cds_server.knowledge.model import KnowledgeBase
from cds_server.store import get_store
from cds_server.store.identity import keyed_hash
from tests.conftest import FIXTURES, load_request, rule_of
from tests.store.conftest import HASH_KEY, as_utc, rows
from tests.store.flows import (
    LATER_RITUXIMAB,
    call,
    card_for,
    overridden,
    post_feedback,
    scenario,
    topics,
    with_session,
)

RITUXIMAB = "order-sign-rituximab"  # first infusion: rate-titration warning for pat-lym-001


def request(name: str) -> dict:
    """A fixture request (``fixtures/fhir/requests``) or a scenario's request."""
    if (FIXTURES / "scenarios" / f"{name}.request.json").exists():
        return scenario(name)
    return load_request(name)


def override_first_card(app: Flask, name: str, topic: str, code: str | None, **kw: str) -> dict:
    client = app.test_client()
    cards = call(client, request(name))
    card = card_for(cards, topic)
    assert post_feedback(client, overridden(card["uuid"], code, **kw)).status_code == 200
    return card


def later_call(app: Flask, name: str, patient: str | None = None) -> list[tuple[str, str]]:
    """The same request in another ordering session (new hookInstance and encounter)."""
    body = with_session(request(name), encounter="enc-later", patient=patient)
    return topics(call(app.test_client(), body))


def at(app: Flask, kb: KnowledgeBase, name: str, now: datetime) -> list[tuple[str, str]]:
    """The request evaluated at ``now`` with the app's store as history."""
    body = with_session(request(name), encounter="enc-at")
    result = pipeline.run(
        body, service_id="infusion-safety", kb=kb, now=now, history=get_store(app)
    )
    return sorted((rule_of(c), c["indicator"]) for c in result.response["cards"])


def test_snoozed_rule_is_not_shown_again_for_that_patient_and_drug(
    store_app: Flask, raw: sa.Engine
) -> None:
    card = override_first_card(store_app, LATER_RITUXIMAB, "rate-titration", "previously-tolerated")
    assert "previously-tolerated" in {r["code"] for r in card["overrideReasons"]}
    assert later_call(store_app, LATER_RITUXIMAB) == []
    [snooze] = rows(raw, "snooze")
    assert (snooze["rule"], snooze["drug_id"], snooze["reason_code"]) == (
        "rate-titration",
        "rituximab",
        "previously-tolerated",
    )
    length = as_utc(snooze["until"]) - as_utc(snooze["starts_at"])
    assert length == timedelta(days=90)


def test_the_card_log_records_the_reasons_each_card_offered(
    store_app: Flask, raw: sa.Engine
) -> None:
    client = store_app.test_client()
    names = (RITUXIMAB, LATER_RITUXIMAB, "order-sign-contained-medication")
    cards = {name: call(client, request(name)) for name in names}
    shown = {
        c["uuid"]: [r["code"] for r in c.get("overrideReasons", ())]
        for issued in cards.values()
        for c in issued
    }
    get_store(store_app).flush()
    logged = {r["card_uuid"]: json.loads(r["offered_reasons"]) for r in rows(raw, "card_log")}
    assert logged == shown
    first, later = (card_for(cards[n], "rate-titration") for n in (RITUXIMAB, LATER_RITUXIMAB))
    assert "previously-tolerated" not in shown[first["uuid"]]
    assert "previously-tolerated" in shown[later["uuid"]]


def test_a_reason_the_card_did_not_offer_is_stored_but_does_not_snooze(
    store_app: Flask, raw: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A first infusion's rate card does not offer "previously tolerated" (no reaction or dose
    on record), though its rule does: a client that sends it anyway snoozes nothing."""
    with caplog.at_level(logging.WARNING, logger="cds_server.store.feedback"):
        card = override_first_card(store_app, RITUXIMAB, "rate-titration", "previously-tolerated")
    assert "previously-tolerated" not in {r["code"] for r in card["overrideReasons"]}
    [stored] = rows(raw, "feedback")
    assert (stored["reason_code"], stored["known_card"]) == ("previously-tolerated", True)
    assert rows(raw, "snooze") == []
    assert later_call(store_app, RITUXIMAB) == [("rate-titration", "warning")]
    [line] = [r.getMessage() for r in caplog.records if "not offered" in r.getMessage()]
    assert "a code of cards/policy.yaml" in line and "rate-titration card offered 2" in line
    assert "previously-tolerated" not in line  # the shape, never the code the client sent


def test_an_unknown_code_of_our_system_is_logged_by_shape_only(
    store_app: Flask, raw: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cds_server.store.feedback"):
        override_first_card(store_app, RITUXIMAB, "rate-titration", "secret-value-42")
    assert rows(raw, "snooze") == []
    [line] = [r.getMessage() for r in caplog.records if "not offered" in r.getMessage()]
    assert "a code unknown to cards/policy.yaml" in line and "secret-value-42" not in line


def test_a_card_logged_before_0005_keeps_its_rule_s_reasons(
    store_app: Flask, raw: sa.Engine
) -> None:
    """Cards issued before the upgrade have no offered reasons recorded (NULL): any snoozing
    reason of their rule snoozes them, as before."""
    client = store_app.test_client()
    card = card_for(call(client, request(RITUXIMAB)), "rate-titration")
    get_store(store_app).flush()
    with raw.begin() as connection:  # as migration 0005 leaves earlier rows
        connection.execute(sa.text("UPDATE card_log SET offered_reasons = NULL"))
    item = overridden(card["uuid"], "previously-tolerated")
    assert post_feedback(client, item).status_code == 200
    assert [s["reason_code"] for s in rows(raw, "snooze")] == ["previously-tolerated"]
    assert later_call(store_app, RITUXIMAB) == []


def test_another_patient_still_sees_the_card(store_app: Flask) -> None:
    override_first_card(store_app, LATER_RITUXIMAB, "rate-titration", "previously-tolerated")
    assert later_call(store_app, LATER_RITUXIMAB) == []
    assert later_call(store_app, LATER_RITUXIMAB, patient="pat-other-999") == [
        ("rate-titration", "warning")
    ]


def test_shown_again_after_the_period(store_app: Flask, kb: KnowledgeBase) -> None:
    override_first_card(store_app, LATER_RITUXIMAB, "rate-titration", "previously-tolerated")
    now = datetime.now(UTC)
    assert at(store_app, kb, LATER_RITUXIMAB, now + timedelta(days=89)) == []
    assert at(store_app, kb, LATER_RITUXIMAB, now + timedelta(days=91)) == [
        ("rate-titration", "warning")
    ]


def test_an_old_override_snoozes_from_its_own_time(store_app: Flask) -> None:
    when = datetime.now(UTC) - timedelta(days=91)
    name = LATER_RITUXIMAB
    override_first_card(store_app, name, "rate-titration", "previously-tolerated", when=when)
    assert later_call(store_app, LATER_RITUXIMAB) == [("rate-titration", "warning")]


def test_premedication_ordered_elsewhere_snoozes_one_day(
    store_app: Flask, kb: KnowledgeBase
) -> None:
    name = "order-sign-contained-medication"
    override_first_card(store_app, name, "premedication", "premedication-ordered-elsewhere")
    assert later_call(store_app, name) == []
    assert at(store_app, kb, name, datetime.now(UTC) + timedelta(days=2)) == [
        ("premedication", "warning")
    ]


@pytest.mark.parametrize(
    ("code", "system"),
    [
        ("not-applicable", None),  # offered, but does not snooze
        ("desensitization-planned", None),  # snoozes, but is not offered on this rule
        ("previously-tolerated", "https://example.org/override-reasons"),  # a client's code
        (None, None),  # overridden without a reason
    ],
)
def test_other_overrides_do_not_snooze(
    store_app: Flask, raw: sa.Engine, code: str | None, system: str | None
) -> None:
    kw = {"system": system} if system else {}
    override_first_card(store_app, RITUXIMAB, "rate-titration", code, **kw)
    assert later_call(store_app, RITUXIMAB) == [("rate-titration", "warning")]
    assert rows(raw, "snooze") == []
    assert len(rows(raw, "feedback")) == 1


def test_a_critical_card_ignores_snoozes(store_app: Flask, raw: sa.Engine) -> None:
    client = store_app.test_client()
    body = scenario("carboplatin-anaphylaxis-reexposure")
    card = card_for(call(client, body), "prior-reaction")
    assert card["indicator"] == "critical"
    # overriding a critical card with a snoozing reason creates no snooze
    item = overridden(card["uuid"], "previously-tolerated")
    assert post_feedback(client, item).status_code == 200
    assert rows(raw, "snooze") == []
    # and a running snooze of that rule, patient and drug does not hide it either
    feedback_id = rows(raw, "feedback")[0]["id"]
    now = datetime.now(UTC)
    with raw.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO snooze (patient_hash, rule, drug_id, starts_at, until, reason_code,"
                " feedback_id) VALUES (:p, 'prior-reaction', 'carboplatin', :s, :u,"
                " 'previously-tolerated', :f)"
            ),
            {
                "p": keyed_hash(HASH_KEY.encode(), "patient", body["context"]["patientId"]),
                "s": (now - timedelta(days=1)).replace(tzinfo=None),
                "u": (now + timedelta(days=30)).replace(tzinfo=None),
                "f": feedback_id,
            },
        )
    again = call(client, with_session(body, encounter="enc-later"))
    assert ("prior-reaction", "critical") in topics(again)
