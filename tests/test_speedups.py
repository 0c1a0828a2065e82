"""Speed-ups that must not change behaviour: the plain fast path (``plainfhir.py``)
parses exactly as the R4B models do, and the recognition indexes find what a full scan finds.

For every MedicationRequest, Medication, AllergyIntolerance, Patient and Observation in the
fixtures and the benchmark data, and for thousands of seeded mutations of them (deleted,
emptied, nulled, retyped and malformed elements, unknown properties, doubled choice elements,
odd dates and numbers):

* anything the plain check accepts, the R4B model accepts too;
* ``parse_*(plain=True)`` and ``parse_*(plain=False)`` give equal results and warnings.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest

from cds_server import plainfhir as fastpath
from cds_server.fhirdata import parse

ROOT = Path(__file__).resolve().parents[1]
PARSED = fastpath.TYPES - {"ServiceRequest"}  # checked and read; ServiceRequest: only checked
SOURCES = sorted(
    [*(ROOT / "fixtures" / "fhir").rglob("*.json"), *(ROOT / "bench" / "data").glob("*.json")]
)


def _walk(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("resourceType") in PARSED:
            yield value
        for sub in value.values():
            yield from _walk(sub)
    elif isinstance(value, list):
        for sub in value:
            yield from _walk(sub)


def _collect() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in SOURCES:
        for res in _walk(json.loads(path.read_text(encoding="utf-8"))):
            found.setdefault(json.dumps(res, sort_keys=True), res)
    resources = [r for r in found.values() if r["resourceType"] in PARSED]
    log = parse.ParseLog()
    meds = {
        f"Medication/{r['id']}": parse.parse_medication(r, "m", log)
        for r in found.values()
        if r["resourceType"] == "Medication" and "id" in r
    }
    return resources, meds


RESOURCES, MEDICATIONS = _collect()


def _plain_data(value: Any) -> Any:
    """A comparable form: dataclasses as tuples, dates and datetimes in ISO form."""
    if is_dataclass(value) and not isinstance(value, type):
        return tuple(
            (f.name, _plain_data(getattr(value, f.name))) for f in fields(value) if f.compare
        )
    if isinstance(value, datetime | date):
        return (type(value).__name__, value.isoformat())
    if isinstance(value, tuple | list):
        return tuple(_plain_data(v) for v in value)
    return value


def _parse(resource: Any, plain: bool) -> tuple[Any, list[str]]:
    log = parse.ParseLog()
    try:
        if resource.get("resourceType") == "Medication":
            med = parse.parse_medication(resource, "r #0", log, plain=plain)
            out = None if med is None else (med.get("id"), parse._medication_codes(med))
        elif resource.get("resourceType") == "Patient":
            out = parse.birth_date([resource], log, plain=plain)
        elif resource.get("resourceType") == "Observation":
            out = parse.latest_weight([resource], log, plain=plain)
        elif resource.get("resourceType") == "AllergyIntolerance":
            out = parse.parse_allergy(resource, "r #0", log, plain=plain)
        else:
            out = parse.parse_medication_request(
                resource, "r #0", log, MEDICATIONS, is_draft=True, plain=plain
            )
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        return ("raised", type(exc).__name__), log.warnings
    return _plain_data(out), log.warnings


def _assert_same(resource: dict[str, Any]) -> bool:
    """Both paths agree; returns whether the plain path was taken."""
    repaired = parse._repair(resource)
    taken = fastpath.is_plain(str(resource.get("resourceType")), repaired)
    if taken:
        model = parse._MODELS[resource["resourceType"]]
        model.model_validate(repaired)  # plain ⇒ valid R4B: must not raise
    assert _parse(resource, plain=True) == _parse(resource, plain=False), resource
    return taken


def test_fixtures_parse_the_same_and_mostly_take_the_plain_path() -> None:
    assert len(RESOURCES) > 150
    taken = [_assert_same(r) for r in RESOURCES]
    assert sum(taken) >= 0.8 * len(taken)


# -- mutations ---------------------------------------------------------------------------

_ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    "\x0b",
    "a  b",
    " lead",
    "trail ",
    "x\ty",
    "ü",
    "é code",
    True,
    False,
    0,
    -1,
    1.5,
    10**16,
    10**400,
    float("nan"),
    float("inf"),
    [],
    {},
    [None],
    [""],
    [{}],
    {"x": 1},
    "2026-02-30",
    "2026-11",
    "2026",
    "2026-11-21T10:00",
    "2026-11-21T10:00:00",
    "2026-11-21T24:00:00Z",
    "2026-11-21T10:00:00+14:30",
    "2026-11-21T23:59:60Z",
    "2026-11-21T10:00:00.1234567Z",
    "2026-11-21T10:00:00.5-05:00",
    "2026-11-21",
    "21/11/2026",
    "Medication/x",
    "#med",
    "http://a b",
    "urn:oid:1.2",
    "a" * 65,
    "100",
    "1e3",
]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            yield from _paths(sub, (*prefix, i))


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


def _mutate(resource: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    for _ in range(rnd.choice((1, 1, 2))):
        path = rnd.choice([p for p in _paths(out) if p])
        parent, key = _get(out, path[:-1]), path[-1]
        action = rnd.randrange(7)
        if action == 0 and isinstance(parent, dict):
            del parent[key]
        elif action == 1 and isinstance(parent, dict):
            parent[rnd.choice(("extra", "_status", "fhir_comments", "extension", "contained"))] = (
                rnd.choice(_ODD_VALUES)
            )
        elif action == 2:
            parent[key] = [parent[key]] if not isinstance(parent[key], list) else parent[key][0:1]
        elif action == 3 and isinstance(parent, dict) and "medicationCodeableConcept" in parent:
            parent["medicationReference"] = {"reference": "Medication/bench-med-mvasi-400"}
        elif action == 3 and isinstance(parent, dict) and "itemCodeableConcept" in parent:
            parent["itemReference"] = {"display": "other"}
        elif action == 4 and isinstance(parent, dict) and "doseQuantity" in parent:
            parent[rnd.choice(("doseRange", "rateRatio", "rateRange"))] = {
                "low": parent["doseQuantity"]
            }
        else:
            parent[key] = copy.deepcopy(rnd.choice(_ODD_VALUES))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_mutations_parse_the_same(seed: int) -> None:
    rnd = random.Random(seed)
    taken = 0
    for _ in range(1000):
        resource = _mutate(rnd.choice(RESOURCES), rnd)
        taken += _assert_same(resource)
    # Both outcomes are exercised: mutants that stay plain and mutants that fall back.
    assert 100 < taken < 900


def _suggested(kb: Any) -> list[dict[str, Any]]:
    """Every resource the service suggests for the fixture requests (scenarios included)."""
    from cds_server import pipeline
    from tests.conftest import FIXTURES, service_for

    out: list[dict[str, Any]] = []
    for path in sorted(FIXTURES.rglob("*.json")):
        if "clients" in path.relative_to(FIXTURES).parts:
            # Vendor-shaped drafts (Epic's dose extensions) are echoed in update suggestions
            # with elements the fast-path check does not know: they take the R4B path.
            continue
        body = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(body, dict) or "hookInstance" not in body:
            continue
        response = pipeline.evaluate(body, service_id=service_for(body), kb=kb)
        for card in response["cards"]:
            for suggestion in card.get("suggestions", ()):
                out += [a["resource"] for a in suggestion["actions"] if "resource" in a]
    return out


@pytest.mark.parametrize("rtype", ["ServiceRequest", "MedicationRequest"])
def test_suggested_resources_are_plain_and_plain_implies_valid(kb: Any, rtype: str) -> None:
    """The check of suggested resources: never plain unless the R4B model accepts it."""
    model = {"ServiceRequest": ServiceRequest, "MedicationRequest": MedicationRequest}[rtype]
    suggested = [r for r in _suggested(kb) if r["resourceType"] == rtype]
    assert len(suggested) >= 3
    assert all(fastpath.is_plain(rtype, r) for r in suggested)  # ours take the fast path
    rnd, taken = random.Random(7), 0
    for _ in range(1000):
        mutant = _mutate(rnd.choice(suggested), rnd)
        if fastpath.is_plain(rtype, mutant):
            taken += 1
            model.model_validate(mutant)  # must not raise
    assert 100 < taken < 900


def test_plain_check_accepts_plain_json_and_rejects_the_rest() -> None:
    resource = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"coding": [{"system": "s", "code": "1"}], "text": "x"},
        "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg"}}]}],
    }
    assert fastpath.is_plain("MedicationRequest", resource)
    assert not fastpath.is_plain("MedicationRequest", {**resource, "status": ""})
    assert not fastpath.is_plain("MedicationRequest", {**resource, "extra": 1})
    del resource["subject"]  # required
    assert not fastpath.is_plain("MedicationRequest", resource)
    assert not fastpath.is_plain("ServiceRequest", {"resourceType": "ServiceRequest"})
    assert not fastpath.is_plain("Encounter", {"resourceType": "Encounter"})  # no check
    assert fastpath.is_plain("Patient", {"resourceType": "Patient", "birthDate": "1962-03-08"})
    assert not fastpath.is_plain("Patient", {"resourceType": "Patient", "birthDate": "1962-03"})


def test_checked_json_is_the_same_from_both_paths() -> None:
    """The model path hands the flatteners the model's JSON form, shaped like the input."""
    for resource in RESOURCES:
        plain = parse.checked(resource, "r", parse.ParseLog())
        model = parse.checked(resource, "r", parse.ParseLog(), plain=False)
        if plain is not None and fastpath.is_plain(resource["resourceType"], plain):
            assert model is not None
            assert model["resourceType"] == plain["resourceType"]
            assert model.get("id") == plain.get("id")
            assert set(model) <= set(plain) | {"resourceType"}


def test_a_decimal_beyond_float_range_is_unreadable_not_infinite() -> None:
    """The model accepts 1e400 mL; the flattener ignores it and reads the bag from the text."""
    resource = {
        "resourceType": "MedicationRequest",
        "id": "big",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"text": "rituximab 500 mg in 500 mL NS"},
        "dispenseRequest": {"quantity": {"value": 10**400, "unit": "mL"}},
        "dosageInstruction": [
            {
                "doseAndRate": [
                    {
                        "rateRatio": {
                            "numerator": {"value": 10**400, "unit": "mg"},
                            "denominator": {"value": 1, "unit": "h"},
                        }
                    }
                ]
            }
        ],
    }
    for plain in (True, False):
        order = parse.parse_medication_request(resource, "r", parse.ParseLog(), plain=plain)
        assert order is not None
        assert order.volume is not None and order.volume.value == 500.0
        assert order.rate is None
        assert {u.path for u in order.unread} == {
            "dispenseRequest.quantity.value",
            "dosageInstruction[0].doseAndRate[0].rateRatio.numerator.value",
        }


# -- recognition: the first-token index finds what the full scan found -------------------


def _scan_text_hits(rec: Any, kinds: Any, texts: Any) -> list[Any]:
    """The original algorithm: every phrase of every kind against every text."""
    from cds_server import recognition as r

    hits = []
    vetoed: dict[Any, bool] = {}
    for kind in kinds:
        for phrase in rec._phrases[kind]:
            key = (kind, phrase.target)
            if key not in vetoed:
                vetoed[key] = rec._vetoed(kind, phrase.target, texts)
            if vetoed[key]:
                continue
            for i, tokens in enumerate(texts):
                start = r._find(tokens, phrase.tokens)
                if start >= 0:
                    hits.append(r._Hit(phrase, i, start, tokens == phrase.tokens))
    kept = [h for h in hits if not any(h.inside(o) for o in hits)]
    return sorted(kept, key=r._Hit.sort_key)


def test_indexed_text_hits_equal_the_full_scan(kb: Any) -> None:
    from cds_server import recognition as r

    rec = r.Recogniser(kb)
    names = sorted(
        {" ".join(p.tokens) for phrases in rec._phrases.values() for p in phrases}
        | {" ".join(t) for terms in rec._excludes.values() for t in terms}
    )
    words = sorted({w for n in names for w in n.split()} | {"and", "mg", "iv", "in", "250"})
    rnd = random.Random(7)
    kinds_options = [("drug",), ("agent",), ("drug", "class"), ("drug", "agent", "class")]
    for _ in range(1500):
        texts = [
            rnd.choice(names)
            if rnd.random() < 0.5
            else " ".join(rnd.choice(words) for _ in range(rnd.randint(1, 8)))
            for _ in range(rnd.randint(1, 4))
        ]
        tokens = r._normalised(texts)
        for kinds in kinds_options:
            assert rec._text_hits(kinds, tokens) == _scan_text_hits(rec, kinds, tokens), texts


def test_agents_with_known_drugs_equal_agents_recognised_again(kb: Any) -> None:
    from cds_server import recognition as r

    body = json.loads((ROOT / "bench" / "data" / "patient-view.json").read_text())
    log = parse.ParseLog()
    orders = [
        o
        for e in body["prefetch"]["medications"]["entry"]
        if e["resource"]["resourceType"] == "MedicationRequest"
        for o in [parse.parse_medication_request(e["resource"], "m", log, MEDICATIONS)]
        if o is not None
    ]
    drugs = r.recognise_orders(orders, kb)
    assert drugs and r.recognise_agents(orders, kb)
    assert r.recognise_agents(orders, kb, drugs=drugs) == r.recognise_agents(orders, kb)


def test_memoised_order_matching_equals_matching_afresh(kb: Any) -> None:
    """Every fixture order, matched through the memo twice, as a fresh recogniser matches it
    without the memo; an order too large to remember is matched without it."""
    from dataclasses import replace

    from cds_server import recognition as r

    log = parse.ParseLog()
    orders = [
        o
        for res in RESOURCES
        if res.get("resourceType") == "MedicationRequest"
        for o in [parse.parse_medication_request(res, "m", log, MEDICATIONS)]
        if o is not None
    ]
    assert len(orders) > 100
    memo, fresh = r.Recogniser(kb), r.Recogniser(kb)
    for order in orders * 2:
        key = (order.codings, order.ingredient_codings, order.texts, order.route)
        assert memo.match_order(order) == fresh._match_order_key(key)
        assert memo.match_agents(order) == fresh._match_agents_key(key[:3])
    assert memo._order_memo.cache_info().hits >= len(orders)
    known = next(o for o in orders if fresh.match_order(o) is not None)
    padded = replace(known, texts=(*known.texts, "x" * r.MEMO_TEXT_CHARS))
    assert not r._fits_memo(r._order_key(padded))
    before = memo._order_memo.cache_info().currsize
    assert memo.match_order(padded) == fresh._match_order_key(
        (padded.codings, padded.ingredient_codings, padded.texts, padded.route)
    )
    assert memo._order_memo.cache_info().currsize == before


# -- history orders left unread: exactly those no rule could use -------------------------


def _requests_with_history() -> list[dict[str, Any]]:
    from tests.conftest import FIXTURES

    bodies = []
    for path in [
        *sorted(FIXTURES.rglob("*.json")),
        *sorted((ROOT / "bench" / "data").glob("*.json")),
    ]:
        body = json.loads(path.read_text(encoding="utf-8"))
        prefetch = body.get("prefetch") if isinstance(body, dict) else None
        if isinstance(prefetch, dict) and isinstance(prefetch.get("medications"), dict):
            bodies.append(body)
    return bodies


def _unchecked_agrees(resource: dict[str, Any], rec: Any) -> str:
    """The unchecked read names the medication as the full parse does, and an order it
    leaves unread is, parsed in full, neither a drug nor an agent in force (or unreadable)."""
    from cds_server.reasoning.dosing import IN_FORCE
    from cds_server.reasoning.orders import history_order_read

    terms = parse.unchecked_medication_terms(resource, MEDICATIONS)
    order = _parse_order(resource)
    if terms is None:
        return "parsed"
    if order is not None:
        assert (order.codings, order.ingredient_codings, order.texts) == terms, resource
    if history_order_read(rec.medicine_kind(*terms), resource.get("status")):
        return "kept"
    if order is not None:
        assert rec.match_order(order) is None, resource
        assert not rec.match_agents(order) or order.status not in IN_FORCE, resource
        return "unread agent" if rec.match_agents(order) else "unread"
    return "unread"


def _parse_order(resource: dict[str, Any]) -> Any:
    try:
        return parse.parse_medication_request(resource, "r", parse.ParseLog(), MEDICATIONS)
    except parse.MODEL_FAILURES:
        return None


def test_unread_history_orders_are_exactly_those_no_rule_uses(kb: Any) -> None:
    from cds_server import recognition

    rec = recognition.recogniser_for(kb)
    orders = [r for r in RESOURCES if r["resourceType"] == "MedicationRequest"]
    outcomes = [_unchecked_agrees(r, rec) for r in orders]
    assert {"parsed", "kept", "unread", "unread agent"} <= set(outcomes)
    rnd = random.Random(11)
    mutated = [_unchecked_agrees(_mutate(rnd.choice(orders), rnd), rec) for _ in range(2000)]
    assert {"parsed", "kept", "unread", "unread agent"} <= set(mutated)


@pytest.mark.parametrize(
    ("medication", "warning"),
    [
        (
            {"medicationReference": {"reference": "Medication/gone", "display": "ondansetron"}},
            "medicationReference not resolved",
        ),
        ({}, "skipped: invalid FHIR R4"),  # medication[x] is required
        ({"medicationCodeableConcept": {}}, None),
        (
            {"medicationCodeableConcept": {"coding": {"code": "1"}, "text": "ondansetron"}},
            "invalid",
        ),
    ],
)
def test_an_order_whose_medicine_cannot_be_told_is_read_in_full(
    kb: Any, medication: dict[str, Any], warning: str | None
) -> None:
    from cds_server import recognition
    from cds_server.fhirdata.prefetch import KeyData
    from cds_server.fhirdata.record import build_record
    from cds_server.reasoning.orders import history_order_read

    order = {
        "resourceType": "MedicationRequest",
        "id": "h1",
        "status": "completed",
        "intent": "order",
        "subject": {"reference": "Patient/p"},
        **medication,
    }
    plain = {**order, "medicationCodeableConcept": {"text": "ondansetron"}}
    rec = recognition.recogniser_for(kb)
    made = [
        build_record(
            patient_id="p",
            medications=KeyData((res,), True, "prefetch"),
            reads_history_order=lambda terms, status: history_order_read(
                rec.medicine_kind(*terms), status
            ),
        )
        for res in (order, plain)
    ]
    assert made[1].history_unread == 1  # ondansetron: no rule is about it
    assert made[0].history_unread == 0
    if warning:
        assert any(warning in w for w in made[0].warnings), made[0].warnings


def test_terms_read_before_the_check_are_reused_only_for_the_same_elements() -> None:
    bogus = ((), (), ("not what the order says",))
    plain = next(r for r in RESOURCES if r["resourceType"] == "MedicationRequest" and "id" in r)
    assert fastpath.is_plain("MedicationRequest", plain)
    terms = parse.unchecked_medication_terms(plain, MEDICATIONS)
    fresh = _parse_order(plain)
    reused = parse.parse_medication_request(plain, "r", parse.ParseLog(), MEDICATIONS, terms=terms)
    assert reused == fresh
    # Through the model (an unknown property), the elements are the model's copies: not reused.
    odd = {**plain, "_resolvedMedication": {"x": 1}}
    assert not fastpath.is_plain("MedicationRequest", odd)
    read = parse.parse_medication_request(odd, "r", parse.ParseLog(), MEDICATIONS, terms=bogus)
    assert read is not None and read.texts != bogus[2]
    assert read.texts == fresh.texts


def test_leaving_orders_unread_changes_no_card(kb: Any) -> None:
    """Every fixture request with its history, evaluated with and without the skip."""
    from unittest import mock

    from cds_server import pipeline
    from cds_server.fhirdata import record
    from cds_server.reasoning.orders import ordered_agents
    from tests.conftest import service_for

    real = record.build_record

    def reading_all(**kw: Any) -> Any:
        return real(**{**kw, "reads_history_order": None})

    unread = 0
    for body in _requests_with_history():
        service, now = service_for(body), datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
        fast = pipeline.run(body, service_id=service, kb=kb, now=now, new_uuid=lambda: "u")
        with mock.patch.object(record, "build_record", reading_all):
            full = pipeline.run(body, service_id=service, kb=kb, now=now, new_uuid=lambda: "u")
        assert full.record.history_unread == 0
        unread += fast.record.history_unread
        assert fast.response == full.response
        assert fast.situation.history == full.situation.history
        assert ordered_agents(fast.situation) == ordered_agents(full.situation)
        assert set(fast.situation.agents) <= set(full.situation.agents)
        assert set(fast.record.warnings) <= set(full.record.warnings)
    # The benchmark patient alone has 18 orders for medicines no rule is about and 18 for
    # premedication no longer in force.
    assert unread >= 36


# -- request limits: the level-by-level depth check agrees with a per-node walk ----------


def _depth_exceeds_per_node(value: Any, limit: int) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


_TRICKY = ["x", "", "[", "]]", "{", "}", '"', '\\"', "\\", "\\\\", '\\\\"[', "é[ü", "\n{", "\u2028"]


def test_json_depth_check_agrees_with_a_per_node_walk() -> None:
    """The text check counts as a walk over the parsed value does, whatever the strings hold
    (brackets, quotes, backslashes, escapes) and however the text is written."""
    from cds_server.web.limits import json_text_depth_exceeds

    rnd = random.Random(3)

    def text() -> str:
        return "".join(rnd.choice(_TRICKY) for _ in range(rnd.randint(0, 4)))

    def nested(depth: int) -> Any:
        r = rnd.random()
        if depth > 12 or r < 0.3:
            return rnd.choice([1, text(), None, True, 2.5, text()])
        if r < 0.65:
            return [nested(depth + 1) for _ in range(rnd.randint(0, 4))]
        return {text() + str(i): nested(depth + 1) for i in range(rnd.randint(0, 4))}

    for n in range(1000):
        value = nested(0)
        style = [{}, {"separators": (",", ":")}, {"indent": 1}, {"ensure_ascii": False}][n % 4]
        raw = json.dumps(value, **style).encode()
        assert json.loads(raw) == value
        for limit in range(15):
            expected = _depth_exceeds_per_node(value, limit)
            assert json_text_depth_exceeds(raw, limit) == expected, (raw, limit)


# -- knowledge: libyaml's safe loader reads the cards exactly as the pure-Python one -----


def test_cards_parse_the_same_with_libyaml(cards_dir: Any) -> None:
    import yaml

    from cds_server.knowledge import loader

    folder = Path(cards_dir) if cards_dir else ROOT / "cards"
    files = sorted(folder.rglob("*.yaml"))
    assert len(files) > 50
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert yaml.load(text, Loader=loader._FAST_SAFE_LOADER) == yaml.safe_load(text), path


def test_invalid_yaml_is_reported_as_before(tmp_path: Path) -> None:
    import yaml

    from cds_server.knowledge import loader

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\nb: : c\n", encoding="utf-8")
    problems: list[Any] = []
    assert loader._read_yaml(bad, "bad.yaml", problems) is None
    try:
        yaml.safe_load(bad.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = exc.problem_mark  # type: ignore[attr-defined]
        expected = f"line {mark.line + 1}", f"not valid YAML: {exc.problem}"  # type: ignore[attr-defined]
    assert [(p.field, p.message) for p in problems] == [expected]


# -- response writing: the compiled walk writes what marshmallow's dump writes -----------


def _fixture_card_inputs(kb: Any) -> list[list[dict[str, Any]]]:
    """The card lists the pipeline hands to ``dump_response`` for every fixture request."""
    from unittest import mock

    from cds_server import pipeline
    from cds_server.cdshooks import protocol
    from tests.conftest import FIXTURES, service_for

    seen: list[list[dict[str, Any]]] = []
    real = protocol.dump_response

    def recording(cards: Any, system_actions: Any = None) -> Any:
        seen.append(copy.deepcopy(list(cards)))
        return real(cards, system_actions)

    with mock.patch.object(protocol, "dump_response", recording):
        for path in sorted(FIXTURES.rglob("*.json")):
            body = json.loads(path.read_text(encoding="utf-8"))
            # Calls without prefetch (Oracle's) read a FHIR server, which is not emulated here.
            if isinstance(body, dict) and "hookInstance" in body and "prefetch" in body:
                pipeline.evaluate(body, service_id=service_for(body), kb=kb)
    return seen


def _written_alike(compiled: Any, schema: Any, value: Any) -> None:
    """Both write the same JSON, or both fail the same way (a list element that is a number)."""
    try:
        slow = schema.dump(value)
    except Exception as exc:
        with pytest.raises(type(exc)):
            compiled(value)
        return
    fast = compiled(value)
    assert fast == slow
    assert json.dumps(fast) == json.dumps(slow)  # the same key order, byte for byte


def test_fixture_responses_are_written_as_marshmallow_writes_them(kb: Any) -> None:
    from cds_server.cdshooks import protocol

    inputs = _fixture_card_inputs(kb)
    assert sum(len(cards) for cards in inputs) >= 40
    for cards in inputs:
        _written_alike(protocol._DUMP_RESPONSE, protocol.ResponseOut(), {"cards": cards})


def _roughen(value: Any, rnd: random.Random) -> Any:
    """A card-like value with some elements nulled, emptied, retyped or added."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            roll = rnd.random()
            if roll < 0.08:
                continue
            out[k] = (
                None
                if roll < 0.14
                else ""
                if roll < 0.18
                else []
                if roll < 0.2
                else 7
                if roll < 0.22
                else _roughen(v, rnd)
            )
        if rnd.random() < 0.1:
            out["notACardField"] = {"x": None}
        return out
    if isinstance(value, list):
        return [None if rnd.random() < 0.05 else _roughen(v, rnd) for v in value]
    return value


def test_roughened_cards_and_discovery_are_written_as_marshmallow_writes_them(kb: Any) -> None:
    from cds_server.cdshooks import protocol, services

    rnd = random.Random(11)
    cards = [card for cards in _fixture_card_inputs(kb) for card in cards]
    actions = [a for c in cards for s in c.get("suggestions", ()) for a in s["actions"]]
    assert actions
    response = protocol.ResponseOut()
    for _ in range(1500):
        sample = [_roughen(rnd.choice(cards), rnd) for _ in range(rnd.randint(0, 3))]
        system = [_roughen(rnd.choice(actions), rnd) for _ in range(rnd.randint(0, 2))]
        _written_alike(
            protocol._DUMP_RESPONSE, response, {"cards": sample, "systemActions": system}
        )
    doc = services.discovery(kb)
    for _ in range(300):
        _written_alike(protocol._DUMP_DISCOVERY, protocol.DiscoveryOut(), _roughen(doc, rnd))


def test_compile_dump_writes_computed_renamed_and_defaulted_fields_as_marshmallow() -> None:
    from marshmallow import fields as mfields

    from cds_server.cdshooks import protocol

    class Computed(protocol.CardOut):
        shown = mfields.Method("_shown")

        def _shown(self, obj: Any) -> str:
            return "x"

    class Renamed(protocol.CardOut):
        title = mfields.String(attribute="headline")

    class Defaulted(protocol.CardOut):
        indicator = mfields.String(dump_default="info")

    class Keyed(protocol.CardOut):
        items = mfields.String()  # a key a dict also answers as an attribute

    card = {"uuid": "u-1", "summary": "s", "headline": "h", "source": {"label": "L"}}
    for schema in (Computed(), Renamed(), Defaulted(), Keyed()):
        for value in (card, {**card, "indicator": "warning", "items": "i"}, {}):
            _written_alike(protocol.compile_dump(schema), schema, value)
    assert protocol.compile_dump(Computed())(card)["shown"] == "x"
    assert protocol.compile_dump(Renamed())(card)["title"] == "h"
    assert protocol.compile_dump(Defaulted())(card)["indicator"] == "info"


def test_compile_dump_refuses_what_it_does_not_reproduce() -> None:
    from marshmallow import fields as mfields

    from cds_server.cdshooks import protocol

    class Many(protocol.ResponseOut):
        cards = mfields.Nested(protocol.CardOut, many=True)

    class RenamedNested(protocol.CardOut):
        source = mfields.Nested(protocol.SourceOut, attribute="origin")

    for schema in (Many(), RenamedNested(), protocol.CardOut(many=True)):
        with pytest.raises(TypeError):
            protocol.compile_dump(schema)


def test_a_hook_the_compiled_walk_does_not_run_is_caught_by_the_comparison() -> None:
    """Marshmallow's public API cannot list a schema's hooks, so compile_dump cannot refuse
    one; a hook that changes the output makes the fixture comparisons above fail."""
    from marshmallow import post_dump

    from cds_server.cdshooks import protocol

    class Hooked(protocol.CardOut):
        @post_dump
        def _stamp(self, data: dict[str, Any], **kw: Any) -> dict[str, Any]:
            return {**data, "stamped": True}

    with pytest.raises(AssertionError):
        _written_alike(protocol.compile_dump(Hooked()), Hooked(), {"summary": "s"})
