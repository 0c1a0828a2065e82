"""The benchmark harness (``bench/``): its data is what the generator writes, and a seconds-long
smoke run under gunicorn answers every request correctly.

The smoke run fails on any error under load (non-2xx, socket error, a card list that differs
from the first answer, FHIR round trips beyond one per missing key) and never on timing:
speed is measured by ``bench/run``, not by tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import fixture, run
from bench.loadgen import BodyTemplate, percentile


@pytest.mark.parametrize("name", sorted(fixture.FILES))
def test_bench_data_is_generated(name: str) -> None:
    """``bench/data`` is exactly what ``python bench/fixture.py`` writes (deterministic)."""
    assert (fixture.DATA / name).read_text(encoding="utf-8") == fixture.render(name)


def test_bench_patient_is_the_issue_s_patient() -> None:
    body = fixture.order_sign()
    meds = body["prefetch"]["medications"]["entry"]
    history = [e for e in meds if e["resource"]["resourceType"] == "MedicationRequest"]
    assert len(history) == 60
    assert len(body["prefetch"]["allergies"]["entry"]) == 5
    drafts = [e["resource"] for e in body["context"]["draftOrders"]["entry"]]
    infusions = {d["medicationCodeableConcept"]["text"] for d in drafts if "dispenseRequest" in d}
    assert infusions == {"carboplatin", "paclitaxel", "bevacizumab"}
    assert "Fictional-" in body["prefetch"]["patient"]["name"][0]["family"]


def test_body_template_gives_each_request_its_own_session() -> None:
    template = BodyTemplate(b'{"h":"@@HOOK@@","c":{"e":"@@ENC@@","p":"@@PAT@@"}}')
    first, second = template.render(1, 1), template.render(1, 2)
    assert first != second and b"@@" not in first
    assert first == b'{"h":"b3e1c7a0-0000-4000-8001-000000000001","c":' + (
        b'{"e":"bench-enc-001000000000001","p":"pat-bench-001000000000001"}}'
    )


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile([], 50)) == (50, 99, 0)


def test_smoke_run_has_no_errors(tmp_path: Path) -> None:
    args = run.parse_args(["--smoke", "--logdir", str(tmp_path)])
    out = run.run(args, say=lambda _line: None)
    assert out["problems"] == [], run.report(out)
    by = {m.workload: m for m in out["results"]}
    assert set(by) == {w.key for w in run.WORKLOADS}
    for m in by.values():
        assert m.load.requests > 0 and m.load.error_count == 0
        assert m.cpu_ms_per_request > 0 and m.peak_rss_mb > 0
    # Missing prefetch: the four keys fetched at once, Medications by _include (no second trip).
    assert by["no-prefetch"].fhir_requests_per_call == 4
    assert len(out["demo_ready_s"]) == 1
    text = run.report(out)
    assert "workload 1 throughput ÷ floor throughput" in text and "ERROR" not in text
