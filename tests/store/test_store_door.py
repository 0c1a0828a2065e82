"""``store/`` is the only door to SQL: no other package module imports SQLAlchemy, Alembic or
psycopg, and the pipeline reaches the store only through the ``GuidanceHistory`` protocol."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cds_server"
SQL = {"sqlalchemy", "alembic", "psycopg", "sqlite3"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_store_touches_sql() -> None:
    users = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if any(name.split(".")[0] in SQL for name in _imports(p))
    }
    assert users and all(u.startswith("store/") for u in users), users


def test_pipeline_and_rules_do_not_import_the_store() -> None:
    for rel in ("pipeline.py", "suppression.py", "model.py"):
        assert not any(n.startswith("cds_server.store") for n in _imports(PACKAGE / rel)), rel
    for path in (PACKAGE / "reasoning").rglob("*.py"):
        assert not any(n.startswith("cds_server.store") for n in _imports(path)), path
