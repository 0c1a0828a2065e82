"""Prior-reaction rule: same-agent reactions, class allergies and cross-reactivity.

When: an allergy record (not entered-in-error or refuted) names the ordered drug, its class
("platinum compounds"), or another drug of its class that the class's cross-reactivity
statements cover.
Then, one card per ordered drug, tiered:
- ``critical`` only for a definite, severe reaction (criticality high, severity severe or an
  anaphylaxis-type manifestation) to the SAME agent, recorded as active and not unconfirmed,
  with no desensitization plan in the draft orders and no tolerated dose since, and backed by
  verified knowledge (a verified after-severe/contraindication fact, or a verified
  desensitization protocol for a drug the references report desensitizing). It says not to
  give by standard infusion, shows the 12-step schedule computed from the order's dose,
  volume and rate, and suggests an allergy/immunology referral.
- ``warning`` for mild/moderate same-agent reactions (with the rechallenge approach from the
  knowledge), class or cross-reactive matches (naming the evidence), or a severe reaction
  that a later tolerated dose, a planned desensitization or an inactive record downgrades.
- A later completed dose since the reaction lowers the tier by one and says why.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from cds_server.knowledge.model import Drug, KnowledgeBase, Provenance, ReactionGuidance
from cds_server.model import (
    MINUTES_PER_HOUR,
    SEMANTIC_TAG,
    Citation,
    Finding,
    Indicator,
    ProposedServiceRequest,
    Quantity,
    RecognisedAllergy,
    RecognisedOrder,
    Situation,
)
from cds_server.reasoning import desensitization
from cds_server.reasoning.dosing import dose_in_mg, fmt_number, prior_administrations
from cds_server.reasoning.orders import target_orders

TOPIC = "prior-reaction"
_IGNORED = frozenset({"entered-in-error", "refuted"})
_INACTIVE = frozenset({"inactive", "resolved"})
_DOWNGRADE: dict[Indicator, Indicator] = {"critical": "warning", "warning": "info", "info": "info"}


@dataclass(frozen=True)
class Match:
    """One allergy record relevant to the ordered drug."""

    allergy: RecognisedAllergy
    relation: str  # "same-agent", "class", "cross-reactive"
    severe: bool
    tolerated_since: datetime | None
    statements: tuple[tuple[str, Provenance], ...] = ()


def evaluate(situation: Situation, kb: KnowledgeBase) -> list[Finding]:
    """Prior-reaction findings, one per ordered drug (see module docstring)."""
    out = []
    seen: set[str] = set()
    for recognised in target_orders(situation):
        if recognised.drug_id in seen:
            continue
        matches = relevant_allergies(situation, recognised, kb)
        if matches:
            seen.add(recognised.drug_id)
            out.append(_finding(situation, recognised, matches, kb))
    return out


def assess(situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase) -> Finding | None:
    """The prior-reaction finding for one order (draft or planned), or None without a record:
    what order-sign says, for the patient-view summary to say the same."""
    matches = relevant_allergies(situation, recognised, kb)
    return _finding(situation, recognised, matches, kb) if matches else None


def is_severe(allergy: RecognisedAllergy, kb: KnowledgeBase) -> bool:
    """Severe per the knowledge's definition (criticality, severity, manifestation)."""
    a = allergy.allergy
    engine = kb.policy.engine
    if a.criticality == "high":
        return True
    severe_codes = {(c.system, c.code) for c in engine.severe_codes}
    for reaction in a.reactions:
        if reaction.severity == "severe":
            return True
        if any((m.system, m.code) in severe_codes for m in reaction.manifestations):
            return True
        texts = [*reaction.manifestation_texts, reaction.description or ""]
        if any(term in t.lower() for t in texts for term in engine.severe_terms):
            return True
    return False


def relevant_allergies(
    situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase
) -> list[Match]:
    """Allergy records that concern the ordered drug, with their relation to it."""
    drug_id = recognised.drug_id
    classes = kb.classes_of(drug_id)
    out: list[Match] = []
    for ra in _closest_first(situation.allergies, drug_id):
        if ra.allergy.verification_status in _IGNORED:
            continue
        relation, statements = _relation(ra, drug_id, classes)
        if relation is None or any(m.allergy.allergy is ra.allergy for m in out):
            continue
        out.append(
            Match(
                allergy=ra,
                relation=relation,
                severe=is_severe(ra, kb),
                tolerated_since=_tolerated_since(situation, ra, recognised),
                statements=statements,
            )
        )
    return out


def _closest_first(
    allergies: tuple[RecognisedAllergy, ...], drug_id: str
) -> list[RecognisedAllergy]:
    """Same-agent matches before class matches, so one record is reported once, closest."""
    return sorted(
        allergies, key=lambda ra: not (ra.target_kind == "drug" and ra.target_id == drug_id)
    )


def _relation(ra: RecognisedAllergy, drug_id: str, classes: tuple) -> tuple[str | None, tuple]:
    if ra.target_kind == "drug" and ra.target_id == drug_id:
        return "same-agent", ()
    for cls in classes:
        if ra.target_kind == "class" and ra.target_id == cls.id:
            return "class", tuple(
                (c.text, c.provenance) for c in cls.cross_reactivity if drug_id in c.members
            )
        if ra.target_kind == "drug" and ra.target_id in cls.members:
            statements = tuple(
                (c.text, c.provenance)
                for c in cls.cross_reactivity
                if drug_id in c.members and ra.target_id in c.members
            )
            if statements:
                return "cross-reactive", statements
    return None, ()


def _tolerated_since(
    situation: Situation, ra: RecognisedAllergy, recognised: RecognisedOrder
) -> datetime | None:
    """Date of the latest completed dose of the ordered drug after the reaction, if any."""
    a = ra.allergy
    reaction_dates = [r.onset for r in a.reactions if r.onset] + (
        [a.recorded] if a.recorded else []
    )
    if not reaction_dates:
        return None
    reaction = max(reaction_dates)
    later = [
        o.authored_on
        for o in prior_administrations(situation, recognised.drug_id, recognised.order)
        if o.status == "completed" and o.authored_on and o.authored_on > reaction
    ]
    return max(later) if later else None


def _critical_backing(drug: Drug, kb: KnowledgeBase) -> tuple[Provenance, ...]:
    """Verified knowledge that can back a critical card for this drug (may be empty)."""
    backing = tuple(
        r.provenance
        for r in drug.reactions
        if r.kind in ("after-severe", "contraindication") and r.provenance.evidence == "verified"
    )
    protocol, _ = kb.desensitization_protocol(drug)
    if (
        drug.desensitization_eligible
        and protocol is not None
        and protocol.provenance.evidence == "verified"
    ):
        backing += (protocol.provenance,)
    return backing


def _contraindicated_after_any_reaction(drug: Drug) -> bool:
    """Does a verified label contraindication apply after a reaction of any severity?"""
    return any(
        g.kind == "contraindication" and g.grades == "any" and g.provenance.evidence == "verified"
        for g in drug.reactions
    )


def _guidance(drug: Drug, *, severe: bool) -> list[ReactionGuidance]:
    """The knowledge's reaction guidance relevant to the tier: few lines, most relevant first.

    Severe: after-severe and contraindication statements plus the first desensitization
    statement. Otherwise: rechallenge statements, else general management.
    """
    by_kind: dict[str, list[ReactionGuidance]] = {}
    for g in drug.reactions:
        by_kind.setdefault(g.kind, []).append(g)
    if severe:
        return [
            *by_kind.get("after-severe", []),
            *by_kind.get("contraindication", []),
            *by_kind.get("desensitization", [])[:1],
        ]
    return by_kind.get("rechallenge") or by_kind.get("management", [])[:1]


def _plan_in_drafts(situation: Situation, drug_id: str, kb: KnowledgeBase) -> bool:
    terms = kb.policy.engine.desensitization_terms
    for r in situation.orders:
        if r.drug_id != drug_id:
            continue
        texts = [*r.order.texts, r.order.dosage_text or ""]
        if any(term in t.lower() for t in texts for term in terms):
            return True
    return False


def describe(match: Match) -> str:
    """One line per allergy record, without nested brackets: "Reaction to this drug on record
    (2026-09-12): rituximab — Anaphylaxis; severity severe; criticality high; active,
    confirmed."."""
    a = match.allergy.allergy
    what = {
        "same-agent": "this drug",
        "class": "its drug class",
        "cross-reactive": "a cross-reactive drug of the same class",
    }[match.relation]
    bits = []
    manifestations = _each_once(t for r in a.reactions for t in r.manifestation_texts)
    if manifestations:
        bits.append(", ".join(manifestations))
    severities = [r.severity for r in a.reactions if r.severity]
    if severities:
        bits.append(f"severity {', '.join(dict.fromkeys(severities))}")
    if a.criticality:
        bits.append(f"criticality {a.criticality}")
    status = [s for s in (a.clinical_status, a.verification_status) if s]
    if status:
        bits.append(", ".join(status))
    when = f" ({a.recorded.date().isoformat()})" if a.recorded else ""
    detail = f" — {'; '.join(bits)}" if bits else ""
    name = a.texts[0] if a.texts else match.allergy.target_id
    return f"Reaction to {what} on record{when}: {name}{detail}."


def _each_once(texts: Iterable[str]) -> list[str]:
    """Manifestation texts with each manifestation said once: a concept's text and its coded
    display ("Anaphylaxis", "anaphylaxis (disorder)") are one manifestation; the first wording
    is kept."""
    kept: dict[str, str] = {}
    for text in texts:
        kept.setdefault(SEMANTIC_TAG.sub("", text).strip().casefold(), text)
    return list(kept.values())


def related_name(match: Match, kb: KnowledgeBase) -> str:
    """What a class or cross-reactive record names: "paclitaxel", "platinum compounds"."""
    target = match.allergy.target_id
    if match.allergy.target_kind == "drug" and target in kb.drugs:
        return kb.drugs[target].name
    if match.allergy.target_kind == "class" and target in kb.classes:
        return kb.classes[target].name
    return target


# Reaction guidance as a card names it (knowledge ``kind`` → words for a prescriber).
_KIND_WORDS = {
    "after-severe": "After a severe reaction",
    "contraindication": "Contraindication",
    "desensitization": "Desensitization",
    "rechallenge": "Rechallenge",
    "management": "Management",
}


def guidance_label(guidance: ReactionGuidance) -> str:
    """ "After a severe reaction (grade 3-4)": the kind and the grades, one level of brackets."""
    label = _KIND_WORDS.get(guidance.kind, guidance.kind.replace("-", " ").capitalize())
    grades = (guidance.grades or "").replace("(", "").replace(")", "").strip()
    if not grades:
        return label
    if grades == "any":
        return "After a reaction of any grade" if guidance.kind == "after-severe" else label
    if grades[0].isdigit():
        return f"{label} (grade {grades})"
    if guidance.kind == "after-severe" and grades.casefold() == "severe":
        return label
    return f"{label} ({grades})"


def _finding(
    situation: Situation, recognised: RecognisedOrder, matches: list[Match], kb: KnowledgeBase
) -> Finding:
    drug = kb.drug(recognised.drug_id)
    same = [m for m in matches if m.relation == "same-agent"]
    definite = [
        m
        for m in same
        if m.severe
        and m.allergy.allergy.verification_status != "unconfirmed"
        and m.allergy.allergy.clinical_status not in _INACTIVE
    ]
    any_grade = _contraindicated_after_any_reaction(drug)
    if any_grade and not definite:
        # The label contraindicates re-exposure after a reaction of any severity: a confirmed,
        # active same-agent reaction is as definite as a severe one.
        definite = [
            m
            for m in same
            if m.allergy.allergy.verification_status != "unconfirmed"
            and m.allergy.allergy.clinical_status not in _INACTIVE
        ]
    plan = _plan_in_drafts(situation, drug.id, kb)
    backing = _critical_backing(drug, kb)
    points = [f"- {describe(m)}" for m in matches]
    citations: list[Citation] = []
    unknowns: list[str] = []
    indicator: Indicator
    if definite:
        indicator = "critical"
        reasons = []
        if plan:
            indicator, reasons = (
                "warning",
                ["a desensitization is already planned in the draft orders"],
            )
        elif not backing:
            indicator = "warning"
            reasons = ["the knowledge backing a critical alert for this drug is not verified"]
        tolerated = [m.tolerated_since for m in definite if m.tolerated_since]
        if tolerated and indicator == "critical":
            indicator = _DOWNGRADE[indicator]
            last = max(tolerated).date().isoformat()
            reasons.append(f"a later dose was completed on {last} (tolerated since)")
        severe = any(m.severe for m in definite)
        headline = (
            "severe prior reaction to this drug"
            if severe
            else "prior reaction: re-exposure contraindicated by the label"
        )
        if indicator == "critical":
            headline = (
                "severe prior reaction: do not give by standard infusion"
                if severe
                else "prior reaction: contraindicated, do not give by standard infusion"
            )
            points.append(
                "- **Do not give by standard infusion.** Discuss rapid drug desensitization with "
                "allergy/immunology before re-exposure."
            )
        for reason in reasons:
            points.append(f"- Tier lowered: {reason}.")
        for p in backing:
            citations.extend(p.citations())
    elif same:
        indicator = "warning"
        # The recorded severity, when the records agree on one: "… to this drug (mild)"
        severities = {r.severity for m in same for r in m.allergy.allergy.reactions if r.severity}
        severity = f" ({severities.pop()})" if len(severities) == 1 else ""
        headline = f"prior reaction to this drug{severity}"
        if all(m.tolerated_since for m in same):
            indicator = "info"
            latest = max(m.tolerated_since for m in same if m.tolerated_since)
            points.append(
                f"- Tier lowered: a later dose was completed on {latest.date().isoformat()}."
            )
    else:
        indicator = "warning"
        related = ", ".join(dict.fromkeys(related_name(m, kb) for m in matches))
        kinds = {m.relation for m in matches}
        why = "its class" if kinds == {"class"} else "cross-reactive, same class"
        headline = f"reaction on record to {related} ({why})"
        for m in matches:
            for text, prov in m.statements:
                points.append(f"- Cross-reactivity: {text} ({prov.evidence})")
                citations.extend(prov.citations())
        if all(m.tolerated_since for m in matches):
            indicator = "info"
    for guidance in _guidance(drug, severe=bool(definite)):
        points.append(f"- {guidance_label(guidance)}: {guidance.text}")
        citations.extend(guidance.provenance.citations())
    table: tuple[tuple[str, ...], ...] = ()
    sched_points: list[str] = []
    actions: tuple[ProposedServiceRequest, ...] = ()
    if definite:
        table, sched_points, sched_unknowns = _schedule(situation, recognised, kb)
        unknowns.extend(sched_unknowns)
        actions = (
            ProposedServiceRequest(
                label="Refer to allergy/immunology for rapid drug desensitization",
                text=f"Allergy/immunology referral: "
                f"{'severe ' if any(m.severe for m in definite) else ''}prior reaction to "
                f"{drug.name}; evaluate for rapid drug desensitization before re-exposure.",
                recommended=indicator == "critical",
                for_order_ref=recognised.order.ref,
                referral="allergy-immunology",
            ),
        )
    return Finding(
        topic=TOPIC,
        drug_id=drug.id,
        drug_name=drug.display,
        indicator=indicator,
        headline=headline,
        points=tuple(points),
        table=table,
        table_notes=tuple(sched_points),
        citations=tuple(citations),
        actions=actions,
        unknowns=tuple(unknowns),
        order_ref=recognised.order.ref,
    )


def _schedule(
    situation: Situation, recognised: RecognisedOrder, kb: KnowledgeBase
) -> tuple[tuple[tuple[str, ...], ...], list[str], list[str]]:
    """The desensitization table computed from the order, or what was missing to compute it."""
    protocol, why_none = kb.desensitization_protocol(kb.drug(recognised.drug_id))
    order = recognised.order
    weight = situation.record.weight.kg if situation.record.weight else None
    dose = dose_in_mg(order.dose, weight)
    volume = order.volume.value if order.volume else None
    rate = _rate_ml_h(order.rate, dose, volume)
    missing = [
        name
        for name, value in (
            ("dose in mg", dose),
            ("bag volume in mL", volume),
            ("final rate", rate),
        )
        if value is None
    ]
    if protocol is None:
        return (), [], [why_none]
    if missing:
        return (), [], [f"the order's {', '.join(missing)} (desensitization schedule not computed)"]
    assert dose is not None and volume is not None and rate is not None
    try:
        sched = desensitization.compute(protocol, dose, volume, rate)
    except ValueError as exc:
        return (), [], [f"a valid desensitization schedule for this order ({exc})"]
    header = ("Step", "Bag", "mg/mL", "Rate mL/h", "Min", "mL", "Dose mg", "Cumulative mg")
    rows = tuple(
        (
            str(s.number),
            str(s.bag),
            f"{sched.bag_concentrations[s.bag - 1]:.4g}",
            fmt_number(s.rate_ml_h),
            f"{s.minutes:.4g}",
            f"{s.volume_ml:.4g}",
            f"{s.dose_mg:.4g}",
            f"{s.cumulative_mg:.4g}",
        )
        for s in sched.steps
    )
    points = [
        f"- {protocol.name}, computed for {fmt_number(dose)} mg in {fmt_number(volume)} mL at a "
        f"final rate of {fmt_number(rate)} mL/h: total **{sched.total_minutes:.0f} min** "
        f"({sched.total_minutes / MINUTES_PER_HOUR:.1f} h). "
        "An allergist or oncology pharmacist must confirm it."
    ]
    if any(s.kind == "titrated" for s in kb.drug(recognised.drug_id).rate_schedules):
        points.append(
            f"- The final rate used is the order's rate ({fmt_number(rate)} mL/h), which for this "
            "titrated drug may be a starting rate: confirm the target final rate."
        )
    if protocol.min_final_rate_ml_h and rate < protocol.min_final_rate_ml_h:
        points.append(
            f"- The fixed step rates assume a final rate of at least "
            f"{fmt_number(protocol.min_final_rate_ml_h)} mL/h; this order's rate is lower."
        )
    return (header, *rows), points, []


def _rate_ml_h(
    rate: Quantity | None, dose_mg: float | None, volume_ml: float | None
) -> float | None:
    if rate is None:
        return None
    if rate.unit == "mL/h":
        return rate.value
    if rate.unit == "mg/h" and dose_mg and volume_ml:
        return rate.value * volume_ml / dose_mg
    return None
