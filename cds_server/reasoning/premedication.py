"""Premedication rule.

When: a recognised infusion order whose knowledge lists premedication for this dose (by
infusion number or step-up step), and an agent role it requires (H1 antihistamine, H2
antagonist, corticosteroid, antipyretic…) is in neither the draft orders nor the active orders.
Then: a ``warning`` naming the missing agents with the label's dose, route and timing, and a
draft MedicationRequest per missing agent (recommended when the label requires it).
Conditional regimens (e.g. "if CRS occurred with the previous dose") are shown as "consider"
notes only. Covered roles are matched by agent class, so famotidine covers "H2 antagonist",
except for agents the knowledge rules out for the drug (``not_covered_by``: hydrocortisone
does not cover obinutuzumab's glucocorticoid); an ordered agent ruled out is named as such.
"""

from __future__ import annotations

from dataclasses import replace

from cds_server.knowledge.model import (
    ROLE_NAMES,
    KnowledgeBase,
    NotCovering,
    PremedAgent,
    PremedRegimen,
    Provenance,
)
from cds_server.model import (
    RXNORM,
    Citation,
    Coding,
    Finding,
    ProposedMedication,
    Quantity,
    RecognisedOrder,
    Situation,
)
from cds_server.reasoning import wording
from cds_server.reasoning.dosing import (
    DosePosition,
    applies,
    fmt_number,
    position,
    unchecked_condition,
)
from cds_server.reasoning.orders import each_order, ordered_agents, role_covered, ruled_out
from cds_server.reasoning.regimens import institution_point

TOPIC = "premedication"


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Premedication findings for every targeted order (see module docstring)."""
    ordered = ordered_agents(situation)
    return each_order(situation, kb, lambda s, r, k: _for_order(s, r, k, ordered))


def describe_agent(entry: PremedAgent, kb: KnowledgeBase, *, alternatives: bool = True) -> str:
    """ "diphenhydramine 50 mg intravenous, 30 to 60 minutes before; or cetirizine at its own
    dose" from a knowledge entry. The dose, route and timing are the entry's agent's: an
    alternative's own dose is in the label text, never implied to be the same."""
    name = kb.agents[entry.agent].name if entry.agent else ROLE_NAMES[entry.role]
    if entry.agent and not kb.agents[entry.agent].marketed:
        name += " (no longer marketed)"
    parts = [name]
    if entry.dose is not None:
        d = entry.dose
        amount = fmt_number(d.min) if d.single else f"{fmt_number(d.min)}–{fmt_number(d.max)}"
        parts.append(f"{amount} {d.unit}")
    if entry.route:
        parts.append(entry.route)
    text = " ".join(parts) + f", {entry.timing}{_flag(entry.provenance)}"
    others = (
        [kb.agents[a].name for a in entry.alternatives if kb.agents[a].marketed]
        if alternatives
        else []
    )
    if others:
        text += f"; or {', '.join(others)}"
        if entry.dose is not None:
            text += " at its own dose" if len(others) == 1 else " at their own doses"
    return text


PROTOCOL_DOSE = "dose per institutional protocol"


def suggested_agent(entry: PremedAgent, kb: KnowledgeBase) -> str | None:
    """The agent a one-click order names: the entry's own, else (when it is no longer
    marketed) the first marketed alternative; None when there is none to suggest."""
    for agent_id in (entry.agent, *entry.alternatives):
        if agent_id and kb.agents[agent_id].marketed:
            return agent_id
    return None


def order_label(entry: PremedAgent, kb: KnowledgeBase) -> str:
    """A one-click order's label: the dose we pre-fill (a verified one), or says plainly that
    the dose follows the institution's protocol. Evidence flags stay in the detail."""
    agent_id = suggested_agent(entry, kb)
    assert agent_id is not None
    parts = [kb.agents[agent_id].name]
    low, high = prefilled_dose(entry) if agent_id == entry.agent else (None, None)
    if low is not None and high is not None:
        amount = fmt_number(low.value)
        if high.value != low.value:
            amount += f"–{fmt_number(high.value)}"
        parts.append(f"{amount} {low.unit}")
    if entry.route:
        parts.append(entry.route)
    label = f"Order {' '.join(parts)}, {entry.timing}"
    return label if low is not None else f"{label} — {PROTOCOL_DOSE}"


def _flag(provenance: Provenance) -> str:
    """`` [secondary]`` or `` [unverified]`` after a fact that is not verified."""
    return "" if provenance.evidence == "verified" else f" [{provenance.evidence}]"


def _merged(*lists: tuple[NotCovering, ...]) -> tuple[NotCovering, ...]:
    """Exclusions of several entries for one role, each agent once (the first entry's)."""
    return tuple({x.agent: x for xs in reversed(lists) for x in xs}.values())


def prefilled_dose(entry: PremedAgent) -> tuple[Quantity | None, Quantity | None]:
    """The dose to pre-fill in a suggestion: only a verified dose, or the dose of the site's
    own protocol for the agent it chose (a site overlay), never a guess."""
    if entry.dose is None or (entry.site is None and entry.provenance.evidence != "verified"):
        return None, None
    return Quantity(entry.dose.min, entry.dose.unit), Quantity(entry.dose.max, entry.dose.unit)


def required_roles(
    regimens: tuple[PremedRegimen, ...], pos: DosePosition
) -> tuple[dict[str, tuple[PremedAgent, PremedRegimen]], list[PremedRegimen], list[PremedRegimen]]:
    """Roles required for this dose, conditional regimens, and regimens we cannot decide."""
    required: dict[str, tuple[PremedAgent, PremedRegimen]] = {}
    conditional: list[PremedRegimen] = []
    undecided: list[PremedRegimen] = []
    for regimen in regimens:
        result = applies(regimen.applies, pos)
        if result.value is False:
            continue
        if result.conditional:
            conditional.append(regimen)
            continue
        if result.value is None:
            undecided.append(regimen)
        for agent in regimen.agents:
            current = required.get(agent.role)
            # Prefer the entry that carries a dose (more specific), then the first seen.
            if current is None or (current[0].dose is None and agent.dose is not None):
                kept, other = (agent, regimen), current[0] if current else None
            else:
                kept, other = current, agent
            if other is not None and other.not_covered_by:  # every entry's exclusions hold
                merged = _merged(kept[0].not_covered_by, other.not_covered_by)
                kept = (replace(kept[0], not_covered_by=merged), kept[1])
            required[agent.role] = kept
    return required, conditional, undecided


def _for_order(
    situation: Situation,
    recognised: RecognisedOrder,
    kb: KnowledgeBase,
    ordered: frozenset[str],
) -> Finding | None:
    drug = kb.drug(recognised.drug_id)
    if not drug.premedication:
        return None
    pos = position(situation, recognised, kb)
    required, conditional, undecided = required_roles(drug.premedication, pos)
    missing = {
        role: pair for role, pair in required.items() if not role_covered(pair[0], ordered, kb)
    }
    if not missing:
        return None
    points = []
    for agent, _ in missing.values():
        points.append(
            f"- **Missing:** {describe_agent(agent, kb)}"
            + ("" if agent.required else " (optional)")
        )
        if agent.site is not None:  # the site's agent, beside the label's (still cited)
            points.append(institution_point(agent.site))
    not_counted = [
        (role, x) for role, (agent, _) in missing.items() for x in ruled_out(agent, ordered)
    ]
    points.extend(
        f"- **Does not count:** {kb.agents[x.agent].name} is ordered, but not as the "
        f"{ROLE_NAMES[role]} for {drug.name}: {x.reason}{_flag(x.provenance)}"
        for role, x in not_counted
    )
    already = sorted(ROLE_NAMES[r] for r in required if r not in missing)
    if already:
        points.append(f"- Already ordered: {', '.join(already)}.")
    for regimen in {id(r): r for _, r in missing.values()}.values():
        if regimen.text:
            points.append(f"- Label: {regimen.text}")
    for regimen in conditional:
        points.append(
            wording.conditional(
                "Consider", unchecked_condition(regimen.applies, pos), regimen.text or ""
            )
        )
    unknowns = list(pos.unknowns)
    if undecided:
        unknowns.append("which premedication regimen applies; all candidate regimens are shown")
    citations: list[Citation] = []
    for agent, regimen in missing.values():
        citations.extend(regimen.provenance.citations())
        citations.extend(agent.provenance.citations())
    for _, x in not_counted:
        citations.extend(x.provenance.citations())
    actions = tuple(
        ProposedMedication(
            label=order_label(agent, kb),
            agent_name=kb.agents[chosen].name,
            coding=_rxnorm(chosen, kb),
            # the entry's dose is its own agent's: a substitute's dose follows the protocol
            dose_low=prefilled_dose(agent)[0] if chosen == agent.agent else None,
            dose_high=prefilled_dose(agent)[1] if chosen == agent.agent else None,
            route=agent.route,
            timing_text=f"{agent.timing} ({drug.name})",
            recommended=agent.required and agent.provenance.evidence == "verified",
            for_order_ref=recognised.order.ref,
            agent_id=chosen,
        )
        for role, (agent, _) in missing.items()
        # a class-only label ("an H2 antagonist") is listed, not ordered; an agent no longer
        # marketed is never suggested (a marketed alternative is, when the label names one)
        if agent.agent and (chosen := suggested_agent(agent, kb))
    )
    names = ", ".join(ROLE_NAMES[r] for r in missing)
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator="warning",
        headline=f"premedication missing ({names})",
        points=tuple(points),
        citations=tuple(citations),
        actions=actions,
        unknowns=tuple(unknowns),
        order_ref=recognised.order.ref,
    )


def _rxnorm(agent_id: str, kb: KnowledgeBase) -> Coding | None:
    """The agent's verified RxNorm ingredient coding, if the knowledge has one."""
    for entry in kb.agents[agent_id].identity.codes:
        if (
            entry.tty == "IN"
            and entry.provenance.evidence == "verified"
            and entry.coding.system == RXNORM
        ):
            return entry.coding
    return None
