"""Property-based tests: FHIR-shaped variations inside otherwise valid hook requests.

Hypothesis takes real-looking MedicationRequests (coded, with a contained Medication, or
referencing a Medication elsewhere in the request), Medications and AllergyIntolerances and
varies them: fields dropped, values of the wrong type, unknown or known-drug codes, huge
strings, unicode (right-to-left marks, NUL, lone surrogates, emoji), deeply nested junk and
unknown keys. Whatever it builds, the service answers 200 with conformant cards
(``tests.conformance.check_response``) or a 4xx JSON OperationOutcome — never a 5xx — within
the example deadline, and logs nothing from the request.

Budget: ``MAX_EXAMPLES`` per test and a per-example deadline; deterministic under CI=true.
"""

from __future__ import annotations

import copy
import logging
import os
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conformance import check_response
from tests.conftest import load_request
from tests.loghygiene import assert_clean_logs

# FUZZ_SCALE=20 multiplies the budget for a deeper local hunt (CI runs the default).
MAX_EXAMPLES = 60 * int(os.environ.get("FUZZ_SCALE", "1"))
PROPERTY = settings(
    max_examples=MAX_EXAMPLES,
    deadline=timedelta(seconds=5),  # a pathological input must not make one request slow
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
# Drugs the knowledge recognises (so variations reach the rules), and codes it does not.
KNOWN_CODES = ("121191", "40048", "56946", "974779", "2105824", "1442693", "72962", "3002")
SYSTEMS = (RXNORM, "http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.69", "", "x:y")

_sign = load_request("order-sign-rituximab")
_contained = load_request("order-sign-contained-medication")
_reaction = load_request("patient-view-prior-reaction")
MR = _sign["context"]["draftOrders"]["entry"][0]["resource"]
MR_CONTAINED = _contained["context"]["draftOrders"]["entry"][0]["resource"]
MEDICATION = MR_CONTAINED["contained"][0]
ALLERGY = next(
    e["resource"]
    for e in load_request("patient-view-prior-reaction")["prefetch"]["allergies"]["entry"]
    if e["resource"]["resourceType"] == "AllergyIntolerance"
)

# -- junk ----------------------------------------------------------------------------------

UNICODE = st.text(
    alphabet=st.one_of(
        st.characters(),
        st.sampled_from(["\u202e", "\u0000", "\ud800", "\udfff", "\ufeff", "🩸", "ß", "İ"]),
    ),
    min_size=1,
    max_size=40,
)
HUGE = st.integers(min_value=5_000, max_value=300_000).map(lambda n: "x" * n)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)


def _nest(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"n": value}
    return value


# Mostly within the service's nesting limit (so the rest of the request is still read),
# sometimes far beyond it.
DEEP = st.one_of(st.integers(5, 40), st.integers(41, 400)).map(_nest)
JUNK = st.sampled_from(
    [
        SCALARS,
        SCALARS,
        SCALARS,
        st.lists(SCALARS, max_size=3),
        st.dictionaries(st.text(max_size=8), SCALARS, max_size=3),
        UNICODE,
        UNICODE,
        HUGE,
        DEEP,
    ]
).flatmap(lambda strategy: strategy)
CODES = st.one_of(st.sampled_from(KNOWN_CODES), st.text(min_size=1, max_size=12), UNICODE)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for name, item in value.items():
            out += _paths(item, (*path, name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, (*path, index))
    return out


@st.composite
def vary(
    draw: st.DrawFn, value: dict[str, Any], most: int = 4, keep: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``value`` with up to ``most`` of its elements dropped, retyped, recoded, enlarged,
    nested or joined by unknown ones (few enough that the rules still see the resource).
    Top-level elements in ``keep`` are left alone."""
    out = copy.deepcopy(value)
    kept = {"resourceType", *keep}
    for _ in range(draw(st.integers(min_value=0, max_value=most))):
        path = draw(st.sampled_from([p for p in _paths(out) if p and p[0] not in kept]))
        parent: Any = out
        for step in path[:-1]:
            parent = parent[step]
        last, old = path[-1], parent[path[-1]]
        kind = draw(st.sampled_from(["drop", "junk", "change", "change", "unknown"]))
        if kind == "drop" and isinstance(parent, dict):
            del parent[last]
        elif kind == "unknown" and isinstance(old, dict):
            old[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
        elif kind == "change" and isinstance(old, str):
            name = next((p for p in reversed(path) if isinstance(p, str)), "")
            strategies = {"code": CODES, "system": st.sampled_from(SYSTEMS)}
            parent[last] = draw(strategies.get(name, st.one_of(UNICODE, HUGE)))
        elif kind == "change" and isinstance(old, int | float) and not isinstance(old, bool):
            parent[last] = draw(
                st.one_of(st.integers(-(10**20), 10**20), st.floats(), st.text(max_size=5))
            )
        else:
            parent[last] = draw(JUNK)  # wrong type or shape for this element
    return out


@st.composite
def draft_order(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A varied draft MedicationRequest and the extra draft-Bundle entries it refers to."""
    shape = draw(st.sampled_from(["coded", "contained", "referenced"]))
    extra: list[dict[str, Any]] = []
    if shape == "coded":
        base = copy.deepcopy(MR)
        base["medicationCodeableConcept"]["coding"][0]["code"] = draw(CODES)
    elif shape == "contained":
        base = copy.deepcopy(MR_CONTAINED)
        base["contained"] = [draw(vary(MEDICATION))]
    else:
        base = copy.deepcopy(MR)
        del base["medicationCodeableConcept"]
        base["medicationReference"] = {"reference": "Medication/med-fuzz"}
        medication = draw(vary({**MEDICATION, "id": "med-fuzz"}))
        extra.append({"resource": medication})
    # A draft order's id is kept: without one, the rate suggestion is an "update" of a
    # resource without an id (reported to the render owners; see docs/robustness.md).
    return draw(vary(base, keep=("id",))), extra


def _post(client: FlaskClient, path: str, body: dict[str, Any]) -> None:
    resp = client.post(path, json=body)
    assert resp.status_code < 500, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "application/json"
    payload = resp.get_json()
    if os.environ.get("FUZZ_STATS"):  # FUZZ_STATS=1 pytest -s: what the variations gave
        print("STAT", resp.status_code, len(payload.get("cards", [None])))
    if resp.status_code == 200:
        assert check_response(payload) == [], check_response(payload)[:5]
    else:
        assert resp.status_code in (400, 413), payload
        assert payload["resourceType"] == "OperationOutcome"
        assert payload["issue"][0]["details"]["coding"][0]["code"]


@pytest.fixture
def fuzz_client(make_app: Any) -> FlaskClient:
    app: Flask = make_app()
    return app.test_client()


@PROPERTY
@given(
    orders=st.lists(draft_order(), min_size=1, max_size=3),
    history=st.lists(vary(MR), max_size=3),
    allergies=st.lists(vary(ALLERGY), max_size=3),
    hook=st.sampled_from(["order-sign", "order-select"]),
)
def test_varied_orders_history_and_allergies_never_crash(
    fuzz_client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    orders: list[tuple[dict[str, Any], list[dict[str, Any]]]],
    history: list[dict[str, Any]],
    allergies: list[dict[str, Any]],
    hook: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = load_request("order-sign-rituximab")
    body["hook"] = hook
    entries = []
    for order, extra in orders:
        entries += [{"resource": order}, *extra]
    body["context"]["draftOrders"]["entry"] = entries
    if hook == "order-select":
        ids = [o.get("id") for o, _ in orders]
        body["context"]["selections"] = [
            f"MedicationRequest/{i}" for i in ids if isinstance(i, str) and i
        ] or ["MedicationRequest/none"]
    body["prefetch"]["medications"]["entry"] = body["prefetch"]["medications"].get("entry", []) + [
        {"resource": r} for r in history
    ]
    body["prefetch"]["allergies"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in allergies],
    }
    _post(fuzz_client, "/cds-services/infusion-safety", body)
    assert_clean_logs(caplog)


@PROPERTY
@given(
    history=st.lists(st.one_of(vary(MR), vary(MR_CONTAINED)), min_size=1, max_size=4),
    medications=st.lists(vary({**MEDICATION, "id": "med-fuzz"}), max_size=2),
    allergies=st.lists(vary(ALLERGY), min_size=1, max_size=3),
)
def test_varied_patient_view_never_crashes(
    fuzz_client: FlaskClient,
    caplog: pytest.LogCaptureFixture,
    history: list[dict[str, Any]],
    medications: list[dict[str, Any]],
    allergies: list[dict[str, Any]],
) -> None:
    caplog.set_level(logging.DEBUG)
    body = copy.deepcopy(_reaction)
    body["prefetch"]["medications"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in (*history, *medications)],
    }
    body["prefetch"]["allergies"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in allergies],
    }
    _post(fuzz_client, "/cds-services/infusion-risk-summary", body)
    assert_clean_logs(caplog)


def test_the_variations_reach_the_rules(fuzz_client: FlaskClient) -> None:
    """The unvaried bases give cards: the properties above start from meaningful requests."""
    body = load_request("order-sign-rituximab")
    assert fuzz_client.post("/cds-services/infusion-safety", json=body).get_json()["cards"]
    assert fuzz_client.post(
        "/cds-services/infusion-risk-summary", json=copy.deepcopy(_reaction)
    ).get_json()["cards"]


def test_nulls_in_a_draft_order_are_not_echoed(fuzz_client: FlaskClient) -> None:
    """Found by the properties: an update action returned the client's draft as received,
    ``null`` and empty elements included (CDS Hooks and FHIR JSON allow neither)."""
    body = load_request("order-sign-rituximab")
    draft = body["context"]["draftOrders"]["entry"][0]["resource"]
    draft.update(category=None, note=[], groupIdentifier={}, _priority=None)
    payload = fuzz_client.post("/cds-services/infusion-safety", json=body).get_json()
    assert check_response(payload) == []
    updates = [
        a["resource"]
        for c in payload["cards"]
        for s in c.get("suggestions", [])
        for a in s["actions"]
        if a["type"] == "update"
    ]
    assert updates, "the fixture's rate is above the first-infusion start rate"
    for resource in updates:
        assert not {"category", "note", "groupIdentifier", "_priority"} & set(resource)
        assert resource["id"] == draft["id"]
