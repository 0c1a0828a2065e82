"""Token limits: a maximum lifetime, numeric dates range-checked, no token in the URL.

The fault run found that ``exp`` = 1e300 gave 503 with Redis (a TTL Redis refused) and 200
without, that an ``exp`` in the year 318 000 was accepted (its ``jti`` kept for ever), and that
a JWT sent in the query string was written whole into the access log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_server import config
from tests import jwtkit as kit
from tests.loghygiene import assert_clean_logs


@pytest.fixture
def client(make_app: Callable[..., Flask], tmp_path: Path) -> Any:
    return kit.auth_app(make_app, tmp_path).test_client()


def _status(client: Any, **changes: Any) -> int:
    resp = client.get("/cds-services", headers=kit.bearer(kit.sign(kit.claims(**changes))))
    if resp.status_code != 200:
        assert resp.get_json()["resourceType"] == "OperationOutcome"
    return int(resp.status_code)


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": 1e300},
        {"exp": 10**30},
        {"exp": "now+", "ahead": 316_000 * 365 * 86400},  # the year 318 000
        {"exp": "now+", "ahead": 3600 + 60 + 30},  # just beyond the lifetime and leeway
        {"exp": "now+", "ahead": 86400},  # a day (accepted before the maximum existed)
        {"iat": 1e300},
        {"iat": -1e300},
        {"nbf": 1e300},
        {"nbf": -5},
        {"exp": -1},
    ],
)
def test_absurd_or_too_long_lived_tokens_are_401(client: Any, changes: dict[str, Any]) -> None:
    changes = dict(changes)
    if changes.get("exp") == "now+":  # relative to when the test runs, not when it was collected
        changes["exp"] = int(time.time()) + changes.pop("ahead")
    assert _status(client, **changes) == 401


def test_lifetimes_real_clients_use_are_accepted(client: Any) -> None:
    now = int(time.time())
    assert _status(client, exp=now + 300) == 200  # the specification's 5 minutes
    assert _status(client, exp=now + 15 * 60, nbf=now - 300) == 200  # Epic's example
    assert _status(client, exp=now + 3600) == 200  # the default maximum


def test_the_lifetime_is_configurable_and_validated(
    make_app: Callable[..., Flask], tmp_path: Path
) -> None:
    short = kit.auth_app(make_app, tmp_path, AUTH_MAX_TOKEN_LIFETIME=120).test_client()
    assert _status(short, exp=int(time.time()) + 300) == 401
    for bad in (0, 59, 86401, True, "3600"):
        with pytest.raises(config.ConfigError, match="AUTH_MAX_TOKEN_LIFETIME"):
            config.load(test_config={"AUTH_MAX_TOKEN_LIFETIME": bad})


@pytest.mark.parametrize("name", ["access_token", "token", "jwt", "JWT"])
def test_a_token_in_the_query_string_is_refused_and_not_logged(
    client: Any, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    token = kit.sign(kit.claims())
    resp = client.get(f"/cds-services?{name}={token}", headers=kit.bearer(token))
    assert resp.status_code == 401
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    assert token not in caplog.text
    assert_clean_logs(caplog)
    # the token itself was not consumed: sent properly, it still works once
    assert client.get("/cds-services", headers=kit.bearer(token)).status_code == 200


def test_serve_access_log_leaves_out_the_query_string(
    monkeypatch: pytest.MonkeyPatch, cards_dir: Any
) -> None:
    from click.testing import CliRunner
    from gunicorn.app.base import BaseApplication

    from cds_server import cli
    from tests.conftest import ROOT

    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        BaseApplication, "run", lambda self: seen.update(fmt=self.cfg.access_log_format)
    )
    result = CliRunner().invoke(
        cli.main,
        [
            "serve",
            "--public-url",
            "https://cds.example.org",
            "--clients",
            str(ROOT / "fixtures" / "trusted-clients" / "sandbox.yaml"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "%(U)s" in seen["fmt"]
    assert "%(r)s" not in seen["fmt"] and "%(q)s" not in seen["fmt"]
