"""Access to the operator's endpoints (``/analytics/*``, ``/metrics``): the bearer admin token.

With ``ADMIN_TOKEN`` set, ``Authorization: Bearer <ADMIN_TOKEN>`` is required (401 otherwise);
without it these endpoints answer only in demo mode and 403 everywhere else.
"""

from __future__ import annotations

import hmac

from flask import current_app, request

from cds_server.cdshooks.errors import AdminDisabled, AdminUnauthorized


def require_admin(what: str) -> None:
    """Raise ``AdminUnauthorized`` (401) or ``AdminDisabled`` (403) unless the request may see
    ``what`` (e.g. "Analytics")."""
    token = current_app.config.get("ADMIN_TOKEN")
    if token:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8"), str(token).strip().encode("utf-8")
        ):
            raise AdminUnauthorized(f"{what} require 'Authorization: Bearer <admin token>'")
    elif not current_app.config.get("DEMO"):
        raise AdminDisabled(f"{what} are disabled: set ADMIN_TOKEN (CDS_ADMIN_TOKEN) to use them")
