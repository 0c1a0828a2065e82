"""House rules of architecture.md (AST scan): one-way imports, no clinical numbers in rules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cds_server"


def _tree(rel: str) -> ast.AST:
    return ast.parse((PACKAGE / rel).read_text(), rel)


def _files(*parts: str) -> list[str]:
    out = []
    for part in parts:
        path = PACKAGE / part
        if path.is_dir():
            out.extend(str(p.relative_to(PACKAGE)) for p in sorted(path.rglob("*.py")))
        else:
            out.append(part)
    return out


def _imports(rel: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(_tree(rel)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


PURE = _files("reasoning", "recognition.py", "knowledge", "model.py")
FORBIDDEN_IN_PURE = ("flask", "requests", "fhir", "sqlalchemy", "werkzeug")


@pytest.mark.parametrize("rel", PURE)
def test_rules_knowledge_and_model_use_no_web_http_fhir_or_sql_library(rel):
    bad = {m for m in _imports(rel) if m.split(".")[0] in FORBIDDEN_IN_PURE}
    assert not bad, f"{rel} imports {sorted(bad)}"


STAGES = {
    "fhirdata": _files("fhirdata"),
    "recognition": ["recognition.py"],
    "reasoning": _files("reasoning"),
    "render": _files("render"),
}


@pytest.mark.parametrize(("stage", "rel"), [(s, f) for s, files in STAGES.items() for f in files])
def test_stages_do_not_import_each_other(stage, rel):
    others = {f"cds_server.{s}" for s in STAGES if s != stage}
    bad = {m for m in _imports(rel) if any(m == o or m.startswith(o + ".") for o in others)}
    assert not bad, f"{rel} ({stage}) imports another stage: {sorted(bad)}"


def test_model_imports_nothing_from_the_package():
    assert not {m for m in _imports("model.py") if m.startswith("cds_server")}


def test_only_parse_and_suggestions_use_fhir_resources():
    users = {
        rel for rel in _files(".") if any(m.startswith("fhir.resources") for m in _imports(rel))
    }
    assert users <= {"fhirdata/parse.py", "render/suggestions.py"}


@pytest.mark.parametrize("rel", _files("reasoning"))
def test_no_clinical_numbers_in_rules(rel):
    """Doses, rates, durations and thresholds live in cards/, never in rule code."""
    numbers = [
        (node.lineno, node.value)
        for node in ast.walk(_tree(rel))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and not isinstance(node.value, bool)
        and node.value not in (0, 1)
    ]
    assert not numbers, f"{rel} has numeric literals {numbers}"


BELOW_THE_WEB = (
    "cdshooks",
    "pipeline.py",
    "fhirdata",
    "recognition.py",
    "reasoning",
    "render",
    "knowledge",
    "knowledge_pages",
    "store",
    "model.py",
    "suppression.py",
)


@pytest.mark.parametrize("rel", _files(*BELOW_THE_WEB))
def test_the_layers_below_the_web_never_import_it(rel):
    """Data flows one way: web → pipeline → fhirdata → recognition → reasoning → render; the
    wire format and service declarations (cdshooks) sit below the pipeline, not in web/."""
    bad = {m for m in _imports(rel) if m == "cds_server.web" or m.startswith("cds_server.web.")}
    assert not bad, f"{rel} imports the web layer: {sorted(bad)}"
