"""Alembic migrations: shipped in the package, applied at start-up or by ``db upgrade``,
and the migrated schema is exactly ``store.tables`` (on SQLite and PostgreSQL)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner

from cds_server import cli
from cds_server.store import db
from cds_server.store.engine import make_engine
from cds_server.store.tables import metadata
from tests.store.conftest import HASH_KEY

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"alembic_version", "card_log", "feedback", "snooze"}


def table_names(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_from_empty_to_head_then_down_and_up(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert db.current_revision(engine) is None
        assert db.upgrade(engine) == db.head_revision()
        assert table_names(engine) >= TABLES
        assert db.upgrade(engine) == db.head_revision()  # idempotent
        assert db.downgrade(engine, "base") is None
        assert table_names(engine) & TABLES <= {"alembic_version"}
        assert db.upgrade(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_tables(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        db.upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_app_upgrades_at_start_unless_told_not_to(make_app, db_url: str) -> None:  # type: ignore[no-untyped-def]
    app = make_app(DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY, DATABASE_AUTO_UPGRADE=False)
    engine = db.get_store(app).engine
    assert db.current_revision(engine) is None
    app = make_app(DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY)
    assert db.current_revision(db.get_store(app).engine) == db.head_revision()
    engine.dispose()
    db.get_store(app).close()


def test_cli_db_upgrade_and_current(
    db_url: str, monkeypatch: pytest.MonkeyPatch, cards_dir: object
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", db_url)
    monkeypatch.setenv("CDS_PATIENT_HASH_KEY", HASH_KEY)
    if cards_dir:
        monkeypatch.setenv("CDS_CARDS_DIR", f'"{cards_dir}"')
    runner = CliRunner()
    result = runner.invoke(cli.main, ["db", "current"])
    assert result.exit_code == 0, result.output
    assert "at revision None" in result.output
    result = runner.invoke(cli.main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert f"at revision {db.head_revision()}" in result.output
    assert "test-patient-hash-key" not in result.output


def test_server_database_needs_a_shared_key(make_app, pg_url: str) -> None:  # type: ignore[no-untyped-def]
    from cds_server.config import ConfigError

    with pytest.raises(ConfigError, match="PATIENT_HASH_KEY"):
        make_app(DATABASE_URL=pg_url)


def test_migrations_ship_in_the_package() -> None:
    """Every non-Python file the store and analytics need is listed as package data."""
    package = ROOT / "cds_server"
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["cds_server"]
    needed = [
        p.relative_to(package)
        for folder in ("store/migrations", "analytics/templates")
        for p in (package / folder).rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    ]
    assert needed, "expected the migration template and the report page"
    for path in needed:
        assert any(path.match(pattern) for pattern in patterns), f"{path} is not package data"
    for folder in ("store/migrations", "store/migrations/versions"):
        assert (package / folder / "__init__.py").exists(), f"{folder} must be a package"
    assert db.MIGRATIONS.is_relative_to(package)


def test_cards_logged_under_0001_keep_their_rows_with_no_caller(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        assert db.upgrade(engine, "0001") == "0001"
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO card_log (card_uuid, issued_at, service_id, hook, hook_instance,"
                    " patient_hash, rule, indicator, suggestion_uuids, knowledge_version)"
                    " VALUES ('u1', CURRENT_TIMESTAMP, 's', 'order-sign', 'h', 'p', 'r', 'info',"
                    " '[]', 'k')"
                )
            )
        assert db.upgrade(engine) == db.head_revision()
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT card_uuid, caller_hash FROM card_log"))
            assert rows.all() == [("u1", None)]
        assert db.downgrade(engine, "0001") == "0001"
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT card_uuid FROM card_log")).all() == [("u1",)]
    finally:
        engine.dispose()


def test_cards_logged_before_0005_have_no_offered_reasons_recorded(db_url: str) -> None:
    """0005 adds ``card_log.offered_reasons``: earlier rows get NULL (their snoozes keep their
    rule's reasons), and a downgrade keeps the rows."""
    engine = make_engine(db_url)
    try:
        assert db.upgrade(engine, "0003") == "0003"
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO card_log (card_uuid, issued_at, service_id, hook, hook_instance,"
                    " patient_hash, rule, indicator, suggestion_uuids, knowledge_version)"
                    " VALUES ('u1', CURRENT_TIMESTAMP, 's', 'order-sign', 'h', 'p', 'r', 'info',"
                    " '[]', 'k')"
                )
            )
        assert db.upgrade(engine, "0005") == "0005"
        with engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT card_uuid, offered_reasons FROM card_log"))
            assert rows.all() == [("u1", None)]
        assert db.downgrade(engine, "0003") == "0003"
        assert "offered_reasons" not in {
            c["name"] for c in sa.inspect(engine).get_columns("card_log")
        }
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT card_uuid FROM card_log")).all() == [("u1",)]
    finally:
        engine.dispose()
