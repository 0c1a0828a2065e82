"""The demo's test signing key: lets the sandbox page send signed CDS client JWTs.

``cds-server demo`` generates a fresh ES384 key pair at start-up, in memory only (it is
never written anywhere and dies with the process). Only its PUBLIC half leaves it:

* at ``/sandbox/demo-jwks.json`` (demo only), and
* in a trusted-clients entry for the fixed issuer ``DEMO_ISS`` (``trusted_clients_entry``),
  which ``cds-server demo --auth`` writes to a temporary trusted-clients file so that the
  demo really verifies these tokens like any other client's.

The sandbox's ``POST /sandbox/api/token`` signs a short-lived token for the ``aud`` the page
is about to call. That endpoint and this key exist only when ``DEMO`` is true: production
(``cds-server serve``) never creates, loads or accepts a private key.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

DEMO_ISS = "urn:infusion-safety-cds:sandbox-demo"
ALGORITHM = "ES384"
LIFETIME_SECONDS = 300  # as the CDS Hooks Sandbox does: exp = iat + 5 minutes


@dataclass(frozen=True)
class TestKey:
    """An ES384 key pair generated for one demo process."""

    kid: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False, compare=False)
    iss: str = DEMO_ISS

    def public_jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk()]}

    def trusted_clients_entry(self) -> dict[str, Any]:
        """This key as an entry of the trusted-clients file (public key only)."""
        return {"iss": self.iss, "jwks": self.public_jwks(), "algorithms": [ALGORITHM]}

    def sign(self, aud: str, *, now: float | None = None) -> str:
        """A CDS client JWT for ``aud`` (the exact URL about to be called)."""
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": self.iss,
            "sub": "sandbox-page",
            "aud": aud,
            "iat": issued,
            "exp": issued + LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        headers = {"kid": self.kid, "typ": "JWT"}
        return jwt.encode(claims, self.private_key, algorithm=ALGORITHM, headers=headers)


def generate() -> TestKey:
    """A new key pair (P-384), with a random kid."""
    private_key = ec.generate_private_key(ec.SECP384R1())
    return TestKey(kid=f"sandbox-demo-{secrets.token_hex(6)}", private_key=private_key)


def demo_auth_overrides(
    key: TestKey,
    folder: Path,
    public_url: str,
    extra_clients: Path | None = None,
    aliases: Sequence[str] = (),
) -> dict[str, Any]:
    """Settings for a demo that verifies JWTs (``cds-server demo --auth``); ``aliases``: other
    base URLs of the demo whose JWT audiences are accepted too.

    Writes ``folder/trusted-clients.yaml``: the clients of ``extra_clients`` (if given, e.g.
    the CDS Hooks Sandbox's public key) plus this key's public half for ``DEMO_ISS``.
    """
    clients: list[Any] = []
    if extra_clients is not None:
        data = yaml.safe_load(extra_clients.read_text(encoding="utf-8")) or {}
        listed = data.get("clients") if isinstance(data, dict) else None
        clients.extend(listed if isinstance(listed, list) else [])
    clients.append(key.trusted_clients_entry())
    path = folder / "trusted-clients.yaml"
    path.write_text(yaml.safe_dump({"clients": clients}, sort_keys=False), encoding="utf-8")
    return {
        "AUTH_REQUIRED": True,
        "CLIENTS_FILE": str(path),
        "PUBLIC_URL": public_url.rstrip("/"),
        "PUBLIC_URL_ALIASES": [a.rstrip("/") for a in aliases],
        "SANDBOX_TEST_KEY": key,
    }
