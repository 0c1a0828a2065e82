"""Dependencies that hold: every library the package imports is declared; the declared lower
bounds are the ones constraints/minimum.txt pins (the second stage of .ci/run runs the suite
on them); requirements.lock and requirements-build.lock (the image's exact sets) fit
pyproject.toml; and the one protected urllib3 method the FHIR client overrides is still the
one urllib3 opens its connections with."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import socket
import sys
import threading
import tomllib
from pathlib import Path
from typing import Any

import pytest
import urllib3
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DECLARED = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
BY_NAME = {canonicalize_name(r.name): r for r in DECLARED}
# Imported, but released only together with a declared dependency that pins it exactly: a
# range of our own could only disagree with that pin.
PINNED_BY = {"pydantic-core": "pydantic"}


def _pins(path: Path) -> dict[str, tuple[Version, list[str], str]]:
    """``name==version`` lines of a requirements file: version, hashes, environment marker."""
    pins: dict[str, tuple[Version, list[str], str]] = {}
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(
            r"([A-Za-z0-9._-]+)==(\S+)\s*(?:;\s*([^-]*?))?\s*((?:--hash=\S+\s*)*)", line
        )
        assert match, f"{path.name}: not a pinned requirement: {line!r}"
        name, version, marker, hashes = match.groups()
        pins[canonicalize_name(name)] = (
            Version(version),
            re.findall(r"--hash=(\S+)", hashes),
            (marker or "").strip(),
        )
    return pins


def _imported_distributions() -> dict[str, set[str]]:
    """Distribution → modules of cds_server that import it (top-level imports of any depth)."""
    owners = importlib.metadata.packages_distributions()
    found: dict[str, set[str]] = {}
    for path in (ROOT / "cds_server").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "cds_server":
                    continue
                for dist in owners.get(top, [f"<no distribution provides {top}>"]):
                    found.setdefault(canonicalize_name(dist), set()).add(
                        str(path.relative_to(ROOT))
                    )
    return found


def test_every_library_the_package_imports_is_declared() -> None:
    undeclared = {
        dist: sorted(modules)
        for dist, modules in _imported_distributions().items()
        if dist not in BY_NAME and PINNED_BY.get(dist) not in BY_NAME
    }
    assert undeclared == {}, "imported but not in pyproject.toml [project] dependencies"


def test_every_declared_dependency_is_used() -> None:
    imported = set(_imported_distributions())
    # Needed without an import of their own: the PostgreSQL driver SQLAlchemy loads by URL.
    loaded_by_name = {"psycopg"}
    unused = set(BY_NAME) - imported - loaded_by_name
    assert unused == set()


def test_every_declared_dependency_has_a_lower_bound_the_minimum_constraints_pin() -> None:
    pins = _pins(ROOT / "constraints" / "minimum.txt")
    assert set(pins) == set(BY_NAME), "constraints/minimum.txt: one pin per declared dependency"
    for name, requirement in BY_NAME.items():
        lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        assert len(lower) == 1, f"{requirement}: declare its minimum with >="
        pinned, _, _ = pins[name]
        # 2.0.5.post1 stands for 2.0.5 when only the post-release was published
        assert Version(pinned.base_version) == lower[0] and not pinned.is_prerelease, (
            f"constraints/minimum.txt pins {name}=={pinned}, pyproject.toml declares {requirement}"
        )
        assert requirement.specifier.contains(pinned)


def test_the_installed_versions_are_within_the_declared_ranges() -> None:
    """True in the README's environment (newest releases) and in .ci/run's minimum stage."""
    for name, requirement in BY_NAME.items():
        installed = Version(importlib.metadata.version(name))
        assert requirement.specifier.contains(installed), f"{name} {installed}: {requirement}"
        for extra in requirement.extras:
            for needed in _extra_requirements(name, extra):
                have = Version(importlib.metadata.version(needed.name))
                assert needed.specifier.contains(have), f"{name}[{extra}] needs {needed}"


def _extra_requirements(dist: str, extra: str) -> list[Requirement]:
    """What ``dist[extra]`` adds, per the installed release's metadata (CPython, Linux)."""
    out = []
    for text in importlib.metadata.requires(dist) or []:
        requirement = Requirement(text)
        if requirement.marker and requirement.marker.evaluate({"extra": extra}):
            extras_only = Marker(str(requirement.marker)).evaluate({"extra": ""})
            if not extras_only:
                out.append(requirement)
    return out


@pytest.mark.parametrize("lock", ["requirements.lock", "requirements-build.lock"])
def test_the_lock_pins_every_release_with_hashes(lock: str) -> None:
    pins = _pins(ROOT / lock)
    assert pins
    for name, (_, hashes, _) in pins.items():
        assert hashes and all(h.startswith("sha256:") for h in hashes), f"{lock}: {name}"


def test_the_runtime_lock_holds_every_declared_dependency_within_its_range() -> None:
    pins = _pins(ROOT / "requirements.lock")
    for name, requirement in BY_NAME.items():
        assert name in pins, f"requirements.lock lacks {requirement} (run tools/lock)"
        version, _, marker = pins[name]
        assert marker == "", f"requirements.lock: {name} only under {marker}"
        assert requirement.specifier.contains(version), f"requirements.lock: {name}=={version}"
        for extra in requirement.extras:
            for needed in _extra_requirements(name, extra):
                key = canonicalize_name(needed.name)
                assert key in pins, f"requirements.lock lacks {needed} ({name}[{extra}])"


def test_the_build_lock_holds_the_build_backend() -> None:
    pins = _pins(ROOT / "requirements-build.lock")
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"requirements-build.lock lacks {requirement} (run tools/lock)"
        assert requirement.specifier.contains(pins[name][0])


# -- urllib3: the protected method the FHIR client overrides --------------------------------


def test_urllib3_still_opens_its_connections_through_new_conn() -> None:
    """fhirdata/client.py pins each connection to an address it checked by overriding
    ``HTTPConnection._new_conn`` (urllib3 has no public hook for it). If a urllib3 release
    stops calling it, this fails here, naming the release, before the SSRF tests do."""
    from urllib3.connection import HTTPConnection

    opened: list[tuple[str, int]] = []

    class Recording(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            opened.append((self.host, self.port))
            return super()._new_conn()

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        peer, _ = server.accept()
        with peer:
            peer.recv(65536)
            peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        pool = urllib3.HTTPConnectionPool("127.0.0.1", port, timeout=5, retries=False)
        pool.ConnectionCls = Recording
        response = pool.request("GET", "/")
        assert response.status == 200 and response.data == b"ok"
    finally:
        server.close()
        thread.join(5)
    assert opened == [("127.0.0.1", port)], (
        f"urllib3 {urllib3.__version__} no longer opens connections through _new_conn: "
        "fhirdata/client.py's address pinning would be bypassed"
    )
    body: Any = urllib3.HTTPResponse
    assert callable(getattr(body, "read1", None)), "fhirdata/client.py reads bodies with read1"
