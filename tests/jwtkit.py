"""Test helpers for CDS client JWTs: key pairs generated per test session, a signer, the
trusted-clients file, and an app with authentication on."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

PUBLIC_URL = "https://cds.example.org"
DISCOVERY = f"{PUBLIC_URL}/cds-services"
SIGN_AUD = f"{PUBLIC_URL}/cds-services/infusion-safety-sign"
EHR_ISS = "https://ehr.example.org"
EHR_FHIR = "https://ehr.example.org/fhir"


@dataclass(frozen=True)
class Key:
    kid: str
    private: Any = field(repr=False)

    def public_jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            jwk = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", **extra}


@cache
def key(name: str) -> Key:
    """Session-wide keys: ``es384``, ``es384b``, ``es256``, ``rsa``, ``rsa-other``."""
    if name.startswith("es384"):
        private: Any = ec.generate_private_key(ec.SECP384R1())
    elif name == "es256":
        private = ec.generate_private_key(ec.SECP256R1())
    else:
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Key(kid=f"kid-{name}", private=private)


def claims(aud: Any = DISCOVERY, iss: str = EHR_ISS, **changes: Any) -> dict[str, Any]:
    """Valid claims for ``aud``; a change to ``KeyError`` drops that claim."""
    now = time.time()
    base: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": int(now),
        "exp": int(now) + 300,
        "jti": str(uuid.uuid4()),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not KeyError}


def sign(
    payload: Mapping[str, Any],
    signer: str = "es384",
    alg: str = "ES384",
    **header: Any,
) -> str:
    """A JWT signed with ``signer``; a header value of None leaves that header out."""
    k = key(signer)
    headers = {k_: v for k_, v in {"kid": k.kid, "typ": "JWT", **header}.items() if v is not None}
    return jwt.encode(dict(payload), k.private, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def unsigned(payload: Mapping[str, Any], **header: Any) -> str:
    """An ``alg: none`` token."""
    head = {"alg": "none", "typ": "JWT", "kid": key("es384").kid, **header}
    return f"{b64(json.dumps(head).encode())}.{b64(json.dumps(dict(payload)).encode())}."


def client_entry(*names: str, **extra: Any) -> dict[str, Any]:
    keys = [key(n).public_jwk() for n in names or ("es384", "rsa")]
    return {"iss": EHR_ISS, "jwks": {"keys": keys}, "fhir_servers": [EHR_FHIR], **extra}


def write_clients(folder: Path, *entries: Mapping[str, Any]) -> Path:
    path = folder / f"clients-{uuid.uuid4().hex[:8]}.yaml"
    data = {"clients": list(entries) or [client_entry()]}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def auth_app(
    make_app: Callable[..., Flask], folder: Path, *entries: Mapping[str, Any], **settings: Any
) -> Flask:
    """An app that requires JWTs from ``entries`` (default: the EHR with es384 and rsa)."""
    return make_app(
        AUTH_REQUIRED=True,
        CLIENTS_FILE=str(write_clients(folder, *entries)),
        PUBLIC_URL=PUBLIC_URL,
        **settings,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
