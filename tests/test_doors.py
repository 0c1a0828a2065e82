"""Each external system has one door: ``requests`` only in fhirdata/client.py, the environment
only in config.py (AST scan of the package)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cds_server"


def _modules() -> list[tuple[str, ast.AST]]:
    return [
        (str(p.relative_to(PACKAGE)), ast.parse(p.read_text(), str(p)))
        for p in sorted(PACKAGE.rglob("*.py"))
    ]


def test_only_the_fhir_client_imports_requests() -> None:
    users = set()
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(
                a.name.split(".")[0] == "requests" for a in node.names
            ):
                users.add(name)
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "requests":
                users.add(name)
    assert users <= {"fhirdata/client.py"}


def test_only_config_reads_the_environment() -> None:
    readers = set()
    for name, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in (
                "environ",
                "getenv",
                "from_prefixed_env",
                "from_envvar",
            ):
                # Flask's ``request.environ`` is the WSGI request, not the process environment.
                wsgi = isinstance(node.value, ast.Name) and node.value.id == "request"
                if not (wsgi and node.attr == "environ"):
                    readers.add(name)
    assert readers <= {"config.py"}
