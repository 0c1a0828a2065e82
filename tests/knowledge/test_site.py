"""The site overlay format: the example loads, every problem of a broken one is named, and the
view applies each kind of entry to the label knowledge (and nothing else)."""

from __future__ import annotations

import copy
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge.overlay import load_view, site_view
from cds_server.knowledge.sitefile import SiteError, load_site
from cds_server.model import EPIC_PREFERENCE_LIST_ITEM as EPIC_PREFERENCE_LIST
from cds_server.model import Coding
from tests.conftest import ROOT

EXAMPLE = ROOT / "fixtures" / "site-example"


def example_data() -> dict[str, Any]:
    """The example overlay as data, to change one thing at a time."""
    data: dict[str, Any] = yaml.safe_load((EXAMPLE / "site.yaml").read_text())
    return data


def write_site(folder: Path, data: dict[str, Any], name: str = "site.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return folder


def problems_of(folder: Path, kb: KnowledgeBase) -> list[str]:
    with pytest.raises(SiteError) as caught:
        load_site(folder, kb)
    return [str(p) for p in caught.value.problems]


@pytest.fixture(scope="module")
def example(kb: KnowledgeBase) -> KnowledgeBase:
    return load_view(kb, EXAMPLE)


def test_the_example_lists_every_entry_with_its_approval(example: KnowledgeBase) -> None:
    site = example.site
    assert site is not None
    kinds = {e.id: e.kind for e in site.entries}
    assert kinds == {
        "jurisdiction": "jurisdiction",
        "anti-cd20-h1-cetirizine": "premedication",
        "rituximab-90-minute": "rate-schedule",
        "pertuzumab-observation-60": "observation-time",
        "daratumumab-premedication-in-order-set": "rule-off",
        "cetirizine-preference-list": "order-codes",
        "allergy-referral-preference-list": "order-codes",
    }
    h1 = next(e for e in site.entries if e.id == "anti-cd20-h1-cetirizine")
    assert (h1.scope, h1.target) == ("class", "anti-cd20")
    assert h1.protocol.attribution == (
        "Institution protocol ONC-PRE-07 v3 (Pharmacy & Therapeutics Committee, approved "
        "2026-09-14)"
    )
    assert "rituximab" in h1.drugs and "obinutuzumab" in h1.drugs
    assert any("rituximab.yaml: premedication 'every-infusion'" in r for r in h1.replaces)
    # Per drug, the entries that change it (its class's included), for the knowledge pages.
    about_rituximab = {e.id for e in site.entries_for("drug", "rituximab")}
    assert about_rituximab == {"anti-cd20-h1-cetirizine", "rituximab-90-minute"}
    assert {e.id for e in site.entries_for("agent", "cetirizine")} == {
        "anti-cd20-h1-cetirizine",
        "cetirizine-preference-list",
    }
    assert {e.id for e in site.entries_for("agent", "diphenhydramine")} == {
        "anti-cd20-h1-cetirizine"
    }
    assert {e.id for e in site.entries_for("class", "anti-cd20")} == {"anti-cd20-h1-cetirizine"}


def test_order_codes_are_keyed_by_agent_or_referral(example: KnowledgeBase) -> None:
    assert example.site is not None
    codes = example.site.order_codes
    assert set(codes) == {"cetirizine", "allergy-immunology"}
    (cetirizine,) = codes["cetirizine"]
    assert isinstance(cetirizine, Coding)
    assert cetirizine.system == EPIC_PREFERENCE_LIST
    assert cetirizine.code.startswith("EXAMPLE")


def test_the_view_changes_only_what_the_overlay_says(
    kb: KnowledgeBase, example: KnowledgeBase
) -> None:
    assert example.version.startswith(kb.version + "+site-")
    assert example.label_knowledge is kb and example.jurisdiction == "US"
    rituximab = example.drug("rituximab")
    h1 = next(a for r in rituximab.premedication for a in r.agents if a.role == "h1-antihistamine")
    label_h1 = next(
        a
        for r in kb.drug("rituximab").premedication
        for a in r.agents
        if a.role == "h1-antihistamine"
    )
    assert (h1.agent, h1.dose and h1.dose.min, h1.route) == ("cetirizine", 10, "intravenous")
    assert "diphenhydramine" in h1.alternatives and "cetirizine" not in h1.alternatives
    assert h1.provenance.sources == label_h1.provenance.sources  # the label stays cited
    tags = [c.evidence for c in h1.provenance.citations()]
    assert tags[0] == "institution" and "verified" in tags
    assert [s.id for s in rituximab.rate_schedules] == ["first", "subsequent"]
    (regimen,) = rituximab.local_regimens
    assert regimen.replaces is not None and regimen.replaces.id == "rapid-90-min"
    observed = next(
        m for m in example.drug("pertuzumab").monitoring if m.id == "after-each-infusion"
    )
    assert observed.duration is not None and (observed.duration.value, observed.duration.unit) == (
        60,
        "min",
    )
    assert observed.site is not None and "instead of 30 min" in observed.site.statement
    assert example.site is not None
    assert example.site.switched_off("premedication", "daratumumab")
    assert not example.site.switched_off("premedication", "rituximab")
    # Everything else is the label knowledge's, untouched.
    assert example.drug("paclitaxel") == kb.drug("paclitaxel")
    assert example.agents is kb.agents and example.classes is kb.classes


def test_an_edit_changes_the_version(kb: KnowledgeBase, tmp_path: Path) -> None:
    data = example_data()
    first = load_view(kb, write_site(tmp_path / "a", data)).version
    data["observation_times"][0]["duration"]["value"] = 45
    assert load_view(kb, write_site(tmp_path / "b", data)).version != first


def test_an_empty_folder_is_the_label_knowledge_in_the_us(
    kb: KnowledgeBase, tmp_path: Path
) -> None:
    site = load_site(tmp_path, kb)
    assert (site.jurisdiction, site.entries, site.rules_off) == ("US", (), frozenset())
    view = site_view(kb, site)
    assert view.drugs == kb.drugs


def test_no_folder_given_is_the_label_knowledge(kb: KnowledgeBase) -> None:
    assert load_view(kb, None) is kb


def test_a_missing_folder_is_refused(kb: KnowledgeBase, tmp_path: Path) -> None:
    assert problems_of(tmp_path / "nowhere", kb) == [
        f"{tmp_path / 'nowhere'}: (folder): site folder not found"
    ]


def test_every_problem_of_a_broken_overlay_is_named(kb: KnowledgeBase, tmp_path: Path) -> None:
    data = example_data()
    del data["protocols"]["onc-pre-07"]["approved_by"]
    data["protocols"]["gov-01"]["approved_on"] = (date.today() + timedelta(days=30)).isoformat()
    data["protocols"]["onc-rit-04"]["colour"] = "blue"
    data["premedication"].append(
        {
            "id": "h1-dexamethasone",
            "for": {"drug": "rituximab"},
            "role": "h1-antihistamine",
            "agent": "dexamethasone",
            "protocol": "onc-pre-07",
        }
    )
    data["rate_schedules"][0]["phases"][1]["percent"] = 70
    data["rate_schedules"].append(
        {
            "id": "made-up",
            "drug": "rituximab-biosimilar-x",
            "label": "x",
            "phases": [{"percent": 100, "minutes": 60}],
            "eligible": {},
            "protocol": "no-such-protocol",
        }
    )
    data["observation_times"].append(
        {
            "id": "teclistamab-shorter",
            "drug": "teclistamab",
            "requirement": "step-up-hospitalization",
            "duration": {"value": 24, "unit": "h"},
            "protocol": "onc-obs-02",
        }
    )
    data["rules_off"].append(
        {
            "id": "no-reactions",
            "for": {"drug": "carboplatin"},
            "topic": "prior-reaction",
            "protocol": "onc-dara-01",
        }
    )
    data["order_codes"][0]["codes"][0]["system"] = "preference list"
    folder = write_site(tmp_path, data)
    found = problems_of(folder, kb)
    expected = [
        "site.yaml: protocols.onc-pre-07.approved_by: Missing data for required field.",
        "site.yaml: protocols.onc-rit-04.colour: Unknown field.",
        "site.yaml: rate_schedules.0.phases: the phases give 90% of the dose; they must add up "
        "to 100%",
        "site.yaml: order_codes.0.codes.0.system: must be an absolute URI",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in found), (line, found)
    # Schema errors stop a file before the checks against the knowledge: fix them, and the
    # next round names those.
    data["protocols"]["onc-pre-07"]["approved_by"] = "Pharmacy & Therapeutics Committee"
    del data["protocols"]["onc-rit-04"]["colour"]
    data["rate_schedules"][0]["phases"][1]["percent"] = 80
    data["order_codes"][0]["codes"][0]["system"] = EPIC_PREFERENCE_LIST
    found = problems_of(write_site(tmp_path / "round-2", data), kb)
    expected = [
        "site.yaml: protocols.gov-01.approved_on: ",  # in the future: not yet approved
        "site.yaml: premedication.1.agent: agent 'dexamethasone' does not have role "
        "'h1-antihistamine' in cards/agents",
        "site.yaml: rate_schedules.1.drug: unknown drug 'rituximab-biosimilar-x'",
        "site.yaml: observation_times.1.requirement: 'step-up-hospitalization' is a "
        "hospitalization requirement; a site changes observation times only",
        "site.yaml: rules_off.1.topic: 'prior-reaction' cannot be switched off by a site",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in found), (line, found)
    assert any("not yet approved" in p for p in found)
    assert len(found) == len(expected) + 1  # + the unknown protocol of rate_schedules.1
    assert any(
        p.startswith("site.yaml: rate_schedules.1.protocol: unknown protocol") for p in found
    )


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            {"for": {"drug": "rituximab"}, "role": "h2-antagonist", "agent": "ranitidine"},
            "agent 'ranitidine' is marked no longer marketed",
        ),
        (
            {"for": {"drug": "obinutuzumab"}, "role": "corticosteroid", "agent": "hydrocortisone"},
            "obinutuzumab's label rules 'hydrocortisone' out as its corticosteroid",
        ),
        (
            {"for": {"drug": "pertuzumab"}, "role": "h1-antihistamine", "agent": "cetirizine"},
            "changes nothing: no premedication entry of role 'h1-antihistamine'",
        ),
        (
            {"for": {"agent": "famotidine"}, "role": "h1-antihistamine", "agent": "cetirizine"},
            "agent 'famotidine' does not have role 'h1-antihistamine'",
        ),
        (
            {"for": {"class": "no-such-class"}, "role": "h1-antihistamine", "agent": "cetirizine"},
            "unknown class 'no-such-class'",
        ),
        (
            {
                "for": {"drug": "rituximab"},
                "role": "h1-antihistamine",
                "agent": "cetirizine",
                "dose": {"value": 10, "unit": "tablets"},
            },
            "dose.unit: must be one of mg",
        ),
    ],
)
def test_a_preference_stays_within_the_role_and_the_label(
    kb: KnowledgeBase, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    data = example_data()
    data["premedication"] = [{"id": "under-test", "protocol": "onc-pre-07", **change}]
    found = problems_of(write_site(tmp_path, data), kb)
    assert len(found) == 1 and problem in found[0], found


def test_a_regimen_of_a_rule_switched_off_is_refused(kb: KnowledgeBase, tmp_path: Path) -> None:
    data = example_data()
    data["rules_off"].append(
        {
            "id": "anti-cd20-rates-off",
            "for": {"class": "anti-cd20"},
            "topic": "rate-titration",
            "protocol": "onc-rit-04",
        }
    )
    assert problems_of(write_site(tmp_path, data), kb) == [
        "site.yaml: rate_schedules.0.drug: rituximab's rate-titration rule is switched off here"
    ]


def test_two_files_share_protocols_and_ids_are_unique(kb: KnowledgeBase, tmp_path: Path) -> None:
    data = example_data()
    second = {
        "format": "infusion-site-overlay/1",
        "observation_times": [copy.deepcopy(data["observation_times"][0])],
    }
    second["observation_times"][0]["duration"]["value"] = 45
    write_site(tmp_path, data)
    write_site(tmp_path, second, "more.yaml")
    found = problems_of(tmp_path, kb)
    assert found == [  # files are read in name order: more.yaml first
        "site.yaml: observation_times.0.id: 'pertuzumab-observation-60' is also used in "
        "more.yaml observation_times.0"
    ]
    second["observation_times"][0]["id"] = "pertuzumab-observation-45"
    write_site(tmp_path, second, "more.yaml")
    assert problems_of(tmp_path, kb) == [
        "site.yaml: observation_times.0.requirement: pertuzumab 'after-each-infusion' is "
        "changed twice"
    ]


def test_the_narrowest_preference_wins(kb: KnowledgeBase, tmp_path: Path) -> None:
    data = example_data()
    data["premedication"] = [
        {
            "id": "everywhere-cetirizine",
            "for": {"agent": "diphenhydramine"},
            "role": "h1-antihistamine",
            "agent": "cetirizine",
            "protocol": "onc-pre-07",
        },
        {
            "id": "obinutuzumab-chlorphenamine",
            "for": {"drug": "obinutuzumab"},
            "role": "h1-antihistamine",
            "agent": "chlorphenamine",
            "protocol": "onc-pre-07",
        },
    ]
    view = load_view(kb, write_site(tmp_path, data))

    def h1(drug: str) -> set[str | None]:
        return {
            a.agent
            for r in view.drug(drug).premedication
            for a in r.agents
            if a.role == "h1-antihistamine"
        }

    assert h1("obinutuzumab") == {"chlorphenamine"}
    assert h1("daratumumab") == {"cetirizine"}  # an agent-wide preference reaches every drug
    statement = next(
        a.site.statement
        for r in view.drug("obinutuzumab").premedication
        for a in r.agents
        if a.site is not None
    )
    assert (
        statement == "chlorphenamine instead of diphenhydramine"
    )  # the label's, not another site entry's
