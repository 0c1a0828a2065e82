"""``cds-server explain``: the data line says how many history orders were read and how many
were left unread (medicines no rule is about)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cds_server.explain import explain_request

BENCH = Path(__file__).resolve().parents[1] / "bench" / "data"


def test_the_data_line_counts_read_and_unread_history_orders(kb: Any) -> None:
    text = explain_request(BENCH / "order-sign.json", kb)
    assert text.splitlines()[0].startswith("Hook: order-sign (service infusion-safety)")
    assert (
        "Data: 4 draft order(s), 42 history order(s) (+18 for medicines no rule is about, "
        "not read), 5 allergy record(s), weight 68.0 kg"
    ) in text
