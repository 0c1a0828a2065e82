"""The factory, configuration precedence, public surface and CORS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

import cds_server
from cds_server import config
from cds_server.config import ConfigError
from cds_server.knowledge.loader import KnowledgeError
from cds_server.web.app import create_app


def test_public_surface() -> None:
    assert sorted(cds_server.__all__) == ["__version__", "create_app", "evaluate"]
    assert cds_server.create_app is create_app
    assert callable(cds_server.evaluate)
    assert isinstance(cds_server.__version__, str)
    with pytest.raises(AttributeError):
        cds_server.nothing  # noqa: B018


def test_test_config_and_defaults(app: Any) -> None:
    assert app.testing
    assert app.config["FHIR_ALLOW_HTTP"] == "never"
    assert app.config["FHIR_ALLOW_UNAUTHENTICATED"] is False
    assert app.extensions["cds_server"].fhir.read_timeout == 2.0


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_FHIR_READ_TIMEOUT", "3.5")
    monkeypatch.setenv("CDS_FHIR_ALLOW_HTTP", "loopback")
    monkeypatch.setenv("CDS_FHIR_ALLOWED_ORIGINS", '["https://ehr.example.org/"]')
    cfg = config.load()
    assert cfg["FHIR_READ_TIMEOUT"] == 3.5
    assert cfg["FHIR_ALLOW_HTTP"] == "loopback"
    assert cfg["FHIR_ALLOWED_ORIGINS"] == ["https://ehr.example.org"]
    assert config.load(test_config={})["FHIR_READ_TIMEOUT"] == 2.0  # tests ignore the env
    assert config.load(overrides={"FHIR_READ_TIMEOUT": 1})["FHIR_READ_TIMEOUT"] == 1


def test_instance_file(tmp_path: Path) -> None:
    (tmp_path / "config.py").write_text("FHIR_MAX_PAGES = 3\n")
    assert config.load(instance_path=str(tmp_path))["FHIR_MAX_PAGES"] == 3


@pytest.mark.parametrize(
    "bad",
    [
        {"FHIR_ALLOW_HTTP": "sometimes"},
        {"FHIR_READ_TIMEOUT": 0},
        {"FHIR_MAX_PAGES": "10"},
        {"FHIR_ALLOWED_ORIGINS": 5},
        {"FHIR_ALLOW_UNAUTHENTICATED": "yes"},
        {"PUBLIC_URL": "cds.example.org"},
    ],
)
def test_bad_configuration_fails_fast(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        config.load(test_config=bad)


def test_bad_knowledge_fails_fast(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError):
        create_app({"TESTING": True, "CARDS_DIR": str(tmp_path)})


def test_knowledge_is_shared_read_only(make_app: Any) -> None:
    runtime = make_app().extensions["cds_server"]
    with pytest.raises(AttributeError):
        runtime.kb = None  # frozen


def test_cors_preflight_without_credentials(client: FlaskClient) -> None:
    resp = client.options(
        "/cds-services/infusion-safety",
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert resp.status_code == 200
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "https://sandbox.cds-hooks.org")
    allowed = resp.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    feedback = client.options(
        "/cds-services/infusion-safety/feedback",
        headers={"Origin": "https://x.example", "Access-Control-Request-Method": "POST"},
    )
    assert feedback.status_code == 200


def test_cors_can_be_disabled(make_app: Any) -> None:
    resp = (
        make_app(CORS_ORIGINS="")
        .test_client()
        .get("/cds-services", headers={"Origin": "https://x.example"})
    )
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_evaluate_without_http(kb: Any) -> None:
    from tests.conftest import load_request

    body = load_request("patient-view-lymphoma")
    out = cds_server.evaluate(body, service_id="infusion-risk-summary", kb=kb)
    assert isinstance(out["cards"], list)


def test_settle_heap_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    import gc

    from cds_server.web.app import GC_YOUNG_THRESHOLD, settle_heap

    before = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
