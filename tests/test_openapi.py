"""GET /openapi.json: a valid OpenAPI 3 document that documents every route of the app."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from cds_server.cdshooks import protocol, services
from cds_server.web import openapi
from tests.conftest import load_request, service_for

# Routes that are not part of the machine API (pages for people, static files).
NOT_API = re.compile(r"^(/static/|/sandbox)")


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    return resp.get_json()  # type: ignore[no-any-return]


def test_is_a_valid_openapi_3_document(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"].startswith("3.")
    assert document["info"]["version"]


def _documented(app: Flask, document: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(routes of the app as 'METHOD /path', operations in the document)."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or NOT_API.match(rule.rule):
            continue
        paths = (
            [rule.rule.replace("<service_id>", sid) for sid in sorted(services.ids())]
            if "<service_id>" in rule.rule
            else [re.sub(r"<(\w+)>", r"{\1}", rule.rule)]  # /knowledge/drugs/{drug}.html
        )
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.update(f"{method} {path}" for path in paths)
    operations = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    return routes, operations


def test_documents_every_route_and_nothing_else(app: Flask, document: dict[str, Any]) -> None:
    routes, operations = _documented(app, document)
    assert routes - operations == set(), "routes missing from the OpenAPI document"
    assert operations - routes == set(), "documented operations the app does not serve"
    for sid in services.ids():
        assert f"POST /cds-services/{sid}" in operations
        assert f"POST /cds-services/{sid}/feedback" in operations
    assert "GET /cds-services" in operations


def test_every_operation_documents_json_errors(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            errors = [code for code in responses if code.startswith(("4", "5"))]
            assert "405" in errors, (method, path)
            for code in errors:
                ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/OperationOutcome", (method, path, code)


def test_request_bodies_are_typed_per_hook(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    for hook, context in protocol.CONTEXT_SCHEMAS.items():
        name = openapi._schema_name(hook)
        assert schemas[name]["properties"]["hook"]["enum"] == [hook]
        ref = schemas[name]["properties"]["context"]["$ref"].rsplit("/", 1)[-1]
        required = {n for n, f in context().fields.items() if f.required}
        assert set(schemas[ref]["required"]) == required
    for service_id, name in (
        ("infusion-safety-select", "OrderSelectRequest"),
        ("infusion-safety-sign", "OrderSignRequest"),
    ):
        operation = document["paths"][f"/cds-services/{service_id}"]["post"]
        ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref.rsplit("/", 1)[-1] == name
        assert "deprecated" not in operation
    old = document["paths"]["/cds-services/infusion-safety"]["post"]
    assert old["deprecated"] is True
    assert document["paths"]["/cds-services/infusion-safety/feedback"]["post"]["deprecated"]
    any_of = old["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert {r["$ref"].rsplit("/", 1)[-1] for r in any_of} == {
        "OrderSelectRequest",
        "OrderSignRequest",
    }


def test_response_schemas_carry_the_cds_hooks_rules(document: dict[str, Any]) -> None:
    card = document["components"]["schemas"]["Card"]
    assert set(card["required"]) >= {"summary", "indicator", "source"}
    assert card["properties"]["indicator"]["enum"] == list(protocol.INDICATORS)
    assert card["properties"]["summary"]["maxLength"] == protocol.SUMMARY_MAX - 1
    assert card["additionalProperties"] is False


def _validator(document: dict[str, Any], name: str) -> Any:
    from openapi_schema_validator import OAS30Validator

    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return OAS30Validator(schema)


@pytest.mark.parametrize("name", ["order-sign-rituximab", "patient-view-lymphoma"])
def test_real_requests_and_responses_match_the_document(
    client: FlaskClient, document: dict[str, Any], name: str
) -> None:
    body = load_request(name)
    request_schema = openapi._schema_name(body["hook"])
    assert list(_validator(document, request_schema).iter_errors(body)) == []
    resp = client.post(f"/cds-services/{service_for(body)}", json=body)
    assert resp.status_code == 200
    assert list(_validator(document, "Response").iter_errors(resp.get_json())) == []
    discovery = client.get("/cds-services").get_json()
    assert list(_validator(document, "Discovery").iter_errors(discovery)) == []


def test_error_bodies_match_the_document(client: FlaskClient, document: dict[str, Any]) -> None:
    validator = _validator(document, "OperationOutcome")
    for resp in (
        client.post("/cds-services/infusion-safety", data="{", content_type="application/json"),
        client.post("/cds-services/nope", json={}),
        client.get("/cds-services/infusion-safety"),
        client.post("/cds-services/infusion-safety/feedback", json={"feedback": []}),
    ):
        assert resp.status_code in (400, 404, 405)
        assert list(validator.iter_errors(resp.get_json())) == []


def test_openapi_is_get_only(client: FlaskClient) -> None:
    resp = client.post("/openapi.json", json={})
    assert resp.status_code == 405
    assert resp.get_json()["resourceType"] == "OperationOutcome"
