"""``cds-server explain``: the data line counts the history orders read and left unread
(medicines no rule is about); the premedication line names agents ruled out for a drug."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cds_server.explain import explain_request

BENCH = Path(__file__).resolve().parents[1] / "bench" / "data"


def test_the_data_line_counts_read_and_unread_history_orders(kb: Any) -> None:
    text = explain_request(BENCH / "order-sign.json", kb)
    assert text.splitlines()[0].startswith("Hook: order-sign (service infusion-safety-sign)")
    assert (
        "Data: 4 draft order(s), 24 history order(s) (+36 no rule reads, not read), "
        "5 allergy record(s), weight 68.0 kg"
    ) in text


def test_the_premedication_line_names_an_ordered_agent_ruled_out_for_the_drug(kb: Any) -> None:
    scenarios = Path(__file__).resolve().parents[1] / "fixtures" / "fhir" / "scenarios"
    text = explain_request(scenarios / "obinutuzumab-cll-c1d1-hydrocortisone.request.json", kb)
    [line] = [x for x in text.splitlines() if x.strip().startswith("premedication / obinutuzumab")]
    assert "already ordered ['antipyretic', 'h1-antihistamine']" in line
    assert line.endswith("ordered but ruled out for this drug: ['hydrocortisone']")
    other = explain_request(scenarios / "obinutuzumab-cll-c1d2-at-start.request.json", kb)
    assert "ruled out" not in other
