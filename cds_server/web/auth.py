"""Authentication of CDS clients: CDS Hooks 2.0 "Trusting CDS Clients" (JWT bearer tokens).

Every discovery, service and feedback call carries ``Authorization: Bearer <JWT>``, checked in
this order (signature before anything is stored):

1. a bearer token is present and looks like a compact JWS (size-capped);
2. header: ``alg`` is never ``none`` or HS*; ``kid`` is present; ``typ``, if sent, is JWT;
3. ``iss`` is a trusted client (``trusted_clients``) — and ``tenant`` matches its entry, if set;
   ``alg`` is enabled for that client (ES384/RS384; ES256/RS256 only if listed);
4. the key is selected by ``kid`` from the client's static JWKS, or from its allow-listed
   ``jku`` (cached in the shared cache; re-fetched on an unknown ``kid``, rate-limited); a
   ``jku`` in the token header must be that allow-listed URL — no other URL is ever fetched;
5. PyJWT verifies the signature with that one algorithm, ``aud`` (string or array) against
   the public URL of the endpoint called — computed from ``PUBLIC_URL``, never from the
   request's Host — and the presence of ``iss aud exp iat jti``;
6. ``exp``, ``iat`` and ``nbf`` (if sent) against the clock with a bounded leeway;
7. ``jti`` not seen before for this ``iss``; it is then remembered until ``exp`` + leeway.

Any failure → ``Unauthorized`` (401, no detail in the body); the reason is logged with the
(sanitised) ``iss``, ``tenant`` and ``jti`` — never the token. Extra claims (``sub``, ``nbf``…)
are tolerated. The authenticated client's ``fhir_servers`` then bound where the service may
send a ``fhirAuthorization`` token (``fhir_settings``), and its ``iss`` and ``tenant`` name the
id space of its patients in the store (``caller_namespace``). Preflight ``OPTIONS`` needs no
token.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jwt
from flask import Flask, current_app, g, request

from cds_server.cdshooks.errors import AuthUnavailable, Unauthorized
from cds_server.config import ConfigError
from cds_server.fhirdata.client import FhirSettings, fetch_jwks
from cds_server.sharedcache import CacheUnavailable, SharedCache, open_cache, redacted
from cds_server.web import trusted_clients
from cds_server.web.trusted_clients import TrustedClient, TrustedClients

log = logging.getLogger(__name__)

EXTENSION = "cds_server.web.auth"
MAX_TOKEN_CHARS = 16_384
REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "jti")
QUERY_TOKEN_NAMES = frozenset({"access_token", "token", "jwt", "id_token", "authorization"})
JWKS_KEEP = 24 * 3600  # keep a fetched JWKS this long as a fallback when a refresh fails
_COMPACT_JWS = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")

JwksFetcher = Callable[[str], Mapping[str, Any]]


class AuthFailure(Exception):
    """Why a token was refused (log-safe text; never shown to the client)."""

    @property
    def reason(self) -> str:
        """A fixed code for the metrics (the text may carry client-chosen values)."""
        text = str(self)
        return next((code for start, code in FAILURE_REASONS if text.startswith(start)), "other")


# Message prefix -> reason code of ``AuthFailure`` (``cds_auth_failures_total{reason}``).
FAILURE_REASONS: tuple[tuple[str, str], ...] = (
    ("no bearer token", "no_token"),
    ("not a compact JWT", "malformed"),
    ("malformed JWT", "malformed"),
    ("invalid JWT", "malformed"),
    ("algorithm", "algorithm"),
    ("no kid", "header"),
    ("typ is not", "header"),
    ("missing claim", "claims"),
    ("claim ", "claims"),
    ("jti is not", "claims"),
    ("unknown iss", "untrusted_issuer"),
    ("tenant", "tenant"),
    ("unknown kid", "unknown_key"),
    ("key ", "unknown_key"),
    ("jku", "unknown_key"),
    ("aud ", "audience"),
    ("bad signature", "signature"),
    ("replayed jti", "replay"),
    ("expired", "expired"),
    ("exp is further", "lifetime"),
    ("iat is", "time"),
    ("not yet valid", "time"),
)


def _safe(value: Any, limit: int = 80) -> str:
    """A client-chosen value, printable and short, for a log line."""
    if value is None:
        return "-"
    text = value if isinstance(value, str) else type(value).__name__
    return "".join(ch if ch == " " or ch.isprintable() else "?" for ch in text)[:limit]


# NumericDate bounds: 1970 to the year 5138 (1e11 s). Anything else is no time at all
# (1e300, inf after float conversion, a huge int) and is refused before any arithmetic.
_MAX_NUMERIC_DATE = 1e11


def _number(claims: Mapping[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthFailure(f"claim {name} is not a number")
    if not 0 <= value <= _MAX_NUMERIC_DATE:  # False for NaN too
        raise AuthFailure(f"claim {name} is out of range")
    return float(value)


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its trusted-clients entry and the token's ``tenant`` claim."""

    client: TrustedClient
    tenant: str | None = None

    @property
    def namespace(self) -> str:
        """The caller's id space for patients and encounters (``iss`` and ``tenant``)."""
        return json.dumps([self.client.iss, self.tenant])


class Verifier:
    """Checks CDS client JWTs against the trusted clients; holds no per-request state."""

    def __init__(
        self,
        clients: TrustedClients,
        *,
        cache: SharedCache,
        leeway: float = 60.0,
        fetcher: JwksFetcher = fetch_jwks,
        clock: Callable[[], float] = time.time,
        jwks_ttl: float = 3600.0,
        jwks_min_refresh: float = 30.0,
        max_lifetime: float = 3600.0,
    ):
        self.clients = clients
        self.cache = cache
        self.leeway = leeway
        self._fetch = fetcher
        self._clock = clock
        self._jwks_ttl = jwks_ttl
        self._min_refresh = jwks_min_refresh
        self.max_lifetime = max_lifetime

    def verify(self, token: str, audiences: Sequence[str]) -> Caller:
        """The trusted client that signed ``token`` for one of ``audiences``.

        Raises ``AuthFailure`` (refuse) or ``CacheUnavailable`` (cannot decide).
        """
        if len(token) > MAX_TOKEN_CHARS or not _COMPACT_JWS.match(token):
            raise AuthFailure("not a compact JWT")
        try:
            unread = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthFailure("malformed JWT") from None
        header, unverified = unread["header"], unread["payload"]
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg.lower() == "none" or alg.upper().startswith("HS"):
            raise AuthFailure(f"algorithm {_safe(alg)} is never accepted")
        if not isinstance(kid, str) or not kid:
            raise AuthFailure("no kid in the JWT header")
        typ = header.get("typ")
        if typ is not None and (not isinstance(typ, str) or typ.upper() != "JWT"):
            raise AuthFailure("typ is not JWT")

        iss, tenant = unverified.get("iss"), unverified.get("tenant")
        if not isinstance(iss, str) or not iss:
            raise AuthFailure("missing claim iss")
        client = self.clients.find(iss, tenant)
        if client is None:
            known = self.clients.knows(iss)
            raise AuthFailure("tenant not trusted for this iss" if known else "unknown iss")
        if alg not in client.algorithms:
            raise AuthFailure(f"algorithm {_safe(alg)} not enabled for this client")

        jwk = self._key(client, kid, header.get("jku"))
        if jwk is None:
            raise AuthFailure(f"unknown kid {_safe(kid)}")
        if alg not in trusted_clients.usable_algorithms(jwk, client.algorithms):
            raise AuthFailure(f"key {_safe(kid)} does not fit algorithm {_safe(alg)}")
        try:
            key = jwt.PyJWK(dict(jwk), algorithm=alg)
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=list(audiences),
                issuer=client.iss,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_exp": False,  # checked below with the injected clock
                    "verify_iat": False,
                    "verify_nbf": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthFailure(f"missing claim {_safe(exc.claim)}") from None
        except jwt.InvalidAudienceError:
            raise AuthFailure("aud is not the URL of this endpoint") from None
        except jwt.InvalidSignatureError:
            raise AuthFailure("bad signature") from None
        except jwt.PyJWTError as exc:
            raise AuthFailure(f"invalid JWT ({type(exc).__name__})") from None

        exp = self._check_times(claims)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise AuthFailure("jti is not a non-empty string")
        if client.tenant is not None and claims.get("tenant") != client.tenant:
            raise AuthFailure("tenant does not match")
        digest = hashlib.sha256(f"{client.iss}\x00{jti}".encode()).hexdigest()
        ttl = max(1.0, exp + self.leeway - self._clock())
        if not self.cache.add(f"jti:{digest}", "1", ttl):
            raise AuthFailure("replayed jti")
        tenant = claims.get("tenant")
        return Caller(client, tenant if isinstance(tenant, str) else None)

    def _check_times(self, claims: Mapping[str, Any]) -> float:
        now = self._clock()
        exp, iat = _number(claims, "exp"), _number(claims, "iat")
        if now > exp + self.leeway:
            raise AuthFailure("expired")
        if exp > now + self.max_lifetime + self.leeway:
            raise AuthFailure("exp is further ahead than AUTH_MAX_TOKEN_LIFETIME")
        if iat > now + self.leeway:
            raise AuthFailure("iat is in the future beyond the leeway")
        if "nbf" in claims and _number(claims, "nbf") > now + self.leeway:
            raise AuthFailure("not yet valid (nbf)")
        return exp

    # -- keys ----------------------------------------------------------------------------

    def _key(self, client: TrustedClient, kid: str, jku: Any) -> Mapping[str, Any] | None:
        if client.keys is not None:  # static JWKS: a jku in the header is ignored
            return client.keys.get(kid)
        if jku is not None and jku != client.jku:
            raise AuthFailure("jku in the header is not the allow-listed one for this iss")
        return self._remote_key(str(client.jku), kid, client)

    def _remote_key(self, url: str, kid: str, client: TrustedClient) -> Mapping[str, Any] | None:
        cached = self.cache.get(f"jwks:{url}")
        stored: dict[str, Any] = json.loads(cached) if cached else {}
        keys: dict[str, Any] = stored.get("keys", {})
        fresh = self._clock() - float(stored.get("fetched", 0)) < self._jwks_ttl
        if (kid not in keys or not fresh) and self.cache.add(
            f"jwks-fetch:{url}", "1", self._min_refresh
        ):
            try:
                document = self._fetch(url)
            except Exception as exc:  # any fetch failure: keep what we had
                log.warning("JWKS fetch for %s failed: %s", url, _safe(str(exc), 120))
            else:
                keys = _public_keys(document, client)
                payload = {"fetched": self._clock(), "keys": keys}
                self.cache.set(f"jwks:{url}", json.dumps(payload), JWKS_KEEP + self._jwks_ttl)
                log.info("JWKS for %s fetched: %d usable key(s)", url, len(keys))
        return keys.get(kid)


def _public_keys(document: Mapping[str, Any], client: TrustedClient) -> dict[str, Any]:
    """The usable public keys of a fetched JWK Set, by kid (bad or duplicate kids dropped)."""
    keys: dict[str, Any] = {}
    duplicate: set[str] = set()
    raw = document.get("keys") if isinstance(document, Mapping) else None
    for jwk in raw if isinstance(raw, list) else ():
        if trusted_clients.jwk_problem(jwk, client.algorithms) is None:
            kid = jwk["kid"]
            if kid in keys:
                duplicate.add(kid)
            keys[kid] = dict(jwk)
    return {k: v for k, v in keys.items() if k not in duplicate}


# -- Flask ---------------------------------------------------------------------------------


def expected_audiences(public_url: str | Sequence[str], path: str, *, feedback: bool) -> list[str]:
    """The ``aud`` values accepted for a call to ``path``: the endpoint's public URL (with or
    without a trailing slash) under each base URL; for feedback also the service URL, which
    some clients sign."""
    bases = [public_url] if isinstance(public_url, str) else list(public_url)
    urls = []
    for public in bases:
        base = public.rstrip("/") + "/" + path.strip("/")
        urls.append(base)
        if feedback and base.endswith("/feedback"):
            urls.append(base[: -len("/feedback")])
    return [variant for url in urls for variant in (url, url + "/")]


def _bearer(header: str | None) -> str:
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailure("no bearer token")
    return token.strip()


def authenticate() -> None:
    """``before_request`` hook of the CDS blueprint: verify the caller or raise 401/503."""
    if request.method == "OPTIONS":  # CORS preflight: browsers never send credentials
        return
    if any(name.lower() in QUERY_TOKEN_NAMES for name in request.args):
        # A token in the URL ends up in access logs and proxies' logs: never accepted.
        log.warning("authentication refused on %s: a token in the query string", request.method)
        g.cds_auth_failure = "token_in_url"
        raise Unauthorized("Send the JWT in the Authorization header, never in the URL")
    verifier: Verifier = current_app.extensions[EXTENSION]
    rule = request.url_rule.rule if request.url_rule is not None else ""
    bases = [current_app.config["PUBLIC_URL"], *current_app.config.get("PUBLIC_URL_ALIASES", ())]
    audiences = expected_audiences(bases, request.path, feedback=rule.endswith("/feedback"))
    try:
        g.cds_caller = verifier.verify(_bearer(request.headers.get("Authorization")), audiences)
    except AuthFailure as failure:
        g.cds_auth_failure = failure.reason
        log.warning(
            "authentication failed on %s %s: %s (%s)",
            request.method,
            rule or "(no route)",
            failure,
            _token_summary(request.headers.get("Authorization")),
        )
        raise Unauthorized("Authentication failed") from None
    except CacheUnavailable as exc:
        log.error("authentication could not be checked: %s", exc)
        g.cds_auth_failure = "cache_unavailable"
        raise AuthUnavailable("Authentication is temporarily unavailable; retry") from None


def _token_summary(header: str | None) -> str:
    """``iss``, ``tenant`` and ``jti`` of a refused token (unverified, sanitised), for logs."""
    if not header:
        return "no Authorization header"
    try:
        claims = jwt.decode(_bearer(header), options={"verify_signature": False})
    except (AuthFailure, jwt.PyJWTError):
        return "unreadable token"
    return " ".join(f"{name}={_safe(claims.get(name))}" for name in ("iss", "tenant", "jti"))


def fhir_settings(settings: FhirSettings) -> FhirSettings:
    """The outbound FHIR policy for this request: with authentication on, only the
    authenticated client's ``fhir_servers`` (none if, somehow, no client is known)."""
    if EXTENSION not in current_app.extensions:
        return settings
    caller: Caller | None = g.get("cds_caller")
    return replace(settings, allowed_servers=caller.client.fhir_servers if caller else ())


def caller_namespace() -> str:
    """Whose patient ids this request's are: the authenticated caller's ``Caller.namespace``;
    "" with authentication off (a single, unnamed EHR: ``cds-server demo``, tests)."""
    if EXTENSION not in current_app.extensions:
        return ""
    caller: Caller | None = g.get("cds_caller")
    return caller.namespace if caller else ""


def client_profile() -> str:
    """The profile of this request's client (``render.profiles``): its trusted-clients entry's,
    else the ``CLIENT_PROFILE`` setting (the only one with authentication off)."""
    caller: Caller | None = g.get("cds_caller") if EXTENSION in current_app.extensions else None
    named = caller.client.profile if caller else None
    return named or str(current_app.config["CLIENT_PROFILE"])


def caller_site() -> str | None:
    """The site overlay folder of the authenticated caller's trusted-clients entry, if any."""
    if EXTENSION not in current_app.extensions:
        return None
    caller: Caller | None = g.get("cds_caller")
    return caller.client.site if caller else None


def init_app(app: Flask, *, blueprint: str) -> TrustedClients | None:
    """Require authentication on ``blueprint`` unless ``AUTH_REQUIRED`` is off (demo, tests);
    return the trusted clients (None with authentication off).

    Raises ``ConfigError`` with a clear message when authentication is required but the
    trusted-clients file or the public URL is missing, or the shared cache is unreachable.
    """
    cfg = app.config
    if not cfg["AUTH_REQUIRED"]:
        if not app.testing:
            log.warning(
                "*** AUTHENTICATION IS OFF: any caller can use this service. "
                "Only for the local demo; never with real patient data. ***"
            )
        return None
    if not cfg.get("CLIENTS_FILE"):
        raise ConfigError(
            "Authentication is required, but no trusted-clients file is configured. "
            "Pass --clients FILE to `cds-server serve` (or set CDS_CLIENTS_FILE); the file "
            "format is in the README, section 'Trusted clients'. To try the service locally "
            "without authentication, run `cds-server demo`."
        )
    if not cfg.get("PUBLIC_URL"):
        raise ConfigError(
            "Authentication is required, but the public URL is not set. Pass --public-url "
            "(or set CDS_PUBLIC_URL), e.g. https://cds.example.org: a client's JWT 'aud' must "
            "equal the public URL of the endpoint it calls."
        )
    clients = trusted_clients.load(cfg["CLIENTS_FILE"])
    try:
        cache = open_cache(cfg["AUTH_CACHE"], timeout=float(cfg["AUTH_CACHE_TIMEOUT"]))
    except CacheUnavailable as exc:
        raise ConfigError(f"AUTH_CACHE: cannot use the shared cache ({exc})") from None
    timeout = (float(cfg["FHIR_CONNECT_TIMEOUT"]), float(cfg["FHIR_READ_TIMEOUT"]))
    app.extensions[EXTENSION] = Verifier(
        clients,
        cache=cache,
        leeway=float(cfg["AUTH_LEEWAY"]),
        fetcher=lambda url: fetch_jwks(url, timeout=timeout),
        jwks_ttl=float(cfg["AUTH_JWKS_TTL"]),
        jwks_min_refresh=float(cfg["AUTH_JWKS_MIN_REFRESH"]),
        max_lifetime=float(cfg["AUTH_MAX_TOKEN_LIFETIME"]),
    )
    app.before_request_funcs.setdefault(blueprint, []).append(authenticate)
    where = (
        "memory (this process only)"
        if cfg["AUTH_CACHE"] == "memory"
        else redacted(cfg["AUTH_CACHE"])
    )
    log.info(
        "authentication on: %d trusted client(s), replay/JWKS cache in %s",
        len(clients.clients),
        where,
    )
    return clients
