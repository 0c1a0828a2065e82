"""Property: a hostile value in any string or number field of any fixture request is never a 5xx
and never costs a card-log row.

Hypothesis picks a fixture request (``fixtures/fhir/requests`` and every clinical scenario),
one of its string or number leaves, and replaces it with random Unicode (lone surrogates, NUL,
right-to-left marks, non-characters), a long string, an extreme number written as JSON text
(``1e400``, ``-1e400``, ``-0``, ``5e-324``, a 5 000-digit integer, ``NaN``…) or a value of the
wrong type. The body is posted as raw text, so literals Python would not write survive. The
service answers 200 with cards — every one of them in the card log (written synchronously
here, so a failed row shows at once) — or a 4xx JSON OperationOutcome. On SQLite and
PostgreSQL (PostgreSQL refuses NUL in text, SQLite does not).

Budget: ``MAX_EXAMPLES`` per database, no per-example deadline (a slow database is not a
finding here); deterministic under CI=true.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cds_server.store import get_store
from tests.conftest import FIXTURES, service_for
from tests.store.conftest import HASH_KEY

MAX_EXAMPLES = 100 * int(os.environ.get("FUZZ_SCALE", "1"))
PROPERTY = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)  # fmt: skip

Path_ = tuple[str | int, ...]
SENTINEL = "@@hostile-leaf@@"


def _fixtures() -> list[tuple[str, str]]:
    files = sorted((FIXTURES / "requests").glob("*.json")) + sorted(
        (FIXTURES / "scenarios").glob("*.request.json")
    )
    return [(p.name, p.read_text()) for p in files]


def _leaves(value: Any, path: Path_ = ()) -> Iterator[tuple[Path_, str]]:
    """(path, "str" | "num") of every string and number leaf."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    elif isinstance(value, str):
        yield path, "str"
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, "num"


FIXTURE_TEXTS = _fixtures()
FIXTURE_TEXT = dict(FIXTURE_TEXTS)
LEAVES = {name: list(_leaves(json.loads(text))) for name, text in FIXTURE_TEXTS}
SERVICES = {name: service_for(json.loads(text)) for name, text in FIXTURE_TEXTS}

# JSON text of each replacement (so 1e400 stays 1e400 on the wire).
HOSTILE_UNICODE = st.text(
    alphabet=st.one_of(
        st.characters(),  # every code point, lone surrogates included
        st.sampled_from(
            ["\ud800", "\udfff", "\udbff", "\u0000", "\u202e", "\ufeff", "\uffff", "🩸", "İ"]
        ),
    ),
    max_size=30,
).map(json.dumps)  # ensure_ascii: surrogates written as their \\u escapes
LONE_SURROGATE = st.tuples(
    st.text(max_size=8),
    st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]),
    st.text(max_size=8),
).map(lambda parts: json.dumps("".join(parts)))
LONG_TEXT = st.integers(1_000, 70_000).map(lambda n: json.dumps("ab\u00e9" * (n // 3)))
EXTREME_NUMBERS = st.one_of(
    st.sampled_from(
        [
            "0", "-0", "0.0", "-0.0", "-1", "-1.5", "1e400", "-1e400", "1E+999", "1e-400",
            "5e-324", "1.7976931348623157e308", "-1.7976931348623157e308", "1e308", "1e-7",
            "123456789012345678901234567890", "9" * 5000, "-" + "9" * 5000, "NaN",
            "Infinity", "-Infinity", "2147483648", "-9223372036854775809",
        ]
    ),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
)  # fmt: skip
WRONG_TYPES = st.sampled_from(
    ["null", "true", "false", "[]", "{}", '""', '"12.5"', '"1e400"', "[1]", '{"value": 5}']
)
REPLACEMENT = st.one_of(HOSTILE_UNICODE, LONE_SURROGATE, LONG_TEXT, EXTREME_NUMBERS,
                        EXTREME_NUMBERS, WRONG_TYPES)  # fmt: skip


def hostile_case(name: str, path: Path_, replacement: str) -> tuple[str, Path_, str, str]:
    """(fixture name, leaf path, replacement JSON text, the whole request as JSON text)."""
    body = json.loads(FIXTURE_TEXT[name])
    parent: Any = body
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = SENTINEL
    return name, path, replacement, json.dumps(body).replace(json.dumps(SENTINEL), replacement, 1)


@st.composite
def hostile_request(draw: st.DrawFn) -> tuple[str, Path_, str, str]:
    name = draw(st.sampled_from(sorted(FIXTURE_TEXT)))
    leaves = LEAVES[name]
    # The call's own fields (hookInstance, context ids…) are few among thousands of FHIR
    # leaves but reach the store and the logs: a third of the examples go there.
    kind = draw(st.sampled_from(["num", "str", "call"]))
    if kind == "call":
        candidates = [p for p, _ in leaves if p[0] != "prefetch" and "draftOrders" not in p]
    else:
        candidates = [p for p, k in leaves if k == kind]
    path = draw(st.sampled_from(candidates or [p for p, _ in leaves]))
    return hostile_case(name, path, draw(REPLACEMENT))


# The faults of the attack run (issue 22), always tried first.
SIGN = "order-sign-rituximab.json"
DRAFT: Path_ = ("context", "draftOrders", "entry", 0, "resource")
RATE: Path_ = (*DRAFT, "dosageInstruction", 0, "doseAndRate", 0, "rateQuantity", "value")
BAG: Path_ = (*DRAFT, "dispenseRequest", "quantity", "value")
KNOWN_FAULTS = [
    hostile_case(SIGN, ("hookInstance",), json.dumps("\ud800")),
    hostile_case("patient-view-lymphoma.json", ("hookInstance",), json.dumps("\ud800")),
    hostile_case(SIGN, BAG, "0"),
    hostile_case(SIGN, BAG, "-0"),
    hostile_case(SIGN, RATE, "1e400"),
    hostile_case(SIGN, RATE, "-1e400"),
    hostile_case(SIGN, RATE, "9" * 5000),
    hostile_case(SIGN, ("hookInstance",), json.dumps("visit\u0000")),
]


@pytest.fixture
def sync_app(make_app: Callable[..., Flask], db_url: str) -> Iterator[Flask]:
    """The app on ``db_url`` writing the card log in the request (no background writer)."""
    app = make_app(
        DATABASE_URL=db_url,
        PATIENT_HASH_KEY=HASH_KEY,
        AUTH_REQUIRED=False,
        DEMO=True,
        CARD_LOG_BACKGROUND=False,
    )
    yield app
    get_store(app).close()


def _logged(engine: sa.Engine, uuids: list[str]) -> set[str]:
    with engine.connect() as connection:
        result = connection.execute(
            sa.text("SELECT card_uuid FROM card_log WHERE card_uuid IN :uuids").bindparams(
                sa.bindparam("uuids", expanding=True)
            ),
            {"uuids": uuids},
        )
        return {row[0] for row in result}


def _examples(test: Any) -> Any:
    for case in KNOWN_FAULTS:
        test = example(case=case)(test)
    return test


@PROPERTY
@given(case=hostile_request())
@_examples
def test_a_hostile_value_in_any_field_is_never_a_5xx_nor_a_lost_card(
    sync_app: Flask, raw: sa.Engine, case: tuple[str, Path_, str, str]
) -> None:
    name, path, replacement, text = case
    where = f"{name} {list(path)} = {replacement[:80]}"
    resp = sync_app.test_client().post(
        f"/cds-services/{SERVICES[name]}",
        data=text.encode("utf-8"),
        content_type="application/json",
    )
    assert resp.status_code < 500, (where, resp.get_data(as_text=True)[:500])
    assert resp.mimetype == "application/json", where
    payload = resp.get_json()
    if os.environ.get("FUZZ_STATS"):  # FUZZ_STATS=1 pytest -s: what the values gave
        print("STAT", resp.status_code, len(payload.get("cards", [])), where[:100])
    if resp.status_code != 200:
        assert 400 <= resp.status_code < 500, where
        assert payload["resourceType"] == "OperationOutcome", where
        assert payload["issue"][0]["details"]["coding"][0]["code"], where
        return
    uuids = [card["uuid"] for card in payload["cards"]]
    if uuids:
        assert _logged(raw, uuids) == set(uuids), where


def test_the_fixtures_cover_both_kinds_of_field() -> None:
    """Every fixture request has string and number leaves to mutate (the walk reaches them)."""
    assert len(FIXTURE_TEXTS) > 100
    for name, leaves in LEAVES.items():
        kinds = {k for _, k in leaves}
        assert "str" in kinds, name
    assert sum(1 for leaves in LEAVES.values() for _, k in leaves if k == "num") > 100


def test_a_fixture_request_unchanged_is_answered_and_logged(
    sync_app: Flask, raw: sa.Engine
) -> None:
    """The property's baseline: a fixture as it is gets cards, all in the card log."""
    text = (FIXTURES / "requests" / "order-sign-rituximab.json").read_text()
    resp = sync_app.test_client().post(
        f"/cds-services/{service_for(json.loads(text))}",
        data=text,
        content_type="application/json",
    )
    assert resp.status_code == 200
    uuids = [card["uuid"] for card in resp.get_json()["cards"]]
    assert uuids and _logged(raw, uuids) == set(uuids)
