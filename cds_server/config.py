"""Configuration: defaults, then an optional instance file, then ``CDS_*`` environment variables.

This is the only module that reads the environment. Order of precedence (last wins):

1. ``DEFAULTS`` below;
2. ``instance/config.py`` (Flask instance folder; optional) — skipped when a test config is given;
3. ``CDS_<KEY>`` environment variables via ``Config.from_prefixed_env("CDS")`` (values are
   parsed as JSON when possible: ``CDS_FHIR_READ_TIMEOUT=3``, ``CDS_FHIR_ALLOW_HTTP='"loopback"'``
   or simply ``CDS_FHIR_ALLOW_HTTP=loopback``) — skipped when a test config is given;
4. the ``test_config`` mapping, if any;
5. ``overrides`` (set by the command line, e.g. ``--public-url`` or the demo profile).

``check()`` validates the result so a bad setting stops the service at start-up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Config

MiB = 1024 * 1024

DEFAULTS: dict[str, Any] = {
    # Knowledge folder (cards/*.yaml); None = the folder shipped with the source tree.
    "CARDS_DIR": None,
    # Largest accepted request body, in bytes (Flask enforces it; larger → 413).
    "MAX_CONTENT_LENGTH": 8 * MiB,
    # Base URL clients call (e.g. https://cds.example.org); used for JWT audience checks.
    "PUBLIC_URL": None,
    # CORS: "*" or a list of allowed browser origins; "" or [] disables CORS.
    "CORS_ORIGINS": "*",
    # Outbound FHIR calls (fhirServer fallback).
    "FHIR_CONNECT_TIMEOUT": 1.0,
    "FHIR_READ_TIMEOUT": 2.0,
    # Wall-clock budget, in seconds, for all FHIR calls of one hook call.
    "FHIR_DEADLINE": 4.0,
    "FHIR_MAX_WORKERS": 4,
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
    # Level of the ``cds_server`` loggers when run from the command line.
    "LOG_LEVEL": "INFO",
}

HTTP_POLICIES = ("never", "loopback", "always")


class ConfigError(ValueError):
    """A configuration value is invalid."""


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
    for key in ("FHIR_ALLOW_UNAUTHENTICATED", "DEMO"):
        if not isinstance(cfg.get(key), bool):
            raise ConfigError(f"{key} must be true or false")
    cors = cfg.get("CORS_ORIGINS")
    if cors is not None and not isinstance(cors, str | list | tuple):
        raise ConfigError("CORS_ORIGINS must be a string or a list of origins")
    public = cfg.get("PUBLIC_URL")
    if public is not None and not (isinstance(public, str) and public.startswith("http")):
        raise ConfigError("PUBLIC_URL must be an http(s) URL")
