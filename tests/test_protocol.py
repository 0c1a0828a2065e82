"""Wire schemas: what is loaded from a request and what is written in a response."""

from __future__ import annotations

from typing import Any

import pytest

from cds_server.cdshooks import protocol
from cds_server.cdshooks.errors import InvalidRequest, PrefetchUnavailable
from tests.conftest import TOKEN, load_request


def test_load_hook_request_keeps_wire_names_and_hides_the_token(fhir_auth: Any) -> None:
    body = load_request("order-select-rituximab")
    body.update(fhirServer="https://ehr.example.org/fhir", fhirAuthorization=fhir_auth)
    req = protocol.load_hook_request(body)
    assert req.hook == "order-select"
    assert req.context["patientId"] == "pat-lym-001"
    assert req.context["selections"] == ["MedicationRequest/mr-001-rituximab-c1"]
    assert req.fhir_authorization is not None
    assert req.fhir_authorization.access_token == TOKEN
    assert TOKEN not in repr(req)
    assert "pat-lym-001" not in repr(req)


@pytest.mark.parametrize(
    ("change", "ok"),
    [
        ({"token_type": "bearer"}, True),
        ({"access_token": ""}, True),
        ({"patient": "pat-lym-001"}, True),
        ({"expires_in": "30"}, False),
        ({"expires_in": -1}, False),
        ({"scope": None}, False),
        ({"access_token": "eyJhbGciOi.J9-_~+/="}, True),
        ({"access_token": "abc\ndef"}, False),  # would split the HTTP header
        ({"access_token": "abc\r"}, False),
        ({"access_token": " leading"}, False),
        ({"access_token": "tøken"}, False),  # not ASCII: cannot go in a header as is
        ({"access_token": "abc\x00"}, False),
    ],
)
def test_fhir_authorization_fields(fhir_auth: Any, change: dict[str, Any], ok: bool) -> None:
    body = load_request("order-sign-rituximab")
    body.update(
        fhirServer="https://ehr.example.org/fhir", fhirAuthorization={**fhir_auth, **change}
    )
    if ok:
        protocol.load_hook_request(body)
    else:
        with pytest.raises(InvalidRequest) as err:
            protocol.load_hook_request(body)
        assert any(k.startswith("fhirAuthorization.") for k in err.value.fields)


def test_null_prefetch_object_means_no_prefetch() -> None:
    body = load_request("order-sign-rituximab")
    body["prefetch"] = None
    assert protocol.load_hook_request(body).prefetch is None


def test_dump_response_drops_null_and_empty_optionals() -> None:
    card = {
        "uuid": "u",
        "summary": "s",
        "indicator": "info",
        "detail": "",
        "source": {"label": "L", "url": None, "topic": {}},
        "suggestions": [],
        "links": [{"label": "l", "url": "https://x.org", "type": "absolute", "appContext": None}],
        "overrideReasons": None,
        "internal": "not a card field",
    }
    out = protocol.dump_response([card])
    assert out == {
        "cards": [
            {
                "uuid": "u",
                "summary": "s",
                "indicator": "info",
                "source": {"label": "L"},
                "links": [{"label": "l", "url": "https://x.org", "type": "absolute"}],
            }
        ]
    }


def test_dump_response_keeps_empty_cards_and_false_booleans() -> None:
    assert protocol.dump_response([]) == {"cards": []}
    card = {
        "summary": "s",
        "indicator": "info",
        "source": {"label": "L"},
        "suggestions": [{"label": "x", "uuid": "u", "isRecommended": False}],
        "selectionBehavior": "any",
    }
    out = protocol.dump_response(
        [card], [{"type": "delete", "description": "d", "resourceId": "X/1"}]
    )
    assert out["cards"][0]["suggestions"][0]["isRecommended"] is False
    assert out["systemActions"] == [{"type": "delete", "description": "d", "resourceId": "X/1"}]


def test_error_body_is_an_operation_outcome() -> None:
    body = protocol.error_body(PrefetchUnavailable(["medications"], "no fhirServer was sent"))
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "incomplete"
    assert body["issue"][0]["details"]["coding"] == [
        {"system": protocol.ERROR_SYSTEM, "code": "prefetch-unavailable"}
    ]


def test_shared_request_schemas_give_each_thread_its_own_result() -> None:
    """The request schemas are built once and shared: concurrent loads of good and bad
    bodies each get exactly what a load on its own gives."""
    from concurrent.futures import ThreadPoolExecutor

    good = [load_request(n) for n in ("order-sign-rituximab", "order-select-rituximab")]
    bad = [{**good[0], "hookInstance": 5}, {**good[1], "context": {"userId": 1}}]
    bodies = (good + bad) * 50

    def outcome(body: dict[str, object]) -> object:
        try:
            r = protocol.load_hook_request(body)
            return (r.hook, r.hook_instance, sorted(r.context))
        except InvalidRequest as exc:
            return exc.message

    alone = [outcome(b) for b in bodies]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(outcome, bodies))
    assert together == alone
    assert len(set(map(str, alone))) == 4
