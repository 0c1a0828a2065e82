"""Zero-setup defaults: the SQLite file and the generated hash key live in the instance
folder; a server database needs a configured key; hashes are keyed and domain-separated."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cds_server import config
from cds_server.config import ConfigError
from cds_server.store import db, identity


def test_default_database_is_a_file_in_the_instance_folder(tmp_path: Path) -> None:
    folder = tmp_path / "instance"
    url = db.database_url({}, str(folder))
    assert url == f"sqlite:///{folder / 'cds-server.sqlite3'}"
    assert folder.is_dir()
    assert db.database_url({"TESTING": True}, str(folder)) == "sqlite://"
    assert db.database_url({"DATABASE_URL": "postgresql://h/d"}, str(folder)) == "postgresql://h/d"


def test_key_is_generated_once_next_to_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'x.sqlite3'}"
    key = db.hash_key({}, url)
    path = tmp_path / "data" / identity.KEY_FILE  # next to the database file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) == 64
    assert db.hash_key({}, url) == key
    assert db.hash_key({"PATIENT_HASH_KEY": "k" * 40}, url) == b"k" * 40


def test_memory_database_gets_an_ephemeral_key(tmp_path: Path) -> None:
    assert db.hash_key({}, "sqlite://") != db.hash_key({}, "sqlite://")
    assert not (tmp_path / identity.KEY_FILE).exists()


def test_server_database_requires_a_configured_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="PATIENT_HASH_KEY"):
        db.hash_key({}, "postgresql://127.0.0.1/test")


def test_hashes_are_keyed_and_separated() -> None:
    a = identity.keyed_hash(b"k1", "patient", "123")
    assert a != identity.keyed_hash(b"k2", "patient", "123")
    assert a != identity.keyed_hash(b"k1", "encounter", "123")
    assert a != identity.keyed_hash(b"k1", "patient", "123", tenant="ehr-2")
    assert "123" not in a and len(a) == 64


@pytest.mark.parametrize(
    "bad",
    [
        {"DATABASE_URL": "cds.sqlite3"},
        {"DATABASE_AUTO_UPGRADE": "yes"},
        {"DEDUP_WINDOW_MINUTES": -1},
        {"DEDUP_WINDOW_MINUTES": True},
        {"PATIENT_HASH_KEY": "short"},
        {"PATIENT_HASH_KEY": 12345678901234567890123456789012345},
        {"ADMIN_TOKEN": "short"},
    ],
)
def test_bad_store_settings_stop_the_start(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        config.load(test_config=bad)


def test_database_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", "postgresql://cds@db.example.org/cds")
    monkeypatch.setenv("CDS_DEDUP_WINDOW_MINUTES", "30")
    cfg = config.load()
    assert cfg["DATABASE_URL"] == "postgresql://cds@db.example.org/cds"
    assert cfg["DEDUP_WINDOW_MINUTES"] == 30
