"""The ``cds-server`` command: thin wrappers over library functions.

* ``demo``        — Flask's server on 127.0.0.1:8080, no authentication, for trying it out;
* ``serve``       — production: gunicorn (threaded workers) running the same app;
* ``check-cards`` — knowledge coverage report (``knowledge.coverage.format_coverage``);
  ``--html DIR`` also writes the knowledge pages there (``knowledge_pages.html.write_site``);
* ``explain``     — why a request gives the cards it gives (``explain.explain_request``);
* ``report``      — cards issued, accepted, overridden, ignored per rule and drug (``store``);
* ``db upgrade``  — migrate the database schema (``db current`` shows the revision).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from cds_server import __version__, config
from cds_server.render.profiles import PROFILE_NAMES

log = logging.getLogger("cds_server.cli")

DEMO_OVERRIDES: dict[str, Any] = {
    "DEMO": True,
    "AUTH_REQUIRED": False,
    "FHIR_ALLOW_HTTP": "loopback",
    "FHIR_ALLOW_UNAUTHENTICATED": True,
}


def _setup_logging(level: str, log_format: str = "text") -> None:
    from cds_server import logformat

    logformat.setup(level, log_format)


def _load_kb(cards: Path | None, site: Path | None = None) -> Any:
    """The knowledge (``--cards`` or ``CDS_CARDS_DIR``) with the site overlay of ``--site``
    (else ``CDS_SITE_DIR``), if any; every problem of either stops the command."""
    from cds_server.knowledge.loader import KnowledgeError, load_knowledge
    from cds_server.knowledge.overlay import load_view

    try:
        settings = config.load()
        return load_view(
            load_knowledge(cards or settings["CARDS_DIR"]), site or settings["SITE_DIR"]
        )
    except (KnowledgeError, config.ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


def _create_app(overrides: dict[str, Any], data_dir: Path | None = None) -> Any:
    from cds_server.knowledge.loader import KnowledgeError
    from cds_server.web.app import create_app

    try:
        return create_app(overrides=overrides, data_dir=data_dir)
    except (KnowledgeError, config.ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


cards_option = click.option(
    "--cards",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Knowledge folder (default: CDS_CARDS_DIR or the bundled cards/).",
)

site_option = click.option(
    "--site",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Site folder: the institution's overlay on the knowledge (default: CDS_SITE_DIR; "
    "none = the label knowledge alone). Format: cards/README.md.",
)

data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data folder: SQLite database, patient-hash key, optional config.py "
    "(default: CDS_DATA_DIR, else ./instance of the working directory).",
)


@click.group()
@click.version_option(__version__, prog_name="cds-server")
def main() -> None:
    """Infusion-reaction safety CDS Hooks 2.0 service."""


# Threads per worker: calls that fetch from the EHR's FHIR server mostly wait on the network,
# so a worker takes more calls at once than it has CPU (bench/README.md: with 4, a worker that
# held 6 of 8 keep-alive connections queued two calls behind a 100 ms FHIR wait).
SERVE_THREADS = 8
# Worker processes when a shared auth cache (Redis) is configured; without one, 1 (see serve).
SERVE_WORKERS = 2
# gunicorn's own header and request-line limits answer 431/414 in HTML before the app sees the
# request. A header line may hold the longest token the app checks itself (auth.MAX_TOKEN_CHARS,
# 16 384) with room to spare, so an oversized token gets the app's JSON 401; the request line
# gets gunicorn's largest finite limit (8 190 bytes; the default is 4 094).
SERVE_MAX_HEADER_BYTES = 20_480
SERVE_MAX_REQUEST_LINE = 8190


def demo_base_urls(host: str, port: int, public_url: str | None) -> tuple[str, list[str]]:
    """The demo's public URL and its aliases: ``--public-url`` alone if given; on loopback
    both ``localhost`` and ``127.0.0.1`` (a browser opened at either signs ``aud`` with it)."""
    if public_url:
        if not public_url.startswith(("http://", "https://")):
            raise click.BadParameter("must be an http(s) URL", param_hint="--public-url")
        return public_url.rstrip("/"), []
    if host in ("127.0.0.1", "localhost", "::1"):
        return f"http://localhost:{port}", [f"http://127.0.0.1:{port}"]
    return f"http://{host}:{port}", []


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--auth",
    "require_auth",
    is_flag=True,
    help="Verify client JWTs as in production, trusting the demo's test key (the sandbox "
    "page's 'Sign with the demo's test key') and any --clients file.",
)
@click.option(
    "--clients",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --auth: more trusted clients (e.g. the CDS Hooks Sandbox's public key).",
)
@click.option(
    "--public-url",
    default=None,
    help="The base URL clients call (JWT 'aud' is checked against it with --auth), e.g. "
    "http://192.0.2.10:8080. Default: http://localhost:PORT, with http://127.0.0.1:PORT "
    "accepted too when listening on loopback.",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILE_NAMES),
    default="generic",
    show_default=True,
    help="Shape the cards as for this kind of client (epic: one action per suggestion, the "
    "dose in each action's description, RxNorm also as Epic's OID; see the README). With "
    "--auth, for clients whose entry names no profile.",
)
@site_option
@data_dir_option
def demo(
    host: str,
    port: int,
    require_auth: bool,
    clients: Path | None,
    public_url: str | None,
    profile: str,
    site: Path | None,
    data_dir: Path | None,
) -> None:
    """Run the service locally for trying it out: NO authentication, demo settings."""
    import tempfile

    from cds_server.sandbox import testkey

    if clients and not require_auth:
        raise click.UsageError("--clients is used only with --auth")
    base, aliases = demo_base_urls(host, port, public_url)
    with tempfile.TemporaryDirectory(prefix="cds-demo-") as folder:
        overrides = dict(DEMO_OVERRIDES, CLIENT_PROFILE=profile)
        if site is not None:
            overrides["SITE_DIR"] = str(site)
        if require_auth:  # the test key's public half goes into a temporary clients file
            key = testkey.generate()
            overrides.update(testkey.demo_auth_overrides(key, Path(folder), base, clients, aliases))
        app = _create_app(overrides, data_dir)
        _setup_logging(app.config["LOG_LEVEL"])
        log.warning("Data folder (database, patient-hash key): %s", app.instance_path)
        _log_site(app)
        if not require_auth:
            log.warning(
                "*** DEMO MODE: no authentication, http FHIR servers allowed on loopback only. "
                "Do not expose it or use it with real patient data. ***"
            )
        if host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "*** DEMO MODE listens on %s: anyone who can reach it can call it ***", host
            )
        if require_auth:
            log.warning(
                "JWT 'aud' accepted for %s (call the service at %s; another address needs "
                "--public-url)",
                " and ".join(f"{url}/cds-services…" for url in (base, *aliases)),
                " or ".join((base, *aliases)),
            )
        if profile != "generic":
            log.warning("Cards shaped for the %s client profile", profile)
        log.warning("Discovery: curl %s/cds-services", base)
        log.warning("Sandbox page: %s/sandbox/", base)
        app.run(host=host, port=port, debug=False, use_reloader=False)


def _log_site(app: Any) -> None:
    """Say at start-up which site overlays the service applies (none: the label knowledge)."""
    runtime = app.extensions["cds_server"]
    site = runtime.kb.site
    if site is not None:
        log.warning(
            "Site overlay %s: %s, %d entries, jurisdiction %s (knowledge %s)",
            site.folder,
            site.name,
            len(site.entries),
            site.jurisdiction,
            runtime.kb.version,
        )
    for folder, view in runtime.sites.items():
        log.warning("Site overlay of a trusted client: %s (knowledge %s)", folder, view.version)


def quiet_probes_logger(log_format: str = "text") -> type:
    """gunicorn's logger class without access-log lines for liveness probes (``/healthz``:
    every few seconds from each orchestrator, they would bury the calls); with ``json``, its
    error and access logs as JSON lines (``logformat``)."""
    from gunicorn.glogging import Logger

    from cds_server import logformat
    from cds_server.web.ops import HEALTH_PATHS

    class QuietProbesLogger(Logger):
        def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
            if environ.get("PATH_INFO") in HEALTH_PATHS:
                return
            if log_format != "json":
                super().access(resp, req, environ, request_time)
                return
            if not self.cfg.accesslog:  # serve always sets it; the check is gunicorn's own
                return
            fields = logformat.access_fields(self.atoms(resp, req, environ, request_time))
            self.access_log.info(
                "%s %s %s",
                fields["method"],
                fields["path"],
                fields["status"],
                extra={logformat.ACCESS_FIELD: fields},
            )

        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            if log_format == "json":
                for handler in (*self.error_log.handlers, *self.access_log.handlers):
                    handler.setFormatter(logformat.JsonFormatter())

    return QuietProbesLogger


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 64),
    envvar="CDS_WORKERS",
    help="Worker processes (CDS_WORKERS). Default: 2 with a shared auth cache "
    "(CDS_AUTH_CACHE=redis://…), else 1; more than 1 requires the shared cache.",
)
@click.option("--threads", default=SERVE_THREADS, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--public-url",
    default=None,
    help="Base URL clients call (e.g. https://cds.example.org), used for JWT audience checks.",
)
@click.option(
    "--clients",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Trusted-clients YAML file (default: CDS_CLIENTS_FILE). Required: see the README.",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="CDS_LOG_FORMAT",
    help="Logs of the app and gunicorn's access log: plain text, or one JSON object a line "
    "(CDS_LOG_FORMAT).",
)
@site_option
@data_dir_option
def serve(
    host: str,
    port: int,
    workers: int | None,
    threads: int,
    public_url: str | None,
    clients: Path | None,
    log_format: str,
    site: Path | None,
    data_dir: Path | None,
) -> None:
    """Production entry point: gunicorn with threaded workers (put TLS in front of it).

    Authentication is always on: it refuses to start without a trusted-clients file. It needs
    a data folder (--data-dir or CDS_DATA_DIR) unless CDS_DATABASE_URL names the database.
    """
    from cds_server.web import metrics

    _require_data_location(data_dir)
    # Before the app is built: workers then share their counts (GET /metrics sums them).
    with metrics.shared_between_workers():
        _serve(host, port, workers, threads, public_url, clients, data_dir, log_format, site)


def _serve(
    host: str,
    port: int,
    workers: int | None,
    threads: int,
    public_url: str | None,
    clients: Path | None,
    data_dir: Path | None,
    log_format: str = "text",
    site: Path | None = None,
) -> None:
    from gunicorn.app.base import BaseApplication

    overrides: dict[str, Any] = {"AUTH_REQUIRED": True, "DEMO": False}
    if public_url:
        overrides["PUBLIC_URL"] = public_url.rstrip("/")
    if clients:
        overrides["CLIENTS_FILE"] = str(clients)
    if site is not None:
        overrides["SITE_DIR"] = str(site)
    _setup_logging("INFO", log_format)  # start-up errors in the chosen format too
    app = _create_app(overrides, data_dir)
    _log_site(app)
    logging.getLogger().setLevel(
        getattr(logging, str(app.config["LOG_LEVEL"]).upper(), logging.INFO)
    )
    shared = app.config["AUTH_CACHE"] != "memory"
    if workers is None:
        workers = SERVE_WORKERS if shared else 1
    if workers > 1 and not shared:
        # Each worker would keep its own replay cache: a token could be replayed once per
        # worker (the fault run replayed 44 of 50 tokens concurrently across 2 workers).
        raise click.ClickException(
            f"--workers {workers} needs a shared replay cache, but AUTH_CACHE is 'memory' "
            "(one per process: a JWT could be replayed once on each worker). Set "
            "CDS_AUTH_CACHE=redis://host:6379/0, or run one worker (--workers 1) per instance."
        )

    class _Server(BaseApplication):
        def load_config(self) -> None:
            # Defaults GUNICORN_CMD_ARGS may change (e.g. --timeout 60 --keep-alive 5).
            for key, value in SERVE_DEFAULTS.items():
                self.cfg.set(key, value)
            for key, value in gunicorn_env_settings(self.cfg).items():
                if key in SERVE_OWNS:
                    log.warning(
                        "GUNICORN_CMD_ARGS: %s is set by cds-server serve; ignored there", key
                    )
                    continue
                self.cfg.set(key, value)
            owned = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "worker_class": "gthread",
                "threads": threads,
                "limit_request_field_size": SERVE_MAX_HEADER_BYTES,
                "limit_request_line": SERVE_MAX_REQUEST_LINE,
                "accesslog": "-",
                "logger_class": quiet_probes_logger(log_format),
                # The path without its query string: a token sent there must not be logged.
                "access_log_format": '%(h)s %(l)s %(u)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(b)s '
                '"%(f)s" "%(a)s"',
                "errorlog": "-",
                "loglevel": str(app.config["LOG_LEVEL"]).lower(),
                "child_exit": _child_exit,
            }
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1
                owned["control_socket_disable"] = True  # no socket in $HOME
            for key, value in owned.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    log.info("serving on %s:%d with %d worker(s) × %d thread(s)", host, port, workers, threads)
    from cds_server.web.app import settle_heap

    settle_heap()  # full GC passes over start-up objects caused 0.1 s pauses (bench/README.md)
    _Server().run()


# gunicorn settings serve chooses, GUNICORN_CMD_ARGS may change them.
SERVE_DEFAULTS: dict[str, Any] = {"timeout": 30, "graceful_timeout": 10, "proc_name": "cds-server"}
# Settings serve always sets (its own options, the token-safe access log, the metrics hook,
# the app itself): GUNICORN_CMD_ARGS cannot change them.
SERVE_OWNS = frozenset(
    {
        "bind",
        "workers",
        "worker_class",
        "threads",
        "accesslog",
        "logger_class",
        "access_log_format",
        "errorlog",
        "loglevel",
        "child_exit",
        "control_socket_disable",
        "limit_request_field_size",
        "limit_request_line",
        "config",
        "wsgi_app",
        "preload_app",
        "daemon",
        "reload",
        "logconfig",
        "logconfig_dict",
        "logconfig_json",
    }
)


def gunicorn_env_settings(cfg: Any) -> dict[str, Any]:
    """The settings given in ``GUNICORN_CMD_ARGS``, parsed as gunicorn's own command does
    (gunicorn's ``BaseApplication`` does not read it); a bad value stops ``serve``."""
    arguments = cfg.get_cmd_args_from_env()
    if not arguments:
        return {}
    try:
        parsed = cfg.parser().parse_args(arguments)
    except SystemExit:  # argparse already printed why
        raise click.ClickException("GUNICORN_CMD_ARGS: invalid gunicorn options") from None
    return {k.lower(): v for k, v in vars(parsed).items() if v is not None and k != "args"}


def _child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook (in the arbiter): a stopped worker's metrics files."""
    from cds_server.web import metrics

    metrics.mark_worker_dead(worker.pid)


def _require_data_location(data_dir: Path | None) -> None:
    """``serve`` keeps data only where the operator said: a data folder or a database URL."""
    if config.given_data_dir(data_dir):
        return
    try:
        database_url = config.load().get("DATABASE_URL")
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if not database_url:
        raise click.UsageError(
            "serve needs to know where to keep its data: give --data-dir DIR or CDS_DATA_DIR "
            "(SQLite database and patient-hash key; keep the folder, back it up), or "
            "CDS_DATABASE_URL (e.g. postgresql://…) with CDS_PATIENT_HASH_KEY"
        )


@main.command("check-cards")
@cards_option
@click.option(
    "--html",
    "html_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write the knowledge pages into this folder as static files (index.html and "
    "one page per drug, class, agent and protocol) for a committee's review; with --site, "
    "the site's entries beside the label facts they change and one page per institution "
    "protocol.",
)
@site_option
def check_cards(cards: Path | None, html_dir: Path | None, site: Path | None) -> None:
    """Validate the knowledge and print its coverage; with a site folder, validate its
    overlay against the knowledge and list what it overrides."""
    from cds_server.knowledge.coverage import format_coverage

    kb = _load_kb(cards, site)
    click.echo(format_coverage(kb.label_knowledge))
    if kb.site is not None:
        from cds_server.knowledge.coverage import format_site

        click.echo("")
        click.echo(format_site(kb))
    if html_dir is not None:
        from cds_server.knowledge_pages.html import write_site

        try:
            written = write_site(kb, html_dir)
        except OSError as exc:
            raise click.ClickException(f"cannot write the pages into {html_dir}: {exc}") from None
        click.echo(f"Wrote {len(written)} pages into {html_dir} (open {written[0]}).")


@main.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@cards_option
@site_option
def explain(request_file: Path, cards: Path | None, site: Path | None) -> None:
    """Explain how a hook request (a JSON file) is evaluated."""
    from cds_server.explain import explain_request

    click.echo(explain_request(request_file, _load_kb(cards, site)))


def _open_store(data_dir: Path | None, upgrade: bool = True) -> Any:
    """The store the app would use (same config and data folder), without the app.

    ``upgrade=False`` (the ``db`` commands): no migration and no hash key needed.
    """
    from cds_server.store import db as store_db

    instance = config.data_dir(data_dir)
    try:
        cfg = config.load(instance_path=instance)
        store = store_db.build_store(cfg, instance, with_key=upgrade)
    except config.ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if upgrade:
        store_db.upgrade(store.engine)
    return store


@main.command()
@click.option("--since", default=None, help="Start (2026-11-01 or ISO time; default: 30 days ago).")
@click.option("--until", default=None, help="End, exclusive (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON of GET /analytics/report.")
@data_dir_option
def report(since: str | None, until: str | None, as_json: bool, data_dir: Path | None) -> None:
    """Cards issued, accepted, overridden (with reasons) and ignored, per rule and drug."""
    import json
    from datetime import UTC, datetime

    from cds_server.analytics import present
    from cds_server.cdshooks.errors import InvalidRequest

    try:
        start, end = present.window(since, until, datetime.now(UTC))
    except InvalidRequest as exc:
        raise click.BadParameter("; ".join(m for ms in exc.fields.values() for m in ms)) from None
    kb = _load_kb(None)
    cards_store = _open_store(data_dir)
    try:
        result = cards_store.report(start, end)
    finally:
        cards_store.engine.dispose()
    if as_json:
        click.echo(json.dumps(present.report_json(result, kb), indent=2))
    else:
        click.echo(present.report_text(result, kb))


@main.group()
def db() -> None:
    """The database: schema migrations (CDS_DATABASE_URL; default SQLite in the data folder)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@data_dir_option
def db_upgrade(revision: str, data_dir: Path | None) -> None:
    """Migrate the schema to the newest (or the given) revision."""
    from cds_server.store import db as store_db

    engine = _open_store(data_dir, upgrade=False).engine
    try:
        now = store_db.upgrade(engine, revision)
    finally:
        engine.dispose()
    click.echo(
        f"{store_db.describe(engine)}: at revision {now} "
        f"(newest shipped: {store_db.head_revision()})"
    )


@db.command("current")
@data_dir_option
def db_current(data_dir: Path | None) -> None:
    """Show the database's schema revision and the newest one shipped."""
    from cds_server.store import db as store_db

    engine = _open_store(data_dir, upgrade=False).engine
    try:
        current = store_db.current_revision(engine)
    finally:
        engine.dispose()
    click.echo(
        f"{store_db.describe(engine)}: at revision {current} "
        f"(newest shipped: {store_db.head_revision()})"
    )
