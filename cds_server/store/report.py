"""Analytics queries: per rule and per drug, cards issued, accepted, overridden and ignored.

Counts are of *cards* issued in the window ``[since, until)``, with whatever feedback they
received. A card is *accepted* (or *overridden*) when at least one feedback item says so;
*ignored* when it got no feedback at all (CDS Hooks: ignored cards produce no feedback). A
card with both outcomes (feedback sent twice, differently) counts under both. Override
reasons count cards per coded reason (system and code), with the display the client sent
(the latest in alphabetical order if it sent several); an override without a coded reason is
``None``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, case, distinct, exists, func, select

from cds_server.store.engine import reading
from cds_server.store.tables import card_log, feedback


@dataclass(frozen=True)
class ReasonCount:
    system: str | None
    code: str | None
    cards: int
    display: str | None = None  # as the client sent it (None: not sent, or stored before 0003)


Reasons = dict[tuple[str | None, str | None], tuple[int, str | None]]  # → (cards, display)


@dataclass(frozen=True)
class ReportRow:
    """One group of cards: a rule and a drug, a rule (``drug`` None) or a drug (``rule`` None)."""

    rule: str | None
    drug: str | None
    issued: int = 0
    accepted: int = 0
    overridden: int = 0
    ignored: int = 0
    reasons: tuple[ReasonCount, ...] = field(default=())


@dataclass(frozen=True)
class Report:
    since: datetime
    until: datetime
    rows: tuple[ReportRow, ...]  # per (rule, drug), sorted
    feedback_items: int  # items received in the window
    unknown_card_feedback: int  # of which for card uuids the log does not know

    def by_rule(self) -> tuple[ReportRow, ...]:
        return _rollup(self.rows, lambda r: (r.rule, None))

    def by_drug(self) -> tuple[ReportRow, ...]:
        return _rollup(self.rows, lambda r: (None, r.drug))

    def totals(self) -> ReportRow:
        rolled = _rollup(self.rows, lambda r: (None, None))
        return rolled[0] if rolled else ReportRow(None, None)


def _rollup(
    rows: Iterable[ReportRow], key: Callable[[ReportRow], tuple[str | None, str | None]]
) -> tuple[ReportRow, ...]:
    counts: dict[tuple[str | None, str | None], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    reasons: dict[tuple[str | None, str | None], Reasons] = defaultdict(dict)
    for row in rows:
        k = key(row)
        for i, n in enumerate((row.issued, row.accepted, row.overridden, row.ignored)):
            counts[k][i] += n
        for r in row.reasons:
            cards, display = reasons[k].get((r.system, r.code), (0, None))
            shown = max((d for d in (display, r.display) if d is not None), default=None)
            reasons[k][(r.system, r.code)] = (cards + r.cards, shown)
    out = []
    for k in sorted(counts, key=lambda k: (k[0] or "", k[1] or "")):
        issued, accepted, overridden, ignored = counts[k]
        out.append(
            ReportRow(
                k[0], k[1], issued, accepted, overridden, ignored, _sorted_reasons(reasons[k])
            )
        )
    return tuple(out)


def _sorted_reasons(counts: Reasons) -> tuple[ReasonCount, ...]:
    return tuple(
        ReasonCount(system, code, n, display)
        for (system, code), (n, display) in sorted(
            counts.items(), key=lambda kv: (-kv[1][0], kv[0][1] or "", kv[0][0] or "")
        )
    )


def build_report(engine: Engine, since: datetime, until: datetime) -> Report:
    """The report for cards issued in ``[since, until)``."""
    in_window = and_(card_log.c.issued_at >= since, card_log.c.issued_at < until)

    def has(outcome: str | None) -> object:
        cond = feedback.c.card_uuid == card_log.c.card_uuid
        if outcome:
            cond = and_(cond, feedback.c.outcome == outcome)
        return case((exists().where(cond), 1), else_=0)

    counts = (
        select(
            card_log.c.rule,
            card_log.c.drug_id,
            func.count().label("issued"),
            func.sum(has("accepted")).label("accepted"),
            func.sum(has("overridden")).label("overridden"),
            func.sum(1 - has(None)).label("ignored"),  # type: ignore[operator]
        )
        .where(in_window)
        .group_by(card_log.c.rule, card_log.c.drug_id)
    )
    reasons = (
        select(
            card_log.c.rule,
            card_log.c.drug_id,
            feedback.c.reason_system,
            feedback.c.reason_code,
            func.count(distinct(card_log.c.card_uuid)).label("cards"),
            func.max(feedback.c.reason_display).label("display"),
        )
        .join(feedback, feedback.c.card_uuid == card_log.c.card_uuid)
        .where(in_window, feedback.c.outcome == "overridden")
        .group_by(
            card_log.c.rule, card_log.c.drug_id, feedback.c.reason_system, feedback.c.reason_code
        )
    )
    received = and_(feedback.c.received_at >= since, feedback.c.received_at < until)
    items = select(
        func.count().label("items"),
        func.coalesce(func.sum(case((feedback.c.known_card, 0), else_=1)), 0).label("unknown"),
    ).where(received)
    with reading(engine) as connection:
        count_rows = connection.execute(counts).all()
        reason_rows = connection.execute(reasons).all()
        totals = connection.execute(items).one()
    by_group: dict[tuple[str, str | None], Reasons] = defaultdict(dict)
    for r in reason_rows:
        by_group[(r.rule, r.drug_id)][(r.reason_system, r.reason_code)] = (int(r.cards), r.display)
    rows = tuple(
        ReportRow(
            rule=r.rule,
            drug=r.drug_id,
            issued=int(r.issued),
            accepted=int(r.accepted or 0),
            overridden=int(r.overridden or 0),
            ignored=int(r.ignored or 0),
            reasons=_sorted_reasons(by_group[(r.rule, r.drug_id)]),
        )
        for r in sorted(count_rows, key=lambda r: (r.rule, r.drug_id or ""))
    )
    return Report(
        since=since,
        until=until,
        rows=rows,
        feedback_items=int(totals.items),
        unknown_card_feedback=int(totals.unknown),
    )
