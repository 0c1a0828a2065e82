"""Feedback as clients really send it: Epic's ``overrideReasons`` (a ``reason`` Coding or an
``extension`` naming an Epic reason category) and the spec's ``overrideReason`` — stored with
the reason's code and display, snoozing when the reason is ours; unknown shapes stored as "no
coded reason" and logged by shape only; the free-text comment never stored."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_server.cdshooks import protocol
from tests.conftest import FIXTURES, load_request
from tests.store.conftest import rows
from tests.store.flows import OUR_REASONS, call, card_for, iso, post_feedback, topics, with_session

RITUXIMAB = "order-sign-rituximab"  # rate-titration warning for pat-lym-001
# A later rituximab infusion (a dose given before): its rate card offers "previously tolerated".
LATER = FIXTURES / "scenarios" / "rituximab-later-rate-above.request.json"


def _request(name: str) -> dict[str, Any]:
    if name == RITUXIMAB:
        return load_request(RITUXIMAB)
    return json.loads(LATER.read_text(encoding="utf-8"))


EPIC = FIXTURES / "clients" / "epic"
COMMENT = "User Entered Free Text"


def epic_feedback(name: str, card: str) -> dict[str, Any]:
    """An Epic feedback fixture about ``card``, overridden now (a 2022 override has expired)."""
    body = json.loads((EPIC / f"{name}.json").read_text())
    (item,) = body["feedback"]
    item["card"] = card
    item["outcomeTimestamp"] = iso()
    return item


def rate_titration_card(
    app: Flask, service: str | None = None, name: str = RITUXIMAB
) -> dict[str, Any]:
    body = _request(name)
    if service is None:
        cards = call(app.test_client(), body)
    else:
        resp = app.test_client().post(f"/cds-services/{service}", json=body)
        assert resp.status_code == 200
        cards = resp.get_json()["cards"]
    return card_for(cards, "rate-titration")


def shown_later(app: Flask, name: str = RITUXIMAB) -> list[tuple[str, str]]:
    """The same order in another ordering session (no de-duplication, snoozes apply)."""
    body = with_session(_request(name), encounter="enc-later")
    return topics(call(app.test_client(), body))


def stored_reason(raw: sa.Engine) -> tuple[Any, ...]:
    (row,) = rows(raw, "feedback")
    return (row["reason_system"], row["reason_code"], row["reason_display"], row["has_comment"])


def no_comment_anywhere(raw: sa.Engine) -> None:
    for table in ("feedback", "snooze", "card_log"):
        assert COMMENT not in json.dumps(rows(raw, table), default=str)


@pytest.mark.parametrize(
    ("issued_by", "posted_to"),
    [
        ("infusion-safety-sign", "infusion-safety-sign"),
        ("infusion-safety", "infusion-safety-sign"),  # one family: the deprecated id too
        ("infusion-safety-sign", "infusion-safety"),
    ],
)
def test_epic_reason_of_ours_is_stored_and_snoozes(
    store_app: Flask, raw: sa.Engine, issued_by: str, posted_to: str
) -> None:
    card = rate_titration_card(store_app, issued_by, name=str(LATER))
    offered = {(r["system"], r["code"]) for r in card["overrideReasons"]}
    assert (OUR_REASONS, "previously-tolerated") in offered
    item = epic_feedback("feedback-override-reason", card["uuid"])
    assert post_feedback(store_app.test_client(), item, service=posted_to).status_code == 200
    assert stored_reason(raw) == (
        OUR_REASONS,
        "previously-tolerated",
        "Patient has tolerated this drug before (since any reaction on record)",
        True,
    )
    assert [s["reason_code"] for s in rows(raw, "snooze")] == ["previously-tolerated"]
    assert ("rate-titration", "warning") not in shown_later(store_app, name=str(LATER))
    no_comment_anywhere(raw)


def test_epic_built_reason_is_stored_by_category_and_display_without_snooze(
    store_app: Flask, raw: sa.Engine
) -> None:
    card = rate_titration_card(store_app)
    item = epic_feedback("feedback-override-extension", card["uuid"])
    assert (
        post_feedback(store_app.test_client(), item, service="infusion-safety-sign").status_code
        == 200
    )
    assert stored_reason(raw) == (
        protocol.EPIC_REASON_CATEGORY,
        "45",
        "Does not meet criteria",
        True,
    )
    assert rows(raw, "snooze") == []  # not one of our reasons: nothing to snooze on
    assert ("rate-titration", "warning") in shown_later(store_app)
    no_comment_anywhere(raw)
    report = store_app.test_client().get("/analytics/report").get_json()
    (row,) = [
        r
        for r in report["byRuleAndDrug"]
        if (r["rule"], r["drug"]) == ("rate-titration", "rituximab")
    ]
    assert row["overridden"] == 1
    assert row["overrideReasons"] == [
        {
            "system": protocol.EPIC_REASON_CATEGORY,
            "code": "45",
            "display": "Does not meet criteria",
            "cards": 1,
        }
    ]
    page = store_app.test_client().get("/analytics/report.html").get_data(as_text=True)
    assert "Does not meet criteria" in page and "(45)" in page


def test_epic_reason_of_a_foreign_system_is_stored_without_snooze(
    store_app: Flask, raw: sa.Engine
) -> None:
    card = rate_titration_card(store_app)
    item = epic_feedback("feedback-override-reason", card["uuid"])
    # Epic's own published example: a code system that is not ours.
    item["overrideReasons"]["reason"] = {
        "code": "contraindicated",
        "display": "bad",
        "system": "http: //example.org/cds-services/fhir/CodeSystem/override-reasons",
    }
    assert post_feedback(store_app.test_client(), item).status_code == 200
    assert stored_reason(raw)[1:] == ("contraindicated", "bad", True)
    assert rows(raw, "snooze") == []
    assert ("rate-titration", "warning") in shown_later(store_app)


def test_spec_override_reason_of_ours_still_snoozes(store_app: Flask, raw: sa.Engine) -> None:
    card = rate_titration_card(store_app, name=str(LATER))
    item = epic_feedback("feedback-override-reason", card["uuid"])
    item["overrideReason"] = item.pop("overrideReasons")  # the spec's key, same object
    assert post_feedback(store_app.test_client(), item).status_code == 200
    assert stored_reason(raw)[1] == "previously-tolerated"
    assert ("rate-titration", "warning") not in shown_later(store_app, name=str(LATER))


def test_epic_accepted_feedback_is_stored(store_app: Flask, raw: sa.Engine) -> None:
    card = rate_titration_card(store_app)
    body = json.loads((EPIC / "feedback-accepted.json").read_text())
    (item,) = body["feedback"]
    item["card"] = card["uuid"]
    assert post_feedback(store_app.test_client(), item).status_code == 200
    (row,) = rows(raw, "feedback")
    assert (row["outcome"], row["known_card"]) == ("accepted", True)
    assert json.loads(row["accepted_suggestions"]) == ["replaceWithGUID"]


UNKNOWN = [
    ([{"reason": {"code": "x", "system": "s"}}], "overrideReasons is a JSON array"),
    ("not applicable", "overrideReasons is a JSON string"),
    ({"why": "secret-value", "userComment": COMMENT}, "overrideReasons {userComment, why}"),
    ({"reason": {"display": "secret-value"}}, "overrideReasons.reason {display}"),
    ({"extension": {"other": "secret-value"}}, "overrideReasons {extension}"),
    (
        {"extension": {protocol.EPIC_REASON_CATEGORY: ["secret-value"]}},
        f"overrideReasons.extension {{{protocol.EPIC_REASON_CATEGORY}}}",
    ),
]


@pytest.mark.parametrize(("value", "shape"), UNKNOWN)
def test_unknown_shapes_are_stored_without_a_coded_reason_and_logged_by_shape(
    store_app: Flask,
    raw: sa.Engine,
    caplog: pytest.LogCaptureFixture,
    value: Any,
    shape: str,
) -> None:
    card = rate_titration_card(store_app)
    item = {
        "card": card["uuid"],
        "outcome": "overridden",
        "outcomeTimestamp": iso(),
        "overrideReasons": copy.deepcopy(value),
    }
    caplog.set_level(logging.INFO)
    assert post_feedback(store_app.test_client(), item).status_code == 200
    (row,) = rows(raw, "feedback")
    assert (row["reason_system"], row["reason_code"], row["reason_display"]) == (None, None, None)
    assert rows(raw, "snooze") == []
    lines = [
        r.getMessage() for r in caplog.records if "override reason not understood" in r.message
    ]
    assert len(lines) == 1 and lines[0].endswith(shape), lines
    assert "secret-value" not in caplog.text and COMMENT not in caplog.text
    no_comment_anywhere(raw)


def test_no_override_reason_at_all_logs_nothing(
    store_app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    card = rate_titration_card(store_app)
    caplog.set_level(logging.INFO)
    for extra in ({}, {"overrideReasons": None}, {"overrideReasons": {"userComment": COMMENT}}):
        item = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": iso(), **extra}
        assert post_feedback(store_app.test_client(), item).status_code == 200
    assert "override reason not understood" not in caplog.text
