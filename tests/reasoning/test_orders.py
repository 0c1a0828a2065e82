"""Which history orders a rule reads: told from the medicine's kind and the status as sent."""

import pytest

from cds_server.reasoning.orders import history_order_read

STATUSES = [
    "active",
    "on-hold",
    "cancelled",
    "completed",
    "entered-in-error",
    "stopped",
    "draft",
    "unknown",
]


@pytest.mark.parametrize("status", [*STATUSES, None, 7, "Active"])
def test_every_order_for_a_knowledge_drug_is_read(status):
    assert history_order_read("drug", status)


@pytest.mark.parametrize("status", STATUSES)
def test_an_agents_order_is_read_only_while_in_force(status):
    # In force: what ``ordered_agents`` and ``agent_ordered`` count as ordered.
    assert history_order_read("agent", status) == (status in ("active", "on-hold"))


@pytest.mark.parametrize("status", [None, 7, ["active"]])
def test_an_agents_order_whose_status_cannot_be_told_is_read(status):
    assert history_order_read("agent", status)


@pytest.mark.parametrize("status", [*STATUSES, None])
def test_an_order_for_a_medicine_no_rule_is_about_is_never_read(status):
    assert not history_order_read(None, status)
