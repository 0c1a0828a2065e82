"""Alert-fatigue controls: which findings are not shown again, and what the card log records.

Two reasons to hold a card back, both decided here from plain data (no SQL, no Flask):

* **snooze** — an earlier ``overridden`` feedback with a snoozing reason (``snooze_days`` in
  ``cards/policy.yaml``) for the same rule, patient and drug is still running;
* **repeat in session** — at ``order-select``/``order-sign``, the same rule and drug were already
  shown for this patient in the same ordering session (same encounter, or same ``hookInstance``)
  within the configured window, at the same or a higher indicator. A call with the *same*
  ``hookInstance`` and hook is a retry (CDS Hooks 2.0 §hookInstance) and is answered in full.

A ``critical`` card is never held back. The history comes from a read-only
``GuidanceHistory`` passed into the pipeline (``cds_server.store`` implements it); without one
nothing is suppressed (``explain``, library use, tests).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from cds_server.model import Finding, HookCall

ORDER_HOOKS = frozenset({"order-select", "order-sign"})
_RANK: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}

RuleKey = tuple[str, str]  # (rule topic code, drug id)


@dataclass(frozen=True)
class Snooze:
    """A running snooze for one rule and drug of this patient."""

    rule: str
    drug: str
    until: datetime
    reason: str


@dataclass(frozen=True)
class ShownCard:
    """A card already issued to this patient in the current ordering session."""

    rule: str
    drug: str
    indicator: str
    hook: str
    hook_instance: str


@dataclass(frozen=True)
class PriorGuidance:
    """What the patient's history says about this call (from ``GuidanceHistory``)."""

    snoozes: tuple[Snooze, ...] = ()
    shown: tuple[ShownCard, ...] = ()


class GuidanceHistory(Protocol):
    """Read-only view of earlier cards and feedback, passed into the pipeline."""

    def prior_guidance(self, call: HookCall, now: datetime) -> PriorGuidance:
        """Running snoozes of ``call``'s patient, and cards shown in the same session."""
        ...


@dataclass(frozen=True)
class Suppressed:
    """A (rule, drug) held back, and why (for logs, ``explain`` and tests)."""

    rule: str
    drug: str
    indicator: str
    why: Literal["snoozed", "repeat-in-session"]
    detail: str


@dataclass(frozen=True)
class IssuedCard:
    """One card as the card log records it (no patient data).

    ``offered_reasons``: the codes of the override reasons the card offered (all of our
    system), which are the only ones that may snooze it.
    """

    uuid: str
    rule: str
    drug: str | None
    indicator: str
    suggestion_uuids: tuple[str, ...] = ()
    offered_reasons: tuple[str, ...] = ()


def decide(
    findings: Iterable[Finding], call: HookCall, prior: PriorGuidance, now: datetime
) -> dict[RuleKey, Suppressed]:
    """The (rule, drug) pairs to hold back among merged, gated ``findings``."""
    out: dict[RuleKey, Suppressed] = {}
    for f in findings:
        key = (f.topic, f.drug_id)
        if f.indicator == "critical" or key in out:
            continue
        snooze = _running_snooze(f, prior.snoozes, now)
        if snooze is not None:
            detail = f"{snooze.reason} until {snooze.until.isoformat(timespec='minutes')}"
            out[key] = Suppressed(f.topic, f.drug_id, f.indicator, "snoozed", detail)
        elif _shown_in_session(f, call, prior.shown):
            out[key] = Suppressed(
                f.topic, f.drug_id, f.indicator, "repeat-in-session", "already shown"
            )
    return out


def _running_snooze(f: Finding, snoozes: Sequence[Snooze], now: datetime) -> Snooze | None:
    running = [s for s in snoozes if (s.rule, s.drug) == (f.topic, f.drug_id) and s.until > now]
    return max(running, key=lambda s: s.until) if running else None


def _shown_in_session(f: Finding, call: HookCall, shown: Sequence[ShownCard]) -> bool:
    if call.hook not in ORDER_HOOKS:
        return False
    for s in shown:
        if (s.rule, s.drug) != (f.topic, f.drug_id) or s.hook not in ORDER_HOOKS:
            continue
        if s.hook_instance == call.hook_instance and s.hook == call.hook:
            continue  # a retry of this very call: answer it in full
        if _RANK.get(s.indicator, len(_RANK)) <= _RANK[f.indicator]:
            return True  # shown before at the same or a higher level; an escalation is shown
    return False


def issued_cards(shown: Iterable[tuple[Finding, Mapping[str, Any]]]) -> tuple[IssuedCard, ...]:
    """Card-log records for the cards sent, each with the finding it was rendered from.

    The rule is the finding's topic (``Topic.code``), not the card's ``source.topic.code``
    (the wire code): the card log, snoozes and reports keep the rule's own name.
    """
    return tuple(
        IssuedCard(
            uuid=str(card["uuid"]),
            rule=f.topic,
            drug=f.drug_id,
            indicator=str(card.get("indicator", "")),
            suggestion_uuids=tuple(
                str(s["uuid"]) for s in card.get("suggestions", ()) if s.get("uuid")
            ),
            offered_reasons=tuple(str(r["code"]) for r in card.get("overrideReasons", ())),
        )
        for f, card in shown
    )
