"""The analytics report as JSON, as text (``cds-server report``) and as chart geometry.

Pure functions over ``store.Report`` and the knowledge (for rule, drug and reason names).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from cds_server.cdshooks.errors import InvalidRequest
from cds_server.knowledge.model import KnowledgeBase
from cds_server.store import ReasonCount, Report, ReportRow

DEFAULT_DAYS = 30
NO_REASON = "no coded reason"


# -- the window -----------------------------------------------------------------------------


def parse_instant(text: str, name: str) -> datetime:
    """``2026-11-01`` (midnight UTC) or an ISO 8601 date-time (naive = UTC); else 400."""
    text = text.strip()
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=UTC)
        value = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except (ValueError, OverflowError):
        raise InvalidRequest(
            f"Invalid {name}", fields={name: ["must be a date (2026-11-01) or an ISO date-time"]}
        ) from None


def window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """``[since, until)``; defaults: until now, since ``DEFAULT_DAYS`` before until."""
    end = parse_instant(until, "until") if until else now
    try:
        start = parse_instant(since, "since") if since else end - timedelta(days=DEFAULT_DAYS)
    except OverflowError:
        raise InvalidRequest("Invalid window", fields={"until": ["is too early"]}) from None
    if start >= end:
        raise InvalidRequest("Invalid window", fields={"since": ["must be before until"]})
    return start, end


# -- names --------------------------------------------------------------------------------


def rule_name(kb: KnowledgeBase, rule: str | None) -> str:
    if rule is None:
        return "all rules"
    try:
        return kb.policy.topic(rule).display
    except KeyError:
        return rule


def drug_name(kb: KnowledgeBase, drug: str | None) -> str:
    if drug is None:
        return "no drug"
    found = kb.drugs.get(drug)
    return found.display if found is not None else drug


def reason_name(kb: KnowledgeBase, reason: ReasonCount) -> str:
    """Ours: the knowledge's display; a client's: the display it sent, else ``code (system)``."""
    if reason.code is None:
        return NO_REASON
    if reason.system == kb.policy.override_system:
        try:
            return kb.policy.reason(reason.code).display
        except KeyError:
            return reason.code
    if reason.display:
        return reason.display
    return f"{reason.code} ({reason.system})"


def reason_label(kb: KnowledgeBase, reason: ReasonCount) -> str:
    """Short form for text and the chart: our code, or ``code "display" (system)`` for a
    client's (Epic's reason categories are numbers: the display says what they are)."""
    if reason.code is None:
        return NO_REASON
    if reason.system == kb.policy.override_system:
        return reason.code
    shown = f' "{reason.display}"' if reason.display else ""
    return f"{reason.code}{shown} ({reason.system})"


# -- JSON ------------------------------------------------------------------------------------


def _row_json(
    kb: KnowledgeBase, row: ReportRow, *, rule: bool = False, drug: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if rule:
        out.update(rule=row.rule, ruleDisplay=rule_name(kb, row.rule))
    if drug:
        out.update(drug=row.drug, drugDisplay=drug_name(kb, row.drug))
    out.update(
        issued=row.issued,
        accepted=row.accepted,
        overridden=row.overridden,
        ignored=row.ignored,
        overrideReasons=[
            {"system": r.system, "code": r.code, "display": reason_name(kb, r), "cards": r.cards}
            for r in row.reasons
        ],
    )
    return out


def report_json(report: Report, kb: KnowledgeBase) -> dict[str, Any]:
    """The report as the JSON endpoint returns it."""
    totals = _row_json(kb, report.totals())
    totals.update(
        feedbackItems=report.feedback_items, unknownCardFeedback=report.unknown_card_feedback
    )
    return {
        "since": _iso(report.since),
        "until": _iso(report.until),
        "totals": totals,
        "byRuleAndDrug": [_row_json(kb, r, rule=True, drug=True) for r in report.rows],
        "byRule": [_row_json(kb, r, rule=True) for r in report.by_rule()],
        "byDrug": [_row_json(kb, r, drug=True) for r in report.by_drug()],
    }


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- text ------------------------------------------------------------------------------------

_HEAD = ("Issued", "Accepted", "Overridden", "Ignored")


def _table(title: str, rows: Sequence[ReportRow], label: Any, kb: KnowledgeBase) -> list[str]:
    labels = [label(r) for r in rows]
    width = max([len(title), *map(len, labels)])
    lines = [f"{title:<{width}}  " + "  ".join(f"{h:>10}" for h in _HEAD)]
    lines.append("-" * len(lines[0]))
    for text, row in zip(labels, rows, strict=True):
        counts = (row.issued, row.accepted, row.overridden, row.ignored)
        lines.append(f"{text:<{width}}  " + "  ".join(f"{n:>10}" for n in counts))
        if row.reasons:
            shown = ", ".join(f"{reason_label(kb, r)} {r.cards}" for r in row.reasons)
            lines.append(f"{'':<{width}}    overridden: {shown}")
    return lines


def report_text(report: Report, kb: KnowledgeBase) -> str:
    """The report for a terminal (``cds-server report``)."""
    total = report.totals()
    lines = [
        f"Card report {_iso(report.since)} → {_iso(report.until)} (cards issued in the window)",
        f"Cards issued {total.issued}: accepted {total.accepted}, overridden "
        f"{total.overridden}, ignored {total.ignored}. Feedback items received "
        f"{report.feedback_items} ({report.unknown_card_feedback} for unknown cards).",
        "",
    ]
    if not report.rows:
        lines.append("No cards were issued in this window.")
        return "\n".join(lines)
    lines += _table("Rule / drug", report.rows, lambda r: f"{r.rule} / {r.drug or '-'}", kb)
    lines += ["", *_table("Rule", report.by_rule(), lambda r: r.rule or "", kb)]
    lines += ["", *_table("Drug", report.by_drug(), lambda r: r.drug or "-", kb)]
    return "\n".join(lines)


# -- chart geometry --------------------------------------------------------------------------


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    segments: tuple[tuple[str, float, float, int], ...]  # (kind, x, width, count)
    total: int


SERIES = ("accepted", "overridden", "ignored")


def outcome_split(row: ReportRow) -> tuple[int, int, int]:
    """Each issued card once, by its outcome (the store counts one per card)."""
    return row.accepted, row.overridden, row.ignored


def chart_bars(
    rows: Sequence[ReportRow], kb: KnowledgeBase, *, width: float, row_height: float
) -> tuple[Bar, ...]:
    """Stacked horizontal bars (one segment per outcome), scaled to the most issued row."""
    scale_max = max((r.issued for r in rows), default=0) or 1
    bars = []
    for i, row in enumerate(rows):
        x = 0.0
        segments = []
        for kind, count in zip(SERIES, outcome_split(row), strict=True):
            w = width * count / scale_max
            if count > 0:
                segments.append((kind, round(x, 1), round(w, 1), count))
            x += w
        label = f"{row.rule or 'all rules'} · {drug_name(kb, row.drug)}"
        bars.append(Bar(label, i * row_height, tuple(segments), row.issued))
    return tuple(bars)
