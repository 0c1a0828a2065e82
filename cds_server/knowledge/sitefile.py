"""Reads a site folder (an institution's overlay on the label knowledge) into a ``Site``.

Format ``infusion-site-overlay/1``, documented for pharmacists in ``cards/README.md``; unknown
keys are errors. Every entry cites one of the folder's approved ``protocols`` (document,
version, approval body and date). Each file is validated on its own, then the whole folder
against the label knowledge (unknown drug, class, agent, rule or fact; an agent outside its
role; a share of the dose that does not add up…): every problem is collected and raised at
once in a ``SiteError``, as ``file: field: problem``, like ``KnowledgeError``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

import yaml
from marshmallow import ValidationError, fields, validate, validates_schema

from cds_server.knowledge.loader import KnowledgeError, Problem
from cds_server.knowledge.model import (
    ROLE_NAMES,
    AgentPreference,
    DoseRange,
    Drug,
    Eligibility,
    KnowledgeBase,
    LocalProtocol,
    LocalRegimen,
    ObservationTime,
    RatePhase,
    Site,
    SiteChange,
    SiteEntry,
    SiteEntryKind,
    SiteScope,
    Source,
)
from cds_server.knowledge.schema import (
    ID,
    JURISDICTION,
    NON_EMPTY,
    ROLES,
    DoseRangeSchema,
    QuantitySchema,
    SourceSchema,
    _Strict,
    flatten_errors,
)
from cds_server.model import (
    EPIC_PREFERENCE_LIST_ITEM,
    MICROGRAM_UNITS,
    REFERRALS,
    Coding,
    Quantity,
)

FORMAT = "infusion-site-overlay/1"
DEFAULT_JURISDICTION = "US"
# Rules a site may switch off for a drug. Not: prior-reaction and treatment-course (they give
# critical cards), order-not-checked (the promise never to be silent about an unchecked
# order) and patient-summary (not a rule about one drug).
SWITCHABLE_TOPICS = (
    "premedication",
    "rate-titration",
    "monitoring-admission",
    "pretreatment",
    "crs-readiness",
    "label-precaution",
)
# What a site's order codes may be keyed by besides an agent: the service requests our
# cards suggest (``ProposedServiceRequest.referral``).
DOSE_UNITS = ("mg", "mg/kg", *sorted(MICROGRAM_UNITS))
TIME_UNITS = ("min", "h")
_SHARE_TOLERANCE = 1e-6
# marshmallow files a mapping's value errors under "value": "protocols.x.approved_by" reads
# better than "protocols.x.value.approved_by".
_DICT_VALUE = re.compile(r"((?:protocols|based_on)\.[^.]+)\.value(?=\.|$)")


class SiteError(KnowledgeError):
    """The site overlay is invalid; ``problems`` lists every problem found."""

    def __init__(self, folder: str, problems: list[Problem]):
        self.folder = folder
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        Exception.__init__(
            self, f"{len(problems)} problem(s) in the site overlay {folder}:\n{lines}"
        )


# -- schema ------------------------------------------------------------------------------


def _absolute_uri(value: str) -> None:
    parts = urlsplit(value)
    if not parts.scheme or not (parts.netloc or parts.scheme == "urn") or " " in value:
        raise ValidationError(
            f"must be an absolute URI (e.g. {EPIC_PREFERENCE_LIST_ITEM} or https://…)"
        )


class YamlDate(fields.Date):
    """A date as YAML gives it: PyYAML reads ``2026-09-14`` as a ``date`` already (marshmallow
    before 3.23 accepts only strings), a quoted one as a string; a date with a time is refused."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> date:
        if isinstance(value, datetime):
            raise ValidationError("must be a date (YYYY-MM-DD), without a time")
        if isinstance(value, date):
            return value
        parsed: date = super()._deserialize(value, attr, data, **kwargs)
        return parsed


class ProtocolSchema(_Strict):
    """An approved local protocol document."""

    document = fields.String(required=True, validate=NON_EMPTY)
    title = fields.String(required=True, validate=NON_EMPTY)
    version = fields.String(required=True, validate=NON_EMPTY)
    approved_by = fields.String(required=True, validate=NON_EMPTY)
    approved_on = YamlDate(required=True)
    url = fields.Url(schemes={"https"})
    based_on = fields.Dict(keys=fields.String(validate=ID), values=fields.Nested(SourceSchema))


class _Entry(_Strict):
    id = fields.String(required=True, validate=ID)
    protocol = fields.String(required=True, validate=ID)


class TargetSchema(_Strict):
    """What an entry is for: exactly one of a drug, a class, an agent or a referral."""

    drug = fields.String(validate=ID)
    # ``class`` is a Python keyword: the key is read under its YAML name.
    drug_class = fields.String(validate=ID, data_key="class")
    agent = fields.String(validate=ID)
    referral = fields.String(validate=validate.OneOf(REFERRALS))

    @validates_schema
    def _one(self, data: dict[str, Any], **_: Any) -> None:
        if len(data) != 1:
            raise ValidationError("give exactly one of drug, class, agent or referral")


class JurisdictionSchema(_Strict):
    value = fields.String(required=True, validate=JURISDICTION)
    protocol = fields.String(required=True, validate=ID)


class PreferenceSchema(_Entry):
    for_ = fields.Nested(TargetSchema, required=True, data_key="for")
    role = fields.String(required=True, validate=ROLES)
    agent = fields.String(required=True, validate=ID)
    dose = fields.Nested(DoseRangeSchema)
    route = fields.String(validate=NON_EMPTY)
    timing = fields.String(validate=NON_EMPTY)


class PhaseSchema(_Strict):
    percent = fields.Float(
        required=True, validate=validate.Range(min=0, max=100, min_inclusive=False)
    )
    minutes = fields.Float(required=True, validate=validate.Range(min=0, min_inclusive=False))


class EligibleSchema(_Strict):
    from_infusion = fields.Integer(strict=True, validate=validate.Range(min=2))
    no_reaction_on_record = fields.Boolean(load_default=False)
    not_checked = fields.List(fields.String(validate=NON_EMPTY), load_default=list)


class RegimenSchema(_Entry):
    drug = fields.String(required=True, validate=ID)
    label = fields.String(required=True, validate=NON_EMPTY)
    replaces = fields.String(validate=ID)
    phases = fields.List(fields.Nested(PhaseSchema), required=True, validate=NON_EMPTY)
    eligible = fields.Nested(EligibleSchema, required=True)
    text = fields.String(validate=NON_EMPTY)

    @validates_schema(skip_on_field_errors=True)
    def _whole_dose(self, data: dict[str, Any], **_: Any) -> None:
        total = sum(p["percent"] for p in data["phases"])
        if abs(total - 100) > _SHARE_TOLERANCE:
            raise ValidationError(
                f"the phases give {total:g}% of the dose; they must add up to 100%", "phases"
            )


class ObservationSchema(_Entry):
    drug = fields.String(required=True, validate=ID)
    requirement = fields.String(required=True, validate=ID)
    duration = fields.Nested(QuantitySchema, required=True)


class RuleOffSchema(_Entry):
    for_ = fields.Nested(TargetSchema, required=True, data_key="for")
    topic = fields.String(required=True, validate=NON_EMPTY)


class SiteCodingSchema(_Strict):
    system = fields.String(required=True, validate=_absolute_uri)
    code = fields.String(required=True, validate=NON_EMPTY)
    display = fields.String(validate=NON_EMPTY)


class OrderCodesSchema(_Entry):
    for_ = fields.Nested(TargetSchema, required=True, data_key="for")
    codes = fields.List(fields.Nested(SiteCodingSchema), required=True, validate=NON_EMPTY)


class SiteFileSchema(_Strict):
    format = fields.String(required=True, validate=validate.Equal(FORMAT))
    site = fields.String(validate=NON_EMPTY)
    protocols = fields.Dict(keys=fields.String(validate=ID), values=fields.Nested(ProtocolSchema))
    jurisdiction = fields.Nested(JurisdictionSchema)
    premedication = fields.List(fields.Nested(PreferenceSchema))
    rate_schedules = fields.List(fields.Nested(RegimenSchema))
    observation_times = fields.List(fields.Nested(ObservationSchema))
    rules_off = fields.List(fields.Nested(RuleOffSchema))
    order_codes = fields.List(fields.Nested(OrderCodesSchema))


SECTIONS = ("premedication", "rate_schedules", "observation_times", "rules_off", "order_codes")


# -- loading -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Raw:
    """One entry as validated, with where it was read."""

    file: str
    path: str
    data: Mapping[str, Any]


def _qty(q: Quantity) -> str:
    return f"{q.value:g} {q.unit}"


def _dose(d: DoseRange) -> str:
    amount = f"{d.min:g}" if d.single else f"{d.min:g}–{d.max:g}"
    return f"{amount} {d.unit}"


_SCOPES: dict[str, SiteScope] = {
    "drug": "drug",
    "drug_class": "class",
    "agent": "agent",
    "referral": "referral",
}


def _target(data: Mapping[str, Any]) -> tuple[SiteScope, str]:
    """The one (scope, id) an entry's ``for`` names."""
    ((key, value),) = data.items()
    return _SCOPES[key], str(value)


class _Folder:
    """Collects the validated files of one site folder and every problem found in it."""

    def __init__(self, folder: Path, base: KnowledgeBase):
        self.folder = folder
        self.base = base
        self.problems: list[Problem] = []
        self.files: list[str] = []
        self.names: list[str] = []
        self.digest = hashlib.sha256()
        self.protocols: dict[str, LocalProtocol] = {}
        self.protocol_files: dict[str, str] = {}
        self.jurisdiction: _Raw | None = None
        self.sections: dict[str, list[_Raw]] = {s: [] for s in SECTIONS}
        self.entry_ids: dict[str, str] = {}

    def problem(self, file: str, path: str, message: str) -> None:
        self.problems.append(Problem(file, path, message))

    def read(self) -> None:
        for path in sorted(self.folder.glob("*.yaml")) + sorted(self.folder.glob("*.yml")):
            name = path.name
            try:
                raw_bytes = path.read_bytes()
                raw = yaml.safe_load(raw_bytes)
            except OSError as exc:
                self.problem(name, "(file)", f"cannot read: {exc.strerror}")
                continue
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"line {mark.line + 1}" if mark else "(file)"
                self.problem(name, where, f"not valid YAML: {getattr(exc, 'problem', exc)}")
                continue
            self.digest.update(name.encode() + b"\0" + raw_bytes)
            self.files.append(name)
            if not isinstance(raw, dict):
                self.problem(name, "(file)", "must be a YAML mapping")
                continue
            try:
                data = SiteFileSchema().load(raw)
            except ValidationError as err:
                self.problems.extend(
                    Problem(name, _DICT_VALUE.sub(r"\1", f), m)
                    for f, m in flatten_errors(err.messages)
                )
                continue
            self._collect(name, data)

    def _collect(self, name: str, data: Mapping[str, Any]) -> None:
        if "site" in data:
            self.names.append(data["site"])
        for pid, p in (data.get("protocols") or {}).items():
            if pid in self.protocols:
                self.problem(
                    name, f"protocols.{pid}", f"also defined in {self.protocol_files[pid]}"
                )
                continue
            if p["approved_on"] > date.today():
                self.problem(
                    name,
                    f"protocols.{pid}.approved_on",
                    f"{p['approved_on'].isoformat()} is in the future: not yet approved",
                )
            self.protocols[pid] = LocalProtocol(
                id=pid,
                document=p["document"],
                title=p["title"],
                version=p["version"],
                approved_by=p["approved_by"],
                approved_on=p["approved_on"],
                url=p.get("url"),
                based_on=tuple(
                    Source.from_yaml(sid, s) for sid, s in (p.get("based_on") or {}).items()
                ),
            )
            self.protocol_files[pid] = name
        if "jurisdiction" in data:
            if self.jurisdiction is not None:
                self.problem(name, "jurisdiction", f"also set in {self.jurisdiction.file}")
            else:
                self.jurisdiction = _Raw(name, "jurisdiction", data["jurisdiction"])
        for section in SECTIONS:
            for i, entry in enumerate(data.get(section) or ()):
                where = f"{section}.{i}"
                if entry["id"] in self.entry_ids:
                    self.problem(
                        name,
                        f"{where}.id",
                        f"'{entry['id']}' is also used in {self.entry_ids[entry['id']]}",
                    )
                    continue
                self.entry_ids[entry["id"]] = f"{name} {where}"
                self.sections[section].append(_Raw(name, where, entry))

    def protocol(self, raw: _Raw) -> LocalProtocol | None:
        pid = raw.data["protocol"]
        found = self.protocols.get(pid)
        if found is None:
            self.problem(raw.file, f"{raw.path}.protocol", f"unknown protocol '{pid}'")
        return found


def load_site(folder: Path | str, base: KnowledgeBase) -> Site:
    """Read, validate and check a site folder against ``base``; ``SiteError`` on any problem.

    An empty folder is a site with no changes (jurisdiction US).
    """
    root = Path(folder)
    if not root.is_dir():
        raise SiteError(str(root), [Problem(str(root), "(folder)", "site folder not found")])
    found = _Folder(root, base)
    found.read()
    builder = _Builder(found)
    site = builder.build()
    if found.problems:
        raise SiteError(str(root), found.problems)
    return site


@dataclass(frozen=True)
class _Targets:
    """What a preference changes: drugs, the label entries it replaces (described), the
    label's agents it replaces; ``refused``: the label rules the agent out somewhere."""

    drugs: tuple[str, ...]
    replaced: tuple[str, ...]
    agents: tuple[str, ...]
    refused: bool


class _Builder:
    """Checks the collected entries against the label knowledge and builds the ``Site``."""

    def __init__(self, found: _Folder):
        self.found = found
        self.kb = found.base
        self.entries: list[SiteEntry] = []

    def problem(self, raw: _Raw, field: str, message: str) -> None:
        self.found.problem(raw.file, f"{raw.path}.{field}" if field else raw.path, message)

    def build(self) -> Site:
        jurisdiction = self._jurisdiction()
        preferences = tuple(self._preferences())
        regimens = tuple(self._regimens())
        observations = tuple(self._observations())
        rules_off = frozenset(self._rules_off())
        order_codes = self._order_codes()
        for regimen in regimens:  # a regimen the same site would never show
            if ("rate-titration", regimen.drug_id) in rules_off:
                raw = next(
                    r for r in self.found.sections["rate_schedules"] if r.data["id"] == regimen.id
                )
                self.problem(
                    raw, "drug", f"{regimen.drug_id}'s rate-titration rule is switched off here"
                )
        found = self.found
        return Site(
            name=found.names[0] if found.names else found.folder.name,
            folder=str(found.folder),
            digest=found.digest.hexdigest(),
            jurisdiction=jurisdiction,
            protocols=MappingProxyType(dict(found.protocols)),
            entries=tuple(self.entries),
            preferences=preferences,
            regimens=regimens,
            observation_times=observations,
            rules_off=rules_off,
            order_codes=MappingProxyType(order_codes),
            files=tuple(found.files),
        )

    def _entry(
        self,
        raw: _Raw,
        kind: SiteEntryKind,
        scope: SiteScope,
        target: str,
        summary: str,
        protocol: LocalProtocol,
        drugs: tuple[str, ...] = (),
        replaces: tuple[str, ...] = (),
        agents: tuple[str, ...] = (),
        topic: str | None = None,
    ) -> None:
        self.entries.append(
            SiteEntry(
                id=raw.data.get("id", "jurisdiction"),
                kind=kind,
                scope=scope,
                target=target,
                summary=summary,
                protocol=protocol,
                source_file=raw.file,
                drugs=drugs,
                replaces=replaces,
                agents=agents,
                topic=topic,
            )
        )

    def _known(self, raw: _Raw, scope: SiteScope, target: str, allowed: tuple[str, ...]) -> bool:
        """Is the entry's target of an allowed kind and in the label knowledge?"""
        if scope not in allowed:
            self.problem(raw, "for", f"give {' or '.join(allowed)} here, not {scope}")
            return False
        tables: dict[str, Mapping[str, Any]] = {
            "drug": self.kb.drugs,
            "class": self.kb.classes,
            "agent": self.kb.agents,
        }
        if scope in tables and target not in tables[scope]:
            folder = {"drug": "drugs", "class": "classes", "agent": "agents"}[scope]
            self.problem(
                raw, "for", f"unknown {scope} '{target}' (no cards/{folder}/{target}.yaml)"
            )
            return False
        return True

    def _drugs_of(self, scope: SiteScope, target: str) -> tuple[str, ...]:
        if scope == "drug":
            return (target,)
        if scope == "class":
            return tuple(m for m in self.kb.classes[target].members if m in self.kb.drugs)
        return tuple(self.kb.drugs)

    def _jurisdiction(self) -> str:
        raw = self.found.jurisdiction
        if raw is None:
            return DEFAULT_JURISDICTION
        protocol = self.found.protocol(raw)
        value: str = raw.data["value"]
        if protocol is not None:
            self._entry(raw, "jurisdiction", "site", "", f"jurisdiction {value}", protocol)
        return value

    def _preferences(self) -> Iterator[AgentPreference]:
        claimed: dict[tuple[str, str, str], str] = {}
        for raw in self.found.sections["premedication"]:
            d = raw.data
            scope, target = _target(d["for_"])
            protocol = self.found.protocol(raw)
            if not self._known(raw, scope, target, ("drug", "class", "agent")):
                continue
            agent_id, role = d["agent"], d["role"]
            agent = self.kb.agents.get(agent_id)
            if agent is None:
                self.problem(
                    raw, "agent", f"unknown agent '{agent_id}' (no cards/agents/{agent_id}.yaml)"
                )
                continue
            if role not in agent.roles:
                self.problem(
                    raw, "agent", f"agent '{agent_id}' does not have role '{role}' in cards/agents"
                )
                continue
            if not agent.marketed:
                self.problem(raw, "agent", f"agent '{agent_id}' is marked no longer marketed")
                continue
            if scope == "agent" and role not in self.kb.agents[target].roles:
                self.problem(raw, "for", f"agent '{target}' does not have role '{role}'")
                continue
            dose = _dose_range(d.get("dose"))
            if dose is not None and dose.unit not in DOSE_UNITS:
                self.problem(raw, "dose.unit", f"must be one of {', '.join(DOSE_UNITS)}")
                continue
            targets = self._preference_targets(raw, scope, target, role, agent_id)
            changed = targets.drugs
            if not changed and targets.refused:
                continue  # said: the label rules the agent out (not "changes nothing" as well)
            if not changed:
                where = f"{scope} '{target}'"
                self.problem(
                    raw,
                    "for",
                    f"changes nothing: no premedication entry of role '{role}' with another "
                    f"agent for {where} in cards/",
                )
                continue
            for drug_id in changed:
                key = (scope, drug_id, role)
                if key in claimed:
                    self.problem(
                        raw, "for", f"{drug_id}'s {role} is already set by entry '{claimed[key]}'"
                    )
                claimed.setdefault(key, d["id"])
            if protocol is None:
                continue
            parts = [agent.name]
            if dose is not None:
                parts.append(_dose(dose))
            if d.get("route"):
                parts.append(d["route"])
            self._entry(
                raw,
                "premedication",
                scope,
                target,
                f"{' '.join(parts)} as the {ROLE_NAMES[role]}",
                protocol,
                drugs=changed,
                replaces=targets.replaced,
                agents=(agent_id, *targets.agents),
            )
            yield AgentPreference(
                entry_id=d["id"],
                scope="drug" if scope == "drug" else "class" if scope == "class" else "agent",
                target=target,
                role=role,
                agent=agent_id,
                dose=dose,
                route=d.get("route"),
                timing=d.get("timing"),
                protocol=protocol,
            )

    def _preference_targets(
        self, raw: _Raw, scope: SiteScope, target: str, role: str, agent_id: str
    ) -> _Targets:
        """What a preference changes; an agent the label rules out for a drug's role is
        refused (one problem per drug)."""
        changed: list[str] = []
        replaced: list[str] = []
        agents: list[str] = []
        refused: set[str] = set()
        for drug_id in self._drugs_of(scope, target):
            drug = self.kb.drugs[drug_id]
            for regimen in drug.premedication:
                for entry in regimen.agents:
                    if entry.role != role or entry.agent == agent_id:
                        continue
                    if scope == "agent" and entry.agent != target:
                        continue
                    excluded = {x.agent: x.reason for x in entry.not_covered_by}
                    if agent_id in excluded:
                        if drug_id not in refused:
                            self.problem(
                                raw,
                                "agent",
                                f"{drug_id}'s label rules '{agent_id}' out as its {role}: "
                                f"{excluded[agent_id]}",
                            )
                        refused.add(drug_id)
                        continue
                    if drug_id not in changed:
                        changed.append(drug_id)
                    if entry.agent and entry.agent not in agents:
                        agents.append(entry.agent)
                    replaced.append(
                        f"{drug.source_file}: premedication '{regimen.id}', {role}: "
                        f"{entry.agent or 'no agent named'}"
                    )
        return _Targets(tuple(changed), tuple(replaced), tuple(agents), bool(refused))

    def _drug(self, raw: _Raw) -> Drug | None:
        """The drug an entry names, or None with a problem said."""
        name = raw.data["drug"]
        drug = self.kb.drugs.get(name)
        if drug is None:
            self.problem(raw, "drug", f"unknown drug '{name}' (no cards/drugs/{name}.yaml)")
        return drug

    def _regimens(self) -> Iterator[LocalRegimen]:
        per_drug: dict[str, str] = {}
        for raw in self.found.sections["rate_schedules"]:
            d = raw.data
            protocol = self.found.protocol(raw)
            drug = self._drug(raw)
            if drug is None:
                continue
            if drug.id in per_drug:
                self.problem(
                    raw, "drug", f"{drug.id} already has a local regimen ('{per_drug[drug.id]}')"
                )
                continue
            per_drug[drug.id] = d["id"]
            replaced = None
            if "replaces" in d:
                replaced = next((s for s in drug.rate_schedules if s.id == d["replaces"]), None)
                if replaced is None:
                    known = ", ".join(s.id for s in drug.rate_schedules) or "none"
                    self.problem(
                        raw,
                        "replaces",
                        f"{drug.id} has no rate schedule '{d['replaces']}' (it has: {known})",
                    )
                    continue
            if protocol is None:
                continue
            phases = tuple(RatePhase(p["percent"], p["minutes"]) for p in d["phases"])
            shape = ", then ".join(
                f"{p.percent:g}% of the dose over {p.minutes:g} min" for p in phases
            )
            summary = f"{d['label']}: {shape}"
            eligible = d["eligible"]
            self._entry(
                raw,
                "rate-schedule",
                "drug",
                drug.id,
                summary,
                protocol,
                drugs=(drug.id,),
                replaces=(f"{drug.source_file}: rate_schedules '{replaced.id}'",)
                if replaced
                else (),
            )
            yield LocalRegimen(
                id=d["id"],
                drug_id=drug.id,
                label=d["label"],
                phases=phases,
                eligibility=Eligibility(
                    from_infusion=eligible.get("from_infusion"),
                    no_reaction_on_record=eligible["no_reaction_on_record"],
                    not_checked=tuple(eligible["not_checked"]),
                ),
                text=d.get("text"),
                site=SiteChange(d["id"], protocol, summary),
                replaces=replaced,
            )

    def _observations(self) -> Iterator[ObservationTime]:
        seen: set[tuple[str, str]] = set()
        for raw in self.found.sections["observation_times"]:
            d = raw.data
            protocol = self.found.protocol(raw)
            drug = self._drug(raw)
            if drug is None:
                continue
            req = next((m for m in drug.monitoring if m.id == d["requirement"]), None)
            if req is None:
                known = ", ".join(m.id for m in drug.monitoring) or "none"
                self.problem(
                    raw,
                    "requirement",
                    f"{drug.id} has no monitoring '{d['requirement']}' (it has: {known})",
                )
                continue
            if req.kind != "observation":
                self.problem(
                    raw,
                    "requirement",
                    f"'{req.id}' is a {req.kind} requirement; a site changes observation "
                    "times only",
                )
                continue
            duration = Quantity(d["duration"]["value"], d["duration"]["unit"])
            if duration.unit not in TIME_UNITS:
                self.problem(raw, "duration.unit", f"must be one of {', '.join(TIME_UNITS)}")
                continue
            if (drug.id, req.id) in seen:
                self.problem(raw, "requirement", f"{drug.id} '{req.id}' is changed twice")
                continue
            seen.add((drug.id, req.id))
            if protocol is None:
                continue
            before = _qty(req.duration) if req.duration else "no set time"
            self._entry(
                raw,
                "observation-time",
                "drug",
                drug.id,
                f"observation {_qty(duration)} instead of {before}",
                protocol,
                drugs=(drug.id,),
                replaces=(f"{drug.source_file}: monitoring '{req.id}'",),
            )
            yield ObservationTime(d["id"], drug.id, req.id, duration, protocol)

    def _rules_off(self) -> Iterator[tuple[str, str]]:
        topics = {t.code for t in self.kb.policy.topics}
        for raw in self.found.sections["rules_off"]:
            d = raw.data
            scope, target = _target(d["for_"])
            protocol = self.found.protocol(raw)
            topic = d["topic"]
            if topic not in topics:
                self.problem(raw, "topic", f"unknown rule topic '{topic}' (cards/policy.yaml)")
                continue
            if topic not in SWITCHABLE_TOPICS:
                self.problem(
                    raw,
                    "topic",
                    f"'{topic}' cannot be switched off by a site (it may give a critical card, "
                    f"or it is a promise never to be silent); switchable: "
                    f"{', '.join(SWITCHABLE_TOPICS)}",
                )
                continue
            if not self._known(raw, scope, target, ("drug", "class")):
                continue
            drugs = self._drugs_of(scope, target)
            if protocol is not None:
                self._entry(
                    raw,
                    "rule-off",
                    scope,
                    target,
                    f"rule '{topic}' switched off",
                    protocol,
                    drugs=drugs,
                    topic=topic,
                )
            yield from ((topic, drug_id) for drug_id in drugs)

    def _order_codes(self) -> dict[str, tuple[Coding, ...]]:
        codes: dict[str, tuple[Coding, ...]] = {}
        owner: dict[str, str] = {}
        for raw in self.found.sections["order_codes"]:
            d = raw.data
            scope, target = _target(d["for_"])
            protocol = self.found.protocol(raw)
            if not self._known(raw, scope, target, ("agent", "referral")):
                continue
            if target in owner:
                self.problem(
                    raw, "for", f"{scope} '{target}' already has codes (entry '{owner[target]}')"
                )
                continue
            owner[target] = d["id"]
            codings = tuple(Coding(c["system"], c["code"], c.get("display")) for c in d["codes"])
            codes[target] = codings
            if protocol is not None:
                shown = ", ".join(f"{c.code}" for c in codings)
                self._entry(raw, "order-codes", scope, target, f"order codes {shown}", protocol)
        return codes


def _dose_range(data: Mapping[str, Any] | None) -> DoseRange | None:
    if not data:
        return None
    if "value" in data:
        return DoseRange(data["value"], data["value"], data["unit"])
    return DoseRange(data["min"], data["max"], data["unit"])
