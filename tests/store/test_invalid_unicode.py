"""Unpaired surrogates never reach the database; a bad card-log row never costs another's.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``); Python parses it into a str that no
UTF-8 database, log file or EHR can hold. Before, such a ``hookInstance`` or feedback field
gave a 500 (UnicodeEncodeError), and on patient-view the background writer then dropped the
whole batch — other callers' rows included (20 cards issued, 8 logged).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from cds_server.store import cardlog, get_store
from cds_server.store.engine import make_engine
from cds_server.store.writer import CardLogWriter
from tests.conftest import load_request, service_for
from tests.store.conftest import rows
from tests.store.flows import OUR_REASONS, call, iso, with_session

LONE = ("\ud800", "\udfff", "ok\udbffend")


def _post(client: Any, path: str, body: dict[str, Any]) -> Any:
    text = json.dumps(body)  # ensure_ascii: a lone surrogate is written as its \\u escape
    assert "\\ud" in text
    return client.post(path, data=text, content_type="application/json")


def _is_400(resp: Any) -> None:
    assert resp.status_code == 400, resp.get_data()
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["details"]["coding"][0]["code"] == "malformed-json"
    assert "unpaired surrogate" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize("lone", LONE)
@pytest.mark.parametrize(
    "where", ["hookInstance", "userId", "prefetch-display", "key", "patient-view"]
)
def test_lone_surrogates_in_hook_requests_are_400(
    store_app: Flask, raw: sa.Engine, where: str, lone: str
) -> None:
    body = load_request("order-sign-rituximab")
    if where == "hookInstance":
        body["hookInstance"] = lone
    elif where == "userId":
        body["context"]["userId"] = "Practitioner/" + lone
    elif where == "prefetch-display":
        body["prefetch"]["patient"]["name"] = [{"text": lone}]
    elif where == "key":
        body["context"][lone] = "x"
    else:
        body = load_request("patient-view-lymphoma")
        body["hookInstance"] = lone
    client = store_app.test_client()
    _is_400(_post(client, f"/cds-services/{service_for(body)}", body))
    assert get_store(store_app).flush()
    assert rows(raw, "card_log") == []


@pytest.mark.parametrize("lone", LONE)
@pytest.mark.parametrize("field", ["card", "code", "display", "system", "suggestion"])
def test_lone_surrogates_in_feedback_are_400(
    store_app: Flask, raw: sa.Engine, field: str, lone: str
) -> None:
    reason = {"system": OUR_REASONS, "code": "previously-tolerated", "display": "Tolerated"}
    item: dict[str, Any] = {"card": "card-1", "outcome": "overridden", "outcomeTimestamp": iso()}
    item["overrideReason"] = {"reason": reason}
    if field == "card":
        item["card"] = lone
    elif field == "suggestion":
        item = {"card": "card-1", "outcome": "accepted", "outcomeTimestamp": iso()}
        item["acceptedSuggestions"] = [{"id": lone}]
    else:
        reason[field] = lone
    client = store_app.test_client()
    _is_400(_post(client, "/cds-services/infusion-safety/feedback", {"feedback": [item]}))
    assert rows(raw, "feedback") == []


def test_escaped_surrogate_pairs_are_ordinary_text(store_app: Flask, raw: sa.Engine) -> None:
    """An emoji written as its escaped pair (and a literal backslash-u) is valid JSON text."""
    body = with_session(load_request("order-sign-rituximab"))
    body["hookInstance"] = "visit-\U0001f600-\\ud800"
    text = json.dumps(body)
    assert "\\ud83d\\ude00" in text
    resp = store_app.test_client().post(
        "/cds-services/infusion-safety", data=text, content_type="application/json"
    )
    assert resp.status_code == 200, resp.get_data()
    assert get_store(store_app).flush()
    assert {r["hook_instance"] for r in rows(raw, "card_log")} == {body["hookInstance"]}


def _row(uuid: str, hook_instance: str = "hi") -> dict[str, Any]:
    return {
        "card_uuid": uuid,
        "issued_at": datetime.now(UTC),
        "service_id": "infusion-risk-summary",
        "hook": "patient-view",
        "hook_instance": hook_instance,
        "patient_hash": "p" * 64,
        "encounter_hash": None,
        "rule": "premedication",
        "drug_id": "rituximab",
        "indicator": "warning",
        "suggestion_uuids": "[]",
        "knowledge_version": "t",
        "caller_hash": "c" * 64,
    }


def test_the_writer_drops_only_the_bad_row_of_a_batch(
    store_app: Flask, db_url: str, raw: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """One row the database refuses (here a lone surrogate that got past every check) is
    dropped alone; the other callers' rows of the same batch are written."""
    engine = make_engine(db_url)
    writer = CardLogWriter(lambda batch: cardlog.write_rows(engine, batch), linger=5.0)
    good = [_row(f"good-{n}") for n in range(19)]
    batch = [*good[:8], _row("bad", hook_instance="x\ud800"), *good[8:]]
    for one in batch:
        assert writer.submit([one])
    with caplog.at_level(logging.ERROR):
        assert writer.flush(10)
    engine.dispose()
    assert sorted(r["card_uuid"] for r in rows(raw, "card_log")) == sorted(
        r["card_uuid"] for r in good
    )
    assert "card log write failed for 1 of 20 row(s) (UnicodeEncodeError)" in caplog.text


def test_a_full_patient_view_burst_is_logged_completely(store_app: Flask, raw: sa.Engine) -> None:
    """20 calls, one of them hostile (400): every card issued to the others is in the log."""
    client = store_app.test_client()
    issued = []
    for n in range(20):
        body = with_session(load_request("patient-view-lymphoma"))
        if n == 7:
            body["hookInstance"] = "\ud800"
            _is_400(_post(client, "/cds-services/infusion-risk-summary", body))
            continue
        issued += [c["uuid"] for c in call(client, body)]
    assert issued
    assert get_store(store_app).flush()
    assert sorted(r["card_uuid"] for r in rows(raw, "card_log")) == sorted(issued)
