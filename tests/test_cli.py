"""The ``cds-server`` commands are thin wrappers; test them with the real functions patched."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from cds_server import cli
from tests.conftest import REQUESTS, ROOT


@pytest.fixture
def cli_runner(monkeypatch: pytest.MonkeyPatch, cards_dir: Any) -> CliRunner:
    if cards_dir:
        monkeypatch.setenv("CDS_CARDS_DIR", f'"{cards_dir}"')
    return CliRunner()


def test_help_lists_commands(cli_runner: CliRunner) -> None:
    result = cli_runner.invoke(cli.main, ["--help"])
    assert result.exit_code == 0
    for name in ("demo", "serve", "check-cards", "explain"):
        assert name in result.output


def test_demo_runs_flask_on_loopback_with_demo_settings(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(self: Flask, host: str, port: int, **kw: Any) -> None:
        seen.update(host=host, port=port, config=dict(self.config), **kw)

    monkeypatch.setattr(Flask, "run", fake_run)
    result = cli_runner.invoke(cli.main, ["demo"])
    assert result.exit_code == 0, result.output
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8080)
    assert seen["config"]["DEMO"] is True
    assert seen["config"]["FHIR_ALLOW_HTTP"] == "loopback"
    assert seen["debug"] is False
    assert "DEMO MODE: no authentication" in caplog.text
    result = cli_runner.invoke(cli.main, ["demo", "--host", "0.0.0.0", "--port", "9999"])
    assert (seen["host"], seen["port"]) == ("0.0.0.0", 9999)
    assert "anyone who can reach it" in caplog.text


def test_serve_configures_gunicorn(cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from gunicorn.app.base import BaseApplication

    seen: dict[str, Any] = {}

    def fake_run(self: Any) -> None:
        seen["bind"] = self.cfg.bind
        seen["workers"] = self.cfg.workers
        seen["worker_class"] = self.cfg.worker_class_str
        seen["control_socket_disable"] = self.cfg.settings.get("control_socket_disable")
        seen["app"] = self.load()

    monkeypatch.setattr(BaseApplication, "run", fake_run)
    result = cli_runner.invoke(
        cli.main,
        [
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            "8000",
            "--workers",
            "3",
            "--public-url",
            "https://cds.example.org/",
            "--clients",
            str(ROOT / "fixtures" / "trusted-clients" / "sandbox.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert seen["bind"] == ["0.0.0.0:8000"]
    assert seen["workers"] == 3
    assert seen["worker_class"] == "gthread"
    assert seen["app"].config["PUBLIC_URL"] == "https://cds.example.org"
    assert seen["app"].config["DEMO"] is False
    assert seen["app"].config["AUTH_REQUIRED"] is True


def test_check_cards_is_a_thin_wrapper(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("cds_server.knowledge.coverage")
    module.format_coverage = lambda kb: f"coverage of {kb.version}"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cds_server.knowledge.coverage", module)
    result = cli_runner.invoke(cli.main, ["check-cards"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("coverage of ")


def test_explain_is_a_thin_wrapper(cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("cds_server.explain")
    module.explain_request = lambda path, kb: f"explained {Path(path).name}"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "cds_server.explain", module)
    result = cli_runner.invoke(cli.main, ["explain", str(REQUESTS / "order-sign-rituximab.json")])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "explained order-sign-rituximab.json"


def test_bad_knowledge_is_a_clean_error(cli_runner: CliRunner, tmp_path: Path) -> None:
    result = cli_runner.invoke(cli.main, ["check-cards", "--cards", str(tmp_path)])
    assert result.exit_code == 1
    assert "knowledge" in result.output
