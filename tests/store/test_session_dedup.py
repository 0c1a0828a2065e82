"""Repeat suppression within one ordering session: order-select then order-sign (same
encounter or same hookInstance) does not show the same non-critical card twice."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Flask

from cds_server import pipeline
from cds_server.knowledge.model import KnowledgeBase
from cds_server.store import get_store
from tests.conftest import load_request
from tests.store.conftest import HASH_KEY
from tests.store.flows import call, scenario, topics, with_session

RATE = [("rate-titration", "warning")]


def test_order_select_then_order_sign_shows_the_card_once(store_app: Flask) -> None:
    client = store_app.test_client()
    select, sign = load_request("order-select-rituximab"), load_request("order-sign-rituximab")
    assert select["context"]["encounterId"] == sign["context"]["encounterId"]
    assert select["hookInstance"] != sign["hookInstance"]
    assert topics(call(client, select)) == RATE
    assert topics(call(client, sign)) == []
    # another order-select in the same session: still already shown
    assert topics(call(client, with_session(select))) == []


def test_a_retry_of_the_same_call_gets_the_cards_again(store_app: Flask) -> None:
    client = store_app.test_client()
    sign = load_request("order-sign-rituximab")
    assert topics(call(client, sign)) == RATE
    assert topics(call(client, sign)) == RATE


def test_same_hook_instance_without_encounter_is_one_session(store_app: Flask) -> None:
    client = store_app.test_client()
    select = with_session(load_request("order-sign-rituximab"), hook="order-select", encounter=None)
    assert topics(call(client, select)) == RATE
    sign = with_session(select, hook="order-sign", instance=select["hookInstance"], encounter=None)
    assert topics(call(client, sign)) == []
    # no encounter and a new hookInstance: nothing ties the calls together
    assert topics(call(client, with_session(sign, encounter=None))) == RATE


def test_other_encounter_or_patient_is_another_session(store_app: Flask) -> None:
    client = store_app.test_client()
    sign = load_request("order-sign-rituximab")
    assert topics(call(client, sign)) == RATE
    assert topics(call(client, with_session(sign, encounter="enc-next-day"))) == RATE
    assert topics(call(client, with_session(sign, patient="pat-someone-else"))) == RATE


def test_the_window_ends(store_app: Flask, kb: KnowledgeBase) -> None:
    store = get_store(store_app)
    sign = load_request("order-sign-rituximab")
    now = datetime.now(UTC)
    first = pipeline.run(sign, service_id="infusion-safety", kb=kb, now=now, history=store)
    store.log_cards(first.situation.call, first.issued, issued_at=now, knowledge_version="t")
    assert len(first.issued) == 1

    def cards_at(minutes: int) -> list[dict[str, str]]:
        when = now + timedelta(minutes=minutes)
        body = with_session(sign)
        result = pipeline.run(body, service_id="infusion-safety", kb=kb, now=when, history=store)
        return result.response["cards"]  # type: ignore[no-any-return]

    assert cards_at(59) == []
    assert len(cards_at(61)) == 1


def test_window_zero_disables_dedup(make_app: Callable[..., Flask], db_url: str) -> None:
    app = make_app(DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY, DEDUP_WINDOW_MINUTES=0)
    client = app.test_client()
    try:
        assert topics(call(client, load_request("order-select-rituximab"))) == RATE
        assert topics(call(client, load_request("order-sign-rituximab"))) == RATE
    finally:
        get_store(app).close()


def test_critical_cards_repeat_in_the_session(store_app: Flask) -> None:
    client = store_app.test_client()
    body = scenario("carboplatin-anaphylaxis-reexposure")
    first = topics(call(client, body))
    assert ("prior-reaction", "critical") in first
    assert ("prior-reaction", "critical") in topics(call(client, with_session(body)))


def test_patient_view_is_not_deduplicated(store_app: Flask) -> None:
    client = store_app.test_client()
    view = load_request("patient-view-lymphoma")
    summary = [("patient-summary", "info")]
    assert topics(call(client, view)) == summary
    assert topics(call(client, with_session(view))) == summary


def test_explain_and_library_use_show_everything(kb: KnowledgeBase) -> None:
    """Without a history (the default), nothing is held back and nothing is recorded."""
    sign = load_request("order-sign-rituximab")
    result = pipeline.run(sign, service_id="infusion-safety", kb=kb)
    assert len(result.response["cards"]) == 1
    assert result.suppressed == ()
    assert [(c.rule, c.drug) for c in result.issued] == [("rate-titration", "rituximab")]
