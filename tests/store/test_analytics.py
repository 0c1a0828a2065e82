"""Analytics: ``cds-server report``, GET /analytics/report (JSON) and the HTML page, fed by
the fixtures' accepted and overridden feedback flows."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from cds_server import cli
from cds_server.store import get_store
from tests.conftest import FIXTURES, load_request
from tests.store.conftest import HASH_KEY
from tests.store.flows import call, overridden, post_feedback

FEEDBACK = sorted((FIXTURES / "feedback").glob("*.json"))
TOKEN = "admin-token-0123456789-0123456789-abcdef"


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
    assert (obi["issued"], obi["accepted"], obi["overridden"], obi["ignored"]) == (1, 1, 1, 0)
    reasons = {(r["code"], r["system"]): (r["cards"], r["display"]) for r in obi["overrideReasons"]}
    assert reasons == {  # a client's reason: the display it sent
        ("previously-tolerated", "https://example.org/override-reasons"): (
            1,
            "Previously tolerated",
        ),
        (None, None): (1, "no coded reason"),
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
    assert re.search(r"premedication / obinutuzumab\s+1\s+1\s+1\s+0", text), text
    shown = 'previously-tolerated "Previously tolerated" (https://example.org/override-reasons) 1'
    assert shown in text
    assert "no coded reason 1" in text
    assert re.search(r"premedication / paclitaxel\s+1\s+0\s+0\s+1", text), text
    result = runner.invoke(cli.main, ["report", "--json", "--since", "2020-01-01"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert row(data, "byRuleAndDrug", drug="obinutuzumab")["accepted"] == 1
    result = runner.invoke(cli.main, ["report", "--since", "2026-11-30", "--until", "2026-11-01"])
    assert result.exit_code != 0 and "before until" in result.output


def test_chart_shows_each_card_once() -> None:
    from cds_server.analytics.present import outcome_split
    from cds_server.store import ReportRow

    row = ReportRow("premedication", "obinutuzumab", issued=6, accepted=4, overridden=2, ignored=1)
    assert outcome_split(row) == (3, 1, 1, 1)
    assert sum(outcome_split(row)) == row.issued
