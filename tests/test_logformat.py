"""One JSON log format (``serve --log-format json`` / ``CDS_LOG_FORMAT``): app records and
gunicorn's access log as one JSON object a line, the query string never logged, /healthz quiet."""

from __future__ import annotations

import json
import logging
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

from cds_server import cli, logformat
from tests.servekit import get, serving


def test_an_app_record_is_one_json_line() -> None:
    record = logging.LogRecord(
        "cds_server.web.api", logging.INFO, __file__, 1, "call service=%s cards=%d", ("x", 2), None
    )
    line = logformat.JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "INFO" and entry["logger"] == "cds_server.web.api"
    assert entry["message"] == "call service=x cards=2"
    assert entry["time"].endswith("+00:00")


def test_an_exception_stays_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = logformat.JsonFormatter().format(record)
    assert "\n" not in line
    assert "ValueError" in json.loads(line)["exception"]


def _access_line(path: str, query: str, fmt: str) -> list[str]:
    """What the serve logger class writes for one request (gunicorn's own access())."""
    logger_class = cli.quiet_probes_logger(fmt)
    cfg = SimpleNamespace(
        loglevel="info",
        errorlog="-",
        accesslog="-",
        capture_output=False,
        syslog=False,
        logconfig=None,
        logconfig_dict={},
        logconfig_json=None,
        disable_redirect_access_to_syslog=False,
        access_log_format='%(h)s "%(m)s %(U)s %(H)s" %(s)s',
        syslog_addr=None,
        syslog_prefix=None,
        syslog_facility="user",
        user=0,
        group=0,
    )
    logger = logger_class(cfg)
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    capture = Capture()
    capture.setFormatter(
        logformat.JsonFormatter() if fmt == "json" else logging.Formatter("%(message)s")
    )
    logger.access_log.addHandler(capture)
    try:
        environ = {
            "REQUEST_METHOD": "POST",
            "RAW_URI": f"{path}?{query}",
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "10.0.0.7",
            "HTTP_USER_AGENT": "Epic/1.0",
            "HTTP_REFERER": f"https://ehr.example.org/app?{query}",
        }
        resp = SimpleNamespace(status="200 OK", sent=12, headers=[])
        req = SimpleNamespace(headers=[("AUTHORIZATION", "Bearer secret-jwt")])
        logger.access(resp, req, environ, timedelta(milliseconds=42))
    finally:
        logger.access_log.removeHandler(capture)
    return records


def test_a_gunicorn_access_record_is_one_json_line_without_the_query_string() -> None:
    (line,) = _access_line("/cds-services/infusion-safety-sign", "access_token=SECRET", "json")
    entry = json.loads(line)
    assert entry["logger"] == "gunicorn.access"
    assert entry["http"]["method"] == "POST"
    assert entry["http"]["path"] == "/cds-services/infusion-safety-sign"
    assert entry["http"]["status"] == 200
    assert entry["http"]["durationMs"] == 42.0
    assert entry["http"]["userAgent"] == "Epic/1.0"
    assert "SECRET" not in line and "secret-jwt" not in line
    assert _access_line("/healthz", "", "json") == []
    (text,) = _access_line("/cds-services", "access_token=SECRET", "text")
    assert text == '10.0.0.7 "POST /cds-services HTTP/1.1" 200'


def test_serve_logs_json_lines(tmp_path: Path) -> None:
    with serving(tmp_path, "--workers", "1", env={"CDS_LOG_FORMAT": "json"}) as served:
        assert get(f"{served.base}/cds-services?access_token=SECRET")[0] == 401
        assert get(f"{served.base}/healthz")[0] == 200
    lines = [line for line in served.text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is a JSON object
    loggers = {entry["logger"] for entry in entries}
    assert {"gunicorn.error", "gunicorn.access", "cds_server.web.auth"} <= loggers, loggers
    access = [entry["http"] for entry in entries if entry["logger"] == "gunicorn.access"]
    assert {"method": "GET", "path": "/cds-services", "status": 401}.items() <= access[-1].items()
    assert not any(a["path"] == "/healthz" for a in access)
    assert "SECRET" not in served.text()
