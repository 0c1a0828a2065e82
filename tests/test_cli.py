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


def test_demo_profile_shapes_the_cards_for_that_client(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: dict[str, Any] = {}

    def fake_run(self: Flask, host: str, port: int, **kw: Any) -> None:
        seen["profile"] = self.config["CLIENT_PROFILE"]

    monkeypatch.setattr(Flask, "run", fake_run)
    assert cli_runner.invoke(cli.main, ["demo"]).exit_code == 0
    assert seen["profile"] == "generic"
    result = cli_runner.invoke(cli.main, ["demo", "--profile", "epic"])
    assert result.exit_code == 0, result.output
    assert seen["profile"] == "epic"
    assert "Cards shaped for the epic client profile" in caplog.text
    result = cli_runner.invoke(cli.main, ["demo", "--profile", "cerner"])
    assert result.exit_code == 2 and "'cerner' is not one of" in result.output


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
    _shared_cache(monkeypatch)
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


CLIENTS = str(ROOT / "fixtures" / "trusted-clients" / "sandbox.yaml")


def _shared_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """``CDS_AUTH_CACHE`` set to a Redis URL, its client replaced by an in-process cache."""
    from cds_server.sharedcache import MemoryCache
    from cds_server.web import auth

    monkeypatch.setenv("CDS_AUTH_CACHE", "redis://cache.example.invalid:6379/0")
    monkeypatch.setattr(auth, "open_cache", lambda spec, **kw: MemoryCache())


def _serve(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[Any, dict[str, Any]]:
    from gunicorn.app.base import BaseApplication

    seen: dict[str, Any] = {}

    def fake_run(self: Any) -> None:
        seen["workers"] = self.cfg.workers

    monkeypatch.setattr(BaseApplication, "run", fake_run)
    base = ["serve", "--public-url", "https://cds.example.org", "--clients", CLIENTS]
    return cli_runner.invoke(cli.main, [*base, *args]), seen


@pytest.mark.parametrize("how", [("--workers", "2"), ("--workers", "5"), "CDS_WORKERS=3"])
def test_serve_refuses_several_workers_without_a_shared_replay_cache(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, how: Any
) -> None:
    """A JWT could be replayed once per worker with per-process replay caches."""
    if isinstance(how, str):
        monkeypatch.setenv(*how.split("="))
        how = ()
    result, seen = _serve(cli_runner, monkeypatch, *how)
    assert result.exit_code != 0
    assert "needs a shared replay cache" in result.output
    assert "CDS_AUTH_CACHE=redis://" in result.output
    assert seen == {}  # gunicorn never started


def test_serve_defaults_to_one_worker_without_and_two_with_a_shared_cache(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    result, seen = _serve(cli_runner, monkeypatch)
    assert result.exit_code == 0, result.output
    assert seen["workers"] == 1
    result, seen = _serve(cli_runner, monkeypatch, "--workers", "1")
    assert (result.exit_code, seen["workers"]) == (0, 1)
    _shared_cache(monkeypatch)
    result, seen = _serve(cli_runner, monkeypatch)
    assert result.exit_code == 0, result.output
    assert seen["workers"] == cli.SERVE_WORKERS == 2


def test_the_docker_image_command_starts(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Dockerfile's CMD with its ENV (no CDS_AUTH_CACHE) must start, not refuse."""
    import json as jsonlib

    cmd_lines = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")
    ]
    assert len(cmd_lines) == 1
    argv = jsonlib.loads(cmd_lines[0][4:])
    assert argv[:2] == ["cds-server", "serve"]
    result, seen = _serve(cli_runner, monkeypatch, *argv[2:])
    assert result.exit_code == 0, result.output
    assert seen["workers"] == 1


# -- where data goes: --data-dir / CDS_DATA_DIR, ./instance for the demo, required by serve ----


def _apps_run_nothing(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Flask's and gunicorn's ``run`` replaced: they only record the app."""
    from gunicorn.app.base import BaseApplication

    seen: dict[str, Any] = {}
    monkeypatch.setattr(Flask, "run", lambda self, **kw: seen.update(app=self))
    monkeypatch.setattr(BaseApplication, "run", lambda self: seen.update(app=self.load()))
    return seen


def _store_files(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} & {"cds-server.sqlite3", "patient-hash.key"}


@pytest.fixture
def no_data_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No CDS_DATABASE_URL (conftest sets one) nor CDS_DATA_DIR; an empty working directory."""
    monkeypatch.delenv("CDS_DATABASE_URL")
    monkeypatch.delenv("CDS_DATA_DIR", raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_demo_keeps_its_data_in_instance_of_the_working_directory(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, no_data_location: Path
) -> None:
    seen = _apps_run_nothing(monkeypatch)
    result = cli_runner.invoke(cli.main, ["demo"])
    assert result.exit_code == 0, result.output
    assert seen["app"].instance_path == str(no_data_location / "instance")
    assert _store_files(no_data_location / "instance") == {"cds-server.sqlite3", "patient-hash.key"}


def test_data_dir_option_and_environment_choose_the_data_folder(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, no_data_location: Path, tmp_path: Path
) -> None:
    seen = _apps_run_nothing(monkeypatch)
    result = cli_runner.invoke(cli.main, ["demo", "--data-dir", str(tmp_path / "given")])
    assert result.exit_code == 0, result.output
    assert seen["app"].instance_path == str(tmp_path / "given")
    assert _store_files(tmp_path / "given") == {"cds-server.sqlite3", "patient-hash.key"}
    monkeypatch.setenv("CDS_DATA_DIR", str(tmp_path / "from-env"))
    result = cli_runner.invoke(cli.main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "from-env" / "cds-server.sqlite3") in result.output
    assert not (no_data_location / "instance").exists()


def test_serve_refuses_to_start_without_a_data_folder_or_database_url(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, no_data_location: Path, tmp_path: Path
) -> None:
    seen = _apps_run_nothing(monkeypatch)
    production = [
        "serve",
        "--workers",
        "1",
        "--public-url",
        "https://cds.example.org",
        "--clients",
        str(ROOT / "fixtures" / "trusted-clients" / "sandbox.yaml"),
    ]
    result = cli_runner.invoke(cli.main, production)
    assert result.exit_code == 2
    assert "--data-dir DIR or CDS_DATA_DIR" in result.output
    assert "CDS_DATABASE_URL" in result.output
    assert "app" not in seen and not (no_data_location / "instance").exists()

    result = cli_runner.invoke(cli.main, [*production, "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert seen.pop("app").instance_path == str(tmp_path / "data")
    assert _store_files(tmp_path / "data") == {"cds-server.sqlite3", "patient-hash.key"}

    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite:///{tmp_path / 'by-url.sqlite3'}")
    result = cli_runner.invoke(cli.main, production)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "by-url.sqlite3").exists()
    assert not (no_data_location / "instance").exists()


def test_serve_honours_gunicorn_cmd_args_except_for_what_it_sets(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from gunicorn.app.base import BaseApplication

    seen: dict[str, Any] = {}

    def fake_run(self: Any) -> None:
        for name in ("timeout", "keepalive", "max_requests", "bind", "workers", "threads"):
            seen[name] = getattr(self.cfg, name)
        seen["access_log_format"] = self.cfg.access_log_format

    monkeypatch.setattr(BaseApplication, "run", fake_run)
    monkeypatch.setenv(
        "GUNICORN_CMD_ARGS",
        "--timeout 75 --keep-alive 9 --max-requests 1000 --bind 0.0.0.0:9999 --workers 4 "
        "--access-logformat '%(r)s'",
    )
    base = ["serve", "--public-url", "https://cds.example.org", "--clients", CLIENTS]
    result = cli_runner.invoke(cli.main, [*base, "--port", "8001", "--threads", "3"])
    assert result.exit_code == 0, result.output
    # What serve does not set comes from GUNICORN_CMD_ARGS (its timeout default included)...
    assert (seen["timeout"], seen["keepalive"], seen["max_requests"]) == (75, 9, 1000)
    # ... what it sets wins: its options, and the access log without the query string.
    assert seen["bind"] == ["127.0.0.1:8001"]
    assert (seen["workers"], seen["threads"]) == (1, 3)
    assert "%(U)s" in seen["access_log_format"] and "%(r)s" not in seen["access_log_format"]
    logged = caplog.text
    for name in ("bind", "workers", "access_log_format"):
        assert f"GUNICORN_CMD_ARGS: {name} is set by cds-server serve" in logged


def test_serve_stops_on_invalid_gunicorn_cmd_args(
    cli_runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gunicorn.app.base import BaseApplication

    monkeypatch.setattr(BaseApplication, "run", lambda self: None)
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--timeout soon")
    base = ["serve", "--public-url", "https://cds.example.org", "--clients", CLIENTS]
    result = cli_runner.invoke(cli.main, base)
    assert result.exit_code != 0
    assert "GUNICORN_CMD_ARGS: invalid gunicorn options" in result.output
