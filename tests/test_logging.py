"""Log lines never contain tokens or patient data (ids, names), whatever happens."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask.testing import FlaskClient

from cds_server import reasoning
from tests.conftest import FHIR, TOKEN, load_fixture, load_request
from tests.fakefhir import FakeFhir

SIGN = "/cds-services/infusion-safety-sign"
SECRETS = (TOKEN, "pat-lym-001", "Avery", "Fictional-Testperson", "penicillin")


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)


def test_no_token_or_patient_data_in_logs(
    client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    mocked_fhir: Any,
    fhir_auth: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = FakeFhir.from_bundle(FHIR, load_fixture("patients/lymphoma-first-rituximab.json"))
    server.register(mocked_fhir)
    server.fail["Observation"] = 500

    # 1. success with FHIR fallback (token sent, one optional fetch failing)
    body = load_request("order-sign-rituximab")
    for key in ("medications", "allergies", "weight"):
        del body["prefetch"][key]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    assert client.post(SIGN, json=body).status_code == 200
    assert server.calls and all(
        c.headers["Authorization"] == f"Bearer {TOKEN}" for c in server.calls
    )

    # 2. 412, 400 (with the patient id in a bad field) and 404
    missing = load_request("order-sign-rituximab")
    del missing["prefetch"]["medications"]
    assert client.post(SIGN, json=missing).status_code == 412
    bad = load_request("order-sign-rituximab")
    bad["context"]["patientId"] = "pat-lym-001 Avery Fictional-Testperson"
    bad["fhirAuthorization"] = {**fhir_auth, "token_type": "weird " + TOKEN}
    bad["fhirServer"] = FHIR
    assert client.post(SIGN, json=bad).status_code == 400
    assert client.post("/cds-services/pat-lym-001", json=bad).status_code == 404

    # 3. an unexpected failure whose message carries data
    def explode(*_: Any, **__: Any) -> Any:
        raise ValueError(f"pat-lym-001 {TOKEN} penicillin")

    monkeypatch.setattr(reasoning, "run", explode)
    resp = client.post(SIGN, json=load_request("order-sign-rituximab"))
    assert resp.status_code == 500
    assert TOKEN not in resp.get_data(as_text=True)

    text = _logged(caplog)
    assert "unhandled ValueError" in text
    assert "call service=infusion-safety-sign" in text
    for secret in SECRETS:
        assert secret not in text, secret
