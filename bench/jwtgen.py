"""CDS client JWTs for the benchmark: a throw-away ES384 key pair, its trusted-clients entry,
and files of signed tokens (one per request: every token has its own ``jti``).

The service verifies them exactly as in production (``AUTH_REQUIRED``): signature, ``iss``,
``aud`` (the endpoint's URL under ``PUBLIC_URL``), ``exp``/``iat``, ``jti`` replay. Tokens are
signed before a load run, so signing costs the load generator nothing.
"""

from __future__ import annotations

import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

ISS = "urn:infusion-safety-cds:benchmark"
ALGORITHM = "ES384"
LIFETIME_SECONDS = 300  # as the CDS Hooks Sandbox signs them


class Signer:
    """One key pair, generated in memory for one benchmark run."""

    def __init__(self) -> None:
        self.kid = secrets.token_hex(8)
        self._key = ec.generate_private_key(ec.SECP384R1())

    def clients_file(self, path: Path, fhir_servers: list[str]) -> Path:
        """A trusted-clients file trusting this key's public half (and these FHIR servers)."""
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        entry = {
            "iss": ISS,
            "jwks": {"keys": [{**jwk, "kid": self.kid, "alg": ALGORITHM, "use": "sig"}]},
            "fhir_servers": fhir_servers,
            "algorithms": [ALGORITHM],
        }
        path.write_text(yaml.safe_dump({"clients": [entry]}, sort_keys=False), encoding="utf-8")
        return path

    def sign(self, aud: str, now: int) -> str:
        claims = {
            "iss": ISS,
            "sub": "benchmark",
            "aud": aud,
            "iat": now,
            "exp": now + LIFETIME_SECONDS,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM, headers={"kid": self.kid})

    def tokens(self, aud: str, count: int, path: Path) -> Path:
        """``count`` tokens for ``aud``, one per line."""
        now = int(time.time())
        path.write_text("".join(self.sign(aud, now) + "\n" for _ in range(count)))
        return path
