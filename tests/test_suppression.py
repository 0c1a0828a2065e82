"""``suppression.decide``: snooze and in-session repeat rules on plain data (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cds_server.model import Finding, HookCall, Indicator
from cds_server.suppression import (
    PriorGuidance,
    ShownCard,
    Snooze,
    decide,
    issued_cards,
)

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def finding(
    indicator: Indicator = "warning", topic: str = "premedication", drug: str = "rituximab"
) -> Finding:
    return Finding(topic, drug, drug.title(), indicator, headline="x")


def call(hook: str = "order-sign", instance: str = "hi-2") -> HookCall:
    return HookCall(hook, "infusion-safety", instance, "p1", encounter_id="e1", now=NOW)


def snoozed(until: datetime = NOW + timedelta(days=1), drug: str = "rituximab") -> PriorGuidance:
    return PriorGuidance(snoozes=(Snooze("premedication", drug, until, "previously-tolerated"),))


def shown(
    indicator: str = "warning", hook: str = "order-select", instance: str = "hi-1"
) -> PriorGuidance:
    return PriorGuidance(
        shown=(ShownCard("premedication", "rituximab", indicator, hook, instance),)
    )


def test_running_snooze_holds_back_the_same_rule_and_drug() -> None:
    held = decide([finding()], call(), snoozed(), NOW)
    assert held[("premedication", "rituximab")].why == "snoozed"
    assert "previously-tolerated" in held[("premedication", "rituximab")].detail


def test_snooze_scope_and_expiry() -> None:
    assert decide([finding()], call(), snoozed(until=NOW), NOW) == {}  # ended exactly now
    assert decide([finding()], call(), snoozed(drug="obinutuzumab"), NOW) == {}
    assert decide([finding(topic="rate-titration")], call(), snoozed(), NOW) == {}


def test_critical_is_never_held_back() -> None:
    assert decide([finding("critical")], call(), snoozed(), NOW) == {}
    assert decide([finding("critical")], call(), shown("critical"), NOW) == {}


def test_repeat_in_session_at_order_hooks() -> None:
    held = decide([finding()], call(), shown(), NOW)
    assert held[("premedication", "rituximab")].why == "repeat-in-session"
    # shown earlier as a warning: an info repeat is held back too
    assert decide([finding("info")], call(), shown("warning"), NOW)


def test_escalation_is_shown() -> None:
    assert decide([finding("warning")], call(), shown("info"), NOW) == {}


def test_retry_of_the_same_call_is_answered_in_full() -> None:
    prior = shown(hook="order-sign", instance="hi-2")
    assert decide([finding()], call("order-sign", "hi-2"), prior, NOW) == {}
    # same hookInstance reused by the EHR for another hook: that is a repeat
    prior = shown(hook="order-select", instance="hi-2")
    assert decide([finding()], call("order-sign", "hi-2"), prior, NOW)


def test_patient_view_is_not_deduplicated() -> None:
    assert decide([finding("info")], call("patient-view"), shown("info"), NOW) == {}
    prior = shown("info", hook="patient-view")
    assert decide([finding("info")], call("order-sign"), prior, NOW) == {}


def test_issued_cards_record_the_rule_not_the_wire_code() -> None:
    cards = [
        {
            "uuid": "c1",
            "summary": "Rituximab: premeds",
            "indicator": "warning",
            "source": {"topic": {"code": "Premedication"}},
            "suggestions": [{"uuid": "s1"}, {"uuid": "s2"}],
        },
        {"uuid": "c2", "summary": "Obinutuzumab: rate", "indicator": "info", "source": {}},
    ]
    findings = [finding(), finding("info", "rate-titration", "obinutuzumab")]
    out = issued_cards(zip(findings, cards, strict=True))
    assert out[0].rule == "premedication" and out[0].drug == "rituximab"
    assert out[0].suggestion_uuids == ("s1", "s2")
    assert (out[1].rule, out[1].drug, out[1].indicator) == (
        "rate-titration",
        "obinutuzumab",
        "info",
    )
    assert out[1].suggestion_uuids == ()
