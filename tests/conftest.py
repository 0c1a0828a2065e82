"""Shared fixtures: ``kb``, ``app`` / ``make_app``, ``client``, ``runner``, request fixtures.

Knowledge is loaded once per test session (per folder) by wrapping the loader the factory
uses; the factory itself still runs for every app. Outbound HTTP goes through ``responses``
in the tests that need it; anything unmatched raises ``ConnectionError``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from cds_server import config
from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase
from cds_server.web import app as app_module

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures" / "fhir"
REQUESTS = FIXTURES / "requests"
FHIR = "https://ehr.example.org/fhir"
TOKEN = "tok-SECRET-4f1d9a"

_KB_CACHE: dict[str, KnowledgeBase] = {}


def _cached_load(cards_dir: Any = None) -> KnowledgeBase:
    key = str(cards_dir)
    if key not in _KB_CACHE:
        _KB_CACHE[key] = load_knowledge(cards_dir)
    return _KB_CACHE[key]


@pytest.fixture(scope="session")
def cards_dir() -> Any:
    """The knowledge folder (``CDS_CARDS_DIR`` if set, else the bundled one)."""
    return config.load()["CARDS_DIR"]


@pytest.fixture(scope="session")
def kb(cards_dir: Any) -> KnowledgeBase:
    return _cached_load(cards_dir)


@pytest.fixture(autouse=True)
def _fast_knowledge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app_module, "load_knowledge", _cached_load)


@pytest.fixture(autouse=True)
def _no_instance_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """Apps built from the environment (CLI tests) use a throwaway in-memory database, never
    the SQLite file in the repository's instance folder. Test-config apps do so anyway."""
    monkeypatch.setenv("CDS_DATABASE_URL", "sqlite://")


PUBLIC_IP = "93.184.215.14"  # what every host name resolves to in tests (a public address)


def fake_resolve(host: str, port: int) -> list[tuple[Any, tuple[Any, ...]]]:
    """Test DNS: IP literals resolve to themselves, ``localhost`` to loopback, any other name
    to ``PUBLIC_IP``. Tests that need other answers monkeypatch ``resolve_addresses``."""
    import ipaddress

    if host == "localhost" or host.endswith(".localhost"):
        names = ["127.0.0.1"]
    else:
        try:
            names = [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            names = [PUBLIC_IP]
    return [(ipaddress.ip_address(n), (n, port)) for n in names]


@pytest.fixture(autouse=True)
def _no_real_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The outbound FHIR address check never queries real DNS in tests."""
    from cds_server.fhirdata import client as fhir_client

    monkeypatch.setattr(fhir_client, "resolve_addresses", fake_resolve)


@pytest.fixture
def make_app(cards_dir: Any) -> Callable[..., Flask]:
    """An app with test settings. Authentication is off unless a test turns it on
    (``AUTH_REQUIRED=True`` with ``CLIENTS_FILE`` and ``PUBLIC_URL``; see tests/test_auth.py)."""

    def make(**settings: Any) -> Flask:
        return app_module.create_app(
            {"TESTING": True, "CARDS_DIR": cards_dir, "AUTH_REQUIRED": False, **settings}
        )

    return make


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


def rule_of(card: dict[str, Any]) -> str:
    """The rule (``Topic.code``, e.g. ``rate-titration``) of a card, from the wire code it
    was sent with (``source.topic.code``, e.g. ``RateTitration``); KeyError if none has it."""
    kb = _cached_load(config.load()["CARDS_DIR"])
    return kb.policy.topic_sent_as(card["source"]["topic"]["code"]).code


def load_request(name: str) -> dict[str, Any]:
    """A fresh copy of ``fixtures/fhir/requests/<name>.json``."""
    return copy.deepcopy(json.loads((REQUESTS / f"{name}.json").read_text()))


# What an EHR following our templates sends for a patient with no MedicationAdministration.
NO_ADMINISTRATIONS = {"resourceType": "Bundle", "type": "searchset", "total": 0}


def every_key(body: dict[str, Any]) -> dict[str, Any]:
    """A fixture request with the optional ``administrations`` key prefetched too (an empty
    searchset unless it has one): for tests about the other keys, which must fetch nothing else."""
    body["prefetch"].setdefault("administrations", copy.deepcopy(NO_ADMINISTRATIONS))
    return body


def load_fixture(rel: str) -> Any:
    return json.loads((FIXTURES / rel).read_text())


def service_for(body: dict[str, Any]) -> str:
    """The listed service id for the request's hook (one discovery entry, one id)."""
    return {"patient-view": "infusion-risk-summary", "order-select": "infusion-safety-select"}.get(
        str(body.get("hook")), "infusion-safety-sign"
    )


def request_names() -> list[str]:
    return sorted(p.stem for p in REQUESTS.glob("*.json"))


@pytest.fixture
def fhir_auth() -> dict[str, Any]:
    return {
        "access_token": TOKEN,
        "token_type": "Bearer",
        "expires_in": 30,
        "scope": "patient/MedicationRequest.read patient/AllergyIntolerance.read",
        "subject": "infusion-safety-cds",
    }


@pytest.fixture
def mocked_fhir() -> Iterator[Any]:
    import responses

    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps
