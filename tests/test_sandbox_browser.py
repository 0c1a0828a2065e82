"""The sandbox page in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium).

The app runs with demo settings on a free loopback port (a werkzeug server in a thread, its own
SQLite file); the page calls it over HTTP exactly as an EHR's browser would.

Without Chromium (or the ``playwright`` package) these tests skip and say how to install it;
under ``CI=true`` a missing browser is a failure. Playwright's own browser download
(``playwright install``) is never used.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, jsonify, request
from werkzeug.serving import make_server

from cds_server.cli import DEMO_OVERRIDES
from cds_server.sandbox import testkey
from cds_server.web import app as app_module

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
HOW_TO_INSTALL = (
    "the browser tests need Debian's Chromium at /usr/bin/chromium and the Python package "
    "playwright (pip install -e '.[test]'); install the browser with: apt-get install -y chromium"
)
SCREENSHOTS = os.environ.get("SANDBOX_SCREENSHOTS")  # folder: save screenshots (cards, pages)
TIMEOUT_MS = 15_000


# Every visible text element of the cards and the form: contrast against its effective
# background (WCAG 2 relative luminance) must be at least 4.5:1.
CONTRAST_JS = """() => {
  const rgb = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => [r, g, b].map((v) => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); })
    .reduce((acc, v, i) => acc + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (el) => { for (; el; el = el.parentElement) {
    const c = rgb(getComputedStyle(el).backgroundColor);
    if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3); }
    return [255, 255, 255]; };
  const out = [];
  const sel = '.cds-card *, .panel label, .hint, .meta, .tag, .indicator, .status, button';
  for (const el of document.querySelectorAll(sel)) {
    const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!own || !el.offsetParent) continue;
    const style = getComputedStyle(el);
    if (parseFloat(style.opacity) < 1 || el.disabled) continue;
    const a = lum(rgb(style.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) out.push(`${el.className || el.tagName}: ${ratio.toFixed(2)}`);
  }
  return out;
}"""


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}: {HOW_TO_INSTALL} (CI=true: a missing browser is a failure)")
    pytest.skip(f"{reason}: {HOW_TO_INSTALL}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMIUM.exists() and os.access(CHROMIUM, os.X_OK)):
        _missing("Chromium not found at /usr/bin/chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


class LiveServer:
    """A werkzeug server on 127.0.0.1:<free port>, in a daemon thread."""

    def __init__(self) -> None:
        self._server = make_server("127.0.0.1", 0, _placeholder, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self, app: Any) -> LiveServer:
        self._server.app = app
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()


def _placeholder(environ: Any, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [])
    return []


@pytest.fixture
def live(cards_dir: Any, tmp_path: Path) -> Iterator[Callable[..., tuple[Flask, str]]]:
    """Start the demo app (plus ``settings``) on a free port; returns (app, base URL)."""
    servers: list[LiveServer] = []

    def start(**settings: Any) -> tuple[Flask, str]:
        server = LiveServer()
        servers.append(server)
        config = {
            **DEMO_OVERRIDES,
            "CARDS_DIR": cards_dir,
            "DATABASE_URL": f"sqlite:///{tmp_path / f'store-{len(servers)}.sqlite3'}",
            "PATIENT_HASH_KEY": "sandbox-browser-test-key-0123456789abcdef",
            **settings,
        }
        if callable(config.get("PUBLIC_URL")):
            config.update(config.pop("PUBLIC_URL")(server.url, tmp_path))
        app = app_module.create_app(config)
        server.start(app)
        return app, server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    new_page = context.new_page()
    new_page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    new_page.on("pageerror", lambda exc: errors.append(str(exc)))
    new_page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    new_page.errors = errors
    yield new_page
    context.close()
    assert errors == [], f"errors in the page: {errors}"


def open_sandbox(page: Any, base: str) -> None:
    page.goto(f"{base}/sandbox/")
    page.wait_for_selector("#sandbox-root[data-ready='true']")


def choose_patient(page: Any, key: str) -> None:
    page.select_option("#patient-select", key)
    page.wait_for_selector("#patient-summary .patient-card")


def send(page: Any, hook: str = "order-sign") -> Any:
    page.get_by_role("radio", name=hook).check()
    page.get_by_role("button", name=f"Send {hook}").click()
    page.wait_for_selector("#call-status.ok, #call-status.fail")
    assert "card(s)" in page.inner_text("#call-status"), page.inner_text("#call-status")
    return page.locator(".cds-card")


def card_with(page: Any, summary_text: str) -> Any:
    card = page.locator(".cds-card", has=page.locator(".card-summary", has_text=summary_text))
    assert card.count() == 1, f"no single card whose summary contains {summary_text!r}"
    return card


def report(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/analytics/report")
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def row(body: dict[str, Any], rule: str, drug: str) -> dict[str, Any]:
    found = [r for r in body["byRuleAndDrug"] if r["rule"] == rule and r["drug"] == drug]
    assert found, f"no report row for {rule}/{drug}: {body['byRuleAndDrug']}"
    return found[0]


def screenshot(page: Any, name: str) -> None:
    """With SANDBOX_SCREENSHOTS=<folder>, save what the viewport shows (docs/ uses these)."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SCREENSHOTS) / name))


# -- the flows of the issue -----------------------------------------------------------------


def test_glofitamab_step_up_dose_accept_premedication_with_the_keyboard(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    app, base = live()
    open_sandbox(page, base)
    choose_patient(page, "scenarios/glofitamab-sud1-admission")
    summary = page.locator("#patient-summary")
    assert "obinutuzumab" in summary.inner_text()  # the pretreatment, in the infusion history
    assert "Allergies (0)" in summary.inner_text()

    page.select_option("#drug", "glofitamab")
    page.get_by_role("button", name="2.5 mg: step-up dose 1, cycle 1 day 8").click()
    assert page.input_value("#dose") == "2.5" and page.input_value("#cycle-day") == "cycle 1 day 8"
    page.fill("#volume", "50")
    page.get_by_role("button", name="Add draft order").click()
    drafts = page.locator("#draft-list > li")
    assert drafts.count() == 1
    assert "glofitamab 2.5 mg in 50 mL IV, cycle 1 day 8" in drafts.first.inner_text()

    cards = send(page)
    hospitalization = card_with(page, "hospitalize")
    assert hospitalization.get_attribute("data-indicator") == "warning"
    assert "Glofitamab" in hospitalization.locator(".card-summary").inner_text()
    assert "Hospitalization" in hospitalization.locator(".card-detail").inner_text()
    assert hospitalization.locator(".card-detail strong").count() >= 1  # Markdown rendered
    assert "Topic:" in hospitalization.locator(".card-source").inner_text()
    assert cards.count() >= 2
    sent = page.inner_text("#request-json")
    assert '"hook": "order-sign"' in sent and '"prefetch"' in sent and '"allergies"' in sent
    curl = page.inner_text("#curl")
    assert curl.startswith(f"curl -sS -X POST '{base}/cds-services/infusion-safety-sign'")

    premedication = card_with(page, "premedication missing")
    accept = premedication.get_by_role("button", name="Accept: Order acetaminophen", exact=False)
    accept.focus()
    page.keyboard.press("Enter")  # keyboard only
    page.wait_for_function("document.querySelectorAll('#draft-list > li').length === 2")
    added = page.locator("#draft-list > li.from-card")
    assert added.count() == 1 and "acetaminophen" in added.inner_text().lower()
    outcome = premedication.locator(".card-outcome")
    outcome.filter(has_text="Feedback sent: HTTP 200").wait_for()
    accepted = premedication.get_by_role(
        "button", name="Accepted: Order acetaminophen", exact=False
    )
    assert accepted.is_disabled()

    counts = row(report(app), "premedication", "glofitamab")
    assert counts["issued"] == 1 and counts["accepted"] == 1 and counts["overridden"] == 0


def test_carboplatin_reexposure_after_anaphylaxis_override_is_stored(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    app, base = live()
    open_sandbox(page, base)
    choose_patient(page, "scenarios/carboplatin-anaphylaxis-reexposure")
    summary = page.locator("#patient-summary").inner_text()
    assert "carboplatin" in summary and "severe / high criticality" in summary
    assert "Anaphylaxis" in summary

    page.select_option("#drug", "carboplatin")
    page.fill("#dose", "600")
    page.fill("#volume", "250")
    page.fill("#rate", "250")
    page.select_option("#rate-unit", "mL/h")
    page.fill("#cycle-day", "cycle 8 day 1")
    page.get_by_role("button", name="Add draft order").click()
    send(page)

    critical = card_with(page, "Carboplatin")
    assert critical.get_attribute("data-indicator") == "critical"
    assert page.locator(".cds-card").first.get_attribute("data-indicator") == "critical"
    assert critical.locator(".indicator").inner_text().lower() == "critical"
    table = critical.locator(".card-detail table")
    assert table.count() == 1  # the desensitization schedule, rendered from Markdown
    assert "Cumulative mg" in table.locator("th").all_inner_texts()
    assert table.locator("tbody tr").count() == 12
    page.set_viewport_size({"width": 1280, "height": 1800})
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "sandbox-order-sign.png")

    reasons = critical.get_by_label("Override reason")
    options = reasons.locator("option").all_inner_texts()
    (planned,) = [o for o in options if o.startswith("Desensitization already planned")]
    reasons.select_option(label=planned)
    (response_card,) = [
        c
        for c in json.loads(page.inner_text("#response-json"))["cards"]
        if c["indicator"] == "critical"
    ]
    (offered,) = [r for r in response_card["overrideReasons"] if r["display"] == planned]
    critical.get_by_role("button", name="Override").click()
    critical.locator(".card-outcome", has_text="Feedback sent: HTTP 200").wait_for()
    log = page.inner_text("#feedback-log")
    assert "/cds-services/infusion-safety-sign/feedback — overridden — HTTP 200" in log

    stored = row(report(app), "prior-reaction", "carboplatin")
    assert stored["issued"] == 1 and stored["overridden"] == 1
    assert [r["code"] for r in stored["overrideReasons"]] == [offered["code"]]


def test_scenario_orders_order_select_and_patient_view(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    _, base = live()
    open_sandbox(page, base)
    choose_patient(page, "scenarios/glofitamab-sud1-admission")
    page.get_by_role("button", name="Use this scenario's draft orders (5)").click()
    assert page.locator("#draft-list > li").count() == 5
    page.locator("#draft-list > li").nth(1).get_by_role("checkbox").uncheck()
    send(page, "order-select")
    sent = json.loads(page.inner_text("#request-json"))
    assert sent["hook"] == "order-select"
    assert (
        len(sent["context"]["selections"]) == 4
        and len(sent["context"]["draftOrders"]["entry"]) == 5
    )
    page.get_by_role("button", name="Remove Columvi", exact=False).click()
    assert page.locator("#draft-list > li").count() == 4

    choose_patient(page, "patients/prior-rituximab-reaction")
    send(page, "patient-view")
    assert '"hook": "patient-view"' in page.inner_text("#request-json")
    assert "draftOrders" not in page.inner_text("#request-json")
    assert page.locator(".cds-card").count() >= 1


def test_pasted_patient_and_order_and_update_suggestion(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    """A pasted Bundle and MedicationRequest; a rate card's update replaces the draft by id."""
    _, base = live()
    open_sandbox(page, base)
    scenario = Path(__file__).parents[1] / "fixtures/fhir/scenarios/rituximab-first-rate-above"
    body = json.loads(scenario.with_suffix(".request.json").read_text())
    resources = [
        e["resource"]
        for key in ("medications", "allergies")
        for e in body["prefetch"][key].get("entry", [])
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": body["prefetch"]["patient"]}] + [{"resource": r} for r in resources],
    }
    page.get_by_text("Paste a Patient or Bundle").click()
    page.fill("#paste-patient", json.dumps(bundle))
    page.get_by_role("button", name="Use pasted data").click()
    assert body["context"]["patientId"] in page.inner_text("#patient-summary")
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    page.get_by_text("Paste a MedicationRequest").click()
    page.fill("#paste-order", json.dumps(draft))
    page.get_by_role("button", name="Add pasted order(s)").click()
    send(page)
    rate = card_with(page, "rate")
    update = rate.get_by_role("button", name="Accept:", exact=False).first
    update.click()
    page.wait_for_selector("#draft-list > li.from-card")
    items = page.locator("#draft-list > li")
    assert items.count() == 1  # replaced by id, not added
    assert "updated from a card" in items.first.inner_text()


def test_cards_from_another_service_are_escaped(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    """Any CDS service URL: a hostile service's HTML, scripts and javascript: links stay text."""
    _, base = live()
    evil = Flask("evil-cds")

    @evil.after_request
    def _cors(response: Response) -> Response:
        response.headers["Access-Control-Allow-Origin"] = "*"
        response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        return response

    @evil.get("/cds-services")
    def _discovery() -> Response:
        return jsonify({"services": [{"hook": "patient-view", "id": "evil", "description": "x"}]})

    @evil.route("/cds-services/evil", methods=["POST", "OPTIONS"])
    def _service() -> Response:
        if request.method == "OPTIONS":
            return Response(status=204)
        return jsonify(
            {
                "cards": [
                    {
                        "uuid": "c-1",
                        "summary": "<b>bold?</b> summary",
                        "indicator": "info",
                        "detail": "<script>window.pwned = 1</script>"
                        ' <img src=x onerror="window.pwned=2">'
                        " **strong** [click](javascript:window.pwned=3)",
                        "source": {"label": "<i>src</i>", "url": "javascript:alert(1)"},
                        "links": [
                            {"label": "bad", "url": "javascript:alert(1)", "type": "absolute"}
                        ],
                    }
                ]
            }
        )

    server = LiveServer().start(evil)
    try:
        open_sandbox(page, base)
        choose_patient(page, "patients/prior-rituximab-reaction")
        page.fill("#service-url", f"{server.url}/cds-services")
        page.get_by_role("button", name="Load services").click()
        page.get_by_text("1 service(s) found").wait_for()
        send(page, "patient-view")
        card = page.locator(".cds-card")
        assert card.locator(".card-summary").inner_text() == "<b>bold?</b> summary"
        detail = card.locator(".card-detail")
        assert detail.locator("script, img, b").count() == 0
        assert "<script>window.pwned = 1</script>" in detail.inner_text()
        assert detail.locator("strong").inner_text() == "strong"
        assert card.locator("a[href^='javascript']").count() == 0
        assert page.evaluate("window.pwned") is None
    finally:
        server.stop()


def test_demo_with_auth_signed_calls_pass_and_unsigned_fail(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    def with_auth(url: str, folder: Path) -> dict[str, Any]:
        run = folder / "auth"
        run.mkdir()
        return testkey.demo_auth_overrides(testkey.generate(), run, url)

    app, base = live(PUBLIC_URL=with_auth)
    assert app.config["AUTH_REQUIRED"] is True
    open_sandbox(page, base)
    assert "Discovery failed: discovery answered 401" in page.inner_text("#call-status")
    page.get_by_role("radio", name="Sign with the demo's test key (ES384)").check()
    page.get_by_role("button", name="Load services").click()
    page.get_by_text("3 service(s) found").wait_for()
    choose_patient(page, "scenarios/carboplatin-anaphylaxis-reexposure")
    page.get_by_role("button", name="Use this scenario's draft orders (1)").click()
    send(page)
    assert card_with(page, "Carboplatin").get_attribute("data-indicator") == "critical"
    # The curl command is written after the cards are shown: wait for it (a flake under load).
    page.locator("#curl", has_text="Authorization: Bearer ey").wait_for()
    card_with(page, "Carboplatin").get_by_role("button", name="Override").click()
    page.get_by_text("Feedback sent: HTTP 200").wait_for()  # feedback is signed too
    expected = "Failed to load resource: the server responded with a status of 401 (UNAUTHORIZED)"
    assert expected in page.errors  # the first, unsigned discovery call
    page.errors[:] = [e for e in page.errors if e != expected]


def test_narrow_side_panel_has_no_horizontal_scroll(
    live: Callable[..., tuple[Flask, str]], browser: Any
) -> None:
    _, base = live()
    context = browser.new_context(viewport={"width": 360, "height": 800})
    narrow = context.new_page()
    narrow.set_default_timeout(TIMEOUT_MS)
    try:
        open_sandbox(narrow, base)
        choose_patient(narrow, "scenarios/carboplatin-anaphylaxis-reexposure")
        narrow.get_by_role("button", name="Use this scenario's draft orders (1)").click()
        send(narrow)
        narrow.locator(".cds-card table").wait_for()
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 360, f"the page is {width} px wide at a 360 px viewport"
        unlabelled = narrow.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea, button')]
                 .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                              && !(e.tagName === 'BUTTON' && e.textContent.trim()))
                 .map(e => e.id || e.outerHTML.slice(0, 60))"""
        )
        assert unlabelled == []
        low = narrow.evaluate(CONTRAST_JS)
        assert low == [], f"text below WCAG AA contrast (4.5:1): {low}"
        narrow.locator(".cds-card").first.scroll_into_view_if_needed()
        screenshot(narrow, "sandbox-order-sign-narrow.png")
    finally:
        context.close()


# The page's own stylesheet applies only if the CSP hash admits it: a blocked one leaves
# Chromium's defaults (16px text, no card border).
KNOWLEDGE_PAGE_STATE = """() => ({
  font: getComputedStyle(document.body).fontSize,
  border: getComputedStyle(document.querySelector('.fact')).borderTopStyle,
  target: document.querySelector(':target') ? document.querySelector(':target').id : null,
  top: document.querySelector(':target') ?
       Math.round(document.querySelector(':target').getBoundingClientRect().top) : null,
})"""


def test_a_card_source_link_opens_its_topic_on_the_drug_page(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    _, base = live()
    open_sandbox(page, base)
    choose_patient(page, "scenarios/rituximab-first-rate-above")
    page.get_by_role("button", name="Use this scenario's draft orders", exact=False).click()
    send(page, "order-sign")
    card = page.locator(".cds-card", has=page.locator(".card-summary", has_text="Rituximab:"))
    card = card.filter(has_text="exceeds the start rate")
    assert card.count() == 1
    link = card.locator(".card-source a")
    assert link.get_attribute("href") == (f"{base}/knowledge/drugs/rituximab.html#rate-titration")
    errors: list[str] = []  # a CSP violation is a console error
    page.context.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with page.context.expect_page() as opened:
        link.click()
    knowledge = opened.value
    knowledge.wait_for_load_state()
    state = knowledge.evaluate(KNOWLEDGE_PAGE_STATE)
    assert state["font"] == "14px" and state["border"] == "solid", state
    assert state["target"] == "rate-titration"
    assert 0 <= state["top"] < 50  # scrolled to the section
    assert knowledge.locator("h1").inner_text() == "Rituximab"
    section = knowledge.locator("section#rate-titration")
    assert "Applies to the first infusion of this drug." in section.inner_text()
    knowledge.goto(f"{base}/knowledge/drugs/rituximab.html")
    screenshot(knowledge, "knowledge-rituximab.png")
    knowledge.locator("nav.crumbs a").click()
    knowledge.wait_for_url(f"{base}/knowledge/index.html")
    assert knowledge.locator("h1").inner_text() == "Infusion safety CDS — knowledge pages"
    screenshot(knowledge, "knowledge-index.png")
    knowledge.get_by_role("link", name="Rituximab", exact=True).click()
    knowledge.wait_for_url(f"{base}/knowledge/drugs/rituximab.html")
    assert errors == []


SITE_EXAMPLE = Path(__file__).resolve().parents[1] / "fixtures" / "site-example"


def test_a_knowledge_page_shows_the_site_overlay_beside_the_label_fact(
    live: Callable[..., tuple[Flask, str]], page: Any
) -> None:
    """With the example site overlay, the label fact and the institution entry that replaces
    it stand side by side (label left, site right) at a desktop width, the label above the
    site's entry on a narrow screen."""
    _, base = live(SITE_DIR=str(SITE_EXAMPLE))
    page.goto(f"{base}/knowledge/drugs/rituximab.html#rate-rapid-90-min")
    state = page.evaluate(KNOWLEDGE_PAGE_STATE)
    assert state["font"] == "14px" and state["target"] == "rate-rapid-90-min", state
    for anchor, protocol in (
        ("rate-rapid-90-min", "ONC-RIT-04 v2"),
        ("premedication-every-infusion-2", "ONC-PRE-07 v3"),
    ):
        fact = page.locator(f"#{anchor}")
        label = fact.locator(".label-side").bounding_box()
        site = fact.locator(".site-side").bounding_box()
        assert label["x"] + label["width"] <= site["x"], anchor
        assert abs(label["y"] - site["y"]) < 4, anchor
        assert f"Label (replaced here by {protocol})" in fact.locator(".label-side").inner_text()
        assert f"Institution protocol {protocol}" in fact.locator(".site-side").inner_text()
    page.evaluate(
        "window.scrollTo(0, document.getElementById('premedication-every-infusion-2')"
        ".getBoundingClientRect().top + window.scrollY - 60)"
    )
    screenshot(page, "knowledge-rituximab-site.png")
    page.set_viewport_size({"width": 420, "height": 900})
    fact = page.locator("#rate-rapid-90-min")
    label = fact.locator(".label-side").bounding_box()
    site = fact.locator(".site-side").bounding_box()
    assert site["y"] >= label["y"] + label["height"]  # stacked: the label, then the site's


def test_missing_browser_skips_or_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium"):
        _missing("Chromium not found at /usr/bin/chromium")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: a missing browser is a failure"):
        _missing("Chromium not found at /usr/bin/chromium")
