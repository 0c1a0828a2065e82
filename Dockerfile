# syntax=docker/dockerfile:1
# Production image: `cds-server serve` (gunicorn) as a non-root user, its dependencies installed
# from requirements.lock (every release pinned with its hashes), the package from the wheel
# built in the first stage. Put a TLS-terminating proxy in front of it (CDS Hooks requires
# HTTPS; deploy/ has a ready one). Authentication is always on: mount a trusted-clients file
# and set CDS_CLIENTS_FILE and CDS_PUBLIC_URL (README, "Trusted clients"), or it stops at once.
# For a reproducible base, pin it by digest: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:…
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# -- builder: the wheel (the knowledge, fixtures and migrations inside: setup.py) ------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements-build.lock ./
RUN pip install --require-hashes -r requirements-build.lock
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY cds_server ./cds_server
COPY cards ./cards
COPY fixtures ./fixtures
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# -- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cds

# The dependency layer changes only with the lock, so a code or knowledge change reuses it.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels && pip check

# The data folder: with SQLite, the card log, feedback and snoozes (WAL), and the patient-hash
# key generated next to them; keep the volume and back it up as one. Several instances use
# PostgreSQL instead (CDS_DATABASE_URL, and a shared CDS_PATIENT_HASH_KEY): deploy/compose.yaml.
RUN mkdir -p /var/lib/cds-server && chown cds:cds /var/lib/cds-server
ENV CDS_DATA_DIR=/var/lib/cds-server
VOLUME /var/lib/cds-server

USER 10001:10001
EXPOSE 8080
# Liveness: /healthz answers 200 without authentication and leaves no access-log line. For
# readiness (database, Redis) point the orchestrator's probe at /readyz (README, "Operating it").
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
# Workers: 1, or 2 once CDS_AUTH_CACHE=redis://… is set (several workers need the shared JWT
# replay cache; `serve` refuses more than 1 without it); CDS_WORKERS=n to choose. Every other
# setting comes from CDS_* variables (README, "Configuration").
CMD ["cds-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
