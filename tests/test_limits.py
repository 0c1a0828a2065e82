"""Request limits: body size (existing), JSON depth, draft orders, prefetch resources."""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from cds_server.web.limits import json_text_depth_exceeds
from tests.conftest import load_request

SIGN = "/cds-services/infusion-safety-sign"
FEEDBACK = "/cds-services/infusion-safety-sign/feedback"


def _code(resp: Any) -> str:
    return resp.get_json()["issue"][0]["details"]["coding"][0]["code"]


def _nest(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"x": value}
    return value


def json_depth_exceeds(value: Any, limit: int) -> bool:
    return json_text_depth_exceeds(json.dumps(value).encode(), limit)


def test_depth_counting() -> None:
    assert not json_depth_exceeds({"a": [1, {"b": 2}]}, 3)
    assert json_depth_exceeds({"a": [1, {"b": {}}]}, 3)
    assert not json_depth_exceeds(_nest(64), 64)
    assert json_depth_exceeds(_nest(65), 64)
    assert not json_depth_exceeds("scalar", 1)
    # Brackets, quotes and backslashes inside strings are not structure.
    assert not json_depth_exceeds({"a": "[[[{{{", "b": '\\"[[', "c": "\\"}, 1)
    assert json_depth_exceeds({"a": "]]]}}}", "b": [{"c": "\\"}]}, 2)


def test_the_fixtures_are_far_below_the_depth_limit() -> None:
    from tests.conftest import request_names

    for name in request_names():
        assert not json_depth_exceeds(load_request(name), 32), name


@pytest.mark.parametrize("path", [SIGN, FEEDBACK])
def test_too_deep_is_400(client: Any, path: str) -> None:
    body = load_request("order-sign-rituximab")
    body["extension"] = _nest(70)  # an ignored field still counts
    resp = client.post(path, json=body)
    assert resp.status_code == 400
    assert _code(resp) == "malformed-json"
    assert "nested deeper than 64 levels" in resp.get_data(as_text=True)


def test_depth_just_inside_the_limit_is_fine(client: Any) -> None:
    body = load_request("order-sign-rituximab")
    body["extension"] = _nest(60)
    assert client.post(SIGN, json=body).status_code == 200


def _with_drafts(n: int) -> dict[str, Any]:
    body = load_request("order-sign-rituximab")
    entries = body["context"]["draftOrders"]["entry"]
    body["context"]["draftOrders"]["entry"] = [copy.deepcopy(entries[0]) for _ in range(n)]
    for i, entry in enumerate(body["context"]["draftOrders"]["entry"]):
        entry["resource"]["id"] = f"draft-{i}"
    return body


def test_too_many_draft_orders_is_413(make_app: Callable[..., Flask]) -> None:
    client = make_app(MAX_DRAFT_ORDERS=5).test_client()
    assert client.post(SIGN, json=_with_drafts(5)).status_code == 200
    resp = client.post(SIGN, json=_with_drafts(6))
    assert resp.status_code == 413
    assert _code(resp) == "limit-exceeded"
    assert "context.draftOrders holds 6 orders; at most 5" in resp.get_data(as_text=True)
    # The array form of draftOrders counts the same way.
    body = _with_drafts(6)
    body["context"]["draftOrders"] = [
        e["resource"] for e in body["context"]["draftOrders"]["entry"]
    ]
    assert client.post(SIGN, json=body).status_code == 413


def test_too_many_prefetch_resources_is_413(make_app: Callable[..., Flask]) -> None:
    body = load_request("order-sign-rituximab")
    total = 0
    for value in body["prefetch"].values():
        if isinstance(value, dict):
            is_bundle = value.get("resourceType") == "Bundle"
            total += len(value.get("entry", [])) if is_bundle else 1
    assert (
        make_app(MAX_PREFETCH_RESOURCES=total).test_client().post(SIGN, json=body).status_code
        == 200
    )
    resp = make_app(MAX_PREFETCH_RESOURCES=total - 1).test_client().post(SIGN, json=body)
    assert resp.status_code == 413
    assert _code(resp) == "limit-exceeded"
    assert f"prefetch holds {total} resources; at most {total - 1}" in resp.get_data(as_text=True)


def test_default_limits_accept_real_requests(client: Any) -> None:
    from tests.conftest import request_names, service_for

    for name in request_names():
        body = load_request(name)
        assert client.post(f"/cds-services/{service_for(body)}", json=body).status_code in (
            200,
            412,
        ), name


def test_body_size_limit_also_applies_without_content_length(
    make_app: Callable[..., Flask],
) -> None:
    """A chunked body (no Content-Length, as a proxy may forward it) is cut at the limit."""
    client = make_app(MAX_CONTENT_LENGTH=1000).test_client()
    data = json.dumps({"hook": "order-sign", "pad": " " * 5000}).encode()
    resp = client.post(
        SIGN,
        input_stream=io.BytesIO(data),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert resp.status_code == 413
    assert _code(resp) == "payload-too-large"
