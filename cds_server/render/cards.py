"""Turns Findings into CDS Hooks 2.0 card objects (JSON-ready dicts).

One card per (rule topic, drug): findings of the same topic and drug (e.g. two bags of one
drug) are merged. Every card has a uuid, a summary under 140 characters, Markdown detail
with the facts' sources and evidence levels, ``source.topic`` naming the rule, coded
override reasons from the knowledge's policy, and suggestions with uuids and
``selectionBehavior: any``. A ``critical`` indicator is only kept when every citation that
backs the finding is verified; otherwise it is lowered to ``warning``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from cds_server.knowledge.model import KnowledgeBase
from cds_server.model import Citation, Finding
from cds_server.render import markdown
from cds_server.render.suggestions import InvalidSuggestion, suggestion

log = logging.getLogger(__name__)

SUMMARY_LIMIT = 140  # CDS Hooks: summary is a "<140-character" string
_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}
_MAX_LINKS = 3
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


def _unique(citations: Sequence[Citation]) -> list[Citation]:
    seen: dict[tuple[str, str | None], Citation] = {}
    for c in citations:
        key = (c.title, c.url)
        # Keep the weakest evidence level seen for the same source: never overstate.
        if key not in seen or _weaker(c, seen[key]):
            seen[key] = c
    return list(seen.values())


def _weaker(a: Citation, b: Citation) -> bool:
    order = {"verified": 0, "secondary": 1, "unverified": 2}
    return order[a.evidence] > order[b.evidence]


def _text(text: str) -> str:
    """Knowledge and patient text as card Markdown: cleaned for prose, escaped as Markdown."""
    return markdown.escape(markdown.prose(text))


def detail_text(finding: Finding, warnings: Sequence[str]) -> str:
    """The Markdown detail: points, table, what could not be checked, and sources."""
    parts = [_text("\n".join(finding.points))] if finding.points else []
    if finding.table:
        parts.append(markdown.table(finding.table))
    if finding.unknowns:
        parts.append("**Could not check:** " + _text("; ".join(finding.unknowns)) + ".")
    if warnings:
        # Parse and prefetch warnings name resource types, positions and keys, never values.
        shown = [_text(w) for w in warnings[:_MAX_WARNINGS]]
        more = len(warnings) - len(shown)
        tail = f"\n- … and {more} more" if more > 0 else ""
        parts.append("**Data not read:**\n" + "\n".join(f"- {w}" for w in shown) + tail)
    sources = []
    for c in _unique(finding.citations):
        bits = [c.title]
        if c.label_version:
            bits.append(c.label_version)
        tag = c.evidence + (f", {c.jurisdiction}" if c.jurisdiction else "")
        sources.append(f"- {markdown.escape(' — '.join(bits))} *({tag})*")
    if sources:
        parts.append("**Sources:**\n" + "\n".join(sources))
    return "\n\n".join(parts)


_LINK_LABEL = 80


def _short(title: str) -> str:
    """A link label: the title, cut at a word boundary with an ellipsis when too long."""
    if len(title) <= _LINK_LABEL:
        return title
    return title[: _LINK_LABEL - 1].rsplit(" ", 1)[0].rstrip(",;:(") + "…"


def _links(finding: Finding) -> list[dict[str, str]]:
    links: list[dict[str, str]] = []
    for c in _unique(finding.citations):
        if c.url and c.url.startswith("https://") and all(link["url"] != c.url for link in links):
            links.append({"label": _short(c.title), "url": c.url, "type": "absolute"})
        if len(links) == _MAX_LINKS:
            break
    return links


def card(
    finding: Finding,
    kb: KnowledgeBase,
    *,
    new_uuid: Callable[[], str],
    patient_id: str,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """One CDS Hooks card for one (merged, gated) finding."""
    policy = kb.policy
    topic = policy.topic(finding.topic)
    out: dict[str, Any] = {
        "uuid": new_uuid(),
        "summary": summary_text(finding),
        "indicator": finding.indicator,
        "detail": detail_text(finding, warnings),
        "source": {
            "label": f"{policy.publisher} ({kb.version})",
            "topic": {"system": policy.system, "code": topic.code, "display": topic.display},
        },
    }
    suggestions = []
    for action in finding.actions:
        try:
            suggestions.append(suggestion(action, patient_id, new_uuid))
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
    links = _links(finding)
    if links:
        out["links"] = links
    if not out["detail"]:
        del out["detail"]
    return out


def render_cards(
    findings: Sequence[Finding],
    kb: KnowledgeBase,
    *,
    new_uuid: Callable[[], str],
    patient_id: str = "unknown",
    warnings: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Cards for all findings: merged per topic and drug, gated, sorted by indicator then drug."""
    return [
        card(f, kb, new_uuid=new_uuid, patient_id=patient_id, warnings=warnings)
        for f in prepare(findings)
    ]


def prepare(findings: Sequence[Finding]) -> list[Finding]:
    """Findings as cards will show them: merged per topic and drug, gated, sorted."""
    ready = [gate_critical(f) for f in merge(findings)]
    ready.sort(key=lambda f: (_RANK[f.indicator], f.drug_name, f.topic))
    return ready
