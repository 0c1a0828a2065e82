"""Configuration: defaults, then an optional instance file, then ``CDS_*`` environment variables.

This is the only module that reads the environment. Order of precedence (last wins):

1. ``DEFAULTS`` below;
2. ``config.py`` in the data folder (optional) — skipped when a test config is given;
3. ``CDS_<KEY>`` environment variables via ``Config.from_prefixed_env("CDS")`` (values are
   parsed as JSON when possible: ``CDS_FHIR_READ_TIMEOUT=3``, ``CDS_FHIR_ALLOW_HTTP='"loopback"'``
   or simply ``CDS_FHIR_ALLOW_HTTP=loopback``), and for the secrets (``SECRET_FILE_KEYS``)
   ``CDS_<KEY>_FILE``, the path of a file holding the value (Docker and Kubernetes secrets) —
   skipped when a test config is given;
4. the ``test_config`` mapping, if any;
5. ``overrides`` (set by the command line, e.g. ``--public-url`` or the demo profile).

``check()`` validates the result so a bad setting stops the service at start-up.

The **data folder** (``--data-dir`` / ``CDS_DATA_DIR``, else ``./instance`` of the working
directory) is Flask's instance folder: the SQLite database, its patient-hash key and the
optional ``config.py``. It is never inside the installed package or its virtualenv.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from flask import Config

MiB = 1024 * 1024
DATA_DIR_ENV = "CDS_DATA_DIR"
DEFAULT_DATA_DIR = "instance"  # relative to the working directory

DEFAULTS: dict[str, Any] = {
    # Knowledge folder (cards/*.yaml); None = the one shipped (in the wheel, or the checkout's).
    "CARDS_DIR": None,
    # Site folder: the institution's overlay on the knowledge (its approved protocols:
    # preferred agents, local regimens, observation times, rules switched off, jurisdiction,
    # order codes). None = the label knowledge alone. A trusted client may name its own.
    "SITE_DIR": None,
    # Largest accepted request body, in bytes (Flask enforces it; larger → 413).
    "MAX_CONTENT_LENGTH": 8 * MiB,
    # Base URL clients call (e.g. https://cds.example.org); used for JWT audience checks.
    "PUBLIC_URL": None,
    # Other base URLs of the same service whose JWT audiences are accepted too (the demo:
    # http://127.0.0.1:<port> beside http://localhost:<port>).
    "PUBLIC_URL_ALIASES": [],
    # CORS: "*" or a list of allowed browser origins; "" or [] disables CORS.
    "CORS_ORIGINS": "*",
    # Outbound FHIR calls (fhirServer fallback).
    "FHIR_CONNECT_TIMEOUT": 1.0,
    "FHIR_READ_TIMEOUT": 2.0,
    # Wall-clock budget, in seconds, for all FHIR calls of one hook call.
    "FHIR_DEADLINE": 4.0,
    # One per prefetch key: a call missing all of them fetches them in one round trip.
    "FHIR_MAX_WORKERS": 5,
    "FHIR_MAX_PAGES": 10,
    "FHIR_MAX_BYTES": 10 * MiB,
    "FHIR_MAX_MEDICATION_READS": 20,
    # "never" (production), "loopback" (http only to localhost), "always" (dev/tests).
    "FHIR_ALLOW_HTTP": "never",
    # Use a fhirServer that came without fhirAuthorization (open test servers). Dev only.
    "FHIR_ALLOW_UNAUTHENTICATED": False,
    # Origins (scheme://host[:port]) the service may call; empty = any origin.
    "FHIR_ALLOWED_ORIGINS": [],
    # Demo mode (set by ``cds-server demo``): no authentication. Never in production.
    "DEMO": False,
    # Client profile (generic, epic, oracle, sandbox: how cards are shaped) of a trusted client
    # whose entry names none, and of every call when authentication is off (the demo).
    "CLIENT_PROFILE": "generic",
    # Level of the ``cds_server`` loggers when run from the command line.
    "LOG_LEVEL": "INFO",
    # -- sandbox page (cds_server/sandbox) ---------------------------------------------------
    # Serve /sandbox outside demo mode too (always on in demo mode). No test key outside it.
    "SANDBOX_ENABLED": False,
    # Fixture patients offered by the page; None = the fixtures/fhir shipped with the package.
    "SANDBOX_FIXTURES_DIR": None,
    # -- persistence (cds_server/store): card log, feedback, snooze ------------------------
    # SQLAlchemy URL; None = SQLite file cds-server.sqlite3 in the data folder (memory if TESTING).
    # PostgreSQL: postgresql://user@host/db (driven by psycopg 3).
    "DATABASE_URL": None,
    # Deadline, in seconds, of each database operation of a hook call or a feedback POST (the
    # snooze/de-duplication read, the feedback commit, one card-log batch): waiting for a
    # pooled connection, opening one and every statement, even when the server never answers.
    # The read then fails open (cards shown unfiltered), feedback answers 503.
    "DATABASE_TIMEOUT": 1.5,
    # Seconds to open a new database connection (PostgreSQL: whole seconds, at least 2).
    "DATABASE_CONNECT_TIMEOUT": 2,
    # Deadline, in seconds, of the card report (GET /analytics/report, `cds-server report`).
    "DATABASE_REPORT_TIMEOUT": 30,
    # Upgrade the schema (Alembic) when the app starts; false = run `cds-server db upgrade`.
    "DATABASE_AUTO_UPGRADE": True,
    # HMAC-SHA256 key for patient/encounter hashes (>= 32 characters). None = generated once
    # into patient-hash.key next to the SQLite file (the data folder by default), ephemeral for
    # in-memory SQLite; required for any other database (every instance must share it).
    "PATIENT_HASH_KEY": None,
    # Same rule + drug + patient already shown in this ordering session (same encounter or
    # hookInstance) within this many minutes → not shown again (0 disables).
    "DEDUP_WINDOW_MINUTES": 60,
    # Write the card log on a background thread per process, in batches, after the answer
    # (false: inside the hook call). Feedback is always written before it is answered.
    "CARD_LOG_BACKGROUND": True,
    # How long the writer lets rows gather before a commit (one commit per call cost ≈ 2 ms
    # of CPU, bench/README.md). A hard crash loses at most this much of the card log; the
    # process's own de-duplication and feedback see the rows at once.
    "CARD_LOG_LINGER_SECONDS": 0.2,
    # Bearer token for /analytics/*; None = analytics open in demo mode only (403 otherwise).
    "ADMIN_TOKEN": None,
    # Serve the knowledge pages (/knowledge/) without a token, and link every card to them
    # (source.url). Off: they need ADMIN_TOKEN like the analytics, and cards carry no link
    # (open in demo mode). They hold the knowledge only, never patient data.
    "KNOWLEDGE_PAGES_PUBLIC": False,
    # -- trust (cds_server/web/auth.py, trusted_clients.py): CDS client JWTs, SSRF, limits -------
    # Require a signed JWT from a trusted client on every call. ``serve`` forces it on; the
    # demo and the test app turn it off.
    "AUTH_REQUIRED": True,
    # Trusted-clients YAML file (``serve --clients``); required when AUTH_REQUIRED.
    "CLIENTS_FILE": None,
    # Clock leeway, in seconds, for the JWT exp/iat/nbf checks (0-300).
    "AUTH_LEEWAY": 60,
    # Longest accepted token lifetime, in seconds: exp at most this far ahead (plus the leeway).
    # Epic signs tokens valid ≈ 15 min; the specification recommends 5 min.
    "AUTH_MAX_TOKEN_LIFETIME": 3600,
    # Replay (jti) and JWKS cache: "memory" (this process) or redis://host:port/db (shared).
    "AUTH_CACHE": "memory",
    # Seconds to connect to the Redis of AUTH_CACHE and to wait for each answer; beyond it the
    # call is answered 503 (authentication cannot be checked), never left waiting.
    "AUTH_CACHE_TIMEOUT": 1.0,
    # A fetched jku JWK Set is re-fetched after this many seconds, or on an unknown kid but
    # at most once per AUTH_JWKS_MIN_REFRESH seconds.
    "AUTH_JWKS_TTL": 3600,
    "AUTH_JWKS_MIN_REFRESH": 30,
    # Non-public networks (CIDRs) a fhirServer may resolve to; public addresses always may.
    "FHIR_ALLOWED_NETWORKS": [],
    # Seconds a client has to send a request's whole body once the app starts reading it;
    # then the connection is closed (a stalled upload must not hold a request thread). Under
    # ``serve`` only (gunicorn hands the app the socket); a buffering proxy in front does the rest.
    "REQUEST_BODY_TIMEOUT": 10,
    # Request limits (beyond them: 400 for depth, 413 for counts).
    "MAX_JSON_DEPTH": 64,
    "MAX_DRAFT_ORDERS": 100,
    "MAX_PREFETCH_RESOURCES": 5000,
}

HTTP_POLICIES = ("never", "loopback", "always")


def given_data_dir(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """The data folder given (``--data-dir``), else ``CDS_DATA_DIR``, as an absolute path; None
    if neither is set."""
    chosen = explicit or os.environ.get(DATA_DIR_ENV) or None
    return os.path.abspath(chosen) if chosen else None


def data_dir(explicit: str | os.PathLike[str] | None = None) -> str:
    """The data folder: ``given_data_dir`` or ``./instance`` of the working directory."""
    return given_data_dir(explicit) or os.path.abspath(DEFAULT_DATA_DIR)


# prometheus-client's multiprocess mode (cds_server.web.metrics): the folder its workers share.
METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def metrics_dir() -> str | None:
    """The folder of prometheus-client's multiprocess mode, if this process is in it."""
    return os.environ.get(METRICS_DIR_ENV) or None


def set_metrics_dir(folder: str | None) -> None:
    """Put this process and those it starts in multiprocess mode (None: out of it)."""
    if folder is None:
        os.environ.pop(METRICS_DIR_ENV, None)
    else:
        os.environ[METRICS_DIR_ENV] = folder


class ConfigError(ValueError):
    """A configuration value is invalid."""


# Settings that are secrets: each may come from a file named by CDS_<KEY>_FILE instead.
SECRET_FILE_KEYS = ("DATABASE_URL", "PATIENT_HASH_KEY", "ADMIN_TOKEN", "AUTH_CACHE")


def secrets_from_files() -> dict[str, str]:
    """The secrets given as files: ``CDS_<KEY>_FILE=/run/secrets/…`` → the file's text, less
    its final line break. Setting both ``CDS_<KEY>`` and ``CDS_<KEY>_FILE`` is an error, and so
    is a file that cannot be read or is empty (the message names the variable and the path,
    never the content)."""
    found: dict[str, str] = {}
    for key in SECRET_FILE_KEYS:
        variable = f"CDS_{key}_FILE"
        path = os.environ.get(variable)
        if not path:
            continue
        if os.environ.get(f"CDS_{key}"):
            raise ConfigError(f"set CDS_{key} or {variable}, not both")
        try:
            with open(path, encoding="utf-8") as secret:
                value = secret.read().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{variable}: cannot read {path} ({type(exc).__name__})") from None
        if not value.strip():
            raise ConfigError(f"{variable}: {path} is empty")
        found[key] = value
    return found


def load(
    config: Config | None = None,
    test_config: Mapping[str, Any] | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    instance_path: str | None = None,
) -> Config:
    """Fill ``config`` (or a fresh ``flask.Config``) in precedence order and validate it."""
    cfg = config if config is not None else Config(instance_path or os.getcwd())
    cfg.from_mapping(DEFAULTS)
    if test_config is None:
        if instance_path:
            cfg.from_pyfile(os.path.join(instance_path, "config.py"), silent=True)
        cfg.from_prefixed_env("CDS")
        cfg.from_mapping(secrets_from_files())
    else:
        cfg.from_mapping(test_config)
    if overrides:
        cfg.from_mapping(overrides)
    check(cfg)
    return cfg


def check(cfg: Config | dict[str, Any]) -> None:
    """Normalise and validate the settings this package reads; raise ``ConfigError``."""
    allow_http = cfg.get("FHIR_ALLOW_HTTP")
    if allow_http is True:
        cfg["FHIR_ALLOW_HTTP"] = "always"
    elif allow_http in (False, None):
        cfg["FHIR_ALLOW_HTTP"] = "never"
    if cfg["FHIR_ALLOW_HTTP"] not in HTTP_POLICIES:
        raise ConfigError(f"FHIR_ALLOW_HTTP must be one of {', '.join(HTTP_POLICIES)}")
    for key in ("FHIR_CONNECT_TIMEOUT", "FHIR_READ_TIMEOUT", "FHIR_DEADLINE"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{key} must be a positive number of seconds")
    for key in (
        "FHIR_MAX_WORKERS",
        "FHIR_MAX_PAGES",
        "FHIR_MAX_BYTES",
        "FHIR_MAX_MEDICATION_READS",
        "MAX_CONTENT_LENGTH",
    ):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer")
    origins = cfg.get("FHIR_ALLOWED_ORIGINS") or []
    if isinstance(origins, str):
        origins = [o.strip() for o in origins.split(",") if o.strip()]
    if not isinstance(origins, list | tuple) or not all(isinstance(o, str) for o in origins):
        raise ConfigError("FHIR_ALLOWED_ORIGINS must be a list of origins")
    cfg["FHIR_ALLOWED_ORIGINS"] = [o.rstrip("/") for o in origins]
    for key in ("FHIR_ALLOW_UNAUTHENTICATED", "DEMO", "SANDBOX_ENABLED", "KNOWLEDGE_PAGES_PUBLIC"):
        if not isinstance(cfg.get(key), bool):
            raise ConfigError(f"{key} must be true or false")
    cors = cfg.get("CORS_ORIGINS")
    if cors is not None and not isinstance(cors, str | list | tuple):
        raise ConfigError("CORS_ORIGINS must be a string or a list of origins")
    site = cfg.get("SITE_DIR")
    if site is not None and not (isinstance(site, str) and site.strip()):
        raise ConfigError("SITE_DIR must be the path of a site folder (or unset)")
    public = cfg.get("PUBLIC_URL")
    if public is not None and not (isinstance(public, str) and public.startswith("http")):
        raise ConfigError("PUBLIC_URL must be an http(s) URL")
    aliases = cfg.get("PUBLIC_URL_ALIASES")
    if not isinstance(aliases, list | tuple) or not all(
        isinstance(a, str) and a.startswith("http") for a in aliases
    ):
        raise ConfigError("PUBLIC_URL_ALIASES must be a list of http(s) URLs")
    from cds_server.render.profiles import PROFILE_NAMES

    if cfg.get("CLIENT_PROFILE") not in PROFILE_NAMES:
        raise ConfigError(f"CLIENT_PROFILE must be one of {', '.join(PROFILE_NAMES)}")
    _check_store(cfg)
    _check_trust(cfg)


def _check_store(cfg: Config | dict[str, Any]) -> None:
    """Settings of the persistence layer (``cds_server.store``)."""
    url = cfg.get("DATABASE_URL")
    if url is not None and not (isinstance(url, str) and "://" in url):
        raise ConfigError("DATABASE_URL must be an SQLAlchemy URL, e.g. postgresql://host/db")
    for flag in ("DATABASE_AUTO_UPGRADE", "CARD_LOG_BACKGROUND"):
        if not isinstance(cfg.get(flag), bool):
            raise ConfigError(f"{flag} must be true or false")
    for key, most in (
        ("DATABASE_TIMEOUT", 60),
        ("DATABASE_CONNECT_TIMEOUT", 60),
        ("DATABASE_REPORT_TIMEOUT", 3600),
    ):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= most:
            raise ConfigError(f"{key} must be a number of seconds above 0, at most {most}")
    linger = cfg.get("CARD_LOG_LINGER_SECONDS")
    if isinstance(linger, bool) or not isinstance(linger, int | float) or not 0 <= linger <= 5:
        raise ConfigError("CARD_LOG_LINGER_SECONDS must be a number of seconds from 0 to 5")
    window = cfg.get("DEDUP_WINDOW_MINUTES")
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ConfigError("DEDUP_WINDOW_MINUTES must be a whole number of minutes (0 disables)")
    for key in ("PATIENT_HASH_KEY", "ADMIN_TOKEN"):
        value = cfg.get(key)
        if value is not None and not (isinstance(value, str) and len(value.strip()) >= 32):
            raise ConfigError(f"{key} must be a string of at least 32 characters (quote it)")


def _check_trust(cfg: Config | dict[str, Any]) -> None:
    """Settings of authentication, the outbound address policy and the request limits."""
    if not isinstance(cfg.get("AUTH_REQUIRED"), bool):
        raise ConfigError("AUTH_REQUIRED must be true or false")
    clients = cfg.get("CLIENTS_FILE")
    if clients is not None and not (isinstance(clients, str) and clients.strip()):
        raise ConfigError("CLIENTS_FILE must be the path of the trusted-clients YAML file")
    leeway = cfg.get("AUTH_LEEWAY")
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not 0 <= leeway <= 300:
        raise ConfigError("AUTH_LEEWAY must be a number of seconds between 0 and 300")
    cache = cfg.get("AUTH_CACHE")
    if not isinstance(cache, str) or not (
        cache == "memory" or cache.split("://", 1)[0] in ("redis", "rediss", "unix")
    ):
        raise ConfigError("AUTH_CACHE must be 'memory' or a redis://host:port/db URL")
    lifetime = cfg.get("AUTH_MAX_TOKEN_LIFETIME")
    if isinstance(lifetime, bool) or not isinstance(lifetime, int | float):
        raise ConfigError("AUTH_MAX_TOKEN_LIFETIME must be a number of seconds (60 to 86400)")
    if not 60 <= lifetime <= 86400:
        raise ConfigError("AUTH_MAX_TOKEN_LIFETIME must be a number of seconds (60 to 86400)")
    timeout = cfg.get("AUTH_CACHE_TIMEOUT")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 30:
        raise ConfigError("AUTH_CACHE_TIMEOUT must be a number of seconds above 0, at most 30")
    for key in ("AUTH_JWKS_TTL", "AUTH_JWKS_MIN_REFRESH"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{key} must be a positive number of seconds")
    body = cfg.get("REQUEST_BODY_TIMEOUT")
    if isinstance(body, bool) or not isinstance(body, int | float) or not 0 < body <= 300:
        raise ConfigError("REQUEST_BODY_TIMEOUT must be a number of seconds above 0, at most 300")
    for key in ("MAX_JSON_DEPTH", "MAX_DRAFT_ORDERS", "MAX_PREFETCH_RESOURCES"):
        value = cfg.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a positive integer")
    networks = cfg.get("FHIR_ALLOWED_NETWORKS") or []
    if isinstance(networks, str):
        networks = [n.strip() for n in networks.split(",") if n.strip()]
    if not isinstance(networks, list | tuple):
        raise ConfigError("FHIR_ALLOWED_NETWORKS must be a list of networks such as 10.0.0.0/8")
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except (TypeError, ValueError):
            raise ConfigError(
                f"FHIR_ALLOWED_NETWORKS: {str(network)[:60]!r} is not a network (e.g. 10.0.0.0/8)"
            ) from None
    cfg["FHIR_ALLOWED_NETWORKS"] = list(networks)
    if isinstance(cfg.get("PUBLIC_URL"), str):
        cfg["PUBLIC_URL"] = cfg["PUBLIC_URL"].rstrip("/")
    cfg["PUBLIC_URL_ALIASES"] = [a.rstrip("/") for a in cfg["PUBLIC_URL_ALIASES"]]
