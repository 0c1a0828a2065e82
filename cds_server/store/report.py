"""Analytics queries: per rule and per drug, cards issued, accepted, overridden and ignored.

Counts are of *cards* issued in the window ``[since, until)``, each card **once**, by its
outcome: the outcome of its latest feedback item — the latest ``outcomeTimestamp``, and of
items with the same timestamp the one stored last — is the card's outcome (*accepted* or
*overridden*); a card with no feedback at all is *ignored* (CDS Hooks: ignored cards produce
no feedback). So a card accepted and then overridden counts as overridden, one overridden
twice counts once, and accepted + overridden + ignored = issued. Override reasons count the
overridden cards by the coded reason (system and code) of that latest item, with the display
the client sent (the greatest in alphabetical order when cards of one reason carry several);
an override without a coded reason is ``None``. Their counts add up to the overridden cards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine, and_, case, func, select

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
    """The report for cards issued in ``[since, until)`` (one outcome per card: see above)."""
    in_window = and_(card_log.c.issued_at >= since, card_log.c.issued_at < until)
    # Each card's feedback items, the latest first (ties: the one stored last).
    ranked = (
        select(
            feedback.c.card_uuid,
            feedback.c.outcome,
            feedback.c.reason_system,
            feedback.c.reason_code,
            feedback.c.reason_display,
            func.row_number()
            .over(
                partition_by=feedback.c.card_uuid,
                order_by=(feedback.c.outcome_at.desc(), feedback.c.id.desc()),
            )
            .label("rank"),
        )
        .where(feedback.c.card_uuid.in_(select(card_log.c.card_uuid).where(in_window)))
        .subquery("ranked")
    )
    latest = and_(ranked.c.card_uuid == card_log.c.card_uuid, ranked.c.rank == 1)
    outcomes = (
        select(
            card_log.c.rule,
            card_log.c.drug_id,
            ranked.c.outcome,  # NULL: no feedback (ignored)
            ranked.c.reason_system,
            ranked.c.reason_code,
            func.count().label("cards"),
            func.max(ranked.c.reason_display).label("display"),
        )
        .select_from(card_log.outerjoin(ranked, latest))
        .where(in_window)
        .group_by(
            card_log.c.rule,
            card_log.c.drug_id,
            ranked.c.outcome,
            ranked.c.reason_system,
            ranked.c.reason_code,
        )
    )
    received = and_(feedback.c.received_at >= since, feedback.c.received_at < until)
    items = select(
        func.count().label("items"),
        func.coalesce(func.sum(case((feedback.c.known_card, 0), else_=1)), 0).label("unknown"),
    ).where(received)
    with reading(engine) as connection:
        outcome_rows = connection.execute(outcomes).all()
        totals = connection.execute(items).one()
    counts: dict[tuple[str, str | None], dict[str | None, int]] = defaultdict(
        lambda: defaultdict(int)
    )
    by_group: dict[tuple[str, str | None], Reasons] = defaultdict(dict)
    for r in outcome_rows:
        group = (r.rule, r.drug_id)
        counts[group][r.outcome] += int(r.cards)
        if r.outcome == "overridden":
            by_group[group][(r.reason_system, r.reason_code)] = (int(r.cards), r.display)
    rows = tuple(
        ReportRow(
            rule=rule,
            drug=drug,
            issued=sum(counts[(rule, drug)].values()),
            accepted=counts[(rule, drug)]["accepted"],
            overridden=counts[(rule, drug)]["overridden"],
            ignored=counts[(rule, drug)][None],
            reasons=_sorted_reasons(by_group[(rule, drug)]),
        )
        for rule, drug in sorted(counts, key=lambda k: (k[0], k[1] or ""))
    )
    return Report(
        since=since,
        until=until,
        rows=rows,
        feedback_items=int(totals.items),
        unknown_card_feedback=int(totals.unknown),
    )
