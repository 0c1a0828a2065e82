"""The trusted-clients file: shape, precise errors, and the production/demo start-up modes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from flask import Flask

from cds_server import cli
from cds_server.config import ConfigError
from cds_server.web import trusted_clients
from tests import jwtkit as kit
from tests.conftest import ROOT

SANDBOX = ROOT / "fixtures" / "trusted-clients" / "sandbox.yaml"
SANDBOX_KID = "44823f3d-0b01-4a6c-a80e-b9d3e8a7226f"


def _errors(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        trusted_clients.parse(data, "clients.yaml")
    return str(info.value)


def test_the_readme_shape_loads(tmp_path: Path) -> None:
    path = tmp_path / "clients.yaml"
    path.write_text(
        "clients:\n"
        "  - iss: https://ehr.example.org\n"
        "    jku: https://ehr.example.org/.well-known/jwks.json\n"
        "    tenant: optional-tenant-id\n"
        "    fhir_servers: [https://EHR.example.org:443/fhir/]\n"
        "  - iss: https://sandbox.cds-hooks.org\n"
        f"    jwks: {{keys: [{kit.key('es384').public_jwk()}]}}\n"
        "    algorithms: [ES384]\n",
        encoding="utf-8",
    )
    loaded = trusted_clients.load(path)
    ehr, sandbox = loaded.clients
    assert ehr.jku == "https://ehr.example.org/.well-known/jwks.json" and ehr.keys is None
    assert ehr.tenant == "optional-tenant-id"
    assert ehr.fhir_servers == ("https://ehr.example.org/fhir",)  # normalised
    assert ehr.algorithms == {"ES384", "RS384"}
    assert sandbox.algorithms == {"ES384"} and sandbox.fhir_servers == ()
    assert list(sandbox.keys or {}) == ["kid-es384"]
    assert loaded.find("https://ehr.example.org", "optional-tenant-id") is ehr
    assert loaded.find("https://ehr.example.org", "other") is None
    assert loaded.find("https://sandbox.cds-hooks.org", "any-tenant") is sandbox


def test_the_sandbox_example_is_the_published_public_key() -> None:
    (client,) = trusted_clients.load(SANDBOX).clients
    assert client.iss == "https://sandbox.cds-hooks.org"
    key = (client.keys or {})[SANDBOX_KID]
    assert (key["kty"], key["crv"], key["alg"]) == ("EC", "P-384", "ES384")
    assert "d" not in key
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SANDBOX_KID in readme and key["x"] in readme and key["y"] in readme


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({}, "clients: Missing data for required field."),
        ({"clients": []}, "clients: Shorter than minimum length 1."),
        ({"clients": [{"iss": "x"}]}, "clients.0.jwks: give exactly one of jwks"),
        (
            {"clients": [{"iss": "x", "jku": "https://a/j", "jwks": {"keys": []}}]},
            "clients.0.jwks: give exactly one of jwks",
        ),
        ({"clients": [{"jku": "https://a/j"}]}, "clients.0.iss: Missing data for required field."),
        ({"clients": [{"iss": "x", "jku": "http://a/j"}]}, "clients.0.jku: must be an https URL"),
        (
            {"clients": [{"iss": "x", "jku": "https://a/j", "algorithms": ["HS256"]}]},
            "clients.0.algorithms.0: HS256 is never accepted",
        ),
        (
            {"clients": [{"iss": "x", "jku": "https://a/j", "algorithms": ["none"]}]},
            "clients.0.algorithms.0: none is never accepted",
        ),
        (
            {"clients": [{"iss": "x", "jku": "https://a/j", "algorithms": ["PS256"]}]},
            "clients.0.algorithms.0: must be one of ES256, ES384, RS256, RS384",
        ),
        (
            {"clients": [{"iss": "x", "jku": "https://a/j", "fhir_servers": ["ftp://a"]}]},
            "clients.0.fhir_servers.0: must be a plain http(s) base URL",
        ),
        (
            {"clients": [{"iss": "x", "jku": "https://a/j", "surprise": 1}]},
            "clients.0.surprise: Unknown field.",
        ),
        ({"clients": [{"iss": "x", "jwks": {"keys": []}}]}, "clients.0.jwks: must be a JWK Set"),
        (
            {"clients": [{"iss": "x", "jwks": {"keys": [{"kty": "EC"}]}}]},
            "clients.0.jwks.keys.0: kid is required",
        ),
        (
            {"clients": [{"iss": "x", "jwks": {"keys": [{"kty": "oct", "kid": "a"}]}}]},
            "clients.0.jwks.keys.0: kty must be EC or RSA",
        ),
        (
            {"clients": [{"iss": "x", "jwks": {"keys": [kit.key("es256").public_jwk()]}}]},
            "clients.0.jwks.keys.0: this EC P-256 key (alg unset) fits none of the enabled",
        ),
        (
            {
                "clients": [
                    {"iss": "x", "jwks": {"keys": [{**kit.key("es384").public_jwk(), "x": "AA"}]}}
                ]
            },
            "clients.0.jwks.keys.0: is not a valid EC public key",
        ),
        (
            {
                "clients": [
                    {
                        "iss": "x",
                        "jwks": {
                            "keys": [kit.key("es384").public_jwk(), kit.key("es384").public_jwk()]
                        },
                    }
                ]
            },
            "clients.0.jwks.keys.1: duplicate kid (same as keys.0)",
        ),
        (
            {
                "clients": [
                    {"iss": "x", "jku": "https://a/j"},
                    {"iss": "x", "jku": "https://b/j"},
                ]
            },
            "clients.1: same iss and tenant as clients.0",
        ),
    ],
)
def test_precise_errors(data: Any, expected: str) -> None:
    text = _errors(data)
    assert text.startswith("clients.yaml is invalid:\n")
    assert expected in text, text


def test_private_keys_are_refused() -> None:
    # The spec's example private JWK, pasted by mistake.
    private = {
        "kty": "EC",
        "d": "SeFXUXda8UomZ8GFUl7HH_Oi15rIbfMcsWj9ecIsDR8kLbqsEz2CGNgwy_IcILxy",
        "use": "sig",
        "crv": "P-384",
        "kid": "example-kid",
        "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
        "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
        "alg": "ES384",
    }
    text = _errors({"clients": [{"iss": "x", "jwks": {"keys": [private]}}]})
    assert "clients.0.jwks.keys.0: contains private key material (d)" in text
    assert private["d"] not in text


def test_small_rsa_keys_are_refused() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    jwk = {**RSAAlgorithm.to_jwk(weak, as_dict=True), "kid": "weak"}
    assert "at least 2048 bits" in _errors({"clients": [{"iss": "x", "jwks": {"keys": [jwk]}}]})


def test_every_problem_is_reported_at_once() -> None:
    text = _errors(
        {
            "clients": [
                {"iss": "", "jku": "https://a/j"},
                {"iss": "y", "jku": "ftp://a", "tenant": 5},
            ]
        }
    )
    for needle in ("clients.0.iss:", "clients.1.jku:", "clients.1.tenant: Not a valid string."):
        assert needle in text, text


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Cannot read the trusted-clients file .*missing\.yaml"):
        trusted_clients.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("clients:\n  - iss: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml is not valid YAML \(line 3, column 1\)"):
        trusted_clients.load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be a mapping with a 'clients' list"):
        trusted_clients.load(scalar)


# -- modes: `serve` refuses to start without trusted clients; the demo needs nothing ------


@pytest.fixture
def cli_runner(monkeypatch: pytest.MonkeyPatch, cards_dir: Any) -> CliRunner:
    if cards_dir:
        monkeypatch.setenv("CDS_CARDS_DIR", f'"{cards_dir}"')
    monkeypatch.delenv("CDS_CLIENTS_FILE", raising=False)
    monkeypatch.delenv("CDS_AUTH_REQUIRED", raising=False)
    return CliRunner()


@pytest.fixture
def gunicorn_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    from gunicorn.app.base import BaseApplication

    seen: dict[str, Any] = {}
    monkeypatch.setattr(BaseApplication, "run", lambda self: seen.update(app=self.load()))
    return seen


def test_serve_without_trusted_clients_fails_with_a_clear_message(
    cli_runner: CliRunner, gunicorn_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDS_AUTH_REQUIRED", "false")  # serve ignores it: production needs auth
    result = cli_runner.invoke(cli.main, ["serve", "--public-url", "https://cds.example.org"])
    assert result.exit_code == 1
    assert "no trusted-clients file is configured" in result.output
    assert "--clients FILE" in result.output and "cds-server demo" in result.output
    assert "app" not in gunicorn_run


def test_serve_reports_a_bad_file_precisely(
    cli_runner: CliRunner, gunicorn_run: dict[str, Any], tmp_path: Path
) -> None:
    bad = tmp_path / "clients.yaml"
    bad.write_text(yaml.safe_dump({"clients": [{"iss": "x", "jku": "http://a/j"}]}))
    result = cli_runner.invoke(
        cli.main, ["serve", "--public-url", "https://cds.example.org", "--clients", str(bad)]
    )
    assert result.exit_code == 1
    assert "clients.0.jku: must be an https URL" in result.output


def test_serve_needs_the_public_url(cli_runner: CliRunner, gunicorn_run: dict[str, Any]) -> None:
    result = cli_runner.invoke(cli.main, ["serve", "--clients", str(SANDBOX)])
    assert result.exit_code == 1
    assert "--public-url" in result.output


def test_serve_takes_the_clients_file_from_the_environment(
    cli_runner: CliRunner, gunicorn_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDS_CLIENTS_FILE", str(SANDBOX))
    monkeypatch.setenv("CDS_PUBLIC_URL", "https://cds.example.org")
    result = cli_runner.invoke(cli.main, ["serve", "--workers", "1"])
    assert result.exit_code == 0, result.output
    app: Flask = gunicorn_run["app"]
    client = app.test_client()
    assert client.get("/cds-services").status_code == 401
    assert client.options("/cds-services").status_code == 200


def test_demo_needs_no_configuration_and_no_token(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, Flask] = {}
    monkeypatch.setattr(Flask, "run", lambda self, **kw: seen.update(app=self))
    result = cli_runner.invoke(cli.main, ["demo"])
    assert result.exit_code == 0, result.output
    app = seen["app"]
    assert app.config["AUTH_REQUIRED"] is False
    assert app.test_client().get("/cds-services").status_code == 200
    assert "AUTHENTICATION IS OFF" in caplog.text and "DEMO MODE: no authentication" in caplog.text


def test_the_test_app_has_auth_off(app: Flask) -> None:
    assert app.config["AUTH_REQUIRED"] is False
    assert app.test_client().get("/cds-services").status_code == 200
