"""Infusion-reaction safety CDS Hooks 2.0 service.

Public surface: ``create_app`` (the Flask factory), ``evaluate`` (one hook request body →
response body, without HTTP) and ``__version__``. The first two are imported lazily so that
``import cds_server.model`` (rules, tests) does not pull in Flask or requests.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("infusion-safety-cds")
except PackageNotFoundError:  # a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__", "create_app", "evaluate"]

if TYPE_CHECKING:
    from cds_server.pipeline import evaluate
    from cds_server.web.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from cds_server.web.app import create_app

        return create_app
    if name == "evaluate":
        from cds_server.pipeline import evaluate

        return evaluate
    raise AttributeError(f"module 'cds_server' has no attribute {name!r}")
