"""The store's life cycle in the app (flaskr ``db.py`` style) and schema migrations.

``init_app(app)`` resolves the database URL and the patient-hash key from the config, builds
the ``Store`` (``app.extensions["cds_store"]``) and, unless ``DATABASE_AUTO_UPGRADE`` is
false, upgrades the schema to the newest Alembic revision before the app serves anything.
Migrations ship inside the package (``store/migrations``), so a plain ``pip install`` has
them; ``cds-server db upgrade`` runs the same upgrade explicitly. Concurrent upgrades are
safe: PostgreSQL serialises them with an advisory lock, SQLite with ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask import Flask, current_app
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from cds_server.config import ConfigError
from cds_server.store import cardlog, deadline, identity
from cds_server.store.engine import CONNECT_TIMEOUT, POOL_TIMEOUT, is_memory, make_engine, writing
from cds_server.store.store import Store
from cds_server.store.writer import CardLogWriter

log = logging.getLogger(__name__)

EXTENSION = "cds_store"
DEFAULT_FILE = "cds-server.sqlite3"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_PG_LOCK = 0x43445331  # "CDS1": advisory lock id held while migrating


def database_url(config: Any, instance_path: str) -> str:
    """``DATABASE_URL``, else the SQLite file in the instance folder (in memory when testing)."""
    url = config.get("DATABASE_URL")
    if url:
        return str(url)
    if config.get("TESTING"):
        return "sqlite://"
    Path(instance_path).mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(instance_path, DEFAULT_FILE)}"


def hash_key(config: Any, url: str) -> bytes:
    """``PATIENT_HASH_KEY``; else generated next to the SQLite file (by default the instance
    folder), or ephemeral for an in-memory database."""
    configured = config.get("PATIENT_HASH_KEY")
    if configured:
        return str(configured).strip().encode("utf-8")
    if is_memory(url):
        return identity.ephemeral_key()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return identity.load_or_create_key(Path(str(parsed.database)).resolve().parent)
    raise ConfigError(
        "PATIENT_HASH_KEY must be set when DATABASE_URL is not SQLite: every instance "
        "sharing the database needs the same key"
    )


def build_store(config: Any, instance_path: str, *, with_key: bool = True) -> Store:
    """The store for ``config``; ``with_key=False`` for schema work only (no key generated).

    Card-log rows go through a background ``CardLogWriter`` unless ``CARD_LOG_BACKGROUND``
    is false or the database is in memory (one shared connection: no second thread on it);
    it lets rows gather for ``CARD_LOG_LINGER_SECONDS`` so that calls share a commit.
    """
    url = database_url(config, instance_path)
    timeout = float(config.get("DATABASE_TIMEOUT", POOL_TIMEOUT))
    engine = make_engine(
        url,
        pool_timeout=timeout,
        connect_timeout=float(config.get("DATABASE_CONNECT_TIMEOUT", CONNECT_TIMEOUT)),
    )
    background = config.get("CARD_LOG_BACKGROUND", True) and not is_memory(url)
    return Store(
        engine=engine,
        key=hash_key(config, url) if with_key else b"",
        dedup_window=timedelta(minutes=int(config.get("DEDUP_WINDOW_MINUTES", 0))),
        writer=(
            CardLogWriter(
                partial(_write_within, engine, timeout),
                linger=float(config.get("CARD_LOG_LINGER_SECONDS", 0.0)),
            )
            if background
            else None
        ),
        timeout=timeout,
        report_timeout=float(config.get("DATABASE_REPORT_TIMEOUT", 30.0)),
    )


def _write_within(engine: Engine, timeout: float, batch: Any) -> int:
    """One card-log batch, bounded like every database call of a hook call."""
    with deadline.within(timeout):
        return cardlog.write_rows(engine, batch)


def init_app(app: Flask) -> Store:
    """Create the app's store and (by default) bring its schema up to date."""
    store = build_store(app.config, app.instance_path)
    app.extensions[EXTENSION] = store
    if app.config.get("DATABASE_AUTO_UPGRADE", True):
        upgrade(store.engine)
    if not is_memory(str(store.engine.url)):
        # No pooled connection may cross a fork (gunicorn forks workers after create_app).
        store.engine.dispose()
    return store


def get_store(app: Flask | None = None) -> Store:
    """The store of ``app`` (default: the current app)."""
    return (app or current_app).extensions[EXTENSION]  # type: ignore[no-any-return]


# -- migrations -----------------------------------------------------------------------------


def _alembic_config() -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` in one transaction; return the new revision."""
    cfg = _alembic_config()
    with writing(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK})
        before = MigrationContext.configure(connection).get_current_revision()
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)
        after = MigrationContext.configure(connection).get_current_revision()
    if before != after:
        log.info("database schema upgraded from %s to %s", before or "empty", after)
    return after


def downgrade(engine: Engine, revision: str) -> str | None:
    """Migrate down to ``revision`` (``base`` empties the schema). For development."""
    cfg = _alembic_config()
    with writing(engine) as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _PG_LOCK})
        cfg.attributes["connection"] = connection
        command.downgrade(cfg, revision)
        return MigrationContext.configure(connection).get_current_revision()


def describe(engine: Engine) -> str:
    """Where the database is, without credentials (for the CLI)."""
    return engine.url.render_as_string(hide_password=True)
