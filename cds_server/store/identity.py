"""Keyed hashes of patient and encounter ids, and the key's life cycle.

The store never sees an identifier in the clear: ``patient_hash`` is
HMAC-SHA256(key, "patient" NUL tenant NUL id), ``encounter_hash`` the same with "encounter";
the card log also keeps the calling EHR as HMAC-SHA256(key, "caller" NUL NUL namespace).
Without the key a hash cannot be tested against a guessed id (unlike a plain SHA-256 of a
medical record number). ``tenant`` separates EHRs whose ids could collide: the authenticated
caller's ``iss`` and ``tenant`` claim (``auth.caller_namespace``), "" with authentication off.

The key comes from ``PATIENT_HASH_KEY``; for a SQLite file it is generated once into
``patient-hash.key`` (mode 0600) next to the database, i.e. the instance folder by default.
Changing the key cuts the link to every earlier card, feedback and snooze (they are not lost,
just no longer joinable).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

KEY_FILE = "patient-hash.key"


def keyed_hash(key: bytes, kind: str, value: str, tenant: str = "") -> str:
    """Hex HMAC-SHA256 of ``value`` in the domain ``kind`` (``patient``/``encounter``)."""
    message = "\x00".join((kind, tenant, value)).encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def load_or_create_key(folder_path: str | os.PathLike[str]) -> bytes:
    """The key kept in ``folder_path``, generated on first use (race-safe)."""
    folder = Path(folder_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_key(path)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    for _ in range(50):  # another process may be between O_EXCL and its write
        text = path.read_text().strip()
        if text:
            return text.encode("utf-8")
        time.sleep(0.01)
    raise RuntimeError(f"{path} is empty; delete it to generate a new key")


def ephemeral_key() -> bytes:
    """A random key for a throwaway in-memory database."""
    return secrets.token_bytes(32)
