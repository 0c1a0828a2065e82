"""Oracle Health (Cerner Millennium) calls (fixtures/fhir/clients/oracle): each gives its cards
end to end, as Oracle's draft CDS Hooks page and its published R4 examples shape them.

Oracle calls ``patient-view`` only (CDS Hooks 1.0 era), signs with ``iss``
``https://cds-hooks.cerner.com`` and documents no prefetch: the service reads the patient's
data from the Oracle FHIR server with the request's token (``<name>.fhir.json`` is what that
server holds, served here by ``tests.fakefhir``). The ``oracle`` profile sends no
``appContext``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import responses
from flask import Flask

from tests import jwtkit as kit
from tests.conformance import check_response
from tests.conftest import FIXTURES
from tests.fakefhir import FakeFhir
from tests.scenarios.test_scenarios import ANCHOR, _shift_dates, card_problems, keys, today

ORACLE = FIXTURES / "clients" / "oracle"
ORACLE_ISS = "https://cds-hooks.cerner.com"
RISK_SUMMARY = "/cds-services/infusion-risk-summary"


def request_names() -> list[str]:
    return sorted(p.name.removesuffix(".expected.json") for p in ORACLE.glob("*.expected.json"))


def load(path: Path) -> Any:
    """A fixture with its dates moved to today, as the scenario tests do."""
    return _shift_dates(json.loads(path.read_text()), (today() - ANCHOR).days)


def oracle_call(
    app: Flask, name: str, headers: dict[str, str] | None = None
) -> tuple[Any, FakeFhir, dict[str, Any]]:
    """POST the request ``name`` with Oracle's FHIR server holding ``name.fhir.json``."""
    body = load(ORACLE / f"{name}.json")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        server = FakeFhir.from_bundle(body["fhirServer"], load(ORACLE / f"{name}.fhir.json"))
        server.register(rsps)
        resp = app.test_client().post(RISK_SUMMARY, json=body, headers=headers or {})
    return resp, server, body


def test_every_request_has_its_fhir_data_and_expected_cards() -> None:
    requests = {p.stem for p in ORACLE.glob("*.json") if "." not in p.stem}
    assert requests == set(request_names()) and len(requests) >= 3
    for name in requests:
        assert (ORACLE / f"{name}.fhir.json").exists(), name
        body = json.loads((ORACLE / f"{name}.json").read_text())
        assert body["hook"] == "patient-view"  # Oracle's only hook
        assert "prefetch" not in body  # none documented
        assert body["fhirServer"].startswith("https://fhir-ehr.cerner.com/r4/")


@pytest.mark.parametrize("name", request_names())
def test_oracle_request_gives_its_cards(make_app: Callable[..., Flask], name: str) -> None:
    resp, server, body = oracle_call(make_app(CLIENT_PROFILE="oracle"), name)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    result = resp.get_json()
    assert check_response(result) == []
    expected = json.loads((ORACLE / f"{name}.expected.json").read_text())
    problems: list[str] = []
    by_key = {(k[0], k[2]): c for k, c in zip(keys(result), sorted_cards(result), strict=True)}
    for want in expected["cards"]:
        found = by_key.get((want["topic"], want["drug"]))
        if found is None:
            problems.append(f"missing card {want['topic']}/{want['drug']}")
        else:
            problems.extend(card_problems(found, want))
    wanted = sorted((w["topic"], w["indicator"], w["drug"]) for w in expected["cards"])
    if expected["no_other_cards"] and keys(result) != wanted:
        problems.append(f"cards {keys(result)}, expected exactly {wanted}")
    assert not problems, "\n".join(problems)
    # Everything came from Oracle's FHIR server, with the token of the request.
    base = urlsplit(body["fhirServer"]).path
    assert all(c.path.startswith(base + "/") for c in server.calls)
    read = {c.path.removeprefix(base + "/").split("/")[0] for c in server.calls}
    assert {"Patient", "MedicationRequest", "AllergyIntolerance"} <= read
    token = body["fhirAuthorization"]["access_token"]
    assert all(c.headers.get("Authorization") == f"Bearer {token}" for c in server.calls)
    assert "appContext" not in json.dumps(result)


def sorted_cards(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The cards in the order of ``keys(result)``."""
    from tests.scenarios.test_scenarios import key_of

    return sorted(result["cards"], key=key_of)


def test_an_oracle_client_entry_authenticates_and_gets_the_oracle_profile(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    """The trusted-clients entry the README gives for Oracle (static keys here instead of its
    ``jku``), with Oracle's FHIR server allowed: the call is authenticated and answered."""
    base = json.loads((ORACLE / "patient-view-prior-reaction.json").read_text())["fhirServer"]
    entry = {
        "iss": ORACLE_ISS,
        "jwks": {"keys": [kit.key("rsa").public_jwk()]},
        "fhir_servers": [base],
        "profile": "oracle",
    }
    app = kit.auth_app(make_app, tmp_path, entry)
    aud = f"{kit.PUBLIC_URL}{RISK_SUMMARY}"
    token = kit.sign(kit.claims(aud, iss=ORACLE_ISS), "rsa", "RS384")
    resp, server, _ = oracle_call(app, "patient-view-prior-reaction", kit.bearer(token))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    [card] = resp.get_json()["cards"]
    assert card["indicator"] == "critical" and server.calls
    unsigned, _, _ = oracle_call(app, "patient-view-prior-reaction")
    assert unsigned.status_code == 401
