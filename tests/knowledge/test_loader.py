"""The knowledge loader: the real ``cards/`` base loads, and broken files are rejected with
a precise ``file: field: problem`` message — every problem at once, never only the first.

Broken bases are small copies of real files (rituximab, obinutuzumab, glofitamab, the
agents, the protocols and the policy) written into ``tmp_path`` and then damaged.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cds_server.knowledge.loader import (
    DEFAULT_CARDS_DIR,
    KnowledgeError,
    Problem,
    load_knowledge,
)
from cds_server.knowledge.schema import FORMAT

DRUGS = ("glofitamab", "obinutuzumab", "rituximab")
CLASSES = ("anti-cd20", "cd3-bispecific")

Data = dict[str, Any]


def _read(path: Path) -> Data:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _write(path: Path, data: Data) -> None:
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


@pytest.fixture
def cards(tmp_path: Path) -> Path:
    """A small valid knowledge base copied from the real one."""
    root = tmp_path / "cards"
    root.mkdir()
    shutil.copy(DEFAULT_CARDS_DIR / "policy.yaml", root / "policy.yaml")
    for sub in ("agents", "protocols"):
        shutil.copytree(DEFAULT_CARDS_DIR / sub, root / sub)
    (root / "drugs").mkdir()
    (root / "classes").mkdir()
    for drug_id in DRUGS:
        shutil.copy(DEFAULT_CARDS_DIR / "drugs" / f"{drug_id}.yaml", root / "drugs")
    for class_id in CLASSES:
        data = _read(DEFAULT_CARDS_DIR / "classes" / f"{class_id}.yaml")
        data["members"] = [m for m in data["members"] if m in DRUGS]
        data.pop("cross_reactivity", None)
        _write(root / "classes" / f"{class_id}.yaml", data)
    return root


def edit(root: Path, rel: str, change: Callable[[Data], None]) -> None:
    path = root / rel
    data = _read(path)
    change(data)
    _write(path, data)


def problems_of(root: Path) -> list[Problem]:
    with pytest.raises(KnowledgeError) as info:
        load_knowledge(root)
    return info.value.problems


def has(problems: list[Problem], file: str, field: str, text: str) -> bool:
    return any(p.file == file and p.field == field and text in p.message for p in problems)


# ---- the real base and the fixture base load ----------------------------------------------


def test_real_cards_load() -> None:
    kb = load_knowledge()
    assert kb.version.startswith(f"{FORMAT}+")
    assert {"rituximab", "glofitamab", "obinutuzumab"} <= set(kb.drugs)
    assert "diphenhydramine" in kb.agents
    for drug in kb.drugs.values():
        assert drug.source_file == f"drugs/{drug.id}.yaml"
        assert drug.drug_class is None or drug.drug_class in kb.classes


def test_fixture_base_loads(cards: Path) -> None:
    kb = load_knowledge(cards)
    assert set(kb.drugs) == set(DRUGS)


def test_version_changes_with_any_edit(cards: Path) -> None:
    before = load_knowledge(cards).version
    edit(cards, "drugs/rituximab.yaml", lambda d: d.setdefault("notes", []).append("edited"))
    assert load_knowledge(cards).version != before


def test_missing_folder_is_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path / "nowhere")
    assert problems[0].message == "knowledge folder not found"


# ---- one broken thing at a time ------------------------------------------------------------


def _source_id(d: Data) -> str:
    return next(iter(d["sources"]))


def _append_rate(d: Data, **extra: Any) -> None:
    schedule = {
        "id": "test-schedule",
        "label": "test schedule",
        "kind": "titrated",
        "applies": {"infusions": "all"},
        "start": {"value": 1, "unit": "mg/h"},
        "evidence": "verified",
        "cite": [_source_id(d)],
    }
    schedule.update(extra)
    d.setdefault("rate_schedules", []).append({k: v for k, v in schedule.items() if v is not None})


def _append_premed(d: Data, **agent_fields: Any) -> None:
    agent = {
        "role": "h1-antihistamine",
        "agent": "diphenhydramine",
        "timing": "before the infusion",
        "evidence": "verified",
        "cite": [_source_id(d)],
    }
    agent.update(agent_fields)
    d.setdefault("premedication", []).append(
        {
            "id": "test-regimen",
            "applies": {"infusions": "all"},
            "agents": [{k: v for k, v in agent.items() if v is not None}],
            "evidence": "verified",
            "cite": [_source_id(d)],
        }
    )


def _n(cards: Path, rel: str, section: str) -> int:
    """Index the next appended item of ``section`` will have."""
    return len(_read(cards / rel).get(section, []))


RITUX = "drugs/rituximab.yaml"
OBINU = "drugs/obinutuzumab.yaml"


def test_bad_yaml_syntax(cards: Path) -> None:
    (cards / RITUX).write_text("format: x\nid: [unclosed\nname: y\n", encoding="utf-8")
    problems = problems_of(cards)
    bad = [p for p in problems if p.file == RITUX]
    assert len(bad) == 1
    assert bad[0].field.startswith("line ")
    assert "not valid YAML" in bad[0].message


def test_unknown_key(cards: Path) -> None:
    edit(cards, RITUX, lambda d: d.update(infusion_speed="fast"))
    assert has(problems_of(cards), RITUX, "infusion_speed", "Unknown field.")


def test_unknown_nested_key(cards: Path) -> None:
    edit(cards, RITUX, lambda d: d["identity"].update(nicknames=["rtx"]))
    assert has(problems_of(cards), RITUX, "identity.nicknames", "Unknown field.")


def test_missing_citation(cards: Path) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _append_premed(d, cite=None))
    problems = problems_of(cards)
    assert has(
        problems, RITUX, f"premedication.{n}.agents.0.cite", "Missing data for required field"
    )


def test_unknown_cite_id(cards: Path) -> None:
    n = _n(cards, RITUX, "rate_schedules")
    edit(cards, RITUX, lambda d: _append_rate(d, cite=["no-such-source"]))
    problems = problems_of(cards)
    assert has(problems, RITUX, f"rate_schedules.{n}.cite", "unknown source id 'no-such-source'")


def test_bad_evidence_level(cards: Path) -> None:
    edit(cards, RITUX, lambda d: d["identity"]["codes"][0].update(evidence="probable"))
    problems = problems_of(cards)
    assert has(problems, RITUX, "identity.codes.0.evidence", "Must be one of: verified, secondary")


def test_unknown_agent_id(cards: Path) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _append_premed(d, agent="loratadine-x"))
    problems = problems_of(cards)
    assert has(problems, RITUX, f"premedication.{n}.agents.0", "unknown agent 'loratadine-x'")


def test_unknown_alternative_agent_id(cards: Path) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _append_premed(d, alternatives=["cetirizine", "ghost-agent"]))
    problems = problems_of(cards)
    assert has(problems, RITUX, f"premedication.{n}.agents.0", "unknown agent 'ghost-agent'")


def test_agent_without_the_role(cards: Path) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _append_premed(d, agent="famotidine"))
    problems = problems_of(cards)
    assert has(
        problems,
        RITUX,
        f"premedication.{n}.agents.0",
        "agent 'famotidine' does not have role 'h1-antihistamine'",
    )


def _ruling_out(d: Data, agent: str, **extra: Any) -> None:
    _append_premed(
        d,
        not_covered_by=[
            {
                "agent": agent,
                "reason": "not effective",
                "evidence": "verified",
                "cite": [_source_id(d)],
            }
            | extra
        ],
    )


@pytest.mark.parametrize(
    ("ruled_out", "message"),
    [
        ("ghost-agent", "unknown agent 'ghost-agent'"),
        ("famotidine", "agent 'famotidine' does not have role 'h1-antihistamine'"),
        ("diphenhydramine", "agent 'diphenhydramine' is suggested here and ruled out at once"),
    ],
)
def test_not_covered_by_names_a_known_agent_of_the_role_not_suggested(
    cards: Path, ruled_out: str, message: str
) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _ruling_out(d, ruled_out))
    field = f"premedication.{n}.agents.0.not_covered_by.0"
    assert has(problems_of(cards), RITUX, field, message)


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"reason": ""}, "reason", "Shorter than minimum length"),
        ({"cite": ["nowhere"]}, "cite", "unknown source id 'nowhere'"),
        ({"evidence": "probable"}, "evidence", "Must be one of"),
    ],
)
def test_not_covered_by_needs_reason_evidence_and_citation(
    cards: Path, change: dict[str, Any], where: str, message: str
) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _ruling_out(d, "cetirizine", **change))
    field = f"premedication.{n}.agents.0.not_covered_by.0.{where}"
    assert has(problems_of(cards), RITUX, field, message)


def test_a_valid_not_covered_by_loads_with_its_provenance(cards: Path) -> None:
    edit(cards, RITUX, lambda d: _ruling_out(d, "cetirizine"))
    kb = load_knowledge(cards)
    [entry] = kb.drug("rituximab").premedication[-1].agents
    [x] = entry.not_covered_by
    assert (x.agent, x.reason, x.provenance.evidence) == ("cetirizine", "not effective", "verified")
    assert x.provenance.sources


def test_unknown_step_id(cards: Path) -> None:
    n = _n(cards, RITUX, "rate_schedules")
    edit(cards, RITUX, lambda d: _append_rate(d, applies={"steps": ["sud9"]}))
    problems = problems_of(cards)
    assert has(problems, RITUX, f"rate_schedules.{n}.applies.steps", "unknown step id 'sud9'")


def test_duplicate_code_across_two_drugs(cards: Path) -> None:
    rituximab_code = _read(cards / RITUX)["identity"]["codes"][0]
    edit(cards, OBINU, lambda d: d["identity"]["codes"].append(dict(rituximab_code)))
    problems = problems_of(cards)
    # Files are read in name order: obinutuzumab claims the code first, rituximab clashes.
    assert has(
        problems,
        RITUX,
        "identity.codes",
        f"code {rituximab_code['code']} is also claimed by 'obinutuzumab'",
    )


def test_id_differs_from_file_name(cards: Path) -> None:
    edit(cards, OBINU, lambda d: d.update(id="obinutuzumab-iv"))
    assert has(problems_of(cards), OBINU, "id", "must equal the file name 'obinutuzumab'")


def test_class_member_that_does_not_exist(cards: Path) -> None:
    edit(cards, "classes/anti-cd20.yaml", lambda d: d["members"].append("ghostuximab"))
    problems = problems_of(cards)
    assert has(problems, "classes/anti-cd20.yaml", "members", "unknown drug 'ghostuximab'")


def test_unknown_drug_class(cards: Path) -> None:
    edit(cards, OBINU, lambda d: d.update(drug_class="anti-cd21"))
    assert has(problems_of(cards), OBINU, "drug_class", "unknown class 'anti-cd21'")


def test_titrated_schedule_without_start(cards: Path) -> None:
    n = _n(cards, RITUX, "rate_schedules")
    edit(cards, RITUX, lambda d: _append_rate(d, start=None))
    problems = problems_of(cards)
    assert has(
        problems, RITUX, f"rate_schedules.{n}.start", "a titrated schedule needs a start rate"
    )


def test_min_dose_greater_than_max(cards: Path) -> None:
    n = _n(cards, RITUX, "premedication")
    edit(cards, RITUX, lambda d: _append_premed(d, dose={"min": 50, "max": 25, "unit": "mg"}))
    problems = problems_of(cards)
    assert has(problems, RITUX, f"premedication.{n}.agents.0.dose", "min is greater than max")


def test_wrong_format_version(cards: Path) -> None:
    edit(cards, OBINU, lambda d: d.update(format="infusion-cds-knowledge/0"))
    assert has(problems_of(cards), OBINU, "format", "Must be equal to")


def test_file_in_the_wrong_folder(cards: Path) -> None:
    shutil.copy(cards / "agents" / "famotidine.yaml", cards / "drugs" / "famotidine.yaml")
    assert has(problems_of(cards), "drugs/famotidine.yaml", "kind", "must be 'drug'")


# ---- every problem at once ----------------------------------------------------------------


def test_all_problems_are_reported_at_once(cards: Path) -> None:
    n_rate = _n(cards, RITUX, "rate_schedules")
    n_premed = _n(cards, RITUX, "premedication")

    def break_rituximab(d: Data) -> None:
        d["identity"]["codes"][0]["evidence"] = "probable"
        d["surprise"] = True
        _append_rate(d, start=None)
        _append_premed(d, agent="famotidine")

    edit(cards, RITUX, break_rituximab)
    edit(cards, OBINU, lambda d: d.update(drug_class="anti-cd21"))
    edit(cards, "classes/cd3-bispecific.yaml", lambda d: d["members"].append("ghostamab"))
    (cards / "agents" / "broken.yaml").write_text("roles: [\n", encoding="utf-8")

    with pytest.raises(KnowledgeError) as info:
        load_knowledge(cards)
    problems = info.value.problems
    expected = [
        (RITUX, "identity.codes.0.evidence", "Must be one of"),
        (RITUX, "surprise", "Unknown field."),
        (RITUX, f"rate_schedules.{n_rate}.start", "needs a start rate"),
        (OBINU, "drug_class", "unknown class 'anti-cd21'"),
        ("classes/cd3-bispecific.yaml", "members", "unknown drug 'ghostamab'"),
        ("agents/broken.yaml", "line 2", "not valid YAML"),
    ]
    for file, field, text in expected:
        assert has(problems, file, field, text), (file, field, text, problems)
    message = str(info.value)
    assert message.startswith(f"{len(problems)} problem(s) in the knowledge base:")
    for p in problems:
        assert f"  - {p.file}: {p.field}: {p.message}" in message
    # The schema error stops rituximab from being built, so its premedication cross-check
    # (a later stage) cannot run; the other files' problems are still all reported.
    assert not has(problems, RITUX, f"premedication.{n_premed}.agents.0", "does not have role")


def test_cross_file_problems_are_all_reported(cards: Path) -> None:
    n = _n(cards, RITUX, "premedication")

    def two_agent_problems(d: Data) -> None:
        _append_premed(d, agent="famotidine")
        d["premedication"][-1]["agents"].append(
            {
                "role": "antipyretic",
                "agent": "no-such-agent",
                "timing": "before",
                "evidence": "verified",
                "cite": [_source_id(d)],
            }
        )

    edit(cards, RITUX, two_agent_problems)
    edit(cards, OBINU, lambda d: d.update(drug_class="anti-cd21"))
    problems = problems_of(cards)
    assert has(problems, RITUX, f"premedication.{n}.agents.0", "does not have role")
    assert has(problems, RITUX, f"premedication.{n}.agents.1", "unknown agent 'no-such-agent'")
    assert has(problems, OBINU, "drug_class", "unknown class 'anti-cd21'")
