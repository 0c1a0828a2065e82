"""The trusted-clients file: which CDS clients may call the service, and how to check them.

YAML, validated with marshmallow (unknown keys are errors; every problem is reported at once
as ``clients.<n>.<field>: message``)::

    clients:
      - iss: https://ehr.example.org          # the JWT "iss" claim, exactly
        jwks: {keys: [ ...public JWKs... ]}   # either the keys themselves ...
        # jku: https://ehr.example.org/.well-known/jwks.json   # ... or their allow-listed URL
        tenant: optional-tenant-id            # if set, the JWT "tenant" claim must equal it
        fhir_servers: [https://ehr.example.org/fhir]   # where fhirAuthorization may be sent
        algorithms: [ES384, RS384]            # optional; ES256 and RS256 only if listed here
        profile: epic                         # optional: generic, epic, oracle or sandbox
        site: sites/north-hospital            # optional: this client's site overlay folder

Entries are keyed by (``iss``, ``tenant``); an entry without ``tenant`` accepts any tenant.
``profile`` shapes the cards sent to that client (``render.profiles``); without it, the
``CLIENT_PROFILE`` setting (default ``generic``: spec-pure CDS Hooks 2.0). A ``site`` folder
(relative to the file's own folder) gives that client's calls its own site overlay
(``cds_server.knowledge.overlay``) and its order codes; other clients never see it.
Only public keys are accepted (a key with ``d`` is refused); ``none`` and HS* never are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import jwt
import yaml
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from cds_server.config import ConfigError
from cds_server.fhirdata.client import base_url_key
from cds_server.render.profiles import PROFILE_NAMES

DEFAULT_ALGORITHMS = frozenset({"ES384", "RS384"})
OPTIONAL_ALGORITHMS = frozenset({"ES256", "RS256"})
ALGORITHMS = DEFAULT_ALGORITHMS | OPTIONAL_ALGORITHMS
CURVE_ALGORITHM = {"P-256": "ES256", "P-384": "ES384"}
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048


@dataclass(frozen=True)
class TrustedClient:
    """One trusted CDS client (an ``iss``, optionally one ``tenant`` of it)."""

    iss: str
    tenant: str | None = None
    keys: Mapping[str, Mapping[str, Any]] | None = None  # static public JWKs by kid
    jku: str | None = None  # or: the one JWKS URL fetched for this client
    fhir_servers: tuple[str, ...] = ()  # base_url_key() of each allowed fhirServer
    algorithms: frozenset[str] = DEFAULT_ALGORITHMS
    profile: str | None = None  # a ``render.profiles`` name; None = the CLIENT_PROFILE setting
    site: str | None = None  # this client's site overlay folder (absolute path), if any


@dataclass(frozen=True)
class TrustedClients:
    """The loaded file: lookup by ``iss`` and ``tenant``."""

    clients: tuple[TrustedClient, ...]

    def find(self, iss: str, tenant: Any) -> TrustedClient | None:
        """The entry for this issuer and tenant: an exact tenant first, else a tenant-less one."""
        same = [c for c in self.clients if c.iss == iss]
        if isinstance(tenant, str):
            for client in same:
                if client.tenant == tenant:
                    return client
        return next((c for c in same if c.tenant is None), None)

    def knows(self, iss: str) -> bool:
        return any(c.iss == iss for c in self.clients)


# -- keys ------------------------------------------------------------------------------


def usable_algorithms(jwk: Mapping[str, Any], enabled: frozenset[str]) -> frozenset[str]:
    """The enabled algorithms this JWK can verify (by ``kty``/``crv`` and its own ``alg``)."""
    kty = jwk.get("kty")
    if kty == "EC":
        algs = {CURVE_ALGORITHM.get(str(jwk.get("crv")), "")} - {""}
    elif kty == "RSA":
        algs = {"RS256", "RS384"}
    else:
        return frozenset()
    own = jwk.get("alg")
    if own is not None:
        algs &= {own}
    return frozenset(algs & enabled)


def jwk_problem(jwk: Any, enabled: frozenset[str]) -> str | None:
    """Why this JWK cannot be used to verify tokens of an enabled algorithm (None = usable)."""
    if not isinstance(jwk, Mapping):
        return "must be a JSON object (a JWK)"
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        return "kid is required (a non-empty string)"
    private = [m for m in PRIVATE_MEMBERS if m in jwk]
    if private:
        return (
            f"contains private key material ({', '.join(private)}); "
            "give the public key only (kty, crv, x, y or kty, n, e)"
        )
    kty = jwk.get("kty")
    if kty not in ("EC", "RSA"):
        return "kty must be EC or RSA (symmetric keys are never accepted)"
    if jwk.get("use", "sig") != "sig":
        return "use must be 'sig'"
    algs = usable_algorithms(jwk, enabled)
    if not algs:
        what = f"EC {jwk.get('crv')}" if kty == "EC" else "RSA"
        return (
            f"this {what} key (alg {jwk.get('alg', 'unset')}) fits none of the enabled "
            f"algorithms ({', '.join(sorted(enabled))}); enable ES256/RS256 in 'algorithms' "
            "if this client really uses them"
        )
    try:
        key = jwt.PyJWK(dict(jwk), algorithm=min(algs))
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return f"is not a valid {kty} public key"
    if kty == "RSA" and getattr(key.key, "key_size", 0) < MIN_RSA_BITS:
        return f"RSA keys must have at least {MIN_RSA_BITS} bits"
    return None


# -- schema ----------------------------------------------------------------------------


def _algorithm(value: str) -> None:
    if value in ALGORITHMS:
        return
    if value.lower() == "none" or value.upper().startswith("HS"):
        raise ValidationError(
            f"{value} is never accepted: CDS Hooks forbids 'none' and symmetric (HS*) algorithms"
        )
    raise ValidationError(f"must be one of {', '.join(sorted(ALGORITHMS))}")


def _jku(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.fragment:
        raise ValidationError("must be an https URL (the client's JWK Set)")


def _fhir_base(value: str) -> None:
    parts = urlsplit(value)
    if not base_url_key(value) or parts.username or parts.password or parts.query:
        raise ValidationError("must be a plain http(s) base URL (no credentials or query)")
    if parts.fragment:
        raise ValidationError("must be a plain http(s) base URL (no fragment)")


class _ClientSchema(Schema):
    class Meta:
        unknown = RAISE

    iss = fields.String(required=True, validate=validate.Length(min=1, max=2048))
    jwks = fields.Dict(keys=fields.String())
    jku = fields.String(validate=_jku)
    tenant = fields.String(validate=validate.Length(min=1, max=256))
    fhir_servers = fields.List(fields.String(validate=_fhir_base))
    algorithms = fields.List(fields.String(validate=_algorithm), validate=validate.Length(min=1))
    profile = fields.String(validate=validate.OneOf(PROFILE_NAMES))
    site = fields.String(validate=validate.Length(min=1, max=4096))

    @validates_schema(skip_on_field_errors=True)
    def _keys(self, data: dict[str, Any], **kw: Any) -> None:
        if ("jwks" in data) == ("jku" in data):
            raise ValidationError(
                "give exactly one of jwks (the client's public JWK Set) or jku (its https URL)",
                "jwks",
            )
        if "jwks" not in data:
            return
        keys = data["jwks"].get("keys")
        if set(data["jwks"]) != {"keys"} or not isinstance(keys, list) or not keys:
            raise ValidationError("must be a JWK Set: {keys: [one or more public JWKs]}", "jwks")
        enabled = frozenset(data.get("algorithms") or DEFAULT_ALGORITHMS)
        errors: dict[str, list[str]] = {}
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            problem = jwk_problem(key, enabled)
            if problem is None and key["kid"] in seen:
                problem = f"duplicate kid (same as keys.{seen[key['kid']]})"
            if problem:
                errors[str(i)] = [problem]
            else:
                seen[key["kid"]] = i
        if errors:
            raise ValidationError({"jwks": {"keys": errors}})


class _FileSchema(Schema):
    class Meta:
        unknown = RAISE

    clients = fields.List(
        fields.Nested(_ClientSchema), required=True, validate=validate.Length(min=1)
    )

    @validates_schema(skip_on_field_errors=True)
    def _unique(self, data: dict[str, Any], **kw: Any) -> None:
        seen: dict[tuple[str, str | None], int] = {}
        errors: dict[str, list[str]] = {}
        for i, client in enumerate(data["clients"]):
            key = (client["iss"], client.get("tenant"))
            if key in seen:
                errors[str(i)] = [f"same iss and tenant as clients.{seen[key]}"]
            seen.setdefault(key, i)
        if errors:
            raise ValidationError({"clients": errors})


def _flatten(messages: Any, prefix: str = "") -> list[str]:
    if isinstance(messages, Mapping):
        out = []
        for key, value in messages.items():
            name = prefix if key == "_schema" else (f"{prefix}.{key}" if prefix else str(key))
            out.extend(_flatten(value, name))
        return out
    if isinstance(messages, list | tuple):
        return [line for item in messages for line in _flatten(item, prefix)]
    return [f"{prefix or '(file)'}: {messages}"]


def _build(entry: Mapping[str, Any], folder: Path | None = None) -> TrustedClient:
    keys = None
    if "jwks" in entry:
        keys = MappingProxyType(
            {k["kid"]: MappingProxyType(dict(k)) for k in entry["jwks"]["keys"]}
        )
    return TrustedClient(
        iss=entry["iss"],
        tenant=entry.get("tenant"),
        keys=keys,
        jku=entry.get("jku"),
        fhir_servers=tuple(base_url_key(u) for u in entry.get("fhir_servers", ())),
        algorithms=frozenset(entry.get("algorithms") or DEFAULT_ALGORITHMS),
        profile=entry.get("profile"),
        site=str((folder or Path.cwd()) / entry["site"]) if "site" in entry else None,
    )


def parse(data: Any, source: str = "trusted clients", folder: Path | None = None) -> TrustedClients:
    """Validate already-parsed YAML/JSON data; ``ConfigError`` lists every problem. A
    client's ``site`` is taken relative to ``folder`` (the file's; default the working one)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: must be a mapping with a 'clients' list (see the README)")
    try:
        loaded = _FileSchema().load(data)
    except ValidationError as exc:
        lines = "\n".join(f"  {line}" for line in sorted(_flatten(exc.messages)))
        raise ConfigError(f"{source} is invalid:\n{lines}") from None
    return TrustedClients(tuple(_build(entry, folder) for entry in loaded["clients"]))


def load(path: str | Path) -> TrustedClients:
    """Read and validate the trusted-clients YAML file; ``ConfigError`` on any problem."""
    source = f"Trusted-clients file {path}"
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(f"Cannot read the trusted-clients file {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{source} is not valid YAML{where}") from None
    return parse(data, source, Path(path).resolve().parent)
