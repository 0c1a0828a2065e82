"""The built package is the product: the sdist is the whole project, and the wheel built from it,
installed into a fresh virtualenv outside the tree, runs ``check-cards``, ``explain`` and
``demo`` (discovery, the sandbox's patients, a hook call) from another working directory, and
keeps its data there, never inside the virtualenv.

The fresh virtualenv gets the wheel alone; its dependencies are read from this test run's own
site-packages through a ``.pth`` line (which loads no ``.pth`` of that folder, so the editable
install of the checkout stays out of it): no registry is needed, and the test checks that
``cds_server`` is imported from the wheel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cds_server.knowledge.loader import load_knowledge
from cds_server.sandbox.fixtures import load_fixtures
from tests.conftest import ROOT

pytestmark = pytest.mark.package

BUILD_TIMEOUT = 180
COMMAND_TIMEOUT = 60


def _run(args: list[Any], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", COMMAND_TIMEOUT),
        check=False,
        **kwargs,
    )
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def _clean_env() -> dict[str, str]:
    """The environment without any CDS_* setting (conftest sets some) or PYTHONPATH."""
    return {k: v for k, v in os.environ.items() if not k.startswith("CDS_") and k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT],
        timeout=BUILD_TIMEOUT,
        env=_clean_env(),
    )
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


@pytest.fixture(scope="module")
def installed(dist: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh virtualenv outside the tree holding the wheel; an empty working directory."""
    base = tmp_path_factory.mktemp("installed")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
        ).stdout.strip()
    )
    ours = sysconfig.get_paths()
    (purelib / "test-run-dependencies.pth").write_text(
        "\n".join(dict.fromkeys([ours["purelib"], ours["platlib"]])) + "\n"
    )
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index"]
    _run([*pip, "--no-cache-dir", "--quiet", dist["wheel"]])
    cwd = base / "elsewhere"
    cwd.mkdir()
    return {"venv": venv, "python": python, "cds": venv / "bin" / "cds-server", "cwd": cwd}


def _in_venv(installed: dict[str, Path], *args: Any) -> str:
    return _run([*args], cwd=installed["cwd"], env=_clean_env()).stdout


def test_the_sdist_holds_every_file_of_the_project(dist: dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as archive:
        names = {n.split("/", 1)[1] for n in archive.getnames() if "/" in n}
    if (ROOT / ".git").exists():
        listed = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
        expected = {line for line in listed.splitlines() if (ROOT / line).is_file()}
    else:  # built from an unpacked sdist: the same files again
        expected = {
            str(p.relative_to(ROOT))
            for top in ("cards", "fixtures", "tests", "bench", "tools", "docs", "cds_server")
            for p in (ROOT / top).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
    shipped = {"tests/test_package.py", "cards/policy.yaml", "setup.py", "MANIFEST.in", "LICENSE"}
    assert shipped | {"SECURITY.md", "CHANGELOG.md"} <= names
    assert not expected - names, f"missing from the sdist: {sorted(expected - names)[:20]}"
    assert not {n for n in names if n.endswith((".sqlite3", "patient-hash.key"))}


def test_the_wheel_carries_knowledge_fixtures_examples_and_migrations(
    dist: dict[str, Path],
) -> None:
    with zipfile.ZipFile(dist["wheel"]) as archive:
        names = set(archive.namelist())
    bundled = "cds_server/bundled/"
    for folder in ("cards", "fixtures/fhir", "fixtures/trusted-clients", "fixtures/site-example"):
        source = {
            str(p.relative_to(ROOT))
            for p in (ROOT / folder).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        assert source, folder
        missing = {bundled + s for s in source} - names
        assert not missing, f"not in the wheel: {sorted(missing)[:10]}"
    migrations = {
        str(p.relative_to(ROOT))
        for p in (ROOT / "cds_server/store/migrations").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert migrations and migrations <= names
    assert "cds_server/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)


def test_the_installed_wheel_runs_outside_the_tree(installed: dict[str, Path]) -> None:
    where = _in_venv(
        installed,
        installed["python"],
        "-c",
        "import cds_server, cds_server.shipped as s\n"
        "print(cds_server.__file__)\n"
        "print(s.shipped_path('cards'))\n"
        "print(s.shipped_path('fixtures/fhir'))\n"
        "print(s.shipped_path('fixtures/site-example'))",
    ).splitlines()
    venv = installed["venv"].resolve()
    for line in where:
        assert Path(line).resolve().is_relative_to(venv), f"{line} is not from the wheel"
    fixtures = Path(where[2])

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    printed = _in_venv(installed, installed["cds"], "--version").strip()
    assert printed == f"cds-server, version {version}"
    coverage = _in_venv(installed, installed["cds"], "check-cards")
    kb = load_knowledge()  # the checkout's cards/: the wheel must hold the same knowledge
    for drug in kb.drugs:
        assert drug in coverage
    explained = _in_venv(
        installed, installed["cds"], "explain", fixtures / "requests" / "order-sign-rituximab.json"
    )
    assert f"knowledge {kb.version}" in explained
    assert "rate-titration / rituximab: FIRED" in explained
    site = _in_venv(installed, installed["cds"], "check-cards", "--site", where[3])
    assert "anti-cd20-h1-cetirizine (premedication, class anti-cd20" in site
    assert "overrides drugs/rituximab.yaml: premedication 'every-infusion'" in site
    assert not (installed["cwd"] / "instance").exists()  # these keep no data


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def demo(installed: dict[str, Path]) -> Iterator[str]:
    """``cds-server demo`` of the installed wheel on a free port; stopped afterwards."""
    port = _free_port()
    log = installed["cwd"].parent / "demo.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [installed["cds"], "demo", "--port", str(port)],
            cwd=installed["cwd"],
            env=_clean_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            assert server.poll() is None, f"demo exited:\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"{base}/cds-services", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"demo did not answer:\n{log.read_text()}"
                time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return json.load(response)


def test_the_installed_demo_serves_discovery_the_sandbox_patients_and_cards(
    installed: dict[str, Path], demo: str
) -> None:
    services = {s["id"] for s in _get(f"{demo}/cds-services")["services"]}
    assert services == {"infusion-safety-select", "infusion-safety-sign", "infusion-risk-summary"}

    listed = {f["key"] for f in _get(f"{demo}/sandbox/api/fixtures")["fixtures"]}
    expected = set(load_fixtures(ROOT / "fixtures" / "fhir"))
    assert any(k.startswith("patients/") for k in expected)
    assert any(k.startswith("scenarios/") for k in expected)
    assert listed == expected

    body = (ROOT / "fixtures/fhir/requests/order-sign-rituximab.json").read_bytes()
    call = urllib.request.Request(
        f"{demo}/cds-services/infusion-safety-sign",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(call, timeout=10) as response:
        cards = json.load(response)["cards"]
    assert any("Rituximab" in c["summary"] and c["indicator"] == "warning" for c in cards)
    # The card links its knowledge page, rendered from the templates in the wheel.
    url = next(c["source"]["url"] for c in cards if c["summary"].startswith("Rituximab"))
    assert url.startswith(f"{demo}/knowledge/drugs/rituximab.html#")
    with urllib.request.urlopen(url, timeout=10) as page:
        assert page.status == 200
        assert b"<h1>Rituximab</h1>" in page.read()

    data = installed["cwd"] / "instance"
    assert (data / "cds-server.sqlite3").is_file()
    assert (data / "patient-hash.key").is_file()
    inside = [p for p in installed["venv"].rglob("*") if p.name.endswith((".sqlite3", ".key"))]
    assert not inside, f"data written inside the virtualenv: {inside}"


def test_build_leaves_no_copy_in_the_source_package(dist: dict[str, Path]) -> None:
    """The checkout's cards/ stays the only source: the build never writes into cds_server/."""
    assert not (ROOT / "cds_server" / "bundled").exists()


def test_the_docker_build_context_builds_the_same_wheel(tmp_path: Path) -> None:
    """The files the Dockerfile's builder stage copies (and .dockerignore lets through) are
    enough to build a wheel that carries the licence, the knowledge and the fixtures."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    build_stage = dockerfile.split(" AS builder", 1)[1].split("\nFROM ", 1)[0]
    sources = [
        source
        for line in re.findall(r"^COPY (.+)$", build_stage, re.MULTILINE)
        for source in line.split()[:-1]
    ]
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    context = tmp_path / "context"
    context.mkdir()
    for source in sources:
        assert source not in ignored, f"{source} is copied but .dockerignore drops it"
        if (ROOT / source).is_dir():
            shutil.copytree(
                ROOT / source, context / source, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy(ROOT / source, context / source)
    out = tmp_path / "wheel"
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    _run(
        [*pip, "-w", out, context],
        timeout=BUILD_TIMEOUT,
        env=_clean_env(),
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    for folder in ("cards", "fixtures/fhir", "fixtures/trusted-clients", "fixtures/site-example"):
        files = [p for p in (ROOT / folder).rglob("*") if p.is_file()]
        assert files
        for path in files:
            assert f"cds_server/bundled/{path.relative_to(ROOT)}" in names
