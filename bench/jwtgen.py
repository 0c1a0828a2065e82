"""CDS client JWTs for the benchmark: a throw-away key pair (RS384, Epic's default, or ES384,
as the CDS Hooks Sandbox signs), its trusted-clients entry, and files of signed tokens (one
per request: every token has its own ``jti``).

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
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISS = "urn:infusion-safety-cds:benchmark"
ALGORITHMS = ("ES384", "RS384")  # the two CDS Hooks 2.0 recommends
# The default: Epic's (the EHR whose order-sign calls the service answers; Oracle Health's
# CDS Hooks documentation, cerner/fhir.cerner.com branch cds-hooks, lists patient-view
# only). The CDS Hooks Sandbox signs ES384 (``--alg ES384``).
ALGORITHM = "RS384"
RSA_BITS = 2048  # the smallest RSA key the service accepts (PyJWT minimum, enforced)
LIFETIME_SECONDS = 300  # as the CDS Hooks Sandbox signs them


class Signer:
    """One key pair, generated in memory for one benchmark run."""

    def __init__(self, algorithm: str = ALGORITHM) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}")
        self.algorithm = algorithm
        self.kid = secrets.token_hex(8)
        self._key: Any = (
            ec.generate_private_key(ec.SECP384R1())
            if algorithm == "ES384"
            else rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        )

    def clients_file(self, path: Path, fhir_servers: list[str]) -> Path:
        """A trusted-clients file trusting this key's public half (and these FHIR servers)."""
        public = self._key.public_key()
        codec: Any = ECAlgorithm if self.algorithm == "ES384" else RSAAlgorithm
        jwk: dict[str, Any] = codec.to_jwk(public, as_dict=True)
        entry = {
            "iss": ISS,
            "jwks": {"keys": [{**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}]},
            "fhir_servers": fhir_servers,
            "algorithms": [self.algorithm],
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
        return jwt.encode(claims, self._key, algorithm=self.algorithm, headers={"kid": self.kid})

    def tokens(self, aud: str, count: int, path: Path) -> Path:
        """``count`` tokens for ``aud``, one per line."""
        now = int(time.time())
        path.write_text("".join(self.sign(aud, now) + "\n" for _ in range(count)))
        return path
