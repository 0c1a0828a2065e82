"""SSRF defence: a ``fhirAuthorization`` token goes only to a ``fhirServer`` the authenticated
client is trusted for, whose host resolves only to allowed addresses, and never follows a
redirect. Each test asserts with ``responses`` (or a real socket) where the token went."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import responses
from flask import Flask

from cds_server.cdshooks.errors import FhirUnavailable
from cds_server.fhirdata import client as fhir_client
from cds_server.fhirdata.client import FhirClient, FhirSettings, address_allowed
from tests import jwtkit as kit
from tests.conftest import TOKEN, every_key, fake_resolve, load_fixture, load_request
from tests.fakefhir import FakeFhir

SIGN = "/cds-services/infusion-safety-sign"
PATIENT = "patients/lymphoma-first-rituximab.json"


def _body(fhir_server: str, fhir_auth: dict[str, Any]) -> dict[str, Any]:
    body = every_key(load_request("order-sign-rituximab"))
    del body["prefetch"]["allergies"]  # required: must be fetched from fhirServer
    body.update(fhirServer=fhir_server, fhirAuthorization=fhir_auth)
    return body


def _call(app: Flask, body: dict[str, Any]) -> Any:
    token = kit.sign(kit.claims(kit.SIGN_AUD))
    return app.test_client().post(SIGN, json=body, headers=kit.bearer(token))


def _token_sent(rsps: responses.RequestsMock) -> list[str]:
    """Every URL that received the access token."""
    return [
        c.request.url
        for c in rsps.calls
        if TOKEN in str(c.request.headers.get("Authorization", ""))
    ]


@pytest.fixture
def auth_app(make_app: Callable[..., Flask], tmp_path: Path) -> Callable[..., Flask]:
    def build(*entries: Any, **settings: Any) -> Flask:
        return kit.auth_app(make_app, tmp_path, *entries, **settings)

    return build


def test_the_allowed_server_gets_the_token(auth_app: Callable[..., Flask], fhir_auth: Any) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        server = FakeFhir.from_bundle(kit.EHR_FHIR, load_fixture(PATIENT)).register(rsps)
        resp = _call(auth_app(), _body(kit.EHR_FHIR + "/", fhir_auth))  # trailing slash: same
        assert resp.status_code == 200, resp.get_data(as_text=True)
        assert server.types_called() == ["AllergyIntolerance"]
        assert _token_sent(rsps) and all(u.startswith(kit.EHR_FHIR) for u in _token_sent(rsps))


@pytest.mark.parametrize(
    "fhir_server",
    [
        "https://attacker.example.net/fhir",
        "https://ehr.example.org/other-fhir",  # same host, another base URL
        "https://ehr.example.org.evil.net/fhir",
        "https://ehr.example.org:8443/fhir",
    ],
)
def test_a_fhir_server_outside_the_clients_allow_list_never_gets_the_token(
    auth_app: Callable[..., Flask], fhir_auth: Any, fhir_server: str
) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeFhir.from_bundle(fhir_server, load_fixture(PATIENT)).register(rsps)
        resp = _call(auth_app(), _body(fhir_server, fhir_auth))
        assert resp.status_code == 412
        assert "not one of the FHIR servers this client is trusted for" in resp.get_data(
            as_text=True
        )
        assert len(rsps.calls) == 0


def test_allow_lists_are_per_client(auth_app: Callable[..., Flask], fhir_auth: Any) -> None:
    other = "https://other-ehr.example.org/fhir"
    app = auth_app(
        kit.client_entry("es384"),
        {
            **kit.client_entry("rsa"),
            "iss": "https://other-ehr.example.org",
            "fhir_servers": [other],
        },
    )
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeFhir.from_bundle(other, load_fixture(PATIENT)).register(rsps)
        # The EHR client may not send the other EHR's server...
        assert _call(app, _body(other, fhir_auth)).status_code == 412
        assert len(rsps.calls) == 0
        # ...its own client may.
        token = kit.sign(
            kit.claims(kit.SIGN_AUD, iss="https://other-ehr.example.org"), "rsa", "RS384"
        )
        resp = app.test_client().post(SIGN, json=_body(other, fhir_auth), headers=kit.bearer(token))
        assert resp.status_code == 200
        assert _token_sent(rsps)


def _dns(table: dict[str, list[str]]) -> Callable[[str, int], list[Any]]:
    def resolve(host: str, port: int) -> list[Any]:
        if host in table:
            return [(ipaddress.ip_address(a), (a, port)) for a in table[host]]
        return fake_resolve(host, port)

    return resolve


@pytest.mark.parametrize(
    ("addresses", "allowed_networks", "ok"),
    [
        (["10.1.2.3"], [], False),  # private
        (["192.168.0.10"], [], False),
        (["172.16.5.4"], [], False),
        (["169.254.169.254"], [], False),  # link-local (cloud metadata)
        (["127.0.0.1"], [], False),  # loopback
        (["::1"], [], False),
        (["fd00::1"], [], False),  # unique local
        (["fe80::1"], [], False),  # IPv6 link-local
        (["::ffff:10.1.2.3"], [], False),  # IPv4-mapped private
        (["100.64.0.1"], [], False),  # carrier-grade NAT
        (["0.0.0.0"], [], False),
        (["93.184.215.14", "10.1.2.3"], [], False),  # every address is checked
        (["93.184.215.14"], [], True),
        (["10.1.2.3"], ["10.0.0.0/8"], True),  # explicitly allowed network
        (["10.1.2.3", "93.184.215.14"], ["10.0.0.0/8"], True),
    ],
)
def test_private_addresses_are_refused_unless_allowed(
    auth_app: Callable[..., Flask],
    fhir_auth: Any,
    monkeypatch: pytest.MonkeyPatch,
    addresses: list[str],
    allowed_networks: list[str],
    ok: bool,
) -> None:
    host = "fhir.hospital.example.org"
    base = f"https://{host}/fhir"
    monkeypatch.setattr(fhir_client, "resolve_addresses", _dns({host: addresses}))
    app = auth_app(kit.client_entry(fhir_servers=[base]), FHIR_ALLOWED_NETWORKS=allowed_networks)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeFhir.from_bundle(base, load_fixture(PATIENT)).register(rsps)
        resp = _call(app, _body(base, fhir_auth))
        if ok:
            assert resp.status_code == 200, resp.get_data(as_text=True)
            assert _token_sent(rsps)
        else:
            assert resp.status_code == 412
            assert "private, loopback or link-local" in resp.get_data(as_text=True)
            assert len(rsps.calls) == 0


def test_ip_literal_fhir_servers_are_checked_too(
    auth_app: Callable[..., Flask], fhir_auth: Any
) -> None:
    base = "https://169.254.169.254/fhir"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeFhir.from_bundle(base, load_fixture(PATIENT)).register(rsps)
        resp = _call(auth_app(kit.client_entry(fhir_servers=[base])), _body(base, fhir_auth))
        assert resp.status_code == 412
        assert len(rsps.calls) == 0


def test_a_redirect_to_another_host_is_not_followed(
    auth_app: Callable[..., Flask], fhir_auth: Any
) -> None:
    evil = "https://attacker.example.net/steal"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(evil, json={"resourceType": "Bundle", "type": "searchset"})
        rsps.get(
            f"{kit.EHR_FHIR}/AllergyIntolerance",
            status=302,
            headers={"Location": evil},
        )
        resp = _call(auth_app(), _body(kit.EHR_FHIR, fhir_auth))
        assert resp.status_code == 412
        assert "answered HTTP 302" in resp.get_data(as_text=True)
        assert [c.request.url.split("?")[0] for c in rsps.calls] == [
            f"{kit.EHR_FHIR}/AllergyIntolerance"
        ]
        assert not any(c.request.url.startswith(evil) for c in rsps.calls)


def test_https_only_in_production(auth_app: Callable[..., Flask], fhir_auth: Any) -> None:
    base = "http://ehr.example.org/fhir"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        FakeFhir.from_bundle(base, load_fixture(PATIENT)).register(rsps)
        app = auth_app(kit.client_entry(fhir_servers=[base]))
        resp = _call(app, _body(base, fhir_auth))
        assert resp.status_code == 412
        assert "must use https" in resp.get_data(as_text=True)
        assert len(rsps.calls) == 0


def test_address_policy_unit() -> None:
    prod = FhirSettings()
    demo = FhirSettings(allow_http="loopback")
    assert not address_allowed(ipaddress.ip_address("127.0.0.1"), prod)
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), demo)  # the demo allows loopback
    assert not address_allowed(ipaddress.ip_address("10.0.0.1"), demo)
    assert not address_allowed(ipaddress.ip_address("224.0.0.1"), prod)  # multicast


# -- connect time: the checked address is the one connected to (no DNS rebinding) ----------


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        body = b'{"resourceType": "Patient", "id": "p"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []
    handler = type("Handler", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_dns_rebinding_is_caught_at_connect_time(
    local_server: tuple[int, list[dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    port, seen = local_server
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])  # public when checked, then loopback

    def rebinding(host: str, p: int) -> list[Any]:
        return [(ipaddress.ip_address(a), (a, p)) for a in next(answers, ["127.0.0.1"])]

    monkeypatch.setattr(fhir_client, "resolve_addresses", rebinding)
    settings = FhirSettings(allow_http="always")
    with (
        # "localhost": without the connect-time check, urllib3's own lookup would reach the
        # loopback server; with it, the address connected to is the one checked.
        FhirClient(f"http://localhost:{port}/fhir", TOKEN, settings) as client,
        pytest.raises(FhirUnavailable, match="could not reach FHIR server"),
    ):
        client.get("Patient/p")
    assert seen == []  # nothing, and no token, reached the loopback server


def test_connect_time_check_lets_allowed_networks_through(
    local_server: tuple[int, list[dict[str, str]]],
) -> None:
    port, seen = local_server
    settings = FhirSettings(
        allow_http="always", allowed_networks=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    with FhirClient(f"http://127.0.0.1:{port}/fhir", TOKEN, settings) as client:
        assert client.get("Patient/p").value["id"] == "p"
    assert [h["Authorization"] for h in seen] == [f"Bearer {TOKEN}"]
