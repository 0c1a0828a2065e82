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

from cds_server import app as app_module
from cds_server import config
from cds_server.knowledge.loader import load_knowledge
from cds_server.knowledge.model import KnowledgeBase

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


@pytest.fixture
def make_app(cards_dir: Any) -> Callable[..., Flask]:
    def make(**settings: Any) -> Flask:
        return app_module.create_app({"TESTING": True, "CARDS_DIR": cards_dir, **settings})

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


def load_request(name: str) -> dict[str, Any]:
    """A fresh copy of ``fixtures/fhir/requests/<name>.json``."""
    return copy.deepcopy(json.loads((REQUESTS / f"{name}.json").read_text()))


def load_fixture(rel: str) -> Any:
    return json.loads((FIXTURES / rel).read_text())


def service_for(body: dict[str, Any]) -> str:
    return "infusion-risk-summary" if body.get("hook") == "patient-view" else "infusion-safety"


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
