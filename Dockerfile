# Production image: gunicorn (via `cds-server serve`) as a non-root user.
# Put a TLS-terminating proxy in front of it: CDS Hooks requires HTTPS.
# Authentication is always on: mount a trusted-clients file and set CDS_CLIENTS_FILE and
# CDS_PUBLIC_URL (see the README, "Trusted clients"); without them the container stops at once.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cds

# The wheel is the product: the build copies cards/ and the fixtures into the package.
COPY pyproject.toml setup.py MANIFEST.in README.md LICENSE ./
COPY cds_server ./cds_server
COPY cards ./cards
COPY fixtures ./fixtures
RUN pip install . && find /app -mindepth 1 -delete

# The data folder: card log, feedback and snooze in SQLite (WAL), schema migrated at start,
# and the patient-hash key generated next to it; keep the volume and back it up as one. For
# several instances use PostgreSQL instead: CDS_DATABASE_URL=postgresql://user@host/db and a
# shared CDS_PATIENT_HASH_KEY.
RUN mkdir -p /var/lib/cds-server && chown cds:cds /var/lib/cds-server
ENV CDS_DATA_DIR=/var/lib/cds-server
VOLUME /var/lib/cds-server

USER cds
EXPOSE 8080
# Liveness: /healthz answers 200 without authentication and leaves no access-log line. For
# readiness (database, Redis) point the orchestrator's probe at /readyz (README, "Operating it").
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"
# Workers: 1, or 2 once CDS_AUTH_CACHE=redis://… is set (several workers need the shared
# JWT replay cache; `serve` refuses more than 1 without it); CDS_WORKERS=n to choose.
CMD ["cds-server", "serve", "--host", "0.0.0.0", "--port", "8080"]
