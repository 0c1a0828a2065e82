"""Log formats of the command line: plain text (the demo's default) or one JSON object a line.

``JsonFormatter`` renders any ``logging`` record as ``{"time", "level", "logger", "message"}``
(plus ``exception`` when there is one, and ``http`` for an access-log record); ``serve
--log-format json`` puts it on the app's loggers and on gunicorn's error and access logs, so a
log shipper reads one format. Access records carry the path without its query string (a token
sent there must never be logged) and no request header but the user agent.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ACCESS_FIELD = "http"  # the attribute of an access-log record holding its fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        access = getattr(record, ACCESS_FIELD, None)
        if isinstance(access, dict):
            entry[ACCESS_FIELD] = access
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def access_fields(atoms: dict[str, Any]) -> dict[str, Any]:
    """An access-log record's fields from gunicorn's atoms: never the query string."""
    referer = str(atoms.get("f") or "-")
    return {
        "remote": atoms.get("h"),
        "method": atoms.get("m"),
        "path": atoms.get("U"),  # PATH_INFO: without the query string
        "protocol": atoms.get("H"),
        "status": int(atoms["s"]) if str(atoms.get("s", "")).isdigit() else atoms.get("s"),
        "bytes": atoms.get("B"),
        "durationMs": round(int(atoms.get("D") or 0) / 1000, 1),
        "referer": referer.split("?", 1)[0],
        "userAgent": atoms.get("a"),
    }


def setup(level: str, log_format: str = "text") -> None:
    """The root logger's level and format (plain text, or JSON lines)."""
    handler = logging.StreamHandler()
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO), handlers=[handler]
    )
