"""Analytics: ``cds-server report``, GET /analytics/report (JSON) and the HTML page, fed by
the fixtures' accepted and overridden feedback flows."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from cds_server import cli
from cds_server.store import get_store
from tests.conftest import FIXTURES, load_request
from tests.store.conftest import HASH_KEY
from tests.store.flows import (
    OUR_REASONS,
    accepted,
    call,
    card_for,
    overridden,
    post_feedback,
    with_session,
)

FEEDBACK = sorted((FIXTURES / "feedback").glob("*.json"))
TOKEN = "admin-token-0123456789-0123456789-abcdef"
T0 = datetime(2026, 11, 21, 10, 5, 31, tzinfo=UTC)


def run_fixture_flows(app: Flask) -> dict[str, Any]:
    """order-sign → the fixtures' feedback bodies on its card; plus an ignored card."""
    client = app.test_client()
    card = call(client, load_request("order-sign-contained-medication"))[0]
    suggestion = card["suggestions"][0]["uuid"]
    for path in FEEDBACK:
        body = json.loads(path.read_text())
        for item in body["feedback"]:
            item["card"] = card["uuid"]
            for s in item.get("acceptedSuggestions", ()):
                s["id"] = suggestion
        assert client.post("/cds-services/infusion-safety/feedback", json=body).status_code == 200
    call(client, load_request("order-sign-crd-style"))  # a premedication card nobody answers
    return card


def row(data: dict[str, Any], section: str, **match: str) -> dict[str, Any]:
    return next(r for r in data[section] if all(r.get(k) == v for k, v in match.items()))


def test_fixture_feedback_is_in_the_json_report(store_app: Flask) -> None:
    run_fixture_flows(store_app)
    resp = store_app.test_client().get("/analytics/report")
    assert resp.status_code == 200
    data = resp.get_json()
    obi = row(data, "byRuleAndDrug", rule="premedication", drug="obinutuzumab")
    # Three items on one card (accepted 10:05:31Z, overridden with a reason 10:06:02Z, overridden
    # without one 10:07+01:00 = 09:07Z): the latest, the override with a reason, is its outcome.
    assert (obi["issued"], obi["accepted"], obi["overridden"], obi["ignored"]) == (1, 0, 1, 0)
    reasons = {(r["code"], r["system"]): (r["cards"], r["display"]) for r in obi["overrideReasons"]}
    assert reasons == {  # a client's reason: the display it sent
        ("previously-tolerated", "https://example.org/override-reasons"): (
            1,
            "Previously tolerated",
        ),
    }
    pac = row(data, "byRuleAndDrug", rule="premedication", drug="paclitaxel")
    assert (pac["issued"], pac["accepted"], pac["overridden"], pac["ignored"]) == (1, 0, 0, 1)
    premed = row(data, "byRule", rule="premedication")
    assert (premed["issued"], premed["ignored"]) == (2, 1)
    assert row(data, "byDrug", drug="obinutuzumab")["drugDisplay"]
    assert data["totals"]["feedbackItems"] == 3
    assert data["totals"]["unknownCardFeedback"] == 0


def test_the_window_filters_cards(store_app: Flask) -> None:
    run_fixture_flows(store_app)
    client = store_app.test_client()
    empty = client.get("/analytics/report?since=2020-01-01&until=2020-02-01").get_json()
    assert empty["totals"]["issued"] == 0 and empty["byRuleAndDrug"] == []
    assert empty["since"] == "2020-01-01T00:00:00Z"


@pytest.mark.parametrize(
    "query",
    [
        "since=yesterday",
        "until=2026-13-01",
        "since=2026-11-21&until=2026-11-20",
        "until=0001-01-01",  # no room for the default 30 days before it
        "since=9999-12-31T23:00:00-05:00",  # beyond the last UTC instant
    ],
)
def test_a_bad_window_is_a_400(store_app: Flask, query: str) -> None:
    resp = store_app.test_client().get(f"/analytics/report?{query}")
    assert resp.status_code == 400
    assert resp.get_json()["resourceType"] == "OperationOutcome"


def test_html_page_has_the_chart_and_escapes_client_text(store_app: Flask) -> None:
    card = run_fixture_flows(store_app)
    client = store_app.test_client()
    evil = "<script>alert(1)</script>"
    item = overridden(card["uuid"], evil, system="https://evil.example/<img src=x>")
    assert post_feedback(client, item).status_code == 200
    resp = client.get("/analytics/report.html")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    html = resp.get_data(as_text=True)
    assert "<svg" in html and 'class="accepted"' in html and 'class="ignored"' in html
    assert "premedication · Obinutuzumab" in html
    assert evil not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x&gt;" in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "no external resource"
    assert "<script" not in html


def _app_with(make_app: Callable[..., Flask], db_url: str, **settings: Any) -> Flask:
    return make_app(DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY, **settings)


def test_analytics_need_the_admin_token_or_the_demo(
    make_app: Callable[..., Flask], db_url: str
) -> None:
    apps = []
    try:
        app = _app_with(make_app, db_url, ADMIN_TOKEN=TOKEN)
        apps.append(app)
        client = app.test_client()
        for url in ("/analytics/report", "/analytics/report.html"):
            assert client.get(url).status_code == 401
            wrong = client.get(url, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert wrong.get_json()["issue"][0]["details"]["coding"][0]["code"] == (
                "admin-unauthorized"
            )
            ok = client.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200
        app = _app_with(make_app, db_url)  # neither token nor demo
        apps.append(app)
        resp = app.test_client().get("/analytics/report")
        assert resp.status_code == 403
        assert "ADMIN_TOKEN" in resp.get_json()["issue"][0]["diagnostics"]
        app = _app_with(make_app, db_url, DEMO=True)
        apps.append(app)
        assert app.test_client().get("/analytics/report").status_code == 200
    finally:
        for a in apps:
            get_store(a).close()


def test_cli_report_text_and_json(
    store_app: Flask, db_url: str, monkeypatch: pytest.MonkeyPatch, cards_dir: Any
) -> None:
    run_fixture_flows(store_app)
    # The CLI is another process: it sees the card log once the app's writer has committed.
    assert get_store(store_app).flush()
    monkeypatch.setenv("CDS_DATABASE_URL", db_url)
    monkeypatch.setenv("CDS_PATIENT_HASH_KEY", HASH_KEY)
    if cards_dir:
        monkeypatch.setenv("CDS_CARDS_DIR", f'"{cards_dir}"')
    runner = CliRunner()
    result = runner.invoke(cli.main, ["report"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert "premedication / obinutuzumab" in text
    assert re.search(r"premedication / obinutuzumab\s+1\s+0\s+1\s+0", text), text
    shown = 'previously-tolerated "Previously tolerated" (https://example.org/override-reasons) 1'
    assert shown in text
    assert "no coded reason" not in text  # the reason-less override is not the latest
    assert re.search(r"premedication / paclitaxel\s+1\s+0\s+0\s+1", text), text
    result = runner.invoke(cli.main, ["report", "--json", "--since", "2020-01-01"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert row(data, "byRuleAndDrug", drug="obinutuzumab")["overridden"] == 1
    result = runner.invoke(cli.main, ["report", "--since", "2026-11-30", "--until", "2026-11-01"])
    assert result.exit_code != 0 and "before until" in result.output


def test_each_card_counts_once_by_its_latest_feedback(store_app: Flask) -> None:
    """Issue 18: "accepted 2 + overridden 3 + ignored 10 = 15 of 14 issued" — a card accepted
    and then overridden was counted in both columns. Now the latest item decides."""
    client = store_app.test_client()
    body = load_request("order-sign-contained-medication")
    cards = [
        card_for(call(client, with_session(body, patient=f"pat-outcome-{n}")), "premedication")
        for n in range(14)
    ]
    uuid = [c["uuid"] for c in cards]
    suggestion = [c["suggestions"][0]["uuid"] for c in cards]
    t0, t1 = T0, T0 + timedelta(minutes=1)
    client_reason = "https://example.org/override-reasons"
    posts = [
        [accepted(uuid[0], suggestion[0], when=t0)],  # accepted
        [accepted(uuid[1], suggestion[1], when=t0)],  # accepted, then overridden
        [overridden(uuid[1], "not-applicable", when=t1)],
        [overridden(uuid[2], "not-applicable", when=t0)],  # overridden, then accepted
        [accepted(uuid[2], suggestion[2], when=t1)],
        [overridden(uuid[3], "not-applicable", when=t0)],  # overridden twice: the later reason
        [overridden(uuid[3], "x", system=client_reason, when=t1)],
        # the same instant: the item stored last
        [accepted(uuid[4], suggestion[4], when=t0), overridden(uuid[4], "not-applicable", when=t0)],
        [overridden(uuid[5], when=t1)],  # posted before an earlier accept: the later time wins
        [accepted(uuid[5], suggestion[5], when=t0)],
    ]
    for items in posts:
        assert post_feedback(client, *items).status_code == 200
    data = client.get("/analytics/report").get_json()
    obi = row(data, "byRuleAndDrug", rule="premedication", drug="obinutuzumab")
    counts = (obi["issued"], obi["accepted"], obi["overridden"], obi["ignored"])
    assert counts == (14, 2, 4, 8)
    assert obi["accepted"] + obi["overridden"] + obi["ignored"] == obi["issued"]
    reasons = {(r["system"], r["code"]): r["cards"] for r in obi["overrideReasons"]}
    assert reasons == {(OUR_REASONS, "not-applicable"): 2, (client_reason, "x"): 1, (None, None): 1}
    assert sum(reasons.values()) == obi["overridden"]
    for section in ("totals", "byRule", "byDrug"):
        rolled = data["totals"] if section == "totals" else data[section][0]
        assert (rolled["issued"], rolled["accepted"], rolled["overridden"]) == (14, 2, 4)
    html = client.get("/analytics/report.html").get_data(as_text=True)
    assert "<title>2 accepted</title>" in html and "<title>4 overridden</title>" in html
    assert "<title>8 ignored</title>" in html


def test_chart_shows_each_card_once() -> None:
    from cds_server.analytics.present import outcome_split
    from cds_server.store import ReportRow

    row = ReportRow("premedication", "obinutuzumab", issued=6, accepted=3, overridden=2, ignored=1)
    assert outcome_split(row) == (3, 2, 1)
    assert sum(outcome_split(row)) == row.issued
