"""Client profiles (``render.profiles``): what each kind of client gets.

``generic`` is spec-pure CDS Hooks 2.0; ``epic`` follows Epic's CDS Hooks tutorial (one action
per suggestion, ``selectionBehavior: any``, the dose in each action's description, RxNorm also
as Epic's OID, the site's preference-list/order-set codes, no update actions, only orders Epic
can resolve); ``oracle`` drops ``appContext``; ``sandbox`` is ``generic``. Every profile's
answer to every fixture and scenario is checked against the CDS Hooks 2.0 response rules, and
Epic's against what Epic documents. A trusted client's entry picks its profile.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from cds_server import pipeline
from cds_server.config import ConfigError
from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import EPIC_PREFERENCE_LIST_ITEM, REFERRALS, Coding
from cds_server.render.profiles import (
    EPIC_ORDER_SET_ITEM,
    PROFILE_NAMES,
    RXNORM_OID,
    ClientProfile,
    shape_card,
)
from cds_server.web import trusted_clients
from tests import jwtkit as kit
from tests.conformance import check_epic_response, check_response
from tests.conftest import ROOT, load_request, rule_of
from tests.render.every_response import every_response
from tests.scenarios.test_scenarios import load_scenario
from tests.test_epic_requests import load as epic_request
from tests.test_epic_requests import request_names as epic_request_names

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SITE_CODES = {
    "diphenhydramine": (Coding(EPIC_PREFERENCE_LIST_ITEM, "EXAMPLE-DIPHENHYDRAMINE-IV"),),
    "allergy-immunology": (Coding(EPIC_ORDER_SET_ITEM, "EXAMPLE-DESENSITIZATION"),),
    "hospitalization": (Coding(EPIC_PREFERENCE_LIST_ITEM, "EXAMPLE-ADMIT-48H"),),
}
EPIC_SITE = ClientProfile("epic", SITE_CODES)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"00000000-0000-4000-8000-{next(numbers):012d}"


def run(kb: KnowledgeBase, body: dict[str, Any], profile: ClientProfile) -> dict[str, Any]:
    service = {"order-sign": "infusion-safety-sign", "patient-view": "infusion-risk-summary"}
    result = pipeline.run(
        body,
        service_id=service.get(body["hook"], "infusion-safety-select"),
        kb=kb,
        new_uuid=_counter(),
        profile=profile,
    )
    assert check_response(result.response) == []
    return result.response


def scenario(name: str) -> dict[str, Any]:
    body, _ = load_scenario(name)
    return body


def without_uuids(value: Any) -> Any:
    """``value`` with every uuid replaced by its order of appearance (uuids are random)."""
    text = json.dumps(value, sort_keys=True)
    seen: dict[str, str] = {}
    for found in re.findall(r'"([0-9a-f-]{36})"', text):
        if _UUID.match(found):
            seen.setdefault(found, f"uuid-{len(seen)}")
    for old, new in seen.items():
        text = text.replace(old, new)
    return json.loads(text)


def suggestions(response: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(c, s) for c in response["cards"] for s in c.get("suggestions", ())]


# -- every fixture, every profile ----------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_every_profile_answers_every_fixture_in_cds_hooks_2(
    make_app: Callable[..., Flask], profile: str
) -> None:
    responses = every_response(make_app, profile)  # each checked by check_response
    assert len(responses) >= 55
    for where, response in responses.items():
        for card in response["cards"]:
            assert re.fullmatch(r"[A-Za-z0-9]{1,100}", card["source"]["topic"]["code"]), where


def test_every_epic_answer_keeps_to_what_epic_documents(make_app: Callable[..., Flask]) -> None:
    problems = [
        f"{where}: {p}"
        for where, response in every_response(make_app, "epic").items()
        for p in check_epic_response(response)
    ]
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("profile", ["oracle", "sandbox"])
def test_oracle_and_sandbox_get_the_generic_cards(
    make_app: Callable[..., Flask], profile: str
) -> None:
    """Neither needs anything our cards lack (no appContext is sent to anyone today)."""
    generic = every_response(make_app, "generic")
    other = every_response(make_app, profile)
    assert without_uuids(other) == without_uuids(generic)


def test_epic_differs_only_in_its_suggestions(make_app: Callable[..., Flask]) -> None:
    generic = every_response(make_app, "generic")
    epic = every_response(make_app, "epic")
    changed = 0
    for where in generic:
        assert len(epic[where]["cards"]) == len(generic[where]["cards"]), where
        for g, e in zip(generic[where]["cards"], epic[where]["cards"], strict=True):
            rest = ("suggestions", "selectionBehavior", "uuid")
            assert {k: v for k, v in e.items() if k not in rest} == {
                k: v for k, v in g.items() if k not in rest
            }, where
            changed += e.get("suggestions") != g.get("suggestions")
    assert changed >= 20


@pytest.mark.parametrize("name", epic_request_names())
def test_epic_fixtures_under_the_epic_profile(kb: KnowledgeBase, name: str) -> None:
    """Epic's own requests get the same cards, in the shape Epic documents."""
    body = epic_request(name)
    generic = run(kb, copy.deepcopy(body), ClientProfile())
    epic = run(kb, body, ClientProfile("epic"))
    assert check_epic_response(epic) == []
    assert [rule_of(c) for c in epic["cards"]] == [rule_of(c) for c in generic["cards"]]


# -- epic: what each suggestion carries ------------------------------------------------------


def test_epic_writes_the_dose_in_each_medication_action(make_app: Callable[..., Flask]) -> None:
    seen = 0
    for where, response in every_response(make_app, "epic").items():
        for _, sug in suggestions(response):
            [action] = sug["actions"]
            resource = action["resource"]
            if resource["resourceType"] != "MedicationRequest":
                continue
            for dr in resource["dosageInstruction"][0].get("doseAndRate", ()):
                quantity = dr.get("doseQuantity") or dr["doseRange"]["low"]
                amount = f"{quantity['value']:g}"
                shown = action["description"].replace(",", "")
                assert amount in shown and quantity["unit"] in shown, (where, action)
                seen += 1
            assert "check them against this line" in action["description"], where
    assert seen >= 20


def test_epic_codes_rxnorm_twice_and_adds_the_sites_codes(kb: KnowledgeBase) -> None:
    body = load_request("order-sign-crd-style")  # paclitaxel: dexamethasone, diphenhydramine…
    response = run(kb, body, EPIC_SITE)
    by_text = {
        s["actions"][0]["resource"]["medicationCodeableConcept"]["text"]: s
        for _, s in suggestions(response)
    }
    coding = by_text["diphenhydramine"]["actions"][0]["resource"]["medicationCodeableConcept"][
        "coding"
    ]
    assert coding == [
        {"system": EPIC_PREFERENCE_LIST_ITEM, "code": "EXAMPLE-DIPHENHYDRAMINE-IV"},
        {"system": RXNORM, "code": "3498", "display": "diphenhydramine"},
        {"system": RXNORM_OID, "code": "3498", "display": "diphenhydramine"},
    ]
    dexamethasone = by_text["dexamethasone"]["actions"][0]["resource"]
    assert [c["system"] for c in dexamethasone["medicationCodeableConcept"]["coding"]] == [
        RXNORM,
        RXNORM_OID,
    ]
    # The generic profile sends the same order with our coding only, whatever the site maps.
    generic = run(kb, load_request("order-sign-crd-style"), ClientProfile("generic", SITE_CODES))
    for _, sug in suggestions(generic):
        concept = sug["actions"][0]["resource"]["medicationCodeableConcept"]
        assert {c["system"] for c in concept.get("coding", ())} <= {RXNORM}


def test_epic_suggests_no_order_it_cannot_resolve(kb: KnowledgeBase) -> None:
    """Cimetidine has no verified RxNorm in the knowledge: said on the card, not suggested;
    once the site maps it, it is suggested with the site's code."""
    body = load_request("order-sign-crd-style")
    generic = run(kb, body, ClientProfile())
    epic = run(kb, body, ClientProfile("epic"))
    names = [
        s["actions"][0]["resource"]["medicationCodeableConcept"]["text"]
        for _, s in suggestions(generic)
    ]
    assert "cimetidine" in names
    epic_names = [
        s["actions"][0]["resource"]["medicationCodeableConcept"]["text"]
        for _, s in suggestions(epic)
    ]
    assert epic_names == [n for n in names if n != "cimetidine"]
    assert "cimetidine" in epic["cards"][0]["detail"].lower()
    mapped = ClientProfile("epic", {"cimetidine": (Coding(EPIC_PREFERENCE_LIST_ITEM, "X-CIM"),)})
    [cimetidine] = [
        s
        for _, s in suggestions(run(kb, body, mapped))
        if s["actions"][0]["resource"]["medicationCodeableConcept"]["text"] == "cimetidine"
    ]
    concept = cimetidine["actions"][0]["resource"]["medicationCodeableConcept"]
    assert concept["coding"] == [{"system": EPIC_PREFERENCE_LIST_ITEM, "code": "X-CIM"}]


def test_epic_gets_no_rate_update_but_the_card_says_the_rate(kb: KnowledgeBase) -> None:
    generic = run(kb, load_request("order-sign-rituximab"), ClientProfile())
    epic = run(kb, load_request("order-sign-rituximab"), ClientProfile("epic"))
    [g], [e] = generic["cards"], epic["cards"]
    assert g["suggestions"][0]["actions"][0]["type"] == "update"
    assert "suggestions" not in e and "selectionBehavior" not in e
    assert "50 mg/h" in e["summary"] and e["summary"] == g["summary"]


def test_epic_service_requests_need_the_sites_code(kb: KnowledgeBase) -> None:
    body = scenario("carboplatin-anaphylaxis-reexposure")
    assert not suggestions(run(kb, body, ClientProfile("epic")))
    [(card, referral)] = suggestions(run(kb, body, EPIC_SITE))
    [action] = referral["actions"]
    assert action["resource"]["code"]["coding"] == [
        {"system": EPIC_ORDER_SET_ITEM, "code": "EXAMPLE-DESENSITIZATION"}
    ]
    # Epic shows the description only: it carries the reason the note gives other clients.
    note = action["resource"]["note"][0]["text"]
    assert (
        action["description"].startswith("Refer to allergy/immunology")
        and note in (action["description"])
    )
    assert card["selectionBehavior"] == "any"
    admission = run(kb, scenario("teclistamab-first-treatment-dose"), EPIC_SITE)
    [(_, admit)] = suggestions(admission)
    assert admit["actions"][0]["resource"]["code"]["coding"][0]["code"] == "EXAMPLE-ADMIT-48H"
    assert "48 h" in admit["actions"][0]["description"]


def test_epic_splits_a_suggestion_of_several_actions() -> None:
    actions = [
        {"type": "create", "description": "Order A 10 mg", "resource": {"resourceType": "X"}},
        {"type": "create", "description": "Order B 20 mg", "resource": {"resourceType": "Y"}},
    ]
    card = {
        "summary": "s",
        "suggestions": [
            {"label": "Both", "uuid": "u-1", "isRecommended": True, "actions": actions},
            {"label": "One", "uuid": "u-2", "actions": actions[:1]},
        ],
        "selectionBehavior": "at-most-one",
    }
    new_uuid = _counter()
    shaped = shape_card(json.loads(json.dumps(card)), ClientProfile("epic"), new_uuid)
    assert shaped["selectionBehavior"] == "any"
    assert [(s["label"], len(s["actions"])) for s in shaped["suggestions"]] == [
        ("Order A 10 mg", 1),
        ("Order B 20 mg", 1),
        ("One", 1),
    ]
    uuids = [s["uuid"] for s in shaped["suggestions"]]
    assert len(set(uuids)) == 3 and uuids[2] == "u-2"
    assert all(s.get("isRecommended") for s in shaped["suggestions"][:2])
    generic = shape_card(json.loads(json.dumps(card)), ClientProfile(), new_uuid)
    assert generic == card


def test_oracle_drops_app_context() -> None:
    link = {"label": "App", "url": "https://app.example.org/launch", "type": "smart"}
    card = {"summary": "s", "links": [{**link, "appContext": "patient=1"}]}
    assert shape_card(dict(card), ClientProfile("oracle"), _counter())["links"] == [link]
    assert shape_card(dict(card), ClientProfile(), _counter()) == card


def test_service_order_keys_cover_every_suggested_service_request(kb: KnowledgeBase) -> None:
    """A site maps codes to these keys: every one the rules can suggest is listed."""
    from cds_server.knowledge.schema import MonitoringSchema

    kinds = MonitoringSchema().fields["kind"].validate.choices  # type: ignore[union-attr]
    assert set(kinds) | {"allergy-immunology"} == set(REFERRALS)


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown client profile"):
        ClientProfile("cerner")  # type: ignore[arg-type]


# -- which client gets which profile ---------------------------------------------------------


def test_the_profile_setting_and_its_check(make_app: Callable[..., Flask]) -> None:
    with pytest.raises(ConfigError, match="CLIENT_PROFILE must be one of"):
        make_app(CLIENT_PROFILE="cerner")
    body = load_request("order-sign-rituximab")
    epic = (
        make_app(CLIENT_PROFILE="epic")
        .test_client()
        .post("/cds-services/infusion-safety-sign", json=body)
    )
    [card] = epic.get_json()["cards"]
    assert "suggestions" not in card  # Epic: no update action


def test_a_trusted_clients_profile_is_validated() -> None:
    with pytest.raises(ConfigError) as info:
        trusted_clients.parse({"clients": [kit.client_entry(profile="cerner")]})
    assert "clients.0.profile: Must be one of: generic, epic, oracle, sandbox" in str(info.value)
    loaded = trusted_clients.parse({"clients": [kit.client_entry(profile="epic")]})
    assert loaded.clients[0].profile == "epic"
    assert trusted_clients.parse({"clients": [kit.client_entry()]}).clients[0].profile is None


def test_each_client_gets_its_own_profile(make_app: Callable[..., Flask], tmp_path: Path) -> None:
    other = "https://other-ehr.example.org"
    app = kit.auth_app(
        make_app,
        tmp_path,
        kit.client_entry(profile="epic"),
        {**kit.client_entry(), "iss": other},
    )
    client = app.test_client()

    def cards(iss: str) -> list[dict[str, Any]]:
        token = kit.sign(kit.claims(kit.SIGN_AUD, iss=iss))
        resp = client.post(
            "/cds-services/infusion-safety-sign",
            json=load_request("order-sign-crd-style"),
            headers=kit.bearer(token),
        )
        assert resp.status_code == 200
        return resp.get_json()["cards"]  # type: ignore[no-any-return]

    [epic] = cards(kit.EHR_ISS)
    [generic] = cards(other)
    assert rule_of(epic) == rule_of(generic) == "premedication"
    epic_systems = {
        c["system"]
        for s in epic["suggestions"]
        for c in s["actions"][0]["resource"]["medicationCodeableConcept"]["coding"]
    }
    assert RXNORM_OID in epic_systems
    assert len(epic["suggestions"]) == len(generic["suggestions"]) - 1  # no cimetidine
    assert all(
        "check them against this line" not in s["actions"][0]["description"]
        for s in generic["suggestions"]
    )


def test_epic_gets_the_preference_list_codes_of_its_site_overlay(
    make_app: Callable[..., Flask],
) -> None:
    """The example site maps cetirizine to a preference-list item: an Epic client of that site
    gets it first in the suggested order; a generic client of the same site does not."""
    example = ROOT / "fixtures" / "site-example"
    body = json.loads((example / "requests" / "order-sign-rituximab-cycle-2.json").read_text())
    preference = {"system": EPIC_PREFERENCE_LIST_ITEM, "code": "EXAMPLE-PL-10001"}

    def cetirizine_codings(**settings: Any) -> list[dict[str, Any]]:
        response = (
            make_app(**settings).test_client().post("/cds-services/infusion-safety-sign", json=body)
        )
        found = [
            action["resource"]["medicationCodeableConcept"]["coding"]
            for _, suggestion in suggestions(response.get_json())
            for action in suggestion["actions"]
            if "cetirizine" in json.dumps(action.get("resource", {})).lower()
        ]
        assert len(found) == 1, found
        return [{k: c[k] for k in ("system", "code")} for c in found[0]]

    epic_site = cetirizine_codings(CLIENT_PROFILE="epic", SITE_DIR=str(example))
    assert epic_site[0] == preference
    assert {"system": RXNORM_OID, "code": epic_site[1]["code"]} in epic_site
    assert preference not in cetirizine_codings(SITE_DIR=str(example))
