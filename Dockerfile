# Production image: gunicorn (via `cds-server serve`) as a non-root user.
# Put a TLS-terminating proxy in front of it: CDS Hooks requires HTTPS.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CDS_CARDS_DIR=/app/cards

WORKDIR /app
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin cds

COPY pyproject.toml README.md ./
COPY cds_server ./cds_server
COPY cards ./cards
RUN pip install . && rm -rf /app/cds_server /app/build

USER cds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/cds-services', timeout=3)"
CMD ["cds-server", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
