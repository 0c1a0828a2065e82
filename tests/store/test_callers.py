"""Two EHRs may both have a patient "123": snoozes, session de-duplication and feedback never
cross from one authenticated caller (``iss``, and the token's ``tenant``) to another."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from cds_server.store import get_store
from cds_server.web.auth import Caller
from cds_server.web.trusted_clients import TrustedClient
from tests import jwtkit as kit
from tests.conftest import load_request, service_for
from tests.store.conftest import HASH_KEY, rows
from tests.store.flows import LATER_RITUXIMAB, card_for, overridden, scenario, topics, with_session

SIGN = "/cds-services/infusion-safety-sign"
RITUXIMAB = "order-sign-rituximab"  # rate-titration warning for pat-lym-001
OTHER_ISS = "https://other-ehr.example.net"


@pytest.fixture
def app(make_app: Callable[..., Flask], db_url: str, tmp_path: Path) -> Iterator[Flask]:
    """Authentication on; two EHRs: ``kit.EHR_ISS`` (any tenant) and ``OTHER_ISS``."""
    entries = (
        kit.client_entry("es384"),
        {**kit.client_entry("rsa"), "iss": OTHER_ISS},
    )
    app = kit.auth_app(make_app, tmp_path, *entries, DATABASE_URL=db_url, PATIENT_HASH_KEY=HASH_KEY)
    yield app
    get_store(app).close()


def _token(aud: str, caller: str, tenant: str | None) -> dict[str, str]:
    extra: dict[str, Any] = {"tenant": tenant} if tenant else {}
    if caller == "other":
        return kit.bearer(kit.sign(kit.claims(aud, iss=OTHER_ISS, **extra), "rsa", "RS384"))
    return kit.bearer(kit.sign(kit.claims(aud, **extra)))


def _call(
    client: FlaskClient, body: dict[str, Any], caller: str = "ehr", tenant: str | None = None
) -> list[dict[str, Any]]:
    path = f"/cds-services/{service_for(body)}"  # order-select has its own id
    resp = client.post(path, json=body, headers=_token(kit.PUBLIC_URL + path, caller, tenant))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["cards"]  # type: ignore[no-any-return]


def _snooze_rate_titration(client: FlaskClient, caller: str, tenant: str | None = None) -> None:
    card = card_for(_call(client, scenario(LATER_RITUXIMAB), caller, tenant), "rate-titration")
    body = {"feedback": [overridden(card["uuid"], "previously-tolerated")]}
    headers = _token(kit.SIGN_AUD + "/feedback", caller, tenant)
    resp = client.post(SIGN + "/feedback", json=body, headers=headers)
    assert resp.status_code == 200, resp.get_json()


def _later(client: FlaskClient, caller: str, tenant: str | None = None) -> list[tuple[str, str]]:
    """The same patient id in a new ordering session."""
    body = with_session(scenario(LATER_RITUXIMAB), encounter="enc-later")
    return topics(_call(client, body, caller, tenant))


def test_a_snooze_holds_only_for_the_ehr_whose_prescriber_made_it(app: Flask) -> None:
    client = app.test_client()
    _snooze_rate_titration(client, "ehr")
    assert _later(client, "ehr") == []  # the snooze works for its own EHR
    assert _later(client, "other") == [("rate-titration", "warning")]  # same id, other EHR


def test_tenants_of_one_issuer_are_kept_apart(app: Flask) -> None:
    client = app.test_client()
    _snooze_rate_titration(client, "ehr", tenant="hospital-a")
    assert _later(client, "ehr", tenant="hospital-a") == []
    assert _later(client, "ehr", tenant="hospital-b") == [("rate-titration", "warning")]
    assert _later(client, "ehr") == [("rate-titration", "warning")]  # no tenant claim


def test_session_de_duplication_is_per_ehr(app: Flask) -> None:
    client = app.test_client()
    body = load_request(RITUXIMAB)
    first = with_session(body, hook="order-select", encounter="enc-shared")
    assert _call(client, first, "ehr")
    sign = with_session(body, encounter="enc-shared")
    # The same EHR signing in the same encounter: the non-critical card was already shown.
    assert ("rate-titration", "warning") not in topics(_call(client, sign, "ehr"))
    # Another EHR with the same encounter and patient ids is another session.
    again = with_session(body, encounter="enc-shared")
    assert ("rate-titration", "warning") in topics(_call(client, again, "other"))


def test_feedback_on_another_ehr_s_card_snoozes_nothing(app: Flask, raw: sa.Engine) -> None:
    client = app.test_client()
    card = card_for(_call(client, scenario(LATER_RITUXIMAB), "ehr"), "rate-titration")
    body = {"feedback": [overridden(card["uuid"], "previously-tolerated")]}
    other = _token(kit.SIGN_AUD + "/feedback", "other", None)
    assert client.post(SIGN + "/feedback", json=body, headers=other).status_code == 200
    [stored] = rows(raw, "feedback")
    assert stored["known_card"] in (False, 0)  # as if the uuid were unknown
    assert rows(raw, "snooze") == []
    assert _later(client, "ehr") == [("rate-titration", "warning")]
    # The EHR that was shown the card can still snooze it.
    own = _token(kit.SIGN_AUD + "/feedback", "ehr", None)
    assert client.post(SIGN + "/feedback", json=body, headers=own).status_code == 200
    assert len(rows(raw, "snooze")) == 1
    assert _later(client, "ehr") == []


def test_cards_logged_before_callers_were_recorded_take_any_feedback(
    app: Flask, raw: sa.Engine
) -> None:
    client = app.test_client()
    card = card_for(_call(client, scenario(LATER_RITUXIMAB), "ehr"), "rate-titration")
    get_store(app).flush()
    with raw.begin() as connection:  # as migration 0002 leaves earlier rows
        connection.execute(sa.text("UPDATE card_log SET caller_hash = NULL"))
    body = {"feedback": [overridden(card["uuid"], "previously-tolerated")]}
    other = _token(kit.SIGN_AUD + "/feedback", "other", None)
    assert client.post(SIGN + "/feedback", json=body, headers=other).status_code == 200
    assert len(rows(raw, "snooze")) == 1


def test_caller_namespaces_are_distinct_and_stable() -> None:
    a = TrustedClient(iss="https://a.example.org", keys={})
    b = TrustedClient(iss="https://b.example.org", keys={})
    names = {
        Caller(a).namespace,
        Caller(a, "t1").namespace,
        Caller(a, "t2").namespace,
        Caller(b).namespace,
        Caller(b, "t1").namespace,
    }
    assert len(names) == 5
    assert Caller(a, "t1").namespace == Caller(a, "t1").namespace
    # No separator trick: an iss that embeds another's tenant is still another caller.
    assert (
        Caller(TrustedClient(iss='x", "t', keys={})).namespace
        != Caller(TrustedClient(iss="x", keys={}), "t").namespace
    )
