"""The conformance checker itself: good cards pass, each kind of bad card is caught."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.conformance import check_response

U1 = "0f4a9c1e-3b2d-4e5f-8a6b-7c8d9e0f1a2b"
U2 = "1e2d3c4b-5a69-4788-9a0b-c1d2e3f4a5b6"
U3 = "2b3c4d5e-6f70-4a81-92a3-b4c5d6e7f809"


def good_card() -> dict[str, Any]:
    return {
        "uuid": U1,
        "summary": "Rituximab: first-infusion rate above the start rate",
        "detail": "Start at **50 mg/h**.",
        "indicator": "warning",
        "source": {
            "label": "Infusion safety knowledge",
            "url": "https://example.org/about",
            "topic": {"system": "https://example.org/topics", "code": "titration"},
        },
        "suggestions": [
            {
                "label": "Change the rate",
                "uuid": U2,
                "isRecommended": True,
                "actions": [
                    {
                        "type": "update",
                        "description": "Set the start rate",
                        "resource": {"resourceType": "MedicationRequest", "id": "mr-1"},
                    },
                    {
                        "type": "create",
                        "description": "Add a premedication",
                        "resource": {"resourceType": "MedicationRequest", "status": "draft"},
                    },
                    {
                        "type": "delete",
                        "description": "Remove the duplicate",
                        "resourceId": "MedicationRequest/mr-2",
                    },
                ],
            }
        ],
        "selectionBehavior": "at-most-one",
        "overrideReasons": [
            {"system": "https://example.org/reasons", "code": "tolerated", "display": "Tolerated"}
        ],
        "links": [
            {"label": "Label", "url": "https://example.org/label", "type": "absolute"},
            {"label": "App", "url": "https://app.example.org", "type": "smart", "appContext": "x"},
        ],
    }


def test_good_responses_pass() -> None:
    assert check_response({"cards": []}) == []
    assert check_response({"cards": [good_card()]}) == []
    minimal = {"summary": "s", "indicator": "info", "source": {"label": "L"}, "uuid": U3}
    assert check_response({"cards": [minimal]}) == []


def _mutate(path: str, value: Any) -> dict[str, Any]:
    card = copy.deepcopy(good_card())
    target: Any = card
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if key.isdigit() else target[key]
    last = keys[-1]
    if value is KeyError:
        del target[int(last) if last.isdigit() else last]
    else:
        target[int(last) if last.isdigit() else last] = value
    return {"cards": [card]}


BAD = [
    ("detail", None, "null is not allowed"),
    ("detail", "", "empty values"),
    ("links", [], "empty values"),
    ("overrideReasons", [], "empty values"),
    ("indicator", "success", "indicator"),
    ("indicator", "hard-stop", "indicator"),
    ("summary", "x" * 140, "shorter than 140"),
    ("summary", KeyError, "summary: required"),
    ("uuid", KeyError, "every card needs a uuid"),
    ("suggestions.0.uuid", KeyError, "every suggestion needs a uuid"),
    ("selectionBehavior", KeyError, "selectionBehavior: required with suggestions"),
    ("selectionBehavior", "all", "selectionBehavior"),
    ("overrideReasons.0.display", KeyError, "display: required"),
    ("overrideReasons.0.system", KeyError, "system: required"),
    ("source.label", KeyError, "source.label: required"),
    ("source", KeyError, "source: required"),
    ("source.url", "/relative", "absolute URL"),
    ("links.0.type", "relative", "absolute or smart"),
    ("links.0.url", "example.org", "absolute URL"),
    ("links.0.appContext", "ctx", "only allowed on smart links"),
    ("suggestions.0.actions.0.resource.id", KeyError, "whole resource"),
    ("suggestions.0.actions.1.resource", KeyError, "needs a FHIR resource"),
    ("suggestions.0.actions.2.resourceId", KeyError, "relative reference"),
    ("suggestions.0.actions.2.resource", "MedicationRequest/mr-2", "deprecated"),
    ("suggestions.0.actions.0.type", "patch", "create, update, delete"),
    ("suggestions.0.actions.0.description", KeyError, "description: required"),
    ("hard-stop", True, "not a CDS Hooks card field"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"), BAD, ids=[f"{p}={v!r}"[:40] for p, v, _ in BAD]
)
def test_bad_cards_are_caught(path: str, value: Any, expected: str) -> None:
    problems = check_response(_mutate(path, value))
    assert any(expected in p for p in problems), problems


def test_response_level_rules() -> None:
    assert "$.cards: required array (may be empty)" in check_response({})
    assert any("not a CDS Hooks response field" in p for p in check_response({"cards": [], "x": 1}))
    assert any("empty values" in p for p in check_response({"cards": [], "systemActions": []}))
    two = good_card()
    two["suggestions"].append({**copy.deepcopy(two["suggestions"][0]), "uuid": U3})
    assert any("one recommended" in p for p in check_response({"cards": [two]}))
    dup = {"cards": [good_card(), good_card()]}
    assert any("uuid repeats" in p for p in check_response(dup))
    bad_action = {"cards": [], "systemActions": [{"type": "create", "description": "d"}]}
    assert any("needs a FHIR resource" in p for p in check_response(bad_action))
    assert check_response([]) == ["$: the response must be a JSON object"]
