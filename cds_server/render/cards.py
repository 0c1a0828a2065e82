"""Turns Findings into CDS Hooks 2.0 card objects (JSON-ready dicts).

One card per (rule topic, drug): findings of the same topic and drug (e.g. two bags of one
drug) are merged. Every card has a uuid, a summary under 140 characters, Markdown detail
with the facts' sources and evidence levels (each source once, its title a link where it has
a URL: they are not repeated as ``links`` buttons), ``source.topic`` naming the rule, coded
override reasons from the knowledge's policy, and suggestions with uuids and
``selectionBehavior: any``. A ``critical`` indicator is only kept when every citation that
backs the finding is verified; otherwise it is lowered to ``warning``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import lru_cache
from typing import Any

from cds_server.knowledge.model import KnowledgeBase
from cds_server.knowledge_pages.links import PageLinks
from cds_server.model import Citation, Finding
from cds_server.render import markdown
from cds_server.render.profiles import GENERIC, ClientProfile, shape_card
from cds_server.render.suggestions import InvalidSuggestion, suggestion

log = logging.getLogger(__name__)

SUMMARY_LIMIT = 140  # CDS Hooks: summary is a "<140-character" string
_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
_MAX_WARNINGS = 3


def merge(findings: Sequence[Finding]) -> list[Finding]:
    """Merge findings that share topic and drug into one (highest indicator wins)."""
    merged: dict[tuple[str, str], Finding] = {}
    for f in findings:
        key = (f.topic, f.drug_id)
        if key not in merged:
            merged[key] = f
            continue
        old = merged[key]
        indicator = min(old.indicator, f.indicator, key=lambda i: _RANK[i])
        merged[key] = replace(
            old,
            indicator=indicator,
            headline=old.headline if _RANK[old.indicator] <= _RANK[f.indicator] else f.headline,
            points=old.points + tuple(p for p in f.points if p not in old.points),
            citations=old.citations + f.citations,
            actions=old.actions + f.actions,
            unknowns=old.unknowns + tuple(u for u in f.unknowns if u not in old.unknowns),
            table=old.table or f.table,
            table_notes=old.table_notes if old.table else f.table_notes,
            override_reasons=tuple(dict.fromkeys(old.override_reasons + f.override_reasons)),
        )
    return list(merged.values())


def gate_critical(finding: Finding) -> Finding:
    """Unverified or secondary facts never make a card critical on their own."""
    if finding.indicator != "critical" or any(c.evidence == "verified" for c in finding.citations):
        return finding
    return replace(
        finding,
        indicator="warning",
        points=(*finding.points, "- Shown as a warning: no verified fact backs a critical alert."),
    )


def summary_text(finding: Finding) -> str:
    """ "Drug: headline", cut to fewer than 140 characters."""
    text = markdown.prose(f"{finding.drug_name}: {finding.headline}")
    if len(text) >= SUMMARY_LIMIT:
        text = text[: SUMMARY_LIMIT - 2].rstrip() + "…"
    return text


# Detail budget: characters a prescriber reads at signing before the Sources block, not
# counting a table (cards/README.md, "How our cards read", says why 700).
DETAIL_BUDGET = 700
MAX_SOURCES = 4
TABLE_HEADING = "**Schedule:**"
# An institution's own protocol (a site overlay) comes first: it is what changed the card.
_EVIDENCE_RANK = {"institution": 0, "verified": 1, "secondary": 2, "unverified": 3}
# Points shown only when a condition the service cannot check holds: dropped first.
_CONDITIONAL = re.compile(
    r"^- (?:(?:Consider|Also), if|May be eligible if)\b|^- (?:Consider|Also): "
)
# Points that change what the prescriber does: never dropped.
_KEPT = re.compile(r"\*\*|^- (?:Tier lowered|Shown as a warning|Contraindication)")
# A bibliographic title ("Lee CW, Matulonis UA…", "Castells et al. …2008") keyed by its first
# author and year, so one paper cited in two wordings is listed once.
_AUTHOR = re.compile(r"^([A-Z][A-Za-z-]+)(?:,| et al\b| [A-Z]{1,3}\b)")
_YEAR = re.compile(r"\b(19|20)\d{2}\b")


@lru_cache(maxsize=4096)
def _source_keys(c: Citation) -> frozenset[str]:
    """How a source is told apart (memoised: citations come from the knowledge, few and fixed)."""
    keys = {"title:" + re.sub(r"\W+", " ", c.title).strip().casefold()}
    if c.url:
        keys.add("url:" + c.url.rstrip("/").casefold())
    author, year = _AUTHOR.match(c.title), _YEAR.search(c.title)
    if author and year:
        keys.add(f"paper:{author.group(1).casefold()}:{year.group(0)}")
    return frozenset(keys)


def _unique(citations: Sequence[Citation]) -> list[Citation]:
    """Each source once (same URL, title or first author and year), strongest evidence first;
    a source cited at two levels shows the weaker one: never overstate."""
    kept: list[tuple[frozenset[str], Citation]] = []
    for c in citations:
        keys = _source_keys(c)
        for i, (seen, old) in enumerate(kept):
            if seen & keys:
                kept[i] = (seen | keys, c if _weaker(c, old) else old)
                break
        else:
            kept.append((keys, c))
    return sorted((c for _, c in kept), key=lambda c: _EVIDENCE_RANK[c.evidence])


def _weaker(a: Citation, b: Citation) -> bool:
    return _EVIDENCE_RANK[a.evidence] > _EVIDENCE_RANK[b.evidence]


def _text(text: str) -> str:
    """Knowledge and patient text as card Markdown: cleaned for prose, escaped as Markdown."""
    return markdown.escape(markdown.prose(text))


def _groups(points: Sequence[str]) -> list[str]:
    """Points with their sub-bullets ("  - …") attached, one string per point."""
    groups: list[str] = []
    for line in "\n".join(points).split("\n"):
        if groups and line.startswith("  "):
            groups[-1] += "\n" + line
        else:
            groups.append(line)
    return groups


def within_budget(points: Sequence[str], other: int, budget: int = DETAIL_BUDGET) -> list[str]:
    """The points that fit ``budget`` with ``other`` characters of the rest of the prose.

    Whole points are left out, never part of one: conditional notes first, then other points
    from the last, never the first point or one that changes what to do (bold, a lowered
    tier). A last line says how many were left out.
    """
    groups = _groups(points)

    def size(kept: list[str], dropped: int) -> int:
        note = len(_left_out(dropped)) + 1 if dropped else 0
        return other + sum(len(g) + 1 for g in kept) + note

    kept, dropped = list(groups), 0
    order = [i for i in reversed(range(len(groups))) if _CONDITIONAL.match(groups[i])]
    order += [
        i for i in reversed(range(1, len(groups))) if i not in order and not _KEPT.search(groups[i])
    ]
    gone: set[int] = set()
    for i in order:
        if size(kept, dropped) <= budget:
            break
        gone.add(i)
        dropped += 1
        kept = [g for j, g in enumerate(groups) if j not in gone]
    return kept + ([_left_out(dropped)] if dropped else [])


def _left_out(n: int) -> str:
    notes = f"{n} more note{'s' if n != 1 else ''}"
    return f"- {notes} left out to keep this card short (see the sources)."


def _source_line(c: Citation) -> str:
    title = markdown.prose(" — ".join(b for b in (c.title, c.label_version) if b))
    tag = c.evidence + (f", {c.jurisdiction}" if c.jurisdiction else "")
    if c.url and c.url.startswith("https://"):
        label = markdown.escape(title).replace("[", "\\[").replace("]", "\\]")
        return f"- [{label}]({c.url}) *({tag})*"
    return f"- {markdown.escape(title)} *({tag})*"


def detail_text(finding: Finding, warnings: Sequence[str]) -> str:
    """The Markdown detail: points (within the budget), table, what could not be checked,
    and the sources (each once, strongest evidence first, at most ``MAX_SOURCES``)."""
    tail = []
    if finding.unknowns:
        tail.append("**Could not check:** " + _text("; ".join(finding.unknowns)) + ".")
    if warnings:
        # Parse and prefetch warnings name resource types, positions and keys, never values.
        shown = [_text(w) for w in warnings[:_MAX_WARNINGS]]
        more = len(warnings) - len(shown)
        more_line = f"\n- … and {more} more" if more > 0 else ""
        tail.append("**Data not read:**\n" + "\n".join(f"- {w}" for w in shown) + more_line)
    other = sum(len(t) + 2 for t in tail)
    points = within_budget([_text(p) for p in finding.points], other) if finding.points else []
    parts = ["\n".join(points)] if points else []
    if finding.table_notes:  # with the table, outside the budget
        parts.append(TABLE_HEADING + "\n" + _text("\n".join(finding.table_notes)))
    if finding.table:
        parts.append(markdown.table(finding.table))
    parts.extend(tail)
    sources = _unique(finding.citations)
    if sources:
        lines = [_source_line(c) for c in sources[:MAX_SOURCES]]
        if len(sources) > MAX_SOURCES:
            lines.append(f"- and {len(sources) - MAX_SOURCES} more")
        parts.append("**Sources:**\n" + "\n".join(lines))
    return "\n\n".join(parts)


def card(
    finding: Finding,
    kb: KnowledgeBase,
    *,
    new_uuid: Callable[[], str],
    patient_id: str,
    warnings: Sequence[str] = (),
    page_links: PageLinks | None = None,
    profile: ClientProfile = GENERIC,
) -> dict[str, Any]:
    """One CDS Hooks card for one (merged, gated) finding, shaped for ``profile``'s client.
    With ``page_links``, ``source.url`` is the knowledge page of the card's drug at its topic,
    when there is such a page."""
    policy = kb.policy
    topic = policy.topic(finding.topic)
    source: dict[str, Any] = {"label": f"{policy.publisher} ({kb.version})"}
    url = page_links.card_url(finding.drug_id, finding.topic) if page_links else None
    if url:
        source["url"] = url
    source["topic"] = {"system": policy.system, "code": topic.wire_code, "display": topic.display}
    out: dict[str, Any] = {
        "uuid": new_uuid(),
        "summary": summary_text(finding),
        "indicator": finding.indicator,
        "detail": detail_text(finding, warnings),
        "source": source,
    }
    suggestions = []
    for action in finding.actions:
        if not profile.takes(action):
            continue
        try:
            suggestions.append(suggestion(action, patient_id, new_uuid, profile))
        except InvalidSuggestion as exc:
            log.error("suggestion dropped for topic %s: %s", finding.topic, exc)
    if suggestions:
        out["suggestions"] = suggestions
        out["selectionBehavior"] = "any"
    # The reasons reasoning chose for this card (``reasoning.reasons``), else the topic's; a
    # snoozing reason says so only where it would snooze this card (never a critical one).
    codes = finding.override_reasons or topic.override_reasons
    reasons = [policy.reason(code) for code in codes]
    if reasons:
        out["overrideReasons"] = [
            {
                "system": policy.override_system,
                "code": r.code,
                "display": r.shown(finding.indicator),
            }
            for r in reasons
        ]
    if not out["detail"]:
        del out["detail"]
    return shape_card(out, profile, new_uuid)


def render_cards(
    findings: Sequence[Finding],
    kb: KnowledgeBase,
    *,
    new_uuid: Callable[[], str],
    patient_id: str = "unknown",
    warnings: Sequence[str] = (),
    page_links: PageLinks | None = None,
    profile: ClientProfile = GENERIC,
) -> list[dict[str, Any]]:
    """Cards for all findings: merged per topic and drug, gated, sorted by indicator then drug."""
    return [
        card(
            f,
            kb,
            new_uuid=new_uuid,
            patient_id=patient_id,
            warnings=warnings,
            page_links=page_links,
            profile=profile,
        )
        for f in prepare(findings)
    ]


def prepare(findings: Sequence[Finding]) -> list[Finding]:
    """Findings as cards will show them: merged per topic and drug, gated, sorted."""
    ready = [gate_critical(f) for f in merge(findings)]
    ready.sort(key=lambda f: (_RANK[f.indicator], f.drug_name, f.topic))
    return ready
