"""Analytics for the pharmacy team (blueprint ``bp``): how cards fare, per rule and drug.

* ``GET /analytics/report``       — JSON (``?since=2026-11-01&until=2026-11-21``);
* ``GET /analytics/report.html``  — the same as a page with an inline SVG bar chart (no
  script, no external resource, everything HTML-escaped; strict Content-Security-Policy).

Access (until client authentication lands, which should replace it): with ``ADMIN_TOKEN``
set, ``Authorization: Bearer <ADMIN_TOKEN>`` is required (401 otherwise); without it the
endpoints answer only in demo mode and 403 everywhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Response, current_app, jsonify, render_template, request

from cds_server import store
from cds_server.analytics import present
from cds_server.knowledge.model import KnowledgeBase
from cds_server.web import admin

bp = Blueprint("analytics", __name__, url_prefix="/analytics", template_folder="templates")

CHART_WIDTH = 520
ROW_HEIGHT = 28
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@bp.before_request
def _require_admin() -> None:
    admin.require_admin("Analytics")


def _report() -> tuple[store.Report, KnowledgeBase]:
    since, until = present.window(
        request.args.get("since"), request.args.get("until"), datetime.now(UTC)
    )
    kb = current_app.extensions["cds_server"].kb
    return store.get_store().report(since, until), kb


@bp.get("/report")
def report_json() -> Response:
    report, kb = _report()
    response = jsonify(present.report_json(report, kb))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/report.html")
def report_html() -> Response:
    report, kb = _report()
    rows = report.rows
    body = render_template(
        "analytics/report.html",
        report=report,
        data=present.report_json(report, kb),
        bars=present.chart_bars(rows, kb, width=CHART_WIDTH, row_height=ROW_HEIGHT),
        chart_width=CHART_WIDTH,
        row_height=ROW_HEIGHT,
        since=request.args.get("since", ""),
        until=request.args.get("until", ""),
    )
    response = Response(body, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
