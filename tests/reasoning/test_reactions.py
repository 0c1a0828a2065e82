"""Prior-reaction tiering: critical only for a definite severe same-agent reaction."""

import shutil
from dataclasses import replace
from types import MappingProxyType

import pytest
import yaml

from cds_server.fhirdata.parse import ParseLog, parse_allergy
from cds_server.knowledge.loader import DEFAULT_CARDS_DIR, KnowledgeError, load_knowledge
from cds_server.model import SNOMED, RecognisedAllergy
from cds_server.reasoning import reactions

from .builders import allergy, days_ago, given, order, situation


def carbo(allergies, *, text="carboplatin 675 mg in 250 mL", history=None, rate=80, volume=250):
    o = order(
        "MedicationRequest/c", dose=675, rate=rate, rate_unit="mL/h", volume=volume, text=text
    )
    return situation([("carboplatin", o)], allergies=allergies, history=history)


def test_anaphylaxis_to_same_agent_is_critical_with_schedule_and_referral(kb):
    [f] = reactions.evaluate(carbo([allergy("carboplatin", anaphylaxis=True)]), kb)
    assert f.indicator == "critical"
    assert "do not give by standard infusion" in f.headline
    assert f.table[0][0] == "Step" and len(f.table) == 13
    assert f.table[-1][-1] == "675"
    [referral] = f.actions
    assert "allergy/immunology" in referral.label
    assert any(c.evidence == "verified" for c in f.citations)


@pytest.mark.parametrize(
    "kwargs",
    [{"criticality": "high"}, {"severity": "severe"}, {"anaphylaxis": True}],
)
def test_each_severity_marker_makes_it_definite(kb, kwargs):
    [f] = reactions.evaluate(carbo([allergy("carboplatin", **kwargs)]), kb)
    assert f.indicator == "critical"


@pytest.mark.parametrize("status", ["entered-in-error", "refuted"])
def test_refuted_or_erroneous_records_are_ignored(kb, status):
    a = allergy("carboplatin", anaphylaxis=True, verification=status)
    assert reactions.evaluate(carbo([a]), kb) == []


def test_unconfirmed_record_is_a_warning(kb):
    a = allergy("carboplatin", anaphylaxis=True, verification="unconfirmed")
    [f] = reactions.evaluate(carbo([a]), kb)
    assert f.indicator == "warning"


def test_inactive_record_is_a_warning(kb):
    a = allergy("carboplatin", anaphylaxis=True, clinical="resolved")
    [f] = reactions.evaluate(carbo([a]), kb)
    assert f.indicator == "warning"


def test_planned_desensitization_lowers_to_warning(kb):
    a = allergy("carboplatin", anaphylaxis=True)
    [f] = reactions.evaluate(carbo([a], text="carboplatin desensitization 12-step bag 3"), kb)
    assert f.indicator == "warning"
    assert any("desensitization is already planned" in p for p in f.points)


def test_tolerated_dose_since_the_reaction_lowers_the_tier(kb):
    a = allergy("carboplatin", anaphylaxis=True, recorded=days_ago(90))
    later = given("carboplatin", 1, dose=675, start_days_ago=30)
    [f] = reactions.evaluate(carbo([a], history=later), kb)
    assert f.indicator == "warning"
    assert any("tolerated since" in p for p in f.points)


def test_dose_before_the_reaction_is_not_tolerance(kb):
    a = allergy("carboplatin", anaphylaxis=True, recorded=days_ago(30))
    earlier = given("carboplatin", 1, dose=675, start_days_ago=90)
    [f] = reactions.evaluate(carbo([a], history=earlier), kb)
    assert f.indicator == "critical"


def test_mild_reaction_is_a_warning_with_guidance(kb):
    [f] = reactions.evaluate(carbo([allergy("carboplatin", severity="mild")]), kb)
    assert f.indicator == "warning"
    assert not f.table
    assert f.headline == "prior reaction to this drug (mild)"  # the severity at a glance


def test_a_reaction_without_a_recorded_severity_is_not_given_one(kb):
    a = allergy("carboplatin", severity="mild", verification="unconfirmed")
    b = allergy("carboplatin", severity="moderate", verification="unconfirmed")
    [f] = reactions.evaluate(carbo([a, b]), kb)  # two records, two severities: none named
    assert f.headline == "prior reaction to this drug"


def test_the_referral_says_severe_only_for_a_severe_reaction(kb):
    """Oxaliplatin's label contraindicates it after a reaction of any severity: a moderate
    urticaria is critical, and its referral must not call the reaction severe."""
    moderate = allergy("oxaliplatin", severity="moderate")
    o = order("MedicationRequest/o", dose=160, rate=250, rate_unit="mL/h", volume=500)
    [f] = reactions.evaluate(situation([("oxaliplatin", o)], allergies=[moderate]), kb)
    assert f.indicator == "critical"
    [referral] = f.actions
    assert referral.text.startswith("Allergy/immunology referral: prior reaction to oxaliplatin")
    [severe] = reactions.evaluate(carbo([allergy("carboplatin", anaphylaxis=True)]), kb)[0].actions
    assert "severe prior reaction to carboplatin" in severe.text


def test_missing_volume_reports_what_blocked_the_schedule(kb):
    [f] = reactions.evaluate(carbo([allergy("carboplatin", anaphylaxis=True)], volume=None), kb)
    assert f.indicator == "critical" and not f.table
    assert any("bag volume" in u for u in f.unknowns)


def test_allergy_to_another_drug_class_is_ignored(kb):
    assert reactions.evaluate(carbo([allergy("rituximab", anaphylaxis=True)]), kb) == []


def _epic_allergy(manifestation: dict) -> RecognisedAllergy:
    """An AllergyIntolerance as Epic sends it (coded manifestation with a text), parsed."""
    resource = {
        "resourceType": "AllergyIntolerance",
        "id": "eKd8Pt3ZjVxQbWmRlT9sNcA3",
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                    "code": "active",
                    "display": "Active",
                }
            ]
        },
        "verificationStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                    "code": "confirmed",
                    "display": "Confirmed",
                }
            ]
        },
        "category": ["medication"],
        "criticality": "high",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "40048",
                    "display": "carboplatin",
                }
            ],
            "text": "CARBOplatin",
        },
        "patient": {"reference": "Patient/eq081-VQEgP8drUUqCWzHfw3", "display": "Lymph, Test"},
        "recordedDate": "2026-03-02T15:20:00Z",
        "reaction": [{"manifestation": [manifestation], "severity": "severe"}],
    }
    parsed = parse_allergy(resource, "prefetch.allergies", ParseLog())
    assert parsed is not None
    return RecognisedAllergy(parsed, "drug", "carboplatin", "rxnorm")


@pytest.mark.parametrize(
    "manifestation",
    [
        {
            "coding": [{"system": SNOMED, "code": "39579001", "display": "Anaphylaxis"}],
            "text": "Anaphylaxis",
        },
        {
            "coding": [{"system": SNOMED, "code": "39579001", "display": "Anaphylaxis (disorder)"}],
            "text": "Anaphylaxis",
        },
        {
            "coding": [{"system": SNOMED, "code": "39579001", "display": "Anaphylaxis"}],
            "text": "anaphylaxis",
        },
    ],
    ids=["same", "semantic-tag", "case"],
)
def test_a_manifestation_whose_display_repeats_its_text_is_said_once(kb, manifestation):
    [f] = reactions.evaluate(carbo([_epic_allergy(manifestation)]), kb)
    [record] = [p for p in f.points if "on record" in p and "CARBOplatin" in p]
    assert record.casefold().count("anaphylaxis") == 1, record


def test_distinct_manifestations_are_all_named(kb):
    manifestation = {
        "coding": [
            {"system": SNOMED, "code": "39579001", "display": "Anaphylaxis"},
            {"system": SNOMED, "code": "271807003", "display": "Eruption of skin"},
        ],
        "text": "Anaphylaxis",
    }
    [f] = reactions.evaluate(carbo([_epic_allergy(manifestation)]), kb)
    [record] = [p for p in f.points if "on record" in p and "CARBOplatin" in p]
    assert "Anaphylaxis, Eruption of skin;" in record


def _with_protocols(kb, protocols, *, named: str | None = None):
    """The knowledge base with these desensitization protocols, carboplatin naming ``named``."""
    carboplatin = replace(kb.drugs["carboplatin"], desensitization_protocol=named)
    return replace(
        kb,
        protocols=MappingProxyType({p.id: p for p in protocols}),
        drugs=MappingProxyType({**kb.drugs, "carboplatin": carboplatin}),
    )


def _slow_copy(kb):
    [twelve] = kb.protocols.values()
    return replace(twelve, id="slow-copy", name="Slower copy", step_minutes=twelve.step_minutes * 2)


def test_the_drugs_named_protocol_gives_the_schedule(kb):
    [twelve] = kb.protocols.values()
    several = _with_protocols(kb, [twelve, _slow_copy(kb)], named="slow-copy")
    [f] = reactions.evaluate(carbo([allergy("carboplatin", anaphylaxis=True)]), several)
    assert f.indicator == "critical"
    assert f.table and any("Slower copy" in p for p in f.table_notes)
    assert f.table[1][4] == f"{twelve.step_minutes * 2:.4g}"  # the named protocol's minutes


def test_several_protocols_and_none_named_gives_no_schedule_and_says_why(kb):
    [twelve] = kb.protocols.values()
    several = _with_protocols(kb, [twelve, _slow_copy(kb)])
    [f] = reactions.evaluate(carbo([allergy("carboplatin", anaphylaxis=True)]), several)
    assert not f.table
    [why] = [u for u in f.unknowns if "desensitization protocol" in u]
    assert f"several ({twelve.id}, slow-copy)" in why
    assert "drugs/carboplatin.yaml names none" in why


def test_the_only_protocol_serves_a_drug_that_names_none(kb):
    assert kb.drugs["carboplatin"].desensitization_protocol is None
    [only] = kb.protocols.values()
    [f] = reactions.evaluate(carbo([allergy("carboplatin", anaphylaxis=True)]), kb)
    assert any(only.name in p for p in f.table_notes)


def test_check_cards_rejects_an_unknown_named_protocol(tmp_path):
    target = tmp_path / "cards"
    shutil.copytree(DEFAULT_CARDS_DIR, target)
    path = target / "drugs" / "carboplatin.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["desensitization_protocol"] = "no-such-protocol"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(KnowledgeError) as err:
        load_knowledge(target)
    assert "desensitization_protocol: unknown protocol 'no-such-protocol'" in str(err.value)
