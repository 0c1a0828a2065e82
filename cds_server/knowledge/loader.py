"""Reads ``cards/``, validates every file, and builds the immutable ``KnowledgeBase``.

All problems are collected as ``file: field: problem`` and raised together in one
``KnowledgeError`` so a pharmacist sees every mistake at once, before the service starts.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from marshmallow import ValidationError

from cds_server.knowledge.model import (
    Agent,
    AllergyRisk,
    Applicability,
    AvoidedAgent,
    CardPolicy,
    CodeEntry,
    CourseAlert,
    CrossReactivity,
    DayRange,
    DesensitizationProtocol,
    DoseRange,
    DoseStep,
    DosingSchedule,
    Drug,
    DrugClass,
    EngineSettings,
    Identity,
    Indication,
    IndicationCode,
    KnowledgeBase,
    MonitoringRequirement,
    NotCovering,
    OverrideReason,
    PremedAgent,
    PremedRegimen,
    Prerequisite,
    Provenance,
    RateSchedule,
    ReactionGuidance,
    RestartRule,
    Source,
    StepUpSchedule,
    TocilizumabReadiness,
    Topic,
    WeightBand,
    WeightBasedDosing,
)
from cds_server.knowledge.schema import FORMAT, SCHEMAS, flatten_errors
from cds_server.model import ATC, NDC, RXNORM, SNOMED, Coding, Quantity
from cds_server.shipped import shipped_path

SYSTEM_URIS = {"rxnorm": RXNORM, "atc": ATC, "snomed": SNOMED, "ndc": NDC}
SUBDIRS = {"drugs": "drug", "classes": "class", "agents": "agent", "protocols": "protocol"}
DEFAULT_CARDS_DIR = shipped_path("cards")  # in the wheel, else the checkout's top-level cards/


@dataclass(frozen=True)
class Problem:
    """One validation problem, located precisely."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.message}"


class KnowledgeError(Exception):
    """The knowledge base is invalid; ``problems`` lists every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in the knowledge base:\n{lines}")


class _Census:
    """What the whole base cites: every source (with its file) and facts per evidence level."""

    def __init__(self) -> None:
        self.sources: list[tuple[str, Source]] = []
        self.evidence: Counter[str] = Counter()


class _FileContext:
    """Resolves citation ids of one file and records problems against it."""

    def __init__(
        self,
        name: str,
        sources: Mapping[str, Any],
        problems: list[Problem],
        census: _Census | None = None,
        indications: Mapping[str, Indication] | None = None,
    ):
        self.name = name
        self.problems = problems
        self.census = census or _Census()
        # None when policy.yaml could not be read: its own problems are reported instead.
        self.indications = indications
        self.sources = {sid: Source.from_yaml(sid, s) for sid, s in sources.items()}
        self.census.sources.extend((name, src) for src in self.sources.values())

    def problem(self, path: str, message: str) -> None:
        self.problems.append(Problem(self.name, path, message))

    def provenance(self, data: Mapping[str, Any], path: str) -> Provenance:
        cited: list[Source] = []
        for cid in data["cite"]:
            if cid in self.sources:
                cited.append(self.sources[cid])
            else:
                self.problem(f"{path}.cite", f"unknown source id '{cid}' (add it under sources:)")
        self.census.evidence[data["evidence"]] += 1
        return Provenance(
            evidence=data["evidence"],
            sources=tuple(cited),
            jurisdiction=data.get("jurisdiction"),
            note=data.get("note"),
        )


def _qty(data: Mapping[str, Any] | None) -> Quantity | None:
    return Quantity(value=float(data["value"]), unit=data["unit"]) if data else None


def _days(data: Mapping[str, Any] | None) -> DayRange | None:
    return DayRange(**data) if data else None


def _applies(ctx: _FileContext, data: Mapping[str, Any]) -> Applicability:
    cycles = data.get("cycle_start")
    indications = []
    for name in data.get("indications", ()):
        if ctx.indications is None:
            continue
        if name in ctx.indications:
            indications.append(ctx.indications[name])
        else:
            ctx.problem("applies.indications", f"unknown indication '{name}' (cards/policy.yaml)")
    return Applicability(
        infusions=data.get("infusions", "all"),
        infusion_numbers=tuple(data.get("infusion_numbers", ())),
        steps=tuple(data.get("steps", ())),
        condition=data.get("condition"),
        exposures_at_least=(data.get("exposures") or {}).get("at_least"),
        gap_days=_days(data.get("gap_days")),
        cycle_start=tuple(cycles) if isinstance(cycles, list) else cycles,
        restart=data.get("restart"),
        jurisdictions=tuple(data.get("jurisdictions", ())),
        indications=tuple(indications),
    )


def _identity(ctx: _FileContext, data: Mapping[str, Any], path: str) -> Identity:
    codes = tuple(
        CodeEntry(
            coding=Coding(SYSTEM_URIS[c["system"]], c["code"], c.get("display")),
            tty=c.get("tty"),
            provenance=ctx.provenance(c, f"{path}.codes.{i}"),
        )
        for i, c in enumerate(data.get("codes", ()))
    )
    return Identity(
        names=tuple(n.lower() for n in data["names"]),
        brands=tuple(data.get("brands", ())),
        biosimilars=tuple((b["name"].lower(), b.get("brand")) for b in data.get("biosimilars", ())),
        exclude_terms=tuple(t.lower() for t in data.get("exclude_terms", ())),
        codes=codes,
        exclude_routes=tuple(t.lower() for t in data.get("exclude_routes", ())),
    )


def _dose_range(data: Mapping[str, Any] | None) -> DoseRange | None:
    if not data:
        return None
    if "value" in data:
        return DoseRange(data["value"], data["value"], data["unit"])
    return DoseRange(data["min"], data["max"], data["unit"])


def _build_drug(ctx: _FileContext, d: Mapping[str, Any]) -> Drug:
    label = None
    if "label" in d:
        label = ctx.sources.get(d["label"])
        if label is None:
            ctx.problem("label", f"unknown source id '{d['label']}'")
    premeds = tuple(
        PremedRegimen(
            id=r["id"],
            applies=_applies(ctx, r["applies"]),
            agents=tuple(
                PremedAgent(
                    role=a["role"],
                    agent=a.get("agent"),
                    alternatives=tuple(a.get("alternatives", ())),
                    dose=_dose_range(a.get("dose")),
                    route=a.get("route"),
                    timing=a["timing"],
                    required=a["required"],
                    provenance=ctx.provenance(a, f"premedication.{i}.agents.{j}"),
                    not_covered_by=tuple(
                        NotCovering(
                            agent=x["agent"],
                            reason=x["reason"],
                            provenance=ctx.provenance(
                                x, f"premedication.{i}.agents.{j}.not_covered_by.{k}"
                            ),
                        )
                        for k, x in enumerate(a.get("not_covered_by", ()))
                    ),
                )
                for j, a in enumerate(r["agents"])
            ),
            text=r.get("text"),
            provenance=ctx.provenance(r, f"premedication.{i}"),
        )
        for i, r in enumerate(d.get("premedication", ()))
    )
    rates = tuple(
        RateSchedule(
            id=r["id"],
            label=r["label"],
            kind=r["kind"],
            applies=_applies(ctx, r["applies"]),
            start=_qty(r.get("start")),
            increment=_qty(r.get("increment")),
            every_min=r.get("every_min"),
            steps=tuple(Quantity(s["value"], s["unit"]) for s in r.get("steps", ())),
            max=_qty(r.get("max")),
            duration=_qty(r.get("duration")),
            text=r.get("text"),
            provenance=ctx.provenance(r, f"rate_schedules.{i}"),
        )
        for i, r in enumerate(d.get("rate_schedules", ()))
    )
    step_up = tuple(
        StepUpSchedule(
            id=s["id"],
            label=s["label"],
            steps=tuple(
                DoseStep(st["id"], st["label"], Quantity(**st["dose"]), st.get("day"))
                for st in s["steps"]
            ),
            provenance=ctx.provenance(s, f"step_up.{i}"),
        )
        for i, s in enumerate(d.get("step_up", ()))
    )
    monitoring = tuple(
        MonitoringRequirement(
            id=m["id"],
            kind=m["kind"],
            applies=_applies(ctx, m["applies"]),
            duration=_qty(m.get("duration")),
            text=m["text"],
            provenance=ctx.provenance(m, f"monitoring.{i}"),
        )
        for i, m in enumerate(d.get("monitoring", ()))
    )
    prereqs = tuple(
        Prerequisite(
            id=p["id"],
            applies=_applies(ctx, p["applies"]),
            requires_drug=p["requires_drug"],
            lookback_days=p.get("lookback_days"),
            text=p["text"],
            provenance=ctx.provenance(p, f"prerequisites.{i}"),
        )
        for i, p in enumerate(d.get("prerequisites", ()))
    )
    toci = tuple(
        TocilizumabReadiness(
            applies=_applies(ctx, t["applies"]),
            doses_on_hand=t.get("doses_on_hand"),
            text=t["text"],
            provenance=ctx.provenance(t, f"tocilizumab.{i}"),
        )
        for i, t in enumerate(d.get("tocilizumab", ()))
    )
    reactions = tuple(
        ReactionGuidance(
            id=r["id"],
            kind=r["kind"],
            grades=r.get("grades"),
            text=r["text"],
            provenance=ctx.provenance(r, f"reactions.{i}"),
        )
        for i, r in enumerate(d.get("reactions", ()))
    )
    restart = tuple(
        RestartRule(
            id=r["id"],
            after_steps=tuple(r["after_steps"]),
            gap_days=DayRange(**r["gap_days"]),
            restart_at=r.get("restart_at"),
            text=r["text"],
            provenance=ctx.provenance(r, f"restart.{i}"),
            schedule=DosingSchedule(**r["schedule"]) if r.get("schedule") else None,
        )
        for i, r in enumerate(d.get("restart", ()))
    )
    alerts = tuple(
        CourseAlert(
            id=a["id"],
            applies=_applies(ctx, a["applies"]),
            indicator=a["indicator"],
            headline=a["headline"],
            text=a["text"],
            provenance=ctx.provenance(a, f"course_alerts.{i}"),
        )
        for i, a in enumerate(d.get("course_alerts", ()))
    )
    allergy_risks = tuple(
        AllergyRisk(
            id=a["id"],
            terms=tuple(t.lower() for t in a["terms"]),
            applies=_applies(ctx, a["applies"]),
            indicator=a["indicator"],
            headline=a["headline"],
            text=a["text"],
            provenance=ctx.provenance(a, f"allergy_risks.{i}"),
        )
        for i, a in enumerate(d.get("allergy_risks", ()))
    )
    avoided = tuple(
        AvoidedAgent(
            id=a["id"],
            role=a["role"],
            headline=a["headline"],
            text=a["text"],
            provenance=ctx.provenance(a, f"avoided_agents.{i}"),
        )
        for i, a in enumerate(d.get("avoided_agents", ()))
    )
    step_ids = [st.id for s in step_up for st in s.steps]
    dupes = {s for s in step_ids if step_ids.count(s) > 1}
    for dup in sorted(dupes):
        ctx.problem("step_up", f"step id '{dup}' is used more than once")
    applicabilities: tuple[tuple[str, tuple[Applicability, ...]], ...] = (
        ("premedication", tuple(r.applies for r in premeds)),
        ("rate_schedules", tuple(r.applies for r in rates)),
        ("monitoring", tuple(m.applies for m in monitoring)),
        ("prerequisites", tuple(p.applies for p in prereqs)),
        ("tocilizumab", tuple(t.applies for t in toci)),
        ("course_alerts", tuple(a.applies for a in alerts)),
        ("allergy_risks", tuple(a.applies for a in allergy_risks)),
    )
    for section, applies_list in applicabilities:
        for i, applies in enumerate(applies_list):
            for step in applies.steps:
                if step not in step_ids:
                    ctx.problem(f"{section}.{i}.applies.steps", f"unknown step id '{step}'")
            if applies.restart and not restart:
                ctx.problem(f"{section}.{i}.applies.restart", "the drug has no restart rows")
            if applies.cycle_start and d.get("new_cycle_after_days") is None:
                ctx.problem(
                    f"{section}.{i}.applies.cycle_start",
                    "cycle starts need new_cycle_after_days (how a new cycle is told from the "
                    "dates when the order does not say)",
                )
    for i, row in enumerate(restart):
        for step in (*row.after_steps, *((row.restart_at,) if row.restart_at else ())):
            if step not in step_ids:
                ctx.problem(f"restart.{i}", f"unknown step id '{step}'")
    for step in {s for r in restart for s in r.after_steps}:
        rows = [r for r in restart if step in r.after_steps]
        for a, b in ((a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]):
            if a.schedule and b.schedule and a.schedule != b.schedule:
                continue  # one row per schedule: they may cover the same gap
            lo = max(a.gap_days.first or 0, b.gap_days.first or 0)
            ends = [d.last for d in (a.gap_days, b.gap_days) if d.last is not None]
            hi = min(ends) if ends else lo
            if lo <= hi:
                ctx.problem("restart", f"rows '{a.id}' and '{b.id}' overlap after '{step}'")
    return Drug(
        id=d["id"],
        name=d["name"],
        display=d["display"],
        drug_class=d.get("drug_class"),
        families=tuple(d.get("families", ())),
        route=d.get("route"),
        label=label,
        identity=_identity(ctx, d["identity"], "identity"),
        premedication=premeds,
        rate_schedules=rates,
        step_up=step_up,
        monitoring=monitoring,
        prerequisites=prereqs,
        tocilizumab=toci,
        reactions=reactions,
        desensitization_eligible=d["desensitization_eligible"],
        desensitization_protocol=d["desensitization_protocol"],
        crs_risk=d["crs_risk"],
        notes=tuple(d.get("notes", ())),
        source_file=ctx.name,
        restart=restart,
        course_alerts=alerts,
        allergy_risks=allergy_risks,
        avoided_agents=avoided,
        new_cycle_after_days=d.get("new_cycle_after_days"),
    )


def _build_class(ctx: _FileContext, d: Mapping[str, Any]) -> DrugClass:
    return DrugClass(
        id=d["id"],
        name=d["name"],
        members=tuple(d["members"]),
        identity=_identity(ctx, d["identity"], "identity"),
        cross_reactivity=tuple(
            CrossReactivity(
                id=c["id"],
                members=tuple(c["members"]),
                text=c["text"],
                provenance=ctx.provenance(c, f"cross_reactivity.{i}"),
            )
            for i, c in enumerate(d.get("cross_reactivity", ()))
        ),
        source_file=ctx.name,
    )


def _build_agent(ctx: _FileContext, d: Mapping[str, Any]) -> Agent:
    return Agent(
        id=d["id"],
        name=d["name"],
        roles=tuple(d["roles"]),
        identity=_identity(ctx, d["identity"], "identity"),
        weight_based_dosing=tuple(
            WeightBasedDosing(
                id=w["id"],
                indication=w["indication"],
                bands=tuple(
                    WeightBand(b.get("min_kg"), b.get("max_kg"), Quantity(**b["dose"]))
                    for b in w["bands"]
                ),
                max_dose=_qty(w.get("max_dose")),
                route=w.get("route"),
                text=w.get("text"),
                provenance=ctx.provenance(w, f"weight_based_dosing.{i}"),
            )
            for i, w in enumerate(d.get("weight_based_dosing", ()))
        ),
        source_file=ctx.name,
        marketed=d["market_status"]["marketed"] if "market_status" in d else True,
        market_status=(
            ctx.provenance(d["market_status"], "market_status") if "market_status" in d else None
        ),
        market_text=d["market_status"]["text"] if "market_status" in d else None,
    )


def _build_protocol(ctx: _FileContext, d: Mapping[str, Any]) -> DesensitizationProtocol:
    bags = tuple(d["bag_dilutions"])
    steps = d["steps"]
    for i, s in enumerate(steps):
        if s["bag"] > len(bags):
            ctx.problem(f"steps.{i}.bag", f"bag {s['bag']} does not exist ({len(bags)} bags)")
    return DesensitizationProtocol(
        id=d["id"],
        name=d["name"],
        bag_dilutions=bags,
        step_bags=tuple(s["bag"] for s in steps),
        step_rates_ml_h=tuple(s["rate_ml_h"] for s in steps),
        step_minutes=d["step_minutes"],
        convention=d["convention"],
        min_final_rate_ml_h=d.get("min_final_rate_ml_h"),
        text=d["text"],
        provenance=ctx.provenance(d, "(file)"),
        source_file=ctx.name,
    )


def _build_policy(d: Mapping[str, Any], problems: list[Problem], census: _Census) -> CardPolicy:
    reason_codes = {r["code"] for r in d["override_reasons"]}
    for key in ("code", "wire_code"):
        first: dict[str, int] = {}
        for i, t in enumerate(d["topics"]):
            if t[key].casefold() in first:
                problems.append(
                    Problem(
                        "policy.yaml",
                        f"topics.{i}.{key}",
                        f"'{t[key]}' is already topic {first[t[key].casefold()]}'s",
                    )
                )
            first.setdefault(t[key].casefold(), i)
    for i, t in enumerate(d["topics"]):
        for code in t["override_reasons"]:
            if code not in reason_codes:
                problems.append(
                    Problem(
                        "policy.yaml", f"topics.{i}.override_reasons", f"unknown reason '{code}'"
                    )
                )
    ctx = _FileContext("policy.yaml", d["sources"], problems, census)
    eng = d["engine"]
    severe = eng["severe_reaction"]
    engine = EngineSettings(
        dose_match_tolerance=eng["dose_match_tolerance"],
        desensitization_terms=tuple(t.lower() for t in eng["desensitization_terms"]),
        severe_codes=tuple(
            Coding(SYSTEM_URIS[c["system"]], c["code"], c["display"])
            for c in severe["manifestation_codes"]
        ),
        severe_terms=tuple(t.lower() for t in severe["manifestation_terms"]),
        severe_text=severe["text"],
        severe_provenance=tuple(
            ctx.provenance(c, f"engine.severe_reaction.manifestation_codes.{i}")
            for i, c in enumerate(severe["manifestation_codes"])
        ),
    )
    indications: dict[str, Indication] = {}
    for i, ind in enumerate(d["indications"]):
        if ind["id"] in indications:
            problems.append(Problem("policy.yaml", f"indications.{i}.id", "defined twice"))
        indications[ind["id"]] = Indication(
            id=ind["id"],
            display=ind["display"],
            codes=tuple(
                _indication_code(ctx, c, f"indications.{i}.codes.{j}")
                for j, c in enumerate(ind["codes"])
            ),
        )
    return CardPolicy(
        indications=MappingProxyType(indications),
        not_indications=tuple(
            _indication_code(ctx, c, f"not_indications.{i}")
            for i, c in enumerate(d["not_indications"])
        ),
        engine=engine,
        system=d["topic_system"],
        topics=tuple(
            Topic(t["code"], t["display"], t["wire_code"], tuple(t["override_reasons"]))
            for t in d["topics"]
        ),
        override_system=d["override_reason_system"],
        override_reasons=tuple(
            OverrideReason(
                t["code"],
                t["display"],
                t.get("snooze_days"),
                t.get("offered_when"),
                t.get("hl7_non_adherence"),
            )
            for t in d["override_reasons"]
        ),
        publisher=d["publisher"],
        publisher_url=d.get("publisher_url"),
    )


def _indication_code(ctx: _FileContext, data: Mapping[str, Any], path: str) -> IndicationCode:
    return IndicationCode(
        system=data["system"],
        code=data["code"],
        display=data["display"],
        provenance=ctx.provenance(data, path),
    )


_BUILDERS = {
    "drug": _build_drug,
    "class": _build_class,
    "agent": _build_agent,
    "protocol": _build_protocol,
}


# libyaml's safe loader when PyYAML has it: the same data, parsed eight times faster (start-up).
_FAST_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path, rel: str, problems: list[Problem]) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            try:
                return yaml.load(fh, Loader=_FAST_SAFE_LOADER)  # a safe loader
            except yaml.YAMLError:
                fh.seek(0)  # invalid: report it exactly as the pure-Python loader words it
                return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "(file)"
        problems.append(Problem(rel, where, f"not valid YAML: {getattr(exc, 'problem', exc)}"))
    except OSError as exc:
        problems.append(Problem(rel, "(file)", f"cannot read: {exc.strerror}"))
    return None


def _validate(rel: str, raw: Any, kind: str, problems: list[Problem]) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        problems.append(Problem(rel, "(file)", "must be a YAML mapping"))
        return None
    if raw.get("kind") != kind:
        problems.append(Problem(rel, "kind", f"must be '{kind}' for a file in this folder"))
        return None
    try:
        loaded: dict[str, Any] = SCHEMAS[kind]().load(raw)
        return loaded
    except ValidationError as err:
        problems.extend(Problem(rel, f, m) for f, m in flatten_errors(err.messages))
        return None


def _cross_checks(kb: dict[str, dict[str, Any]], problems: list[Problem]) -> None:
    drugs, classes, agents = kb["drug"], kb["class"], kb["agent"]
    for drug in drugs.values():
        if drug.drug_class and drug.drug_class not in classes:
            problems.append(
                Problem(drug.source_file, "drug_class", f"unknown class '{drug.drug_class}'")
            )
        protocol = drug.desensitization_protocol
        if protocol and protocol not in kb["protocol"]:
            problems.append(
                Problem(
                    drug.source_file,
                    "desensitization_protocol",
                    f"unknown protocol '{protocol}' (add cards/protocols/{protocol}.yaml)",
                )
            )
        for i, reg in enumerate(drug.premedication):
            for j, ag in enumerate(reg.agents):
                for aid in (ag.agent, *ag.alternatives):
                    if aid and aid not in agents:
                        problems.append(
                            Problem(
                                drug.source_file,
                                f"premedication.{i}.agents.{j}",
                                f"unknown agent '{aid}' (add cards/agents/{aid}.yaml)",
                            )
                        )
                    elif aid and ag.role not in agents[aid].roles:
                        problems.append(
                            Problem(
                                drug.source_file,
                                f"premedication.{i}.agents.{j}",
                                f"agent '{aid}' does not have role '{ag.role}'",
                            )
                        )
                for k, x in enumerate(ag.not_covered_by):
                    where = f"premedication.{i}.agents.{j}.not_covered_by.{k}"
                    if x.agent not in agents:
                        message = f"unknown agent '{x.agent}' (add cards/agents/{x.agent}.yaml)"
                    elif ag.role not in agents[x.agent].roles:
                        message = f"agent '{x.agent}' does not have role '{ag.role}'"
                    elif x.agent in (ag.agent, *ag.alternatives):
                        message = f"agent '{x.agent}' is suggested here and ruled out at once"
                    else:
                        continue
                    problems.append(Problem(drug.source_file, where, message))
        for i, pre in enumerate(drug.prerequisites):
            if pre.requires_drug not in drugs:
                problems.append(
                    Problem(
                        drug.source_file,
                        f"prerequisites.{i}.requires_drug",
                        f"unknown drug '{pre.requires_drug}'",
                    )
                )
    for cls in classes.values():
        for member in cls.members:
            if member not in drugs:
                problems.append(Problem(cls.source_file, "members", f"unknown drug '{member}'"))
        for i, cr in enumerate(cls.cross_reactivity):
            for member in cr.members:
                if member not in drugs:
                    problems.append(
                        Problem(
                            cls.source_file,
                            f"cross_reactivity.{i}.members",
                            f"unknown drug '{member}'",
                        )
                    )
    _check_unique_codes(drugs.values(), problems)


def _check_unique_codes(drugs: Iterable[Drug], problems: list[Problem]) -> None:
    """A code or name may identify only one drug, or recognition would be ambiguous."""
    seen: dict[tuple[str | None, str | None], str] = {}
    for drug in drugs:
        for entry in drug.identity.codes:
            key = (entry.coding.system, entry.coding.code)
            if key in seen and seen[key] != drug.id:
                problems.append(
                    Problem(
                        drug.source_file,
                        "identity.codes",
                        f"code {entry.coding.code} is also claimed by '{seen[key]}'",
                    )
                )
            seen.setdefault(key, drug.id)


def load_knowledge(cards_dir: Path | str | None = None) -> KnowledgeBase:
    """Load and validate the whole knowledge base; raise ``KnowledgeError`` on any problem."""
    root = Path(cards_dir) if cards_dir else DEFAULT_CARDS_DIR
    problems: list[Problem] = []
    census = _Census()
    built: dict[str, dict[str, Any]] = {k: {} for k in SUBDIRS.values()}
    digest = hashlib.sha256()
    files: list[str] = []
    if not root.is_dir():
        raise KnowledgeError([Problem(str(root), "(folder)", "knowledge folder not found")])

    policy_path = root / "policy.yaml"
    policy = None
    raw_policy = _read_yaml(policy_path, "policy.yaml", problems)
    if raw_policy is not None:
        digest.update(policy_path.read_bytes())
        files.append("policy.yaml")
        data = _validate("policy.yaml", raw_policy, "policy", problems)
        if data:
            policy = _build_policy(data, problems, census)

    for sub, kind in SUBDIRS.items():
        for path in sorted((root / sub).glob("*.yaml")):
            rel = f"{sub}/{path.name}"
            raw = _read_yaml(path, rel, problems)
            if raw is None:
                continue
            digest.update(rel.encode() + b"\0" + path.read_bytes())
            files.append(rel)
            data = _validate(rel, raw, kind, problems)
            if data is None:
                continue
            if data["id"] != path.stem:
                problems.append(Problem(rel, "id", f"must equal the file name '{path.stem}'"))
            ctx = _FileContext(
                rel, data["sources"], problems, census, policy.indications if policy else None
            )
            built[kind][data["id"]] = _BUILDERS[kind](ctx, data)

    _cross_checks(built, problems)
    if problems or policy is None:
        raise KnowledgeError(problems or [Problem("policy.yaml", "(file)", "missing")])
    return KnowledgeBase(
        version=f"{FORMAT}+{digest.hexdigest()[:12]}",
        format=FORMAT,
        drugs=MappingProxyType(built["drug"]),
        classes=MappingProxyType(built["class"]),
        agents=MappingProxyType(built["agent"]),
        protocols=MappingProxyType(built["protocol"]),
        policy=policy,
        files=tuple(files),
        sources=tuple(census.sources),
        fact_evidence=MappingProxyType(dict(census.evidence)),
    )
