"""The image and deployment files, checked offline (no Docker engine, no cluster): the
Dockerfile with hadolint and against the repository, deploy/compose.yaml against the Compose
specification's schema (check-jsonschema's copy, applied with jsonschema), deploy/kubernetes/
against the Kubernetes API schemas (kubernetes-validate), and all of them against each other
and the settings the service reads. deploy/make-secrets runs for real. The topology itself
runs in tests/test_topology.py."""

from __future__ import annotations

import fnmatch
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cds_server import config
from cds_server.web import trusted_clients
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
BIN = Path(sys.executable).parent
# The oldest Kubernetes release the manifests are checked against, and the newest known.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
# CDS_* variables read outside config.DEFAULTS (config.py and cli.py).
OTHER_SETTINGS = {"CDS_DATA_DIR", "CDS_WORKERS", "CDS_LOG_FORMAT"}


def _tool(name: str) -> str:
    """A command-line tool installed with the test extras (pyproject.toml)."""
    path = BIN / name
    assert path.exists(), f"{name} is missing: pip install -e '.[test]'"
    return str(path)


def _known_setting(variable: str) -> bool:
    if variable in OTHER_SETTINGS:
        return True
    key = variable.removeprefix("CDS_")
    if key.endswith("_FILE") and key.removesuffix("_FILE") in config.SECRET_FILE_KEYS:
        return True
    return key in config.DEFAULTS


# -- Dockerfile ----------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for word, rest in _instructions():
        if word == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else str(len(stages))
            current = stages.setdefault(name, [])
        current.append((word, rest))
    return stages


def _dockerignored(path: str) -> bool:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if p.strip() and not p.startswith("#")
    ]
    parts = Path(path).parts
    for pattern in patterns:
        bare = pattern.removeprefix("**/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(parts[depth - 1], bare):
                return True
    return False


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_built_in_two_stages_from_the_locks() -> None:
    stages = _stages()
    assert list(stages) == ["builder", "runtime"]
    builder = [rest for word, rest in stages["builder"] if word == "RUN"]
    runtime = [rest for word, rest in stages["runtime"] if word == "RUN"]
    assert "pip install --require-hashes -r requirements-build.lock" in builder
    assert any(r.startswith("pip wheel --no-deps --no-build-isolation") for r in builder)
    assert any("pip install --require-hashes -r /tmp/requirements.lock" in r for r in runtime)
    [wheel] = [r for r in runtime if "/tmp/wheels/*.whl" in r]
    assert "pip install --no-deps /tmp/wheels/*.whl" in wheel and "pip check" in wheel
    # the dependency layer comes before the package's own files: a code change reuses it
    copies = [rest for word, rest in stages["runtime"] if word == "COPY"]
    assert copies[0] == "requirements.lock /tmp/requirements.lock"
    assert copies[1].startswith("--from=builder ")


def test_every_file_the_build_copies_exists_and_reaches_the_build_context() -> None:
    for word, rest in _instructions():
        if word != "COPY" or rest.startswith("--from="):
            continue
        *sources, _ = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not _dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    # and nothing secret does
    for secret in ("deploy/secrets/database-url", ".venv/bin/python", "instance/x.sqlite3"):
        assert _dockerignored(secret)


def test_the_image_runs_serve_as_a_numeric_non_root_user_checked_on_healthz() -> None:
    runtime = _stages()["runtime"]
    [user] = [rest for word, rest in runtime if word == "USER"]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert f"--uid {uid}" in " ".join(rest for word, rest in runtime if word == "RUN")
    [health] = [rest for word, rest in runtime if word == "HEALTHCHECK"]
    assert "http://127.0.0.1:8080/healthz" in health and "/cds-services" not in health
    [cmd] = [rest for word, rest in runtime if word == "CMD"]
    assert json.loads(cmd) == ["cds-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
    assert ("EXPOSE", "8080") in runtime
    assert ("ENV", "CDS_DATA_DIR=/var/lib/cds-server") in runtime
    assert ("VOLUME", "/var/lib/cds-server") in runtime


# -- deploy/compose.yaml ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    return data


def _compose_schema() -> dict[str, Any]:
    """The Compose specification's JSON schema, as check-jsonschema ships it (its
    ``--builtin-schema vendor.compose-spec``), found through its installed files and applied
    with jsonschema: importing check-jsonschema needs a newer click than the minimum this
    package declares."""
    [path] = [
        f
        for f in importlib.metadata.files("check-jsonschema") or []
        if f.name == "compose-spec.json" and "vendor" in f.parts
    ]
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _compose_problems(document: Any) -> list[str]:
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(
        schema, format_checker=jsonschema.FormatChecker()
    )
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def test_the_compose_file_follows_the_compose_specification(compose: dict[str, Any]) -> None:
    assert _compose_problems(compose) == []
    # the schema is strict: a misspelt key is an error
    broken = json.loads(json.dumps(compose))
    broken["services"]["cds-1"]["restart_policy"] = "always"
    assert any("restart_policy" in p for p in _compose_problems(broken))


def _instances(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("image", "").startswith("${CDS_IMAGE") and "command" not in service
    }


def test_compose_runs_two_instances_after_a_one_shot_migration(compose: dict[str, Any]) -> None:
    services = compose["services"]
    instances = _instances(compose)
    assert len(instances) >= 2
    migrate = services["migrate"]
    assert migrate["command"] == ["cds-server", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name, service in instances.items():
        needs = {dep: v["condition"] for dep, v in service["depends_on"].items()}
        assert needs == {
            "migrate": "service_completed_successfully",
            "postgres": "service_healthy",
            "redis": "service_healthy",
        }, name
        env = service["environment"]
        assert env["CDS_DATABASE_AUTO_UPGRADE"] == "false"  # only the migration upgrades
        assert env == migrate["environment"] and service["secrets"] == migrate["secrets"]
        assert "healthcheck" not in service  # the image's: GET /healthz
    for service in ("postgres", "redis"):
        assert "healthcheck" in services[service]
        assert services[service]["networks"] == ["backend"]
    assert compose["networks"]["backend"]["internal"] is True


def test_compose_settings_are_ones_the_service_reads_and_secrets_are_files(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    declared = compose["secrets"]
    for name, service in _instances(compose).items():
        env = service["environment"]
        assert all(_known_setting(v) for v in env), sorted(v for v in env if not _known_setting(v))
        for key in config.SECRET_FILE_KEYS:
            assert f"CDS_{key}" not in env, f"{name}: CDS_{key} as a value, not a file"
            path = env[f"CDS_{key}_FILE"]
            secret = path.removeprefix("/run/secrets/")
            assert secret in service["secrets"] and secret in declared, path
        assert env["CDS_CLIENTS_FILE"] == service["configs"][0]["target"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"].startswith("/run/")
    made = (DEPLOY / "make-secrets").read_text(encoding="utf-8")
    for secret in declared.values():
        assert secret["file"].startswith("./secrets/")
        assert Path(secret["file"]).name in made, f"make-secrets does not write {secret['file']}"


def test_the_compose_proxy_is_nginx_with_the_shipped_template_and_every_instance(
    compose: dict[str, Any],
) -> None:
    proxy = compose["services"]["proxy"]
    [mount] = proxy["volumes"]
    source, target, _ = mount.split(":")
    assert (DEPLOY / source).resolve() == DEPLOY / "nginx" / "cds.conf.template"
    assert target == "/etc/nginx/templates/default.conf.template"  # the image's envsubst step
    template = (DEPLOY / "nginx" / "cds.conf.template").read_text(encoding="utf-8")
    upstreams = re.findall(r"server \$\{(CDS_UPSTREAM_\d+)\}", template)
    env = proxy["environment"]
    assert sorted(env[u] for u in upstreams) == sorted(f"{n}:8080" for n in _instances(compose))
    for variable in set(re.findall(r"\$\{(\w+)\}", template)):
        assert variable in env, f"the template's ${{{variable}}} is not set"
    assert {d: v["condition"] for d, v in proxy["depends_on"].items()} == {
        n: "service_healthy" for n in _instances(compose)
    }
    assert proxy["ports"] == ["${CDS_HTTPS_PORT:-443}:" + env["CDS_LISTEN"]]
    for directive in ("proxy_request_buffering on;", "client_max_body_size 8m;", " ssl;"):
        assert directive in template


def test_make_secrets_writes_matching_secrets_once(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("make-secrets needs openssl (apt-get install -y openssl)")
    shutil.copy(DEPLOY / "make-secrets", tmp_path / "make-secrets")
    env = {"PATH": os.environ["PATH"], "CDS_PUBLIC_URL": "https://cds.example.org"}
    run = [str(tmp_path / "make-secrets")]
    first = subprocess.run(run, env=env, capture_output=True, text=True, timeout=120, check=True)
    secrets = tmp_path / "secrets"
    assert secrets.stat().st_mode & 0o777 == 0o700
    read = {p.name: p.read_text(encoding="utf-8").strip() for p in secrets.iterdir()}
    assert len(read["patient-hash-key"]) >= 32 and len(read["admin-token"]) >= 32
    database = urlsplit(read["database-url"])
    assert (database.scheme, database.hostname, database.username, database.password) == (
        "postgresql+psycopg",
        "postgres",
        "cds",
        read["postgres-password"],
    )
    redis_password = re.search(r"^requirepass (\S+)$", read["redis.conf"], re.M)
    assert redis_password and urlsplit(read["auth-cache-url"]).password == redis_password[1]
    certificate = subprocess.run(
        ["openssl", "x509", "-in", str(secrets / "tls.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "DNS:cds.example.org" in certificate.stdout
    again = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60, check=True)
    assert "wrote" in first.stdout and "wrote" not in again.stdout
    assert {p.name: p.read_text(encoding="utf-8").strip() for p in secrets.iterdir()} == read


# -- deploy/kubernetes/ ----------------------------------------------------------------------


def _manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document:
                yield path, document


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [
        d
        for _, d in _manifests()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    return found


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_kubernetes_manifests_follow_the_api_schemas(version: str) -> None:
    kinds = set()
    for path, document in _manifests():
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {document['kind']}: {exc.message}")
        kinds.add(document["kind"])
    assert kinds >= {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "Job",
        "PodDisruptionBudget",
        "Ingress",
    }


def test_kustomization_applies_everything_but_the_secret_template_and_the_job() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text("utf-8"))
    listed = set(kustomization["resources"])
    files = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - {"secret.example.yaml", "migrate-job.yaml"}


def test_the_deployment_probes_ready_on_readyz_and_alive_on_healthz() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"] == [{"name": "http", "containerPort": 8080}]
    assert container["args"][:2] == ["cds-server", "serve"]
    assert container["resources"]["requests"]["memory"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    user = next(r for w, r in _stages()["runtime"] if w == "USER").split(":")[0]
    assert pod["spec"]["securityContext"]["runAsUser"] == int(user)
    labels = pod["metadata"]["labels"]
    for selector in (
        _one("Service")["spec"]["selector"],
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= labels.items()
    assert _one("PodDisruptionBudget")["spec"]["minAvailable"] == 1
    backend = _one("Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "cds-server", "port": {"name": "http"}}


def test_the_deployment_and_job_read_settings_the_service_knows_and_mounted_secrets() -> None:
    settings = _one("ConfigMap", "cds-server-config")["data"]
    assert all(_known_setting(v) for v in settings), sorted(
        v for v in settings if not _known_setting(v)
    )
    secret_keys = set(_one("Secret")["stringData"])
    for workload in (_one("Deployment"), _one("Job")):
        pod = workload["spec"]["template"]["spec"]
        [container] = pod["containers"]
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["secrets"]["secret"]["secretName"] == _one("Secret")["metadata"]["name"]
        for key in config.SECRET_FILE_KEYS:
            path = Path(settings[f"CDS_{key}_FILE"])
            assert str(path.parent) == mounts["secrets"] and path.name in secret_keys
        assert str(Path(settings["CDS_CLIENTS_FILE"]).parent) == mounts["trusted-clients"]
        assert container["envFrom"] == [{"configMapRef": {"name": "cds-server-config"}}]
        assert mounts["tmp"] == "/tmp"  # a read-only root: gunicorn and the metrics write there
    assert _one("Job")["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "cds-server",
        "db",
        "upgrade",
    ]
    # an empty secret stops the service naming it: the template cannot start with a blank key
    assert set(_one("Secret")["stringData"].values()) == {""}


def test_the_trusted_clients_example_is_a_valid_file(tmp_path: Path) -> None:
    text = _one("ConfigMap", "cds-server-trusted-clients")["data"]["clients.yaml"]
    path = tmp_path / "clients.yaml"
    path.write_text(text, encoding="utf-8")
    clients = trusted_clients.load(path)
    assert clients is not None


def test_the_deployments_run_the_image_of_this_release(compose: dict[str, Any]) -> None:
    """README, "Releasing": the version and the image tags change together."""
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]["version"]
    image = f"infusion-safety-cds:{version}"
    assert compose["x-cds-server"]["image"] == f"${{CDS_IMAGE:-{image}}}"
    for workload in (_one("Deployment"), _one("Job")):
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image
