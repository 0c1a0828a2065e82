"""``cds-server explain``: what was recognised, which rules fired or not and why, the cards.

For pharmacists reviewing the knowledge and integration testers checking a request. It runs
the same pipeline as the HTTP API and only reads its intermediate results.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cds_server import pipeline
from cds_server.cdshooks import services
from cds_server.fhirdata.client import FhirSettings
from cds_server.fhirdata.parse import NOT_GIVEN
from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import RecognisedOrder, Situation
from cds_server.reasoning import (
    RULES,
    crs,
    monitoring,
    premedication,
    pretreatment,
    reactions,
    regimens,
)
from cds_server.reasoning.course import TreatmentCourse
from cds_server.reasoning.dosing import DosePosition, applies, fmt_qty, position, step_labels
from cds_server.reasoning.orders import (
    agent_ordered,
    ordered_agents,
    role_covered,
    ruled_out,
    target_orders,
)
from cds_server.reasoning.titration import choose, most_specific


def service_for(hook: str) -> str:
    """The id of the service that handles a hook."""
    for service in services.SERVICES:
        if service.hook == hook and service.listed:
            return service.id
    raise ValueError(f"no service handles the hook '{hook}'")


def _position_text(drug_id: str, pos: DosePosition, kb: KnowledgeBase) -> str:
    number = f"dose #{pos.number}" if pos.number else "dose number unknown"
    if pos.steps is None:
        step = "step unknown"
    else:
        labels = step_labels(kb.drug(drug_id), pos.steps)
        step = ", ".join(labels) if labels else "not a step-up dose"
    return f"{number}; {step}"


def _why_premedication(
    s: Situation, r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition
) -> str:
    drug = kb.drug(r.drug_id)
    if not drug.premedication:
        return "the knowledge lists no premedication for this drug"
    required, conditional, _ = premedication.required_roles(drug.premedication, pos)
    ordered = ordered_agents(s)
    need = sorted(required)
    have = sorted(r for r, (entry, _) in required.items() if role_covered(entry, ordered, kb))
    out_of_role = sorted({x.agent for e, _ in required.values() for x in ruled_out(e, ordered)})
    cond = f"; conditional only: {len(conditional)} regimen(s)" if conditional else ""
    out = f"required roles {need or 'none'}; already ordered {have or 'none'}{cond}"
    return out + (f"; ordered but ruled out for this drug: {out_of_role}" if out_of_role else "")


def _why_titration(s: Situation, r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition) -> str:
    drug = kb.drug(r.drug_id)
    local = "".join(
        f"; site regimen {a.regimen.id}: "
        + {True: "eligible", False: "not eligible", None: "undecided"}[a.eligible]
        + (f" ({'; '.join(a.failed or a.unknown)})" if a.failed or a.unknown else "")
        for a in (regimens.assess(x, s, r, pos, kb) for x in drug.local_regimens)
    )
    return _why_standard(r, kb, pos) + local


def _why_standard(r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition) -> str:
    drug = kb.drug(r.drug_id)
    standard, _, _ = choose(drug.rate_schedules, pos)
    titrated = most_specific([x for x in standard if x.kind == "titrated" and x.start])
    if not titrated:
        kinds: list[str] = sorted({x.kind for x in standard}) or ["none"]
        return f"no titrated schedule applies to this dose (schedules: {', '.join(kinds)})"
    start = min(x.start.value for x in titrated if x.start)
    rate = fmt_qty(r.order.rate) if r.order.rate else "no rate"
    unit = titrated[0].start.unit if titrated[0].start else ""
    return f"start rate allowed {start:g} {unit}; order has {rate}"


def _why_monitoring(r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition) -> str:
    firm, conditional, undecided = monitoring.applicable(kb.drug(r.drug_id).monitoring, pos)
    return (
        f"applicable: {[m.id for m in firm] or 'none'}; conditional: "
        f"{[m.id for m in conditional] or 'none'}; undecided: {[m.id for m in undecided] or 'none'}"
    )


def _why_pretreatment(
    s: Situation, r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition
) -> str:
    out = []
    for pre in kb.drug(r.drug_id).prerequisites:
        if applies(pre.applies, pos).value is False:
            out.append(f"{pre.id}: not for this dose")
        else:
            ok = pretreatment.satisfied(s, pre, r)
            out.append(f"{pre.id}: {pre.requires_drug} {'found' if ok else 'NOT found'}")
    return "; ".join(out) or "no prerequisite in the knowledge"


def _why_crs(s: Situation, r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition) -> str:
    drug = kb.drug(r.drug_id)
    if not drug.crs_risk:
        return "not a CRS-risk drug"
    needed = [t for t in drug.tocilizumab if applies(t.applies, pos).value is not False]
    if not needed:
        return "no tocilizumab requirement for this dose"
    ordered = agent_ordered(s, crs.TOCILIZUMAB)
    return f"tocilizumab required; {'already ordered' if ordered else 'not ordered'}"


def _why_reactions(s: Situation, r: RecognisedOrder, kb: KnowledgeBase) -> str:
    matches = reactions.relevant_allergies(s, r, kb)
    if not matches:
        return "no allergy record concerns this drug or its class"
    return "; ".join(
        f"{m.relation}{' severe' if m.severe else ''}"
        f"{' tolerated-since ' + m.tolerated_since.date().isoformat() if m.tolerated_since else ''}"
        for m in matches
    )


def _why_course(r: RecognisedOrder, kb: KnowledgeBase, pos: DosePosition) -> str:
    drug = kb.drug(r.drug_id)
    if not (drug.restart or drug.step_up or drug.course_alerts):
        return "no restart table, step-up schedule or course alert for this drug"
    return course_text(pos.course) if pos.course else "course not reconstructed"


def course_text(course: TreatmentCourse) -> str:
    """The reconstructed course in one line: exposures, last dose and gap, steps, cycle, row."""
    bits = [
        "exposures " + ("UNKNOWN" if course.exposures is None else str(course.exposures)),
    ]
    by_source = {
        src: sum(1 for d in course.given if d.evidence == src)
        for src in ("administration", "order")
    }
    stopped = sum(1 for d in course.given if d.status == "stopped")
    bits.append(
        f"evidence {by_source['administration']} administration(s) + {by_source['order']} order(s)"
        + (f", {stopped} stopped part-way" if stopped else "")
    )
    if course.last and course.last.when:
        bits.append(
            f"last dose {course.last.when.date().isoformat()} ({course.last.evidence}), "
            f"gap {course.gap_days} d"
        )
    elif course.given:
        bits.append("gap UNKNOWN (undated or contradictory dates)")
    if course.steps_given:
        bits.append(f"steps given {', '.join(sorted(course.steps_given))}")
    if course.last_steps:
        bits.append(f"last step {', '.join(sorted(course.last_steps))}")
    if course.cycle is not None:
        day = f" day {course.day}" if course.day is not None else ""
        bits.append(f"cycle {course.cycle}{day} (from {course.cycle_source})")
    if course.restart:
        action = (
            f"restart at {course.restart.restart_at}" if course.restart.restart_at else "continue"
        )
        bits.append(f"restart row {course.restart.id}: {action}")
    if course.schedule_unknown:
        bits.append(f"rows of every dosing schedule shown: {course.schedule_unknown}")
    return "; ".join(bits)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counter.items()))


def _administration_lines(ev: pipeline.Evaluation) -> list[str]:
    """What was read of the MedicationAdministrations (doses given), and what was recognised."""
    s, rec = ev.situation, ev.record
    data = ev.resolved.data.get(services.ADMINISTRATIONS)
    if data is None or data.source == "unavailable":
        return [
            "Administrations: UNKNOWN (neither prefetched nor fetched); prior doses from orders"
        ]
    statuses = Counter(
        str(r.get("status"))
        for r in data.resources
        if r.get("resourceType") == "MedicationAdministration"
    )
    received = sum(statuses.values())
    not_given = sum(n for status, n in statuses.items() if status in NOT_GIVEN)
    read = len(rec.administrations)
    skipped = received - not_given - rec.administrations_unread - read
    notes = [
        f"+{rec.administrations_unread} no rule reads, not read"
        if rec.administrations_unread
        else "",
        f"{not_given} not-done/entered-in-error, count for nothing" if not_given else "",
        f"{skipped} invalid, skipped" if skipped else "",
        "" if rec.administrations_known else "INCOMPLETE",
    ]
    line = (
        f"Administrations ({data.source}): {received} received"
        + (f" ({_counts(statuses)})" if received else "")
        + f"; {read} read"
        + "".join(f"; {n}" for n in notes if n)
    )
    by_drug: dict[str, Counter[str]] = {}
    for r in s.administrations:
        by_drug.setdefault(r.drug_id, Counter())[str(r.order.status)] += 1
    drugs = ", ".join(
        f"{drug} {sum(c.values())} ({_counts(c)})" for drug, c in sorted(by_drug.items())
    )
    return [line, f"Recognised administrations: {drugs or 'none'}"]


def explain_evaluation(ev: pipeline.Evaluation, kb: KnowledgeBase) -> str:
    """A plain-text report of one evaluated hook call."""
    s, rec = ev.situation, ev.record
    lines = [
        f"Hook: {s.call.hook} (service {ev.service.id}); knowledge {kb.version}",
        f"Data: {len(rec.draft_orders)} draft order(s), {len(rec.medication_history)} history "
        f"order(s)"
        + (f" (+{rec.history_unread} no rule reads, not read)" if rec.history_unread else "")
        + f", {len(rec.allergies)} allergy record(s), weight "
        f"{f'{rec.weight.kg:.1f} kg' if rec.weight else 'unknown'}"
        f"{'' if rec.history_known else '; history UNKNOWN'}"
        f"{'' if rec.allergies_known else '; allergies UNKNOWN'}",
    ]
    if kb.site is not None:
        lines.append(
            f"Site overlay: {kb.site.name} ({len(kb.site.entries)} entries, jurisdiction "
            f"{kb.jurisdiction}; check-cards --site lists them)"
        )
    for warning in rec.warnings:
        lines.append(f"  ! {warning}")
    lines.append("Recognised draft orders:")
    recognised_refs = {r.order.ref for r in s.orders}
    for r in s.orders:
        pos = position(s, r, kb)
        lines.append(
            f"  - {r.order.ref or '(no id)'} -> {r.drug_id} (matched by {r.matched_by}); "
            f"{_position_text(r.drug_id, pos, kb)}" + ("" if r.order.selected else "; not selected")
        )
    agent_refs = {o.ref for o, _ in s.agents}
    for o in rec.draft_orders:
        if o.ref not in recognised_refs:
            what = "premedication agent" if o.ref in agent_refs else "not an infusion drug we know"
            lines.append(
                f"  - {o.ref or '(no id)'}: {', '.join(o.texts) or '(no medication)'} — {what}"
            )
    lines.append(
        f"Recognised history: {', '.join(sorted({r.drug_id for r in s.history})) or 'none'}"
    )
    lines.extend(_administration_lines(ev))
    lines.append(
        "Recognised allergies: "
        + (
            ", ".join(f"{a.target_kind}:{a.target_id} ({a.matched_by})" for a in s.allergies)
            or "none"
        )
    )
    lines.append("Rules:")
    produced = {(f.topic, f.drug_id) for f in ev.findings}
    why: dict[str, Callable[[RecognisedOrder, DosePosition], str]] = {
        "premedication": lambda r, p: _why_premedication(s, r, kb, p),
        "rate-titration": lambda r, p: _why_titration(s, r, kb, p),
        "monitoring-admission": lambda r, p: _why_monitoring(r, kb, p),
        "pretreatment": lambda r, p: _why_pretreatment(s, r, kb, p),
        "crs-readiness": lambda r, p: _why_crs(s, r, kb, p),
        "prior-reaction": lambda r, p: _why_reactions(s, r, kb),
        "treatment-course": lambda r, p: _why_course(r, kb, p),
        "label-precaution": lambda r, p: (
            "allergy risks or avoided agents in the knowledge"
            if kb.drug(r.drug_id).allergy_risks or kb.drug(r.drug_id).avoided_agents
            else "no label precaution in the knowledge for this drug"
        ),
    }
    for rule in RULES:
        topic = rule.TOPIC
        if topic in ("patient-summary", "order-not-checked"):
            fired = any(f.topic == topic for f in ev.findings)
            lines.append(f"  {topic}: {'FIRED' if fired else 'no finding'}")
            continue
        for r in target_orders(s):
            if kb.site is not None and kb.site.switched_off(topic, r.drug_id):
                lines.append(f"  {topic} / {r.drug_id}: SWITCHED OFF by the site overlay")
                continue
            pos = position(s, r, kb)
            mark = "FIRED" if (topic, r.drug_id) in produced else "no card"
            lines.append(f"  {topic} / {r.drug_id}: {mark} — {why[topic](r, pos)}")
    cards = ev.response.get("cards", [])
    lines.append(f"Cards ({len(cards)}):")
    for card in cards:
        lines.append(f"  [{card['indicator']}] {card['summary']}  <{_rule_of(card, kb)}>")
        lines.extend(textwrap.indent(card.get("detail", ""), "      ").splitlines())
        for sug in card.get("suggestions", []):
            flag = " (recommended)" if sug.get("isRecommended") else ""
            lines.append(f"      > suggestion: {sug['label']}{flag}")
    return "\n".join(lines)


def _rule_of(card: Mapping[str, Any], kb: KnowledgeBase) -> str:
    """The card's rule and the topic code it was sent with: ``rate-titration/RateTitration``."""
    sent = card["source"]["topic"]["code"]
    try:
        return f"{kb.policy.topic_sent_as(sent).code}/{sent}"
    except KeyError:
        return str(sent)


def explain_request(path: str | Path, kb: KnowledgeBase) -> str:
    """Evaluate the hook request in ``path`` and explain it (plain text).

    Missing prefetch is fetched from the request's ``fhirServer`` with the default (https-only)
    outbound policy, exactly as the service would.
    """
    body: Any = json.loads(Path(path).read_text(encoding="utf-8"))
    hook = body.get("hook") if isinstance(body, dict) else None
    if not isinstance(hook, str):
        raise ValueError("the file is not a CDS Hooks request (no 'hook')")
    ev = pipeline.run(
        body,
        service_id=service_for(hook),
        kb=kb,
        settings=FhirSettings(),
    )
    return explain_evaluation(ev, kb)
