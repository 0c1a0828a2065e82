"""End-to-end clinical scenarios: ``fixtures/fhir/scenarios/<name>.{request,expected}.json``.

Each request is a complete CDS Hooks call as an EHR sends it; the expected file says which cards
must come back (format: ``fixtures/fhir/scenarios/README.md``). Every scenario runs twice:

1. with its prefetch, through the Flask test client (200, CDS Hooks conformance, every suggested
   resource valid FHIR R4, cards as expected);
2. through the FHIR fallback: prefetch stripped, ``fhirServer`` + ``fhirAuthorization`` added and
   the same resources served by ``FakeFhir`` (``responses``): the cards must be the same
   (topic, indicator, drug) as with prefetch. The optional ``administrations`` key is fetched
   too (an empty search when the scenario has none); when a scenario has it, the same
   administrations must be read and recognised both ways.

The service takes "now" from the clock, so the fixtures are written as if today were
``ANCHOR`` and every date in a request is shifted by whole days to the real today.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.medicationrequest import MedicationRequest
from fhir.resources.R4B.servicerequest import ServiceRequest
from flask.testing import FlaskClient

from cds_server import pipeline
from cds_server.fhirdata.client import FhirSettings
from cds_server.knowledge.model import KnowledgeBase
from tests.conformance import check_response
from tests.conftest import FHIR, FIXTURES, rule_of, service_for
from tests.fakefhir import FakeFhir

SCENARIOS = FIXTURES / "scenarios"
README = SCENARIOS / "README.md"
ANCHOR = date(2026, 11, 21)  # the "today" the fixtures were written for
R4_MODELS = {"MedicationRequest": MedicationRequest, "ServiceRequest": ServiceRequest}
_ISO_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})(?=$|T)")

CardKey = tuple[str, str, str]  # (rule, indicator, drug shown before ":" in the summary)


# -- loading -------------------------------------------------------------------------------


def scenario_names() -> list[str]:
    return sorted(p.name.removesuffix(".request.json") for p in SCENARIOS.glob("*.request.json"))


def _shift_dates(value: Any, days: int) -> Any:
    """Every FHIR date/dateTime string moved by ``days`` whole days (time of day kept)."""
    if isinstance(value, dict):
        return {k: _shift_dates(v, days) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift_dates(v, days) for v in value]
    if isinstance(value, str) and days:
        match = _ISO_DATE.match(value)
        if match:
            moved = date(*(int(g) for g in match.groups())) + timedelta(days=days)
            return moved.isoformat() + value[10:]
    return value


def today() -> date:
    return datetime.now(UTC).date()


def load_scenario(name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request with dates moved to today, expectations)."""
    request = json.loads((SCENARIOS / f"{name}.request.json").read_text())
    expected = json.loads((SCENARIOS / f"{name}.expected.json").read_text())
    return _shift_dates(request, (today() - ANCHOR).days), expected


_BEYOND_FLOAT = "\x00beyond-float\x00"


def _with_huge_literals(value: Any) -> Any:
    """Infinite floats (read from a literal such as 1e400) marked, to be written back as 1e400."""
    if isinstance(value, float) and math.isinf(value):
        return ("-" if value < 0 else "") + _BEYOND_FLOAT
    if isinstance(value, dict):
        return {k: _with_huge_literals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_huge_literals(v) for v in value]
    return value


def request_text(body: dict[str, Any]) -> str:
    """The body as an EHR sends it: a number beyond float range stays the literal 1e400
    (``json.dumps`` would write ``Infinity``, which is not JSON)."""
    text = json.dumps(_with_huge_literals(body))
    marker = json.dumps(_BEYOND_FLOAT)[1:-1]
    return text.replace(f'"-{marker}"', "-1e400").replace(f'"{marker}"', "1e400")


def call(client: FlaskClient, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(
        f"/cds-services/{service_for(body)}",
        data=request_text(body),
        content_type="application/json",
    )
    assert resp.status_code == 200, resp.get_json()
    result = resp.get_json()
    assert check_response(result) == [], check_response(result)
    return result


# -- reading cards -------------------------------------------------------------------------


def drug_of(card: dict[str, Any]) -> str:
    return card["summary"].split(": ", 1)[0]


def key_of(card: dict[str, Any]) -> CardKey:
    return (rule_of(card), card["indicator"], drug_of(card))


def keys(response: dict[str, Any]) -> list[CardKey]:
    return sorted(key_of(c) for c in response["cards"])


def _show(response: dict[str, Any]) -> str:
    return "\n".join(f"  [{c['indicator']}] {c['summary']}" for c in response["cards"]) or "  none"


def suggested_resources(response: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (action["type"], action["resource"])
        for card in response["cards"]
        for suggestion in card.get("suggestions", ())
        for action in suggestion.get("actions", ())
        if "resource" in action
    ]


def _resource_text(resource: dict[str, Any]) -> str:
    parts: list[str] = []
    for field in ("medicationCodeableConcept", "code"):
        concept = resource.get(field) or {}
        parts.append(concept.get("text", ""))
        parts.extend(c.get("display", "") for c in concept.get("coding", ()))
    parts.extend(d.get("text", "") for d in resource.get("dosageInstruction", ()))
    parts.extend(n.get("text", "") for n in resource.get("note", ()))
    return " ".join(parts).casefold()


def _first_dose_and_rate(resource: dict[str, Any]) -> dict[str, Any]:
    for dosage in resource.get("dosageInstruction", ()):
        for dr in dosage.get("doseAndRate", ()):
            return dr
    return {}


def _same_quantity(q: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    return (
        q is not None
        and abs(float(q.get("value", float("nan"))) - want["value"]) < 0.01
        and want["unit"] in (q.get("unit"), q.get("code"))
    )


def suggestion_matches(suggestion: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Does one suggestion satisfy one expected-suggestion spec (README: 'suggestions')?"""
    action = suggestion["actions"][0]
    resource = action.get("resource", {})
    dr = _first_dose_and_rate(resource)
    codings = (resource.get("medicationCodeableConcept") or {}).get("coding", ())
    checks = {
        "action": lambda v: action["type"] == v,
        "resourceType": lambda v: resource.get("resourceType") == v,
        "rxnorm": lambda v: any(
            c.get("system") == "http://www.nlm.nih.gov/research/umls/rxnorm" and c.get("code") == v
            for c in codings
        ),
        "label_contains": lambda v: v.casefold() in suggestion["label"].casefold(),
        "text_contains": lambda v: v.casefold() in _resource_text(resource),
        "recommended": lambda v: suggestion.get("isRecommended", False) is v,
        "dose": lambda v: _same_quantity(dr.get("doseQuantity"), v),
        "dose_range": lambda v: (
            _same_quantity(
                (dr.get("doseRange") or {}).get("low"), {"value": v["low"], "unit": v["unit"]}
            )
            and _same_quantity(
                (dr.get("doseRange") or {}).get("high"), {"value": v["high"], "unit": v["unit"]}
            )
        ),
        "no_dose": lambda v: v is ("doseQuantity" not in dr and "doseRange" not in dr),
        "rate": lambda v: _same_quantity(dr.get("rateQuantity"), v),
    }
    unknown = set(spec) - set(checks)
    assert not unknown, f"unknown suggestion expectation keys {unknown}"
    return all(checks[k](v) for k, v in spec.items())


def _assign(specs: list[dict[str, Any]], suggestions: list[dict[str, Any]]) -> bool:
    """Can every spec be matched to a different suggestion?"""
    if not specs:
        return True
    first, rest = specs[0], specs[1:]
    for i, s in enumerate(suggestions):
        if suggestion_matches(s, first) and _assign(rest, suggestions[:i] + suggestions[i + 1 :]):
            return True
    return False


CARD_FIELDS = {
    "topic",
    "indicator",
    "drug",
    "summary_contains",
    "detail_contains",
    "detail_excludes",
    "suggestion_count",
    "suggestions",
}


def card_problems(card: dict[str, Any], want: dict[str, Any]) -> list[str]:
    unknown = set(want) - CARD_FIELDS
    assert not unknown, f"unknown card expectation keys {unknown}"
    where = f"{want['topic']}/{want['drug']}"
    out = []
    if card["indicator"] != want["indicator"]:
        out.append(f"{where}: indicator {card['indicator']!r}, expected {want['indicator']!r}")
    summary = card["summary"].casefold()
    for text in want.get("summary_contains", ()):
        if text.casefold() not in summary:
            out.append(f"{where}: summary lacks {text!r}: {card['summary']!r}")
    detail = card.get("detail", "").casefold()
    for text in want.get("detail_contains", ()):
        if text.casefold() not in detail:
            out.append(f"{where}: detail lacks {text!r}")
    for text in want.get("detail_excludes", ()):
        if text.casefold() in detail:
            out.append(f"{where}: detail should not contain {text!r}")
    suggestions = card.get("suggestions", [])
    if "suggestion_count" in want and len(suggestions) != want["suggestion_count"]:
        labels = [s["label"] for s in suggestions]
        out.append(
            f"{where}: {len(suggestions)} suggestion(s) {labels}, expected "
            f"{want['suggestion_count']}"
        )
    specs = want.get("suggestions", [])
    if specs and not _assign(specs, suggestions):
        shown = [
            (s["label"], s.get("isRecommended"), s["actions"][0].get("resource", {}))
            for s in suggestions
        ]
        out.append(f"{where}: suggestions do not match {specs}; got {shown}")
    return out


# -- the scenario tests ---------------------------------------------------------------------


@pytest.mark.parametrize("name", scenario_names())
def test_scenario(client: FlaskClient, name: str) -> None:
    body, expected = load_scenario(name)
    result = call(client, body)

    for kind, resource in suggested_resources(result):
        model = R4_MODELS.get(resource.get("resourceType"))
        assert model is not None, f"unexpected suggested resource {resource.get('resourceType')}"
        model.model_validate(resource)  # raises on invalid FHIR R4
        assert kind in ("create", "update")

    problems: list[str] = []
    by_key = {(key_of(c)[0], key_of(c)[2]): c for c in result["cards"]}
    for want in expected["cards"]:
        found = by_key.get((want["topic"], want["drug"]))
        if found is None:
            problems.append(f"missing card {want['topic']}/{want['indicator']}/{want['drug']}")
        else:
            problems.extend(card_problems(found, want))
    if expected["no_other_cards"]:
        wanted = sorted((w["topic"], w["indicator"], w["drug"]) for w in expected["cards"])
        if keys(result) != wanted:
            problems.append(f"cards {keys(result)}, expected exactly {wanted}")
    assert not problems, (
        f"{name}: {expected['probes']}\n" + "\n".join(problems) + "\ncards:\n" + _show(result)
    )


def fallback_request(body: dict[str, Any], auth: dict[str, Any]) -> tuple[dict, list[dict]]:
    """The same call without prefetch, and the resources a FHIR server must hold for it."""
    fallback = copy.deepcopy(body)
    prefetch = fallback.pop("prefetch", None) or {}
    resources: dict[tuple[str, str], dict[str, Any]] = {}
    for value in prefetch.values():
        if not isinstance(value, dict):
            continue  # null: the EHR has no data, the server returns an empty search
        found = (
            [e["resource"] for e in value.get("entry", ())]
            if value.get("resourceType") == "Bundle"
            else [value]
        )
        for res in found:
            resources[(res["resourceType"], res["id"])] = res
    fallback["fhirServer"] = FHIR
    fallback["fhirAuthorization"] = auth
    return fallback, list(resources.values())


@pytest.mark.parametrize("name", scenario_names())
def test_scenario_through_fhir_fallback(
    client: FlaskClient, kb: KnowledgeBase, mocked_fhir: Any, fhir_auth: dict[str, Any], name: str
) -> None:
    body, _ = load_scenario(name)
    with_prefetch = call(client, body)

    fallback, resources = fallback_request(body, fhir_auth)
    server = FakeFhir(FHIR, resources).register(mocked_fhir)
    fetched = call(client, fallback)

    wanted = {"MedicationRequest", "AllergyIntolerance", "MedicationAdministration"}
    assert wanted <= set(server.types_called())
    assert all(
        c.headers.get("Authorization") == f"Bearer {fhir_auth['access_token']}"
        for c in server.calls
    )
    assert keys(fetched) == keys(with_prefetch), (
        f"{name}: fallback cards differ\nprefetch:\n{_show(with_prefetch)}\n"
        f"fallback:\n{_show(fetched)}"
    )
    if "administrations" in (body.get("prefetch") or {}):
        assert given(kb, fallback) == given(kb, body), f"{name}: administrations differ"


def given(kb: KnowledgeBase, body: dict[str, Any]) -> list[tuple[str | None, str | None, str]]:
    """(administration, status, drug) for every recognised MedicationAdministration."""
    ev = pipeline.run(body, service_id=service_for(body), kb=kb, settings=FhirSettings())
    assert ev.record.administrations_known
    return sorted((r.order.ref, r.order.status, r.drug_id) for r in ev.situation.administrations)


# -- properties of the whole set -----------------------------------------------------------


def test_created_resources_reference_the_patient(client: FlaskClient) -> None:
    """A suggested MedicationRequest/ServiceRequest must be for the patient in context."""
    wrong = []
    for name in scenario_names():
        body, _ = load_scenario(name)
        patient = f"Patient/{body['context']['patientId']}"
        for kind, resource in suggested_resources(call(client, body)):
            subject = resource.get("subject", {}).get("reference")
            if subject != patient:
                wrong.append(f"{name}: {kind} {resource['resourceType']} subject {subject!r}")
    assert not wrong, f"{len(wrong)} suggested resource(s) name the wrong patient:\n" + "\n".join(
        sorted(set(wrong))[:20]
    )


def test_scenario_set_is_complete(kb: KnowledgeBase) -> None:
    names = scenario_names()
    assert len(names) >= 45
    assert all((SCENARIOS / f"{n}.expected.json").exists() for n in names)
    assert not {
        p.name.removesuffix(".expected.json") for p in SCENARIOS.glob("*.expected.json")
    } - set(names)
    expectations = [load_scenario(n)[1] for n in names]
    topics = {c["topic"] for e in expectations for c in e["cards"]}
    assert topics == {t.code for t in kb.policy.topics}, "every card type is exercised"
    indicators = Counter(c["indicator"] for e in expectations for c in e["cards"])
    assert set(indicators) == {"info", "warning", "critical"}
    negatives = [n for n, e in zip(names, expectations, strict=True) if not e["cards"]]
    assert len(negatives) >= 10
    hooks = {load_scenario(n)[0]["hook"] for n in names}
    assert hooks == {"order-sign", "order-select", "patient-view"}


def test_readme_lists_every_scenario() -> None:
    text = README.read_text()
    missing = [n for n in scenario_names() if f"`{n}`" not in text]
    assert not missing, f"README.md does not list {missing}"


def test_fixture_patients_are_fictional() -> None:
    for path in Path(SCENARIOS).glob("*.request.json"):
        patient = json.loads(path.read_text())["prefetch"]["patient"]
        assert all(n["family"].startswith("Fictional-") for n in patient["name"]), path.name
