"""CDS client authentication (CDS Hooks 2.0 "Trusting CDS Clients") with real signed tokens.

Keys are generated in the tests (tests/jwtkit.py). Every refusal is a 401 whose body is the
same whatever the reason; the reason is only in the log, and the token never is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
import responses
from cryptography.hazmat.primitives import serialization
from flask import Flask
from flask.testing import FlaskClient

from cds_server.config import ConfigError
from cds_server.sharedcache import CacheUnavailable, MemoryCache
from cds_server.web import auth
from cds_server.web.auth import AuthFailure, Verifier
from cds_server.web.trusted_clients import parse
from tests import jwtkit as kit
from tests.conftest import TOKEN, load_request

SIGN = "/cds-services/infusion-safety-sign"
FEEDBACK = "/cds-services/infusion-safety-sign/feedback"

# The CDS Hooks 2.0 spec's own example (HL7/cds-hooks@v2.0.1 input/pagecontent/index.md,
# "Trusting CDS Clients" > Example): ES384, exp 1422568860 (2015).
SPEC_JWT = (
    "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCIsImtpZCI6ImV4YW1wbGUta2lkIiwiamt1IjoiaHR0cHM6Ly9maGly"
    "LWVoci5leGFtcGxlLmNvbS9qd2tfdXJpIn0.eyJpc3MiOiJodHRwczovL2ZoaXItZWhyLmV4YW1wbGUuY29tLyIs"
    "ImF1ZCI6Imh0dHBzOi8vY2RzLmV4YW1wbGUub3JnL2Nkcy1zZXJ2aWNlcy9zb21lLXNlcnZpY2UiLCJleHAiOjE0"
    "MjI1Njg4NjAsImlhdCI6MTMxMTI4MDk3MCwianRpIjoiZWUyMmIwMjEtZTFiNy00NjExLWJhNWItOGVlYzZhMzNh"
    "YzFlIiwidGVuYW50IjoiMmRkZDZjM2EtOGU5YS00NGM2LWEzMDUtNTIxMTFhZDMwMmEyIn0.d1WfLjGRKlcWB94l9"
    "do4cM8REXeYJLL6SGUBO8VHZhfM8mwKYP70EMxJ67War4TQblEpaQrp11wx5p7oPFm2ETYgCicS84vXWEIYTdjooZ"
    "dooCSDf2L8-i4awdoUwiEb"
)
SPEC_JWK = {
    "kty": "EC",
    "use": "sig",
    "crv": "P-384",
    "kid": "example-kid",
    "x": "46SDH7Znh821wblCBglA61sNE9ZrHYKKt3qRtRTmSXyOI_FIGBLWrWa0GPUkDCEk",
    "y": "XMcRuuoGW7CXjQdy-F5i3FeBE0x9hPLdeFdSoDd3ELmx404tLX0VRRcqzAsPhXcI",
    "alg": "ES384",
}
SPEC_CLIENT = {
    "iss": "https://fhir-ehr.example.com/",
    "tenant": "2ddd6c3a-8e9a-44c6-a305-52111ad302a2",
    "jwks": {"keys": [SPEC_JWK]},
}
SPEC_AUD = "https://cds.example.org/cds-services/some-service"
SPEC_EXP = 1422568860


@pytest.fixture
def app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    return kit.auth_app(make_app, tmp_path)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _logged(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def _hs256(payload: dict[str, Any], secret: bytes) -> str:
    head = {"alg": "HS256", "typ": "JWT", "kid": kit.key("es384").kid}
    signing_input = f"{kit.b64(json.dumps(head).encode())}.{kit.b64(json.dumps(payload).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{kit.b64(mac)}"


def _public_pem() -> bytes:
    return (
        kit.key("es384")
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _tampered() -> str:
    head, _, signature = kit.sign(kit.claims()).split(".")
    forged = kit.claims(exp=int(time.time()) + 10 * 365 * 86400)
    return f"{head}.{kit.b64(json.dumps(forged).encode())}.{signature}"


now = time.time
# (id, token factory, reason expected in the log)
REFUSED: list[tuple[str, Callable[[], str | None], str]] = [
    ("no-token", lambda: None, "no bearer token"),
    ("not-a-jwt", lambda: "not.a-jwt", "not a compact JWT"),
    ("garbage-segments", lambda: "abc.def.ghi", "malformed JWT"),
    ("expired", lambda: kit.sign(kit.claims(exp=int(now()) - 120)), "expired"),
    (
        "nbf-beyond-leeway",
        lambda: kit.sign(kit.claims(nbf=int(now()) + 300)),
        "not yet valid",
    ),
    (
        "iat-beyond-leeway",
        lambda: kit.sign(kit.claims(iat=int(now()) + 300, exp=int(now()) + 600)),
        "iat is in the future",
    ),
    ("wrong-aud", lambda: kit.sign(kit.claims(aud=kit.SIGN_AUD)), "aud"),
    (
        "aud-other-host",
        lambda: kit.sign(kit.claims(aud="https://evil.example.net/cds-services")),
        "aud",
    ),
    ("aud-array-wrong", lambda: kit.sign(kit.claims(aud=[kit.SIGN_AUD])), "aud"),
    ("unknown-iss", lambda: kit.sign(kit.claims(iss="https://other.example.org")), "unknown iss"),
    ("unknown-kid", lambda: kit.sign(kit.claims(), kid="kid-nobody"), "unknown kid"),
    ("untrusted-key", lambda: kit.sign(kit.claims(), signer="es384b"), "unknown kid"),
    (
        "trusted-kid-other-key",
        lambda: kit.sign(kit.claims(), signer="es384b", kid=kit.key("es384").kid),
        "bad signature",
    ),
    ("alg-none", lambda: kit.unsigned(kit.claims()), "never accepted"),
    ("hs256-public-pem", lambda: _hs256(kit.claims(), _public_pem()), "never accepted"),
    (
        "hs256-public-jwk",
        lambda: _hs256(kit.claims(), json.dumps(kit.key("es384").public_jwk()).encode()),
        "never accepted",
    ),
    ("tampered-payload", _tampered, "bad signature"),
    ("es256-not-enabled", lambda: kit.sign(kit.claims(), "es256", "ES256"), "not enabled"),
    ("rs256-not-enabled", lambda: kit.sign(kit.claims(), "rsa", "RS256"), "not enabled"),
    (
        "alg-key-mismatch",
        lambda: kit.sign(kit.claims(), "es384", "ES384", kid=kit.key("rsa").kid),
        "does not fit",
    ),
    ("typ-not-jwt", lambda: kit.sign(kit.claims(), typ="at+jwt"), "typ"),
    ("no-kid", lambda: kit.sign(kit.claims(), kid=None), "no kid"),
    ("missing-iss", lambda: kit.sign(kit.claims(iss=KeyError)), "missing claim iss"),
    ("missing-aud", lambda: kit.sign(kit.claims(aud=KeyError)), "aud"),
    ("missing-exp", lambda: kit.sign(kit.claims(exp=KeyError)), "missing claim exp"),
    ("missing-iat", lambda: kit.sign(kit.claims(iat=KeyError)), "missing claim iat"),
    ("missing-jti", lambda: kit.sign(kit.claims(jti=KeyError)), "missing claim jti"),
    ("exp-not-number", lambda: kit.sign(kit.claims(exp="tomorrow")), "claim exp is not a number"),
    ("jti-not-string", lambda: kit.sign(kit.claims(jti=12345)), "jti"),
]


def _get(client: FlaskClient, token: str | None) -> Any:
    return client.get("/cds-services", headers=kit.bearer(token) if token else {})


@pytest.mark.parametrize(("case", "make", "reason"), REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_with_401_and_no_detail(
    client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    case: str,
    make: Callable[[], str | None],
    reason: str,
) -> None:
    caplog.set_level(logging.INFO)
    token = make()
    resp = _get(client, token)
    assert resp.status_code == 401, resp.get_data(as_text=True)
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = resp.get_json()
    # The same body whatever the reason: nothing about why.
    assert body == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "login",
                "details": {
                    "coding": [{"system": "urn:infusion-safety-cds:error", "code": "unauthorized"}],
                    "text": "Authentication failed",
                },
                "diagnostics": "Authentication failed",
            }
        ],
    }
    text = _logged(caplog)
    lines = [line for line in text.splitlines() if "authentication failed on GET" in line]
    assert len(lines) == 1 and reason in lines[0], text
    if token:
        assert token not in text
        assert token.split(".")[1][:40] not in text  # not even the payload segment


ACCEPTED: list[tuple[str, Callable[[], str]]] = [
    ("es384", lambda: kit.sign(kit.claims())),
    ("rs384", lambda: kit.sign(kit.claims(), "rsa", "RS384")),
    ("aud-array", lambda: kit.sign(kit.claims(aud=["https://x.example", kit.DISCOVERY]))),
    ("aud-trailing-slash", lambda: kit.sign(kit.claims(aud=kit.DISCOVERY + "/"))),
    # The Sandbox rounds iat, so it can be up to 0.5 s in the future.
    ("iat-0.5s-future", lambda: kit.sign(kit.claims(iat=now() + 0.5))),
    ("iat-30s-future", lambda: kit.sign(kit.claims(iat=int(now()) + 30))),
    ("expired-within-leeway", lambda: kit.sign(kit.claims(exp=int(now()) - 30))),
    # Epic: sub and nbf, exp - iat = 900 s; Da Vinci CRD: exp = iat + 1 day.
    (
        "epic-shaped",
        lambda: kit.sign(
            kit.claims(sub="epic-client", nbf=int(now()), exp=int(now()) + 900), "rsa", "RS384"
        ),
    ),
    ("one-hour-lifetime", lambda: kit.sign(kit.claims(exp=int(now()) + 3600))),  # the maximum
    ("extra-claims-and-tenant", lambda: kit.sign(kit.claims(tenant="t-9", foo={"bar": 1}))),
    ("no-typ", lambda: kit.sign(kit.claims(), typ=None)),
    ("jku-ignored-with-static-jwks", lambda: kit.sign(kit.claims(), jku="https://x.example/j")),
]


@pytest.mark.parametrize(("case", "make"), ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted(client: FlaskClient, case: str, make: Callable[[], str]) -> None:
    resp = _get(client, make())
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.get_json()["services"]


def test_replayed_jti_is_refused(client: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    token = kit.sign(kit.claims())
    assert _get(client, token).status_code == 200
    assert _get(client, token).status_code == 401
    assert "replayed jti" in _logged(caplog)
    # Same jti, freshly signed: still a replay (the jti is what is remembered, per issuer).
    again = kit.sign(kit.claims(jti=json.loads(kit.b64d(token.split(".")[1]))["jti"]))
    assert _get(client, again).status_code == 401


def test_optional_algorithms_only_when_enabled(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    entry = kit.client_entry("es384", "es256", "rsa", algorithms=["ES384", "ES256", "RS256"])
    client = kit.auth_app(make_app, tmp_path, entry).test_client()
    assert _get(client, kit.sign(kit.claims(), "es256", "ES256")).status_code == 200
    assert _get(client, kit.sign(kit.claims(), "rsa", "RS256")).status_code == 200
    assert _get(client, kit.sign(kit.claims(), "rsa", "RS384")).status_code == 401  # not listed


def test_tenant_is_checked_when_the_entry_sets_one(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    entries = (
        kit.client_entry("es384", tenant="hospital-a"),
        kit.client_entry("rsa", tenant="hospital-b", fhir_servers=["https://b.example.org/fhir"]),
    )
    client = kit.auth_app(make_app, tmp_path, *entries).test_client()
    assert _get(client, kit.sign(kit.claims(tenant="hospital-a"))).status_code == 200
    assert _get(client, kit.sign(kit.claims(tenant="hospital-b"))).status_code == 401  # b's key
    assert _get(client, kit.sign(kit.claims(tenant="hospital-c"))).status_code == 401
    assert _get(client, kit.sign(kit.claims())).status_code == 401  # no tenant
    rs = kit.sign(kit.claims(tenant="hospital-b"), "rsa", "RS384")
    assert _get(client, rs).status_code == 200


@pytest.mark.parametrize(
    ("path", "method", "audiences"),
    [
        ("/cds-services", "get", [kit.DISCOVERY]),
        (SIGN, "post", [kit.SIGN_AUD]),
        (FEEDBACK, "post", [kit.SIGN_AUD + "/feedback", kit.SIGN_AUD]),
    ],
)
def test_aud_is_the_public_url_of_the_endpoint_called(
    client: FlaskClient, path: str, method: str, audiences: list[str]
) -> None:
    kwargs: dict[str, Any] = {}
    if path == SIGN:
        kwargs["json"] = load_request("order-sign-rituximab")
    elif path == FEEDBACK:
        kwargs["json"] = {
            "feedback": [
                {"card": "c1", "outcome": "overridden", "outcomeTimestamp": "2026-11-21T10:00:00Z"}
            ]
        }
    every = [kit.DISCOVERY, kit.SIGN_AUD, kit.SIGN_AUD + "/feedback"]
    for aud in every:
        # The Host the request came in on does not matter: aud is checked against PUBLIC_URL.
        resp = getattr(client, method)(
            path,
            headers={**kit.bearer(kit.sign(kit.claims(aud=aud))), "Host": "internal:8080"},
            **kwargs,
        )
        assert (resp.status_code == 200) == (aud in audiences), (aud, resp.status_code)
    request_url = "http://localhost" + path  # what request.url would say in this test
    resp = getattr(client, method)(path, headers=kit.bearer(kit.sign(kit.claims(aud=request_url))))
    assert resp.status_code == 401


def test_unknown_routes_are_404_without_auth(client: FlaskClient) -> None:
    assert client.get("/nothing-here").status_code == 404


# -- the spec's example JWT (checklist S11) ------------------------------------------------


def test_spec_example_jwt_signature_verifies_and_expiry_is_enforced() -> None:
    # Plain PyJWT, expiry aside: the published signature is valid for the published key.
    claims = jwt.decode(
        SPEC_JWT,
        jwt.PyJWK(SPEC_JWK),
        algorithms=["ES384"],
        audience=SPEC_AUD,
        options={"verify_exp": False},
    )
    assert claims["exp"] == SPEC_EXP
    clients = parse({"clients": [SPEC_CLIENT]})
    # Our verifier, with the clock set before exp: accepted (the jku is not fetched: static JWKS).
    then = Verifier(clients, cache=MemoryCache(), clock=lambda: SPEC_EXP - 60.0)
    caller = then.verify(SPEC_JWT, [SPEC_AUD])
    assert (caller.client.iss, caller.tenant) == (SPEC_CLIENT["iss"], SPEC_CLIENT["tenant"])
    # Today: refused as expired, and for no other reason.
    today = Verifier(clients, cache=MemoryCache())
    with pytest.raises(AuthFailure, match=r"^expired$"):
        today.verify(SPEC_JWT, [SPEC_AUD])


def test_spec_example_jwt_over_http_is_401(
    make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = kit.auth_app(make_app, tmp_path, SPEC_CLIENT).test_client()
    resp = client.post(
        "/cds-services/some-service", json={}, headers=kit.bearer(SPEC_JWT)
    )  # no such service: authentication comes first
    assert resp.status_code == 401
    assert "authentication failed on POST /cds-services/<service_id>: expired" in _logged(caplog)
    assert SPEC_JWT not in _logged(caplog)


# -- jku: allow-listed URL only, cached, re-fetched on unknown kid, rate-limited -----------

JKU = "https://ehr.example.org/.well-known/jwks.json"


def _jku_app(make_app: Callable[..., Flask], tmp_path: Path) -> Flask:
    entry = {"iss": kit.EHR_ISS, "jku": JKU, "fhir_servers": [kit.EHR_FHIR]}
    return kit.auth_app(make_app, tmp_path, entry)


def test_jku_is_fetched_once_then_cached(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    client = _jku_app(make_app, tmp_path).test_client()
    with responses.RequestsMock() as rsps:
        rsps.get(JKU, json={"keys": [kit.key("es384").public_jwk()]})
        for _ in range(3):
            token = kit.sign(kit.claims(), jku=JKU)
            assert _get(client, token).status_code == 200
        assert len(rsps.calls) == 1
        assert "Authorization" not in rsps.calls[0].request.headers


def test_jku_refetched_on_unknown_kid_and_rate_limited(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    client = _jku_app(make_app, tmp_path).test_client()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(JKU, json={"keys": [kit.key("es384").public_jwk()]})
        assert _get(client, kit.sign(kit.claims())).status_code == 200
        # Key rotation: a new kid appears in the client's JWKS.
        rsps.replace(
            responses.GET,
            JKU,
            json={"keys": [kit.key("es384").public_jwk(), kit.key("rsa").public_jwk()]},
        )
        rotated = kit.sign(kit.claims(), "rsa", "RS384")
        # The first fetch was just now: the refresh waits AUTH_JWKS_MIN_REFRESH.
        assert _get(client, rotated).status_code == 401
        assert len(rsps.calls) == 1
    fast = make_app(
        AUTH_REQUIRED=True,
        CLIENTS_FILE=str(kit.write_clients(tmp_path, {"iss": kit.EHR_ISS, "jku": JKU + "?v=2"})),
        PUBLIC_URL=kit.PUBLIC_URL,
        AUTH_JWKS_MIN_REFRESH=0.001,
    ).test_client()
    with responses.RequestsMock() as rsps:
        rsps.get(JKU + "?v=2", json={"keys": [kit.key("es384").public_jwk()]})
        assert _get(fast, kit.sign(kit.claims())).status_code == 200
        time.sleep(0.01)
        rsps.replace(
            responses.GET,
            JKU + "?v=2",
            json={"keys": [kit.key("es384").public_jwk(), kit.key("rsa").public_jwk()]},
        )
        assert _get(fast, kit.sign(kit.claims(), "rsa", "RS384")).status_code == 200
        assert len(rsps.calls) == 2
    # Many unknown kids in a burst: at most one fetch per interval, not one per token.
    fetched: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return {"keys": [kit.key("es384").public_jwk()]}

    verifier = Verifier(
        parse({"clients": [{"iss": kit.EHR_ISS, "jku": JKU}]}),
        cache=MemoryCache(),
        fetcher=fetch,
        jwks_min_refresh=60,
    )
    for i in range(5):
        with pytest.raises(AuthFailure, match="unknown kid"):
            verifier.verify(kit.sign(kit.claims(), kid=f"k{i}"), [kit.DISCOVERY])
    assert fetched == [JKU]


def test_only_the_allow_listed_jku_is_ever_fetched(
    make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _jku_app(make_app, tmp_path).test_client()
    evil = "https://attacker.example.net/jwks.json"
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(evil, json={"keys": [kit.key("es384b").public_jwk()]})
        rsps.get(JKU, json={"keys": [kit.key("es384").public_jwk()]})
        token = kit.sign(kit.claims(), "es384b", jku=evil)
        assert _get(client, token).status_code == 401
        assert [c.request.url for c in rsps.calls] == []
    assert "jku in the header is not the allow-listed one" in _logged(caplog)


def test_jku_failures_refuse_without_crashing(
    make_app: Callable[..., Flask], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = _jku_app(make_app, tmp_path).test_client()
    with responses.RequestsMock() as rsps:
        rsps.get(JKU, status=302, headers={"Location": "https://attacker.example.net/j"})
        assert _get(client, kit.sign(kit.claims())).status_code == 401
        assert len(rsps.calls) == 1  # the redirect was not followed
    assert "JWKS fetch for" in _logged(caplog) and "HTTP 302" in _logged(caplog)


def test_fetched_jwks_drops_unusable_keys() -> None:
    client = parse({"clients": [{"iss": "i", "jku": JKU}]}).clients[0]
    document = {
        "keys": [
            kit.key("es384").public_jwk(),
            {**kit.key("rsa").public_jwk(), "d": "private"},  # private material: dropped
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},  # symmetric: dropped
            kit.key("es256").public_jwk(),  # ES256 not enabled for this client: dropped
            {**kit.key("es384b").public_jwk(), "kid": "dup"},
            {**kit.key("rsa").public_jwk(), "kid": "dup"},  # duplicate kid: both dropped
            "not a key",
        ]
    }
    assert sorted(auth._public_keys(document, client)) == ["kid-es384"]


# -- end to end ----------------------------------------------------------------------------


def test_end_to_end_authenticated_hook_call_and_feedback(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = load_request("order-sign-rituximab")
    resp = client.post(SIGN, json=body, headers=kit.bearer(kit.sign(kit.claims(kit.SIGN_AUD))))
    assert resp.status_code == 200, resp.get_data(as_text=True)
    cards = resp.get_json()["cards"]
    assert cards
    assert client.post(SIGN, json=body).status_code == 401  # the same call without a token
    feedback = {
        "feedback": [
            {
                "card": cards[0]["uuid"],
                "outcome": "overridden",
                "outcomeTimestamp": "2026-11-21T10:05:31Z",
            }
        ]
    }
    aud = kit.SIGN_AUD + "/feedback"
    token = kit.sign(kit.claims(aud, sub="x"), "rsa", "RS384")
    assert client.post(FEEDBACK, json=feedback, headers=kit.bearer(token)).status_code == 200
    assert client.post(FEEDBACK, json=feedback).status_code == 401


def test_cors_preflight_needs_no_token_and_401s_carry_cors(client: FlaskClient) -> None:
    for path in ("/cds-services", SIGN, FEEDBACK):
        resp = client.options(
            path,
            headers={
                "Origin": "https://sandbox.cds-hooks.org",
                "Access-Control-Request-Method": "POST" if path != "/cds-services" else "GET",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert resp.status_code == 200, path
        assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
        allowed = resp.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "content-type" in allowed
        assert "Access-Control-Allow-Credentials" not in resp.headers
    refused = client.get("/cds-services", headers={"Origin": "https://sandbox.cds-hooks.org"})
    assert refused.status_code == 401
    # The browser can read the 401.
    assert refused.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")


def test_cors_origins_are_configurable(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    app = kit.auth_app(make_app, tmp_path, CORS_ORIGINS=["https://sandbox.cds-hooks.org"])
    client = app.test_client()
    preflight = {"Access-Control-Request-Method": "POST"}
    ok = client.options(SIGN, headers={"Origin": "https://sandbox.cds-hooks.org", **preflight})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://sandbox.cds-hooks.org"
    other = client.options(SIGN, headers={"Origin": "https://evil.example.net", **preflight})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cache_outage_is_503_not_401(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = app.extensions[auth.EXTENSION]

    def down(*_: Any) -> bool:
        raise CacheUnavailable("Redis at redis://127.0.0.1:6379/0: ConnectionError")

    monkeypatch.setattr(verifier.cache, "add", down)
    resp = app.test_client().get("/cds-services", headers=kit.bearer(kit.sign(kit.claims())))
    assert resp.status_code == 503
    assert resp.get_json()["issue"][0]["details"]["coding"][0]["code"] == "auth-unavailable"


def test_no_jwt_or_access_token_in_logs(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, mocked_fhir: Any, fhir_auth: Any
) -> None:
    from tests.conftest import FHIR, load_fixture
    from tests.fakefhir import FakeFhir

    caplog.set_level(logging.DEBUG)
    FakeFhir.from_bundle(FHIR, load_fixture("patients/lymphoma-first-rituximab.json")).register(
        mocked_fhir
    )
    tokens = []
    body = load_request("order-sign-rituximab")
    del body["prefetch"]["allergies"]
    body.update(fhirServer=FHIR, fhirAuthorization=fhir_auth)
    good = kit.sign(kit.claims(kit.SIGN_AUD))
    tokens.append(good)
    assert client.post(SIGN, json=body, headers=kit.bearer(good)).status_code == 200
    assert client.post(SIGN, json=body, headers=kit.bearer(good)).status_code == 401  # replay
    for make in (lambda: kit.sign(kit.claims(exp=1)), _tampered, lambda: kit.unsigned({})):
        token = make()
        tokens.append(token)
        assert client.post(SIGN, json=body, headers=kit.bearer(token)).status_code == 401
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "authentication failed" in text
    assert TOKEN not in text
    for token in tokens:
        for segment in token.split("."):
            if len(segment) > 16:
                assert segment not in text


# -- start-up and configuration ------------------------------------------------------------


def test_auth_required_without_clients_file_fails_fast(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="no trusted-clients file is configured"):
        make_app(AUTH_REQUIRED=True, PUBLIC_URL=kit.PUBLIC_URL)


def test_auth_required_without_public_url_fails_fast(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    path = kit.write_clients(tmp_path)
    with pytest.raises(ConfigError, match="public URL is not set"):
        make_app(AUTH_REQUIRED=True, CLIENTS_FILE=str(path))


def test_the_factory_defaults_to_authentication(cards_dir: Any) -> None:
    from cds_server.web.app import create_app

    with pytest.raises(ConfigError, match="Authentication is required"):
        create_app({"TESTING": True, "CARDS_DIR": cards_dir})
