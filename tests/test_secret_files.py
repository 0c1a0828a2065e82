"""Secrets from files: ``CDS_<KEY>_FILE`` names a file holding the value (Docker and Kubernetes
mount their secrets as files; deploy/compose.yaml and deploy/kubernetes/ use it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cds_server import config

HASH_KEY = "a-patient-hash-key-of-at-least-32-characters"


@pytest.fixture(autouse=True)
def no_cds_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in config.SECRET_FILE_KEYS:
        monkeypatch.delenv(f"CDS_{key}", raising=False)
        monkeypatch.delenv(f"CDS_{key}_FILE", raising=False)


def _secret(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_each_secret_is_read_from_its_file_without_the_final_line_break(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "postgresql+psycopg://cds:s3cret@db.internal:5432/cds"
    files = {
        "DATABASE_URL": _secret(tmp_path, "database-url", url + "\n"),
        "PATIENT_HASH_KEY": _secret(tmp_path, "hash-key", HASH_KEY + "\r\n"),
        "ADMIN_TOKEN": _secret(tmp_path, "admin-token", "t" * 40),
        "AUTH_CACHE": _secret(tmp_path, "auth-cache", "redis://:pw@redis:6379/0\n"),
    }
    for key, path in files.items():
        monkeypatch.setenv(f"CDS_{key}_FILE", str(path))
    cfg = config.load(instance_path=str(tmp_path))
    assert cfg["DATABASE_URL"] == url
    assert cfg["PATIENT_HASH_KEY"] == HASH_KEY
    assert cfg["ADMIN_TOKEN"] == "t" * 40
    assert cfg["AUTH_CACHE"] == "redis://:pw@redis:6379/0"


def test_a_secret_given_both_ways_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDS_ADMIN_TOKEN", "x" * 40)
    monkeypatch.setenv("CDS_ADMIN_TOKEN_FILE", str(_secret(tmp_path, "t", "y" * 40)))
    with pytest.raises(config.ConfigError, match="CDS_ADMIN_TOKEN or CDS_ADMIN_TOKEN_FILE"):
        config.load(instance_path=str(tmp_path))


@pytest.mark.parametrize("content", [None, "", "\n"])
def test_a_missing_or_empty_secret_file_stops_start_up_naming_it_not_its_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None
) -> None:
    path = tmp_path / "hash-key"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    monkeypatch.setenv("CDS_PATIENT_HASH_KEY_FILE", str(path))
    with pytest.raises(config.ConfigError) as caught:
        config.load(instance_path=str(tmp_path))
    message = str(caught.value)
    assert "CDS_PATIENT_HASH_KEY_FILE" in message and str(path) in message


def test_serve_finds_its_database_in_a_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` needs a data folder unless the database is named — a file names it too."""
    from click.testing import CliRunner

    from cds_server.cli import main

    monkeypatch.delenv("CDS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "--port", "1"])
    assert refused.exit_code != 0 and "where to keep its data" in refused.output
    monkeypatch.setenv(
        "CDS_DATABASE_URL_FILE", str(_secret(tmp_path, "db", "sqlite:///:memory:\n"))
    )
    started = runner.invoke(main, ["serve", "--port", "1"])
    # past the data-location check: it now stops at the next missing setting instead
    assert started.exit_code != 0 and "Authentication is required" in started.output
    assert "where to keep its data" not in started.output
