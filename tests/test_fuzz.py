"""Never a 500 for client input: random structural mutations of every fixture request."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import load_request, request_names, service_for

JUNK: list[Any] = [
    None,
    "",
    "x",
    "../..",
    "{{context.patientId}}",
    "\u0000\u202e",
    0,
    -1,
    1.5,
    10**30,
    True,
    [],
    [None],
    {},
    {"resourceType": "Bundle"},
    {"resourceType": "OperationOutcome"},
    {"resourceType": 5},
    {"entry": "nope"},
    ["MedicationRequest/1"],
    "x" * 5000,
]


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out.extend(_paths(item, (*path, key)))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out.extend(_paths(item, (*path, i)))
    return out


def _mutate(body: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    body = copy.deepcopy(body)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(body) if p]
        path = rng.choice(paths)
        parent: Any = body
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict) and rng.random() < 0.3:
            parent.pop(path[-1], None)
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(JUNK))
    return body


@pytest.mark.parametrize("name", request_names())
def test_mutated_requests_never_500(client: FlaskClient, name: str) -> None:
    rng = random.Random(name)
    original = load_request(name)
    for _ in range(80):
        body = _mutate(original, rng)
        resp = client.post(f"/cds-services/{service_for(original)}", json=body)
        assert resp.status_code in (200, 400, 404, 412), (resp.status_code, resp.get_json())
        assert resp.mimetype == "application/json"
