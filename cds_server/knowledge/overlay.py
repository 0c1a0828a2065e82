"""The knowledge a site sees: the label knowledge with a site overlay applied, as plain data.

``site_view`` is built once at start-up per site folder (the default one and each tenant's)
and read by the rules like any ``KnowledgeBase``: a preferred agent replaces the label's in
its role (the label's provenance kept, the institution's protocol added), an observation
time replaces the label's, a local regimen stands beside the label's schedules (replacing
the one it names), and the view carries the site's jurisdiction, switched-off rules and
order codes. Identities and codes are never changed: recognition reads the label knowledge.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType

from cds_server.knowledge.model import (
    ROLE_NAMES,
    AgentPreference,
    Drug,
    KnowledgeBase,
    MonitoringRequirement,
    ObservationTime,
    PremedAgent,
    PremedRegimen,
    Site,
    SiteChange,
)
from cds_server.knowledge.sitefile import load_site
from cds_server.model import Quantity

# Narrower scopes win: a drug's preference over its class's over an agent-wide one.
_SCOPE_ORDER = {"agent": 0, "class": 1, "drug": 2}


def load_view(base: KnowledgeBase, folder: Path | str | None) -> KnowledgeBase:
    """``base`` with the overlay of ``folder`` applied (``base`` itself when no folder is
    given). Raises ``SiteError`` naming every problem of an invalid overlay."""
    if folder is None or str(folder) == "":
        return base
    return site_view(base, load_site(folder, base))


def site_view(base: KnowledgeBase, site: Site) -> KnowledgeBase:
    """The knowledge as ``site`` changes it; its version adds the overlay's hash."""
    drugs = {d.id: _drug(d, base, site) for d in base.drugs.values()}
    return replace(
        base,
        version=f"{base.version}+{site.label}",
        drugs=MappingProxyType(drugs),
        jurisdiction=site.jurisdiction,
        site=site,
        base=base,
    )


def _drug(drug: Drug, base: KnowledgeBase, site: Site) -> Drug:
    classes = {c.id for c in base.classes_of(drug.id)}
    preferences = sorted(
        (
            p
            for p in site.preferences
            if (p.scope == "drug" and p.target == drug.id)
            or (p.scope == "class" and p.target in classes)
            or p.scope == "agent"
        ),
        key=lambda p: -_SCOPE_ORDER[p.scope],
    )
    premedication = tuple(_prefer(r, preferences, base) for r in drug.premedication)
    times = {o.requirement: o for o in site.observation_times if o.drug_id == drug.id}
    monitoring = tuple(
        _observed(req, times[req.id]) if req.id in times else req for req in drug.monitoring
    )
    regimens = tuple(r for r in site.regimens if r.drug_id == drug.id)
    replaced = {r.replaces.id for r in regimens if r.replaces is not None}
    return replace(
        drug,
        premedication=premedication,
        monitoring=monitoring,
        rate_schedules=tuple(s for s in drug.rate_schedules if s.id not in replaced),
        local_regimens=regimens,
    )


def _observed(req: MonitoringRequirement, time: ObservationTime) -> MonitoringRequirement:
    """The requirement with the site's observation time (the label's text and sources kept)."""
    before = f" instead of {_qty_text(req.duration)}" if req.duration else ""
    return replace(
        req,
        duration=time.duration,
        site=SiteChange(
            time.entry_id, time.protocol, f"observation {_qty_text(time.duration)}{before}"
        ),
        provenance=replace(req.provenance, institution=time.protocol),
    )


def _prefer(
    regimen: PremedRegimen, preferences: list[AgentPreference], base: KnowledgeBase
) -> PremedRegimen:
    agents = tuple(_agent(a, preferences, base) for a in regimen.agents)
    return regimen if agents == regimen.agents else replace(regimen, agents=agents)


def _applies_to(entry: PremedAgent, preference: AgentPreference) -> bool:
    return (
        entry.role == preference.role
        and (preference.scope != "agent" or entry.agent == preference.target)
        and not any(x.agent == preference.agent for x in entry.not_covered_by)
    )


def _agent(
    entry: PremedAgent, preferences: list[AgentPreference], base: KnowledgeBase
) -> PremedAgent:
    """The entry with the site's agent for its role: the narrowest preference about it (a
    drug's over its class's over an agent-wide one), applied to the label's entry."""
    preference = next((p for p in preferences if _applies_to(entry, p)), None)
    if preference is None or entry.agent == preference.agent:
        return entry
    chosen = base.agents[preference.agent].name
    said = " ".join(
        part
        for part in (
            chosen,
            _dose_text(preference),
            preference.route or "",
        )
        if part
    )
    instead = (
        f" instead of {base.agents[entry.agent].name}"
        if entry.agent
        else f" as the {ROLE_NAMES[entry.role]}"
    )
    return replace(
        entry,
        agent=preference.agent,
        alternatives=tuple(
            a for a in (entry.agent, *entry.alternatives) if a and a != preference.agent
        ),
        # The label's dose and route were its own agent's: the site's, or none (the card then
        # says the dose follows the institution's protocol).
        dose=preference.dose,
        route=preference.route,
        timing=preference.timing or entry.timing,
        provenance=replace(entry.provenance, institution=preference.protocol),
        site=SiteChange(preference.entry_id, preference.protocol, f"{said}{instead}"),
    )


def _dose_text(preference: AgentPreference) -> str:
    dose = preference.dose
    if dose is None:
        return ""
    amount = f"{dose.min:g}" if dose.single else f"{dose.min:g}–{dose.max:g}"
    return f"{amount} {dose.unit}"


def _qty_text(q: Quantity) -> str:
    return f"{q.value:g} {q.unit}"
