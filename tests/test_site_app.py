"""The site overlay in the running service: start-up refuses a broken one (serve and demo exit
non-zero naming every problem), a trusted client's own site folder reaches only that client's
calls, and the knowledge version in discovery and on cards says which overlay answered."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from cds_server.knowledge.sitefile import SiteError
from tests import jwtkit as kit
from tests.conftest import ROOT, rule_of

EXAMPLE = ROOT / "fixtures" / "site-example"
CYCLE_2 = EXAMPLE / "requests" / "order-sign-rituximab-cycle-2.json"
SIGN = "/cds-services/infusion-safety-sign"
CDS_SERVER = Path(sys.executable).parent / "cds-server"
START_TIMEOUT = 120
OTHER_ISS = "https://other-ehr.example.org"


def broken_site(folder: Path) -> Path:
    """Two files, five problems: one in the form of a file, four against the knowledge."""
    folder.mkdir(parents=True, exist_ok=True)
    approval = {
        "document": "ONC-PRE-09",
        "title": "Premedication",
        "version": "1",
        "approved_by": "Pharmacy & Therapeutics Committee",
        "approved_on": "2026-02-01",
    }
    unapproved = {k: v for k, v in approval.items() if k != "approved_by"}
    (folder / "a.yaml").write_text(
        yaml.safe_dump({"format": "infusion-site-overlay/1", "protocols": {"p1": unapproved}})
    )
    entries = {
        "format": "infusion-site-overlay/1",
        "protocols": {"p2": approval},
        "premedication": [
            {
                "id": "h1-dexamethasone",
                "for": {"drug": "rituximab"},
                "role": "h1-antihistamine",
                "agent": "dexamethasone",
                "protocol": "p2",
            }
        ],
        "observation_times": [
            {
                "id": "obs",
                "drug": "rituximab-x",
                "requirement": "after",
                "duration": {"value": 1, "unit": "h"},
                "protocol": "p2",
            }
        ],
        "rules_off": [
            {
                "id": "off",
                "for": {"drug": "carboplatin"},
                "topic": "prior-reaction",
                "protocol": "p2",
            },
            {
                "id": "off-2",
                "for": {"drug": "rituximab"},
                "topic": "premedication",
                "protocol": "p9",
            },
        ],
    }
    (folder / "b.yaml").write_text(yaml.safe_dump(entries, sort_keys=False))
    return folder


BROKEN_PROBLEMS = (
    "a.yaml: protocols.p1.approved_by: Missing data for required field.",
    "b.yaml: premedication.0.agent: agent 'dexamethasone' does not have role 'h1-antihistamine'",
    "b.yaml: observation_times.0.drug: unknown drug 'rituximab-x'",
    "b.yaml: rules_off.0.topic: 'prior-reaction' cannot be switched off by a site",
    "b.yaml: rules_off.1.protocol: unknown protocol 'p9'",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env["CDS_DATABASE_URL"] = "sqlite://"
    return subprocess.run(
        [str(CDS_SERVER), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )


@pytest.mark.parametrize("command", ["demo", "serve"])
def test_a_broken_overlay_stops_start_up_naming_every_problem(tmp_path: Path, command: str) -> None:
    site = broken_site(tmp_path / "site")
    args = [command, "--site", str(site), "--port", str(_free_port())]
    if command == "serve":
        clients = kit.write_clients(tmp_path, kit.client_entry())
        args += ["--clients", str(clients), "--public-url", kit.PUBLIC_URL]
        args += ["--data-dir", str(tmp_path / "data")]
    result = _run(args, tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert f"5 problem(s) in the site overlay {site}" in said
    for problem in BROKEN_PROBLEMS:
        assert problem in said, (problem, said)
    assert "Running on" not in said and "Listening at" not in said


def test_the_environment_names_the_site_folder_too(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cds_server import config

    monkeypatch.setenv("CDS_SITE_DIR", str(broken_site(tmp_path)))
    assert config.load()["SITE_DIR"] == str(tmp_path)
    with pytest.raises(SiteError):
        make_app(SITE_DIR=config.load()["SITE_DIR"])


def _client(n: int, **extra: Any) -> dict[str, Any]:
    """Trusted client n: its own issuer and key."""
    iss, key = ((kit.EHR_ISS, "es384"), (OTHER_ISS, "es384b"))[n]
    return {"iss": iss, "jwks": {"keys": [kit.key(key).public_jwk()]}, **extra}


def _call(client: FlaskClient, n: int, body: dict[str, Any]) -> dict[str, Any]:
    iss, key = ((kit.EHR_ISS, "es384"), (OTHER_ISS, "es384b"))[n]
    token = kit.sign(kit.claims(aud=kit.SIGN_AUD, iss=iss), signer=key)
    response = client.post(SIGN, json=body, headers=kit.bearer(token))
    assert response.status_code == 200, response.get_json()
    return {rule_of(c): c for c in response.get_json()["cards"]}


def _discovery_version(client: FlaskClient, n: int) -> str:
    iss, key = ((kit.EHR_ISS, "es384"), (OTHER_ISS, "es384b"))[n]
    token = kit.sign(kit.claims(aud=kit.DISCOVERY, iss=iss), signer=key)
    services = client.get("/cds-services", headers=kit.bearer(token)).get_json()["services"]
    text = services[0]["usageRequirements"]
    return str(text.rsplit("Knowledge version ", 1)[1].rstrip("."))


def test_a_tenants_overlay_reaches_only_its_own_calls(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    # The second client names the example overlay, relative to the clients file's folder.
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "north").symlink_to(EXAMPLE, target_is_directory=True)
    app = kit.auth_app(make_app, tmp_path, _client(0), _client(1, site="sites/north"))
    client = app.test_client()
    body = json.loads(CYCLE_2.read_text())
    plain = _call(client, 0, body)
    local = _call(client, 1, body)
    # The first client again, after the second (another ordering session: not de-duplicated).
    later = json.loads(CYCLE_2.read_text())
    later["hookInstance"] = "7a1f3c52-0b7e-4d39-9a64-0c1d2e3f4a22"
    later["context"]["encounterId"] = "enc-pat-lym-001-c2-later"
    again = _call(client, 0, later)

    assert "**Missing:** diphenhydramine" in plain["premedication"]["detail"]
    assert "**Missing:** cetirizine 10 mg intravenous" in local["premedication"]["detail"]
    assert plain["rate-titration"]["indicator"] == "warning"
    assert local["rate-titration"]["indicator"] == "info"
    for cards in (plain, again):
        assert set(cards) == {"premedication", "rate-titration"}
        assert all("Institution protocol" not in c["detail"] for c in cards.values())
        assert all("+site-" not in c["source"]["label"] for c in cards.values())
    assert all("+site-" in c["source"]["label"] for c in local.values())
    assert "+site-" not in _discovery_version(client, 0)
    assert "+site-" in _discovery_version(client, 1)


def test_a_client_without_a_site_sees_the_services_own(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    app = kit.auth_app(make_app, tmp_path, _client(0), SITE_DIR=str(EXAMPLE))
    cards = _call(app.test_client(), 0, json.loads(CYCLE_2.read_text()))
    assert "**Missing:** cetirizine 10 mg intravenous" in cards["premedication"]["detail"]


def test_a_tenants_broken_overlay_stops_start_up_naming_the_client(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    site = broken_site(tmp_path / "tenant-site")
    with pytest.raises(SiteError) as caught:
        kit.auth_app(make_app, tmp_path, _client(0), _client(1, site=str(site)))
    message = str(caught.value)
    assert f"(the site of trusted client clients.1, iss {OTHER_ISS})" in message
    for problem in BROKEN_PROBLEMS:
        assert problem in message
