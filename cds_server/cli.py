"""The ``cds-server`` command: thin wrappers over library functions.

* ``demo``        — Flask's server on 127.0.0.1:8080, no authentication, for trying it out;
* ``serve``       — production: gunicorn (threaded workers) running the same app;
* ``check-cards`` — knowledge coverage report (``knowledge.coverage.format_coverage``);
* ``explain``     — why a request gives the cards it gives (``explain.explain_request``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from cds_server import __version__, config

log = logging.getLogger("cds_server.cli")

DEMO_OVERRIDES: dict[str, Any] = {
    "DEMO": True,
    "FHIR_ALLOW_HTTP": "loopback",
    "FHIR_ALLOW_UNAUTHENTICATED": True,
}


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _load_kb(cards: Path | None) -> Any:
    from cds_server.knowledge.loader import KnowledgeError, load_knowledge

    try:
        return load_knowledge(cards or config.load()["CARDS_DIR"])
    except KnowledgeError as exc:
        raise click.ClickException(str(exc)) from None


def _create_app(overrides: dict[str, Any]) -> Any:
    from cds_server.app import create_app
    from cds_server.knowledge.loader import KnowledgeError

    try:
        return create_app(overrides=overrides)
    except (KnowledgeError, config.ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


cards_option = click.option(
    "--cards",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Knowledge folder (default: CDS_CARDS_DIR or the bundled cards/).",
)


@click.group()
@click.version_option(__version__, prog_name="cds-server")
def main() -> None:
    """Infusion-reaction safety CDS Hooks 2.0 service."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
def demo(host: str, port: int) -> None:
    """Run the service locally for trying it out: NO authentication, demo settings."""
    app = _create_app(DEMO_OVERRIDES)
    _setup_logging(app.config["LOG_LEVEL"])
    log.warning(
        "*** DEMO MODE: no authentication, http FHIR servers allowed on loopback only. "
        "Do not expose it or use it with real patient data. ***"
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("*** DEMO MODE listens on %s: anyone who can reach it can call it ***", host)
    base = f"http://{'localhost' if host in ('127.0.0.1', '::1') else host}:{port}"
    log.warning("Discovery: curl %s/cds-services", base)
    app.run(host=host, port=port, debug=False, use_reloader=False)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--public-url",
    default=None,
    help="Base URL clients call (e.g. https://cds.example.org), used for JWT audience checks.",
)
def serve(host: str, port: int, workers: int, threads: int, public_url: str | None) -> None:
    """Production entry point: gunicorn with threaded workers (put TLS in front of it)."""
    from gunicorn.app.base import BaseApplication

    overrides: dict[str, Any] = {}
    if public_url:
        overrides["PUBLIC_URL"] = public_url.rstrip("/")
    app = _create_app(overrides)
    _setup_logging(app.config["LOG_LEVEL"])

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            options = {
                "bind": f"{host}:{port}",
                "workers": workers,
                "worker_class": "gthread",
                "threads": threads,
                "timeout": 30,
                "graceful_timeout": 10,
                "accesslog": "-",
                "errorlog": "-",
                "loglevel": str(app.config["LOG_LEVEL"]).lower(),
                "proc_name": "cds-server",
            }
            if "control_socket_disable" in self.cfg.settings:  # gunicorn >= 25.1
                options["control_socket_disable"] = True  # no socket in $HOME
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return app

    log.info("serving on %s:%d with %d worker(s) × %d thread(s)", host, port, workers, threads)
    _Server().run()


@main.command("check-cards")
@cards_option
def check_cards(cards: Path | None) -> None:
    """Validate the knowledge and print its coverage."""
    from cds_server.knowledge.coverage import format_coverage

    click.echo(format_coverage(_load_kb(cards)))


@main.command()
@click.argument("request_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@cards_option
def explain(request_file: Path, cards: Path | None) -> None:
    """Explain how a hook request (a JSON file) is evaluated."""
    from cds_server.explain import explain_request

    click.echo(explain_request(request_file, _load_kb(cards)))
