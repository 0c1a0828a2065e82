"""Probes for orchestrators and proxies: ``GET /healthz`` and ``GET /readyz``, no authentication.

* ``/healthz`` — the process answers (liveness); it touches nothing else and ``serve`` writes
  no access-log line for it.
* ``/readyz`` — the service can do its work (readiness): the knowledge is loaded, the database
  answers ``SELECT 1`` and, when one is configured, the shared Redis cache answers ``PING``.
  Each dependency is checked on a thread of its own and given ``CHECK_TIMEOUT`` seconds, so a
  black-holed database fails the probe in time instead of hanging it; a check still running
  from an earlier probe is not started again (no pile-up of threads). A failure is a 503
  ``OperationOutcome`` (code ``not-ready``) with one issue per failed check, naming it and the
  kind of error (never a URL or a credential).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify

from cds_server import store
from cds_server.cdshooks.errors import NotReady
from cds_server.web import auth

bp = Blueprint("ops", __name__)

EXTENSION = "cds_server.web.ops"
CHECK_TIMEOUT = 1.0  # seconds per dependency; /readyz answers within about this
HEALTH_PATHS = frozenset({"/healthz"})  # no access-log line (cds_server.cli)


class DependencyChecks:
    """Runs dependency checks with a deadline, at most one at a time per check."""

    def __init__(self, timeout: float = CHECK_TIMEOUT) -> None:
        self.timeout = timeout
        self._lock = threading.Lock()
        self._pid = 0
        self._executor: ThreadPoolExecutor | None = None
        self._running: dict[str, Future[None]] = {}

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None or self._pid != os.getpid():  # threads do not cross a fork
            self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="cds-readyz")
            self._running = {}
            self._pid = os.getpid()
        return self._executor

    def run(self, checks: dict[str, Callable[[], None]]) -> dict[str, str]:
        """Each check's outcome: ``"ok"`` or why it failed."""
        with self._lock:
            pool = self._pool()
            started: dict[str, Future[None] | None] = {}
            for name, check in checks.items():
                previous = self._running.get(name)
                if previous is not None and not previous.done():
                    started[name] = None
                else:
                    started[name] = self._running[name] = pool.submit(check)
        results = {}
        for name, future in started.items():
            if future is None:
                results[name] = "an earlier check has not answered yet"
                continue
            try:
                future.result(timeout=self.timeout)
                results[name] = "ok"
            except FutureTimeout:
                results[name] = f"no answer within {self.timeout:g} s"
            except Exception as exc:  # any failure of a dependency means not ready
                results[name] = type(exc).__name__
        return results


def _database_check(app: Flask) -> Callable[[], None]:
    engine = store.get_store(app).engine

    def check() -> None:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")

    return check


def _shared_cache_check(app: Flask) -> Callable[[], None] | None:
    """The Redis ping, or None when there is no shared cache (memory, or no authentication)."""
    verifier = app.extensions.get(auth.EXTENSION)
    ping = getattr(getattr(verifier, "cache", None), "ping", None)
    return ping if callable(ping) else None


def init_app(app: Flask) -> None:
    app.extensions[EXTENSION] = DependencyChecks()
    app.register_blueprint(bp)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Alive: answers without touching any dependency."""
    return _no_store(jsonify({"status": "ok"}))


@bp.get("/readyz")
def readyz() -> Response:
    """Ready: knowledge loaded, database and (if configured) the shared cache reachable."""
    app: Any = current_app._get_current_object()  # type: ignore[attr-defined]
    runtime = app.extensions.get("cds_server")
    checks: dict[str, str] = {
        "knowledge": "ok" if runtime is not None and runtime.kb.drugs else "not loaded"
    }
    dependencies = {"database": _database_check(app)}
    cache = _shared_cache_check(app)
    if cache is not None:
        dependencies["sharedCache"] = cache
    checks.update(app.extensions[EXTENSION].run(dependencies))
    if cache is None:
        checks["sharedCache"] = "not configured"
    failed = {
        name: [outcome]
        for name, outcome in checks.items()
        if outcome not in ("ok", "not configured")
    }
    if failed:
        raise NotReady(f"Not ready: {', '.join(sorted(failed))}", fields=failed)
    body = {"status": "ready", "checks": checks, "knowledgeVersion": runtime.kb.version}
    return _no_store(jsonify(body))
