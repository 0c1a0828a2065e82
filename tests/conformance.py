"""CDS Hooks 2.0 response conformance: ``check_response(body) -> list[str]`` (empty = conformant).

Implements the response/card rules of CDS Hooks 2.0 (https://cds-hooks.hl7.org/2.0/: JSON
without nulls, Card, Suggestion, Action, Link, Coding) plus
our house rule that every card and suggestion carries a uuid (needed for feedback). Each
problem is a short string starting with the JSON path it concerns.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

INDICATORS = {"info", "warning", "critical"}
SELECTION_BEHAVIORS = {"at-most-one", "any"}
ACTION_TYPES = {"create", "update", "delete"}
LINK_TYPES = {"absolute", "smart"}
RESPONSE_KEYS = {"cards", "systemActions", "extension"}
CARD_KEYS = {
    "uuid",
    "summary",
    "detail",
    "indicator",
    "source",
    "suggestions",
    "selectionBehavior",
    "overrideReasons",
    "links",
    "extension",
}
RELATIVE_REF = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def _is_absolute_url(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _check_coding(coding: Any, path: str, need_display: bool) -> list[str]:
    if not isinstance(coding, dict):
        return [f"{path}: must be a Coding object"]
    out = [f"{path}.{k}: required" for k in ("code", "system") if not _nonempty_str(coding.get(k))]
    if need_display and not _nonempty_str(coding.get("display")):
        out.append(f"{path}.display: required for override reasons")
    return out


def _check_action(action: Any, path: str) -> list[str]:
    if not isinstance(action, dict):
        return [f"{path}: must be an object"]
    out = []
    kind = action.get("type")
    if kind not in ACTION_TYPES:
        out.append(f"{path}.type: must be one of create, update, delete")
    if not _nonempty_str(action.get("description")):
        out.append(f"{path}.description: required")
    resource = action.get("resource")
    if kind in ("create", "update"):
        if not isinstance(resource, dict) or not _nonempty_str(resource.get("resourceType")):
            out.append(f"{path}.resource: a {kind} action needs a FHIR resource")
        elif kind == "update" and not _nonempty_str(resource.get("id")):
            out.append(f"{path}.resource: an update needs the whole resource, including its id")
    if kind == "delete":
        if not (
            isinstance(action.get("resourceId"), str) and RELATIVE_REF.match(action["resourceId"])
        ):
            out.append(f"{path}.resourceId: a delete needs a relative reference 'Type/id'")
        if "resource" in action:
            out.append(
                f"{path}.resource: delete must use resourceId (id in resource is deprecated)"
            )
    return out


def _check_link(link: Any, path: str) -> list[str]:
    if not isinstance(link, dict):
        return [f"{path}: must be an object"]
    out = []
    if not _nonempty_str(link.get("label")):
        out.append(f"{path}.label: required")
    if not _is_absolute_url(link.get("url")):
        out.append(f"{path}.url: required absolute URL")
    if link.get("type") not in LINK_TYPES:
        out.append(f"{path}.type: must be absolute or smart")
    if "appContext" in link and link.get("type") != "smart":
        out.append(f"{path}.appContext: only allowed on smart links")
    if "autolaunchable" in link and not isinstance(link["autolaunchable"], bool):
        out.append(f"{path}.autolaunchable: must be a boolean")
    return out


def _check_card(card: Any, path: str) -> list[str]:
    if not isinstance(card, dict):
        return [f"{path}: must be an object"]
    out = [f"{path}.{k}: not a CDS Hooks card field" for k in sorted(set(card) - CARD_KEYS)]
    summary = card.get("summary")
    if not _nonempty_str(summary):
        out.append(f"{path}.summary: required")
    elif len(summary) >= 140:
        out.append(f"{path}.summary: must be shorter than 140 characters ({len(summary)})")
    if card.get("indicator") not in INDICATORS:
        out.append(f"{path}.indicator: must be one of info, warning, critical")
    if not _is_uuid(card.get("uuid")):
        out.append(f"{path}.uuid: every card needs a uuid (feedback)")
    if "detail" in card and not isinstance(card["detail"], str):
        out.append(f"{path}.detail: must be a string")
    source = card.get("source")
    if not isinstance(source, dict):
        out.append(f"{path}.source: required object")
    else:
        if not _nonempty_str(source.get("label")):
            out.append(f"{path}.source.label: required")
        for key in ("url", "icon"):
            if key in source and not _is_absolute_url(source[key]):
                out.append(f"{path}.source.{key}: must be an absolute URL")
        if "topic" in source:
            out.extend(_check_coding(source["topic"], f"{path}.source.topic", False))
    suggestions = card.get("suggestions")
    if suggestions is not None:
        if card.get("selectionBehavior") not in SELECTION_BEHAVIORS:
            out.append(f"{path}.selectionBehavior: required with suggestions (at-most-one | any)")
        if not isinstance(suggestions, list):
            out.append(f"{path}.suggestions: must be an array")
            suggestions = []
        recommended = 0
        for i, sug in enumerate(suggestions):
            spath = f"{path}.suggestions[{i}]"
            if not isinstance(sug, dict):
                out.append(f"{spath}: must be an object")
                continue
            if not _nonempty_str(sug.get("label")):
                out.append(f"{spath}.label: required")
            if not _is_uuid(sug.get("uuid")):
                out.append(f"{spath}.uuid: every suggestion needs a uuid (acceptedSuggestions)")
            if "isRecommended" in sug and not isinstance(sug["isRecommended"], bool):
                out.append(f"{spath}.isRecommended: must be a boolean")
            recommended += sug.get("isRecommended") is True
            for j, action in enumerate(sug.get("actions") or ()):
                out.extend(_check_action(action, f"{spath}.actions[{j}]"))
        if card.get("selectionBehavior") == "at-most-one" and recommended > 1:
            out.append(f"{path}.suggestions: at-most-one allows one recommended suggestion")
    elif "selectionBehavior" in card:
        out.append(f"{path}.selectionBehavior: only meaningful with suggestions")
    for i, reason in enumerate(card.get("overrideReasons") or ()):
        out.extend(_check_coding(reason, f"{path}.overrideReasons[{i}]", True))
    for i, link in enumerate(card.get("links") or ()):
        out.extend(_check_link(link, f"{path}.links[{i}]"))
    return out


def check_response(body: Any) -> list[str]:
    """Every way ``body`` breaks the CDS Hooks 2.0 service-response rules."""
    if not isinstance(body, dict):
        return ["$: the response must be a JSON object"]
    problems = [f"$.{k}: not a CDS Hooks response field" for k in sorted(set(body) - RESPONSE_KEYS)]
    if not isinstance(body.get("cards"), list):
        problems.append("$.cards: required array (may be empty)")
    for path, value in _walk(body, "$"):
        if value is None:
            problems.append(f"{path}: null is not allowed")
        elif path != "$.cards" and path != "$" and value in ("", [], {}):
            problems.append(f"{path}: empty values are not allowed (omit the field)")
    for i, card in enumerate(body.get("cards") or ()):
        problems.extend(_check_card(card, f"$.cards[{i}]"))
    for i, action in enumerate(body.get("systemActions") or ()):
        problems.extend(_check_action(action, f"$.systemActions[{i}]"))
    seen: dict[str, str] = {}
    for path, value in _walk(body, "$"):
        if path.endswith(".uuid") and isinstance(value, str):
            if value in seen:
                problems.append(f"{path}: uuid repeats {seen[value]}")
            seen.setdefault(value, path)
    return problems


# -- Epic's documented constraints (fhir.epic.com CDS Hooks tutorial: "Card Attributes",
# "Suggestion Attributes", "HTTP Response Fields", "Codesets for Create APIs") ------------------

EPIC_TOPIC_CODE = re.compile(r"^[A-Za-z0-9]{1,100}$")
EPIC_ORDER_RESOURCES = {"MedicationRequest", "ServiceRequest", "ProcedureRequest"}
EPIC_ORDER_SYSTEMS = {
    "urn:oid:2.16.840.1.113883.6.88",  # RxNorm
    "urn:oid:2.16.840.1.113883.6.69",  # NDC
    "urn:com.epic.cdshooks.action.code.system.preference-list-item",
    "urn:com.epic.cdshooks.action.code.system.orderset-item",
}


def _order_codings(resource: dict[str, Any]) -> list[dict[str, Any]]:
    concept = resource.get("medicationCodeableConcept") or resource.get("code") or {}
    return [c for c in concept.get("coding") or () if isinstance(c, dict)]


def check_epic_response(body: Any) -> list[str]:
    """Every way ``body`` breaks what Epic documents it accepts (beyond ``check_response``)."""
    problems = []
    for i, card in enumerate(body.get("cards") or ()):
        path = f"$.cards[{i}]"
        topic = (card.get("source") or {}).get("topic") or {}
        if not EPIC_TOPIC_CODE.match(str(topic.get("code", ""))):
            problems.append(f"{path}.source.topic.code: Epic takes 1-100 letters and digits")
        if card.get("suggestions") and card.get("selectionBehavior") != "any":
            problems.append(f"{path}.selectionBehavior: Epic supports only 'any'")
        for j, sug in enumerate(card.get("suggestions") or ()):
            spath = f"{path}.suggestions[{j}]"
            actions = sug.get("actions") or []
            if len(actions) != 1:
                problems.append(f"{spath}.actions: Epic takes one action per suggestion")
            for action in actions:
                resource = action.get("resource") or {}
                kind = resource.get("resourceType")
                if kind in EPIC_ORDER_RESOURCES and action.get("type") not in ("create", "delete"):
                    problems.append(f"{spath}: Epic creates or deletes {kind}, never updates")
                if action.get("type") == "create" and kind in EPIC_ORDER_RESOURCES:
                    systems = {c.get("system") for c in _order_codings(resource)}
                    if not systems & EPIC_ORDER_SYSTEMS:
                        problems.append(f"{spath}: no code Epic can order {kind} by")
                if not _nonempty_str(action.get("description")):
                    problems.append(f"{spath}.description: what Epic shows; required")
    return problems
