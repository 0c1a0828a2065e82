"""The /sandbox blueprint's server side: when it is served, its read-only helpers, the demo's
test key (demo only; tokens it signs pass real authentication) and its isolation from the
clinical layers. The page itself is driven in a real browser in ``test_sandbox_browser.py``."""

from __future__ import annotations

import ast
import json
import logging
import re
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask

from cds_server.config import ConfigError
from cds_server.sandbox import fixtures, testkey
from tests.conftest import load_fixture

SANDBOX = Path(__file__).resolve().parents[1] / "cds_server" / "sandbox"


@pytest.fixture
def demo_app(make_app: Callable[..., Flask]) -> Flask:
    return make_app(DEMO=True)


def test_served_in_demo_mode_with_a_strict_content_security_policy(demo_app: Flask) -> None:
    client = demo_app.test_client()
    page = client.get("/sandbox/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'src="/sandbox/static/sandbox.js"' in html
    assert 'src="/sandbox/static/vendor/markdown-it.min.js"' in html
    loaded = re.findall(r'<(?:script|link|img)[^>]*?(?:src|href)="([^"]*)"', html)
    assert loaded and all(u.startswith("/sandbox/static/") or u == "data:," for u in loaded)
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "img-src 'self' data:" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/sandbox").status_code == 308  # → /sandbox/
    for asset in ("sandbox.js", "sandbox.css", "vendor/markdown-it.min.js"):
        response = client.get(f"/sandbox/static/{asset}")
        assert response.status_code == 200, asset
        response.close()
    licence = client.get("/sandbox/static/vendor/markdown-it.LICENSE.txt")
    assert b"markdown-it 15.0.3" in licence.data and b"Permission is hereby granted" in licence.data
    licence.close()


def test_not_served_in_production_unless_enabled(make_app: Callable[..., Flask]) -> None:
    off = make_app().test_client()
    assert off.get("/sandbox/").status_code == 404
    assert off.get("/sandbox/api/drugs").status_code == 404
    on = make_app(SANDBOX_ENABLED=True).test_client()
    assert on.get("/sandbox/").status_code == 200
    assert on.get("/sandbox/api/drugs").status_code == 200


def test_production_sandbox_has_no_test_key(make_app: Callable[..., Flask]) -> None:
    client = make_app(SANDBOX_ENABLED=True).test_client()
    assert client.get("/sandbox/demo-jwks.json").status_code == 404
    assert (
        client.post("/sandbox/api/token", json={"aud": "http://x/cds-services"}).status_code == 404
    )
    assert 'data-signing="false"' in client.get("/sandbox/").get_data(as_text=True)
    with pytest.raises(ConfigError, match="demo mode only"):
        make_app(SANDBOX_ENABLED=True, SANDBOX_TEST_KEY=testkey.generate())
    with pytest.raises(ConfigError):
        make_app(DEMO=True, SANDBOX_TEST_KEY="-----BEGIN PRIVATE KEY-----")


def test_sandbox_enabled_must_be_a_boolean(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="SANDBOX_ENABLED"):
        make_app(SANDBOX_ENABLED="yes")


def test_drug_catalogue_comes_from_the_knowledge_base(demo_app: Flask, kb: Any) -> None:
    body = demo_app.test_client().get("/sandbox/api/drugs").get_json()
    assert body["knowledgeVersion"] == kb.version
    by_id = {d["id"]: d for d in body["drugs"]}
    assert set(by_id) == set(kb.drugs)
    displays = [d["display"].lower() for d in body["drugs"]]
    assert displays == sorted(displays)
    carboplatin = by_id["carboplatin"]
    assert carboplatin["coding"] == {
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": "40048",
        "display": "carboplatin",
    }
    assert "Paraplatin" in carboplatin["brands"]
    glofitamab = by_id["glofitamab"]
    assert glofitamab["coding"]["system"] == "http://www.whocc.no/atc"  # no RxNorm ingredient
    first_step = glofitamab["steps"][0]
    assert first_step["dose"] == {"value": 2.5, "unit": "mg"} and first_step["day"]
    assert by_id["rituximab"]["rateUnits"] == ["mg/h"]
    assert "mL/h" in body["rateUnits"] and "mg/h" in body["rateUnits"]
    assert {"mg", "mg/kg", "mg/m2"} <= set(body["doseUnits"])


def test_fixture_patients_and_scenarios(demo_app: Flask) -> None:
    client = demo_app.test_client()
    listing = client.get("/sandbox/api/fixtures").get_json()["fixtures"]
    keys = {f["key"]: f for f in listing}
    assert "patients/prior-rituximab-reaction" in keys
    scenario = keys["scenarios/carboplatin-anaphylaxis-reexposure"]
    assert scenario["draftOrderCount"] == 1 and scenario["hook"] == "order-sign"
    assert "Anaphylaxis" in scenario["description"]
    assert all("Fictional-" in f["label"] for f in listing)

    detail = client.get("/sandbox/api/fixtures/scenarios/carboplatin-anaphylaxis-reexposure")
    body = detail.get_json()
    types = {e["resource"]["resourceType"] for e in body["bundle"]["entry"]}
    assert {"Patient", "AllergyIntolerance", "MedicationRequest"} <= types
    assert body["draftOrders"][0]["id"] == "mr-pat-scn-plt-01-carbo"
    shift = (date.today() - fixtures.SCENARIO_ANCHOR).days
    assert body["datesShiftedByDays"] == shift
    expected = (date(2026, 11, 21) + timedelta(days=shift)).isoformat()
    assert body["draftOrders"][0]["authoredOn"] == expected

    plain = client.get("/sandbox/api/fixtures/patients/prior-rituximab-reaction").get_json()
    assert plain["bundle"] == {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": e["resource"]}
            for e in load_fixture("patients/prior-rituximab-reaction.json")["entry"]
        ],
    }
    for bad in ("scenarios/nope", "patients/..%2f..%2fetc", "other/prior-rituximab-reaction"):
        response = client.get(f"/sandbox/api/fixtures/{bad}")
        assert response.status_code == 404
        assert response.get_json()["resourceType"] == "OperationOutcome"


def test_shift_dates_moves_dates_and_datetimes_only() -> None:
    moved = fixtures.shift_dates(
        {"a": "2026-11-21", "b": ["2026-02-28T10:00:00Z"], "c": "2026-11-21 text", "d": 5}, 1
    )
    assert moved == {
        "a": "2026-11-22",
        "b": ["2026-03-01T10:00:00Z"],
        "c": "2026-11-21 text",
        "d": 5,
    }


def test_missing_fixture_folder_gives_an_empty_list(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    client = make_app(DEMO=True, SANDBOX_FIXTURES_DIR=str(tmp_path)).test_client()
    assert client.get("/sandbox/api/fixtures").get_json() == {"fixtures": []}


def test_demo_token_is_signed_by_the_published_public_key(demo_app: Flask) -> None:
    client = demo_app.test_client()
    jwks = client.get("/sandbox/demo-jwks.json").get_json()
    (public,) = jwks["keys"]
    assert public["kty"] == "EC" and public["crv"] == "P-384" and public["alg"] == "ES384"
    assert not {"d", "p", "q"} & set(public)  # public half only
    aud = "http://localhost:8080/cds-services/infusion-safety"
    body = client.post("/sandbox/api/token", json={"aud": aud}).get_json()
    assert jwt.get_unverified_header(body["token"])["kid"] == public["kid"]
    claims = jwt.decode(
        body["token"],
        jwt.PyJWK(public).key,
        algorithms=["ES384"],
        audience=aud,
        issuer=testkey.DEMO_ISS,
    )
    assert claims["exp"] - claims["iat"] == testkey.LIFETIME_SECONDS
    second = client.post("/sandbox/api/token", json={"aud": aud}).get_json()
    assert jwt.decode(second["token"], options={"verify_signature": False})["jti"] != claims["jti"]


@pytest.mark.parametrize(
    "body",
    [
        None,
        {},
        {"aud": 5},
        {"aud": "javascript:alert(1)"},
        {"aud": "/relative"},
        {"aud": "x" * 3000},
    ],
)
def test_demo_token_needs_an_http_audience(demo_app: Flask, body: Any) -> None:
    response = demo_app.test_client().post("/sandbox/api/token", json=body)
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["details"]["coding"][0]["code"] == "invalid-request"


def test_demo_with_auth_trusts_the_test_key_and_nothing_else(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    key = testkey.generate()
    public_url = "http://localhost:8080"
    settings = testkey.demo_auth_overrides(key, tmp_path, public_url)
    assert "BEGIN" not in (tmp_path / "trusted-clients.yaml").read_text()  # no private key
    app = make_app(DEMO=True, **settings)
    client = app.test_client()
    discovery = f"{public_url}/cds-services"
    assert client.get("/cds-services").status_code == 401
    token = client.post("/sandbox/api/token", json={"aud": discovery}).get_json()["token"]
    response = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    replay = client.get("/cds-services", headers={"Authorization": f"Bearer {token}"})
    assert replay.status_code == 401
    other = testkey.generate()  # same iss, a key the demo never published
    forged = other.sign(discovery)
    assert (
        client.get("/cds-services", headers={"Authorization": f"Bearer {forged}"}).status_code
        == 401
    )
    stale = key.sign(discovery, now=time.time() - 3600)
    assert (
        client.get("/cds-services", headers={"Authorization": f"Bearer {stale}"}).status_code == 401
    )


def test_demo_with_auth_keeps_other_trusted_clients(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    other = testkey.generate()
    extra = tmp_path / "dev-clients.yaml"
    extra.write_text(
        "clients:\n  - iss: https://sandbox.cds-hooks.org\n    jwks: "
        + json.dumps(other.public_jwks())
        + "\n"
    )
    folder = tmp_path / "run"
    folder.mkdir()
    settings = testkey.demo_auth_overrides(
        testkey.generate(), folder, "http://localhost:8080", extra
    )
    client = make_app(DEMO=True, **settings).test_client()
    other_token = jwt.encode(
        {
            "iss": "https://sandbox.cds-hooks.org",
            "aud": "http://localhost:8080/cds-services",
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
            "jti": "j-1",
        },
        other.private_key,
        algorithm="ES384",
        headers={"kid": other.kid},
    )
    response = client.get("/cds-services", headers={"Authorization": f"Bearer {other_token}"})
    assert response.status_code == 200


def test_cli_demo_auth_option(monkeypatch: pytest.MonkeyPatch, cards_dir: Any) -> None:
    from click.testing import CliRunner

    from cds_server import cli

    seen: dict[str, Any] = {}

    def fake_run(self: Flask, host: str, port: int, **kw: Any) -> None:
        seen.update(
            config=dict(self.config),
            jwks=self.test_client().get("/sandbox/demo-jwks.json").get_json(),
        )

    monkeypatch.setattr(Flask, "run", fake_run)
    if cards_dir:
        monkeypatch.setenv("CDS_CARDS_DIR", f'"{cards_dir}"')
    runner = CliRunner()
    result = runner.invoke(cli.main, ["demo", "--auth", "--port", "8099"])
    assert result.exit_code == 0, result.output
    assert seen["config"]["AUTH_REQUIRED"] is True
    assert seen["config"]["PUBLIC_URL"] == "http://localhost:8099"
    assert seen["jwks"]["keys"][0]["kid"] == seen["config"]["SANDBOX_TEST_KEY"].kid
    assert not Path(seen["config"]["CLIENTS_FILE"]).exists()  # temporary, removed at exit
    result = runner.invoke(cli.main, ["demo", "--clients", __file__])
    assert result.exit_code == 2 and "--clients is used only with --auth" in result.output


def test_sandbox_imports_nothing_from_the_clinical_layers() -> None:
    forbidden = (
        "cds_server.reasoning",
        "cds_server.recognition",
        "cds_server.render",
        "cds_server.pipeline",
        "cds_server.fhirdata",
        "cds_server.web.api",
        "cds_server.store",
    )
    for path in SANDBOX.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"


def _demo_config(monkeypatch: pytest.MonkeyPatch, cards_dir: Any, *args: str) -> dict[str, Any]:
    from click.testing import CliRunner

    from cds_server import cli

    seen: dict[str, Any] = {}

    def fake_run(self: Flask, host: str, port: int, **kw: Any) -> None:
        key = self.config["SANDBOX_TEST_KEY"]
        client = self.test_client()
        seen["config"] = dict(self.config)
        seen["status"] = {
            base: client.get(
                "/cds-services",
                headers={"Authorization": f"Bearer {key.sign(base + '/cds-services')}"},
            ).status_code
            for base in (
                "http://localhost:8099",
                "http://127.0.0.1:8099",
                "http://192.0.2.10:8099",
                "https://cds-demo.example.org",
            )
        }

    monkeypatch.setattr(Flask, "run", fake_run)
    if cards_dir:
        monkeypatch.setenv("CDS_CARDS_DIR", f'"{cards_dir}"')
    result = CliRunner().invoke(cli.main, ["demo", "--auth", "--port", "8099", *args])
    assert result.exit_code == 0, result.output
    return seen


def test_demo_auth_on_loopback_accepts_localhost_and_127_0_0_1(
    monkeypatch: pytest.MonkeyPatch, cards_dir: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    seen = _demo_config(monkeypatch, cards_dir, "--host", "127.0.0.1")
    assert seen["status"] == {
        "http://localhost:8099": 200,
        "http://127.0.0.1:8099": 200,  # the Sandbox opened at 127.0.0.1 is no longer refused
        "http://192.0.2.10:8099": 401,
        "https://cds-demo.example.org": 401,
    }
    assert "http://localhost:8099/cds-services" in caplog.text
    assert "http://127.0.0.1:8099/cds-services" in caplog.text
    assert "--public-url" in caplog.text


def test_demo_public_url_is_the_only_audience(
    monkeypatch: pytest.MonkeyPatch, cards_dir: Any
) -> None:
    seen = _demo_config(monkeypatch, cards_dir, "--public-url", "https://cds-demo.example.org/")
    assert seen["config"]["PUBLIC_URL"] == "https://cds-demo.example.org"
    assert seen["status"] == {
        "http://localhost:8099": 401,
        "http://127.0.0.1:8099": 401,
        "http://192.0.2.10:8099": 401,
        "https://cds-demo.example.org": 200,
    }


def test_demo_public_url_must_be_http(cards_dir: Any) -> None:
    from click.testing import CliRunner

    from cds_server import cli

    result = CliRunner().invoke(cli.main, ["demo", "--public-url", "cds.example.org"])
    assert result.exit_code == 2 and "http(s) URL" in result.output
