"""The FHIR client's policies, without a hook call around it."""

from __future__ import annotations

from typing import Any

import pytest

from cds_server.cdshooks.errors import FhirUnavailable
from cds_server.fhirdata.client import FhirClient, FhirSettings, origin, server_problem
from tests.conftest import FHIR, TOKEN


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://EHR.example.org/fhir", "https://ehr.example.org"),
        ("https://ehr.example.org:443/fhir", "https://ehr.example.org"),
        ("http://localhost:8080/x", "http://localhost:8080"),
        ("ftp://x/y", ""),
        ("not a url", ""),
    ],
)
def test_origin(url: str, expected: str) -> None:
    assert origin(url) == expected


def test_server_problems() -> None:
    prod = FhirSettings()
    assert server_problem(FHIR, prod) is None
    assert server_problem(None, prod) == "no fhirServer was sent"
    assert "https" in str(server_problem("http://ehr.example.org/fhir", prod))
    assert server_problem("https://u:p@ehr.example.org/fhir", prod)
    allow = FhirSettings(allowed_origins=("https://ehr.example.org",))
    assert server_problem(FHIR, allow) is None
    assert server_problem("https://ehr.example.org.evil.net/fhir", allow)


def test_token_only_in_header_and_never_in_repr() -> None:
    client = FhirClient(FHIR, TOKEN, FhirSettings())
    assert TOKEN not in repr(client)
    assert client._headers["Authorization"] == f"Bearer {TOKEN}"
    # The adapter (connection pool, shared by later calls) is bound to the one origin and
    # holds no header: the token travels with each request of this call only.
    assert client._adapter.cds_origin == "https://ehr.example.org"
    assert TOKEN not in repr(vars(client._adapter))
    assert TOKEN not in repr(client._adapter.poolmanager.connection_pool_kw)
    client.close()
    assert "Authorization" not in client._headers  # not kept after the call


def test_no_authorization_header_without_token() -> None:
    with FhirClient(FHIR, "", FhirSettings()) as client:
        assert "Authorization" not in client._headers


def test_other_origins_are_refused_structurally(mocked_fhir: Any) -> None:
    with FhirClient(FHIR, TOKEN, FhirSettings()) as client:
        with pytest.raises(FhirUnavailable, match="another origin"):
            client._get_json("https://elsewhere.example.net/fhir/Patient/1")
        with pytest.raises(FhirUnavailable, match="relative"):
            client.get("https://elsewhere.example.net/fhir/Patient/1")
    assert len(mocked_fhir.calls) == 0


def test_invalid_json_and_non_resources(mocked_fhir: Any) -> None:
    mocked_fhir.get(f"{FHIR}/Patient/a", body="<html>")
    mocked_fhir.get(f"{FHIR}/Patient/b", json=[1, 2])
    with FhirClient(FHIR, TOKEN, FhirSettings()) as client:
        with pytest.raises(FhirUnavailable, match="invalid JSON"):
            client.get("Patient/a")
        with pytest.raises(FhirUnavailable, match="not a resource"):
            client.get("Patient/b")


@pytest.mark.parametrize("token", ["abc\ndef", "abc\r\nX-Injected: 1", "abc\rdef"])
def test_a_token_no_header_can_carry_is_a_fhir_failure_not_a_crash(
    mocked_fhir: Any, token: str
) -> None:
    """The protocol refuses such tokens (400); the client, used directly, fails cleanly too."""
    mocked_fhir.get(f"{FHIR}/Patient/a", json={"resourceType": "Patient", "id": "a"})
    with (
        FhirClient(FHIR, token, FhirSettings()) as client,
        pytest.raises(FhirUnavailable, match="could not be built") as err,
    ):
        client.get("Patient/a")
    assert token.strip() not in err.value.message
    assert len(mocked_fhir.calls) == 0


def test_deadline(mocked_fhir: Any) -> None:
    mocked_fhir.get(f"{FHIR}/Patient/a", json={"resourceType": "Patient", "id": "a"})
    ticks = iter([0.0, 10.0, 10.0, 10.0])
    client = FhirClient(FHIR, TOKEN, FhirSettings(deadline=4.0), clock=lambda: next(ticks))
    with pytest.raises(FhirUnavailable, match="deadline"):
        client.get("Patient/a")
    assert len(mocked_fhir.calls) == 0


def test_parallel_collects_failures(mocked_fhir: Any) -> None:
    mocked_fhir.get(f"{FHIR}/Patient/a", json={"resourceType": "Patient", "id": "a"})
    mocked_fhir.get(f"{FHIR}/Patient/b", status=500)
    with FhirClient(FHIR, TOKEN, FhirSettings()) as client:
        got = client.read_many(["Patient/a", "Patient/b"])
    assert got["Patient/a"]["id"] == "a"
    assert isinstance(got["Patient/b"], FhirUnavailable)
    assert "HTTP 500" in got["Patient/b"].message
